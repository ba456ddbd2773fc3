//! One device's state machine (spec §6): connect with will prompting, topic registration,
//! publish in both directions at every QoS, subscribe, keep-alive, sleep, will updates.
//!
//! Owns the [`Device`], made of one sub-struct per feature (connect.rs, uplink.rs,
//! subscriptions.rs, downlink.rs, sleep.rs, session_switch.rs, outage.rs, record.rs; timers in
//! timers.rs), its state and the dispatch of what the device and the broker send. It is a star:
//! only the orchestration layer (this file and the `impl Device` blocks in orchestrate/: the
//! connect sequence and teardown, the upstream session's flows, the session switch) names the
//! feature files; their methods return what happened, and the orchestration decides what
//! follows (a state change, a pump of the downlink, a session switch). Types two features share
//! are in types.rs, below them all.
//!
//! Must never: do I/O or read the clock (effects go into [`Ctx`]; every method that takes `now`
//! uses only that for time), or let a feature file reach a sibling.

use std::time::{Duration, Instant};

use tracing::{debug, info};

use subscriptions::Subscriptions;

mod connect;
mod downlink;
mod outage;
mod record;
mod session_switch;
mod sleep;
mod subscriptions;
mod timers;
mod types;
mod uplink;

pub use types::{with_tolerance, DeviceState};
use types::{HoldsPacketIds, IdSpace, Link, PacketIds};

use connect::Connection;
use downlink::{Downlink, Receiver, Regacked};
use record::Record;
use session_switch::SessionSwitch;
use sleep::Sleep;
use timers::{AfterFire, DeviceTimer, Timers};
use uplink::Uplink;

/// Who the device is, for a feature sub-struct (borrows only these three fields, so the
/// sub-struct itself can be borrowed mutably alongside).
macro_rules! link {
    ($d:expr) => {
        Link {
            addr: &$d.addr,
            client_id: &$d.client_id,
            session: $d.session,
        }
    };
}

/// The session's packet-id space as seen by one feature: `$others` are the features that also
/// hold ids (borrowed alongside the asking one).
macro_rules! id_space {
    ($d:expr, $ctx:expr, [$($other:expr),*]) => {
        IdSpace {
            ids: &mut $d.pkids,
            others: &[$($other as &dyn HoldsPacketIds),*],
            limit: $ctx.settings.max_queued_per_device,
        }
    };
}

mod orchestrate;

use super::ctx::Ctx;
use super::permissions;
use super::persist::{self, DeviceRecord, StoredState, UplinkRecord};
use super::rules::Verdict;
use super::status::Availability;
use super::topics::TopicTable;
use super::types::DeviceId;
use super::types::{DeviceAddr, SessionId};
use super::view::DeviceView;
use crate::codec::{Message, Puback, Regack, ReturnCode};
use crate::mqtt;

pub(crate) struct Device {
    pub id: DeviceId,
    pub client_id: String,
    pub addr: DeviceAddr,
    pub state: DeviceState,
    /// CleanSession, Duration and will of its CONNECT.
    conn: Connection,
    pub last_heard: Instant,
    /// Since when it is connected (live); `None` while it is not.
    connected_since: Option<Instant>,
    /// The deadlines armed by hand (see timers.rs for every timer).
    timers: Timers,
    pub session: Option<SessionId>,
    topics: TopicTable,
    /// Granted and pending subscriptions.
    subs: Subscriptions,
    /// Messages from the device: the open QoS 1/2 flows.
    up: Uplink,
    /// The upstream session's packet ids (uplink, subscriptions, parked messages).
    pkids: PacketIds,
    /// Messages to the device: queue, in flight, sleep buffer.
    down: Downlink,
    /// A replacement of the upstream session (new will, messages left at the broker).
    switch: SessionSwitch,
    /// Spoke since its CONNACK (not just a CONNECT, possibly spoofed): never evicted for a
    /// newcomer. Kept by the gateway.
    pub proven: bool,
    /// Octets sent to it since it was last heard (reflection bound). Kept by the gateway.
    pub silent_bytes: usize,
    /// Index of its rule in `Settings::admission.devices` (`None`: no rule names it); set at
    /// CONNECT by admission, carried in [`OpenFor`] so the shell applies its credentials.
    pub rule: Option<usize>,
    /// T_RETRY, copied from settings so deadlines need no context.
    retry_interval: Duration,
    /// The Duration of its sleep, while Asleep/Awake.
    sleep: Sleep,
    /// Riding out a broker outage (persistent sessions with a store).
    outage: outage::Outage,
    /// Its durable record.
    stored: Record,
    /// The session on which a QoS downgrade by the broker was logged.
    downgrade_noted: Option<SessionId>,
    /// The availability last reported for `status` (one report per change).
    reported: Option<Availability>,
}

