//! Topic registration (§6.5), predefined ids and short names (§6.7), subscribe (§6.9).

use super::*;

fn regack(topic_id: u16, msg_id: u16, rc: ReturnCode) -> Message {
    Message::Regack(codec::Regack {
        topic_id,
        msg_id,
        return_code: rc,
    })
}

fn register(name: &str, msg_id: u16) -> Message {
    Message::Register(codec::Register {
        topic_id: 0,
        msg_id,
        topic_name: name.into(),
    })
}

#[test]
fn register_assigns_an_id_and_the_same_name_gets_the_same_id() {
    let mut w = World::new();
    let a = addr(1);
    w.connect(&a, "dev1", true, None);
    let id1 = w.register(&a, "a/b", 1);
    let id2 = w.register(&a, "c/d", 2);
    assert_ne!(id1, id2);
    assert_eq!(w.register(&a, "a/b", 3), id1);
}

#[test]
fn register_of_a_wildcard_name_is_rejected() {
    let mut w = World::new();
    let a = addr(1);
    w.connect(&a, "dev1", true, None);
    w.device_send(&a, register("a/+", 9));
    assert_eq!(
        w.take_to_device(&a),
        vec![regack(0, 9, ReturnCode::NotSupported)]
    );
}

#[test]
fn register_beyond_the_table_limit_is_congestion() {
    let mut w = World::with(Settings {
        max_topics_per_device: 2,
        ..settings()
    });
    let a = addr(1);
    w.connect(&a, "dev1", true, None);
    w.register(&a, "t/1", 1);
    w.register(&a, "t/2", 2);
    w.device_send(&a, register("t/3", 3));
    assert_eq!(
        w.take_to_device(&a),
        vec![regack(0, 3, ReturnCode::Congestion)]
    );
    // A known name still resolves.
    w.register(&a, "t/1", 4);
}

#[test]
fn publish_on_unknown_topic_id_gets_puback_invalid_topic_id() {
    let mut w = World::new();
    let a = addr(1);
    let s = w.connect(&a, "dev1", true, None);
    w.device_send(
        &a,
        publish(QoS::AtLeastOnce, TopicRef::Id(0x4242), 17, b"x"),
    );
    assert_eq!(
        w.take_to_device(&a),
        vec![Message::Puback(codec::Puback {
            topic_id: 0x4242,
            msg_id: 17,
            return_code: ReturnCode::InvalidTopicId
        })]
    );
    // An unknown predefined id likewise.
    w.device_send(
        &a,
        publish(QoS::AtMostOnce, TopicRef::Predefined(99), 0, b"x"),
    );
    assert_eq!(
        w.take_to_device(&a),
        vec![Message::Puback(codec::Puback {
            topic_id: 99,
            msg_id: 0,
            return_code: ReturnCode::InvalidTopicId
        })]
    );
    assert!(w.take_upstream(s).is_empty());
}

#[test]
fn publish_on_a_predefined_id_uses_its_configured_name() {
    let mut w = World::new();
    let a = addr(1);
    let s = w.connect(&a, "dev1", true, None);
    w.device_send(
        &a,
        publish(QoS::AtMostOnce, TopicRef::Predefined(7), 0, b"p"),
    );
    assert_eq!(
        w.take_upstream(s),
        vec![mqtt_publish(
            mqtt::QoS::AtMostOnce,
            false,
            "pre/seven",
            None,
            b"p"
        )]
    );
    assert!(w.take_to_device(&a).is_empty());
}

#[test]
fn publish_on_a_short_topic_name_needs_no_registration() {
    let mut w = World::new();
    let a = addr(1);
    let s = w.connect(&a, "dev1", true, None);
    w.device_send(
        &a,
        publish(QoS::AtMostOnce, TopicRef::Short(*b"ab"), 0, b"s"),
    );
    assert_eq!(
        w.take_upstream(s),
        vec![mqtt_publish(mqtt::QoS::AtMostOnce, false, "ab", None, b"s")]
    );
}

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
