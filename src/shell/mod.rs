//! The tokio shell around the sans-IO core: UDP transports, upstream session tasks, and the
//! driver task that owns the [`Gateway`].
//!
//! Owns sockets, tasks and the clock. Must never hold protocol state of its own: every decision
//! is the core's. No lock is held across `.await`; every channel is bounded
//! (`limits.channel_depth`).

mod multicast;
mod persistence;
mod serial;
mod udp;
mod upstream;

pub use serial::SerialOut;

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::broker::{self, BrokerError, BrokerHandle, EmbeddedSettings};
use crate::config::{BrokerMode, Config};
use crate::core::settings::SourceLimits;
use crate::core::{
    DeviceAddr, Gateway, GroupId, Output, PeerAddr, SessionId, Settings, Stats, TransportId,
};
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
    /// An upstream session's connection ended.
    UpstreamClosed { session: SessionId },
}

/// Errors that stop the gateway from starting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShellError {
    #[error("cannot bind UDP {addr}: {source}")]
    BindUdp {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot open serial port {}: {source} (set transports.serial[].required: false to start without it and retry)", .path.display())]
    OpenSerial {
        path: PathBuf,
        source: tokio_serial::Error,
    },
    /// `store.path`: the store cannot be opened (the source names the file and what to do).
    #[error("store.path")]
    Store(#[from] crate::store::StoreError),
    /// The gateway stopped by itself.
    #[error("{0}")]
    Stopped(String),
    #[error("cannot resolve broker address {host}:{port}: {reason}")]
    ResolveBroker {
        host: String,
        port: u16,
        reason: String,
    },
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("discovery.multicast[{index}]: {reason}")]
    Multicast { index: usize, reason: String },
}

/// The core's settings from the configuration file.
pub fn settings_from(config: &Config) -> Settings {
    // Device sessions log in to the embedded broker with its own credentials.
    let credentials = match config.broker.mode {
        BrokerMode::Upstream => (
            &config.broker.upstream.username,
            &config.broker.upstream.password,
        ),
        BrokerMode::Embedded => (
            &config.broker.embedded.username,
            &config.broker.embedded.password,
        ),
    };
    Settings {
        gateway_id: config.gateway.id,
        predefined_topics: config
            .predefined_topics
            .iter()
            .map(|t| (t.id, t.topic.clone()))
            .collect(),
        max_devices: config.limits.max_devices,
        max_topics_per_device: config.limits.max_topics_per_device,
        max_queued_per_device: config.limits.max_queued_per_device,
        max_frame_size: config.limits.max_frame_size,
        max_client_id_len: config.limits.max_client_id_len,
        retry_interval: config.timers.retry_interval,
        max_retries: u32::from(config.timers.max_retries),
        advertise_interval: config.discovery.advertise.as_ref().map(|a| a.interval),
        upstream_keep_alive: config.broker.upstream.keep_alive,
        upstream_connect_timeout: config.broker.upstream.connect_timeout,
        client_id_prefix: config.broker.upstream.client_id_prefix.clone(),
        username: credentials.0.clone(),
        password: credentials.1.as_ref().map(|p| p.as_bytes().to_vec()),
        sleep_buffer_messages: config.sleep.buffer_messages,
        sleep_buffer_bytes: config.sleep.buffer_bytes,
        sleep_keep_qos0: config.sleep.keep_qos0,
        persistent: false,
        per_source: per_source(&config.limits.per_source),
        max_silent_downlink_bytes: config.limits.max_silent_downlink_bytes,
        max_subscriptions_per_device: config.limits.max_subscriptions_per_device,
    }
}

fn per_source(p: &crate::config::PerSource) -> SourceLimits {
    let u32_of = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
    SourceLimits {
        devices_per_address: p.devices_per_address,
        devices_per_subnet: p.devices_per_subnet,
        pending_per_address: p.pending_per_address,
        pending_per_subnet: p.pending_per_subnet,
        connects_per_second: u32_of(p.connects_per_second),
        connect_burst: u32_of(p.connect_burst),
        ipv4_prefix: u8::try_from(p.ipv4_subnet_prefix).unwrap_or(32),
        ipv6_prefix: u8::try_from(p.ipv6_subnet_prefix).unwrap_or(128),
    }
}

/// The embedded broker's settings from `broker.embedded`.
pub fn embedded_settings(config: &Config) -> EmbeddedSettings {
    let e = &config.broker.embedded;
    EmbeddedSettings {
        bind: e.bind,
        data_dir: e.data_dir.clone(),
        username: e.username.clone(),
        password: e.password.clone(),
        allow_anonymous: e.allow_anonymous,
        max_queued_messages: e.max_queued_messages,
    }
}

