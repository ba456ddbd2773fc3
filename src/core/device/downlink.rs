//! Messages from the broker to the device: the queue (the sleep buffer too), the one QoS 1/2
//! PUBLISH or REGISTER in flight, sending, retransmission, the device's PUBACK / PUBREC /
//! PUBCOMP / REGACK, the durable copies of a sleeper's messages, and the broker's
//! acknowledgement, owed until the device has the message.
//!
//! Owns [`Downlink`] and the device's MsgId space for downlink. Must never: decide the
//! device's state (sleep, loss), touch the upstream session or its subscriptions, or write the
//! device record; it says what happened and `Device` acts on it.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::{debug, info};

use super::types::{DeviceState, Link};
use crate::core::bridge::{stored_sn_qos, to_mqtt_qos, to_sn_qos};

mod item;

use crate::codec::{self, Message, Puback, Regack, Register, ReturnCode, TopicRef};
use crate::core::ctx::Ctx;
use crate::core::persist;
use crate::core::topics::{self, DownlinkTopic, TopicTable};
use crate::core::types::{Output, Table};
use crate::mqtt;
use item::{drop_down, publish_message, release, BrokerAck, Down};

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

impl Inflight {
    fn new(item: Down, msg_id: u16, stage: DownStage, now: Instant) -> Option<Self> {
        Some(Inflight {
            item,
            msg_id,
            stage,
            sent_at: now,
            retries: 0,
        })
    }
}

/// The device as the downlink sees it when a message arrives.
#[derive(Debug, Clone, Copy)]
pub(super) struct Receiver {
    pub state: DeviceState,
    pub clean_session: bool,
    /// The session outlives the process (clean session 0 and a store).
    pub durable: bool,
}

/// The device's REGACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Regacked {
    /// The device knows the topic id now (the topic table changed).
    Accepted,
    /// The device refused the name (the topic table changed): the caller drops what is queued
    /// on it ([`Downlink::drop_topic`]) and unsubscribes from it (spec §6.10).
    Rejected { topic_id: u16, name: String },
}

#[derive(Debug, Default)]
pub(super) struct Downlink {
    queue: VecDeque<Down>,
    inflight: Option<Inflight>,
    next_msg_id: u16,
    /// QoS 1/2 messages the buffer had no room for, left unacknowledged at the broker.
    left_with_broker: u32,
    /// Sequence for the next durable sleep-buffer record.
    next_buffer_seq: u64,
}

impl Downlink {
    pub(super) fn new() -> Self {
        Downlink {
            next_buffer_seq: 1,
            ..Downlink::default()
        }
    }

    /// When what is in flight goes again.
    pub(super) fn retransmit_at(&self, retry_interval: Duration) -> Option<Instant> {
        self.inflight.as_ref().map(|f| f.sent_at + retry_interval)
    }

    /// How often what is in flight was sent again.
    pub(super) fn retries(&self) -> u32 {
        self.inflight.as_ref().map_or(0, |f| f.retries)
    }

    /// PUBLISHes queued (not counting the one in flight) and the octets of all that is queued.
    pub(super) fn depth(&self) -> (usize, usize) {
        let publishes = self
            .queue
            .iter()
            .filter(|d| matches!(d, Down::Publish { .. }))
            .count();
        (publishes, self.queued_bytes())
    }

    /// Something is in flight to the device.
    pub(super) fn has_inflight(&self) -> bool {
        self.inflight.is_some()
    }

    /// Nothing queued, nothing in flight.
    pub(super) fn is_idle(&self) -> bool {
        self.inflight.is_none() && self.queue.is_empty()
    }

    /// Something still owes the broker its PUBACK / PUBREC.
    pub(super) fn owes_broker(&self) -> bool {
        let owes = |d: &Down| matches!(d, Down::Publish { ack, .. } if *ack != BrokerAck::None);
        self.queue.iter().any(owes) || self.inflight.as_ref().is_some_and(|f| owes(&f.item))
    }

