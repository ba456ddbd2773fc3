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
//! This module reads and writes text only; it never opens sockets. The command-line overrides
//! live here too ([`Config::apply_overrides`]) so they are tested with the rest.

pub mod discovery;
pub mod duration;

pub use discovery::{Advertise, Discovery, MulticastGroup};

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, DeserializeOwned, DeserializeSeed, Deserializer, MapAccess, SeqAccess};
use serde::{Deserialize, Serialize};

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
}

/// `gateway`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewaySection {
    /// `gateway.id`: the GwId sent in ADVERTISE and GWINFO.
    pub id: u8,
}

impl Default for GatewaySection {
    fn default() -> Self {
        GatewaySection { id: 1 }
    }
}

/// `transports`. At least one transport of any kind; checked inside the mapping's visitor so
/// the error names `transports` and its line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Transports {
    /// `transports.udp[]`: one UDP socket per entry; no duplicates. May be empty when
    /// `serial` is not. Absent: one socket on `0.0.0.0:1884`.
    pub udp: Vec<UdpTransport>,
    /// `transports.serial[]`: one serial port per entry; no path twice.
    pub serial: Vec<SerialTransport>,
}

impl Default for Transports {
    fn default() -> Self {
        Transports {
            udp: vec![UdpTransport {
                bind: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 1884),
            }],
            serial: Vec::new(),
        }
    }
}

/// `transports` as written, before the "at least one transport" check.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct TransportLists {
    #[serde(deserialize_with = "udp_transports")]
    udp: Vec<UdpTransport>,
    #[serde(deserialize_with = "serial_transports")]
    serial: Vec<SerialTransport>,
}

impl Default for TransportLists {
    fn default() -> Self {
        let Transports { udp, serial } = Transports::default();
        TransportLists { udp, serial }
    }
}

impl<'de> Deserialize<'de> for Transports {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(TransportsVisitor)
    }
}

struct TransportsVisitor;

impl<'de> de::Visitor<'de> for TransportsVisitor {
    type Value = Transports;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping with `udp` and/or `serial`")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Transports, A::Error> {
        let TransportLists { udp, serial } =
            TransportLists::deserialize(de::value::MapAccessDeserializer::new(map))?;
        if udp.is_empty() && serial.is_empty() {
            return Err(de::Error::custom(
                "no transport: `udp` is empty and `serial` has no entries; at least one is needed",
            ));
        }
        Ok(Transports { udp, serial })
    }
}

/// One entry of `transports.udp[]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UdpTransport {
    /// `bind`: local address and port, e.g. `0.0.0.0:1884` or `"[::]:1884"`.
    #[serde(deserialize_with = "socket_addr")]
    pub bind: SocketAddr,
}

/// One entry of `transports.serial[]`: a UART with a radio (or a forwarder) on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialTransport {
    /// `path`: the device node, e.g. `/dev/ttyUSB0` or `/dev/serial/by-id/...`. Required.
    #[serde(deserialize_with = "serial_path")]
    pub path: PathBuf,
    /// `baud`: line speed in bit/s, 50..=4000000.
    #[serde(default = "default_baud", deserialize_with = "baud")]
    pub baud: u32,
    /// `framing`: how MQTT-SN frames are delimited on the line.
    #[serde(default)]
    pub framing: SerialFraming,
    /// `xbee_api_mode`: 1 (unescaped) or 2 (escaped); the radio's `AP` setting. Only for
    /// `framing: xbee`.
    #[serde(default = "default_xbee_api_mode", deserialize_with = "xbee_api_mode")]
    pub xbee_api_mode: u8,
    /// `data_bits`: 5..=8.
    #[serde(default = "default_data_bits", deserialize_with = "data_bits")]
    pub data_bits: u8,
    /// `parity`: `none`, `even` or `odd`.
    #[serde(default)]
    pub parity: SerialParity,
    /// `stop_bits`: 1 or 2.
    #[serde(default = "default_stop_bits", deserialize_with = "stop_bits")]
    pub stop_bits: u8,
    /// `flow_control`: `none`, `software` (XON/XOFF) or `hardware` (RTS/CTS).
    #[serde(default)]
    pub flow_control: SerialFlowControl,
    /// `frame_timeout`: a frame half-received and then silent this long is dropped.
    #[serde(
        default = "default_frame_timeout",
        serialize_with = "duration::serialize",
        deserialize_with = "positive_duration"
    )]
    pub frame_timeout: Duration,
    /// `required`: `true`: a port that cannot be opened at start stops the gateway; `false`:
    /// a warning, and the port is retried with back-off.
    #[serde(default = "default_required")]
    pub required: bool,
}

