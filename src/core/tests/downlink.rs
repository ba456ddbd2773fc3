//! Broker -> device publishes (§6.10): topic ids, REGISTER before PUBLISH, QoS 1/2 flows with
//! the broker's acks held until the device's, one message in flight, retransmission (§6.13).

use std::time::Duration;

use super::*;

/// A device "dev1" at `addr(1)` subscribed to `cmd/led` (QoS 1 granted): the world, its address,
/// its upstream session and the topic id.
fn subscribed_to_cmd_led(settings: Settings, clean: bool) -> (World, DeviceAddr, SessionId, u16) {
    let mut w = World::with(settings);
    let a = addr(1);
    let s = w.connect(&a, "dev1", clean, None);
    let id = w.subscribe(
        &a,
        s,
        "cmd/led",
        QoS::AtLeastOnce,
        mqtt::QoS::AtLeastOnce,
        1,
    );
    (w, a, s, id)
}

#[test]
fn downlink_on_a_subscribed_name_uses_its_id_without_register_and_keeps_retain() {
    let mut w = World::new();
    let a = addr(1);
    let s = w.connect(&a, "dev1", true, None);
    let id = w.subscribe(&a, s, "cmd/led", QoS::AtMostOnce, mqtt::QoS::AtMostOnce, 1);
    w.broker(
        s,
        mqtt_publish(mqtt::QoS::AtMostOnce, true, "cmd/led", None, b"on"),
    );
    assert_eq!(
        w.take_to_device(&a),
        vec![sn_publish(
            false,
            QoS::AtMostOnce,
            true,
            TopicRef::Id(id),
            0,
            b"on"
        )]
    );
    assert_eq!(w.gw.stats().downlink_publishes, 1);
    w.assert_quiet();
}

#[test]
fn downlink_on_a_wildcard_match_registers_first_and_publishes_after_regack() {
    let mut w = World::new();
    let a = addr(1);
    let s = w.connect(&a, "dev1", true, None);
    w.subscribe(&a, s, "cmd/#", QoS::AtMostOnce, mqtt::QoS::AtMostOnce, 1);
    w.broker(
        s,
        mqtt_publish(mqtt::QoS::AtMostOnce, false, "cmd/led", None, b"on"),
    );
    let down = w.take_to_device(&a);
    let [Message::Register(r)] = down.as_slice() else {
        panic!("{down:?}")
    };
    assert_eq!(r.topic_name, "cmd/led");
    assert_ne!(r.topic_id, 0);
    assert_ne!(r.msg_id, 0);
    w.device_send(
        &a,
        Message::Regack(codec::Regack {
            topic_id: r.topic_id,
            msg_id: r.msg_id,
            return_code: ReturnCode::Accepted,
        }),
    );
    assert_eq!(
        w.take_to_device(&a),
        vec![sn_publish(
            false,
            QoS::AtMostOnce,
            false,
            TopicRef::Id(r.topic_id),
            0,
            b"on"
        )]
    );
    // The next one on that name needs no REGISTER.
    w.broker(
        s,
        mqtt_publish(mqtt::QoS::AtMostOnce, false, "cmd/led", None, b"off"),
    );
    assert_eq!(
        w.take_to_device(&a),
        vec![sn_publish(
            false,
            QoS::AtMostOnce,
            false,
            TopicRef::Id(r.topic_id),
            0,
            b"off"
        )]
    );
}

#[test]
fn rejected_regack_drops_the_publish_acks_the_broker_and_unsubscribes_the_name() {
    let mut w = World::new();
    let a = addr(1);
    let s = w.connect(&a, "dev1", true, None);
    w.subscribe(&a, s, "cmd/#", QoS::AtLeastOnce, mqtt::QoS::AtLeastOnce, 1);
    w.broker(
        s,
        mqtt_publish(mqtt::QoS::AtLeastOnce, false, "cmd/led", Some(9), b"on"),
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
            return_code: ReturnCode::Congestion,
        }),
    );
    assert!(
        w.take_to_device(&a).is_empty(),
        "no PUBLISH on a rejected id"
    );
    let up = w.take_upstream(s);
    assert_eq!(up.len(), 2, "{up:?}");
    assert_eq!(up[0], mqtt::Packet::PubAck { packet_id: 9 });
    let mqtt::Packet::Unsubscribe { filters, .. } = &up[1] else {
        panic!("{up:?}")
    };
    assert_eq!(filters, &vec!["cmd/led".to_owned()]);
    assert_eq!(w.gw.stats().downlink_dropped, 1);
}

