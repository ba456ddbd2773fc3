//! Scale in transparent mode: as many devices connected at once as the open-file limit allows,
//! toward `--scale-devices` (50,000), each with its own upstream session to mosquitto, the
//! gateway connecting from `broker.upstream.source_addresses` 127.0.0.1-4 and the devices'
//! UDP sockets spread over 127.0.1.1-4 (one address has only ~28,000 ephemeral ports).
//!
//! Owns: that test's procedure and rows, its gateway and its mosquitto. Never: a number that
//! was not measured, except the RSS at `--scale-devices`, extrapolated (and named so) from the
//! per-device slope between the two counts measured when the limit stops the test short.

use crate::*;

/// Local addresses the gateway's upstream sessions connect from.
const SOURCES: [&str; 4] = ["127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4"];
/// Devices of the first step (the slope's lower point).
const FIRST_STEP: usize = 5_000;
/// Open files kept aside per process (the gateway reserves 256; mosquitto and the bench have
/// their own listeners, logs and the like).
const FILES_ASIDE: u64 = 1_000;

/// How far the open-file limit lets the test go: the gateway and mosquitto each hold one socket
/// per device, the bench one UDP socket per device, and none may pass its hard limit (raising
/// it needs CAP_SYS_RESOURCE).
fn reachable(wanted: usize) -> (usize, u64) {
    let hard = rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(u64::MAX, |(_, hard)| hard);
    let fit = hard.saturating_sub(FILES_ASIDE) / 1_000 * 1_000;
    (wanted.min(usize::try_from(fit).unwrap_or(usize::MAX)), hard)
}

/// Established TCP connections to `port`, per local address (from `ss`).
fn sessions_per_source(port: u16) -> Vec<(String, usize)> {
    let Ok(out) = Command::new("ss")
        .args(["-Htn", "state", "established"])
        .output()
    else {
        return Vec::new();
    };
    let mut per: std::collections::BTreeMap<String, usize> = Default::default();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let (Some(local), Some(peer)) = (cols.get(2), cols.get(3)) else {
            continue;
        };
        let (Ok(local), Ok(peer)) = (local.parse::<SocketAddr>(), peer.parse::<SocketAddr>())
        else {
            continue;
        };
        if peer.port() == port {
            *per.entry(local.ip().to_string()).or_insert(0) += 1;
        }
    }
    per.into_iter().collect()
}

/// One step's outcome.
struct Step {
    devices: usize,
    accepted: usize,
    refused: usize,
    timed_out: usize,
    took: Duration,
    gw_kb: u64,
    mosq_kb: u64,
}

