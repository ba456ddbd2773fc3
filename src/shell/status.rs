//! What the status endpoint asks the driver and what it gets back: a [`StatusRequest`] goes
//! over the driver's event channel (bounded) with a oneshot for the [`Snapshot`], so nothing
//! is done for the HTTP side unless someone asks, and no lock is shared with the driver.
//!
//! Also the shell's own counters: per transport ([`TransportCounters`], kept by the driver),
//! upstream connects ([`UpstreamCounters`], kept by the driver), and the store's commits
//! ([`StoreCounters`], atomics the writer thread adds to).
//!
//! A leaf like `event.rs`: owns these types, imports no other shell file. Must never decide
//! anything about the protocol.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tokio::sync::oneshot;

use crate::core::{DeviceTotals, DeviceView, Stats};

/// What a request wants besides the counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    /// Counters and totals only (`/metrics`, the page's header).
    Summary,
    /// Also every device's view (`/api/devices`).
    Devices,
    /// Also this device's view (`/api/devices/{client_id}`).
    Device(String),
}

/// A question for the driver; the answer goes to `reply`.
#[derive(Debug)]
pub struct StatusRequest {
    pub query: Query,
    pub reply: oneshot::Sender<Snapshot>,
}

/// What a transport is, for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportInfo {
    /// `udp` or `serial`.
    pub kind: &'static str,
    /// Its bound address or its port's path.
    pub name: String,
}

/// Frames through one transport (the driver counts: one addition per frame).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransportCounters {
    pub frames_in: u64,
    pub bytes_in: u64,
    pub frames_out: u64,
    pub bytes_out: u64,
    /// Frames for this transport dropped because its backlog (serial) or the socket refused.
    pub send_failed: u64,
}

/// Upstream sessions as the driver saw them (one addition per CONNACK or close, never per
/// message).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UpstreamCounters {
    /// CONNACKs that accepted the session.
    pub accepted: u64,
    /// CONNACKs that refused it.
    pub refused: u64,
    /// Sessions whose connection ended before any CONNACK (TCP refused, timeout, reset).
    pub failed: u64,
    /// Session connections that ended after their CONNACK.
    pub closed: u64,
    /// Sessions with an accepted CONNACK whose connection is still up.
    pub connected: u64,
    /// Failures and refusals since the last accepted CONNACK.
    pub failing_since_success: u64,
}

impl UpstreamCounters {
    /// `up` (a session is connected), `down` (the last attempts failed and none is
    /// connected) or `idle` (no session yet, or all closed normally).
    pub fn link(&self) -> &'static str {
        if self.connected > 0 {
            "up"
        } else if self.failing_since_success > 0 {
            "down"
        } else {
            "idle"
        }
    }
}

/// The store writer's commits; the writer thread adds, readers load (relaxed: counters).
#[derive(Debug, Default)]
pub struct StoreCounters {
    pub commits: AtomicU64,
    pub failed_commits: AtomicU64,
    pub ops: AtomicU64,
    /// Time spent in commits (SQLite with `synchronous=FULL`: mostly the WAL fsync), in ns.
    pub commit_nanos: AtomicU64,
}

/// [`StoreCounters`] as read at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreTotals {
    pub commits: u64,
    pub failed_commits: u64,
    pub ops: u64,
    pub commit_nanos: u64,
}

impl StoreCounters {
    pub fn read(&self) -> StoreTotals {
        StoreTotals {
            commits: self.commits.load(Ordering::Relaxed),
            failed_commits: self.failed_commits.load(Ordering::Relaxed),
            ops: self.ops.load(Ordering::Relaxed),
            commit_nanos: self.commit_nanos.load(Ordering::Relaxed),
        }
    }
}

/// The driver's answer, as of one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// When it was taken (the instant the device views' times are relative to).
    pub taken: Instant,
    pub stats: Stats,
    pub totals: DeviceTotals,
    /// The views asked for ([`Query::Devices`]: all; [`Query::Device`]: that one, if known).
    pub devices: Vec<DeviceView>,
    /// Indexed by [`TransportId`](crate::core::TransportId).
    pub transports: Vec<(TransportInfo, TransportCounters)>,
    pub upstream: UpstreamCounters,
    /// `None` without a store.
    pub store: Option<StoreTotals>,
    /// `None` in transparent mode.
    pub aggregate: Option<crate::core::AggregateSizes>,
}
