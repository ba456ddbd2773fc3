//! Device admission, topic permissions and the QoS -1 policy end to end (issue 12 items 4–6),
//! over real UDP sockets and a real broker (both backends): a ClientId not on the allow-list
//! never reaches the broker; a takeover of a bound device from another loopback address
//! (127.0.0.2: Linux answers the whole 127/8 on `lo`) is refused while the real device carries
//! on; publishes and subscriptions outside a device's patterns are refused and never reach the
//! broker; QoS -1 outside the policy is dropped.

#[macro_use]
mod common;

use std::time::Duration;

use common::*;
use mqttsn_gateway::codec::{self, Message, QoS, ReturnCode, TopicFilter, TopicRef};
use mqttsn_gateway::config::Sessions;
use mqttsn_gateway::config::{self, Config};
use mqttsn_gateway::mqtt;
use tokio::net::UdpSocket;

on_both_backends_and_modes!(
    a_device_not_on_the_allow_list_is_refused_and_never_reaches_the_broker,
    a_takeover_from_another_address_is_refused_while_the_real_device_carries_on,
    publishes_and_subscriptions_outside_the_patterns_are_refused,
    qos_minus_one_outside_the_policy_is_dropped,
);

/// Nothing more arrives within this (what was refused would have arrived by then).
const QUIET: Duration = Duration::from_millis(500);
/// The gateway's availability topics (`status`, on by default): the `#` watchers skip them.
const STATUS: &str = "mqttsn/";

/// `test_config` with the `admission` and `devices` of `yaml`.
fn with_devices(broker_port: u16, sessions: Sessions, yaml: &str) -> Config {
    let rules = Config::from_yaml_str(yaml, "test").expect("test rules parse");
    let mut config = mode_config(broker_port, sessions);
    config.admission = rules.admission;
    config.devices = rules.devices;
    config
}

fn connect_msg(client_id: &str, will: bool) -> Message {
    Message::Connect(codec::Connect {
        will,
        clean_session: true,
        protocol_id: codec::PROTOCOL_ID_V1_2,
        duration: 60,
        client_id: client_id.into(),
    })
}

fn refused() -> Message {
    Message::Connack {
        return_code: ReturnCode::NotSupported,
    }
}

async fn a_device_not_on_the_allow_list_is_refused_and_never_reaches_the_broker(
    backend: Backend,
    sessions: Sessions,
) {
    let broker = broker_or_skip!(backend);
    let config = with_devices(
        broker.port,
        sessions,
        "admission: listed\ndevices:\n  - client_id: known\n",
    );
    let (gw, gw_addr) = start_gateway(&config).await;
    // A client holding the stranger's ClientId at the broker: an upstream session for the
    // stranger would take it over (the broker closes the older connection).
    let mut canary = MqttClient::connect(broker.addr(), "stranger").await;
    let mut watch = MqttClient::connect(broker.addr(), "watch").await;
    watch.subscribe("#", mqtt::QoS::AtLeastOnce).await;

    let stranger = SnClient::new(gw_addr).await;
    stranger.send(connect_msg("stranger", true)).await;
    assert_eq!(
        stranger.recv().await,
        refused(),
        "no will prompt, no session"
    );
    stranger
        .publish(TopicRef::Short(*b"ab"), QoS::AtMostOnce, false, 0, b"x")
        .await;
    assert_eq!(
        stranger.recv().await,
        Message::Disconnect { duration: None },
        "it has no session"
    );
    assert!(
        watch.next_publish_outside(STATUS, QUIET).await.is_none(),
        "nothing reached the broker"
    );
    // The canary's connection is still the one holding the ClientId: its PUBACK comes back
    // on it and the message arrives.
    canary
        .publish("canary", b"alive", mqtt::QoS::AtLeastOnce, false)
        .await;
    let p = watch
        .next_publish_outside(STATUS, WAIT)
        .await
        .expect("the canary is still connected");
    assert_eq!(
        (p.topic.as_str(), &p.payload[..]),
        ("canary", &b"alive"[..])
    );

    // A listed device gets in.
    let known = SnClient::new(gw_addr).await;
    known.connect("known", true, 60).await;
    assert_eq!(gw.stats().connects_refused_admission, 1);
    gw.shutdown().await;
}

