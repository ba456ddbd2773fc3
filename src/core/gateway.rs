//! The `Gateway`: routes frames from devices and packets from upstream sessions to the right
//! device state machine, owns the device registry, the timers, discovery and the QoS -1 path.
//!
//! Call pattern (the shell's driver loop):
//! 1. feed an input: [`Gateway::handle_frame`], [`Gateway::handle_upstream`],
//!    [`Gateway::handle_upstream_closed`] or [`Gateway::handle_timeout`], each with `now`;
//! 2. drain [`Gateway::poll_output`] until `None` and carry each [`Output`] out in order;
//! 3. sleep until [`Gateway::poll_timeout`] (or the next input) and call `handle_timeout`.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use bytes::Bytes;
use tracing::{debug, info};

use super::ctx::Ctx;
use super::device::{qos0_publish, short_name, Device, DeviceState};
use super::persist::{self, DeviceRecord};
use super::settings::Settings;
use super::timers::TimerQueue;
use super::types::{DeviceAddr, Output, SessionId, Stats, Table};
use super::DeviceId;
use crate::codec::{self, Message, TopicRef};
use crate::mqtt;

/// The gateway's own upstream session for QoS -1 publishes from any address (spec §6.8).
#[derive(Debug, Default)]
struct QosMinusOne {
    session: Option<SessionId>,
    connected: bool,
    held: VecDeque<mqtt::Publish>,
    /// No new attempt before this, after a failed one.
    retry_at: Option<Instant>,
    /// The opening session must be accepted by then.
    connect_deadline: Option<Instant>,
}

/// What [`Gateway::restore`] brought back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RestoreReport {
    pub devices: usize,
    pub buffered: usize,
    pub uplink: usize,
    /// Records that did not parse or belong to no device.
    pub skipped: usize,
}

/// The sans-IO MQTT-SN gateway. See the module docs for the call pattern.
pub struct Gateway {
    ctx: Ctx,
    devices: HashMap<DeviceId, Device>,
    by_addr: HashMap<DeviceAddr, DeviceId>,
    by_client_id: HashMap<String, DeviceId>,
    timers: TimerQueue<DeviceId>,
    next_device: u64,
    qos_m1: QosMinusOne,
    next_advertise: Option<Instant>,
}

impl Gateway {
    pub fn new(settings: Settings, now: Instant) -> Self {
        let next_advertise = settings.advertise_interval.map(|_| now);
        Gateway {
            ctx: Ctx::new(settings),
            devices: HashMap::new(),
            by_addr: HashMap::new(),
            by_client_id: HashMap::new(),
            timers: TimerQueue::default(),
            next_device: 1,
            qos_m1: QosMinusOne::default(),
            next_advertise,
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.ctx.settings
    }

    pub fn stats(&self) -> Stats {
        self.ctx.stats
    }

    /// Devices the gateway holds state for (connected or remembered).
    pub fn device_count(&self) -> usize {
        self.devices.len()
    }

    /// The state of the device with this ClientId, if known.
    pub fn device_state(&self, client_id: &str) -> Option<DeviceState> {
        let id = self.by_client_id.get(client_id)?;
        self.devices.get(id).map(|d| d.state)
    }

    /// The next effect to carry out.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.ctx.out.pop_front()
    }

    /// When `handle_timeout` must next be called, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.timers.next_deadline(),
            self.next_advertise,
            self.qos_m1.retry_at,
            self.qos_m1.connect_deadline,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    // ---------------------------------------------------------------- inputs

    /// One frame (datagram or de-framed serial message) from a device.
    pub fn handle_frame(&mut self, now: Instant, from: DeviceAddr, frame: Bytes) {
        self.frame_in(now, from, frame);
        self.ctx.flush_persist();
    }