    /// Once the queue is empty again, whether messages were left at the broker for want of
    /// room: the session must be resumed to get them back (MQTT 3.1.1 §4.4 re-sends only
    /// then). Counts them as handled.
    pub(super) fn take_left_with_broker(&mut self, client_id: &str) -> bool {
        if self.left_with_broker == 0 || !self.is_idle() {
            return false;
        }
        info!(
            client_id,
            left = self.left_with_broker,
            "resuming the session to get back messages left with the broker"
        );
        self.left_with_broker = 0;
        true
    }

    /// The broker lost the session: the messages left with it went too.
    pub(super) fn forget_left_with_broker(&mut self, client_id: &str) {
        if self.left_with_broker > 0 {
            info!(
                client_id,
                lost = self.left_with_broker,
                "messages left unacknowledged at the broker went with its session"
            );
            self.left_with_broker = 0;
        }
    }

    /// The session ends: keep only what was already acknowledged to the broker (stored).
    pub(super) fn end_session(&mut self) {
        let inflight = self.inflight.take().map(|f| f.item);
        let owned = inflight.into_iter().chain(self.queue.drain(..));
        self.queue = owned.filter(Down::is_stored).collect();
    }

    /// A clean session starts with nothing queued.
    pub(super) fn clear_queue(&mut self) {
        self.queue.clear();
    }