async fn a_takeover_from_another_address_is_refused_while_the_real_device_carries_on(
    backend: Backend,
    sessions: Sessions,
) {
    let broker = broker_or_skip!(backend);
    let config = with_devices(
        broker.port,
        sessions,
        "devices:\n  - client_id: real\n    address: 127.0.0.1\n",
    );
    let (gw, gw_addr) = start_gateway(&config).await;
    let mut watch = MqttClient::connect(broker.addr(), "watch").await;
    watch.subscribe("#", mqtt::QoS::AtLeastOnce).await;
    let mut feeder = MqttClient::connect(broker.addr(), "feeder").await;

    let real = SnClient::new(gw_addr).await;
    real.connect_with_will("real", 60, "will/real", b"gone", QoS::AtLeastOnce, false)
        .await;
    let sub = real
        .subscribe(TopicFilter::Short(*b"dn"), QoS::AtMostOnce, 1)
        .await;
    assert_eq!(sub.return_code, ReturnCode::Accepted);
    let tid = real.register("real/t", 2).await;

    let thief = SnClient {
        sock: UdpSocket::bind("127.0.0.2:0")
            .await
            .expect("bind 127.0.0.2 (Linux answers 127/8 on lo)"),
        gateway: gw_addr,
    };
    thief.send(connect_msg("real", false)).await;
    assert_eq!(thief.recv().await, refused());
    thief.send(connect_msg("real", true)).await;
    assert_eq!(thief.recv().await, refused());
    // A PINGREQ naming the ClientId (a sleeper waking elsewhere) does not move it either.
    thief
        .send(Message::PingReq {
            client_id: Some("real".into()),
        })
        .await;
    assert!(thief.try_recv(QUIET).await.is_none());

    // The real device still publishes and receives on its session; its will never fired.
    real.publish(TopicRef::Id(tid), QoS::AtLeastOnce, false, 3, b"still here")
        .await;
    assert_eq!(
        real.recv().await,
        Message::Puback(codec::Puback {
            topic_id: tid,
            msg_id: 3,
            return_code: ReturnCode::Accepted
        })
    );
    let p = watch
        .next_publish_outside(STATUS, WAIT)
        .await
        .expect("delivered");
    assert_eq!(
        (p.topic.as_str(), &p.payload[..]),
        ("real/t", &b"still here"[..])
    );
    feeder
        .publish("dn", b"for real", mqtt::QoS::AtMostOnce, false)
        .await;
    match real.recv().await {
        Message::Publish(p) => assert_eq!(&p.data[..], b"for real"),
        other => panic!("expected the PUBLISH, got {other:?}"),
    }
    let p = watch
        .next_publish_outside(STATUS, WAIT)
        .await
        .expect("the feeder's message");
    assert_eq!(p.topic, "dn");
    assert!(
        watch.next_publish_outside(STATUS, QUIET).await.is_none(),
        "no will"
    );
    assert!(
        thief.try_recv(QUIET).await.is_none(),
        "nothing went to the thief"
    );
    let stats = gw.stats();
    assert_eq!(stats.connects_refused_admission, 2, "{stats:?}");
    assert_eq!(stats.moves_refused, 1, "{stats:?}");
    gw.shutdown().await;
}

