//! Durability (issue: nothing lost across restarts): persistence is an output, confirmation an
//! input; acknowledgements that promise durability wait for the store; a gateway rebuilt from
//! the store carries on.

use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::core::{DeviceState, PersistOp, Table};

pub(super) fn persistent() -> Settings {
    Settings {
        persistent: true,
        ..settings()
    }
}

impl World {
    /// The store commits the first `n` pending batches and confirms them.
    pub(super) fn commit(&mut self, n: usize) {
        let batches: Vec<_> = self
            .unconfirmed
            .drain(..n.min(self.unconfirmed.len()))
            .collect();
        let mut last = None;
        for (seq, ops) in batches {
            for op in ops {
                match op {
                    PersistOp::Put { table, key, value } => {
                        self.store.insert((table, key), value);
                    }
                    PersistOp::Delete { table, key } => {
                        self.store.remove(&(table, key));
                    }
                    PersistOp::DeletePrefix { table, prefix } => {
                        self.store
                            .retain(|(t, k), _| !(*t == table && k.starts_with(&prefix)));
                    }
                }
            }
            last = Some(seq);
        }
        if let Some(seq) = last {
            self.gw.handle_persisted(self.now, seq);
            self.drain();
        }
    }

    pub(super) fn commit_all(&mut self) {
        self.commit(usize::MAX);
    }

    /// The process dies (unconfirmed batches are lost) and a new gateway restores the store.
    pub(super) fn restart(&mut self, settings: Settings) -> crate::core::RestoreReport {
        self.unconfirmed.clear();
        self.out.clear();
        self.gw = Gateway::new(settings, self.now);
        let records = self
            .store
            .iter()
            .map(|((t, k), v)| (*t, k.clone(), v.clone()))
            .collect::<Vec<_>>();
        let report = self.gw.restore(self.now, records);
        self.drain();
        report
    }
}

#[test]
fn persistent_session_is_restored_and_the_device_carries_on_without_reconnecting() {
    let mut w = World::with(persistent());
    let a = addr(1);
    let will = Will {
        topic: "w/dev",
        qos: QoS::AtLeastOnce,
        retain: true,
        msg: b"gone",
    };
    let s = w.connect(&a, "dev", false, Some(will.clone()));
    let id = w.register(&a, "up/t", 1);
    w.subscribe(&a, s, "down/#", QoS::AtLeastOnce, mqtt::QoS::AtLeastOnce, 2);
    w.commit_all();
    let report = w.restart(persistent());
    assert_eq!(report.devices, 1);
    // The upstream session is reopened at once: clean session 0, the same will.
    let opened = w.opened();
    assert_eq!(opened.len(), 1);
    let (s2, connect) = &opened[0];
    assert!(!connect.clean_session);
    assert_eq!(connect.will, Some(will.last_will()));
    w.broker_connack(*s2);
    assert_eq!(w.gw.device_state("dev"), Some(DeviceState::Active));
    // The device publishes with the id it registered before the restart.
    w.device_send(&a, publish(QoS::AtLeastOnce, TopicRef::Id(id), 5, b"x"));
    let up = w.take_upstream(*s2);
    let [mqtt::Packet::Publish(p)] = up.as_slice() else {
        panic!("{up:?}")
    };
    assert_eq!(p.topic, "up/t");
}

#[test]
fn clean_session_devices_are_not_stored_and_a_clean_connect_forgets_a_stored_one() {
    let mut w = World::with(persistent());
    let a = addr(1);
    w.connect(&a, "clean", true, None);
    w.commit_all();
    assert!(w.store.is_empty(), "{:?}", w.store);
    w.connect(&a, "dev", false, None);
    w.commit_all();
    assert_eq!(w.store.len(), 1);
    w.device_send(&a, Message::Disconnect { duration: None });
    w.take_all();
    w.connect(&a, "dev", true, None);
    w.commit_all();
    assert!(w.store.is_empty());
}

