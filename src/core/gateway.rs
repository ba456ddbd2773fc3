//! The `Gateway`: routes frames from devices and packets from upstream sessions to the right
//! device state machine; holds the device registry (`registry.rs`), discovery, the QoS -1 path and
//! the status session (`status.rs`).
//!
//! Call pattern (the shell's driver loop):
//! 1. feed an input: [`Gateway::handle_frame`], [`Gateway::handle_group_frame`],
//!    [`Gateway::handle_upstream`], [`Gateway::handle_upstream_closed`] or
//!    [`Gateway::handle_timeout`], each with `now`;
//! 2. drain [`Gateway::poll_output`] until `None` and carry each [`Output`] out in order;
//! 3. sleep until [`Gateway::poll_timeout`] (or the next input) and call `handle_timeout`.
//! 4. at a clean stop, call [`Gateway::shutdown`] once and carry its outputs out too.
//!
//! Owns: routing and the registry. Must never: do I/O or read the clock (time is `now`), or act
//! for a device itself: the device's state machine does.

use std::time::Instant;

use bytes::Bytes;
use tracing::{debug, info};

mod restore;

use super::admission::{Class, LogLimiter};
use super::aggregate::{Aggregate, AggregateSizes};
use super::ctx::Ctx;
use super::device::{Device, DeviceState};
use super::discovery;
use super::qos_minus_one::QosMinusOne;
use super::registry::Registry;
use super::rules::Verdict;
use super::settings::Settings;
use super::status::{self, Status};
use super::types::DeviceId;
use super::types::{DeviceAddr, GroupId, Output, PeerAddr, SessionId, Stats};
use crate::codec::{self, Message};
use crate::mqtt;

/// What [`Gateway::restore`] brought back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RestoreReport {
    pub devices: usize,
    pub buffered: usize,
    pub uplink: usize,
    pub subscriptions: usize,
    /// Records that did not parse or belong to no device.
    pub skipped: usize,
    /// Devices whose stored session the current `devices` rules no longer admit: not
    /// restored, their rows deleted (their other rows are not counted as skipped).
    pub refused: usize,
}

/// The sans-IO MQTT-SN gateway. See the module docs for the call pattern.
pub struct Gateway {
    ctx: Ctx,
    /// Devices by handle, address, ClientId and session; their timers and admission entries.
    registry: Registry,
    qos_m1: QosMinusOne,
    /// `status`: the availability session and the states it owes the broker.
    status: Status,
    next_advertise: Option<Instant>,
    /// Refused CONNECTs are logged at most this often.
    refusal_log: LogLimiter,
    /// Aggregating mode: the shared upstream sessions devices' virtual sessions ride on.
    agg: Option<Aggregate>,
}

impl Gateway {
    pub fn new(settings: Settings, now: Instant) -> Self {
        let next_advertise = settings.advertise_interval.map(|_| now);
        let mut gw = Gateway {
            registry: Registry::new(settings.per_source.clone()),
            refusal_log: LogLimiter::default(),
            ctx: Ctx::new(settings),
            qos_m1: QosMinusOne::default(),
            status: Status::default(),
            next_advertise,
            agg: None,
        };
        // The status session opens first (its Open is the first output), when `status` is on.
        gw.status.open(&mut gw.ctx, now);
        if let Some(a) = gw.ctx.settings.aggregate.clone() {
            gw.agg = Some(Aggregate::new(&mut gw.ctx, a, now));
            gw.finish_input(now);
        }
        gw
    }

    /// A clean shutdown is starting: the status session publishes `offline` and says
    /// DISCONNECT (its will would say the same, but a DISCONNECT discards the will). Call it
    /// once, after the last input, and carry the outputs out before closing the sessions.
    /// Returns the session whose last words must reach the broker: wait for it to close.
    pub fn shutdown(&mut self, now: Instant) -> Option<SessionId> {
        let said = self.status.shutdown(&mut self.ctx);
        if let Some(a) = &mut self.agg {
            a.shutdown();
        }
        self.finish_input(now);
        said
    }

