//! End to end over real sockets: a raw MQTT-SN device on UDP <-> the gateway <-> a broker on a
//! free port <-> an MQTT 3.1.1 client (ours over TCP, or the mosquitto_pub / mosquitto_sub
//! command-line clients). Every scenario runs against both backends (see
//! [`common::Backend`]): a real mosquitto, and the gateway's embedded broker.

#[macro_use]
mod common;

use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use mqttsn_gateway::codec::{self, Message, QoS, ReturnCode, TopicFilter, TopicRef};
use mqttsn_gateway::config::Sessions;
use mqttsn_gateway::mqtt;

on_both_backends_and_modes!(
    uplink_every_qos_reaches_an_mqtt_subscriber_with_payload_and_retain,
    qos2_resent_with_dup_reaches_the_broker_exactly_once,
    downlink_by_name_wildcard_with_register_and_qos_downgrade,
    retained_message_from_mosquitto_pub_reaches_a_subscribing_device,
    device_publish_seen_by_mosquitto_sub,
    will_fires_when_keep_alive_expires_but_not_after_disconnect,
    will_update_applies_upstream,
    qos_minus_one_from_an_unconnected_device,
    searchgw_malformed_input_and_unknown_peers,
    same_client_id_from_a_new_address_takes_the_session_over,
);

async fn uplink_every_qos_reaches_an_mqtt_subscriber_with_payload_and_retain(
    backend: Backend,
    sessions: Sessions,
) {
    let broker = broker_or_skip!(backend);
    let (gw, gw_addr) = start_gateway(&mode_config(broker.port, sessions)).await;
    let mut sub = MqttClient::connect(broker.addr(), "sub").await;
    sub.subscribe("up/#", mqtt::QoS::ExactlyOnce).await;

    let dev = SnClient::new(gw_addr).await;
    dev.connect("dev-up", true, 60).await;
    let tid = dev.register("up/temp", 1).await;

    // QoS 0
    dev.publish(TopicRef::Id(tid), QoS::AtMostOnce, false, 0, b"\x00zero")
        .await;
    let p = sub.next_publish(WAIT).await.expect("qos 0 delivered");
    assert_eq!(
        (p.topic.as_str(), &p.payload[..], p.qos),
        ("up/temp", &b"\x00zero"[..], mqtt::QoS::AtMostOnce)
    );

    // QoS 1: PUBACK to the device carries its own MsgId and TopicId.
    dev.publish(TopicRef::Id(tid), QoS::AtLeastOnce, false, 0x1234, b"one")
        .await;
    assert_eq!(
        dev.recv().await,
        Message::Puback(codec::Puback {
            topic_id: tid,
            msg_id: 0x1234,
            return_code: ReturnCode::Accepted
        })
    );
    let p = sub.next_publish(WAIT).await.expect("qos 1 delivered");
    assert_eq!(
        (&p.payload[..], p.qos),
        (&b"one"[..], mqtt::QoS::AtLeastOnce)
    );

    // QoS 2, full four-way flow with the device.
    dev.publish(TopicRef::Id(tid), QoS::ExactlyOnce, false, 77, b"two")
        .await;
    assert_eq!(dev.recv().await, Message::Pubrec { msg_id: 77 });
    dev.send(Message::Pubrel { msg_id: 77 }).await;
    assert_eq!(dev.recv().await, Message::Pubcomp { msg_id: 77 });
    let p = sub.next_publish(WAIT).await.expect("qos 2 delivered");
    assert_eq!(
        (&p.payload[..], p.qos),
        (&b"two"[..], mqtt::QoS::ExactlyOnce)
    );

    // Retain: a later subscriber gets it as retained.
    dev.publish(TopicRef::Id(tid), QoS::AtLeastOnce, true, 78, b"kept")
        .await;
    assert!(matches!(dev.recv().await, Message::Puback(_)));
    let mut late = MqttClient::connect(broker.addr(), "late").await;
    late.subscribe("up/temp", mqtt::QoS::AtLeastOnce).await;
    let p = late.next_publish(WAIT).await.expect("retained delivered");
    assert!(p.retain);
    assert_eq!(&p.payload[..], b"kept");
    gw.shutdown().await;
}

