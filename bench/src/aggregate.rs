//! Test 11: aggregating mode (`broker.upstream.sessions: aggregating`).
//!
//! a. uplink QoS 1 throughput and gateway CPU per message, transparent and aggregating
//!    (4 shared sessions) side by side, same devices, same mosquitto;
//! b. `--agg-devices` (default 100,000) devices connected at once over 4 upstream sessions:
//!    every CONNACK, the gateway's RSS, and the TCP connections it holds to mosquitto.
//!
//! The bench process may hold at most 20,000 files (the hard RLIMIT_NOFILE here), so the
//! devices of b. are spread over child processes (this binary run with `--agg-child`), each
//! with at most `CHILD_DEVICES` UDP sockets, and over source addresses 127.0.1.x (one address
//! has only the 28,232 ephemeral ports of 32768-60999).
//! Owns: that test's procedure and rows, and the child mode. Never: an in-process gateway.

use std::io::{BufRead, BufReader, Write};

use crate::*;

/// UDP sockets per child process (below the 20,000 open-file limit with room to spare).
const CHILD_DEVICES: usize = 17_000;
/// Devices per source address (below the 28,232 ephemeral ports of one address).
const DEVICES_PER_IP: usize = 25_000;

/// Established TCP connections whose remote end is `port` on loopback (the gateway's
/// connections to mosquitto while no other client is connected).
fn tcp_to(port: u16) -> usize {
    let mut n = 0;
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(rem), Some(st)) = (f.get(2), f.get(3)) else {
                continue;
            };
            let rport = rem
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if *st == "01" && rport == Some(port) {
                n += 1;
            }
        }
    }
    n
}

fn aggregating_config(dir: &Path, max_devices: usize, tag: &str) -> Result<PathBuf> {
    let path = dir.join(format!("gateway-{tag}.yaml"));
    std::fs::write(
        &path,
        format!(
            "broker:\n  mode: upstream\n  upstream:\n    keep_alive: 600s\n    sessions: aggregating\n    connections: 4\n{}store:\n  path: null\nhttp:\n  bind: null\n",
            trusted_limits(max_devices),
        ),
    )?;
    Ok(path)
}