#[test]
fn sleeping_buffer_is_acked_to_the_broker_only_when_durable_and_survives_a_restart() {
    let mut w = World::with(persistent());
    let a = addr(1);
    let s = w.connect(&a, "dev", false, None);
    let cmd = w.subscribe(&a, s, "cmd", QoS::AtLeastOnce, mqtt::QoS::AtLeastOnce, 1);
    w.device_send(
        &a,
        Message::Disconnect {
            duration: Some(3600),
        },
    );
    w.take_to_device(&a);
    w.commit_all();
    w.broker(
        s,
        mqtt_publish(mqtt::QoS::AtLeastOnce, false, "cmd", Some(9), b"keep"),
    );
    assert!(
        w.take_upstream(s).is_empty(),
        "no PUBACK before the store confirmed"
    );
    w.commit_all();
    assert_eq!(
        w.take_upstream(s),
        vec![mqtt::Packet::PubAck { packet_id: 9 }]
    );

    w.advance(Duration::from_secs(600));
    w.restart(persistent());
    let (s2, _) = w.opened()[0].clone();
    w.broker_connack(s2);
    assert_eq!(w.gw.device_state("dev"), Some(DeviceState::Asleep));
    w.device_send(
        &a,
        Message::PingReq {
            client_id: Some("dev".into()),
        },
    );
    let p = one_pub(w.take_to_device(&a));
    assert_eq!((p.topic, &p.data[..]), (TopicRef::Id(cmd), &b"keep"[..]));
    w.device_send(&a, puback(cmd, p.msg_id));
    assert_eq!(w.take_to_device(&a), vec![Message::PingResp]);
    // Delivered: no second ack to the broker, and the durable copy is gone.
    assert!(w.take_upstream(s2).is_empty());
    w.commit_all();
    assert!(!w.store.keys().any(|(t, _)| *t == Table::Buffer));
}

#[test]
fn uplink_qos2_is_exactly_once_across_a_restart() {
    let mut w = World::with(persistent());
    let a = addr(1);
    let s = w.connect(&a, "dev", false, None);
    let id = w.register(&a, "up/t", 1);
    w.commit_all();
    w.device_send(&a, publish(QoS::ExactlyOnce, TopicRef::Id(id), 7, b"once"));
    assert!(
        w.take_upstream(s).is_empty(),
        "forwarded only once the flow is durable"
    );
    w.commit_all();
    let up = w.take_upstream(s);
    let [mqtt::Packet::Publish(p)] = up.as_slice() else {
        panic!("{up:?}")
    };
    let pkid = p.packet_id.unwrap();
    w.broker(s, mqtt::Packet::PubRec { packet_id: pkid });
    assert!(w.take_to_device(&a).is_empty(), "PUBREC only once durable");
    w.commit_all();
    assert_eq!(w.take_to_device(&a), vec![Message::Pubrec { msg_id: 7 }]);

    // Crash; the device did not hear PUBREC and re-sends PUBLISH, then PUBREL.
    w.restart(persistent());
    let (s2, _) = w.opened()[0].clone();
    w.broker_connack(s2);
    w.device_send(
        &a,
        sn_publish(true, QoS::ExactlyOnce, false, TopicRef::Id(id), 7, b"once"),
    );
    assert_eq!(w.take_to_device(&a), vec![Message::Pubrec { msg_id: 7 }]);
    assert!(
        w.take_upstream(s2).is_empty(),
        "never a second copy upstream"
    );
    w.device_send(&a, Message::Pubrel { msg_id: 7 });
    assert_eq!(
        w.take_upstream(s2),
        vec![mqtt::Packet::PubRel { packet_id: pkid }]
    );
    w.broker(s2, mqtt::Packet::PubComp { packet_id: pkid });
    assert_eq!(w.take_to_device(&a), vec![Message::Pubcomp { msg_id: 7 }]);
    w.commit_all();
    assert!(!w.store.keys().any(|(t, _)| *t == Table::Uplink));
}

