//! Subscribe and unsubscribe (§6.9): topic ids for names, wildcards, predefined ids and short
//! names, the broker's SUBACK / UNSUBACK, the granted QoS capping delivery, and one durable row
//! per subscription.

use super::record::persistent;
use super::*;
use crate::core::{PersistOp, Table};

// ---------------------------------------------------------------- subscribe

fn subscribe_msg(topic: codec::TopicFilter, qos: QoS, msg_id: u16) -> Message {
    Message::Subscribe(codec::Subscribe {
        dup: false,
        qos,
        msg_id,
        topic,
    })
}

fn suback(qos: QoS, topic_id: u16, msg_id: u16, rc: ReturnCode) -> Message {
    Message::Suback(codec::Suback {
        qos,
        topic_id,
        msg_id,
        return_code: rc,
    })
}

/// Sends SUBSCRIBE, checks the upstream filter, answers with `code`; returns the device's reply.
fn sub_roundtrip(
    w: &mut World,
    a: &DeviceAddr,
    s: SessionId,
    topic: codec::TopicFilter,
    expect_filter: &str,
    code: mqtt::SubackCode,
) -> Vec<Message> {
    w.device_send(a, subscribe_msg(topic, QoS::AtLeastOnce, 0x0101));
    assert!(
        w.take_to_device(a).is_empty(),
        "SUBACK waits for the broker"
    );
    let up = w.take_upstream(s);
    let [mqtt::Packet::Subscribe { packet_id, filters }] = up.as_slice() else {
        panic!("{up:?}")
    };
    assert_eq!(
        filters,
        &vec![(expect_filter.to_owned(), mqtt::QoS::AtLeastOnce)]
    );
    w.broker(
        s,
        mqtt::Packet::SubAck {
            packet_id: *packet_id,
            codes: vec![code],
        },
    );
    w.take_to_device(a)
}

#[test]
fn subscribe_to_a_name_returns_its_topic_id_after_broker_suback() {
    let mut w = World::new();
    let a = addr(1);
    let s = w.connect(&a, "dev1", true, None);
    let down = sub_roundtrip(
        &mut w,
        &a,
        s,
        codec::TopicFilter::Name("cmd/led".into()),
        "cmd/led",
        mqtt::SubackCode::Granted(mqtt::QoS::AtLeastOnce),
    );
    let [Message::Suback(sa)] = down.as_slice() else {
        panic!("{down:?}")
    };
    assert_ne!(sa.topic_id, 0);
    assert_eq!(
        down,
        vec![suback(
            QoS::AtLeastOnce,
            sa.topic_id,
            0x0101,
            ReturnCode::Accepted
        )]
    );
    // The same name registered later has the same id.
    assert_eq!(w.register(&a, "cmd/led", 2), sa.topic_id);
}

#[test]
fn subscribe_to_a_wildcard_returns_topic_id_zero() {
    let mut w = World::new();
    let a = addr(1);
    let s = w.connect(&a, "dev1", true, None);
    let down = sub_roundtrip(
        &mut w,
        &a,
        s,
        codec::TopicFilter::Name("cmd/+/led".into()),
        "cmd/+/led",
        mqtt::SubackCode::Granted(mqtt::QoS::AtMostOnce),
    );
    assert_eq!(
        down,
        vec![suback(QoS::AtMostOnce, 0, 0x0101, ReturnCode::Accepted)]
    );
}

#[test]
fn subscribe_to_a_predefined_id_and_a_short_name() {
    let mut w = World::new();
    let a = addr(1);
    let s = w.connect(&a, "dev1", true, None);
    let down = sub_roundtrip(
        &mut w,
        &a,
        s,
        codec::TopicFilter::Predefined(7),
        "pre/seven",
        mqtt::SubackCode::Granted(mqtt::QoS::AtLeastOnce),
    );
    assert_eq!(
        down,
        vec![suback(QoS::AtLeastOnce, 7, 0x0101, ReturnCode::Accepted)]
    );
    let down = sub_roundtrip(
        &mut w,
        &a,
        s,
        codec::TopicFilter::Short(*b"zz"),
        "zz",
        mqtt::SubackCode::Granted(mqtt::QoS::AtLeastOnce),
    );
    assert_eq!(
        down,
        vec![suback(QoS::AtLeastOnce, 0, 0x0101, ReturnCode::Accepted)]
    );
    // An unknown predefined id is refused at once.
    w.device_send(
        &a,
        subscribe_msg(codec::TopicFilter::Predefined(8), QoS::AtMostOnce, 3),
    );
    assert_eq!(
        w.take_to_device(&a),
        vec![suback(QoS::AtMostOnce, 8, 3, ReturnCode::InvalidTopicId)]
    );
    assert!(w.take_upstream(s).is_empty());
}