    /// Device states waiting for the status session (tests: the bound holds).
    #[cfg(test)]
    pub(crate) fn status_pending(&self) -> usize {
        self.status.pending_len()
    }

    pub fn settings(&self) -> &Settings {
        &self.ctx.settings
    }

    pub fn stats(&self) -> Stats {
        self.ctx.stats
    }

    /// Devices the gateway holds state for (connected or remembered).
    pub fn device_count(&self) -> usize {
        self.registry.len()
    }

    /// The state of the device with this ClientId, if known.
    pub fn device_state(&self, client_id: &str) -> Option<DeviceState> {
        let id = self.registry.by_client_id(client_id)?;
        self.registry.get(id).map(|d| d.state)
    }

    /// The devices, read-only (for `view.rs`).
    pub(super) fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Entries in the timer table and the admission index (tests: nothing stale is left).
    #[cfg(test)]
    pub(crate) fn index_sizes(&self) -> (usize, usize) {
        (self.registry.timers.len(), self.registry.admission.len())
    }

    /// The next effect to carry out.
    pub fn poll_output(&mut self) -> Option<Output> {
        match &mut self.agg {
            Some(a) => a.poll_output(),
            None => self.ctx.out.pop_front(),
        }
    }

    /// Aggregating mode's sizes; `None` in transparent mode.
    pub fn aggregate_sizes(&self) -> Option<AggregateSizes> {
        self.agg.as_ref().map(Aggregate::sizes)
    }

    /// When `handle_timeout` must next be called, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.registry.timers.next_deadline(),
            self.next_advertise,
            self.qos_m1.next_deadline(),
            self.status.next_deadline(),
            self.agg.as_ref().and_then(Aggregate::next_deadline),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    // ---------------------------------------------------------------- inputs

    /// One frame (datagram or de-framed serial message) from a device.
    pub fn handle_frame(&mut self, now: Instant, from: DeviceAddr, frame: Bytes) {
        self.frame_in(now, from, frame);
        self.finish_input(now);
    }

    fn frame_in(&mut self, now: Instant, from: DeviceAddr, frame: Bytes) {
        let Some(decoded) = self.decode_frame(&from, frame) else {
            return;
        };
        let mut from = from;
        if let Some(enc) = decoded.encapsulation {
            from.wireless_node_id = Some(enc.wireless_node_id);
        }
        self.handle_message(now, from, decoded.message);
    }

    /// Counts and checks a frame from a device; `None` when it is dropped.
    fn decode_frame(&mut self, from: &DeviceAddr, frame: Bytes) -> Option<codec::Frame> {
        self.ctx.stats.frames_in += 1;
        if frame.len() > self.ctx.settings.max_frame_size {
            self.ctx.stats.oversized += 1;
            debug!(peer = %self.ctx.peer(from), len = frame.len(), "frame exceeds max_frame_size; dropped");
            return None;
        }
        match codec::decode(frame) {
            Ok(f) => Some(f),
            Err(e) => {
                self.ctx.stats.malformed += 1;
                debug!(peer = %self.ctx.peer(from), error = %e, "malformed frame dropped");
                None
            }
        }
    }

    /// One datagram heard on multicast group `group` (sent to the group, not to the gateway's
    /// own address) from `from`. Only SEARCHGW is served there; its GWINFO goes to the group.
    pub fn handle_group_frame(
        &mut self,
        _now: Instant,
        group: GroupId,
        from: DeviceAddr,
        frame: Bytes,
    ) {
        if let Some(decoded) = self.decode_frame(&from, frame) {
            if decoded.encapsulation.is_some() {
                // A forwarder talks to the gateway's address, never to a group.
                self.ctx.stats.wrong_state += 1;
                debug!(peer = %self.ctx.peer(&from), group = group.0, "encapsulated frame on a multicast group dropped");
            } else {
                discovery::heard_on_group(&mut self.ctx, group, &from, decoded.message);
            }
        }
        self.finish_input(_now);
    }

