//! Availability on the broker (`status`): the gateway's own upstream session that says
//! `<prefix>/state` = `online` (its will says `offline`), and each device's
//! `<prefix>/devices/<ClientId>/state` = `active` / `asleep` / `lost` / `disconnected`, all
//! retained, so Home Assistant and Node-RED can show who is there. Optionally one retained
//! Home Assistant discovery config per device (`status.homeassistant`).
//!
//! Devices only report a change of their [`Availability`] through `Ctx::report_availability`;
//! the gateway hands the reports here when the input is done. One retained QoS 1 PUBLISH per
//! change, nothing per message.
//!
//! Owns [`Status`]: that session's life (open at start, reopen with back-off when it drops),
//! its packet ids, the window of unacknowledged publishes and the latest-only map of states
//! not yet published. Must never: queue more than one state per device (while the session is
//! down only the latest counts), hold more than `limits.max_devices` of them, do I/O or read
//! the clock.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::{debug, info};

use super::ctx::Ctx;
use super::types::SessionId;
use crate::mqtt;

/// `status` as the core needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusSettings {
    /// `status.topic_prefix` (e.g. `mqttsn/1`): a valid topic name without wildcards.
    pub topic_prefix: String,
    /// `status.homeassistant_prefix` when `status.homeassistant` is on, else `None`.
    pub homeassistant: Option<String>,
}

/// What a device's state topic says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Availability {
    /// Connected and listening (Active).
    Active,
    /// Asleep (DISCONNECT with a Duration), also while Awake: a PINGREQ wake-up that fetches
    /// the buffer and goes back to sleep is no change of availability.
    Asleep,
    /// Gone without DISCONNECT: keep-alive or sleep expired, retries exhausted, silence
    /// budget, evicted for a newcomer.
    Lost,
    /// Sent DISCONNECT (or its session ended: refused, broker closed it).
    Disconnected,
}

impl Availability {
    pub fn as_str(self) -> &'static str {
        match self {
            Availability::Active => "active",
            Availability::Asleep => "asleep",
            Availability::Lost => "lost",
            Availability::Disconnected => "disconnected",
        }
    }
}

/// Unacknowledged publishes on the status session at most; past it states wait in the
/// latest-only map.
const WINDOW: usize = 32;
/// First reconnect of the status session after it dropped; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// One unacknowledged publish.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Flight {
    Gateway,
    Device(String, Availability),
    Discovery,
}

/// The status session and the states it owes the broker.
#[derive(Debug, Default)]
pub(crate) struct Status {
    session: Option<SessionId>,
    connected: bool,
    connect_deadline: Option<Instant>,
    retry_at: Option<Instant>,
    backoff: Duration,
    /// Accepted once already: the next acceptance is a reconnect.
    was_connected: bool,
    next_pkid: u16,
    inflight: VecDeque<(u16, Flight)>,
    /// The latest state of each device not yet published (session down or window full).
    pending: BTreeMap<String, Availability>,
    /// Devices whose discovery config went out on this session.
    announced: HashSet<String>,
    /// Shut down: never reopened.
    stopped: bool,
}

impl Status {
    /// Whether `session` is the status session.
    pub(super) fn owns(&self, session: SessionId) -> bool {
        self.session == Some(session)
    }

