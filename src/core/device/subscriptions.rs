//! A device's subscriptions: SUBSCRIBE / UNSUBSCRIBE and the broker's SUBACK / UNSUBACK, the
//! bound on how many it may hold (`limits.max_subscriptions_per_device`), their durable rows
//! (one per subscription in `Table::Subscription`, so one SUBSCRIBE writes one row, never the
//! whole list), the QoS cap they put on downlink, and the subscriptions the gateway makes again
//! on a session the broker does not have (Session Present 0, or a clean session switched).
//!
//! Retained messages that arrive because the *gateway* re-subscribed while the device's
//! subscription never lapsed (a session switch) are acknowledged to the broker and not
//! delivered: the device made no new SUBSCRIBE (MQTT 3.1.1 §3.3.1.3 sets RETAIN=1 only for a
//! new subscription; a new publish on a live subscription comes with RETAIN=0 and passes).
//! After a real gap (restart, outage, the device away) they are delivered: they are how the
//! device catches up with what the lost session missed.
//!
//! Owns [`Subscriptions`]. Must never: allocate packet ids on its own (see [`PacketIds`]),
//! write the device record, or send will responses (it says whether re-subscriptions are
//! outstanding, the session switch decides).

use std::collections::HashMap;

use tracing::{debug, info};

use super::types::{HoldsPacketIds, IdSpace, Link};
use crate::codec::{self, Message, ReturnCode, Suback, Subscribe, Unsubscribe};
use crate::core::bridge::{to_mqtt_qos, to_sn_qos};
use crate::core::ctx::Ctx;
use crate::core::persist::{self, SubscriptionRecord};
use crate::core::topics::{self, TopicTable};
use crate::core::types::{PersistOp, SessionId, Table};
use crate::mqtt;

#[derive(Debug, Clone)]
enum PendingSub {
    Subscribe {
        msg_id: u16,
        topic_id: u16,
        filter: String,
        requested: mqtt::QoS,
    },
    Unsubscribe {
        msg_id: u16,
        filter: String,
    },
    /// The gateway's own (UNSUBSCRIBE after a rejected REGACK): no device reply.
    Internal,
    /// A subscription the gateway makes again on a session the broker does not have: no
    /// device reply.
    Restore {
        filter: String,
    },
}

/// Whether retained messages for re-made subscriptions reach the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Gap {
    /// The device's subscriptions never lapsed (a session switch the gateway made).
    None,
    /// The session was away (restart, outage, device reconnect): the device may have missed
    /// messages, retained ones are its way to catch up.
    Lapsed,
}

/// What a SUBACK meant.
#[derive(Debug)]
pub(super) enum Subacked {
    /// A subscription the gateway made again; `changed` (before, now) when the broker granted
    /// another QoS than before (the caller notes a downgrade and saves the record).
    Restored {
        changed: Option<(mqtt::QoS, mqtt::QoS)>,
    },
    /// The gateway's own.
    Internal,
    /// The device's SUBSCRIBE: answer it with [`Subscriptions::answer`] (after any will
    /// responses this SUBACK releases).
    Device(DeviceSuback),
}

#[derive(Debug)]
pub(super) struct DeviceSuback {
    msg_id: u16,
    topic_id: u16,
    filter: String,
    requested: mqtt::QoS,
    code: Option<mqtt::SubackCode>,
}

impl DeviceSuback {
    /// The filter the device asked for.
    pub(super) fn filter(&self) -> &str {
        &self.filter
    }

    /// The QoS the broker granted (`None`: refused).
    pub(super) fn granted(&self) -> Option<mqtt::QoS> {
        match self.code {
            Some(mqtt::SubackCode::Granted(q)) => Some(q),
            _ => None,
        }
    }

    /// (asked, got) when the broker granted less than the device asked for.
    pub(super) fn downgraded(&self) -> Option<(mqtt::QoS, mqtt::QoS)> {
        match self.code {
            Some(mqtt::SubackCode::Granted(q)) => Some((self.requested, q)),
            _ => None,
        }
    }
}

#[derive(Debug, Default)]
pub(super) struct Subscriptions {
    /// Granted subscriptions (filter, QoS), for the QoS downgrade and resubscription.
    granted: Vec<(String, mqtt::QoS)>,
    pending: HashMap<u16, PendingSub>,
    /// Filters the gateway subscribed again on this session while the device's subscription
    /// never lapsed: their retained re-deliveries are not the device's.
    resubscribed: Vec<String>,
    /// Filters the device itself subscribed on this session (their retained messages are).
    subscribed_here: Vec<String>,
}