    fn handle_message(&mut self, now: Instant, from: DeviceAddr, msg: Message) {
        match msg {
            Message::SearchGw { radius } => {
                discovery::answer_unicast(&mut self.ctx, &from, radius);
                return;
            }
            Message::Advertise { .. } | Message::GwInfo { .. } => return, // other gateways
            Message::Connect(c) => {
                self.on_connect(now, from, c);
                return;
            }
            Message::Publish(p) if p.qos == codec::QoS::MinusOne => {
                self.qos_m1.on_publish(&mut self.ctx, now, &from, p);
                return;
            }
            _ => {}
        }
        let by_client = match &msg {
            // A sleeping device wakes with its ClientId, possibly from a new address (§6.14).
            Message::PingReq { client_id: Some(c) } => self.registry.by_client_id(c.as_str()),
            _ => None,
        };
        let Some(id) = by_client.or_else(|| self.registry.by_addr(&from)) else {
            self.no_session(&from, &msg);
            return;
        };
        let Some(dev) = self.registry.get(id) else {
            return;
        };
        if by_client.is_some() && dev.addr != from && dev.state.is_live() {
            // The session would move: only where the ClientId's rules let it CONNECT from,
            // or a bound device is taken over by a PINGREQ naming it.
            if !matches!(
                self.ctx.settings.admission.verdict(&dev.client_id, &from),
                Verdict::Admit(_)
            ) {
                self.ctx.stats.moves_refused += 1;
                if let Some(unlogged) = self.refusal_log.tick(now) {
                    info!(peer = %self.ctx.peer(&from), client_id = %dev.client_id, unlogged, "PINGREQ refused: ClientId bound elsewhere by its devices entry; the session stays");
                }
                return;
            }
            let client_id = dev.client_id.clone();
            if let Some(old) = self.registry.move_addr(id, &from) {
                info!(client_id = %client_id, old = %old, new = %from, "device moved");
            }
        }
        let Some(dev) = self.registry.get_mut(id) else {
            return;
        };
        dev.last_heard = now;
        dev.silent_bytes = 0;
        // Anything a connected device says after its CONNACK proves it is there (not a spoofed
        // CONNECT): it is no longer evicted for a newcomer.
        if dev.state.is_live() {
            dev.proven = true;
        }
        let tx_mark = self.ctx.tx_bytes;
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
        self.settle(id, tx_mark);
    }