#[test]
fn broker_suback_failure_gives_a_rejected_suback() {
    let mut w = World::new();
    let a = addr(1);
    let s = w.connect(&a, "dev1", true, None);
    let down = sub_roundtrip(
        &mut w,
        &a,
        s,
        codec::TopicFilter::Name("secret/x".into()),
        "secret/x",
        mqtt::SubackCode::Failure,
    );
    let [Message::Suback(sa)] = down.as_slice() else {
        panic!("{down:?}")
    };
    assert_eq!(sa.msg_id, 0x0101);
    assert_ne!(sa.return_code, ReturnCode::Accepted);
}

#[test]
fn granted_qos_caps_downlink_delivery() {
    let mut w = World::new();
    let a = addr(1);
    let s = w.connect(&a, "dev1", true, None);
    let id = w.subscribe(
        &a,
        s,
        "cmd/led",
        QoS::ExactlyOnce,
        mqtt::QoS::AtLeastOnce,
        1,
    );
    w.broker(
        s,
        mqtt_publish(mqtt::QoS::ExactlyOnce, false, "cmd/led", Some(40), b"on"),
    );
    let down = w.take_to_device(&a);
    let [Message::Publish(p)] = down.as_slice() else {
        panic!("{down:?}")
    };
    assert_eq!(p.qos, QoS::AtLeastOnce);
    assert_eq!(p.topic, TopicRef::Id(id));
    // Device acks at QoS 1; the broker's QoS 2 flow gets its PUBREC.
    w.device_send(
        &a,
        Message::Puback(codec::Puback {
            topic_id: id,
            msg_id: p.msg_id,
            return_code: ReturnCode::Accepted,
        }),
    );
    assert_eq!(
        w.take_upstream(s),
        vec![mqtt::Packet::PubRec { packet_id: 40 }]
    );
    w.broker(s, mqtt::Packet::PubRel { packet_id: 40 });
    assert_eq!(
        w.take_upstream(s),
        vec![mqtt::Packet::PubComp { packet_id: 40 }]
    );
}

#[test]
fn unsubscribe_gets_unsuback_after_broker_unsuback() {
    let mut w = World::new();
    let a = addr(1);
    let s = w.connect(&a, "dev1", true, None);
    w.subscribe(&a, s, "cmd/#", QoS::AtMostOnce, mqtt::QoS::AtMostOnce, 1);
    w.device_send(
        &a,
        Message::Unsubscribe(codec::Unsubscribe {
            msg_id: 0x2222,
            topic: codec::TopicFilter::Name("cmd/#".into()),
        }),
    );
    assert!(w.take_to_device(&a).is_empty());
    let up = w.take_upstream(s);
    let [mqtt::Packet::Unsubscribe { packet_id, filters }] = up.as_slice() else {
        panic!("{up:?}")
    };
    assert_eq!(filters, &vec!["cmd/#".to_owned()]);
    w.broker(
        s,
        mqtt::Packet::UnsubAck {
            packet_id: *packet_id,
        },
    );
    assert_eq!(
        w.take_to_device(&a),
        vec![Message::Unsuback { msg_id: 0x2222 }]
    );
}

#[test]
fn subscribe_resent_before_suback_goes_upstream_once() {
    let mut w = World::new();
    let a = addr(1);
    let s = w.connect(&a, "dev1", true, None);
    let sub = subscribe_msg(codec::TopicFilter::Name("a/b".into()), QoS::AtMostOnce, 5);
    w.device_send(&a, sub.clone());
    w.device_send(&a, sub);
    let up = w.take_upstream(s);
    assert_eq!(up.len(), 1, "{up:?}");
}

