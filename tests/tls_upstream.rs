//! TLS to the upstream broker, secrets out of the config file, credentials per device — with
//! real parts: each test starts its own mosquitto (a TLS or password listener, plus a plain
//! anonymous listener for the checking MQTT client), certificates made by `TestCa`, and the
//! gateway binary with its log in a file.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use mqttsn_gateway::codec::{self, Message, QoS, ReturnCode, TopicFilter, TopicRef};
use mqttsn_gateway::mqtt;

/// A mosquitto with a first listener as `lines` say and a second, plain and anonymous one on
/// `check_port` for the test's own MQTT client.
struct Broker {
    mosq: Mosquitto,
    check_port: u16,
}

impl Broker {
    fn start(lines: impl Fn(&Path) -> String) -> Option<Broker> {
        let check_port = free_tcp_port();
        let mosq = Mosquitto::start_configured(|dir| {
            format!(
                "{}\nlistener {check_port} 127.0.0.1\nallow_anonymous true\n",
                lines(dir)
            )
        })?;
        Some(Broker { mosq, check_port })
    }

    /// A mutual-TLS broker with `server` as its certificate, trusting `ca` for clients.
    fn mutual_tls(ca: &TestCa, server: &CertFiles) -> Option<Broker> {
        let (ca, cert, key) = (
            ca.cert_file.clone(),
            server.cert_file.clone(),
            server.key_file.clone(),
        );
        Broker::start(move |_| {
            format!(
                "per_listener_settings true\ncafile {}\ncertfile {}\nkeyfile {}\n\
                 require_certificate true\nuse_identity_as_username true\n",
                ca.display(),
                cert.display(),
                key.display()
            )
        })
    }

    fn check_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.check_port))
    }
}

/// The gateway binary with `yaml` (the `broker.upstream` mapping and what follows it are the
/// test's) in `dir/gateway.yaml`; its log in `dir/stderr.log`.
struct Gw {
    _proc: LoggedGateway,
    udp: SocketAddr,
    dir: PathBuf,
}

fn gateway_yaml(udp: u16, level: &str, rest: &str) -> String {
    format!(
        "transports:\n  udp:\n    - bind: 127.0.0.1:{udp}\nstore:\n  path: null\nhttp:\n  bind: null\nlog:\n  \
         level: {level}\ntimers:\n  retry_interval: 1s\n{rest}"
    )
}

impl Gw {
    fn start(dir: &Path, rest: &str, env: &[(&str, &str)]) -> Gw {
        Gw::start_at(dir, "debug", rest, env)
    }

