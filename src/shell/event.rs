//! [`Event`]: what every transport and upstream task sends the driver.
//!
//! A leaf: the tasks and the driver import it, it imports none of them. Must never carry
//! anything but what was received (no decisions, no state).
//! Owns: [`Event`].

use bytes::Bytes;

use super::credentials::Credentials;
use super::status::StatusRequest;
use super::tls::Tls;
use crate::core::{DeviceAddr, SessionId, Settings};
use crate::mqtt;

/// What the driver task is told.
#[derive(Debug)]
pub enum Event {
    /// A frame from a device on a serial port (UDP sockets are read by the driver itself).
    Frame { from: DeviceAddr, frame: Bytes },
    /// A packet from an upstream session.
    Upstream {
        session: SessionId,
        packet: mqtt::Packet,
    },
    /// An upstream session's connection ended; `failure` says why when it could not be made
    /// at all (TCP connect, TLS handshake), for the driver's rate-limited log.
    UpstreamClosed {
        session: SessionId,
        failure: Option<String>,
    },
    /// The status endpoint asks for a snapshot.
    Status(StatusRequest),
    /// SIGHUP: new live settings (and, when `devices` changed in upstream mode, the
    /// credentials and TLS configurations read again); the reply says how many devices the
    /// new admission rules ended.
    Reload(Box<ReloadRequest>),
}

/// What a reload hands the driver (built by `run` in `mod.rs` from `reload::plan`).
pub struct ReloadRequest {
    pub(super) settings: Settings,
    pub(super) credentials: Option<Credentials>,
    pub(super) tls: Option<Option<Tls>>,
    pub(super) reply: tokio::sync::oneshot::Sender<usize>,
}

impl std::fmt::Debug for ReloadRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadRequest").finish_non_exhaustive()
    }
}
