//! A broker that downgrades QoS 2 (RabbitMQ answers a QoS 2 PUBLISH with PUBACK and grants
//! QoS 1 to QoS 2 subscriptions): the device's own QoS 2 exchange still completes as the spec
//! has it (PUBREC, PUBREL, PUBCOMP), and nothing goes upstream twice.

use super::persist::persistent;
use super::*;

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
