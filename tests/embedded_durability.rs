//! The embedded broker keeps what it acknowledged (README: "nothing acknowledged is lost"):
//! across `kill -9` straight after a PUBACK, on a full disk (the gateway stops instead of
//! acknowledging), and in order when a persistent session resumes. Its queue cap is
//! `broker.embedded.max_queued_messages`, and what it drops is counted.
//!
//! Skipped (with a message) in a build without the `embedded-broker` feature.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use mqttsn_gateway::broker::{self, EmbeddedSettings};
use mqttsn_gateway::codec::{Message, QoS, ReturnCode, TopicRef};
use mqttsn_gateway::config::Config;
use mqttsn_gateway::mqtt;

macro_rules! embedded_or_skip {
    () => {
        if !broker::BUILT_IN {
            eprintln!("\n!!!!! SKIPPED: built without the embedded-broker feature !!!!!\n");
            return;
        }
    };
}

/// A config file for the binary: embedded broker on `port` with its data in `data_dir`, UDP on
/// `udp`, the gateway's own store in `dir`.
fn write_config(dir: &Path, data_dir: &Path, port: u16, udp: u16) -> PathBuf {
    let file = dir.join("gateway.yaml");
    std::fs::write(
        &file,
        format!(
            "transports:\n  udp:\n    - bind: 127.0.0.1:{udp}\n\
             broker:\n  mode: embedded\n  embedded:\n    bind: 127.0.0.1:{port}\n    data_dir: {}\n\
             store:\n  path: {}\n\
             http:\n  bind: null\n\
             log:\n  level: info\n",
            data_dir.display(),
            dir.join("gateway.db").display()
        ),
    )
    .unwrap();
    file
}

/// SIGKILL, at once: no shutdown, no flush.
fn kill9(gw: &mut LoggedGateway) {
    gw.0.kill().unwrap();
    gw.0.wait().unwrap();
}

/// Sends a QoS 1 PUBLISH and waits up to `wait` for its PUBACK.
async fn publish_acked(
    c: &mut MqttClient,
    packet_id: u16,
    topic: &str,
    payload: &[u8],
    retain: bool,
    wait: Duration,
) -> bool {
    c.send(mqtt::Packet::Publish(mqtt::Publish {
        dup: false,
        qos: mqtt::QoS::AtLeastOnce,
        retain,
        topic: topic.into(),
        packet_id: Some(packet_id),
        payload: Bytes::copy_from_slice(payload),
    }))
    .await;
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match c.try_recv(left).await {
            Some(mqtt::Packet::PubAck { packet_id: id }) if id == packet_id => return true,
            Some(_) => continue,
            None => return false,
        }
    }
}

