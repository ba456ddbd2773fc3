//! The tokio shell around the sans-IO core: UDP transports, upstream session tasks, and the
//! driver task that owns the [`Gateway`].
//!
//! Owns sockets, tasks and the clock. Must never hold protocol state of its own: every decision
//! is the core's. No lock is held across `.await`; every channel is bounded
//! (`limits.channel_depth`).

mod udp;
mod upstream;

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::broker::{self, BrokerError, BrokerHandle, EmbeddedSettings};
use crate::config::{BrokerMode, Config};
use crate::core::{DeviceAddr, Gateway, Output, PeerAddr, SessionId, Settings, Stats, TransportId};
use crate::mqtt;

/// What the driver task is told.
#[derive(Debug)]
pub enum Event {
    /// A frame from a device.
    Frame { from: DeviceAddr, frame: Bytes },
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
    #[error("cannot resolve broker address {host}:{port}: {reason}")]
    ResolveBroker {
        host: String,
        port: u16,
        reason: String,
    },
    #[error(transparent)]
    Broker(#[from] BrokerError),
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

/// Raises the open-file limit toward what `max_devices` upstream sockets need.
fn raise_nofile_limit(max_devices: usize) {
    let wanted = (max_devices as u64).saturating_add(256);
    match rlimit::increase_nofile_limit(wanted) {
        Ok(got) if got >= wanted => debug!(limit = got, "open-file limit"),
        Ok(got) => warn!(
            limit = got,
            wanted,
            "open-file limit is below what limits.max_devices needs; raise it (ulimit -n / LimitNOFILE=)"
        ),
        Err(e) => warn!(error = %e, wanted, "cannot raise the open-file limit"),
    }
}

/// Binds the transports and starts the driver. Returns once everything is listening.
pub async fn start(config: &Config) -> Result<Running, ShellError> {
    raise_nofile_limit(config.limits.max_devices);
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

    let mut sockets = Vec::new();
    let mut udp_addrs = Vec::new();
    for (i, t) in config.transports.udp.iter().enumerate() {
        let sock = UdpSocket::bind(t.bind)
            .await
            .map_err(|source| ShellError::BindUdp {
                addr: t.bind,
                source,
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
            sock.clone(),
            events_tx.clone(),
            config.limits.max_frame_size,
            shutdown_rx.clone(),
        ));
        sockets.push(sock);
        udp_addrs.push(local);
    }

    let settings = settings_from(config);
    let gateway = Gateway::new(settings, std::time::Instant::now());
    let (stats_tx, stats_rx) = watch::channel(Stats::default());
    let driver = Driver {
        gateway,
        sockets,
        sessions: HashMap::new(),
        broker,
        connect_timeout: config.broker.upstream.connect_timeout,
        session_depth: depth,
        events_tx,
        advertise: config.discovery.advertise.as_ref().map(|a| a.address),
        stats: stats_tx,
        disconnect_on_shutdown: embedded.is_some(),
    };
    let handle = tokio::spawn(driver.run(events_rx, shutdown_rx));
    Ok(Running {
        udp_addrs,
        stats: stats_rx,
        shutdown: shutdown_tx,
        driver: handle,
        broker: embedded,
    })
}

/// Runs the gateway until ctrl-c (SIGINT) or SIGTERM.
pub async fn run(config: Config) -> Result<(), ShellError> {
    let running = start(&config).await?;
    wait_for_signal().await;
    info!("shutting down");
    running.shutdown().await;
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The one task that owns the [`Gateway`].
struct Driver {
    gateway: Gateway,
    sockets: Vec<Arc<UdpSocket>>,
    sessions: HashMap<SessionId, mpsc::Sender<mqtt::Packet>>,
    broker: SocketAddr,
    connect_timeout: Duration,
    session_depth: usize,
    events_tx: mpsc::Sender<Event>,
    advertise: Option<SocketAddr>,
    stats: watch::Sender<Stats>,
    /// Say DISCONNECT on every session at shutdown (embedded broker: no wills) and wait for
    /// the sessions to close.
    disconnect_on_shutdown: bool,
}

/// How long shutdown waits for the upstream sessions to say DISCONNECT and close.
const DISCONNECT_WAIT: Duration = Duration::from_secs(2);

impl Driver {
    async fn run(mut self, mut events: mpsc::Receiver<Event>, mut shutdown: watch::Receiver<bool>) {
        // The core's clock is std's; tokio's Instant converts for sleeping.
        loop {
            let wake = self.gateway.poll_timeout();
            tokio::select! {
                biased;
                _ = shutdown.changed() => break,
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
            self.flush().await;
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
    }

    fn handle(&mut self, ev: Event) {
        let now = std::time::Instant::now();
        match ev {
            Event::Frame { from, frame } => self.gateway.handle_frame(now, from, frame),
            Event::Upstream { session, packet } => {
                self.gateway.handle_upstream(now, session, packet)
            }
            Event::UpstreamClosed { session } => {
                self.sessions.remove(&session);
                self.gateway.handle_upstream_closed(now, session)
            }
        }
    }

    async fn flush(&mut self) {
        while let Some(out) = self.gateway.poll_output() {
            match out {
                Output::Transmit { to, frame } => self.transmit(&to, &frame).await,
                Output::Broadcast { frame } => {
                    if let Some(addr) = self.advertise {
                        for s in &self.sockets {
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
                Output::Open { session, connect } => {
                    let (tx, rx) = mpsc::channel(self.session_depth);
                    self.sessions.insert(session, tx);
                    tokio::spawn(upstream::run(
                        upstream::SessionParams {
                            session,
                            broker: self.broker,
                            connect,
                            connect_timeout: self.connect_timeout,
                        },
                        rx,
                        self.events_tx.clone(),
                    ));
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
            }
        }
    }

    async fn transmit(&self, to: &DeviceAddr, frame: &[u8]) {
        let Some(sock) = self.sockets.get(usize::from(to.transport.0)) else {
            return;
        };
        if let PeerAddr::Udp(addr) = &to.peer {
            if let Err(e) = sock.send_to(frame, addr).await {
                debug!(peer = %to, error = %e, "send to device failed");
            }
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