    /// When [`Self::on_timeout`] must next run.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        [self.retry_at, self.connect_deadline]
            .into_iter()
            .flatten()
            .min()
    }

    /// States waiting to be published (tests: the bound holds).
    #[cfg(test)]
    pub(super) fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Opens the status session (at start, and on a retry), when `status` is on.
    pub(super) fn open(&mut self, ctx: &mut Ctx, now: Instant) {
        let Some(s) = &ctx.settings.status else {
            return;
        };
        if self.stopped || self.session.is_some() {
            return;
        }
        let will = mqtt::LastWill {
            topic: gateway_topic(&s.topic_prefix),
            message: Bytes::from_static(b"offline"),
            qos: mqtt::QoS::AtLeastOnce,
            retain: true,
        };
        let connect_id = client_id(ctx.settings.gateway_id);
        let connect = ctx.connect_packet(&connect_id, true, Some(will));
        self.retry_at = None;
        self.connect_deadline = Some(now + ctx.settings.upstream_connect_timeout);
        self.session = Some(ctx.open(None, connect, None));
    }

    /// Device state changes reported during the input that just ended.
    pub(super) fn report(&mut self, ctx: &mut Ctx, client_id: String, state: Availability) {
        if self.stopped {
            return;
        }
        if self.connected && self.pending.is_empty() && self.room(ctx, &client_id) {
            self.publish_device(ctx, client_id, state);
            return;
        }
        if self.pending.len() >= ctx.settings.max_devices && !self.pending.contains_key(&client_id)
        {
            ctx.stats.status_dropped += 1;
            debug!(
                client_id,
                state = state.as_str(),
                "status: too many states pending; dropped"
            );
            return;
        }
        self.pending.insert(client_id, state);
    }

    /// A packet on the status session: its CONNACK and the PUBACKs.
    pub(super) fn on_upstream(&mut self, ctx: &mut Ctx, now: Instant, packet: mqtt::Packet) {
        let Some(session) = self.session else {
            return;
        };
        match packet {
            mqtt::Packet::ConnAck { code, .. } if !self.connected => {
                self.connect_deadline = None;
                if code != mqtt::ConnectReturnCode::Accepted {
                    info!(?code, "broker refused the gateway's status session");
                    ctx.close(session, true);
                    self.failed(now);
                    return;
                }
                self.connected = true;
                self.backoff = Duration::ZERO;
                if self.was_connected {
                    ctx.stats.status_reconnects += 1;
                    info!("status session back; publishing the states that changed meanwhile");
                }
                self.was_connected = true;
                let topic = self.gateway_state_topic(ctx);
                self.publish(ctx, Flight::Gateway, topic, "online");
                self.flush(ctx);
            }
            mqtt::Packet::PubAck { packet_id } => {
                if let Some(i) = self.inflight.iter().position(|(p, _)| *p == packet_id) {
                    self.inflight.remove(i);
                }
                self.flush(ctx);
            }
            other => debug!(packet = ?other, "unexpected packet on the status session"),
        }
    }

    /// The status session ended (broker down, refused, reset).
    pub(super) fn on_closed(&mut self, now: Instant) {
        if self.connected {
            info!("status session lost; states are kept (latest per device) until it is back");
        }
        self.failed(now);
    }

    /// The connect deadline and the reconnect.
    pub(super) fn on_timeout(&mut self, ctx: &mut Ctx, now: Instant) {
        if self.connect_deadline.is_some_and(|t| t <= now) {
            info!("the broker did not accept the gateway's status session in time");
            if let Some(s) = self.session {
                ctx.close(s, false);
            }
            self.failed(now);
        }
        if self.retry_at.is_some_and(|t| t <= now) {
            self.retry_at = None;
            self.open(ctx, now);
        }
    }

    /// A clean shutdown: `offline` is published before the DISCONNECT (which discards the
    /// will). A session not yet accepted is just dropped: its will, if it was accepted after
    /// all, says the same.
    /// Returns the session that said `offline`, if one did.
    pub(super) fn shutdown(&mut self, ctx: &mut Ctx) -> Option<SessionId> {
        self.stopped = true;
        self.retry_at = None;
        self.connect_deadline = None;
        let said = self.connected;
        if said {
            let topic = self.gateway_state_topic(ctx);
            self.publish(ctx, Flight::Gateway, topic, "offline");
        }
        self.connected = false;
        let session = self.session.take()?;
        ctx.close(session, said);
        said.then_some(session)
    }

    fn failed(&mut self, now: Instant) {
        self.session = None;
        self.connected = false;
        self.connect_deadline = None;
        self.announced.clear();
        // What the broker did not acknowledge is published again; a newer pending state wins.
        let mut unacked = BTreeMap::new();
        for (_, f) in self.inflight.drain(..) {
            if let Flight::Device(c, a) = f {
                unacked.insert(c, a); // later flights overwrite earlier ones
            }
        }
        for (c, a) in unacked {
            self.pending.entry(c).or_insert(a);
        }
        if self.stopped {
            return;
        }
        self.backoff = if self.backoff.is_zero() {
            FIRST_BACKOFF
        } else {
            (self.backoff * 2).min(MAX_BACKOFF)
        };
        self.retry_at = Some(now + self.backoff);
    }

    /// Publishes pending states while the window has room.
    fn flush(&mut self, ctx: &mut Ctx) {
        while self.connected {
            let Some(client_id) = self.pending.keys().next().cloned() else {
                return;
            };
            if !self.room(ctx, &client_id) {
                return;
            }
            if let Some(state) = self.pending.remove(&client_id) {
                self.publish_device(ctx, client_id, state);
            }
        }
    }

    /// Whether the window takes this device's next state (and its discovery config).
    fn room(&self, ctx: &Ctx, client_id: &str) -> bool {
        let needs = 1 + usize::from(self.needs_discovery(ctx, client_id));
        self.inflight.len() + needs <= WINDOW
    }

    fn needs_discovery(&self, ctx: &Ctx, client_id: &str) -> bool {
        ctx.settings
            .status
            .as_ref()
            .is_some_and(|s| s.homeassistant.is_some())
            && !self.announced.contains(client_id)
    }

    fn publish_device(&mut self, ctx: &mut Ctx, client_id: String, state: Availability) {
        let Some(s) = ctx.settings.status.clone() else {
            return;
        };
        let topic = device_topic(&s.topic_prefix, &client_id);
        if !mqtt::valid_topic_name(&topic) {
            // Only a ClientId so long that the topic passes 65535 octets.
            ctx.stats.status_dropped += 1;
            debug!(
                client_id,
                "status: no valid state topic for this ClientId; skipped"
            );
            return;
        }
        if let Some(ha) = &s.homeassistant {
            if self.announced.len() >= ctx.settings.max_devices {
                self.announced.clear(); // bounded; announcing again is harmless
            }
            if self.announced.insert(client_id.clone()) {
                let id = object_id(ctx.settings.gateway_id, &client_id);
                let config_topic = format!("{ha}/binary_sensor/{id}/config");
                let config =
                    discovery_config(&id, &client_id, &topic, &gateway_topic(&s.topic_prefix));
                if mqtt::valid_topic_name(&config_topic) {
                    self.publish(ctx, Flight::Discovery, config_topic, &config);
                }
            }
        }
        debug!(client_id, state = state.as_str(), "status published");
        self.publish(ctx, Flight::Device(client_id, state), topic, state.as_str());
    }

    fn gateway_state_topic(&self, ctx: &Ctx) -> String {
        ctx.settings
            .status
            .as_ref()
            .map(|s| gateway_topic(&s.topic_prefix))
            .unwrap_or_default()
    }

    /// One retained QoS 1 PUBLISH on the status session.
    fn publish(&mut self, ctx: &mut Ctx, flight: Flight, topic: String, payload: &str) {
        let Some(session) = self.session else {
            return;
        };
        let packet_id = self.next_packet_id();
        self.inflight.push_back((packet_id, flight));
        ctx.stats.status_publishes += 1;
        ctx.send_own(
            session,
            mqtt::Packet::Publish(mqtt::Publish {
                dup: false,
                qos: mqtt::QoS::AtLeastOnce,
                retain: true,
                topic,
                packet_id: Some(packet_id),
                payload: Bytes::copy_from_slice(payload.as_bytes()),
            }),
        );
    }

    /// The next packet id not in flight (the window is far smaller than the id space).
    fn next_packet_id(&mut self) -> u16 {
        loop {
            self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
            let id = self.next_pkid;
            if !self.inflight.iter().any(|(p, _)| *p == id) {
                return id;
            }
        }
    }
}

