//! SIGHUP (issue 13 item 4): the binary re-reads gateway.yaml; a new predefined topic applies
//! with the device still connected on the same session; what needs a restart is named; a
//! broken file is logged with its line and key and the gateway keeps running on the old one.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::*;
use mqttsn_gateway::codec::{Message, QoS, ReturnCode, TopicRef};
use mqttsn_gateway::mqtt;

fn yaml(udp: u16, broker: SocketAddr, extra: &str) -> String {
    format!(
        "transports:\n  udp:\n    - bind: 127.0.0.1:{udp}\n\
         broker:\n  mode: upstream\n  upstream:\n    host: 127.0.0.1\n    port: {}\n\
         store:\n  path: null\n\
         http:\n  bind: null\n\
         log:\n  level: info\n\
         predefined_topics:\n  - {{ id: 1, topic: plant/one }}\n{extra}",
        broker.port()
    )
}

fn hup(gw: &LoggedGateway) {
    let ok = std::process::Command::new("kill")
        .args(["-HUP", &gw.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -HUP");
}

fn log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default()
}

/// Publishes QoS 1 on predefined id `id` and returns the PUBACK's return code.
async fn publish_predefined(dev: &SnClient, id: u16, msg_id: u16) -> ReturnCode {
    dev.publish(
        TopicRef::Predefined(id),
        QoS::AtLeastOnce,
        false,
        msg_id,
        b"21.5",
    )
    .await;
    loop {
        match dev.recv().await {
            Message::Puback(p) if p.msg_id == msg_id => return p.return_code,
            _ => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_a_new_predefined_topic_with_the_device_still_connected() {
    let Some(mosquitto) = Mosquitto::start() else {
        return;
    };
    let dir = TempDir::new("reload");
    let udp = free_udp_port();
    let file = dir.0.join("gateway.yaml");
    std::fs::write(&file, yaml(udp, mosquitto.addr(), "")).unwrap();
    let mut gw = LoggedGateway::spawn(GATEWAY_BIN.as_ref(), &file, &dir.0);
    gw.wait_log("UDP transport listening", &dir.0);

    let mut sub = MqttClient::connect(mosquitto.addr(), "watcher").await;
    sub.subscribe("plant/#", mqtt::QoS::AtLeastOnce).await;
    let dev = SnClient::new(SocketAddr::from(([127, 0, 0, 1], udp))).await;
    dev.connect("boiler", true, 60).await;
    assert_eq!(publish_predefined(&dev, 1, 1).await, ReturnCode::Accepted);
    assert!(sub.next_publish(WAIT).await.is_some());
    assert_eq!(
        publish_predefined(&dev, 2, 2).await,
        ReturnCode::InvalidTopicId,
        "id 2 is not predefined yet"
    );

    // A new predefined topic (live) and a new retry interval (needs a restart).
    std::fs::write(
        &file,
        yaml(
            udp,
            mosquitto.addr(),
            "  - { id: 2, topic: plant/two }\ntimers:\n  retry_interval: 3s\n",
        ),
    )
    .unwrap();
    hup(&gw);
    gw.wait_log("reload: applied", &dir.0);
    let text = log(&dir.0);
    assert!(text.contains("predefined_topics"), "{text}");
    assert!(
        text.contains("take effect at the next start") && text.contains("timers"),
        "{text}"
    );
    // The same device, without a new CONNECT, on the same session.
    assert_eq!(publish_predefined(&dev, 2, 3).await, ReturnCode::Accepted);
    let p = sub.next_publish(WAIT).await.expect("plant/two arrives");
    assert_eq!(p.topic, "plant/two");
    assert_eq!(text.matches("device connected").count(), 1, "{text}");

    // A broken file: logged with line and key; the gateway runs on.
    std::fs::write(&file, "limits:\n  max_frame_sise: 10\n").unwrap();
    hup(&gw);
    gw.wait_log("the running configuration stays", &dir.0);
    let text = log(&dir.0);
    assert!(
        text.contains("gateway.yaml:2:") && text.contains("limits.max_frame_sise"),
        "{text}"
    );
    assert!(gw.try_wait().unwrap().is_none(), "still running");
    assert_eq!(publish_predefined(&dev, 2, 4).await, ReturnCode::Accepted);
    tokio::time::sleep(Duration::from_millis(10)).await;
}
