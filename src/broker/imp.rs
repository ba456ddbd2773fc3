//! The embedded broker itself (built with the `embedded-broker` feature): rmqtt's runtime,
//! its listeners (and the TLS relay in front of one), the login and ACL hooks, and
//! [`BrokerHandle`]. Split from `broker.rs`, which keeps the settings, errors and the stub
//! used without the feature.

use std::net::SocketAddr;
use std::num::NonZeroU16;
use std::path::Path;
use std::time::Duration;

use rmqtt::codec::v5::SubscribeAckReason;
use rmqtt::context::ServerContext;
use rmqtt::hook::Priority;
use rmqtt::hook::{Handler, HookResult, Parameter, ReturnType, Type};
use rmqtt::net::Builder;
use rmqtt::retain::DefaultRetainStorage;
use rmqtt::server::MqttServer;
use rmqtt::session::Session;
use rmqtt::shared::DefaultShared;
use rmqtt::types::Id;
use rmqtt::types::{AuthResult, PublishAclResult, SubscribeAclResult};
use tokio::runtime::Runtime;
use tracing::{debug, info};

use super::acl::{self, Acl};
use super::durable::{Drops, Durability, DurableRetain, DurableShared, Owed};
use super::journal::Journal;
use super::passwd::Users;
use super::{
    check_data_dir, constant_time_eq, BrokerError, EmbeddedSettings, GatewayLogin, GATEWAY_USER,
};

/// A table read at start that a reload (SIGHUP, later) can replace while clients use it:
/// readers clone the inner `Arc` and never hold the lock across `.await`.
type Swappable<T> = std::sync::Arc<std::sync::RwLock<std::sync::Arc<T>>>;

fn current<T>(table: &Swappable<T>) -> std::sync::Arc<T> {
    match table.read() {
        Ok(guard) => guard.clone(),
        // A panicking writer cannot leave a half-built table: it only swaps an `Arc`.
        Err(poisoned) => poisoned.into_inner().clone(),
    }
}

/// The listener id of the TLS relay listener; the plain one's is its port (never 0).
const RELAY_LID: u16 = 0;

/// In-flight window per session (messages sent and not yet acknowledged).
const MAX_INFLIGHT: u16 = 16;
/// Above every plugin's hooks (they use the default, 0), so the journal's hooks run first.
const DURABILITY_PRIORITY: Priority = 1000;

/// How long a persistent session (clean-session 0) and a message queued for it are kept
/// while the client is away. MQTT 3.1.1 sets no limit; rmqtt's defaults (2 h and 5 min)
/// are too short for battery devices.
const OFFLINE_KEEP: Duration = Duration::from_secs(7 * 24 * 3600);
/// sled's own flush period is 500 ms; shutdown waits a little longer than one period.
const FLUSH_WAIT: Duration = Duration::from_millis(700);
/// sled page cache per database; the default (1 GiB) is far beyond a gateway's needs.
const CACHE: &str = "16M";

/// A running embedded broker.
pub struct BrokerHandle {
    local_addr: SocketAddr,
    tls_addr: Option<SocketAddr>,
    gateway_login: GatewayLogin,
    /// The broker's own runtime; `None` once shut down.
    runtime: Option<Runtime>,
    journal: Journal,
    drops: std::sync::Arc<Drops>,
}

/// A handle dropped without [`BrokerHandle::shutdown`] (e.g. when the gateway fails to
/// start after the broker did) still stops the broker.
impl Drop for BrokerHandle {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl BrokerHandle {
    /// The address it listens on (the configured one, with port 0 resolved).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The TLS listener's address (`broker.embedded.tls.bind`, port 0 resolved).
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// What the gateway's device sessions log in with (see [`GatewayLogin`]).
    pub fn gateway_login(&self) -> &GatewayLogin {
        &self.gateway_login
    }

    /// Resolves when the broker can no longer store what it acknowledges (its journal
    /// under `broker.embedded.data_dir` failed to write, e.g. the disk is full), with the
    /// reason naming the directory.
    pub async fn failure(&self) -> String {
        self.journal.failed().await.to_string()
    }

