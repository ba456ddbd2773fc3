//! Benchmark of the MQTT-SN gateway against a real mosquitto.
//!
//! Starts its own mosquitto on a free loopback port and the gateway as a separate process
//! (`target/release/mqttsn-gateway`, so its RSS can be read from `/proc/<pid>/status`), then
//! measures, in one run:
//!
//! 1. the ceiling: plain MQTT QoS 0 publishers straight to mosquitto -> one subscriber;
//! 2. uplink QoS 0 from N MQTT-SN devices -> one MQTT subscriber on `bench/#`;
//! 3. uplink QoS 1 (one PUBLISH in flight per device, as MQTT-SN requires);
//! 4. downlink QoS 0: one MQTT publisher -> M subscribed devices;
//! 5. uplink latency p50/p99 at a paced rate;
//! 6. gateway RSS idle, and with 1,000 and 10,000 devices connected at once.
//!
//! See docs/benchmarks.md. Run: `cargo run --release --bin bench -- --help`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::{Bytes, BytesMut};
use clap::Parser;
use mqttsn_gateway::codec::{self, Message, ReturnCode, TopicFilter, TopicRef};
use mqttsn_gateway::mqtt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::timeout;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "bench",
    about = "Benchmark the MQTT-SN gateway against a local mosquitto; prints a Markdown table"
)]
struct Args {
    /// Uplink devices (MQTT-SN) and, for the ceiling, plain MQTT publishers.
    #[arg(long, default_value_t = 100)]
    devices: usize,
    /// Subscribed devices for the downlink test.
    #[arg(long, default_value_t = 100)]
    down_devices: usize,
    /// Seconds each throughput test sends for.
    #[arg(long, default_value_t = 5.0)]
    secs: f64,
    /// Payload size in octets (at least 17: phase, device, sequence, timestamp).
    #[arg(long, default_value_t = 32)]
    payload: usize,
    /// Paced uplink rate for the latency test, messages per second over all devices.
    #[arg(long, default_value_t = 1000)]
    latency_rate: u64,
    /// Seconds of the latency test.
    #[arg(long, default_value_t = 5.0)]
    latency_secs: f64,
    /// Device counts (cumulative, connected at once) at which the gateway RSS is read.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    rss_devices: Vec<usize>,
    /// Outstanding CONNECTs while connecting devices for the RSS test.
    #[arg(long, default_value_t = 200)]
    concurrency: usize,
    /// Tests to run (default all): ceiling,up0,up1,down,latency,rss.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Gateway binary; default: build and use target/release/mqttsn-gateway next to this one.
    #[arg(long)]
    gateway: Option<PathBuf>,
    /// mosquitto binary.
    #[arg(long, default_value = "/usr/sbin/mosquitto")]
    mosquitto: PathBuf,
    /// Publish-side window for the TCP tests (ceiling, downlink): publishers pause while more
    /// than this many messages are sent but not yet received, so mosquitto's backlog stays
    /// bounded and the rate measured is a sustained one. 0 = no window (pure blast).
    #[arg(long, default_value_t = 20000)]
    window: u64,
    /// Also run the uplink QoS 0 test closed-loop: devices pause while more than this many
    /// PUBLISHes are neither received by the subscriber nor counted as dropped by the
    /// gateway's UDP socket. 0 = skip; the open-loop blast always runs.
    #[arg(long, default_value_t = 200)]
    udp_window: u64,
    /// Leave mosquitto's Nagle algorithm on (its default); by default the bench sets
    /// `set_tcp_nodelay true` so latency is not dominated by Nagle + delayed ACK.
    #[arg(long)]
    mosquitto_nagle: bool,
    /// Keep the temp directory with configs and logs.
    #[arg(long)]
    keep: bool,
}

impl Args {
    fn wants(&self, test: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == test)
    }
}

const WAIT: Duration = Duration::from_secs(10);
/// A test is over when the receivers have seen nothing new for this long.
const QUIET: Duration = Duration::from_millis(700);
const MAX_DRAIN: Duration = Duration::from_secs(15);

// ------------------------------------------------------------------ payload

static EPOCH: OnceLock<Instant> = OnceLock::new();

