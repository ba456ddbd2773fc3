//! Broker outages on persistent sessions with a store: the device stays connected, its QoS 1/2
//! publishes parked until the session is resumed; without a store the device is disconnected.

use std::time::Duration;

use super::record::persistent;
use super::*;
use crate::core::{DeviceState, Table};

/// A persistent device whose broker session just went away (store attached).
fn outage(w: &mut World, a: &DeviceAddr) -> (SessionId, u16) {
    let s = w.connect(a, "dev", false, None);
    let id = w.register(a, "up/t", 1);
    w.commit_all();
    w.broker_closed(s);
    (s, id)
}

fn resume(w: &mut World) -> SessionId {
    w.advance(Duration::from_secs(10));
    let opened = w.opened();
    assert_eq!(opened.len(), 1, "session resumed after the back-off");
    assert!(!opened[0].1.clean_session);
    w.broker_connack(opened[0].0);
    opened[0].0
}

#[test]
fn broker_outage_keeps_the_device_and_parks_qos1_until_the_session_is_back() {
    let mut w = World::with(persistent());
    let a = addr(1);
    let (_, id) = outage(&mut w, &a);
    assert!(
        w.take_to_device(&a).is_empty(),
        "no DISCONNECT: the device stays"
    );
    assert_eq!(w.gw.device_state("dev"), Some(DeviceState::Active));
    w.device_send(&a, publish(QoS::AtLeastOnce, TopicRef::Id(id), 3, b"kept"));
    assert!(w.take_to_device(&a).is_empty(), "PUBACK only once durable");
    w.commit_all();
    assert_eq!(
        w.take_to_device(&a),
        vec![Message::Puback(codec::Puback {
            topic_id: id,
            msg_id: 3,
            return_code: ReturnCode::Accepted
        })]
    );
    w.device_send(&a, publish(QoS::AtMostOnce, TopicRef::Id(id), 0, b"lost"));
    assert_eq!(w.gw.stats().uplink_dropped, 1);
    w.device_send(&a, Message::PingReq { client_id: None });
    assert_eq!(w.take_to_device(&a), vec![Message::PingResp]);

    let s2 = resume(&mut w);
    w.commit_all();
    let up = w.take_upstream(s2);
    let [mqtt::Packet::Publish(p)] = up.as_slice() else {
        panic!("{up:?}")
    };
    assert_eq!((p.topic.as_str(), &p.payload[..]), ("up/t", &b"kept"[..]));
    w.broker(
        s2,
        mqtt::Packet::PubAck {
            packet_id: p.packet_id.unwrap(),
        },
    );
    w.commit_all();
    assert!(!w.store.keys().any(|(t, _)| *t == Table::Uplink));
}

#[test]
fn broker_outage_parks_qos2_once_and_completes_it_with_the_device() {
    let mut w = World::with(persistent());
    let a = addr(1);
    let (_, id) = outage(&mut w, &a);
    w.device_send(&a, publish(QoS::ExactlyOnce, TopicRef::Id(id), 4, b"q2"));
    w.commit_all();
    assert_eq!(w.take_to_device(&a), vec![Message::Pubrec { msg_id: 4 }]);
    // The device missed PUBREC and sends again: PUBREC again, still one parked copy.
    w.device_send(
        &a,
        sn_publish(true, QoS::ExactlyOnce, false, TopicRef::Id(id), 4, b"q2"),
    );
    w.commit_all();
    assert_eq!(w.take_to_device(&a), vec![Message::Pubrec { msg_id: 4 }]);
    w.device_send(&a, Message::Pubrel { msg_id: 4 });
    assert_eq!(w.take_to_device(&a), vec![Message::Pubcomp { msg_id: 4 }]);
    // Across a restart too: the parked message is still there and goes up once.
    w.restart(persistent());
    let (s2, _) = w.opened()[0].clone();
    w.broker_connack(s2);
    w.commit_all();
    let up = w.take_upstream(s2);
    let [mqtt::Packet::Publish(p)] = up.as_slice() else {
        panic!("{up:?}")
    };
    let pkid = p.packet_id.unwrap();
    w.broker(s2, mqtt::Packet::PubRec { packet_id: pkid });
    w.commit_all();
    assert_eq!(
        w.take_upstream(s2),
        vec![mqtt::Packet::PubRel { packet_id: pkid }]
    );
    w.broker(s2, mqtt::Packet::PubComp { packet_id: pkid });
    w.commit_all();
    assert!(!w.store.keys().any(|(t, _)| *t == Table::Uplink));
}

#[test]
fn broker_refusing_the_resumed_session_for_good_disconnects_the_device() {
    let mut w = World::with(persistent());
    let a = addr(1);
    outage(&mut w, &a);
    w.advance(Duration::from_secs(10));
    let (s2, _) = w.opened()[0].clone();
    // Still restarting: back off and try again.
    w.broker_connack_code(s2, mqtt::ConnectReturnCode::ServerUnavailable);
    assert!(w.take_to_device(&a).is_empty());
    w.advance(Duration::from_secs(20));
    let (s3, _) = w.opened()[0].clone();
    w.broker_connack_code(s3, mqtt::ConnectReturnCode::NotAuthorized);
    assert_eq!(
        w.take_to_device(&a),
        vec![Message::Disconnect { duration: None }]
    );
    assert_eq!(w.gw.device_state("dev"), Some(DeviceState::Disconnected));
}

#[test]
fn without_a_store_a_broker_outage_disconnects_the_device() {
    let mut w = World::new();
    let a = addr(1);
    let s = w.connect(&a, "dev", false, None);
    w.broker_closed(s);
    assert_eq!(
        w.take_to_device(&a),
        vec![Message::Disconnect { duration: None }]
    );
}