impl SerialTransport {
    /// An entry for `path` with every other key at its default.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        SerialTransport {
            path: path.into(),
            baud: default_baud(),
            framing: SerialFraming::default(),
            xbee_api_mode: default_xbee_api_mode(),
            data_bits: default_data_bits(),
            parity: SerialParity::default(),
            stop_bits: default_stop_bits(),
            flow_control: SerialFlowControl::default(),
            frame_timeout: default_frame_timeout(),
            required: default_required(),
        }
    }
}

fn default_baud() -> u32 {
    9600
}
fn default_xbee_api_mode() -> u8 {
    1
}
fn default_data_bits() -> u8 {
    8
}
fn default_stop_bits() -> u8 {
    1
}
fn default_frame_timeout() -> Duration {
    Duration::from_millis(500)
}
fn default_required() -> bool {
    true
}

/// `transports.serial[].framing`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SerialFraming {
    /// Frames delimited by the MQTT-SN Length field alone.
    #[default]
    Raw,
    /// Digi XBee API frames (receive packet 0x90 in, transmit request 0x10 out).
    Xbee,
    /// SLIP (RFC 1055) with a CRC-16/CCITT-FALSE trailer.
    Slip,
}

/// `transports.serial[].parity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SerialParity {
    #[default]
    None,
    Even,
    Odd,
}

/// `transports.serial[].flow_control`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SerialFlowControl {
    #[default]
    None,
    /// XON/XOFF.
    Software,
    /// RTS/CTS.
    Hardware,
}

/// `broker`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Broker {
    /// `broker.mode`: which broker device sessions go to.
    pub mode: BrokerMode,
    /// `broker.upstream`: used when `mode` is `upstream`.
    #[serde(deserialize_with = "null_as_default")]
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

/// `broker.upstream`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Upstream {
    /// `host`: name or IP address of the broker (IPv6 without brackets, e.g. `::1`).
    #[serde(deserialize_with = "host")]
    pub host: String,
    /// `port`: TCP port of the broker, 1..=65535.
    #[serde(deserialize_with = "nonzero_port")]
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
    /// `username`: sent in every upstream CONNECT when set.
    pub username: Option<String>,
    /// `password`: sent in every upstream CONNECT when set.
    pub password: Option<String>,
    /// `client_id_prefix`: prepended to each device's ClientId upstream.
    pub client_id_prefix: String,
}

impl Default for Upstream {
    fn default() -> Self {
        Upstream {
            host: "127.0.0.1".to_owned(),
            port: 1883,
            keep_alive: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            username: None,
            password: None,
            client_id_prefix: String::new(),
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
    /// `allow_anonymous`: let clients in without a user name although `bind` is not loopback
    /// (or although credentials are set).
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
            allow_anonymous: false,
            max_queued_messages: 1000,
        }
    }
}

