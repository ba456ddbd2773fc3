//! Test 8, the durable store: disk writes and fsyncs per message, and uplink QoS 1 / QoS 2
//! throughput of persistent devices with the store on and off.
//! Owns: that test's procedure, its gateways and rows.
//! Never: counts another process's writes: the disk I/O and fsyncs read are the gateway child's.

use crate::*;

/// What devices achieved sending uplink QoS 1 or 2, one flow in flight each.
#[derive(Default)]
pub(crate) struct Flows {
    /// Flows completed: PUBACK Accepted, or PUBCOMP.
    pub(crate) done: u64,
    /// PUBACK with a return code other than Accepted.
    pub(crate) rejected: u64,
    /// PUBLISHes (DUP) or PUBRELs re-sent after [`FLOW_RETRY`] without an answer.
    pub(crate) resends: u64,
    /// Flows given up after [`FLOW_TRIES`] sends.
    pub(crate) failed: u64,
    /// PUBLISH sent -> PUBACK / PUBCOMP received, µs.
    pub(crate) lat_us: Vec<u64>,
    /// Start -> the last device finished.
    pub(crate) took: Duration,
}

pub(crate) const FLOW_RETRY: Duration = Duration::from_secs(2);
pub(crate) const FLOW_TRIES: u32 = 5;

/// Waits up to `wait` for a datagram `want` accepts; others are skipped.
pub(crate) async fn flow_answer(
    d: &mut Device,
    wait: Duration,
    want: impl Fn(&Message) -> bool,
) -> Result<Option<Message>> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match d.recv(left).await? {
            None => return Ok(None),
            Some(m) if want(&m) => return Ok(Some(m)),
            Some(_) => continue,
        }
    }
}

/// Every device sends QoS `qos` (1 or 2) PUBLISHes of `phase`, sequence numbers 0, 1, ..., one
/// flow in flight: PUBLISH -> PUBACK, or PUBLISH -> PUBREC -> PUBREL -> PUBCOMP; `count` per
/// device, or until `end`. A PUBLISH without an answer is re-sent with DUP (same MsgId), a
/// PUBREL without PUBCOMP re-sent, after [`FLOW_RETRY`], at most [`FLOW_TRIES`] sends each.
pub(crate) async fn uplink_flows(
    devs: Vec<(Device, u16)>,
    qos: codec::QoS,
    phase: u8,
    payload: usize,
    count: u64,
    end: Option<Instant>,
) -> Result<(Vec<(Device, u16)>, Flows)> {
    let start = Instant::now();
    let mut set = JoinSet::new();
    for (i, (mut d, tid)) in devs.into_iter().enumerate() {
        let mut frame = sn_publish_frame(tid, qos, 1, payload)?;
        set.spawn(async move {
            let mut f = Flows::default();
            let mut msg_id = 0u16;
            let mut seq = 0u32;
            while u64::from(seq) < count && end.is_none_or(|e| Instant::now() < e) {
                msg_id = msg_id.wrapping_add(1).max(1);
                set_sn_msg_id(&mut frame, msg_id);
                frame[2] &= !0x80; // DUP off
                stamp(&mut frame, payload, phase, i as u32, seq);
                seq += 1;
                let t0 = Instant::now();
                let mut answer = None;
                for tries in 0..FLOW_TRIES {
                    if tries > 0 {
                        f.resends += 1;
                        frame[2] |= 0x80;
                    }
                    d.sock.send_to(&frame, d.gw).await?;
                    answer = flow_answer(&mut d, FLOW_RETRY, |m| match m {
                        Message::Puback(p) => p.msg_id == msg_id,
                        Message::Pubrec { msg_id: id } => *id == msg_id,
                        _ => false,
                    })
                    .await?;
                    if answer.is_some() {
                        break;
                    }
                }
                match answer {
                    None => f.failed += 1,
                    Some(Message::Puback(p)) if p.return_code != ReturnCode::Accepted => {
                        f.rejected += 1
                    }
                    Some(Message::Puback(_)) => {
                        f.done += 1;
                        f.lat_us.push(t0.elapsed().as_micros() as u64);
                    }
                    Some(_) => {
                        // PUBREC: release it.
                        let rel = Message::Pubrel { msg_id }.to_bytes()?;
                        let mut comp = None;
                        for tries in 0..FLOW_TRIES {
                            if tries > 0 {
                                f.resends += 1;
                            }
                            d.sock.send_to(&rel, d.gw).await?;
                            comp = flow_answer(
                                &mut d,
                                FLOW_RETRY,
                                |m| matches!(m, Message::Pubcomp { msg_id: id } if *id == msg_id),
                            )
                            .await?;
                            if comp.is_some() {
                                break;
                            }
                        }
                        if comp.is_some() {
                            f.done += 1;
                            f.lat_us.push(t0.elapsed().as_micros() as u64);
                        } else {
                            f.failed += 1;
                        }
                    }
                }
            }
            anyhow::Ok(((d, tid), f))
        });
    }
    let mut all = Flows::default();
    let mut back = Vec::new();
    while let Some(r) = set.join_next().await {
        let (d, f) = r??;
        back.push(d);
        all.done += f.done;
        all.rejected += f.rejected;
        all.resends += f.resends;
        all.failed += f.failed;
        all.lat_us.extend(f.lat_us);
    }
    all.took = start.elapsed();
    all.lat_us.sort_unstable();
    Ok((back, all))
}

