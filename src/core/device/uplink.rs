//! Messages from the device to the broker: REGISTER, PUBLISH at every QoS, PUBREL, and the
//! broker's PUBACK / PUBREC / PUBCOMP for them; the device's MsgId mapped to the session's
//! packet id, durable for QoS 2 with a store (exactly once across a restart); brokers that
//! answer a QoS 2 PUBLISH with PUBACK (RabbitMQ stores it as QoS 1): the device's QoS 2
//! exchange is then completed by the gateway, and nothing goes upstream twice.
//!
//! Owns [`Uplink`] (the open flows). Must never: allocate packet ids on its own (the space is
//! shared with subscriptions and the outage: [`PacketIds`] plus the caller's `in_use`), park
//! messages during an outage, or change the device's state.

use std::collections::HashMap;

use tracing::debug;

use super::types::{puback_for, puback_topic_id, Link};
use super::types::{HoldsPacketIds, IdSpace, PacketIds};
use crate::codec::{self, Message, Puback, Publish, Regack, Register, ReturnCode};
use crate::core::bridge::{qos0_publish, to_mqtt_qos};
use crate::core::ctx::Ctx;
use crate::core::persist::{self, UplinkRecord};
use crate::core::topics::{self, TopicTable};
use crate::core::types::{Output, PersistOp, Table};
use crate::mqtt;

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
    /// QoS 2 from the device, but the broker answered PUBACK (it downgrades to QoS 1): the
    /// broker has the message, the gateway completes the device's PUBREL itself.
    broker_done: bool,
}

/// What the broker's PUBACK meant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Acked {
    /// A flow ended (or nothing matched).
    Done,
    /// The broker took a QoS 2 PUBLISH as QoS 1 (the caller logs the downgrade once).
    Downgraded,
}

#[derive(Debug, Default)]
pub(super) struct Uplink {
    flows: HashMap<u16, UpFlow>,
    by_msg: HashMap<u16, u16>,
}

impl HoldsPacketIds for Uplink {
    fn holds(&self, pkid: u16) -> bool {
        self.flows.contains_key(&pkid)
    }

    fn held(&self) -> usize {
        self.flows.len()
    }
}

impl Uplink {
    /// No flow the broker still has to answer (a session switch may go ahead).
    pub(super) fn broker_idle(&self) -> bool {
        self.flows.values().all(|f| f.broker_done)
    }