/// Where device sessions reach the embedded broker: its bound address, or loopback when it
/// listens on every interface.
fn embedded_client_addr(broker: &BrokerHandle) -> SocketAddr {
    let mut addr = broker.local_addr();
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    addr
}

/// The upstream broker the device sessions connect to.
fn broker_addr(config: &Config) -> Result<SocketAddr, ShellError> {
    let (host, port) = (
        config.broker.upstream.host.clone(),
        config.broker.upstream.port,
    );
    (host.as_str(), port)
        .to_socket_addrs()
        .map_err(|e| e.to_string())
        .and_then(|mut it| it.next().ok_or_else(|| "no address".to_string()))
        .map_err(|reason| ShellError::ResolveBroker { host, port, reason })
}

/// A started gateway.
pub struct Running {
    /// The bound address of each `transports.udp[]` entry, in order (port 0 resolved).
    pub udp_addrs: Vec<SocketAddr>,
    stats: watch::Receiver<Stats>,
    shutdown: watch::Sender<bool>,
    driver: JoinHandle<()>,
    broker: Option<BrokerHandle>,
    /// Set when the driver stopped by itself (the store can no longer write).
    failed: watch::Receiver<Option<String>>,
}

impl Running {
    /// The core's counters, as of the last event the driver handled.
    pub fn stats(&self) -> Stats {
        *self.stats.borrow()
    }

    /// The embedded broker's address, when `broker.mode` is `embedded` (port 0 resolved).
    pub fn broker_addr(&self) -> Option<SocketAddr> {
        self.broker.as_ref().map(BrokerHandle::local_addr)
    }

    /// Stops the driver, then the embedded broker if there is one.
    ///
    /// Upstream: the sockets close without DISCONNECT: to the broker the devices are gone, so
    /// their wills fire, as for any client that vanished. Embedded: the broker goes down with
    /// the gateway, so each session sends DISCONNECT first (no wills) and the broker's store
    /// is flushed.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.driver.await;
        if let Some(broker) = self.broker {
            broker.shutdown().await;
        }
    }
}

