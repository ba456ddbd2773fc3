//! Sleeping devices (spec §6.14): Asleep, Awake, Lost — with explicit time, an hour of sleep
//! takes no time at all.

use std::time::Duration;

use super::*;
use crate::core::DeviceState;

fn sleep_msg(d: u16) -> Message {
    Message::Disconnect { duration: Some(d) }
}

fn wake(client_id: &str) -> Message {
    Message::PingReq {
        client_id: Some(client_id.to_owned()),
    }
}

/// A device subscribed to `cmd` (QoS 2 granted) and to `ev/+` (QoS 2), asleep for an hour.
fn asleep(w: &mut World, a: &DeviceAddr) -> (SessionId, u16) {
    let s = w.connect(a, "s1", false, None);
    let id = w.subscribe(a, s, "cmd", QoS::ExactlyOnce, mqtt::QoS::ExactlyOnce, 1);
    w.subscribe(a, s, "ev/+", QoS::ExactlyOnce, mqtt::QoS::ExactlyOnce, 2);
    w.device_send(a, sleep_msg(3600));
    assert_eq!(
        w.take_to_device(a),
        vec![Message::Disconnect { duration: None }]
    );
    assert_eq!(w.gw.device_state("s1"), Some(DeviceState::Asleep));
    (s, id)
}

#[test]
fn sleep_keeps_the_upstream_session_and_answers_disconnect_without_duration() {
    let mut w = World::new();
    let a = addr(1);
    let (s, _) = asleep(&mut w, &a);
    // No DISCONNECT upstream, no close: the broker still sees the device connected.
    assert!(w.take_upstream(s).is_empty());
    assert!(w.closed().is_empty());
    assert_eq!(w.gw.stats().devices_asleep, 1);
    assert_eq!(w.gw.stats().devices_active, 1);
}

#[test]
fn buffered_messages_are_delivered_in_order_with_qos_register_first_then_pingresp() {
    let mut w = World::new();
    let a = addr(1);
    let (s, cmd) = asleep(&mut w, &a);
    w.broker(
        s,
        mqtt_publish(mqtt::QoS::AtMostOnce, false, "cmd", None, b"a"),
    );
    w.broker(
        s,
        mqtt_publish(mqtt::QoS::AtLeastOnce, false, "cmd", Some(1), b"b"),
    );
    w.broker(
        s,
        mqtt_publish(mqtt::QoS::ExactlyOnce, false, "ev/x", Some(2), b"c"),
    );
    // Nothing goes to a sleeping radio, and nothing is acknowledged to the broker yet.
    assert!(w.take_to_device(&a).is_empty());
    assert!(w.take_upstream(s).is_empty());
    w.advance(Duration::from_secs(1800));
    assert!(w.take_all().is_empty());

    w.device_send(&a, wake("s1"));
    assert_eq!(w.gw.device_state("s1"), Some(DeviceState::Awake));
    // QoS 0 goes at once, then the QoS 1 message waits for its PUBACK.
    let down = w.take_to_device(&a);
    assert_eq!(down.len(), 2, "{down:?}");
    let Message::Publish(p0) = &down[0] else {
        panic!()
    };
    assert_eq!(
        (p0.qos, p0.topic, &p0.data[..]),
        (QoS::AtMostOnce, TopicRef::Id(cmd), &b"a"[..])
    );
    let Message::Publish(p1) = &down[1] else {
        panic!()
    };
    assert_eq!((p1.qos, &p1.data[..]), (QoS::AtLeastOnce, &b"b"[..]));
    w.device_send(&a, puback(cmd, p1.msg_id));
    assert_eq!(
        w.take_upstream(s),
        vec![mqtt::Packet::PubAck { packet_id: 1 }]
    );
    // ev/x was first matched during the sleep: REGISTER before its PUBLISH.
    let down = w.take_to_device(&a);
    let [Message::Register(r)] = down.as_slice() else {
        panic!("{down:?}")
    };
    assert_eq!(r.topic_name, "ev/x");
    w.device_send(
        &a,
        Message::Regack(codec::Regack {
            topic_id: r.topic_id,
            msg_id: r.msg_id,
            return_code: ReturnCode::Accepted,
        }),
    );
    let down = w.take_to_device(&a);
    let [Message::Publish(p2)] = down.as_slice() else {
        panic!("{down:?}")
    };
    assert_eq!(
        (p2.qos, p2.topic),
        (QoS::ExactlyOnce, TopicRef::Id(r.topic_id))
    );
    w.device_send(&a, Message::Pubrec { msg_id: p2.msg_id });
    assert_eq!(
        w.take_upstream(s),
        vec![mqtt::Packet::PubRec { packet_id: 2 }]
    );
    assert_eq!(
        w.take_to_device(&a),
        vec![Message::Pubrel { msg_id: p2.msg_id }]
    );
    w.device_send(&a, Message::Pubcomp { msg_id: p2.msg_id });
    // PINGRESP only now, after the last message; the device is asleep again.
    assert_eq!(w.take_to_device(&a), vec![Message::PingResp]);
    assert_eq!(w.gw.device_state("s1"), Some(DeviceState::Asleep));
}