fn now_ns() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

const PHASE_CEILING: u8 = 1;
const PHASE_UP0: u8 = 2;
const PHASE_UP1: u8 = 3;
const PHASE_DOWN: u8 = 4;
const PHASE_LAT: u8 = 5;
const PHASE_LAT_DIRECT: u8 = 6;
const PHASE_WARM: u8 = 9;
const STAMP: usize = 17;

/// Writes phase, device, sequence and send time into the last `STAMP` octets' place: the
/// payload is always the tail of an encoded PUBLISH (MQTT and MQTT-SN alike).
fn stamp(frame: &mut [u8], payload_len: usize, phase: u8, dev: u32, seq: u32) {
    let at = frame.len() - payload_len;
    let p = &mut frame[at..];
    p[0] = phase;
    p[1..5].copy_from_slice(&dev.to_le_bytes());
    p[5..9].copy_from_slice(&seq.to_le_bytes());
    p[9..17].copy_from_slice(&now_ns().to_le_bytes());
}

fn read_stamp(p: &[u8]) -> Option<(u8, u64)> {
    if p.len() < STAMP {
        return None;
    }
    Some((p[0], u64::from_le_bytes(p[9..17].try_into().ok()?)))
}

// ------------------------------------------------------------------ processes

fn free_tcp_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn free_udp_port() -> Result<u16> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A child process killed on drop.
struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }
    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `/bin/sh -c 'ulimit -n …; exec BIN ARGS'`, so the child (same pid) gets a high fd limit.
