//! The driver: the one task that owns the [`Gateway`], feeds it [`Event`]s, timeouts and
//! store confirmations, and carries out its [`Output`]s (frames to transports, packets to
//! upstream sessions, batches to the store).
//!
//! Must never decide anything about the protocol (that is the core's), never block on one
//! device or session (full queues drop, and the core hears of it), and never hold a lock
//! across `.await`. Built by `start` in `mod.rs`, which it never imports.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, error, warn};

use super::event::Event;
use super::serial::SerialOut;
use super::{multicast, persistence, upstream};
use crate::core::{DeviceAddr, Gateway, Output, PeerAddr, SessionId, Stats};
use crate::mqtt;

/// Where a [`TransportId`](crate::core::TransportId) leads: its index in [`Driver::transports`].
pub(super) enum Transport {
    Udp(Arc<UdpSocket>),
    /// The port's task, which frames and writes.
    Serial(mpsc::Sender<SerialOut>),
}

/// The one task that owns the [`Gateway`].
pub(super) struct Driver {
    pub(super) gateway: Gateway,
    /// UDP sockets first, then serial ports, in config order.
    pub(super) transports: Vec<Transport>,
    pub(super) sessions: HashMap<SessionId, mpsc::Sender<mqtt::Packet>>,
    /// The latest session task per upstream ClientId, so a new session waits for the old one.
    pub(super) session_tasks: HashMap<String, JoinHandle<()>>,
    pub(super) broker: SocketAddr,
    pub(super) connect_timeout: Duration,
    pub(super) session_depth: usize,
    pub(super) events_tx: mpsc::Sender<Event>,
    pub(super) advertise: Option<SocketAddr>,
    /// `discovery.multicast[]`, indexed by [`GroupId`](crate::core::GroupId).
    pub(super) groups: Vec<multicast::Group>,
    pub(super) stats: watch::Sender<Stats>,
    /// Taken by `run`, which owns it from then on.
    pub(super) persistence: Option<persistence::Persistence>,
    /// Say DISCONNECT on every session at shutdown (embedded broker: no wills) and wait for
    /// the sessions to close.
    pub(super) disconnect_on_shutdown: bool,
}

/// The next durable sequence; `None` once the store's writer has stopped; never without store.
async fn next_confirmed(p: &mut Option<persistence::Persistence>) -> Option<u64> {
    match p {
        Some(p) => p.confirmed().await,
        None => std::future::pending().await,
    }
}

/// How long shutdown waits for the upstream sessions to say DISCONNECT and close.
const DISCONNECT_WAIT: Duration = Duration::from_secs(2);

