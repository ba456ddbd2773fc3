//! [`Event`]: what every transport and upstream task sends the driver.
//!
//! A leaf: the tasks and the driver import it, it imports none of them. Must never carry
//! anything but what was received (no decisions, no state).
//! Owns: [`Event`].

use bytes::Bytes;

use super::status::StatusRequest;
use crate::core::{DeviceAddr, GroupId, SessionId};
use crate::mqtt;

/// What the driver task is told.
#[derive(Debug)]
pub enum Event {
    /// A frame from a device.
    Frame { from: DeviceAddr, frame: Bytes },
    /// A frame from a device, sent to a multicast group.
    GroupFrame {
        group: GroupId,
        from: DeviceAddr,
        frame: Bytes,
    },
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
}