#[test]
fn downlink_qos1_acks_the_broker_only_after_the_device_puback() {
    let (mut w, a, s, id) = subscribed_to_cmd_led(settings(), true);
    w.broker(
        s,
        mqtt_publish(mqtt::QoS::AtLeastOnce, false, "cmd/led", Some(300), b"on"),
    );
    let p = one_pub(w.take_to_device(&a));
    assert_eq!(
        (p.qos, p.topic, p.dup),
        (QoS::AtLeastOnce, TopicRef::Id(id), false)
    );
    assert_ne!(p.msg_id, 0);
    assert!(
        w.take_upstream(s).is_empty(),
        "no PUBACK before the device's"
    );
    w.device_send(&a, puback(id, p.msg_id));
    assert_eq!(
        w.take_upstream(s),
        vec![mqtt::Packet::PubAck { packet_id: 300 }]
    );
    w.assert_quiet();
}

#[test]
fn downlink_qos2_full_flow() {
    let mut w = World::new();
    let a = addr(1);
    let s = w.connect(&a, "dev1", true, None);
    let id = w.subscribe(
        &a,
        s,
        "cmd/led",
        QoS::ExactlyOnce,
        mqtt::QoS::ExactlyOnce,
        1,
    );
    w.broker(
        s,
        mqtt_publish(mqtt::QoS::ExactlyOnce, true, "cmd/led", Some(77), b"on"),
    );
    let p = one_pub(w.take_to_device(&a));
    assert_eq!(
        (p.qos, p.retain, p.topic),
        (QoS::ExactlyOnce, true, TopicRef::Id(id))
    );
    assert!(w.take_upstream(s).is_empty());
    w.device_send(&a, Message::Pubrec { msg_id: p.msg_id });
    assert_eq!(
        w.take_upstream(s),
        vec![mqtt::Packet::PubRec { packet_id: 77 }]
    );
    assert_eq!(
        w.take_to_device(&a),
        vec![Message::Pubrel { msg_id: p.msg_id }]
    );
    w.broker(s, mqtt::Packet::PubRel { packet_id: 77 });
    assert_eq!(
        w.take_upstream(s),
        vec![mqtt::Packet::PubComp { packet_id: 77 }]
    );
    w.device_send(&a, Message::Pubcomp { msg_id: p.msg_id });
    w.assert_quiet();
}

#[test]
fn one_qos1_message_in_flight_at_a_time() {
    let (mut w, a, s, id) = subscribed_to_cmd_led(settings(), true);
    w.broker(
        s,
        mqtt_publish(mqtt::QoS::AtLeastOnce, false, "cmd/led", Some(1), b"a"),
    );
    w.broker(
        s,
        mqtt_publish(mqtt::QoS::AtLeastOnce, false, "cmd/led", Some(2), b"b"),
    );
    let p1 = one_pub(w.take_to_device(&a));
    assert_eq!(p1.data, Bytes::from_static(b"a"));
    w.device_send(&a, puback(id, p1.msg_id));
    assert_eq!(
        w.take_upstream(s),
        vec![mqtt::Packet::PubAck { packet_id: 1 }]
    );
    let p2 = one_pub(w.take_to_device(&a));
    assert_eq!(p2.data, Bytes::from_static(b"b"));
    assert_ne!(p2.msg_id, p1.msg_id);
    w.device_send(&a, puback(id, p2.msg_id));
    assert_eq!(
        w.take_upstream(s),
        vec![mqtt::Packet::PubAck { packet_id: 2 }]
    );
}

// ---------------------------------------------------------------- retransmission

#[test]
fn unacked_downlink_qos1_is_resent_with_dup_then_device_is_lost_without_disconnect() {
    let mut w = World::new(); // retry 10 s, 3 retries; device keep-alive 60 s
    let a = addr(1);
    let s = w.connect(&a, "dev1", true, None);
    let id = w.subscribe(
        &a,
        s,
        "cmd/led",
        QoS::AtLeastOnce,
        mqtt::QoS::AtLeastOnce,
        1,
    );
    w.broker(
        s,
        mqtt_publish(mqtt::QoS::AtLeastOnce, false, "cmd/led", Some(5), b"on"),
    );
    let p = one_pub(w.take_to_device(&a));
    for n in 1..=3 {
        w.advance(Duration::from_millis(9_999));
        assert!(
            w.take_to_device(&a).is_empty(),
            "retry {n} not before T_RETRY"
        );
        w.advance(Duration::from_millis(1));
        assert_eq!(
            w.take_to_device(&a),
            vec![sn_publish(
                true,
                QoS::AtLeastOnce,
                false,
                TopicRef::Id(id),
                p.msg_id,
                b"on"
            )],
            "retry {n}"
        );
    }
    assert_eq!(w.gw.stats().retransmissions, 3);
    w.advance(Duration::from_secs(10));
    // Lost: session closed without DISCONNECT so the broker publishes the will.
    assert_eq!(w.take_all(), vec![Output::Close { session: s }]);
    assert_eq!(
        w.gw.device_state("dev1"),
        Some(super::super::DeviceState::Lost)
    );
    assert_eq!(w.gw.stats().devices_lost, 1);
    assert_eq!(w.gw.stats().devices_active, 0);
}

