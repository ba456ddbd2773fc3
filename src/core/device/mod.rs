//! One device's state machine (spec §6): connect with will prompting, topic registration,
//! publish in both directions at every QoS, subscribe, keep-alive, sleep, will updates.
//!
//! Owns the [`Device`], made of one sub-struct per feature (connect.rs, uplink.rs,
//! subscriptions.rs, downlink.rs, sleep.rs, session_switch.rs, outage.rs, record.rs; timers in
//! timers.rs), its state and the dispatch of what the device and the broker send. It is a star:
//! only this file names the feature files, their methods return what happened, and this file
//! decides what follows (a state change, a pump of the downlink, a session switch). Types two
//! features share are in types.rs, below them all.
//!
//! Must never: do I/O or read the clock (effects go into [`Ctx`]; every method that takes `now`
//! uses only that for time), or let a feature file reach a sibling.

use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::{debug, info};

use subscriptions::{Gap, Subacked, Subscriptions};

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

use connect::{will_prompt_time, Begin, Connection};
use downlink::{Downlink, Receiver, Regacked};
use record::Record;
use session_switch::SessionSwitch;
use sleep::Sleep;
use timers::{AfterFire, DeviceTimer, Timers};
use uplink::{Acked, Uplink};

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

use super::bridge;
use super::ctx::Ctx;
use super::persist::{self, DeviceRecord, StoredState, UplinkRecord};
use super::topics::TopicTable;
use super::types::{DeviceAddr, SessionId};
use super::DeviceId;
use crate::codec::{
    self, Message, Puback, Publish, Regack, Register, ReturnCode, Subscribe, Unsubscribe, WillTopic,
};
use crate::mqtt;