/// Reads `n` PUBLISHes (acknowledging them) and returns their payloads as numbers.
async fn receive_numbers(c: &mut MqttClient, n: usize) -> Vec<u32> {
    let mut got = Vec::new();
    while got.len() < n {
        let Some(p) = c.next_publish(Duration::from_secs(5)).await else {
            break;
        };
        got.push(String::from_utf8_lossy(&p.payload).parse().unwrap());
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_kill_9_straight_after_the_puback() {
    embedded_or_skip!();
    let dir = TempDir::new("durable-kill");
    let port = free_tcp_port();
    let udp_port = free_udp_port();
    let udp = SocketAddr::from(([127, 0, 0, 1], udp_port));
    let config = write_config(&dir.0, &dir.0.join("broker"), port, udp_port);
    let broker = SocketAddr::from(([127, 0, 0, 1], port));

    let mut gw = LoggedGateway::spawn(GATEWAY_BIN.as_ref(), &config, &dir.0);
    gw.wait_listening(port, &dir.0);
    // A persistent session subscribes and goes away. (Its subscription is kept by the
    // session store, which writes in the background: give it time; the subscription is not
    // what this test is about.)
    let mut keeper = MqttClient::connect_persistent(broker, "keeper").await;
    keeper.subscribe("q/#", mqtt::QoS::AtLeastOnce).await;
    keeper.send(mqtt::Packet::Disconnect).await;
    drop(keeper);
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // 100 messages for the offline session, each acknowledged to an MQTT publisher.
    let mut publisher = MqttClient::connect(broker, "publisher").await;
    for i in 0..100u16 {
        let payload = i.to_string();
        let acked = publish_acked(
            &mut publisher,
            i + 1,
            "q/n",
            payload.as_bytes(),
            false,
            WAIT,
        )
        .await;
        assert!(acked, "PUBACK for message {i}");
    }
    // A device's retained message; kill -9 the moment its PUBACK arrives.
    let dev = SnClient::new(udp).await;
    dev.connect("radio-k", true, 60).await;
    let tid = dev.register("ret/radio-k", 1).await;
    dev.publish(TopicRef::Id(tid), QoS::AtLeastOnce, true, 2, b"kept")
        .await;
    let ack = dev.recv().await;
    kill9(&mut gw);
    assert!(matches!(ack, Message::Puback(p) if p.return_code == ReturnCode::Accepted));

    let mut gw = LoggedGateway::spawn(GATEWAY_BIN.as_ref(), &config, &dir.0);
    gw.wait_listening(port, &dir.0);
    let mut late = MqttClient::connect(broker, "late").await;
    late.subscribe("ret/#", mqtt::QoS::AtLeastOnce).await;
    let p = late
        .next_publish(WAIT)
        .await
        .expect("the device's retained message after kill -9");
    assert!(p.retain);
    assert_eq!(
        (p.topic.as_str(), &p.payload[..]),
        ("ret/radio-k", &b"kept"[..])
    );
    let mut keeper = MqttClient::connect_persistent(broker, "keeper").await;
    let got = receive_numbers(&mut keeper, 100).await;
    assert_eq!(
        got,
        (0..100).collect::<Vec<u32>>(),
        "the 100 queued messages, in order, after kill -9"
    );
    kill9(&mut gw);
}

/// Mounts a tmpfs of `size` on `dir` (as root); `None` when that is not possible here.
fn mount_tmpfs(dir: &Path, size: &str) -> Option<()> {
    std::fs::create_dir_all(dir).unwrap();
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok.then_some(())
}

struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_data_dir_stops_the_gateway_with_exit_1_and_keeps_what_it_acknowledged() {
    embedded_or_skip!();
    let dir = TempDir::new("durable-full");
    let data_dir = dir.0.join("broker");
    if mount_tmpfs(&data_dir, "3M").is_none() {
        eprintln!(
            "\n!!!!! SKIPPED: cannot mount a tmpfs on {} (needs root): the full-disk test did not run !!!!!\n",
            data_dir.display()
        );
        return;
    }
    let _unmount = Unmount(data_dir.clone());
    let port = free_tcp_port();
    let config = write_config(&dir.0, &data_dir, port, free_udp_port());
    let broker = SocketAddr::from(([127, 0, 0, 1], port));
    let mut gw = LoggedGateway::spawn(GATEWAY_BIN.as_ref(), &config, &dir.0);
    gw.wait_listening(port, &dir.0);

    // Retained messages of 16 KiB on distinct topics until the broker stops acknowledging
    // (or the connection closes: the helper panics then, which ends the task).
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let filler = {
        let acked = acked.clone();
        tokio::spawn(async move {
            let mut publisher = MqttClient::connect(broker, "filler").await;
            let payload = vec![b'x'; 16 * 1024];
            for i in 0..1000u16 {
                let topic = format!("r/{i}");
                let ok = publish_acked(
                    &mut publisher,
                    i + 1,
                    &topic,
                    &payload,
                    true,
                    Duration::from_secs(3),
                )
                .await;
                if !ok {
                    break;
                }
                acked.lock().unwrap().push(topic);
            }
        })
    };
    let _ = filler.await;
    let acked = acked.lock().unwrap().clone();
    assert!(!acked.is_empty(), "some messages fit");
    assert!(acked.len() < 1000, "a 3 MiB disk cannot take 16 MiB");

    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = gw.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway kept running on a full disk"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let log = std::fs::read_to_string(dir.0.join("stderr.log")).unwrap_or_default();
    assert_eq!(status.code(), Some(1), "exit status; log:\n{log}");
    assert!(
        log.contains(&data_dir.display().to_string()),
        "the error names the directory; log:\n{log}"
    );

    // With room again, every message that was acknowledged is there.
    let remount = Command::new("mount")
        .args(["-o", "remount,size=64M"])
        .arg(&data_dir)
        .status()
        .unwrap();
    assert!(remount.success());
    let mut gw = LoggedGateway::spawn(GATEWAY_BIN.as_ref(), &config, &dir.0);
    gw.wait_listening(port, &dir.0);
    let mut late = MqttClient::connect(broker, "late").await;
    late.subscribe("r/#", mqtt::QoS::AtLeastOnce).await;
    let mut seen = std::collections::HashSet::new();
    while let Some(p) = late.next_publish(Duration::from_secs(3)).await {
        seen.insert(p.topic.to_string());
    }
    let lost: Vec<&String> = acked.iter().filter(|t| !seen.contains(*t)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged retained messages lost: {lost:?}",
        lost.len(),
        acked.len()
    );
    kill9(&mut gw);
}

fn settings(data_dir: &Path, max_queued_messages: usize) -> EmbeddedSettings {
    EmbeddedSettings {
        bind: "127.0.0.1:0".parse().unwrap(),
        data_dir: data_dir.to_owned(),
        username: None,
        password: None,
        users_file: None,
        acl_file: None,
        tls: None,
        allow_anonymous: false,
        max_queued_messages,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_session_gets_its_in_flight_window_and_queue_in_order() {
    embedded_or_skip!();
    let dir = TempDir::new("durable-order");
    let handle = broker::start(&settings(&dir.0, 1000)).await.unwrap();
    let addr = handle.local_addr();

    let mut sub = MqttClient::connect_persistent(addr, "sub").await;
    sub.subscribe("q/#", mqtt::QoS::AtLeastOnce).await;
    let mut publisher = MqttClient::connect(addr, "pub").await;
    for i in 0..100u16 {
        assert!(
            publish_acked(
                &mut publisher,
                i + 1,
                "q/n",
                i.to_string().as_bytes(),
                false,
                WAIT
            )
            .await
        );
    }
    // Take the 16-message in-flight window without acknowledging it, then vanish.
    let mut window = 0;
    while let Some(p) = sub.try_recv(Duration::from_millis(500)).await {
        if let mqtt::Packet::Publish(_) = p {
            window += 1;
        }
    }
    assert_eq!(window, 16, "the in-flight window");
    drop(sub);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut sub = MqttClient::connect_persistent(addr, "sub").await;
    let got = receive_numbers(&mut sub, 100).await;
    let inversions = got.windows(2).filter(|w| w[1] < w[0]).count();
    assert_eq!(
        got,
        (0..100).collect::<Vec<u32>>(),
        "{inversions} inversions (MQTT 3.1.1 §4.6)"
    );
    handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_cap_is_max_queued_messages_and_drops_are_counted() {
    embedded_or_skip!();
    let dir = TempDir::new("durable-cap");
    let handle = broker::start(&settings(&dir.0, 50)).await.unwrap();
    let addr = handle.local_addr();

    let mut sub = MqttClient::connect_persistent(addr, "sub").await;
    sub.subscribe("q/#", mqtt::QoS::AtLeastOnce).await;
    sub.send(mqtt::Packet::Disconnect).await;
    drop(sub);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut publisher = MqttClient::connect(addr, "pub").await;
    for i in 0..200u16 {
        assert!(
            publish_acked(
                &mut publisher,
                i + 1,
                "q/n",
                i.to_string().as_bytes(),
                false,
                WAIT
            )
            .await
        );
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while handle.dropped_messages() < 150 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(handle.dropped_messages(), 150);

    let mut sub = MqttClient::connect_persistent(addr, "sub").await;
    let got = receive_numbers(&mut sub, 51).await;
    assert_eq!(
        got,
        (150..200).collect::<Vec<u32>>(),
        "the newest 50 are kept, in order"
    );
    handle.shutdown().await;
}

#[test]
fn max_queued_messages_is_read_and_checked() {
    let c = Config::from_yaml_str(
        "broker:\n  embedded:\n    max_queued_messages: 5000\n",
        "gateway.yaml",
    )
    .unwrap();
    assert_eq!(c.broker.embedded.max_queued_messages, 5000);
    assert_eq!(
        Config::from_yaml_str("{}", "gateway.yaml")
            .unwrap()
            .broker
            .embedded
            .max_queued_messages,
        1000
    );
    let err = Config::from_yaml_str(
        "broker:\n  embedded:\n    max_queued_messages: 0\n",
        "gateway.yaml",
    )
    .expect_err("0 is refused");
    assert!(err.to_string().contains("max_queued_messages"), "{err}");
}
