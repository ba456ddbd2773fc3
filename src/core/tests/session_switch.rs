//! The upstream session across switches and resumptions: a sleeping device reconnecting with a
//! new will keeps what is buffered (§6.3, §6.14), a re-subscription made by the gateway does not
//! re-deliver retained messages (MQTT 3.1.1 §3.3.1.3), and a broker that lost a persistent
//! session (CONNACK Session Present 0) gets the device's subscriptions back.

use std::time::Duration;

use bytes::Bytes;

use super::*;
use crate::core::DeviceState;

const WILL: Will = Will {
    topic: "dev/status",
    qos: QoS::AtLeastOnce,
    retain: true,
    msg: b"gone",
};

fn subscribe_packets(up: &[mqtt::Packet]) -> Vec<(u16, String, mqtt::QoS)> {
    up.iter()
        .filter_map(|p| match p {
            mqtt::Packet::Subscribe { packet_id, filters } if filters.len() == 1 => {
                Some((*packet_id, filters[0].0.clone(), filters[0].1))
            }
            _ => None,
        })
        .collect()
}

fn suback(packet_id: u16, q: mqtt::QoS) -> mqtt::Packet {
    mqtt::Packet::SubAck {
        packet_id,
        codes: vec![mqtt::SubackCode::Granted(q)],
    }
}

// ---------------------------------------------------------------- item: CONNECT(clean 0, will 1) from sleep

