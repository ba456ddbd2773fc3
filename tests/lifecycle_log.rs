//! Logs for people (issue 13 item 3): at `info`, one line per device lifecycle event —
//! connect (address and flags), subscribe, sleep (duration), wake, disconnect, lost (reason
//! and what was pending) — and no library chatter.

mod common;

use std::time::Duration;

use common::*;
use mqttsn_gateway::codec::{Message, QoS, TopicFilter};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_lifecycle_event_is_one_info_line() {
    let Some(mosquitto) = Mosquitto::start() else {
        return;
    };
    let dir = TempDir::new("lifecycle");
    let (mut gw, at) = LoggedGateway::upstream(
        GATEWAY_BIN.as_ref(),
        &dir.0,
        mosquitto.port,
        "",
        "log:\n  level: info\n",
    );

    let dev = SnClient::new(at).await;
    dev.connect("sensor-1", true, 60).await;
    dev.subscribe(
        TopicFilter::Name("cmd/sensor-1/#".into()),
        QoS::AtLeastOnce,
        1,
    )
    .await;
    dev.send(Message::Disconnect {
        duration: Some(120),
    })
    .await;
    assert_eq!(dev.recv().await, Message::Disconnect { duration: None });
    dev.send(Message::PingReq {
        client_id: Some("sensor-1".into()),
    })
    .await;
    assert_eq!(dev.recv().await, Message::PingResp);
    dev.send(Message::Disconnect { duration: None }).await;
    let _ = dev.try_recv(Duration::from_millis(500)).await;

    // A device whose keep-alive (1 s) runs out.
    let quiet = SnClient::new(at).await;
    quiet.connect("quiet-1", true, 1).await;
    gw.wait_log("device lost", &dir.0);

    let log = std::fs::read_to_string(dir.0.join("stderr.log")).unwrap();
    let line = |needle: &str| -> String {
        let found: Vec<&str> = log.lines().filter(|l| l.contains(needle)).collect();
        assert!(!found.is_empty(), "no `{needle}` in\n{log}");
        found[0].to_owned()
    };
    let connected = line("device connected");
    for field in [
        "sensor-1",
        "udp 127.0.0.1:",
        "clean_session=true",
        "will=false",
        "keep_alive=60",
    ] {
        assert!(connected.contains(field), "{field}: {connected}");
    }
    assert!(line("device subscribed").contains("cmd/sensor-1/#"));
    assert!(line("device asleep").contains("duration=120"));
    assert!(line("device awake").contains("buffered=0"));
    assert!(line("device disconnected").contains("sensor-1"));
    let lost = line("device lost");
    for field in ["quiet-1", "keep-alive expired", "queued=0", "inflight_up=0"] {
        assert!(lost.contains(field), "{field}: {lost}");
    }
    for l in log.lines() {
        assert!(
            l.contains("mqttsn_gateway") || !l.contains(" INFO "),
            "a library line at info: {l}"
        );
    }
}