#[test]
fn unacked_register_is_resent_then_device_is_lost() {
    let mut w = World::new();
    let a = addr(1);
    let s = w.connect(&a, "dev1", true, None);
    w.subscribe(&a, s, "cmd/#", QoS::AtMostOnce, mqtt::QoS::AtMostOnce, 1);
    w.broker(
        s,
        mqtt_publish(mqtt::QoS::AtMostOnce, false, "cmd/led", None, b"on"),
    );
    let first = w.take_to_device(&a);
    assert!(matches!(first.as_slice(), [Message::Register(_)]));
    for _ in 0..3 {
        w.advance(Duration::from_secs(10));
        assert_eq!(w.take_to_device(&a), first);
    }
    w.advance(Duration::from_secs(10));
    assert_eq!(w.take_all(), vec![Output::Close { session: s }]);
    assert_eq!(
        w.gw.device_state("dev1"),
        Some(super::super::DeviceState::Lost)
    );
}

#[test]
fn downlink_queue_bound_leaves_qos1_unacknowledged_at_the_broker() {
    let settings = Settings {
        max_queued_per_device: 2,
        ..settings()
    };
    let (mut w, a, s, id) = subscribed_to_cmd_led(settings, false);
    // 1 goes in flight; 2 and 3 fill the queue; 4 does not fit: it is not acknowledged, so
    // the broker keeps it.
    for pkid in 1..=4u16 {
        w.broker(
            s,
            mqtt_publish(mqtt::QoS::AtLeastOnce, false, "cmd/led", Some(pkid), b"m"),
        );
    }
    assert_eq!(w.take_upstream(s), vec![]);
    assert_eq!(w.gw.stats().downlink_dropped, 1);
    let mut acked = Vec::new();
    for _ in 0..3 {
        let p = one_pub(w.take_to_device(&a));
        w.device_send(&a, puback(id, p.msg_id));
        acked.extend(w.take_upstream(s));
    }
    assert_eq!(
        acked,
        (1..=3)
            .map(|packet_id| mqtt::Packet::PubAck { packet_id })
            .chain([mqtt::Packet::Disconnect])
            .collect::<Vec<_>>()
    );
    // With room again, the session is resumed (clean session 0) so the broker re-sends 4.
    let opened = w.opened();
    assert_eq!(opened.len(), 1);
    assert!(!opened[0].1.clean_session);
    assert!(w.closed().contains(&s));
}

#[test]
fn downlink_queue_bound_on_a_clean_session_drops_and_acks() {
    let mut w = World::with(Settings {
        max_queued_per_device: 2,
        ..settings()
    });
    let a = addr(1);
    let s = w.connect(&a, "dev1", true, None);
    w.subscribe(
        &a,
        s,
        "cmd/led",
        QoS::AtLeastOnce,
        mqtt::QoS::AtLeastOnce,
        1,
    );
    for pkid in 1..=4u16 {
        w.broker(
            s,
            mqtt_publish(mqtt::QoS::AtLeastOnce, false, "cmd/led", Some(pkid), b"m"),
        );
    }
    // A clean session cannot be resumed to get it back: dropped, counted, acknowledged.
    assert_eq!(
        w.take_upstream(s),
        vec![mqtt::Packet::PubAck { packet_id: 4 }]
    );
    assert_eq!(w.gw.stats().downlink_dropped, 1);
}

