//! Tests 1, 2, 3 and 5: the plain-MQTT ceiling, uplink QoS 0 and QoS 1 throughput, and paced
//! uplink latency.
//! Owns: those tests' procedure and rows. Never: starts brokers or gateways (the caller does).

use crate::*;

/// 1. Plain MQTT publishers -> mosquitto -> one subscriber.
pub(crate) async fn ceiling(a: &Args, broker: SocketAddr, rows: &mut Vec<Row>) -> Result<f64> {
    eprintln!("[ceiling] {} MQTT publishers, {:.0}s", a.devices, a.secs);
    let sub = Subscriber::start(broker, "bench-ceil-sub", PHASE_CEILING).await?;
    let mut pubs = Vec::new();
    for i in 0..a.devices {
        pubs.push(Mqtt::connect(broker, &format!("bench-ceil-{i}")).await?);
    }
    let sent = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(a.secs);
    let mut set = JoinSet::new();
    for (i, mut c) in pubs.into_iter().enumerate() {
        let sent = sent.clone();
        let mut frame = Mqtt::publish_frame(&format!("bench/ceil/{i}"), a.payload)?;
        let payload = a.payload;
        let live = sub.live.clone();
        let window = a.window;
        set.spawn(async move {
            let mut batch = BytesMut::with_capacity(frame.len() * 16);
            let mut seq = 0u32;
            while Instant::now() < end {
                gate(window, sent.load(Ordering::Relaxed), &live).await;
                // 16 PUBLISHes per write, as a buffered client library would do.
                for _ in 0..16 {
                    stamp(&mut frame, payload, PHASE_CEILING, i as u32, seq);
                    seq += 1;
                    batch.extend_from_slice(&frame);
                }
                c.stream.write_all(&batch).await?;
                batch.clear();
                sent.fetch_add(16, Ordering::Relaxed);
            }
            anyhow::Ok(c)
        });
    }
    let mut keep = Vec::new();
    while let Some(r) = set.join_next().await {
        keep.push(r??);
    }
    let r = sub.finish().await?;
    let sent = sent.load(Ordering::Relaxed);
    let d = r.last.map(|l| l - start).unwrap_or_default();
    let rt = rate(r.count, d);
    rows.push(row(
        format!(
            "1. Ceiling: {} MQTT QoS 0 publishers -> mosquitto -> 1 subscriber",
            a.devices
        ),
        format!("{} msg/s", fmt_rate(rt)),
        "—",
        format!(
            "received {} of {} sent ({:.1} %) in {:.1} s; window {}",
            r.count,
            sent,
            pct(r.count, sent),
            d.as_secs_f64(),
            a.window
        ),
    ));
    Ok(rt)
}