    /// A device with no session spoke: tell it to CONNECT again (spec §6.12).
    fn no_session(&mut self, from: &DeviceAddr, msg: &Message) {
        self.ctx.stats.unknown_peer += 1;
        debug!(peer = %self.ctx.peer(from), msg = ?msg.msg_type(), "message from a peer with no session");
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
            // The status session's ClientId: a device under it would take that session over.
            || (self.ctx.settings.status.is_some()
                && c.client_id == status::client_id(self.ctx.settings.gateway_id))
        {
            debug!(peer = %self.ctx.peer(&from), client_id = %c.client_id, protocol_id = c.protocol_id, "CONNECT refused");
            refuse(&mut self.ctx, codec::ReturnCode::NotSupported);
            return;
        }
        let rule = match self.ctx.settings.admission.verdict(&c.client_id, &from) {
            Verdict::Admit(rule) => rule,
            verdict => {
                self.ctx.stats.connects_refused_admission += 1;
                if let Some(unlogged) = self.refusal_log.tick(now) {
                    let why = if verdict == Verdict::Unknown {
                        "ClientId not in devices (admission: listed)"
                    } else {
                        "ClientId bound elsewhere by its devices entry (transport, address or node)"
                    };
                    info!(peer = %self.ctx.peer(&from), client_id = %c.client_id, unlogged, "CONNECT refused: {why}");
                }
                refuse(&mut self.ctx, codec::ReturnCode::NotSupported);
                return;
            }
        };
        let known = self.registry.by_client_id(&c.client_id);
        if let Err(why) = self.registry.admission.admit(now, &from, known) {
            self.ctx.stats.connects_refused_source += 1;
            if let Some(unlogged) = self.refusal_log.tick(now) {
                info!(peer = %self.ctx.peer(&from), client_id = %c.client_id, limit = why.as_str(), unlogged, "CONNECT refused: per-source limit");
            }
            refuse(&mut self.ctx, codec::ReturnCode::Congestion);
            return;
        }
        let tx_mark = self.ctx.tx_bytes;
        // Another client spoke from this address before: it is gone without DISCONNECT.
        if let Some(other) = self.registry.by_addr(&from) {
            if let Some(o) = self.registry.get_mut(other) {
                if o.client_id != c.client_id {
                    if o.is_connected() {
                        o.lose(&mut self.ctx, "another ClientId connected from its address");
                    }
                    self.registry.unbind_addr(&from);
                }
            }
        }
        let id = match self.registry.by_client_id(&c.client_id) {
            Some(id) => id,
            None => {
                if self.registry.len() >= self.ctx.settings.max_devices && !self.evict_one() {
                    self.ctx.stats.connects_refused_full += 1;
                    if let Some(unlogged) = self.refusal_log.tick(now) {
                        info!(peer = %self.ctx.peer(&from), client_id = %c.client_id, unlogged, "CONNECT refused: limits.max_devices reached and every device is talking");
                    }
                    refuse(&mut self.ctx, codec::ReturnCode::Congestion);
                    return;
                }
                let retry = self.ctx.settings.retry_interval;
                self.registry
                    .insert(|id| Device::new(id, c.client_id.clone(), from.clone(), now, retry))
            }
        };
        // Same ClientId from a new address (NAT rebinding, new IP): the session moves.
        if let Some(old) = self.registry.move_addr(id, &from) {
            info!(client_id = %c.client_id, old = %old, new = %from, "device moved");
        }
        let Some(dev) = self.registry.get_mut(id) else {
            return;
        };
        if dev.state == DeviceState::AwaitBroker && !c.will {
            // A re-sent CONNECT while the broker is still answering: the CONNACK will come.
            self.settle(id, tx_mark);
            return;
        }
        dev.silent_bytes = 0;
        dev.rule = rule;
        if !matches!(dev.state, DeviceState::Asleep | DeviceState::Awake) {
            // A new session must prove itself again; a sleeper waking with CONNECT already did.
            dev.proven = false;
        }
        dev.on_connect(&mut self.ctx, now, &c);
        self.settle(id, tx_mark);
    }

    /// Removes device `id` from the registry (and, in aggregating mode, whatever the aggregate
    /// still keeps for its ClientId).
    fn forget_device(&mut self, id: DeviceId) {
        if let (Some(agg), Some(d)) = (&mut self.agg, self.registry.get(id)) {
            agg.forget_client(&d.client_id);
        }
        self.registry.remove(id, &mut self.ctx);
    }

    /// Frees a slot for a newcomer: the least recently heard device that is not connected,
    /// else the least recently heard one not heard from since its CONNECT (which is told to
    /// reconnect, and its session ends without its will). A device that has spoken since its
    /// CONNACK keeps its slot.
    fn evict_one(&mut self) -> bool {
        let Some((id, class)) = self.registry.admission.victim(None) else {
            return false;
        };
        if class == Class::Pending {
            if let Some(d) = self.registry.get_mut(id) {
                debug!(client_id = %d.client_id, peer = %self.ctx.peer(&d.addr), "table full: pending device evicted");
                d.on_evicted(&mut self.ctx);
            }
        }
        self.ctx.stats.devices_evicted += 1;
        self.forget_device(id);
        true
    }