/// 11. Aggregating mode beside transparent mode.
pub(crate) async fn aggregate_test(
    a: &Args,
    gw_bin: &Path,
    dir: &Path,
    broker: SocketAddr,
    rows: &mut Vec<Row>,
) -> Result<()> {
    // a. The same uplink QoS 1 load through each mode.
    for aggregating in [false, true] {
        let tag = if aggregating {
            "agg-up1"
        } else {
            "transparent-up1"
        };
        let conf = if aggregating {
            aggregating_config(dir, a.devices + 100, tag)?
        } else {
            gateway_config(dir, a.devices + 100, None, tag)?
        };
        let bstr = broker.to_string();
        let (gwp, gw) = spawn_gateway(gw_bin, dir, &conf, Some(&bstr), None, tag).await?;
        let mut devs = Vec::new();
        for i in 0..a.devices {
            devs.push(Device::ready(gw, tag, i).await?);
        }
        let before = cpu_ticks(gwp.pid()).unwrap_or(0);
        // The CPU note is this test's own (over its window), not uplink_qos1's.
        let (_, rt) = uplink_qos1(a, broker, devs, false, None, rows).await?;
        let ticks = cpu_ticks(gwp.pid()).unwrap_or(0).saturating_sub(before);
        let msgs = (rt * a.secs).max(1.0);
        let us_per_msg = ticks_us(ticks) / msgs;
        if let Some(r) = rows.last_mut() {
            let mode = if aggregating {
                "aggregating (4 shared sessions)"
            } else {
                "transparent (a session per device)"
            };
            r.metric = format!("11a. Uplink QoS 1, {mode}: {} devices", a.devices);
            r.notes = format!(
                "gateway CPU {:.1} µs per message ({:.2} s user+sys over the run); {}",
                us_per_msg,
                ticks_us(ticks) / 1e6,
                r.notes
            );
        }
        eprintln!(
            "[agg] {tag}: {} msg/s, {us_per_msg:.1} µs CPU/msg",
            fmt_rate(rt)
        );
        drop(gwp);
    }

    // b. Many devices at once over 4 upstream connections.
    let n = a.agg_devices;
    if n == 0 {
        return Ok(());
    }
    let tag = "agg-many";
    let conf = aggregating_config(dir, n + 100, tag)?;
    let bstr = broker.to_string();
    let (mut gwp, gw) = spawn_gateway(gw_bin, dir, &conf, Some(&bstr), None, tag).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = rss_kb(gwp.pid()).unwrap_or(0);
    let exe = std::env::current_exe()?;
    let mut children = Vec::new();
    let t0 = Instant::now();
    let mut start = 0;
    while start < n {
        let count = CHILD_DEVICES.min(n - start);
        let child = std::process::Command::new(&exe)
            .arg("--agg-child")
            .arg(format!("{gw},{start},{count},{}", a.concurrency.max(1)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("spawn a bench child")?;
        children.push(child);
        start += count;
    }
    let (mut accepted, mut other) = (0usize, 0usize);
    let mut notes = Vec::new();
    for c in &mut children {
        let out = c.stdout.take().context("child stdout")?;
        let line = tokio::task::spawn_blocking(move || {
            let mut l = String::new();
            let _ = BufReader::new(out).read_line(&mut l);
            l
        })
        .await?;
        // "accepted <n> other <m> [error]"
        let f: Vec<&str> = line.split_whitespace().collect();
        accepted += f.get(1).and_then(|x| x.parse().ok()).unwrap_or(0);
        other += f.get(3).and_then(|x| x.parse().ok()).unwrap_or(0);
        if f.len() > 4 {
            notes.push(f[4..].join(" "));
        }
    }
    let took = t0.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss = rss_kb(gwp.pid()).unwrap_or(0);
    let conns = tcp_to(broker.port());
    let alive = gwp.alive();
    // Release the children (their devices stay connected until now).
    for c in &mut children {
        if let Some(mut i) = c.stdin.take() {
            let _ = i.write_all(b"done\n");
        }
    }
    for mut c in children {
        let _ = tokio::task::spawn_blocking(move || c.wait()).await;
    }
    let met = accepted == n && rss <= 400 * 1024 && conns <= 5;
    rows.push(row(
        format!("11b. Aggregating: {n} devices connected at once"),
        format!(
            "{accepted}/{n} CONNACK Accepted, RSS {}{}",
            mb(rss),
            if met { " (met)" } else { " (MISSED)" }
        ),
        "all accepted, <= 400 MB, <= 4 upstream",
        format!(
            "{conns} TCP connections to mosquitto (4 shared sessions + the status session); connected in {:.1} s ({} connects/s, {} children x {} outstanding); idle RSS {}; {other} not accepted{}{}",
            took.as_secs_f64(),
            fmt_rate(rate(accepted as u64, took)),
            n.div_ceil(CHILD_DEVICES),
            a.concurrency,
            mb(idle),
            if notes.is_empty() { String::new() } else { format!("; {}", notes.join(" | ")) },
            if alive { "" } else { "; GATEWAY EXITED" },
        ),
    ));
    let (w, ex) = log_warnings(&gwp.log);
    if w > 0 {
        rows.push(row(
            "11z. Gateway warnings, aggregating",
            w.to_string(),
            "0",
            ex.join(" | "),
        ));
    }
    drop(gwp);
    Ok(())
}

/// The child mode: `--agg-child <gateway>,<first>,<count>,<concurrency>`. Connects `count`
/// devices (`bench-agg-<i>`), prints `accepted <n> other <m> [error]`, and keeps them until a
/// line (or EOF) arrives on stdin.
pub(crate) async fn agg_child(spec: &str) -> Result<()> {
    let f: Vec<&str> = spec.split(',').collect();
    let [gw, first, count, conc] = f.as_slice() else {
        bail!("--agg-child wants <gateway>,<first>,<count>,<concurrency>");
    };
    let gw: SocketAddr = gw.parse()?;
    let (first, count, conc): (usize, usize, usize) =
        (first.parse()?, count.parse()?, conc.parse()?);
    let _ = rlimit::increase_nofile_limit(65536);
    let sem = Arc::new(Semaphore::new(conc.max(1)));
    let mut set = JoinSet::new();
    let mut error = String::new();
    for i in first..first + count {
        let ip = std::net::Ipv4Addr::new(127, 0, 1, 1 + (i / DEVICES_PER_IP) as u8);
        let sock = match UdpSocket::bind((ip, 0)).await {
            Ok(s) => s,
            Err(e) => {
                error = format!("socket #{i} on {ip}: {e}");
                break;
            }
        };
        let permit = sem.clone().acquire_owned().await?;
        set.spawn(async move {
            let _permit = permit;
            let mut d = Device {
                sock,
                gw,
                buf: vec![0u8; 256],
            };
            let (rc, _) = d.connect_retrying(&format!("bench-agg-{i}"), 3).await;
            (d.sock, rc)
        });
    }
    let (mut accepted, mut other) = (0usize, 0usize);
    let mut socks = Vec::with_capacity(count);
    while let Some(r) = set.join_next().await {
        let (s, rc) = r?;
        if rc == Some(ReturnCode::Accepted) {
            accepted += 1;
        } else {
            other += 1;
        }
        socks.push(s);
    }
    println!("accepted {accepted} other {other} {error}");
    std::io::stdout().flush()?;
    let _ = tokio::task::spawn_blocking(|| {
        let mut l = String::new();
        let _ = std::io::stdin().read_line(&mut l);
    })
    .await;
    drop(socks);
    Ok(())
}
