//! RabbitMQ (with `rabbitmq_mqtt`) as a second real upstream beside mosquitto. RabbitMQ does not
//! do QoS 2: it answers a QoS 2 PUBLISH with PUBACK and grants QoS 1 to QoS 2 subscriptions.
//! The device's own QoS 2 exchange with the gateway must stay whole all the same (PUBLISH ->
//! PUBREC -> PUBREL -> PUBCOMP, exactly one message at a subscriber), and a QoS 2 SUBSCRIBE is
//! told the QoS it was granted. The same uplink scenario runs against mosquitto for contrast.
//!
//! The test starts its own RabbitMQ node: a temporary directory for its database, logs and
//! config, free ports for MQTT, Erlang distribution and epmd (its own epmd on that port), a
//! node name of its own; it never touches a system node. Skipped loudly when RabbitMQ is not
//! installed (`apt-get install -y rabbitmq-server`); in CI it must be there.

#[macro_use]
mod common;

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use mqttsn_gateway::codec::{self, Message, QoS, ReturnCode, TopicFilter, TopicRef};
use mqttsn_gateway::mqtt;

const SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";
/// A loaded 2-core machine takes ~7 s; leave room.
const STARTUP: Duration = Duration::from_secs(90);

/// A RabbitMQ node of this test's own, stopped on drop.
struct RabbitMq {
    port: u16,
    server: Child,
    epmd: Child,
    dir: TempDir,
}

fn epmd_binary() -> Option<PathBuf> {
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|d| Path::new(d).join("epmd"))
        .find(|p| p.is_file())
}

fn kill(signal: &str, target: &str) {
    let _ = Command::new("kill")
        .args([signal, "--", target])
        .stderr(Stdio::null())
        .status();
}