#[test]
fn uplink_qos2_lost_before_pubrec_is_sent_again_under_the_same_packet_id() {
    let mut w = World::with(persistent());
    let a = addr(1);
    let s = w.connect(&a, "dev", false, None);
    let id = w.register(&a, "up/t", 1);
    w.device_send(&a, publish(QoS::ExactlyOnce, TopicRef::Id(id), 7, b"once"));
    w.commit_all();
    let up = w.take_upstream(s);
    let [mqtt::Packet::Publish(p)] = up.as_slice() else {
        panic!("{up:?}")
    };
    let pkid = p.packet_id.unwrap();
    w.restart(persistent());
    let (s2, _) = w.opened()[0].clone();
    w.broker_connack(s2);
    w.device_send(
        &a,
        sn_publish(true, QoS::ExactlyOnce, false, TopicRef::Id(id), 7, b"once"),
    );
    let up = w.take_upstream(s2);
    let [mqtt::Packet::Publish(p)] = up.as_slice() else {
        panic!("{up:?}")
    };
    // The broker recognises the packet id and answers PUBREC without delivering twice.
    assert_eq!((p.packet_id, p.dup), (Some(pkid), true));
}

#[test]
fn deferred_acks_keep_the_order_of_packets_on_a_session() {
    let mut w = World::with(persistent());
    let a = addr(1);
    let s = w.connect(&a, "dev", false, None);
    let id = w.register(&a, "up/t", 1);
    w.commit_all();
    w.device_send(&a, publish(QoS::ExactlyOnce, TopicRef::Id(id), 7, b"first"));
    // A QoS 0 publish right behind it must not overtake it upstream.
    w.device_send(&a, publish(QoS::AtMostOnce, TopicRef::Id(id), 0, b"second"));
    assert!(w.take_upstream(s).is_empty());
    w.commit_all();
    let datas: Vec<Vec<u8>> = w
        .take_upstream(s)
        .into_iter()
        .filter_map(|p| match p {
            mqtt::Packet::Publish(p) => Some(p.payload.to_vec()),
            _ => None,
        })
        .collect();
    assert_eq!(datas, vec![b"first".to_vec(), b"second".to_vec()]);
}

#[test]
fn a_corrupt_record_is_skipped_not_fatal() {
    let mut w = World::with(persistent());
    w.store.insert(
        (Table::Device, b"\x00\x03bad".to_vec()),
        b"{not json".to_vec(),
    );
    let report = w.restart(persistent());
    assert_eq!((report.devices, report.skipped), (0, 1));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// The store confirms a random prefix of the batches, then the process dies. Every message
    /// the gateway acknowledged to the broker reaches the device after the restart, exactly
    /// once; nothing unacknowledged is claimed.
    #[test]
    fn acknowledged_sleep_buffer_messages_survive_any_crash_point(
        qos2 in proptest::collection::vec(any::<bool>(), 1..8),
        confirmed in 0usize..10,
    ) {
        let mut w = World::with(persistent());
        let a = addr(1);
        let s = w.connect(&a, "dev", false, None);
        let cmd = w.subscribe(&a, s, "cmd", QoS::ExactlyOnce, mqtt::QoS::ExactlyOnce, 1);
        w.device_send(&a, Message::Disconnect { duration: Some(3600) });
        w.take_to_device(&a);
        w.commit_all();
        for (i, q2) in qos2.iter().enumerate() {
            let qos = if *q2 { mqtt::QoS::ExactlyOnce } else { mqtt::QoS::AtLeastOnce };
            let pkid = u16::try_from(i + 1).unwrap();
            let data: &'static [u8] = Box::leak(format!("m{i}").into_bytes().into_boxed_slice());
            w.broker(s, mqtt_publish(qos, false, "cmd", Some(pkid), data));
        }
        w.commit(confirmed);
        let acked: Vec<u16> = w
            .take_upstream(s)
            .into_iter()
            .filter_map(|p| match p {
                mqtt::Packet::PubAck { packet_id } | mqtt::Packet::PubRec { packet_id } => Some(packet_id),
                _ => None,
            })
            .collect();
        w.restart(persistent());
        let (s2, _) = w.opened()[0].clone();
        w.broker_connack(s2);
        w.device_send(&a, Message::PingReq { client_id: Some("dev".into()) });
        let mut delivered = Vec::new();
        for _ in 0..32 {
            let down = w.take_to_device(&a);
            if down.contains(&Message::PingResp) {
                break;
            }
            for m in down {
                match m {
                    Message::Publish(p) => {
                        delivered.push(p.data.to_vec());
                        match p.qos {
                            QoS::ExactlyOnce => w.device_send(&a, Message::Pubrec { msg_id: p.msg_id }),
                            _ => w.device_send(&a, puback(cmd, p.msg_id)),
                        }
                    }
                    Message::Pubrel { msg_id } => w.device_send(&a, Message::Pubcomp { msg_id }),
                    other => prop_assert!(false, "unexpected {:?}", other),
                }
            }
        }
        let expected: Vec<Vec<u8>> = acked.iter().map(|p| format!("m{}", p - 1).into_bytes()).collect();
        prop_assert_eq!(delivered, expected);
    }
}