    /// Takes new settings while devices stay connected (SIGHUP): the shell passes the running
    /// settings with only what may change live replaced — predefined topics, admission rules,
    /// the QoS -1 policy, bounds that grew. Predefined topic ids resolve anew from now on. With
    /// new admission rules every device is judged again as a CONNECT from where it is would
    /// be: its rule (and so its topic permissions and credentials) is updated, and a device the
    /// rules no longer admit is told DISCONNECT, its session ended with DISCONNECT upstream
    /// (no will) and forgotten, stored rows included. Returns how many devices that ended.
    pub fn reconfigure(&mut self, now: Instant, settings: Settings) -> usize {
        let admission_changed = settings.admission != self.ctx.settings.admission;
        if settings.predefined_topics != self.ctx.settings.predefined_topics {
            self.ctx.predefined = super::topics::Predefined::new(&settings.predefined_topics);
        }
        self.ctx.settings = settings;
        let mut ended = 0;
        if admission_changed {
            for id in self.registry.ids() {
                let Some(dev) = self.registry.get_mut(id) else {
                    continue;
                };
                match self
                    .ctx
                    .settings
                    .admission
                    .verdict(&dev.client_id, &dev.addr)
                {
                    Verdict::Admit(rule) => dev.rule = rule,
                    _ => {
                        info!(client_id = %dev.client_id, peer = %self.ctx.peer(&dev.addr), "reload: the new admission rules no longer admit this device; disconnected and forgotten");
                        if dev.is_connected() {
                            dev.on_disconnect(&mut self.ctx);
                        } else {
                            dev.end_quietly(&mut self.ctx);
                        }
                        self.forget_device(id);
                        self.ctx.stats.devices_refused_on_reload += 1;
                        ended += 1;
                    }
                }
            }
        }
        self.finish_input(now);
        ended
    }

    /// Every input ends here: the registry learns the sessions devices opened and closed, and
    /// the input's durable batch goes out.
    ///
    /// In aggregating mode the outputs then pass through the aggregate (`core/aggregate/`),
    /// and the packets it has for devices' virtual sessions are handed to them, until nothing
    /// more follows.
    fn finish_input(&mut self, now: Instant) {
        loop {
            self.registry.sync_sessions(&mut self.ctx);
            for (client_id, state) in self.ctx.take_availability() {
                self.status.report(&mut self.ctx, client_id, state);
            }
            self.ctx.flush_persist();
            let Some(agg) = &mut self.agg else {
                return;
            };
            agg.translate(&mut self.ctx);
            // What translating wrote (a durable flow's shared packet id) is a batch too.
            self.ctx.flush_persist();
            agg.translate(&mut self.ctx);
            let inbox = agg.take_inbox();
            let detached = agg.take_detached();
            if inbox.is_empty() && detached.is_empty() {
                agg.end_input();
                return;
            }
            for (session, packet) in inbox {
                self.device_upstream(now, session, packet);
            }
            for (client_id, session, p) in detached {
                self.deliver_detached(client_id, session, p);
            }
        }
    }

    /// A packet decoded from an upstream session.
    pub fn handle_upstream(&mut self, now: Instant, session: SessionId, packet: mqtt::Packet) {
        self.upstream_in(now, session, packet);
        self.finish_input(now);
    }

    fn upstream_in(&mut self, now: Instant, session: SessionId, packet: mqtt::Packet) {
        if self.qos_m1.owns(session) {
            self.qos_m1.on_upstream(&mut self.ctx, now, packet);
            return;
        }
        if self.status.owns(session) {
            self.status.on_upstream(&mut self.ctx, now, packet);
            return;
        }
        if let Some(agg) = &mut self.agg {
            if let Some(k) = agg.owns(session) {
                agg.on_upstream(&mut self.ctx, now, k, packet);
                return;
            }
        }
        self.device_upstream(now, session, packet);
    }

    /// Aggregating mode: a message for a durable device that is not connected goes to its
    /// buffer (acknowledged upstream once stored), as a broker keeps it for a persistent session.
    fn deliver_detached(&mut self, client_id: String, session: SessionId, p: mqtt::Publish) {
        let packet_id = p.packet_id;
        let dev = self
            .registry
            .by_client_id(&client_id)
            .and_then(|id| self.registry.get_mut(id));
        let gone = dev.is_none();
        let taken = dev.is_some_and(|d| d.buffer_detached(&mut self.ctx, session, p));
        if !taken {
            if let Some(agg) = &mut self.agg {
                agg.declined(session, packet_id, gone);
            }
        }
    }

    /// A packet on a device's session (in aggregating mode: its virtual session).
    fn device_upstream(&mut self, now: Instant, session: SessionId, packet: mqtt::Packet) {
        let Some(id) = self.registry.by_session(session) else {
            return; // a session we already let go
        };
        let tx_mark = self.ctx.tx_bytes;
        if let Some(dev) = self.registry.get_mut(id) {
            dev.on_upstream(&mut self.ctx, now, session, packet);
            self.settle(id, tx_mark);
        }
    }

