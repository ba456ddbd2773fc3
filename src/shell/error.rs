//! [`ShellError`]: why the gateway could not start (or stopped by itself).
//!
//! A leaf below `mod.rs` and `multicast.rs`, which both return it. Owns the messages' wording;
//! must never decide what to do about an error.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::broker::BrokerError;

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
    /// An entry of `devices` / `devices_file` that cannot be applied (e.g. its `transport`
    /// names no configured transport); `key` is `devices[3]` or `devices_file[0]`.
    #[error("{key}: {reason}")]
    Device { key: String, reason: String },
    /// A TLS file of `broker.upstream.tls` or of a `devices` entry that cannot be used; `key`
    /// is where it is written (`broker.upstream.tls.ca_file`, `devices[1].cert_file`).
    #[error("{key}: {}{reason}", .file.as_ref().map(|f| format!("{}: ", f.display())).unwrap_or_default())]
    Tls {
        key: String,
        file: Option<PathBuf>,
        reason: String,
    },
    /// A password that cannot be read (`key` e.g. `devices[2].password_file`; the reason names
    /// the file or variable, never the secret).
    #[error("{key}: {reason}")]
    Credential { key: String, reason: String },
    /// An entry of `broker.upstream.source_addresses` that cannot serve the broker.
    #[error("broker.upstream.source_addresses[{index}]: {addr}: {reason}")]
    SourceAddress {
        index: usize,
        addr: std::net::IpAddr,
        reason: String,
    },
}
