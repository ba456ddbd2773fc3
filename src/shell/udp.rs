//! UDP transport: one reader task per socket; sends go straight from the driver.
//!
//! Owns nothing but the receive buffer. Datagrams larger than `limits.max_frame_size` are
//! still handed on (truncated reads are detected by size) so the core counts them.

use std::sync::Arc;

use bytes::BytesMut;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tracing::debug;

use super::Event;
use crate::core::{DeviceAddr, TransportId};

pub async fn read_loop(
    transport: TransportId,
    sock: Arc<UdpSocket>,
    events: mpsc::Sender<Event>,
    max_frame_size: usize,
    mut shutdown: watch::Receiver<bool>,
) {
    // One octet more than the limit tells an oversized datagram from one that fits exactly.
    let cap = max_frame_size.saturating_add(1);
    let mut buf = BytesMut::with_capacity(cap * 16);
    loop {
        if buf.capacity() < cap {
            buf.reserve(cap * 16);
        }
        buf.resize(cap, 0);
        let received = tokio::select! {
            _ = shutdown.changed() => return,
            r = sock.recv_from(&mut buf[..]) => r,
        };
        match received {
            Ok((n, from)) => {
                buf.truncate(n);
                let frame = buf.split().freeze();
                let ev = Event::Frame {
                    from: DeviceAddr::udp(transport, from),
                    frame,
                };
                if events.send(ev).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                // ICMP port-unreachable from an earlier send shows up here on some systems.
                debug!(transport = transport.0, error = %e, "UDP receive error");
                buf.clear();
            }
        }
    }
}
