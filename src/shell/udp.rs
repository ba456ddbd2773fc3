//! UDP transport: binding, and the [`Receiver`] the driver reads each socket through; sends go
//! straight from the driver.
//!
//! Owns nothing but the receive buffer. Datagrams larger than `limits.max_frame_size` are
//! still handed on (truncated reads are detected by size) so the core counts them. Must never
//! judge a datagram itself: every one goes to the driver.

use std::net::SocketAddr;
use std::sync::Arc;

use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::net::UdpSocket;
use tracing::debug;

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

/// Datagrams read per turn at most, so one busy socket cannot starve the others.
const BATCH: usize = 64;

/// One UDP socket the driver reads itself (no task and no channel between the socket and the
/// core): a transport's socket, or a multicast group's receiver (`group`: what it reads was sent
/// to the group; the sender is reached through `transport`).
pub struct Receiver {
    pub transport: TransportId,
    pub group: Option<GroupId>,
    pub sock: Arc<UdpSocket>,
    /// Frames are split off this buffer (one allocation per 16 frames, not one per frame).
    buf: BytesMut,
    /// One octet more than `limits.max_frame_size`: tells an oversized datagram from one that
    /// fits exactly.
    cap: usize,
}

impl Receiver {
    pub fn new(
        transport: TransportId,
        group: Option<GroupId>,
        sock: Arc<UdpSocket>,
        max_frame_size: usize,
    ) -> Receiver {
        let cap = max_frame_size.saturating_add(1);
        Receiver {
            transport,
            group,
            sock,
            buf: BytesMut::with_capacity(cap * 16),
            cap,
        }
    }

    /// Ready when a datagram (or an error) waits.
    pub fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.sock.poll_recv_ready(cx).map(|_| ())
    }

    /// Reads what is queued, up to [`BATCH`] datagrams, giving each to `frame`.
    pub fn drain(&mut self, mut frame: impl FnMut(Option<GroupId>, DeviceAddr, Bytes)) {
        for _ in 0..BATCH {
            if self.buf.capacity() < self.cap {
                self.buf.reserve(self.cap * 16);
            }
            // Into the spare capacity, at most `cap` octets: no zeroing per datagram.
            match self
                .sock
                .try_recv_buf_from(&mut (&mut self.buf).limit(self.cap))
            {
                Ok((_, from)) => {
                    let from = DeviceAddr::udp(self.transport, from);
                    frame(self.group, from, self.buf.split().freeze());
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    // ICMP port-unreachable from an earlier send shows up here on some systems.
                    debug!(transport = self.transport.0, error = %e, "UDP receive error");
                    self.buf.clear();
                }
            }
        }
        self.buf.clear();
    }
}