    /// The upstream session's connection ended (refused, reset, or closed by the broker).
    pub fn handle_upstream_closed(&mut self, now: Instant, session: SessionId) {
        self.upstream_closed(now, session);
        self.finish_input(now);
    }

    fn upstream_closed(&mut self, now: Instant, session: SessionId) {
        if self.qos_m1.owns(session) {
            self.qos_m1.on_closed(&self.ctx, now);
            return;
        }
        if self.status.owns(session) {
            self.status.on_closed(now);
            return;
        }
        if let Some(agg) = &mut self.agg {
            if let Some(k) = agg.owns(session) {
                agg.on_closed(now, k);
                return;
            }
        }
        let Some(id) = self.registry.unbind_session(session) else {
            return;
        };
        let tx_mark = self.ctx.tx_bytes;
        if let Some(dev) = self.registry.get_mut(id) {
            dev.on_upstream_closed(&mut self.ctx, now, session);
            self.settle(id, tx_mark);
        }
    }

    /// Timers: keep-alive supervision, retransmissions, connect stages, ADVERTISE.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.timeout(now);
        self.finish_input(now);
    }

    /// The store made batch `seq` (and all before it) durable: acknowledgements that waited
    /// for it go out now.
    pub fn handle_persisted(&mut self, now: Instant, seq: u64) {
        self.ctx.confirm(seq);
        if self.agg.is_some() {
            // What waited for the store may be on virtual sessions.
            self.finish_input(now);
        }
    }

    fn timeout(&mut self, now: Instant) {
        while let Some((_, id)) = self.registry.timers.pop_due(now) {
            let tx_mark = self.ctx.tx_bytes;
            let Some(dev) = self.registry.get_mut(id) else {
                continue;
            };
            dev.on_timeout(&mut self.ctx, now);
            self.settle(id, tx_mark);
        }
        if let Some(at) = self.next_advertise {
            if at <= now {
                if let Some(interval) = self.ctx.settings.advertise_interval {
                    discovery::advertise(&mut self.ctx, interval.as_secs());
                    self.next_advertise = Some(now + interval);
                }
            }
        }
        self.qos_m1.on_timeout(&mut self.ctx, now);
        self.status.on_timeout(&mut self.ctx, now);
        if let Some(agg) = &mut self.agg {
            agg.on_timeout(&mut self.ctx, now);
        }
    }

    /// After `id` handled an input: charge what was sent to it since `tx_mark` to its silence
    /// budget (a UDP device that never answers must not be sent unbounded traffic: it is lost
    /// past `limits.max_silent_downlink_bytes`), then bring its timer and admission entry up
    /// to date.
    fn settle(&mut self, id: DeviceId, tx_mark: u64) {
        let Some(dev) = self.registry.get_mut(id) else {
            return;
        };
        let sent = usize::try_from(self.ctx.tx_bytes.saturating_sub(tx_mark)).unwrap_or(usize::MAX);
        dev.silent_bytes = dev.silent_bytes.saturating_add(sent);
        if dev.silent_bytes > self.ctx.settings.max_silent_downlink_bytes
            && dev.is_connected()
            && matches!(dev.addr.peer, PeerAddr::Udp(_))
        {
            info!(client_id = %dev.client_id, peer = %self.ctx.peer(&dev.addr), sent = dev.silent_bytes,
                "device lost: it sent nothing back while limits.max_silent_downlink_bytes were sent to it");
            dev.silent_bytes = 0;
            self.ctx.stats.devices_silent_lost += 1;
            dev.lose(
                &mut self.ctx,
                "limits.max_silent_downlink_bytes sent with nothing heard back",
            );
        }
        let class = if !dev.is_connected() {
            Class::Idle
        } else if dev.proven {
            Class::Proven
        } else {
            Class::Pending
        };
        self.registry.refresh(id, class);
    }
}