#[test]
fn downlink_too_large_for_a_frame_is_silently_dropped_and_acked() {
    let mut w = World::with(Settings {
        max_frame_size: 32,
        ..settings()
    });
    let a = addr(1);
    let s = w.connect(&a, "dev1", true, None);
    let id = w.subscribe(
        &a,
        s,
        "cmd/led",
        QoS::AtLeastOnce,
        mqtt::QoS::AtLeastOnce,
        1,
    );
    w.broker(
        s,
        mqtt_publish(
            mqtt::QoS::AtLeastOnce,
            false,
            "cmd/led",
            Some(3),
            &[7u8; 64],
        ),
    );
    assert!(
        w.take_to_device(&a).is_empty(),
        "silently aborted (spec §6.10)"
    );
    assert_eq!(
        w.take_upstream(s),
        vec![mqtt::Packet::PubAck { packet_id: 3 }]
    );
    assert_eq!(w.gw.stats().downlink_dropped, 1);
    // The next one that fits still goes.
    w.broker(
        s,
        mqtt_publish(mqtt::QoS::AtLeastOnce, false, "cmd/led", Some(4), b"ok"),
    );
    let p = one_pub(w.take_to_device(&a));
    assert_eq!(
        (p.topic, p.data),
        (TopicRef::Id(id), Bytes::from_static(b"ok"))
    );
}

#[test]
fn device_puback_invalid_topic_id_reregisters_once_and_resends() {
    let (mut w, a, s, id) = subscribed_to_cmd_led(settings(), true);
    w.broker(
        s,
        mqtt_publish(mqtt::QoS::AtLeastOnce, false, "cmd/led", Some(8), b"on"),
    );
    let p = one_pub(w.take_to_device(&a));
    w.device_send(
        &a,
        Message::Puback(codec::Puback {
            topic_id: id,
            msg_id: p.msg_id,
            return_code: ReturnCode::InvalidTopicId,
        }),
    );
    let down = w.take_to_device(&a);
    let [Message::Register(r)] = down.as_slice() else {
        panic!("{down:?}")
    };
    assert_eq!((r.topic_id, r.topic_name.as_str()), (id, "cmd/led"));
    assert!(w.take_upstream(s).is_empty());
    w.device_send(
        &a,
        Message::Regack(codec::Regack {
            topic_id: id,
            msg_id: r.msg_id,
            return_code: ReturnCode::Accepted,
        }),
    );
    let p2 = one_pub(w.take_to_device(&a));
    assert_eq!((p2.topic, p2.qos), (TopicRef::Id(id), QoS::AtLeastOnce));
    w.device_send(&a, puback(id, p2.msg_id));
    assert_eq!(
        w.take_upstream(s),
        vec![mqtt::Packet::PubAck { packet_id: 8 }]
    );
}

#[test]
fn broker_redelivery_of_a_held_message_is_not_queued_twice() {
    let (mut w, a, s, id) = subscribed_to_cmd_led(settings(), true);
    w.broker(
        s,
        mqtt_publish(mqtt::QoS::AtLeastOnce, false, "cmd/led", Some(8), b"on"),
    );
    let p = one_pub(w.take_to_device(&a));
    w.broker(
        s,
        mqtt_publish(mqtt::QoS::AtLeastOnce, false, "cmd/led", Some(8), b"on"),
    );
    w.device_send(&a, puback(id, p.msg_id));
    assert_eq!(
        w.take_upstream(s),
        vec![mqtt::Packet::PubAck { packet_id: 8 }]
    );
    w.assert_quiet();
}

#[test]
fn downlink_publish_to_a_predefined_and_a_short_subscription() {
    let mut w = World::new();
    let a = addr(1);
    let s = w.connect(&a, "dev1", true, None);
    for (n, topic) in [
        codec::TopicFilter::Predefined(7),
        codec::TopicFilter::Short(*b"zz"),
    ]
    .into_iter()
    .enumerate()
    {
        w.device_send(
            &a,
            Message::Subscribe(codec::Subscribe {
                dup: false,
                qos: QoS::AtMostOnce,
                msg_id: n as u16 + 1,
                topic,
            }),
        );
        let up = w.take_upstream(s);
        let [mqtt::Packet::Subscribe { packet_id, .. }] = up.as_slice() else {
            panic!("{up:?}")
        };
        w.broker(
            s,
            mqtt::Packet::SubAck {
                packet_id: *packet_id,
                codes: vec![mqtt::SubackCode::Granted(mqtt::QoS::AtMostOnce)],
            },
        );
        w.take_to_device(&a);
    }
    w.broker(
        s,
        mqtt_publish(mqtt::QoS::AtMostOnce, false, "zz", None, b"s"),
    );
    w.broker(
        s,
        mqtt_publish(mqtt::QoS::AtMostOnce, false, "pre/seven", None, b"p"),
    );
    assert_eq!(
        w.take_to_device(&a),
        vec![
            sn_publish(
                false,
                QoS::AtMostOnce,
                false,
                TopicRef::Short(*b"zz"),
                0,
                b"s"
            ),
            sn_publish(
                false,
                QoS::AtMostOnce,
                false,
                TopicRef::Predefined(7),
                0,
                b"p"
            ),
        ]
    );
}
