//! Test 9, the embedded broker: tests 5, 2w, 3 and 6a against `broker.mode: embedded`, next to
//! the same numbers against mosquitto upstream.
//! Owns: that test's procedure, its gateways and rows.
//! Never: an in-process broker: the embedded one runs in the gateway child, measured from /proc.

use crate::*;

/// The numbers test 9 compares between the embedded broker and mosquitto upstream.
#[derive(Default, Clone, Copy, Debug)]
pub(crate) struct Cmp {
    /// Uplink QoS 0 msg/s, closed loop (`--udp-window`; open loop if that is 0).
    pub(crate) up0: Option<f64>,
    /// Uplink QoS 1 msg/s, one in flight per device.
    pub(crate) up1: Option<f64>,
    /// Paced uplink latency (p50, p99) in ms.
    pub(crate) lat: Option<(f64, f64)>,
    /// Gateway VmRSS 0.5 s after it answered SEARCHGW, kB.
    pub(crate) idle_kb: Option<u64>,
    /// Gateway threads at that moment.
    pub(crate) threads: Option<u64>,
}

/// Tests 6a, 5, 2w and 3 against one gateway (already started) and `broker`, the broker the
/// gateway's sessions go to: idle RSS, then `--devices` devices connect and run the paced
/// latency test, the uplink QoS 0 test (closed loop) and the uplink QoS 1 test.
pub(crate) async fn cmp_suite(
    a: &Args,
    gwp: &Proc,
    gw: SocketAddr,
    broker: SocketAddr,
    rows: &mut Vec<Row>,
) -> Result<Cmp> {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut c = Cmp {
        idle_kb: rss_kb(gwp.pid()),
        threads: threads(gwp.pid()),
        ..Cmp::default()
    };
    let mut devs = Vec::new();
    for i in 0..a.devices {
        devs.push(Device::ready(gw, "up", i).await?);
    }
    let socks = share(&mut devs);
    c.lat = Some(latency(a, broker, gw, &socks, rows).await?);
    c.up0 = Some(
        uplink_qos0(
            a,
            broker,
            (gw, Some(gwp.pid())),
            &socks,
            None,
            a.udp_window,
            rows,
        )
        .await?,
    );
    unshare(&mut devs, socks, gw);
    drain(&mut devs).await;
    let (mut devs, r) = uplink_qos1(a, broker, devs, false, Some(gwp.pid()), rows).await?;
    c.up1 = Some(r);
    drain(&mut devs).await;
    let (devs, _) = uplink_qos1(a, broker, devs, true, Some(gwp.pid()), rows).await?;
    drop(devs);
    Ok(c)
}