impl Running {
    /// Resolves if the gateway stops by itself, with the reason: the store (or the embedded
    /// broker's journal) failed, so no more durable acknowledgement can be given (a supervisor
    /// should restart it).
    pub async fn failure(&mut self) -> String {
        let (broker, failed) = (&self.broker, &mut self.failed);
        let broker = async {
            match broker {
                Some(b) => b.failure().await,
                None => std::future::pending().await,
            }
        };
        let store = async {
            loop {
                if let Some(reason) = failed.borrow_and_update().clone() {
                    return reason;
                }
                if failed.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::select! {
            reason = broker => reason,
            reason = store => reason,
        }
    }
}

/// Open files the gateway keeps for itself (listening sockets, serial ports, the store, the
/// embedded broker's files, the QoS -1 session, will-update sessions in flight).
const RESERVED_FILES: u64 = 256;

/// Open files one device costs: its upstream socket, and in embedded mode the broker's end of
/// that connection too (both live in this process).
fn files_per_device(mode: BrokerMode) -> u64 {
    match mode {
        BrokerMode::Embedded => 2,
        BrokerMode::Upstream => 1,
    }
}

/// How many devices fit in an open-file limit of `limit`, at most `wanted`.
fn devices_that_fit(limit: u64, wanted: usize, mode: BrokerMode) -> usize {
    let fit = limit.saturating_sub(RESERVED_FILES) / files_per_device(mode);
    usize::try_from(fit)
        .unwrap_or(usize::MAX)
        .clamp(1, wanted.max(1))
}

/// Raises the open-file limit toward what `limits.max_devices` needs in this broker mode and
/// returns the number of devices the limit allows: a device past it is refused with CONNACK
/// congestion instead of failing for want of a socket. Warns once when that is fewer than
/// `limits.max_devices`.
fn raise_nofile_limit(config: &Config) -> usize {
    let max_devices = config.limits.max_devices;
    let mode = config.broker.mode;
    let wanted = (max_devices as u64)
        .saturating_mul(files_per_device(mode))
        .saturating_add(RESERVED_FILES);
    let got = match rlimit::increase_nofile_limit(wanted) {
        Ok(got) => got,
        Err(e) => {
            warn!(error = %e, wanted, "cannot raise the open-file limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(wanted, |(soft, _)| soft)
        }
    };
    if got >= wanted {
        debug!(limit = got, "open-file limit");
        return max_devices;
    }
    let fit = devices_that_fit(got, max_devices, mode);
    warn!(
        limit = got,
        wanted,
        devices = fit,
        "the open-file limit allows only {fit} of limits.max_devices = {max_devices} devices \
         ({} open files each in {mode:?} mode); further devices get CONNACK congestion. \
         Raise it (LimitNOFILE= in the systemd unit, ulimit -n) or lower limits.max_devices",
        files_per_device(mode),
    );
    fit
}

/// Binds the transports and starts the driver. Returns once everything is listening.
pub async fn start(config: &Config) -> Result<Running, ShellError> {
    let max_devices = raise_nofile_limit(config);
    // Groups that do not fit their transport stop the start before anything starts.
    let binds: Vec<SocketAddr> = config.transports.udp.iter().map(|t| t.bind).collect();
    for (i, entry) in config.discovery.multicast.iter().enumerate() {
        multicast::transport(i, entry, &binds)?;
    }
    // Embedded: start the broker first, then treat it like any upstream broker.
    let (broker, embedded) = match config.broker.mode {
        BrokerMode::Embedded => {
            let handle = broker::start(&embedded_settings(config)).await?;
            (embedded_client_addr(&handle), Some(handle))
        }
        BrokerMode::Upstream => {
            let addr = broker_addr(config)?;
            info!(broker = %addr, "upstream broker");
            (addr, None)
        }
    };
    let depth = config.limits.channel_depth.max(16);
    let (events_tx, events_rx) = mpsc::channel(depth);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);

    // Open the serial ports first: a required one that fails stops the start before any task
    // is spawned.
    let mut serial_ports = Vec::new();
    for t in &config.transports.serial {
        let port = match serial::open(t) {
            Ok(port) => Some(port),
            Err(source) if t.required => {
                return Err(ShellError::OpenSerial {
                    path: t.path.clone(),
                    source,
                })
            }
            Err(e) => {
                warn!(path = %t.path.display(), error = %e, "cannot open serial port; retrying with back-off (required: false)");
                None
            }
        };
        serial_ports.push((t, port));
    }

    let mut transports = Vec::new();
    let mut udp_addrs = Vec::new();
    for (i, t) in config.transports.udp.iter().enumerate() {
        let sock = udp::bind(t.bind, config.limits.udp_receive_buffer).map_err(|source| {
            ShellError::BindUdp {
                addr: t.bind,
                source,
            }
        })?;
        if config.discovery.advertise.is_some() {
            let _ = sock.set_broadcast(true);
        }
        let local = sock.local_addr().map_err(|source| ShellError::BindUdp {
            addr: t.bind,
            source,
        })?;
        info!(transport = i, addr = %local, "UDP transport listening");
        let sock = Arc::new(sock);
        let transport = TransportId(u16::try_from(i).unwrap_or(u16::MAX));
        tokio::spawn(udp::read_loop(
            transport,
            None,
            sock.clone(),
            events_tx.clone(),
            config.limits.max_frame_size,
            shutdown_rx.clone(),
        ));
        transports.push(Transport::Udp(sock));
        udp_addrs.push(local);
    }
    let mut groups = Vec::new();
    for (i, entry) in config.discovery.multicast.iter().enumerate() {
        let (group, sock) =
            multicast::open(i, entry, &udp_addrs, config.limits.udp_receive_buffer)?;
        info!(group = %group.dest, transport = group.transport, "joined discovery multicast group");
        tokio::spawn(udp::read_loop(
            TransportId(u16::try_from(group.transport).unwrap_or(u16::MAX)),
            Some(GroupId(u16::try_from(i).unwrap_or(u16::MAX))),
            Arc::new(sock),
            events_tx.clone(),
            config.limits.max_frame_size,
            shutdown_rx.clone(),
        ));
        groups.push(group);
    }
    // Serial transports follow the UDP ones, in config order.
    for (t, port) in serial_ports {
        let transport = TransportId(u16::try_from(transports.len()).unwrap_or(u16::MAX));
        if port.is_some() {
            info!(transport = transport.0, path = %t.path.display(), baud = t.baud, framing = ?t.framing, "serial transport open");
        }
        let (tx, rx) = mpsc::channel(depth);
        tokio::spawn(serial::run(
            serial::PortParams {
                transport,
                config: t.clone(),
                max_frame_size: config.limits.max_frame_size,
                max_peers: config.limits.max_devices,
            },
            port,
            rx,
            events_tx.clone(),
            shutdown_rx.clone(),
        ));
        transports.push(Transport::Serial(tx));
    }

    let mut settings = settings_from(config);
    settings.max_devices = max_devices;
    let now = std::time::Instant::now();
    let (persistence, records) = match &config.store.path {
        Some(path) => {
            let (p, records) = persistence::Persistence::open(path, depth)?;
            settings.persistent = true;
            (Some(p), records)
        }
        None => (None, Vec::new()),
    };
    let mut gateway = Gateway::new(settings, now);
    if persistence.is_some() {
        gateway.restore(now, records);
    }
    let (stats_tx, stats_rx) = watch::channel(Stats::default());
    let driver = Driver {
        gateway,
        transports,
        sessions: HashMap::new(),
        session_tasks: HashMap::new(),
        broker,
        connect_timeout: config.broker.upstream.connect_timeout,
        session_depth: depth,
        events_tx,
        advertise: config.discovery.advertise.as_ref().and_then(|a| a.address),
        groups,
        stats: stats_tx,
        persistence,
        disconnect_on_shutdown: embedded.is_some(),
    };
    let (failed_tx, failed_rx) = watch::channel(None);
    let handle = tokio::spawn(driver.run(events_rx, shutdown_rx, failed_tx));
    Ok(Running {
        udp_addrs,
        stats: stats_rx,
        shutdown: shutdown_tx,
        driver: handle,
        broker: embedded,
        failed: failed_rx,
    })
}

/// Runs the gateway until ctrl-c (SIGINT) or SIGTERM.
pub async fn run(config: Config) -> Result<(), ShellError> {
    // Handlers first: a signal that arrives while the gateway starts still stops it cleanly.
    let signals = Signals::install();
    let mut running = start(&config).await?;
    let failure = tokio::select! {
        _ = signals.wait() => None,
        reason = running.failure() => Some(reason),
    };
    info!("shutting down");
    running.shutdown().await;
    match failure {
        None => Ok(()),
        Some(reason) => Err(ShellError::Stopped(reason)),
    }
}

/// SIGINT and SIGTERM, listened for from the moment they are installed.
struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    ctrl_c: std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<()>> + Send>>,
}

impl Signals {
    fn install() -> Signals {
        let mut ctrl_c: std::pin::Pin<Box<dyn std::future::Future<Output = _> + Send>> =
            Box::pin(tokio::signal::ctrl_c());
        // Polling once registers the SIGINT handler now rather than at the first await.
        let waker = std::task::Waker::noop();
        let _ = ctrl_c
            .as_mut()
            .poll(&mut std::task::Context::from_waker(waker));
        Signals {
            #[cfg(unix)]
            term: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok(),
            ctrl_c,
        }
    }