impl Embedded {
    /// The checks that span several keys of the section.
    fn check(&self) -> Result<(), String> {
        match (&self.username, &self.password) {
            (Some(_), None) => return Err("username is set but password is not: set both".into()),
            (None, Some(_)) => return Err("password is set but username is not: set both".into()),
            _ => {}
        }
        if self.max_queued_messages == 0 {
            return Err("max_queued_messages: must be at least 1".into());
        }
        if !self.bind.ip().is_loopback() && self.username.is_none() && !self.allow_anonymous {
            return Err(format!(
                "bind: {} is reachable from other machines, and an open broker there would let \
                 anyone read and command your devices: set username and password, or state \
                 allow_anonymous: true",
                self.bind
            ));
        }
        Ok(())
    }
}

/// One entry of `predefined_topics[]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PredefinedTopic {
    /// `id`: the TopicId, 0x0001..=0xFFFE, unique in the list.
    #[serde(deserialize_with = "predefined_topic_id")]
    pub id: u16,
    /// `topic`: the MQTT topic name; not empty, no wildcards, unique in the list.
    #[serde(deserialize_with = "topic_name")]
    pub topic: String,
}

/// `limits`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// `max_devices`: connected plus sleeping devices, at least 1.
    #[serde(deserialize_with = "in_range::<_, 1, { u32::MAX as u64 }>")]
    pub max_devices: usize,
    /// `max_topics_per_device`: registered topic ids per device, 0..=65534.
    #[serde(deserialize_with = "in_range::<_, 0, 65534>")]
    pub max_topics_per_device: usize,
    /// `max_queued_per_device`: messages waiting to go down to one device, at least 1.
    #[serde(deserialize_with = "in_range::<_, 1, { u32::MAX as u64 }>")]
    pub max_queued_per_device: usize,
    /// `max_frame_size`: largest MQTT-SN frame in octets, 16..=65535.
    #[serde(deserialize_with = "in_range::<_, 16, 65535>")]
    pub max_frame_size: usize,
    /// `max_client_id_len`: longest accepted ClientId in octets, 1..=65535.
    #[serde(deserialize_with = "in_range::<_, 1, 65535>")]
    pub max_client_id_len: usize,
    /// `channel_depth`: capacity of each bounded channel in the runtime, at least 1.
    #[serde(deserialize_with = "in_range::<_, 1, { u32::MAX as u64 }>")]
    pub channel_depth: usize,
    /// `udp_receive_buffer`: kernel receive buffer asked for each UDP socket, octets.
    #[serde(deserialize_with = "in_range::<_, 4096, { u32::MAX as u64 }>")]
    pub udp_receive_buffer: usize,
    /// `max_subscriptions_per_device`: subscriptions one device may hold, at least 1.
    #[serde(deserialize_with = "in_range::<_, 1, { u32::MAX as u64 }>")]
    pub max_subscriptions_per_device: usize,
    /// `max_silent_downlink_bytes`: octets sent to a UDP device with nothing heard back before
    /// it counts as lost, at least 1024.
    #[serde(deserialize_with = "in_range::<_, 1024, { u32::MAX as u64 }>")]
    pub max_silent_downlink_bytes: usize,
    /// `per_source`: what one source address or subnet may hold (UDP only).
    pub per_source: PerSource,
}