/// Test 2: uplink QoS 0 blast (`window` 0) or closed loop; with the gateway's pid its CPU per
/// message is in the notes.
pub(crate) async fn uplink_qos0(
    a: &Args,
    broker: SocketAddr,
    (gw, gw_pid): (SocketAddr, Option<u32>),
    devs: &[(Arc<UdpSocket>, u16)],
    ceiling: Option<f64>,
    window: u64,
    rows: &mut Vec<Row>,
) -> Result<f64> {
    eprintln!(
        "[up0] {} devices blasting QoS 0, {:.0}s",
        devs.len(),
        a.secs
    );
    let sub = Subscriber::start(broker, "bench-up0-sub", PHASE_UP0).await?;
    let drops0 = udp_drops(gw.port()).unwrap_or(0);
    let sent = Arc::new(AtomicU64::new(0));
    // Received by the subscriber plus dropped by the gateway's socket, for the window.
    let accounted = Arc::new(AtomicU64::new(0));
    let monitor = {
        let (acc, live, port) = (accounted.clone(), sub.live.clone(), gw.port());
        tokio::spawn(async move {
            loop {
                let d = udp_drops(port).unwrap_or(0).saturating_sub(drops0);
                acc.store(live.load(Ordering::Relaxed) + d, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let errors = Arc::new(AtomicU64::new(0));
    let cpu0 = gw_pid.and_then(cpu_ticks);
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(a.secs);
    let mut set = JoinSet::new();
    for (i, (sock, tid)) in devs.iter().enumerate() {
        let (sock, sent, errors) = (sock.clone(), sent.clone(), errors.clone());
        let mut frame = sn_publish_frame(*tid, codec::QoS::AtMostOnce, 0, a.payload)?;
        let payload = a.payload;
        let accounted = accounted.clone();
        set.spawn(async move {
            let mut seq = 0u32;
            while Instant::now() < end {
                gate(window, sent.load(Ordering::Relaxed), &accounted).await;
                for _ in 0..8 {
                    stamp(&mut frame, payload, PHASE_UP0, i as u32, seq);
                    seq += 1;
                    match sock.send_to(&frame, gw).await {
                        Ok(_) => sent.fetch_add(1, Ordering::Relaxed),
                        Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                    };
                }
                tokio::task::yield_now().await;
            }
        });
    }
    while set.join_next().await.is_some() {}
    let r = sub.finish().await?;
    monitor.abort();
    let drops = udp_drops(gw.port()).unwrap_or(0).saturating_sub(drops0);
    let sent = sent.load(Ordering::Relaxed);
    let d = r.last.map(|l| l - start).unwrap_or_default();
    let rt = rate(r.count, d);
    rows.push(row(
        format!(
            "2{}. Uplink QoS 0: {} devices -> gateway -> 1 subscriber, {}",
            if window == 0 { "" } else { "w" },
            devs.len(),
            if window == 0 {
                "open-loop blast".to_string()
            } else {
                format!("closed loop, window {window}")
            }
        ),
        format!("{} msg/s", fmt_rate(rt)),
        "—",
        format!(
            "received {} of {} sent ({:.1} %); gateway UDP socket buffer drops {}; send errors {}{}",
            r.count,
            sent,
            pct(r.count, sent),
            drops,
            errors.load(Ordering::Relaxed),
            gw_pid.map_or(String::new(), |p| gateway_cpu_note(p, cpu0, r.count)),
        ),
    ));
    if let Some(c) = ceiling {
        let ratio = 100.0 * rt / c;
        rows.push(row(
            if window == 0 {
                "2b. Uplink QoS 0 blast / ceiling"
            } else {
                "2wb. Uplink QoS 0 closed loop / ceiling"
            },
            format!("{ratio:.0} %"),
            ">= 80 %",
            if ratio >= 80.0 { "met" } else { "MISSED" },
        ));
    }
    Ok(rt)
}

/// 3. Uplink QoS 1: one PUBLISH in flight per device.
pub(crate) async fn uplink_qos1(
    a: &Args,
    broker: SocketAddr,
    devs: Vec<(Device, u16)>,
    persistent_sub: bool,
    gw_pid: Option<u32>,
    rows: &mut Vec<Row>,
) -> Result<(Vec<(Device, u16)>, f64)> {
    eprintln!(
        "[up1] {} devices, QoS 1, {:.0}s, persistent subscriber: {persistent_sub}",
        devs.len(),
        a.secs
    );
    let n = devs.len();
    let sub = if persistent_sub {
        Subscriber::start_persistent(broker, "bench-up1p-sub", PHASE_UP1).await?
    } else {
        Subscriber::start(broker, "bench-up1-sub", PHASE_UP1).await?
    };
    let cpu0 = gw_pid.and_then(cpu_ticks);
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(a.secs);
    let mut set = JoinSet::new();
    for (i, (mut d, tid)) in devs.into_iter().enumerate() {
        let mut frame = sn_publish_frame(tid, codec::QoS::AtLeastOnce, 1, a.payload)?;
        let payload = a.payload;
        set.spawn(async move {
            let (mut acked, mut timeouts, mut rejected) = (0u64, 0u64, 0u64);
            let mut msg_id = 100u16;
            let mut lat = Vec::new();
            'outer: while Instant::now() < end {
                msg_id = msg_id.wrapping_add(1).max(1);
                set_sn_msg_id(&mut frame, msg_id);
                stamp(&mut frame, payload, PHASE_UP1, i as u32, u32::from(msg_id));
                let t0 = Instant::now();
                d.sock.send_to(&frame, d.gw).await?;
                loop {
                    match d.recv(Duration::from_secs(2)).await? {
                        Some(Message::Puback(p)) if p.msg_id == msg_id => {
                            if p.return_code == ReturnCode::Accepted {
                                acked += 1;
                                lat.push(t0.elapsed().as_micros() as u64);
                            } else {
                                rejected += 1;
                            }
                            break;
                        }
                        Some(_) => continue,
                        None => {
                            timeouts += 1;
                            continue 'outer;
                        }
                    }
                }
            }
            anyhow::Ok(((d, tid), acked, timeouts, rejected, lat))
        });
    }
    let (mut acked, mut timeouts, mut rejected) = (0, 0, 0);
    let mut lat = Vec::new();
    let mut back = Vec::new();
    while let Some(r) = set.join_next().await {
        let (d, a1, t, rj, l) = r??;
        back.push(d);
        acked += a1;
        timeouts += t;
        rejected += rj;
        lat.extend(l);
    }
    let acked_at = start.elapsed();
    let r = sub.finish().await?;
    lat.sort_unstable();
    let rt = rate(acked, acked_at);
    rows.push(row(
        if persistent_sub {
            format!("3p. Uplink QoS 1: {n} devices, 1 in flight each (PUBACKs), persistent QoS 1 subscriber")
        } else {
            format!("3. Uplink QoS 1: {n} devices, 1 in flight each (PUBACKs)")
        },
        format!("{} msg/s", fmt_rate(rt)),
        "—",
        format!(
            "{acked} PUBACKs; subscriber received {}; PUBLISH->PUBACK p50 {:.2} ms, p99 {:.2} ms; timeouts {timeouts}, rejected {rejected}{}",
            r.count,
            percentile(&lat, 0.5) as f64 / 1000.0,
            percentile(&lat, 0.99) as f64 / 1000.0,
            gw_pid.map_or(String::new(), |p| gateway_cpu_note(p, cpu0, acked)),
        ),
    ));
    Ok((back, rt))
}

/// 5. Paced uplink latency, device send -> subscriber receive.
pub(crate) async fn latency(
    a: &Args,
    broker: SocketAddr,
    gw: SocketAddr,
    devs: &[(Arc<UdpSocket>, u16)],
    rows: &mut Vec<Row>,
) -> Result<(f64, f64)> {
    eprintln!(
        "[latency] {} msg/s for {:.0}s",
        a.latency_rate, a.latency_secs
    );
    let sub = Subscriber::start(broker, "bench-lat-sub", PHASE_LAT).await?;
    let mut frames: Vec<BytesMut> = devs
        .iter()
        .map(|(_, tid)| sn_publish_frame(*tid, codec::QoS::AtMostOnce, 0, a.payload))
        .collect::<Result<_>>()?;
    let total = (a.latency_rate as f64 * a.latency_secs) as u64;
    let period = Duration::from_secs_f64(1.0 / a.latency_rate.max(1) as f64);
    let start = tokio::time::Instant::now();
    for k in 0..total {
        tokio::time::sleep_until(start + period * k as u32).await;
        let i = (k as usize) % devs.len();
        stamp(&mut frames[i], a.payload, PHASE_LAT, i as u32, k as u32);
        devs[i].0.send_to(&frames[i], gw).await?;
    }
    let mut r = sub.finish().await?;

    // The same pacing from one plain MQTT publisher straight to mosquitto: the baseline.
    let sub = Subscriber::start(broker, "bench-lat-direct-sub", PHASE_LAT_DIRECT).await?;
    let mut publ = Mqtt::connect(broker, "bench-lat-direct-pub").await?;
    let mut frame = Mqtt::publish_frame("bench/lat/direct", a.payload)?;
    let start = tokio::time::Instant::now();
    for k in 0..total {
        tokio::time::sleep_until(start + period * k as u32).await;
        stamp(&mut frame, a.payload, PHASE_LAT_DIRECT, 0, k as u32);
        publ.stream.write_all(&frame).await?;
    }
    let mut base = sub.finish().await?;

    r.lat_us.sort_unstable();
    base.lat_us.sort_unstable();
    let ms = |v: &[u64], p: f64| percentile(v, p) as f64 / 1000.0;
    let max = |v: &[u64]| v.last().copied().unwrap_or(0) as f64 / 1000.0;
    let (p50, p99) = (ms(&r.lat_us, 0.5), ms(&r.lat_us, 0.99));
    rows.push(row(
        format!("5a. Uplink latency p50 at {} msg/s", a.latency_rate),
        format!("{p50:.2} ms"),
        "—",
        format!(
            "{} of {total} received; max {:.2} ms; {} devices round-robin",
            r.count,
            max(&r.lat_us),
            devs.len()
        ),
    ));
    rows.push(row(
        format!("5b. Uplink latency p99 at {} msg/s", a.latency_rate),
        format!("{p99:.2} ms"),
        "<= 5 ms",
        if p99 <= 5.0 { "met" } else { "MISSED" },
    ));
    rows.push(row(
        "5c. Baseline: same pacing, 1 MQTT publisher -> mosquitto -> subscriber",
        format!(
            "p50 {:.2} ms, p99 {:.2} ms",
            ms(&base.lat_us, 0.5),
            ms(&base.lat_us, 0.99)
        ),
        "—",
        format!(
            "{} of {total} received; max {:.2} ms; mosquitto set_tcp_nodelay {}",
            base.count,
            max(&base.lat_us),
            !a.mosquitto_nagle
        ),
    ));
    Ok((p50, p99))
}
