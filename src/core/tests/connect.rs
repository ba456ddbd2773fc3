//! Connection setup (§6.2), clean session (§6.3), broker refusals, takeover, will update (§6.4).

use std::time::Duration;

use bytes::Bytes;

use super::*;

const WILL: Will = Will {
    topic: "dev/1/status",
    qos: QoS::AtLeastOnce,
    retain: true,
    msg: b"gone",
};

#[test]
fn connect_without_will_opens_session_with_gateway_keep_alive_and_connacks_after_broker() {
    let mut w = World::new();
    let a = addr(1);
    w.device_send(&a, connect_msg("dev1", true, false, 10));
    let opened = w.opened();
    assert_eq!(
        opened,
        vec![(
            opened[0].0,
            mqtt::Connect {
                client_id: "dev1".into(),
                clean_session: true,
                keep_alive: 60, // the gateway's upstream_keep_alive, not the device's 10 s
                will: None,
                username: None,
                password: None,
            }
        )]
    );
    assert!(
        w.take_to_device(&a).is_empty(),
        "CONNACK waits for the broker"
    );
    w.broker_connack(opened[0].0);
    assert_eq!(w.take_to_device(&a), vec![connack(ReturnCode::Accepted)]);
    assert_eq!(
        w.gw.device_state("dev1"),
        Some(super::super::DeviceState::Active)
    );
    assert_eq!(w.gw.stats().devices_active, 1);
    w.assert_quiet();
}

#[test]
fn connect_with_will_prompts_for_topic_and_message_and_open_carries_last_will() {
    let mut w = World::new();
    let a = addr(1);
    w.device_send(&a, connect_msg("dev1", true, true, 60));
    assert_eq!(w.take_to_device(&a), vec![Message::WillTopicReq]);
    assert!(w.opened().is_empty());
    w.device_send(
        &a,
        Message::WillTopic(Some(WillTopic {
            qos: QoS::AtLeastOnce,
            retain: true,
            topic: "dev/1/status".into(),
        })),
    );
    assert_eq!(w.take_to_device(&a), vec![Message::WillMsgReq]);
    assert!(w.opened().is_empty());
    w.device_send(
        &a,
        Message::WillMsg {
            msg: Bytes::from_static(b"gone"),
        },
    );
    let opened = w.opened();
    assert_eq!(opened.len(), 1);
    assert_eq!(
        opened[0].1.will,
        Some(mqtt::LastWill {
            topic: "dev/1/status".into(),
            message: Bytes::from_static(b"gone"),
            qos: mqtt::QoS::AtLeastOnce,
            retain: true,
        })
    );
    assert!(w.take_to_device(&a).is_empty());
    w.broker_connack(opened[0].0);
    assert_eq!(w.take_to_device(&a), vec![connack(ReturnCode::Accepted)]);
    w.assert_quiet();
}

#[test]
fn empty_will_topic_means_no_will_and_no_willmsgreq() {
    let mut w = World::new();
    let a = addr(1);
    w.device_send(&a, connect_msg("dev1", true, true, 60));
    assert_eq!(w.take_to_device(&a), vec![Message::WillTopicReq]);
    w.device_send(&a, Message::WillTopic(None));
    assert!(
        w.take_to_device(&a).is_empty(),
        "no WILLMSGREQ after an empty WILLTOPIC"
    );
    let opened = w.opened();
    assert_eq!(opened.len(), 1);
    assert_eq!(opened[0].1.will, None);
    w.broker_connack(opened[0].0);
    assert_eq!(w.take_to_device(&a), vec![connack(ReturnCode::Accepted)]);
}

fn disconnect(w: &mut World, a: &DeviceAddr, session: SessionId) {
    w.device_send(a, Message::Disconnect { duration: None });
    assert_eq!(w.take_upstream(session), vec![mqtt::Packet::Disconnect]);
    assert_eq!(w.closed(), vec![session]);
    assert_eq!(
        w.take_to_device(a),
        vec![Message::Disconnect { duration: None }]
    );
}

