//! Disconnect (§6.12), a broker-side close, frames routed by address and through a forwarder,
//! and bad input: malformed, oversized, from an address without a session, in the wrong state.

use std::time::Duration;

use bytes::Bytes;

use super::super::DeviceState;
use super::*;

#[test]
fn device_disconnect_sends_mqtt_disconnect_then_close_and_answers_disconnect() {
    let mut w = World::new();
    let a = addr(1);
    let s = w.connect(&a, "dev1", true, None);
    w.device_send(&a, Message::Disconnect { duration: None });
    let all = w.take_all();
    assert_eq!(
        all,
        vec![
            Output::Send {
                session: s,
                packet: mqtt::Packet::Disconnect
            },
            Output::Close { session: s },
            Output::Transmit {
                to: a.clone(),
                frame: Message::Disconnect { duration: None }.to_bytes().unwrap()
            },
        ]
    );
    assert_eq!(w.gw.device_state("dev1"), Some(DeviceState::Disconnected));
    assert_eq!(w.gw.stats().devices_active, 0);
    // No keep-alive supervision for a disconnected device.
    w.advance(Duration::from_secs(600));
    w.assert_quiet();
}

#[test]
fn broker_closing_an_active_session_disconnects_the_device() {
    let mut w = World::new();
    let a = addr(1);
    let s = w.connect(&a, "dev1", true, None);
    w.broker_closed(s);
    assert_eq!(
        w.take_to_device(&a),
        vec![Message::Disconnect { duration: None }]
    );
    assert_eq!(w.gw.device_state("dev1"), Some(DeviceState::Disconnected));
    assert_eq!(w.gw.stats().devices_active, 0);
    w.assert_quiet();
}

// ---------------------------------------------------------------- bad input

#[test]
fn malformed_frame_is_counted_and_nothing_is_sent() {
    let mut w = World::new();
    let a = addr(1);
    w.device_send_raw(&a, Bytes::from_static(&[0x05, 0x0C, 0x00])); // length mismatch
    w.device_send_raw(&a, Bytes::from_static(&[0x02, 0x03])); // reserved type
    w.device_send_raw(&a, Bytes::new());
    w.assert_quiet();
    assert_eq!(w.gw.stats().malformed, 3);
    assert_eq!(w.gw.stats().frames_in, 3);
}

#[test]
fn oversized_frame_is_counted_and_dropped() {
    let mut w = World::with(Settings {
        max_frame_size: 64,
        ..settings()
    });
    let a = addr(1);
    let s = w.connect(&a, "dev1", true, None);
    let big = sn_publish(
        false,
        QoS::AtMostOnce,
        false,
        TopicRef::Predefined(7),
        0,
        &[0u8; 100],
    );
    w.device_send(&a, big);
    w.assert_quiet();
    assert!(w.take_upstream(s).is_empty());
    assert_eq!(w.gw.stats().oversized, 1);
}

#[test]
fn messages_from_an_address_without_session_get_disconnect() {
    let mut w = World::new();
    let a = addr(1);
    let msgs = [
        publish(QoS::AtLeastOnce, TopicRef::Id(1), 1, b"x"),
        Message::Subscribe(codec::Subscribe {
            dup: false,
            qos: QoS::AtMostOnce,
            msg_id: 1,
            topic: codec::TopicFilter::Name("a".into()),
        }),
        Message::PingReq { client_id: None },
    ];
    for m in msgs {
        w.device_send(&a, m);
        assert_eq!(
            w.take_to_device(&a),
            vec![Message::Disconnect { duration: None }]
        );
    }
    assert_eq!(w.gw.stats().unknown_peer, 3);
    assert_eq!(w.gw.device_count(), 0);
    // A DISCONNECT from nobody is not answered (no ping-pong).
    w.device_send(&a, Message::Disconnect { duration: None });
    w.assert_quiet();
}

#[test]
fn message_in_the_wrong_state_is_counted_and_dropped_and_others_keep_working() {
    let mut w = World::new();
    let (a, b) = (addr(1), addr(2));
    let sa = w.connect(&a, "dev1", true, None);
    // dev2 is still being prompted for its will: a PUBLISH makes no sense yet.
    w.device_send(&b, connect_msg("dev2", true, true, 60));
    assert_eq!(w.take_to_device(&b), vec![Message::WillTopicReq]);
    w.device_send(
        &b,
        publish(QoS::AtMostOnce, TopicRef::Predefined(7), 0, b"x"),
    );
    // An Active device sending WILLMSG out of turn.
    w.device_send(
        &a,
        Message::WillMsg {
            msg: Bytes::from_static(b"?"),
        },
    );
    assert_eq!(w.gw.stats().wrong_state, 2);
    w.assert_quiet();
    w.device_send(
        &a,
        publish(QoS::AtMostOnce, TopicRef::Predefined(7), 0, b"ok"),
    );
    assert_eq!(
        w.take_upstream(sa),
        vec![mqtt_publish(
            mqtt::QoS::AtMostOnce,
            false,
            "pre/seven",
            None,
            b"ok"
        )]
    );
}

#[test]
fn forwarder_encapsulated_connect_gets_an_encapsulated_connack_for_the_same_node() {
    let mut w = World::new();
    let fwd = addr(5);
    let node = Bytes::from_static(&[0xAA, 0xBB, 0xCC]);
    let enc = |m: Message| Frame {
        encapsulation: Some(codec::Encapsulation {
            ctrl: 0,
            wireless_node_id: node.clone(),
        }),
        message: m,
    };
    w.device_send_frame(&fwd, enc(connect_msg("node1", true, false, 60)));
    let (s, _) = w.opened()[0].clone();
    w.broker_connack(s);
    let via = DeviceAddr {
        wireless_node_id: Some(node.clone()),
        ..fwd.clone()
    };
    let frames = w.take_frames_to(&via);
    assert_eq!(frames, vec![enc(connack(ReturnCode::Accepted))]);
    // The forwarder's own address (no node id) is a different peer.
    w.device_send_frame(&fwd, enc(Message::PingReq { client_id: None }));
    assert_eq!(w.take_frames_to(&via), vec![enc(Message::PingResp)]);
    w.assert_quiet();
}

#[test]
fn malformed_input_from_many_addresses_leaves_no_state() {
    let mut w = World::new();
    for i in 0..10_000u32 {
        let a = DeviceAddr::udp(
            TransportId(0),
            std::net::SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 1000)),
        );
        w.device_send_raw(&a, Bytes::from_static(&[0x03, 0x0C]));
    }
    assert_eq!(w.gw.device_count(), 0);
    assert_eq!(w.gw.stats().malformed, 10_000);
    assert_eq!(w.gw.poll_timeout(), None);
    w.assert_quiet();
}