    fn frame_in(&mut self, now: Instant, from: DeviceAddr, frame: Bytes) {
        self.ctx.stats.frames_in += 1;
        if frame.len() > self.ctx.settings.max_frame_size {
            self.ctx.stats.oversized += 1;
            debug!(peer = %from, len = frame.len(), "frame exceeds max_frame_size; dropped");
            return;
        }
        let decoded = match codec::decode(frame) {
            Ok(f) => f,
            Err(e) => {
                self.ctx.stats.malformed += 1;
                debug!(peer = %from, error = %e, "malformed frame dropped");
                return;
            }
        };
        let mut from = from;
        if let Some(enc) = decoded.encapsulation {
            from.wireless_node_id = Some(enc.wireless_node_id);
        }
        self.handle_message(now, from, decoded.message);
    }

    fn handle_message(&mut self, now: Instant, from: DeviceAddr, msg: Message) {
        match msg {
            Message::SearchGw { .. } => {
                let gw_id = self.ctx.settings.gateway_id;
                self.ctx.transmit(
                    &from,
                    Message::GwInfo {
                        gw_id,
                        gw_add: None,
                    },
                );
                return;
            }
            Message::Advertise { .. } | Message::GwInfo { .. } => return, // other gateways
            Message::Connect(c) => {
                self.on_connect(now, from, c);
                return;
            }
            Message::Publish(p) if p.qos == codec::QoS::MinusOne => {
                self.on_qos_minus_one(now, &from, p);
                return;
            }
            _ => {}
        }
        let by_client = match &msg {
            // A sleeping device wakes with its ClientId, possibly from a new address (§6.14).
            Message::PingReq { client_id: Some(c) } => self.by_client_id.get(c.as_str()).copied(),
            _ => None,
        };
        let Some(id) = by_client.or_else(|| self.by_addr.get(&from).copied()) else {
            self.no_session(&from, &msg);
            return;
        };
        let Some(dev) = self.devices.get_mut(&id) else {
            return;
        };
        if by_client.is_some() && dev.addr != from && dev.state.is_live() {
            info!(client_id = %dev.client_id, old = %dev.addr, new = %from, "device moved");
            if self.by_addr.get(&dev.addr) == Some(&id) {
                self.by_addr.remove(&dev.addr);
            }
            dev.addr = from.clone();
            self.by_addr.insert(from.clone(), id);
        }
        dev.last_heard = now;
        let ctx = &mut self.ctx;
        match (dev.state, msg) {
            (DeviceState::AwaitWillTopic, Message::WillTopic(w)) => dev.on_will_topic(ctx, now, w),
            (DeviceState::AwaitWillMsg, Message::WillMsg { msg }) => dev.on_will_msg(ctx, now, msg),
            (DeviceState::Disconnected | DeviceState::Lost, Message::Disconnect { .. }) => {
                // Already gone; acknowledge so the device stops retrying.
                ctx.transmit(&dev.addr, Message::Disconnect { duration: None });
            }
            (state, Message::Disconnect { duration: Some(d) }) if state.is_live() => {
                dev.on_sleep(ctx, now, d)
            }
            (_, Message::Disconnect { .. }) => dev.on_disconnect(ctx),
            (DeviceState::Asleep | DeviceState::Awake, Message::PingReq { .. }) => {
                dev.on_wake(ctx, now)
            }
            (state, msg) if state.is_live() => {
                // Awake (and even Asleep) devices are served like active ones: an ack or a
                // publish from them is never thrown away.
                let t = msg.msg_type();
                if !dev.on_active_message(ctx, now, msg) {
                    ctx.stats.wrong_state += 1;
                    debug!(client_id = %dev.client_id, msg = ?t, "unexpected message from device dropped");
                }
            }
            (DeviceState::Disconnected | DeviceState::Lost, msg) => {
                self.no_session(&from, &msg);
                return;
            }
            (state, msg) => {
                ctx.stats.wrong_state += 1;
                debug!(client_id = %dev.client_id, ?state, msg = ?msg.msg_type(), "message in wrong state dropped");
            }
        }
        self.reschedule(id);
    }

    /// A device with no session spoke: tell it to CONNECT again (spec §6.12).
    fn no_session(&mut self, from: &DeviceAddr, msg: &Message) {
        self.ctx.stats.unknown_peer += 1;
        debug!(peer = %from, msg = ?msg.msg_type(), "message from a peer with no session");
        // Answering a DISCONNECT with a DISCONNECT could ping-pong between two gateways.
        if !matches!(msg, Message::Disconnect { .. }) {
            self.ctx
                .transmit(from, Message::Disconnect { duration: None });
        }
    }

