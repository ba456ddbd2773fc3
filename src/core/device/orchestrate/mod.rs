//! The orchestration layer of [`Device`](super::Device), split by sequence: each file is one
//! more `impl Device` block, as `device/mod.rs` is. Together with `mod.rs` they are the only
//! code that names the feature files (connect.rs, uplink.rs, subscriptions.rs, downlink.rs,
//! sleep.rs, session_switch.rs, outage.rs, record.rs); no feature file names them.
//!
//! Must never: hold state of its own (everything is a field of `Device`), do I/O or read the
//! clock.

mod aggregate_flow;
mod connect_flow;
mod switch_flow;
mod upstream_flow;
