//! Device -> broker publishes (§6.6) at QoS 0/1/2 and the connectionless QoS -1 (§6.8), and a
//! broker that downgrades QoS 2 (RabbitMQ answers a QoS 2 PUBLISH with PUBACK and grants QoS 1
//! to QoS 2 subscriptions): the device's own QoS 2 exchange still completes as the spec has it
//! (PUBREC, PUBREL, PUBCOMP), and nothing goes upstream twice.

use super::record::persistent;
use super::*;

fn puback(topic_id: u16, msg_id: u16, rc: ReturnCode) -> Message {
    Message::Puback(codec::Puback {
        topic_id,
        msg_id,
        return_code: rc,
    })
}

fn one_publish(up: Vec<mqtt::Packet>) -> mqtt::Publish {
    match up.as_slice() {
        [mqtt::Packet::Publish(p)] => p.clone(),
        other => panic!("expected one PUBLISH upstream, got {other:?}"),
    }
}

#[test]
fn uplink_qos0_is_forwarded_with_retain() {
    let mut w = World::new();
    let a = addr(1);
    let s = w.connect(&a, "dev1", true, None);
    let id = w.register(&a, "sensors/t", 1);
    w.device_send(
        &a,
        sn_publish(false, QoS::AtMostOnce, true, TopicRef::Id(id), 0, b"21.5"),
    );
    assert_eq!(
        w.take_upstream(s),
        vec![mqtt_publish(
            mqtt::QoS::AtMostOnce,
            true,
            "sensors/t",
            None,
            b"21.5"
        )]
    );
    assert!(w.take_to_device(&a).is_empty());
    assert_eq!(w.gw.stats().uplink_publishes, 1);
}

#[test]
fn uplink_qos1_maps_msg_id_to_packet_id_and_puback_carries_device_ids() {
    let mut w = World::new();
    let a = addr(1);
    let s = w.connect(&a, "dev1", true, None);
    let id = w.register(&a, "sensors/t", 1);
    w.device_send(
        &a,
        sn_publish(
            false,
            QoS::AtLeastOnce,
            true,
            TopicRef::Id(id),
            0xBEEF,
            b"1",
        ),
    );
    let p = one_publish(w.take_upstream(s));
    assert_eq!(p.qos, mqtt::QoS::AtLeastOnce);
    assert!(p.retain);
    assert_eq!(p.topic, "sensors/t");
    assert_eq!(p.payload, Bytes::from_static(b"1"));
    let pkid = p.packet_id.expect("QoS 1 has a packet id");
    assert_ne!(pkid, 0xBEEF, "the upstream id space is the gateway's own");
    assert!(
        w.take_to_device(&a).is_empty(),
        "PUBACK waits for the broker"
    );
    w.broker(s, mqtt::Packet::PubAck { packet_id: pkid });
    assert_eq!(
        w.take_to_device(&a),
        vec![puback(id, 0xBEEF, ReturnCode::Accepted)]
    );
    // A stray broker PUBACK is ignored.
    w.broker(s, mqtt::Packet::PubAck { packet_id: pkid });
    w.assert_quiet();
}

#[test]
fn uplink_qos2_full_flow_and_dup_resends_forward_exactly_once() {
    let mut w = World::new();
    let a = addr(1);
    let s = w.connect(&a, "dev1", true, None);
    let id = w.register(&a, "sensors/t", 1);
    let msg = |dup| {
        sn_publish(
            dup,
            QoS::ExactlyOnce,
            false,
            TopicRef::Id(id),
            0x0033,
            b"q2",
        )
    };
    w.device_send(&a, msg(false));
    let p = one_publish(w.take_upstream(s));
    assert_eq!(p.qos, mqtt::QoS::ExactlyOnce);
    let pkid = p.packet_id.unwrap();

    // DUP before the broker's PUBREC: not forwarded again, nothing to the device yet.
    w.device_send(&a, msg(true));
    assert!(w.take_upstream(s).is_empty());
    assert!(w.take_to_device(&a).is_empty());

    w.broker(s, mqtt::Packet::PubRec { packet_id: pkid });
    assert_eq!(
        w.take_to_device(&a),
        vec![Message::Pubrec { msg_id: 0x0033 }]
    );

    // DUP after PUBREC: PUBREC again, still not forwarded.
    w.device_send(&a, msg(true));
    assert!(w.take_upstream(s).is_empty());
    assert_eq!(
        w.take_to_device(&a),
        vec![Message::Pubrec { msg_id: 0x0033 }]
    );

    w.device_send(&a, Message::Pubrel { msg_id: 0x0033 });
    assert_eq!(
        w.take_upstream(s),
        vec![mqtt::Packet::PubRel { packet_id: pkid }]
    );
    w.broker(s, mqtt::Packet::PubComp { packet_id: pkid });
    assert_eq!(
        w.take_to_device(&a),
        vec![Message::Pubcomp { msg_id: 0x0033 }]
    );
    assert_eq!(w.gw.stats().uplink_publishes, 1);

    // A PUBREL re-sent after completion gets PUBCOMP again without going upstream.
    w.device_send(&a, Message::Pubrel { msg_id: 0x0033 });
    assert_eq!(
        w.take_to_device(&a),
        vec![Message::Pubcomp { msg_id: 0x0033 }]
    );
    w.assert_quiet();
}