    fn on_connect(&mut self, now: Instant, from: DeviceAddr, c: codec::Connect) {
        let refuse = |ctx: &mut Ctx, rc| {
            ctx.transmit(&from, Message::Connack { return_code: rc });
        };
        if c.protocol_id != codec::PROTOCOL_ID_V1_2
            || c.client_id.is_empty()
            || c.client_id.len() > self.ctx.settings.max_client_id_len
            // An MQTT string cannot carry U+0000 ([MQTT-1.5.3-2]): no CONNECT upstream could.
            || c.client_id.contains('\0')
        {
            debug!(peer = %from, client_id = %c.client_id, protocol_id = c.protocol_id, "CONNECT refused");
            refuse(&mut self.ctx, codec::ReturnCode::NotSupported);
            return;
        }
        // Another client spoke from this address before: it is gone without DISCONNECT.
        if let Some(&other) = self.by_addr.get(&from) {
            if let Some(o) = self.devices.get_mut(&other) {
                if o.client_id != c.client_id {
                    if o.is_connected() {
                        o.lose(&mut self.ctx);
                    }
                    self.by_addr.remove(&from);
                }
            }
        }
        let id = match self.by_client_id.get(&c.client_id) {
            Some(&id) => id,
            None => {
                if self.devices.len() >= self.ctx.settings.max_devices && !self.evict_one() {
                    info!(peer = %from, "max_devices reached; CONNECT refused");
                    refuse(&mut self.ctx, codec::ReturnCode::Congestion);
                    return;
                }
                let id = DeviceId(self.next_device);
                self.next_device += 1;
                let dev = Device::new(
                    id,
                    c.client_id.clone(),
                    from.clone(),
                    now,
                    self.ctx.settings.retry_interval,
                );
                self.devices.insert(id, dev);
                self.by_client_id.insert(c.client_id.clone(), id);
                id
            }
        };
        let Some(dev) = self.devices.get_mut(&id) else {
            return;
        };
        if dev.addr != from {
            // Same ClientId from a new address (NAT rebinding, new IP): the session moves.
            info!(client_id = %c.client_id, old = %dev.addr, new = %from, "device moved");
            // The old address may belong to another device by now (NAT reuse).
            if self.by_addr.get(&dev.addr) == Some(&id) {
                self.by_addr.remove(&dev.addr);
            }
            dev.addr = from.clone();
        }
        self.by_addr.insert(from, id);
        if dev.state == DeviceState::AwaitBroker && !c.will {
            // A re-sent CONNECT while the broker is still answering: the CONNACK will come.
            return;
        }
        dev.on_connect(&mut self.ctx, now, &c);
        self.reschedule(id);
    }

    /// Frees the slot of the least recently heard device that is not connected.
    fn evict_one(&mut self) -> bool {
        let victim = self
            .devices
            .values()
            .filter(|d| !d.is_connected())
            .min_by_key(|d| d.last_heard)
            .map(|d| d.id);
        match victim {
            Some(id) => {
                self.remove_device(id);
                true
            }
            None => false,
        }
    }

    fn remove_device(&mut self, id: DeviceId) {
        if let Some(mut d) = self.devices.remove(&id) {
            d.forget(&mut self.ctx);
            if self.by_addr.get(&d.addr) == Some(&id) {
                self.by_addr.remove(&d.addr);
            }
            self.by_client_id.remove(&d.client_id);
        }
    }

