//! What the broker sends on a shared session: its CONNACK (devices waiting are accepted, the
//! filters are subscribed again when the broker lost the session), PUBLISH (fanned out to
//! every device whose filter matches, each on its own packet id), and the acks of uplink
//! flights and subscriptions (routed back to the device that sent them).
//!
//! Owns: the `impl Aggregate` blocks for broker packets. Must never: touch a device.

use std::time::Instant;

use tracing::debug;

use super::shared::Flight;
use super::{Aggregate, DownKey, Owed};
use crate::core::ctx::Ctx;
use crate::core::persist;
use crate::core::types::{PersistOp, SessionId, Table};
use crate::mqtt;

impl Aggregate {
    pub(crate) fn on_upstream(
        &mut self,
        ctx: &mut Ctx,
        now: Instant,
        k: usize,
        packet: mqtt::Packet,
    ) {
        match packet {
            mqtt::Packet::ConnAck {
                code,
                session_present,
            } => self.on_connack(now, k, code, session_present),
            mqtt::Packet::Publish(p) => self.fan_out(k, p),
            mqtt::Packet::PubRel { packet_id } => {
                self.received.remove(&(k, packet_id));
                self.shared[k].send(&mut self.ready, mqtt::Packet::PubComp { packet_id });
            }
            mqtt::Packet::PubAck { packet_id } => {
                if let Some(Flight::Publish { from, row, .. }) = self.shared[k].finish(packet_id) {
                    forget_row(ctx, row);
                    self.back_to_device(from, |d| mqtt::Packet::PubAck { packet_id: d }, true);
                }
            }
            mqtt::Packet::PubRec { packet_id } => self.on_pubrec(k, packet_id),
            mqtt::Packet::PubComp { packet_id } => {
                if let Some(Flight::Publish { from, row, .. }) = self.shared[k].finish(packet_id) {
                    forget_row(ctx, row);
                    self.back_to_device(from, |d| mqtt::Packet::PubComp { packet_id: d }, true);
                }
            }
            mqtt::Packet::SubAck { packet_id, codes } => self.on_suback(k, packet_id, &codes),
            mqtt::Packet::UnsubAck { packet_id } => {
                self.shared[k].finish(packet_id);
            }
            mqtt::Packet::PingResp => {}
            other => debug!(session = k, packet = ?other, "unexpected packet on a shared session"),
        }
    }

    pub(crate) fn on_closed(&mut self, now: Instant, k: usize) {
        self.shared[k].on_closed(now);
        // Downlink messages of that connection: the broker sends them again (its session is
        // persistent) or they are gone with it; either way they are no longer owed on it.
        self.owed.retain(|(s, _, _), _| *s != k);
    }

    fn on_connack(
        &mut self,
        now: Instant,
        k: usize,
        code: mqtt::ConnectReturnCode,
        session_present: bool,
    ) {
        let Some(present) = self.shared[k].on_connack(&mut self.ready, now, code, session_present)
        else {
            return;
        };
        if !present {
            self.received.retain(|(s, _)| *s != k);
            if k == 0 {
                self.resubscribe_all();
            }
        }
        let waiting: Vec<SessionId> = self
            .virt
            .iter_mut()
            .filter(|(_, v)| v.shared == k && !v.accepted)
            .map(|(vs, v)| {
                v.accepted = true;
                *vs
            })
            .collect();
        let mut waiting = waiting;
        waiting.sort();
        for vs in waiting {
            self.accept(vs);
        }
    }

    /// The broker has none of the filters (a new or lost shared session): SUBSCRIBE every
    /// filter some device holds that is not being subscribed already.
    fn resubscribe_all(&mut self) {
        for f in self.filters.names() {
            if self.shared[0].subscribing(&f) {
                continue;
            }
            let Some((qos, generation)) = self.filters.resubscribe(&f) else {
                continue;
            };
            let flight = Flight::Subscribe {
                filters: vec![(f, qos, generation)],
                waiter: None,
            };
            let _ = self.shared[0].start(&mut self.ready, flight);
        }
    }

    /// The broker's PUBACK / PUBREC for a message of the gateway's (QoS 1/2 downlink).
    pub(super) fn ack_upstream(&mut self, k: usize, qos: mqtt::QoS, packet_id: u16) {
        let packet = if qos == mqtt::QoS::ExactlyOnce {
            self.received.insert((k, packet_id));
            mqtt::Packet::PubRec { packet_id }
        } else {
            mqtt::Packet::PubAck { packet_id }
        };
        self.shared[k].send(&mut self.ready, packet);
    }