    fn start_at(dir: &Path, level: &str, rest: &str, env: &[(&str, &str)]) -> Gw {
        let udp = free_udp_port();
        let file = dir.join("gateway.yaml");
        std::fs::write(&file, gateway_yaml(udp, level, rest)).unwrap();
        let mut proc = LoggedGateway::spawn_env(GATEWAY_BIN.as_ref(), &file, dir, env);
        proc.wait_log("UDP transport listening", dir);
        Gw {
            _proc: proc,
            udp: SocketAddr::from(([127, 0, 0, 1], udp)),
            dir: dir.to_owned(),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }
}

/// Runs the binary with `rest` until it exits (it must, within 20 s): (exit code, stderr).
fn run_to_exit(dir: &Path, rest: &str) -> (Option<i32>, String) {
    let file = dir.join("gateway.yaml");
    std::fs::write(&file, gateway_yaml(free_udp_port(), "info", rest)).unwrap();
    let mut child = Command::new(GATEWAY_BIN)
        .args(["run", "-c"])
        .arg(&file)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return (status.code(), err);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the gateway did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn upstream(port: u16, extra: &str) -> String {
    format!(
        "broker:\n  mode: upstream\n  upstream:\n    host: 127.0.0.1\n    port: {port}\n{extra}"
    )
}

async fn sn_connect(dev: &SnClient, client_id: &str) -> ReturnCode {
    dev.send(Message::Connect(codec::Connect {
        will: false,
        clean_session: true,
        protocol_id: codec::PROTOCOL_ID_V1_2,
        duration: 60,
        client_id: client_id.into(),
    }))
    .await;
    match dev.recv().await {
        Message::Connack { return_code } => return_code,
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

/// REGISTER + PUBLISH QoS 1 of `data` to `topic`; expects the PUBACK accepted.
async fn publish_qos1(dev: &SnClient, topic: &str, msg_id: u16, data: &[u8]) {
    let id = dev.register(topic, msg_id).await;
    dev.publish(TopicRef::Id(id), QoS::AtLeastOnce, false, msg_id + 1, data)
        .await;
    match dev.recv().await {
        Message::Puback(p) => assert_eq!(p.return_code, ReturnCode::Accepted, "{p:?}"),
        other => panic!("expected PUBACK, got {other:?}"),
    }
}

async fn checker(broker: &Broker, filter: &str) -> MqttClient {
    let mut c = MqttClient::connect(broker.check_addr(), "checker").await;
    c.subscribe(filter, mqtt::QoS::AtLeastOnce).await;
    c
}

fn count(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

const UNREACHABLE: &str = "cannot reach the upstream broker";

/// Done when: a device's QoS 1 message reaches a mosquitto that accepts only mutual TLS, with
/// that device's own certificate; and a message to its subscription comes back down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_publishes_and_receives_over_mutual_tls_with_its_own_certificate() {
    let dir = TempDir::new("tls-mutual");
    let ca = TestCa::new(&dir.0, "good");
    let server = ca.server("server");
    let own = ca.client("sensor-1", "sensor-1");
    let Some(broker) = Broker::mutual_tls(&ca, &server) else {
        return;
    };
    let gw = Gw::start(
        &dir.0,
        &format!(
            "{}    tls:\n      ca_file: {}\ndevices:\n  - client_id: sensor-1\n    cert_file: {}\n    key_file: {}\n",
            upstream(broker.mosq.port, ""),
            ca.cert_file.display(),
            own.cert_file.display(),
            own.key_file.display()
        ),
        &[],
    );
    let mut check = checker(&broker, "up/#").await;
    let dev = SnClient::new(gw.udp).await;
    assert_eq!(sn_connect(&dev, "sensor-1").await, ReturnCode::Accepted);
    publish_qos1(&dev, "up/sensor-1", 1, b"over tls").await;
    let p = check
        .next_publish(WAIT)
        .await
        .expect("the message over TLS");
    assert_eq!(
        (p.topic.as_str(), &p.payload[..]),
        ("up/sensor-1", &b"over tls"[..])
    );
    // mosquitto took the certificate's CN as the user name.
    assert!(
        broker.mosq.log().contains("sensor-1"),
        "{}",
        broker.mosq.log()
    );

    let sub = dev
        .subscribe(
            TopicFilter::Name("down/sensor-1".into()),
            QoS::AtLeastOnce,
            7,
        )
        .await;
    assert_eq!(sub.return_code, ReturnCode::Accepted);
    check
        .publish("down/sensor-1", b"back down", mqtt::QoS::AtLeastOnce, false)
        .await;
    let got = loop {
        match dev.recv().await {
            Message::Publish(p) => break p,
            Message::Register(r) => {
                dev.send(Message::Regack(codec::Regack {
                    topic_id: r.topic_id,
                    msg_id: r.msg_id,
                    return_code: ReturnCode::Accepted,
                }))
                .await
            }
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(got.data, Bytes::from_static(b"back down"));
    assert_eq!(got.topic, TopicRef::Id(sub.topic_id));
    drop(gw);
}

/// A device without its own certificate, against the same broker: the global one (absent
/// here) — mosquitto refuses the handshake, the device gets CONNACK congestion, and the
/// device with its certificate is not disturbed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_without_certificate_is_refused_and_others_are_not_disturbed() {
    let dir = TempDir::new("tls-nocert");
    let ca = TestCa::new(&dir.0, "good");
    let server = ca.server("server");
    let own = ca.client("sensor-1", "sensor-1");
    let Some(broker) = Broker::mutual_tls(&ca, &server) else {
        return;
    };
    let gw = Gw::start(
        &dir.0,
        &format!(
            "{}    tls:\n      ca_file: {}\ndevices:\n  - client_id: sensor-1\n    cert_file: {}\n    key_file: {}\n",
            upstream(broker.mosq.port, ""),
            ca.cert_file.display(),
            own.cert_file.display(),
            own.key_file.display()
        ),
        &[],
    );
    let stranger = SnClient::new(gw.udp).await;
    assert_eq!(
        sn_connect(&stranger, "stranger").await,
        ReturnCode::Congestion
    );
    let log = gw.log();
    assert_eq!(count(&log, UNREACHABLE), 1, "logged with its reason: {log}");
    assert!(log.contains("before CONNACK"), "{log}");
    let mut check = checker(&broker, "up/#").await;
    let dev = SnClient::new(gw.udp).await;
    assert_eq!(sn_connect(&dev, "sensor-1").await, ReturnCode::Accepted);
    publish_qos1(&dev, "up/sensor-1", 1, b"still fine").await;
    assert!(check.next_publish(WAIT).await.is_some());
}

/// Connects `n` devices (each refused with congestion), twice; returns the gateway's log.
async fn refused_handshakes(dir: &Path, broker_port: u16, tls: &str, n: usize) -> String {
    let gw = Gw::start(dir, &format!("{}{tls}", upstream(broker_port, "")), &[]);
    for round in 0..2 {
        for i in 0..n {
            let dev = SnClient::new(gw.udp).await;
            assert_eq!(
                sn_connect(&dev, &format!("dev-{i}")).await,
                ReturnCode::Congestion,
                "round {round} device {i}"
            );
        }
    }
    gw.log()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_ca_is_refused_and_logged_once_per_interval() {
    let dir = TempDir::new("tls-wrongca");
    let ca = TestCa::new(&dir.0, "good");
    let other = TestCa::new(&dir.0, "other");
    let server = ca.server("server");
    let Some(broker) = Broker::start(|_| {
        format!(
            "allow_anonymous true\ncafile {}\ncertfile {}\nkeyfile {}\n",
            ca.cert_file.display(),
            server.cert_file.display(),
            server.key_file.display()
        )
    }) else {
        return;
    };
    let tls = format!("    tls:\n      ca_file: {}\n", other.cert_file.display());
    let log = refused_handshakes(&dir.0, broker.mosq.port, &tls, 5).await;
    assert_eq!(count(&log, UNREACHABLE), 1, "{log}");
    assert!(log.contains("UnknownIssuer"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_server_name_is_refused_and_logged_once_per_interval() {
    let dir = TempDir::new("tls-wrongname");
    let ca = TestCa::new(&dir.0, "good");
    let server = ca.server("server");
    let Some(broker) = Broker::start(|_| {
        format!(
            "allow_anonymous true\ncafile {}\ncertfile {}\nkeyfile {}\n",
            ca.cert_file.display(),
            server.cert_file.display(),
            server.key_file.display()
        )
    }) else {
        return;
    };
    let tls = format!(
        "    tls:\n      ca_file: {}\n      server_name: broker.example.org\n",
        ca.cert_file.display()
    );
    let log = refused_handshakes(&dir.0, broker.mosq.port, &tls, 5).await;
    assert_eq!(count(&log, UNREACHABLE), 1, "{log}");
    assert!(log.contains("not valid for name"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_server_certificate_is_refused_and_logged_once_per_interval() {
    let dir = TempDir::new("tls-expired-server");
    let ca = TestCa::new(&dir.0, "good");
    let server = ca.server_for("server", &["127.0.0.1", "localhost"], Validity::Expired);
    let Some(broker) = Broker::start(|_| {
        format!(
            "allow_anonymous true\ncafile {}\ncertfile {}\nkeyfile {}\n",
            ca.cert_file.display(),
            server.cert_file.display(),
            server.key_file.display()
        )
    }) else {
        return;
    };
    let tls = format!("    tls:\n      ca_file: {}\n", ca.cert_file.display());
    let log = refused_handshakes(&dir.0, broker.mosq.port, &tls, 5).await;
    assert_eq!(count(&log, UNREACHABLE), 1, "{log}");
    assert!(log.to_lowercase().contains("expired"), "{log}");
}

#[test]
fn bad_client_certificate_or_key_fails_at_start_naming_the_file() {
    let dir = TempDir::new("tls-badfiles");
    let ca = TestCa::new(&dir.0, "good");
    let expired = ca.client_with("old", "old", Validity::Expired);
    let fine = ca.client("fine", "fine");
    let other = ca.client("other", "other");
    let garbage = dir.0.join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let missing = dir.0.join("missing.key");
    let tls = |cert: &Path, key: &Path| {
        upstream(
            8883,
            &format!(
                "    tls:\n      ca_file: {}\n      cert_file: {}\n      key_file: {}\n",
                ca.cert_file.display(),
                cert.display(),
                key.display()
            ),
        )
    };
    let cases: Vec<(String, &Path, &str, &str)> = vec![
        (
            tls(&expired.cert_file, &expired.key_file),
            &expired.cert_file,
            "broker.upstream.tls.cert_file",
            "expired",
        ),
        (
            tls(&fine.cert_file, &missing),
            &missing,
            "broker.upstream.tls.key_file",
            "cannot read",
        ),
        (
            tls(&fine.cert_file, &other.key_file),
            &other.key_file,
            "broker.upstream.tls.key_file",
            "",
        ),
        (
            tls(&garbage, &fine.key_file),
            &garbage,
            "broker.upstream.tls.cert_file",
            "no certificate",
        ),
        (
            format!(
                "{}    tls: {{}}\ndevices:\n  - client_id: d\n    cert_file: {}\n    key_file: {}\n",
                upstream(8883, ""),
                expired.cert_file.display(),
                expired.key_file.display()
            ),
            &expired.cert_file,
            "devices[0].cert_file",
            "expired",
        ),
        (
            upstream(
                8883,
                &format!("    tls:\n      ca_file: {}\n", garbage.display()),
            ),
            &garbage,
            "broker.upstream.tls.ca_file",
            "no certificate",
        ),
    ];
    for (yaml, file, key, reason) in cases {
        let (code, stderr) = run_to_exit(&dir.0, &yaml);
        assert_ne!(code, Some(0), "{yaml}\n{stderr}");
        assert!(
            stderr.contains(key) && stderr.contains(&file.display().to_string()),
            "{key} / {}: {stderr}",
            file.display()
        );
        assert!(stderr.contains(reason), "{reason}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_near_expiry_is_warned_at_start() {
    let dir = TempDir::new("tls-nearexpiry");
    let ca = TestCa::new(&dir.0, "good");
    let soon = ca.client_with("soon", "soon", Validity::EndsInDays(10));
    let gw = Gw::start(
        &dir.0,
        &format!(
            "{}    tls:\n      ca_file: {}\ndevices:\n  - client_id: soon\n    cert_file: {}\n    key_file: {}\n",
            upstream(free_tcp_port(), ""),
            ca.cert_file.display(),
            soon.cert_file.display(),
            soon.key_file.display()
        ),
        &[],
    );
    let log = gw.log();
    let warned: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("expires within 30 days"))
        .collect();
    assert_eq!(warned.len(), 1, "{log}");
    assert!(
        warned[0].contains("WARN") && warned[0].contains(&soon.cert_file.display().to_string()),
        "{log}"
    );
}

/// `mosquitto_passwd -c -b` (then `-b`) for each (user, password); None when it is missing.
fn password_file(dir: &Path, users: &[(&str, &str)]) -> Option<PathBuf> {
    let file = dir.join("passwd");
    for (i, (user, password)) in users.iter().enumerate() {
        let mut cmd = Command::new("mosquitto_passwd");
        if i == 0 {
            cmd.arg("-c");
        }
        let status = cmd
            .arg("-b")
            .arg(&file)
            .args([user, password])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        match status {
            Ok(s) if s.success() => {}
            _ => {
                if std::env::var_os("CI").is_some() {
                    panic!("mosquitto_passwd failed or is missing but CI is set");
                }
                eprintln!("\n!!!!! SKIPPED: mosquitto_passwd is not installed !!!!!\n");
                return None;
            }
        }
    }
    Some(file)
}

/// A broker whose first listener wants a user from `users` and lets each only `dev/<user>/#`.
fn password_broker(users: &'static [(&'static str, &'static str)]) -> Option<Broker> {
    let ok = std::sync::atomic::AtomicBool::new(true);
    let broker = Broker::start(|dir| {
        let Some(file) = password_file(dir, users) else {
            ok.store(false, std::sync::atomic::Ordering::Relaxed);
            return String::new();
        };
        let acl = dir.join("acl");
        std::fs::write(&acl, "pattern readwrite dev/%u/#\n").unwrap();
        format!(
            "per_listener_settings true\nallow_anonymous false\npassword_file {}\nacl_file {}\n",
            file.display(),
            acl.display()
        )
    })?;
    ok.load(std::sync::atomic::Ordering::Relaxed)
        .then_some(broker)
}

const USERS: &[(&str, &str)] = &[
    ("sensor-a", "shared-Secret-1"),
    ("sensor-b", "shared-Secret-1"),
    ("filed", "file-Secret-2"),
    ("bad-dev", "right-Secret-3"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_gets_not_supported_and_right_ones_work() {
    let Some(broker) = password_broker(USERS) else {
        return;
    };
    let dir = TempDir::new("creds");
    let pw_file = dir.0.join("filed.pw");
    std::fs::write(&pw_file, "file-Secret-2\n").unwrap();
    let gw = Gw::start(
        &dir.0,
        &format!(
            "{}devices:\n  - client_id: bad-dev\n    username: bad-dev\n    password: wrong-one\n  \
             - client_id: filed\n    username: filed\n    password_file: {}\n",
            upstream(
                broker.mosq.port,
                "    username: '{client_id}'\n    password_env: GW_TEST_UPSTREAM_PW\n"
            ),
            pw_file.display()
        ),
        &[("GW_TEST_UPSTREAM_PW", "shared-Secret-1")],
    );
    let bad = SnClient::new(gw.udp).await;
    assert_eq!(sn_connect(&bad, "bad-dev").await, ReturnCode::NotSupported);
    let log = gw.log();
    let refused: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("broker refused") && l.contains("bad-dev"))
        .collect();
    assert_eq!(refused.len(), 1, "{log}");
    assert!(
        refused[0].contains("INFO") && refused[0].contains("NotAuthorized"),
        "{log}"
    );

    let mut check = checker(&broker, "dev/#").await;
    // Right password from password_file (the entry's own).
    let filed = SnClient::new(gw.udp).await;
    assert_eq!(sn_connect(&filed, "filed").await, ReturnCode::Accepted);
    publish_qos1(&filed, "dev/filed/t", 1, b"from file").await;
    let p = check.next_publish(WAIT).await.expect("filed's message");
    assert_eq!(&p.payload[..], b"from file");

    // The global template user name with the password from password_env; the ACL lets each
    // user only its own topics.
    let a = SnClient::new(gw.udp).await;
    assert_eq!(sn_connect(&a, "sensor-a").await, ReturnCode::Accepted);
    publish_qos1(&a, "dev/sensor-b/t", 1, b"not mine").await;
    publish_qos1(&a, "dev/sensor-a/t", 3, b"mine").await;
    let p = check.next_publish(WAIT).await.expect("sensor-a's message");
    assert_eq!(
        (p.topic.as_str(), &p.payload[..]),
        ("dev/sensor-a/t", &b"mine"[..]),
        "the ACL dropped the other user's topic"
    );
    let b = SnClient::new(gw.udp).await;
    assert_eq!(sn_connect(&b, "sensor-b").await, ReturnCode::Accepted);
    publish_qos1(&b, "dev/sensor-b/t", 1, b"b's").await;
    let p = check.next_publish(WAIT).await.expect("sensor-b's message");
    assert_eq!(p.topic, "dev/sensor-b/t");
    assert!(check
        .next_publish(Duration::from_millis(300))
        .await
        .is_none());
}

/// At the most verbose level, with TLS and every password source, the log holds no secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_appear_in_the_log() {
    let Some(broker) = password_broker(USERS) else {
        return;
    };
    let dir = TempDir::new("creds-log");
    let ca = TestCa::new(&dir.0, "good");
    let client = ca.client("gwcert", "gw");
    let pw_file = dir.0.join("filed.pw");
    std::fs::write(&pw_file, "file-Secret-2\n").unwrap();
    // TLS to a plain listener fails the handshake; the password sessions go to the password
    // listener through a second gateway run below.
    let gw = Gw::start_at(
        &dir.0,
        "trace",
        &format!(
            "{}devices:\n  - client_id: bad-dev\n    username: bad-dev\n    password: right-Secret-3\n  \
             - client_id: filed\n    username: filed\n    password_file: {}\n",
            upstream(
                broker.mosq.port,
                "    username: '{client_id}'\n    password_env: GW_TEST_UPSTREAM_PW\n"
            ),
            pw_file.display()
        ),
        &[("GW_TEST_UPSTREAM_PW", "shared-Secret-1")],
    );
    for id in ["bad-dev", "filed", "sensor-a"] {
        let dev = SnClient::new(gw.udp).await;
        assert_eq!(sn_connect(&dev, id).await, ReturnCode::Accepted, "{id}");
        publish_qos1(&dev, &format!("dev/{id}/t"), 1, b"x").await;
    }
    let log = gw.log();
    drop(gw);
    let dir2 = TempDir::new("creds-log-tls");
    let tls = Gw::start_at(
        &dir2.0,
        "trace",
        &upstream(
            broker.mosq.port,
            &format!(
                "    username: u\n    password: inline-Secret-4\n    tls:\n      ca_file: {}\n      \
                 cert_file: {}\n      key_file: {}\n",
                ca.cert_file.display(),
                client.cert_file.display(),
                client.key_file.display()
            ),
        ),
        &[],
    );
    let dev = SnClient::new(tls.udp).await;
    assert_eq!(sn_connect(&dev, "t").await, ReturnCode::Congestion);
    let log = log + &tls.log();
    assert!(log.contains("TRACE") || log.contains("DEBUG"), "{log}");
    for secret in [
        "shared-Secret-1",
        "file-Secret-2",
        "right-Secret-3",
        "inline-Secret-4",
    ] {
        assert!(!log.contains(secret), "{secret} in the log:\n{log}");
    }
    let key = std::fs::read_to_string(&client.key_file).unwrap();
    for line in key.lines().filter(|l| !l.starts_with("-----")) {
        assert!(!log.contains(line), "key material in the log");
    }
}