impl RabbitMq {
    fn start() -> Option<RabbitMq> {
        let epmd = epmd_binary();
        if !Path::new(SERVER).is_file() || epmd.is_none() {
            if std::env::var_os("CI").is_some() {
                panic!("rabbitmq-server is not installed but CI is set: apt-get install -y rabbitmq-server");
            }
            eprintln!("\n!!!!! SKIPPED: rabbitmq-server is not installed; apt-get install -y rabbitmq-server to run this test !!!!!\n");
            return None;
        }
        let epmd_bin = epmd.unwrap();
        let started = Instant::now();
        let dir = TempDir::new("rabbitmq");
        let (port, dist_port, epmd_port) = (free_tcp_port(), free_tcp_port(), free_tcp_port());
        let p = |name: &str| dir.0.join(name);
        std::fs::write(
            p("rabbitmq.conf"),
            format!(
                "listeners.tcp = none\n\
                 mqtt.listeners.tcp.default = {port}\n\
                 mqtt.allow_anonymous = true\n\
                 loopback_users = none\n\
                 log.console = false\n\
                 log.file.level = info\n"
            ),
        )
        .unwrap();
        std::fs::write(p("enabled_plugins"), "[rabbitmq_mqtt].\n").unwrap();
        std::fs::write(p("rabbitmq-env.conf"), "").unwrap();
        // Our own epmd on a free port, so the node registers nowhere shared and nothing
        // outlives the test.
        let epmd = Command::new(&epmd_bin)
            .args(["-port", &epmd_port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn epmd");
        wait_port(epmd_port, Duration::from_secs(10));
        let node = format!(
            "mqttsn-test-{}-{}@localhost",
            std::process::id(),
            dir.0
                .file_name()
                .unwrap()
                .to_string_lossy()
                .rsplit('-')
                .next()
                .unwrap()
        );
        let server = Command::new(SERVER)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", &dir.0) // the Erlang cookie goes here
            .env("LANG", "C.UTF-8")
            .env("ERL_EPMD_PORT", epmd_port.to_string())
            .env("RABBITMQ_NODENAME", &node)
            .env("RABBITMQ_DIST_PORT", dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", p("mnesia"))
            .env("RABBITMQ_LOG_BASE", p("log"))
            .env("RABBITMQ_CONFIG_FILE", p("rabbitmq.conf"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", p("advanced.config"))
            .env("RABBITMQ_CONF_ENV_FILE", p("rabbitmq-env.conf"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", p("enabled_plugins"))
            .env("RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS", "-start_epmd false")
            .current_dir(&dir.0)
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn rabbitmq-server");
        let mut r = RabbitMq {
            port,
            server,
            epmd,
            dir,
        };
        let deadline = Instant::now() + STARTUP;
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            if let Ok(Some(status)) = r.server.try_wait() {
                panic!(
                    "rabbitmq-server exited ({status}) before accepting MQTT; logs in {:?}:\n{}",
                    r.dir.0,
                    r.log_tail()
                );
            }
            assert!(
                Instant::now() < deadline,
                "RabbitMQ did not accept MQTT within {STARTUP:?}:\n{}",
                r.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!(
            "RabbitMQ node {node} accepts MQTT on port {port} after {:.1} s",
            started.elapsed().as_secs_f64()
        );
        Some(r)
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn log_tail(&self) -> String {
        let mut out = String::new();
        if let Ok(entries) = std::fs::read_dir(self.dir.0.join("log")) {
            for e in entries.flatten() {
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let from = lines.len().saturating_sub(30);
                out += &format!("--- {}\n{}\n", e.path().display(), lines[from..].join("\n"));
            }
        }
        out
    }
}

impl Drop for RabbitMq {
    fn drop(&mut self) {
        // SIGTERM: the server script stops the node gracefully (~2.5 s); whatever is left of
        // its process group after that is killed.
        let pid = self.server.id();
        kill("-TERM", &pid.to_string());
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.server.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        kill("-KILL", &format!("-{pid}"));
        let _ = self.server.wait();
        let _ = self.epmd.kill();
        let _ = self.epmd.wait();
    }
}

/// Waits until something listens on `port`.
fn wait_port(port: u16, within: Duration) {
    let deadline = Instant::now() + within;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Device QoS 2 uplink: PUBLISH (and a DUP re-send) -> PUBREC, PUBREL -> PUBCOMP; the
/// subscriber gets the message exactly once, at `expect_qos`.
async fn device_qos2_uplink(broker: SocketAddr, gw: SocketAddr, tag: &str, expect_qos: mqtt::QoS) {
    let topic = format!("up/{tag}");
    let mut sub = MqttClient::connect(broker, &format!("{tag}-sub")).await;
    sub.subscribe(&topic, mqtt::QoS::ExactlyOnce).await;
    let dev = SnClient::new(gw).await;
    dev.connect(&format!("{tag}-dev"), true, 60).await;
    let tid = dev.register(&topic, 1).await;
    dev.publish(
        TopicRef::Id(tid),
        QoS::ExactlyOnce,
        false,
        77,
        b"exactly once",
    )
    .await;
    assert_eq!(dev.recv().await, Message::Pubrec { msg_id: 77 });
    // The device missed PUBREC and sends again with DUP: PUBREC again, nothing upstream.
    dev.send(Message::Publish(codec::Publish {
        dup: true,
        qos: QoS::ExactlyOnce,
        retain: false,
        topic: TopicRef::Id(tid),
        msg_id: 77,
        data: Bytes::from_static(b"exactly once"),
    }))
    .await;
    assert_eq!(dev.recv().await, Message::Pubrec { msg_id: 77 });
    dev.send(Message::Pubrel { msg_id: 77 }).await;
    assert_eq!(dev.recv().await, Message::Pubcomp { msg_id: 77 });
    let p = sub.next_publish(WAIT).await.expect("delivered");
    assert_eq!((&p.payload[..], p.qos), (&b"exactly once"[..], expect_qos));
    assert!(
        sub.next_publish(Duration::from_secs(1)).await.is_none(),
        "delivered twice"
    );
    assert!(dev.try_recv(Duration::from_millis(200)).await.is_none());
}

/// Device QoS 2 SUBSCRIBE: told the QoS the broker granted, and delivery at that QoS.
async fn device_qos2_subscription(broker: SocketAddr, gw: SocketAddr, tag: &str, granted: QoS) {
    let topic = format!("cmd/{tag}");
    let dev = SnClient::new(gw).await;
    dev.connect(&format!("{tag}-subdev"), true, 60).await;
    let s = dev
        .subscribe(TopicFilter::Name(topic.clone()), QoS::ExactlyOnce, 2)
        .await;
    assert_eq!((s.return_code, s.qos), (ReturnCode::Accepted, granted));
    // Published at the best QoS the broker takes (RabbitMQ would answer QoS 2 with PUBACK).
    let qos = match granted {
        QoS::ExactlyOnce => mqtt::QoS::ExactlyOnce,
        _ => mqtt::QoS::AtLeastOnce,
    };
    let mut publisher = MqttClient::connect(broker, &format!("{tag}-pub")).await;
    publisher.publish(&topic, b"down", qos, false).await;
    match dev.recv().await {
        Message::Publish(p) => {
            assert_eq!(
                (p.topic, p.qos, &p.data[..]),
                (TopicRef::Id(s.topic_id), granted, &b"down"[..])
            );
        }
        other => panic!("expected the PUBLISH, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_downgrading_qos2_leaves_the_device_exchange_whole() {
    let Some(rabbit) = RabbitMq::start() else {
        return;
    };
    let (gw, gw_addr) = start_gateway(&test_config(rabbit.port)).await;
    device_qos2_uplink(rabbit.addr(), gw_addr, "rmq", mqtt::QoS::AtLeastOnce).await;
    device_qos2_subscription(rabbit.addr(), gw_addr, "rmq", QoS::AtLeastOnce).await;
    drop(gw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_keeps_qos2_for_the_same_device_exchange() {
    let broker = broker_or_skip!(Backend::Mosquitto);
    let (gw, gw_addr) = start_gateway(&test_config(broker.port)).await;
    device_qos2_uplink(broker.addr(), gw_addr, "mosq", mqtt::QoS::ExactlyOnce).await;
    device_qos2_subscription(broker.addr(), gw_addr, "mosq", QoS::ExactlyOnce).await;
    drop(gw);
}