    fn on_qos_minus_one(&mut self, now: Instant, from: &DeviceAddr, p: codec::Publish) {
        let topic = match p.topic {
            TopicRef::Predefined(id) => self.ctx.predefined_by_id.get(&id).cloned(),
            TopicRef::Short(s) => short_name(s).filter(|n| mqtt::valid_topic_name(n)),
            TopicRef::Id(_) => None, // QoS -1 allows only predefined ids and short names
        };
        let Some(topic) = topic else {
            self.ctx.stats.wrong_state += 1;
            debug!(peer = %from, topic = ?p.topic, "QoS -1 PUBLISH on an unusable topic dropped");
            return;
        };
        self.ctx.stats.uplink_publishes += 1;
        let publish = qos0_publish(topic, p.retain, p.data);
        let q = &mut self.qos_m1;
        match (q.session, q.connected) {
            (Some(s), true) => self.ctx.send(s, mqtt::Packet::Publish(publish)),
            _ => {
                if q.held.len() < self.ctx.settings.max_queued_per_device {
                    q.held.push_back(publish);
                } else {
                    self.ctx.stats.downlink_dropped += 1;
                }
                self.open_qos_m1(now);
            }
        }
    }

    fn open_qos_m1(&mut self, now: Instant) {
        let q = &mut self.qos_m1;
        if q.session.is_some() || q.retry_at.is_some_and(|t| t > now) {
            return;
        }
        q.retry_at = None;
        q.connect_deadline = Some(now + self.ctx.settings.upstream_connect_timeout);
        let client_id = format!("mqttsn-gw-{}-qos-1", self.ctx.settings.gateway_id);
        let connect = self.ctx.connect_packet(&client_id, true, None);
        q.session = Some(self.ctx.open(None, connect));
    }

    /// A packet decoded from an upstream session.
    pub fn handle_upstream(&mut self, now: Instant, session: SessionId, packet: mqtt::Packet) {
        self.upstream_in(now, session, packet);
        self.ctx.flush_persist();
    }

    fn upstream_in(&mut self, now: Instant, session: SessionId, packet: mqtt::Packet) {
        if self.qos_m1.session == Some(session) {
            if let mqtt::Packet::ConnAck { code, .. } = packet {
                self.qos_m1.connect_deadline = None;
                if code == mqtt::ConnectReturnCode::Accepted {
                    self.qos_m1.connected = true;
                    for p in std::mem::take(&mut self.qos_m1.held) {
                        self.ctx.send(session, mqtt::Packet::Publish(p));
                    }
                } else {
                    info!(?code, "broker refused the gateway's QoS -1 session");
                    self.ctx.close(session, true);
                    self.qos_m1_failed(now);
                }
            }
            return;
        }
        let Some(&id) = self.ctx.by_session.get(&session) else {
            return; // a session we already let go
        };
        if let Some(dev) = self.devices.get_mut(&id) {
            dev.on_upstream(&mut self.ctx, now, session, packet);
            self.reschedule(id);
        }
    }

    /// The upstream session's connection ended (refused, reset, or closed by the broker).
    pub fn handle_upstream_closed(&mut self, now: Instant, session: SessionId) {
        self.upstream_closed(now, session);
        self.ctx.flush_persist();
    }

    fn upstream_closed(&mut self, now: Instant, session: SessionId) {
        if self.qos_m1.session == Some(session) {
            self.qos_m1_failed(now);
            return;
        }
        let Some(id) = self.ctx.by_session.remove(&session) else {
            return;
        };
        if let Some(dev) = self.devices.get_mut(&id) {
            dev.on_upstream_closed(&mut self.ctx, now, session);
            self.reschedule(id);
        }
    }

    fn qos_m1_failed(&mut self, now: Instant) {
        let q = &mut self.qos_m1;
        q.session = None;
        q.connected = false;
        q.connect_deadline = None;
        if !q.held.is_empty() {
            q.retry_at = Some(now + self.ctx.settings.retry_interval);
        }
    }

