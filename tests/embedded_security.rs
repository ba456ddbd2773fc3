//! The embedded broker locked down for a LAN (issue 12 item 7): a TLS listener with
//! certificates made by `TestCa`, users from a file the real `mosquitto_passwd` wrote, a
//! mosquitto-format ACL file, checked with the real `mosquitto_sub`/`mosquitto_pub` and an
//! MQTT-SN device through the gateway. Every port is free; each test has its own directory.
//!
//! Skipped loudly without mosquitto_sub, mosquitto_pub or mosquitto_passwd, or in a build
//! without the embedded broker; under CI (env CI set) a missing tool fails the test.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::*;
use mqttsn_gateway::codec::{self, Message, QoS, ReturnCode, TopicFilter, TopicRef};
use mqttsn_gateway::config::{BrokerMode, Config, EmbeddedTls};
use mqttsn_gateway::mqtt;
use mqttsn_gateway::shell;

const HA_PASS: &str = "ha pass 1";
const READER_PASS: &str = "r3ader";

const ACL: &str = "\
# anonymous: nothing
user homeassistant
topic read sensors/+/temp
topic readwrite homeassistant/#
topic deny homeassistant/secret/#

user reader
topic read public/#
";

fn have(tool: &str) -> bool {
    have_tool(tool, "mosquitto mosquitto-clients")
}

macro_rules! tools_or_skip {
    () => {
        if !mqttsn_gateway::broker::BUILT_IN {
            eprintln!("\n!!!!! SKIPPED: built without the embedded-broker feature !!!!!\n");
            return;
        }
        if !have("mosquitto_sub") || !have("mosquitto_pub") || !have("mosquitto_passwd") {
            return;
        }
    };
}

/// Runs `mosquitto_passwd` with `args`, which must succeed.
fn mosquitto_passwd(args: &[&str]) {
    let out = Command::new("mosquitto_passwd")
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "mosquitto_passwd {args:?}: {out:?}");
}

/// A users file with `homeassistant` and `reader`, written by the real `mosquitto_passwd`.
fn users_file(dir: &Path) -> PathBuf {
    let path = dir.join("users");
    let p = path.to_str().unwrap();
    mosquitto_passwd(&["-c", "-b", p, "homeassistant", HA_PASS]);
    // An old-style `$6$` hash as well.
    mosquitto_passwd(&["-H", "sha512", "-b", p, "reader", READER_PASS]);
    path
}

struct Setup {
    config: Config,
    ca: TestCa,
    tls_port: u16,
}

/// The gateway in embedded mode: plain listener on a free loopback port, TLS on another free
/// port, users and ACL files.
fn setup(dir: &Path) -> Setup {
    let ca = TestCa::new(dir, "embsec");
    let server = ca.server("broker");
    let acl = dir.join("acl");
    std::fs::write(&acl, ACL).unwrap();
    let tls_port = free_tcp_port();
    let mut config = test_config(1);
    config.broker.mode = BrokerMode::Embedded;
    let e = &mut config.broker.embedded;
    e.bind = "127.0.0.1:0".parse().unwrap();
    e.data_dir = dir.join("broker");
    e.users_file = Some(users_file(dir));
    e.acl_file = Some(acl);
    e.tls = Some(EmbeddedTls {
        bind: SocketAddr::from(([127, 0, 0, 1], tls_port)),
        cert_file: server.cert_file,
        key_file: server.key_file,
        ca_file: None,
        require_certificate: false,
        max_connections: 10,
    });
    Setup {
        config,
        ca,
        tls_port,
    }
}

/// `mosquitto_sub` over TLS to `port`, waiting up to 5 s for one message on `filter`.
fn tls_sub(
    port: u16,
    ca: &Path,
    login: Option<(&str, &str)>,
    filter: &str,
    extra: &[&str],
) -> Output {
    let mut cmd = Command::new("mosquitto_sub");
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .arg("--cafile")
        .arg(ca)
        .args(["-t", filter, "-C", "1", "-W", "5", "-F", "%t %p"])
        .args(extra);
    if let Some((u, p)) = login {
        cmd.args(["-u", u, "-P", p]);
    }
    cmd.output().unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}, stdout `{}`, stderr `{}`",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