    fn next_msg_id(&mut self) -> u16 {
        self.next_msg_id = match self.next_msg_id {
            0xFFFF => 1,
            n => n + 1,
        };
        self.next_msg_id
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

    /// Puts back a buffered message (already acknowledged to the broker) in sequence order.
    pub(super) fn restore_buffered(
        &mut self,
        ctx: &Ctx,
        topics: &mut TopicTable,
        n: u64,
        r: persist::BufferedRecord,
    ) {
        self.next_buffer_seq = self.next_buffer_seq.max(n + 1);
        let qos = stored_sn_qos(r.qos);
        // Already acknowledged upstream: the table limit must not lose it.
        let Some((topic, register)) = self.resolve(ctx, topics, &r.topic, usize::MAX) else {
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

    /// A PUBLISH from the broker, at the QoS the device gets (`qos`): queued (with the REGISTER
    /// it needs), or dropped / left with the broker when there is no room. Returns true when
    /// queued.
    pub(super) fn offer(
        &mut self,
        ctx: &mut Ctx,
        link: &Link,
        topics: &mut TopicTable,
        to: Receiver,
        p: mqtt::Publish,
        qos: mqtt::QoS,
    ) -> bool {
        let ack = match (p.qos, p.packet_id) {
            (mqtt::QoS::AtLeastOnce, Some(id)) => BrokerAck::PubAck(id),
            (mqtt::QoS::ExactlyOnce, Some(id)) => BrokerAck::PubRec(id),
            _ => BrokerAck::None,
        };
        if ack != BrokerAck::None && self.already_queued(ack) {
            return false; // the broker re-sent a message we still hold
        }
        let limit = ctx.settings.max_topics_per_device;
        let (topic, register) = match self.resolve(ctx, topics, &p.topic, limit) {
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
            debug!(client_id = %link.client_id, topic = %p.topic, "topic table full; dropping");
            drop_down(ctx, link, publish);
            return false;
        }
        let extra = usize::from(register.is_some());
        match self.make_room(ctx, to, &publish, p.topic.len(), extra) {
            Room::Fits => {}
            Room::Drop => {
                debug!(client_id = %link.client_id, topic = %p.topic, state = ?to.state, "no room for a QoS 0 message to the device; dropped");
                drop_down(ctx, link, publish);
                return false;
            }
            Room::LeaveWithBroker if ctx.settings.aggregate.is_some() => {
                // A shared session: a message left unacknowledged would stall every device's
                // downlink behind the broker's in-flight window, and no broker session of
                // this device would hand it over later. Dropped (and acknowledged) instead.
                debug!(client_id = %link.client_id, topic = %p.topic, state = ?to.state, "no room; dropped (aggregating mode)");
                drop_down(ctx, link, publish);
                return false;
            }
            Room::LeaveWithBroker => {
                ctx.stats.downlink_dropped += 1;
                self.left_with_broker += 1;
                debug!(client_id = %link.client_id, topic = %p.topic, state = ?to.state, "no room; left unacknowledged at the broker");
                return false;
            }
        }
        let publish = self.store_for_sleeper(ctx, link, to, publish, &p.topic);
        if let Some(topic_id) = register {
            self.queue.push_back(Down::Register {
                topic_id,
                name: p.topic,
            });
        }
        self.queue.push_back(publish);
        true
    }

    /// With a store, a sleeping device's QoS 1/2 message is written down and acknowledged to
    /// the broker once durable (so the broker's in-flight window does not cap the buffer).
    fn store_for_sleeper(
        &mut self,
        ctx: &mut Ctx,
        link: &Link,
        to: Receiver,
        mut item: Down,
        topic: &str,
    ) -> Down {
        let sleeping = matches!(to.state, DeviceState::Asleep | DeviceState::Awake);
        let (Some(session), true) = (link.session, sleeping && to.durable) else {
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
                persist::numbered_key(link.client_id, n),
                &record,
            ));
            ctx.after_persist(Output::Send { session, packet });
            *ack = BrokerAck::None;
            *stored = Some(n);
        }
        item
    }

    /// Whether a new downlink message (plus a REGISTER it may need) fits. While the device
    /// sleeps the sleep-buffer bounds apply, and QoS 0 is dropped oldest first (or not kept at
    /// all, by config). A QoS 1/2 message that does not fit is left unacknowledged at the
    /// broker, which keeps it and redelivers it when the session resumes: nothing the gateway
    /// acknowledged is ever dropped.
    fn make_room(
        &mut self,
        ctx: &mut Ctx,
        to: Receiver,
        item: &Down,
        topic_len: usize,
        registers: usize,
    ) -> Room {
        let qos0 = item.is_qos0();
        let Down::Publish { data, ack, .. } = item else {
            return Room::Fits;
        };
        let sleeping = matches!(to.state, DeviceState::Asleep | DeviceState::Awake);
        let full = if sleeping {
            if qos0 && !ctx.settings.sleep_keep_qos0 && to.state == DeviceState::Asleep {
                ctx.stats.sleep_buffer_dropped += 1;
                return Room::Drop;
            }
            let count = 1 + registers;
            let bytes = data.len() + 8 + registers * (topic_len + 8);
            let fits = |d: &Downlink| {
                d.queue.len() + count <= ctx.settings.sleep_buffer_messages
                    && d.queued_bytes() + bytes <= ctx.settings.sleep_buffer_bytes
            };
            while !fits(self) {
                let Some(i) = self.queue.iter().position(Down::is_qos0) else {
                    break;
                };
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
        if *ack == BrokerAck::None || to.clean_session {
            // A clean session cannot be resumed to get it again: drop it (counted).
            Room::Drop
        } else {
            Room::LeaveWithBroker
        }
    }

    /// How a downlink topic is named to the device: its table id, a predefined id or a short
    /// name; and the id to REGISTER first when the device does not know it yet. None when the
    /// table is full.
    fn resolve(
        &self,
        ctx: &Ctx,
        table: &mut TopicTable,
        topic: &str,
        table_limit: usize,
    ) -> Option<(TopicRef, Option<u16>)> {
        Some(
            match topics::downlink_topic(&ctx.predefined, table, topic, table_limit)? {
                DownlinkTopic::Ready(r) => (r, None),
                DownlinkTopic::Unregistered(id) => {
                    (TopicRef::Id(id), (!self.register_pending(id)).then_some(id))
                }
                DownlinkTopic::Added(id) => (TopicRef::Id(id), Some(id)),
            },
        )
    }

    fn register_pending(&self, topic_id: u16) -> bool {
        let is_reg = |d: &Down| matches!(d, Down::Register { topic_id: t, .. } if *t == topic_id);
        self.queue.iter().any(is_reg) || self.inflight.as_ref().is_some_and(|f| is_reg(&f.item))
    }

    fn already_queued(&self, ack: BrokerAck) -> bool {
        let same = |d: &Down| matches!(d, Down::Publish { ack: a, .. } if *a == ack);
        self.queue.iter().any(same) || self.inflight.as_ref().is_some_and(|f| same(&f.item))
    }

    /// Sends queued items while nothing is in flight (one QoS 1/2 PUBLISH or REGISTER at a
    /// time). The caller checks the device can hear.
    pub(super) fn send_queued(
        &mut self,
        ctx: &mut Ctx,
        link: &Link,
        topics: &mut TopicTable,
        now: Instant,
    ) {
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
                    if !ctx.transmit(link.addr, msg) {
                        // Too long for the device's link: abort its publishes silently (§6.10).
                        topics.remove(topic_id);
                        self.drop_topic(ctx, link, topic_id);
                        continue;
                    }
                    self.inflight = Inflight::new(item, msg_id, DownStage::Regack, now);
                }
                Down::Publish { qos, ref data, .. } => {
                    let payload = data.len();
                    let msg_id = match qos {
                        codec::QoS::AtLeastOnce | codec::QoS::ExactlyOnce => self.next_msg_id(),
                        _ => 0,
                    };
                    let Some(frame) = ctx.encode(link.addr, publish_message(&item, msg_id, false))
                    else {
                        drop_down(ctx, link, item);
                        continue;
                    };
                    ctx.transmit_frame(link.addr, frame);
                    ctx.stats.downlink_publishes += 1;
                    ctx.stats.count_downlink(qos, payload);
                    match qos {
                        codec::QoS::AtLeastOnce | codec::QoS::ExactlyOnce => {
                            let stage = if qos == codec::QoS::AtLeastOnce {
                                DownStage::Puback
                            } else {
                                DownStage::Pubrec
                            };
                            self.inflight = Inflight::new(item, msg_id, stage, now);
                        }
                        _ => release(ctx, link, &item),
                    }
                }
            }
        }
    }