    /// QoS 1/2 messages dropped so far because a session's queue was full
    /// (`broker.embedded.max_queued_messages`).
    pub fn dropped_messages(&self) -> u64 {
        self.drops.count()
    }

    /// Waits for the store's periodic flush, so that everything acknowledged so far is on
    /// disk, then stops the broker: its listener and connections close.
    pub async fn shutdown(mut self) {
        tokio::time::sleep(FLUSH_WAIT).await;
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
        info!(addr = %self.local_addr, "embedded broker stopped");
    }
}

/// A TOML basic string holding `path`.
fn toml_str(path: &Path) -> String {
    let mut out = String::from("\"");
    for c in path.to_string_lossy().chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn sled_config(dir: &Path) -> String {
    format!(
        "storage.type = \"sled\"\nstorage.sled.path = {}\nstorage.sled.cache_capacity = \"{CACHE}\"\n",
        toml_str(dir)
    )
}

/// What `start` reads before the broker runs: the files, checked, and the gateway's login.
struct Loaded {
    users: Option<Swappable<Users>>,
    acl: Option<Swappable<Acl>>,
    tls: Option<(super::TlsSettings, rustls::ServerConfig)>,
    gateway: GatewayLogin,
}

fn read_file(key: &'static str, path: &Path) -> Result<String, BrokerError> {
    std::fs::read_to_string(path).map_err(|e| BrokerError::File {
        key,
        path: path.to_owned(),
        line: None,
        reason: format!("cannot read it: {e}"),
    })
}

fn load(settings: &EmbeddedSettings) -> Result<Loaded, BrokerError> {
    const USERS: &str = "broker.embedded.users_file";
    const ACL: &str = "broker.embedded.acl_file";
    let users = match &settings.users_file {
        Some(path) => {
            let users = Users::parse(&read_file(USERS, path)?).map_err(|e| BrokerError::File {
                key: USERS,
                path: path.clone(),
                line: Some(e.line),
                reason: e.reason,
            })?;
            if users.contains(GATEWAY_USER) {
                return Err(BrokerError::File {
                    key: USERS,
                    path: path.clone(),
                    line: None,
                    reason: format!("the user name `{GATEWAY_USER}` is the gateway's own"),
                });
            }
            if users.is_empty() {
                tracing::warn!(file = %path.display(), "broker.embedded.users_file names no user: nobody can log in with a password");
            }
            info!(users = users.len(), file = %path.display(), "embedded broker users read");
            Some(std::sync::Arc::new(std::sync::RwLock::new(
                std::sync::Arc::new(users),
            )))
        }
        None => None,
    };
    let acl = match &settings.acl_file {
        Some(path) => {
            let acl = Acl::parse(&read_file(ACL, path)?).map_err(|e| BrokerError::File {
                key: ACL,
                path: path.clone(),
                line: Some(e.line),
                reason: e.reason,
            })?;
            info!(file = %path.display(), "embedded broker ACL read");
            Some(std::sync::Arc::new(std::sync::RwLock::new(
                std::sync::Arc::new(acl),
            )))
        }
        None => None,
    };
    let tls = match &settings.tls {
        Some(t) => Some((t.clone(), super::tls::server_config(t)?)),
        None => None,
    };
    Ok(Loaded {
        users,
        acl,
        tls,
        gateway: gateway_login(&settings.data_dir)?,
    })
}

/// A fresh [`GatewayLogin`]: 32 bytes from the OS's random source, as hex.
fn gateway_login(data_dir: &Path) -> Result<GatewayLogin, BrokerError> {
    let mut secret = [0u8; 32];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut secret)
        .map_err(|_| BrokerError::Store {
            path: data_dir.to_owned(),
            reason: "the OS's random source failed".into(),
        })?;
    let password = secret
        .iter()
        .flat_map(|b| {
            let hex = b"0123456789abcdef";
            [hex[usize::from(b >> 4)], hex[usize::from(b & 15)]]
        })
        .collect();
    Ok(GatewayLogin {
        username: GATEWAY_USER.to_owned(),
        password,
    })
}

/// Starts the broker on `settings.bind` (and `tls.bind`) and returns once it is listening.
pub async fn start(settings: &EmbeddedSettings) -> Result<BrokerHandle, BrokerError> {
    if settings.username.as_deref() == Some(GATEWAY_USER) {
        return Err(BrokerError::Store {
            path: settings.data_dir.clone(),
            reason: format!(
                "broker.embedded.username: `{GATEWAY_USER}` is the gateway's own user name"
            ),
        });
    }
    let loaded = load(settings)?;
    let gateway = loaded.gateway.clone();
    check_data_dir(&settings.data_dir)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("mqtt-broker")
        .enable_all()
        .build()
        .map_err(|e| BrokerError::Store {
            path: settings.data_dir.clone(),
            reason: format!("cannot start the broker's runtime: {e}"),
        })?;
    let owned = settings.clone();
    let started = runtime
        .spawn(async move { run(&owned, loaded).await })
        .await;
    match started {
        Ok(Ok((local_addr, tls_addr, journal, drops))) => {
            info!(addr = %local_addr, data_dir = %settings.data_dir.display(), "embedded MQTT broker listening");
            Ok(BrokerHandle {
                local_addr,
                tls_addr,
                gateway_login: gateway,
                runtime: Some(runtime),
                journal,
                drops,
            })
        }
        Ok(Err(e)) => {
            runtime.shutdown_background();
            Err(e)
        }
        Err(e) => {
            runtime.shutdown_background();
            Err(BrokerError::Store {
                path: settings.data_dir.clone(),
                reason: format!("the broker failed while starting: {e}"),
            })
        }
    }
}

/// Opens the store, binds the listener and spawns the accept loop on the current (the
/// broker's) runtime. Returns the bound address, the journal and the drop counter.
#[allow(clippy::type_complexity)]
async fn run(
    settings: &EmbeddedSettings,
    loaded: Loaded,
) -> Result<
    (
        SocketAddr,
        Option<SocketAddr>,
        Journal,
        std::sync::Arc<Drops>,
    ),
    BrokerError,
> {
    // sled wants absolute paths to be safe from a later change of working directory.
    let data_dir =
        std::path::absolute(&settings.data_dir).map_err(|source| BrokerError::DataDir {
            path: settings.data_dir.clone(),
            source,
        })?;
    let store_err = |e: rmqtt::Error| BrokerError::Store {
        path: settings.data_dir.clone(),
        reason: format!("{e:#}"),
    };
    // Per session: the queue, the in-flight window, and room for the messages being
    // routed while rmqtt drops the oldest (its drop deletes the row).
    let per_session = settings
        .max_queued_messages
        .saturating_add(2 * usize::from(MAX_INFLIGHT));
    let (journal, contents) =
        Journal::open(&data_dir.join("journal.db"), per_session).map_err(|e| {
            BrokerError::Store {
                path: settings.data_dir.clone(),
                reason: e.reason,
            }
        })?;

    let scx = ServerContext::new()
        // rmqtt refuses clients when the host's load average is high; a small gateway box
        // is often busy, and its devices must still get in.
        .busy_check_enable(false)
        // Retained messages live in memory; the journal is their copy on disk.
        .plugins_config_map_add("rmqtt-retainer", "storage.type = \"ram\"\n".to_owned())
        .plugins_config_map_add(
            "rmqtt-session-storage",
            sled_config(&data_dir.join("session")),
        )
        .build()
        .await;
    rmqtt_retainer::register(&scx, true, false)
        .await
        .map_err(store_err)?;
    {
        let mut retain = scx.extends.retain_mut().await;
        let inner = std::mem::replace(&mut *retain, Box::new(DefaultRetainStorage::new()));
        let durable = DurableRetain {
            inner,
            journal: journal.clone(),
        };
        let restored = durable
            .restore(contents.retained)
            .await
            .map_err(store_err)?;
        info!(restored, "retained messages read from the broker journal");
        *retain = Box::new(durable);
    }
    rmqtt_session_storage::register(&scx, true, false)
        .await
        .map_err(store_err)?;
    let drops = Drops::new();
    let owed = Owed::new(journal.clone(), drops.clone(), contents.owed);
    {
        let mut shared = scx.extends.shared_mut().await;
        let inner = std::mem::replace(&mut *shared, Box::new(DefaultShared::new(None)));
        *shared = Box::new(DurableShared {
            inner,
            scx: scx.clone(),
            owed: owed.clone(),
        });
    }

    let single = settings
        .username
        .clone()
        .map(|user| (user, settings.password.clone().unwrap_or_default()));
    let configured = single.is_some() || loaded.users.is_some();
    let allow_anonymous = !configured || settings.allow_anonymous;
    let register = scx.extends.hook_mgr().register();
    register
        .add(
            Type::ClientConnect,
            Box::new(AwaitTeardown { scx: scx.clone() }),
        )
        .await;
    // Always: the gateway's own sessions log in with their random credential.
    let bind_err_early = |e: rmqtt::Error| BrokerError::Bind {
        addr: settings.bind,
        reason: format!("{e:#}"),
    };
    let plain = listener_builder(settings, "tcp", settings.bind, allow_anonymous)
        .bind()
        .map_err(|e| bind_error(settings.bind, e))?;
    let local_addr = plain.local_addr().map_err(bind_err_early)?;
    register
        .add(
            Type::ClientAuthenticate,
            Box::new(Authenticator {
                gateway: loaded.gateway,
                plain_lid: local_addr.port(),
                single,
                users: loaded.users,
            }),
        )
        .await;
    if let Some(acl) = loaded.acl {
        let check = AclCheck { acl };
        register
            .add(Type::ClientSubscribeCheckAcl, Box::new(check.clone()))
            .await;
        register
            .add(Type::MessagePublishCheckAcl, Box::new(check))
            .await;
    }
    for typ in [
        Type::OfflineMessage,
        Type::OfflineInflightMessages,
        Type::MessageAcked,
        Type::MessageDropped,
        Type::ClientConnected,
        Type::SessionTerminated,
    ] {
        let hooks = Durability {
            scx: scx.clone(),
            owed: owed.clone(),
        };
        register
            .add_priority(typ, DURABILITY_PRIORITY, Box::new(hooks))
            .await;
    }
    register.start().await;

    let plain = plain.tcp().map_err(bind_err_early)?;
    let mut server = MqttServer::new(scx).listener_by_id(plain, local_addr.port());
    let mut tls_addr = None;
    if let Some((tls, config)) = loaded.tls {
        // The relay listener takes only what the TLS front hands over on loopback.
        let loopback = SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), 0);
        let relay = listener_builder(settings, "tls", loopback, allow_anonymous)
            .bind()
            .map_err(|e| bind_error(tls.bind, e))?;
        let relay_addr = relay.local_addr().map_err(|e| bind_error(tls.bind, e))?;
        let relay = relay.tcp().map_err(|e| bind_error(tls.bind, e))?;
        server = server.listener_by_id(relay, RELAY_LID);
        let front = super::tls::bind(&tls)?;
        tls_addr = Some(front.local_addr().map_err(|e| BrokerError::Bind {
            addr: tls.bind,
            reason: e.to_string(),
        })?);
        tokio::spawn(super::tls::serve(
            front,
            config,
            relay_addr,
            tls.max_connections,
        ));
    }
    let server = server.build();
    tokio::spawn(async move {
        if let Err(e) = server.run().await {
            tracing::error!(error = %e, "embedded broker stopped");
        }
    });
    Ok((local_addr, tls_addr, journal, drops))
}