async fn qos2_resent_with_dup_reaches_the_broker_exactly_once(
    backend: Backend,
    sessions: Sessions,
) {
    let broker = broker_or_skip!(backend);
    let (gw, gw_addr) = start_gateway(&mode_config(broker.port, sessions)).await;
    let mut sub = MqttClient::connect(broker.addr(), "sub2").await;
    sub.subscribe("once", mqtt::QoS::ExactlyOnce).await;
    let dev = SnClient::new(gw_addr).await;
    dev.connect("dev-once", true, 60).await;
    let tid = dev.register("once", 1).await;
    let publish = |dup| {
        Message::Publish(codec::Publish {
            dup,
            qos: QoS::ExactlyOnce,
            retain: false,
            topic: TopicRef::Id(tid),
            msg_id: 9,
            data: Bytes::from_static(b"x"),
        })
    };
    dev.send(publish(false)).await;
    dev.send(publish(true)).await; // the device did not hear PUBREC yet
    assert_eq!(dev.recv().await, Message::Pubrec { msg_id: 9 });
    dev.send(publish(true)).await; // and again after it
    assert_eq!(dev.recv().await, Message::Pubrec { msg_id: 9 });
    // The first re-send may reach the gateway after the broker's PUBREC (a busy machine), and
    // is then rightly answered with a PUBREC of its own: anything more is that PUBREC again.
    while let Some(m) = dev.try_recv(Duration::from_millis(300)).await {
        assert_eq!(m, Message::Pubrec { msg_id: 9 });
    }
    dev.send(Message::Pubrel { msg_id: 9 }).await;
    assert_eq!(dev.recv().await, Message::Pubcomp { msg_id: 9 });
    assert!(sub.next_publish(WAIT).await.is_some());
    assert!(
        sub.next_publish(Duration::from_millis(500)).await.is_none(),
        "a duplicate reached the broker"
    );
    gw.shutdown().await;
}

async fn downlink_by_name_wildcard_with_register_and_qos_downgrade(
    backend: Backend,
    sessions: Sessions,
) {
    let broker = broker_or_skip!(backend);
    let (gw, gw_addr) = start_gateway(&mode_config(broker.port, sessions)).await;
    let dev = SnClient::new(gw_addr).await;
    dev.connect("dev-down", true, 60).await;
    let by_name = dev
        .subscribe(TopicFilter::Name("down/exact".into()), QoS::ExactlyOnce, 1)
        .await;
    assert_eq!(by_name.return_code, ReturnCode::Accepted);
    assert_ne!(by_name.topic_id, 0);
    let wild = dev
        .subscribe(TopicFilter::Name("wild/+".into()), QoS::AtLeastOnce, 2)
        .await;
    assert_eq!(
        (wild.return_code, wild.topic_id, wild.qos),
        (ReturnCode::Accepted, 0, QoS::AtLeastOnce)
    );

    let mut publisher = MqttClient::connect(broker.addr(), "pub").await;
    // QoS 2 to the exact subscription: PUBLISH, PUBREC, PUBREL, PUBCOMP.
    publisher
        .publish("down/exact", b"\x01\x02", mqtt::QoS::ExactlyOnce, false)
        .await;
    let Message::Publish(p) = dev.recv().await else {
        panic!("expected PUBLISH")
    };
    assert_eq!(
        (p.topic, p.qos, &p.data[..]),
        (
            TopicRef::Id(by_name.topic_id),
            QoS::ExactlyOnce,
            &b"\x01\x02"[..]
        )
    );
    dev.send(Message::Pubrec { msg_id: p.msg_id }).await;
    assert_eq!(dev.recv().await, Message::Pubrel { msg_id: p.msg_id });
    dev.send(Message::Pubcomp { msg_id: p.msg_id }).await;

    // QoS 2 on the wildcard granted QoS 1: REGISTER first, then PUBLISH downgraded to QoS 1.
    publisher
        .publish("wild/card", b"w", mqtt::QoS::ExactlyOnce, false)
        .await;
    let Message::Register(r) = dev.recv().await else {
        panic!("expected REGISTER")
    };
    assert_eq!(r.topic_name, "wild/card");
    assert!(
        dev.try_recv(Duration::from_millis(200)).await.is_none(),
        "PUBLISH before REGACK"
    );
    dev.send(Message::Regack(codec::Regack {
        topic_id: r.topic_id,
        msg_id: r.msg_id,
        return_code: ReturnCode::Accepted,
    }))
    .await;
    let Message::Publish(p) = dev.recv().await else {
        panic!("expected PUBLISH")
    };
    assert_eq!(
        (p.topic, p.qos, &p.data[..]),
        (TopicRef::Id(r.topic_id), QoS::AtLeastOnce, &b"w"[..])
    );
    dev.send(Message::Puback(codec::Puback {
        topic_id: r.topic_id,
        msg_id: p.msg_id,
        return_code: ReturnCode::Accepted,
    }))
    .await;

    // UNSUBSCRIBE: nothing more arrives.
    dev.send(Message::Unsubscribe(codec::Unsubscribe {
        msg_id: 3,
        topic: TopicFilter::Name("wild/+".into()),
    }))
    .await;
    assert_eq!(dev.recv().await, Message::Unsuback { msg_id: 3 });
    publisher
        .publish("wild/card", b"gone", mqtt::QoS::AtLeastOnce, false)
        .await;
    assert!(dev.try_recv(Duration::from_millis(300)).await.is_none());
    gw.shutdown().await;
}

