//! Riding out a broker outage (persistent sessions, with a store).
//!
//! When the broker closes a persistent session (clean session 0) and a durable store is
//! attached, the device stays connected to the gateway: its QoS 1/2 PUBLISHes are parked in the
//! store and acknowledged to it once durable, QoS 0 is dropped and counted, and the gateway
//! reconnects the session with back-off. When the broker accepts it again, the parked messages
//! go upstream in order; each is deleted once the broker has it. The device is told DISCONNECT
//! only when the broker refuses the session for good.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::info;

use super::types::{puback_for, to_mqtt_qos};
use super::Device;
use crate::codec::{self, Message, Publish, ReturnCode};
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

impl Outage {
    pub fn reconnect_at(&self) -> Option<Instant> {
        self.reconnect_at
    }

    /// The device's PUBREL for a parked QoS 2 message.
    pub fn release(&mut self, msg_id: u16) -> bool {
        self.unreleased.remove(&msg_id)
    }

    pub fn uses_pkid(&self, pkid: u16) -> bool {
        self.forwarded.contains_key(&pkid)
    }

    pub fn in_flight(&self) -> usize {
        self.forwarded.len()
    }

    pub fn resuming(&self) -> bool {
        self.resuming
    }

    pub fn set_resuming(&mut self) {
        self.resuming = true;
    }

    pub fn clear_resuming(&mut self) {
        self.resuming = false;
    }
}

impl Device {
    fn parked_key(&self, key: u64) -> Vec<u8> {
        persist::numbered_key(&self.client_id, key)
    }

    fn save_parked(&self, ctx: &mut Ctx, p: &Parked) {
        let record = UplinkRecord::Parked {
            topic: p.topic.clone(),
            qos: p.qos as u8,
            retain: p.retain,
            data: persist::Hex(p.data.to_vec()),
            pkid: p.pkid,
            released: p.released,
        };
        ctx.persist(persist::put(Table::Uplink, self.parked_key(p.key), &record));
    }

    /// The broker went away: keep the device, try the session again after a back-off.
    pub(super) fn start_outage(&mut self, now: Instant) {
        let o = &mut self.outage;
        o.backoff = if o.backoff.is_zero() {
            self.retry_interval
        } else {
            (o.backoff * 2).min(self.retry_interval * 16)
        };
        o.reconnect_at = Some(now + o.backoff);
        o.resuming = false;
        // What was on its way upstream goes again once the session is back.
        o.forwarded.clear();
        info!(client_id = %self.client_id, retry_in = ?o.backoff, "broker away; device kept, session will be resumed");
    }

    pub(super) fn reconnect(&mut self, ctx: &mut Ctx, _now: Instant) {
        self.outage.reconnect_at = None;
        if self.session.is_some() || !self.state.is_live() {
            return;
        }
        let connect = ctx.connect_packet(&self.client_id, false, self.last_will());
        self.session = Some(ctx.open(Some(self.id), connect));
        self.outage.resuming = true;
    }

    /// CONNACK on a session reopened after a restart or an outage.
    pub(super) fn on_resumed(
        &mut self,
        ctx: &mut Ctx,
        now: Instant,
        session: SessionId,
        code: mqtt::ConnectReturnCode,
        session_present: bool,
    ) {
        self.outage.resuming = false;
        match code {
            mqtt::ConnectReturnCode::Accepted => {
                self.outage.backoff = Duration::ZERO;
                // The session was away: what the broker lost is subscribed again.
                self.session_accepted(ctx, session_present, super::Gap::Lapsed);
                self.flush_parked(ctx, session);
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
                self.outage.reconnect_at = None;
                self.session = None;
                self.broker_ended_session(ctx);
            }
        }
    }

