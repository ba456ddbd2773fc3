//! The tokio shell around the sans-IO core: start-up (binding the transports, starting the
//! embedded broker, opening the store) and [`run`] until a signal.
//!
//! The shell owns sockets, tasks and the clock. Must never hold protocol state of its own:
//! every decision is the core's. No lock is held across `.await`; every channel is bounded
//! (`limits.channel_depth`).
//!
//! This file owns [`start`], [`Running`] and [`run`], and the open-file limit. The driver loop
//! is `driver.rs`, the mapping of [`Config`] to the core's [`Settings`](crate::core::Settings)
//! is `settings.rs`, signal handling `signals.rs`, the message every task sends the driver
//! `event.rs`, the start-up error `error.rs`; the transports (`udp.rs`, `serial.rs`,
//! `multicast.rs`), the upstream sessions (`upstream.rs`) and the store writer
//! (`persistence.rs`) are one file each. None of them imports from this file.

pub mod check;
mod credentials;
mod driver;
mod error;
mod event;
mod http;
mod multicast;
mod outbox;
mod persistence;
mod reload;
mod serial;
mod settings;
mod signals;
mod source;
mod status;
mod tls;
mod udp;
mod upstream;

pub use error::ShellError;
pub use event::Event;
pub use reload::{LoadConfig, Reloader, SetLogFilter};
pub use serial::SerialOut;
pub use settings::{embedded_settings, settings_from};

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::broker::{self, BrokerHandle};
use crate::config::{BrokerMode, Config};
use crate::core::{Gateway, GroupId, Stats, TransportId};
use driver::{Driver, Transport};
use signals::Signals;

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

/// Binds `http.bind`; `None` (logged) when it cannot.
async fn http_bind(addr: SocketAddr) -> Option<tokio::net::TcpListener> {
    match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::error!(%addr, error = %e, "cannot bind http.bind; running without the status page and /metrics (set http.bind to a free port, or null)");
            None
        }
    }
}

/// `http.username` and its password, read once from its source (the same reading as every
/// other password: `credentials::read_secret`).
fn http_credentials(config: &Config) -> Result<Option<http::Credentials>, ShellError> {
    let Some(user) = &config.http.username else {
        return Ok(None);
    };
    let password = credentials::read_secret("http", &config.http.secret())?.ok_or_else(|| {
        ShellError::Credential {
            key: "http.password".into(),
            reason: "http.username is set but no password is".into(),
        }
    })?;
    Ok(Some(http::Credentials::new(user, &password.into_inner())))
}

