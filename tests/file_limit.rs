//! Open files in embedded mode: each device costs two descriptors in the gateway's process (its
//! upstream socket and the embedded broker's end of it). When the open-file limit cannot be
//! raised far enough, the gateway says so once at start and refuses the devices that would not
//! fit with CONNACK congestion, instead of letting them fail for want of a socket.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use mqttsn_gateway::codec::{self, Message};
use mqttsn_gateway::config::BrokerMode;

/// The hard open-file limit the gateway runs under, and the devices that fit in it:
/// (400 - 256 reserved) / 2 per device.
const HARD_LIMIT: u64 = 400;
const FIT: usize = 72;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_mode_refuses_devices_the_open_file_limit_cannot_hold() {
    if !mqttsn_gateway::broker::BUILT_IN {
        eprintln!("\n!!!!! SKIPPED: built without the embedded-broker feature !!!!!\n");
        return;
    }
    let dir = TempDir::new("nofile");
    let mut config = test_config(1883);
    config.broker.mode = BrokerMode::Embedded;
    config.broker.embedded.bind = "127.0.0.1:0".parse().unwrap();
    config.broker.embedded.data_dir = dir.0.join("broker");
    let file = dir.0.join("gateway.yaml");
    std::fs::write(&file, config.to_yaml()).unwrap();

    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mqttsn-gateway"));
    cmd.args(["run", "-c"])
        .arg(&file)
        .args(["--log", "info"])
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| rlimit::setrlimit(rlimit::Resource::NOFILE, HARD_LIMIT, HARD_LIMIT));
    }
    let mut child = cmd.spawn().expect("spawn the gateway");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if std::env::var_os("MQTTSN_TEST_LOG").is_some() {
                eprintln!("[gateway] {line}");
            }
            let _ = tx.send(line);
        }
    });
    let mut warned = false;
    let udp: std::net::SocketAddr = loop {
        let line = rx
            .recv_timeout(WAIT)
            .expect("the gateway logs its UDP address");
        if line.contains("open-file limit allows only") {
            assert!(line.contains(&format!("allows only {FIT} ")), "{line}");
            warned = true;
        }
        if line.contains("UDP transport listening") {
            break line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("addr="))
                .and_then(|a| a.parse().ok())
                .unwrap();
        }
    };
    assert!(warned, "a warning names the limit at start");

    // More devices than the descriptors could carry even without the reserve.
    let mut accepted = Vec::new();
    let mut refused = 0;
    for i in 0..(FIT + 120) {
        let dev = SnClient::new(udp).await;
        dev.send(Message::Connect(codec::Connect {
            will: false,
            clean_session: true,
            protocol_id: codec::PROTOCOL_ID_V1_2,
            duration: 60,
            client_id: format!("fd{i}"),
        }))
        .await;
        match dev.try_recv(Duration::from_secs(3)).await {
            Some(Message::Connack {
                return_code: codec::ReturnCode::Accepted,
            }) => {
                // Talking after its CONNACK: a real device, not one to evict.
                dev.send(Message::PingReq { client_id: None }).await;
                assert_eq!(dev.recv().await, Message::PingResp);
                accepted.push(dev);
            }
            Some(Message::Connack {
                return_code: codec::ReturnCode::Congestion,
            }) => refused += 1,
            other => panic!("device {i}: expected a CONNACK, got {other:?}"),
        }
    }
    assert_eq!(accepted.len(), FIT);
    assert_eq!(refused, 120);
    // The devices that got in still work.
    for dev in &accepted {
        dev.send(Message::PingReq { client_id: None }).await;
        assert_eq!(dev.recv().await, Message::PingResp);
    }
    let _ = child.kill();
    let _ = child.wait();
}