// ---------------------------------------------------------------- QoS -1

#[test]
fn qos_minus_one_opens_one_gateway_session_and_sends_held_messages_in_order() {
    let mut w = World::new();
    let (a, b) = (addr(10), addr(11));
    w.device_send(
        &a,
        publish(QoS::MinusOne, TopicRef::Predefined(7), 0, b"one"),
    );
    w.device_send(
        &b,
        publish(QoS::MinusOne, TopicRef::Short(*b"sh"), 0, b"two"),
    );
    let opened = w.opened();
    assert_eq!(opened.len(), 1, "one gateway-owned session");
    let (s, c) = &opened[0];
    assert!(c.clean_session);
    assert_eq!(c.will, None);
    assert!(w.take_upstream(*s).is_empty(), "held until CONNACK");
    assert!(w.take_to_device(&a).is_empty(), "no reply to QoS -1");
    assert!(w.take_to_device(&b).is_empty());
    w.broker_connack(*s);
    assert_eq!(
        w.take_upstream(*s),
        vec![
            mqtt_publish(mqtt::QoS::AtMostOnce, false, "pre/seven", None, b"one"),
            mqtt_publish(mqtt::QoS::AtMostOnce, false, "sh", None, b"two"),
        ]
    );
    // Later ones go straight through on the same session.
    w.device_send(
        &a,
        publish(QoS::MinusOne, TopicRef::Predefined(7), 0, b"three"),
    );
    assert_eq!(
        w.take_upstream(*s),
        vec![mqtt_publish(
            mqtt::QoS::AtMostOnce,
            false,
            "pre/seven",
            None,
            b"three"
        )]
    );
    assert!(w.opened().is_empty());
    assert_eq!(
        w.gw.device_count(),
        0,
        "QoS -1 senders get no device record"
    );
    w.assert_quiet();
}

#[test]
fn qos_minus_one_on_a_normal_topic_id_is_dropped() {
    let mut w = World::new();
    let a = addr(10);
    w.device_send(&a, publish(QoS::MinusOne, TopicRef::Id(1), 0, b"x"));
    w.assert_quiet();
    assert_eq!(w.gw.stats().uplink_publishes, 0);
}

#[test]
fn qos_minus_one_session_refused_is_retried_after_t_retry() {
    let mut w = World::new();
    let a = addr(10);
    w.device_send(
        &a,
        publish(QoS::MinusOne, TopicRef::Predefined(7), 0, b"one"),
    );
    let s1 = w.opened()[0].0;
    w.broker_closed(s1);
    assert!(w.opened().is_empty(), "no immediate retry");
    w.advance(std::time::Duration::from_secs(10));
    let opened = w.opened();
    assert_eq!(opened.len(), 1);
    let s2 = opened[0].0;
    assert_ne!(s1, s2);
    w.broker_connack(s2);
    assert_eq!(
        w.take_upstream(s2),
        vec![mqtt_publish(
            mqtt::QoS::AtMostOnce,
            false,
            "pre/seven",
            None,
            b"one"
        )]
    );
}

#[test]
fn qos_minus_one_session_not_accepted_in_time_is_closed_and_retried() {
    let mut w = World::new();
    let a = addr(10);
    w.device_send(
        &a,
        publish(QoS::MinusOne, TopicRef::Predefined(7), 0, b"one"),
    );
    let s1 = w.opened()[0].0;
    // The broker accepts TCP but never answers CONNECT: closed after the connect timeout...
    w.advance(std::time::Duration::from_secs(10));
    assert!(w.closed().contains(&s1));
    // ...and tried again after T_RETRY, still holding the message.
    w.advance(std::time::Duration::from_secs(10));
    let opened = w.opened();
    assert_eq!(opened.len(), 1);
    w.broker_connack(opened[0].0);
    assert_eq!(w.take_upstream(opened[0].0).len(), 1);
}

// ---------------------------------------------------------------- QoS 2 downgraded by the broker

/// Device PUBLISH QoS 2 on a registered topic; returns the packet id it went upstream with.
fn publish_qos2(w: &mut World, a: &DeviceAddr, s: SessionId, id: u16, msg_id: u16) -> u16 {
    w.device_send(
        a,
        publish(QoS::ExactlyOnce, TopicRef::Id(id), msg_id, b"once"),
    );
    w.commit_all();
    let up = w.take_upstream(s);
    let [mqtt::Packet::Publish(p)] = up.as_slice() else {
        panic!("{up:?}")
    };
    assert_eq!(p.qos, mqtt::QoS::ExactlyOnce);
    p.packet_id.unwrap()
}

