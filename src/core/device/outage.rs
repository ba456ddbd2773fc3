//! Riding out a broker outage (persistent sessions, with a store).
//!
//! When the broker closes a persistent session (clean session 0) and a durable store is
//! attached, the device stays connected to the gateway: its QoS 1/2 PUBLISHes are parked in the
//! store and acknowledged to it once durable, QoS 0 is dropped and counted, and the gateway
//! reconnects the session with back-off. When the broker accepts it again, the parked messages
//! go upstream in order; each is deleted once the broker has it. The device is told DISCONNECT
//! only when the broker refuses the session for good.
//!
//! Owns [`Outage`]: the back-off, the parked messages and their rows. Must never: open or
//! close sessions or change the device's state (`Device` does, on what this says), or
//! allocate packet ids on its own.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::info;

use super::types::{puback_for, HoldsPacketIds, IdSpace, Link, PacketIds};
use crate::codec::{self, Message, Publish, ReturnCode};
use crate::core::bridge::to_mqtt_qos;
use crate::core::ctx::Ctx;
use crate::core::persist::{self, UplinkRecord};
use crate::core::types::{Output, PersistOp, SessionId, Table};
use crate::mqtt;

/// Parked records share the uplink table with QoS 2 flows (keyed by packet id, < 2^16).
const PARKED_BASE: u64 = 1 << 32;

#[derive(Debug, Clone)]
struct Parked {
    key: u64,
    topic: String,
    qos: mqtt::QoS,
    retain: bool,
    data: Bytes,
    pkid: Option<u16>,
    released: bool,
}

#[derive(Debug, Default)]
pub(super) struct Outage {
    reconnect_at: Option<Instant>,
    backoff: Duration,
    parked: VecDeque<Parked>,
    /// Parked QoS 2 MsgIds whose PUBREL has not come yet: a re-sent PUBLISH gets PUBREC again.
    unreleased: HashSet<u16>,
    /// Parked messages on their way upstream: packet id -> key.
    forwarded: HashMap<u16, u64>,
    /// A session is being reopened and not yet accepted: uplink keeps being parked, so
    /// nothing goes into a session the broker may still refuse.
    resuming: bool,
    next: u64,
}

impl HoldsPacketIds for Outage {
    fn holds(&self, pkid: u16) -> bool {
        self.forwarded.contains_key(&pkid)
    }

    fn held(&self) -> usize {
        self.forwarded.len()
    }
}

impl Outage {
    pub(super) fn reconnect_at(&self) -> Option<Instant> {
        self.reconnect_at
    }

    /// The device's PUBREL for a parked QoS 2 message.
    pub(super) fn release(&mut self, msg_id: u16) -> bool {
        self.unreleased.remove(&msg_id)
    }

    pub(super) fn resuming(&self) -> bool {
        self.resuming
    }

    pub(super) fn set_resuming(&mut self) {
        self.resuming = true;
    }

    /// The reconnect timer fired.
    pub(super) fn stop_waiting(&mut self) {
        self.reconnect_at = None;
    }

    pub(super) fn clear_resuming(&mut self) {
        self.resuming = false;
    }

    /// The broker went away: keep the device, try the session again after a back-off.
    pub(super) fn start(&mut self, now: Instant, retry_interval: Duration, client_id: &str) {
        self.backoff = if self.backoff.is_zero() {
            retry_interval
        } else {
            (self.backoff * 2).min(retry_interval * 16)
        };
        self.reconnect_at = Some(now + self.backoff);
        self.resuming = false;
        // What was on its way upstream goes again once the session is back.
        self.forwarded.clear();
        info!(client_id, retry_in = ?self.backoff, "broker away; device kept, session will be resumed");
    }

    /// The broker accepted the resumed session: the back-off starts over.
    pub(super) fn accepted(&mut self) {
        self.resuming = false;
        self.backoff = Duration::ZERO;
    }

    /// Sends every parked message upstream on `session`, in order, under its packet id.
    pub(super) fn flush(
        &mut self,
        ctx: &mut Ctx,
        link: &Link,
        session: SessionId,
        mut ids: IdSpace,
    ) {
        let mut parked = std::mem::take(&mut self.parked);
        for p in parked.iter_mut() {
            let dup = p.pkid.is_some();
            let pkid = match p.pkid {
                Some(id) => id,
                None => {
                    let forwarded = &self.forwarded;
                    let id = ids.alloc(|id| forwarded.contains_key(&id));
                    p.pkid = Some(id);
                    // The packet id is durable before the broker can see it (QoS 2 once).
                    save_parked(ctx, link, p);
                    id
                }
            };
            self.forwarded.insert(pkid, p.key);
            let packet = if p.released {
                mqtt::Packet::PubRel { packet_id: pkid }
            } else {
                mqtt::Packet::Publish(mqtt::Publish {
                    dup,
                    qos: p.qos,
                    retain: p.retain,
                    topic: p.topic.clone(),
                    packet_id: Some(pkid),
                    payload: p.data.clone(),
                })
            };
            ctx.after_persist(Output::Send { session, packet });
        }
        self.parked = parked;
    }

