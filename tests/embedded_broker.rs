//! `broker.mode: embedded`: the gateway starts its own MQTT 3.1.1 broker and stock MQTT clients
//! talk to the devices through it. Everything binds free ports; each test has its own data dir.
//!
//! The tests that need the broker compiled in are skipped (with a message) in a build without
//! the `embedded-broker` feature; that build is checked to refuse embedded mode instead.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use mqttsn_gateway::codec::{self, Message, QoS, ReturnCode, TopicFilter, TopicRef};
use mqttsn_gateway::config::{BrokerMode, Config};
use mqttsn_gateway::mqtt;
use mqttsn_gateway::shell;

/// A gateway config in embedded mode: broker on `bind`, data in `data_dir`.
fn embedded_config(bind: SocketAddr, data_dir: &Path) -> Config {
    let mut c = test_config(1);
    c.broker.mode = BrokerMode::Embedded;
    c.broker.embedded.bind = bind;
    c.broker.embedded.data_dir = data_dir.to_owned();
    c
}

macro_rules! embedded_or_skip {
    () => {
        if !mqttsn_gateway::broker::BUILT_IN {
            eprintln!("\n!!!!! SKIPPED: built without the embedded-broker feature !!!!!\n");
            return;
        }
    };
}

fn have(tool: &str) -> bool {
    have_tool(tool, "mosquitto-clients")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_clients_publish_to_a_device_and_see_its_traffic() {
    embedded_or_skip!();
    if !have("mosquitto_pub") || !have("mosquitto_sub") {
        return;
    }
    let dir = temp_dir("embedded");
    let config = embedded_config("127.0.0.1:0".parse().unwrap(), &dir);
    let (gw, gw_addr) = start_gateway(&config).await;
    let port = gw.broker_addr().expect("embedded broker running").port();

    let dev = SnClient::new(gw_addr).await;
    dev.connect("radio-1", true, 60).await;
    let s = dev
        .subscribe(TopicFilter::Name("cmd/radio-1".into()), QoS::AtLeastOnce, 1)
        .await;
    assert_eq!(s.return_code, ReturnCode::Accepted);

    // A stock client publishes to the device.
    let status = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-t", "cmd/radio-1", "-m", "on", "-q", "1"])
        .status()
        .unwrap();
    assert!(status.success());
    let Message::Publish(p) = dev.recv().await else {
        panic!("expected PUBLISH to the device")
    };
    assert_eq!(
        (p.topic, &p.data[..], p.qos),
        (TopicRef::Id(s.topic_id), &b"on"[..], QoS::AtLeastOnce)
    );
    dev.send(Message::Puback(codec::Puback {
        topic_id: s.topic_id,
        msg_id: p.msg_id,
        return_code: ReturnCode::Accepted,
    }))
    .await;

    // The device publishes (retained, so the stock subscriber started afterwards sees it).
    let tid = dev.register("sensors/radio-1/temp", 2).await;
    dev.publish(TopicRef::Id(tid), QoS::AtLeastOnce, true, 3, b"21.5")
        .await;
    assert!(
        matches!(dev.recv().await, Message::Puback(p) if p.return_code == ReturnCode::Accepted)
    );
    let out = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-t", "sensors/#", "-q", "1", "-C", "1", "-W", "5"])
        .args(["-F", "%t %q %r %p"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "sensors/radio-1/temp 1 1 21.5"
    );
    gw.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_required_and_device_sessions_use_them() {
    embedded_or_skip!();
    let dir = temp_dir("embedded-auth");
    let mut config = embedded_config("127.0.0.1:0".parse().unwrap(), &dir);
    config.broker.embedded.username = Some("home".into());
    config.broker.embedded.password = Some("s3cret".into());
    let (gw, gw_addr) = start_gateway(&config).await;
    let broker = gw.broker_addr().unwrap();

    let (_c, code) = MqttClient::try_connect(broker, "anon", true, None).await;
    assert_ne!(code, mqtt::ConnectReturnCode::Accepted);
    let (_c, code) = MqttClient::try_connect(broker, "bad", true, Some(("home", "x"))).await;
    assert_eq!(code, mqtt::ConnectReturnCode::BadUserNameOrPassword);
    let mut sub = MqttClient::connect_with(broker, "good", true, Some(("home", "s3cret"))).await;
    sub.subscribe("sensors/#", mqtt::QoS::AtLeastOnce).await;

    // The device's session logs in with the same credentials.
    let dev = SnClient::new(gw_addr).await;
    dev.connect("radio-auth", true, 60).await;
    dev.publish(TopicRef::Predefined(7), QoS::AtLeastOnce, false, 1, b"x")
        .await;
    assert!(matches!(dev.recv().await, Message::Puback(_)));
    let p = sub.next_publish(WAIT).await.expect("device traffic");
    assert_eq!(p.topic, "sensors/predefined");
    gw.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_password_can_come_from_a_file() {
    embedded_or_skip!();
    let dir = temp_dir("embedded-pwfile");
    let file = dir.join("broker-password");
    std::fs::write(&file, "from-a-file\n").unwrap();
    let mut config = embedded_config("127.0.0.1:0".parse().unwrap(), &dir);
    config.broker.embedded.username = Some("home".into());
    config.broker.embedded.password_file = Some(file.clone());
    let (gw, _) = start_gateway(&config).await;
    let broker = gw.broker_addr().unwrap();
    let (_c, code) =
        MqttClient::try_connect(broker, "good", true, Some(("home", "from-a-file"))).await;
    assert_eq!(
        code,
        mqtt::ConnectReturnCode::Accepted,
        "one trailing newline is not part of it"
    );
    let (_c, code) = MqttClient::try_connect(broker, "bad", true, Some(("home", "x"))).await;
    assert_eq!(code, mqtt::ConnectReturnCode::BadUserNameOrPassword);
    gw.shutdown().await;
    // An unreadable file stops the start, naming the key and the file.
    std::fs::remove_file(&file).unwrap();
    let Err(err) = shell::start(&config).await else {
        panic!("started without its password file")
    };
    let text = err.to_string();
    assert!(
        text.contains("broker.embedded") && text.contains("broker-password"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn port_in_use_is_an_error_naming_the_key_and_value() {
    embedded_or_skip!();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = temp_dir("embedded-port");
    let Err(err) = shell::start(&embedded_config(addr, &dir)).await else {
        panic!("started on a port in use")
    };
    let text = err.to_string();
    assert!(text.contains("broker.embedded.bind"), "{text}");
    assert!(text.contains(&addr.to_string()), "{text}");
    assert!(text.contains("in use"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn unwritable_data_dir_is_an_error_naming_the_key_and_value() {
    embedded_or_skip!();
    // A directory below a plain file cannot be created, even by root.
    let dir = temp_dir("embedded-dir");
    let file = dir.join("not-a-dir");
    std::fs::write(&file, b"").unwrap();
    let bad = file.join("broker");
    let Err(err) = shell::start(&embedded_config("127.0.0.1:0".parse().unwrap(), &bad)).await
    else {
        panic!("started with an unusable data_dir")
    };
    let text = err.to_string();
    assert!(text.contains("broker.embedded.data_dir"), "{text}");
    assert!(text.contains(&bad.display().to_string()), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[cfg(not(feature = "embedded-broker"))]
#[tokio::test]
async fn without_the_feature_embedded_mode_says_how_to_build_it() {
    let dir = temp_dir("embedded-none");
    let Err(err) = shell::start(&embedded_config("127.0.0.1:0".parse().unwrap(), &dir)).await
    else {
        panic!("embedded mode started without the embedded broker")
    };
    let text = err.to_string();
    assert!(text.contains("embedded-broker"), "{text}");
    assert!(text.contains("upstream"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

// ---- the binary: kill -9 and SIGTERM ----

/// The gateway binary on `config_file`; stderr kept in `dir/stderr.log`.
/// A config file for the binary: embedded broker on `port`, UDP on `udp`, data under `dir`.
fn write_config(dir: &Path, port: u16, udp: u16) -> std::path::PathBuf {
    let file = dir.join("gateway.yaml");
    std::fs::write(
        &file,
        format!(
            "transports:\n  udp:\n    - bind: 127.0.0.1:{udp}\n\
             broker:\n  mode: embedded\n  embedded:\n    bind: 127.0.0.1:{port}\n    data_dir: {}\n\
             predefined_topics:\n  - {{ id: 7, topic: sensors/predefined }}\n\
             store:\n  path: {}\n\
             http:\n  bind: null\n\
             log:\n  level: info\n",
            dir.join("data").display(),
            dir.join("gateway.db").display()
        ),
    )
    .unwrap();
    file
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_and_queued_messages_survive_kill_9() {
    embedded_or_skip!();
    let dir = temp_dir("embedded-kill");
    let port = free_tcp_port();
    let config = write_config(&dir, port, free_udp_port());
    let broker = SocketAddr::from(([127, 0, 0, 1], port));

    let mut gw = LoggedGateway::spawn(GATEWAY_BIN.as_ref(), &config, &dir);
    gw.wait_listening(port, &dir);
    // A persistent session subscribes, then goes away.
    let mut keeper = MqttClient::connect_with(broker, "keeper", false, None).await;
    keeper.subscribe("q/#", mqtt::QoS::AtLeastOnce).await;
    keeper.send(mqtt::Packet::Disconnect).await;
    drop(keeper);
    let mut publisher = MqttClient::connect(broker, "publisher").await;
    publisher
        .publish("ret/a", b"kept", mqtt::QoS::AtLeastOnce, true)
        .await;
    publisher
        .publish("q/x", b"queued", mqtt::QoS::AtLeastOnce, false)
        .await;
    drop(publisher);
    // The store writes out every 500 ms; give it a few periods.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    gw.kill().unwrap(); // SIGKILL
    gw.wait().unwrap();

    let mut gw = LoggedGateway::spawn(GATEWAY_BIN.as_ref(), &config, &dir);
    gw.wait_listening(port, &dir);
    let mut keeper = MqttClient::connect_with(broker, "keeper", false, None).await;
    let p = keeper
        .next_publish(WAIT)
        .await
        .expect("the queued QoS 1 message after kill -9");
    assert_eq!((p.topic.as_str(), &p.payload[..]), ("q/x", &b"queued"[..]));
    let mut late = MqttClient::connect(broker, "late").await;
    late.subscribe("ret/#", mqtt::QoS::AtLeastOnce).await;
    let p = late
        .next_publish(WAIT)
        .await
        .expect("the retained message after kill -9");
    assert!(p.retain);
    assert_eq!((p.topic.as_str(), &p.payload[..]), ("ret/a", &b"kept"[..]));
    gw.kill().unwrap();
    gw.wait().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_0_quickly_without_firing_device_wills() {
    embedded_or_skip!();
    if !have("kill") {
        return;
    }
    let dir = temp_dir("embedded-term");
    let port = free_tcp_port();
    let udp = free_udp_port();
    let config = write_config(&dir, port, udp);
    let broker = SocketAddr::from(([127, 0, 0, 1], port));

    let mut gw = LoggedGateway::spawn(GATEWAY_BIN.as_ref(), &config, &dir);
    gw.wait_listening(port, &dir);
    // A persistent session that would receive (and keep, across the restart) any will.
    let mut watcher = MqttClient::connect_with(broker, "watcher", false, None).await;
    watcher.subscribe("wills/#", mqtt::QoS::AtLeastOnce).await;
    watcher.send(mqtt::Packet::Disconnect).await;
    drop(watcher);

    let dev = SnClient::new(SocketAddr::from(([127, 0, 0, 1], udp))).await;
    dev.connect_with_will(
        "radio-w",
        60,
        "wills/radio-w",
        b"gone",
        QoS::AtLeastOnce,
        false,
    )
    .await;

    let started = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &gw.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = loop {
        if let Some(status) = gw.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "gateway still running 5 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "exit status {exit}");

    let mut gw = LoggedGateway::spawn(GATEWAY_BIN.as_ref(), &config, &dir);
    gw.wait_listening(port, &dir);
    let mut watcher = MqttClient::connect_with(broker, "watcher", false, None).await;
    let got = watcher.next_publish(Duration::from_secs(1)).await;
    assert!(got.is_none(), "a will fired on shutdown: {got:?}");
    gw.kill().unwrap();
    gw.wait().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