/// `limits.per_source`: bounds for one UDP source address and one subnet (source addresses can
/// be spoofed, so no one sender may fill the device table).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PerSource {
    /// `devices_per_address`: connected devices one IP address may hold, at least 1.
    #[serde(deserialize_with = "in_range::<_, 1, { u32::MAX as u64 }>")]
    pub devices_per_address: usize,
    /// `devices_per_subnet`: connected devices one subnet may hold, at least 1.
    #[serde(deserialize_with = "in_range::<_, 1, { u32::MAX as u64 }>")]
    pub devices_per_subnet: usize,
    /// `pending_per_address`: devices not heard from since their CONNECT, per IP address.
    #[serde(deserialize_with = "in_range::<_, 1, { u32::MAX as u64 }>")]
    pub pending_per_address: usize,
    /// `pending_per_subnet`: the same per subnet.
    #[serde(deserialize_with = "in_range::<_, 1, { u32::MAX as u64 }>")]
    pub pending_per_subnet: usize,
    /// `connects_per_second`: sessions one subnet may start per second, sustained.
    #[serde(deserialize_with = "in_range::<_, 1, { u32::MAX as u64 }>")]
    pub connects_per_second: usize,
    /// `connect_burst`: sessions one subnet may start at once.
    #[serde(deserialize_with = "in_range::<_, 1, { u32::MAX as u64 }>")]
    pub connect_burst: usize,
    /// `ipv4_subnet_prefix`: prefix length of an IPv4 subnet, 0..=32.
    #[serde(deserialize_with = "in_range::<_, 0, 32>")]
    pub ipv4_subnet_prefix: usize,
    /// `ipv6_subnet_prefix`: prefix length of an IPv6 subnet, 0..=128.
    #[serde(deserialize_with = "in_range::<_, 0, 128>")]
    pub ipv6_subnet_prefix: usize,
}

impl Default for PerSource {
    fn default() -> Self {
        PerSource {
            devices_per_address: 1000,
            devices_per_subnet: 5000,
            pending_per_address: 32,
            pending_per_subnet: 128,
            connects_per_second: 100,
            connect_burst: 200,
            ipv4_subnet_prefix: 24,
            ipv6_subnet_prefix: 64,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_devices: 10_000,
            max_topics_per_device: 256,
            max_queued_per_device: 64,
            max_frame_size: 1024,
            max_client_id_len: 64,
            channel_depth: 1024,
            udp_receive_buffer: 4 * 1024 * 1024,
            max_subscriptions_per_device: 256,
            max_silent_downlink_bytes: 64 * 1024,
            per_source: PerSource::default(),
        }
    }
}

/// `timers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Timers {
    /// `retry_interval`: T_RETRY, the wait before a message to a device is sent again.
    #[serde(
        serialize_with = "duration::serialize",
        deserialize_with = "positive_duration"
    )]
    pub retry_interval: Duration,
    /// `max_retries`: N_RETRY, how often it is sent again before the device counts as lost.
    pub max_retries: u8,
}

impl Default for Timers {
    fn default() -> Self {
        Timers {
            retry_interval: Duration::from_secs(10),
            max_retries: 3,
        }
    }
}

/// `sleep`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Sleep {
    /// `buffer_messages`: messages (and the REGISTERs they need) kept for one sleeping device.
    #[serde(deserialize_with = "in_range::<_, 2, { u32::MAX as u64 }>")]
    pub buffer_messages: usize,
    /// `buffer_bytes`: octets of payload and topic names kept for one sleeping device.
    #[serde(deserialize_with = "in_range::<_, 64, { u32::MAX as u64 }>")]
    pub buffer_bytes: usize,
    /// `keep_qos0`: buffer QoS 0 messages for sleeping devices (else drop and count them).
    pub keep_qos0: bool,
}

impl Default for Sleep {
    fn default() -> Self {
        Sleep {
            buffer_messages: 100,
            buffer_bytes: 64 * 1024,
            keep_qos0: true,
        }
    }
}

/// `store`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSection {
    /// `path`: the SQLite file keeping persistent sessions, sleep buffers and in-flight QoS
    /// state across restarts; `null` keeps everything in memory only.
    pub path: Option<std::path::PathBuf>,
}

impl Default for StoreSection {
    fn default() -> Self {
        StoreSection {
            path: Some(std::path::PathBuf::from("data/gateway.db")),
        }
    }
}

/// `log`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Log {
    /// `level`: a `tracing` EnvFilter directive such as `info` or `info,mqttsn_gateway=debug`.
    #[serde(deserialize_with = "log_level")]
    pub level: String,
}

