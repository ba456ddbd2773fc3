//! Test 10, TLS upstream: uplink QoS 1 through the gateway to one mosquitto, over plain TCP and
//! over TLS (a second listener of the same broker, certificates made by `testkit::TestCa`),
//! side by side in one run, and their ratio.
//! Owns: that test's broker, certificates, gateways and rows.
//! Never: an in-process gateway; the TLS gateway differs from the plain one only in
//! `broker.upstream.tls` and the port.

use crate::*;

use testkit::TestCa;

/// Uplink QoS 1 msg/s of `--devices` devices through a gateway started with `conf`.
async fn qos1_through(
    a: &Args,
    gw_bin: &Path,
    dir: &Path,
    (conf, to): (&Path, SocketAddr),
    check: SocketAddr,
    tag: &str,
    rows: &mut Vec<Row>,
) -> Result<(f64, String)> {
    let (mut gwp, gw) = spawn_gateway(gw_bin, dir, conf, Some(&to.to_string()), None, tag).await?;
    let mut devs = Vec::new();
    for i in 0..a.devices {
        devs.push(Device::ready(gw, "up", i).await?);
    }
    let mut scratch = Vec::new();
    let (devs, rate) = uplink_qos1(a, check, devs, false, None, &mut scratch).await?;
    drop(devs);
    gateway_health(&mut gwp, &format!("10z. Gateway warnings, {tag}"), rows);
    let notes = scratch.pop().map(|r| r.notes).unwrap_or_default();
    Ok((rate, notes))
}

pub(crate) async fn tls_test(
    a: &Args,
    gw_bin: &Path,
    dir: &Path,
    rows: &mut Vec<Row>,
) -> Result<()> {
    let certs = dir.join("tls-certs");
    std::fs::create_dir_all(&certs)?;
    let ca = TestCa::new(&certs, "bench");
    let server = ca.server("server");
    let tls_port = free_tcp_port();
    let extra = format!(
        "listener {tls_port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\n",
        ca.cert_file.display(),
        server.cert_file.display(),
        server.key_file.display()
    );
    let (mut mosq, plain_port) =
        start_mosquitto(&a.mosquitto, dir, !a.mosquitto_nagle, &extra, "-tls")?;
    let plain: SocketAddr = ([127, 0, 0, 1], plain_port).into();
    let tls: SocketAddr = ([127, 0, 0, 1], tls_port).into();
    eprintln!("[tls] mosquitto plain on {plain}, TLS on {tls}");
    let max_devices = a.devices + 100;
    let conf = |tag: &str, tls: &str| -> Result<PathBuf> {
        let path = dir.join(format!("gateway-{tag}.yaml"));
        std::fs::write(
            &path,
            format!(
                "broker:\n  mode: upstream\n  upstream:\n    keep_alive: 600s\n{tls}{}store:\n  path: null\n",
                trusted_limits(max_devices)
            ),
        )?;
        Ok(path)
    };
    let plain_conf = conf("tls-plain", "")?;
    let tls_conf = conf(
        "tls-tls",
        &format!("    tls:\n      ca_file: {}\n", ca.cert_file.display()),
    )?;
    eprintln!("[tls] plain TCP");
    let (p, p_notes) = qos1_through(
        a,
        gw_bin,
        dir,
        (&plain_conf, plain),
        plain,
        "tls-plain",
        rows,
    )
    .await?;
    eprintln!("[tls] TLS");
    let (t, t_notes) =
        qos1_through(a, gw_bin, dir, (&tls_conf, tls), plain, "tls-tls", rows).await?;
    let n = a.devices;
    rows.push(row(
        format!("10a. Uplink QoS 1 over plain TCP: {n} devices, 1 in flight each"),
        format!("{} msg/s", fmt_rate(p)),
        "—",
        p_notes,
    ));
    rows.push(row(
        format!("10b. Uplink QoS 1 over TLS (rustls, ring): {n} devices, 1 in flight each"),
        format!("{} msg/s", fmt_rate(t)),
        "—",
        t_notes,
    ));
    rows.push(row(
        "10. TLS vs plain TCP upstream: uplink QoS 1",
        format!("{} vs {} msg/s", fmt_rate(t), fmt_rate(p)),
        "—",
        if p > 0.0 {
            format!(
                "TLS / plain = {:.0} %; one session (and TLS connection) per device, same mosquitto",
                100.0 * t / p
            )
        } else {
            "—".into()
        },
    ));
    if !mosq.alive() {
        bail!("mosquitto (TLS) exited (see {})", mosq.log.display());
    }
    Ok(())
}