/// Test 9: tests 5, 2w, 3 and 6a against the embedded broker (`broker.mode: embedded`, no
/// `--broker`; the bench's MQTT clients connect to `broker.embedded.bind`), next to the same
/// numbers against mosquitto upstream. Those come from tests 2w, 3, 5 and 6a of this run when
/// they ran; otherwise they are measured here first, the same way.
pub(crate) async fn embedded_test(
    a: &Args,
    gw_bin: &Path,
    dir: &Path,
    mosquitto: SocketAddr,
    mut up: Cmp,
    rows: &mut Vec<Row>,
) -> Result<()> {
    let max_devices = a.devices + 100;
    let mut up_note = "mosquitto numbers from tests 2w, 3, 5 and 6a of this run";
    if up.up0.is_none() || up.up1.is_none() || up.lat.is_none() || up.idle_kb.is_none() {
        eprintln!("[embedded] the mosquitto side first");
        up_note = "mosquitto numbers measured by this test (same gateway config, upstream mode)";
        let conf = gateway_config(
            dir,
            max_devices,
            Some(&dir.join("gateway-cmp.db")),
            "cmp-upstream",
        )?;
        let (mut gwp, gw) = spawn_gateway(
            gw_bin,
            dir,
            &conf,
            Some(&mosquitto.to_string()),
            None,
            "cmp-upstream",
        )
        .await?;
        let mut scratch = Vec::new();
        let m = cmp_suite(a, &gwp, gw, mosquitto, &mut scratch).await?;
        gateway_health(&mut gwp, "9z. Gateway warnings, mosquitto side", rows);
        up.up0 = up.up0.or(m.up0);
        up.up1 = up.up1.or(m.up1);
        up.lat = up.lat.or(m.lat);
        up.idle_kb = up.idle_kb.or(m.idle_kb);
        up.threads = up.threads.or(m.threads);
    }

    let port = free_tcp_port();
    let data = dir.join("embedded-data");
    std::fs::create_dir_all(&data)?;
    let conf = dir.join("gateway-embedded.yaml");
    std::fs::write(
        &conf,
        format!(
            "broker:\n  mode: embedded\n  upstream:\n    keep_alive: 600s\n  embedded:\n    bind: 127.0.0.1:{port}\n    data_dir: {}\n{}store:\n  path: {}\n",
            data.display(),
            trusted_limits(max_devices),
            dir.join("gateway-embedded.db").display()
        ),
    )?;
    let (mut gwp, gw) = spawn_gateway(gw_bin, dir, &conf, None, Some(port), "embedded").await?;
    let broker: SocketAddr = ([127, 0, 0, 1], port).into();
    eprintln!(
        "[embedded] gateway on {gw} (pid {}), embedded broker on {broker}",
        gwp.pid()
    );
    let mut erows = Vec::new();
    let e = cmp_suite(a, &gwp, gw, broker, &mut erows).await?;
    for r in erows {
        rows.push(row(
            if r.metric.contains("mosquitto") {
                format!("E{}", r.metric.replace("mosquitto", "embedded broker"))
            } else {
                format!("E{} (embedded broker)", r.metric)
            },
            r.value,
            &r.target,
            r.notes
                .replace(
                    &format!("; mosquitto set_tcp_nodelay {}", !a.mosquitto_nagle),
                    "",
                )
                .replace("mosquitto", "embedded broker"),
        ));
    }
    let idle_note = format!(
        "{} threads vs {}",
        e.threads.unwrap_or(0),
        up.threads.map_or("?".to_string(), |t| t.to_string()),
    );
    gateway_health(&mut gwp, "E9z. Gateway warnings, embedded broker", rows);
    drop(gwp);

    let ratio = |e: Option<f64>, m: Option<f64>| match (e, m) {
        (Some(e), Some(m)) if m > 0.0 => format!("embedded / mosquitto = {:.0} %", 100.0 * e / m),
        _ => "—".to_string(),
    };
    let rate_s = |r: Option<f64>| r.map_or("?".to_string(), |r| format!("{} msg/s", fmt_rate(r)));
    let lat_s = |l: Option<(f64, f64)>| {
        l.map_or("?".to_string(), |(p50, p99)| {
            format!("p50 {p50:.2} ms, p99 {p99:.2} ms")
        })
    };
    let cmp = "9. Embedded vs mosquitto upstream";
    rows.push(row(
        format!(
            "{cmp}: uplink QoS 0, {} devices, {}",
            a.devices,
            if a.udp_window > 0 {
                format!("closed loop, window {}", a.udp_window)
            } else {
                "open-loop blast".to_string()
            }
        ),
        format!("{} vs {}", rate_s(e.up0), rate_s(up.up0)),
        "—",
        format!("{}; {up_note}", ratio(e.up0, up.up0)),
    ));
    rows.push(row(
        format!(
            "{cmp}: uplink QoS 1, {} devices, 1 in flight each",
            a.devices
        ),
        format!("{} vs {}", rate_s(e.up1), rate_s(up.up1)),
        "—",
        ratio(e.up1, up.up1),
    ));
    rows.push(row(
        format!("{cmp}: uplink latency at {} msg/s", a.latency_rate),
        format!("{} vs {}", lat_s(e.lat), lat_s(up.lat)),
        "—",
        "device send -> subscriber receive",
    ));
    rows.push(row(
        format!("{cmp}: gateway RSS idle"),
        format!(
            "{} vs {}",
            e.idle_kb.map_or("?".to_string(), mb),
            up.idle_kb.map_or("?".to_string(), mb)
        ),
        "—",
        format!(
            "VmRSS 0.5 s after the gateway answered SEARCHGW; {idle_note}; the embedded figure includes the broker (rmqtt, sled) in the same process"
        ),
    ));
    Ok(())
}