/// A started gateway.
pub struct Running {
    /// The bound address of each `transports.udp[]` entry, in order (port 0 resolved).
    pub udp_addrs: Vec<SocketAddr>,
    /// Where the status page and `/metrics` listen (`http.bind`, port 0 resolved).
    pub http_addr: Option<SocketAddr>,
    stats: watch::Receiver<Stats>,
    shutdown: watch::Sender<bool>,
    /// The driver's event channel (SIGHUP's reload goes through it).
    events: mpsc::Sender<Event>,
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
    /// SIGHUP: reads the configuration again and applies what can change with every device
    /// connected (see `reload.rs`), logging what changed and what waits for a restart.
    /// Returns the configuration now in effect, or `None` (the error logged with its file,
    /// line and key, or naming the secret or certificate that could not be read) when
    /// nothing was applied.
    pub async fn reload(&mut self, running: &Config, reloader: &Reloader) -> Option<Config> {
        let new = match (reloader.load)() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("reload: {e}; the running configuration stays");
                return None;
            }
        };
        let plan = reload::plan(running, &new);
        if plan.applied.is_empty() && plan.restart.is_empty() {
            info!("reload: gateway.yaml unchanged");
            return Some(plan.live);
        }
        let settings = match settings_from(&plan.live) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("reload: {e}; the running configuration stays");
                return None;
            }
        };
        // New device credentials and certificates are read before anything is applied.
        let (credentials, tls) =
            if plan.devices_changed() && plan.live.broker.mode == BrokerMode::Upstream {
                let loaded = credentials::Credentials::load(&plan.live)
                    .and_then(|c| tls::Tls::load(&plan.live).map(|t| (c, t)));
                match loaded {
                    Ok((c, t)) => (Some(c), Some(t)),
                    Err(e) => {
                        tracing::error!("reload: {e}; the running configuration stays");
                        return None;
                    }
                }
            } else {
                (None, None)
            };
        if plan.applied.iter().any(|k| k == "log.level") {
            if let Err(e) = (reloader.set_log_filter)(&plan.live.log.level) {
                warn!("reload: log.level: {e}");
            }
        }
        let (reply_tx, reply_rx) = tokio::sync::oneshot::channel();
        let request = event::ReloadRequest {
            settings,
            credentials,
            tls,
            reply: reply_tx,
        };
        if self
            .events
            .send(Event::Reload(Box::new(request)))
            .await
            .is_err()
        {
            return None;
        }
        let ended = reply_rx.await.unwrap_or(0);
        if !plan.applied.is_empty() {
            info!(
                applied = %plan.applied.join(", "),
                devices_ended = ended,
                "reload: applied with every device still connected"
            );
        }
        if !plan.restart.is_empty() {
            warn!(
                needs_restart = %plan.restart.join(", "),
                "reload: these changes take effect at the next start"
            );
        }
        Some(plan.live)
    }

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
    // Aggregating mode: devices share `connections` upstream sockets and cost no file each.
    let per_device = match config.broker.upstream.sessions {
        crate::config::Sessions::Aggregating => 0,
        crate::config::Sessions::Transparent => files_per_device(mode),
    };
    let wanted = (max_devices as u64)
        .saturating_mul(per_device)
        .saturating_add(RESERVED_FILES + 2 * config.broker.upstream.connections as u64);
    let got = match rlimit::increase_nofile_limit(wanted) {
        Ok(got) => got,
        Err(e) => {
            warn!(error = %e, wanted, "cannot raise the open-file limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(wanted, |(soft, _)| soft)
        }
    };
    if got >= wanted || per_device == 0 {
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
    // The HTTP listener's password before anything starts: an unreadable one stops the start.
    // A port that is taken does not: the devices need the gateway more than a person needs
    // its status page (logged as an error).
    let http_listener = match config.http.bind {
        Some(addr) => {
            let auth = http_credentials(config)?;
            http_bind(addr).await.map(|l| (l, auth))
        }
        None => None,
    };
    // Secrets and certificates are read once, before anything starts.
    let mut credentials = credentials::Credentials::load(config)?;
    let tls = match config.broker.mode {
        BrokerMode::Upstream => tls::Tls::load(config)?,
        BrokerMode::Embedded => None,
    };
    // Embedded: start the broker first, then treat it like any upstream broker.
    let (broker, embedded) = match config.broker.mode {
        BrokerMode::Embedded => {
            let handle = broker::start(&embedded_settings(config)?).await?;
            (embedded_client_addr(&handle), Some(handle))
        }
        BrokerMode::Upstream => {
            let addr = broker_addr(config)?;
            info!(broker = %addr, "upstream broker");
            (addr, None)
        }
    };
    let sources = match config.broker.mode {
        BrokerMode::Upstream => {
            source::Sources::new(&config.broker.upstream.source_addresses, broker)?
        }
        BrokerMode::Embedded => source::Sources::default(),
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
    let mut transport_info = Vec::new();
    let mut udp_addrs = Vec::new();
    // Read by the driver itself, UDP transports then multicast groups.
    let mut receivers = Vec::new();
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
        receivers.push(udp::Receiver::new(
            transport,
            None,
            sock.clone(),
            config.limits.max_frame_size,
        ));
        transports.push(Transport::Udp(sock));
        transport_info.push(status::TransportInfo {
            kind: "udp",
            name: local.to_string(),
        });
        udp_addrs.push(local);
    }
    let mut groups = Vec::new();
    for (i, entry) in config.discovery.multicast.iter().enumerate() {
        let (group, sock) =
            multicast::open(i, entry, &udp_addrs, config.limits.udp_receive_buffer)?;
        info!(group = %group.dest, transport = group.transport, "joined discovery multicast group");
        receivers.push(udp::Receiver::new(
            TransportId(u16::try_from(group.transport).unwrap_or(u16::MAX)),
            Some(GroupId(u16::try_from(i).unwrap_or(u16::MAX))),
            Arc::new(sock),
            config.limits.max_frame_size,
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
        transport_info.push(status::TransportInfo {
            kind: "serial",
            name: t.path.display().to_string(),
        });
    }

    let mut settings = settings_from(config)?;
    settings.max_devices = max_devices;
    if let Some(handle) = &embedded {
        // Device sessions log in with the broker's per-process credential, so users_file and
        // acl_file never hinder them (docs/security.md).
        let login = handle.gateway_login();
        credentials.use_embedded_login(&login.username, &login.password);
    }
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
    // The status endpoint asks the driver over its event channel, like any other task.
    let http_events = events_tx.clone();
    let reload_events = events_tx.clone();
    let driver = Driver {
        gateway,
        transports,
        receivers,
        sessions: HashMap::new(),
        dirty: Vec::new(),
        session_tasks: HashMap::new(),
        broker,
        sources,
        credentials,
        tls,
        failures: upstream::FailureLog::default(),
        connect_timeout: config.broker.upstream.connect_timeout,
        session_depth: depth,
        shared_depth: config.limits.shared_session_backlog,
        events_tx,
        advertise: config.discovery.advertise.as_ref().and_then(|a| a.address),
        groups,
        stats: stats_tx,
        store_counters: persistence.as_ref().map(persistence::Persistence::counters),
        persistence,
        disconnect_on_shutdown: embedded.is_some(),
        transport_counters: vec![Default::default(); transport_info.len()],
        transport_info,
        upstream_counters: Default::default(),
        connacked: HashMap::new(),
    };
    let (failed_tx, failed_rx) = watch::channel(None);
    let handle = tokio::spawn(driver.run(events_rx, shutdown_rx.clone(), failed_tx));
    let http_addr = match http_listener {
        Some((listener, auth)) => {
            let addr = listener.local_addr().ok();
            tokio::spawn(http::serve(http::HttpParams {
                listener,
                auth,
                max_connections: config.http.max_connections,
                events: http_events,
                info: http::GatewayInfo {
                    version: env!("CARGO_PKG_VERSION"),
                    broker_mode: match config.broker.mode {
                        BrokerMode::Embedded => "embedded",
                        BrokerMode::Upstream => "upstream",
                    },
                    broker,
                },
                started: http::Clock::now(),
                shutdown: shutdown_rx,
            }));
            addr
        }
        None => None,
    };
    Ok(Running {
        http_addr,
        udp_addrs,
        stats: stats_rx,
        shutdown: shutdown_tx,
        events: reload_events,
        driver: handle,
        broker: embedded,
        failed: failed_rx,
    })
}

/// Runs the gateway until ctrl-c (SIGINT) or SIGTERM; SIGHUP re-reads the configuration
/// with `reloader` (without one, SIGHUP is logged and ignored).
pub async fn run(config: Config, reloader: Option<Reloader>) -> Result<(), ShellError> {
    // Handlers first: a signal that arrives while the gateway starts still stops it cleanly.
    let mut signals = Signals::install();
    let mut hangup = signals.take_hangup();
    let mut running = start(&config).await?;
    let mut current = config;
    let failure = loop {
        tokio::select! {
            _ = signals.stop() => break None,
            reason = running.failure() => break Some(reason),
            _ = hangup.recv() => match &reloader {
                Some(r) => {
                    if let Some(next) = running.reload(&current, r).await {
                        current = next;
                    }
                }
                None => warn!("SIGHUP: no configuration file to read again (running on built-in defaults)"),
            },
        }
    };
    info!("shutting down");
    running.shutdown().await;
    match failure {
        None => Ok(()),
        Some(reason) => Err(ShellError::Stopped(reason)),
    }
}
