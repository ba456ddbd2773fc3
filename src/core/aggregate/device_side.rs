//! What a device sends on its virtual session, carried onto the shared sessions: its CONNECT
//! (kept here: its will), uplink PUBLISH / PUBREL (packet ids re-allocated per shared session),
//! its acks of downlink messages (the broker's message is acknowledged once every device it
//! went to took it), SUBSCRIBE / UNSUBSCRIBE (through the filter table) and its end (the will).
//!
//! Owns: the `impl Aggregate` blocks for a device's packets. Must never: touch a device.

use std::collections::{BTreeSet, HashMap};

use tracing::debug;

use super::shared::Flight;
use super::{Aggregate, DownKey, Virtual};
use crate::core::ctx::Ctx;
use crate::core::persist;
use crate::core::types::{Output, SessionId, Table};
use crate::mqtt;

impl Aggregate {
    /// A device opened its session: kept here, spread over the shared session with the
    /// fewest devices, accepted at once when that one is up.
    pub(super) fn open_virtual(
        &mut self,
        vs: SessionId,
        connect: &mqtt::Connect,
        key: String,
        durable: bool,
    ) {
        if let Some(old) = self.detached.remove(&key) {
            // Connected again: it subscribes again to what it holds.
            self.drop_virtual(old);
        }
        let k = (0..self.shared.len())
            .min_by_key(|&k| self.shared[k].devices)
            .unwrap_or(0);
        self.shared[k].devices += 1;
        let accepted = self.shared[k].connected;
        // Its QoS 2 flows from an earlier session (or process) continue under their ids.
        let mut up = HashMap::new();
        for (d, sk, s) in self.parked.remove(&key).unwrap_or_default() {
            match self.shared[sk].flight_mut(s) {
                Some(Flight::Publish { from, .. }) => *from = Some((vs, d)),
                Some(_) => continue,
                None => self.shared[sk].restore(
                    s,
                    Flight::Publish {
                        from: Some((vs, d)),
                        publish: None,
                        row: Some((key.clone(), d)),
                        sent: true,
                        released: false,
                    },
                ),
            }
            up.insert(d, (sk, s));
        }
        self.virt.insert(
            vs,
            Virtual {
                client_id: connect.client_id.clone(),
                key,
                durable,
                shared: k,
                will: connect.will.clone(),
                said_bye: false,
                accepted,
                detached: false,
                up,
                down: HashMap::new(),
                next_down: 0,
                filters: BTreeSet::new(),
            },
        );
        if accepted {
            self.accept(vs);
        }
    }

    /// The device's CONNACK: it has no session at the broker, so a persistent device
    /// subscribes again to what it holds (the filter table counts it again).
    pub(super) fn accept(&mut self, vs: SessionId) {
        self.inbox.push_back((
            vs,
            mqtt::Packet::ConnAck {
                session_present: false,
                code: mqtt::ConnectReturnCode::Accepted,
            },
        ));
    }

    pub(super) fn on_device_packet(&mut self, ctx: &mut Ctx, vs: SessionId, packet: mqtt::Packet) {
        match packet {
            mqtt::Packet::Publish(p) => self.uplink(ctx, vs, p),
            mqtt::Packet::PubRel { packet_id } => self.uplink_release(vs, packet_id),
            mqtt::Packet::PubAck { packet_id } | mqtt::Packet::PubRec { packet_id } => {
                if let Some(key) = self
                    .virt
                    .get_mut(&vs)
                    .and_then(|v| v.down.remove(&packet_id))
                {
                    self.taken(key);
                }
            }
            mqtt::Packet::Subscribe { packet_id, filters } => {
                self.subscribe(vs, packet_id, filters)
            }
            mqtt::Packet::Unsubscribe { packet_id, filters } => {
                self.unsubscribe(vs, filters);
                self.inbox
                    .push_back((vs, mqtt::Packet::UnsubAck { packet_id }));
            }
            mqtt::Packet::Disconnect => {
                if let Some(v) = self.virt.get_mut(&vs) {
                    v.said_bye = true;
                }
            }
            // PUBCOMP: the gateway never sends a device's session a PUBREL (the broker's is
            // answered here); PINGREQ: the shared sessions keep themselves alive.
            _ => {}
        }
    }