async fn retained_message_from_mosquitto_pub_reaches_a_subscribing_device(
    backend: Backend,
    sessions: Sessions,
) {
    let broker = broker_or_skip!(backend);
    let status = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &broker.port.to_string(),
            "-t",
            "ret/a",
            "-m",
            "hello",
            "-r",
            "-q",
            "1",
        ])
        .status();
    let Ok(status) = status else {
        assert!(
            std::env::var_os("CI").is_none(),
            "mosquitto_pub missing in CI"
        );
        eprintln!("!!!!! SKIPPED: mosquitto_pub not installed !!!!!");
        return;
    };
    assert!(status.success());
    let (gw, gw_addr) = start_gateway(&mode_config(broker.port, sessions)).await;
    let dev = SnClient::new(gw_addr).await;
    dev.connect("dev-ret", true, 60).await;
    let s = dev
        .subscribe(TopicFilter::Name("ret/a".into()), QoS::AtMostOnce, 5)
        .await;
    let Message::Publish(p) = dev.recv().await else {
        panic!("expected retained PUBLISH")
    };
    assert!(p.retain);
    assert_eq!(
        (p.topic, &p.data[..]),
        (TopicRef::Id(s.topic_id), &b"hello"[..])
    );
    gw.shutdown().await;
}

async fn device_publish_seen_by_mosquitto_sub(backend: Backend, sessions: Sessions) {
    let broker = broker_or_skip!(backend);
    let (gw, gw_addr) = start_gateway(&mode_config(broker.port, sessions)).await;
    let dev = SnClient::new(gw_addr).await;
    dev.connect("dev-cli", true, 60).await;
    // Retained, so mosquitto_sub started afterwards sees it without racing the publish.
    dev.publish(TopicRef::Predefined(7), QoS::AtLeastOnce, true, 3, b"21.5")
        .await;
    assert!(
        matches!(dev.recv().await, Message::Puback(p) if p.return_code == ReturnCode::Accepted)
    );
    let out = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &broker.port.to_string(),
            "-t",
            "sensors/predefined",
            "-q",
            "1",
            "-C",
            "1",
            "-W",
            "5",
            "-F",
            "%t %q %r %p",
        ])
        .output();
    let Ok(out) = out else {
        assert!(
            std::env::var_os("CI").is_none(),
            "mosquitto_sub missing in CI"
        );
        eprintln!("!!!!! SKIPPED: mosquitto_sub not installed !!!!!");
        return;
    };
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "sensors/predefined 1 1 21.5"
    );
    gw.shutdown().await;
}

