//! The closed-loop loads of the side-by-side group (`compare`): the same load as MQTT clients
//! straight to the broker and as MQTT-SN devices through the gateway. QoS 0 uplink with a
//! per-client window counted at the subscriber; QoS 1 / QoS 2 uplink with one flow in flight
//! (optionally paced); QoS 1 downlink from one windowed publisher to M acknowledging
//! subscribers. Every task adds what it completes to one counter the caller snapshots.
//! Owns: sending and counting. Never: its own encoding (frames come from the crate's codecs and
//! are patched in place: message ids, stamps), or a wait without a bound.

use crate::*;

use tokio::sync::Notify;

/// How long a client waits for an answer (or its window to open) before it counts a stall.
const STALL: Duration = Duration::from_secs(1);

/// What every task of one load shares with the caller.
#[derive(Clone, Default)]
pub(crate) struct Ctl {
    /// Messages completed: received by the counting subscriber (QoS 0 uplink), PUBACK or
    /// PUBCOMP received (QoS 1 / 2 uplink), deliveries acknowledged (downlink).
    pub(crate) done: Arc<AtomicU64>,
    /// Latency samples are kept only while this is set (the measured window).
    pub(crate) measuring: Arc<AtomicBool>,
    pub(crate) stop: Arc<AtomicBool>,
    /// Answers not seen within [`STALL`] (a flow given up, a window reopened).
    pub(crate) stalls: Arc<AtomicU64>,
}

impl Ctl {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn record(&self, lat: &mut Vec<u64>, us: u64) {
        self.done.fetch_add(1, Ordering::Relaxed);
        if self.measuring.load(Ordering::Relaxed) {
            lat.push(us);
        }
    }