/// A broker listener with the gateway's settings.
fn listener_builder(
    settings: &EmbeddedSettings,
    name: &str,
    addr: SocketAddr,
    allow_anonymous: bool,
) -> Builder {
    Builder::new()
        .name(name)
        .laddr(addr)
        // Rebind at once after a restart despite connections in TIME_WAIT.
        .reuseaddr(Some(true))
        .allow_anonymous(allow_anonymous)
        .max_inflight(NonZeroU16::new(MAX_INFLIGHT).expect("16 > 0"))
        .max_mqueue_len(settings.max_queued_messages)
        .session_expiry_interval(OFFLINE_KEEP)
        .message_expiry_interval(OFFLINE_KEEP)
}

fn bind_error(addr: SocketAddr, e: rmqtt::Error) -> BrokerError {
    let mut reason = format!("{e:#}");
    if e.downcast_ref::<std::io::Error>()
        .is_some_and(|io| io.kind() == std::io::ErrorKind::AddrInUse)
    {
        reason.push_str(
            " (another MQTT broker, e.g. mosquitto, may be running there: stop it, \
             change broker.embedded.bind, or use it with broker.mode: upstream)",
        );
    }
    BrokerError::Bind { addr, reason }
}

/// Longest time a CONNECT waits for the previous session with its ClientId to be gone.
const TEARDOWN_WAIT: Duration = Duration::from_secs(2);

