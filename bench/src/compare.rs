//! Group `compare` (issue 14): the same closed-loop loads as MQTT clients straight to mosquitto
//! ("mosquitto alone") and as MQTT-SN devices through the gateway, side by side in one run,
//! with the CPU each process spent per message (`/proc/<pid>/stat`, see `cpu`). With
//! `--gateway-b` every gateway row runs again with a second binary.
//! Owns: the cases, the measured window and the side-by-side table. Never: starts mosquitto
//! (the caller's is used for every row), or measures a gateway that served an earlier row
//! (each gateway row gets a fresh process).

use crate::*;

use cmpload::*;
use tokio::sync::Notify;

/// Load before the measured window starts (connections warm, windows full).
const WARMUP: Duration = Duration::from_millis(500);

#[derive(Clone, Copy, PartialEq, Debug)]
enum Case {
    Up0,
    Up1,
    Up2,
    Down,
    /// QoS 1 uplink paced at this many msg/s over all clients.
    Latency(f64),
}

/// Who serves a row: mosquitto alone, or a gateway binary (label, path) in front of it.
#[derive(Clone, Copy)]
enum Target<'a> {
    Mosquitto,
    Gateway(&'a str, &'a Path),
}

struct CmpRow {
    label: String,
    clients: usize,
    rate: f64,
    ratio: Option<f64>,
    p50_ms: f64,
    p99_ms: f64,
    cpu: CpuPerMsg,
    notes: String,
}

/// What one measured window gave.
struct Measured {
    msgs: u64,
    secs: f64,
    cpu: CpuPerMsg,
    lat: Vec<u64>,
    stalls: u64,
}

/// Runs the load in `tasks` for [`WARMUP`], then reads counters and CPU, lets it run for
/// `--secs`, reads them again, stops the tasks and collects their latency samples.
async fn measure(
    a: &Args,
    ctl: &Ctl,
    mut tasks: Tasks,
    gw_pid: Option<u32>,
    broker_pid: u32,
) -> Result<Measured> {
    tokio::time::sleep(WARMUP).await;
    let (c0, s0) = (
        ctl.done.load(Ordering::Relaxed),
        ctl.stalls.load(Ordering::Relaxed),
    );
    let cpu0 = CpuSnap::take(gw_pid, broker_pid);
    let t0 = Instant::now();
    ctl.measuring.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs_f64(a.secs)).await;
    ctl.measuring.store(false, Ordering::Relaxed);
    let cpu1 = CpuSnap::take(gw_pid, broker_pid);
    let secs = t0.elapsed().as_secs_f64();
    let msgs = ctl.done.load(Ordering::Relaxed) - c0;
    let stalls = ctl.stalls.load(Ordering::Relaxed) - s0;
    ctl.stop.store(true, Ordering::Relaxed);
    let mut lat = Vec::new();
    let joined = timeout(Duration::from_secs(10), async {
        while let Some(r) = tasks.join_next().await {
            lat.extend(r??);
        }
        anyhow::Ok(())
    })
    .await;
    match joined {
        Err(_) => bail!("load tasks did not stop within 10 s"),
        Ok(r) => r?,
    }
    lat.sort_unstable();
    Ok(Measured {
        msgs,
        secs,
        cpu: CpuPerMsg::between(&cpu0, &cpu1, msgs),
        lat,
        stalls,
    })
}

fn case_name(c: Case, a: &Args) -> String {
    match c {
        Case::Up0 => format!(
            "QoS 0 uplink, closed loop ({} per client outstanding)",
            a.compare_window
        ),
        Case::Up1 => "QoS 1 uplink, 1 in flight per client".into(),
        Case::Up2 => "QoS 2 uplink, 1 in flight per client".into(),
        Case::Down => format!(
            "QoS 1 downlink, 1 publisher -> N subscribers (per delivery; window {})",
            a.compare_down_window
        ),
        Case::Latency(r) => format!("QoS 1 uplink latency, paced at {} msg/s", fmt_rate(r)),
    }
}