    /// Sends every parked message upstream, in order, under its packet id.
    fn flush_parked(&mut self, ctx: &mut Ctx, session: SessionId) {
        let mut parked = std::mem::take(&mut self.outage.parked);
        for p in parked.iter_mut() {
            let dup = p.pkid.is_some();
            let pkid = match p.pkid {
                Some(id) => id,
                None => {
                    let id = self.alloc_pkid();
                    p.pkid = Some(id);
                    // The packet id is durable before the broker can see it (QoS 2 once).
                    self.save_parked(ctx, p);
                    id
                }
            };
            self.outage.forwarded.insert(pkid, p.key);
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
        self.outage.parked = parked;
    }

    /// A PUBLISH while the broker is away. Returns after answering the device.
    pub(super) fn park(&mut self, ctx: &mut Ctx, p: Publish) {
        if !self.state.is_live() || self.clean_session || !ctx.persistent() {
            return;
        }
        let Some(topic) = self.uplink_topic(ctx, &p) else {
            return;
        };
        let ack = |rc| puback_for(&p, rc);
        let reply = match p.qos {
            codec::QoS::MinusOne | codec::QoS::AtMostOnce => {
                ctx.stats.uplink_dropped += 1;
                return;
            }
            codec::QoS::ExactlyOnce if self.outage.unreleased.contains(&p.msg_id) => {
                ctx.transmit(&self.addr, Message::Pubrec { msg_id: p.msg_id });
                return;
            }
            codec::QoS::ExactlyOnce => Message::Pubrec { msg_id: p.msg_id },
            codec::QoS::AtLeastOnce => ack(ReturnCode::Accepted),
        };
        if self.outage.parked.len() >= ctx.settings.max_queued_per_device {
            ctx.transmit(&self.addr, ack(ReturnCode::Congestion));
            return;
        }
        let parked = Parked {
            key: PARKED_BASE + self.outage.next,
            topic,
            qos: to_mqtt_qos(p.qos),
            retain: p.retain,
            data: p.data,
            pkid: None,
            released: false,
        };
        self.outage.next += 1;
        self.save_parked(ctx, &parked);
        self.outage.parked.push_back(parked);
        if p.qos == codec::QoS::ExactlyOnce {
            self.outage.unreleased.insert(p.msg_id);
        }
        ctx.stats.uplink_publishes += 1;
        // The device's acknowledgement promises durability: it waits for the store.
        if let Some(frame) = ctx.encode(&self.addr, reply) {
            ctx.after_persist(Output::Transmit {
                to: self.addr.clone(),
                frame,
            });
        }
    }

    /// PUBACK or PUBCOMP for a parked message: it is the broker's now.
    pub(super) fn parked_acked(&mut self, ctx: &mut Ctx, pkid: u16) -> bool {
        let Some(key) = self.outage.forwarded.remove(&pkid) else {
            return false;
        };
        self.outage.parked.retain(|p| p.key != key);
        ctx.persist(PersistOp::Delete {
            table: Table::Uplink,
            key: self.parked_key(key),
        });
        true
    }

    /// PUBREC for a parked QoS 2 message: release it (durably first).
    pub(super) fn parked_released(&mut self, ctx: &mut Ctx, pkid: u16) -> bool {
        let Some(&key) = self.outage.forwarded.get(&pkid) else {
            return false;
        };
        let Some(session) = self.session else {
            return true;
        };
        if let Some(p) = self.outage.parked.iter_mut().find(|p| p.key == key) {
            p.released = true;
        }
        if let Some(p) = self.outage.parked.iter().find(|p| p.key == key).cloned() {
            self.save_parked(ctx, &p);
        }
        ctx.after_persist(Output::Send {
            session,
            packet: mqtt::Packet::PubRel { packet_id: pkid },
        });
        true
    }

    /// Puts back a parked message read from the store.
    pub fn restore_parked(&mut self, n: u64, r: UplinkRecord) {
        if let UplinkRecord::Parked {
            topic,
            qos,
            retain,
            data,
            pkid,
            released,
        } = r
        {
            self.outage.next = self.outage.next.max(n.saturating_sub(PARKED_BASE) + 1);
            if let Some(id) = pkid {
                self.pkids.at_least(id);
            }
            self.outage.parked.push_back(Parked {
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