impl HoldsPacketIds for Subscriptions {
    fn holds(&self, pkid: u16) -> bool {
        self.pending.contains_key(&pkid)
    }

    fn held(&self) -> usize {
        self.pending.len()
    }
}

impl Subscriptions {
    pub(super) fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Subscriptions the gateway made again (or its own UNSUBSCRIBE) still wait for the broker.
    pub(super) fn remaking(&self) -> bool {
        self.pending
            .values()
            .any(|p| matches!(p, PendingSub::Internal | PendingSub::Restore { .. }))
    }

    /// A clean session forgets them.
    pub(super) fn clear(&mut self) {
        self.granted.clear();
    }

    /// The session ended: nothing is pending on it any more.
    pub(super) fn end_session(&mut self) {
        self.pending.clear();
        self.resubscribed.clear();
        self.subscribed_here.clear();
    }

    /// The QoS the device gets: the publication's, capped by the best matching grant.
    pub(super) fn granted_qos(&self, topic: &str, qos: mqtt::QoS) -> mqtt::QoS {
        self.granted
            .iter()
            .filter(|(f, _)| mqtt::topic_matches(f, topic))
            .map(|(_, q)| *q)
            .max()
            .map_or(qos, |g| g.min(qos))
    }

    /// Puts back a stored subscription (at restore).
    pub(super) fn restore(&mut self, filter: String, qos: u8) {
        let Ok(qos) = mqtt::QoS::try_from(qos) else {
            return;
        };
        match self.granted.iter_mut().find(|(f, _)| *f == filter) {
            Some(entry) => entry.1 = qos,
            None => self.granted.push((filter, qos)),
        }
    }

    /// Writes every subscription's row (moving them out of an old device record). Returns
    /// true when something was written.
    pub(super) fn store_all(&self, ctx: &mut Ctx, link: &Link, durable: bool) -> bool {
        let mut stored = false;
        for (f, q) in &self.granted {
            stored |= store_row(ctx, link, durable, f, *q);
        }
        stored
    }

    /// The gateway's own UNSUBSCRIBE from `name` (the device refused its REGISTER), within
    /// the bound on open requests.
    pub(super) fn unsubscribe_internal(
        &mut self,
        ctx: &mut Ctx,
        session: SessionId,
        name: String,
        mut ids: IdSpace,
    ) {
        if !mqtt::valid_topic_filter(&name) || ids.full(self.pending.len()) {
            return;
        }
        let pkid = self.alloc(&mut ids);
        self.pending.insert(pkid, PendingSub::Internal);
        ctx.send(
            session,
            mqtt::Packet::Unsubscribe {
                packet_id: pkid,
                filters: vec![name],
            },
        );
    }

    fn alloc(&self, ids: &mut IdSpace) -> u16 {
        ids.alloc(|id| self.pending.contains_key(&id))
    }

    /// The broker accepted a session without the device's subscriptions (`remake`): subscribe
    /// again to every filter the gateway knows. After a `Gap::None` switch, their retained
    /// re-deliveries are not delivered.
    pub(super) fn session_accepted(
        &mut self,
        ctx: &mut Ctx,
        link: &Link,
        remake: bool,
        gap: Gap,
        mut ids: IdSpace,
    ) {
        self.resubscribed.clear();
        self.subscribed_here.clear();
        let Some(session) = link.session else { return };
        if self.granted.is_empty() || !remake {
            return;
        }
        for (filter, qos) in self.granted.clone() {
            let packet_id = self.alloc(&mut ids);
            self.pending.insert(
                packet_id,
                PendingSub::Restore {
                    filter: filter.clone(),
                },
            );
            ctx.send(
                session,
                mqtt::Packet::Subscribe {
                    packet_id,
                    filters: vec![(filter.clone(), qos)],
                },
            );
            if gap == Gap::None {
                self.resubscribed.push(filter);
            }
        }
    }

    /// Granted subscriptions (filter, QoS), for the status view.
    pub(super) fn granted(&self) -> impl Iterator<Item = (&str, mqtt::QoS)> {
        self.granted.iter().map(|(f, q)| (f.as_str(), *q))
    }

    pub(super) fn count(&self) -> usize {
        self.granted.len()
    }