/// Sends CONNECT without will and returns the Open's CONNECT (then completes the handshake).
fn reconnect_no_will(w: &mut World, a: &DeviceAddr, clean: bool) -> (SessionId, mqtt::Connect) {
    w.device_send(a, connect_msg("dev1", clean, false, 60));
    let opened = w.opened();
    assert_eq!(opened.len(), 1);
    w.broker_connack(opened[0].0);
    assert_eq!(w.take_to_device(a), vec![connack(ReturnCode::Accepted)]);
    opened.into_iter().next().unwrap()
}

#[test]
fn clean_false_will_false_keeps_the_stored_will() {
    let mut w = World::new();
    let a = addr(1);
    let s = w.connect(&a, "dev1", true, Some(WILL));
    disconnect(&mut w, &a, s);
    let (_, c) = reconnect_no_will(&mut w, &a, false);
    assert_eq!(c.will, Some(WILL.last_will()));
    assert!(!c.clean_session);
}

#[test]
fn clean_true_will_false_wipes_the_stored_will() {
    let mut w = World::new();
    let a = addr(1);
    let s = w.connect(&a, "dev1", true, Some(WILL));
    disconnect(&mut w, &a, s);
    let (_, c) = reconnect_no_will(&mut w, &a, true);
    assert_eq!(c.will, None);
}

#[test]
fn clean_false_will_true_replaces_the_stored_will() {
    let mut w = World::new();
    let a = addr(1);
    let s = w.connect(&a, "dev1", true, Some(WILL));
    disconnect(&mut w, &a, s);
    let other = Will {
        topic: "dev/1/other",
        qos: QoS::AtMostOnce,
        retain: false,
        msg: b"bye",
    };
    w.connect(&a, "dev1", false, Some(other));
}

#[test]
fn clean_false_keeps_the_topic_table_and_clean_true_wipes_it() {
    let mut w = World::new();
    let a = addr(1);
    // A persistent session: its registrations outlive the DISCONNECT. (A clean session's
    // table is dropped on DISCONNECT, as MQTT drops a clean session's state.)
    let s = w.connect(&a, "dev1", false, None);
    let id = w.register(&a, "sensors/t", 1);
    disconnect(&mut w, &a, s);

    let (s2, _) = reconnect_no_will(&mut w, &a, false);
    w.device_send(&a, publish(QoS::AtMostOnce, TopicRef::Id(id), 0, b"21"));
    assert_eq!(
        w.take_upstream(s2),
        vec![mqtt_publish(
            mqtt::QoS::AtMostOnce,
            false,
            "sensors/t",
            None,
            b"21"
        )]
    );
    disconnect(&mut w, &a, s2);

    let (s3, _) = reconnect_no_will(&mut w, &a, true);
    w.device_send(&a, publish(QoS::AtMostOnce, TopicRef::Id(id), 0, b"22"));
    assert!(w.take_upstream(s3).is_empty());
    assert_eq!(
        w.take_to_device(&a),
        vec![Message::Puback(codec::Puback {
            topic_id: id,
            msg_id: 0,
            return_code: ReturnCode::InvalidTopicId,
        })]
    );
}

// ---------------------------------------------------------------- refusals

fn refused_by_broker(code: mqtt::ConnectReturnCode) -> (World, DeviceAddr, SessionId) {
    let mut w = World::new();
    let a = addr(1);
    w.device_send(&a, connect_msg("dev1", true, false, 60));
    let s = w.opened()[0].0;
    w.broker_connack_code(s, code);
    (w, a, s)
}

#[test]
fn broker_server_unavailable_gives_connack_congestion() {
    let (mut w, a, s) = refused_by_broker(mqtt::ConnectReturnCode::ServerUnavailable);
    assert_eq!(w.take_to_device(&a), vec![connack(ReturnCode::Congestion)]);
    assert_eq!(w.closed(), vec![s]);
    assert_eq!(w.gw.stats().devices_active, 0);
}

