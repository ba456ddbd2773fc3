//! The parts of the sleeping-device tests: sleepers (CONNECT, SUBSCRIBE, DISCONNECT(duration)),
//! the wake-up of one (PINGREQ(ClientId) -> buffered PUBLISHes, each PUBACKed -> PINGRESP), a
//! QoS 1 publisher, and the checks of what a wake-up delivered.
//! Owns: the device side of spec §6.14 as the bench drives it. Never: rows of the result table.

use crate::*;

/// Device number and sequence number of a stamped payload.
pub(crate) fn read_dev_seq(p: &[u8]) -> Option<(u8, u32, u32)> {
    if p.len() < STAMP {
        return None;
    }
    Some((
        p[0],
        u32::from_le_bytes(p[1..5].try_into().ok()?),
        u32::from_le_bytes(p[5..9].try_into().ok()?),
    ))
}

/// What one device saw between its PINGREQ(ClientId) and the PINGRESP.
#[derive(Default, Debug)]
pub(crate) struct Wake {
    /// PINGREQ sent -> PINGRESP received (or None: no PINGRESP).
    pub(crate) took: Option<Duration>,
    /// New PUBLISHes of the expected phase, counted before the PINGRESP.
    pub(crate) publishes: u64,
    /// PUBLISHes whose sequence number was not the next one expected (gaps or reordering).
    pub(crate) out_of_order: u64,
    /// Re-sent PUBLISHes (DUP, or a sequence number already seen): acknowledged, not counted.
    pub(crate) dups: u64,
    pub(crate) registers: u64,
    /// PUBLISHes that were not QoS 1, or of another phase / device.
    pub(crate) unexpected: u64,
    /// PINGREQs re-sent after [`WAKE_RETRY`] without a datagram (§6.14 retransmission).
    pub(crate) pingreq_resends: u64,
    /// Datagrams received in the [`AFTER_PINGRESP`] after the PINGRESP.
    pub(crate) after_pingresp: u64,
}

pub(crate) const WAKE_RETRY: Duration = Duration::from_secs(5);
pub(crate) const WAKE_GIVE_UP: Duration = Duration::from_secs(60);
pub(crate) const AFTER_PINGRESP: Duration = Duration::from_millis(300);

/// Wakes a sleeping device with PINGREQ(ClientId) and takes what the gateway delivered,
/// answering each PUBLISH with PUBACK and each REGISTER with REGACK at once, until PINGRESP.
/// Expects PUBLISHes of `phase` for device `dev` with sequence numbers from `first_seq` on.
pub(crate) async fn wake(
    d: &mut Device,
    client_id: &str,
    phase: u8,
    dev: u32,
    first_seq: u32,
) -> Result<Wake> {
    let mut w = Wake::default();
    let ping = Message::PingReq {
        client_id: Some(client_id.into()),
    }
    .to_bytes()?;
    let t0 = Instant::now();
    d.sock.send_to(&ping, d.gw).await?;
    let mut next = first_seq;
    let mut seen = std::collections::HashSet::new();
    while t0.elapsed() < WAKE_GIVE_UP {
        let Some(m) = d.recv(WAKE_RETRY).await? else {
            w.pingreq_resends += 1;
            d.sock.send_to(&ping, d.gw).await?;
            continue;
        };
        match m {
            Message::Publish(p) => {
                if p.qos == codec::QoS::AtLeastOnce {
                    let topic_id = match p.topic {
                        TopicRef::Id(t) | TopicRef::Predefined(t) => t,
                        _ => 0,
                    };
                    d.send(&Message::Puback(codec::Puback {
                        topic_id,
                        msg_id: p.msg_id,
                        return_code: ReturnCode::Accepted,
                    }))
                    .await?;
                } else {
                    w.unexpected += 1;
                }
                match read_dev_seq(&p.data) {
                    Some((ph, dv, seq)) if ph == phase && dv == dev => {
                        if p.dup || !seen.insert(seq) {
                            w.dups += 1;
                        } else {
                            w.publishes += 1;
                            if seq != next {
                                w.out_of_order += 1;
                            }
                            next = seq.wrapping_add(1);
                        }
                    }
                    _ => w.unexpected += 1,
                }
            }
            Message::Register(r) => {
                w.registers += 1;
                d.send(&Message::Regack(codec::Regack {
                    topic_id: r.topic_id,
                    msg_id: r.msg_id,
                    return_code: ReturnCode::Accepted,
                }))
                .await?;
            }
            Message::PingResp => {
                w.took = Some(t0.elapsed());
                break;
            }
            _ => w.unexpected += 1,
        }
    }
    if w.took.is_some() {
        while let Some(_m) = d.recv(AFTER_PINGRESP).await? {
            w.after_pingresp += 1;
        }
    }
    Ok(w)
}

/// Connects, subscribes `topic` at QoS 1 and goes to sleep (DISCONNECT with a duration).
pub(crate) async fn sleeper(
    gw: SocketAddr,
    client_id: &str,
    topic: &str,
    duration: u16,
) -> Result<Device> {
    sleeper_with(gw, client_id, true, topic, duration).await
}

