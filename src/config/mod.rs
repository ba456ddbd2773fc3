//! `gateway.yaml`: typed sections with defaults, validated while they are read.
//!
//! Every key is optional; a missing key (or a key set to `null`) takes its default, and
//! [`Config::default`] is exactly what the shipped `gateway.yaml` says. Unknown keys are errors.
//!
//! Values are checked inside the deserializers (custom `deserialize_with` functions and visitors,
//! never afterwards), so that every [`ConfigError`] names the file, the line and column, and the
//! key path: `gateway.yaml:7:5: transports.udp[0].bnd: unknown field `bnd`, expected `bind``.
//! Checks that span several list entries (duplicate predefined ids, duplicate bind addresses) run
//! inside the list's visitor while the offending entry is being read, for the same reason.
//!
//! This file owns the API: [`Config`] itself, loading, printing and the command-line overrides
//! ([`Config::apply_overrides`], [`parse_host_port`]), and re-exports every section type.
//! The sections live in `sections.rs`, `broker.rs` and `discovery.rs`, the shared checked
//! deserializers in `checks.rs`, the error in `error.rs`, the duration syntax in `duration.rs`;
//! none of them imports from this file. The module reads and writes text only; it never opens
//! sockets.

mod broker;
mod checks;
mod devices;
pub mod discovery;
pub mod duration;
mod error;
mod http;
mod sections;
mod status;

pub use broker::{
    Broker, BrokerMode, Embedded, EmbeddedTls, Sessions, Upstream, UpstreamTls, MAX_CONNECTIONS,
    PLAIN_PORT, TLS_PORT,
};
pub use checks::{check_log_level, effective_log_filter};
pub use devices::{
    Admission, DeviceEntry, QosMinusOne, QosMinusOneList, QosMinusOneSwitch, SecretSource,
};
pub use discovery::{Advertise, Discovery, MulticastGroup};
pub use error::ConfigError;
pub use http::{Http, DEFAULT_HTTP_BIND};
pub use sections::{
    GatewaySection, Limits, Log, LogFormat, PerSource, PredefinedTopic, Runtime, SerialFlowControl,
    SerialFraming, SerialParity, SerialTransport, Sleep, StoreSection, Timers, Transports,
    UdpTransport,
};
pub use status::Status;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use checks::{check_host, null_as_default};
use sections::predefined_topics;

/// The whole of `gateway.yaml`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `gateway`: who this gateway is on the radio side.
    #[serde(deserialize_with = "null_as_default")]
    pub gateway: GatewaySection,
    /// `transports`: where devices reach the gateway.
    #[serde(deserialize_with = "null_as_default")]
    pub transports: Transports,
    /// `discovery`: periodic ADVERTISE, multicast groups answered for SEARCHGW.
    #[serde(deserialize_with = "null_as_default")]
    pub discovery: Discovery,
    /// `broker`: where device sessions go.
    #[serde(deserialize_with = "null_as_default")]
    pub broker: Broker,
    /// `predefined_topics`: topic ids known to gateway and devices in advance.
    #[serde(deserialize_with = "predefined_topics")]
    pub predefined_topics: Vec<PredefinedTopic>,
    /// `limits`: every bound the runtime keeps.
    #[serde(deserialize_with = "null_as_default")]
    pub limits: Limits,
    /// `timers`: retransmission of messages toward devices.
    #[serde(deserialize_with = "null_as_default")]
    pub timers: Timers,
    /// `sleep`: buffering for sleeping devices.
    #[serde(deserialize_with = "null_as_default")]
    pub sleep: Sleep,
    /// `store`: the durable store.
    #[serde(deserialize_with = "null_as_default")]
    pub store: StoreSection,
    /// `log`: what is logged.
    #[serde(deserialize_with = "null_as_default")]
    pub log: Log,
    /// `admission`: `open` (any ClientId) or `listed` (only those `devices` names).
    #[serde(deserialize_with = "null_as_default")]
    pub admission: Admission,
    /// `devices`: per-device rules: bindings, credentials, topic permissions.
    #[serde(deserialize_with = "devices::device_list")]
    pub devices: Vec<DeviceEntry>,
    /// `devices_file`: a YAML file holding more `devices` entries (a list), read at load
    /// (relative to the config file's directory).
    pub devices_file: Option<PathBuf>,
    /// The entries read from `devices_file` (after `devices` in matching order).
    #[serde(skip)]
    pub devices_from_file: Vec<DeviceEntry>,
    /// `qos_minus_one`: who may publish without a connection.
    #[serde(deserialize_with = "null_as_default")]
    pub qos_minus_one: QosMinusOne,
    /// `http`: the status page, `/api/devices` and `/metrics`.
    #[serde(deserialize_with = "http::http")]
    pub http: Http,
    /// `status`: availability of the gateway and its devices on the broker.
    #[serde(deserialize_with = "null_as_default")]
    pub status: Status,
    /// `runtime`: the threads that run the I/O.
    #[serde(deserialize_with = "null_as_default")]
    pub runtime: Runtime,
}

