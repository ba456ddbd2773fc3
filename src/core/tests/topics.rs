//! Topic registration (§6.5), and the topic a PUBLISH names: a registered id, an unknown one, a
//! predefined id or a short name (§6.7).

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