impl Default for Log {
    fn default() -> Self {
        Log {
            level: "info".to_owned(),
        }
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read: {source}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The text is not valid YAML, or a key or value is wrong.
    #[error("{origin}{}: {}{message}", position(*.line, *.column), key_prefix(.key))]
    Invalid {
        /// The file name (or another origin such as `<string>`).
        origin: String,
        /// 1-based line, when known.
        line: Option<usize>,
        /// 1-based column, when known.
        column: Option<usize>,
        /// The key path, like `transports.udp[0].bind`; empty for the document itself.
        key: String,
        /// What is wrong.
        message: String,
    },
}

fn position(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(line), Some(column)) => format!(":{line}:{column}"),
        (Some(line), None) => format!(":{line}"),
        _ => String::new(),
    }
}

fn key_prefix(key: &str) -> String {
    if key.is_empty() {
        String::new()
    } else {
        format!("{key}: ")
    }
}

impl ConfigError {
    /// Splits a `serde_norway` error into location, key path and message.
    ///
    /// `serde_norway` renders its errors as `PATH: MESSAGE at line L column C` and exposes only
    /// the location, so the path is taken back off the front of the text. A path never contains
    /// whitespace, which tells it apart from messages such as `invalid type: ...`.
    fn from_yaml(err: &serde_norway::Error, origin: &str) -> ConfigError {
        let mut text = err.to_string();
        let (line, column) = match err.location() {
            Some(location) => {
                let at = format!(" at line {} column {}", location.line(), location.column());
                text = text.replacen(&at, "", 1);
                (Some(location.line()), Some(location.column()))
            }
            None => (None, None),
        };
        let (mut key, message) = match text.split_once(": ") {
            Some((path, rest)) if !path.is_empty() && !path.contains(char::is_whitespace) => {
                (path.to_owned(), rest.to_owned())
            }
            _ => (String::new(), text),
        };
        // serde reports an unknown key at its parent; name the key itself.
        if let Some(unknown) = message
            .strip_prefix("unknown field `")
            .and_then(|rest| rest.split_once('`'))
            .map(|(name, _)| name)
        {
            if !key.is_empty() {
                key.push('.');
            }
            key.push_str(unknown);
        }
        ConfigError::Invalid {
            origin: origin.to_owned(),
            line,
            column,
            key,
            message,
        }
    }
}

impl Config {
    /// Reads and validates `path`. Errors name the file as given.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::from_yaml_str(&text, &path.display().to_string())
    }

    /// Parses and validates YAML text; `origin` names it in errors (a file name or `<string>`).
    /// An empty document (or one holding only comments) gives the defaults.
    pub fn from_yaml_str(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let parsed: Option<Config> =
            serde_norway::from_str(text).map_err(|err| ConfigError::from_yaml(&err, origin))?;
        Ok(parsed.unwrap_or_default())
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

/// Checks a `log.level` / `--log` value: it must be a valid tracing EnvFilter directive.
pub fn check_log_level(level: &str) -> Result<(), String> {
    if level.trim().is_empty() {
        return Err("log level is empty (use e.g. `info` or `info,mqttsn_gateway=debug`)".into());
    }
    tracing_subscriber::EnvFilter::builder()
        .parse(level)
        .map(drop)
        .map_err(|err| format!("invalid log level `{level}`: {err}"))
}

fn check_host(host: &str) -> Result<(), String> {
    if host.is_empty() {
        Err("host is empty".to_owned())
    } else if host.contains(|c: char| c.is_whitespace() || c == '/') {
        Err(format!("`{host}` is not a host name or IP address"))
    } else {
        Ok(())
    }
}

// ---- value checks ----
//
// Each check runs inside a visitor's `visit_*` method. serde_norway attaches the location and key
// path of the value being visited to an error returned there; an error returned after
// `T::deserialize` has finished would be attributed to the enclosing mapping instead.

/// A missing section and a section written as `null` (all its keys commented out) both mean
/// "defaults".
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Option::<T>::deserialize(deserializer).map(Option::unwrap_or_default)
}