#[test]
fn uplink_qos2_released_flow_completes_after_restart_and_reconnect() {
    let mut w = World::with(persistent());
    let a = addr(1);
    let s = w.connect(&a, "dev", false, None);
    let id = w.register(&a, "up/t", 1);
    w.device_send(&a, publish(QoS::ExactlyOnce, TopicRef::Id(id), 7, b"once"));
    w.commit_all();
    let up = w.take_upstream(s);
    let [mqtt::Packet::Publish(p)] = up.as_slice() else {
        panic!("{up:?}")
    };
    let pkid = p.packet_id.unwrap();
    w.broker(s, mqtt::Packet::PubRec { packet_id: pkid });
    w.commit_all();
    assert_eq!(w.take_to_device(&a), vec![Message::Pubrec { msg_id: 7 }]);
    w.restart(persistent());
    let (s2, _) = w.opened()[0].clone();
    // The device reconnects (clean session 0) from a new address while the restored session
    // is still being accepted: it gets that session's CONNACK, no second connection races it.
    let b = addr(2);
    w.device_send(&b, connect_msg("dev", false, false, 60));
    assert!(w.opened().is_empty());
    assert!(w.take_to_device(&b).is_empty());
    w.broker_connack(s2);
    assert_eq!(w.take_to_device(&b), vec![connack(ReturnCode::Accepted)]);
    w.device_send(&b, Message::Pubrel { msg_id: 7 });
    assert_eq!(
        w.take_upstream(s2),
        vec![mqtt::Packet::PubRel { packet_id: pkid }]
    );
    w.broker(s2, mqtt::Packet::PubComp { packet_id: pkid });
    assert_eq!(w.take_to_device(&b), vec![Message::Pubcomp { msg_id: 7 }]);
}

/// A broker's QoS 2 receiver for one client: a packet id seen and not yet released is a
/// duplicate, never a second delivery.
#[derive(Default)]
struct Qos2Broker {
    unreleased: std::collections::HashSet<u16>,
    delivered: Vec<Vec<u8>>,
}

