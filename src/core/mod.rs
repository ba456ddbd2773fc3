//! The sans-IO gateway core.
//!
//! Owns every device's MQTT-SN state machine, its topic-id table and its upstream MQTT
//! session's packet-id space; decides what is sent where and when. Must never: do I/O, read
//! the clock, spawn, lock, or hold an unbounded queue. Time comes in as `now`; effects go out
//! as [`Output`] values drained with [`Gateway::poll_output`].
//!
//! The public surface is what `shell`, `store`, tests/ and fuzz/bodies/ use; everything else is
//! `pub(crate)` or narrower (`unreachable_pub` keeps it so).

#![warn(unreachable_pub)]

mod admission;
mod aggregate;
mod bridge;
mod ctx;
mod device;
mod discovery;
mod durability;
mod gateway;
mod permissions;
pub mod persist;
mod qos_minus_one;
mod registry;
pub mod rules;
pub mod settings;
mod status;
mod timers;
mod topics;
mod types;
mod view;

#[cfg(test)]
mod tests;

pub use aggregate::AggregateSizes;
pub use device::{with_tolerance, DeviceState};
pub use gateway::{Gateway, RestoreReport};
pub use settings::{AggregateSettings, Settings};
pub use status::{Availability, StatusSettings};
pub use types::{
    DeviceAddr, DeviceId, GroupId, OpenFor, Output, PeerAddr, PersistOp, SessionId, Stats, Table,
    TransportId,
};
pub use view::{DeviceTotals, DeviceView};