async fn publishes_and_subscriptions_outside_the_patterns_are_refused(
    backend: Backend,
    sessions: Sessions,
) {
    let broker = broker_or_skip!(backend);
    let config = with_devices(
        broker.port,
        sessions,
        "devices:\n  - client_id: \"dev-*\"\n    publish: [\"s/{client_id}/#\"]\n    \
         subscribe: [\"cmd/{client_id}/#\"]\n",
    );
    let (gw, gw_addr) = start_gateway(&config).await;
    let mut watch = MqttClient::connect(broker.addr(), "watch").await;
    watch.subscribe("#", mqtt::QoS::AtLeastOnce).await;
    let mut feeder = MqttClient::connect(broker.addr(), "feeder").await;

    let dev = SnClient::new(gw_addr).await;
    dev.connect("dev-1", true, 60).await;
    dev.send(Message::Register(codec::Register {
        topic_id: 0,
        msg_id: 1,
        topic_name: "s/dev-2/t".into(),
    }))
    .await;
    match dev.recv().await {
        Message::Regack(r) => assert_eq!(r.return_code, ReturnCode::NotSupported),
        other => panic!("expected REGACK, got {other:?}"),
    }
    // Predefined id 7 is `sensors/predefined`: outside, at QoS 1 and at QoS 0.
    for (qos, msg_id) in [(QoS::AtLeastOnce, 2), (QoS::AtMostOnce, 0)] {
        dev.publish(TopicRef::Predefined(7), qos, false, msg_id, b"denied")
            .await;
        assert_eq!(
            dev.recv().await,
            Message::Puback(codec::Puback {
                topic_id: 7,
                msg_id,
                return_code: ReturnCode::NotSupported
            }),
            "{qos:?}"
        );
    }
    let tid = dev.register("s/dev-1/t", 3).await;
    dev.publish(TopicRef::Id(tid), QoS::AtLeastOnce, false, 4, b"allowed")
        .await;
    assert!(
        matches!(dev.recv().await, Message::Puback(p) if p.return_code == ReturnCode::Accepted)
    );
    let p = watch
        .next_publish_outside(STATUS, WAIT)
        .await
        .expect("the allowed one");
    assert_eq!(
        (p.topic.as_str(), &p.payload[..]),
        ("s/dev-1/t", &b"allowed"[..])
    );
    assert!(
        watch.next_publish_outside(STATUS, QUIET).await.is_none(),
        "the denied ones never arrive"
    );

    let denied = dev
        .subscribe(TopicFilter::Name("cmd/#".into()), QoS::AtMostOnce, 5)
        .await;
    assert_eq!(denied.return_code, ReturnCode::NotSupported);
    let ok = dev
        .subscribe(TopicFilter::Name("cmd/dev-1/#".into()), QoS::AtMostOnce, 6)
        .await;
    assert_eq!(ok.return_code, ReturnCode::Accepted);
    // Only the allowed subscription exists at the broker.
    feeder
        .publish("cmd/other", b"not for dev-1", mqtt::QoS::AtMostOnce, false)
        .await;
    feeder
        .publish("cmd/dev-1/go", b"go", mqtt::QoS::AtMostOnce, false)
        .await;
    let mut got = None;
    while let Some(m) = dev.try_recv(WAIT).await {
        match m {
            Message::Register(r) => {
                assert_eq!(r.topic_name, "cmd/dev-1/go");
                dev.send(Message::Regack(codec::Regack {
                    topic_id: r.topic_id,
                    msg_id: r.msg_id,
                    return_code: ReturnCode::Accepted,
                }))
                .await;
            }
            Message::Publish(p) => {
                got = Some(p);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(&got.expect("the allowed command").data[..], b"go");
    assert!(dev.try_recv(QUIET).await.is_none());
    let stats = gw.stats();
    assert_eq!(
        (stats.publishes_denied, stats.subscribes_denied),
        (3, 1),
        "{stats:?}"
    );
    gw.shutdown().await;
}

async fn qos_minus_one_outside_the_policy_is_dropped(backend: Backend, sessions: Sessions) {
    let broker = broker_or_skip!(backend);
    let mut config = mode_config(broker.port, sessions);
    config.qos_minus_one = config::QosMinusOne::Listed(config::QosMinusOneList {
        predefined: vec![7],
        short: vec![],
        sources: vec!["127.0.0.1".into()],
    });
    let (gw, gw_addr) = start_gateway(&config).await;
    let mut watch = MqttClient::connect(broker.addr(), "watch").await;
    watch.subscribe("#", mqtt::QoS::AtLeastOnce).await;

    let inside = SnClient::new(gw_addr).await;
    let outside = SnClient {
        sock: UdpSocket::bind("127.0.0.2:0")
            .await
            .expect("bind 127.0.0.2"),
        gateway: gw_addr,
    };
    outside
        .publish(
            TopicRef::Predefined(7),
            QoS::MinusOne,
            false,
            0,
            b"wrong source",
        )
        .await;
    inside
        .publish(
            TopicRef::Short(*b"ab"),
            QoS::MinusOne,
            false,
            0,
            b"wrong topic",
        )
        .await;
    inside
        .publish(TopicRef::Predefined(7), QoS::MinusOne, false, 0, b"allowed")
        .await;
    let p = watch
        .next_publish_outside(STATUS, WAIT)
        .await
        .expect("the allowed one");
    assert_eq!(
        (p.topic.as_str(), &p.payload[..]),
        ("sensors/predefined", &b"allowed"[..])
    );
    assert!(
        watch.next_publish_outside(STATUS, QUIET).await.is_none(),
        "the others are dropped"
    );
    assert_eq!(gw.stats().qos_minus_one_denied, 2);
    gw.shutdown().await;
}
