//! Sleeping devices end to end (spec §6.14): a raw MQTT-SN device over UDP sleeps while an
//! MQTT client publishes through a real broker (mosquitto, and the embedded one); on
//! PINGREQ(ClientId) everything arrives, in order, then PINGRESP.

#[macro_use]
mod common;

use std::time::Duration;

use common::*;
use mqttsn_gateway::codec::{self, Message, QoS, ReturnCode, TopicFilter, TopicRef};
use mqttsn_gateway::config::Sessions;
use mqttsn_gateway::mqtt;

on_both_backends_and_modes!(
    messages_published_during_sleep_arrive_in_order_after_pingreq_then_pingresp,
    will_fires_when_the_sleep_duration_expires_not_before,
    retained_message_and_persistent_subscription_survive_a_sleep,
);

async fn messages_published_during_sleep_arrive_in_order_after_pingreq_then_pingresp(
    backend: Backend,
    sessions: Sessions,
) {
    let broker = broker_or_skip!(backend);
    let (gw, gw_addr) = start_gateway(&mode_config(broker.port, sessions)).await;
    let dev = SnClient::new(gw_addr).await;
    dev.connect("sleeper", false, 60).await;
    let s = dev
        .subscribe(TopicFilter::Name("home/cmd".into()), QoS::ExactlyOnce, 1)
        .await;
    let w = dev
        .subscribe(TopicFilter::Name("home/+/set".into()), QoS::ExactlyOnce, 2)
        .await;
    assert_eq!(w.topic_id, 0);

    // Sleep for an hour; the gateway acknowledges with a DISCONNECT without duration.
    dev.send(Message::Disconnect {
        duration: Some(3600),
    })
    .await;
    assert_eq!(dev.recv().await, Message::Disconnect { duration: None });

    let mut publisher = MqttClient::connect(broker.addr(), "home").await;
    publisher
        .publish("home/cmd", b"q0", mqtt::QoS::AtMostOnce, false)
        .await;
    publisher
        .publish("home/cmd", b"q1", mqtt::QoS::AtLeastOnce, false)
        .await;
    publisher
        .publish(
            "home/lamp/set",
            b"first-wildcard",
            mqtt::QoS::ExactlyOnce,
            false,
        )
        .await;
    publisher
        .publish("home/cmd", b"q2", mqtt::QoS::ExactlyOnce, false)
        .await;
    // Nothing reaches a sleeping device.
    assert!(dev.try_recv(Duration::from_millis(300)).await.is_none());

    // Wake from a new source port (NAT churn): PINGREQ carries the ClientId.
    let woke = SnClient::new(gw_addr).await;
    woke.send(Message::PingReq {
        client_id: Some("sleeper".into()),
    })
    .await;
    let mut known = std::collections::HashMap::from([(s.topic_id, "home/cmd".to_string())]);
    let got = woke.drain_until_pingresp(&mut known).await;
    let summary: Vec<(&str, QoS, &[u8])> = got
        .iter()
        .map(|(t, p)| (t.as_str(), p.qos, &p.data[..]))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("home/cmd", QoS::AtMostOnce, &b"q0"[..]),
            ("home/cmd", QoS::AtLeastOnce, &b"q1"[..]),
            ("home/lamp/set", QoS::ExactlyOnce, &b"first-wildcard"[..]),
            ("home/cmd", QoS::ExactlyOnce, &b"q2"[..]),
        ]
    );
    // Asleep again: a second PINGREQ with nothing buffered gets PINGRESP at once.
    woke.send(Message::PingReq {
        client_id: Some("sleeper".into()),
    })
    .await;
    assert_eq!(woke.recv().await, Message::PingResp);
    gw.shutdown().await;
}

async fn will_fires_when_the_sleep_duration_expires_not_before(
    backend: Backend,
    sessions: Sessions,
) {
    let broker = broker_or_skip!(backend);
    let (gw, gw_addr) = start_gateway(&mode_config(broker.port, sessions)).await;
    let mut watch = MqttClient::connect(broker.addr(), "watch").await;
    watch.subscribe("wills/#", mqtt::QoS::AtLeastOnce).await;
    let dev = SnClient::new(gw_addr).await;
    // Keep-alive 1 s would kill an active device after 1.5 s; asleep it is not supervised by it.
    dev.connect_with_will(
        "napper",
        1,
        "wills/napper",
        b"overslept",
        QoS::AtLeastOnce,
        false,
    )
    .await;
    dev.send(Message::Disconnect { duration: Some(2) }).await;
    assert_eq!(dev.recv().await, Message::Disconnect { duration: None });
    // 2 s sleep + 50 % tolerance = 3 s: nothing before that.
    assert!(
        watch
            .next_publish(Duration::from_millis(2500))
            .await
            .is_none(),
        "will fired during the sleep"
    );
    let p = watch
        .next_publish(Duration::from_secs(3))
        .await
        .expect("will after the sleep expired");
    assert_eq!(
        (p.topic.as_str(), &p.payload[..]),
        ("wills/napper", &b"overslept"[..])
    );
    gw.shutdown().await;
}

async fn retained_message_and_persistent_subscription_survive_a_sleep(
    backend: Backend,
    sessions: Sessions,
) {
    let broker = broker_or_skip!(backend);
    let (gw, gw_addr) = start_gateway(&mode_config(broker.port, sessions)).await;
    let dev = SnClient::new(gw_addr).await;
    dev.connect("keeper", false, 60).await;
    let s = dev
        .subscribe(TopicFilter::Name("cfg/keeper".into()), QoS::AtLeastOnce, 1)
        .await;
    dev.send(Message::Disconnect {
        duration: Some(600),
    })
    .await;
    assert_eq!(dev.recv().await, Message::Disconnect { duration: None });
    let mut publisher = MqttClient::connect(broker.addr(), "cfg").await;
    publisher
        .publish("cfg/keeper", b"v2", mqtt::QoS::AtLeastOnce, true)
        .await;

    // Back to Active with CONNECT (clean=0): the buffered message is delivered.
    dev.connect("keeper", false, 60).await;
    let Message::Publish(p) = dev.recv().await else {
        panic!("expected the buffered PUBLISH")
    };
    assert_eq!(
        (p.topic, &p.data[..]),
        (TopicRef::Id(s.topic_id), &b"v2"[..])
    );
    dev.send(Message::Puback(codec::Puback {
        topic_id: s.topic_id,
        msg_id: p.msg_id,
        return_code: ReturnCode::Accepted,
    }))
    .await;
    // The subscription is still there after the sleep.
    publisher
        .publish("cfg/keeper", b"v3", mqtt::QoS::AtMostOnce, false)
        .await;
    let Message::Publish(p) = dev.recv().await else {
        panic!("expected a live PUBLISH")
    };
    assert_eq!(&p.data[..], b"v3");
    // And the retained value is what a new subscriber sees.
    let mut late = MqttClient::connect(broker.addr(), "late-cfg").await;
    late.subscribe("cfg/keeper", mqtt::QoS::AtMostOnce).await;
    let r = late.next_publish(WAIT).await.expect("retained");
    assert!(r.retain);
    assert_eq!(&r.payload[..], b"v2");
    gw.shutdown().await;
}