pub(crate) async fn sleeper_with(
    gw: SocketAddr,
    client_id: &str,
    clean_session: bool,
    topic: &str,
    duration: u16,
) -> Result<Device> {
    let mut d = Device::new(gw).await?;
    let mut attempts = 0;
    loop {
        attempts += 1;
        match d
            .connect_with(client_id, clean_session, Duration::from_secs(5))
            .await?
        {
            Some(ReturnCode::Accepted) => break,
            None if attempts < 3 => continue,
            other => bail!("{client_id}: CONNACK {other:?}"),
        }
    }
    d.subscribe(topic, codec::QoS::AtLeastOnce).await?;
    d.send(&Message::Disconnect {
        duration: Some(duration),
    })
    .await?;
    loop {
        match d.recv(WAIT).await? {
            Some(Message::Disconnect { duration: None }) => return Ok(d),
            Some(Message::Disconnect { duration: Some(x) }) => {
                bail!("{client_id}: DISCONNECT answered with a duration ({x})")
            }
            Some(_) => continue,
            None => bail!("{client_id}: no DISCONNECT in answer to the sleep request"),
        }
    }
}

/// One MQTT client publishing QoS 1, with a task counting mosquitto's PUBACKs.
pub(crate) struct Qos1Publisher {
    pub(crate) w: tokio::net::tcp::OwnedWriteHalf,
    pub(crate) acks: Arc<AtomicU64>,
    pub(crate) reader: tokio::task::JoinHandle<Result<()>>,
    pub(crate) sent: u64,
    pub(crate) packet_id: u16,
}

impl Qos1Publisher {
    pub(crate) async fn connect(broker: SocketAddr, id: &str) -> Result<Qos1Publisher> {
        let c = Mqtt::connect(broker, id).await?;
        let mut buf = c.buf;
        let (mut r, w) = c.stream.into_split();
        let acks = Arc::new(AtomicU64::new(0));
        let reader = {
            let acks = acks.clone();
            tokio::spawn(async move {
                loop {
                    while let Some(p) = mqtt::decode(&mut buf, 1 << 20)? {
                        if let mqtt::Packet::PubAck { .. } = p {
                            acks.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    if r.read_buf(&mut buf).await? == 0 {
                        return Ok(());
                    }
                }
            })
        };
        Ok(Qos1Publisher {
            w,
            acks,
            reader,
            sent: 0,
            packet_id: 0,
        })
    }

    /// Publishes, in this order, every `(topic, device, seq)`, 64 PUBLISHes per write.
    pub(crate) async fn publish(
        &mut self,
        msgs: impl Iterator<Item = (String, u32, u32)>,
        payload: usize,
        phase: u8,
    ) -> Result<()> {
        let mut batch = BytesMut::new();
        let mut n = 0;
        for (topic, dev, seq) in msgs {
            self.packet_id = self.packet_id.wrapping_add(1).max(1);
            let p = mqtt::Packet::Publish(mqtt::Publish {
                dup: false,
                qos: mqtt::QoS::AtLeastOnce,
                retain: false,
                topic,
                packet_id: Some(self.packet_id),
                payload: Bytes::from(vec![0u8; payload]),
            });
            let mut f = BytesMut::from(&p.to_bytes()?[..]);
            stamp(&mut f, payload, phase, dev, seq);
            batch.extend_from_slice(&f);
            self.sent += 1;
            n += 1;
            if n % 64 == 0 {
                self.w.write_all(&batch).await?;
                batch.clear();
            }
        }
        self.w.write_all(&batch).await?;
        Ok(())
    }

    /// Waits until mosquitto has acknowledged everything sent; the number acknowledged.
    pub(crate) async fn acked(&self) -> u64 {
        let deadline = Instant::now() + WAIT;
        while self.acks.load(Ordering::Relaxed) < self.sent && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.acks.load(Ordering::Relaxed)
    }
}

impl Drop for Qos1Publisher {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Polls the RSS every 100 ms until it has not changed for `stable` (at most `max`).
pub(crate) async fn rss_stable(pid: u32, stable: Duration, max: Duration) -> (u64, Duration) {
    let start = Instant::now();
    let mut last = rss_kb(pid).unwrap_or(0);
    let mut since = Instant::now();
    while start.elapsed() < max {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = rss_kb(pid).unwrap_or(0);
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= stable {
            break;
        }
    }
    (last, start.elapsed())
}

/// Datagrams waiting on a device's socket (the gateway must send nothing to a sleeping device).
pub(crate) fn pending_datagrams(d: &Device) -> u64 {
    let mut buf = [0u8; 2048];
    let mut n = 0;
    while d.sock.try_recv_from(&mut buf).is_ok() {
        n += 1;
    }
    n
}

pub(crate) fn wake_faults(w: &Wake, expected: u64) -> Vec<String> {
    let mut f = Vec::new();
    if w.took.is_none() {
        f.push("NO PINGRESP".to_string());
    }
    if w.publishes != expected {
        f.push(format!(
            "{} PUBLISHes before PINGRESP, expected {expected}",
            w.publishes
        ));
    }
    if w.out_of_order > 0 {
        f.push(format!("{} out of order", w.out_of_order));
    }
    if w.unexpected > 0 {
        f.push(format!("{} unexpected messages", w.unexpected));
    }
    if w.after_pingresp > 0 {
        f.push(format!("{} datagrams after PINGRESP", w.after_pingresp));
    }
    f
}