impl Driver {
    pub(super) async fn run(
        mut self,
        mut events: mpsc::Receiver<Event>,
        mut shutdown: watch::Receiver<bool>,
        failed: watch::Sender<Option<String>>,
    ) {
        let mut persistence = self.persistence.take();
        // Sessions reopened by the restore go out first.
        self.flush(persistence.as_ref()).await;
        // The core's clock is std's; tokio's Instant converts for sleeping.
        loop {
            let wake = self.gateway.poll_timeout();
            tokio::select! {
                biased;
                _ = shutdown.changed() => break,
                seq = next_confirmed(&mut persistence) => match seq {
                    Some(seq) => self.gateway.handle_persisted(std::time::Instant::now(), seq),
                    None => {
                        // Acknowledgements that need the store would wait (and pile up) for
                        // ever: stop, so a supervisor restarts the gateway on a working store.
                        let reason = "the store can no longer write (see the error above); stopping".to_string();
                        error!("{reason}");
                        failed.send_replace(Some(reason));
                        break;
                    }
                },
                ev = events.recv() => {
                    let Some(ev) = ev else { break };
                    self.handle(ev);
                    // Drain what is already queued before looking at timers again.
                    for _ in 0..256 {
                        match events.try_recv() {
                            Ok(ev) => self.handle(ev),
                            Err(_) => break,
                        }
                    }
                }
                _ = sleep_until_std(wake) => {
                    self.gateway.handle_timeout(std::time::Instant::now());
                }
            }
            self.flush(persistence.as_ref()).await;
            self.stats.send_replace(self.gateway.stats());
        }
        // The core's last words (the status session's `offline`, then its DISCONNECT); the
        // sessions it closes are waited for below in either broker mode.
        let mut closing: HashSet<SessionId> = self
            .gateway
            .shutdown(std::time::Instant::now())
            .into_iter()
            .collect();
        self.flush(persistence.as_ref()).await;
        // Dropping the session senders lets every upstream task flush and close.
        let mut open = self.sessions.len();
        if self.disconnect_on_shutdown {
            for tx in self.sessions.values() {
                let _ = tx.try_send(mqtt::Packet::Disconnect);
            }
        }
        if !self.disconnect_on_shutdown {
            open = 0; // upstream mode: the device sessions just close
        }
        self.sessions.clear();
        let deadline = Instant::now() + DISCONNECT_WAIT;
        while open > 0 || !closing.is_empty() {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Some(Event::UpstreamClosed { session })) => {
                    if !closing.remove(&session) {
                        open = open.saturating_sub(1);
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        // The writer commits what is queued before the driver ends.
        if let Some(p) = persistence {
            p.close().await;
        }
    }

    fn handle(&mut self, ev: Event) {
        let now = std::time::Instant::now();
        match ev {
            Event::Frame { from, frame } => self.gateway.handle_frame(now, from, frame),
            Event::GroupFrame { group, from, frame } => {
                self.gateway.handle_group_frame(now, group, from, frame)
            }
            Event::Upstream { session, packet } => {
                self.gateway.handle_upstream(now, session, packet)
            }
            Event::UpstreamClosed { session } => {
                self.sessions.remove(&session);
                self.gateway.handle_upstream_closed(now, session)
            }
        }
    }

    async fn flush(&mut self, persistence: Option<&persistence::Persistence>) {
        while let Some(out) = self.gateway.poll_output() {
            match out {
                Output::Transmit { to, frame } => self.transmit(&to, frame).await,
                Output::Broadcast { frame } => {
                    for t in &self.transports {
                        if let Transport::Serial(tx) = t {
                            let msg = SerialOut::Broadcast {
                                frame: frame.clone(),
                            };
                            if tx.try_send(msg).is_err() {
                                debug!("serial port backlog full; broadcast dropped");
                            }
                        }
                    }
                    for g in 0..self.groups.len() {
                        self.multicast(g, 0, &frame).await;
                    }
                    if let Some(addr) = self.advertise {
                        for t in &self.transports {
                            let Transport::Udp(s) = t else { continue };
                            let same_family =
                                s.local_addr().is_ok_and(|l| l.is_ipv4() == addr.is_ipv4());
                            if same_family {
                                if let Err(e) = s.send_to(&frame, addr).await {
                                    debug!(%addr, error = %e, "ADVERTISE not sent");
                                }
                            }
                        }
                    }
                }
                Output::Multicast {
                    group,
                    radius,
                    frame,
                } => self.multicast(usize::from(group.0), radius, &frame).await,
                Output::Open {
                    session, connect, ..
                } => {
                    let (tx, rx) = mpsc::channel(self.session_depth);
                    self.sessions.insert(session, tx);
                    if self.session_tasks.len() > 2 * self.session_depth.max(self.sessions.len()) {
                        self.session_tasks.retain(|_, t| !t.is_finished());
                    }
                    let client_id = connect.client_id.clone();
                    let after = self.session_tasks.remove(&client_id);
                    let task = tokio::spawn(upstream::run(
                        upstream::SessionParams {
                            session,
                            broker: self.broker,
                            connect,
                            connect_timeout: self.connect_timeout,
                            after,
                        },
                        rx,
                        self.events_tx.clone(),
                    ));
                    self.session_tasks.insert(client_id, task);
                }
                Output::Send { session, packet } => {
                    if let Some(tx) = self.sessions.get(&session) {
                        if tx.try_send(packet).is_err() {
                            // The broker cannot keep up with this session: drop it rather
                            // than block every other device. The core hears it closed.
                            warn!(
                                session = session.0,
                                "upstream session backlog full; closing it"
                            );
                            self.sessions.remove(&session);
                        }
                    }
                }
                Output::Close { session } => {
                    self.sessions.remove(&session);
                }
                Output::Persist { seq, ops } => {
                    if let Some(p) = persistence {
                        p.submit(seq, ops).await;
                    }
                }
            }
        }
    }

    /// Sends `frame` to group `g` from its transport.
    async fn multicast(&self, g: usize, radius: u8, frame: &[u8]) {
        let Some(group) = self.groups.get(g) else {
            return;
        };
        if let Some(Transport::Udp(sock)) = self.transports.get(group.transport) {
            multicast::send(sock, group, radius, frame).await;
        }
    }

    async fn transmit(&self, to: &DeviceAddr, frame: Bytes) {
        match (self.transports.get(usize::from(to.transport.0)), &to.peer) {
            (Some(Transport::Udp(sock)), PeerAddr::Udp(addr)) => {
                if let Err(e) = sock.send_to(&frame, addr).await {
                    debug!(peer = %to, error = %e, "send to device failed");
                }
            }
            (Some(Transport::Serial(tx)), PeerAddr::Link(link)) => {
                let msg = SerialOut::To {
                    link: link.clone(),
                    frame,
                };
                // A full backlog means the line is slower than the core: drop, the core
                // retransmits what needs it.
                if tx.try_send(msg).is_err() {
                    debug!(peer = %to, "serial port backlog full; frame dropped");
                }
            }
            _ => {}
        }
    }
}

async fn sleep_until_std(at: Option<std::time::Instant>) {
    match at {
        Some(at) => {
            let now = std::time::Instant::now();
            let wait = at.saturating_duration_since(now);
            tokio::time::sleep_until(Instant::now() + wait).await
        }
        None => std::future::pending().await,
    }
}