    fn stall(&self) {
        if !self.stopped() {
            self.stalls.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Tasks of a load; each returns its latency samples (µs) of the measured window.
pub(crate) type Tasks = JoinSet<Result<Vec<u64>>>;

/// Per-client receive counts (by the stamp's device number) and a wake-up for each client.
pub(crate) struct Counts {
    pub(crate) n: Vec<AtomicU64>,
    pub(crate) warm: Vec<AtomicU64>,
    pub(crate) wake: Vec<Notify>,
}

impl Counts {
    pub(crate) fn new(clients: usize) -> Arc<Counts> {
        Arc::new(Counts {
            n: (0..clients).map(|_| AtomicU64::new(0)).collect(),
            warm: (0..clients).map(|_| AtomicU64::new(0)).collect(),
            wake: (0..clients).map(|_| Notify::new()).collect(),
        })
    }

    fn min(&self) -> u64 {
        self.n
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .min()
            .unwrap_or(0)
    }
}

/// The uplink subscriber (QoS 0 on `bench/#`): counts `phase` per device; with `counting` its
/// receipts are the load's completed messages (latency = receive - stamped send time).
pub(crate) async fn uplink_subscriber(
    broker: SocketAddr,
    id: &str,
    phase: u8,
    counts: Arc<Counts>,
    counting: bool,
    ctl: &Ctl,
    tasks: &mut Tasks,
) -> Result<()> {
    let mut c = Mqtt::connect(broker, id).await?;
    c.subscribe("bench/#").await?;
    let ctl = ctl.clone();
    tasks.spawn(async move {
        let mut lat = Vec::with_capacity(1 << 16);
        while !ctl.stopped() {
            while let Some(p) = mqtt::decode(&mut c.buf, 1 << 20)? {
                let mqtt::Packet::Publish(p) = p else {
                    continue;
                };
                let Some((ph, dev, _)) = read_dev_seq(&p.payload) else {
                    continue;
                };
                let i = dev as usize;
                if ph != phase || i >= counts.n.len() {
                    continue;
                }
                counts.n[i].fetch_add(1, Ordering::Relaxed);
                counts.wake[i].notify_one();
                if counting {
                    let ts = read_stamp(&p.payload).map_or(0, |x| x.1);
                    ctl.record(&mut lat, now_ns().saturating_sub(ts) / 1000);
                }
            }
            c.buf.reserve(16 * 1024);
            match timeout(Duration::from_millis(100), c.stream.read_buf(&mut c.buf)).await {
                Ok(Ok(0)) => bail!("broker closed the subscriber"),
                Ok(Ok(_)) | Err(_) => {}
                Ok(Err(e)) => return Err(e.into()),
            }
        }
        Ok(lat)
    });
    Ok(())
}

/// Waits until client `i` has fewer than `window` messages outstanding (sent - received -
/// written off); returns how many it may send. After [`STALL`] without progress the
/// outstanding ones are written off (lost) so the client goes on.
async fn window_open(
    counts: &Counts,
    i: usize,
    window: u64,
    sent: u64,
    lost: &mut u64,
    ctl: &Ctl,
) -> u64 {
    loop {
        let got = counts.n[i].load(Ordering::Relaxed) + *lost;
        let out = sent.saturating_sub(got);
        if out < window || ctl.stopped() {
            return window.saturating_sub(out);
        }
        if timeout(STALL, counts.wake[i].notified()).await.is_err() && !ctl.stopped() {
            ctl.stall();
            *lost = sent.saturating_sub(counts.n[i].load(Ordering::Relaxed));
        }
    }
}

/// QoS 0 uplink from `n` MQTT clients (topic `bench/<kind>/<i>`): each writes as many stamped
/// PUBLISHes as its window allows in one write (as a buffered client library would).
pub(crate) async fn up0_mqtt(
    broker: SocketAddr,
    kind: &str,
    n: usize,
    (window, payload, phase): (u64, usize, u8),
    counts: &Arc<Counts>,
    ctl: &Ctl,
    tasks: &mut Tasks,
) -> Result<()> {
    for i in 0..n {
        let mut c = Mqtt::connect(broker, &format!("bench-{kind}-{i}")).await?;
        let mut frame = Mqtt::publish_frame(&format!("bench/{kind}/{i}"), payload)?;
        let (counts, ctl) = (counts.clone(), ctl.clone());
        tasks.spawn(async move {
            let mut batch = BytesMut::with_capacity(frame.len() * window as usize);
            let (mut sent, mut lost, mut seq) = (0u64, 0u64, 0u32);
            while !ctl.stopped() {
                let k = window_open(&counts, i, window, sent, &mut lost, &ctl).await;
                for _ in 0..k {
                    stamp(&mut frame, payload, phase, i as u32, seq);
                    seq = seq.wrapping_add(1);
                    batch.extend_from_slice(&frame);
                }
                c.stream.write_all(&batch).await?;
                batch.clear();
                sent += k;
            }
            Ok(Vec::new())
        });
    }
    Ok(())
}

/// QoS 0 uplink from registered MQTT-SN devices: one datagram per PUBLISH, window as above.
pub(crate) fn up0_sn(
    devs: Vec<(Device, u16)>,
    (window, payload, phase): (u64, usize, u8),
    counts: &Arc<Counts>,
    ctl: &Ctl,
    tasks: &mut Tasks,
) -> Result<()> {
    for (i, (d, tid)) in devs.into_iter().enumerate() {
        let mut frame = sn_publish_frame(tid, codec::QoS::AtMostOnce, 0, payload)?;
        let (counts, ctl) = (counts.clone(), ctl.clone());
        tasks.spawn(async move {
            let (mut sent, mut lost, mut seq) = (0u64, 0u64, 0u32);
            while !ctl.stopped() {
                let k = window_open(&counts, i, window, sent, &mut lost, &ctl).await;
                for _ in 0..k {
                    stamp(&mut frame, payload, phase, i as u32, seq);
                    seq = seq.wrapping_add(1);
                    d.sock.send_to(&frame, d.gw).await?;
                }
                sent += k;
            }
            Ok(Vec::new())
        });
    }
    Ok(())
}

/// One flow in flight, optionally paced: the schedule of client `i` of `n` at `period` per
/// client, offset so the clients spread over the period.
struct Pace {
    next: tokio::time::Instant,
    period: Duration,
}

impl Pace {
    fn new(period: Option<Duration>, i: usize, n: usize) -> Option<Pace> {
        period.map(|p| Pace {
            next: tokio::time::Instant::now() + p.mul_f64(i as f64 / n.max(1) as f64),
            period: p,
        })
    }

    /// Sleeps until the next slot; a late client does not burst to catch up.
    async fn wait(pace: &mut Option<Pace>) {
        if let Some(p) = pace {
            tokio::time::sleep_until(p.next).await;
            p.next = (p.next + p.period).max(tokio::time::Instant::now());
        }
    }
}

/// Waits for an MQTT packet `want` accepts, skipping others; false after [`STALL`].
async fn mqtt_answer(c: &mut Mqtt, want: impl Fn(&mqtt::Packet) -> bool) -> Result<bool> {
    let deadline = tokio::time::Instant::now() + STALL;
    loop {
        while let Some(p) = mqtt::decode(&mut c.buf, 1 << 20)? {
            if want(&p) {
                return Ok(true);
            }
        }
        c.buf.reserve(4096);
        match tokio::time::timeout_at(deadline, c.stream.read_buf(&mut c.buf)).await {
            Err(_) => return Ok(false),
            Ok(Ok(0)) => bail!("broker closed the connection"),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e.into()),
        }
    }
}

/// Sets the 2-octet id at the end of an encoded packet (PUBACK, PUBREL of both protocols).
fn set_tail_id(frame: &mut [u8], id: u16) {
    let n = frame.len();
    frame[n - 2..].copy_from_slice(&id.to_be_bytes());
}

/// QoS 1 or 2 uplink from `n` MQTT clients, one flow in flight each: PUBLISH -> PUBACK, or
/// PUBLISH -> PUBREC -> PUBREL -> PUBCOMP; latency = PUBLISH written -> PUBACK / PUBCOMP read.
pub(crate) async fn flow_mqtt(
    broker: SocketAddr,
    kind: &str,
    n: usize,
    (qos, payload, phase): (mqtt::QoS, usize, u8),
    period: Option<Duration>,
    ctl: &Ctl,
    tasks: &mut Tasks,
) -> Result<()> {
    for i in 0..n {
        let mut c = Mqtt::connect(broker, &format!("bench-{kind}-{i}")).await?;
        let p = mqtt::Packet::Publish(mqtt::Publish {
            dup: false,
            qos,
            retain: false,
            topic: format!("bench/{kind}/{i}"),
            packet_id: Some(1),
            payload: Bytes::from(vec![0u8; payload]),
        });
        let mut frame = BytesMut::from(&p.to_bytes()?[..]);
        // The packet id is the two octets right before the payload.
        let at = frame.len() - payload - 2;
        let mut rel = BytesMut::from(&mqtt::Packet::PubRel { packet_id: 1 }.to_bytes()?[..]);
        let ctl = ctl.clone();
        tasks.spawn(async move {
            let mut lat = Vec::with_capacity(1 << 14);
            let mut pace = Pace::new(period, i, n);
            let mut id = 0u16;
            while !ctl.stopped() {
                Pace::wait(&mut pace).await;
                id = id.wrapping_add(1).max(1);
                frame[at..at + 2].copy_from_slice(&id.to_be_bytes());
                stamp(&mut frame, payload, phase, i as u32, u32::from(id));
                let t0 = Instant::now();
                c.stream.write_all(&frame).await?;
                let ok = if qos == mqtt::QoS::AtLeastOnce {
                    mqtt_answer(&mut c, |p| matches!(p, mqtt::Packet::PubAck { packet_id } if *packet_id == id)).await?
                } else {
                    mqtt_answer(&mut c, |p| matches!(p, mqtt::Packet::PubRec { packet_id } if *packet_id == id)).await?
                        && {
                            set_tail_id(&mut rel, id);
                            c.stream.write_all(&rel).await?;
                            mqtt_answer(&mut c, |p| matches!(p, mqtt::Packet::PubComp { packet_id } if *packet_id == id)).await?
                        }
                };
                if ok {
                    ctl.record(&mut lat, t0.elapsed().as_micros() as u64);
                } else {
                    ctl.stall();
                }
            }
            Ok(lat)
        });
    }
    Ok(())
}

/// A device's receive side without a fresh buffer per datagram: datagrams are split off one
/// growing buffer (decoded zero-copy by the codec).
struct SnRx {
    buf: BytesMut,
}

impl SnRx {
    fn new() -> SnRx {
        SnRx {
            buf: BytesMut::with_capacity(64 * 1024),
        }
    }

    /// The next datagram decoded, or None at `deadline`.
    async fn recv(
        &mut self,
        sock: &UdpSocket,
        deadline: tokio::time::Instant,
    ) -> Result<Option<Message>> {
        self.buf.reserve(2048);
        match tokio::time::timeout_at(deadline, sock.recv_buf_from(&mut self.buf)).await {
            Err(_) => Ok(None),
            Ok(r) => {
                let (n, _) = r?;
                let dg = self.buf.split_to(n).freeze();
                Ok(Some(codec::decode_message(dg)?))
            }
        }
    }

    /// Waits for a datagram `want` accepts, skipping others; false after [`STALL`].
    async fn answer(&mut self, sock: &UdpSocket, want: impl Fn(&Message) -> bool) -> Result<bool> {
        let deadline = tokio::time::Instant::now() + STALL;
        while let Some(m) = self.recv(sock, deadline).await? {
            if want(&m) {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// QoS 1 or 2 uplink from registered MQTT-SN devices, one flow in flight each, as
/// [`flow_mqtt`].
pub(crate) fn flow_sn(
    devs: Vec<(Device, u16)>,
    (qos, payload, phase): (codec::QoS, usize, u8),
    period: Option<Duration>,
    ctl: &Ctl,
    tasks: &mut Tasks,
) -> Result<()> {
    let n = devs.len();
    for (i, (d, tid)) in devs.into_iter().enumerate() {
        let mut frame = sn_publish_frame(tid, qos, 1, payload)?;
        let mut rel = BytesMut::from(&Message::Pubrel { msg_id: 1 }.to_bytes()?[..]);
        let ctl = ctl.clone();
        tasks.spawn(async move {
            let mut rx = SnRx::new();
            let mut lat = Vec::with_capacity(1 << 14);
            let mut pace = Pace::new(period, i, n);
            let mut id = 0u16;
            while !ctl.stopped() {
                Pace::wait(&mut pace).await;
                id = id.wrapping_add(1).max(1);
                set_sn_msg_id(&mut frame, id);
                stamp(&mut frame, payload, phase, i as u32, u32::from(id));
                let t0 = Instant::now();
                d.sock.send_to(&frame, d.gw).await?;
                let ok = if qos == codec::QoS::AtLeastOnce {
                    rx.answer(&d.sock, |m| {
                        matches!(m, Message::Puback(p) if p.msg_id == id && p.return_code == ReturnCode::Accepted)
                    })
                    .await?
                } else {
                    rx.answer(&d.sock, |m| matches!(m, Message::Pubrec { msg_id } if *msg_id == id))
                        .await?
                        && {
                            set_tail_id(&mut rel, id);
                            d.sock.send_to(&rel, d.gw).await?;
                            rx.answer(&d.sock, |m| matches!(m, Message::Pubcomp { msg_id } if *msg_id == id))
                                .await?
                        }
                };
                if ok {
                    ctl.record(&mut lat, t0.elapsed().as_micros() as u64);
                } else {
                    ctl.stall();
                }
            }
            Ok(lat)
        });
    }
    Ok(())
}

/// `m` MQTT subscribers at QoS 1 on `bench/down`, each acknowledging every delivery (the
/// PUBACKs of one read in one write); deliveries of `phase` are the load's completed messages.
pub(crate) async fn down_mqtt(
    broker: SocketAddr,
    kind: &str,
    m: usize,
    phase: u8,
    (counts, publisher): (&Arc<Counts>, &Arc<Notify>),
    ctl: &Ctl,
    tasks: &mut Tasks,
) -> Result<()> {
    let ack = BytesMut::from(&mqtt::Packet::PubAck { packet_id: 1 }.to_bytes()?[..]);
    for i in 0..m {
        let mut c = Mqtt::connect(broker, &format!("bench-{kind}-{i}")).await?;
        c.subscribe_qos("bench/down", mqtt::QoS::AtLeastOnce)
            .await?;
        let (counts, publisher, ctl, mut ack) =
            (counts.clone(), publisher.clone(), ctl.clone(), ack.clone());
        tasks.spawn(async move {
            let mut lat = Vec::with_capacity(1 << 14);
            let mut acks = BytesMut::with_capacity(4096);
            while !ctl.stopped() {
                while let Some(p) = mqtt::decode(&mut c.buf, 1 << 20)? {
                    let mqtt::Packet::Publish(p) = p else {
                        continue;
                    };
                    if let Some(id) = p.packet_id {
                        set_tail_id(&mut ack, id);
                        acks.extend_from_slice(&ack);
                    }
                    delivered(&p.payload, phase, i, &counts, &publisher, &ctl, &mut lat);
                }
                if !acks.is_empty() {
                    c.stream.write_all(&acks).await?;
                    acks.clear();
                }
                c.buf.reserve(16 * 1024);
                match timeout(Duration::from_millis(100), c.stream.read_buf(&mut c.buf)).await {
                    Ok(Ok(0)) => bail!("broker closed subscriber {i}"),
                    Ok(Ok(_)) | Err(_) => {}
                    Ok(Err(e)) => return Err(e.into()),
                }
            }
            Ok(lat)
        });
    }
    Ok(())
}

/// Counts one delivery (or warm-up message) of subscriber `i` and wakes the publisher.
fn delivered(
    payload: &[u8],
    phase: u8,
    i: usize,
    counts: &Counts,
    publisher: &Notify,
    ctl: &Ctl,
    lat: &mut Vec<u64>,
) {
    match read_stamp(payload) {
        Some((ph, ts)) if ph == phase => {
            counts.n[i].fetch_add(1, Ordering::Relaxed);
            publisher.notify_one();
            ctl.record(lat, now_ns().saturating_sub(ts) / 1000);
        }
        Some((PHASE_WARM, _)) => {
            counts.warm[i].fetch_add(1, Ordering::Relaxed);
        }
        _ => {}
    }
}

/// `m` MQTT-SN devices subscribed at QoS 1 to `bench/down` through the gateway, each
/// PUBACKing every PUBLISH (and REGACKing any REGISTER).
pub(crate) async fn down_sn(
    gw: SocketAddr,
    kind: &str,
    m: usize,
    phase: u8,
    (counts, publisher): (&Arc<Counts>, &Arc<Notify>),
    ctl: &Ctl,
    tasks: &mut Tasks,
) -> Result<()> {
    let ack = BytesMut::from(
        &Message::Puback(codec::Puback {
            topic_id: 1,
            msg_id: 1,
            return_code: ReturnCode::Accepted,
        })
        .to_bytes()?[..],
    );
    for i in 0..m {
        let mut d = Device::new(gw).await?;
        match d.connect(&format!("bench-{kind}-{i}"), WAIT).await? {
            Some(ReturnCode::Accepted) => {}
            other => bail!("downlink device {i}: CONNACK {other:?}"),
        }
        d.subscribe("bench/down", codec::QoS::AtLeastOnce).await?;
        let (counts, publisher, ctl, mut ack) =
            (counts.clone(), publisher.clone(), ctl.clone(), ack.clone());
        tasks.spawn(async move {
            let mut rx = SnRx::new();
            let mut lat = Vec::with_capacity(1 << 14);
            while !ctl.stopped() {
                let deadline = tokio::time::Instant::now() + Duration::from_millis(100);
                match rx.recv(&d.sock, deadline).await? {
                    Some(Message::Publish(p)) => {
                        if p.qos == codec::QoS::AtLeastOnce {
                            // PUBACK: length, type, TopicId (2), MsgId (2), ReturnCode.
                            if let TopicRef::Id(t) = p.topic {
                                ack[2..4].copy_from_slice(&t.to_be_bytes());
                            }
                            ack[4..6].copy_from_slice(&p.msg_id.to_be_bytes());
                            d.sock.send_to(&ack, d.gw).await?;
                        }
                        delivered(&p.data, phase, i, &counts, &publisher, &ctl, &mut lat);
                    }
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
            Ok(lat)
        });
    }
    Ok(())
}

/// The downlink publisher: QoS 1 to `bench/down`. First warm-up messages until every
/// subscriber has one (or [`WAIT`] passed; returns how many have), then the load: at most
/// `window` messages ahead of the slowest subscriber and at most `2 * window` without PUBACK.
pub(crate) async fn down_publisher(
    broker: SocketAddr,
    kind: &str,
    (window, payload, phase): (u64, usize, u8),
    (counts, notify): (&Arc<Counts>, &Arc<Notify>),
    ctl: &Ctl,
    tasks: &mut Tasks,
) -> Result<usize> {
    let c = Mqtt::connect(broker, &format!("bench-{kind}-pub")).await?;
    let (mut rd, mut wr) = c.stream.into_split();
    let mut rbuf = c.buf;
    let pubacked = Arc::new(AtomicU64::new(0));
    {
        let (pubacked, notify, ctl) = (pubacked.clone(), notify.clone(), ctl.clone());
        tasks.spawn(async move {
            while !ctl.stopped() {
                while let Some(p) = mqtt::decode(&mut rbuf, 1 << 20)? {
                    if let mqtt::Packet::PubAck { .. } = p {
                        pubacked.fetch_add(1, Ordering::Relaxed);
                        notify.notify_one();
                    }
                }
                rbuf.reserve(4096);
                match timeout(Duration::from_millis(100), rd.read_buf(&mut rbuf)).await {
                    // The writer task ended first (its half's drop sends FIN): done.
                    Ok(Ok(0)) if ctl.stopped() => break,
                    Ok(Ok(0)) => bail!("broker closed the publisher"),
                    Ok(Ok(_)) | Err(_) => {}
                    Ok(Err(e)) => return Err(e.into()),
                }
            }
            Ok(Vec::new())
        });
    }
    let p = mqtt::Packet::Publish(mqtt::Publish {
        dup: false,
        qos: mqtt::QoS::AtLeastOnce,
        retain: false,
        topic: "bench/down".into(),
        packet_id: Some(1),
        payload: Bytes::from(vec![0u8; payload]),
    });
    let mut frame = BytesMut::from(&p.to_bytes()?[..]);
    let at = frame.len() - payload - 2;
    let mut id = 0u16;
    let mut next = move |frame: &mut BytesMut, ph: u8, seq: u32| {
        id = id.wrapping_add(1).max(1);
        frame[at..at + 2].copy_from_slice(&id.to_be_bytes());
        stamp(frame, payload, ph, 0, seq);
    };
    let warm_deadline = Instant::now() + WAIT;
    let mut published = 0u64;
    while counts.warm.iter().any(|w| w.load(Ordering::Relaxed) == 0)
        && Instant::now() < warm_deadline
    {
        next(&mut frame, PHASE_WARM, 0);
        wr.write_all(&frame).await?;
        published += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let warmed = counts
        .warm
        .iter()
        .filter(|w| w.load(Ordering::Relaxed) > 0)
        .count();
    let warm_msgs = published;
    let (counts, notify, ctl) = (counts.clone(), notify.clone(), ctl.clone());
    tasks.spawn(async move {
        let mut batch = BytesMut::with_capacity(frame.len() * 16);
        let (mut sent, mut slack, mut seq) = (0u64, 0u64, 0u32);
        while !ctl.stopped() {
            let behind = sent.saturating_sub(counts.min() + slack);
            let unacked = (warm_msgs + sent).saturating_sub(pubacked.load(Ordering::Relaxed));
            if behind >= window || unacked >= 2 * window {
                if timeout(STALL, notify.notified()).await.is_err() && !ctl.stopped() {
                    ctl.stall();
                    slack = sent.saturating_sub(counts.min());
                }
                continue;
            }
            let k = (window - behind).min(2 * window - unacked).min(16);
            for _ in 0..k {
                next(&mut frame, phase, seq);
                seq = seq.wrapping_add(1);
                batch.extend_from_slice(&frame);
            }
            wr.write_all(&batch).await?;
            batch.clear();
            sent += k;
        }
        Ok(Vec::new())
    });
    Ok(warmed)
}
