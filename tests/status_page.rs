//! The status endpoint of the gateway binary (`http.bind`): `/metrics`, `/api/devices`,
//! `/api/devices/{client_id}` and `/api/gateway` over plain HTTP, Basic auth when a login is
//! configured, and the status page (`/`) in a real browser (headless Chromium): two devices over
//! UDP, one asleep with a message buffered for it, shown with their states; the sleeper wakes
//! (PINGREQ with its ClientId, spec §6.14), takes its message, and CONNECTs: the page follows.

#[macro_use]
mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use mqttsn_gateway::codec::{self, Message, QoS, TopicFilter, TopicRef};
use mqttsn_gateway::mqtt;

/// The broker the gateway process connects to: the embedded one in this process when built
/// with it, else mosquitto.
fn backend() -> Backend {
    if cfg!(feature = "embedded-broker") {
        Backend::Embedded
    } else {
        Backend::Mosquitto
    }
}

/// Polls `GET path` until `ok` holds for its JSON (bounded).
async fn until_json(
    http: SocketAddr,
    path: &str,
    ok: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let r = http_get(http, path, None).await;
        let v = r.json();
        if ok(&v) {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("GET {path} never satisfied the test: {v:#}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The value of a metric line (`name{labels} value`), exactly as written.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// The `<tr>` of `client_id` in a dumped DOM.
fn row<'a>(dom: &'a str, client_id: &str) -> Option<&'a str> {
    let start = dom.find(&format!("<tr data-client-id=\"{client_id}\""))?;
    let end = dom[start..].find("</tr>")? + start;
    Some(&dom[start..end])
}

/// Loads the page until `ok` holds for the row of `client_id` (the page refreshes itself every
/// 3 s; each load runs it for 4 s of virtual time).
async fn page_until(
    chromium: &std::path::Path,
    url: &str,
    client_id: &str,
    ok: impl Fn(&str) -> bool,
) -> String {
    for _ in 0..5 {
        let (c, u) = (chromium.to_path_buf(), url.to_string());
        let dom = tokio::task::spawn_blocking(move || dump_dom(&c, &u, Duration::from_secs(4)))
            .await
            .unwrap();
        if row(&dom, client_id).is_some_and(&ok) {
            return dom;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    panic!("the page never showed the expected row for {client_id}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_metrics_and_the_page_in_a_browser() {
    let broker = broker_or_skip!(backend());
    let dir = TempDir::new("status-page");
    let http_port = free_tcp_port();
    let mut config = test_config(broker.port);
    config.http.bind = Some(SocketAddr::from(([127, 0, 0, 1], http_port)));
    // The awake device is watched in the browser for seconds before it acknowledges: with the
    // tests' short T_RETRY its N_RETRY would run out (and it would be asleep again) first.
    config.timers.retry_interval = Duration::from_secs(30);
    let gw = GatewayProcess::start(GATEWAY_BIN.as_ref(), &config, &dir.0);
    let http = SocketAddr::from(([127, 0, 0, 1], http_port));

    // Two devices: one stays active and publishes, one subscribes and goes to sleep.
    let active = SnClient::new(gw.udp).await;
    active.connect("kitchen", true, 60).await;
    let topic = active.register("home/kitchen/temp", 1).await;
    active
        .publish(TopicRef::Id(topic), QoS::AtLeastOnce, false, 2, b"21.5")
        .await;
    assert!(matches!(active.recv().await, Message::Puback(_)));
    let sleepy = SnClient::new(gw.udp).await;
    sleepy.connect("sleepy", true, 30).await;
    sleepy
        .subscribe(TopicFilter::Name("cmd/sleepy".into()), QoS::AtLeastOnce, 1)
        .await;
    sleepy
        .send(Message::Disconnect {
            duration: Some(300),
        })
        .await;
    assert_eq!(sleepy.recv().await, Message::Disconnect { duration: None });
    let mut publisher = MqttClient::connect(broker.addr(), "status-test-publisher").await;
    publisher
        .publish("cmd/sleepy", b"lamp on", mqtt::QoS::AtLeastOnce, false)
        .await;

    // /api/devices/{id}: the sleeper with its buffered message.
    let s = until_json(http, "/api/devices/sleepy", |v| v["queued_messages"] == 1).await;
    assert_eq!(s["state"], "asleep", "{s:#}");
    assert_eq!(s["sleep_duration_s"], 300);
    assert!(s["sleep_deadline_in_s"].as_u64().unwrap() > 300, "{s:#}");
    assert_eq!(s["keep_alive_s"], 30);
    assert_eq!(s["transport"]["kind"], "udp");
    assert_eq!(s["transport"]["name"], gw.udp.to_string());
    assert!(s["address"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert_eq!(
        s["subscriptions"],
        serde_json::json!([{ "filter": "cmd/sleepy", "qos": 1 }])
    );
    assert!(s["last_seen_at"].as_str().unwrap().ends_with('Z'), "{s:#}");
    assert!(s["connected_since_ago_s"].as_u64().is_some());
    assert_eq!(s["will_topic"], serde_json::Value::Null);

    // /api/devices: both, sorted by ClientId.
    let all = http_get(http, "/api/devices", None).await;
    assert_eq!(all.status, 200);
    assert_eq!(all.header("content-type"), Some("application/json"));
    let all = all.json();
    let ids: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["client_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["kitchen", "sleepy"]);
    assert_eq!(all[0]["state"], "active");
    assert_eq!(all[0]["topics"][0]["name"], "home/kitchen/temp");

    // Unknown ClientId: 404, as JSON.
    let missing = http_get(http, "/api/devices/nobody%20here", None).await;
    assert_eq!(missing.status, 404);
    assert!(missing.json()["error"]
        .as_str()
        .unwrap()
        .contains("nobody here"));

    // /api/gateway: the page's header.
    let g = http_get(http, "/api/gateway", None).await.json();
    assert_eq!(g["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(g["broker"]["link"], "up", "{g:#}");
    assert_eq!(g["devices"]["asleep"], 1);
    assert_eq!(g["sleep_buffered"], 1);

    // /metrics: Prometheus text with the counters of what just happened.
    let m = http_get(http, "/metrics", None).await;
    assert_eq!(m.status, 200);
    assert!(m
        .header("content-type")
        .unwrap()
        .contains("openmetrics-text"));
    let text = &m.body;
    assert_eq!(
        metric(text, "mqttsn_devices{state=\"active\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(metric(text, "mqttsn_devices{state=\"asleep\"}"), Some(1.0));
    assert_eq!(
        metric(text, "mqttsn_messages_total{direction=\"up\",qos=\"1\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric(
            text,
            "mqttsn_message_payload_bytes_total{direction=\"up\",qos=\"1\"}"
        ),
        Some(4.0)
    );
    assert_eq!(metric(text, "mqttsn_sleep_buffer_messages"), Some(1.0));
    // The two devices' sessions and the gateway's own availability session.
    assert_eq!(
        metric(text, "mqttsn_upstream_connacks_total{result=\"accepted\"}"),
        Some(3.0)
    );
    let frames_in = format!(
        "mqttsn_transport_frames_total{{transport=\"0\",kind=\"udp\",name=\"{}\",direction=\"in\"}}",
        gw.udp
    );
    assert!(metric(text, &frames_in).unwrap() >= 6.0, "{text}");
    assert!(text.trim_end().ends_with("# EOF"));

    // The page in a real browser.
    let Some(chromium) = chromium_or_skip() else {
        return;
    };
    let url = format!("http://{http}/");
    let dom = page_until(&chromium, &url, "sleepy", |r| {
        r.contains("data-state=\"asleep\"") && r.contains("data-queued=\"1\"")
    })
    .await;
    let kitchen = row(&dom, "kitchen").expect("the active device has a row");
    assert!(kitchen.contains("data-state=\"active\""), "{kitchen}");
    assert!(dom.contains(&format!("v{}", env!("CARGO_PKG_VERSION"))));
    assert!(
        dom.contains("data-link=\"up\""),
        "the header shows the broker link"
    );
    // The detail view of one device (opened from the URL, as a click on its row does).
    let (c, u) = (chromium.clone(), format!("{url}?device=sleepy"));
    let detail = tokio::task::spawn_blocking(move || dump_dom(&c, &u, Duration::from_secs(4)))
        .await
        .unwrap();
    assert!(detail.contains("data-client-id=\"sleepy\""));
    assert!(
        detail.contains("cmd/sleepy (QoS 1)"),
        "the detail view lists its subscription"
    );

    // Wake-up (PINGREQ with ClientId): awake while its message is in flight...
    sleepy
        .send(Message::PingReq {
            client_id: Some("sleepy".into()),
        })
        .await;
    let Message::Publish(p) = sleepy.recv().await else {
        panic!("the buffered message first")
    };
    assert_eq!(&p.data[..], b"lamp on");
    page_until(&chromium, &url, "sleepy", |r| {
        r.contains("data-state=\"awake\"") && r.contains("data-queued=\"0\"")
    })
    .await;
    // ...acknowledged: PINGRESP, asleep again with nothing buffered...
    let codec::TopicRef::Id(tid) = p.topic else {
        panic!("{:?}", p.topic)
    };
    sleepy
        .send(Message::Puback(codec::Puback {
            topic_id: tid,
            msg_id: p.msg_id,
            return_code: codec::ReturnCode::Accepted,
        }))
        .await;
    // Re-sends (T_RETRY is short in tests, the page took seconds) are the same message.
    loop {
        match sleepy.recv().await {
            Message::PingResp => break,
            Message::Publish(again) => {
                assert!(again.dup && again.msg_id == p.msg_id, "{again:?}");
                sleepy
                    .send(Message::Puback(codec::Puback {
                        topic_id: tid,
                        msg_id: again.msg_id,
                        return_code: codec::ReturnCode::Accepted,
                    }))
                    .await;
            }
            other => panic!("unexpected while awake: {other:?}"),
        }
    }
    // ...then CONNECT: active (spec §6.14: a sleeping client returns to active by CONNECT).
    sleepy.connect("sleepy", false, 30).await;
    page_until(&chromium, &url, "sleepy", |r| {
        r.contains("data-state=\"active\"") && r.contains("data-queued=\"0\"")
    })
    .await;
    drop(gw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_is_required_when_one_is_configured() {
    let broker = broker_or_skip!(backend());
    let dir = TempDir::new("status-auth");
    let secret = dir.0.join("http-password");
    std::fs::write(&secret, "pa:ss w0rd\n").unwrap();
    let http_port = free_tcp_port();
    let mut config = test_config(broker.port);
    // What a LAN bind needs (tested on loopback: no fixed or public address in a test).
    config.http.bind = Some(SocketAddr::from(([127, 0, 0, 1], http_port)));
    config.http.username = Some("admin".into());
    config.http.password_file = Some(secret);
    let _gw = GatewayProcess::start(GATEWAY_BIN.as_ref(), &config, &dir.0);
    let http = SocketAddr::from(([127, 0, 0, 1], http_port));
    for path in [
        "/",
        "/metrics",
        "/api/devices",
        "/api/devices/x",
        "/api/gateway",
    ] {
        let r = http_get(http, path, None).await;
        assert_eq!(r.status, 401, "{path}");
        assert!(r.header("www-authenticate").unwrap().starts_with("Basic"));
        // admin:pa:ss w0rd, with a wrong password.
        let wrong = http_get(http, path, Some("Basic YWRtaW46cGE6c3MgdzByeA==")).await;
        assert_eq!(wrong.status, 401, "{path}");
    }
    // admin:pa:ss w0rd (the file's trailing newline is not part of it).
    let ok = http_get(http, "/metrics", Some("Basic YWRtaW46cGE6c3MgdzByZA==")).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert!(ok.body.contains("mqttsn_devices"));
    let page = http_get(http, "/", Some("Basic YWRtaW46cGE6c3MgdzByZA==")).await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("<title>MQTT-SN gateway</title>"));
}