/// Makes a CONNECT wait while the previous clean session with the same ClientId is being
/// torn down.
///
/// rmqtt takes a ClientId over by sending a kick to the session holding it and refuses the
/// new CONNECT (return code 3, server unavailable) when that session ends without
/// answering. A clean session that is already closed (its DISCONNECT processed, or its
/// connection gone) but not yet removed no longer answers: its online loop has ended and
/// its cleanup (hooks, store) takes a few milliseconds. A client that reconnects with the
/// same ClientId at once after its DISCONNECT — the gateway does, to change a device's
/// will — would be refused. Such a CONNECT waits here, before the kick, until the old
/// session has been removed (bounded by [`TEARDOWN_WAIT`]). A connected session and a
/// persistent one kept while its client is away still answer a kick: no wait for them.
struct AwaitTeardown {
    scx: ServerContext,
}

impl AwaitTeardown {
    /// Whether the session now holding `id`'s ClientId is a clean session on its way out.
    async fn tearing_down(&self, id: &Id) -> bool {
        let entry = self.scx.extends.shared().await.entry(id.clone());
        let Some(session) = entry.session() else {
            return false;
        };
        if entry.tx().is_none_or(|tx| tx.is_closed()) {
            return false;
        }
        let clean = session.connect_info().await.is_ok_and(|c| c.clean_start());
        clean && !session.connected().await.unwrap_or(true)
    }
}