async fn will_fires_when_keep_alive_expires_but_not_after_disconnect(
    backend: Backend,
    sessions: Sessions,
) {
    let broker = broker_or_skip!(backend);
    let (gw, gw_addr) = start_gateway(&mode_config(broker.port, sessions)).await;
    let mut sub = MqttClient::connect(broker.addr(), "will-watch").await;
    sub.subscribe("wills/#", mqtt::QoS::AtLeastOnce).await;

    let polite = SnClient::new(gw_addr).await;
    polite
        .connect_with_will(
            "polite",
            1,
            "wills/polite",
            b"gone",
            QoS::AtLeastOnce,
            false,
        )
        .await;
    polite.send(Message::Disconnect { duration: None }).await;
    assert_eq!(polite.recv().await, Message::Disconnect { duration: None });

    // Duration 1 s: lost after 1.5 s of silence; the broker publishes the will.
    let silent = SnClient::new(gw_addr).await;
    silent
        .connect_with_will(
            "silent",
            1,
            "wills/silent",
            b"lost",
            QoS::AtLeastOnce,
            false,
        )
        .await;
    let p = sub.next_publish(WAIT).await.expect("will published");
    assert_eq!(
        (p.topic.as_str(), &p.payload[..]),
        ("wills/silent", &b"lost"[..])
    );
    assert!(
        sub.next_publish(Duration::from_millis(300)).await.is_none(),
        "the polite device's will fired"
    );
    gw.shutdown().await;
}

async fn will_update_applies_upstream(backend: Backend, sessions: Sessions) {
    let broker = broker_or_skip!(backend);
    let (gw, gw_addr) = start_gateway(&mode_config(broker.port, sessions)).await;
    let mut sub = MqttClient::connect(broker.addr(), "upd-watch").await;
    sub.subscribe("w/#", mqtt::QoS::AtLeastOnce).await;
    let dev = SnClient::new(gw_addr).await;
    dev.connect_with_will("upd", 2, "w/old", b"old", QoS::AtMostOnce, false)
        .await;
    let s = dev
        .subscribe(TopicFilter::Name("cmd".into()), QoS::AtMostOnce, 1)
        .await;
    dev.send(Message::WillTopicUpd(Some(codec::WillTopic {
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "w/new".into(),
    })))
    .await;
    assert_eq!(
        dev.recv().await,
        Message::WillTopicResp {
            return_code: ReturnCode::Accepted
        }
    );
    dev.send(Message::WillMsgUpd {
        msg: Bytes::from_static(b"new"),
    })
    .await;
    assert_eq!(
        dev.recv().await,
        Message::WillMsgResp {
            return_code: ReturnCode::Accepted
        }
    );
    // The subscription survived the session switch.
    let mut publisher = MqttClient::connect(broker.addr(), "upd-pub").await;
    publisher
        .publish("cmd", b"on", mqtt::QoS::AtMostOnce, false)
        .await;
    let Message::Publish(p) = dev.recv().await else {
        panic!("expected PUBLISH")
    };
    assert_eq!(
        (p.topic, &p.data[..]),
        (TopicRef::Id(s.topic_id), &b"on"[..])
    );
    // Now go silent: the new will fires, the old one never does.
    let p = sub.next_publish(WAIT).await.expect("will published");
    assert_eq!((p.topic.as_str(), &p.payload[..]), ("w/new", &b"new"[..]));
    gw.shutdown().await;
}

async fn qos_minus_one_from_an_unconnected_device(backend: Backend, sessions: Sessions) {
    let broker = broker_or_skip!(backend);
    let (gw, gw_addr) = start_gateway(&mode_config(broker.port, sessions)).await;
    let mut sub = MqttClient::connect(broker.addr(), "m1").await;
    sub.subscribe("sensors/predefined", mqtt::QoS::AtMostOnce)
        .await;
    sub.subscribe("ab", mqtt::QoS::AtMostOnce).await;
    let dev = SnClient::new(gw_addr).await;
    dev.publish(TopicRef::Predefined(7), QoS::MinusOne, false, 0, b"p")
        .await;
    dev.publish(TopicRef::Short(*b"ab"), QoS::MinusOne, false, 0, b"s")
        .await;
    let a = sub.next_publish(WAIT).await.expect("first");
    let b = sub.next_publish(WAIT).await.expect("second");
    assert_eq!(
        (a.topic.as_str(), &a.payload[..]),
        ("sensors/predefined", &b"p"[..])
    );
    assert_eq!((b.topic.as_str(), &b.payload[..]), ("ab", &b"s"[..]));
    gw.shutdown().await;
}