/// S. Scale: devices connected at once, connect rate, gateway and mosquitto RSS.
pub(crate) async fn scale_test(
    a: &Args,
    gw_bin: &Path,
    dir: &Path,
    rows: &mut Vec<Row>,
) -> Result<()> {
    let wanted = a.scale_devices;
    let (target, hard) = reachable(wanted);
    if target < wanted {
        eprintln!(
            "\n!!!!! [scale] STOPPING SHORT: the hard open-file limit is {hard} per process and \
             cannot be raised here (no CAP_SYS_RESOURCE); the gateway, mosquitto and the bench \
             each need one file per device, so the test goes to {target} devices, not {wanted}. \
             RSS at {wanted} is extrapolated from the per-device slope. !!!!!\n"
        );
    }
    // Its own mosquitto: the file limit counts every connection it holds.
    let (mut mosq, port) = start_mosquitto(&a.mosquitto, dir, !a.mosquitto_nagle, "", "-scale")?;
    let conf = dir.join("gateway-scale.yaml");
    std::fs::write(
        &conf,
        format!(
            "broker:\n  mode: upstream\n  upstream:\n    keep_alive: 600s\n    source_addresses: [{}]\n{}store:\n  path: null\n",
            SOURCES.join(", "),
            trusted_limits(target + 100),
        ),
    )?;
    let broker = format!("127.0.0.1:{port}");
    let (mut gwp, gw) = spawn_gateway(gw_bin, dir, &conf, Some(&broker), None, "scale").await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = rss_kb(gwp.pid()).unwrap_or(0);
    eprintln!("[scale] gateway idle {}; target {target} devices", mb(idle));
    let mut steps_at = vec![FIRST_STEP.min(target)];
    if target > FIRST_STEP {
        steps_at.push(target);
    }
    let mut socks: Vec<UdpSocket> = Vec::with_capacity(target);
    let mut steps: Vec<Step> = Vec::new();
    let sem = Arc::new(Semaphore::new(a.concurrency.max(1)));
    for &upto in &steps_at {
        let from = socks.len();
        // The sockets first, untimed: the rate is the gateway's, not the bench's binds.
        let mut fresh = Vec::with_capacity(upto - from);
        for i in from..upto {
            let ip = format!("127.0.1.{}", 1 + i % 4);
            match UdpSocket::bind((ip.as_str(), 0)).await {
                Ok(s) => fresh.push((i, s)),
                Err(e) => bail!("bench could not open UDP socket #{i} on {ip}: {e}"),
            }
        }
        eprintln!("[scale] connecting devices {from}..{upto}");
        let t0 = Instant::now();
        let mut set = JoinSet::new();
        for (i, sock) in fresh {
            let permit = sem.clone().acquire_owned().await?;
            set.spawn(async move {
                let _permit = permit;
                let mut d = Device {
                    sock,
                    gw,
                    buf: vec![0u8; 64],
                };
                let (rc, _) = d.connect_retrying(&format!("bench-scale-{i}"), 3).await;
                (d.sock, rc)
            });
        }
        let (mut accepted, mut refused, mut timed_out) = (0, 0, 0);
        while let Some(r) = set.join_next().await {
            let (sock, rc) = r?;
            match rc {
                Some(ReturnCode::Accepted) => accepted += 1,
                Some(_) => refused += 1,
                None => timed_out += 1,
            }
            socks.push(sock);
        }
        let took = t0.elapsed();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let step = Step {
            devices: upto - from,
            accepted,
            refused,
            timed_out,
            took,
            gw_kb: rss_kb(gwp.pid()).unwrap_or(0),
            mosq_kb: rss_kb(mosq.pid()).unwrap_or(0),
        };
        eprintln!(
            "[scale] {} devices: {accepted}/{} accepted in {:.2} s, gateway RSS {}, mosquitto {}",
            socks.len(),
            upto - from,
            took.as_secs_f64(),
            mb(step.gw_kb),
            mb(step.mosq_kb)
        );
        let failed = accepted < step.devices;
        steps.push(step);
        if failed || !gwp.alive() {
            break;
        }
    }
    let spread = sessions_per_source(port);
    let connected = socks.len();
    let total_ok: usize = steps.iter().map(|s| s.accepted).sum();
    let mut before = (0usize, idle);
    for s in &steps {
        let n = before.0 + s.devices;
        let per_dev = (s.gw_kb.saturating_sub(before.1) as f64) * 1024.0 / s.devices.max(1) as f64;
        rows.push(row(
            format!("S. Scale: {n} devices connected at once"),
            format!("{}/{} accepted", s.accepted, s.devices),
            "all accepted",
            format!(
                "{} connects/s ({} new devices, first CONNECT to last CONNACK {:.2} s, {} outstanding max){}{}; gateway RSS {} (+{:.0} B per new device); mosquitto RSS {}",
                fmt_rate(rate(s.accepted as u64, s.took)),
                s.devices,
                s.took.as_secs_f64(),
                a.concurrency,
                if s.refused > 0 { format!(", refused {}", s.refused) } else { String::new() },
                if s.timed_out > 0 { format!(", no CONNACK {}", s.timed_out) } else { String::new() },
                mb(s.gw_kb),
                per_dev,
                mb(s.mosq_kb),
            ),
        ));
        before = (n, s.gw_kb);
    }
    if let Some(last) = steps.last() {
        let r = rate(last.accepted as u64, last.took);
        rows.push(row(
            "S. Scale: connect rate",
            format!("{}/s", fmt_rate(r)),
            ">= 5,000/s",
            format!(
                "{} devices from first CONNECT to last CONNACK, {} outstanding{}",
                last.devices,
                a.concurrency,
                if r >= 5000.0 { " (met)" } else { " (MISSED)" }
            ),
        ));
    }
    if steps.len() == 2 && total_ok == connected {
        let (lo, hi) = (&steps[0], &steps[1]);
        let slope_kb = hi.gw_kb.saturating_sub(lo.gw_kb) as f64 / hi.devices as f64;
        let at = |n: usize| hi.gw_kb as f64 + slope_kb * (n as f64 - connected as f64);
        let at_wanted = at(wanted);
        let measured = connected >= wanted;
        rows.push(row(
            format!(
                "S. Gateway RSS at {wanted} devices{}",
                if measured { "" } else { " (EXTRAPOLATED)" }
            ),
            format!(
                "{}{}",
                mb(at_wanted as u64),
                if at_wanted <= 350.0 * 1024.0 {
                    " (met)"
                } else {
                    " (MISSED)"
                }
            ),
            "<= 350 MB",
            format!(
                "{:.0} B per device (slope {} -> {connected} devices: {} -> {}); idle {}{}",
                slope_kb * 1024.0,
                lo.devices,
                mb(lo.gw_kb),
                mb(hi.gw_kb),
                mb(idle),
                if measured {
                    String::new()
                } else {
                    format!(
                        "; measured only to {connected}: the hard open-file limit here is {hard} \
                         per process (gateway and mosquitto hold one socket per device)"
                    )
                }
            ),
        ));
        let mosq_slope = hi.mosq_kb.saturating_sub(lo.mosq_kb) as f64 / hi.devices as f64;
        rows.push(row(
            format!("S. mosquitto RSS at {connected} devices"),
            mb(hi.mosq_kb),
            "—",
            format!(
                "{:.0} B per connection; at {wanted}: {} (extrapolated)",
                mosq_slope * 1024.0,
                mb((hi.mosq_kb as f64 + mosq_slope * (wanted - connected) as f64) as u64)
            ),
        ));
    }
    rows.push(row(
        "S. Upstream sessions per source address",
        spread
            .iter()
            .map(|(a, n)| format!("{a}: {n}"))
            .collect::<Vec<_>>()
            .join(", "),
        "one quarter each",
        format!(
            "established TCP connections to mosquitto's port by local address (ss), with \
             broker.upstream.source_addresses: [{}]",
            SOURCES.join(", ")
        ),
    ));
    let (n, ex) = log_warnings(&gwp.log);
    if n > 0 {
        rows.push(row(
            "S. Gateway warnings during the scale test",
            n.to_string(),
            "0",
            ex.join(" | "),
        ));
    }
    if !gwp.alive() {
        bail!(
            "the gateway exited during the scale test (see {})",
            gwp.log.display()
        );
    }
    if !mosq.alive() {
        bail!(
            "mosquitto exited during the scale test (see {})",
            mosq.log.display()
        );
    }
    drop(socks);
    Ok(())
}
