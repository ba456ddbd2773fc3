//! [`Outbox`]: the bytes waiting to go to one upstream session's broker connection, shared by
//! the driver (which encodes packets into it) and the session's task (which owns the
//! connection).
//!
//! Why: handing every packet to the session task over a channel costs a task wake-up per
//! message. Instead the driver encodes into the outbox and, at the end of its turn, writes
//! the bytes itself with one non-blocking `write` when the connection is plain TCP and
//! nothing is waiting (the common case); only what the socket does not take (a full send
//! buffer), TLS connections and a connection not yet set up go through the task, which
//! awaits the socket. Several packets for one session in one turn go out in one write.
//!
//! Owns the encoded bytes, their packet count (the bound) and the plain socket once the
//! CONNECT is written. Must never hold its lock across `.await` (it is a std mutex: held for
//! an encode or a `try_write`, never longer) and never reorder: while the task is writing,
//! the driver only appends.

use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Buf, BytesMut};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::Notify;

use crate::mqtt;

/// A session's outgoing bytes; see the module doc.
pub struct Outbox {
    state: Mutex<State>,
    /// The session task is told there is something to write (or that the driver let go).
    wake: Notify,
    /// Packets that may wait before [`push`](Self::push) refuses.
    limit: usize,
}

#[derive(Default)]
struct State {
    /// Encoded packets not yet written, in order.
    pending: BytesMut,
    /// Packets in `pending` (the backlog bound counts these).
    queued: usize,
    /// The plain TCP connection, once the CONNECT is written: the driver may write to it.
    /// `None` with TLS (the task owns the TLS state) and before the session is set up.
    direct: Option<Arc<OwnedWriteHalf>>,
    /// The task has taken bytes out of `pending` and is writing them: the driver must not
    /// write (it would overtake them), only append.
    task_writing: bool,
    /// The driver let go of the session: the task writes what is left, then closes.
    closed: bool,
}

/// The backlog is full: the broker is not taking this session's packets.
#[derive(Debug)]
pub struct Full;

impl Outbox {
    /// An empty outbox that holds at most `limit` waiting packets.
    pub fn new(limit: usize) -> Outbox {
        Outbox {
            state: Mutex::default(),
            wake: Notify::new(),
            limit,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves bytes that are still whole packets.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Driver: appends `packet`; `Ok(true)` when the outbox was empty before (the caller
    /// remembers to [`kick`](Self::kick) it at the end of its turn). Refused past the limit
    /// of packets waiting. After [`close`](Self::close) a packet is dropped.
    pub fn push(&self, packet: &mqtt::Packet) -> Result<bool, Full> {
        self.append(packet, self.limit)
    }

    /// [`push`](Self::push) past the limit: the session's own few packets (the task's
    /// PINGREQ, the DISCONNECT at shutdown), which must not close it.
    pub fn push_own(&self, packet: &mqtt::Packet) -> bool {
        self.append(packet, usize::MAX).unwrap_or(false)
    }

    fn append(&self, packet: &mqtt::Packet, limit: usize) -> Result<bool, Full> {
        let mut st = self.lock();
        if st.closed {
            return Ok(false);
        }
        if st.queued >= limit {
            return Err(Full);
        }
        let was_empty = st.pending.is_empty();
        if packet.encode(&mut st.pending).is_err() {
            // Only an oversized packet fails to encode; the core never builds one. Dropped.
            return Ok(false);
        }
        st.queued += 1;
        Ok(was_empty)
    }

    /// Driver, at the end of its turn: writes what is waiting straight to the plain socket
    /// when it can; whatever is left (or everything, with TLS or before set-up) wakes the
    /// task.
    pub fn kick(&self) {
        let mut st = self.lock();
        if st.pending.is_empty() {
            return;
        }
        if !st.task_writing {
            if let Some(sock) = st.direct.clone() {
                loop {
                    match sock.as_ref().try_write(&st.pending) {
                        Ok(n) => {
                            st.pending.advance(n);
                            if st.pending.is_empty() {
                                st.pending.clear();
                                st.queued = 0;
                                return;
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        // WouldBlock: the task awaits the socket. Another error: the task's
                        // next write or read meets it and ends the session.
                        Err(_) => break,
                    }
                }
            }
        }
        drop(st);
        self.wake.notify_one();
    }

    /// Driver: lets go of the session. The task writes what is left, then closes.
    pub fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_one();
    }

    /// Task: waits until there may be something to do (bytes, or the close).
    pub async fn wait(&self) {
        self.wake.notified().await
    }

    /// Task: takes every waiting byte into `into` (empty), marking the task as writing so the
    /// driver appends behind them. Returns false (and clears the mark) when nothing waits.
    pub fn take(&self, into: &mut BytesMut) -> bool {
        let mut st = self.lock();
        if st.pending.is_empty() {
            st.task_writing = false;
            return false;
        }
        std::mem::swap(&mut st.pending, into);
        st.queued = 0;
        st.task_writing = true;
        true
    }

    /// Task: the CONNECT is written; from now on the driver may write to `sock` itself.
    pub fn set_direct(&self, sock: Arc<OwnedWriteHalf>) {
        self.lock().direct = Some(sock);
    }

    /// Task: whether the driver let go.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Task: the connection is gone; the driver's writes stop.
    pub fn disconnect(&self) {
        self.lock().direct = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_queue_in_order_up_to_the_limit() {
        let out = Outbox::new(2);
        assert!(out.push(&mqtt::Packet::PingReq).unwrap());
        assert!(!out.push(&mqtt::Packet::PubAck { packet_id: 7 }).unwrap());
        assert!(out.push(&mqtt::Packet::PingReq).is_err(), "bounded");
        let mut buf = BytesMut::new();
        assert!(out.take(&mut buf));
        assert_eq!(&buf[..], &[0xC0, 0x00, 0x40, 0x02, 0x00, 0x07]);
        // While the task writes, the driver appends behind.
        assert!(out.push(&mqtt::Packet::PingReq).unwrap());
        let mut next = BytesMut::new();
        assert!(out.take(&mut next));
        assert_eq!(&next[..], &[0xC0, 0x00]);
        assert!(!out.take(&mut BytesMut::new()));
    }

    #[test]
    fn nothing_is_queued_after_close() {
        let out = Outbox::new(2);
        out.close();
        assert!(out.is_closed());
        assert!(!out.push(&mqtt::Packet::PingReq).unwrap());
        assert!(!out.take(&mut BytesMut::new()));
    }

    #[test]
    fn the_sessions_own_packets_pass_the_limit() {
        let out = Outbox::new(1);
        assert!(out.push(&mqtt::Packet::PingReq).unwrap());
        assert!(out.push(&mqtt::Packet::PingReq).is_err());
        assert!(
            !out.push_own(&mqtt::Packet::Disconnect),
            "queued behind, not refused"
        );
        let mut buf = BytesMut::new();
        assert!(out.take(&mut buf));
        assert_eq!(&buf[..], &[0xC0, 0x00, 0xE0, 0x00]);
    }
}
