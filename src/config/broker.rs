//! `broker`: which broker device sessions go to, and the settings of the upstream and the
//! embedded one, with the checks that span several keys of `broker.embedded`.
//!
//! Defaults the core also has (keep-alive, connect timeout, ClientId prefix) are read from
//! [`Settings::default`]. Must never import from `mod.rs`; shared deserializers come from
//! `checks.rs`. Reads text only: it never resolves host names or opens sockets.
//! Owns: the `broker` section's types and checks.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};

use super::checks::{
    check_host, checked_section, checked_str, keep_alive, nonzero_port, positive_duration,
    socket_addr,
};
use super::devices::{check_template, SecretSource};
use super::duration;
use crate::core::Settings;

/// `broker`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Broker {
    /// `broker.mode`: which broker device sessions go to.
    pub mode: BrokerMode,
    /// `broker.upstream`: used when `mode` is `upstream`.
    #[serde(deserialize_with = "upstream")]
    pub upstream: Upstream,
    /// `broker.embedded`: used when `mode` is `embedded`.
    #[serde(deserialize_with = "embedded")]
    pub embedded: Embedded,
}

/// `broker.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BrokerMode {
    /// Run a broker inside the gateway process and connect to it.
    #[default]
    Embedded,
    /// Connect to an external MQTT 3.1.1 broker.
    Upstream,
}

/// `broker.upstream`. Its `Debug` leaves the password out.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Upstream {
    /// `host`: name or IP address of the broker (IPv6 without brackets, e.g. `::1`).
    #[serde(deserialize_with = "host")]
    pub host: String,
    /// `port`: TCP port of the broker, 1..=65535. Not written: 8883 with `tls`, else 1883.
    #[serde(deserialize_with = "nonzero_port", default = "port_not_written")]
    pub port: u16,
    /// `keep_alive`: the MQTT keep-alive of each upstream session; whole seconds, `0s` = off.
    #[serde(
        serialize_with = "duration::serialize",
        deserialize_with = "keep_alive"
    )]
    pub keep_alive: Duration,
    /// `connect_timeout`: how long a TCP connect plus CONNACK may take.
    #[serde(
        serialize_with = "duration::serialize",
        deserialize_with = "positive_duration"
    )]
    pub connect_timeout: Duration,
    /// `username`: sent in every upstream CONNECT when set; a template (`{client_id}`,
    /// `{transport}`) expanded per device. A `devices` entry's own credentials win.
    pub username: Option<String>,
    /// `password`: sent in every upstream CONNECT when set (template like `username`).
    pub password: Option<String>,
    /// `password_file`: a file holding the password (one trailing newline ignored).
    pub password_file: Option<PathBuf>,
    /// `password_env`: an environment variable holding the password.
    pub password_env: Option<String>,
    /// `client_id_prefix`: prepended to each device's ClientId upstream.
    pub client_id_prefix: String,
    /// `tls`: absent or `null` = plain TCP; a mapping (`{}` = the system roots) = TLS.
    pub tls: Option<UpstreamTls>,
    /// `sessions`: one upstream session per device (`transparent`), or a few shared by all
    /// (`aggregating`). Honoured in both broker modes.
    pub sessions: Sessions,
    /// `connections`: shared sessions in aggregating mode, 1..=64.
    pub connections: usize,
    /// `aggregate_client_id`: the shared sessions' ClientId (stem `<id>-<k>` with several);
    /// default `mqttsn-gateway-<gateway.id>-aggregate`.
    pub aggregate_client_id: Option<String>,
    /// `source_addresses`: local IP addresses the upstream sessions connect from, one after
    /// the other (round-robin); empty = the kernel picks. One address reaches one broker
    /// address and port with at most the ephemeral port range (~28,000) connections.
    #[serde(deserialize_with = "source_addresses")]
    pub source_addresses: Vec<IpAddr>,
}

/// `broker.upstream.sessions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sessions {
    /// Every device has its own upstream session (the broker sees every device).
    #[default]
    Transparent,
    /// Devices share `connections` upstream sessions kept by the gateway.
    Aggregating,
}

/// Most shared sessions `broker.upstream.connections` may ask for.
pub const MAX_CONNECTIONS: usize = 64;

/// `broker.upstream.tls`. Files are read (and checked) by the shell at start, never here.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamTls {
    /// `ca_file`: PEM certificates trusted for the broker, instead of the system roots.
    pub ca_file: Option<PathBuf>,
    /// `cert_file`: PEM client certificate (chain) for mutual TLS; with `key_file`.
    pub cert_file: Option<PathBuf>,
    /// `key_file`: PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// `server_name`: the name the broker's certificate must carry; default `host` (an IP
    /// address is matched against the certificate's IP addresses).
    pub server_name: Option<String>,
    /// `alpn`: ALPN protocol names offered, e.g. `[mqtt]` for AWS IoT on port 443.
    pub alpn: Vec<String>,
}