    fn uplink(&mut self, ctx: &mut Ctx, vs: SessionId, p: mqtt::Publish) {
        let Some(v) = self.virt.get_mut(&vs) else {
            return;
        };
        let Some(d) = p.packet_id else {
            if !self.shared[v.shared].send(&mut self.ready, mqtt::Packet::Publish(p)) {
                ctx.stats.uplink_dropped += 1;
            }
            return;
        };
        if let Some(&(k, s)) = v.up.get(&d) {
            // The device sent it again under the same id: still the same flight (after a
            // restart its content is known again only now).
            if let Some(Flight::Publish { publish, .. }) = self.shared[k].flight_mut(s) {
                publish.get_or_insert(p);
            }
            self.shared[k].resend(&mut self.ready, s);
            return;
        }
        let k = v.shared;
        let shared = &mut self.shared[k];
        let row = (p.qos == mqtt::QoS::ExactlyOnce && v.durable).then(|| (v.key.clone(), d));
        let flight = Flight::Publish {
            from: Some((vs, d)),
            publish: Some(p),
            row: row.clone(),
            sent: false,
            released: false,
        };
        let Some(s) = shared.reserve(flight) else {
            ctx.stats.uplink_dropped += 1;
            debug!(client_id = %v.client_id, "every packet id of the shared session is in flight; PUBLISH dropped");
            return;
        };
        v.up.insert(d, (k, s));
        let Some((key, d)) = row else {
            shared.resend(&mut self.ready, s);
            return;
        };
        // Exactly once across a restart: the shared packet id is on disk before the broker
        // sees it, so a PUBLISH the device sends again after a restart goes under it again.
        let record = persist::UplinkRecord::Aggregated {
            packet_id: d,
            shared: u16::try_from(k).unwrap_or(u16::MAX),
            shared_packet_id: s,
        };
        ctx.persist(persist::put(
            Table::Uplink,
            persist::numbered_key(&key, persist::AGGREGATED_UPLINK_BASE + u64::from(d)),
            &record,
        ));
        if let (Some(packet), Some(session)) = (shared.take_send(s), shared.session) {
            ctx.after_persist(Output::Send { session, packet });
        }
    }

    fn uplink_release(&mut self, vs: SessionId, d: u16) {
        let Some(v) = self.virt.get(&vs) else {
            return;
        };
        let Some(&(k, s)) = v.up.get(&d) else {
            // Nothing of it is held any more (completed, or from before a restart).
            self.inbox
                .push_back((vs, mqtt::Packet::PubComp { packet_id: d }));
            return;
        };
        let shared = &mut self.shared[k];
        if let Some(Flight::Publish { released, .. }) = shared.flight_mut(s) {
            *released = true;
        }
        shared.send(&mut self.ready, mqtt::Packet::PubRel { packet_id: s });
    }

    /// One device took (or will never take) downlink message `key`: once all of them have,
    /// the broker gets its PUBACK / PUBREC.
    pub(super) fn taken(&mut self, key: DownKey) {
        let Some(o) = self.owed.get_mut(&key) else {
            return;
        };
        o.remaining = o.remaining.saturating_sub(1);
        if o.remaining > 0 {
            return;
        }
        let qos = o.qos;
        self.owed.remove(&key);
        let (k, epoch, packet_id) = key;
        if self.shared[k].epoch == epoch {
            self.ack_upstream(k, qos, packet_id);
        }
        // From an earlier connection: the broker sends it again on this one.
    }

    fn subscribe(&mut self, vs: SessionId, packet_id: u16, wanted: Vec<(String, mqtt::QoS)>) {
        let Some(v) = self.virt.get_mut(&vs) else {
            return;
        };
        let mut filters = Vec::with_capacity(wanted.len());
        let mut asked = Vec::with_capacity(wanted.len());
        for (f, q) in wanted {
            let (upstream, generation) = self.filters.join(&f, vs, q);
            self.leaving.remove(&f);
            v.filters.insert(f.clone());
            filters.push((f, upstream, generation));
            asked.push(q);
        }
        let flight = Flight::Subscribe {
            filters,
            waiter: Some((vs, packet_id, asked)),
        };
        if self.shared[0].start(&mut self.ready, flight).is_none() {
            let codes = vec![mqtt::SubackCode::Failure];
            self.inbox
                .push_back((vs, mqtt::Packet::SubAck { packet_id, codes }));
        }
    }

