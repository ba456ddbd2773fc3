//! `broker.upstream.source_addresses` over real sockets: the broker sees each session come
//! from the address it was given, and several addresses carry more sessions to one broker
//! than the ephemeral port range allows one address.
//!
//! The limit is shown at a small scale inside a private network namespace (the test
//! re-executes its own binary under `unshare -n`, like tests/discovery.rs): there
//! `net.ipv4.ip_local_port_range` (per namespace) is narrowed to [`PORTS`] ports, so one source
//! address reaches one broker with at most that many connections. The UDP sockets of the
//! gateway and of the devices are bound before the range is narrowed (UDP draws from the same
//! range). Without root, `unshare` or `ip` that test passes with a loud "SKIPPED".

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use mqttsn_gateway::codec::{self, Message, ReturnCode};
use mqttsn_gateway::config::{Config, ConfigError};

mod common;
use common::*;

/// Set in the child that runs inside the namespace.
const CHILD: &str = "MQTTSN_SOURCE_ADDRESSES_NETNS_CHILD";
const TEST: &str = "several_source_addresses_go_past_the_port_range_of_one";
/// The narrowed ephemeral port range inside the namespace.
const PORT_LOW: u16 = 40000;
const PORTS: usize = 60;
/// Devices that connect at once in each scenario: more than [`PORTS`], fewer than 3x.
const DEVICES: usize = 150;

/// mosquitto with its connection messages in its log (`New client connected from A:P`).
fn broker() -> Option<Mosquitto> {
    Mosquitto::start_configured(|_| "allow_anonymous true\nconnection_messages true".into())
}

/// A gateway config toward `port`, trusting every device from 127.0.0.1 (the per-source
/// bounds opened up), the status page off.
fn config(port: u16, sources: &[&str]) -> Config {
    let mut c = test_config(port);
    c.http.bind = None;
    c.limits.max_devices = 1000;
    let s = &mut c.limits.per_source;
    s.devices_per_address = 1000;
    s.devices_per_subnet = 1000;
    s.pending_per_address = 1000;
    s.pending_per_subnet = 1000;
    s.connects_per_second = 100_000;
    s.connect_burst = 1000;
    c.broker.upstream.source_addresses = sources.iter().map(|a| a.parse().unwrap()).collect();
    c
}

/// CONNECT from each device at once; the CONNACK code each got (`None`: no CONNACK).
async fn connect_all(devices: Vec<SnClient>, tag: &str) -> Vec<Option<ReturnCode>> {
    let mut tasks = Vec::new();
    for (i, d) in devices.into_iter().enumerate() {
        let id = format!("{tag}-{i}");
        tasks.push(tokio::spawn(async move {
            d.send(Message::Connect(codec::Connect {
                will: false,
                clean_session: true,
                protocol_id: codec::PROTOCOL_ID_V1_2,
                duration: 600,
                client_id: id,
            }))
            .await;
            let code = loop {
                match d.try_recv(Duration::from_secs(10)).await {
                    Some(Message::Connack { return_code }) => break Some(return_code),
                    Some(_) => continue,
                    None => break None,
                }
            };
            // Keep the socket (and so the device's address) until every device has answered.
            (d, code)
        }));
    }
    let mut out = Vec::new();
    let mut keep = Vec::new();
    for t in tasks {
        let (d, code) = t.await.unwrap();
        keep.push(d);
        out.push(code);
    }
    out
}

/// Established TCP connections to `port` per local address, from `ss` in this namespace.
fn connections_to(port: u16) -> BTreeMap<IpAddr, usize> {
    let out = Command::new("ss")
        .args(["-Htn", "state", "established"])
        .output()
        .expect("run ss");
    let mut per = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // Recv-Q Send-Q Local:Port Peer:Port (no State column with `state`).
        let cols: Vec<&str> = line.split_whitespace().collect();
        let (Some(local), Some(peer)) = (cols.get(2), cols.get(3)) else {
            continue;
        };
        let (Ok(local), Ok(peer)) = (local.parse::<SocketAddr>(), peer.parse::<SocketAddr>())
        else {
            continue;
        };
        if peer.port() == port {
            *per.entry(local.ip()).or_insert(0) += 1;
        }
    }
    per
}

fn tally(codes: &[Option<ReturnCode>]) -> (usize, usize, usize) {
    let accepted = codes
        .iter()
        .filter(|c| **c == Some(ReturnCode::Accepted))
        .count();
    let congestion = codes
        .iter()
        .filter(|c| **c == Some(ReturnCode::Congestion))
        .count();
    (accepted, congestion, codes.len() - accepted - congestion)
}