    /// A PUBLISH on `topic` while the broker is away (a live, durable session). Answers the
    /// device once the parked copy is durable.
    pub(super) fn park(&mut self, ctx: &mut Ctx, link: &Link, topic: String, p: Publish) {
        let ack = |rc| puback_for(&p, rc);
        let reply = match p.qos {
            codec::QoS::MinusOne | codec::QoS::AtMostOnce => {
                ctx.stats.uplink_dropped += 1;
                return;
            }
            codec::QoS::ExactlyOnce if self.unreleased.contains(&p.msg_id) => {
                ctx.transmit(link.addr, Message::Pubrec { msg_id: p.msg_id });
                return;
            }
            codec::QoS::ExactlyOnce => Message::Pubrec { msg_id: p.msg_id },
            codec::QoS::AtLeastOnce => ack(ReturnCode::Accepted),
        };
        if self.parked.len() >= ctx.settings.max_queued_per_device {
            ctx.transmit(link.addr, ack(ReturnCode::Congestion));
            return;
        }
        let parked = Parked {
            key: PARKED_BASE + self.next,
            topic,
            qos: to_mqtt_qos(p.qos),
            retain: p.retain,
            data: p.data,
            pkid: None,
            released: false,
        };
        self.next += 1;
        save_parked(ctx, link, &parked);
        self.parked.push_back(parked);
        if p.qos == codec::QoS::ExactlyOnce {
            self.unreleased.insert(p.msg_id);
        }
        ctx.stats.uplink_publishes += 1;
        // The device's acknowledgement promises durability: it waits for the store.
        ctx.transmit_after_persist(true, link.addr, reply);
    }

    /// PUBACK or PUBCOMP: true when it was for a parked message (it is the broker's now).
    pub(super) fn acked(&mut self, ctx: &mut Ctx, link: &Link, pkid: u16) -> bool {
        let Some(key) = self.forwarded.remove(&pkid) else {
            return false;
        };
        self.parked.retain(|p| p.key != key);
        ctx.persist(PersistOp::Delete {
            table: Table::Uplink,
            key: persist::numbered_key(link.client_id, key),
        });
        true
    }

    /// PUBREC: true when it was for a parked QoS 2 message (released, durably first).
    pub(super) fn released(&mut self, ctx: &mut Ctx, link: &Link, pkid: u16) -> bool {
        let Some(&key) = self.forwarded.get(&pkid) else {
            return false;
        };
        let Some(session) = link.session else {
            return true;
        };
        if let Some(p) = self.parked.iter_mut().find(|p| p.key == key) {
            p.released = true;
        }
        if let Some(p) = self.parked.iter().find(|p| p.key == key).cloned() {
            save_parked(ctx, link, &p);
        }
        ctx.after_persist(Output::Send {
            session,
            packet: mqtt::Packet::PubRel { packet_id: pkid },
        });
        true
    }

    /// Puts back a parked message read from the store.
    pub(super) fn restore(&mut self, pkids: &mut PacketIds, n: u64, r: UplinkRecord) {
        if let UplinkRecord::Parked {
            topic,
            qos,
            retain,
            data,
            pkid,
            released,
        } = r
        {
            self.next = self.next.max(n.saturating_sub(PARKED_BASE) + 1);
            if let Some(id) = pkid {
                pkids.at_least(id);
            }
            self.parked.push_back(Parked {
                key: n,
                topic,
                qos: mqtt::QoS::try_from(qos).unwrap_or(mqtt::QoS::AtLeastOnce),
                retain,
                data: Bytes::from(data.0),
                pkid,
                released,
            });
        }
    }
}

fn save_parked(ctx: &mut Ctx, link: &Link, p: &Parked) {
    let record = UplinkRecord::Parked {
        topic: p.topic.clone(),
        qos: p.qos as u8,
        retain: p.retain,
        data: persist::Hex(p.data.to_vec()),
        pkid: p.pkid,
        released: p.released,
    };
    ctx.persist(persist::put(
        Table::Uplink,
        persist::numbered_key(link.client_id, p.key),
        &record,
    ));
}
