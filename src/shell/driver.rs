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

use super::credentials::Credentials;
use super::event::Event;
use super::outbox::Outbox;
use super::serial::SerialOut;
use super::status::{
    Query, Snapshot, StatusRequest, StoreCounters, TransportCounters, TransportInfo,
    UpstreamCounters,
};
use super::tls::Tls;
use super::{multicast, persistence, reload, source, udp, upstream};
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
    /// The UDP sockets (transports, then multicast groups), read by this task itself; taken
    /// by `run`.
    pub(super) receivers: Vec<udp::Receiver>,
    pub(super) sessions: HashMap<SessionId, Arc<Outbox>>,
    /// Sessions given packets in this turn, written (or handed to their task) at its end, so
    /// several packets for one session make one write. Emptied every turn.
    pub(super) dirty: Vec<SessionId>,
    /// The latest session task per upstream ClientId, so a new session waits for the old one.
    pub(super) session_tasks: HashMap<String, JoinHandle<()>>,
    pub(super) broker: SocketAddr,
    /// `broker.upstream.source_addresses`, one per new session in turn.
    pub(super) sources: source::Sources,
    /// Filled into each session's CONNECT (the core sends none).
    pub(super) credentials: Credentials,
    /// `None`: plain TCP.
    pub(super) tls: Option<Tls>,
    /// Failures to reach the broker, logged once per reason per interval.
    pub(super) failures: upstream::FailureLog,
    pub(super) connect_timeout: Duration,
    pub(super) session_depth: usize,
    /// The backlog of the gateway's own sessions (`limits.shared_session_backlog`).
    pub(super) shared_depth: usize,
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
    /// For the status endpoint: what each transport is, and its frames (indexed like
    /// `transports`).
    pub(super) transport_info: Vec<TransportInfo>,
    pub(super) transport_counters: Vec<TransportCounters>,
    pub(super) upstream_counters: UpstreamCounters,
    /// Sessions whose CONNACK came (true: it accepted them) and whose connection is still up
    /// (bounded by the open sessions: removed when the connection ends).
    pub(super) connacked: HashMap<SessionId, bool>,
    pub(super) store_counters: Option<Arc<StoreCounters>>,
}

/// The next durable sequence; `None` once the store's writer has stopped; never without store.
async fn next_confirmed(p: &mut Option<persistence::Persistence>) -> Option<u64> {
    match p {
        Some(p) => p.confirmed().await,
        None => std::future::pending().await,
    }
}

/// What woke the driver.
enum Step {
    Shutdown,
    /// The store's writer confirmed a sequence; `None`: it stopped.
    Persisted(Option<u64>),
    /// `None`: every sender is gone.
    Event(Option<Event>),
    /// Datagrams wait on `receivers[i]`.
    Datagrams(usize),
    Timer,
}

