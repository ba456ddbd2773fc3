//! The embedded MQTT 3.1.1 broker (`broker.mode: embedded`): `rmqtt` running inside the gateway
//! process, listening on `broker.embedded.bind`.
//!
//! It gets a small tokio runtime of its own (two worker threads) rather than sharing the
//! gateway's: its sled store parks a blocking task per database that only ends with the
//! process, which would keep the gateway's runtime from ever shutting down. With its own
//! runtime, [`BrokerHandle::shutdown`] can let go of it with `shutdown_background`.
//!
//! This module (this file, [`durable`] and [`journal`]) is the only one that names the broker
//! crate (rmqtt and its retainer and session-storage plugins), so it can be swapped without
//! touching anything else. The gateway
//! does not talk to the broker through any back door: device sessions connect to
//! [`BrokerHandle::local_addr`] over TCP exactly as they would to an upstream broker.
//!
//! Persistence: what the broker acknowledges is on disk first. Retained messages and the
//! QoS 1/2 messages owed to persistent sessions (clean-session 0) are written to a journal
//! (`journal.db`, SQLite with `synchronous=FULL`, group commit) before rmqtt sends its PUBACK,
//! so a `kill -9` right after the acknowledgement loses nothing; see [`durable`]. Sessions
//! and their subscriptions are kept by rmqtt-session-storage in sled under `session/`, written
//! in the background (sled flushes every 500 ms); [`BrokerHandle::shutdown`] waits for one
//! such flush. When the journal cannot write (e.g. the disk is full), no more PUBACKs go out
//! and [`BrokerHandle::failure`] resolves, so the gateway stops.
//!
//! Without the `embedded-broker` feature, [`start`] fails with [`BrokerError::NotBuilt`].
//! Owns: the broker's runtime, its config and [`BrokerHandle`]. Must never: be reached by the
//! gateway other than over TCP, or let its crate's types leave this module.

use std::net::SocketAddr;
use std::path::PathBuf;

/// What the embedded broker needs from `broker.embedded`. Its Debug hides the password.
#[derive(Clone, PartialEq, Eq)]
pub struct EmbeddedSettings {
    /// `bind`: the TCP address to listen on; port 0 lets the OS choose.
    pub bind: SocketAddr,
    /// `data_dir`: where retained messages and persistent sessions are stored.
    pub data_dir: PathBuf,
    /// `username` / `password`: when set, a client may log in with them.
    pub username: Option<String>,
    /// See `username`.
    pub password: Option<String>,
    /// `users_file`: more users, from a file `mosquitto_passwd` wrote.
    pub users_file: Option<PathBuf>,
    /// `acl_file`: what each client may publish and subscribe to (mosquitto's format).
    pub acl_file: Option<PathBuf>,
    /// `tls`: a TLS listener besides the plain one on `bind`.
    pub tls: Option<TlsSettings>,
    /// `allow_anonymous`: clients without a user name are let in even though credentials are
    /// configured. Config validation keeps a LAN-facing broker from being open by accident.
    pub allow_anonymous: bool,
    /// `max_queued_messages`: QoS 1/2 messages kept per persistent session while its client is
    /// away or its in-flight window is full; more are dropped and counted.
    pub max_queued_messages: usize,
}

impl std::fmt::Debug for EmbeddedSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedSettings")
            .field("bind", &self.bind)
            .field("data_dir", &self.data_dir)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("users_file", &self.users_file)
            .field("acl_file", &self.acl_file)
            .field("tls", &self.tls)
            .field("allow_anonymous", &self.allow_anonymous)
            .field("max_queued_messages", &self.max_queued_messages)
            .finish()
    }
}

/// `broker.embedded.tls`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// `bind`: the TCP address of the TLS listener; port 0 lets the OS choose.
    pub bind: SocketAddr,
    /// `cert_file`: the server's certificate chain (PEM), leaf first.
    pub cert_file: PathBuf,
    /// `key_file`: its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// `ca_file`: CA certificates (PEM) a client certificate must chain to; without it no
    /// client certificate is asked for.
    pub ca_file: Option<PathBuf>,
    /// `require_certificate`: a client without a certificate (signed by `ca_file`) is refused.
    pub require_certificate: bool,
    /// `max_connections`: TLS clients at a time; more are closed at once.
    pub max_connections: usize,
}