impl UpstreamTls {
    fn check(&self) -> Result<(), String> {
        match (&self.cert_file, &self.key_file) {
            (Some(_), None) => return Err("cert_file is set but key_file is not: set both".into()),
            (None, Some(_)) => return Err("key_file is set but cert_file is not: set both".into()),
            _ => {}
        }
        if let Some(name) = &self.server_name {
            rustls_pki_types::ServerName::try_from(name.as_str())
                .map_err(|_| format!("server_name: `{name}` is not a DNS name or IP address"))?;
        }
        for (i, p) in self.alpn.iter().enumerate() {
            if p.is_empty() || p.len() > 255 {
                return Err(format!(
                    "alpn[{i}]: a protocol name is 1 to 255 octets (e.g. mqtt)"
                ));
            }
        }
        Ok(())
    }
}

/// The default `port` of an upstream section that does not write one.
pub const PLAIN_PORT: u16 = 1883;
/// See [`PLAIN_PORT`]: the default with `tls`.
pub const TLS_PORT: u16 = 8883;

/// Marks `port` as not written (0 is refused when written); `upstream` then fills it in.
fn port_not_written() -> u16 {
    0
}

impl Upstream {
    /// `password` / `password_file` / `password_env` as one source.
    pub fn secret(&self) -> SecretSource {
        SecretSource {
            password: self.password.clone(),
            password_file: self.password_file.clone(),
            password_env: self.password_env.clone(),
        }
    }

    /// The checks that span several keys of the section; fills in the default port.
    fn check(&mut self) -> Result<(), String> {
        if self.port == 0 {
            self.port = if self.tls.is_some() {
                TLS_PORT
            } else {
                PLAIN_PORT
            };
        }
        let secret = self.secret();
        secret.check()?;
        if !secret.is_empty() && self.username.is_none() {
            return Err(
                "a password is set but username is not: MQTT sends a password only with a user \
                 name"
                    .into(),
            );
        }
        if let Some(u) = &self.username {
            check_template("username", u)?;
        }
        if let Some(tls) = &self.tls {
            tls.check().map_err(|e| format!("tls.{e}"))?;
        }
        if !(1..=MAX_CONNECTIONS).contains(&self.connections) {
            return Err(format!(
                "connections: {} is not 1 to {MAX_CONNECTIONS}",
                self.connections
            ));
        }
        if self.sessions == Sessions::Transparent && self.connections != 1 {
            return Err(
                "connections: only aggregating mode shares connections; set sessions: \
                 aggregating, or remove connections"
                    .into(),
            );
        }
        if let Some(id) = &self.aggregate_client_id {
            if id.is_empty() || id.contains('\0') || id.len() > 200 {
                return Err("aggregate_client_id: must be 1 to 200 octets without U+0000".into());
            }
        }
        if let (Some(first), Ok(broker)) =
            (self.source_addresses.first(), self.host.parse::<IpAddr>())
        {
            if first.is_ipv4() != broker.is_ipv4() {
                return Err(format!(
                    "source_addresses: {first} cannot reach the broker at {broker} (another \
                     address family): list addresses of the broker's family"
                ));
            }
        }
        Ok(())
    }

    /// The shared sessions' ClientId (stem) for gateway `gateway_id`.
    pub fn aggregate_client_id(&self, gateway_id: u8) -> String {
        self.aggregate_client_id
            .clone()
            .unwrap_or_else(|| format!("mqttsn-gateway-{gateway_id}-aggregate"))
    }
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("keep_alive", &self.keep_alive)
            .field("connect_timeout", &self.connect_timeout)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "********"))
            .field("password_file", &self.password_file)
            .field("password_env", &self.password_env)
            .field("client_id_prefix", &self.client_id_prefix)
            .field("tls", &self.tls)
            .field("sessions", &self.sessions)
            .field("connections", &self.connections)
            .field("aggregate_client_id", &self.aggregate_client_id)
            .field("source_addresses", &self.source_addresses)
            .finish()
    }
}

impl Default for Upstream {
    fn default() -> Self {
        let core = Settings::default();
        Upstream {
            host: "127.0.0.1".to_owned(),
            port: PLAIN_PORT,
            keep_alive: core.upstream_keep_alive,
            connect_timeout: core.upstream_connect_timeout,
            username: None,
            password: None,
            password_file: None,
            password_env: None,
            client_id_prefix: core.client_id_prefix,
            tls: None,
            sessions: Sessions::default(),
            connections: 1,
            aggregate_client_id: None,
            source_addresses: Vec::new(),
        }
    }
}