/// One row: `case` with `n` clients against `target`.
async fn run_case(
    a: &Args,
    case: Case,
    n: usize,
    target: Target<'_>,
    (dir, broker, mosq_pid): (&Path, SocketAddr, u32),
    seq: usize,
) -> Result<CmpRow> {
    let kind = format!("cmp{seq}");
    // A phase of its own per row, so nothing left over from an earlier row is counted.
    let phase = 100 + (seq % 150) as u8;
    let (mut gwp, gw) = match target {
        Target::Mosquitto => (None, None),
        Target::Gateway(_, bin) => {
            let (p, gw) = start_gateway(bin, dir, broker.port(), n + 10, "cmp").await?;
            (Some(p), Some(gw))
        }
    };
    let who = match target {
        Target::Mosquitto => "mosquitto alone".to_string(),
        Target::Gateway(l, _) => l.to_string(),
    };
    eprintln!("[compare] {} — {who}, {n} clients", case_name(case, a));
    let ctl = Ctl::default();
    let mut tasks = Tasks::new();
    let counts = Counts::new(n);
    let sub_id = format!("bench-{kind}-sub");
    let mut devs = Vec::new();
    if let (Some(gw), true) = (gw, case != Case::Down) {
        for i in 0..n {
            devs.push(Device::ready(gw, &kind, i).await?);
        }
    }
    let payload = a.payload;
    let mut warmed = n;
    match case {
        Case::Up0 => {
            uplink_subscriber(
                broker,
                &sub_id,
                phase,
                counts.clone(),
                true,
                &ctl,
                &mut tasks,
            )
            .await?;
            let w = (a.compare_window, payload, phase);
            match gw {
                None => up0_mqtt(broker, &kind, n, w, &counts, &ctl, &mut tasks).await?,
                Some(_) => up0_sn(devs, w, &counts, &ctl, &mut tasks)?,
            }
        }
        Case::Up1 | Case::Up2 | Case::Latency(_) => {
            uplink_subscriber(
                broker,
                &sub_id,
                phase,
                counts.clone(),
                false,
                &ctl,
                &mut tasks,
            )
            .await?;
            let period = match case {
                Case::Latency(r) => Some(Duration::from_secs_f64(n as f64 / r.max(1.0))),
                _ => None,
            };
            let two = case == Case::Up2;
            match gw {
                None => {
                    let q = if two {
                        mqtt::QoS::ExactlyOnce
                    } else {
                        mqtt::QoS::AtLeastOnce
                    };
                    flow_mqtt(
                        broker,
                        &kind,
                        n,
                        (q, payload, phase),
                        period,
                        &ctl,
                        &mut tasks,
                    )
                    .await?
                }
                Some(_) => {
                    let q = if two {
                        codec::QoS::ExactlyOnce
                    } else {
                        codec::QoS::AtLeastOnce
                    };
                    flow_sn(devs, (q, payload, phase), period, &ctl, &mut tasks)?
                }
            }
        }
        Case::Down => {
            let notify = Arc::new(Notify::new());
            let cn = (&counts, &notify);
            match gw {
                None => down_mqtt(broker, &kind, n, phase, cn, &ctl, &mut tasks).await?,
                Some(gw) => down_sn(gw, &kind, n, phase, cn, &ctl, &mut tasks).await?,
            }
            let w = (a.compare_down_window, payload, phase);
            warmed = down_publisher(broker, &kind, w, cn, &ctl, &mut tasks).await?;
        }
    }
    let m = measure(a, &ctl, tasks, gwp.as_ref().map(|p| p.pid()), mosq_pid).await?;
    let mut notes = vec![format!("{} in {:.1} s", m.msgs, m.secs)];
    if m.stalls > 0 {
        notes.push(format!("{} STALLS (no answer within 1 s)", m.stalls));
    }
    if warmed < n {
        notes.push(format!("only {warmed}/{n} subscribers warmed up"));
    }
    if let Some(p) = gwp.as_mut() {
        let (nw, ex) = log_warnings(&p.log);
        if !p.alive() {
            notes.push("gateway EXITED".into());
        }
        if nw > 0 {
            notes.push(format!("{nw} gateway warnings: {}", ex.join(" | ")));
        }
    }
    drop(gwp);
    Ok(CmpRow {
        label: format!("{} — {who}", case_name(case, a)),
        clients: n,
        rate: rate_of(m.msgs, m.secs),
        ratio: None,
        p50_ms: percentile(&m.lat, 0.5) as f64 / 1000.0,
        p99_ms: percentile(&m.lat, 0.99) as f64 / 1000.0,
        cpu: m.cpu,
        notes: notes.join("; "),
    })
}