/// How the gateway's own device sessions log in to the embedded broker: a user name no client
/// can use and a password made at random when the broker starts, known only to this process.
/// Accepted only on the plain `bind` listener from this host. Its Debug hides the password.
#[derive(Clone, PartialEq, Eq)]
pub struct GatewayLogin {
    /// The reserved user name, [`GATEWAY_USER`].
    pub username: String,
    /// 64 hex digits from the OS's random source.
    pub password: Vec<u8>,
}

impl std::fmt::Debug for GatewayLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayLogin")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// The user name of [`GatewayLogin`]; refused in `username` and `users_file`.
pub const GATEWAY_USER: &str = "mqttsn-gateway$internal";

/// Why the embedded broker did not start. Each message names the configuration key and value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// `broker.embedded.bind` could not be listened on.
    #[error("broker.embedded.bind: cannot listen on {addr}: {reason}")]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// What the OS said, with a hint.
        reason: String,
    },
    /// `broker.embedded.data_dir` cannot be created or written.
    #[error("broker.embedded.data_dir: `{}` is not a writable directory: {source}", .path.display())]
    DataDir {
        /// The configured directory.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The store under `broker.embedded.data_dir` could not be opened (e.g. another gateway
    /// process holds it).
    #[error("broker.embedded.data_dir: cannot open the broker store in `{}`: {reason}", .path.display())]
    Store {
        /// The configured directory.
        path: PathBuf,
        /// What the store said.
        reason: String,
    },
    /// A file of `broker.embedded.tls` is unreadable or invalid.
    #[error("{key}: `{}`: {reason}", .path.display())]
    Tls {
        /// The configuration key naming the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong (never key material).
        reason: String,
    },
    /// `broker.embedded.users_file` or `acl_file` is unreadable or has a bad line.
    #[error("{key}: `{}`{}: {reason}", .path.display(), .line.map(|l| format!(" line {l}")).unwrap_or_default())]
    File {
        /// `broker.embedded.users_file` or `broker.embedded.acl_file`.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// The 1-based line, when one is at fault.
        line: Option<usize>,
        /// What is wrong (never a password or hash).
        reason: String,
    },
    /// This binary was built without the `embedded-broker` feature.
    #[error(
        "broker.mode: embedded, but this binary was built without the embedded broker; \
         rebuild with the default features (`cargo build --release`, or add \
         `--features embedded-broker`), or set broker.mode: upstream / pass --broker HOST:PORT"
    )]
    NotBuilt,
}

/// Whether this binary contains the embedded broker (the `embedded-broker` feature).
pub const BUILT_IN: bool = cfg!(feature = "embedded-broker");

/// Creates `dir` if needed and proves it writable, so that a bad `data_dir` is reported as such
/// rather than as a store error deep inside the broker.
#[cfg_attr(not(feature = "embedded-broker"), allow(dead_code))]
fn check_data_dir(dir: &std::path::Path) -> Result<(), BrokerError> {
    let fail = |source| BrokerError::DataDir {
        path: dir.to_owned(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(fail)?;
    let probe = dir.join(".write-test");
    std::fs::write(&probe, b"").map_err(fail)?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

pub use imp::{start, BrokerHandle};

#[cfg(feature = "embedded-broker")]
mod acl;
#[cfg(feature = "embedded-broker")]
mod durable;
#[cfg(feature = "embedded-broker")]
mod journal;
#[cfg(feature = "embedded-broker")]
mod passwd;
#[cfg(feature = "embedded-broker")]
mod tls;

#[cfg_attr(not(feature = "embedded-broker"), allow(unused_imports))]
use crate::util::constant_time_eq;

#[cfg(feature = "embedded-broker")]
mod imp;

#[cfg(not(feature = "embedded-broker"))]
mod imp {
    use std::net::SocketAddr;

    use super::{BrokerError, EmbeddedSettings, GatewayLogin};

    /// Never constructed in a build without the embedded broker.
    pub struct BrokerHandle {
        never: std::convert::Infallible,
    }

    impl BrokerHandle {
        pub fn local_addr(&self) -> SocketAddr {
            match self.never {}
        }

        pub fn tls_addr(&self) -> Option<SocketAddr> {
            match self.never {}
        }

        pub fn gateway_login(&self) -> &GatewayLogin {
            match self.never {}
        }

        pub async fn shutdown(self) {
            match self.never {}
        }

        pub async fn failure(&self) -> String {
            match self.never {}
        }

        pub fn dropped_messages(&self) -> u64 {
            match self.never {}
        }
    }

    /// Always fails: this build has no embedded broker.
    pub async fn start(_settings: &EmbeddedSettings) -> Result<BrokerHandle, BrokerError> {
        Err(BrokerError::NotBuilt)
    }
}