/// `broker.embedded`.
///
/// Checked as a whole when read: `username` and `password` go together, and a `bind` address
/// reachable from other machines needs credentials or an explicit `allow_anonymous: true`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Embedded {
    /// `bind`: where the embedded broker listens (and where the gateway connects to it).
    #[serde(deserialize_with = "socket_addr")]
    pub bind: SocketAddr,
    /// `data_dir`: where the broker keeps retained messages and persistent sessions.
    #[serde(deserialize_with = "data_dir")]
    pub data_dir: PathBuf,
    /// `username`: when set (with `password`), clients must log in with it.
    pub username: Option<String>,
    /// `password`: see `username`.
    pub password: Option<String>,
    /// `password_file`: a file holding that password (one trailing newline ignored).
    pub password_file: Option<PathBuf>,
    /// `password_env`: an environment variable holding that password.
    pub password_env: Option<String>,
    /// `users_file`: more users, from a file written by `mosquitto_passwd` (read at start).
    #[serde(deserialize_with = "optional_file")]
    pub users_file: Option<PathBuf>,
    /// `acl_file`: what each client may publish and subscribe to, mosquitto's ACL format.
    #[serde(deserialize_with = "optional_file")]
    pub acl_file: Option<PathBuf>,
    /// `tls`: a TLS listener besides the plain one; `null`/absent = none.
    pub tls: Option<EmbeddedTls>,
    /// `allow_anonymous`: let clients in without a user name although `bind` is not loopback
    /// or a TLS listener is configured (or although credentials are set).
    pub allow_anonymous: bool,
    /// `max_queued_messages`: QoS 1/2 messages kept per persistent session while its client is
    /// away (or its in-flight window is full); more are dropped, counted and logged.
    pub max_queued_messages: usize,
}

impl Default for Embedded {
    fn default() -> Self {
        Embedded {
            bind: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 1883),
            data_dir: PathBuf::from("./data/broker"),
            username: None,
            password: None,
            password_file: None,
            password_env: None,
            users_file: None,
            acl_file: None,
            tls: None,
            allow_anonymous: false,
            max_queued_messages: 1000,
        }
    }
}

impl Embedded {
    /// `password` / `password_file` / `password_env` as one source.
    pub fn secret(&self) -> SecretSource {
        SecretSource {
            password: self.password.clone(),
            password_file: self.password_file.clone(),
            password_env: self.password_env.clone(),
        }
    }

    /// The checks that span several keys of the section.
    fn check(&self) -> Result<(), String> {
        let secret = self.secret();
        secret.check()?;
        match (&self.username, secret.is_empty()) {
            (Some(_), true) => {
                return Err(
                    "username is set but no password is (password, password_file or \
                     password_env): set both"
                        .into(),
                )
            }
            (None, false) => return Err("a password is set but username is not: set both".into()),
            _ => {}
        }
        if self.max_queued_messages == 0 {
            return Err("max_queued_messages: must be at least 1".into());
        }
        let credentials = self.username.is_some() || self.users_file.is_some();
        if !self.bind.ip().is_loopback() && !credentials && !self.allow_anonymous {
            return Err(format!(
                "bind: {} is reachable from other machines, and an open broker there would let \
                 anyone read and command your devices: set username and password (or \
                 users_file), or state allow_anonymous: true",
                self.bind
            ));
        }
        if let Some(tls) = &self.tls {
            if tls.require_certificate && tls.ca_file.is_none() {
                return Err(
                    "tls.require_certificate: true needs tls.ca_file (the CA that signs \
                            the client certificates)"
                        .into(),
                );
            }
            if tls.max_connections == 0 {
                return Err("tls.max_connections: must be at least 1".into());
            }
            if !credentials && !self.allow_anonymous {
                return Err(format!(
                    "tls.bind: {} is a listener for other machines: set username and password \
                     (or users_file), or state allow_anonymous: true",
                    tls.bind
                ));
            }
        }
        Ok(())
    }
}

/// `broker.embedded.tls`: a TLS listener of the embedded broker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddedTls {
    /// `bind`: where the TLS listener listens; default `0.0.0.0:8883`.
    #[serde(default = "tls_bind", deserialize_with = "socket_addr")]
    pub bind: SocketAddr,
    /// `cert_file`: the server certificate chain, PEM, leaf first (required).
    #[serde(deserialize_with = "file")]
    pub cert_file: PathBuf,
    /// `key_file`: the server's private key, PEM (required).
    #[serde(deserialize_with = "file")]
    pub key_file: PathBuf,
    /// `ca_file`: the CA (PEM) client certificates must be signed by; without it no client
    /// certificate is asked for.
    #[serde(default, deserialize_with = "optional_file")]
    pub ca_file: Option<PathBuf>,
    /// `require_certificate`: refuse clients without a certificate signed by `ca_file`.
    #[serde(default)]
    pub require_certificate: bool,
    /// `max_connections`: TLS clients at a time; more are closed at once.
    #[serde(default = "tls_max_connections")]
    pub max_connections: usize,
}