    async fn wait(self) {
        #[cfg(unix)]
        if let Some(mut term) = self.term {
            tokio::select! {
                _ = self.ctrl_c => {}
                _ = term.recv() => {}
            }
            return;
        }
        let _ = self.ctrl_c.await;
    }
}

/// Where a [`TransportId`] leads: its index in [`Driver::transports`].
enum Transport {
    Udp(Arc<UdpSocket>),
    /// The port's task, which frames and writes.
    Serial(mpsc::Sender<SerialOut>),
}

/// The one task that owns the [`Gateway`].
struct Driver {
    gateway: Gateway,
    /// UDP sockets first, then serial ports, in config order.
    transports: Vec<Transport>,
    sessions: HashMap<SessionId, mpsc::Sender<mqtt::Packet>>,
    /// The latest session task per upstream ClientId, so a new session waits for the old one.
    session_tasks: HashMap<String, JoinHandle<()>>,
    broker: SocketAddr,
    connect_timeout: Duration,
    session_depth: usize,
    events_tx: mpsc::Sender<Event>,
    advertise: Option<SocketAddr>,
    /// `discovery.multicast[]`, indexed by [`GroupId`].
    groups: Vec<multicast::Group>,
    stats: watch::Sender<Stats>,
    /// Taken by `run`, which owns it from then on.
    persistence: Option<persistence::Persistence>,
    /// Say DISCONNECT on every session at shutdown (embedded broker: no wills) and wait for
    /// the sessions to close.
    disconnect_on_shutdown: bool,
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
    async fn run(
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
        // Dropping the session senders lets every upstream task flush and close.
        let mut open = self.sessions.len();
        if self.disconnect_on_shutdown {
            for tx in self.sessions.values() {
                let _ = tx.try_send(mqtt::Packet::Disconnect);
            }
        }
        self.sessions.clear();
        if self.disconnect_on_shutdown {
            let deadline = Instant::now() + DISCONNECT_WAIT;
            while open > 0 {
                match tokio::time::timeout_at(deadline, events.recv()).await {
                    Ok(Some(Event::UpstreamClosed { .. })) => open -= 1,
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                }
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
                Output::Open { session, connect } => {
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
