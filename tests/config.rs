//! `gateway.yaml` loading: defaults, the shipped file, and that every error names the file,
//! the line and the key path.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use mqttsn_gateway::config::{self, duration, BrokerMode, Config, ConfigError, PredefinedTopic};

/// The error for `yaml`, checked to be `Invalid`; returns (line, column, key, rendered text).
fn invalid(yaml: &str) -> (Option<usize>, Option<usize>, String, String) {
    let err = Config::from_yaml_str(yaml, "gateway.yaml").expect_err("should be rejected");
    let text = err.to_string();
    match err {
        ConfigError::Invalid {
            origin,
            line,
            column,
            key,
            ..
        } => {
            assert_eq!(origin, "gateway.yaml");
            (line, column, key, text)
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn shipped_gateway_yaml_equals_default() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("gateway.yaml");
    let shipped = Config::load(&path).expect("shipped gateway.yaml loads");
    assert_eq!(shipped, Config::default());
}

#[test]
fn default_values_are_the_documented_ones() {
    let c = Config::default();
    assert_eq!(c.gateway.id, 1);
    assert_eq!(c.transports.udp.len(), 1);
    assert_eq!(
        c.transports.udp[0].bind,
        "0.0.0.0:1884".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(c.discovery.advertise, None);
    assert_eq!(c.broker.mode, BrokerMode::Embedded);
    assert_eq!(c.broker.upstream.host, "127.0.0.1");
    assert_eq!(c.broker.upstream.port, 1883);
    assert_eq!(c.broker.upstream.keep_alive, Duration::from_secs(60));
    assert_eq!(c.broker.upstream.connect_timeout, Duration::from_secs(10));
    assert_eq!(c.broker.upstream.username, None);
    assert_eq!(c.broker.upstream.password, None);
    assert_eq!(c.broker.upstream.client_id_prefix, "");
    assert_eq!(
        c.broker.embedded.bind,
        "127.0.0.1:1883".parse::<SocketAddr>().unwrap()
    );
    assert!(c.predefined_topics.is_empty());
    assert_eq!(c.limits.max_devices, 10_000);
    assert_eq!(c.limits.max_topics_per_device, 256);
    assert_eq!(c.limits.max_queued_per_device, 64);
    assert_eq!(c.limits.max_frame_size, 1024);
    assert_eq!(c.limits.max_client_id_len, 64);
    assert_eq!(c.limits.channel_depth, 1024);
    assert_eq!(c.timers.retry_interval, Duration::from_secs(10));
    assert_eq!(c.timers.max_retries, 3);
    assert_eq!(c.log.level, "info");
}

#[test]
fn empty_document_and_null_sections_are_defaults() {
    for yaml in ["", "# nothing\n", "gateway:\nlimits:\npredefined_topics:\n"] {
        assert_eq!(
            Config::from_yaml_str(yaml, "t").unwrap(),
            Config::default(),
            "{yaml:?}"
        );
    }
}

#[test]
fn to_yaml_round_trips() {
    let yaml = r#"
gateway: { id: 7 }
transports:
  udp:
    - bind: 0.0.0.0:1884
    - bind: "[::]:1885"
discovery:
  advertise: { address: "255.255.255.255:1884", interval: 1h30m }
broker:
  mode: upstream
  upstream: { host: "::1", port: 8883, keep_alive: 90s, username: u, password: p, client_id_prefix: gw1- }
predefined_topics:
  - { id: 1, topic: sensors/temperature }
  - { id: 0xfffe, topic: a/b }
timers: { retry_interval: 1500ms, max_retries: 5 }
log: { level: "info,mqttsn_gateway=debug" }
"#;
    let config = Config::from_yaml_str(yaml, "t").unwrap();
    assert_eq!(config.broker.mode, BrokerMode::Upstream);
    assert_eq!(config.broker.upstream.host, "::1");
    assert_eq!(
        config.predefined_topics[1],
        PredefinedTopic {
            id: 0xFFFE,
            topic: "a/b".into()
        }
    );
    let again = Config::from_yaml_str(&config.to_yaml(), "t").unwrap();
    assert_eq!(again, config);
    let defaults = Config::from_yaml_str(&Config::default().to_yaml(), "t").unwrap();
    assert_eq!(defaults, Config::default());
}

#[test]
fn misspelt_key_names_key_path_and_line() {
    let yaml = "gateway:\n  id: 1\ntransports:\n  udp:\n    - bind: 0.0.0.0:1884\n    - bnd: 0.0.0.0:1885\n";
    let (line, column, key, text) = invalid(yaml);
    assert_eq!(line, Some(6));
    assert_eq!(column, Some(7));
    assert_eq!(key, "transports.udp[1].bnd");
    assert_eq!(
        text,
        "gateway.yaml:6:7: transports.udp[1].bnd: unknown field `bnd`, expected `bind`"
    );
}

#[test]
fn misspelt_top_level_key() {
    let (line, _, key, text) = invalid("gateway:\n  id: 1\nlimtis:\n  max_devices: 1\n");
    assert_eq!((line, key.as_str()), (Some(3), "limtis"));
    assert!(text.contains("unknown field `limtis`"), "{text}");
}

#[test]
fn unknown_enum_value() {
    let (line, _, key, text) = invalid("broker:\n  mode: upstrem\n");
    assert_eq!((line, key.as_str()), (Some(2), "broker.mode"));
    assert!(text.contains("unknown variant `upstrem`"), "{text}");
    assert!(text.contains("`embedded` or `upstream`"), "{text}");
}

#[test]
fn bad_socket_address() {
    let (line, _, key, text) = invalid("transports:\n  udp:\n    - bind: 1.2.3.4\n");
    assert_eq!((line, key.as_str()), (Some(3), "transports.udp[0].bind"));
    assert!(text.contains("invalid socket address `1.2.3.4`"), "{text}");

    let (line, _, key, _) = invalid("broker:\n  embedded:\n    bind: localhost:1883\n");
    assert_eq!((line, key.as_str()), (Some(3), "broker.embedded.bind"));

    let (_, _, key, text) = invalid("discovery:\n  advertise:\n    address: 0.0.0.0:1884\n");
    assert_eq!(key, "discovery.advertise.address");
    assert!(text.contains("cannot be a destination"), "{text}");
}

#[test]
fn unquoted_ipv6_is_explained() {
    let (line, _, key, text) = invalid("transports:\n  udp:\n    - bind: [::]:1884\n");
    assert_eq!((line, key.as_str()), (Some(3), "transports.udp[0].bind"));
    assert!(text.contains("quote IPv6"), "{text}");
}

#[test]
fn ipv6_bind_parses() {
    let config =
        Config::from_yaml_str("transports:\n  udp:\n    - bind: \"[::]:1884\"\n", "t").unwrap();
    assert_eq!(
        config.transports.udp[0].bind,
        "[::]:1884".parse::<SocketAddr>().unwrap()
    );
    assert!(config.transports.udp[0].bind.is_ipv6());
}

#[test]
fn bad_duration() {
    let (line, column, key, text) = invalid("timers:\n  retry_interval: 10x\n");
    assert_eq!(
        (line, column, key.as_str()),
        (Some(2), Some(19), "timers.retry_interval")
    );
    assert!(text.contains("invalid duration `10x`"), "{text}");

    let (_, _, key, text) = invalid("timers:\n  retry_interval: 10\n");
    assert_eq!(key, "timers.retry_interval");
    assert!(text.contains("missing unit"), "{text}");

    let (_, _, key, _) = invalid("timers:\n  retry_interval: 0s\n");
    assert_eq!(key, "timers.retry_interval");

    let (_, _, key, text) = invalid("broker:\n  upstream:\n    keep_alive: 500ms\n");
    assert_eq!(key, "broker.upstream.keep_alive");
    assert!(text.contains("whole seconds"), "{text}");

    let (_, _, key, text) = invalid("discovery:\n  advertise:\n    interval: 19h\n");
    assert_eq!(key, "discovery.advertise.interval");
    assert!(text.contains("65535s"), "{text}");
}

#[test]
fn duplicate_predefined_id() {
    let yaml = "predefined_topics:\n  - id: 1\n    topic: a\n  - id: 2\n    topic: b\n  - id: 1\n    topic: c\n";
    let (line, _, key, text) = invalid(yaml);
    assert_eq!((line, key.as_str()), (Some(6), "predefined_topics[2]"));
    assert!(
        text.contains("duplicate id 1") && text.contains("predefined_topics[0]"),
        "{text}"
    );
}

#[test]
fn duplicate_predefined_topic_name() {
    let (line, _, key, text) =
        invalid("predefined_topics:\n  - { id: 1, topic: a }\n  - { id: 2, topic: a }\n");
    assert_eq!((line, key.as_str()), (Some(3), "predefined_topics[1]"));
    assert!(text.contains("duplicate topic `a`"), "{text}");
}

#[test]
fn reserved_predefined_ids() {
    for (id, shown) in [("0", "0x0000"), ("0xffff", "0xffff"), ("65535", "0xffff")] {
        let (line, _, key, text) =
            invalid(&format!("predefined_topics:\n  - id: {id}\n    topic: a\n"));
        assert_eq!((line, key.as_str()), (Some(2), "predefined_topics[0].id"));
        assert!(text.contains(shown) && text.contains("reserved"), "{text}");
    }
    let (_, _, key, _) = invalid("predefined_topics:\n  - id: 70000\n    topic: a\n");
    assert_eq!(key, "predefined_topics[0].id");
}

#[test]
fn wildcard_in_predefined_topic() {
    for topic in ["a/+/b", "a/#", "'#'"] {
        let (line, _, key, text) = invalid(&format!(
            "predefined_topics:\n  - id: 3\n    topic: {topic}\n"
        ));
        assert_eq!(
            (line, key.as_str()),
            (Some(3), "predefined_topics[0].topic")
        );
        assert!(text.contains("wildcard"), "{text}");
    }
    let (_, _, key, text) = invalid("predefined_topics:\n  - id: 3\n    topic: ''\n");
    assert_eq!(key, "predefined_topics[0].topic");
    assert!(text.contains("empty"), "{text}");
}

#[test]
fn max_frame_size_out_of_range() {
    for size in ["8", "15", "65536", "-1"] {
        let (line, _, key, text) = invalid(&format!("limits:\n  max_frame_size: {size}\n"));
        assert_eq!((line, key.as_str()), (Some(2), "limits.max_frame_size"));
        assert!(text.contains("out of range"), "{text}");
    }
    for size in [16, 65535] {
        let config =
            Config::from_yaml_str(&format!("limits:\n  max_frame_size: {size}\n"), "t").unwrap();
        assert_eq!(config.limits.max_frame_size, size);
    }
}

#[test]
fn other_out_of_range_numbers() {
    let (_, _, key, _) = invalid("gateway:\n  id: 256\n");
    assert_eq!(key, "gateway.id");
    let (_, _, key, _) = invalid("limits:\n  channel_depth: 0\n");
    assert_eq!(key, "limits.channel_depth");
    let (_, _, key, _) = invalid("broker:\n  upstream:\n    port: 0\n");
    assert_eq!(key, "broker.upstream.port");
}

#[test]
fn transports_need_an_entry_and_no_duplicates() {
    // Empty UDP list and no serial port: no transport at all. (UDP may be empty when a
    // serial port is configured; see `serial_transports_with_defaults_and_checks`.)
    let (_, _, key, text) = invalid("transports:\n  udp: []\n");
    assert_eq!(key, "transports");
    assert!(text.contains("empty"), "{text}");
    let (line, _, key, _) =
        invalid("transports:\n  udp:\n    - bind: 0.0.0.0:1\n    - bind: 0.0.0.0:1\n");
    assert_eq!((line, key.as_str()), (Some(4), "transports.udp[1]"));
}

#[test]
fn bad_log_level() {
    let (_, _, key, text) = invalid("log:\n  level: 'info,[=x'\n");
    assert_eq!(key, "log.level");
    assert!(text.contains("invalid log level"), "{text}");
}

#[test]
fn a_word_that_is_not_a_level_is_an_error_not_a_silent_filter() {
    for bad in ["verbose", "info,foo", "info,mqttsn_gateway=loud"] {
        let (line, _, key, text) = invalid(&format!("log:\n  level: '{bad}'\n"));
        assert_eq!((line, key.as_str()), (Some(2), "log.level"), "{bad}");
        assert!(text.contains("is not a level"), "{bad}: {text}");
    }
    for good in ["info", "DEBUG", "warn,mqttsn_gateway::core=trace", "off"] {
        let yaml = format!("log:\n  level: '{good}'\n");
        Config::from_yaml_str(&yaml, "t").unwrap_or_else(|e| panic!("{good}: {e}"));
    }
}

#[test]
fn libraries_stay_at_warn_unless_named() {
    use mqttsn_gateway::config::effective_log_filter;
    assert_eq!(effective_log_filter("info"), "warn,mqttsn_gateway=info");
    assert_eq!(effective_log_filter("debug"), "warn,mqttsn_gateway=debug");
    assert_eq!(effective_log_filter("error"), "error,mqttsn_gateway=error");
    assert_eq!(
        effective_log_filter("info,rmqtt=info"),
        "warn,mqttsn_gateway=info,rmqtt=info"
    );
}

#[test]
fn log_format_text_or_json() {
    let c = Config::from_yaml_str("log: { format: json }\n", "t").unwrap();
    assert_eq!(c.log.format, mqttsn_gateway::config::LogFormat::Json);
    let (_, _, key, text) = invalid("log:\n  format: xml\n");
    assert_eq!(key, "log.format");
    assert!(text.contains("text") && text.contains("json"), "{text}");
}

#[test]
fn load_names_the_file() {
    let path = std::env::temp_dir().join(format!("mqttsn-config-test-{}.yaml", std::process::id()));
    std::fs::write(&path, "gateway:\n  idd: 1\n").unwrap();
    let err = Config::load(&path).unwrap_err().to_string();
    std::fs::remove_file(&path).unwrap();
    assert!(
        err.starts_with(&format!(
            "{}:2:3: gateway.idd: unknown field",
            path.display()
        )),
        "{err}"
    );

    let missing = Config::load(Path::new("/nonexistent/gateway.yaml")).unwrap_err();
    assert!(matches!(missing, ConfigError::Read { .. }), "{missing}");
    assert!(missing
        .to_string()
        .starts_with("/nonexistent/gateway.yaml: cannot read"));
}

#[test]
fn overrides_replace_udp_broker_and_log() {
    let mut config = Config::default();
    let udp: Vec<SocketAddr> = vec![
        "127.0.0.1:0".parse().unwrap(),
        "[::1]:1884".parse().unwrap(),
    ];
    config.apply_overrides(&udp, Some(("::1".into(), 1884)), Some("debug".into()));
    let binds: Vec<SocketAddr> = config.transports.udp.iter().map(|t| t.bind).collect();
    assert_eq!(binds, udp);
    assert_eq!(config.broker.mode, BrokerMode::Upstream);
    assert_eq!(config.broker.upstream.host, "::1");
    assert_eq!(config.broker.upstream.port, 1884);
    assert_eq!(config.broker_address(), "[::1]:1884");
    assert_eq!(config.log.level, "debug");
}

#[test]
fn no_overrides_change_nothing() {
    let mut config = Config::default();
    config.apply_overrides(&[], None, None);
    assert_eq!(config, Config::default());
}

#[test]
fn host_port_parsing() {
    assert_eq!(
        config::parse_host_port("broker.local:1883"),
        Ok(("broker.local".into(), 1883))
    );
    assert_eq!(
        config::parse_host_port("10.0.0.2:8883"),
        Ok(("10.0.0.2".into(), 8883))
    );
    assert_eq!(
        config::parse_host_port("[::1]:1883"),
        Ok(("::1".into(), 1883))
    );
    for bad in [
        "broker",
        "::1:1883",
        "[::1:1883",
        ":1883",
        "host:0",
        "host:99999",
        "host:x",
    ] {
        assert!(config::parse_host_port(bad).is_err(), "{bad}");
    }
}

#[test]
fn redacted_hides_the_password() {
    let mut config = Config::default();
    config.broker.upstream.password = Some("secret".into());
    let yaml = config.redacted().to_yaml();
    assert!(!yaml.contains("secret"));
    assert!(yaml.contains("password: '********'"), "{yaml}");
}

#[test]
fn duration_parse_cases() {
    let ok = [
        ("500ms", Duration::from_millis(500)),
        ("10s", Duration::from_secs(10)),
        ("15m", Duration::from_secs(900)),
        ("2h", Duration::from_secs(7200)),
        ("1h30m", Duration::from_secs(5400)),
        ("1m30s", Duration::from_secs(90)),
        ("1s500ms", Duration::from_millis(1500)),
        ("1h2m3s4ms", Duration::from_millis(3_723_004)),
        ("0s", Duration::ZERO),
        ("90s", Duration::from_secs(90)),
    ];
    for (text, want) in ok {
        assert_eq!(duration::parse(text), Ok(want), "{text}");
    }
}

#[test]
fn duration_parse_errors() {
    for bad in [
        "",
        "10",
        "s",
        "10x",
        "1.5s",
        "-1s",
        "10 s",
        " 10s",
        "1d",
        "30m1h",
        "1s1s",
        "10S",
        "99999999999999999999s",
        "18446744073709551615h",
    ] {
        let err = duration::parse(bad).expect_err(bad);
        assert_eq!(err.input, bad);
        assert!(err.to_string().starts_with("invalid duration"), "{err}");
    }
}

#[test]
fn duration_format_round_trips() {
    let cases = [
        (Duration::ZERO, "0s"),
        (Duration::from_millis(500), "500ms"),
        (Duration::from_secs(10), "10s"),
        (Duration::from_secs(60), "1m"),
        (Duration::from_secs(900), "15m"),
        (Duration::from_secs(5400), "1h30m"),
        (Duration::from_millis(3_723_004), "1h2m3s4ms"),
    ];
    for (value, text) in cases {
        assert_eq!(duration::format(value), text);
        assert_eq!(duration::parse(text), Ok(value));
    }
}

#[test]
fn serial_transports_with_defaults_and_checks() {
    use mqttsn_gateway::config::{SerialFlowControl, SerialFraming, SerialParity};
    let yaml = "transports:\n  udp: []\n  serial:\n    - path: /dev/ttyUSB0\n    - { path: /dev/ttyAMA0, baud: 115200, framing: xbee, xbee_api_mode: 2, data_bits: 7, parity: even, stop_bits: 2, flow_control: hardware, frame_timeout: 2s, required: false }\n";
    let c = Config::from_yaml_str(yaml, "t").unwrap();
    assert!(c.transports.udp.is_empty());
    let s0 = &c.transports.serial[0];
    assert_eq!(s0.path.to_str(), Some("/dev/ttyUSB0"));
    assert_eq!(
        (s0.baud, s0.framing, s0.data_bits, s0.parity, s0.stop_bits),
        (9600, SerialFraming::Raw, 8, SerialParity::None, 1)
    );
    assert_eq!(s0.flow_control, SerialFlowControl::None);
    assert!(s0.required);
    let s1 = &c.transports.serial[1];
    assert_eq!(
        (s1.baud, s1.framing, s1.xbee_api_mode, s1.data_bits),
        (115200, SerialFraming::Xbee, 2, 7)
    );
    assert_eq!(
        (s1.parity, s1.stop_bits, s1.flow_control, s1.required),
        (SerialParity::Even, 2, SerialFlowControl::Hardware, false)
    );
    assert_eq!(s1.frame_timeout, Duration::from_secs(2));
    // Round trip through `check`'s output.
    assert_eq!(Config::from_yaml_str(&c.to_yaml(), "t").unwrap(), c);
    // Absent `udp` keeps the default UDP socket beside the serial port.
    let c = Config::from_yaml_str("transports:\n  serial:\n    - path: /dev/x\n", "t").unwrap();
    assert_eq!(c.transports.udp.len(), 1);

    let (line, _, key, _) =
        invalid("transports:\n  serial:\n    - path: /dev/x\n    - path: /dev/x\n");
    assert_eq!((line, key.as_str()), (Some(4), "transports.serial[1]"));
    let (_, _, key, _) =
        invalid("transports:\n  serial:\n    - path: /dev/x\n      framing: hdlc\n");
    assert_eq!(key, "transports.serial[0].framing");
    let (_, _, key, _) =
        invalid("transports:\n  serial:\n    - path: /dev/x\n      data_bits: 9\n");
    assert_eq!(key, "transports.serial[0].data_bits");
    let (_, _, key, _) =
        invalid("transports:\n  serial:\n    - path: /dev/x\n      xbee_api_mode: 0\n");
    assert_eq!(key, "transports.serial[0].xbee_api_mode");
    let (_, _, _, text) = invalid("transports:\n  serial:\n    - baud: 9600\n");
    assert!(text.contains("path"), "{text}");
}

#[test]
fn embedded_broker_keys_and_defaults() {
    let c = Config::default();
    assert_eq!(
        c.broker.embedded.data_dir,
        std::path::PathBuf::from("./data/broker")
    );
    assert_eq!(
        (
            c.broker.embedded.username.as_deref(),
            c.broker.embedded.allow_anonymous
        ),
        (None, false)
    );
    let c = Config::from_yaml_str(
        "broker:\n  embedded:\n    bind: 0.0.0.0:1883\n    data_dir: /var/lib/gw\n    username: u\n    password: p\n",
        "gateway.yaml",
    )
    .unwrap();
    assert_eq!(
        c.broker.embedded.data_dir,
        std::path::PathBuf::from("/var/lib/gw")
    );
    assert!(!c.redacted().to_yaml().contains("password: p\n"));
    // An open LAN broker is allowed when stated.
    Config::from_yaml_str(
        "broker:\n  embedded:\n    bind: 0.0.0.0:1883\n    allow_anonymous: true\n",
        "gateway.yaml",
    )
    .unwrap();
}

#[test]
fn embedded_broker_on_the_lan_needs_credentials_or_allow_anonymous() {
    let (line, _, key, text) = invalid("broker:\n  embedded:\n    bind: 0.0.0.0:1883\n");
    assert_eq!(key, "broker.embedded", "{text}");
    assert!(line.is_some(), "{text}");
    assert!(text.contains("0.0.0.0:1883"), "{text}");
    assert!(text.contains("allow_anonymous"), "{text}");
    let (_, _, key, text) = invalid("broker:\n  embedded:\n    username: u\n");
    assert_eq!(key, "broker.embedded", "{text}");
    assert!(text.contains("password"), "{text}");
    let (line, _, key, _) = invalid("broker:\n  embedded:\n    data_dir: \"\"\n");
    assert_eq!((line, key.as_str()), (Some(3), "broker.embedded.data_dir"));
}

#[test]
fn discovery_multicast_groups() {
    let yaml = r#"
transports:
  udp: [{ bind: 0.0.0.0:10000 }, { bind: "[::]:10000" }]
discovery:
  advertise: { address: null, interval: 15m }
  multicast:
    - {}
    - { group: 239.0.0.9, port: 1884, interface: 192.168.1.10, ttl: 4 }
    - { group: "ff02::1:1883", port: 1883, interface: eth0 }
    - { group: "ff05::1:1883", port: 1883, interface: 3, transport: 1 }
"#;
    let c = Config::from_yaml_str(yaml, "t").unwrap();
    assert_eq!(c.discovery.advertise.as_ref().unwrap().address, None);
    let m = &c.discovery.multicast;
    assert_eq!(m.len(), 4);
    assert_eq!(m[0], config::MulticastGroup::default());
    assert_eq!(m[0].addr(), "225.1.1.1:1883".parse::<SocketAddr>().unwrap());
    assert_eq!(
        (m[0].ttl, m[0].interface.as_deref(), m[0].transport),
        (1, None, None)
    );
    assert_eq!(m[1].interface.as_deref(), Some("192.168.1.10"));
    assert_eq!(m[1].ttl, 4);
    assert_eq!(
        m[2].group,
        "ff02::1:1883".parse::<std::net::IpAddr>().unwrap()
    );
    assert_eq!(m[2].interface.as_deref(), Some("eth0"));
    assert_eq!(
        (m[3].interface.as_deref(), m[3].transport),
        (Some("3"), Some(1))
    );
    // The effective configuration loads back the same.
    assert_eq!(Config::from_yaml_str(&c.to_yaml(), "t").unwrap(), c);
    assert!(Config::default().discovery.multicast.is_empty());
}

#[test]
fn discovery_multicast_errors_name_the_entry() {
    for (yaml, key, says) in [
        (
            "    - { group: 10.0.0.1 }\n",
            "discovery.multicast[0].group",
            "not a multicast address",
        ),
        (
            "    - { group: \"[ff02::1]\" }\n",
            "discovery.multicast[0].group",
            "invalid IP address",
        ),
        (
            "    - { port: 0 }\n",
            "discovery.multicast[0].port",
            "out of range",
        ),
        (
            "    - { ttl: 0 }\n",
            "discovery.multicast[0].ttl",
            "out of range",
        ),
        (
            "    - { interface: eth0 }\n",
            "discovery.multicast[0]",
            "IPv4 address",
        ),
        (
            "    - { group: \"ff02::1\", interface: \"::1\" }\n",
            "discovery.multicast[0]",
            "interface name",
        ),
        (
            "    - { interface: \"a b\" }\n",
            "discovery.multicast[0].interface",
            "not an interface",
        ),
        (
            "    - {}\n    - { port: 1883 }\n",
            "discovery.multicast[1]",
            "already discovery.multicast[0]",
        ),
        (
            "    - { colour: red }\n",
            "discovery.multicast[0].colour",
            "unknown field",
        ),
    ] {
        let (_, _, k, text) = invalid(&format!("discovery:\n  multicast:\n{yaml}"));
        assert_eq!(k, key, "{yaml}: {text}");
        assert!(text.contains(says), "{yaml}: {text}");
    }
}

#[test]
fn embedded_broker_tls_users_and_acl_keys() {
    let yaml = "broker:\n  embedded:\n    users_file: /etc/gw/users\n    acl_file: /etc/gw/acl\n    tls:\n      cert_file: /etc/gw/server.pem\n      key_file: /etc/gw/server.key\n";
    let c = Config::from_yaml_str(yaml, "gateway.yaml").unwrap();
    let e = &c.broker.embedded;
    assert_eq!(e.users_file.as_deref(), Some(Path::new("/etc/gw/users")));
    assert_eq!(e.acl_file.as_deref(), Some(Path::new("/etc/gw/acl")));
    let tls = e.tls.as_ref().unwrap();
    assert_eq!(tls.bind, "0.0.0.0:8883".parse::<SocketAddr>().unwrap());
    assert_eq!(tls.cert_file, Path::new("/etc/gw/server.pem"));
    assert_eq!(tls.key_file, Path::new("/etc/gw/server.key"));
    assert_eq!(
        (tls.ca_file.as_deref(), tls.require_certificate),
        (None, false)
    );
    assert_eq!(tls.max_connections, 100);
    // Defaults: no TLS listener, no files.
    let d = Config::default();
    assert_eq!(
        (
            &d.broker.embedded.tls,
            &d.broker.embedded.users_file,
            &d.broker.embedded.acl_file
        ),
        (&None, &None, &None)
    );
    let c = Config::from_yaml_str("broker:\n  embedded:\n    tls: null\n", "gateway.yaml").unwrap();
    assert_eq!(c.broker.embedded.tls, None);
    // A users file is credentials enough for a LAN-facing bind.
    Config::from_yaml_str(
        "broker:\n  embedded:\n    bind: 0.0.0.0:1883\n    users_file: users\n",
        "gateway.yaml",
    )
    .unwrap();
}

#[test]
fn embedded_broker_tls_checks() {
    // A TLS listener without credentials.
    let (line, _, key, text) = invalid(
        "broker:\n  embedded:\n    tls:\n      bind: 127.0.0.1:8883\n      cert_file: c\n      key_file: k\n",
    );
    assert_eq!(key, "broker.embedded", "{text}");
    assert!(line.is_some(), "{text}");
    assert!(
        text.contains("tls.bind") && text.contains("allow_anonymous"),
        "{text}"
    );
    // require_certificate needs ca_file.
    let (_, _, key, text) = invalid(
        "broker:\n  embedded:\n    users_file: u\n    tls:\n      cert_file: c\n      key_file: k\n      require_certificate: true\n",
    );
    assert_eq!(key, "broker.embedded", "{text}");
    assert!(text.contains("ca_file"), "{text}");
    // cert_file and key_file are required, unknown keys refused, paths not empty.
    let (_, _, _, text) =
        invalid("broker:\n  embedded:\n    users_file: u\n    tls:\n      cert_file: c\n");
    assert!(text.contains("key_file"), "{text}");
    let (_, _, key, text) = invalid(
        "broker:\n  embedded:\n    users_file: u\n    tls:\n      cert_file: c\n      key_file: k\n      certfile: x\n",
    );
    assert!(key.starts_with("broker.embedded.tls"), "{key}: {text}");
    assert!(text.contains("certfile"), "{text}");
    let (line, _, key, _) = invalid("broker:\n  embedded:\n    users_file: \"\"\n");
    assert_eq!(
        (line, key.as_str()),
        (Some(3), "broker.embedded.users_file")
    );
    // allow_anonymous opens a TLS listener on purpose.
    Config::from_yaml_str(
        "broker:\n  embedded:\n    allow_anonymous: true\n    tls:\n      cert_file: c\n      key_file: k\n",
        "gateway.yaml",
    )
    .unwrap();
}

// ---------------------------------------------------------------- admission, devices, qos_minus_one

#[test]
fn admission_devices_and_qos_minus_one_parse() {
    let c = Config::from_yaml_str(
        "admission: listed\n\
         devices:\n  \
           - client_id: boiler-1\n    \
             address: 192.168.1.20\n    \
             publish: [\"home/{client_id}/#\"]\n    \
             subscribe: [\"cmd/{client_id}/#\"]\n  \
           - client_id: \"sensor-*\"\n    \
             address: 192.168.2.0/24\n    \
             transport: udp\n  \
           - client_id: node-1\n    \
             node: 0a1b\n\
         qos_minus_one:\n  predefined: [1, 2]\n  sources: [10.0.0.0/8]\n",
        "gateway.yaml",
    )
    .unwrap();
    assert_eq!(c.admission, config::Admission::Listed);
    assert_eq!(c.devices.len(), 3);
    assert_eq!(
        c.devices[0].publish.as_deref(),
        Some(&["home/{client_id}/#".to_owned()][..])
    );
    assert!(!c.qos_minus_one.is_all());
    let off = Config::from_yaml_str("qos_minus_one: off\n", "gateway.yaml").unwrap();
    assert_eq!(
        off.qos_minus_one,
        config::QosMinusOne::Switch(config::QosMinusOneSwitch::Off)
    );
    // The defaults: open, no rules, QoS -1 for all.
    let d = Config::default();
    assert_eq!(d.admission, config::Admission::Open);
    assert!(d.devices.is_empty() && d.devices_file.is_none());
    assert!(d.qos_minus_one.is_all());
}

#[test]
fn device_entry_errors_name_line_and_key() {
    let cases: [(&str, usize, &str, &str); 8] = [
        (
            "admission: closed\n",
            1,
            "admission",
            "unknown variant `closed`",
        ),
        (
            "devices:\n  - address: 10.0.0.1\n",
            2,
            "devices[0]",
            "client_id",
        ),
        (
            "devices:\n  - client_id: a\n  - client_id: b\n    address: 10.0.0.0/40\n",
            3,
            "devices[1]",
            "address: `10.0.0.0/40`: the prefix length must be 0..=32",
        ),
        (
            "devices:\n  - client_id: a\n    publish: [\"a/#/b\"]\n",
            2,
            "devices[0]",
            "publish[0]: `a/#/b` is not an MQTT topic filter",
        ),
        (
            "devices:\n  - client_id: a\n    subscribe: [\"x\", \"{user}/x\"]\n",
            2,
            "devices[0]",
            "subscribe[1]: `{user}/x`: only {client_id} may be substituted",
        ),
        (
            "devices:\n  - client_id: a\n    transport: tcp\n",
            2,
            "devices[0]",
            "transport: `tcp`",
        ),
        (
            "devices:\n  - client_id: a\n    adress: 10.0.0.1\n",
            3,
            "devices[0].adress",
            "unknown field `adress`",
        ),
        (
            "qos_minus_one:\n  short: [abc]\n",
            2,
            "qos_minus_one",
            "short[0]: `abc` is not a short topic name",
        ),
    ];
    for (yaml, line, key, needle) in cases {
        let (l, _, k, text) = invalid(yaml);
        assert_eq!((l, k.as_str()), (Some(line), key), "{yaml}: {text}");
        assert!(text.contains(needle), "{yaml}: {text}");
    }
    for yaml in [
        "qos_minus_one: some\n",
        "qos_minus_one: {}\n",
        "qos_minus_one: true\n",
    ] {
        let (_, _, k, text) = invalid(yaml);
        assert_eq!(k, "qos_minus_one", "{yaml}: {text}");
    }
}

#[test]
fn devices_file_entries_follow_devices_and_its_errors_name_that_file() {
    let dir = std::env::temp_dir().join(format!("mqttsn-devices-file-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let main = dir.join("gateway.yaml");
    let file = dir.join("devices.yaml");
    std::fs::write(
        &main,
        "devices:\n  - client_id: inline\ndevices_file: devices.yaml\n",
    )
    .unwrap();
    std::fs::write(
        &file,
        "- client_id: one\n- client_id: two\n  address: 10.0.0.1\n",
    )
    .unwrap();
    let c = Config::load(&main).unwrap();
    let ids: Vec<&str> = c.all_devices().map(|d| d.client_id.as_str()).collect();
    assert_eq!(ids, ["inline", "one", "two"]);

    std::fs::write(
        &file,
        "- client_id: one\n- client_id: two\n  address: nowhere\n",
    )
    .unwrap();
    let err = Config::load(&main).unwrap_err();
    let text = err.to_string();
    match &err {
        ConfigError::Invalid {
            origin, line, key, ..
        } => {
            assert_eq!(origin, &file.display().to_string(), "{text}");
            assert_eq!((*line, key.as_str()), (Some(2), "[1]"), "{text}");
        }
        other => panic!("{other:?}"),
    }
    assert!(
        text.starts_with(&format!("{}:2:", file.display()))
            && text.contains(": [1]: address: `nowhere`"),
        "{text}"
    );
    std::fs::remove_file(&file).unwrap();
    let missing = Config::load(&main).unwrap_err();
    assert!(matches!(missing, ConfigError::Read { .. }), "{missing}");
    assert!(missing.to_string().contains("devices.yaml"), "{missing}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn http_listener_defaults_off_and_credentials() {
    let c = Config::default();
    assert_eq!(c.http.bind, Some("127.0.0.1:9184".parse().unwrap()));
    assert_eq!(c.http.username, None);
    assert_eq!(c.http.max_connections, 16);
    // `null` turns it off; the section as `null` is the defaults.
    let c = Config::from_yaml_str("http:\n  bind: null\n", "gateway.yaml").unwrap();
    assert_eq!(c.http.bind, None);
    let c = Config::from_yaml_str("http: null\n", "gateway.yaml").unwrap();
    assert_eq!(c.http, Config::default().http);
    let c = Config::from_yaml_str(
        "http:\n  bind: 0.0.0.0:9184\n  username: admin\n  password_env: GW_HTTP_PASSWORD\n",
        "gateway.yaml",
    )
    .unwrap();
    assert_eq!(c.http.password_env.as_deref(), Some("GW_HTTP_PASSWORD"));
    let c = Config::from_yaml_str(
        "http:\n  username: admin\n  password: s3cret\n",
        "gateway.yaml",
    )
    .unwrap();
    assert!(!c.redacted().to_yaml().contains("s3cret"));
    assert!(!format!("{:?}", c.http).contains("s3cret"));
    // Round trip of the effective configuration.
    assert_eq!(Config::from_yaml_str(&c.to_yaml(), "t").unwrap(), c);
}

#[test]
fn http_listener_on_the_lan_needs_credentials() {
    let (line, _, key, text) = invalid("http:\n  bind: 0.0.0.0:9184\n");
    assert_eq!(key, "http", "{text}");
    assert!(line.is_some(), "{text}");
    assert!(text.contains("0.0.0.0:9184"), "{text}");
    assert!(text.contains("username"), "{text}");
    let (_, _, key, text) = invalid("http:\n  username: u\n");
    assert_eq!(key, "http", "{text}");
    assert!(text.contains("password"), "{text}");
    let (_, _, key, text) = invalid("http:\n  password: p\n");
    assert_eq!(key, "http", "{text}");
    assert!(text.contains("username"), "{text}");
    let (_, _, key, text) = invalid("http:\n  username: u\n  password: p\n  password_env: P\n");
    assert_eq!(key, "http", "{text}");
    assert!(text.contains("only one"), "{text}");
    let (line, _, key, _) = invalid("http:\n  max_connections: 0\n");
    assert_eq!((line, key.as_str()), (Some(2), "http.max_connections"));
    let (line, _, key, _) = invalid("http:\n  bind: nowhere\n");
    assert_eq!((line, key.as_str()), (Some(2), "http.bind"));
}

#[test]
fn upstream_tls_sets_the_default_port_and_round_trips() {
    let c = Config::from_yaml_str(
        "broker:\n  mode: upstream\n  upstream:\n    host: broker.example\n    tls: {}\n",
        "t",
    )
    .unwrap();
    assert_eq!(c.broker.upstream.port, 8883);
    assert_eq!(c.broker.upstream.tls, Some(Default::default()));
    assert_eq!(Config::from_yaml_str(&c.to_yaml(), "t").unwrap(), c);
    let plain = Config::from_yaml_str("broker:\n  upstream:\n    tls: null\n", "t").unwrap();
    assert_eq!(plain.broker.upstream.port, 1883);
    assert_eq!(plain.broker.upstream.tls, None);
    let written = Config::from_yaml_str(
        "broker:\n  upstream:\n    port: 443\n    tls:\n      ca_file: ca.pem\n      \
         cert_file: c.pem\n      key_file: k.pem\n      server_name: x.example\n      \
         alpn: [mqtt]\n",
        "t",
    )
    .unwrap();
    assert_eq!(written.broker.upstream.port, 443);
    assert_eq!(
        Config::from_yaml_str(&written.to_yaml(), "t").unwrap(),
        written
    );
    let mut over = c.clone();
    over.apply_overrides(&[], Some(("10.0.0.2".into(), 1884)), None);
    assert_eq!(over.broker.upstream.port, 1884);
    assert!(over.broker.upstream.tls.is_some());
}

#[test]
fn upstream_tls_and_secret_mistakes_name_the_key() {
    let (_, _, _, text) = invalid("broker:\n  upstream:\n    tls:\n      cert_file: c.pem\n");
    assert!(text.contains("key_file"), "{text}");
    let (_, _, _, text) = invalid("broker:\n  upstream:\n    tls:\n      cafile: c.pem\n");
    assert!(text.contains("cafile"), "{text}");
    let (_, _, _, text) =
        invalid("broker:\n  upstream:\n    password: a\n    password_file: /run/pw\n");
    assert!(text.contains("set only one"), "{text}");
    let (_, _, _, text) = invalid("broker:\n  upstream:\n    password_env: PW\n");
    assert!(text.contains("username is not"), "{text}");
    let (_, _, _, text) = invalid("broker:\n  upstream:\n    username: '{device}'\n");
    assert!(text.contains("{device}"), "{text}");
    let (_, _, _, text) = invalid("broker:\n  upstream:\n    tls:\n      alpn: ['']\n");
    assert!(text.contains("alpn[0]"), "{text}");
}

#[test]
fn redacted_and_debug_hide_the_upstream_password() {
    let c = Config::from_yaml_str(
        "broker:\n  upstream:\n    username: u\n    password: hunter2\n",
        "t",
    )
    .unwrap();
    assert!(!format!("{c:?}").contains("hunter2"));
    assert!(!c.redacted().to_yaml().contains("hunter2"));
}

#[test]
fn status_defaults_keys_and_checks() {
    let d = Config::default();
    assert!(d.status.enabled);
    assert_eq!(d.status.topic_prefix, None);
    assert_eq!(d.status.effective_prefix(d.gateway.id), "mqttsn/1");
    assert!(!d.status.homeassistant);
    assert_eq!(d.status.homeassistant_prefix, "homeassistant");

    let c = Config::from_yaml_str(
        "gateway:\n  id: 7\nstatus:\n  topic_prefix: site/a\n  homeassistant: true\n  homeassistant_prefix: ha\n",
        "gateway.yaml",
    )
    .unwrap();
    assert_eq!(c.status.effective_prefix(c.gateway.id), "site/a");
    assert!(c.status.homeassistant);
    assert_eq!(c.status.homeassistant_prefix, "ha");
    let c = Config::from_yaml_str("gateway:\n  id: 7\nstatus:\n  enabled: false\n", "x").unwrap();
    assert!(!c.status.enabled);
    assert_eq!(c.status.effective_prefix(7), "mqttsn/7");
    let c = Config::from_yaml_str("status:\n  topic_prefix: null\n", "x").unwrap();
    assert_eq!(c.status, Config::default().status);

    for (bad, why) in [
        ("a/+", "valid MQTT topic name"),
        ("'a/#'", "valid MQTT topic name"),
        ("a/", "starts or ends"),
        ("/a", "starts or ends"),
        ("'$SYS/x'", "`$`"),
        ("''", "empty"),
    ] {
        let (line, _, key, text) = invalid(&format!(
            "status:\n  enabled: true\n  topic_prefix: {bad}\n"
        ));
        assert_eq!(
            (line, key.as_str()),
            (Some(3), "status.topic_prefix"),
            "{bad}"
        );
        assert!(text.contains(why), "{bad}: {text}");
    }
    let (line, _, key, _) = invalid("status:\n  homeassistant_prefix: 'ha/#'\n");
    assert_eq!(
        (line, key.as_str()),
        (Some(2), "status.homeassistant_prefix")
    );
    let (_, _, key, _) = invalid("status:\n  enable: true\n");
    assert_eq!(key, "status.enable");
}