#[async_trait::async_trait]
impl Handler for AwaitTeardown {
    async fn hook(&self, param: &Parameter, acc: Option<HookResult>) -> ReturnType {
        if let Parameter::ClientConnect(info) = param {
            let deadline = tokio::time::Instant::now() + TEARDOWN_WAIT;
            while self.tearing_down(info.id()).await && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        (true, acc)
    }
}

/// Checks every CONNECT that carries a user name (CONNECTs without one are let in or
/// refused by `allow_anonymous`): the gateway's own login first (as superuser, so no ACL
/// applies), then `broker.embedded.username`/`password`, then `users_file`.
struct Authenticator {
    gateway: GatewayLogin,
    /// The plain `bind` listener's id: the only one the gateway's login is good on.
    plain_lid: u16,
    single: Option<(String, String)>,
    users: Option<Swappable<Users>>,
}

impl Authenticator {
    /// Whether `id` came in on the plain listener from this host.
    fn local_plain_client(&self, id: &Id) -> bool {
        let local = match (id.remote_addr, id.local_addr) {
            (Some(remote), Some(local)) => remote.ip().is_loopback() || remote.ip() == local.ip(),
            _ => false,
        };
        id.lid == self.plain_lid && local
    }
}

fn auth(allow: bool, superuser: bool) -> ReturnType {
    let result = if allow {
        AuthResult::Allow(superuser, None)
    } else {
        AuthResult::BadUsernameOrPassword
    };
    (false, Some(HookResult::AuthResult(result)))
}

#[async_trait::async_trait]
impl Handler for Authenticator {
    async fn hook(&self, param: &Parameter, acc: Option<HookResult>) -> ReturnType {
        let Parameter::ClientAuthenticate(info) = param else {
            return (true, acc);
        };
        let configured = self.single.is_some() || self.users.is_some();
        let Some(user) = info.username() else {
            // Only asked when anonymous clients are not allowed.
            return if configured {
                auth(false, false)
            } else {
                (true, acc)
            };
        };
        let password: &[u8] = info.password().map(|p| p.as_ref()).unwrap_or_default();
        if constant_time_eq(user.as_bytes(), self.gateway.username.as_bytes()) {
            let ok = constant_time_eq(password, &self.gateway.password);
            let here = self.local_plain_client(info.id());
            if !(ok && here) {
                info!(id = ?info.id(), "the gateway's own user name was refused");
            }
            return auth(ok && here, true);
        }
        if let Some((name, secret)) = &self.single {
            // Both compared in constant time, and both always, so neither the user name
            // nor the password can be found by timing the answer.
            let user_ok = constant_time_eq(user.as_bytes(), name.as_bytes());
            let password_ok = constant_time_eq(password, secret.as_bytes());
            if user_ok {
                return auth(password_ok, false);
            }
        }
        if let Some(users) = &self.users {
            let users = current(users);
            let (user, password) = (user.to_string(), password.to_vec());
            // PBKDF2 is CPU work: off the broker's async workers.
            let ok = tokio::task::spawn_blocking(move || users.verify(&user, &password))
                .await
                .unwrap_or(false);
            return auth(ok, false);
        }
        if configured {
            auth(false, false)
        } else {
            // No credentials configured: an open broker, user names are not checked.
            (true, acc)
        }
    }
}

/// `broker.embedded.acl_file` on every SUBSCRIBE and PUBLISH of a client that is not the
/// gateway (rmqtt skips these hooks for superusers). A refused filter gets SUBACK 0x80; a
/// refused PUBLISH is dropped, a QoS 1/2 one still acknowledged (as mosquitto does).
#[derive(Clone)]
struct AclCheck {
    acl: Swappable<Acl>,
}

fn client_of(session: &Session) -> (String, Option<String>) {
    (
        session.id.client_id.to_string(),
        session.id.username.as_ref().map(|u| u.to_string()),
    )
}

#[async_trait::async_trait]
impl Handler for AclCheck {
    async fn hook(&self, param: &Parameter, acc: Option<HookResult>) -> ReturnType {
        let acl = current(&self.acl);
        match param {
            Parameter::ClientSubscribeCheckAcl(session, subscribe) => {
                let (client_id, username) = client_of(session);
                let client = acl::Client {
                    client_id: &client_id,
                    username: username.as_deref(),
                };
                if acl.may_subscribe(client, &subscribe.topic_filter) {
                    return (true, acc);
                }
                debug!(client_id, ?username, filter = %subscribe.topic_filter, "ACL refused a subscription");
                let refused = SubscribeAclResult::new_failure(SubscribeAckReason::NotAuthorized);
                (false, Some(HookResult::SubscribeAclResult(refused)))
            }
            Parameter::MessagePublishCheckAcl(session, publish) => {
                let (client_id, username) = client_of(session);
                let client = acl::Client {
                    client_id: &client_id,
                    username: username.as_deref(),
                };
                if acl.may_publish(client, &publish.topic) {
                    return (true, acc);
                }
                debug!(client_id, ?username, topic = %publish.topic, "ACL dropped a publish");
                let refused = PublishAclResult::rejected(false, None);
                (false, Some(HookResult::PublishAclResult(refused)))
            }
            _ => (true, acc),
        }
    }
}