#[test]
fn pingreq_with_nothing_buffered_gets_pingresp_at_once_and_restarts_the_timer() {
    let mut w = World::new();
    let a = addr(1);
    let (s, _) = asleep(&mut w, &a);
    // Wake just before the deadline (3600 s + 10 %), every time: never lost.
    for _ in 0..5 {
        w.advance(Duration::from_secs(3900));
        w.device_send(&a, wake("s1"));
        assert_eq!(w.take_to_device(&a), vec![Message::PingResp]);
        assert_eq!(w.gw.device_state("s1"), Some(DeviceState::Asleep));
    }
    assert!(w.closed().is_empty());
    let _ = s;
}

#[test]
fn messages_arriving_during_the_flush_are_delivered_before_pingresp() {
    let mut w = World::new();
    let a = addr(1);
    let (s, cmd) = asleep(&mut w, &a);
    w.broker(
        s,
        mqtt_publish(mqtt::QoS::AtLeastOnce, false, "cmd", Some(1), b"1"),
    );
    w.device_send(&a, wake("s1"));
    let p = one_pub(w.take_to_device(&a));
    // While the first is in flight, another arrives, and the device re-sends its PINGREQ.
    w.broker(
        s,
        mqtt_publish(mqtt::QoS::AtLeastOnce, false, "cmd", Some(2), b"2"),
    );
    w.device_send(&a, wake("s1"));
    assert!(w.take_to_device(&a).is_empty(), "no early PINGRESP");
    w.device_send(&a, puback(cmd, p.msg_id));
    let p2 = one_pub(w.take_to_device(&a));
    assert_eq!(&p2.data[..], b"2");
    w.device_send(&a, puback(cmd, p2.msg_id));
    assert_eq!(w.take_to_device(&a), vec![Message::PingResp]);
}

#[test]
fn lost_while_awake_delivery_is_retransmitted_and_kept_for_the_next_wake() {
    let mut w = World::new();
    let a = addr(1);
    let (s, cmd) = asleep(&mut w, &a);
    w.broker(
        s,
        mqtt_publish(mqtt::QoS::AtLeastOnce, false, "cmd", Some(1), b"x"),
    );
    w.device_send(&a, wake("s1"));
    let first = w.take_to_device(&a);
    assert_eq!(first.len(), 1);
    // The device dozes off: retransmitted with DUP up to N_RETRY, then it is asleep again.
    for _ in 0..3 {
        w.advance(Duration::from_secs(10));
        let p = one_pub(w.take_to_device(&a));
        assert!(p.dup);
    }
    w.advance(Duration::from_secs(10));
    assert_eq!(w.gw.device_state("s1"), Some(DeviceState::Asleep));
    assert!(
        w.closed().is_empty(),
        "not lost: it only went back to sleep"
    );
    assert!(
        w.take_upstream(s).is_empty(),
        "the broker is not acknowledged"
    );
    // Next wake: the same message again, then PINGRESP after its PUBACK.
    w.device_send(&a, wake("s1"));
    let p = one_pub(w.take_to_device(&a));
    assert_eq!(&p.data[..], b"x");
    w.device_send(&a, puback(cmd, p.msg_id));
    assert_eq!(
        w.take_upstream(s),
        vec![mqtt::Packet::PubAck { packet_id: 1 }]
    );
    assert_eq!(w.take_to_device(&a), vec![Message::PingResp]);
}

#[test]
fn buffer_full_drops_oldest_qos0_and_leaves_qos1_with_the_broker() {
    let mut w = World::with(Settings {
        sleep_buffer_messages: 2,
        ..settings()
    });
    let a = addr(1);
    let (s, _) = asleep(&mut w, &a);
    w.broker(
        s,
        mqtt_publish(mqtt::QoS::AtMostOnce, false, "cmd", None, b"old0"),
    );
    w.broker(
        s,
        mqtt_publish(mqtt::QoS::AtLeastOnce, false, "cmd", Some(1), b"q1"),
    );
    w.broker(
        s,
        mqtt_publish(mqtt::QoS::AtMostOnce, false, "cmd", None, b"new0"),
    );
    assert_eq!(
        w.gw.stats().sleep_buffer_dropped,
        1,
        "oldest QoS 0 made room"
    );
    // A QoS 1 message pushes the remaining QoS 0 out.
    w.broker(
        s,
        mqtt_publish(mqtt::QoS::AtLeastOnce, false, "cmd", Some(2), b"q2"),
    );
    assert_eq!(w.gw.stats().sleep_buffer_dropped, 2);
    // Full of QoS 1: the next one is not acknowledged (the broker keeps it).
    w.broker(
        s,
        mqtt_publish(mqtt::QoS::AtLeastOnce, false, "cmd", Some(3), b"q3"),
    );
    assert!(w.take_upstream(s).is_empty());
    assert_eq!(w.gw.stats().sleep_buffer_dropped, 3);
    w.device_send(&a, wake("s1"));
    let datas: Vec<Vec<u8>> = w
        .take_to_device(&a)
        .into_iter()
        .filter_map(|m| match m {
            Message::Publish(p) => Some(p.data.to_vec()),
            _ => None,
        })
        .collect();
    assert_eq!(
        datas,
        vec![b"q1".to_vec()],
        "q1 in flight first; q2 waits for its PUBACK"
    );
}