    pub(super) fn unsubscribe(&mut self, vs: SessionId, filters: Vec<String>) {
        let Some(v) = self.virt.get_mut(&vs) else {
            return;
        };
        for f in filters {
            v.filters.remove(&f);
            if self.filters.leave(&f, vs) {
                self.leaving.insert(f);
            }
        }
    }

    /// The device's session ended: its subscriptions are released, what it owed the broker
    /// counts as taken, its uplink flights finish without it, and — unless it said
    /// DISCONNECT — its will is published.
    pub(super) fn close_virtual(&mut self, vs: SessionId) {
        let Some(mut v) = self.virt.remove(&vs) else {
            return;
        };
        let k = v.shared;
        self.shared[k].devices = self.shared[k].devices.saturating_sub(1);
        for (_, key) in v.down.drain() {
            self.taken(key);
        }
        if v.durable {
            // Its subscriptions outlive the session, as the broker's would.
            self.detached.insert(v.key.clone(), vs);
        } else {
            for f in std::mem::take(&mut v.filters) {
                if self.filters.leave(&f, vs) {
                    self.leaving.insert(f);
                }
            }
        }
        for (d, (sk, s)) in std::mem::take(&mut v.up) {
            if let Some(Flight::Publish { from, row, .. }) = self.shared[sk].flight_mut(s) {
                *from = None;
                if v.durable && row.is_some() {
                    // Its next session continues it (the device keeps its QoS 2 flows).
                    self.parked
                        .entry(v.key.clone())
                        .or_default()
                        .push((d, sk, s));
                }
            }
        }
        let will = v.will.take();
        if v.durable {
            v.detached = true;
            self.virt.insert(vs, v.clone_detached());
        }
        if v.said_bye {
            return;
        }
        let Some(will) = will else {
            return;
        };
        debug!(client_id = %v.client_id, topic = %will.topic, "device gone without DISCONNECT; publishing its will");
        let publish = mqtt::Publish {
            dup: false,
            qos: will.qos,
            retain: will.retain,
            topic: will.topic,
            packet_id: None,
            payload: will.message,
        };
        if will.qos == mqtt::QoS::AtMostOnce {
            self.shared[k].send(&mut self.ready, mqtt::Packet::Publish(publish));
        } else {
            let flight = Flight::Publish {
                from: None,
                publish: Some(publish),
                row: None,
                sent: false,
                released: false,
            };
            let _ = self.shared[k].start(&mut self.ready, flight);
        }
    }
}

impl Aggregate {
    /// Forgets a virtual session altogether (a detached one replaced by a new session, or
    /// whose device is gone): its filters are released, what it owed counts as taken.
    pub(super) fn drop_virtual(&mut self, vs: SessionId) {
        let Some(v) = self.virt.remove(&vs) else {
            return;
        };
        if self.detached.get(&v.key) == Some(&vs) {
            self.detached.remove(&v.key);
        }
        for f in v.filters {
            if self.filters.leave(&f, vs) {
                self.leaving.insert(f);
            }
        }
        for key in v.down.into_values() {
            self.taken(key);
        }
    }
}

impl Virtual {
    /// What stays of an ended durable session: its filters (and the messages given to its
    /// device's buffer, once they are).
    fn clone_detached(&self) -> Virtual {
        Virtual {
            client_id: self.client_id.clone(),
            key: self.key.clone(),
            durable: true,
            shared: self.shared,
            will: None,
            said_bye: true,
            accepted: true,
            detached: true,
            up: HashMap::new(),
            down: HashMap::new(),
            next_down: self.next_down,
            filters: self.filters.clone(),
        }
    }
}
