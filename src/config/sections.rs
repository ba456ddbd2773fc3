//! The sections of `gateway.yaml` other than `broker` and `discovery`: `gateway`, `transports`,
//! `predefined_topics`, `limits`, `timers`, `sleep`, `store`, `log`, with their defaults and the
//! checks for their own keys.
//!
//! A default that the core also has (a bound, a timer, a sleep buffer size) is read from
//! [`Settings::default`], never written here a second time; only config-only keys (channel
//! depth, socket buffers, serial line settings, paths) have their defaults here. Must never
//! import from `mod.rs`; shared deserializers come from `checks.rs`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::de::{self, Deserializer, MapAccess};
use serde::{Deserialize, Serialize};

use super::checks::{
    check_log_level, checked_int, checked_str, in_range, positive_duration, socket_addr,
    unique_list,
};
use super::duration;
use crate::core::Settings;

/// `gateway`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewaySection {
    /// `gateway.id`: the GwId sent in ADVERTISE and GWINFO.
    pub id: u8,
}

impl Default for GatewaySection {
    fn default() -> Self {
        GatewaySection {
            id: Settings::default().gateway_id,
        }
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
    /// `shared_session_backlog`: packets that may wait for the connection of one of the
    /// gateway's own upstream sessions (the aggregating mode's shared sessions, the status
    /// session) before it is closed as too slow; a device's own session waits for at most
    /// `channel_depth`.
    #[serde(deserialize_with = "in_range::<_, 1, { u32::MAX as u64 }>")]
    pub shared_session_backlog: usize,
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
        let core = Settings::default().per_source;
        let wide = |v: u32| usize::try_from(v).unwrap_or(usize::MAX);
        PerSource {
            devices_per_address: core.devices_per_address,
            devices_per_subnet: core.devices_per_subnet,
            pending_per_address: core.pending_per_address,
            pending_per_subnet: core.pending_per_subnet,
            connects_per_second: wide(core.connects_per_second),
            connect_burst: wide(core.connect_burst),
            ipv4_subnet_prefix: usize::from(core.ipv4_prefix),
            ipv6_subnet_prefix: usize::from(core.ipv6_prefix),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        let core = Settings::default();
        Limits {
            max_devices: core.max_devices,
            max_topics_per_device: core.max_topics_per_device,
            max_queued_per_device: core.max_queued_per_device,
            max_frame_size: core.max_frame_size,
            max_client_id_len: core.max_client_id_len,
            // Config-only: the shell's channels and sockets.
            channel_depth: 1024,
            shared_session_backlog: 65_536,
            udp_receive_buffer: 4 * 1024 * 1024,
            max_subscriptions_per_device: core.max_subscriptions_per_device,
            max_silent_downlink_bytes: core.max_silent_downlink_bytes,
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
        let core = Settings::default();
        Timers {
            retry_interval: core.retry_interval,
            max_retries: u8::try_from(core.max_retries).unwrap_or(u8::MAX),
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
        let core = Settings::default();
        Sleep {
            buffer_messages: core.sleep_buffer_messages,
            buffer_bytes: core.sleep_buffer_bytes,
            keep_qos0: core.sleep_keep_qos0,
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
    /// `format`: `text` (one line per event, for people and journald) or `json` (one JSON
    /// object per line, for a log collector).
    pub format: LogFormat,
}

/// `runtime`: how the process runs its I/O.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Runtime {
    /// `worker_threads`: threads that run the gateway's I/O (devices, upstream sessions, the
    /// status page). 1 (the default) runs everything on one thread: a datagram, the core's
    /// answer and the upstream write happen in one wake-up with no hand-over between threads,
    /// which costs the least CPU per message (docs/benchmarks.md). More threads spread TLS and
    /// many busy upstream sessions over cores. The embedded broker has threads of its own.
    #[serde(deserialize_with = "in_range::<_, 1, 256>")]
    pub worker_threads: usize,
}

impl Default for Runtime {
    fn default() -> Self {
        Runtime { worker_threads: 1 }
    }
}

/// `log.format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl Default for Log {
    fn default() -> Self {
        Log {
            level: "info".to_owned(),
            format: LogFormat::Text,
        }
    }
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

pub(super) fn predefined_topics<'de, D: Deserializer<'de>>(
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