pub(crate) fn flow_notes(f: &Flows, r: &SubResult) -> String {
    let mut s = format!(
        "{} flows in {:.2} s; subscriber received {}{}; latency p50 {:.2} ms, p99 {:.2} ms",
        f.done,
        f.took.as_secs_f64(),
        r.count,
        if r.dups > 0 {
            format!(" + {} DUPLICATES", r.dups)
        } else {
            " (no duplicates)".to_string()
        },
        percentile(&f.lat_us, 0.5) as f64 / 1000.0,
        percentile(&f.lat_us, 0.99) as f64 / 1000.0,
    );
    if f.resends + f.failed + f.rejected > 0 {
        s.push_str(&format!(
            "; {} resends, {} flows given up, {} rejected",
            f.resends, f.failed, f.rejected
        ));
    }
    if r.count != f.done {
        s.push_str(&format!(
            "; MISMATCH: {} completed, subscriber got {}",
            f.done, r.count
        ));
    }
    s
}

/// Disk writes of the gateway process over a phase, per message.
pub(crate) fn io_notes(io: &Io, syncs: Option<(u64, u64)>, msgs: u64) -> String {
    let per = |x: u64| x as f64 / msgs.max(1) as f64;
    format!(
        "write_bytes {} B ({:.0} B/msg), wchar {} B ({:.0} B/msg), {} write syscalls ({:.1}/msg){}; {}",
        io.write_bytes,
        per(io.write_bytes),
        io.wchar,
        per(io.wchar),
        io.syscw,
        per(io.syscw),
        if io.cancelled_write_bytes > 0 {
            format!(", cancelled_write_bytes {}", io.cancelled_write_bytes)
        } else {
            String::new()
        },
        match syncs {
            Some((fs, fds)) => format!(
                "fsync {fs} + fdatasync {fds} ({:.2} per msg)",
                per(fs + fds)
            ),
            None => "fsyncs not observed (perf stat unavailable)".to_string(),
        }
    )
}