impl Config {
    /// Reads and validates `path`. Errors name the file as given.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Config::parse_yaml(&text, &path.display().to_string())?;
        config.read_devices_file(path.parent())?;
        Ok(config)
    }

    /// Parses and validates YAML text; `origin` names it in errors (a file name or `<string>`).
    /// An empty document (or one holding only comments) gives the defaults.
    /// A relative `devices_file` is read from the working directory.
    pub fn from_yaml_str(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let mut config = Config::parse_yaml(text, origin)?;
        config.read_devices_file(None)?;
        Ok(config)
    }

    fn parse_yaml(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let parsed: Option<Config> =
            serde_norway::from_str(text).map_err(|err| ConfigError::from_yaml(&err, origin))?;
        Ok(parsed.unwrap_or_default())
    }

    /// Reads `devices_file` (a YAML list of `devices` entries) into `devices_from_file`; its
    /// errors name that file, its line and the entry (`[3].address: ...`).
    fn read_devices_file(&mut self, base: Option<&Path>) -> Result<(), ConfigError> {
        let Some(file) = &self.devices_file else {
            return Ok(());
        };
        let path = match base {
            Some(dir) if file.is_relative() && !dir.as_os_str().is_empty() => dir.join(file),
            _ => file.clone(),
        };
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        let origin = path.display().to_string();
        let entries: Option<devices::DevicesFile> =
            serde_norway::from_str(&text).map_err(|err| {
                // The file is a list: its paths start at the entry (`[1].address`, not `.[1]...`).
                let mut e = ConfigError::from_yaml(&err, &origin);
                if let ConfigError::Invalid { key, .. } = &mut e {
                    if let Some(k) = key.strip_prefix('.') {
                        *key = k.to_owned();
                    }
                }
                e
            })?;
        self.devices_from_file = entries.map(|f| f.0).unwrap_or_default();
        Ok(())
    }

    /// `devices` then the entries of `devices_file`: the order rules are matched in.
    pub fn all_devices(&self) -> impl Iterator<Item = &DeviceEntry> {
        self.devices.iter().chain(self.devices_from_file.iter())
    }

    /// The effective configuration as YAML, every key present. It loads back to `self`.
    pub fn to_yaml(&self) -> String {
        // Plain structs of strings, numbers and addresses: serializing cannot fail.
        serde_norway::to_string(self).expect("Config serializes to YAML")
    }

    /// A copy with the broker passwords replaced by `"********"`, for printing.
    pub fn redacted(&self) -> Config {
        let mut copy = self.clone();
        if copy.broker.upstream.password.is_some() {
            copy.broker.upstream.password = Some("********".to_owned());
        }
        if copy.broker.embedded.password.is_some() {
            copy.broker.embedded.password = Some("********".to_owned());
        }
        if copy.http.password.is_some() {
            copy.http.password = Some("********".to_owned());
        }
        for d in copy
            .devices
            .iter_mut()
            .chain(copy.devices_from_file.iter_mut())
        {
            if d.secret.password.is_some() {
                d.secret.password = Some("********".to_owned());
            }
        }
        copy
    }

    /// Applies the command-line overrides, which win over the file:
    /// a non-empty `udp` replaces `transports.udp`; `broker` sets `broker.mode: upstream` and
    /// `broker.upstream.host`/`port`; `log` replaces `log.level`.
    ///
    /// The values are checked where they are parsed (see [`parse_host_port`] and
    /// [`check_log_level`]), so this cannot fail.
    pub fn apply_overrides(
        &mut self,
        udp: &[SocketAddr],
        broker: Option<(String, u16)>,
        log: Option<String>,
    ) {
        if !udp.is_empty() {
            // Same address given twice would fail to bind; keep the first.
            let mut seen = HashSet::new();
            self.transports.udp = udp
                .iter()
                .filter(|addr| seen.insert(**addr))
                .map(|&bind| UdpTransport { bind })
                .collect();
        }
        if let Some((host, port)) = broker {
            self.broker.mode = BrokerMode::Upstream;
            self.broker.upstream.host = host;
            self.broker.upstream.port = port;
        }
        if let Some(level) = log {
            self.log.level = level;
        }
    }

    /// Where device sessions are sent: the upstream broker, or the embedded broker's address.
    pub fn broker_address(&self) -> String {
        match self.broker.mode {
            BrokerMode::Embedded => self.broker.embedded.bind.to_string(),
            BrokerMode::Upstream => {
                let upstream = &self.broker.upstream;
                if upstream.host.contains(':') {
                    format!("[{}]:{}", upstream.host, upstream.port)
                } else {
                    format!("{}:{}", upstream.host, upstream.port)
                }
            }
        }
    }
}

/// Parses `HOST:PORT` as given to `--broker`: `broker.local:1883`, `10.0.0.2:1883`,
/// `[::1]:1883`. The host comes back without brackets.
pub fn parse_host_port(text: &str) -> Result<(String, u16), String> {
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("`{text}`: expected HOST:PORT, e.g. 127.0.0.1:1883"))?;
    let host = match host.strip_prefix('[') {
        Some(inner) => inner
            .strip_suffix(']')
            .ok_or_else(|| format!("`{text}`: unclosed `[` in host"))?,
        None if host.contains(':') => {
            return Err(format!(
                "`{text}`: write an IPv6 host in brackets, e.g. [::1]:1883"
            ))
        }
        None => host,
    };
    check_host(host).map_err(|reason| format!("`{text}`: {reason}"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("`{text}`: port must be a number from 1 to 65535"))?;
    if port == 0 {
        return Err(format!("`{text}`: port must be from 1 to 65535"));
    }
    Ok((host.to_owned(), port))
}