    /// Whether a SUBSCRIBE to `filter` stays within the limit. Re-subscribing to a filter the
    /// device holds (to change its QoS) always fits.
    fn fits(&self, ctx: &mut Ctx, link: &Link, filter: &str) -> bool {
        if self.granted.iter().any(|(f, _)| f == filter) {
            return true;
        }
        let pending = self
            .pending
            .values()
            .filter(|p| matches!(p, PendingSub::Subscribe { filter: f, .. } if f != filter))
            .count();
        if self.granted.len() + pending < ctx.settings.max_subscriptions_per_device {
            return true;
        }
        ctx.stats.subscriptions_refused += 1;
        debug!(client_id = %link.client_id, %filter, "SUBSCRIBE refused: limits.max_subscriptions_per_device");
        false
    }

    /// SUBSCRIBE from the device (ignored without a session).
    pub(super) fn on_subscribe(
        &mut self,
        ctx: &mut Ctx,
        link: &Link,
        topics: &mut TopicTable,
        s: Subscribe,
        mut ids: IdSpace,
    ) {
        let Some(session) = link.session else { return };
        let nack = |ctx: &mut Ctx, topic_id: u16, rc: ReturnCode| {
            ctx.transmit(
                link.addr,
                Message::Suback(Suback {
                    qos: codec::QoS::AtMostOnce,
                    topic_id,
                    msg_id: s.msg_id,
                    return_code: rc,
                }),
            );
        };
        if self
            .pending
            .values()
            .any(|p| matches!(p, PendingSub::Subscribe { msg_id, .. } if *msg_id == s.msg_id))
        {
            return; // a re-send; the SUBACK is on its way
        }
        let limit = ctx.settings.max_topics_per_device;
        let (filter, topic_id) =
            match topics::subscribe_filter(&ctx.predefined, topics, &s.topic, limit) {
                Ok(f) => f,
                Err((topic_id, rc)) => {
                    nack(ctx, topic_id, rc);
                    return;
                }
            };
        if ids.full(self.pending.len()) {
            nack(ctx, 0, ReturnCode::Congestion);
            return;
        }
        if !self.fits(ctx, link, &filter) {
            nack(ctx, 0, ReturnCode::Congestion);
            return;
        }
        let pkid = self.alloc(&mut ids);
        self.pending.insert(
            pkid,
            PendingSub::Subscribe {
                msg_id: s.msg_id,
                topic_id,
                filter: filter.clone(),
                requested: to_mqtt_qos(s.qos),
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

    /// The broker's SUBACK. None when it matches nothing pending.
    pub(super) fn on_suback(
        &mut self,
        link: &Link,
        pkid: u16,
        code: Option<&mqtt::SubackCode>,
    ) -> Option<Subacked> {
        Some(match self.pending.remove(&pkid)? {
            PendingSub::Restore { filter } => Subacked::Restored {
                changed: self.on_restored(link, &filter, code),
            },
            PendingSub::Subscribe {
                msg_id,
                topic_id,
                filter,
                requested,
            } => Subacked::Device(DeviceSuback {
                msg_id,
                topic_id,
                filter,
                requested,
                code: code.copied(),
            }),
            PendingSub::Internal | PendingSub::Unsubscribe { .. } => Subacked::Internal,
        })
    }

    /// SUBACK for a subscription the gateway made again: (before, now) when the grant changed.
    fn on_restored(
        &mut self,
        link: &Link,
        filter: &str,
        code: Option<&mqtt::SubackCode>,
    ) -> Option<(mqtt::QoS, mqtt::QoS)> {
        match code {
            Some(mqtt::SubackCode::Granted(q)) => {
                let i = self.granted.iter().position(|(f, _)| f == filter)?;
                let asked = self.granted[i].1;
                if asked == *q {
                    return None;
                }
                self.granted[i].1 = *q;
                Some((asked, *q))
            }
            _ => {
                info!(client_id = %link.client_id, filter, "broker refused a subscription the gateway made again");
                None
            }
        }
    }

    /// Answers the device's SUBSCRIBE; records the grant (and its row). Returns true when a
    /// row was written.
    pub(super) fn answer(
        &mut self,
        ctx: &mut Ctx,
        link: &Link,
        durable: bool,
        s: DeviceSuback,
    ) -> bool {
        let mut stored = false;
        let (qos, topic_id, return_code) = match s.code {
            Some(mqtt::SubackCode::Granted(q)) => {
                if !self.resubscribed.is_empty() && !self.subscribed_here.contains(&s.filter) {
                    self.subscribed_here.push(s.filter.clone());
                }
                stored = self.grant(ctx, link, durable, s.filter, q);
                (to_sn_qos(q), s.topic_id, ReturnCode::Accepted)
            }
            _ => (codec::QoS::AtMostOnce, 0, ReturnCode::NotSupported),
        };
        ctx.transmit(
            link.addr,
            Message::Suback(Suback {
                qos,
                topic_id,
                msg_id: s.msg_id,
                return_code,
            }),
        );
        stored
    }

    /// The broker granted `filter` at `qos`. Returns true when a row was written.
    fn grant(
        &mut self,
        ctx: &mut Ctx,
        link: &Link,
        durable: bool,
        filter: String,
        qos: mqtt::QoS,
    ) -> bool {
        match self.granted.iter_mut().find(|(f, _)| *f == filter) {
            Some(entry) if entry.1 == qos => return false,
            Some(entry) => entry.1 = qos,
            None => self.granted.push((filter.clone(), qos)),
        }
        store_row(ctx, link, durable, &filter, qos)
    }

    /// UNSUBSCRIBE from the device (ignored without a session).
    pub(super) fn on_unsubscribe(
        &mut self,
        ctx: &mut Ctx,
        link: &Link,
        u: Unsubscribe,
        mut ids: IdSpace,
    ) {
        let Some(session) = link.session else { return };
        let Some(filter) = topics::unsubscribe_filter(&ctx.predefined, &u.topic) else {
            // Nothing to unsubscribe from; the spec gives UNSUBACK no return code.
            ctx.transmit(link.addr, Message::Unsuback { msg_id: u.msg_id });
            return;
        };
        if ids.full(self.pending.len()) {
            return; // the device will re-send
        }
        let pkid = self.alloc(&mut ids);
        self.pending.insert(
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

    /// The broker's UNSUBACK: the subscription (and its row) goes, the device hears UNSUBACK.
    pub(super) fn on_unsuback(&mut self, ctx: &mut Ctx, link: &Link, durable: bool, pkid: u16) {
        let Some(PendingSub::Unsubscribe { msg_id, filter }) = self.pending.remove(&pkid) else {
            return;
        };
        let before = self.granted.len();
        self.granted.retain(|(f, _)| *f != filter);
        if self.granted.len() != before && durable {
            ctx.persist(PersistOp::Delete {
                table: Table::Subscription,
                key: persist::subscription_key(link.client_id, &filter),
            });
        }
        ctx.transmit(link.addr, Message::Unsuback { msg_id });
    }

    /// A retained message sent only because the gateway re-subscribed for a device whose
    /// subscription never lapsed: acknowledged to the broker, not delivered. Returns true when
    /// `p` was one.
    pub(super) fn drop_redelivered_retained(
        &self,
        ctx: &mut Ctx,
        link: &Link,
        p: &mqtt::Publish,
    ) -> bool {
        if !p.retain || self.resubscribed.is_empty() {
            return false;
        }
        let matches = |f: &String| mqtt::topic_matches(f, &p.topic);
        if !self.resubscribed.iter().any(matches) || self.subscribed_here.iter().any(matches) {
            return false;
        }
        debug!(client_id = %link.client_id, topic = %p.topic, "retained message from a re-subscription the device did not make; not delivered");
        if let Some(session) = link.session {
            match (p.qos, p.packet_id) {
                (mqtt::QoS::AtLeastOnce, Some(packet_id)) => {
                    ctx.send(session, mqtt::Packet::PubAck { packet_id })
                }
                // The broker's PUBREL is answered with PUBCOMP like any downlink QoS 2.
                (mqtt::QoS::ExactlyOnce, Some(packet_id)) => {
                    ctx.send(session, mqtt::Packet::PubRec { packet_id })
                }
                _ => {}
            }
        }
        true
    }
}

/// Writes one subscription's row (durable sessions only). Returns true when written.
fn store_row(ctx: &mut Ctx, link: &Link, durable: bool, filter: &str, qos: mqtt::QoS) -> bool {
    if !durable {
        return false;
    }
    ctx.persist(persist::put(
        Table::Subscription,
        persist::subscription_key(link.client_id, filter),
        &SubscriptionRecord { qos: qos as u8 },
    ));
    true
}
