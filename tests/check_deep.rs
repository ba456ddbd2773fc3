//! `check --deep` (issue 13 item 5): the binary tries what a start would do and reports one
//! line per step; exit 0 only when every step passed.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn check_deep(dir: &Path, yaml: &str) -> (bool, String) {
    let file = dir.join("gateway.yaml");
    std::fs::write(&file, yaml).unwrap();
    let out = Command::new(GATEWAY_BIN)
        .args(["check", "--deep", "-c"])
        .arg(&file)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn upstream_yaml(dir: &Path, port: u16, extra: &str) -> String {
    format!(
        "transports:\n  udp:\n    - bind: 127.0.0.1:0\n\
         broker:\n  mode: upstream\n  upstream:\n    host: localhost\n    port: {port}\n    connect_timeout: 3s\n{extra}\
         store:\n  path: {}\n\
         http:\n  bind: null\n",
        dir.join("data/gateway.db").display()
    )
}

#[test]
fn a_taken_udp_port_and_an_unreachable_broker_fail_by_name() {
    let dir = TempDir::new("deep-fail");
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let closed = free_tcp_port();
    let yaml = upstream_yaml(&dir.0, closed, "")
        .replace("- bind: 127.0.0.1:0", &format!("- bind: 127.0.0.1:{port}"));
    let (ok, text) = check_deep(&dir.0, &yaml);
    assert!(!ok, "{text}");
    assert!(
        text.contains(&format!("FAIL transports.udp[0] 127.0.0.1:{port}")),
        "{text}"
    );
    assert!(
        text.contains("FAIL broker.upstream localhost:") && text.contains("TCP connect"),
        "{text}"
    );
    assert!(text.contains("ok   store.path"), "{text}");
    assert!(text.contains("some checks failed"), "{text}");
}

#[test]
fn a_reachable_broker_accepts_the_connect() {
    let Some(mosquitto) = Mosquitto::start() else {
        return;
    };
    let dir = TempDir::new("deep-ok");
    let (ok, text) = check_deep(&dir.0, &upstream_yaml(&dir.0, mosquitto.port, ""));
    assert!(ok, "{text}");
    assert!(
        text.contains("ok   broker.upstream localhost:") && text.contains("MQTT CONNECT accepted"),
        "{text}"
    );
    assert!(text.contains("all checks passed"), "{text}");
}

#[test]
fn tls_handshake_and_login_are_tried() {
    let dir = TempDir::new("deep-tls");
    let ca = TestCa::new(&dir.0, "right");
    let other = TestCa::new(&dir.0, "other");
    let server = ca.server("server");
    let (cafile, cert, key) = (
        ca.cert_file.clone(),
        server.cert_file.clone(),
        server.key_file.clone(),
    );
    if !have_tool("mosquitto_passwd", "mosquitto") {
        return;
    }
    let users = dir.0.join("passwd");
    let made = Command::new("mosquitto_passwd")
        .args(["-c", "-b"])
        .arg(&users)
        .args(["gw", "secret"])
        .status()
        .unwrap();
    assert!(made.success(), "mosquitto_passwd");
    let users_file = users.clone();
    let Some(mosquitto) = Mosquitto::start_configured(move |_| {
        format!(
            "cafile {}\ncertfile {}\nkeyfile {}\npassword_file {}\n",
            cafile.display(),
            cert.display(),
            key.display(),
            users_file.display()
        )
    }) else {
        return;
    };
    let tls = |ca: &Path, password: &str| {
        format!(
            "    username: gw\n    password: {password}\n    tls:\n      ca_file: {}\n",
            ca.display()
        )
    };
    // The right CA and password: handshake and CONNECT pass.
    let (ok, text) = check_deep(
        &dir.0,
        &upstream_yaml(&dir.0, mosquitto.port, &tls(&ca.cert_file, "secret")),
    );
    assert!(ok, "{text}");
    assert!(text.contains("TLS handshake done"), "{text}");
    // Another CA: the handshake fails, named as such.
    let (ok, text) = check_deep(
        &dir.0,
        &upstream_yaml(&dir.0, mosquitto.port, &tls(&other.cert_file, "secret")),
    );
    assert!(!ok && text.contains("TLS handshake"), "{text}");
    // A wrong password: the broker's refusal, named.
    let (ok, text) = check_deep(
        &dir.0,
        &upstream_yaml(&dir.0, mosquitto.port, &tls(&ca.cert_file, "wrong")),
    );
    assert!(!ok && text.contains("refused the CONNECT"), "{text}");
    assert!(
        !text.contains("wrong"),
        "the password is never printed: {text}"
    );
}

#[test]
fn each_source_address_is_bound_and_the_connect_comes_from_the_first() {
    let Some(mosquitto) = Mosquitto::start() else {
        return;
    };
    let dir = TempDir::new("deep-source");
    let sources = "    source_addresses: [127.0.0.2, 127.0.0.3]\n";
    let (ok, text) = check_deep(&dir.0, &upstream_yaml(&dir.0, mosquitto.port, sources));
    assert!(ok, "{text}");
    assert!(
        text.contains("ok   broker.upstream.source_addresses[0] 127.0.0.2: can bind")
            && text.contains("ok   broker.upstream.source_addresses[1] 127.0.0.3: can bind")
            && text.contains("MQTT CONNECT accepted"),
        "{text}"
    );
    // TEST-NET-1 (RFC 5737) is no address of this machine.
    let sources = "    source_addresses: [127.0.0.2, 192.0.2.1]\n";
    let (ok, text) = check_deep(&dir.0, &upstream_yaml(&dir.0, mosquitto.port, sources));
    assert!(!ok, "{text}");
    assert!(
        text.contains("FAIL broker.upstream.source_addresses[1] 192.0.2.1:")
            && text.contains("is it an address of this machine"),
        "{text}"
    );
}