/// Reads an integer from `min` to `max`, then applies `check`.
struct IntVisitor {
    min: u64,
    max: u64,
    check: fn(u64) -> Result<(), String>,
}

impl IntVisitor {
    fn out_of_range(&self, value: impl fmt::Display) -> String {
        format!(
            "{value} is out of range: must be from {} to {}",
            self.min, self.max
        )
    }
}

impl de::Visitor<'_> for IntVisitor {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "an integer from {} to {}", self.min, self.max)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
        (self.check)(v).map_err(E::custom)?;
        if !(self.min..=self.max).contains(&v) {
            return Err(E::custom(self.out_of_range(v)));
        }
        Ok(v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
        match u64::try_from(v) {
            Ok(v) => self.visit_u64(v),
            Err(_) => Err(E::custom(self.out_of_range(v))),
        }
    }
}

/// `deserialize_any` rather than `deserialize_u64`: serde_norway rejects a negative number for
/// `u64` before any visitor sees it, with a confusing message.
fn checked_int<'de, D: Deserializer<'de>>(
    deserializer: D,
    min: u64,
    max: u64,
    check: fn(u64) -> Result<(), String>,
) -> Result<u64, D::Error> {
    deserializer.deserialize_any(IntVisitor { min, max, check })
}

fn in_range<'de, D: Deserializer<'de>, const MIN: u64, const MAX: u64>(
    deserializer: D,
) -> Result<usize, D::Error> {
    let value = checked_int(deserializer, MIN, MAX, |_| Ok(()))?;
    usize::try_from(value)
        .map_err(|_| de::Error::custom(format_args!("{value} is too large for this machine")))
}

fn nonzero_port<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u16, D::Error> {
    let port = checked_int(deserializer, 1, 65535, |_| Ok(()))?;
    Ok(port as u16) // checked above
}

fn predefined_topic_id<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u16, D::Error> {
    let id = checked_int(deserializer, 0x0001, 0xFFFE, |id| match id {
        0x0000 | 0xFFFF => Err(format!(
            "topic id {id:#06x} is reserved: use 1 to 65534 (0x0001 to 0xfffe)"
        )),
        _ => Ok(()),
    })?;
    Ok(id as u16) // checked above
}

/// Reads a string and checks (and possibly rewrites) it.
struct StrVisitor {
    expecting: &'static str,
    check: fn(&str) -> Result<String, String>,
}

impl de::Visitor<'_> for StrVisitor {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        (self.check)(v).map_err(E::custom)
    }
}

fn checked_str<'de, D: Deserializer<'de>>(
    deserializer: D,
    expecting: &'static str,
    check: fn(&str) -> Result<String, String>,
) -> Result<String, D::Error> {
    deserializer.deserialize_str(StrVisitor { expecting, check })
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

fn topic_name<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    checked_str(deserializer, "an MQTT topic name", |topic| {
        if topic.is_empty() {
            Err("topic is empty".to_owned())
        } else if topic.contains(['+', '#']) {
            Err(format!(
                "topic `{topic}` contains a wildcard (`+` or `#`); a predefined topic is a topic name"
            ))
        } else if topic.contains('\0') || topic.len() > 65535 {
            Err("topic must not contain NUL and must be at most 65535 octets".to_owned())
        } else {
            Ok(topic.to_owned())
        }
    })
}

fn log_level<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    checked_str(deserializer, "a tracing EnvFilter directive", |level| {
        check_log_level(level)?;
        Ok(level.to_owned())
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
    struct Section;

    impl<'de> de::Visitor<'de> for Section {
        type Value = Embedded;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a mapping of the embedded broker's keys")
        }

        fn visit_none<E: de::Error>(self) -> Result<Embedded, E> {
            Ok(Embedded::default())
        }

        fn visit_unit<E: de::Error>(self) -> Result<Embedded, E> {
            Ok(Embedded::default())
        }

        fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Embedded, D::Error> {
            deserializer.deserialize_map(self)
        }

        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Embedded, A::Error> {
            let section = Embedded::deserialize(de::value::MapAccessDeserializer::new(map))?;
            section.check().map_err(de::Error::custom)?;
            Ok(section)
        }
    }

    deserializer.deserialize_option(Section)
}

