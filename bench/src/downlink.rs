//! Test 4: downlink QoS 0, one MQTT publisher -> M subscribed devices.
//! Owns: that test's procedure and rows. Never: starts brokers or gateways (the caller does).

use crate::*;

/// 4. Downlink: one MQTT publisher -> M subscribed devices.
pub(crate) async fn downlink(
    a: &Args,
    broker: SocketAddr,
    gw: SocketAddr,
    rows: &mut Vec<Row>,
) -> Result<()> {
    let m = a.down_devices;
    eprintln!("[down] {m} subscribed devices, {:.0}s", a.secs);
    let mut devs = Vec::new();
    for i in 0..m {
        let mut d = Device::new(gw).await?;
        match d.connect(&format!("bench-down-{i}"), WAIT).await? {
            Some(ReturnCode::Accepted) => {}
            other => bail!("downlink device {i}: CONNACK {other:?}"),
        }
        d.subscribe("bench/down", codec::QoS::AtMostOnce).await?;
        devs.push(d);
    }
    let counts: Vec<Arc<AtomicU64>> = (0..m).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let delivered = Arc::new(AtomicU64::new(0));
    let warm: Vec<Arc<AtomicU64>> = (0..m).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let mut set = JoinSet::new();
    for (i, mut d) in devs.into_iter().enumerate() {
        let (count, warm, stop) = (counts[i].clone(), warm[i].clone(), stop.clone());
        let delivered = delivered.clone();
        set.spawn(async move {
            let mut last: Option<Instant> = None;
            let mut other = 0u64;
            while !stop.load(Ordering::Relaxed) {
                match d.recv(Duration::from_millis(100)).await? {
                    Some(Message::Publish(p)) => match read_stamp(&p.data) {
                        Some((PHASE_DOWN, _)) => {
                            count.fetch_add(1, Ordering::Relaxed);
                            delivered.fetch_add(1, Ordering::Relaxed);
                            last = Some(Instant::now());
                        }
                        Some((PHASE_WARM, _)) => {
                            warm.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => other += 1,
                    },
                    Some(Message::Register(r)) => {
                        d.send(&Message::Regack(codec::Regack {
                            topic_id: r.topic_id,
                            msg_id: r.msg_id,
                            return_code: ReturnCode::Accepted,
                        }))
                        .await?
                    }
                    _ => {}
                }
            }
            anyhow::Ok((last, other))
        });
    }
    let mut publ = Mqtt::connect(broker, "bench-down-pub").await?;
    // Warm-up: every device has received one message before the clock starts.
    let mut frame = Mqtt::publish_frame("bench/down", a.payload)?;
    let warm_deadline = Instant::now() + WAIT;
    while warm.iter().any(|w| w.load(Ordering::Relaxed) == 0) && Instant::now() < warm_deadline {
        stamp(&mut frame, a.payload, PHASE_WARM, 0, 0);
        publ.stream.write_all(&frame).await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let warmed = warm
        .iter()
        .filter(|w| w.load(Ordering::Relaxed) > 0)
        .count();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let start = Instant::now();
    let end = start + Duration::from_secs_f64(a.secs);
    let mut sent = 0u64;
    let mut batch = BytesMut::new();
    let mut seq = 0u32;
    while Instant::now() < end {
        gate(a.window, sent * m as u64, &delivered).await;
        for _ in 0..16 {
            stamp(&mut frame, a.payload, PHASE_DOWN, 0, seq);
            seq += 1;
            batch.extend_from_slice(&frame);
        }
        publ.stream.write_all(&batch).await?;
        batch.clear();
        sent += 16;
    }
    let refs: Vec<&AtomicU64> = counts.iter().map(|c| c.as_ref()).collect();
    wait_quiet(&refs).await;
    stop.store(true, Ordering::Relaxed);
    let mut last_rx = start;
    while let Some(r) = set.join_next().await {
        let (last, _other) = r??;
        if let Some(l) = last {
            last_rx = last_rx.max(l);
        }
    }
    let got: u64 = counts.iter().map(|c| c.load(Ordering::Relaxed)).sum();
    let min = counts
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .min()
        .unwrap_or(0);
    let max = counts
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .max()
        .unwrap_or(0);
    let d = last_rx - start;
    rows.push(row(
        format!("4. Downlink QoS 0: 1 MQTT publisher -> {m} devices (deliveries)"),
        format!("{} msg/s", fmt_rate(rate(got, d))),
        "—",
        format!(
            "{got} deliveries of {} offered ({sent} published x {m}, {:.1} %) in {:.1} s; per device {min}..{max}; {warmed}/{m} warmed up; window {}",
            sent * m as u64,
            pct(got, sent * m as u64),
            d.as_secs_f64(),
            a.window
        ),
    ));
    Ok(())
}
