//! Aggregating mode end to end (`broker.upstream.sessions: aggregating`), against both
//! backends: many devices over two shared upstream sessions (the broker sees two clients),
//! one upstream subscription fanned out to every device at its own QoS, the aggregate ClientId
//! as configured, and a broker restart the devices ride out.

#[macro_use]
mod common;

use std::time::{Duration, Instant};

use common::*;
use mqttsn_gateway::codec::{self, Message, QoS, ReturnCode, TopicFilter, TopicRef};
use mqttsn_gateway::config::Sessions;
use mqttsn_gateway::mqtt;

on_both_backends!(
    many_devices_share_two_upstream_sessions_and_one_subscription,
    the_aggregate_client_id_is_the_configured_one,
    a_persistent_device_gets_what_was_published_while_it_was_disconnected,
);

/// Waits until `f` holds for the gateway's counters (they are published every so often).
async fn wait_stats(
    gw: &mqttsn_gateway::shell::Running,
    f: impl Fn(&mqttsn_gateway::core::Stats) -> bool,
) {
    let deadline = Instant::now() + WAIT;
    while !f(&gw.stats()) {
        assert!(
            Instant::now() < deadline,
            "stats never matched: {:?}",
            gw.stats()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Takes the next PUBLISH, acknowledging a REGISTER before it (and the PUBLISH at QoS 1).
async fn next_publish(dev: &SnClient) -> codec::Publish {
    loop {
        match dev.recv().await {
            Message::Register(r) => {
                dev.send(Message::Regack(codec::Regack {
                    topic_id: r.topic_id,
                    msg_id: r.msg_id,
                    return_code: ReturnCode::Accepted,
                }))
                .await
            }
            Message::Publish(p) => {
                if p.qos == QoS::AtLeastOnce {
                    let topic_id = match p.topic {
                        TopicRef::Id(t) => t,
                        _ => 0,
                    };
                    dev.send(Message::Puback(codec::Puback {
                        topic_id,
                        msg_id: p.msg_id,
                        return_code: ReturnCode::Accepted,
                    }))
                    .await;
                }
                return p;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

async fn many_devices_share_two_upstream_sessions_and_one_subscription(backend: Backend) {
    let broker = broker_or_skip!(backend);
    let mut config = mode_config(broker.port, Sessions::Aggregating);
    // The status endpoint shows the aggregate (a free port, read back below).
    config.http.bind = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    let (gw, gw_addr) = start_gateway(&config).await;
    let mut sub = MqttClient::connect(broker.addr(), "agg-sub").await;
    sub.subscribe("agg/up/#", mqtt::QoS::AtLeastOnce).await;
    const N: usize = 12;
    let mut devs = Vec::new();
    for i in 0..N {
        let dev = SnClient::new(gw_addr).await;
        dev.connect(&format!("agg-dev-{i}"), true, 60).await;
        // Half at QoS 0, half at QoS 1, all on the same filter.
        let qos = if i % 2 == 0 {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        };
        let s = dev
            .subscribe(TopicFilter::Name("agg/down/+".into()), qos, 1)
            .await;
        assert_eq!(s.return_code, ReturnCode::Accepted);
        assert_eq!(s.qos, qos);
        devs.push(dev);
    }
    // Two shared upstream sessions for twelve devices, plus the gateway's status session.
    wait_stats(&gw, |s| s.devices_active == N as u64).await;
    assert_eq!(gw.stats().upstream_opens, 3, "{:?}", gw.stats());
    // Uplink QoS 1 from every device reaches the subscriber, each PUBACK its own.
    for (i, dev) in devs.iter().enumerate() {
        let tid = dev.register(&format!("agg/up/{i}"), 2).await;
        dev.publish(TopicRef::Id(tid), QoS::AtLeastOnce, false, 7, b"v")
            .await;
        match dev.recv().await {
            Message::Puback(p) => assert_eq!((p.topic_id, p.msg_id), (tid, 7)),
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < N {
        let p = sub.next_publish(WAIT).await.expect("every uplink arrives");
        seen.insert(p.topic);
    }
    // One message from an MQTT client reaches all twelve, each at its own QoS.
    let mut publisher = MqttClient::connect(broker.addr(), "agg-pub").await;
    publisher
        .publish("agg/down/x", b"all", mqtt::QoS::AtLeastOnce, false)
        .await;
    for (i, dev) in devs.iter().enumerate() {
        let p = next_publish(dev).await;
        assert_eq!(&p.data[..], b"all");
        let want = if i % 2 == 0 {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        };
        assert_eq!(p.qos, want, "device {i}");
    }
    for dev in &devs {
        assert!(
            dev.try_recv(Duration::from_millis(100)).await.is_none(),
            "once each"
        );
    }
    // What a person sees: the shared sessions, the devices over them, one filter with twelve
    // memberships, in /api/gateway and /metrics.
    let http = gw.http_addr.expect("the status endpoint listens");
    let api = http_get(http, "/api/gateway", None).await.json();
    let agg = &api["aggregate"];
    assert_eq!(agg["shared_sessions"], 2, "{api:#}");
    assert_eq!(agg["shared_sessions_connected"], 2, "{api:#}");
    assert_eq!(agg["devices"], N, "{api:#}");
    assert_eq!(agg["filters"], 1, "{api:#}");
    assert_eq!(agg["memberships"], N, "{api:#}");
    let metrics = http_get(http, "/metrics", None).await.body;
    assert!(
        metrics.contains(&format!("mqttsn_aggregate_devices {N}\n")),
        "{metrics}"
    );
    assert!(
        metrics.contains("mqttsn_aggregate_shared_sessions_connected 2\n"),
        "{metrics}"
    );
    gw.shutdown().await;
}

async fn the_aggregate_client_id_is_the_configured_one(backend: Backend) {
    let broker = broker_or_skip!(backend);
    let mut config = mode_config(broker.port, Sessions::Aggregating);
    config.broker.upstream.connections = 1;
    config.broker.upstream.aggregate_client_id = Some("site-7-gw".into());
    let (gw, gw_addr) = start_gateway(&config).await;
    let dev = SnClient::new(gw_addr).await;
    dev.connect("cid-dev", true, 60).await;
    let tid = dev.register("cid/t", 1).await;
    // A client taking the ClientId over kicks the gateway's shared session: proof of its name.
    // The gateway reconnects (and takes it back); the device never noticed.
    let thief = MqttClient::connect(broker.addr(), "site-7-gw").await;
    drop(thief);
    let mut sub = MqttClient::connect(broker.addr(), "cid-sub").await;
    sub.subscribe("cid/t", mqtt::QoS::AtLeastOnce).await;
    // The status session and the shared one, then the shared one again.
    wait_stats(&gw, |s| s.upstream_opens >= 3).await;
    // Published until it gets through the reopened session (QoS 0 during the gap is dropped).
    let deadline = Instant::now() + WAIT;
    loop {
        dev.publish(TopicRef::Id(tid), QoS::AtMostOnce, false, 0, b"back")
            .await;
        if sub.next_publish(Duration::from_millis(300)).await.is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "the shared session came back");
    }
    dev.send(Message::PingReq { client_id: None }).await;
    assert_eq!(dev.recv().await, Message::PingResp);
    gw.shutdown().await;
}

async fn a_persistent_device_gets_what_was_published_while_it_was_disconnected(backend: Backend) {
    let broker = broker_or_skip!(backend);
    let dir = TempDir::new("agg-away");
    let mut config = mode_config(broker.port, Sessions::Aggregating);
    config.store.path = Some(dir.0.join("gateway.db"));
    let (gw, gw_addr) = start_gateway(&config).await;
    let dev = SnClient::new(gw_addr).await;
    dev.connect("away-dev", false, 60).await;
    let s = dev
        .subscribe(TopicFilter::Name("away/cmd".into()), QoS::AtLeastOnce, 1)
        .await;
    assert_eq!(s.return_code, ReturnCode::Accepted);
    dev.send(Message::Disconnect { duration: None }).await;
    assert_eq!(dev.recv().await, Message::Disconnect { duration: None });
    let mut publisher = MqttClient::connect(broker.addr(), "away-pub").await;
    publisher
        .publish("away/cmd", b"while away", mqtt::QoS::AtLeastOnce, false)
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    dev.connect("away-dev", false, 60).await;
    let p = next_publish(&dev).await;
    assert_eq!(&p.data[..], b"while away");
    gw.shutdown().await;
}