/// Reads a socket address and checks it.
struct AddrVisitor {
    check: fn(SocketAddr) -> Result<(), String>,
}

impl de::Visitor<'_> for AddrVisitor {
    type Value = SocketAddr;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a socket address like 0.0.0.0:1884 or \"[::]:1884\" (quote IPv6 in YAML)")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<SocketAddr, E> {
        let addr: SocketAddr = v.parse().map_err(|_| {
            E::custom(format_args!(
                "invalid socket address `{v}`: expected IP:PORT like 0.0.0.0:1884 or [::]:1884"
            ))
        })?;
        (self.check)(addr).map_err(E::custom)?;
        Ok(addr)
    }
}

fn socket_addr<'de, D: Deserializer<'de>>(deserializer: D) -> Result<SocketAddr, D::Error> {
    deserializer.deserialize_str(AddrVisitor { check: |_| Ok(()) })
}

/// A destination needs a real address and port (unlike a bind address).
fn check_destination(addr: SocketAddr) -> Result<(), String> {
    if addr.ip().is_unspecified() || addr.port() == 0 {
        Err(format!(
            "`{addr}` cannot be a destination (use e.g. 255.255.255.255:1884)"
        ))
    } else {
        Ok(())
    }
}

fn positive_duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    duration::deserialize_checked(deserializer, |value| {
        if value.is_zero() {
            Err("must be longer than 0s".to_owned())
        } else {
            Ok(())
        }
    })
}

/// Whole seconds up to 65535 (a u16 on the wire), optionally allowing zero.
fn whole_seconds_u16(value: Duration, allow_zero: bool) -> Result<(), String> {
    if value.subsec_nanos() != 0 {
        return Err(format!(
            "`{}` must be whole seconds",
            duration::format(value)
        ));
    }
    if value.as_secs() > 65535 || (!allow_zero && value.is_zero()) {
        let min = if allow_zero { "0s" } else { "1s" };
        return Err(format!(
            "out of range: must be from {min} to 65535s (18h12m15s)"
        ));
    }
    Ok(())
}

fn keep_alive<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    duration::deserialize_checked(deserializer, |value| whole_seconds_u16(value, true))
}

fn advertise_interval<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    duration::deserialize_checked(deserializer, |value| whole_seconds_u16(value, false))
}

/// An empty list is allowed here; [`Transports`] checks that some transport is left.
fn udp_transports<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<UdpTransport>, D::Error> {
    let list = unique_list(
        deserializer,
        "a list of `{ bind: ADDR:PORT }`",
        true,
        |earlier: &[UdpTransport], entry: &UdpTransport| match earlier
            .iter()
            .position(|e| e.bind == entry.bind)
        {
            Some(i) => Err(format!(
                "bind address {} is already used by transports.udp[{i}]",
                entry.bind
            )),
            None => Ok(()),
        },
    )?;
    Ok(list.unwrap_or_else(|| Transports::default().udp))
}

fn serial_transports<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<SerialTransport>, D::Error> {
    let list = unique_list(
        deserializer,
        "a list of `{ path: /dev/ttyUSB0, baud: 9600, framing: raw }`",
        true,
        |earlier: &[SerialTransport], entry: &SerialTransport| match earlier
            .iter()
            .position(|e| e.path == entry.path)
        {
            Some(i) => Err(format!(
                "path {} is already used by transports.serial[{i}]",
                entry.path.display()
            )),
            None => Ok(()),
        },
    )?;
    Ok(list.unwrap_or_default())
}