fn tls_bind() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 8883)
}

fn tls_max_connections() -> usize {
    100
}

fn file<'de, D: Deserializer<'de>>(deserializer: D) -> Result<PathBuf, D::Error> {
    checked_str(deserializer, "a file path", |path| {
        if path.trim().is_empty() {
            Err("the file path is empty".to_owned())
        } else {
            Ok(path.to_owned())
        }
    })
    .map(PathBuf::from)
}

fn optional_file<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<PathBuf>, D::Error> {
    struct Visit;
    impl<'de> de::Visitor<'de> for Visit {
        type Value = Option<PathBuf>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a file path or null")
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            file(d).map(Some)
        }
    }
    deserializer.deserialize_option(Visit)
}

fn host<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    checked_str(deserializer, "a host name or IP address", |host| {
        // Accept `[::1]` as well as `::1`.
        let bare = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        check_host(bare)?;
        Ok(bare.to_owned())
    })
}

fn data_dir<'de, D: Deserializer<'de>>(deserializer: D) -> Result<PathBuf, D::Error> {
    checked_str(deserializer, "a directory path", |dir| {
        if dir.trim().is_empty() {
            Err("data_dir is empty: give a directory, e.g. ./data/broker".to_owned())
        } else {
            Ok(dir.to_owned())
        }
    })
    .map(PathBuf::from)
}

/// `broker.embedded`: `null` means defaults; a mapping is read and then checked as a whole
/// inside its own `visit_map`, so the error carries the section's key path and line.
fn embedded<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Embedded, D::Error> {
    checked_section(
        deserializer,
        "a mapping of the embedded broker's keys",
        |s: &mut Embedded| s.check(),
    )
}

/// `broker.upstream`: `null` means defaults; a mapping is read, its port default filled in
/// and checked as a whole inside its own `visit_map`, so errors carry the key path and line.
fn upstream<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Upstream, D::Error> {
    checked_section(
        deserializer,
        "a mapping of the upstream broker's keys",
        Upstream::check,
    )
}

/// `broker.upstream.source_addresses`: a list of IP addresses, each checked while it is read
/// (inside its own `visit_str`, so an error carries `source_addresses[i]` and its line): no
/// unspecified, multicast or broadcast address, no repeat, one address family.
fn source_addresses<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<IpAddr>, D::Error> {
    struct List;
    impl<'de> de::Visitor<'de> for List {
        type Value = Vec<IpAddr>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list of local IP addresses, e.g. [127.0.0.1, 127.0.0.2]")
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }
        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out: Vec<IpAddr> = Vec::new();
            while let Some(addr) = seq.next_element_seed(Entry { earlier: &out })? {
                out.push(addr);
            }
            Ok(out)
        }
    }
    struct Entry<'a> {
        earlier: &'a [IpAddr],
    }
    impl<'de> de::DeserializeSeed<'de> for Entry<'_> {
        type Value = IpAddr;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<IpAddr, D::Error> {
            d.deserialize_str(self)
        }
    }
    impl de::Visitor<'_> for Entry<'_> {
        type Value = IpAddr;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a local IP address (no port), e.g. 127.0.0.2")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<IpAddr, E> {
            check_source_address(self.earlier, v).map_err(E::custom)
        }
    }
    deserializer.deserialize_any(List)
}

fn check_source_address(earlier: &[IpAddr], v: &str) -> Result<IpAddr, String> {
    let bare = v
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(v);
    let addr: IpAddr = bare.parse().map_err(|_| {
        format!("`{v}` is not an IP address (no port, no host name), e.g. 127.0.0.2 or \"::1\"")
    })?;
    let broadcast = matches!(addr, IpAddr::V4(a) if a.is_broadcast());
    if addr.is_unspecified() || addr.is_multicast() || broadcast {
        return Err(format!(
            "{addr} cannot be a source address: give an address of this machine (leave the \
             list empty to let the kernel pick)"
        ));
    }
    if earlier.contains(&addr) {
        return Err(format!("{addr} is listed twice"));
    }
    if let Some(first) = earlier.first() {
        if first.is_ipv4() != addr.is_ipv4() {
            return Err(format!(
                "{addr} is not of the same address family as {first}: one broker address is \
                 reached from addresses of its own family only"
            ));
        }
    }
    Ok(addr)
}