#[test]
fn broker_not_authorized_gives_connack_not_supported() {
    let (mut w, a, s) = refused_by_broker(mqtt::ConnectReturnCode::NotAuthorized);
    assert_eq!(
        w.take_to_device(&a),
        vec![connack(ReturnCode::NotSupported)]
    );
    assert_eq!(w.closed(), vec![s]);
}

#[test]
fn upstream_closed_before_connack_gives_connack_congestion() {
    let mut w = World::new();
    let a = addr(1);
    w.device_send(&a, connect_msg("dev1", true, false, 60));
    let s = w.opened()[0].0;
    w.broker_closed(s);
    assert_eq!(w.take_to_device(&a), vec![connack(ReturnCode::Congestion)]);
    // A late CONNACK on the dead session changes nothing.
    w.broker_connack(s);
    assert!(w.take_to_device(&a).is_empty());
}

#[test]
fn no_broker_answer_within_connect_timeout_gives_connack_congestion() {
    let mut w = World::new();
    let a = addr(1);
    w.device_send(&a, connect_msg("dev1", true, false, 60));
    let s = w.opened()[0].0;
    w.advance(Duration::from_millis(9_900));
    assert!(w.take_to_device(&a).is_empty());
    w.advance(Duration::from_millis(100));
    assert_eq!(w.take_to_device(&a), vec![connack(ReturnCode::Congestion)]);
    assert_eq!(w.closed(), vec![s]);
    // The broker answering after the deadline is ignored.
    w.broker_connack(s);
    w.take_upstream(s);
    assert!(w.take_to_device(&a).is_empty());
    w.assert_quiet();
}

#[test]
fn wrong_protocol_id_gives_connack_not_supported() {
    let mut w = World::new();
    let a = addr(1);
    w.device_send(
        &a,
        Message::Connect(codec::Connect {
            will: false,
            clean_session: true,
            protocol_id: 0x02,
            duration: 60,
            client_id: "dev1".into(),
        }),
    );
    assert_eq!(
        w.take_to_device(&a),
        vec![connack(ReturnCode::NotSupported)]
    );
    w.assert_quiet();
    assert_eq!(w.gw.device_count(), 0);
}

// ---------------------------------------------------------------- takeover

#[test]
fn takeover_from_new_address_moves_the_session() {
    let mut w = World::new();
    let (a, b) = (addr(1), addr(2));
    let s1 = w.connect(&a, "dev1", true, None);
    let topic = w.subscribe(
        &a,
        s1,
        "cmd/dev1",
        QoS::AtLeastOnce,
        mqtt::QoS::AtLeastOnce,
        1,
    );
    assert_ne!(topic, 0);

    w.device_send(&b, connect_msg("dev1", false, false, 60));
    // Old session ends gracefully: DISCONNECT first, then Close.
    let all = w.take_all();
    let pos_disc = all
        .iter()
        .position(|o| matches!(o, Output::Send { session, packet: mqtt::Packet::Disconnect } if *session == s1))
        .expect("DISCONNECT on the old session");
    let pos_close = all
        .iter()
        .position(|o| matches!(o, Output::Close { session } if *session == s1))
        .expect("old session closed");
    assert!(pos_disc < pos_close);
    let s2 = all
        .iter()
        .find_map(|o| match o {
            Output::Open {
                session, connect, ..
            } => {
                assert_eq!(connect.client_id, "dev1");
                Some(*session)
            }
            _ => None,
        })
        .expect("new session opened");
    assert!(!all.iter().any(|o| matches!(o, Output::Transmit { .. })));
    w.broker_connack(s2);
    assert_eq!(w.take_to_device(&b), vec![connack(ReturnCode::Accepted)]);
    assert!(w.take_to_device(&a).is_empty());

    // Downlink follows the device to its new address. The session was resumed (clean=0), so
    // the id is kept but told to the device again before use (spec §6.10).
    w.broker(
        s2,
        mqtt_publish(mqtt::QoS::AtMostOnce, false, "cmd/dev1", None, b"on"),
    );
    assert!(w.take_to_device(&a).is_empty());
    let down = w.take_to_device(&b);
    let [Message::Register(r)] = down.as_slice() else {
        panic!("{down:?}")
    };
    assert_eq!((r.topic_id, r.topic_name.as_str()), (topic, "cmd/dev1"));
    w.device_send(
        &b,
        Message::Regack(codec::Regack {
            topic_id: topic,
            msg_id: r.msg_id,
            return_code: ReturnCode::Accepted,
        }),
    );
    assert_eq!(
        w.take_to_device(&b),
        vec![sn_publish(
            false,
            QoS::AtMostOnce,
            false,
            TopicRef::Id(topic),
            0,
            b"on"
        )]
    );
    assert_eq!(w.gw.stats().devices_active, 1);
    // The old address has no session any more.
    w.device_send(&a, Message::PingReq { client_id: None });
    assert_eq!(
        w.take_to_device(&a),
        vec![Message::Disconnect { duration: None }]
    );
}

