//! Availability on the broker end to end (`status`, on by default), on both backends: an MQTT
//! subscriber on `mqttsn/#` sees the gateway `online`, each device's state change, `lost` when
//! a keep-alive expires, `offline` at a clean shutdown and (the will) when the gateway process
//! is killed; a late subscriber sees the current states, retained.

#[macro_use]
mod common;

use std::time::Duration;

use common::*;
use mqttsn_gateway::codec::Message;
use mqttsn_gateway::config::Sessions;
use mqttsn_gateway::mqtt;

on_both_backends_and_modes!(
    online_then_active_asleep_active_disconnected,
    a_device_lost_by_keep_alive_shows_lost,
    a_late_subscriber_sees_the_current_states_retained,
    a_clean_shutdown_says_offline,
    sigkill_makes_the_broker_publish_the_will_offline,
    home_assistant_discovery_announces_each_device,
);

/// The next publish on the watcher: (topic, payload, retain).
async fn next(watch: &mut MqttClient) -> (String, String, bool) {
    let p = watch
        .next_publish(WAIT)
        .await
        .expect("a status message arrives");
    (
        p.topic,
        String::from_utf8_lossy(&p.payload).into_owned(),
        p.retain,
    )
}

#[track_caller]
fn is(got: (String, String, bool), topic: &str, payload: &str) {
    assert_eq!(
        (got.0.as_str(), got.1.as_str()),
        (topic, payload),
        "status message"
    );
}

async fn watcher(broker: &TestBroker, id: &str) -> MqttClient {
    let mut w = MqttClient::connect(broker.addr(), id).await;
    w.subscribe("mqttsn/#", mqtt::QoS::AtLeastOnce).await;
    w
}

async fn online_then_active_asleep_active_disconnected(backend: Backend, sessions: Sessions) {
    let broker = broker_or_skip!(backend);
    let mut watch = watcher(&broker, "watch").await;
    let (gw, gw_addr) = start_gateway(&mode_config(broker.port, sessions)).await;
    let got = next(&mut watch).await;
    assert!(!got.2, "live, not a retained replay");
    is(got, "mqttsn/1/state", "online");

    let dev = SnClient::new(gw_addr).await;
    dev.connect("avail-1", false, 60).await;
    is(
        next(&mut watch).await,
        "mqttsn/1/devices/avail-1/state",
        "active",
    );
    dev.send(Message::Disconnect {
        duration: Some(600),
    })
    .await;
    assert_eq!(dev.recv().await, Message::Disconnect { duration: None });
    is(
        next(&mut watch).await,
        "mqttsn/1/devices/avail-1/state",
        "asleep",
    );
    // A PINGREQ wake-up fetches the buffer and sleeps on: no change.
    dev.send(Message::PingReq {
        client_id: Some("avail-1".into()),
    })
    .await;
    assert_eq!(dev.recv().await, Message::PingResp);
    // Waking with CONNECT: active again.
    dev.connect("avail-1", false, 60).await;
    is(
        next(&mut watch).await,
        "mqttsn/1/devices/avail-1/state",
        "active",
    );
    dev.send(Message::Disconnect { duration: None }).await;
    assert_eq!(dev.recv().await, Message::Disconnect { duration: None });
    is(
        next(&mut watch).await,
        "mqttsn/1/devices/avail-1/state",
        "disconnected",
    );
    assert!(
        watch
            .next_publish(Duration::from_millis(300))
            .await
            .is_none(),
        "one message per change"
    );
    let stats = gw.stats();
    assert_eq!(stats.status_publishes, 5, "{stats:?}");
    gw.shutdown().await;
}

async fn a_device_lost_by_keep_alive_shows_lost(backend: Backend, sessions: Sessions) {
    let broker = broker_or_skip!(backend);
    let mut watch = watcher(&broker, "watch").await;
    let (gw, gw_addr) = start_gateway(&mode_config(broker.port, sessions)).await;
    is(next(&mut watch).await, "mqttsn/1/state", "online");
    let dev = SnClient::new(gw_addr).await;
    dev.connect("quiet", true, 1).await; // keep-alive 1 s, supervised at 1.5 s
    is(
        next(&mut watch).await,
        "mqttsn/1/devices/quiet/state",
        "active",
    );
    is(
        next(&mut watch).await,
        "mqttsn/1/devices/quiet/state",
        "lost",
    );
    gw.shutdown().await;
}

