//! UDP transport: one reader task per socket; sends go straight from the driver.
//!
//! Owns nothing but the receive buffer. Datagrams larger than `limits.max_frame_size` are
//! still handed on (truncated reads are detected by size) so the core counts them. Must never
//! judge a datagram itself: every one goes to the driver.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tracing::debug;

use super::event::Event;
use crate::core::{DeviceAddr, GroupId, TransportId};

/// Binds a UDP socket asking the kernel for `receive_buffer` octets of receive buffer, so
/// bursts queue in the kernel rather than being dropped.
pub fn bind(addr: SocketAddr, receive_buffer: usize) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if let Err(e) = socket.set_recv_buffer_size(receive_buffer) {
        debug!(%addr, error = %e, "cannot set the UDP receive buffer");
    }
    let got = socket.recv_buffer_size().unwrap_or(0);
    // Linux reports twice what it grants (bookkeeping); compare against half.
    if got / 2 < receive_buffer {
        tracing::info!(%addr, asked = receive_buffer, granted = got / 2, "UDP receive buffer capped by the kernel (net.core.rmem_max)");
    }
    socket.bind(&addr.into())?;
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket.into())
}

/// Datagrams read per wake-up at most, so one busy socket cannot starve the others.
const BATCH: usize = 64;

/// Reads `sock` until shutdown. `group`: the socket is a multicast group's receiver, and what it
/// reads was sent to the group (the sender is reached through `transport`).
pub async fn read_loop(
    transport: TransportId,
    group: Option<GroupId>,
    sock: Arc<UdpSocket>,
    events: mpsc::Sender<Event>,
    max_frame_size: usize,
    mut shutdown: watch::Receiver<bool>,
) {
    // One octet more than the limit tells an oversized datagram from one that fits exactly.
    let cap = max_frame_size.saturating_add(1);
    let mut buf = BytesMut::with_capacity(cap * 16);
    loop {
        let received = tokio::select! {
            _ = shutdown.changed() => return,
            r = sock.readable() => r,
        };
        if let Err(e) = received {
            debug!(transport = transport.0, error = %e, "UDP socket error");
            continue;
        }
        // Drain what is queued in one wake-up: fewer task switches under load.
        for _ in 0..BATCH {
            if buf.capacity() < cap {
                buf.reserve(cap * 16);
            }
            buf.resize(cap, 0);
            match sock.try_recv_from(&mut buf[..]) {
                Ok((n, from)) => {
                    buf.truncate(n);
                    let from = DeviceAddr::udp(transport, from);
                    let frame = buf.split().freeze();
                    let ev = match group {
                        None => Event::Frame { from, frame },
                        Some(group) => Event::GroupFrame { group, from, frame },
                    };
                    let sent = match events.try_send(ev) {
                        Ok(()) => Ok(()),
                        Err(mpsc::error::TrySendError::Full(ev)) => {
                            events.send(ev).await.map_err(|_| ())
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => Err(()),
                    };
                    if sent.is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    // ICMP port-unreachable from an earlier send shows up here on some systems.
                    debug!(transport = transport.0, error = %e, "UDP receive error");
                    buf.clear();
                }
            }
        }
    }
}