impl Device {
    pub(super) fn new(
        id: DeviceId,
        client_id: String,
        addr: DeviceAddr,
        now: Instant,
        retry_interval: Duration,
    ) -> Self {
        Device {
            retry_interval,
            sleep: Sleep::default(),
            outage: outage::Outage::default(),
            stored: Record::default(),
            downgrade_noted: None,
            reported: None,
            id,
            client_id,
            addr,
            state: DeviceState::Disconnected,
            conn: Connection::default(),
            last_heard: now,
            connected_since: None,
            timers: Timers::default(),
            session: None,
            topics: TopicTable::default(),
            subs: Subscriptions::default(),
            up: Uplink::default(),
            pkids: PacketIds::default(),
            down: Downlink::new(),
            switch: SessionSwitch::default(),
            proven: false,
            silent_bytes: 0,
            rule: None,
        }
    }

    pub(super) fn is_connected(&self) -> bool {
        !matches!(self.state, DeviceState::Disconnected | DeviceState::Lost)
    }

    /// The earliest instant this device needs `on_timeout`.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        timers::earliest(DeviceTimer::ALL.iter().map(|&t| self.deadline(t)))
    }

    /// When `timer` fires; None when it is not running.
    fn deadline(&self, timer: DeviceTimer) -> Option<Instant> {
        match timer {
            DeviceTimer::OutageReconnect => self.outage.reconnect_at(),
            DeviceTimer::WillPrompt | DeviceTimer::BrokerConnack | DeviceTimer::SwitchConnack => {
                self.timers.armed(timer)
            }
            DeviceTimer::KeepAlive => self
                .conn
                .keep_alive_deadline(self.last_heard)
                .filter(|_| self.state == DeviceState::Active),
            DeviceTimer::Sleep => self
                .timers
                .armed(timer)
                .filter(|_| self.state == DeviceState::Asleep),
            // A sleeping radio hears nothing: retransmissions pause while Asleep (and while a
            // kept session's will prompt runs; they resume with it).
            DeviceTimer::Retransmit => self
                .down
                .retransmit_at(self.retry_interval)
                .filter(|_| matches!(self.state, DeviceState::Active | DeviceState::Awake)),
        }
    }

    /// Every state change goes through here so the live/asleep counters stay exact.
    fn set_state(&mut self, ctx: &mut Ctx, state: DeviceState) {
        let was = self.state;
        if was.is_live() && !state.is_live() {
            ctx.stats.devices_active = ctx.stats.devices_active.saturating_sub(1);
        } else if !was.is_live() && state.is_live() {
            ctx.stats.devices_active += 1;
        }
        if !state.is_live() {
            self.connected_since = None;
        } else if !was.is_live() {
            // It became live on what it (or the store) just said.
            self.connected_since = Some(self.last_heard);
        }
        if was == DeviceState::Asleep && state != DeviceState::Asleep {
            ctx.stats.devices_asleep = ctx.stats.devices_asleep.saturating_sub(1);
        } else if was != DeviceState::Asleep && state == DeviceState::Asleep {
            ctx.stats.devices_asleep += 1;
        }
        if state != DeviceState::Asleep {
            self.timers.clear_sleep();
        }
        let stored_before = self.record_state();
        self.state = state;
        if self.record_state() != stored_before {
            self.save(ctx);
        }
        if let Some(a) = availability(state) {
            // A device that never was active (refused, given up while connecting) is not
            // announced at all: no retained topic for every ClientId that ever tried.
            let never_seen = self.reported.is_none()
                && matches!(a, Availability::Lost | Availability::Disconnected);
            if self.reported != Some(a) && !never_seen {
                self.reported = Some(a);
                ctx.report_availability(&self.client_id, a);
            }
        }
    }

    fn record_state(&self) -> StoredState {
        record::stored_state(self.state, self.sleep.duration())
    }

    // ---------------------------------------------------------------- permissions

    /// Whether its rule's `publish` patterns allow `topic` (`what`: a PUBLISH, a REGISTER or
    /// a will topic); a refusal is counted and logged. Allocates nothing.
    fn may_publish(&self, ctx: &mut Ctx, topic: &str, what: &'static str) -> bool {
        let patterns = permissions::publish_patterns(&ctx.settings.admission, self.rule);
        if permissions::may_publish(patterns, &self.client_id, topic) {
            return true;
        }
        ctx.stats.publishes_denied += 1;
        debug!(client_id = %self.client_id, topic, what, "denied: topic outside the device's publish patterns");
        false
    }

    /// Whether its rule's `subscribe` patterns cover every topic `filter` can match; a refusal
    /// is counted and logged.
    fn may_subscribe(&self, ctx: &mut Ctx, filter: &str) -> bool {
        let patterns = permissions::subscribe_patterns(&ctx.settings.admission, self.rule);
        if permissions::may_subscribe(patterns, &self.client_id, filter) {
            return true;
        }
        ctx.stats.subscribes_denied += 1;
        debug!(client_id = %self.client_id, filter, "denied: SUBSCRIBE outside the device's subscribe patterns");
        false
    }

    /// Whether rules name this device at all (a restricted subscribe needs the filter's name).
    fn subscribe_restricted(&self, ctx: &Ctx) -> bool {
        permissions::subscribe_patterns(&ctx.settings.admission, self.rule).is_some()
    }

    /// Deletes every stored row of `client_id` (a restored session its rule no longer admits).
    pub(super) fn forget_stored(ctx: &mut Ctx, client_id: &str) {
        Record::restored().forget(ctx, client_id);
    }

    // ---------------------------------------------------------------- status view

    /// What the status page shows of it (`core/view.rs`).
    pub(crate) fn view(&self) -> DeviceView {
        let sleeping = matches!(self.state, DeviceState::Asleep | DeviceState::Awake);
        let (queued, queued_bytes) = self.down.depth();
        DeviceView {
            client_id: self.client_id.clone(),
            addr: self.addr.clone(),
            state: self.state,
            connected_since: self.connected_since,
            last_heard: self.last_heard,
            keep_alive: self.conn.keep_alive(),
            keep_alive_deadline: self.deadline(DeviceTimer::KeepAlive),
            sleep_duration: sleeping.then(|| self.sleep.duration()),
            sleep_deadline: self.deadline(DeviceTimer::Sleep),
            queued,
            queued_bytes,
            inflight_down: self.down.has_inflight(),
            inflight_up: self.up.held() + self.outage.held(),
            clean_session: self.conn.clean_session,
            topics: self
                .topics
                .entries()
                .into_iter()
                .map(|(id, name, _)| (id, name))
                .collect(),
            subscriptions: self
                .subs
                .granted()
                .map(|(f, q)| (f.to_owned(), q as u8))
                .collect(),
            will_topic: self.conn.will_topic().map(str::to_owned),
        }
    }

    /// Messages queued for it and their octets, without copying anything.
    pub(crate) fn queue_depth(&self) -> (usize, usize) {
        self.down.depth()
    }

    // ---------------------------------------------------------------- persistence

    /// The session outlives the process: clean session 0 and a store.
    fn durable(&self, ctx: &Ctx) -> bool {
        ctx.persistent() && !self.conn.clean_session
    }

    pub(super) fn record(&self) -> DeviceRecord {
        DeviceRecord {
            client_id: self.client_id.clone(),
            addr: persist::AddrRecord::from_addr(&self.addr),
            state: self.record_state(),
            keep_alive: self.conn.keep_alive_secs(),
            will: self.conn.will_record(),
            subs: Vec::new(), // one row each in Table::Subscription
            topics: self.topics.entries(),
        }
    }

    /// Writes the session record (durable sessions only).
    fn save(&mut self, ctx: &mut Ctx) {
        if self.durable(ctx) {
            let r = self.record();
            self.stored.save(ctx, r);
        }
    }

    /// Deletes everything stored for this ClientId.
    pub(super) fn forget(&mut self, ctx: &mut Ctx) {
        self.stored.forget(ctx, &self.client_id);
    }

    /// Rebuilds a device from its stored record; reopens its upstream session (clean session
    /// 0, same will) when it was active or asleep. Timers restart from `now`.
    pub(super) fn restore(
        id: DeviceId,
        r: DeviceRecord,
        addr: DeviceAddr,
        ctx: &mut Ctx,
        now: Instant,
    ) -> Self {
        let mut d = Device::new(id, r.client_id, addr, now, ctx.settings.retry_interval);
        d.conn = Connection::restored(r.keep_alive, r.will);
        // Its rule as the current configuration says (for its credentials upstream).
        if let Verdict::Admit(rule) = ctx.settings.admission.verdict(&d.client_id, &d.addr) {
            d.rule = rule;
        }
        d.stored = Record::restored();
        let old_subs = !r.subs.is_empty();
        for (f, q) in r.subs {
            d.subs.restore(f, q);
        }
        if old_subs {
            // Written by an older version inside the device record: move them to their rows.
            let durable = d.durable(ctx);
            if d.subs.store_all(ctx, &link!(d), durable) {
                d.stored.mark_stored();
            }
            d.save(ctx);
        }
        for (tid, name, known) in r.topics {
            d.topics.restore(tid, name, known);
        }
        if let Some((state, sleep)) = record::resumed_state(r.state) {
            d.sleep = Sleep::restored(sleep);
            let connect = ctx.connect_packet(&d.client_id, false, d.last_will());
            d.session = Some(ctx.open(Some(id), connect, Some(d.open_for())));
            d.outage.set_resuming();
            if state == DeviceState::Asleep {
                d.go_to_sleep(ctx, now);
            } else {
                d.set_state(ctx, state);
            }
        }
        d
    }

    /// Puts back a buffered message (already acknowledged to the broker) in sequence order.
    pub(super) fn restore_buffered(&mut self, ctx: &mut Ctx, n: u64, r: persist::BufferedRecord) {
        self.down.restore_buffered(ctx, &mut self.topics, n, r);
    }

    /// Puts back a stored subscription (at restore).
    pub(super) fn restore_subscription(&mut self, filter: String, qos: u8) {
        self.subs.restore(filter, qos);
    }

    /// Puts back an uplink QoS 2 flow: the device's re-sent PUBLISH or PUBREL continues it
    /// under the same packet id.
    pub(super) fn restore_uplink(&mut self, n: u64, r: UplinkRecord) {
        match r {
            UplinkRecord::Parked { .. } => self.outage.restore(&mut self.pkids, n, r),
            UplinkRecord::Qos2 { .. } => self.up.restore(&mut self.pkids, r),
            // The aggregate's, handed to it by the gateway.
            UplinkRecord::Aggregated { .. } => {}
        }
    }

    /// Fires every timer that is due, in [`DeviceTimer::ALL`] order. Whether the device was
    /// lost shows in its state (the gateway settles it after every call).
    pub(super) fn on_timeout(&mut self, ctx: &mut Ctx, now: Instant) {
        for timer in DeviceTimer::ALL {
            if self.deadline(timer).is_some_and(|d| d <= now)
                && self.fire(ctx, now, timer) == AfterFire::Stop
            {
                return;
            }
        }
    }

    fn fire(&mut self, ctx: &mut Ctx, now: Instant, timer: DeviceTimer) -> AfterFire {
        self.timers.disarm(timer);
        match timer {
            DeviceTimer::OutageReconnect => self.reconnect(ctx, now),
            DeviceTimer::WillPrompt => {
                if matches!(
                    self.state,
                    DeviceState::AwaitWillTopic | DeviceState::AwaitWillMsg
                ) {
                    debug!(client_id = %self.client_id, "will prompting timed out");
                    if !self.abandon_kept_session(ctx) {
                        self.set_state(ctx, DeviceState::Disconnected);
                    }
                }
            }
            DeviceTimer::BrokerConnack => {
                if self.state == DeviceState::AwaitBroker {
                    info!(client_id = %self.client_id, "broker did not accept in time");
                    self.fail_connect(ctx, ReturnCode::Congestion);
                }
            }
            DeviceTimer::SwitchConnack => {
                let switching = self.switch.opening().is_some();
                if self.state.is_live() && switching {
                    info!(client_id = %self.client_id, "broker did not accept the replacement session in time");
                    self.finish_switch(ctx, now, mqtt::ConnectReturnCode::ServerUnavailable, false);
                    return AfterFire::Stop;
                }
            }
            DeviceTimer::KeepAlive => {
                self.lose(ctx, "keep-alive expired");
                return AfterFire::Stop;
            }
            DeviceTimer::Sleep => {
                self.lose(ctx, "sleep duration expired");
                return AfterFire::Stop;
            }
            DeviceTimer::Retransmit => {
                if self.down.retries() < ctx.settings.max_retries {
                    self.down.retransmit(ctx, &link!(self), now);
                } else if self.state == DeviceState::Awake {
                    // The device went back to sleep without taking everything: keep the rest
                    // for its next PINGREQ rather than declaring it lost.
                    debug!(client_id = %self.client_id, "awake device stopped answering; asleep again");
                    self.go_to_sleep(ctx, now);
                    return AfterFire::Stop;
                } else {
                    self.lose(ctx, "no answer after timers.max_retries re-sends");
                    return AfterFire::Stop;
                }
            }
        }
        AfterFire::Next
    }

    // ---------------------------------------------------------------- upstream packets

    pub(super) fn on_upstream(
        &mut self,
        ctx: &mut Ctx,
        now: Instant,
        session: SessionId,
        packet: mqtt::Packet,
    ) {
        let is_new = self.switch.opening() == Some(session);
        if is_new {
            if let mqtt::Packet::ConnAck {
                code,
                session_present,
            } = packet
            {
                self.finish_switch(ctx, now, code, session_present);
                return;
            }
        }
        if !is_new && self.session != Some(session) {
            return;
        }
        match packet {
            mqtt::Packet::ConnAck {
                code,
                session_present,
            } if self.state == DeviceState::AwaitBroker => {
                self.on_connack(ctx, now, code, session_present)
            }
            mqtt::Packet::ConnAck {
                code,
                session_present,
            } => {
                // A session reopened after a restart or an outage: nothing to tell the device
                // unless the broker refused it for good.
                self.on_resumed(ctx, now, session, code, session_present);
            }
            mqtt::Packet::Publish(p) => self.on_broker_publish(ctx, now, p),
            mqtt::Packet::PubAck { packet_id } => self.on_broker_puback(ctx, now, packet_id),
            mqtt::Packet::PubRec { packet_id } => self.on_broker_pubrec(ctx, packet_id),
            mqtt::Packet::PubComp { packet_id } => self.on_broker_pubcomp(ctx, now, packet_id),
            mqtt::Packet::PubRel { packet_id } => {
                // Downlink QoS 2: the device already has the message (we sent PUBREC only then).
                ctx.send(session, mqtt::Packet::PubComp { packet_id });
            }
            mqtt::Packet::SubAck { packet_id, codes } => {
                self.on_broker_suback(ctx, now, packet_id, &codes)
            }
            mqtt::Packet::UnsubAck { packet_id } => self.on_broker_unsuback(ctx, now, packet_id),
            mqtt::Packet::PingResp => {}
            other => {
                debug!(client_id = %self.client_id, packet = ?other, "unexpected packet from broker");
            }
        }
    }

    // ---------------------------------------------------------------- uplink

    /// Messages a device may send while Active. Returns false when the message is not one.
    pub(super) fn on_active_message(&mut self, ctx: &mut Ctx, now: Instant, msg: Message) -> bool {
        if self.switch.opening().is_some()
            && matches!(
                msg,
                Message::Publish(_)
                    | Message::Pubrel { .. }
                    | Message::Subscribe(_)
                    | Message::Unsubscribe(_)
            )
        {
            // The upstream session is being replaced; keep the order, answer after.
            if !self.switch.hold(msg, ctx.settings.max_queued_per_device) {
                ctx.stats.wrong_state += 1;
            }
            return true;
        }
        match msg {
            Message::Register(r) => self.on_register(ctx, r),
            Message::Publish(p) => self.on_publish(ctx, p),
            Message::Pubrel { msg_id } => self.on_pubrel(ctx, msg_id),
            Message::Subscribe(s) => self.on_subscribe(ctx, s),
            Message::Unsubscribe(u) => self.on_unsubscribe(ctx, u),
            Message::PingReq { .. } => {
                ctx.transmit(&self.addr, Message::PingResp);
            }
            Message::Regack(r) => self.on_regack(ctx, now, r),
            Message::Puback(p) => self.on_puback(ctx, now, p),
            Message::Pubrec { msg_id } => self.down.on_pubrec(ctx, &link!(self), now, msg_id),
            Message::Pubcomp { msg_id } => self.on_pubcomp(ctx, now, msg_id),
            Message::WillTopicUpd(w) => self.on_will_topic_upd(ctx, now, w),
            Message::WillMsgUpd { msg } => self.on_will_msg_upd(ctx, now, msg),
            _ => return false,
        }
        true
    }

    // ---------------------------------------------------------------- downlink (downlink.rs)

    fn on_broker_publish(&mut self, ctx: &mut Ctx, now: Instant, p: mqtt::Publish) {
        if self.subs.drop_redelivered_retained(ctx, &link!(self), &p) {
            return;
        }
        let qos = self.subs.granted_qos(&p.topic, p.qos);
        let to = Receiver {
            state: self.state,
            clean_session: self.conn.clean_session,
            durable: self.durable(ctx),
        };
        if self
            .down
            .offer(ctx, &link!(self), &mut self.topics, to, p, qos)
        {
            self.pump(ctx, now);
        }
    }

    /// Sends what is queued while the device can hear; then what follows from an empty queue:
    /// the session resumed for messages left at the broker, an Awake device's PINGRESP, a
    /// session switch that waited for the downlink.
    pub(super) fn pump(&mut self, ctx: &mut Ctx, now: Instant) {
        if !matches!(self.state, DeviceState::Active | DeviceState::Awake) {
            return;
        }
        self.down
            .send_queued(ctx, &link!(self), &mut self.topics, now);
        if self.down.take_left_with_broker(&self.client_id) {
            // The same switch a will update uses: the broker re-delivers them with DUP.
            self.switch.want();
            self.try_switch(ctx, now);
        }
        if self.state == DeviceState::Awake && self.down.is_idle() {
            // Everything buffered is delivered: PINGRESP closes the transfer, never earlier.
            ctx.transmit(&self.addr, Message::PingResp);
            self.go_to_sleep(ctx, now);
        }
        self.try_switch(ctx, now);
    }

    fn on_regack(&mut self, ctx: &mut Ctx, now: Instant, r: Regack) {
        let Some(regacked) = self.down.on_regack(ctx, &link!(self), &mut self.topics, r) else {
            return;
        };
        self.save(ctx);
        if let Regacked::Rejected { topic_id, name } = regacked {
            self.down.drop_topic(ctx, &link!(self), topic_id);
            if let Some(session) = self.session {
                let ids = id_space!(self, ctx, [&self.up, &self.outage]);
                self.subs.unsubscribe_internal(ctx, session, name, ids);
            }
        }
        self.pump(ctx, now);
    }

    fn on_puback(&mut self, ctx: &mut Ctx, now: Instant, p: Puback) {
        if self
            .down
            .on_puback(ctx, &link!(self), &mut self.topics, now, p)
        {
            self.pump(ctx, now);
        }
    }

    fn on_pubcomp(&mut self, ctx: &mut Ctx, now: Instant, msg_id: u16) {
        if self.down.on_pubcomp(ctx, msg_id) {
            self.pump(ctx, now);
        }
    }
}

/// What the broker is told of a device in `state`; `None` while it is connecting (the CONNECT
/// is not accepted yet: the previous availability stands). Awake is still asleep: a PINGREQ
/// wake-up fetches the buffer and goes back to sleep, no change a dashboard should flap on.
fn availability(state: DeviceState) -> Option<Availability> {
    match state {
        DeviceState::Active => Some(Availability::Active),
        DeviceState::Asleep | DeviceState::Awake => Some(Availability::Asleep),
        DeviceState::Lost => Some(Availability::Lost),
        DeviceState::Disconnected => Some(Availability::Disconnected),
        DeviceState::AwaitWillTopic | DeviceState::AwaitWillMsg | DeviceState::AwaitBroker => None,
    }
}
