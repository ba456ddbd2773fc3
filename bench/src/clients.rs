//! The bench's load generators: a pipelined MQTT client and subscriber (counting stamped
//! messages per phase) and MQTT-SN devices over UDP that send pre-encoded PUBLISH frames.
//! Owns: sending fast and counting what arrives. Never: its own wire format (frames are encoded
//! by `mqttsn_gateway::codec` / `mqtt`), or a wait without a bound.

use crate::*;

pub(crate) struct Mqtt {
    pub(crate) stream: TcpStream,
    pub(crate) buf: BytesMut,
}

impl Mqtt {
    pub(crate) async fn connect(broker: SocketAddr, client_id: &str) -> Result<Mqtt> {
        Self::connect_opts(broker, client_id, true).await
    }

    pub(crate) async fn connect_opts(
        broker: SocketAddr,
        client_id: &str,
        clean_session: bool,
    ) -> Result<Mqtt> {
        let stream = TcpStream::connect(broker).await?;
        stream.set_nodelay(true)?;
        let mut c = Mqtt {
            stream,
            buf: BytesMut::with_capacity(64 * 1024),
        };
        c.send(&mqtt::Packet::Connect(Box::new(mqtt::Connect {
            client_id: client_id.into(),
            clean_session,
            keep_alive: 600,
            will: None,
            username: None,
            password: None,
        })))
        .await?;
        match c.recv(WAIT).await? {
            mqtt::Packet::ConnAck {
                code: mqtt::ConnectReturnCode::Accepted,
                ..
            } => Ok(c),
            other => bail!("expected CONNACK accepted, got {other:?}"),
        }
    }

    pub(crate) async fn send(&mut self, p: &mqtt::Packet) -> Result<()> {
        self.stream.write_all(&p.to_bytes()?).await?;
        Ok(())
    }

    pub(crate) async fn recv(&mut self, wait: Duration) -> Result<mqtt::Packet> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(p) = mqtt::decode(&mut self.buf, 1 << 20)? {
                return Ok(p);
            }
            let n = tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf))
                .await
                .map_err(|_| anyhow!("timed out waiting for the broker"))??;
            if n == 0 {
                bail!("broker closed the connection");
            }
        }
    }

    pub(crate) async fn subscribe(&mut self, filter: &str) -> Result<()> {
        self.subscribe_qos(filter, mqtt::QoS::AtMostOnce).await
    }

    pub(crate) async fn subscribe_qos(&mut self, filter: &str, qos: mqtt::QoS) -> Result<()> {
        self.send(&mqtt::Packet::Subscribe {
            packet_id: 1,
            filters: vec![(filter.into(), qos)],
        })
        .await?;
        loop {
            if let mqtt::Packet::SubAck { .. } = self.recv(WAIT).await? {
                return Ok(());
            }
        }
    }

    /// An encoded QoS 0 PUBLISH whose payload (its tail) is `payload_len` zero octets.
    pub(crate) fn publish_frame(topic: &str, payload_len: usize) -> Result<BytesMut> {
        let p = mqtt::Packet::Publish(mqtt::Publish {
            dup: false,
            qos: mqtt::QoS::AtMostOnce,
            retain: false,
            topic: topic.into(),
            packet_id: None,
            payload: Bytes::from(vec![0u8; payload_len]),
        });
        Ok(BytesMut::from(&p.to_bytes()?[..]))
    }
}

/// What the one MQTT subscriber saw of one phase.
#[derive(Default)]
pub(crate) struct SubResult {
    pub(crate) count: u64,
    pub(crate) first: Option<Instant>,
    pub(crate) last: Option<Instant>,
    pub(crate) lat_us: Vec<u64>,
    /// With `check`: copies (a device and sequence number already seen), not in `count`.
    pub(crate) dups: u64,
}