    /// Puts back a QoS 2 flow read from the store: the device's re-sent PUBLISH or PUBREL
    /// continues it under the same packet id.
    pub(super) fn restore(&mut self, pkids: &mut PacketIds, r: UplinkRecord) {
        if let UplinkRecord::Qos2 {
            msg_id,
            pkid,
            topic_id,
            released,
            acked,
        } = r
        {
            pkids.at_least(pkid);
            self.by_msg.insert(msg_id, pkid);
            self.flows.insert(
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
                    broker_done: acked,
                },
            );
        }
    }

    /// The session ended. A clean session forgets every flow (and its rows); a persistent one
    /// keeps its QoS 2 flows, whose packet ids the broker may hold.
    pub(super) fn end_session(&mut self, ctx: &mut Ctx, link: &Link, clean_session: bool) {
        if clean_session {
            self.flows.clear();
            self.by_msg.clear();
            if ctx.persistent() {
                ctx.persist(PersistOp::DeletePrefix {
                    table: Table::Uplink,
                    prefix: persist::device_prefix(link.client_id),
                });
            }
        } else {
            // QoS 1 may be repeated; only QoS 2 flows must keep their packet ids.
            self.flows.retain(|_, f| f.qos == codec::QoS::ExactlyOnce);
            let flows = &self.flows;
            self.by_msg.retain(|_, pkid| flows.contains_key(pkid));
            for f in self.flows.values_mut() {
                f.orphaned = true;
            }
        }
    }

    /// A QoS 0/1/2 PUBLISH from the device on `topic`, to go up on the link's session.
    /// `durable`: the session has a store (QoS 2 state is written before the broker sees it).
    pub(super) fn on_publish(
        &mut self,
        ctx: &mut Ctx,
        link: &Link,
        durable: bool,
        topic: String,
        p: Publish,
        mut ids: IdSpace,
    ) {
        let Some(session) = link.session else {
            return;
        };
        let topic_id = puback_topic_id(&p);
        match p.qos {
            codec::QoS::MinusOne | codec::QoS::AtMostOnce => {
                ctx.stats.uplink_publishes += 1;
                ctx.send(
                    session,
                    mqtt::Packet::Publish(qos0_publish(topic, p.retain, p.data)),
                );
            }
            codec::QoS::AtLeastOnce | codec::QoS::ExactlyOnce => {
                if let Some(&pkid) = self.by_msg.get(&p.msg_id) {
                    // A re-send of a flow we already carry: never forward it twice.
                    if let Some(f) = self.flows.get_mut(&pkid) {
                        if p.qos == codec::QoS::ExactlyOnce && f.stage == UpStage::AwaitPubrel {
                            ctx.transmit(link.addr, Message::Pubrec { msg_id: p.msg_id });
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
                if ids.full(self.flows.len()) {
                    // Flows orphaned by an old session give way to new ones.
                    let orphan = self.flows.iter().find(|(_, f)| f.orphaned).map(|(k, _)| *k);
                    match orphan {
                        Some(pkid) => {
                            self.finish(ctx, link, durable, pkid);
                        }
                        None => {
                            ctx.transmit(link.addr, puback_for(&p, ReturnCode::Congestion));
                            return;
                        }
                    }
                }
                let flows = &self.flows;
                let pkid = ids.alloc(|id| flows.contains_key(&id));
                self.flows.insert(
                    pkid,
                    UpFlow {
                        msg_id: p.msg_id,
                        topic_id,
                        stage: UpStage::AwaitBroker,
                        qos: p.qos,
                        orphaned: false,
                        broker_done: false,
                    },
                );
                self.by_msg.insert(p.msg_id, pkid);
                ctx.stats.uplink_publishes += 1;
                let publish = mqtt::Packet::Publish(mqtt::Publish {
                    dup: false,
                    qos: to_mqtt_qos(p.qos),
                    retain: p.retain,
                    topic,
                    packet_id: Some(pkid),
                    payload: p.data,
                });
                if p.qos == codec::QoS::ExactlyOnce && durable {
                    // Exactly once across a restart: the MsgId -> packet id map is durable
                    // before the broker can see the message.
                    self.save_qos2(ctx, link, pkid);
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

    /// The device's PUBREL (not for a parked message).
    pub(super) fn on_pubrel(&mut self, ctx: &mut Ctx, link: &Link, durable: bool, msg_id: u16) {
        let pkid = self.by_msg.get(&msg_id).copied();
        if pkid.is_some_and(|pkid| self.complete_acked_qos2(ctx, link, durable, pkid)) {
            return;
        }
        let Some(session) = link.session else { return };
        match pkid {
            Some(pkid) => {
                if let Some(f) = self.flows.get_mut(&pkid) {
                    if f.stage != UpStage::AwaitBroker {
                        f.stage = UpStage::AwaitPubcomp;
                        ctx.send(session, mqtt::Packet::PubRel { packet_id: pkid });
                    }
                }
            }
            // Already completed: the device missed our PUBCOMP.
            None => {
                ctx.transmit(link.addr, Message::Pubcomp { msg_id });
            }
        }
    }

    fn finish(&mut self, ctx: &mut Ctx, link: &Link, durable: bool, pkid: u16) -> Option<UpFlow> {
        let f = self.flows.remove(&pkid)?;
        self.by_msg.remove(&f.msg_id);
        if f.qos == codec::QoS::ExactlyOnce && durable {
            ctx.persist(PersistOp::Delete {
                table: Table::Uplink,
                key: persist::numbered_key(link.client_id, u64::from(pkid)),
            });
        }
        Some(f)
    }

    fn save_qos2(&self, ctx: &mut Ctx, link: &Link, pkid: u16) {
        let Some(f) = self.flows.get(&pkid) else {
            return;
        };
        let record = UplinkRecord::Qos2 {
            msg_id: f.msg_id,
            pkid,
            topic_id: f.topic_id,
            released: f.stage != UpStage::AwaitBroker,
            acked: f.broker_done,
        };
        ctx.persist(persist::put(
            Table::Uplink,
            persist::numbered_key(link.client_id, u64::from(pkid)),
            &record,
        ));
    }

    /// The broker's PUBACK (not for a parked message).
    pub(super) fn on_broker_puback(
        &mut self,
        ctx: &mut Ctx,
        link: &Link,
        durable: bool,
        pkid: u16,
    ) -> Acked {
        if let Some(acked) = self.on_qos2_acked_as_qos1(ctx, link, durable, pkid) {
            return acked;
        }
        if let Some(f) = self.finish(ctx, link, durable, pkid) {
            ctx.transmit(
                link.addr,
                Message::Puback(Puback {
                    topic_id: f.topic_id,
                    msg_id: f.msg_id,
                    return_code: ReturnCode::Accepted,
                }),
            );
        }
        Acked::Done
    }

    /// The broker's PUBREC (not for a parked message).
    pub(super) fn on_broker_pubrec(
        &mut self,
        ctx: &mut Ctx,
        link: &Link,
        durable: bool,
        pkid: u16,
    ) {
        let Some(f) = self.flows.get_mut(&pkid) else {
            return;
        };
        let msg_id = f.msg_id;
        if f.stage == UpStage::AwaitBroker {
            f.stage = UpStage::AwaitPubrel;
            if durable {
                // PUBREC promises the device it will not be delivered twice: durable first.
                self.save_qos2(ctx, link, pkid);
                ctx.transmit_after_persist(true, link.addr, Message::Pubrec { msg_id });
                return;
            }
        }
        ctx.transmit(link.addr, Message::Pubrec { msg_id });
    }

    /// The broker's PUBCOMP (not for a parked message).
    pub(super) fn on_broker_pubcomp(
        &mut self,
        ctx: &mut Ctx,
        link: &Link,
        durable: bool,
        pkid: u16,
    ) {
        if let Some(f) = self.finish(ctx, link, durable, pkid) {
            ctx.transmit(link.addr, Message::Pubcomp { msg_id: f.msg_id });
        }
    }

    /// PUBACK on a flow the device sent at QoS 2. None when `pkid` is no such flow.
    fn on_qos2_acked_as_qos1(
        &mut self,
        ctx: &mut Ctx,
        link: &Link,
        durable: bool,
        pkid: u16,
    ) -> Option<Acked> {
        let f = self.flows.get_mut(&pkid)?;
        if f.qos != codec::QoS::ExactlyOnce {
            return None;
        }
        if f.stage != UpStage::AwaitBroker || f.broker_done {
            return Some(Acked::Done); // a repeated PUBACK
        }
        f.stage = UpStage::AwaitPubrel;
        f.broker_done = true;
        let pubrec = Message::Pubrec { msg_id: f.msg_id };
        if durable {
            // PUBREC promises the device one copy, across a restart too: durable first.
            self.save_qos2(ctx, link, pkid);
        }
        ctx.transmit_after_persist(durable, link.addr, pubrec);
        Some(Acked::Downgraded)
    }

    /// The device's PUBREL for a flow the broker already took (as QoS 1): PUBCOMP from here.
    fn complete_acked_qos2(
        &mut self,
        ctx: &mut Ctx,
        link: &Link,
        durable: bool,
        pkid: u16,
    ) -> bool {
        if !self.flows.get(&pkid).is_some_and(|f| f.broker_done) {
            return false;
        }
        let Some(f) = self.finish(ctx, link, durable, pkid) else {
            return true;
        };
        let pubcomp = Message::Pubcomp { msg_id: f.msg_id };
        // Only once the flow is gone from the store may the device reuse its MsgId.
        ctx.transmit_after_persist(durable, link.addr, pubcomp);
        true
    }
}

/// REGISTER from the device: the REGACK for it, with a topic id for the name when accepted
/// (the topic table changed: the caller saves the record before sending it).
pub(super) fn register(ctx: &Ctx, topics: &mut TopicTable, r: Register) -> Regack {
    let limit = ctx.settings.max_topics_per_device;
    let (topic_id, return_code) = match topics::register_name(topics, &r.topic_name, limit) {
        Ok(id) => (id, ReturnCode::Accepted),
        Err(rc) => (0, rc),
    };
    Regack {
        topic_id,
        msg_id: r.msg_id,
        return_code,
    }
}

/// The topic name of an uplink PUBLISH; answers PUBACK "invalid topic ID" when it has none.
pub(super) fn topic_name(
    ctx: &mut Ctx,
    link: &Link,
    topics: &TopicTable,
    p: &Publish,
) -> Option<String> {
    let name = topics::publish_name(&ctx.predefined, Some(topics), p.topic);
    if name.is_none() {
        debug!(client_id = %link.client_id, ?p.topic, "PUBLISH on unknown topic id");
        ctx.transmit(link.addr, puback_for(p, ReturnCode::InvalidTopicId));
    }
    name
}
