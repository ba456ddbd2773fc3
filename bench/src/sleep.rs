//! Test 7, sleeping devices: RSS with messages buffered for many sleeping devices, and the
//! wake-up of one and of all.
//! Owns: that test's procedure, its gateways and rows.
//! Never: measures an in-process gateway: the RSS read is the gateway child's.

use crate::*;

/// Test 7, sleeping devices: RSS with messages buffered for many sleeping devices, and the
/// wake-up (PINGREQ(ClientId) -> buffered PUBLISHes, each PUBACKed -> PINGRESP) of one and of all.
pub(crate) async fn sleep_test(
    a: &Args,
    gw_bin: &Path,
    dir: &Path,
    rows: &mut Vec<Row>,
) -> Result<()> {
    let n = a.sleep_devices;
    let per = a.sleep_messages;
    let wake_n = a.wake_messages;
    // A mosquitto of its own, so mosquitto's per-client in-flight window (default 20) does not
    // cap what it hands the gateway for a sleeping device at QoS 1.
    let inflight = (per.max(wake_n) as u64 * 2).max(1000);
    let (_mosq, port) = start_mosquitto(
        &a.mosquitto,
        dir,
        !a.mosquitto_nagle,
        &format!(
            "max_inflight_messages {inflight}\nmax_queued_messages {}\n",
            inflight * 2
        ),
        "-sleep",
    )?;
    let broker: SocketAddr = ([127, 0, 0, 1], port).into();
    let (mut gwp, gw) = start_gateway(gw_bin, dir, port, n + 100, "sleep").await?;
    let pid = gwp.pid();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = rss_kb(pid).unwrap_or(0);
    eprintln!(
        "[sleep] mosquitto on {broker} (max_inflight_messages {inflight}); gateway RSS idle {}",
        mb(idle)
    );

    // The devices: connect, subscribe bench/sleep/<i> QoS 1, DISCONNECT(duration).
    eprintln!("[sleep] {n} devices connect, subscribe and go to sleep");
    let t0 = Instant::now();
    let sem = Arc::new(Semaphore::new(a.concurrency.max(1)));
    let mut set = JoinSet::new();
    for i in 0..n {
        let permit = sem.clone().acquire_owned().await?;
        set.spawn(async move {
            let _permit = permit;
            let d = sleeper(
                gw,
                &format!("bench-sleep-{i}"),
                &format!("bench/sleep/{i}"),
                SLEEP_DURATION,
            )
            .await?;
            anyhow::Ok((i, d))
        });
    }
    let mut devs: Vec<Option<Device>> = (0..n).map(|_| None).collect();
    while let Some(r) = set.join_next().await {
        let (i, d) = r??;
        devs[i] = Some(d);
    }
    // Each with the sequence number of the next message it expects.
    let mut devs: Vec<(Device, u32)> = devs.into_iter().map(|d| (d.unwrap(), 0)).collect();
    let mut one = sleeper(gw, "bench-wake-0", "bench/wake/0", SLEEP_DURATION).await?;
    let asleep_in = t0.elapsed();
    let (empty, _) = rss_stable(pid, Duration::from_secs(1), Duration::from_secs(10)).await;
    eprintln!(
        "[sleep] {} devices asleep in {:.1} s, RSS {}",
        n + 1,
        asleep_in.as_secs_f64(),
        mb(empty)
    );

    // The publisher: `per` QoS 1 messages per device, round-robin over the devices.
    let mut publ = Qos1Publisher::connect(broker, "bench-sleep-pub").await?;
    let t_pub = Instant::now();
    publ.publish(
        (0..per as u32)
            .flat_map(|s| (0..n as u32).map(move |i| (format!("bench/sleep/{i}"), i, s))),
        a.payload,
        PHASE_SLEEP,
    )
    .await?;
    let acked = publ.acked().await;
    let pub_took = t_pub.elapsed();
    // Nothing can be delivered while the devices sleep, so the only sign that the gateway has
    // taken everything is its RSS: wait until it has not moved for 2 s.
    let (full, waited) = rss_stable(pid, Duration::from_secs(2), Duration::from_secs(30)).await;
    let early: u64 =
        devs.iter().map(|(d, _)| pending_datagrams(d)).sum::<u64>() + pending_datagrams(&one);
    let total = (n * per) as u64;
    eprintln!(
        "[sleep] {total} messages published ({acked} PUBACKed by mosquitto) in {:.2} s; RSS {} after {:.1} s",
        pub_took.as_secs_f64(),
        mb(full),
        waited.as_secs_f64()
    );
    rows.push(row(
        format!("7a. Gateway RSS, {n} sleeping devices, nothing buffered"),
        mb(empty),
        "—",
        format!(
            "idle {}; each connected, subscribed to its own bench/sleep/<i> at QoS 1 and asleep (DISCONNECT duration {SLEEP_DURATION} s) in {:.2} s total",
            mb(idle),
            asleep_in.as_secs_f64()
        ),
    ));
    rows.push(row(
        format!("7b. Gateway RSS, {n} sleeping devices with {per} messages buffered each ({total})"),
        mb(full),
        "—",
        format!(
            "+{} over 7a, {:.0} B per buffered message (payload {} B, QoS 1, topic bench/sleep/<i>); 1 MQTT publisher, {acked}/{total} PUBACKed by mosquitto in {:.2} s; RSS stable 2 s after {:.1} s; datagrams to sleeping devices {early}{}",
            mb(full.saturating_sub(empty)),
            full.saturating_sub(empty) as f64 * 1024.0 / total.max(1) as f64,
            a.payload,
            pub_took.as_secs_f64(),
            waited.as_secs_f64(),
            if early > 0 { " (SHOULD BE 0)" } else { "" }
        ),
    ));

    // One device, `wake_n` buffered messages, woken `wake_rounds` times.
    let mut times = Vec::new();
    let mut notes = Vec::new();
    let mut faults = Vec::new();
    for round in 0..a.wake_rounds.max(1) {
        let first = (round * wake_n) as u32;
        let mut p1 = Qos1Publisher::connect(broker, &format!("bench-wake-pub-{round}")).await?;
        p1.publish(
            (first..first + wake_n as u32).map(|s| ("bench/wake/0".to_string(), 0, s)),
            a.payload,
            PHASE_WAKE,
        )
        .await?;
        let acked1 = p1.acked().await;
        // Let the gateway take them from its upstream session.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let w = wake(&mut one, "bench-wake-0", PHASE_WAKE, 0, first).await?;
        eprintln!("[sleep] wake {round}: {w:?}");
        if let Some(t) = w.took {
            times.push(t);
        }
        let f = wake_faults(&w, wake_n as u64);
        if acked1 != wake_n as u64 {
            faults.push(format!(
                "round {round}: mosquitto PUBACKed {acked1}/{wake_n}"
            ));
        }
        faults.extend(f.into_iter().map(|x| format!("round {round}: {x}")));
        notes.push(format!(
            "{:.1} ms ({} PUBLISH{}{}{})",
            w.took.map_or(f64::NAN, |t| t.as_secs_f64() * 1000.0),
            w.publishes,
            if w.registers > 0 {
                format!(", {} REGISTER", w.registers)
            } else {
                String::new()
            },
            if w.dups > 0 {
                format!(", {} dup", w.dups)
            } else {
                String::new()
            },
            if w.pingreq_resends > 0 {
                format!(", {} PINGREQ resent", w.pingreq_resends)
            } else {
                String::new()
            },
        ));
    }
    times.sort_unstable();
    let median = times.get(times.len() / 2).copied();
    rows.push(row(
        format!("7c. Wake-up of 1 device with {wake_n} buffered QoS 1 messages: PINGREQ(ClientId) -> PINGRESP"),
        match median {
            Some(t) => format!("{:.1} ms", t.as_secs_f64() * 1000.0),
            None => "NO PINGRESP".into(),
        },
        "—",
        format!(
            "median of {} wake-ups: {}; each PUBLISH PUBACKed at once (1 in flight); {}; the other {n} devices asleep with {total} buffered",
            a.wake_rounds.max(1),
            notes.join(", "),
            if faults.is_empty() {
                format!("every wake-up got exactly {wake_n} PUBLISHes, in order, all before the PINGRESP")
            } else {
                format!("FAULTS: {}", faults.join("; "))
            }
        ),
    ));

    // The same through a wildcard subscription: the topic is new to the device, so the
    // gateway buffers a REGISTER before the first PUBLISH (and counts it against
    // sleep.buffer_messages). A second PINGREQ shows whether anything was left behind.
    {
        let mut wd = sleeper(gw, "bench-wake-w", "bench/wakew/#", SLEEP_DURATION).await?;
        let mut pw = Qos1Publisher::connect(broker, "bench-wake-pub-w").await?;
        pw.publish(
            (0..wake_n as u32).map(|s| ("bench/wakew/t".to_string(), 0, s)),
            a.payload,
            PHASE_WAKE,
        )
        .await?;
        let ackedw = pw.acked().await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let w = wake(&mut wd, "bench-wake-w", PHASE_WAKE, 0, 0).await?;
        eprintln!("[sleep] wildcard wake: {w:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
        let w2 = wake(&mut wd, "bench-wake-w", PHASE_WAKE, 0, w.publishes as u32).await?;
        eprintln!("[sleep] wildcard wake again: {w2:?}");
        // The REGISTER takes one of the buffer's `sleep.buffer_messages` slots; a QoS 1 message
        // that does not fit is dropped (and counted) for a clean session, which cannot be
        // resumed to get it again (docs/architecture.md, "Durable state"); 8g does the same
        // with a persistent session.
        let expected = wake_n.min(SLEEP_BUFFER_MESSAGES - 1) as u64;
        let mut f = wake_faults(&w, expected);
        if w2.publishes + w2.dups > 0 {
            f.push(format!(
                "second wake-up got {} PUBLISHes, expected 0 (clean session)",
                w2.publishes + w2.dups
            ));
        }
        if w.registers != 1 {
            f.push(format!("{} REGISTERs, expected 1", w.registers));
        }
        rows.push(row(
            format!("7c-w. Same, subscribed to a wildcard (REGISTER + {wake_n} PUBLISH)"),
            match w.took {
                Some(t) => format!("{:.1} ms", t.as_secs_f64() * 1000.0),
                None => "NO PINGRESP".into(),
            },
            "—",
            format!(
                "bench/wakew/# at QoS 1, {wake_n} published to bench/wakew/t ({ackedw} PUBACKed by mosquitto); got {} REGISTER, {} PUBLISHes before the PINGRESP; a second PINGREQ 0.5 s later got {} PUBLISHes{}; {}",
                w.registers,
                w.publishes,
                w2.publishes,
                w2.took.map_or(" and NO PINGRESP".to_string(), |t| format!(
                    ", PINGRESP after {:.1} ms",
                    t.as_secs_f64() * 1000.0
                )),
                if f.is_empty() {
                    format!(
                        "{expected} as expected, in order, all before the PINGRESP{}",
                        if expected < wake_n as u64 {
                            format!(
                                " (buffer of {SLEEP_BUFFER_MESSAGES} = REGISTER + {expected}; the other {} dropped: clean session)",
                                wake_n as u64 - expected
                            )
                        } else {
                            String::new()
                        }
                    )
                } else {
                    format!("FAULTS: {}", f.join("; "))
                }
            ),
        ));
    }

    if a.sleep_drain {
        // Every device wakes and drains its buffer: first at most `--concurrency` awake at
        // once, then (buffers refilled) all at once.
        devs = drain_all(
            devs,
            gw,
            ("bench-sleep", PHASE_SLEEP),
            per,
            a.concurrency.max(1),
            "7d",
            rows,
        )
        .await?;
        let (after, _) = rss_stable(pid, Duration::from_secs(1), Duration::from_secs(10)).await;
        rows.push(row(
            format!("7e. Gateway RSS after the drain ({n} devices asleep again, buffers empty)"),
            mb(after),
            "—",
            "freed buffers stay with the allocator; RSS is not expected to fall back to 7a",
        ));
        let t_pub = Instant::now();
        publ.publish(
            (per as u32..2 * per as u32)
                .flat_map(|s| (0..n as u32).map(move |i| (format!("bench/sleep/{i}"), i, s))),
            a.payload,
            PHASE_SLEEP,
        )
        .await?;
        let acked = publ.acked().await;
        let (refill, waited) =
            rss_stable(pid, Duration::from_secs(2), Duration::from_secs(30)).await;
        eprintln!(
            "[sleep] refilled: {acked}/{} PUBACKed in {:.2} s; RSS {} after {:.1} s",
            publ.sent,
            t_pub.elapsed().as_secs_f64(),
            mb(refill),
            waited.as_secs_f64()
        );
        devs = drain_all(devs, gw, ("bench-sleep", PHASE_SLEEP), per, n, "7f", rows).await?;
    }
    let alive = gwp.alive();
    let (nw, ex) = log_warnings(&gwp.log);
    if nw > 0 || !alive {
        rows.push(row(
            "7z. Gateway warnings during the sleep test",
            if alive {
                nw.to_string()
            } else {
                "EXITED".into()
            },
            "0",
            ex.join(" | "),
        ));
    }
    drop(one);
    drop(devs);
    Ok(())
}

/// Wakes every device (at most `concurrency` awake at once) and takes what each had buffered:
/// `per` PUBLISHes of `phase` with the sequence numbers following those taken before. Device
/// `i` has the ClientId `<prefix>-<i>`.
pub(crate) async fn drain_all(
    devs: Vec<(Device, u32)>,
    gw: SocketAddr,
    (prefix, phase): (&str, u8),
    per: usize,
    concurrency: usize,
    tag: &str,
    rows: &mut Vec<Row>,
) -> Result<Vec<(Device, u32)>> {
    let n = devs.len();
    let total = (n * per) as u64;
    eprintln!("[sleep] waking all {n} devices, at most {concurrency} awake at once");
    let drops0 = udp_drops(gw.port()).unwrap_or(0);
    let sem = Arc::new(Semaphore::new(concurrency));
    let start = Instant::now();
    let mut set = JoinSet::new();
    for (i, (mut d, next)) in devs.into_iter().enumerate() {
        let permit = sem.clone().acquire_owned().await?;
        let client_id = format!("{prefix}-{i}");
        set.spawn(async move {
            let _permit = permit;
            let w = wake(&mut d, &client_id, phase, i as u32, next).await?;
            anyhow::Ok((i, d, next + w.publishes as u32, w, start.elapsed()))
        });
    }
    let (mut got, mut pingresps, mut bad, mut dups, mut resends, mut regs) =
        (0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
    let mut last = Duration::ZERO;
    let mut per_dev = Vec::new();
    let mut examples = Vec::new();
    let mut back: Vec<Option<(Device, u32)>> = (0..n).map(|_| None).collect();
    while let Some(r) = set.join_next().await {
        let (i, d, next, w, at) = r??;
        got += w.publishes;
        dups += w.dups;
        resends += w.pingreq_resends;
        regs += w.registers;
        per_dev.push(w.took.unwrap_or(Duration::MAX));
        if w.took.is_some() {
            pingresps += 1;
            last = last.max(at);
        }
        let f = wake_faults(&w, per as u64);
        if !f.is_empty() {
            bad += 1;
            if examples.len() < 3 {
                examples.push(format!("device {i}: {}", f.join(", ")));
            }
        }
        back[i] = Some((d, next));
    }
    let drops = udp_drops(gw.port()).unwrap_or(0).saturating_sub(drops0);
    per_dev.sort_unstable();
    let ms = |d: Duration| {
        if d == Duration::MAX {
            "none".to_string()
        } else {
            format!("{:.0} ms", d.as_secs_f64() * 1000.0)
        }
    };
    rows.push(row(
        format!(
            "{tag}. Wake-up of all {n} devices, {} awake at once, {per} buffered each: all {total} delivered",
            if concurrency >= n { "all".to_string() } else { format!("at most {concurrency}") }
        ),
        format!("{:.2} s ({} msg/s)", last.as_secs_f64(), fmt_rate(rate(got, last))),
        "—",
        format!(
            "{got}/{total} PUBLISHes before the PINGRESPs, {pingresps}/{n} PINGRESPs; per device PINGREQ->PINGRESP p50 {}, p99 {}, max {}; {dups} dup PUBLISHes (gateway resends), {regs} REGISTERs, {resends} PINGREQs resent (after {} s of silence); gateway UDP socket drops {drops}; {}",
            ms(percentile_d(&per_dev, 0.5)),
            ms(percentile_d(&per_dev, 0.99)),
            ms(per_dev.last().copied().unwrap_or(Duration::MAX)),
            WAKE_RETRY.as_secs(),
            if bad == 0 {
                "every device got its messages in order, all before its PINGRESP".to_string()
            } else {
                format!("FAULTS at {bad} devices, e.g. {}", examples.join(" | "))
            }
        ),
    ));
    Ok(back.into_iter().map(|d| d.unwrap()).collect())
}