#[test]
fn broker_answering_qos2_with_puback_still_gives_the_device_pubrec_then_pubcomp() {
    let mut w = World::new();
    let a = addr(1);
    let s = w.connect(&a, "dev", true, None);
    let id = w.register(&a, "up/t", 1);
    for msg_id in [5, 6] {
        let pkid = publish_qos2(&mut w, &a, s, id, msg_id);
        w.broker(s, mqtt::Packet::PubAck { packet_id: pkid });
        assert_eq!(w.take_to_device(&a), vec![Message::Pubrec { msg_id }]);
        // The device missed PUBREC and re-sends: PUBREC again, nothing upstream.
        w.device_send(
            &a,
            sn_publish(
                true,
                QoS::ExactlyOnce,
                false,
                TopicRef::Id(id),
                msg_id,
                b"once",
            ),
        );
        assert_eq!(w.take_to_device(&a), vec![Message::Pubrec { msg_id }]);
        assert!(w.take_upstream(s).is_empty());
        // PUBREL: the broker already has the message (as QoS 1), so PUBCOMP comes at once.
        w.device_send(&a, Message::Pubrel { msg_id });
        assert_eq!(w.take_to_device(&a), vec![Message::Pubcomp { msg_id }]);
        assert!(
            w.take_upstream(s).is_empty(),
            "no PUBREL for a PUBACKed message"
        );
        // A re-sent PUBREL (our PUBCOMP lost) gets PUBCOMP again.
        w.device_send(&a, Message::Pubrel { msg_id });
        assert_eq!(w.take_to_device(&a), vec![Message::Pubcomp { msg_id }]);
    }
    assert_eq!(w.gw.stats().uplink_publishes, 2);
}

#[test]
fn downgraded_qos2_flow_is_completed_after_a_restart_without_going_upstream_again() {
    let mut w = World::with(persistent());
    let a = addr(1);
    let s = w.connect(&a, "dev", false, None);
    let id = w.register(&a, "up/t", 1);
    let pkid = publish_qos2(&mut w, &a, s, id, 9);
    w.broker(s, mqtt::Packet::PubAck { packet_id: pkid });
    assert!(
        w.take_to_device(&a).is_empty(),
        "PUBREC promises once: durable first"
    );
    w.commit_all();
    assert_eq!(w.take_to_device(&a), vec![Message::Pubrec { msg_id: 9 }]);
    w.restart(persistent());
    let (s2, _) = w.opened()[0].clone();
    w.broker_connack(s2);
    // The device missed PUBREC: its re-sent PUBLISH is answered, not forwarded.
    w.device_send(
        &a,
        sn_publish(true, QoS::ExactlyOnce, false, TopicRef::Id(id), 9, b"once"),
    );
    w.commit_all();
    assert_eq!(w.take_to_device(&a), vec![Message::Pubrec { msg_id: 9 }]);
    w.device_send(&a, Message::Pubrel { msg_id: 9 });
    w.commit_all();
    assert_eq!(w.take_to_device(&a), vec![Message::Pubcomp { msg_id: 9 }]);
    assert!(w.take_upstream(s2).is_empty());
    assert!(!w
        .store
        .keys()
        .any(|(t, _)| *t == crate::core::Table::Uplink));
}

#[test]
fn qos2_subscription_granted_qos1_tells_the_device_qos1_and_caps_delivery() {
    let mut w = World::new();
    let a = addr(1);
    let s = w.connect(&a, "dev", true, None);
    w.device_send(
        &a,
        Message::Subscribe(codec::Subscribe {
            dup: false,
            qos: QoS::ExactlyOnce,
            msg_id: 3,
            topic: codec::TopicFilter::Name("cmd".into()),
        }),
    );
    let up = w.take_upstream(s);
    let [mqtt::Packet::Subscribe { packet_id, filters }] = up.as_slice() else {
        panic!("{up:?}")
    };
    assert_eq!(filters[0].1, mqtt::QoS::ExactlyOnce);
    w.broker(
        s,
        mqtt::Packet::SubAck {
            packet_id: *packet_id,
            codes: vec![mqtt::SubackCode::Granted(mqtt::QoS::AtLeastOnce)],
        },
    );
    let down = w.take_to_device(&a);
    let [Message::Suback(sa)] = down.as_slice() else {
        panic!("{down:?}")
    };
    assert_eq!(
        (sa.qos, sa.msg_id, sa.return_code),
        (QoS::AtLeastOnce, 3, ReturnCode::Accepted)
    );
}