#[test]
fn each_subscription_is_one_row_written_alone_and_restored() {
    let mut w = World::with(persistent());
    let a = addr(1);
    let s = w.connect(&a, "dev", false, None);
    w.commit_all();
    for i in 0..50u16 {
        let filter = format!("down/{i}/#");
        w.subscribe(
            &a,
            s,
            &filter,
            QoS::AtMostOnce,
            mqtt::QoS::AtMostOnce,
            i + 1,
        );
        // The SUBACK's batch writes that one subscription and nothing else: no rewrite of
        // the device record or of the subscriptions before it.
        let ops: Vec<PersistOp> = w.unconfirmed.drain(..).flat_map(|(_, ops)| ops).collect();
        let [PersistOp::Put { table, key, .. }] = ops.as_slice() else {
            panic!("expected one put, got {ops:?}");
        };
        assert_eq!(*table, Table::Subscription);
        assert_eq!(*key, crate::core::persist::subscription_key("dev", &filter));
        for op in ops {
            if let PersistOp::Put { table, key, value } = op {
                w.store.insert((table, key), value);
            }
        }
    }
    // UNSUBSCRIBE deletes its row.
    w.device_send(
        &a,
        Message::Unsubscribe(codec::Unsubscribe {
            msg_id: 99,
            topic: codec::TopicFilter::Name("down/0/#".into()),
        }),
    );
    let up = w.take_upstream(s);
    let [mqtt::Packet::Unsubscribe { packet_id, .. }] = up.as_slice() else {
        panic!("{up:?}")
    };
    w.broker(
        s,
        mqtt::Packet::UnsubAck {
            packet_id: *packet_id,
        },
    );
    w.commit_all();
    let rows = |w: &World| {
        w.store
            .keys()
            .filter(|(t, _)| *t == Table::Subscription)
            .count()
    };
    assert_eq!(rows(&w), 49);
    let report = w.restart(persistent());
    assert_eq!(report.subscriptions, 49);
    let (s2, _) = w.opened()[0];
    w.broker_connack(s2);
    // The restored grant (QoS 0) still caps what the device is sent.
    w.broker(
        s2,
        mqtt_publish(mqtt::QoS::AtLeastOnce, false, "down/7/x", Some(3), b"v"),
    );
    let down = w.take_to_device(&a);
    let [Message::Register(r)] = down.as_slice() else {
        panic!("{down:?}")
    };
    w.device_send(
        &a,
        Message::Regack(codec::Regack {
            topic_id: r.topic_id,
            msg_id: r.msg_id,
            return_code: ReturnCode::Accepted,
        }),
    );
    let p = one_pub(w.take_to_device(&a));
    assert_eq!(p.qos, QoS::AtMostOnce);
    // A clean CONNECT forgets them all.
    w.device_send(&a, Message::Disconnect { duration: None });
    w.take_all();
    w.connect(&a, "dev", true, None);
    w.commit_all();
    assert_eq!(rows(&w), 0);
}

#[test]
fn subscriptions_an_older_version_kept_in_the_device_record_are_moved_to_rows() {
    let mut w = World::with(persistent());
    let record = crate::core::persist::DeviceRecord {
        client_id: "old".into(),
        addr: crate::core::persist::AddrRecord::from_addr(&addr(1)),
        state: crate::core::persist::StoredState::Offline,
        keep_alive: 60,
        will: None,
        subs: vec![("a/#".into(), 1), ("b".into(), 0)],
        topics: Vec::new(),
    };
    let key = crate::core::persist::device_prefix("old");
    w.store.insert(
        (Table::Device, key.clone()),
        serde_json::to_vec(&record).unwrap(),
    );
    let report = w.restart(persistent());
    assert_eq!(report.devices, 1);
    w.commit_all();
    let rows: Vec<_> = w
        .store
        .keys()
        .filter(|(t, _)| *t == Table::Subscription)
        .cloned()
        .collect();
    assert_eq!(rows.len(), 2);
    let rewritten: crate::core::persist::DeviceRecord =
        serde_json::from_slice(&w.store[&(Table::Device, key)]).unwrap();
    assert!(rewritten.subs.is_empty());
}
