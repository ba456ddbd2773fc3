//! What the core needs to know from the configuration, as plain values.
//!
//! The shell builds this from `config::Config`; the core never reads files.
//! Owns: [`Settings`] and the core's defaults. Must never: read files or the environment.

use std::time::Duration;

pub use super::admission::SourceLimits;
pub use super::rules::{AdmissionRules, QosMinusOnePolicy};
pub use super::status::StatusSettings;

/// Gateway-wide settings for [`super::Gateway`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// GwId sent in GWINFO and ADVERTISE.
    pub gateway_id: u8,
    /// Pre-defined topic ids (id, topic name), known to devices in advance (spec §6.7).
    pub predefined_topics: Vec<(u16, String)>,
    /// Devices the gateway keeps state for (connected or remembered for a later resume).
    pub max_devices: usize,
    /// Normal topic ids per device (REGISTER table size).
    pub max_topics_per_device: usize,
    /// Messages waiting to go down to one device, and uplink flows awaiting the broker.
    pub max_queued_per_device: usize,
    /// Largest MQTT-SN frame accepted from or sent to a device, in octets.
    pub max_frame_size: usize,
    /// Longest ClientId accepted in CONNECT.
    pub max_client_id_len: usize,
    /// T_RETRY: wait before re-sending an unacknowledged message to a device.
    pub retry_interval: Duration,
    /// N_RETRY: re-sends before the device is declared lost.
    pub max_retries: u32,
    /// ADVERTISE period, when discovery broadcasting is on.
    pub advertise_interval: Option<Duration>,
    /// Keep-alive the gateway asks of the broker for each upstream session (the gateway's own
    /// business, never the device's Duration).
    pub upstream_keep_alive: Duration,
    /// Time allowed for an upstream session to be accepted (TCP + CONNACK).
    pub upstream_connect_timeout: Duration,
    /// Prefix put before each device's ClientId upstream.
    pub client_id_prefix: String,
    /// Messages buffered for one sleeping device (REGISTERs included).
    pub sleep_buffer_messages: usize,
    /// Octets of payload and topic names buffered for one sleeping device.
    pub sleep_buffer_bytes: usize,
    /// Keep QoS 0 messages for sleeping devices (else they are dropped and counted).
    pub sleep_keep_qos0: bool,
    /// A durable store is attached: persistent sessions, sleep buffers and uplink QoS 2 state
    /// are written with `Output::Persist`, and acknowledgements that promise durability wait
    /// for `Gateway::handle_persisted`.
    pub persistent: bool,
    /// What one source address or subnet may hold, and its connect rate.
    pub per_source: SourceLimits,
    /// Octets sent to a UDP device with nothing heard back before it counts as lost.
    pub max_silent_downlink_bytes: usize,
    /// Subscriptions one device may hold; past it SUBACK says "rejected: congestion".
    pub max_subscriptions_per_device: usize,
    /// `admission` + `devices`: who may connect, from where, to which topics.
    pub admission: AdmissionRules,
    /// `qos_minus_one`: who may publish without a connection.
    pub qos_minus_one: QosMinusOnePolicy,
    /// What each transport is, by `TransportId` (a UDP bind address, a serial port's path),
    /// for log lines only. Empty: addresses are logged in their raw form.
    pub transport_names: Vec<String>,
    /// `status`: availability topics on the broker and their own session; `None`: none.
    /// (The configuration's default is on; a core built from `Settings::default()` publishes
    /// nothing, so a test that does not ask for it sees no extra session.)
    pub status: Option<StatusSettings>,
    /// `broker.upstream.sessions: aggregating`: devices share these few upstream sessions
    /// instead of one each (`core/aggregate/`); `None`: transparent (one session per device).
    pub aggregate: Option<AggregateSettings>,
}

/// The shared upstream sessions of aggregating mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AggregateSettings {
    /// `broker.upstream.connections`: how many shared sessions (1..=64); devices are spread
    /// over them, subscriptions all ride on the first.
    pub connections: usize,
    /// `broker.upstream.aggregate_client_id`: the ClientId of the shared session (with one
    /// connection), or its stem (`<id>-0`, `<id>-1`, ... with several). Not prefixed.
    pub client_id: String,
}

impl AggregateSettings {
    /// The upstream ClientId of shared session `k`.
    pub fn session_client_id(&self, k: usize) -> String {
        if self.connections == 1 {
            self.client_id.clone()
        } else {
            format!("{}-{k}", self.client_id)
        }
    }
}

/// The one place these defaults are written: `config`'s sections read them (`limits`,
/// `timers`, `sleep`, `gateway.id`, `broker.upstream`), so `gateway.yaml` without a key and a
/// core built with `Settings::default()` agree.
impl Default for Settings {
    fn default() -> Self {
        Settings {
            gateway_id: 1,
            predefined_topics: Vec::new(),
            max_devices: 10_000,
            max_topics_per_device: 256,
            max_queued_per_device: 64,
            max_frame_size: 1024,
            max_client_id_len: 64,
            retry_interval: Duration::from_secs(10),
            max_retries: 3,
            advertise_interval: None,
            upstream_keep_alive: Duration::from_secs(60),
            upstream_connect_timeout: Duration::from_secs(10),
            client_id_prefix: String::new(),
            sleep_buffer_messages: 100,
            sleep_buffer_bytes: 64 * 1024,
            sleep_keep_qos0: true,
            persistent: false,
            per_source: SourceLimits::default(),
            max_silent_downlink_bytes: 64 * 1024,
            max_subscriptions_per_device: 256,
            admission: AdmissionRules::default(),
            qos_minus_one: QosMinusOnePolicy::default(),
            transport_names: Vec::new(),
            status: None,
            aggregate: None,
        }
    }
}