/// A device that publishes `payload` retained at QoS 1 to `topic` through the gateway.
async fn device_publishes(
    gw: SocketAddr,
    client_id: &str,
    topic: &str,
    payload: &[u8],
) -> SnClient {
    let dev = SnClient::new(gw).await;
    dev.connect(client_id, true, 60).await;
    let tid = dev.register(topic, 1).await;
    dev.publish(TopicRef::Id(tid), QoS::AtLeastOnce, true, 2, payload)
        .await;
    assert!(
        matches!(dev.recv().await, Message::Puback(p) if p.return_code == ReturnCode::Accepted),
        "the device's PUBLISH to {topic} was not accepted"
    );
    dev
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_subscriber_with_a_users_file_password_gets_a_device_message() {
    tools_or_skip!();
    let dir = TempDir::new("embsec-tls");
    let s = setup(&dir.0);
    let (gw, gw_addr) = start_gateway(&s.config).await;
    // The device is not hindered by the ACL (no rule names the gateway's sessions).
    let _dev = device_publishes(gw_addr, "radio-1", "sensors/radio-1/temp", b"21.5").await;

    let ca = &s.ca.cert_file;
    let ok = tls_sub(
        s.tls_port,
        ca,
        Some(("homeassistant", HA_PASS)),
        "sensors/+/temp",
        &[],
    );
    assert_eq!(
        String::from_utf8_lossy(&ok.stdout).trim(),
        "sensors/radio-1/temp 21.5",
        "{}",
        text(&ok)
    );

    // A wrong password, an unknown user and no login at all are refused at CONNECT.
    for login in [
        Some(("homeassistant", "wrong")),
        Some(("nobody", HA_PASS)),
        Some(("reader", HA_PASS)),
        None,
    ] {
        let out = tls_sub(s.tls_port, ca, login, "sensors/+/temp", &[]);
        assert!(!out.status.success(), "{login:?} got in: {}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
        assert!(
            err.contains("bad user name or password") || err.contains("not authori"),
            "{login:?}: {}",
            text(&out)
        );
    }
    // The `$6$` user logs in (and may read only public/#: its subscription here is refused).
    let out = tls_sub(
        s.tls_port,
        ca,
        Some(("reader", READER_PASS)),
        "sensors/+/temp",
        &[],
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("denied"),
        "{}",
        text(&out)
    );
    // The gateway's own user name is of no use from outside, on either listener.
    let out = tls_sub(
        s.tls_port,
        ca,
        Some((mqttsn_gateway::broker::GATEWAY_USER, "guess")),
        "#",
        &[],
    );
    assert!(!out.status.success(), "{}", text(&out));
    let plain = gw.broker_addr().unwrap();
    let (_c, code) = MqttClient::try_connect(
        plain,
        "intruder",
        true,
        Some((mqttsn_gateway::broker::GATEWAY_USER, "guess")),
    )
    .await;
    assert_eq!(code, mqtt::ConnectReturnCode::BadUserNameOrPassword);
    gw.shutdown().await;
}

/// SUBSCRIBE of `filter` at QoS 1; the SUBACK's code.
async fn suback(c: &mut MqttClient, packet_id: u16, filter: &str) -> mqtt::SubackCode {
    c.send(mqtt::Packet::Subscribe {
        packet_id,
        filters: vec![(filter.into(), mqtt::QoS::AtLeastOnce)],
    })
    .await;
    loop {
        if let mqtt::Packet::SubAck {
            packet_id: id,
            codes,
        } = c.recv().await
        {
            assert_eq!(id, packet_id);
            return codes[0];
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_allows_and_denies_subscribe_and_publish() {
    tools_or_skip!();
    let dir = TempDir::new("embsec-acl");
    let s = setup(&dir.0);
    let (gw, gw_addr) = start_gateway(&s.config).await;
    let plain = gw.broker_addr().unwrap();

    // A device subscribes to everything Home Assistant may or may not write.
    let dev = SnClient::new(gw_addr).await;
    dev.connect("radio-2", true, 60).await;
    let sub = dev
        .subscribe(
            TopicFilter::Name("homeassistant/#".into()),
            QoS::AtLeastOnce,
            1,
        )
        .await;
    assert_eq!(sub.return_code, ReturnCode::Accepted);

    let mut ha =
        MqttClient::connect_with(plain, "ha", true, Some(("homeassistant", HA_PASS))).await;
    let granted = mqtt::SubackCode::Granted(mqtt::QoS::AtLeastOnce);
    assert_eq!(suback(&mut ha, 1, "homeassistant/light/#").await, granted);
    assert_eq!(suback(&mut ha, 2, "sensors/kitchen/temp").await, granted);
    // Not covered by a read rule, or overlapping a deny rule: SUBACK 0x80.
    assert_eq!(
        suback(&mut ha, 3, "sensors/#").await,
        mqtt::SubackCode::Failure
    );
    assert_eq!(
        suback(&mut ha, 4, "homeassistant/secret/key").await,
        mqtt::SubackCode::Failure
    );
    assert_eq!(
        suback(&mut ha, 5, "homeassistant/#").await,
        mqtt::SubackCode::Failure
    );

    // A denied QoS 1 PUBLISH is still acknowledged (MqttClient::publish waits for the PUBACK)
    // but never delivered; the allowed one that follows is.
    ha.publish(
        "homeassistant/secret/x",
        b"no",
        mqtt::QoS::AtLeastOnce,
        false,
    )
    .await;
    ha.publish(
        "homeassistant/light/set",
        b"on",
        mqtt::QoS::AtLeastOnce,
        false,
    )
    .await;
    let p = loop {
        match dev.recv().await {
            // The device does not know the topic yet: the gateway registers it first.
            Message::Register(r) => {
                assert_eq!(r.topic_name, "homeassistant/light/set", "{r:?}");
                dev.send(Message::Regack(codec::Regack {
                    topic_id: r.topic_id,
                    msg_id: r.msg_id,
                    return_code: ReturnCode::Accepted,
                }))
                .await;
            }
            Message::Publish(p) => break p,
            other => panic!("expected REGISTER or PUBLISH, got {other:?}"),
        }
    };
    assert_eq!(&p.data[..], b"on");
    let TopicRef::Id(topic_id) = p.topic else {
        panic!("expected a topic id, got {:?}", p.topic)
    };
    dev.send(Message::Puback(codec::Puback {
        topic_id,
        msg_id: p.msg_id,
        return_code: ReturnCode::Accepted,
    }))
    .await;

    // The same over TLS with the stock tools: a denied publish (mosquitto_pub succeeds, the
    // message is dropped), and a denied subscription.
    let ca = s.ca.cert_file.to_str().unwrap();
    let port = s.tls_port.to_string();
    let out = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port, "--cafile", ca])
        .args(["-u", "homeassistant", "-P", HA_PASS, "-q", "1"])
        .args(["-t", "sensors/kitchen/temp", "-m", "forged", "-r"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let out = tls_sub(
        s.tls_port,
        &s.ca.cert_file,
        Some(("homeassistant", HA_PASS)),
        "homeassistant/secret/#",
        &[],
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("denied"),
        "{}",
        text(&out)
    );
    // Nothing reached the device from the forged or denied publishes.
    assert!(dev.try_recv(Duration::from_millis(300)).await.is_none());
    // And the forged sensor value reached no reader either.
    let mut reader =
        MqttClient::connect_with(plain, "ha-2", true, Some(("homeassistant", HA_PASS))).await;
    assert_eq!(suback(&mut reader, 1, "sensors/+/temp").await, granted);
    assert!(reader
        .next_publish(Duration::from_millis(300))
        .await
        .is_none());
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_certificate_refuses_a_client_without_one() {
    tools_or_skip!();
    let dir = TempDir::new("embsec-mtls");
    let mut s = setup(&dir.0);
    let tls = s.config.broker.embedded.tls.as_mut().unwrap();
    tls.ca_file = Some(s.ca.cert_file.clone());
    tls.require_certificate = true;
    let (gw, gw_addr) = start_gateway(&s.config).await;
    let _dev = device_publishes(gw_addr, "radio-3", "sensors/radio-3/temp", b"19").await;

    let login = Some(("homeassistant", HA_PASS));
    let out = tls_sub(s.tls_port, &s.ca.cert_file, login, "sensors/+/temp", &[]);
    assert!(
        !out.status.success(),
        "got in without a certificate: {}",
        text(&out)
    );

    // A certificate from another CA is refused too.
    let other = TestCa::new(&dir.0, "other");
    let stranger = other.client("stranger", "homeassistant");
    let out = tls_sub(
        s.tls_port,
        &s.ca.cert_file,
        login,
        "sensors/+/temp",
        &[
            "--cert",
            stranger.cert_file.to_str().unwrap(),
            "--key",
            stranger.key_file.to_str().unwrap(),
        ],
    );
    assert!(
        !out.status.success(),
        "got in with a stranger's certificate: {}",
        text(&out)
    );

    let client = s.ca.client("ha-client", "homeassistant");
    let out = tls_sub(
        s.tls_port,
        &s.ca.cert_file,
        login,
        "sensors/+/temp",
        &[
            "--cert",
            client.cert_file.to_str().unwrap(),
            "--key",
            client.key_file.to_str().unwrap(),
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "sensors/radio-3/temp 19",
        "{}",
        text(&out)
    );
    gw.shutdown().await;
}

/// The start-up error for `config`, rendered.
async fn start_error(config: &Config) -> String {
    match shell::start(config).await {
        Ok(running) => {
            running.shutdown().await;
            panic!("the gateway started")
        }
        Err(e) => e.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_files_fail_at_start_naming_key_file_and_reason() {
    tools_or_skip!();
    let dir = TempDir::new("embsec-bad");
    let s = setup(&dir.0);
    let d = &dir.0;

    // A certificate file that is not PEM.
    let junk = d.join("junk.pem");
    std::fs::write(&junk, "not a certificate\n").unwrap();
    let mut c = s.config.clone();
    c.broker.embedded.tls.as_mut().unwrap().cert_file = junk.clone();
    let e = start_error(&c).await;
    assert!(e.contains("broker.embedded.tls.cert_file"), "{e}");
    assert!(e.contains(junk.to_str().unwrap()), "{e}");
    assert!(e.contains("BEGIN CERTIFICATE"), "{e}");

    // A certificate file that does not exist.
    let mut c = s.config.clone();
    let missing = d.join("missing.pem");
    c.broker.embedded.tls.as_mut().unwrap().cert_file = missing.clone();
    let e = start_error(&c).await;
    assert!(e.contains("broker.embedded.tls.cert_file"), "{e}");
    assert!(
        e.contains(missing.to_str().unwrap()) && e.contains("cannot read"),
        "{e}"
    );

    // A key that belongs to another certificate.
    let other = s.ca.server("other");
    let mut c = s.config.clone();
    let key_file = other.key_file.clone();
    c.broker.embedded.tls.as_mut().unwrap().key_file = key_file.clone();
    let e = start_error(&c).await;
    assert!(e.contains("broker.embedded.tls.key_file"), "{e}");
    assert!(e.contains(key_file.to_str().unwrap()), "{e}");
    assert!(e.contains("does not belong"), "{e}");

    // A key file with no key in it.
    let mut c = s.config.clone();
    c.broker.embedded.tls.as_mut().unwrap().key_file = s.ca.cert_file.clone();
    let e = start_error(&c).await;
    assert!(e.contains("broker.embedded.tls.key_file"), "{e}");
    assert!(e.contains("private key"), "{e}");

    // An unreadable CA.
    let mut c = s.config.clone();
    c.broker.embedded.tls.as_mut().unwrap().ca_file = Some(missing.clone());
    let e = start_error(&c).await;
    assert!(e.contains("broker.embedded.tls.ca_file"), "{e}");
    assert!(e.contains(missing.to_str().unwrap()), "{e}");

    // A users file with a plain-text line after mosquitto_passwd's.
    let users = c.broker.embedded.users_file.clone().unwrap();
    let mut text = std::fs::read_to_string(&users).unwrap();
    text.push_str("mallory:hunter2\n");
    let bad_users = d.join("users-bad");
    std::fs::write(&bad_users, text).unwrap();
    let mut c = s.config.clone();
    c.broker.embedded.users_file = Some(bad_users.clone());
    let e = start_error(&c).await;
    assert!(e.contains("broker.embedded.users_file"), "{e}");
    assert!(
        e.contains(&format!("{}` line 3", bad_users.display())),
        "{e}"
    );
    assert!(e.contains("plain-text") && !e.contains("hunter2"), "{e}");

    // An ACL file with a bad line.
    let bad_acl = d.join("acl-bad");
    std::fs::write(&bad_acl, "user homeassistant\ntopic read a/#/b\n").unwrap();
    let mut c = s.config.clone();
    c.broker.embedded.acl_file = Some(bad_acl.clone());
    let e = start_error(&c).await;
    assert!(e.contains("broker.embedded.acl_file"), "{e}");
    assert!(e.contains(&format!("{}` line 2", bad_acl.display())), "{e}");

    // The gateway binary says the same and exits non-zero.
    let mut c = s.config.clone();
    c.broker.embedded.tls.as_mut().unwrap().cert_file = junk.clone();
    let yaml = d.join("gateway.yaml");
    std::fs::write(&yaml, c.to_yaml()).unwrap();
    let out = Command::new(GATEWAY_BIN)
        .args(["run", "-c"])
        .arg(&yaml)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("broker.embedded.tls.cert_file") && err.contains(junk.to_str().unwrap()),
        "{err}"
    );
}