async fn a_late_subscriber_sees_the_current_states_retained(backend: Backend, sessions: Sessions) {
    let broker = broker_or_skip!(backend);
    let mut early = watcher(&broker, "early").await;
    let (gw, gw_addr) = start_gateway(&mode_config(broker.port, sessions)).await;
    is(next(&mut early).await, "mqttsn/1/state", "online");
    let sleeper = SnClient::new(gw_addr).await;
    sleeper.connect("sleeper", false, 60).await;
    sleeper
        .send(Message::Disconnect {
            duration: Some(600),
        })
        .await;
    let _ = sleeper.recv().await;
    // A ClientId that is no topic level is percent-escaped.
    let room = SnClient::new(gw_addr).await;
    room.connect("room/1", true, 60).await;
    // The early watcher has seen them all once they are on the broker.
    for _ in 0..3 {
        next(&mut early).await;
    }

    let mut late = watcher(&broker, "late").await;
    let mut seen = Vec::new();
    for _ in 0..3 {
        let (topic, payload, retain) = next(&mut late).await;
        assert!(retain, "{topic} is retained");
        seen.push((topic, payload));
    }
    seen.sort();
    assert_eq!(
        seen,
        vec![
            ("mqttsn/1/devices/room%2F1/state".into(), "active".into()),
            ("mqttsn/1/devices/sleeper/state".into(), "asleep".into()),
            ("mqttsn/1/state".into(), "online".into()),
        ]
    );
    gw.shutdown().await;
}

async fn a_clean_shutdown_says_offline(backend: Backend, sessions: Sessions) {
    let broker = broker_or_skip!(backend);
    let mut watch = watcher(&broker, "watch").await;
    let (gw, _) = start_gateway(&mode_config(broker.port, sessions)).await;
    is(next(&mut watch).await, "mqttsn/1/state", "online");
    gw.shutdown().await;
    is(next(&mut watch).await, "mqttsn/1/state", "offline");
    // Said before DISCONNECT: nothing else follows (the will was discarded).
    assert!(watch
        .next_publish(Duration::from_millis(300))
        .await
        .is_none());
    let mut late = watcher(&broker, "late").await;
    let got = next(&mut late).await;
    assert!(got.2);
    is(got, "mqttsn/1/state", "offline");
}

async fn sigkill_makes_the_broker_publish_the_will_offline(backend: Backend, sessions: Sessions) {
    let broker = broker_or_skip!(backend);
    let mut watch = watcher(&broker, "watch").await;
    let dir = TempDir::new("avail-kill");
    let gw = GatewayProcess::start(
        std::path::Path::new(GATEWAY_BIN),
        &mode_config(broker.port, sessions),
        &dir.0,
    );
    is(next(&mut watch).await, "mqttsn/1/state", "online");
    let dev = SnClient::new(gw.udp).await;
    dev.connect("victim", true, 60).await;
    is(
        next(&mut watch).await,
        "mqttsn/1/devices/victim/state",
        "active",
    );
    gw.kill9();
    // The broker sees the connection drop and publishes the session's will.
    is(next(&mut watch).await, "mqttsn/1/state", "offline");
    let mut late = watcher(&broker, "late").await;
    let mut seen = Vec::new();
    for _ in 0..2 {
        let (t, p, _) = next(&mut late).await;
        seen.push((t, p));
    }
    seen.sort();
    assert_eq!(
        seen,
        vec![
            ("mqttsn/1/devices/victim/state".into(), "active".into()),
            ("mqttsn/1/state".into(), "offline".into()),
        ],
        "the devices' last states stay; the gateway's offline says they are stale"
    );
}

async fn home_assistant_discovery_announces_each_device(backend: Backend, sessions: Sessions) {
    let broker = broker_or_skip!(backend);
    let mut config = mode_config(broker.port, sessions);
    config.status.homeassistant = true;
    let mut ha = MqttClient::connect(broker.addr(), "ha").await;
    ha.subscribe("homeassistant/#", mqtt::QoS::AtLeastOnce)
        .await;
    let (gw, gw_addr) = start_gateway(&config).await;
    let dev = SnClient::new(gw_addr).await;
    dev.connect("kitchen", true, 60).await;
    let (topic, payload, _) = next(&mut ha).await;
    assert_eq!(topic, "homeassistant/binary_sensor/mqttsn_1_kitchen/config");
    let c: serde_json::Value = serde_json::from_str(&payload).expect("JSON config");
    assert_eq!(c["device_class"], "connectivity");
    assert_eq!(c["state_topic"], "mqttsn/1/devices/kitchen/state");
    assert_eq!(c["availability_topic"], "mqttsn/1/state");
    assert_eq!(c["payload_on"], "active");
    gw.shutdown().await;
}