#[tokio::test]
async fn the_broker_sees_the_configured_source_address() {
    let Some(mosq) = broker() else { return };
    let (gw, addr) = start_gateway(&config(mosq.port, &["127.0.0.2"])).await;
    let d = SnClient::new(addr).await;
    d.connect("from-127-0-0-2", true, 60).await;
    let deadline = std::time::Instant::now() + WAIT;
    while !mosq.log().contains("New client connected from 127.0.0.2:") {
        assert!(
            std::time::Instant::now() < deadline,
            "mosquitto did not see 127.0.0.2:\n{}",
            mosq.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !mosq.log().contains("New client connected from 127.0.0.1:"),
        "every session comes from 127.0.0.2:\n{}",
        mosq.log()
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn an_address_that_is_not_local_fails_the_session_with_congestion() {
    let Some(mosq) = broker() else { return };
    // TEST-NET-1 (RFC 5737) is no address of this machine: the bind fails, the device hears
    // congestion, and the gateway keeps running.
    let (gw, addr) = start_gateway(&config(mosq.port, &["192.0.2.1"])).await;
    let d = SnClient::new(addr).await;
    let codes = connect_all(vec![d], "foreign").await;
    assert_eq!(codes, [Some(ReturnCode::Congestion)]);
    gw.shutdown().await;
}

#[test]
fn several_source_addresses_go_past_the_port_range_of_one() {
    if in_private_netns(CHILD) {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(inside_namespace());
        netns_scenario_passed();
        return;
    }
    if let Some(why) = no_private_netns(&[("ss", &["-V"])]) {
        eprintln!("\n*** SKIPPED: {TEST}: {why} ***\n");
        return;
    }
    if mosquitto_binary().is_none() {
        eprintln!("\n*** SKIPPED: {TEST}: mosquitto is not installed ***\n");
        return;
    }
    run_in_private_netns(TEST, CHILD);
}

async fn inside_namespace() {
    let dev = std::fs::read_to_string("/proc/self/net/dev").expect("read /proc/self/net/dev");
    let interfaces: Vec<&str> = dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next().map(str::trim))
        .collect();
    assert_eq!(interfaces, ["lo"], "not a private network namespace");
    sh("ip link set lo up");

    // Everything that binds a port binds it now, from the full range.
    let one = broker().expect("mosquitto");
    let three = broker().expect("mosquitto");
    let (gw_one, addr_one) = start_gateway(&config(one.port, &[])).await;
    let sources = ["127.0.0.1", "127.0.0.2", "127.0.0.3"];
    let (gw_three, addr_three) = start_gateway(&config(three.port, &sources)).await;
    let mut devices_one = Vec::new();
    let mut devices_three = Vec::new();
    for _ in 0..DEVICES {
        devices_one.push(SnClient::new(addr_one).await);
        devices_three.push(SnClient::new(addr_three).await);
    }
    let high = PORT_LOW + PORTS as u16 - 1;
    sh(&format!(
        "echo '{PORT_LOW} {high}' > /proc/sys/net/ipv4/ip_local_port_range"
    ));
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap();
    println!("ip_local_port_range in the namespace: {}", range.trim());

    // One address (the kernel's pick): only about PORTS sessions reach the broker (the
    // gateway's own status session takes one), the other devices hear congestion.
    let codes = connect_all(devices_one, "one").await;
    let (accepted, congestion, other) = tally(&codes);
    let per = connections_to(one.port);
    println!("one address: {accepted} accepted, {congestion} congestion, {other} other; connections per address {per:?}");
    assert!(
        (PORTS - 10..=PORTS).contains(&accepted),
        "about {PORTS} accepted, got {accepted}"
    );
    assert_eq!((congestion, other), (DEVICES - accepted, 0), "{codes:?}");
    assert_eq!(
        per.keys().collect::<Vec<_>>(),
        [&"127.0.0.1".parse::<IpAddr>().unwrap()]
    );
    gw_one.shutdown().await;

    // Three addresses, round-robin: every device is accepted, about a third from each.
    let codes = connect_all(devices_three, "three").await;
    let (accepted, congestion, other) = tally(&codes);
    let per = connections_to(three.port);
    println!("three addresses: {accepted} accepted, {congestion} congestion, {other} other; connections per address {per:?}");
    assert_eq!(accepted, DEVICES, "{codes:?}");
    assert_eq!(per.len(), 3, "{per:?}");
    for a in sources {
        let a: IpAddr = a.parse().unwrap();
        let n = per.get(&a).copied().unwrap_or(0);
        assert!(
            (DEVICES / 3..=DEVICES / 3 + 1).contains(&n),
            "{a}: {n} connections, expected a third of {} ({per:?})",
            DEVICES + 1
        );
        assert!(
            three
                .log()
                .contains(&format!("New client connected from {a}:")),
            "mosquitto's log names {a}"
        );
    }
    // More sessions than one address could carry went to this one broker.
    assert!(per.values().sum::<usize>() > PORTS);
    gw_three.shutdown().await;
}

fn sh(cmd: &str) {
    let out = Command::new("sh")
        .args(["-c", cmd])
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// The error for `yaml`, checked to be `Invalid`; returns (line, key, rendered text).
fn invalid(yaml: &str) -> (Option<usize>, String, String) {
    match Config::from_yaml_str(yaml, "gateway.yaml").expect_err("should be rejected") {
        err @ ConfigError::Invalid { .. } => {
            let text = err.to_string();
            let ConfigError::Invalid { line, key, .. } = err else {
                unreachable!()
            };
            (line, key, text)
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn upstream_source_addresses() {
    let c = Config::from_yaml_str(
        "broker:\n  upstream:\n    source_addresses: [127.0.0.1, 127.0.0.2, \"127.0.0.3\"]\n",
        "t",
    )
    .unwrap();
    assert_eq!(
        c.broker.upstream.source_addresses,
        ["127.0.0.1", "127.0.0.2", "127.0.0.3"].map(|a| a.parse::<std::net::IpAddr>().unwrap())
    );
    assert!(Config::default()
        .broker
        .upstream
        .source_addresses
        .is_empty());
    let c = Config::from_yaml_str(
        "broker:\n  upstream:\n    host: \"::1\"\n    source_addresses: [\"::1\"]\n",
        "t",
    )
    .unwrap();
    assert_eq!(c.broker.upstream.source_addresses.len(), 1);
    let c =
        Config::from_yaml_str("broker:\n  upstream:\n    source_addresses: null\n", "t").unwrap();
    assert!(c.broker.upstream.source_addresses.is_empty());
    // Survives the round trip through YAML (what `check` prints).
    let c = Config::from_yaml_str(
        "broker:\n  upstream:\n    source_addresses: [127.0.0.2]\n",
        "t",
    )
    .unwrap();
    let again = Config::from_yaml_str(&c.to_yaml(), "t").unwrap();
    assert_eq!(
        again.broker.upstream.source_addresses,
        c.broker.upstream.source_addresses
    );
}

#[test]
fn bad_source_addresses_name_the_entry_and_line() {
    let cases = [
        ("[127.0.0.1, 127.0.0.1:5000]", 1, "is not an IP address"),
        ("[localhost]", 0, "is not an IP address"),
        ("[0.0.0.0]", 0, "cannot be a source address"),
        ("[224.0.0.1]", 0, "cannot be a source address"),
        ("[255.255.255.255]", 0, "cannot be a source address"),
        ("[127.0.0.2, 127.0.0.3, 127.0.0.2]", 2, "listed twice"),
        ("[127.0.0.2, \"::1\"]", 1, "not of the same address family"),
    ];
    for (list, index, words) in cases {
        let yaml = format!("broker:\n  upstream:\n    source_addresses: {list}\n");
        let (line, key, text) = invalid(&yaml);
        assert_eq!(line, Some(3), "{list}: {text}");
        assert_eq!(
            key,
            format!("broker.upstream.source_addresses[{index}]"),
            "{list}: {text}"
        );
        assert!(text.contains(words), "{list}: {text}");
    }
    // An IP literal host of the other family is refused while reading; a host name is
    // resolved at start and checked there.
    let (line, key, text) =
        invalid("broker:\n  upstream:\n    host: \"::1\"\n    source_addresses: [127.0.0.2]\n");
    assert_eq!(key, "broker.upstream");
    assert!(line.is_some(), "{text}");
    assert!(text.contains("another address family"), "{text}");
    let (_, key, _) = invalid("broker:\n  upstream:\n    source_addresses: 127.0.0.2\n");
    assert_eq!(key, "broker.upstream.source_addresses");
}