// ---------------------------------------------------------------- will update (§6.4)

/// After WILLTOPICUPD/WILLMSGUPD: the old session is closed gracefully and a new one opened.
fn expect_session_switch(w: &mut World, old: SessionId) -> (SessionId, mqtt::Connect) {
    let all = w.take_all();
    let pos_disc = all
        .iter()
        .position(|o| matches!(o, Output::Send { session, packet: mqtt::Packet::Disconnect } if *session == old))
        .expect("DISCONNECT on the old session");
    let pos_close = all
        .iter()
        .position(|o| matches!(o, Output::Close { session } if *session == old))
        .expect("old session closed");
    assert!(pos_disc < pos_close);
    assert!(
        !all.iter().any(|o| matches!(o, Output::Transmit { .. })),
        "no response before CONNACK: {all:?}"
    );
    let opened: Vec<_> = all
        .into_iter()
        .filter_map(|o| match o {
            Output::Open {
                session, connect, ..
            } => Some((session, connect)),
            _ => None,
        })
        .collect();
    assert_eq!(opened.len(), 1);
    opened.into_iter().next().unwrap()
}

#[test]
fn will_topic_update_reopens_the_session_with_the_new_will_and_responds_after_connack() {
    let mut w = World::new();
    let a = addr(1);
    let s1 = w.connect(&a, "dev1", false, Some(WILL));
    w.device_send(
        &a,
        Message::WillTopicUpd(Some(WillTopic {
            qos: QoS::ExactlyOnce,
            retain: false,
            topic: "dev/1/new".into(),
        })),
    );
    let (s2, c) = expect_session_switch(&mut w, s1);
    assert!(!c.clean_session, "clean flag kept");
    assert_eq!(
        c.will,
        Some(mqtt::LastWill {
            topic: "dev/1/new".into(),
            message: Bytes::from_static(b"gone"),
            qos: mqtt::QoS::ExactlyOnce,
            retain: false,
        })
    );
    w.broker_connack(s2);
    assert_eq!(
        w.take_to_device(&a),
        vec![Message::WillTopicResp {
            return_code: ReturnCode::Accepted
        }]
    );
    assert!(w.take_upstream(s2).is_empty(), "clean=0: no resubscription");
    // The new session carries traffic.
    w.device_send(
        &a,
        publish(QoS::AtMostOnce, TopicRef::Predefined(7), 0, b"x"),
    );
    assert_eq!(
        w.take_upstream(s2),
        vec![mqtt_publish(
            mqtt::QoS::AtMostOnce,
            false,
            "pre/seven",
            None,
            b"x"
        )]
    );
}