/// The next event or ready UDP socket, looked at in an order that rotates with `turn`.
fn next_input<'a>(
    events: &'a mut mpsc::Receiver<Event>,
    receivers: &'a [udp::Receiver],
    turn: usize,
) -> impl std::future::Future<Output = Step> + 'a {
    std::future::poll_fn(move |cx| {
        let n = receivers.len() + 1;
        for k in 0..n {
            let i = (turn + k) % n;
            if i == receivers.len() {
                if let std::task::Poll::Ready(ev) = events.poll_recv(cx) {
                    return std::task::Poll::Ready(Step::Event(ev));
                }
            } else if receivers[i].poll_ready(cx).is_ready() {
                return std::task::Poll::Ready(Step::Datagrams(i));
            }
        }
        std::task::Poll::Pending
    })
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
        let mut receivers = std::mem::take(&mut self.receivers);
        // Sessions reopened by the restore go out first.
        self.flush(persistence.as_ref()).await;
        // Which input is looked at first this turn: rotates, so neither the event channel nor
        // any one socket can starve the others.
        let mut turn = 0usize;
        // One timer for the driver's life, moved only when the core's next deadline changes
        // (not registered and dropped again every turn).
        let timer = tokio::time::sleep(Duration::from_secs(3600));
        tokio::pin!(timer);
        let mut armed: Option<std::time::Instant> = None;
        loop {
            let wake = self.gateway.poll_timeout();
            if wake != armed {
                // The core's clock is std's; tokio's Instant converts for sleeping.
                let at = match wake {
                    Some(at) => {
                        Instant::now() + at.saturating_duration_since(std::time::Instant::now())
                    }
                    None => Instant::now() + Duration::from_secs(3600),
                };
                timer.as_mut().reset(at);
                armed = wake;
            }
            turn = turn.wrapping_add(1);
            let step = tokio::select! {
                biased;
                _ = shutdown.changed() => Step::Shutdown,
                seq = next_confirmed(&mut persistence) => Step::Persisted(seq),
                input = next_input(&mut events, &receivers, turn) => input,
                _ = &mut timer, if wake.is_some() => Step::Timer,
            };
            match step {
                Step::Shutdown => break,
                Step::Persisted(Some(seq)) => self
                    .gateway
                    .handle_persisted(std::time::Instant::now(), seq),
                Step::Persisted(None) => {
                    // Acknowledgements that need the store would wait (and pile up) for
                    // ever: stop, so a supervisor restarts the gateway on a working store.
                    let reason =
                        "the store can no longer write (see the error above); stopping".to_string();
                    error!("{reason}");
                    failed.send_replace(Some(reason));
                    break;
                }
                Step::Event(None) => break,
                Step::Event(Some(ev)) => {
                    self.handle(ev);
                    // Drain what is already queued before looking at timers again.
                    for _ in 0..256 {
                        match events.try_recv() {
                            Ok(ev) => self.handle(ev),
                            Err(_) => break,
                        }
                    }
                }
                Step::Datagrams(i) => {
                    let now = std::time::Instant::now();
                    receivers[i].drain(|group, from, frame| {
                        self.count_in(&from, frame.len());
                        match group {
                            None => self.gateway.handle_frame(now, from, frame),
                            Some(group) => self.gateway.handle_group_frame(now, group, from, frame),
                        }
                    });
                }
                Step::Timer => {
                    // Fired: armed again below for whatever the core says next.
                    armed = None;
                    self.gateway.handle_timeout(std::time::Instant::now())
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
        // Closing each outbox lets its task write what is left and close.
        let mut open = self.sessions.len();
        for outbox in self.sessions.values() {
            if self.disconnect_on_shutdown {
                outbox.push_own(&mqtt::Packet::Disconnect);
            }
            outbox.close();
        }
        if !self.disconnect_on_shutdown {
            open = 0; // upstream mode: the device sessions just close
        }
        self.sessions.clear();
        let deadline = Instant::now() + DISCONNECT_WAIT;
        while open > 0 || !closing.is_empty() {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Some(Event::UpstreamClosed { session, .. })) => {
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
            Event::Frame { from, frame } => {
                self.count_in(&from, frame.len());
                self.gateway.handle_frame(now, from, frame)
            }
            Event::Upstream { session, packet } => {
                if let mqtt::Packet::ConnAck { code, .. } = &packet {
                    self.count_connack(session, *code == mqtt::ConnectReturnCode::Accepted);
                }
                self.gateway.handle_upstream(now, session, packet)
            }
            Event::UpstreamClosed { session, failure } => {
                if let Some(reason) = failure {
                    self.failures.failed(Instant::now(), self.broker, &reason);
                }
                self.count_closed(session);
                self.sessions.remove(&session);
                self.gateway.handle_upstream_closed(now, session)
            }
            Event::Status(request) => self.answer(now, request),
            Event::Reload(request) => {
                let request = *request;
                // Only the live parts: what start-up adjusted stays as it runs.
                let settings = reload::live_settings(self.gateway.settings(), request.settings);
                let ended = self.gateway.reconfigure(now, settings);
                if let Some(credentials) = request.credentials {
                    self.credentials = credentials;
                }
                if let Some(tls) = request.tls {
                    self.tls = tls;
                }
                let _ = request.reply.send(ended);
            }
        }
    }

    // ---------------------------------------------------------------- status endpoint

    fn count_in(&mut self, from: &DeviceAddr, len: usize) {
        if let Some(c) = self
            .transport_counters
            .get_mut(usize::from(from.transport.0))
        {
            c.frames_in += 1;
            c.bytes_in += len as u64;
        }
    }

    fn count_out(&mut self, transport: usize, len: usize, sent: bool) {
        if let Some(c) = self.transport_counters.get_mut(transport) {
            if sent {
                c.frames_out += 1;
                c.bytes_out += len as u64;
            } else {
                c.send_failed += 1;
            }
        }
    }

    fn count_connack(&mut self, session: SessionId, accepted: bool) {
        let c = &mut self.upstream_counters;
        let was_up = self.connacked.insert(session, accepted) == Some(true);
        if accepted {
            c.accepted += 1;
            c.failing_since_success = 0;
            if !was_up {
                c.connected += 1;
            }
        } else {
            c.refused += 1;
            c.failing_since_success += 1;
            if was_up {
                c.connected = c.connected.saturating_sub(1);
            }
        }
    }

    fn count_closed(&mut self, session: SessionId) {
        let c = &mut self.upstream_counters;
        match self.connacked.remove(&session) {
            Some(was_up) => {
                c.closed += 1;
                if was_up {
                    c.connected = c.connected.saturating_sub(1);
                }
            }
            // No CONNACK ever came: the connection failed (refused, timed out, reset).
            None => {
                c.failed += 1;
                c.failing_since_success += 1;
            }
        }
    }

    /// A snapshot for the status endpoint: built only when asked, never per message.
    fn answer(&self, now: std::time::Instant, request: StatusRequest) {
        let devices = match &request.query {
            Query::Summary => Vec::new(),
            Query::Devices => self.gateway.device_views().collect(),
            Query::Device(id) => self.gateway.device_view(id).into_iter().collect(),
        };
        let snapshot = Snapshot {
            taken: now,
            stats: self.gateway.stats(),
            totals: self.gateway.device_totals(),
            devices,
            transports: self
                .transport_info
                .iter()
                .cloned()
                .zip(self.transport_counters.iter().copied())
                .collect(),
            upstream: self.upstream_counters,
            store: self.store_counters.as_ref().map(|c| c.read()),
            aggregate: self.gateway.aggregate_sizes(),
        };
        // The asker may have given up (timeout, closed connection): nothing to do then.
        let _ = request.reply.send(snapshot);
    }

    async fn flush(&mut self, persistence: Option<&persistence::Persistence>) {
        self.carry_out(persistence).await;
        // One write per session for everything it was given in this turn.
        for session in self.dirty.drain(..) {
            if let Some(outbox) = self.sessions.get(&session) {
                outbox.kick();
            }
        }
    }

    async fn carry_out(&mut self, persistence: Option<&persistence::Persistence>) {
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
                    session,
                    mut connect,
                    device,
                } => {
                    self.credentials.fill(&mut connect, device.as_ref());
                    let tls = self
                        .tls
                        .as_ref()
                        .map(|t| t.target(device.as_ref().and_then(|d| d.rule)));
                    // A device's session waits for `channel_depth` packets at most; one of
                    // the gateway's own (a shared session carries many devices) for more.
                    let limit = if device.is_some() {
                        self.session_depth
                    } else {
                        self.shared_depth
                    };
                    let outbox = Arc::new(Outbox::new(limit));
                    if let Some(old) = self.sessions.insert(session, outbox.clone()) {
                        old.close();
                    }
                    if self.session_tasks.len() > 2 * self.session_depth.max(self.sessions.len()) {
                        self.session_tasks.retain(|_, t| !t.is_finished());
                    }
                    let client_id = connect.client_id.clone();
                    let after = self.session_tasks.remove(&client_id);
                    let task = tokio::spawn(upstream::run(
                        upstream::SessionParams {
                            session,
                            broker: self.broker,
                            source: self.sources.next(),
                            tls,
                            connect,
                            connect_timeout: self.connect_timeout,
                            after,
                        },
                        outbox,
                        self.events_tx.clone(),
                    ));
                    self.session_tasks.insert(client_id, task);
                }
                Output::Send { session, packet } => {
                    if let Some(outbox) = self.sessions.get(&session) {
                        match outbox.push(&packet) {
                            Ok(true) => self.dirty.push(session),
                            Ok(false) => {}
                            Err(_) => {
                                // The broker cannot keep up with this session: drop it rather
                                // than block every other device. The core hears it closed.
                                warn!(
                                    session = session.0,
                                    "upstream session backlog full; closing it"
                                );
                                outbox.close();
                                self.sessions.remove(&session);
                            }
                        }
                    }
                }
                Output::Close { session } => {
                    if let Some(outbox) = self.sessions.remove(&session) {
                        outbox.close();
                    }
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

    async fn transmit(&mut self, to: &DeviceAddr, frame: Bytes) {
        let index = usize::from(to.transport.0);
        let len = frame.len();
        let sent = match (self.transports.get(index), &to.peer) {
            (Some(Transport::Udp(sock)), PeerAddr::Udp(addr)) => {
                match sock.send_to(&frame, addr).await {
                    Ok(_) => true,
                    Err(e) => {
                        debug!(peer = %to, error = %e, "send to device failed");
                        false
                    }
                }
            }
            (Some(Transport::Serial(tx)), PeerAddr::Link(link)) => {
                let msg = SerialOut::To {
                    link: link.clone(),
                    frame,
                };
                // A full backlog means the line is slower than the core: drop, the core
                // retransmits what needs it.
                let queued = tx.try_send(msg).is_ok();
                if !queued {
                    debug!(peer = %to, "serial port backlog full; frame dropped");
                }
                queued
            }
            _ => return,
        };
        self.count_out(index, len, sent);
    }
}