fn serial_path<'de, D: Deserializer<'de>>(deserializer: D) -> Result<PathBuf, D::Error> {
    checked_str(deserializer, "a device path like /dev/ttyUSB0", |path| {
        if path.trim().is_empty() || path.contains('\0') {
            Err("path is empty or contains NUL".to_owned())
        } else {
            Ok(path.to_owned())
        }
    })
    .map(PathBuf::from)
}

fn baud<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    let baud = checked_int(deserializer, 50, 4_000_000, |_| Ok(()))?;
    Ok(baud as u32) // checked above
}

fn xbee_api_mode<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u8, D::Error> {
    let mode = checked_int(deserializer, 1, 2, |_| Ok(()))?;
    Ok(mode as u8) // checked above
}

fn data_bits<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u8, D::Error> {
    let bits = checked_int(deserializer, 5, 8, |_| Ok(()))?;
    Ok(bits as u8) // checked above
}

fn stop_bits<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u8, D::Error> {
    let bits = checked_int(deserializer, 1, 2, |_| Ok(()))?;
    Ok(bits as u8) // checked above
}

fn predefined_topics<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<PredefinedTopic>, D::Error> {
    let list = unique_list(
        deserializer,
        "a list of `{ id: N, topic: NAME }`",
        true,
        |earlier: &[PredefinedTopic], entry: &PredefinedTopic| {
            if let Some(i) = earlier.iter().position(|e| e.id == entry.id) {
                return Err(format!(
                    "duplicate id {} ({:#06x}): already used by predefined_topics[{i}]",
                    entry.id, entry.id
                ));
            }
            if let Some(i) = earlier.iter().position(|e| e.topic == entry.topic) {
                return Err(format!(
                    "duplicate topic `{}`: already predefined_topics[{i}]",
                    entry.topic
                ));
            }
            Ok(())
        },
    )?;
    Ok(list.unwrap_or_default())
}

/// Reads a list of mappings (or `null`, giving `None`), checking each entry against the
/// earlier ones as it is read.
///
/// The check runs inside the entry's own `visit_map`, so serde_norway attaches the entry's key
/// path (`predefined_topics[2]`) and line to the error, which a check after loading could not.
fn unique_list<'de, D, T>(
    deserializer: D,
    what: &'static str,
    allow_empty: bool,
    check: fn(&[T], &T) -> Result<(), String>,
) -> Result<Option<Vec<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned,
{
    deserializer.deserialize_option(OptionalList(ListVisitor {
        what,
        allow_empty,
        check,
    }))
}

struct OptionalList<T>(ListVisitor<T>);

impl<'de, T: DeserializeOwned> de::Visitor<'de> for OptionalList<T> {
    type Value = Option<Vec<T>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.what)
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_seq(self.0).map(Some)
    }
}

struct ListVisitor<T> {
    what: &'static str,
    allow_empty: bool,
    check: fn(&[T], &T) -> Result<(), String>,
}

impl<'de, T: DeserializeOwned> de::Visitor<'de> for ListVisitor<T> {
    type Value = Vec<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.what)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        let mut entries = Vec::new();
        while let Some(entry) = seq.next_element_seed(CheckedEntry {
            earlier: &entries,
            check: self.check,
        })? {
            entries.push(entry);
        }
        if entries.is_empty() && !self.allow_empty {
            return Err(de::Error::custom(
                "the list is empty; at least one entry is needed",
            ));
        }
        Ok(entries)
    }
}

struct CheckedEntry<'a, T> {
    earlier: &'a [T],
    check: fn(&[T], &T) -> Result<(), String>,
}

impl<'de, T: DeserializeOwned> DeserializeSeed<'de> for CheckedEntry<'_, T> {
    type Value = T;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<T, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de, T: DeserializeOwned> de::Visitor<'de> for CheckedEntry<'_, T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        let entry = T::deserialize(de::value::MapAccessDeserializer::new(map))?;
        (self.check)(self.earlier, &entry).map_err(de::Error::custom)?;
        Ok(entry)
    }
}