/// The status session's ClientId (before `client_id_prefix`); a device may not use it.
pub(crate) fn client_id(gateway_id: u8) -> String {
    format!("mqttsn-gateway-{gateway_id}")
}

/// `<prefix>/state`: the gateway's own `online` / `offline`.
pub(crate) fn gateway_topic(prefix: &str) -> String {
    format!("{prefix}/state")
}

/// `<prefix>/devices/<ClientId>/state`, the ClientId escaped by [`topic_level`].
pub(crate) fn device_topic(prefix: &str, client_id: &str) -> String {
    format!("{prefix}/devices/{}/state", topic_level(client_id))
}

/// A ClientId as one topic level: `%` `/` `+` `#` and NUL become `%25` `%2F` `%2B` `%23`
/// `%00` (percent-encoding, so two ClientIds never share a topic); everything else is kept.
pub(crate) fn topic_level(client_id: &str) -> std::borrow::Cow<'_, str> {
    if !client_id.contains(['%', '/', '+', '#', '\0']) {
        return client_id.into();
    }
    let mut out = String::with_capacity(client_id.len() + 8);
    for c in client_id.chars() {
        match c {
            '%' => out.push_str("%25"),
            '/' => out.push_str("%2F"),
            '+' => out.push_str("%2B"),
            '#' => out.push_str("%23"),
            '\0' => out.push_str("%00"),
            c => out.push(c),
        }
    }
    out.into()
}

/// Home Assistant's object id for a device: `mqttsn_<gateway.id>_` then the ClientId with
/// every octet outside `[a-zA-Z0-9-]` as `_` and two hex digits (HA allows only
/// `[a-zA-Z0-9_-]`; `_` is escaped too, so two ClientIds never share an id).
pub(crate) fn object_id(gateway_id: u8, client_id: &str) -> String {
    use std::fmt::Write;
    let mut out = format!("mqttsn_{gateway_id}_");
    for b in client_id.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "_{b:02x}");
        }
    }
    out
}

/// The discovery config of a device: a `connectivity` binary_sensor on its state topic, on
/// for `active` and off for every other state, unavailable while the gateway is `offline`.
fn discovery_config(
    object_id: &str,
    client_id: &str,
    state_topic: &str,
    gateway_topic: &str,
) -> String {
    serde_json::json!({
        "name": client_id,
        "unique_id": object_id,
        "device_class": "connectivity",
        "state_topic": state_topic,
        "value_template": "{{ 'active' if value == 'active' else 'inactive' }}",
        "payload_on": "active",
        "payload_off": "inactive",
        "availability_topic": gateway_topic,
        "payload_available": "online",
        "payload_not_available": "offline",
        "qos": 1,
        "device": {
            "identifiers": [object_id],
            "name": client_id,
            "model": "MQTT-SN device",
        },
    })
    .to_string()
}