#[test]
fn will_msg_update_on_clean_session_resubscribes_on_the_new_session() {
    let mut w = World::new();
    let a = addr(1);
    let s1 = w.connect(&a, "dev1", true, Some(WILL));
    w.subscribe(&a, s1, "cmd/#", QoS::AtLeastOnce, mqtt::QoS::AtLeastOnce, 1);
    w.device_send(
        &a,
        Message::WillMsgUpd {
            msg: Bytes::from_static(b"dead"),
        },
    );
    let (s2, c) = expect_session_switch(&mut w, s1);
    assert!(c.clean_session);
    assert_eq!(
        c.will,
        Some(mqtt::LastWill {
            message: Bytes::from_static(b"dead"),
            ..WILL.last_will()
        })
    );
    w.broker_connack(s2);
    // The response waits until the new session carries the subscription again, so nothing
    // published after it can miss the device.
    assert!(w.take_to_device(&a).is_empty());
    let up = w.take_upstream(s2);
    let [mqtt::Packet::Subscribe { packet_id, filters }] = up.as_slice() else {
        panic!("expected the subscription re-sent, got {up:?}");
    };
    assert_eq!(filters, &vec![("cmd/#".to_owned(), mqtt::QoS::AtLeastOnce)]);
    // Its SUBACK itself is internal: the device only gets the WILLMSGRESP.
    w.broker(
        s2,
        mqtt::Packet::SubAck {
            packet_id: *packet_id,
            codes: vec![mqtt::SubackCode::Granted(mqtt::QoS::AtLeastOnce)],
        },
    );
    assert_eq!(
        w.take_to_device(&a),
        vec![Message::WillMsgResp {
            return_code: ReturnCode::Accepted
        }]
    );
}

#[test]
fn will_update_waits_for_the_uplink_qos1_in_flight() {
    let mut w = World::new();
    let a = addr(1);
    let s1 = w.connect(&a, "dev1", false, Some(WILL));
    w.device_send(
        &a,
        publish(QoS::AtLeastOnce, TopicRef::Predefined(7), 5, b"v"),
    );
    let up = w.take_upstream(s1);
    let [mqtt::Packet::Publish(p)] = up.as_slice() else {
        panic!("{up:?}")
    };
    let pkid = p.packet_id.unwrap();
    w.device_send(
        &a,
        Message::WillMsgUpd {
            msg: Bytes::from_static(b"dead"),
        },
    );
    assert!(w.opened().is_empty(), "switch waits for the PUBACK");
    assert!(w.closed().is_empty());
    w.broker(s1, mqtt::Packet::PubAck { packet_id: pkid });
    assert_eq!(
        w.take_to_device(&a),
        vec![Message::Puback(codec::Puback {
            topic_id: 7,
            msg_id: 5,
            return_code: ReturnCode::Accepted
        })]
    );
    let (s2, _) = expect_session_switch(&mut w, s1);
    w.broker_connack(s2);
    assert_eq!(
        w.take_to_device(&a),
        vec![Message::WillMsgResp {
            return_code: ReturnCode::Accepted
        }]
    );
}

#[test]
fn will_update_refused_by_broker_disconnects_the_device() {
    let mut w = World::new();
    let a = addr(1);
    let s1 = w.connect(&a, "dev1", false, Some(WILL));
    w.device_send(
        &a,
        Message::WillMsgUpd {
            msg: Bytes::from_static(b"dead"),
        },
    );
    let (s2, _) = expect_session_switch(&mut w, s1);
    w.broker_connack_code(s2, mqtt::ConnectReturnCode::ServerUnavailable);
    assert_eq!(w.closed(), vec![s2]);
    assert_eq!(
        w.take_to_device(&a),
        vec![Message::Disconnect { duration: None }]
    );
    assert_eq!(w.gw.stats().devices_active, 0);
    // The device must CONNECT again.
    w.device_send(&a, Message::PingReq { client_id: None });
    assert_eq!(
        w.take_to_device(&a),
        vec![Message::Disconnect { duration: None }]
    );
}

#[test]
fn connect_resent_while_awaiting_the_broker_opens_no_second_session() {
    let mut w = World::new();
    let a = addr(1);
    w.device_send(&a, connect_msg("dev1", true, false, 60));
    w.device_send(&a, connect_msg("dev1", true, false, 60));
    let opened = w.opened();
    assert_eq!(opened.len(), 1);
    w.broker_connack(opened[0].0);
    assert_eq!(w.take_to_device(&a), vec![connack(ReturnCode::Accepted)]);
    w.assert_quiet();
}

