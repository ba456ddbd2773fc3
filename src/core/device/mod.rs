//! One device's state machine (spec §6): connect with will prompting, topic registration,
//! publish in both directions at every QoS, subscribe, keep-alive, will updates.
//!
//! Owns everything about one device and its upstream session's packet-id space. Never does
//! I/O: effects go into [`Ctx`]. Every method that takes `now` uses only that for time.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::{debug, info};

mod outage;

use super::ctx::Ctx;
use super::persist::{self, DeviceRecord, StoredState, UplinkRecord};
use super::topics::TopicTable;
use super::types::{DeviceAddr, Output, PersistOp, SessionId, Table};
use super::DeviceId;
use crate::codec::{
    self, Message, Puback, Publish, Regack, Register, ReturnCode, Suback, Subscribe, TopicFilter,
    TopicRef, Unsubscribe, WillTopic,
};
use crate::mqtt;

/// Where a device is in its life (spec §6.14's client states, as seen from the gateway).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceState {
    /// CONNECT with Will=1 received; WILLTOPICREQ sent.
    AwaitWillTopic,
    /// WILLTOPIC received; WILLMSGREQ sent.
    AwaitWillMsg,
    /// Upstream session opening; the device's CONNACK waits for the broker's.
    AwaitBroker,
    Active,
    /// Sent DISCONNECT (or the broker closed its session).
    Disconnected,
    /// Keep-alive or N_RETRY exceeded: the upstream session was dropped so the will fired.
    Lost,
    /// Sent DISCONNECT with a Duration: the upstream session stays, messages are buffered,
    /// the sleep timer supervises the device (spec §6.14).
    Asleep,
    /// Sent PINGREQ with its ClientId: the buffer is being delivered; PINGRESP ends it.
    Awake,
}

impl DeviceState {
    /// Connected to the gateway with a live upstream session.
    pub fn is_live(self) -> bool {
        matches!(
            self,
            DeviceState::Active | DeviceState::Asleep | DeviceState::Awake
        )
    }
}

/// Why an uplink QoS 1/2 flow waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
// Each variant names what the flow awaits; the shared prefix is the point.
#[allow(clippy::enum_variant_names)]
enum UpStage {
    /// Forwarded; waiting for the broker's PUBACK (QoS 1) or PUBREC (QoS 2).
    AwaitBroker,
    /// PUBREC sent to the device; waiting for its PUBREL.
    AwaitPubrel,
    /// PUBREL forwarded; waiting for the broker's PUBCOMP.
    AwaitPubcomp,
}

#[derive(Debug, Clone)]
struct UpFlow {
    msg_id: u16,
    topic_id: u16,
    stage: UpStage,
    qos: codec::QoS,
    /// The session that carried it ended before the broker answered (reconnect, restart):
    /// the device's re-sent PUBLISH goes upstream again with the same packet id and DUP, so a
    /// broker that already has it recognises it.
    orphaned: bool,
}

/// What the broker is owed once the device has a downlink message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BrokerAck {
    None,
    PubAck(u16),
    PubRec(u16),
}

#[derive(Debug, Clone)]
enum Down {
    Register {
        topic_id: u16,
        name: String,
    },
    Publish {
        topic: TopicRef,
        qos: codec::QoS,
        retain: bool,
        data: Bytes,
        ack: BrokerAck,
        /// Already re-registered once after the device said "invalid topic id".
        reregistered: bool,
        /// Sequence of its durable copy (a sleeping device's message already acknowledged to
        /// the broker); deleted once the device has it.
        stored: Option<u64>,
    },
}

/// Whether a downlink message can be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Room {
    Fits,
    /// QoS 0 (or a message owing the broker nothing): drop it.
    Drop,
    /// QoS 1/2: do not acknowledge; the broker keeps it.
    LeaveWithBroker,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DownStage {
    Regack,
    Puback,
    Pubrec,
    Pubcomp,
}

#[derive(Debug, Clone)]
struct Inflight {
    item: Down,
    msg_id: u16,
    stage: DownStage,
    sent_at: Instant,
    retries: u32,
}

#[derive(Debug, Clone)]
enum PendingSub {
    Subscribe {
        msg_id: u16,
        topic_id: u16,
        filter: String,
    },
    Unsubscribe {
        msg_id: u16,
        filter: String,
    },
    /// Re-subscription after a will update on a clean session: no device reply.
    Internal,
}

/// A will update waiting to be applied upstream (MQTT 3.1.1 can only change a will by
/// reconnecting).
#[derive(Debug, Clone, Default)]
struct WillUpdate {
    respond_topic: bool,
    respond_msg: bool,
    /// The replacement session, once opened.
    new_session: Option<SessionId>,
    /// Another update arrived while `new_session` was opening.
    again: bool,
}

pub(crate) struct Device {
    pub id: DeviceId,
    pub client_id: String,
    pub addr: DeviceAddr,
    pub state: DeviceState,
    pub clean_session: bool,
    keep_alive: Duration,
    pub last_heard: Instant,
    /// Deadline of the current connect stage.
    stage_deadline: Option<Instant>,
    will_topic: Option<WillTopic>,
    will_msg: Bytes,
    pub session: Option<SessionId>,
    topics: TopicTable,
    /// Granted subscriptions (filter, QoS), for the QoS downgrade and resubscription.
    subs: Vec<(String, mqtt::QoS)>,
    up: HashMap<u16, UpFlow>,
    up_by_msg: HashMap<u16, u16>,
    pending_subs: HashMap<u16, PendingSub>,
    next_pkid: u16,
    queue: VecDeque<Down>,
    inflight: Option<Inflight>,
    next_msg_id: u16,
    will_update: Option<WillUpdate>,
    /// Uplink messages held while the upstream session is being replaced.
    held: VecDeque<Message>,
    /// The earliest deadline this device has in the gateway's timer queue.
    pub scheduled: Option<Instant>,
    /// T_RETRY, copied from settings so deadlines need no context.
    retry_interval: Duration,
    /// The Duration of the last DISCONNECT(Duration), while Asleep/Awake.
    sleep_duration: Duration,
    /// Sequence for the next durable sleep-buffer record.
    next_buffer_seq: u64,
    /// Riding out a broker outage (persistent sessions with a store).
    outage: outage::Outage,
    /// QoS 1/2 messages the buffer had no room for, left unacknowledged at the broker.
    left_with_broker: u32,
    /// WILLTOPICRESP / WILLMSGRESP owed once the new session's re-subscriptions are acked.
    will_resp: Option<(bool, bool)>,
    /// Something was written to the store for this ClientId.
    stored: bool,
    /// When an Asleep device is lost unless it is heard from (spec §6.14, §7.2 tolerance).
    sleep_deadline: Option<Instant>,
}

fn to_mqtt_qos(q: codec::QoS) -> mqtt::QoS {
    match q {
        codec::QoS::MinusOne | codec::QoS::AtMostOnce => mqtt::QoS::AtMostOnce,
        codec::QoS::AtLeastOnce => mqtt::QoS::AtLeastOnce,
        codec::QoS::ExactlyOnce => mqtt::QoS::ExactlyOnce,
    }
}

fn to_sn_qos(q: mqtt::QoS) -> codec::QoS {
    match q {
        mqtt::QoS::AtMostOnce => codec::QoS::AtMostOnce,
        mqtt::QoS::AtLeastOnce => codec::QoS::AtLeastOnce,
        mqtt::QoS::ExactlyOnce => codec::QoS::ExactlyOnce,
    }
}

/// Spec §7.2: the gateway tolerates +50 % on short periods, +10 % on periods over a minute.
pub fn with_tolerance(period: Duration) -> Duration {
    if period > Duration::from_secs(60) {
        period + period / 10
    } else {
        period + period / 2
    }
}

/// A short topic name as text; short names are two characters (spec §6.7).
pub fn short_name(s: [u8; 2]) -> Option<String> {
    std::str::from_utf8(&s).ok().map(str::to_owned)
}

impl Device {
    pub fn new(
        id: DeviceId,
        client_id: String,
        addr: DeviceAddr,
        now: Instant,
        retry_interval: Duration,
    ) -> Self {
        Device {
            retry_interval,
            sleep_duration: Duration::ZERO,
            next_buffer_seq: 1,
            outage: outage::Outage::default(),
            left_with_broker: 0,
            will_resp: None,
            stored: false,
            sleep_deadline: None,
            id,
            client_id,
            addr,
            state: DeviceState::Disconnected,
            clean_session: true,
            keep_alive: Duration::ZERO,
            last_heard: now,
            stage_deadline: None,
            will_topic: None,
            will_msg: Bytes::new(),
            session: None,
            topics: TopicTable::default(),
            subs: Vec::new(),
            up: HashMap::new(),
            up_by_msg: HashMap::new(),
            pending_subs: HashMap::new(),
            next_pkid: 0,
            queue: VecDeque::new(),
            inflight: None,
            next_msg_id: 0,
            will_update: None,
            held: VecDeque::new(),
            scheduled: None,
        }
    }