    /// Timers: keep-alive supervision, retransmissions, connect stages, ADVERTISE.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.timeout(now);
        self.ctx.flush_persist();
    }

    /// The store made batch `seq` (and all before it) durable: acknowledgements that waited
    /// for it go out now.
    pub fn handle_persisted(&mut self, _now: Instant, seq: u64) {
        self.ctx.confirm(seq);
    }

    /// Rebuilds persistent sessions from the store's records, before any other input. Devices
    /// that were active or asleep get their upstream session reopened (clean session 0); the
    /// timers restart from `now`. Records that do not parse are skipped and counted.
    pub fn restore(
        &mut self,
        now: Instant,
        records: impl IntoIterator<Item = (Table, Vec<u8>, Vec<u8>)>,
    ) -> RestoreReport {
        let mut report = RestoreReport::default();
        let mut rest = Vec::new();
        for (table, key, value) in records {
            if table != Table::Device {
                rest.push((table, key, value));
                continue;
            }
            let record: Option<DeviceRecord> = persist::decode(&value);
            let Some((record, addr)) = record.and_then(|r| {
                let a = r.addr.to_addr()?;
                Some((r, a))
            }) else {
                report.skipped += 1;
                continue;
            };
            if self.by_client_id.contains_key(&record.client_id)
                || self.devices.len() >= self.ctx.settings.max_devices
            {
                report.skipped += 1;
                continue;
            }
            let id = DeviceId(self.next_device);
            self.next_device += 1;
            let dev = Device::restore(id, record, addr, &mut self.ctx, now);
            self.by_addr.insert(dev.addr.clone(), id);
            self.by_client_id.insert(dev.client_id.clone(), id);
            self.devices.insert(id, dev);
            report.devices += 1;
        }
        // Keys sort by device then sequence, so buffers come back in order.
        rest.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        for (table, key, value) in rest {
            let dev = persist::split_numbered_key(&key)
                .and_then(|(client_id, n)| Some((*self.by_client_id.get(&client_id)?, n)));
            let Some((id, n)) = dev else {
                report.skipped += 1;
                continue;
            };
            let Some(dev) = self.devices.get_mut(&id) else {
                continue;
            };
            match table {
                Table::Buffer => match persist::decode(&value) {
                    Some(r) => {
                        dev.restore_buffered(&mut self.ctx, n, r);
                        report.buffered += 1;
                    }
                    None => report.skipped += 1,
                },
                Table::Uplink => match persist::decode(&value) {
                    Some(r) => {
                        dev.restore_uplink(n, r);
                        report.uplink += 1;
                    }
                    None => report.skipped += 1,
                },
                Table::Device => {}
            }
        }
        let ids: Vec<DeviceId> = self.devices.keys().copied().collect();
        for id in ids {
            self.reschedule(id);
        }
        info!(?report, "restored persistent sessions");
        report
    }

    fn timeout(&mut self, now: Instant) {
        while let Some((at, id)) = self.timers.pop_due(now) {
            let Some(dev) = self.devices.get_mut(&id) else {
                continue;
            };
            if dev.scheduled != Some(at) {
                continue; // superseded by an earlier entry
            }
            dev.scheduled = None;
            dev.on_timeout(&mut self.ctx, now);
            self.reschedule(id);
        }
        if let Some(at) = self.next_advertise {
            if at <= now {
                if let Some(interval) = self.ctx.settings.advertise_interval {
                    let msg = Message::Advertise {
                        gw_id: self.ctx.settings.gateway_id,
                        duration: u16::try_from(interval.as_secs()).unwrap_or(u16::MAX),
                    };
                    if let Ok(frame) = msg.to_bytes() {
                        self.ctx.out.push_back(Output::Broadcast { frame });
                    }
                    self.next_advertise = Some(now + interval);
                }
            }
        }
        if self.qos_m1.connect_deadline.is_some_and(|t| t <= now) {
            info!("the broker did not accept the gateway's QoS -1 session in time");
            if let Some(s) = self.qos_m1.session {
                self.ctx.close(s, false);
            }
            self.qos_m1_failed(now);
        }
        if self.qos_m1.retry_at.is_some_and(|t| t <= now) {
            self.qos_m1.retry_at = None;
            if !self.qos_m1.held.is_empty() {
                self.open_qos_m1(now);
            }
        }
    }

    fn reschedule(&mut self, id: DeviceId) {
        let Some(dev) = self.devices.get_mut(&id) else {
            return;
        };
        let Some(next) = dev.next_deadline() else {
            return;
        };
        // Only an earlier deadline needs a new heap entry; a later one is found when the
        // current entry fires and the device reschedules itself.
        if dev.scheduled.is_none_or(|s| next < s) {
            dev.scheduled = Some(next);
            self.timers.push(next, id);
        }
    }
}