/// Plays device and broker until nothing moves: the broker answers PUBLISH/PUBREL, the device
/// answers PUBREC with PUBREL and notes PUBREC/PUBCOMP per MsgId; the store confirms at most
/// `budget` more batches.
fn play_qos2(
    w: &mut World,
    a: &DeviceAddr,
    s: SessionId,
    broker: &mut Qos2Broker,
    got_pubrec: &mut [bool],
    done: &mut [bool],
    budget: &mut usize,
) {
    for _ in 0..64 {
        let n = (*budget).min(w.unconfirmed.len());
        *budget -= n;
        w.commit(n);
        let up = w.take_upstream(s);
        let down = w.take_to_device(a);
        if up.is_empty() && down.is_empty() {
            return;
        }
        for p in up {
            match p {
                mqtt::Packet::Publish(p) => {
                    let pkid = p.packet_id.unwrap();
                    if broker.unreleased.insert(pkid) {
                        broker.delivered.push(p.payload.to_vec());
                    }
                    w.broker(s, mqtt::Packet::PubRec { packet_id: pkid });
                }
                mqtt::Packet::PubRel { packet_id } => {
                    broker.unreleased.remove(&packet_id);
                    w.broker(s, mqtt::Packet::PubComp { packet_id });
                }
                _ => {}
            }
        }
        for m in down {
            match m {
                Message::Pubrec { msg_id } => {
                    got_pubrec[usize::from(msg_id)] = true;
                    w.device_send(a, Message::Pubrel { msg_id });
                }
                Message::Pubcomp { msg_id } => done[usize::from(msg_id)] = true,
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Uplink QoS 2 from a device, the process dying after a random number of store commits;
    /// after the restart the device re-sends what it was not told was complete (PUBLISH with
    /// DUP, or PUBREL). Every message reaches the broker exactly once.
    #[test]
    fn uplink_qos2_is_exactly_once_across_any_crash_point(
        k in 1u16..6,
        budget in 0usize..12,
    ) {
        let mut w = World::with(persistent());
        let a = addr(1);
        let s = w.connect(&a, "dev", false, None);
        let id = w.register(&a, "up/t", 1);
        w.commit_all();
        let n = usize::from(k) + 1;
        let (mut broker, mut rec, mut done) = (Qos2Broker::default(), vec![false; n], vec![false; n]);
        let payload = |m: u16| -> &'static [u8] { Box::leak(format!("q{m}").into_bytes().into_boxed_slice()) };
        let mut budget = budget;
        for m in 1..=k {
            w.device_send(&a, publish(QoS::ExactlyOnce, TopicRef::Id(id), m, payload(m)));
            play_qos2(&mut w, &a, s, &mut broker, &mut rec, &mut done, &mut budget);
        }
        // Crash: unconfirmed batches are lost. Restart and resume.
        w.restart(persistent());
        let (s2, _) = w.opened()[0].clone();
        w.broker_connack(s2);
        let mut unlimited = usize::MAX;
        for m in 1..=k {
            let i = usize::from(m);
            if done[i] {
                continue;
            }
            if rec[i] {
                w.device_send(&a, Message::Pubrel { msg_id: m });
            } else {
                w.device_send(&a, sn_publish(true, QoS::ExactlyOnce, false, TopicRef::Id(id), m, payload(m)));
            }
            play_qos2(&mut w, &a, s2, &mut broker, &mut rec, &mut done, &mut unlimited);
        }
        prop_assert!(done[1..].iter().all(|d| *d), "every flow completes: {:?}", done);
        let mut delivered = broker.delivered.clone();
        delivered.sort();
        let mut expected: Vec<Vec<u8>> = (1..=k).map(|m| format!("q{m}").into_bytes()).collect();
        expected.sort();
        prop_assert_eq!(delivered, expected);
    }
}

#[test]
fn a_close_never_overtakes_packets_waiting_for_the_store() {
    let mut w = World::with(persistent());
    let a = addr(1);
    let s = w.connect(&a, "dev", false, None);
    let id = w.register(&a, "up/t", 1);
    w.commit_all();
    w.device_send(&a, publish(QoS::ExactlyOnce, TopicRef::Id(id), 7, b"x"));
    w.device_send(&a, Message::Disconnect { duration: None });
    w.take_to_device(&a);
    assert!(
        w.take_all().is_empty(),
        "nothing for the session before the store confirms"
    );
    w.commit_all();
    let all = w.take_all();
    let kinds: Vec<&str> = all
        .iter()
        .map(|o| match o {
            Output::Send {
                packet: mqtt::Packet::Publish(_),
                ..
            } => "publish",
            Output::Send {
                packet: mqtt::Packet::Disconnect,
                ..
            } => "disconnect",
            Output::Close { session } if *session == s => "close",
            _ => "other",
        })
        .collect();
    assert_eq!(kinds, vec!["publish", "disconnect", "close"]);
}