pub(crate) struct Device {
    pub id: DeviceId,
    pub client_id: String,
    pub addr: DeviceAddr,
    pub state: DeviceState,
    /// CleanSession, Duration and will of its CONNECT.
    conn: Connection,
    pub last_heard: Instant,
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
            id,
            client_id,
            addr,
            state: DeviceState::Disconnected,
            conn: Connection::default(),
            last_heard: now,
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
    }

    fn record_state(&self) -> StoredState {
        record::stored_state(self.state, self.sleep.duration())
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
            d.session = Some(ctx.open(Some(id), connect));
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
        if matches!(r, UplinkRecord::Parked { .. }) {
            self.outage.restore(&mut self.pkids, n, r);
            return;
        }
        self.up.restore(&mut self.pkids, r);
    }

    // ---------------------------------------------------------------- sleep (§6.14)

    /// DISCONNECT with a Duration from a live device: Asleep, upstream session kept.
    pub(super) fn on_sleep(&mut self, ctx: &mut Ctx, now: Instant, duration: u16) {
        self.sleep.start(duration);
        self.go_to_sleep(ctx, now);
        ctx.transmit(&self.addr, Message::Disconnect { duration: None });
        info!(client_id = %self.client_id, duration, "device asleep");
    }

    fn go_to_sleep(&mut self, ctx: &mut Ctx, now: Instant) {
        self.set_state(ctx, DeviceState::Asleep);
        self.timers
            .arm(DeviceTimer::Sleep, self.sleep.deadline(now));
    }

    /// PINGREQ from an Asleep (or Awake) device: deliver the buffer, then PINGRESP.
    pub(super) fn on_wake(&mut self, ctx: &mut Ctx, now: Instant) {
        if self.state == DeviceState::Awake {
            return; // a re-sent PINGREQ: the flush goes on, PINGRESP comes last
        }
        self.set_state(ctx, DeviceState::Awake);
        self.resume_inflight(ctx, now);
        self.pump(ctx, now);
    }

    /// Sends what was in flight when the device fell asleep again at once (DUP), with a fresh
    /// retry budget.
    fn resume_inflight(&mut self, ctx: &mut Ctx, now: Instant) {
        self.down.resume(ctx, &link!(self), now);
    }

    // ---------------------------------------------------------------- connect

    /// A CONNECT from this device (new, repeated, or taking over). The caller has bound `addr`.
    pub(super) fn on_connect(&mut self, ctx: &mut Ctx, now: Instant, c: &codec::Connect) {
        let sleeping = matches!(self.state, DeviceState::Asleep | DeviceState::Awake);
        let (has_session, resuming) = (self.session.is_some(), self.outage.resuming());
        let begin = self.conn.begin(c, sleeping, has_session, resuming);
        self.last_heard = now;
        match begin {
            // The new will needs a new upstream session; it is made once the device has its
            // buffer (see session_switch.rs), so nothing buffered is lost to the switch.
            Begin::PromptKeepingSession => self.prompt_keeping_session(ctx, now),
            Begin::KeepSession => {
                // Leaving sleep for Active (spec §6.14): the upstream session, the topic ids
                // and the buffered messages carry on; the buffer is delivered now.
                self.conn.rewill = false;
                self.timers.clear_upstream_wait();
                self.set_state(ctx, DeviceState::Active);
                ctx.transmit(
                    &self.addr,
                    Message::Connack {
                        return_code: ReturnCode::Accepted,
                    },
                );
                self.resume_inflight(ctx, now);
                self.pump(ctx, now);
            }
            Begin::AwaitResumed => {
                // Answer with the resumed session's CONNACK rather than open a second
                // connection with the same ClientId racing the first at the broker.
                self.outage.clear_resuming();
                self.topics.mark_all_unknown();
                self.set_state(ctx, DeviceState::AwaitBroker);
                self.timers.arm(
                    DeviceTimer::BrokerConnack,
                    now + ctx.settings.upstream_connect_timeout,
                );
            }
            Begin::Fresh { will } => {
                if let Some(old) = self.session.take() {
                    // The device restarted its connection: end the old session without its will.
                    ctx.close(old, true);
                }
                self.abandon_switch(ctx, true);
                self.reset_flows(ctx);
                self.conn.clean_session = c.clean_session;
                if c.clean_session {
                    // A clean session starts from nothing, in the store too.
                    self.forget(ctx);
                    self.down.clear_queue();
                    self.topics.clear();
                    self.subs.clear();
                    self.conn.set_will_topic(None);
                } else {
                    // Ids stay stable but the device is told them again before use (§6.10).
                    self.topics.mark_all_unknown();
                }
                if will {
                    self.set_state(ctx, DeviceState::AwaitWillTopic);
                    self.timers
                        .arm(DeviceTimer::WillPrompt, now + will_prompt_time(ctx));
                    ctx.transmit(&self.addr, Message::WillTopicReq);
                } else {
                    self.open_upstream(ctx, now);
                }
            }
        }
    }

    pub(super) fn on_will_topic(&mut self, ctx: &mut Ctx, now: Instant, w: Option<WillTopic>) {
        if self.state != DeviceState::AwaitWillTopic {
            ctx.stats.wrong_state += 1;
            return;
        }
        match w {
            Some(w) if mqtt::valid_topic_name(&w.topic) => {
                self.conn.set_will_topic(Some(w));
                self.set_state(ctx, DeviceState::AwaitWillMsg);
                self.timers
                    .arm(DeviceTimer::WillPrompt, now + will_prompt_time(ctx));
                ctx.transmit(&self.addr, Message::WillMsgReq);
            }
            Some(w) => {
                debug!(client_id = %self.client_id, topic = %w.topic, "invalid will topic");
                if self.abandon_kept_session(ctx) {
                    ctx.transmit(
                        &self.addr,
                        Message::Connack {
                            return_code: ReturnCode::NotSupported,
                        },
                    );
                } else {
                    self.fail_connect(ctx, ReturnCode::NotSupported);
                }
            }
            None => {
                // The empty WILLTOPIC deletes the will (spec §6.3); no message follows.
                self.conn.set_will_topic(None);
                self.will_given(ctx, now);
            }
        }
    }

    pub(super) fn on_will_msg(&mut self, ctx: &mut Ctx, now: Instant, msg: Bytes) {
        if self.state != DeviceState::AwaitWillMsg {
            ctx.stats.wrong_state += 1;
            return;
        }
        self.conn.set_will_msg(msg);
        self.will_given(ctx, now);
    }

    /// The will prompt is complete: open the session carrying it, or carry on with the kept
    /// one of a sleeping device.
    fn will_given(&mut self, ctx: &mut Ctx, now: Instant) {
        if self.conn.rewill {
            self.resume_with_new_will(ctx, now);
        } else {
            self.open_upstream(ctx, now);
        }
    }

    /// A sleeping device sends CONNECT with clean session 0 and Will=1: prompt for the will
    /// but keep the upstream session, the topic ids and the buffer.
    fn prompt_keeping_session(&mut self, ctx: &mut Ctx, now: Instant) {
        self.conn.rewill = true;
        self.set_state(ctx, DeviceState::AwaitWillTopic);
        self.timers
            .arm(DeviceTimer::WillPrompt, now + will_prompt_time(ctx));
        ctx.transmit(&self.addr, Message::WillTopicReq);
    }

    /// The will prompt of a kept session is done: Active on the same session, the buffer is
    /// delivered, and the new will goes upstream by a session switch.
    fn resume_with_new_will(&mut self, ctx: &mut Ctx, now: Instant) {
        self.conn.rewill = false;
        self.timers.clear_upstream_wait();
        self.set_state(ctx, DeviceState::Active);
        ctx.transmit(
            &self.addr,
            Message::Connack {
                return_code: ReturnCode::Accepted,
            },
        );
        info!(client_id = %self.client_id, "sleeping device reconnected with a new will; session kept");
        self.switch.want();
        self.resume_inflight(ctx, now);
        self.pump(ctx, now);
    }

    /// The will prompt of a kept session failed or stalled: end the session as a fresh CONNECT
    /// would have (gracefully, so the old will does not fire).
    fn abandon_kept_session(&mut self, ctx: &mut Ctx) -> bool {
        if !self.conn.rewill {
            return false;
        }
        self.end_sessions(ctx, true, DeviceState::Disconnected);
        true
    }

    fn last_will(&self) -> Option<mqtt::LastWill> {
        self.conn.last_will()
    }

    fn open_upstream(&mut self, ctx: &mut Ctx, now: Instant) {
        let connect =
            ctx.connect_packet(&self.client_id, self.conn.clean_session, self.last_will());
        self.session = Some(ctx.open(Some(self.id), connect));
        self.set_state(ctx, DeviceState::AwaitBroker);
        self.timers.arm(
            DeviceTimer::BrokerConnack,
            now + ctx.settings.upstream_connect_timeout,
        );
    }

    fn fail_connect(&mut self, ctx: &mut Ctx, rc: ReturnCode) {
        if let Some(s) = self.session.take() {
            ctx.close(s, true);
        }
        self.set_state(ctx, DeviceState::Disconnected);
        self.timers.clear_upstream_wait();
        ctx.transmit(&self.addr, Message::Connack { return_code: rc });
    }

    fn on_connack(
        &mut self,
        ctx: &mut Ctx,
        now: Instant,
        code: mqtt::ConnectReturnCode,
        session_present: bool,
    ) {
        if code != mqtt::ConnectReturnCode::Accepted {
            info!(client_id = %self.client_id, ?code, "broker refused the device's session");
            self.fail_connect(ctx, bridge::connack_code(code));
            return;
        }
        self.set_state(ctx, DeviceState::Active);
        self.timers.clear_upstream_wait();
        self.last_heard = now;
        info!(client_id = %self.client_id, peer = %self.addr, "device connected");
        ctx.transmit(
            &self.addr,
            Message::Connack {
                return_code: ReturnCode::Accepted,
            },
        );
        self.session_accepted(ctx, session_present, Gap::Lapsed);
        self.pump(ctx, now);
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
                info!(client_id = %self.client_id, "keep-alive expired; device lost");
                self.lose(ctx);
                return AfterFire::Stop;
            }
            DeviceTimer::Sleep => {
                info!(client_id = %self.client_id, "sleep duration expired; device lost");
                self.lose(ctx);
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
                    info!(client_id = %self.client_id, "no answer after N_RETRY; device lost");
                    self.lose(ctx);
                    return AfterFire::Stop;
                }
            }
        }
        AfterFire::Next
    }

    /// The device is gone without DISCONNECT: drop the upstream session ungracefully so the
    /// broker publishes the will.
    pub(super) fn lose(&mut self, ctx: &mut Ctx) {
        self.end_sessions(ctx, false, DeviceState::Lost);
        ctx.stats.devices_lost += 1;
    }

    /// Ends the upstream session(s) — with DISCONNECT when `graceful`, so no will — voids the
    /// flows tied to them and moves to `state`.
    fn end_sessions(&mut self, ctx: &mut Ctx, graceful: bool, state: DeviceState) {
        if let Some(s) = self.session.take() {
            ctx.close(s, graceful);
        }
        self.abandon_switch(ctx, graceful);
        self.reset_flows(ctx);
        self.set_state(ctx, state);
        self.timers.clear_upstream_wait();
    }

    /// DISCONNECT from the device: a clean MQTT DISCONNECT upstream (no will).
    pub(super) fn on_disconnect(&mut self, ctx: &mut Ctx) {
        self.end_sessions(ctx, true, DeviceState::Disconnected);
        if self.conn.clean_session {
            self.topics.clear();
            self.subs.clear();
        }
        ctx.transmit(&self.addr, Message::Disconnect { duration: None });
    }

    /// The broker closed the device's session (or could not be reached).
    pub(super) fn on_upstream_closed(&mut self, ctx: &mut Ctx, now: Instant, session: SessionId) {
        if self.switch.opening() == Some(session) || self.session == Some(session) {
            match self.state {
                DeviceState::AwaitBroker => {
                    self.session = None;
                    info!(client_id = %self.client_id, "broker unreachable; CONNACK congestion");
                    self.fail_connect(ctx, ReturnCode::Congestion);
                }
                state if state.is_live() && self.durable(ctx) => {
                    // A persistent session with a store rides the outage out: the device stays
                    // connected, its QoS 1/2 messages are parked, the session is resumed.
                    self.session = None;
                    self.abandon_switch(ctx, false);
                    self.reset_flows(ctx);
                    self.outage.start(now, self.retry_interval, &self.client_id);
                }
                _ => {
                    self.session = None;
                    self.broker_ended_session(ctx);
                }
            }
        }
    }

    /// Abandons a session switch in progress, closing its replacement session.
    fn abandon_switch(&mut self, ctx: &mut Ctx, graceful: bool) {
        if let Some(s) = self.switch.abandon() {
            ctx.close(s, graceful);
        }
    }

    /// The broker ended the device's session and it cannot be resumed: tell the device.
    fn broker_ended_session(&mut self, ctx: &mut Ctx) {
        info!(client_id = %self.client_id, "broker closed the session; telling the device");
        // `session` is already gone (the broker ended it); only a switch's may be left.
        self.end_sessions(ctx, false, DeviceState::Disconnected);
        ctx.transmit(&self.addr, Message::Disconnect { duration: None });
    }

    /// The upstream session ends (reconnect, loss, disconnect): flows tied to it are void,
    /// except what a persistent session still owes: messages already acknowledged to the
    /// broker for the device, and uplink flows the broker may hold under their packet ids.
    fn reset_flows(&mut self, ctx: &mut Ctx) {
        self.up
            .end_session(ctx, &link!(self), self.conn.clean_session);
        self.down.end_session();
        self.switch.end_session();
        self.conn.rewill = false;
        self.subs.end_session();
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

    fn on_register(&mut self, ctx: &mut Ctx, r: Register) {
        let regack = uplink::register(ctx, &mut self.topics, r);
        if regack.return_code == ReturnCode::Accepted {
            self.save(ctx);
        }
        ctx.transmit(&self.addr, Message::Regack(regack));
    }

    /// The topic name of an uplink PUBLISH; answers PUBACK "invalid topic ID" when it has none.
    fn uplink_topic(&self, ctx: &mut Ctx, p: &Publish) -> Option<String> {
        uplink::topic_name(ctx, &link!(self), &self.topics, p)
    }

    fn on_publish(&mut self, ctx: &mut Ctx, p: Publish) {
        if self.session.is_none() || self.outage.resuming() {
            // The broker is away or the session not yet accepted again.
            self.park(ctx, p);
            return;
        }
        let Some(topic) = self.uplink_topic(ctx, &p) else {
            return;
        };
        let durable = self.durable(ctx);
        let ids = id_space!(self, ctx, [&self.subs, &self.outage]);
        self.up
            .on_publish(ctx, &link!(self), durable, topic, p, ids);
    }

    fn on_pubrel(&mut self, ctx: &mut Ctx, msg_id: u16) {
        if self.outage.release(msg_id) {
            ctx.transmit(&self.addr, Message::Pubcomp { msg_id });
            return;
        }
        let durable = self.durable(ctx);
        self.up.on_pubrel(ctx, &link!(self), durable, msg_id);
    }

    fn on_broker_puback(&mut self, ctx: &mut Ctx, now: Instant, pkid: u16) {
        if self.outage.acked(ctx, &link!(self), pkid) {
            return;
        }
        let durable = self.durable(ctx);
        if self.up.on_broker_puback(ctx, &link!(self), durable, pkid) == Acked::Downgraded {
            self.note_downgrade(
                mqtt::QoS::ExactlyOnce,
                mqtt::QoS::AtLeastOnce,
                "PUBLISH answered with PUBACK",
            );
        }
        self.try_switch(ctx, now);
    }

    fn on_broker_pubrec(&mut self, ctx: &mut Ctx, pkid: u16) {
        if self.outage.released(ctx, &link!(self), pkid) {
            return;
        }
        let durable = self.durable(ctx);
        self.up.on_broker_pubrec(ctx, &link!(self), durable, pkid);
    }

    fn on_broker_pubcomp(&mut self, ctx: &mut Ctx, now: Instant, pkid: u16) {
        if self.outage.acked(ctx, &link!(self), pkid) {
            return;
        }
        let durable = self.durable(ctx);
        self.up.on_broker_pubcomp(ctx, &link!(self), durable, pkid);
        self.try_switch(ctx, now);
    }

    // ---------------------------------------------------------------- outage (outage.rs)

    fn reconnect(&mut self, ctx: &mut Ctx, _now: Instant) {
        self.outage.stop_waiting();
        if self.session.is_some() || !self.state.is_live() {
            return;
        }
        let connect = ctx.connect_packet(&self.client_id, false, self.last_will());
        self.session = Some(ctx.open(Some(self.id), connect));
        self.outage.set_resuming();
    }

    /// CONNACK on a session reopened after a restart or an outage.
    fn on_resumed(
        &mut self,
        ctx: &mut Ctx,
        now: Instant,
        session: SessionId,
        code: mqtt::ConnectReturnCode,
        session_present: bool,
    ) {
        self.outage.clear_resuming();
        match code {
            mqtt::ConnectReturnCode::Accepted => {
                self.outage.accepted();
                // The session was away: what the broker lost is subscribed again.
                self.session_accepted(ctx, session_present, Gap::Lapsed);
                let ids = id_space!(self, ctx, [&self.up, &self.subs]);
                self.outage.flush(ctx, &link!(self), session, ids);
                self.pump(ctx, now);
            }
            mqtt::ConnectReturnCode::ServerUnavailable => {
                // Still coming back: try again later.
                ctx.close(session, false);
                self.on_upstream_closed(ctx, now, session);
            }
            _ => {
                info!(client_id = %self.client_id, ?code, "broker refused the resumed session");
                ctx.close(session, false);
                self.outage.stop_waiting();
                self.session = None;
                self.broker_ended_session(ctx);
            }
        }
    }

    /// A PUBLISH while the broker is away. Returns after answering the device.
    fn park(&mut self, ctx: &mut Ctx, p: Publish) {
        if !self.state.is_live() || self.conn.clean_session || !ctx.persistent() {
            return;
        }
        let Some(topic) = self.uplink_topic(ctx, &p) else {
            return;
        };
        self.outage.park(ctx, &link!(self), topic, p);
    }

    /// Logs, once per upstream session, that the broker gave less than the QoS asked for.
    fn note_downgrade(&mut self, asked: mqtt::QoS, got: mqtt::QoS, what: &str) {
        if got >= asked || self.session.is_none() || self.downgrade_noted == self.session {
            return;
        }
        self.downgrade_noted = self.session;
        info!(
            client_id = %self.client_id,
            asked = asked as u8,
            got = got as u8,
            what,
            "broker downgrades QoS (logged once per session); the device's QoS 2 exchange with the gateway is completed as the spec has it"
        );
    }

    // ---------------------------------------------------------------- subscriptions (subscriptions.rs)

    fn on_subscribe(&mut self, ctx: &mut Ctx, s: Subscribe) {
        let ids = id_space!(self, ctx, [&self.up, &self.outage]);
        self.subs
            .on_subscribe(ctx, &link!(self), &mut self.topics, s, ids);
    }

    fn on_broker_suback(
        &mut self,
        ctx: &mut Ctx,
        now: Instant,
        pkid: u16,
        codes: &[mqtt::SubackCode],
    ) {
        let Some(acked) = self.subs.on_suback(&link!(self), pkid, codes.first()) else {
            return;
        };
        if let Subacked::Restored {
            changed: Some((asked, got)),
        } = acked
        {
            self.note_downgrade(asked, got, "subscription granted a lower QoS");
            self.save(ctx);
        }
        self.release_will_responses(ctx);
        if let Subacked::Device(reply) = acked {
            if let Some((asked, got)) = reply.downgraded() {
                self.note_downgrade(asked, got, "subscription granted a lower QoS");
            }
            let durable = self.durable(ctx);
            if self.subs.answer(ctx, &link!(self), durable, reply) {
                self.stored.mark_stored();
            }
        }
        self.try_switch(ctx, now);
    }

    fn on_unsubscribe(&mut self, ctx: &mut Ctx, u: Unsubscribe) {
        let ids = id_space!(self, ctx, [&self.up, &self.outage]);
        self.subs.on_unsubscribe(ctx, &link!(self), u, ids);
    }

    fn on_broker_unsuback(&mut self, ctx: &mut Ctx, now: Instant, pkid: u16) {
        let durable = self.durable(ctx);
        self.subs.on_unsuback(ctx, &link!(self), durable, pkid);
        self.release_will_responses(ctx);
        self.try_switch(ctx, now);
    }

    /// The broker accepted the device's (new or resumed) session. Without a session at the
    /// broker, subscribe again to every filter the gateway knows for the device.
    fn session_accepted(&mut self, ctx: &mut Ctx, session_present: bool, gap: Gap) {
        let remake = self.conn.clean_session || !session_present;
        if remake && self.session.is_some() && self.subs.count() > 0 && !self.conn.clean_session {
            info!(
                client_id = %self.client_id,
                subscriptions = self.subs.count(),
                "broker lost the device's session (CONNACK Session Present 0); subscribing again"
            );
            self.down.forget_left_with_broker(&self.client_id);
        }
        let ids = id_space!(self, ctx, [&self.up, &self.outage]);
        self.subs
            .session_accepted(ctx, &link!(self), remake, gap, ids);
    }

    // ---------------------------------------------------------------- session switch (session_switch.rs)

    fn on_will_topic_upd(&mut self, ctx: &mut Ctx, now: Instant, w: Option<WillTopic>) {
        match w {
            Some(w) if !mqtt::valid_topic_name(&w.topic) => {
                ctx.transmit(
                    &self.addr,
                    Message::WillTopicResp {
                        return_code: ReturnCode::NotSupported,
                    },
                );
                return;
            }
            // An empty WILLTOPICUPD deletes topic and message (spec §6.4).
            w => self.conn.set_will_topic(w),
        }
        if self.switch.want_for_will(true) {
            self.try_switch(ctx, now);
        }
    }

    fn on_will_msg_upd(&mut self, ctx: &mut Ctx, now: Instant, msg: Bytes) {
        self.conn.set_will_msg(msg);
        if self.switch.want_for_will(false) {
            self.try_switch(ctx, now);
        }
    }

    /// Opens the replacement session a switch wants, once no QoS flow is open on the old one
    /// (so nothing in flight is lost or doubled).
    fn try_switch(&mut self, ctx: &mut Ctx, now: Instant) {
        let idle = self.up.broker_idle()
            && self.subs.pending_len() == 0
            && !self.down.owes_broker()
            && !self.outage.resuming();
        if !self.switch.waiting() || !idle || !self.state.is_live() {
            return;
        }
        if let Some(old) = self.session.take() {
            ctx.close(old, true);
        }
        let connect =
            ctx.connect_packet(&self.client_id, self.conn.clean_session, self.last_will());
        self.switch.opened(ctx.open(Some(self.id), connect));
        // Bounded like the first CONNECT: without it a silent broker leaves the device
        // Active with no upstream session for as long as it keeps pinging.
        self.timers.arm(
            DeviceTimer::SwitchConnack,
            now + ctx.settings.upstream_connect_timeout,
        );
    }

    fn finish_switch(
        &mut self,
        ctx: &mut Ctx,
        now: Instant,
        code: mqtt::ConnectReturnCode,
        session_present: bool,
    ) {
        let Some(done) = self.switch.answered() else {
            return;
        };
        let s = done.session;
        if code != mqtt::ConnectReturnCode::Accepted {
            info!(client_id = %self.client_id, ?code, "broker refused the session carrying the new will");
            ctx.close(s, false);
            // The old session is already gone: treat the refusal like the broker closing the
            // device's only session, so the device is told to CONNECT again.
            self.session = Some(s);
            self.on_upstream_closed(ctx, now, s);
            return;
        }
        self.session = Some(s);
        self.timers.clear_upstream_wait();
        self.save(ctx);
        // A clean session ended with the old connection (and a persistent one may have been
        // lost): subscribe again, without re-delivering retained messages.
        self.session_accepted(ctx, session_present, Gap::None);
        self.switch.owe_will_responses(&done);
        self.release_will_responses(ctx);
        for m in self.switch.take_held() {
            self.on_active_message(ctx, now, m);
        }
        if done.again {
            self.switch.want();
            self.try_switch(ctx, now);
        }
        self.pump(ctx, now);
    }

    fn release_will_responses(&mut self, ctx: &mut Ctx) {
        let remaking = self.subs.remaking();
        self.switch
            .release_will_responses(ctx, &link!(self), remaking);
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