#[tokio::test]
async fn broker_unreachable_gives_connack_congestion() {
    let port = free_tcp_port(); // nothing listens there
    let (gw, gw_addr) = start_gateway(&test_config(port)).await;
    let dev = SnClient::new(gw_addr).await;
    dev.send(Message::Connect(codec::Connect {
        will: false,
        clean_session: true,
        protocol_id: codec::PROTOCOL_ID_V1_2,
        duration: 30,
        client_id: "nobroker".into(),
    }))
    .await;
    assert_eq!(
        dev.recv().await,
        Message::Connack {
            return_code: ReturnCode::Congestion
        }
    );
    gw.shutdown().await;
}

async fn searchgw_malformed_input_and_unknown_peers(backend: Backend, sessions: Sessions) {
    let broker = broker_or_skip!(backend);
    let mut config = mode_config(broker.port, sessions);
    config.gateway.id = 42;
    let (gw, gw_addr) = start_gateway(&config).await;
    let dev = SnClient::new(gw_addr).await;
    dev.send(Message::SearchGw { radius: 0 }).await;
    assert_eq!(
        dev.recv().await,
        Message::GwInfo {
            gw_id: 42,
            gw_add: None
        }
    );

    // Garbage is dropped silently; the same peer is still served afterwards.
    for junk in [
        &[][..],
        &[0x01],
        &[0x05, 0x0C, 0x00],
        &[0x03, 0x03, 0x00],
        &[0xFF; 40],
    ] {
        dev.send_raw(junk).await;
    }
    // A PUBLISH from a peer with no session is answered with DISCONNECT.
    dev.publish(TopicRef::Id(1), QoS::AtLeastOnce, false, 1, b"x")
        .await;
    assert_eq!(dev.recv().await, Message::Disconnect { duration: None });
    dev.connect("after-junk", true, 60).await;
    assert!(gw.stats().malformed >= 4);
    assert!(gw.stats().unknown_peer >= 1);
    gw.shutdown().await;
}

async fn same_client_id_from_a_new_address_takes_the_session_over(
    backend: Backend,
    sessions: Sessions,
) {
    let broker = broker_or_skip!(backend);
    let (gw, gw_addr) = start_gateway(&mode_config(broker.port, sessions)).await;
    let first = SnClient::new(gw_addr).await;
    first.connect("roamer", false, 60).await;
    let s = first
        .subscribe(TopicFilter::Name("to/roamer".into()), QoS::AtMostOnce, 1)
        .await;
    let second = SnClient::new(gw_addr).await; // new source port: a NAT rebinding
    second.connect("roamer", false, 60).await;
    let mut publisher = MqttClient::connect(broker.addr(), "roam-pub").await;
    publisher
        .publish("to/roamer", b"here", mqtt::QoS::AtMostOnce, false)
        .await;
    // The session was resumed (clean=0): the device is told the id again, then gets the data.
    let msg = second.recv().await;
    let topic = match msg {
        Message::Register(r) => {
            assert_eq!(
                (r.topic_id, r.topic_name.as_str()),
                (s.topic_id, "to/roamer")
            );
            second
                .send(Message::Regack(codec::Regack {
                    topic_id: r.topic_id,
                    msg_id: r.msg_id,
                    return_code: ReturnCode::Accepted,
                }))
                .await;
            let Message::Publish(p) = second.recv().await else {
                panic!("expected PUBLISH")
            };
            p
        }
        Message::Publish(p) => p,
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(&topic.data[..], b"here");
    assert!(first.try_recv(Duration::from_millis(200)).await.is_none());
    gw.shutdown().await;
}