fn spawn_with_fd_limit(
    name: &'static str,
    bin: &Path,
    args: &[&str],
    log: PathBuf,
) -> Result<Proc> {
    let f = std::fs::File::create(&log)?;
    let child = Command::new("/bin/bash")
        .arg("-c")
        .arg(r#"ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"; exec "$@""#)
        .arg(name)
        .arg(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(f.try_clone()?)
        .stderr(f)
        .spawn()
        .with_context(|| format!("spawn {}", bin.display()))?;
    Ok(Proc { name, child, log })
}

fn start_mosquitto(bin: &Path, dir: &Path, nodelay: bool) -> Result<(Proc, u16)> {
    for _ in 0..5 {
        let port = free_tcp_port()?;
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_type error\nlog_type warning\nset_tcp_nodelay {nodelay}\n"),
        )?;
        let mut p = spawn_with_fd_limit(
            "mosquitto",
            bin,
            &["-c", conf.to_str().unwrap()],
            dir.join("mosquitto.log"),
        )?;
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline && p.alive() {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok((p, port));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    bail!(
        "mosquitto did not start (see {})",
        dir.join("mosquitto.log").display()
    )
}

fn gateway_config(dir: &Path, max_devices: usize) -> Result<PathBuf> {
    let path = dir.join("gateway.yaml");
    std::fs::write(
        &path,
        format!(
            "broker:\n  mode: upstream\n  upstream:\n    keep_alive: 600s\nlimits:\n  max_devices: {max_devices}\n"
        ),
    )?;
    Ok(path)
}

async fn start_gateway(
    bin: &Path,
    dir: &Path,
    broker_port: u16,
    max_devices: usize,
    tag: &str,
) -> Result<(Proc, SocketAddr)> {
    let conf = gateway_config(dir, max_devices)?;
    let udp_port = free_udp_port()?;
    let udp = format!("127.0.0.1:{udp_port}");
    let broker = format!("127.0.0.1:{broker_port}");
    let mut p = spawn_with_fd_limit(
        "gateway",
        bin,
        &[
            "run",
            "-c",
            conf.to_str().unwrap(),
            "--udp",
            &udp,
            "--broker",
            &broker,
            "--log",
            "warn",
        ],
        dir.join(format!("gateway-{tag}.log")),
    )?;
    let addr: SocketAddr = udp.parse()?;
    // Ready when it answers SEARCHGW with GWINFO.
    let probe = UdpSocket::bind("127.0.0.1:0").await?;
    let search = Message::SearchGw { radius: 0 }.to_bytes()?;
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if !p.alive() {
            bail!("gateway exited (see {})", p.log.display());
        }
        probe.send_to(&search, addr).await?;
        let mut buf = [0u8; 64];
        if let Ok(Ok((n, _))) = timeout(Duration::from_millis(100), probe.recv_from(&mut buf)).await
        {
            if let Ok(Message::GwInfo { .. }) =
                codec::decode_message(Bytes::copy_from_slice(&buf[..n]))
            {
                return Ok((p, addr));
            }
        }
    }
    bail!("gateway did not answer SEARCHGW (see {})", p.log.display())
}

fn rss_kb(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn threads(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("Threads:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The kernel's drop counter of the UDP socket bound to `port` (receive buffer overflows).
fn udp_drops(port: u16) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/net/udp").ok()?;
    let want = format!(":{port:04X}");
    s.lines()
        .skip(1)
        .find(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|a| a.ends_with(&want))
        })
        .and_then(|l| l.split_whitespace().last()?.parse().ok())
}

/// Warning lines in a log, with up to three distinct examples.
fn log_warnings(path: &Path) -> (usize, Vec<String>) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut n = 0;
    let mut examples: Vec<String> = Vec::new();
    for l in text
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
    {
        n += 1;
        // Strip the timestamp so repeated messages compare equal.
        let msg = l
            .split_once("WARN")
            .or_else(|| l.split_once("ERROR"))
            .map(|x| x.1)
            .unwrap_or(l);
        let msg = msg.trim().to_string();
        if examples.len() < 3 && !examples.contains(&msg) {
            examples.push(msg);
        }
    }
    (n, examples)
}

// ------------------------------------------------------------------ MQTT client

struct Mqtt {
    stream: TcpStream,
    buf: BytesMut,
}

impl Mqtt {
    async fn connect(broker: SocketAddr, client_id: &str) -> Result<Mqtt> {
        let stream = TcpStream::connect(broker).await?;
        stream.set_nodelay(true)?;
        let mut c = Mqtt {
            stream,
            buf: BytesMut::with_capacity(64 * 1024),
        };
        c.send(&mqtt::Packet::Connect(Box::new(mqtt::Connect {
            client_id: client_id.into(),
            clean_session: true,
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

    async fn send(&mut self, p: &mqtt::Packet) -> Result<()> {
        self.stream.write_all(&p.to_bytes()?).await?;
        Ok(())
    }

    async fn recv(&mut self, wait: Duration) -> Result<mqtt::Packet> {
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

    async fn subscribe(&mut self, filter: &str) -> Result<()> {
        self.send(&mqtt::Packet::Subscribe {
            packet_id: 1,
            filters: vec![(filter.into(), mqtt::QoS::AtMostOnce)],
        })
        .await?;
        loop {
            if let mqtt::Packet::SubAck { .. } = self.recv(WAIT).await? {
                return Ok(());
            }
        }
    }

    /// An encoded QoS 0 PUBLISH whose payload (its tail) is `payload_len` zero octets.
    fn publish_frame(topic: &str, payload_len: usize) -> Result<BytesMut> {
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
struct SubResult {
    count: u64,
    first: Option<Instant>,
    last: Option<Instant>,
    lat_us: Vec<u64>,
}

/// Counts PUBLISHes of `phase` until `stop`; `live` is the running count.
async fn run_subscriber(
    mut c: Mqtt,
    phase: u8,
    live: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> Result<SubResult> {
    let mut r = SubResult::default();
    while !stop.load(Ordering::Relaxed) {
        while let Some(p) = mqtt::decode(&mut c.buf, 1 << 20)? {
            if let mqtt::Packet::Publish(p) = p {
                if let Some((ph, ts)) = read_stamp(&p.payload) {
                    if ph == phase {
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
async fn wait_quiet(counts: &[&AtomicU64]) {
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
async fn gate(window: u64, sent: u64, received: &AtomicU64) {
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

struct Subscriber {
    live: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Result<SubResult>>,
}

impl Subscriber {
    async fn start(broker: SocketAddr, id: &str, phase: u8) -> Result<Subscriber> {
        let mut c = Mqtt::connect(broker, id).await?;
        c.subscribe("bench/#").await?;
        let live = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(run_subscriber(c, phase, live.clone(), stop.clone()));
        Ok(Subscriber { live, stop, task })
    }

    async fn finish(self) -> Result<SubResult> {
        wait_quiet(&[&self.live]).await;
        self.stop.store(true, Ordering::Relaxed);
        self.task.await?
    }
}

// ------------------------------------------------------------------ MQTT-SN device

struct Device {
    sock: UdpSocket,
    gw: SocketAddr,
    buf: Vec<u8>,
}

impl Device {
    async fn new(gw: SocketAddr) -> Result<Device> {
        Ok(Device {
            sock: UdpSocket::bind("127.0.0.1:0").await?,
            gw,
            buf: vec![0u8; 2048],
        })
    }

    async fn send(&self, m: &Message) -> Result<()> {
        self.sock.send_to(&m.to_bytes()?, self.gw).await?;
        Ok(())
    }

    async fn recv(&mut self, wait: Duration) -> Result<Option<Message>> {
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

    /// CONNECT; the CONNACK's return code, or None on timeout.
    async fn connect(&mut self, client_id: &str, wait: Duration) -> Result<Option<ReturnCode>> {
        self.send(&Message::Connect(codec::Connect {
            will: false,
            clean_session: true,
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

    async fn register(&mut self, name: &str) -> Result<u16> {
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

    async fn subscribe(&mut self, name: &str) -> Result<u16> {
        self.send(&Message::Subscribe(codec::Subscribe {
            dup: false,
            qos: codec::QoS::AtMostOnce,
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
    async fn ready(gw: SocketAddr, kind: &str, i: usize) -> Result<(Device, u16)> {
        let mut d = Device::new(gw).await?;
        match d.connect(&format!("bench-{kind}-{i}"), WAIT).await? {
            Some(ReturnCode::Accepted) => {}
            other => bail!("device {i}: CONNACK {other:?}"),
        }
        let tid = d.register(&format!("bench/{kind}/{i}")).await?;
        Ok((d, tid))
    }
}

fn sn_publish_frame(
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
fn set_sn_msg_id(frame: &mut [u8], msg_id: u16) {
    frame[5..7].copy_from_slice(&msg_id.to_be_bytes());
}

// ------------------------------------------------------------------ results

struct Row {
    metric: String,
    value: String,
    target: String,
    notes: String,
}

fn row(
    metric: impl Into<String>,
    value: impl Into<String>,
    target: &str,
    notes: impl Into<String>,
) -> Row {
    Row {
        metric: metric.into(),
        value: value.into(),
        target: target.into(),
        notes: notes.into(),
    }
}

fn rate(n: u64, d: Duration) -> f64 {
    if d.is_zero() {
        0.0
    } else {
        n as f64 / d.as_secs_f64()
    }
}

fn pct(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        100.0 * a as f64 / b as f64
    }
}

fn fmt_rate(r: f64) -> String {
    let r = r.round() as u64;
    let s = r.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

fn mb(kb: u64) -> String {
    format!("{:.1} MB", kb as f64 / 1024.0)
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

// ------------------------------------------------------------------ tests

/// 1. Plain MQTT publishers -> mosquitto -> one subscriber.
async fn ceiling(a: &Args, broker: SocketAddr, rows: &mut Vec<Row>) -> Result<f64> {
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

/// 2. Uplink QoS 0 blast.
async fn uplink_qos0(
    a: &Args,
    broker: SocketAddr,
    gw: SocketAddr,
    devs: &[(Arc<UdpSocket>, u16)],
    ceiling: Option<f64>,
    window: u64,
    rows: &mut Vec<Row>,
) -> Result<()> {
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
            "received {} of {} sent ({:.1} %); gateway UDP socket buffer drops {}; send errors {}",
            r.count,
            sent,
            pct(r.count, sent),
            drops,
            errors.load(Ordering::Relaxed)
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
    Ok(())
}

/// 3. Uplink QoS 1: one PUBLISH in flight per device.
async fn uplink_qos1(
    a: &Args,
    broker: SocketAddr,
    devs: Vec<(Device, u16)>,
    rows: &mut Vec<Row>,
) -> Result<Vec<(Device, u16)>> {
    eprintln!("[up1] {} devices, QoS 1, {:.0}s", devs.len(), a.secs);
    let n = devs.len();
    let sub = Subscriber::start(broker, "bench-up1-sub", PHASE_UP1).await?;
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
        format!("3. Uplink QoS 1: {n} devices, 1 in flight each (PUBACKs)"),
        format!("{} msg/s", fmt_rate(rt)),
        "—",
        format!(
            "{acked} PUBACKs; subscriber received {}; PUBLISH->PUBACK p50 {:.2} ms, p99 {:.2} ms; timeouts {timeouts}, rejected {rejected}",
            r.count,
            percentile(&lat, 0.5) as f64 / 1000.0,
            percentile(&lat, 0.99) as f64 / 1000.0,
        ),
    ));
    Ok(back)
}

/// 5. Paced uplink latency, device send -> subscriber receive.
async fn latency(
    a: &Args,
    broker: SocketAddr,
    gw: SocketAddr,
    devs: &[(Arc<UdpSocket>, u16)],
    rows: &mut Vec<Row>,
) -> Result<()> {
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
    Ok(())
}

/// 4. Downlink: one MQTT publisher -> M subscribed devices.
async fn downlink(a: &Args, broker: SocketAddr, gw: SocketAddr, rows: &mut Vec<Row>) -> Result<()> {
    let m = a.down_devices;
    eprintln!("[down] {m} subscribed devices, {:.0}s", a.secs);
    let mut devs = Vec::new();
    for i in 0..m {
        let mut d = Device::new(gw).await?;
        match d.connect(&format!("bench-down-{i}"), WAIT).await? {
            Some(ReturnCode::Accepted) => {}
            other => bail!("downlink device {i}: CONNACK {other:?}"),
        }
        d.subscribe("bench/down").await?;
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

/// 6. Gateway RSS idle and with many devices connected at once.
async fn rss(
    a: &Args,
    gw_bin: &Path,
    dir: &Path,
    broker: SocketAddr,
    mosq_pid: u32,
    rows: &mut Vec<Row>,
) -> Result<()> {
    let top = a.rss_devices.iter().copied().max().unwrap_or(0);
    let (mut gwp, gw) = start_gateway(gw_bin, dir, broker.port(), top.max(1) + 100, "rss").await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = rss_kb(gwp.pid()).unwrap_or(0);
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
                let mut attempts = 0;
                let rc = loop {
                    attempts += 1;
                    match d
                        .connect(&format!("bench-rss-{i}"), Duration::from_secs(5))
                        .await
                    {
                        Ok(Some(rc)) => break Some(rc),
                        Ok(None) if attempts < 3 => continue,
                        _ => break None,
                    }
                };
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
    Ok(())
}

// ------------------------------------------------------------------ main

fn gateway_binary(a: &Args) -> Result<PathBuf> {
    if let Some(p) = &a.gateway {
        return Ok(p.clone());
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("building the gateway: cargo build --release --bin mqttsn-gateway");
    let st = Command::new(cargo)
        .args(["build", "--release", "--quiet", "--bin", "mqttsn-gateway"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .context("run cargo build")?;
    if !st.success() {
        bail!("cargo build of the gateway failed");
    }
    let exe = std::env::current_exe()?;
    let p = exe.with_file_name("mqttsn-gateway");
    if !p.is_file() {
        bail!("{} not found; pass --gateway PATH", p.display());
    }
    Ok(p)
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|x| x.1.trim().to_string())
        })
        .unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .unwrap_or(0);
    let n = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!(
        "{n} CPUs ({cpu}), {:.1} GiB RAM",
        mem as f64 / 1024.0 / 1024.0
    )
}

#[tokio::main]
async fn main() -> Result<()> {
    let a = Args::parse();
    if a.payload < STAMP {
        bail!("--payload must be at least {STAMP}");
    }
    if a.devices == 0 || a.down_devices == 0 {
        bail!("--devices and --down-devices must be at least 1");
    }
    EPOCH.get_or_init(Instant::now);
    let _ = rlimit::increase_nofile_limit(65536);
    let gw_bin = gateway_binary(&a)?;
    let dir = std::env::temp_dir().join(format!("mqttsn-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let t_all = Instant::now();
    let result = run(&a, &gw_bin, &dir).await;
    match &result {
        Ok(rows) => {
            println!();
            println!(
                "Machine: {}; payload {} B; {:.0} s per throughput test; total run {:.0} s",
                machine(),
                a.payload,
                a.secs,
                t_all.elapsed().as_secs_f64()
            );
            println!();
            println!("| metric | measured | target | notes |");
            println!("|---|---|---|---|");
            for r in rows {
                println!(
                    "| {} | {} | {} | {} |",
                    r.metric, r.value, r.target, r.notes
                );
            }
        }
        Err(e) => eprintln!("bench failed: {e:#} (logs in {})", dir.display()),
    }
    if a.keep || result.is_err() {
        eprintln!("logs and configs kept in {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result.map(|_| ())
}

async fn run(a: &Args, gw_bin: &Path, dir: &Path) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    let (mut mosq, port) = start_mosquitto(&a.mosquitto, dir, !a.mosquitto_nagle)?;
    let broker: SocketAddr = ([127, 0, 0, 1], port).into();
    eprintln!("mosquitto on {broker} (pid {})", mosq.pid());

    let ceil = if a.wants("ceiling") {
        Some(ceiling(a, broker, &mut rows).await?)
    } else {
        None
    };

    if a.wants("up0") || a.wants("up1") || a.wants("latency") || a.wants("down") {
        let (mut gwp, gw) =
            start_gateway(gw_bin, dir, port, a.devices + a.down_devices + 100, "main").await?;
        eprintln!(
            "gateway on {gw} (pid {}), RSS {}",
            gwp.pid(),
            mb(rss_kb(gwp.pid()).unwrap_or(0))
        );
        let mut devs = Vec::new();
        for i in 0..a.devices {
            devs.push(Device::ready(gw, "up", i).await?);
        }
        if a.wants("latency") {
            let socks = share(&mut devs);
            latency(a, broker, gw, &socks, &mut rows).await?;
            unshare(&mut devs, socks, gw);
        }
        if a.wants("up0") {
            let socks = share(&mut devs);
            uplink_qos0(a, broker, gw, &socks, ceil, 0, &mut rows).await?;
            if a.udp_window > 0 {
                uplink_qos0(a, broker, gw, &socks, ceil, a.udp_window, &mut rows).await?;
            }
            unshare(&mut devs, socks, gw);
        }
        if a.wants("up1") {
            // Let the QoS 0 backlog drain before the next test.
            drain(&mut devs).await;
            devs = uplink_qos1(a, broker, devs, &mut rows).await?;
        }
        if a.wants("down") {
            downlink(a, broker, gw, &mut rows).await?;
        }
        let alive = gwp.alive();
        let r = rss_kb(gwp.pid()).unwrap_or(0);
        let (n, ex) = log_warnings(&gwp.log);
        rows.push(row(
            "Gateway after throughput tests",
            if alive { mb(r) } else { "EXITED".into() },
            "—",
            format!(
                "{n} warnings in its log{}{}",
                if n > 0 { ": " } else { "" },
                ex.join(" | ")
            ),
        ));
        drop(devs);
        drop(gwp);
    }

    if a.wants("rss") {
        rss(a, gw_bin, dir, broker, mosq.pid(), &mut rows).await?;
    }
    if !mosq.alive() {
        bail!("mosquitto exited (see {})", mosq.log.display());
    }
    let _ = mosq.name;
    Ok(rows)
}

/// Hands the device sockets to a test that only sends (the sockets are moved out and back).
fn share(devs: &mut Vec<(Device, u16)>) -> Vec<(Arc<UdpSocket>, u16)> {
    devs.drain(..)
        .map(|(d, tid)| (Arc::new(d.sock), tid))
        .collect()
}

fn unshare(devs: &mut Vec<(Device, u16)>, socks: Vec<(Arc<UdpSocket>, u16)>, gw: SocketAddr) {
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
async fn drain(devs: &mut [(Device, u16)]) {
    for (d, _) in devs.iter_mut() {
        while let Ok(Some(_)) = d.recv(Duration::from_millis(1)).await {}
    }
}