    /// Sends what is in flight again (DUP).
    pub(super) fn retransmit(&mut self, ctx: &mut Ctx, link: &Link, now: Instant) {
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
        ctx.transmit(link.addr, msg);
    }

    /// Sends what was in flight when the device fell asleep again at once (DUP), with a fresh
    /// retry budget.
    pub(super) fn resume(&mut self, ctx: &mut Ctx, link: &Link, now: Instant) {
        if self.inflight.is_some() {
            self.retransmit(ctx, link, now);
            if let Some(f) = self.inflight.as_mut() {
                f.retries = 0;
            }
        }
    }

    /// Drops queued publishes on `topic_id` (the device rejected or cannot take the topic).
    pub(super) fn drop_topic(&mut self, ctx: &mut Ctx, link: &Link, topic_id: u16) {
        let mut kept = VecDeque::with_capacity(self.queue.len());
        let queued: Vec<Down> = self.queue.drain(..).collect();
        for d in queued {
            if matches!(&d, Down::Publish { topic: TopicRef::Id(t), .. } if *t == topic_id) {
                drop_down(ctx, link, d);
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

    /// The device's REGACK. None when it matches nothing in flight (nothing changed).
    pub(super) fn on_regack(
        &mut self,
        ctx: &mut Ctx,
        link: &Link,
        topics: &mut TopicTable,
        r: Regack,
    ) -> Option<Regacked> {
        if !self.inflight_matches(r.msg_id, DownStage::Regack) {
            ctx.stats.wrong_state += 1;
            return None;
        }
        let Some(Inflight {
            item: Down::Register { topic_id, name },
            ..
        }) = self.inflight.take()
        else {
            return None;
        };
        if r.return_code == ReturnCode::Accepted {
            topics.mark_known(topic_id);
            Some(Regacked::Accepted)
        } else {
            // A rejected REGISTER is an unsubscribe from that name (spec §6.10).
            info!(client_id = %link.client_id, topic = %name, rc = ?r.return_code, "device rejected REGISTER");
            topics.remove(topic_id);
            Some(Regacked::Rejected { topic_id, name })
        }
    }

    /// The device's PUBACK. Returns true when the queue may move on.
    pub(super) fn on_puback(
        &mut self,
        ctx: &mut Ctx,
        link: &Link,
        topics: &mut TopicTable,
        now: Instant,
        p: Puback,
    ) -> bool {
        if !self.inflight_matches(p.msg_id, DownStage::Puback) {
            if p.return_code == ReturnCode::InvalidTopicId {
                // The device lost a normal id (e.g. on a QoS 0 PUBLISH): register it again next time.
                topics.mark_unknown(p.topic_id);
            } else {
                ctx.stats.wrong_state += 1;
            }
            return false;
        }
        let Some(f) = self.inflight.take() else {
            return false;
        };
        match p.return_code {
            ReturnCode::Accepted => release(ctx, link, &f.item),
            ReturnCode::Congestion => {
                // Keep it in flight; it goes again after T_RETRY.
                self.inflight = Some(Inflight { sent_at: now, ..f });
                return false;
            }
            _ => self.on_rejected_publish(ctx, link, topics, f.item),
        }
        true
    }

    /// PUBACK "invalid topic id" for a downlink PUBLISH: re-register a normal id once, else drop.
    fn on_rejected_publish(
        &mut self,
        ctx: &mut Ctx,
        link: &Link,
        topics: &TopicTable,
        mut item: Down,
    ) {
        if let Down::Publish {
            topic: TopicRef::Id(id),
            reregistered: reregistered @ false,
            ..
        } = &mut item
        {
            if let Some(name) = topics.name(*id).map(str::to_owned) {
                *reregistered = true;
                let topic_id = *id;
                self.queue.push_front(item);
                self.queue.push_front(Down::Register { topic_id, name });
                return;
            }
        }
        drop_down(ctx, link, item);
    }

    /// The device's PUBREC.
    pub(super) fn on_pubrec(&mut self, ctx: &mut Ctx, link: &Link, now: Instant, msg_id: u16) {
        if self.inflight_matches(msg_id, DownStage::Pubcomp) {
            // Our PUBREL was lost.
            ctx.transmit(link.addr, Message::Pubrel { msg_id });
            return;
        }
        if !self.inflight_matches(msg_id, DownStage::Pubrec) {
            ctx.stats.wrong_state += 1;
            return;
        }
        if let Some(mut f) = self.inflight.take() {
            // The device has the message: the broker may forget it.
            release(ctx, link, &f.item);
            if let Down::Publish { ack, stored, .. } = &mut f.item {
                *ack = BrokerAck::None;
                *stored = None;
            }
            f.stage = DownStage::Pubcomp;
            f.sent_at = now;
            f.retries = 0;
            self.inflight = Some(f);
        }
        ctx.transmit(link.addr, Message::Pubrel { msg_id });
    }

    /// The device's PUBCOMP. Returns true when the queue may move on.
    pub(super) fn on_pubcomp(&mut self, ctx: &mut Ctx, msg_id: u16) -> bool {
        if !self.inflight_matches(msg_id, DownStage::Pubcomp) {
            ctx.stats.wrong_state += 1;
            return false;
        }
        self.inflight = None;
        true
    }
}
