//! The device's upstream session across switches, against real brokers: a sleeping device
//! reconnecting with a new will keeps its buffered QoS 0 messages, a will update does not
//! re-deliver retained messages while a live retained publish still arrives, and a broker that
//! lost a persistent session (restarted without persistence) gets the subscriptions back.

#[macro_use]
mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use mqttsn_gateway::codec::{self, Message, QoS, ReturnCode, TopicFilter};
use mqttsn_gateway::config::Sessions;
use mqttsn_gateway::mqtt;

on_both_backends_and_modes!(
    connect_with_a_new_will_from_sleep_delivers_the_buffered_qos0_message,
    will_updates_do_not_redeliver_retained_but_a_live_retained_publish_arrives,
);

/// Collects what the gateway sends within `wait` (PUBLISHes acknowledged as their QoS asks).
async fn quiet_for(dev: &SnClient, wait: Duration) -> Vec<Message> {
    let mut got = Vec::new();
    while let Some(m) = dev.try_recv(wait).await {
        if let Message::Publish(p) = &m {
            if p.qos == QoS::AtLeastOnce {
                dev.send(Message::Puback(codec::Puback {
                    topic_id: match p.topic {
                        codec::TopicRef::Id(i) => i,
                        _ => 0,
                    },
                    msg_id: p.msg_id,
                    return_code: ReturnCode::Accepted,
                }))
                .await;
            }
        }
        got.push(m);
    }
    got
}

async fn connect_with_a_new_will_from_sleep_delivers_the_buffered_qos0_message(
    backend: Backend,
    sessions: Sessions,
) {
    let broker = broker_or_skip!(backend);
    let (gw, gw_addr) = start_gateway(&mode_config(broker.port, sessions)).await;
    let mut watch = MqttClient::connect(broker.addr(), "rewill-watch").await;
    watch.subscribe("w/#", mqtt::QoS::AtLeastOnce).await;
    let dev = SnClient::new(gw_addr).await;
    dev.connect("rewill", false, 60).await;
    let s = dev
        .subscribe(TopicFilter::Name("cmd/rewill".into()), QoS::AtMostOnce, 1)
        .await;
    assert_eq!(s.return_code, ReturnCode::Accepted);
    dev.send(Message::Disconnect { duration: Some(60) }).await;
    assert_eq!(dev.recv().await, Message::Disconnect { duration: None });
    let mut publisher = MqttClient::connect(broker.addr(), "rewill-pub").await;
    publisher
        .publish("cmd/rewill", b"while asleep", mqtt::QoS::AtMostOnce, false)
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Back with CONNECT(clean session 0, Will=1) and a short keep-alive.
    dev.send(Message::Connect(codec::Connect {
        will: true,
        clean_session: false,
        protocol_id: codec::PROTOCOL_ID_V1_2,
        duration: 1,
        client_id: "rewill".into(),
    }))
    .await;
    assert_eq!(dev.recv().await, Message::WillTopicReq);
    dev.send(Message::WillTopic(Some(codec::WillTopic {
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "w/rewill".into(),
    })))
    .await;
    assert_eq!(dev.recv().await, Message::WillMsgReq);
    dev.send(Message::WillMsg {
        msg: Bytes::from_static(b"rewill gone"),
    })
    .await;
    assert_eq!(
        dev.recv().await,
        Message::Connack {
            return_code: ReturnCode::Accepted
        }
    );
    match dev.recv().await {
        Message::Publish(p) => assert_eq!(&p.data[..], b"while asleep"),
        other => panic!("expected the buffered QoS 0 message, got {other:?}"),
    }
    // The new will is in force: the device goes silent and the broker publishes it.
    let p = watch
        .next_publish(Duration::from_secs(8))
        .await
        .expect("the new will fires");
    assert_eq!(
        (p.topic.as_str(), &p.payload[..]),
        ("w/rewill", &b"rewill gone"[..])
    );
    drop(gw);
}