#[test]
fn will_prompting_that_stalls_times_out_without_opening_a_session() {
    let mut w = World::new();
    let a = addr(1);
    w.device_send(&a, connect_msg("dev1", true, true, 60));
    assert_eq!(w.take_to_device(&a), vec![Message::WillTopicReq]);
    w.advance(Duration::from_secs(3600));
    assert!(w.opened().is_empty());
    assert_ne!(
        w.gw.device_state("dev1"),
        Some(super::super::DeviceState::AwaitWillTopic)
    );
    // The device can start over.
    w.connect(&a, "dev1", true, None);
}

#[test]
fn device_returning_from_a_new_address_leaves_the_new_owner_of_its_old_address_alone() {
    let mut w = World::new();
    let (a, b) = (addr(1), addr(2));
    let s1 = w.connect(&a, "dev1", true, None);
    w.device_send(&a, Message::Disconnect { duration: None });
    w.take_upstream(s1);
    w.closed();
    w.take_to_device(&a);
    // NAT churn: dev2 now has dev1's old address, and dev1 comes back from another one.
    let s2 = w.connect(&a, "dev2", true, None);
    w.connect(&b, "dev1", true, None);
    // dev2 must still be reachable at its address.
    w.device_send(
        &a,
        publish(QoS::AtMostOnce, TopicRef::Predefined(7), 0, b"still here"),
    );
    assert!(
        w.take_to_device(&a).is_empty(),
        "dev2 was told to reconnect"
    );
    assert_eq!(
        w.take_upstream(s2),
        vec![mqtt_publish(
            mqtt::QoS::AtMostOnce,
            false,
            "pre/seven",
            None,
            b"still here"
        )]
    );
    assert_eq!(w.gw.stats().devices_active, 2);
}

#[test]
fn publish_held_during_a_will_update_is_forwarded_on_the_new_session() {
    let mut w = World::new();
    let a = addr(1);
    let s1 = w.connect(&a, "dev1", false, Some(WILL));
    w.device_send(
        &a,
        Message::WillMsgUpd {
            msg: Bytes::from_static(b"dead"),
        },
    );
    let (s2, _) = expect_session_switch(&mut w, s1);
    w.device_send(
        &a,
        publish(QoS::AtLeastOnce, TopicRef::Predefined(7), 9, b"v"),
    );
    assert!(w.take_upstream(s1).is_empty());
    assert!(w.take_upstream(s2).is_empty(), "held until the new CONNACK");
    w.broker_connack(s2);
    assert_eq!(
        w.take_to_device(&a),
        vec![Message::WillMsgResp {
            return_code: ReturnCode::Accepted
        }]
    );
    let up = w.take_upstream(s2);
    let [mqtt::Packet::Publish(p)] = up.as_slice() else {
        panic!("{up:?}")
    };
    assert_eq!(p.topic, "pre/seven");
    w.broker(
        s2,
        mqtt::Packet::PubAck {
            packet_id: p.packet_id.unwrap(),
        },
    );
    assert_eq!(
        w.take_to_device(&a),
        vec![Message::Puback(codec::Puback {
            topic_id: 7,
            msg_id: 9,
            return_code: ReturnCode::Accepted
        })]
    );
}

#[test]
fn will_update_session_not_accepted_in_time_disconnects_the_device() {
    let mut w = World::new(); // upstream_connect_timeout 10 s
    let a = addr(1);
    let s1 = w.connect(&a, "dev1", false, Some(WILL));
    w.device_send(
        &a,
        Message::WillMsgUpd {
            msg: Bytes::from_static(b"dead"),
        },
    );
    let (s2, _) = expect_session_switch(&mut w, s1);
    w.advance(Duration::from_millis(9_999));
    assert!(w.take_to_device(&a).is_empty());
    w.advance(Duration::from_millis(1));
    assert_eq!(w.closed(), vec![s2]);
    assert_eq!(
        w.take_to_device(&a),
        vec![Message::Disconnect { duration: None }]
    );
    assert_eq!(
        w.gw.device_state("dev1"),
        Some(super::super::DeviceState::Disconnected)
    );
    // A late CONNACK on the abandoned session is ignored.
    w.broker_connack(s2);
    w.assert_quiet();
}