#[test]
fn qos0_not_kept_for_sleepers_when_configured() {
    let mut w = World::with(Settings {
        sleep_keep_qos0: false,
        ..settings()
    });
    let a = addr(1);
    let (s, _) = asleep(&mut w, &a);
    w.broker(
        s,
        mqtt_publish(mqtt::QoS::AtMostOnce, false, "cmd", None, b"x"),
    );
    assert_eq!(w.gw.stats().sleep_buffer_dropped, 1);
    w.device_send(&a, wake("s1"));
    assert_eq!(w.take_to_device(&a), vec![Message::PingResp]);
}

#[test]
fn sleep_expiry_loses_the_device_and_fires_the_will_but_keep_alive_does_not() {
    let mut w = World::new();
    let a = addr(1);
    // Keep-alive 10 s; sleeping 100 s: the keep-alive must not kill it.
    let s = w.connect_with(&a, "s1", true, None, 10);
    w.device_send(&a, sleep_msg(100));
    w.take_to_device(&a);
    w.advance(Duration::from_secs(109));
    assert_eq!(w.gw.device_state("s1"), Some(DeviceState::Asleep));
    assert!(w.closed().is_empty());
    // 100 s + 10 % = 110 s: lost, session closed without DISCONNECT (the will fires).
    w.advance(Duration::from_secs(1));
    assert_eq!(w.gw.device_state("s1"), Some(DeviceState::Lost));
    assert_eq!(w.take_all(), vec![Output::Close { session: s }]);
}

#[test]
fn short_sleep_has_fifty_percent_tolerance() {
    let mut w = World::new();
    let a = addr(1);
    w.connect(&a, "s1", true, None);
    w.device_send(&a, sleep_msg(20));
    w.take_to_device(&a);
    w.advance(Duration::from_millis(29_999));
    assert_eq!(w.gw.device_state("s1"), Some(DeviceState::Asleep));
    w.advance(Duration::from_millis(1));
    assert_eq!(w.gw.device_state("s1"), Some(DeviceState::Lost));
}

#[test]
fn wake_from_a_new_address_rebinds_the_device() {
    let mut w = World::new();
    let a = addr(1);
    let b = addr(2);
    let (s, cmd) = asleep(&mut w, &a);
    w.broker(
        s,
        mqtt_publish(mqtt::QoS::AtLeastOnce, false, "cmd", Some(1), b"x"),
    );
    w.device_send(&b, wake("s1"));
    assert!(w.take_to_device(&a).is_empty());
    let p = one_pub(w.take_to_device(&b));
    w.device_send(&b, puback(cmd, p.msg_id));
    assert_eq!(w.take_to_device(&b), vec![Message::PingResp]);
    // The old address no longer speaks for the device.
    w.device_send(&a, Message::PingReq { client_id: None });
    assert_eq!(
        w.take_to_device(&a),
        vec![Message::Disconnect { duration: None }]
    );
}

#[test]
fn connect_from_asleep_makes_it_active_and_delivers_the_buffer() {
    let mut w = World::new();
    let a = addr(1);
    let (s, cmd) = asleep(&mut w, &a);
    w.broker(
        s,
        mqtt_publish(mqtt::QoS::AtLeastOnce, false, "cmd", Some(1), b"x"),
    );
    w.device_send(&a, connect_msg("s1", false, false, 60));
    // Same upstream session: no new Open, CONNACK at once, then the buffer.
    assert!(w.opened().is_empty());
    let down = w.take_to_device(&a);
    assert_eq!(down[0], connack(ReturnCode::Accepted));
    let Message::Publish(p) = &down[1] else {
        panic!("{down:?}")
    };
    assert_eq!((p.topic, &p.data[..]), (TopicRef::Id(cmd), &b"x"[..]));
    assert_eq!(w.gw.device_state("s1"), Some(DeviceState::Active));
}

#[test]
fn new_sleep_duration_while_asleep_updates_the_timer_and_plain_disconnect_ends_it() {
    let mut w = World::new();
    let a = addr(1);
    let (s, _) = asleep(&mut w, &a);
    w.advance(Duration::from_secs(3000));
    w.device_send(&a, sleep_msg(60));
    assert_eq!(
        w.take_to_device(&a),
        vec![Message::Disconnect { duration: None }]
    );
    w.advance(Duration::from_secs(65));
    assert_eq!(w.gw.device_state("s1"), Some(DeviceState::Asleep));
    w.device_send(&a, Message::Disconnect { duration: None });
    assert_eq!(w.gw.device_state("s1"), Some(DeviceState::Disconnected));
    assert_eq!(w.take_upstream(s), vec![mqtt::Packet::Disconnect]);
}