    /// A PUBLISH from the broker: to every device with a matching filter, each once, at the
    /// message's QoS (the device lowers it to what it was granted). QoS 1/2 is acknowledged
    /// upstream when the last of them took it (delivered, or made durable for a sleeper).
    fn fan_out(&mut self, k: usize, p: mqtt::Publish) {
        let targets = self.filters.targets(&p.topic, p.retain);
        let Some(packet_id) = p.packet_id.filter(|_| p.qos != mqtt::QoS::AtMostOnce) else {
            for vs in targets {
                if self.virt.get(&vs).is_some_and(|v| !v.detached) {
                    self.inbox.push_back((vs, mqtt::Packet::Publish(p.clone())));
                }
            }
            return;
        };
        if p.qos == mqtt::QoS::ExactlyOnce && self.received.contains(&(k, packet_id)) {
            // Already taken by its devices: the broker missed our PUBREC.
            self.shared[k].send(&mut self.ready, mqtt::Packet::PubRec { packet_id });
            return;
        }
        let key: DownKey = (k, self.shared[k].epoch, packet_id);
        if self.owed.contains_key(&key) {
            return; // still with its devices
        }
        let mut sent = 0;
        for vs in targets {
            let Some(v) = self.virt.get_mut(&vs) else {
                continue;
            };
            if v.detached && p.qos == mqtt::QoS::AtMostOnce {
                continue; // not kept for a device that is away, as a broker would not
            }
            if v.down.len() >= usize::from(u16::MAX) {
                continue; // cannot happen: a device holds at most limits.max_queued_per_device
            }
            // The broker's own packet id when free (as in transparent mode, a re-sent copy
            // then carries the id the device's buffer knows), else the next free one.
            let mut vid = packet_id;
            while v.down.contains_key(&vid) {
                v.next_down = v.next_down.wrapping_add(1).max(1);
                vid = v.next_down;
            }
            v.down.insert(vid, key);
            sent += 1;
            let mut copy = p.clone();
            copy.packet_id = Some(vid);
            copy.dup = false;
            if v.detached {
                self.to_detached.push((v.key.clone(), vs, copy));
            } else {
                self.inbox.push_back((vs, mqtt::Packet::Publish(copy)));
            }
        }
        if sent == 0 {
            self.ack_upstream(k, p.qos, packet_id);
        } else {
            self.owed.insert(
                key,
                Owed {
                    remaining: sent,
                    qos: p.qos,
                },
            );
        }
    }

    fn on_pubrec(&mut self, k: usize, packet_id: u16) {
        let Some(Flight::Publish { from, released, .. }) = self.shared[k].flight_mut(packet_id)
        else {
            // Unknown id (a flight of an earlier process): complete it.
            self.shared[k].send(&mut self.ready, mqtt::Packet::PubRel { packet_id });
            return;
        };
        match *from {
            Some((vs, d)) if self.virt.contains_key(&vs) => {
                // The device's PUBREL follows; it goes up under this id.
                self.inbox
                    .push_back((vs, mqtt::Packet::PubRec { packet_id: d }));
            }
            _ => {
                *released = true;
                self.shared[k].send(&mut self.ready, mqtt::Packet::PubRel { packet_id });
            }
        }
    }

    /// Routes a completed uplink flight's ack to its device (when its session still exists).
    fn back_to_device(
        &mut self,
        from: Option<(SessionId, u16)>,
        packet: impl FnOnce(u16) -> mqtt::Packet,
        done: bool,
    ) {
        let Some((vs, d)) = from else {
            return;
        };
        let Some(v) = self.virt.get_mut(&vs) else {
            return;
        };
        if done {
            v.up.remove(&d);
        }
        self.inbox.push_back((vs, packet(d)));
    }

    fn on_suback(&mut self, k: usize, packet_id: u16, codes: &[mqtt::SubackCode]) {
        let Some(Flight::Subscribe { filters, waiter }) = self.shared[k].finish(packet_id) else {
            return;
        };
        for (i, (f, _, generation)) in filters.iter().enumerate() {
            if matches!(codes.get(i), Some(mqtt::SubackCode::Granted(_))) {
                self.filters.acked(f, *generation);
            }
        }
        let Some((vs, d, asked)) = waiter else {
            return;
        };
        let mut answer = Vec::with_capacity(asked.len());
        for (i, q) in asked.iter().enumerate() {
            match codes.get(i) {
                Some(mqtt::SubackCode::Granted(g)) => {
                    answer.push(mqtt::SubackCode::Granted((*q).min(*g)));
                }
                _ => {
                    answer.push(mqtt::SubackCode::Failure);
                    if let Some((f, _, _)) = filters.get(i) {
                        self.unsubscribe(vs, vec![f.clone()]);
                    }
                }
            }
        }
        if self.virt.contains_key(&vs) {
            self.inbox.push_back((
                vs,
                mqtt::Packet::SubAck {
                    packet_id: d,
                    codes: answer,
                },
            ));
        }
    }
}

/// Deletes the stored row of a finished durable QoS 2 flight.
fn forget_row(ctx: &mut Ctx, row: Option<(String, u16)>) {
    if let Some((client_id, d)) = row {
        ctx.persist(PersistOp::Delete {
            table: Table::Uplink,
            key: persist::numbered_key(&client_id, persist::AGGREGATED_UPLINK_BASE + u64::from(d)),
        });
    }
}