#[test]
fn sleeping_device_woken_by_connect_with_a_new_will_keeps_its_buffered_qos0_messages() {
    let mut w = World::new();
    let a = addr(1);
    let s = w.connect(&a, "s1", false, None);
    let cmd = w.subscribe(&a, s, "cmd", QoS::AtLeastOnce, mqtt::QoS::AtLeastOnce, 1);
    w.device_send(
        &a,
        Message::Disconnect {
            duration: Some(3600),
        },
    );
    w.take_to_device(&a);
    w.broker(
        s,
        mqtt_publish(mqtt::QoS::AtMostOnce, false, "cmd", None, b"zero"),
    );
    w.broker(
        s,
        mqtt_publish(mqtt::QoS::AtLeastOnce, false, "cmd", Some(4), b"one"),
    );
    assert!(w.take_to_device(&a).is_empty(), "buffered while asleep");

    w.connect_prompts(&a, "s1", false, &WILL);
    // The session, the topic ids and the buffer carry on: nothing was closed or opened yet.
    assert!(w.closed().is_empty());
    assert!(w.opened().is_empty());
    let down = w.take_to_device(&a);
    assert_eq!(down.len(), 3, "{down:?}");
    assert_eq!(down[0], connack(ReturnCode::Accepted));
    let (Message::Publish(p0), Message::Publish(p1)) = (&down[1], &down[2]) else {
        panic!("{down:?}")
    };
    assert_eq!(
        (p0.topic, p0.qos, &p0.data[..]),
        (TopicRef::Id(cmd), QoS::AtMostOnce, &b"zero"[..])
    );
    assert_eq!((p1.qos, &p1.data[..]), (QoS::AtLeastOnce, &b"one"[..]));
    assert_eq!(w.gw.device_state("s1"), Some(DeviceState::Active));
    // Once the device has everything the broker is owed for, the new will goes upstream on a
    // replacement session (clean session 0: the broker keeps the subscriptions).
    w.device_send(&a, puback(cmd, p1.msg_id));
    let all = w.take_all();
    assert!(all.iter().any(|o| matches!(o, Output::Send { session, packet: mqtt::Packet::PubAck { packet_id: 4 } } if *session == s)), "{all:?}");
    let opened: Vec<_> = all
        .iter()
        .filter_map(|o| match o {
            Output::Open {
                session, connect, ..
            } => Some((*session, connect.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(opened.len(), 1, "{all:?}");
    let (s2, c) = &opened[0];
    assert!(!c.clean_session);
    assert_eq!(c.will, Some(WILL.last_will()));
    w.broker_connack(*s2);
    assert!(
        w.take_upstream(*s2).is_empty(),
        "the broker kept the session"
    );
    assert!(w.take_to_device(&a).is_empty());
    w.broker(
        *s2,
        mqtt_publish(mqtt::QoS::AtMostOnce, false, "cmd", None, b"later"),
    );
    assert_eq!(
        one_pub(w.take_to_device(&a)).data,
        Bytes::from_static(b"later")
    );
}

#[test]
fn connect_with_a_new_will_resent_during_the_prompt_keeps_the_session() {
    let mut w = World::new();
    let a = addr(1);
    let s = w.connect(&a, "s1", false, None);
    w.subscribe(&a, s, "cmd", QoS::AtLeastOnce, mqtt::QoS::AtLeastOnce, 1);
    w.device_send(
        &a,
        Message::Disconnect {
            duration: Some(3600),
        },
    );
    w.take_to_device(&a);
    w.broker(
        s,
        mqtt_publish(mqtt::QoS::AtMostOnce, false, "cmd", None, b"zero"),
    );
    w.device_send(&a, connect_msg("s1", false, true, 60));
    assert_eq!(w.take_to_device(&a), vec![Message::WillTopicReq]);
    // The device missed WILLTOPICREQ and sends its CONNECT again.
    w.connect_prompts(&a, "s1", false, &WILL);
    let down = w.take_to_device(&a);
    assert_eq!(down[0], connack(ReturnCode::Accepted));
    assert!(
        matches!(&down[1], Message::Publish(p) if &p.data[..] == b"zero"),
        "{down:?}"
    );
    // Nothing is owed to the broker, so the new will goes upstream at once.
    assert_eq!(w.closed(), vec![s]);
    let opened = w.opened();
    assert_eq!(opened.len(), 1);
    assert_eq!(opened[0].1.will, Some(WILL.last_will()));
}

#[test]
fn will_prompt_from_sleep_that_stalls_ends_the_session_without_the_will() {
    let mut w = World::new();
    let a = addr(1);
    let s = w.connect(&a, "s1", false, None);
    w.device_send(
        &a,
        Message::Disconnect {
            duration: Some(3600),
        },
    );
    w.take_to_device(&a);
    w.device_send(&a, connect_msg("s1", false, true, 60));
    assert_eq!(w.take_to_device(&a), vec![Message::WillTopicReq]);
    w.advance(Duration::from_secs(120));
    assert_eq!(w.take_upstream(s), vec![mqtt::Packet::Disconnect]);
    assert_eq!(w.closed(), vec![s]);
    assert_eq!(w.gw.device_state("s1"), Some(DeviceState::Disconnected));
}

// ---------------------------------------------------------------- item: retained not re-delivered

/// A clean-session device subscribed to `cmd` (id returned), with a will.
fn clean_subscribed(w: &mut World, a: &DeviceAddr) -> (SessionId, u16) {
    let s = w.connect(a, "dev", true, Some(WILL));
    let cmd = w.subscribe(a, s, "cmd", QoS::AtLeastOnce, mqtt::QoS::AtLeastOnce, 1);
    (s, cmd)
}

/// Runs a will update that switches sessions; returns the new session and the packet id of
/// its one re-subscription (not yet acknowledged).
fn switch(w: &mut World, old: SessionId, update: Message) -> (SessionId, u16) {
    let a = addr(1);
    w.device_send(&a, update);
    let opened: Vec<_> = w
        .take_all()
        .into_iter()
        .filter_map(|o| match o {
            Output::Open { session, .. } => Some(session),
            Output::Close { session } => {
                assert_eq!(session, old);
                None
            }
            _ => None,
        })
        .collect();
    let [s2] = opened[..] else {
        panic!("{opened:?}")
    };
    w.broker_connack(s2);
    let subs = subscribe_packets(&w.take_upstream(s2));
    let [(pkid, _, _)] = subs[..] else {
        panic!("{subs:?}")
    };
    (s2, pkid)
}

#[test]
fn will_updates_on_a_clean_session_do_not_redeliver_retained_messages() {
    let mut w = World::new();
    let a = addr(1);
    let (s1, cmd) = clean_subscribed(&mut w, &a);
    let updates = [
        Message::WillTopicUpd(Some(codec::WillTopic {
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: "dev/status2".into(),
        })),
        Message::WillMsgUpd {
            msg: Bytes::from_static(b"dead"),
        },
    ];
    let mut old = s1;
    for update in updates {
        let (s2, pkid) = switch(&mut w, old, update);
        // The broker sends the retained message of the re-made subscription before its SUBACK
        // (rmqtt sends them from a task of their own) and after it (mosquitto): both times it
        // is acknowledged to the broker, and the device, which made no new SUBSCRIBE, never
        // sees it again.
        w.broker(
            s2,
            mqtt_publish(mqtt::QoS::AtLeastOnce, true, "cmd", Some(31), b"state"),
        );
        w.broker(s2, suback(pkid, mqtt::QoS::AtLeastOnce));
        w.broker(
            s2,
            mqtt_publish(mqtt::QoS::ExactlyOnce, true, "cmd", Some(32), b"state"),
        );
        w.broker(
            s2,
            mqtt_publish(mqtt::QoS::AtMostOnce, true, "cmd", None, b"state"),
        );
        let down = w.take_to_device(&a);
        assert_eq!(down.len(), 1, "only the will response: {down:?}");
        assert!(matches!(
            down[0],
            Message::WillTopicResp { .. } | Message::WillMsgResp { .. }
        ));
        assert_eq!(
            w.take_upstream(s2),
            vec![
                mqtt::Packet::PubAck { packet_id: 31 },
                mqtt::Packet::PubRec { packet_id: 32 }
            ]
        );
        w.broker(s2, mqtt::Packet::PubRel { packet_id: 32 });
        assert_eq!(
            w.take_upstream(s2),
            vec![mqtt::Packet::PubComp { packet_id: 32 }]
        );
        // A new publish on the live subscription (RETAIN 0 per 3.1.1, retained or not at its
        // publisher) still arrives.
        w.broker(
            s2,
            mqtt_publish(mqtt::QoS::AtMostOnce, false, "cmd", None, b"live"),
        );
        let p = one_pub(w.take_to_device(&a));
        assert_eq!((p.topic, &p.data[..]), (TopicRef::Id(cmd), &b"live"[..]));
        old = s2;
    }
    // The device subscribing again itself does get the retained message (a new subscription).
    w.device_send(
        &a,
        Message::Subscribe(codec::Subscribe {
            dup: false,
            qos: QoS::AtLeastOnce,
            msg_id: 9,
            topic: codec::TopicFilter::Name("cmd".into()),
        }),
    );
    let subs = subscribe_packets(&w.take_upstream(old));
    w.broker(old, suback(subs[0].0, mqtt::QoS::AtLeastOnce));
    w.take_to_device(&a);
    w.broker(
        old,
        mqtt_publish(mqtt::QoS::AtMostOnce, true, "cmd", None, b"state"),
    );
    let p = one_pub(w.take_to_device(&a));
    assert!(p.retain);
    assert_eq!(&p.data[..], b"state");
}

// ---------------------------------------------------------------- item: Session Present 0

#[test]
fn device_reconnecting_to_a_session_the_broker_lost_gets_its_subscriptions_back() {
    let mut w = World::new();
    let a = addr(1);
    let s = w.connect(&a, "dev", false, None);
    w.subscribe(&a, s, "cmd", QoS::AtLeastOnce, mqtt::QoS::AtLeastOnce, 1);
    w.subscribe(&a, s, "ev/#", QoS::ExactlyOnce, mqtt::QoS::ExactlyOnce, 2);
    w.device_send(&a, Message::Disconnect { duration: None });
    w.take_all();
    // The broker restarts without persistence while the device is away.
    w.broker_loses_sessions();
    let s2 = w.connect(&a, "dev", false, None);
    let subs = subscribe_packets(&w.take_upstream(s2));
    let filters: Vec<_> = subs.iter().map(|(_, f, q)| (f.clone(), *q)).collect();
    assert_eq!(
        filters,
        vec![
            ("cmd".to_owned(), mqtt::QoS::AtLeastOnce),
            ("ev/#".to_owned(), mqtt::QoS::ExactlyOnce)
        ]
    );
    for (pkid, _, q) in &subs {
        w.broker(s2, suback(*pkid, *q));
    }
    assert!(
        w.take_to_device(&a).is_empty(),
        "the SUBACKs are the gateway's"
    );
    // The session was gone for a while: a retained message is how the device catches up.
    w.broker(
        s2,
        mqtt_publish(mqtt::QoS::AtMostOnce, true, "cmd", None, b"state"),
    );
    // The device is told its topic ids again before use (§6.10), then gets the message.
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
    assert!(one_pub(w.take_to_device(&a)).retain);

    // A broker that kept the session: nothing is re-subscribed.
    w.device_send(&a, Message::Disconnect { duration: None });
    w.take_all();
    let s3 = w.connect(&a, "dev", false, None);
    assert!(subscribe_packets(&w.take_upstream(s3)).is_empty());
}

#[test]
fn will_update_on_a_persistent_session_the_broker_lost_restores_subscriptions_quietly() {
    let mut w = World::new();
    let a = addr(1);
    let s1 = w.connect(&a, "dev", false, Some(WILL));
    w.subscribe(&a, s1, "cmd", QoS::AtLeastOnce, mqtt::QoS::AtLeastOnce, 1);
    w.broker_loses_sessions();
    let (s2, pkid) = switch(
        &mut w,
        s1,
        Message::WillMsgUpd {
            msg: Bytes::from_static(b"dead"),
        },
    );
    assert!(w.take_to_device(&a).is_empty(), "response after the SUBACK");
    w.broker(s2, suback(pkid, mqtt::QoS::AtLeastOnce));
    w.broker(
        s2,
        mqtt_publish(mqtt::QoS::AtMostOnce, true, "cmd", None, b"state"),
    );
    assert_eq!(
        w.take_to_device(&a),
        vec![Message::WillMsgResp {
            return_code: ReturnCode::Accepted
        }]
    );
}

#[test]
fn session_restored_after_a_gateway_restart_that_the_broker_lost_is_subscribed_again() {
    use super::record::persistent;
    let mut w = World::with(persistent());
    let a = addr(1);
    let s = w.connect(&a, "dev", false, None);
    w.subscribe(&a, s, "down/#", QoS::AtLeastOnce, mqtt::QoS::AtLeastOnce, 1);
    w.commit_all();
    // Gateway and broker restart; the broker kept nothing.
    w.broker_loses_sessions();
    w.restart(persistent());
    let opened = w.opened();
    let (s2, _) = &opened[0];
    w.broker_connack(*s2);
    let subs = subscribe_packets(&w.take_upstream(*s2));
    assert_eq!(
        subs.iter()
            .map(|(_, f, q)| (f.as_str(), *q))
            .collect::<Vec<_>>(),
        vec![("down/#", mqtt::QoS::AtLeastOnce)]
    );
    w.broker(*s2, suback(subs[0].0, mqtt::QoS::AtLeastOnce));
    assert!(w.take_to_device(&a).is_empty());
    // A broker that kept it: a second restart re-subscribes nothing.
    w.commit_all();
    w.restart(persistent());
    let opened = w.opened();
    w.broker_connack(opened[0].0);
    assert!(subscribe_packets(&w.take_upstream(opened[0].0)).is_empty());
}

#[test]
fn session_resumed_after_an_outage_that_the_broker_lost_is_subscribed_again() {
    use super::record::persistent;
    let mut w = World::with(persistent());
    let a = addr(1);
    let s = w.connect(&a, "dev", false, None);
    w.subscribe(&a, s, "down/#", QoS::ExactlyOnce, mqtt::QoS::ExactlyOnce, 1);
    w.commit_all();
    w.broker_closed(s);
    w.broker_loses_sessions();
    w.advance(Duration::from_secs(10));
    let opened = w.opened();
    assert_eq!(opened.len(), 1);
    w.broker_connack(opened[0].0);
    let subs = subscribe_packets(&w.take_upstream(opened[0].0));
    assert_eq!(
        subs.iter()
            .map(|(_, f, q)| (f.as_str(), *q))
            .collect::<Vec<_>>(),
        vec![("down/#", mqtt::QoS::ExactlyOnce)]
    );
    assert!(
        w.take_to_device(&a).is_empty(),
        "the device stays connected"
    );
}

#[test]
fn connect_with_a_new_will_while_awake_keeps_the_delivery_in_flight() {
    let mut w = World::new();
    let a = addr(1);
    let s = w.connect(&a, "s1", false, None);
    let cmd = w.subscribe(&a, s, "cmd", QoS::AtLeastOnce, mqtt::QoS::AtLeastOnce, 1);
    w.device_send(
        &a,
        Message::Disconnect {
            duration: Some(3600),
        },
    );
    w.take_to_device(&a);
    w.broker(
        s,
        mqtt_publish(mqtt::QoS::AtLeastOnce, false, "cmd", Some(4), b"one"),
    );
    w.device_send(
        &a,
        Message::PingReq {
            client_id: Some("s1".into()),
        },
    );
    let first = one_pub(w.take_to_device(&a));
    // Mid-flush, the device reconnects with a new will; the prompt outlasts T_RETRY.
    w.device_send(&a, connect_msg("s1", false, true, 60));
    assert_eq!(w.take_to_device(&a), vec![Message::WillTopicReq]);
    w.advance(Duration::from_secs(20));
    assert_eq!(
        w.take_to_device(&a),
        vec![],
        "no retransmission during the prompt"
    );
    w.device_send(
        &a,
        Message::WillTopic(Some(codec::WillTopic {
            qos: WILL.qos,
            retain: WILL.retain,
            topic: WILL.topic.into(),
        })),
    );
    w.take_to_device(&a);
    w.device_send(
        &a,
        Message::WillMsg {
            msg: Bytes::from_static(WILL.msg),
        },
    );
    let down = w.take_to_device(&a);
    assert_eq!(down[0], connack(ReturnCode::Accepted));
    let Message::Publish(again) = &down[1] else {
        panic!("{down:?}")
    };
    assert_eq!((again.dup, again.msg_id), (true, first.msg_id));
    w.device_send(&a, puback(cmd, first.msg_id));
    assert!(w
        .take_upstream(s)
        .contains(&mqtt::Packet::PubAck { packet_id: 4 }));
}