/// Counts PUBLISHes of `phase` until `stop`; `live` is the running count. With `check`, a
/// second copy of the same (device, sequence) is counted in `dups` instead.
pub(crate) async fn run_subscriber(
    mut c: Mqtt,
    phase: u8,
    live: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    check: bool,
) -> Result<SubResult> {
    let mut r = SubResult::default();
    let mut seen = std::collections::HashSet::new();
    while !stop.load(Ordering::Relaxed) {
        while let Some(p) = mqtt::decode(&mut c.buf, 1 << 20)? {
            if let mqtt::Packet::Publish(p) = p {
                if let (mqtt::QoS::AtLeastOnce, Some(packet_id)) = (p.qos, p.packet_id) {
                    c.send(&mqtt::Packet::PubAck { packet_id }).await?;
                }
                if let Some((ph, ts)) = read_stamp(&p.payload) {
                    if ph == phase {
                        if check {
                            if let Some((_, dev, seq)) = read_dev_seq(&p.payload) {
                                if !seen.insert((dev, seq)) {
                                    r.dups += 1;
                                    continue;
                                }
                            }
                        }
                        let t = Instant::now();
                        r.count += 1;
                        r.first.get_or_insert(t);
                        r.last = Some(t);
                        r.lat_us.push(now_ns().saturating_sub(ts) / 1000);
                        live.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        if c.buf.capacity() - c.buf.len() < 16 * 1024 {
            c.buf.reserve(64 * 1024);
        }
        match timeout(Duration::from_millis(100), c.stream.read_buf(&mut c.buf)).await {
            Ok(Ok(0)) => bail!("broker closed the subscriber"),
            Ok(Ok(_)) | Err(_) => {}
            Ok(Err(e)) => return Err(e.into()),
        }
    }
    Ok(r)
}

/// Waits until `count` has not moved for [`QUIET`] (or [`MAX_DRAIN`] passed).
pub(crate) async fn wait_quiet(counts: &[&AtomicU64]) {
    let total = || {
        counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum::<u64>()
    };
    let start = Instant::now();
    let mut last = total();
    let mut since = Instant::now();
    while start.elapsed() < MAX_DRAIN {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = total();
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= QUIET {
            return;
        }
    }
}

/// Waits while `sent - received` exceeds `window` (0 = never); gives up after a second
/// without progress so a lost message can never stall the sender for good.
pub(crate) async fn gate(window: u64, sent: u64, received: &AtomicU64) {
    if window == 0 {
        return;
    }
    let mut last = received.load(Ordering::Relaxed);
    let mut since = Instant::now();
    while sent.saturating_sub(received.load(Ordering::Relaxed)) > window {
        tokio::time::sleep(Duration::from_micros(500)).await;
        let now = received.load(Ordering::Relaxed);
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() > Duration::from_secs(1) {
            return;
        }
    }
}

pub(crate) struct Subscriber {
    pub(crate) live: Arc<AtomicU64>,
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) task: tokio::task::JoinHandle<Result<SubResult>>,
}

impl Subscriber {
    pub(crate) async fn start(broker: SocketAddr, id: &str, phase: u8) -> Result<Subscriber> {
        Self::start_with(broker, id, phase, false).await
    }

    /// `check`: count duplicates (same device and sequence number) separately.
    pub(crate) async fn start_with(
        broker: SocketAddr,
        id: &str,
        phase: u8,
        check: bool,
    ) -> Result<Subscriber> {
        let mut c = Mqtt::connect(broker, id).await?;
        c.subscribe("bench/#").await?;
        let live = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(run_subscriber(c, phase, live.clone(), stop.clone(), check));
        Ok(Subscriber { live, stop, task })
    }

    /// A persistent session (clean-session 0) subscribed at QoS 1, acknowledging each PUBLISH.
    pub(crate) async fn start_persistent(
        broker: SocketAddr,
        id: &str,
        phase: u8,
    ) -> Result<Subscriber> {
        let mut c = Mqtt::connect_opts(broker, id, false).await?;
        c.subscribe_qos("bench/#", mqtt::QoS::AtLeastOnce).await?;
        let live = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(run_subscriber(c, phase, live.clone(), stop.clone(), false));
        Ok(Subscriber { live, stop, task })
    }

    pub(crate) async fn finish(self) -> Result<SubResult> {
        wait_quiet(&[&self.live]).await;
        self.stop.store(true, Ordering::Relaxed);
        self.task.await?
    }
}

// ------------------------------------------------------------------ MQTT-SN device

pub(crate) struct Device {
    pub(crate) sock: UdpSocket,
    pub(crate) gw: SocketAddr,
    pub(crate) buf: Vec<u8>,
}

impl Device {
    pub(crate) async fn new(gw: SocketAddr) -> Result<Device> {
        Ok(Device {
            sock: UdpSocket::bind("127.0.0.1:0").await?,
            gw,
            buf: vec![0u8; 2048],
        })
    }

    pub(crate) async fn send(&self, m: &Message) -> Result<()> {
        self.sock.send_to(&m.to_bytes()?, self.gw).await?;
        Ok(())
    }

    pub(crate) async fn recv(&mut self, wait: Duration) -> Result<Option<Message>> {
        match timeout(wait, self.sock.recv_from(&mut self.buf)).await {
            Err(_) => Ok(None),
            Ok(r) => {
                let (n, _) = r?;
                Ok(Some(codec::decode_message(Bytes::copy_from_slice(
                    &self.buf[..n],
                ))?))
            }
        }
    }

    /// CONNECT (CleanSession=1); the CONNACK's return code, or None on timeout.
    pub(crate) async fn connect(
        &mut self,
        client_id: &str,
        wait: Duration,
    ) -> Result<Option<ReturnCode>> {
        self.connect_with(client_id, true, wait).await
    }

    /// CONNECT (CleanSession=1) resent while no CONNACK comes within 5 s, up to `tries`
    /// times: the CONNACK's return code (None: none came, or the socket failed) and the
    /// attempts made — how the RSS, scale and aggregate tests connect thousands at once.
    pub(crate) async fn connect_retrying(
        &mut self,
        client_id: &str,
        tries: u32,
    ) -> (Option<ReturnCode>, u32) {
        let mut attempts = 0;
        while attempts < tries {
            attempts += 1;
            match self.connect(client_id, Duration::from_secs(5)).await {
                Ok(Some(rc)) => return (Some(rc), attempts),
                Ok(None) => continue,
                Err(_) => break,
            }
        }
        (None, attempts)
    }

    pub(crate) async fn connect_with(
        &mut self,
        client_id: &str,
        clean_session: bool,
        wait: Duration,
    ) -> Result<Option<ReturnCode>> {
        self.send(&Message::Connect(codec::Connect {
            will: false,
            clean_session,
            protocol_id: codec::PROTOCOL_ID_V1_2,
            duration: 3600,
            client_id: client_id.into(),
        }))
        .await?;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.recv(left).await? {
                None => return Ok(None),
                Some(Message::Connack { return_code }) => return Ok(Some(return_code)),
                Some(_) => continue,
            }
        }
    }

    pub(crate) async fn register(&mut self, name: &str) -> Result<u16> {
        self.send(&Message::Register(codec::Register {
            topic_id: 0,
            msg_id: 1,
            topic_name: name.into(),
        }))
        .await?;
        loop {
            match self.recv(WAIT).await? {
                Some(Message::Regack(r)) if r.return_code == ReturnCode::Accepted => {
                    return Ok(r.topic_id)
                }
                Some(Message::Regack(r)) => bail!("REGACK {:?}", r.return_code),
                Some(_) => continue,
                None => bail!("no REGACK"),
            }
        }
    }

    pub(crate) async fn subscribe(&mut self, name: &str, qos: codec::QoS) -> Result<u16> {
        self.send(&Message::Subscribe(codec::Subscribe {
            dup: false,
            qos,
            msg_id: 2,
            topic: TopicFilter::Name(name.into()),
        }))
        .await?;
        loop {
            match self.recv(WAIT).await? {
                Some(Message::Suback(s)) if s.return_code == ReturnCode::Accepted => {
                    return Ok(s.topic_id)
                }
                Some(Message::Suback(s)) => bail!("SUBACK {:?}", s.return_code),
                Some(_) => continue,
                None => bail!("no SUBACK"),
            }
        }
    }

    /// Connects and registers `bench/<kind>/<i>`; returns the topic id.
    pub(crate) async fn ready(gw: SocketAddr, kind: &str, i: usize) -> Result<(Device, u16)> {
        Self::ready_with(gw, kind, i, true).await
    }

    pub(crate) async fn ready_with(
        gw: SocketAddr,
        kind: &str,
        i: usize,
        clean_session: bool,
    ) -> Result<(Device, u16)> {
        let mut d = Device::new(gw).await?;
        match d
            .connect_with(&format!("bench-{kind}-{i}"), clean_session, WAIT)
            .await?
        {
            Some(ReturnCode::Accepted) => {}
            other => bail!("device {i}: CONNACK {other:?}"),
        }
        let tid = d.register(&format!("bench/{kind}/{i}")).await?;
        Ok((d, tid))
    }
}

pub(crate) fn sn_publish_frame(
    topic_id: u16,
    qos: codec::QoS,
    msg_id: u16,
    payload_len: usize,
) -> Result<BytesMut> {
    let m = Message::Publish(codec::Publish {
        dup: false,
        qos,
        retain: false,
        topic: TopicRef::Id(topic_id),
        msg_id,
        data: Bytes::from(vec![0u8; payload_len]),
    });
    Ok(BytesMut::from(&m.to_bytes()?[..]))
}

/// Sets the MsgId of an encoded MQTT-SN PUBLISH (1-octet length header: octets 5-6).
pub(crate) fn set_sn_msg_id(frame: &mut [u8], msg_id: u16) {
    frame[5..7].copy_from_slice(&msg_id.to_be_bytes());
}

/// Hands the device sockets to a test that only sends (the sockets are moved out and back).
pub(crate) fn share(devs: &mut Vec<(Device, u16)>) -> Vec<(Arc<UdpSocket>, u16)> {
    devs.drain(..)
        .map(|(d, tid)| (Arc::new(d.sock), tid))
        .collect()
}

pub(crate) fn unshare(
    devs: &mut Vec<(Device, u16)>,
    socks: Vec<(Arc<UdpSocket>, u16)>,
    gw: SocketAddr,
) {
    for (s, tid) in socks {
        let sock = Arc::try_unwrap(s).expect("socket still shared");
        devs.push((
            Device {
                sock,
                gw,
                buf: vec![0u8; 2048],
            },
            tid,
        ));
    }
}

/// Discards whatever the gateway sent the devices meanwhile.
pub(crate) async fn drain(devs: &mut [(Device, u16)]) {
    for (d, _) in devs.iter_mut() {
        while let Ok(Some(_)) = d.recv(Duration::from_millis(1)).await {}
    }
}