    pub fn is_connected(&self) -> bool {
        !matches!(self.state, DeviceState::Disconnected | DeviceState::Lost)
    }

    /// The earliest instant this device needs `on_timeout`.
    pub fn next_deadline(&self) -> Option<Instant> {
        let mut next = self.stage_deadline;
        let mut consider = |t: Instant| {
            next = Some(next.map_or(t, |n: Instant| n.min(t)));
        };
        if self.state == DeviceState::Active && !self.keep_alive.is_zero() {
            consider(self.last_heard + with_tolerance(self.keep_alive));
        }
        if self.state == DeviceState::Asleep {
            if let Some(d) = self.sleep_deadline {
                consider(d);
            }
        }
        if let Some(t) = self.outage.reconnect_at() {
            consider(t);
        }
        if let Some(f) = &self.inflight {
            // Only where `on_timeout` retransmits: a sleeping radio hears nothing, and a
            // deadline it would not consume spins the gateway's timer loop.
            if matches!(self.state, DeviceState::Active | DeviceState::Awake) {
                consider(f.sent_at + self.retry_interval);
            }
        }
        next
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
            self.sleep_deadline = None;
        }
        let stored_before = self.record_state();
        self.state = state;
        if self.record_state() != stored_before {
            self.save(ctx);
        }
    }

    fn record_state(&self) -> StoredState {
        match self.state {
            DeviceState::Active => StoredState::Active,
            DeviceState::Asleep | DeviceState::Awake => StoredState::Asleep(
                u16::try_from(self.sleep_duration.as_secs()).unwrap_or(u16::MAX),
            ),
            _ => StoredState::Offline,
        }
    }

    // ---------------------------------------------------------------- persistence

    /// Only persistent sessions (clean session 0) outlive the process.
    fn persistent(&self, ctx: &Ctx) -> bool {
        ctx.persistent() && !self.clean_session
    }

    pub fn record(&self) -> DeviceRecord {
        DeviceRecord {
            client_id: self.client_id.clone(),
            addr: persist::AddrRecord::from_addr(&self.addr),
            state: self.record_state(),
            keep_alive: u16::try_from(self.keep_alive.as_secs()).unwrap_or(u16::MAX),
            will: self.will_topic.as_ref().map(|w| persist::WillRecord {
                topic: w.topic.clone(),
                qos: to_mqtt_qos(w.qos) as u8,
                retain: w.retain,
                msg: persist::Hex(self.will_msg.to_vec()),
            }),
            subs: self
                .subs
                .iter()
                .map(|(f, q)| (f.clone(), *q as u8))
                .collect(),
            topics: self.topics.entries(),
        }
    }

    /// Writes the session record (persistent sessions only).
    fn save(&mut self, ctx: &mut Ctx) {
        if self.persistent(ctx) {
            self.stored = true;
            let key = persist::device_prefix(&self.client_id);
            ctx.persist(persist::put(Table::Device, key, &self.record()));
        }
    }

    /// Deletes everything stored for this ClientId.
    pub fn forget(&mut self, ctx: &mut Ctx) {
        if !std::mem::take(&mut self.stored) {
            return; // nothing was ever written for it
        }
        let prefix = persist::device_prefix(&self.client_id);
        ctx.persist(PersistOp::Delete {
            table: Table::Device,
            key: prefix.clone(),
        });
        for table in [Table::Buffer, Table::Uplink] {
            ctx.persist(PersistOp::DeletePrefix {
                table,
                prefix: prefix.clone(),
            });
        }
    }

    /// Rebuilds a device from its stored record; reopens its upstream session (clean session
    /// 0, same will) when it was active or asleep. Timers restart from `now`.
    pub fn restore(
        id: DeviceId,
        r: DeviceRecord,
        addr: DeviceAddr,
        ctx: &mut Ctx,
        now: Instant,
    ) -> Self {
        let mut d = Device::new(id, r.client_id, addr, now, ctx.settings.retry_interval);
        d.clean_session = false;
        d.stored = true;
        d.keep_alive = Duration::from_secs(u64::from(r.keep_alive));
        d.will_topic = r.will.as_ref().map(|w| WillTopic {
            qos: to_sn_qos(mqtt::QoS::try_from(w.qos).unwrap_or(mqtt::QoS::AtMostOnce)),
            retain: w.retain,
            topic: w.topic.clone(),
        });
        d.will_msg = r.will.map(|w| Bytes::from(w.msg.0)).unwrap_or_default();
        d.subs = r
            .subs
            .into_iter()
            .filter_map(|(f, q)| Some((f, mqtt::QoS::try_from(q).ok()?)))
            .collect();
        for (tid, name, known) in r.topics {
            d.topics.restore(tid, name, known);
        }
        let live = match r.state {
            StoredState::Offline => None,
            StoredState::Active => Some(DeviceState::Active),
            StoredState::Asleep(secs) => {
                d.sleep_duration = Duration::from_secs(u64::from(secs));
                Some(DeviceState::Asleep)
            }
        };
        if let Some(state) = live {
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
    pub fn restore_buffered(&mut self, ctx: &mut Ctx, n: u64, r: persist::BufferedRecord) {
        self.next_buffer_seq = self.next_buffer_seq.max(n + 1);
        let qos = to_sn_qos(mqtt::QoS::try_from(r.qos).unwrap_or(mqtt::QoS::AtMostOnce));
        // Already acknowledged upstream: the table limit must not lose it.
        let Some((topic, register)) = self.resolve_downlink(ctx, &r.topic, usize::MAX) else {
            return;
        };
        if let Some(topic_id) = register {
            self.queue.push_back(Down::Register {
                topic_id,
                name: r.topic.clone(),
            });
        }
        self.queue.push_back(Down::Publish {
            topic,
            qos,
            retain: r.retain,
            data: Bytes::from(r.data.0),
            ack: BrokerAck::None,
            reregistered: false,
            stored: Some(n),
        });
    }

    /// Puts back an uplink QoS 2 flow: the device's re-sent PUBLISH or PUBREL continues it
    /// under the same packet id.
    pub fn restore_uplink(&mut self, n: u64, r: UplinkRecord) {
        if matches!(r, UplinkRecord::Parked { .. }) {
            self.restore_parked(n, r);
            return;
        }
        if let UplinkRecord::Qos2 {
            msg_id,
            pkid,
            topic_id,
            released,
        } = r
        {
            self.next_pkid = self.next_pkid.max(pkid);
            self.up_by_msg.insert(msg_id, pkid);
            self.up.insert(
                pkid,
                UpFlow {
                    msg_id,
                    topic_id,
                    stage: if released {
                        UpStage::AwaitPubrel
                    } else {
                        UpStage::AwaitBroker
                    },
                    qos: codec::QoS::ExactlyOnce,
                    orphaned: true,
                },
            );
        }
    }

    // ---------------------------------------------------------------- sleep (§6.14)

    /// DISCONNECT with a Duration from a live device: Asleep, upstream session kept.
    pub fn on_sleep(&mut self, ctx: &mut Ctx, now: Instant, duration: u16) {
        self.sleep_duration = Duration::from_secs(u64::from(duration));
        self.go_to_sleep(ctx, now);
        ctx.transmit(&self.addr, Message::Disconnect { duration: None });
        info!(client_id = %self.client_id, duration, "device asleep");
    }

    fn go_to_sleep(&mut self, ctx: &mut Ctx, now: Instant) {
        self.set_state(ctx, DeviceState::Asleep);
        self.sleep_deadline = Some(now + with_tolerance(self.sleep_duration));
    }

    /// PINGREQ from an Asleep (or Awake) device: deliver the buffer, then PINGRESP.
    pub fn on_wake(&mut self, ctx: &mut Ctx, now: Instant) {
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
        if self.inflight.is_some() {
            self.retransmit(ctx, now);
            if let Some(f) = self.inflight.as_mut() {
                f.retries = 0;
            }
        }
    }

    /// Buffered octets, for the sleep buffer's byte bound.
    fn queued_bytes(&self) -> usize {
        self.queue
            .iter()
            .map(|d| match d {
                Down::Register { name, .. } => name.len() + 8,
                Down::Publish { data, .. } => data.len() + 8,
            })
            .sum()
    }

    // ---------------------------------------------------------------- connect

    /// A CONNECT from this device (new, repeated, or taking over). The caller has bound `addr`.
    pub fn on_connect(&mut self, ctx: &mut Ctx, now: Instant, c: &codec::Connect) {
        self.keep_alive = Duration::from_secs(u64::from(c.duration));
        self.last_heard = now;
        let sleeping = matches!(self.state, DeviceState::Asleep | DeviceState::Awake);
        if sleeping && !c.clean_session && !c.will && self.session.is_some() {
            // Leaving sleep for Active (spec §6.14): the upstream session, the topic ids and
            // the buffered messages carry on; the buffer is delivered now.
            self.set_state(ctx, DeviceState::Active);
            ctx.transmit(
                &self.addr,
                Message::Connack {
                    return_code: ReturnCode::Accepted,
                },
            );
            self.resume_inflight(ctx, now);
            self.pump(ctx, now);
            return;
        }
        if self.outage.resuming() && self.session.is_some() && !c.clean_session && !c.will {
            // The session is being resumed (after a restart or an outage) and the device asks
            // for the same session: answer with that session's CONNACK rather than open a
            // second connection with the same ClientId racing the first at the broker.
            self.outage.clear_resuming();
            self.topics.mark_all_unknown();
            self.set_state(ctx, DeviceState::AwaitBroker);
            self.stage_deadline = Some(now + ctx.settings.upstream_connect_timeout);
            return;
        }
        if let Some(old) = self.session.take() {
            // The device restarted its connection: end the old session without its will.
            ctx.close(old, true);
        }
        self.drop_will_update(ctx, true);
        self.reset_flows(ctx);
        self.clean_session = c.clean_session;
        if c.clean_session {
            // A clean session starts from nothing, in the store too.
            self.forget(ctx);
            self.queue.clear();
            self.topics.clear();
            self.subs.clear();
            self.will_topic = None;
            self.will_msg = Bytes::new();
        } else {
            // Ids stay stable but the device is told them again before use (spec §6.10).
            self.topics.mark_all_unknown();
        }
        if c.will {
            self.set_state(ctx, DeviceState::AwaitWillTopic);
            self.stage_deadline = Some(now + will_prompt_time(ctx));
            ctx.transmit(&self.addr, Message::WillTopicReq);
        } else {
            self.open_upstream(ctx, now);
        }
    }

    pub fn on_will_topic(&mut self, ctx: &mut Ctx, now: Instant, w: Option<WillTopic>) {
        if self.state != DeviceState::AwaitWillTopic {
            ctx.stats.wrong_state += 1;
            return;
        }
        match w {
            Some(w) if mqtt::valid_topic_name(&w.topic) => {
                self.will_topic = Some(w);
                self.set_state(ctx, DeviceState::AwaitWillMsg);
                self.stage_deadline = Some(now + will_prompt_time(ctx));
                ctx.transmit(&self.addr, Message::WillMsgReq);
            }
            Some(w) => {
                debug!(client_id = %self.client_id, topic = %w.topic, "invalid will topic");
                self.fail_connect(ctx, ReturnCode::NotSupported);
            }
            None => {
                // The empty WILLTOPIC deletes the will (spec §6.3); no message follows.
                self.will_topic = None;
                self.will_msg = Bytes::new();
                self.open_upstream(ctx, now);
            }
        }
    }

    pub fn on_will_msg(&mut self, ctx: &mut Ctx, now: Instant, msg: Bytes) {
        if self.state != DeviceState::AwaitWillMsg {
            ctx.stats.wrong_state += 1;
            return;
        }
        self.will_msg = msg;
        self.open_upstream(ctx, now);
    }

    fn last_will(&self) -> Option<mqtt::LastWill> {
        self.will_topic.as_ref().map(|w| mqtt::LastWill {
            topic: w.topic.clone(),
            message: self.will_msg.clone(),
            qos: to_mqtt_qos(w.qos),
            retain: w.retain,
        })
    }

    fn open_upstream(&mut self, ctx: &mut Ctx, now: Instant) {
        let connect = ctx.connect_packet(&self.client_id, self.clean_session, self.last_will());
        self.session = Some(ctx.open(Some(self.id), connect));
        self.set_state(ctx, DeviceState::AwaitBroker);
        self.stage_deadline = Some(now + ctx.settings.upstream_connect_timeout);
    }

    fn fail_connect(&mut self, ctx: &mut Ctx, rc: ReturnCode) {
        if let Some(s) = self.session.take() {
            ctx.close(s, true);
        }
        self.set_state(ctx, DeviceState::Disconnected);
        self.stage_deadline = None;
        ctx.transmit(&self.addr, Message::Connack { return_code: rc });
    }

    fn on_connack(&mut self, ctx: &mut Ctx, now: Instant, code: mqtt::ConnectReturnCode) {
        if code != mqtt::ConnectReturnCode::Accepted {
            info!(client_id = %self.client_id, ?code, "broker refused the device's session");
            let rc = match code {
                mqtt::ConnectReturnCode::ServerUnavailable => ReturnCode::Congestion,
                _ => ReturnCode::NotSupported,
            };
            self.fail_connect(ctx, rc);
            return;
        }
        self.set_state(ctx, DeviceState::Active);
        self.stage_deadline = None;
        self.last_heard = now;
        info!(client_id = %self.client_id, peer = %self.addr, "device connected");
        ctx.transmit(
            &self.addr,
            Message::Connack {
                return_code: ReturnCode::Accepted,
            },
        );
        self.pump(ctx, now);
    }

    /// Stage deadlines and keep-alive; retransmissions. Returns true when the device is lost.
    pub fn on_timeout(&mut self, ctx: &mut Ctx, now: Instant) -> bool {
        if self.outage.reconnect_at().is_some_and(|t| t <= now) {
            self.reconnect(ctx, now);
        }
        if let Some(d) = self.stage_deadline {
            if d <= now {
                self.stage_deadline = None;
                match self.state {
                    DeviceState::AwaitWillTopic | DeviceState::AwaitWillMsg => {
                        debug!(client_id = %self.client_id, "will prompting timed out");
                        self.set_state(ctx, DeviceState::Disconnected);
                    }
                    DeviceState::AwaitBroker => {
                        info!(client_id = %self.client_id, "broker did not accept in time");
                        self.fail_connect(ctx, ReturnCode::Congestion);
                    }
                    state
                        if state.is_live()
                            && self
                                .will_update
                                .as_ref()
                                .is_some_and(|w| w.new_session.is_some()) =>
                    {
                        info!(client_id = %self.client_id, "broker did not accept the replacement session in time");
                        self.finish_will_update(
                            ctx,
                            now,
                            mqtt::ConnectReturnCode::ServerUnavailable,
                        );
                        return !self.state.is_live();
                    }
                    _ => {}
                }
            }
        }
        if self.state == DeviceState::Active
            && !self.keep_alive.is_zero()
            && self.last_heard + with_tolerance(self.keep_alive) <= now
        {
            info!(client_id = %self.client_id, "keep-alive expired; device lost");
            self.lose(ctx);
            return true;
        }
        if self.state == DeviceState::Asleep && self.sleep_deadline.is_some_and(|d| d <= now) {
            info!(client_id = %self.client_id, "sleep duration expired; device lost");
            self.lose(ctx);
            return true;
        }
        let due = matches!(&self.inflight, Some(f) if f.sent_at + self.retry_interval <= now);
        if due && matches!(self.state, DeviceState::Active | DeviceState::Awake) {
            let retries = self.inflight.as_ref().map_or(0, |f| f.retries);
            if retries >= ctx.settings.max_retries {
                if self.state == DeviceState::Awake {
                    // The device went back to sleep without taking everything: keep the rest
                    // for its next PINGREQ rather than declaring it lost.
                    debug!(client_id = %self.client_id, "awake device stopped answering; asleep again");
                    self.go_to_sleep(ctx, now);
                    return false;
                }
                info!(client_id = %self.client_id, "no answer after N_RETRY; device lost");
                self.lose(ctx);
                return true;
            }
            self.retransmit(ctx, now);
        }
        false
    }

    /// The device is gone without DISCONNECT: drop the upstream session ungracefully so the
    /// broker publishes the will.
    pub fn lose(&mut self, ctx: &mut Ctx) {
        self.end_sessions(ctx, false, DeviceState::Lost);
        ctx.stats.devices_lost += 1;
    }

    /// Ends the upstream session(s) — with DISCONNECT when `graceful`, so no will — voids the
    /// flows tied to them and moves to `state`.
    fn end_sessions(&mut self, ctx: &mut Ctx, graceful: bool, state: DeviceState) {
        if let Some(s) = self.session.take() {
            ctx.close(s, graceful);
        }
        self.drop_will_update(ctx, graceful);
        self.reset_flows(ctx);
        self.set_state(ctx, state);
        self.stage_deadline = None;
    }

    /// DISCONNECT from the device: a clean MQTT DISCONNECT upstream (no will).
    pub fn on_disconnect(&mut self, ctx: &mut Ctx) {
        self.end_sessions(ctx, true, DeviceState::Disconnected);
        if self.clean_session {
            self.topics.clear();
            self.subs.clear();
        }
        ctx.transmit(&self.addr, Message::Disconnect { duration: None });
    }

    /// The broker closed the device's session (or could not be reached).
    pub fn on_upstream_closed(&mut self, ctx: &mut Ctx, now: Instant, session: SessionId) {
        if self.will_update.as_ref().and_then(|w| w.new_session) == Some(session)
            || self.session == Some(session)
        {
            match self.state {
                DeviceState::AwaitBroker => {
                    self.session = None;
                    info!(client_id = %self.client_id, "broker unreachable; CONNACK congestion");
                    self.fail_connect(ctx, ReturnCode::Congestion);
                }
                state if state.is_live() && self.persistent(ctx) => {
                    // A persistent session with a store rides the outage out: the device stays
                    // connected, its QoS 1/2 messages are parked, the session is resumed.
                    self.session = None;
                    self.drop_will_update(ctx, false);
                    self.reset_flows(ctx);
                    self.start_outage(now);
                }
                _ => {
                    self.session = None;
                    self.broker_ended_session(ctx);
                }
            }
        }
    }

    /// Abandons a will update in progress, closing its replacement session.
    fn drop_will_update(&mut self, ctx: &mut Ctx, graceful: bool) {
        if let Some(WillUpdate {
            new_session: Some(s),
            ..
        }) = self.will_update.take()
        {
            ctx.close(s, graceful);
        }
    }

    /// The broker ended the device's session and it cannot be resumed: tell the device.
    pub(super) fn broker_ended_session(&mut self, ctx: &mut Ctx) {
        info!(client_id = %self.client_id, "broker closed the session; telling the device");
        // `session` is already gone (the broker ended it); only a will update's is left.
        self.end_sessions(ctx, false, DeviceState::Disconnected);
        ctx.transmit(&self.addr, Message::Disconnect { duration: None });
    }

    /// The upstream session ends (reconnect, loss, disconnect): flows tied to it are void,
    /// except what a persistent session still owes: messages already acknowledged to the
    /// broker for the device, and uplink flows the broker may hold under their packet ids.
    fn reset_flows(&mut self, ctx: &mut Ctx) {
        if self.clean_session {
            self.up.clear();
            self.up_by_msg.clear();
            if ctx.persistent() {
                ctx.persist(PersistOp::DeletePrefix {
                    table: Table::Uplink,
                    prefix: persist::device_prefix(&self.client_id),
                });
            }
        } else {
            // QoS 1 may be repeated; only QoS 2 flows must keep their packet ids.
            self.up.retain(|_, f| f.qos == codec::QoS::ExactlyOnce);
            self.up_by_msg.retain(|_, pkid| self.up.contains_key(pkid));
            for f in self.up.values_mut() {
                f.orphaned = true;
            }
        }
        let owned = self
            .inflight
            .take()
            .map(|f| f.item)
            .into_iter()
            .chain(self.queue.drain(..))
            .filter(|d| {
                matches!(
                    d,
                    Down::Publish {
                        stored: Some(_),
                        ..
                    }
                )
            });
        self.queue = owned.collect();
        self.pending_subs.clear();
        self.held.clear();
        self.will_update = None;
    }

    // ---------------------------------------------------------------- upstream packets

    pub fn on_upstream(
        &mut self,
        ctx: &mut Ctx,
        now: Instant,
        session: SessionId,
        packet: mqtt::Packet,
    ) {
        let is_new = self.will_update.as_ref().and_then(|w| w.new_session) == Some(session);
        if is_new {
            if let mqtt::Packet::ConnAck { code, .. } = packet {
                self.finish_will_update(ctx, now, code);
                return;
            }
        }
        if !is_new && self.session != Some(session) {
            return;
        }
        match packet {
            mqtt::Packet::ConnAck { code, .. } if self.state == DeviceState::AwaitBroker => {
                self.on_connack(ctx, now, code)
            }
            mqtt::Packet::ConnAck { code, .. } => {
                // A session reopened after a restart or an outage: nothing to tell the device
                // unless the broker refused it for good.
                self.on_resumed(ctx, now, session, code);
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

    fn alloc_pkid(&mut self) -> u16 {
        loop {
            self.next_pkid = self.next_pkid.wrapping_add(1);
            if self.next_pkid != 0
                && !self.up.contains_key(&self.next_pkid)
                && !self.pending_subs.contains_key(&self.next_pkid)
                && !self.outage.uses_pkid(self.next_pkid)
            {
                return self.next_pkid;
            }
        }
    }

    fn upstream_busy(&self) -> usize {
        self.up.len() + self.pending_subs.len() + self.outage.in_flight()
    }

    /// Messages a device may send while Active. Returns false when the message is not one.
    pub fn on_active_message(&mut self, ctx: &mut Ctx, now: Instant, msg: Message) -> bool {
        if self
            .will_update
            .as_ref()
            .is_some_and(|w| w.new_session.is_some())
            && matches!(
                msg,
                Message::Publish(_)
                    | Message::Pubrel { .. }
                    | Message::Subscribe(_)
                    | Message::Unsubscribe(_)
            )
        {
            // The upstream session is being replaced; keep the order, answer after.
            if self.held.len() < ctx.settings.max_queued_per_device {
                self.held.push_back(msg);
            } else {
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
            Message::Pubrec { msg_id } => self.on_pubrec(ctx, now, msg_id),
            Message::Pubcomp { msg_id } => self.on_pubcomp(ctx, now, msg_id),
            Message::WillTopicUpd(w) => self.on_will_topic_upd(ctx, now, w),
            Message::WillMsgUpd { msg } => self.on_will_msg_upd(ctx, now, msg),
            _ => return false,
        }
        true
    }

    fn on_register(&mut self, ctx: &mut Ctx, r: Register) {
        let rc = if !mqtt::valid_topic_name(&r.topic_name) {
            Err(ReturnCode::NotSupported)
        } else {
            self.topics
                .get_or_insert(&r.topic_name, true, ctx.settings.max_topics_per_device)
                .map_err(|_| ReturnCode::Congestion)
        };
        let (topic_id, return_code) = match rc {
            Ok(id) => (id, ReturnCode::Accepted),
            Err(rc) => (0, rc),
        };
        if return_code == ReturnCode::Accepted {
            self.save(ctx);
        }
        ctx.transmit(
            &self.addr,
            Message::Regack(Regack {
                topic_id,
                msg_id: r.msg_id,
                return_code,
            }),
        );
    }

    /// The topic name of an uplink PUBLISH; answers PUBACK "invalid topic ID" when it has none.
    fn uplink_topic(&self, ctx: &mut Ctx, p: &Publish) -> Option<String> {
        match self.resolve_uplink(ctx, p.topic) {
            Ok(t) => Some(t),
            Err(_) => {
                debug!(client_id = %self.client_id, ?p.topic, "PUBLISH on unknown topic id");
                ctx.transmit(&self.addr, puback_for(p, ReturnCode::InvalidTopicId));
                None
            }
        }
    }

    /// The topic name of an uplink PUBLISH, or the id to report as invalid.
    fn resolve_uplink(&self, ctx: &Ctx, topic: TopicRef) -> Result<String, u16> {
        match topic {
            TopicRef::Id(id) => self.topics.name(id).map(str::to_owned).ok_or(id),
            TopicRef::Predefined(id) => ctx.predefined_by_id.get(&id).cloned().ok_or(id),
            TopicRef::Short(s) => short_name(s)
                .filter(|n| mqtt::valid_topic_name(n))
                .ok_or_else(|| u16::from_be_bytes(s)),
        }
    }

    fn on_publish(&mut self, ctx: &mut Ctx, p: Publish) {
        let session = match self.session {
            Some(s) if !self.outage.resuming() => s,
            // The broker is away or the session not yet accepted again.
            _ => {
                self.park(ctx, p);
                return;
            }
        };
        let Some(topic) = self.uplink_topic(ctx, &p) else {
            return;
        };
        let topic_id = puback_topic_id(&p);
        let reject = |ctx: &mut Ctx, addr: &DeviceAddr, rc: ReturnCode| {
            ctx.transmit(addr, puback_for(&p, rc));
        };
        match p.qos {
            codec::QoS::MinusOne | codec::QoS::AtMostOnce => {
                ctx.stats.uplink_publishes += 1;
                ctx.send(
                    session,
                    mqtt::Packet::Publish(qos0_publish(topic, p.retain, p.data)),
                );
            }
            codec::QoS::AtLeastOnce | codec::QoS::ExactlyOnce => {
                if let Some(&pkid) = self.up_by_msg.get(&p.msg_id) {
                    // A re-send of a flow we already carry: never forward it twice.
                    if let Some(f) = self.up.get_mut(&pkid) {
                        if p.qos == codec::QoS::ExactlyOnce && f.stage == UpStage::AwaitPubrel {
                            ctx.transmit(&self.addr, Message::Pubrec { msg_id: p.msg_id });
                        } else if f.orphaned && f.stage == UpStage::AwaitBroker {
                            f.orphaned = false;
                            ctx.send(
                                session,
                                mqtt::Packet::Publish(mqtt::Publish {
                                    dup: true,
                                    qos: to_mqtt_qos(p.qos),
                                    retain: p.retain,
                                    topic,
                                    packet_id: Some(pkid),
                                    payload: p.data,
                                }),
                            );
                        }
                    }
                    return;
                }
                if self.upstream_busy() >= ctx.settings.max_queued_per_device {
                    // Flows orphaned by an old session give way to new ones.
                    let orphan = self.up.iter().find(|(_, f)| f.orphaned).map(|(k, _)| *k);
                    match orphan {
                        Some(pkid) => {
                            self.finish_up(ctx, pkid);
                        }
                        None => {
                            reject(ctx, &self.addr, ReturnCode::Congestion);
                            return;
                        }
                    }
                }
                let pkid = self.alloc_pkid();
                self.up.insert(
                    pkid,
                    UpFlow {
                        msg_id: p.msg_id,
                        topic_id,
                        stage: UpStage::AwaitBroker,
                        qos: p.qos,
                        orphaned: false,
                    },
                );
                self.up_by_msg.insert(p.msg_id, pkid);
                ctx.stats.uplink_publishes += 1;
                let publish = mqtt::Packet::Publish(mqtt::Publish {
                    dup: false,
                    qos: to_mqtt_qos(p.qos),
                    retain: p.retain,
                    topic,
                    packet_id: Some(pkid),
                    payload: p.data,
                });
                if p.qos == codec::QoS::ExactlyOnce && self.persistent(ctx) {
                    // Exactly once across a restart: the MsgId -> packet id map is durable
                    // before the broker can see the message.
                    self.save_qos2(ctx, pkid);
                    ctx.after_persist(Output::Send {
                        session,
                        packet: publish,
                    });
                } else {
                    ctx.send(session, publish);
                }
            }
        }
    }

    fn on_pubrel(&mut self, ctx: &mut Ctx, msg_id: u16) {
        if self.outage.release(msg_id) {
            ctx.transmit(&self.addr, Message::Pubcomp { msg_id });
            return;
        }
        let Some(session) = self.session else { return };
        match self.up_by_msg.get(&msg_id).copied() {
            Some(pkid) => {
                if let Some(f) = self.up.get_mut(&pkid) {
                    if f.stage != UpStage::AwaitBroker {
                        f.stage = UpStage::AwaitPubcomp;
                        ctx.send(session, mqtt::Packet::PubRel { packet_id: pkid });
                    }
                }
            }
            // Already completed: the device missed our PUBCOMP.
            None => {
                ctx.transmit(&self.addr, Message::Pubcomp { msg_id });
            }
        }
    }

    fn finish_up(&mut self, ctx: &mut Ctx, pkid: u16) -> Option<UpFlow> {
        let f = self.up.remove(&pkid)?;
        self.up_by_msg.remove(&f.msg_id);
        if f.qos == codec::QoS::ExactlyOnce && self.persistent(ctx) {
            ctx.persist(PersistOp::Delete {
                table: Table::Uplink,
                key: persist::numbered_key(&self.client_id, u64::from(pkid)),
            });
        }
        Some(f)
    }

    fn save_qos2(&self, ctx: &mut Ctx, pkid: u16) {
        let Some(f) = self.up.get(&pkid) else { return };
        let record = UplinkRecord::Qos2 {
            msg_id: f.msg_id,
            pkid,
            topic_id: f.topic_id,
            released: f.stage != UpStage::AwaitBroker,
        };
        ctx.persist(persist::put(
            Table::Uplink,
            persist::numbered_key(&self.client_id, u64::from(pkid)),
            &record,
        ));
    }

    fn on_broker_puback(&mut self, ctx: &mut Ctx, now: Instant, pkid: u16) {
        if self.parked_acked(ctx, pkid) {
            return;
        }
        if let Some(f) = self.finish_up(ctx, pkid) {
            ctx.transmit(
                &self.addr,
                Message::Puback(Puback {
                    topic_id: f.topic_id,
                    msg_id: f.msg_id,
                    return_code: ReturnCode::Accepted,
                }),
            );
        }
        self.try_will_update(ctx, now);
    }

    fn on_broker_pubrec(&mut self, ctx: &mut Ctx, pkid: u16) {
        if self.parked_released(ctx, pkid) {
            return;
        }
        let Some(f) = self.up.get_mut(&pkid) else {
            return;
        };
        let msg_id = f.msg_id;
        if f.stage == UpStage::AwaitBroker {
            f.stage = UpStage::AwaitPubrel;
            if self.persistent(ctx) {
                // PUBREC promises the device it will not be delivered twice: durable first.
                self.save_qos2(ctx, pkid);
                if let Some(frame) = ctx.encode(&self.addr, Message::Pubrec { msg_id }) {
                    ctx.after_persist(Output::Transmit {
                        to: self.addr.clone(),
                        frame,
                    });
                }
                return;
            }
        }
        ctx.transmit(&self.addr, Message::Pubrec { msg_id });
    }

    fn on_broker_pubcomp(&mut self, ctx: &mut Ctx, now: Instant, pkid: u16) {
        if self.parked_acked(ctx, pkid) {
            return;
        }
        if let Some(f) = self.finish_up(ctx, pkid) {
            ctx.transmit(&self.addr, Message::Pubcomp { msg_id: f.msg_id });
        }
        self.try_will_update(ctx, now);
    }

    fn on_subscribe(&mut self, ctx: &mut Ctx, s: Subscribe) {
        let Some(session) = self.session else { return };
        let nack = |ctx: &mut Ctx, addr: &DeviceAddr, topic_id: u16, rc: ReturnCode| {
            ctx.transmit(
                addr,
                Message::Suback(Suback {
                    qos: codec::QoS::AtMostOnce,
                    topic_id,
                    msg_id: s.msg_id,
                    return_code: rc,
                }),
            );
        };
        if self
            .pending_subs
            .values()
            .any(|p| matches!(p, PendingSub::Subscribe { msg_id, .. } if *msg_id == s.msg_id))
        {
            return; // a re-send; the SUBACK is on its way
        }
        let (filter, topic_id) = match &s.topic {
            TopicFilter::Name(name) => {
                if !mqtt::valid_topic_filter(name) {
                    nack(ctx, &self.addr, 0, ReturnCode::NotSupported);
                    return;
                }
                if mqtt::valid_topic_name(name) {
                    match self
                        .topics
                        .get_or_insert(name, true, ctx.settings.max_topics_per_device)
                    {
                        Ok(id) => (name.clone(), id),
                        Err(_) => {
                            nack(ctx, &self.addr, 0, ReturnCode::Congestion);
                            return;
                        }
                    }
                } else {
                    (name.clone(), 0) // wildcard: ids come later by REGISTER
                }
            }
            TopicFilter::Predefined(id) => match ctx.predefined_by_id.get(id) {
                Some(name) => (name.clone(), *id),
                None => {
                    nack(ctx, &self.addr, *id, ReturnCode::InvalidTopicId);
                    return;
                }
            },
            TopicFilter::Short(s2) => match short_name(*s2).filter(|n| mqtt::valid_topic_filter(n))
            {
                Some(n) => (n, 0),
                None => {
                    nack(ctx, &self.addr, 0, ReturnCode::NotSupported);
                    return;
                }
            },
        };
        if self.upstream_busy() >= ctx.settings.max_queued_per_device {
            nack(ctx, &self.addr, 0, ReturnCode::Congestion);
            return;
        }
        let pkid = self.alloc_pkid();
        self.pending_subs.insert(
            pkid,
            PendingSub::Subscribe {
                msg_id: s.msg_id,
                topic_id,
                filter: filter.clone(),
            },
        );
        ctx.send(
            session,
            mqtt::Packet::Subscribe {
                packet_id: pkid,
                filters: vec![(filter, to_mqtt_qos(s.qos))],
            },
        );
    }

    fn on_broker_suback(
        &mut self,
        ctx: &mut Ctx,
        now: Instant,
        pkid: u16,
        codes: &[mqtt::SubackCode],
    ) {
        let Some(pending) = self.pending_subs.remove(&pkid) else {
            return;
        };
        self.release_will_responses(ctx);
        if let PendingSub::Subscribe {
            msg_id,
            topic_id,
            filter,
        } = pending
        {
            let (qos, topic_id, return_code) = match codes.first() {
                Some(mqtt::SubackCode::Granted(q)) => {
                    match self.subs.iter_mut().find(|(f, _)| *f == filter) {
                        Some(entry) => entry.1 = *q,
                        None => self.subs.push((filter, *q)),
                    }
                    self.save(ctx);
                    (to_sn_qos(*q), topic_id, ReturnCode::Accepted)
                }
                _ => (codec::QoS::AtMostOnce, 0, ReturnCode::NotSupported),
            };
            ctx.transmit(
                &self.addr,
                Message::Suback(Suback {
                    qos,
                    topic_id,
                    msg_id,
                    return_code,
                }),
            );
        }
        self.try_will_update(ctx, now);
    }

    fn on_unsubscribe(&mut self, ctx: &mut Ctx, u: Unsubscribe) {
        let Some(session) = self.session else { return };
        let filter = match &u.topic {
            TopicFilter::Name(n) => Some(n.clone()),
            TopicFilter::Predefined(id) => ctx.predefined_by_id.get(id).cloned(),
            TopicFilter::Short(s) => short_name(*s),
        };
        let Some(filter) = filter.filter(|f| mqtt::valid_topic_filter(f)) else {
            // Nothing to unsubscribe from; the spec gives UNSUBACK no return code.
            ctx.transmit(&self.addr, Message::Unsuback { msg_id: u.msg_id });
            return;
        };
        if self.upstream_busy() >= ctx.settings.max_queued_per_device {
            return; // the device will re-send
        }
        let pkid = self.alloc_pkid();
        self.pending_subs.insert(
            pkid,
            PendingSub::Unsubscribe {
                msg_id: u.msg_id,
                filter: filter.clone(),
            },
        );
        ctx.send(
            session,
            mqtt::Packet::Unsubscribe {
                packet_id: pkid,
                filters: vec![filter],
            },
        );
    }

    fn on_broker_unsuback(&mut self, ctx: &mut Ctx, now: Instant, pkid: u16) {
        if let Some(PendingSub::Unsubscribe { msg_id, filter }) = self.pending_subs.remove(&pkid) {
            self.subs.retain(|(f, _)| *f != filter);
            self.save(ctx);
            ctx.transmit(&self.addr, Message::Unsuback { msg_id });
        }
        self.release_will_responses(ctx);
        self.try_will_update(ctx, now);
    }

    // ---------------------------------------------------------------- will update (§6.4)

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
            Some(w) => self.will_topic = Some(w),
            None => {
                // An empty WILLTOPICUPD deletes topic and message (spec §6.4).
                self.will_topic = None;
                self.will_msg = Bytes::new();
            }
        }
        self.will_update
            .get_or_insert_with(Default::default)
            .respond_topic = true;
        self.request_will_update(ctx, now);
    }

    fn on_will_msg_upd(&mut self, ctx: &mut Ctx, now: Instant, msg: Bytes) {
        self.will_msg = msg;
        self.will_update
            .get_or_insert_with(Default::default)
            .respond_msg = true;
        self.request_will_update(ctx, now);
    }

    fn request_will_update(&mut self, ctx: &mut Ctx, now: Instant) {
        if let Some(w) = self.will_update.as_mut() {
            if w.new_session.is_some() {
                w.again = true;
                return;
            }
        }
        self.try_will_update(ctx, now);
    }

    /// Replaces the upstream session to carry the new will, once no QoS flow is open on the
    /// old one (so nothing in flight is lost or doubled).
    fn try_will_update(&mut self, ctx: &mut Ctx, now: Instant) {
        let idle =
            self.up.is_empty() && self.pending_subs.is_empty() && !self.broker_acks_outstanding();
        let Some(w) = self.will_update.as_mut() else {
            return;
        };
        if w.new_session.is_some() || !idle || !self.state.is_live() {
            return;
        }
        if let Some(old) = self.session.take() {
            ctx.close(old, true);
        }
        let connect = ctx.connect_packet(&self.client_id, self.clean_session, self.last_will());
        let s = ctx.open(Some(self.id), connect);
        if let Some(w) = self.will_update.as_mut() {
            w.new_session = Some(s);
        }
        // Bounded like the first CONNECT: without it a silent broker leaves the device
        // Active with no upstream session for as long as it keeps pinging.
        self.stage_deadline = Some(now + ctx.settings.upstream_connect_timeout);
    }

    fn finish_will_update(&mut self, ctx: &mut Ctx, now: Instant, code: mqtt::ConnectReturnCode) {
        let Some(w) = self.will_update.take() else {
            return;
        };
        let Some(s) = w.new_session else { return };
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
        self.stage_deadline = None;
        self.save(ctx);
        if self.clean_session {
            // A clean session ended with the old connection: subscribe again.
            for (filter, qos) in self.subs.clone() {
                let pkid = self.alloc_pkid();
                self.pending_subs.insert(pkid, PendingSub::Internal);
                ctx.send(
                    s,
                    mqtt::Packet::Subscribe {
                        packet_id: pkid,
                        filters: vec![(filter, qos)],
                    },
                );
            }
        }
        // The device hears the update applied once the new session carries its subscriptions
        // again, so nothing published after the response can miss it.
        let (t, m) = self.will_resp.unwrap_or_default();
        self.will_resp = Some((t || w.respond_topic, m || w.respond_msg));
        self.release_will_responses(ctx);
        let held: Vec<Message> = self.held.drain(..).collect();
        for m in held {
            self.on_active_message(ctx, now, m);
        }
        if w.again {
            self.will_update = Some(WillUpdate::default());
            self.try_will_update(ctx, now);
        }
        self.pump(ctx, now);
    }

    /// Sends the WILLTOPICRESP / WILLMSGRESP owed once no re-subscription is outstanding.
    fn release_will_responses(&mut self, ctx: &mut Ctx) {
        if self
            .pending_subs
            .values()
            .any(|p| matches!(p, PendingSub::Internal))
        {
            return;
        }
        let Some((topic, msg)) = self.will_resp.take() else {
            return;
        };
        let accepted = ReturnCode::Accepted;
        if topic {
            ctx.transmit(
                &self.addr,
                Message::WillTopicResp {
                    return_code: accepted,
                },
            );
        }
        if msg {
            ctx.transmit(
                &self.addr,
                Message::WillMsgResp {
                    return_code: accepted,
                },
            );
        }
    }

    fn broker_acks_outstanding(&self) -> bool {
        let owes = |d: &Down| matches!(d, Down::Publish { ack, .. } if *ack != BrokerAck::None);
        self.queue.iter().any(owes) || self.inflight.as_ref().is_some_and(|f| owes(&f.item))
    }

    // ---------------------------------------------------------------- downlink

    fn next_msg_id(&mut self) -> u16 {
        self.next_msg_id = match self.next_msg_id {
            0xFFFF => 1,
            n => n + 1,
        };
        self.next_msg_id
    }

    fn ack_broker(&self, ctx: &mut Ctx, ack: BrokerAck) {
        let Some(session) = self.session else { return };
        match ack {
            BrokerAck::None => {}
            BrokerAck::PubAck(packet_id) => ctx.send(session, mqtt::Packet::PubAck { packet_id }),
            BrokerAck::PubRec(packet_id) => ctx.send(session, mqtt::Packet::PubRec { packet_id }),
        }
    }

    /// The device has the message, or never will: owe the broker nothing more and forget the
    /// durable copy.
    fn release(&self, ctx: &mut Ctx, item: &Down) {
        if let Down::Publish { ack, stored, .. } = item {
            self.ack_broker(ctx, *ack);
            if let Some(n) = stored {
                ctx.persist(PersistOp::Delete {
                    table: Table::Buffer,
                    key: persist::numbered_key(&self.client_id, *n),
                });
            }
        }
    }

    fn drop_down(&self, ctx: &mut Ctx, item: Down) {
        ctx.stats.downlink_dropped += 1;
        // Acknowledged so the broker's in-flight window does not stall on a message the device
        // can never take.
        self.release(ctx, &item);
    }

    /// Whether a new downlink message (plus a REGISTER it may need) fits. While the device
    /// sleeps the sleep-buffer bounds apply, and QoS 0 is dropped oldest first (or not kept at
    /// all, by config). A QoS 1/2 message that does not fit is left unacknowledged at the
    /// broker, which keeps it and redelivers it when the session resumes: nothing the gateway
    /// acknowledged is ever dropped.
    fn make_room(
        &mut self,
        ctx: &mut Ctx,
        item: &Down,
        topic_len: usize,
        registers: usize,
    ) -> Room {
        let Down::Publish { qos, data, ack, .. } = item else {
            return Room::Fits;
        };
        let qos0 = matches!(qos, codec::QoS::AtMostOnce | codec::QoS::MinusOne);
        let sleeping = matches!(self.state, DeviceState::Asleep | DeviceState::Awake);
        let full = if sleeping {
            if qos0 && !ctx.settings.sleep_keep_qos0 && self.state == DeviceState::Asleep {
                ctx.stats.sleep_buffer_dropped += 1;
                return Room::Drop;
            }
            let count = 1 + registers;
            let bytes = data.len() + 8 + registers * (topic_len + 8);
            let fits = |d: &Device| {
                d.queue.len() + count <= ctx.settings.sleep_buffer_messages
                    && d.queued_bytes() + bytes <= ctx.settings.sleep_buffer_bytes
            };
            while !fits(self) {
                let oldest_qos0 = self.queue.iter().position(|d| {
                    matches!(
                        d,
                        Down::Publish {
                            qos: codec::QoS::AtMostOnce | codec::QoS::MinusOne,
                            ..
                        }
                    )
                });
                let Some(i) = oldest_qos0 else { break };
                self.queue.remove(i);
                ctx.stats.sleep_buffer_dropped += 1;
            }
            !fits(self)
        } else {
            self.queue.len() + registers >= ctx.settings.max_queued_per_device
        };
        if !full {
            return Room::Fits;
        }
        if sleeping {
            ctx.stats.sleep_buffer_dropped += 1;
        }
        if *ack == BrokerAck::None || self.clean_session {
            // A clean session cannot be resumed to get it again: drop it (counted).
            Room::Drop
        } else {
            Room::LeaveWithBroker
        }
    }

    /// Messages left unacknowledged at the broker are only re-sent when the session resumes
    /// (MQTT 3.1.1 §4.4), so once there is room again the session is resumed: the broker
    /// re-delivers them with DUP (the same switch a will update uses).
    fn resync_left_with_broker(&mut self, ctx: &mut Ctx, now: Instant) {
        if self.left_with_broker == 0 || !self.queue.is_empty() || self.inflight.is_some() {
            return;
        }
        info!(client_id = %self.client_id, left = self.left_with_broker, "resuming the session to get back messages left with the broker");
        self.left_with_broker = 0;
        self.will_update.get_or_insert_with(Default::default);
        self.try_will_update(ctx, now);
    }

    /// The QoS the device gets: the publication's, capped by the best matching grant.
    fn granted(&self, topic: &str, qos: mqtt::QoS) -> mqtt::QoS {
        self.subs
            .iter()
            .filter(|(f, _)| mqtt::topic_matches(f, topic))
            .map(|(_, q)| *q)
            .max()
            .map_or(qos, |g| g.min(qos))
    }

    fn register_pending(&self, topic_id: u16) -> bool {
        let is_reg = |d: &Down| matches!(d, Down::Register { topic_id: t, .. } if *t == topic_id);
        self.queue.iter().any(is_reg) || self.inflight.as_ref().is_some_and(|f| is_reg(&f.item))
    }

    fn on_broker_publish(&mut self, ctx: &mut Ctx, now: Instant, p: mqtt::Publish) {
        let qos = self.granted(&p.topic, p.qos);
        let ack = match (p.qos, p.packet_id) {
            (mqtt::QoS::AtLeastOnce, Some(id)) => BrokerAck::PubAck(id),
            (mqtt::QoS::ExactlyOnce, Some(id)) => BrokerAck::PubRec(id),
            _ => BrokerAck::None,
        };
        if ack != BrokerAck::None && self.already_queued(ack) {
            return; // the broker re-sent a message we still hold
        }
        let limit = ctx.settings.max_topics_per_device;
        let (topic, register) = match self.resolve_downlink(ctx, &p.topic, limit) {
            Some((t, r)) => (Some(t), r),
            None => (None, None),
        };
        let publish = Down::Publish {
            topic: topic.unwrap_or(TopicRef::Id(0)),
            qos: to_sn_qos(qos),
            retain: p.retain,
            data: p.payload,
            ack,
            reregistered: false,
            stored: None,
        };
        if topic.is_none() {
            debug!(client_id = %self.client_id, topic = %p.topic, "topic table full; dropping");
            self.drop_down(ctx, publish);
            return;
        }
        let extra = usize::from(register.is_some());
        match self.make_room(ctx, &publish, p.topic.len(), extra) {
            Room::Fits => {}
            Room::Drop => {
                debug!(client_id = %self.client_id, topic = %p.topic, state = ?self.state, "no room for a QoS 0 message to the device; dropped");
                self.drop_down(ctx, publish);
                return;
            }
            Room::LeaveWithBroker => {
                ctx.stats.downlink_dropped += 1;
                self.left_with_broker += 1;
                debug!(client_id = %self.client_id, topic = %p.topic, state = ?self.state, "no room; left unacknowledged at the broker");
                return;
            }
        }
        let publish = self.store_for_sleeper(ctx, publish, &p.topic);
        if let Some(topic_id) = register {
            self.queue.push_back(Down::Register {
                topic_id,
                name: p.topic,
            });
        }
        self.queue.push_back(publish);
        self.pump(ctx, now);
    }

    /// With a store, a sleeping device's QoS 1/2 message is written down and acknowledged to
    /// the broker once durable (so the broker's in-flight window does not cap the buffer).
    fn store_for_sleeper(&mut self, ctx: &mut Ctx, mut item: Down, topic: &str) -> Down {
        let sleeping = matches!(self.state, DeviceState::Asleep | DeviceState::Awake);
        let (Some(session), true) = (self.session, sleeping && self.persistent(ctx)) else {
            return item;
        };
        if let Down::Publish {
            ack,
            stored,
            qos,
            retain,
            data,
            ..
        } = &mut item
        {
            let packet = match *ack {
                BrokerAck::None => return item,
                BrokerAck::PubAck(packet_id) => mqtt::Packet::PubAck { packet_id },
                BrokerAck::PubRec(packet_id) => mqtt::Packet::PubRec { packet_id },
            };
            let n = self.next_buffer_seq;
            self.next_buffer_seq += 1;
            let record = persist::BufferedRecord {
                topic: topic.to_owned(),
                qos: to_mqtt_qos(*qos) as u8,
                retain: *retain,
                data: persist::Hex(data.to_vec()),
            };
            ctx.persist(persist::put(
                Table::Buffer,
                persist::numbered_key(&self.client_id, n),
                &record,
            ));
            ctx.after_persist(Output::Send { session, packet });
            *ack = BrokerAck::None;
            *stored = Some(n);
        }
        item
    }

    /// How a downlink topic is named to the device: its table id, a predefined id or a short
    /// name; and the id to REGISTER first when the device does not know it yet. None when the
    /// table is full.
    fn resolve_downlink(
        &mut self,
        ctx: &Ctx,
        topic: &str,
        table_limit: usize,
    ) -> Option<(TopicRef, Option<u16>)> {
        if let Some((id, known)) = self.topics.id_of(topic) {
            let register = (!known && !self.register_pending(id)).then_some(id);
            return Some((TopicRef::Id(id), register));
        }
        if let Some(id) = ctx.predefined_by_name.get(topic) {
            return Some((TopicRef::Predefined(*id), None));
        }
        if let Ok(s) = <[u8; 2]>::try_from(topic.as_bytes()) {
            return Some((TopicRef::Short(s), None));
        }
        let id = self.topics.get_or_insert(topic, false, table_limit).ok()?;
        Some((TopicRef::Id(id), Some(id)))
    }

    fn already_queued(&self, ack: BrokerAck) -> bool {
        let same = |d: &Down| matches!(d, Down::Publish { ack: a, .. } if *a == ack);
        self.queue.iter().any(same) || self.inflight.as_ref().is_some_and(|f| same(&f.item))
    }

    /// Sends queued items while nothing is in flight (one QoS 1/2 PUBLISH or REGISTER at a time).
    pub fn pump(&mut self, ctx: &mut Ctx, now: Instant) {
        if !matches!(self.state, DeviceState::Active | DeviceState::Awake) {
            return;
        }
        while self.inflight.is_none() {
            let Some(item) = self.queue.pop_front() else {
                break;
            };
            match item {
                Down::Register { topic_id, ref name } => {
                    let msg_id = self.next_msg_id();
                    let msg = Message::Register(Register {
                        topic_id,
                        msg_id,
                        topic_name: name.clone(),
                    });
                    if !ctx.transmit(&self.addr, msg) {
                        // Too long for the device's link: abort its publishes silently (§6.10).
                        self.topics.remove(topic_id);
                        self.drop_topic(ctx, topic_id);
                        continue;
                    }
                    self.inflight = Some(Inflight {
                        item,
                        msg_id,
                        stage: DownStage::Regack,
                        sent_at: now,
                        retries: 0,
                    });
                }
                Down::Publish { qos, .. } => {
                    let msg_id = match qos {
                        codec::QoS::AtLeastOnce | codec::QoS::ExactlyOnce => self.next_msg_id(),
                        _ => 0,
                    };
                    let Some(frame) = ctx.encode(&self.addr, publish_message(&item, msg_id, false))
                    else {
                        self.drop_down(ctx, item);
                        continue;
                    };
                    ctx.transmit_frame(&self.addr, frame);
                    ctx.stats.downlink_publishes += 1;
                    match qos {
                        codec::QoS::AtLeastOnce | codec::QoS::ExactlyOnce => {
                            let stage = if qos == codec::QoS::AtLeastOnce {
                                DownStage::Puback
                            } else {
                                DownStage::Pubrec
                            };
                            self.inflight = Some(Inflight {
                                item,
                                msg_id,
                                stage,
                                sent_at: now,
                                retries: 0,
                            });
                        }
                        _ => self.release(ctx, &item),
                    }
                }
            }
        }
        self.resync_left_with_broker(ctx, now);
        if self.state == DeviceState::Awake && self.inflight.is_none() && self.queue.is_empty() {
            // Everything buffered is delivered: PINGRESP closes the transfer, never earlier.
            ctx.transmit(&self.addr, Message::PingResp);
            self.go_to_sleep(ctx, now);
        }
        self.try_will_update(ctx, now);
    }

    fn retransmit(&mut self, ctx: &mut Ctx, now: Instant) {
        let Some(f) = self.inflight.as_mut() else {
            return;
        };
        f.retries += 1;
        f.sent_at = now;
        ctx.stats.retransmissions += 1;
        let msg = match (&f.item, f.stage) {
            (_, DownStage::Pubcomp) => Message::Pubrel { msg_id: f.msg_id },
            (Down::Register { topic_id, name }, _) => Message::Register(Register {
                topic_id: *topic_id,
                msg_id: f.msg_id,
                topic_name: name.clone(),
            }),
            (item @ Down::Publish { .. }, _) => publish_message(item, f.msg_id, true),
        };
        ctx.transmit(&self.addr, msg);
    }

    /// Drops queued publishes on `topic_id` (the device rejected or cannot take the topic).
    fn drop_topic(&mut self, ctx: &mut Ctx, topic_id: u16) {
        let mut kept = VecDeque::with_capacity(self.queue.len());
        let queued: Vec<Down> = self.queue.drain(..).collect();
        for d in queued {
            if matches!(&d, Down::Publish { topic: TopicRef::Id(t), .. } if *t == topic_id) {
                self.drop_down(ctx, d);
            } else {
                kept.push_back(d);
            }
        }
        self.queue = kept;
    }

    fn inflight_matches(&self, msg_id: u16, stage: DownStage) -> bool {
        self.inflight
            .as_ref()
            .is_some_and(|f| f.msg_id == msg_id && f.stage == stage)
    }

    fn on_regack(&mut self, ctx: &mut Ctx, now: Instant, r: Regack) {
        if !self.inflight_matches(r.msg_id, DownStage::Regack) {
            ctx.stats.wrong_state += 1;
            return;
        }
        let Some(Inflight {
            item: Down::Register { topic_id, name },
            ..
        }) = self.inflight.take()
        else {
            return;
        };
        if r.return_code == ReturnCode::Accepted {
            self.topics.mark_known(topic_id);
            self.save(ctx);
        } else {
            // A rejected REGISTER is an unsubscribe from that name (spec §6.10).
            info!(client_id = %self.client_id, topic = %name, rc = ?r.return_code, "device rejected REGISTER");
            self.topics.remove(topic_id);
            self.save(ctx);
            self.drop_topic(ctx, topic_id);
            if let Some(session) = self.session {
                if mqtt::valid_topic_filter(&name)
                    && self.upstream_busy() < ctx.settings.max_queued_per_device
                {
                    let pkid = self.alloc_pkid();
                    self.pending_subs.insert(pkid, PendingSub::Internal);
                    ctx.send(
                        session,
                        mqtt::Packet::Unsubscribe {
                            packet_id: pkid,
                            filters: vec![name],
                        },
                    );
                }
            }
        }
        self.pump(ctx, now);
    }

    fn on_puback(&mut self, ctx: &mut Ctx, now: Instant, p: Puback) {
        if !self.inflight_matches(p.msg_id, DownStage::Puback) {
            if p.return_code == ReturnCode::InvalidTopicId {
                // The device lost a normal id (e.g. on a QoS 0 PUBLISH): register it again next time.
                self.topics.mark_unknown(p.topic_id);
            } else {
                ctx.stats.wrong_state += 1;
            }
            return;
        }
        let Some(f) = self.inflight.take() else {
            return;
        };
        match p.return_code {
            ReturnCode::Accepted => self.release(ctx, &f.item),
            ReturnCode::Congestion => {
                // Keep it in flight; it goes again after T_RETRY.
                self.inflight = Some(Inflight { sent_at: now, ..f });
                return;
            }
            _ => self.on_rejected_publish(ctx, f.item),
        }
        self.pump(ctx, now);
    }

    /// PUBACK "invalid topic id" for a downlink PUBLISH: re-register a normal id once, else drop.
    fn on_rejected_publish(&mut self, ctx: &mut Ctx, mut item: Down) {
        if let Down::Publish {
            topic: TopicRef::Id(id),
            reregistered: reregistered @ false,
            ..
        } = &mut item
        {
            if let Some(name) = self.topics.name(*id).map(str::to_owned) {
                *reregistered = true;
                let topic_id = *id;
                self.queue.push_front(item);
                self.queue.push_front(Down::Register { topic_id, name });
                return;
            }
        }
        self.drop_down(ctx, item);
    }

    fn on_pubrec(&mut self, ctx: &mut Ctx, now: Instant, msg_id: u16) {
        if self.inflight_matches(msg_id, DownStage::Pubcomp) {
            // Our PUBREL was lost.
            ctx.transmit(&self.addr, Message::Pubrel { msg_id });
            return;
        }
        if !self.inflight_matches(msg_id, DownStage::Pubrec) {
            ctx.stats.wrong_state += 1;
            return;
        }
        if let Some(mut f) = self.inflight.take() {
            // The device has the message: the broker may forget it.
            self.release(ctx, &f.item);
            if let Down::Publish { ack, stored, .. } = &mut f.item {
                *ack = BrokerAck::None;
                *stored = None;
            }
            f.stage = DownStage::Pubcomp;
            f.sent_at = now;
            f.retries = 0;
            self.inflight = Some(f);
        }
        ctx.transmit(&self.addr, Message::Pubrel { msg_id });
    }

    fn on_pubcomp(&mut self, ctx: &mut Ctx, now: Instant, msg_id: u16) {
        if !self.inflight_matches(msg_id, DownStage::Pubcomp) {
            ctx.stats.wrong_state += 1;
            return;
        }
        self.inflight = None;
        self.pump(ctx, now);
    }
}

/// How long a will prompt waits for the device: what its own retries (N_RETRY × T_RETRY) allow.
fn will_prompt_time(ctx: &Ctx) -> Duration {
    ctx.settings.retry_interval * (ctx.settings.max_retries + 1)
}

/// The TopicId a PUBACK for `p` carries: the id, or the short name's two octets.
fn puback_topic_id(p: &Publish) -> u16 {
    match p.topic {
        TopicRef::Id(i) | TopicRef::Predefined(i) => i,
        TopicRef::Short(s) => u16::from_be_bytes(s),
    }
}

/// PUBACK for the device's `p` with `rc`.
pub(super) fn puback_for(p: &Publish, rc: ReturnCode) -> Message {
    Message::Puback(Puback {
        topic_id: puback_topic_id(p),
        msg_id: p.msg_id,
        return_code: rc,
    })
}

/// An MQTT QoS 0 PUBLISH (device QoS 0 and -1 alike).
pub(crate) fn qos0_publish(topic: String, retain: bool, payload: Bytes) -> mqtt::Publish {
    mqtt::Publish {
        dup: false,
        qos: mqtt::QoS::AtMostOnce,
        retain,
        topic,
        packet_id: None,
        payload,
    }
}

fn publish_message(item: &Down, msg_id: u16, dup: bool) -> Message {
    match item {
        Down::Publish {
            topic,
            qos,
            retain,
            data,
            ..
        } => Message::Publish(Publish {
            dup,
            qos: *qos,
            retain: *retain,
            topic: *topic,
            msg_id,
            data: data.clone(),
        }),
        Down::Register { .. } => Message::PingResp, // unreachable by construction
    }
}