async fn will_updates_do_not_redeliver_retained_but_a_live_retained_publish_arrives(
    backend: Backend,
    sessions: Sessions,
) {
    let broker = broker_or_skip!(backend);
    let (gw, gw_addr) = start_gateway(&mode_config(broker.port, sessions)).await;
    let mut publisher = MqttClient::connect(broker.addr(), "ret-pub").await;
    publisher
        .publish("cmd/ret", b"state 1", mqtt::QoS::AtLeastOnce, true)
        .await;
    let dev = SnClient::new(gw_addr).await;
    dev.connect_with_will("ret", 60, "w/ret", b"old", QoS::AtMostOnce, false)
        .await;
    dev.send(Message::Subscribe(codec::Subscribe {
        dup: false,
        qos: QoS::AtLeastOnce,
        msg_id: 1,
        topic: TopicFilter::Name("cmd/ret".into()),
    }))
    .await;
    // SUBACK and the retained message (in either order: rmqtt sends retained messages from
    // a task of its own).
    let got = quiet_for(&dev, Duration::from_millis(800)).await;
    assert!(
        got.iter().any(|m| matches!(m, Message::Suback(_))),
        "{got:?}"
    );
    let retained: Vec<_> = got
        .iter()
        .filter_map(|m| match m {
            Message::Publish(p) => Some(p),
            _ => None,
        })
        .collect();
    assert_eq!(retained.len(), 1, "{got:?}");
    assert!(retained[0].retain);

    let updates = [
        Message::WillTopicUpd(Some(codec::WillTopic {
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: "w/ret2".into(),
        })),
        Message::WillMsgUpd {
            msg: Bytes::from_static(b"new"),
        },
    ];
    for update in updates {
        dev.send(update).await;
        let got = quiet_for(&dev, Duration::from_millis(800)).await;
        assert_eq!(
            got.len(),
            1,
            "only the will response, no retained copy: {got:?}"
        );
        assert!(matches!(
            got[0],
            Message::WillTopicResp {
                return_code: ReturnCode::Accepted
            } | Message::WillMsgResp {
                return_code: ReturnCode::Accepted
            }
        ));
    }
    // A new retained publish on the live subscription still reaches the device (the broker
    // forwards it with RETAIN 0, MQTT 3.1.1 §3.3.1.3).
    publisher
        .publish("cmd/ret", b"state 2", mqtt::QoS::AtLeastOnce, true)
        .await;
    let got = quiet_for(&dev, Duration::from_millis(800)).await;
    let [Message::Publish(p)] = got.as_slice() else {
        panic!("expected the live publish, got {got:?}")
    };
    assert_eq!(&p.data[..], b"state 2");
    assert!(!p.retain);
    drop(gw);
}

/// mosquitto restarted without persistence forgets the device's session; the gateway, riding
/// the outage out with its store, resumes the session, sees Session Present 0 and subscribes
/// again, so the device receives what is published afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restarted_without_persistence_gets_the_subscriptions_back() {
    broker_restart_without_persistence(Sessions::Transparent).await
}

/// The same in aggregating mode: the shared session comes back with Session Present 0 and the
/// gateway subscribes every filter of the table again; the device never noticed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restarted_without_persistence_gets_the_subscriptions_back_aggregating() {
    broker_restart_without_persistence(Sessions::Aggregating).await
}

async fn broker_restart_without_persistence(sessions: Sessions) {
    let Some(mut broker) = Mosquitto::start() else {
        return;
    };
    let dir = TempDir::new("lost-session");
    let mut config = mode_config(broker.port, sessions);
    config.store.path = Some(dir.0.join("gateway.db"));
    let (gw, gw_addr) = start_gateway(&config).await;
    let dev = SnClient::new(gw_addr).await;
    dev.connect("lost", false, 60).await;
    let s = dev
        .subscribe(TopicFilter::Name("cmd/lost".into()), QoS::AtLeastOnce, 1)
        .await;
    assert_eq!(s.return_code, ReturnCode::Accepted);
    broker.stop();
    broker.resume();
    let mut publisher = MqttClient::connect(broker.addr(), "lost-pub").await;
    // Publish until the gateway has resumed the session and subscribed again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let got = loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the device never received a message after the broker restart"
        );
        publisher
            .publish("cmd/lost", b"after", mqtt::QoS::AtLeastOnce, false)
            .await;
        match dev.try_recv(Duration::from_millis(300)).await {
            Some(Message::Publish(p)) => break p,
            Some(other) => panic!("unexpected {other:?}"),
            None => continue,
        }
    };
    assert_eq!(&got.data[..], b"after");
    assert_eq!(got.topic, codec::TopicRef::Id(s.topic_id));
    drop(gw);
}
