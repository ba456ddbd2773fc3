//! Test 6: the gateway's RSS idle and with many devices connected at once.
//! Owns: that test's procedure and rows, and the gateways it starts for it.
//! Never: reads its own RSS: the gateway is a child process and its `/proc` is read.

use crate::*;

/// 6. Gateway RSS idle and with many devices connected at once.
pub(crate) async fn rss(
    a: &Args,
    gw_bin: &Path,
    dir: &Path,
    broker: SocketAddr,
    mosq_pid: u32,
    rows: &mut Vec<Row>,
) -> Result<(u64, Option<u64>)> {
    let top = a.rss_devices.iter().copied().max().unwrap_or(0);
    let (mut gwp, gw) = start_gateway(gw_bin, dir, broker.port(), top.max(1) + 100, "rss").await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = rss_kb(gwp.pid()).unwrap_or(0);
    let idle_threads = threads(gwp.pid());
    eprintln!("[rss] idle {}", mb(idle));
    rows.push(row(
        "6a. Gateway RSS idle",
        mb(idle),
        "—",
        format!("{} threads", threads(gwp.pid()).unwrap_or(0)),
    ));
    let mut socks: Vec<UdpSocket> = Vec::new();
    let sem = Arc::new(Semaphore::new(a.concurrency.max(1)));
    let mut steps: Vec<usize> = a.rss_devices.clone();
    steps.sort_unstable();
    for target in steps {
        let from = socks.len();
        if target <= from {
            continue;
        }
        eprintln!("[rss] connecting devices {from}..{target}");
        let t0 = Instant::now();
        let mut set = JoinSet::new();
        let mut bind_error = None;
        for i in from..target {
            let d = match Device::new(gw).await {
                Ok(d) => d,
                Err(e) => {
                    bind_error = Some(format!("bench could not open UDP socket #{i}: {e}"));
                    break;
                }
            };
            let permit = sem.clone().acquire_owned().await?;
            set.spawn(async move {
                let _permit = permit;
                let mut d = d;
                let (rc, attempts) = d.connect_retrying(&format!("bench-rss-{i}"), 3).await;
                (d, rc, attempts)
            });
        }
        let (mut accepted, mut refused, mut timed_out, mut retried) =
            (0usize, 0usize, 0usize, 0usize);
        let mut codes = Vec::new();
        while let Some(r) = set.join_next().await {
            let (d, rc, attempts) = r?;
            if attempts > 1 {
                retried += 1;
            }
            match rc {
                Some(ReturnCode::Accepted) => accepted += 1,
                Some(c) => {
                    refused += 1;
                    if codes.len() < 3 {
                        codes.push(format!("{c:?}"));
                    }
                }
                None => timed_out += 1,
            }
            socks.push(d.sock);
        }
        let took = t0.elapsed();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let alive = gwp.alive();
        let r = rss_kb(gwp.pid()).unwrap_or(0);
        let mosq = rss_kb(mosq_pid).unwrap_or(0);
        let total_ok = socks.len() - refused - timed_out;
        eprintln!(
            "[rss] {} devices: {} accepted in {:.1}s, RSS {}",
            socks.len(),
            accepted,
            took.as_secs_f64(),
            mb(r)
        );
        let mut note = format!(
            "{accepted}/{} new CONNACKs Accepted in {:.2} s ({} connects/s, {} outstanding max){}{}{}; {} threads; mosquitto RSS {}",
            target - from,
            took.as_secs_f64(),
            fmt_rate(rate(accepted as u64, took)),
            a.concurrency,
            if refused > 0 { format!(", refused {refused} {codes:?}") } else { String::new() },
            if timed_out > 0 { format!(", no CONNACK {timed_out}") } else { String::new() },
            if retried > 0 { format!(", {retried} needed a resend") } else { String::new() },
            threads(gwp.pid()).unwrap_or(0),
            mb(mosq),
        );
        if let Some(e) = &bind_error {
            note.push_str(&format!("; stopped early: {e}"));
        }
        if !alive {
            note.push_str("; GATEWAY EXITED");
        }
        let target_s = if target >= 10_000 { "<= 100 MB" } else { "—" };
        let met = if target >= 10_000 && total_ok >= 10_000 {
            if r <= 100 * 1024 {
                " (met)"
            } else {
                " (MISSED)"
            }
        } else {
            ""
        };
        rows.push(row(
            format!("6. Gateway RSS, {total_ok} devices connected"),
            format!("{}{met}", mb(r)),
            target_s,
            note,
        ));
        if bind_error.is_some() || !alive || total_ok < target {
            break;
        }
    }
    let (n, ex) = log_warnings(&gwp.log);
    if n > 0 {
        rows.push(row(
            "6z. Gateway warnings during RSS test",
            n.to_string(),
            "0",
            ex.join(" | "),
        ));
    }
    drop(socks);
    Ok((idle, idle_threads))
}