fn rate_of(n: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

/// Every case for every client count, mosquitto alone first, then each gateway (a fresh
/// process per row); returns the Markdown table.
pub(crate) async fn compare_test(
    a: &Args,
    gateways: &[(String, PathBuf)],
    dir: &Path,
    broker: SocketAddr,
    mosq_pid: u32,
) -> Result<String> {
    let t0 = Instant::now();
    let env = (dir, broker, mosq_pid);
    let mut rows: Vec<CmpRow> = Vec::new();
    let mut seq = 0usize;
    let mut side_by_side = || {
        let list: Vec<Target> = std::iter::once(Target::Mosquitto)
            .chain(
                gateways
                    .iter()
                    .map(|(l, p)| Target::Gateway(l.as_str(), p.as_path())),
            )
            .collect();
        let first = seq;
        seq += list.len();
        (list, first)
    };
    let mut up1_counts = a.compare_clients.clone();
    if !up1_counts.contains(&a.compare_latency_clients) {
        up1_counts.push(a.compare_latency_clients);
    }
    // The gateways' QoS 1 rate with the latency test's client count, for its pacing.
    let mut up1_at_lat: Vec<f64> = Vec::new();
    let plan: Vec<(Case, Vec<usize>)> = vec![
        (Case::Up0, a.compare_clients.clone()),
        (Case::Up1, up1_counts),
        (Case::Up2, a.compare_clients.clone()),
        (Case::Down, a.compare_clients.clone()),
    ];
    for (case, counts) in plan {
        for n in counts {
            let (list, first) = side_by_side();
            let base_at = rows.len();
            for (k, t) in list.into_iter().enumerate() {
                let mut r = run_case(a, case, n, t, env, first + k).await?;
                if k > 0 {
                    r.ratio = Some(r.rate / rows[base_at].rate.max(1e-9));
                    if case == Case::Up1 && n == a.compare_latency_clients {
                        up1_at_lat.push(r.rate);
                    }
                }
                rows.push(r);
            }
        }
    }
    let max = up1_at_lat.iter().copied().fold(f64::INFINITY, f64::min);
    if max.is_finite() && max > 0.0 {
        let case = Case::Latency((max * a.compare_latency_load).round());
        let n = a.compare_latency_clients;
        let (list, first) = side_by_side();
        for (k, t) in list.into_iter().enumerate() {
            rows.push(run_case(a, case, n, t, env, first + k).await?);
        }
    }
    let mut out = String::new();
    out.push_str(&format!(
        "Side by side (group compare): payload {} B, {:.0} s measured per row after {:.1} s of warm-up, CPU = utime+stime from /proc/<pid>/stat ({} ticks/s); group took {:.0} s\n\n",
        a.payload,
        a.secs,
        WARMUP.as_secs_f64(),
        clk_tck(),
        t0.elapsed().as_secs_f64()
    ));
    out.push_str("| | clients | msg/s | ratio to mosquitto alone | p50 | p99 | gateway CPU µs/msg | broker CPU µs/msg | bench CPU µs/msg | notes |\n");
    out.push_str("|---|---|---|---|---|---|---|---|---|---|\n");
    for r in &rows {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {:.2} ms | {:.2} ms | {} | {} | {} | {} |\n",
            r.label,
            r.clients,
            fmt_rate(r.rate),
            r.ratio
                .map_or("—".to_string(), |x| format!("{:.0} %", 100.0 * x)),
            r.p50_ms,
            r.p99_ms,
            fmt_us(r.cpu.gateway),
            fmt_us(r.cpu.broker),
            fmt_us(r.cpu.bench),
            r.notes
        ));
    }
    Ok(out)
}