pub(crate) fn file_size(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

pub(crate) fn db_sizes(db: &Path) -> String {
    let wal = PathBuf::from(format!("{}-wal", db.display()));
    format!(
        "db file {} KiB, WAL {} KiB",
        file_size(db) / 1024,
        file_size(&wal) / 1024
    )
}

/// Starts counting a process's fsyncs, if perf is there; perf needs a moment to attach.
pub(crate) async fn count_syncs(pid: u32, out: PathBuf) -> Option<SyncCounter> {
    let c = SyncCounter::start(pid, out);
    tokio::time::sleep(Duration::from_millis(300)).await;
    c
}

/// Test 8, the durable store: disk writes per message for uplink QoS 2 and for QoS 1 buffered
/// for sleeping devices (then delivered), and uplink QoS 1 / QoS 2 throughput of persistent
/// devices with the store on and off.
pub(crate) async fn store_test(
    a: &Args,
    gw_bin: &Path,
    dir: &Path,
    rows: &mut Vec<Row>,
) -> Result<()> {
    let n = a.store_devices.max(1);
    let per = a.store_messages.max(1);
    let total = (n * per) as u64;
    // With the store a sleeping device's message is acknowledged to the broker once written, so
    // mosquitto's in-flight window should not cap the buffer; raised anyway, as in test 7.
    let inflight = (per as u64 * 2).max(1000);
    let (_mosq, port) = start_mosquitto(
        &a.mosquitto,
        dir,
        !a.mosquitto_nagle,
        &format!(
            "max_inflight_messages {inflight}\nmax_queued_messages {}\n",
            inflight * 2
        ),
        "-store",
    )?;
    let broker: SocketAddr = ([127, 0, 0, 1], port).into();
    let sdir = dir.join("store");
    std::fs::create_dir_all(&sdir)?;
    let db = sdir.join("gateway.db");
    let (mut gwp, gw) =
        start_gateway_with(gw_bin, &sdir, port, 2 * n + 100, "store-bytes", Some(&db)).await?;
    let pid = gwp.pid();
    eprintln!(
        "[store] mosquitto on {broker}; gateway pid {pid}, store {}",
        db.display()
    );

    // (a) Uplink QoS 2 from persistent devices.
    let mut devs = Vec::new();
    for i in 0..n {
        devs.push(Device::ready_with(gw, "s2", i, false).await?);
    }
    let sub = Subscriber::start_with(broker, "bench-store2-sub", PHASE_STORE2, true).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    eprintln!("[store] {n} persistent devices x {per} uplink QoS 2");
    let sc = count_syncs(pid, sdir.join("perf-qos2.txt")).await;
    let io0 = Io::read(pid);
    let (devs, f) = uplink_flows(
        devs,
        codec::QoS::ExactlyOnce,
        PHASE_STORE2,
        a.payload,
        per as u64,
        None,
    )
    .await?;
    let r = sub.finish().await?;
    // The writer commits the deletes of the last PUBCOMPs.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let io = Io::read(pid).since(&io0);
    let syncs = sc.and_then(SyncCounter::stop);
    eprintln!("[store] QoS 2: {io:?}, syncs {syncs:?}");
    rows.push(row(
        format!("8a. Store: uplink QoS 2, {n} persistent devices x {per}, 1 flow in flight each: bytes written to disk per message"),
        format!("{:.0} B/msg", io.write_bytes as f64 / f.done.max(1) as f64),
        "—",
        format!(
            "{}; {} ({} msg/s); {}",
            io_notes(&io, syncs, f.done),
            flow_notes(&f, &r),
            fmt_rate(rate(f.done, f.took)),
            db_sizes(&db)
        ),
    ));
    drop(devs);

    // (b) QoS 1 buffered for sleeping persistent devices, then delivered on wake-up.
    eprintln!("[store] {n} persistent devices go to sleep; {per} QoS 1 each buffered");
    let mut sleepers = Vec::new();
    for i in 0..n {
        let d = sleeper_with(
            gw,
            &format!("bench-ss-{i}"),
            false,
            &format!("bench/ss/{i}"),
            SLEEP_DURATION,
        )
        .await?;
        sleepers.push((d, 0u32));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sc = count_syncs(pid, sdir.join("perf-buffer.txt")).await;
    let io0 = Io::read(pid);
    let mut publ = Qos1Publisher::connect(broker, "bench-store-pub").await?;
    let t_pub = Instant::now();
    publ.publish(
        (0..per as u32).flat_map(|s| (0..n as u32).map(move |i| (format!("bench/ss/{i}"), i, s))),
        a.payload,
        PHASE_STORE_SLEEP,
    )
    .await?;
    let acked = publ.acked().await;
    let pub_took = t_pub.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let io_buf = Io::read(pid).since(&io0);
    let syncs_buf = sc.and_then(SyncCounter::stop);
    let early: u64 = sleepers.iter().map(|(d, _)| pending_datagrams(d)).sum();
    eprintln!(
        "[store] buffered: {acked}/{total} PUBACKed in {:.2} s; {io_buf:?}, syncs {syncs_buf:?}",
        pub_took.as_secs_f64()
    );
    rows.push(row(
        format!("8b. Store: {total} QoS 1 messages buffered for {n} sleeping persistent devices ({per} each): bytes written per message"),
        format!("{:.0} B/msg", io_buf.write_bytes as f64 / total as f64),
        "—",
        format!(
            "{}; 1 MQTT publisher, {acked}/{total} PUBACKed by mosquitto in {:.2} s (the gateway acknowledges once written); datagrams to sleeping devices {early}{}; {}",
            io_notes(&io_buf, syncs_buf, total),
            pub_took.as_secs_f64(),
            if early > 0 { " (SHOULD BE 0)" } else { "" },
            db_sizes(&db)
        ),
    ));
    let sc = count_syncs(pid, sdir.join("perf-deliver.txt")).await;
    let io0 = Io::read(pid);
    let sleepers = drain_all(
        sleepers,
        gw,
        ("bench-ss", PHASE_STORE_SLEEP),
        per,
        n,
        "8c",
        rows,
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let io_del = Io::read(pid).since(&io0);
    let syncs_del = sc.and_then(SyncCounter::stop);
    eprintln!("[store] delivered: {io_del:?}, syncs {syncs_del:?}");
    rows.push(row(
        format!("8d. Store: the same {total} delivered on wake-up (8c): bytes written per message"),
        format!("{:.0} B/msg", io_del.write_bytes as f64 / total as f64),
        "—",
        format!(
            "{}; buffered + delivered {:.0} B/msg; {}",
            io_notes(&io_del, syncs_del, total),
            (io_buf.write_bytes + io_del.write_bytes) as f64 / total as f64,
            db_sizes(&db)
        ),
    ));
    drop(sleepers);
    drop(publ);

    // A buffer overflow of a persistent session: as 7c-w (wildcard, so REGISTER + 100 PUBLISH
    // for a buffer of 100), but CleanSession=0, so the message that did not fit is left with
    // the broker and must come back once the buffer has drained (session resumed): on the
    // second wake-up at the latest.
    {
        let wake_n = per as u32;
        let mut wd = sleeper_with(gw, "bench-ssw", false, "bench/ssw/#", SLEEP_DURATION).await?;
        let mut pw = Qos1Publisher::connect(broker, "bench-store-pub-w").await?;
        pw.publish(
            (0..wake_n).map(|s| ("bench/ssw/t".to_string(), 0, s)),
            a.payload,
            PHASE_WAKE,
        )
        .await?;
        let ackedw = pw.acked().await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let w = wake(&mut wd, "bench-ssw", PHASE_WAKE, 0, 0).await?;
        eprintln!("[store] persistent wildcard wake: {w:?}");
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let w2 = wake(&mut wd, "bench-ssw", PHASE_WAKE, 0, w.publishes as u32).await?;
        eprintln!("[store] persistent wildcard wake again: {w2:?}");
        let got = w.publishes + w2.publishes + w2.dups;
        let mut f = Vec::new();
        if got != u64::from(wake_n) {
            f.push(format!("{got} of {wake_n} delivered over both wake-ups"));
        }
        if w.took.is_none() || w2.took.is_none() {
            f.push("NO PINGRESP".into());
        }
        if w.out_of_order + w2.out_of_order > 0 {
            f.push(format!("{} out of order", w.out_of_order + w2.out_of_order));
        }
        if w.unexpected + w2.unexpected > 0 {
            f.push(format!("{} unexpected", w.unexpected + w2.unexpected));
        }
        rows.push(row(
            format!("8g. Buffer overflow of a persistent sleeping device (wildcard: REGISTER + {wake_n} PUBLISH, buffer 100): all delivered over two wake-ups"),
            format!("{got} of {wake_n}"),
            &format!("{wake_n} of {wake_n}"),
            format!(
                "bench/ssw/# at QoS 1, CleanSession=0, {ackedw} PUBACKed by mosquitto; wake-up 1: {} REGISTER, {} PUBLISHes ({} dup) before the PINGRESP; wake-up 2 (1 s later): {} REGISTER, {} PUBLISHes + {} DUP before the PINGRESP{}; {}",
                w.registers,
                w.publishes,
                w.dups,
                w2.registers,
                w2.publishes,
                w2.dups,
                w2.took.map_or(String::new(), |t| format!(" ({:.1} ms)", t.as_secs_f64() * 1000.0)),
                if f.is_empty() { "met".to_string() } else { format!("FAULTS: {}", f.join("; ")) }
            ),
        ));
    }
    gateway_health(&mut gwp, "8z. Gateway warnings, store bytes test", rows);
    drop(gwp);

    // Throughput with the store on, then off.
    let m = a.store_tp_devices.max(1);
    let mut res = Vec::new();
    for on in [true, false] {
        let tag = if on { "store-on" } else { "store-off" };
        let db = sdir.join("gateway-tp.db");
        let (mut gwp, gw) = start_gateway_with(
            gw_bin,
            &sdir,
            port,
            m + 100,
            tag,
            if on { Some(&db) } else { None },
        )
        .await?;
        let pid = gwp.pid();
        let mut devs = Vec::new();
        for i in 0..m {
            devs.push(Device::ready_with(gw, &format!("tp{}", u8::from(on)), i, false).await?);
        }
        for (qos, phase) in [
            (codec::QoS::AtLeastOnce, PHASE_STORE_TP1),
            (codec::QoS::ExactlyOnce, PHASE_STORE_TP2),
        ] {
            eprintln!(
                "[store] {tag}: {m} persistent devices, {qos:?}, {:.0}s",
                a.secs
            );
            drain(&mut devs).await;
            let sub =
                Subscriber::start_with(broker, &format!("bench-{tag}-sub-{phase}"), phase, true)
                    .await?;
            let sc = count_syncs(pid, sdir.join(format!("perf-{tag}-{phase}.txt"))).await;
            let io0 = Io::read(pid);
            let end = Instant::now() + Duration::from_secs_f64(a.secs);
            let (back, f) = uplink_flows(devs, qos, phase, a.payload, u64::MAX, Some(end)).await?;
            devs = back;
            let r = sub.finish().await?;
            let io = Io::read(pid).since(&io0);
            let syncs = sc.and_then(SyncCounter::stop);
            res.push((on, qos, f, r, io, syncs));
        }
        gateway_health(&mut gwp, &format!("8z. Gateway warnings, {tag}"), rows);
        drop(devs);
        drop(gwp);
    }
    for qos in [codec::QoS::AtLeastOnce, codec::QoS::ExactlyOnce] {
        let (label, q) = if qos == codec::QoS::AtLeastOnce {
            ("8e", 1)
        } else {
            ("8f", 2)
        };
        let rate_of = |on: bool| {
            res.iter()
                .find(|x| x.0 == on && x.1 == qos)
                .map(|x| rate(x.2.done, x.2.took))
                .unwrap_or(0.0)
        };
        for (on, _, f, r, io, syncs) in res.iter().filter(|x| x.1 == qos) {
            rows.push(row(
                format!(
                    "{label}. Uplink QoS {q}: {m} persistent devices, 1 in flight each, store {}",
                    if *on { "on" } else { "off (store.path: null)" }
                ),
                format!("{} msg/s", fmt_rate(rate(f.done, f.took))),
                "—",
                format!(
                    "{}; {}{}",
                    flow_notes(f, r),
                    io_notes(io, *syncs, f.done),
                    if *on {
                        String::new()
                    } else {
                        format!(
                            "; store on / off = {:.0} %",
                            pct(rate_of(true) as u64, rate_of(false) as u64)
                        )
                    }
                ),
            ));
        }
    }
    Ok(())
}
