//! Benchmark of the MQTT-SN gateway against a real mosquitto (and its embedded broker).
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
//! 6. gateway RSS idle, and with 1,000 and 10,000 devices connected at once;
//! 7. sleeping devices (spec §6.14): RSS with 20 QoS 1 messages buffered for each of 1,000
//!    sleeping devices, the wake-up of one device with 100 buffered (PINGREQ(ClientId) ->
//!    PUBLISH/PUBACK x 100 -> PINGRESP), and of all 1,000 at once;
//! 8. the durable store: bytes written to disk (`/proc/<pid>/io`) and fsyncs per message for
//!    uplink QoS 2 and for QoS 1 buffered for sleeping devices, and uplink QoS 1 / QoS 2
//!    throughput of persistent devices with the store on and off (`store.path: null`).
//! 9. the embedded broker (`broker.mode: embedded`, no `--broker`): 5, 2 (closed loop), 3 and
//!    the idle RSS again, the devices' sessions and the bench's MQTT clients on the broker
//!    inside the gateway process, next to the same numbers against mosquitto upstream.
//!
//! See docs/benchmarks.md. Run: `cargo run -p bench --release -- --help`.

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
    /// Sleeping devices for the sleep test.
    #[arg(long, default_value_t = 1000)]
    sleep_devices: usize,
    /// QoS 1 messages buffered per sleeping device in the sleep test.
    #[arg(long, default_value_t = 20)]
    sleep_messages: usize,
    /// QoS 1 messages buffered for the one device whose wake-up is timed.
    #[arg(long, default_value_t = 100)]
    wake_messages: usize,
    /// Wake-ups of that device (each with a fresh buffer); the median is reported.
    #[arg(long, default_value_t = 3)]
    wake_rounds: usize,
    /// Skip waking all sleeping devices at once (the drain of every buffer).
    #[arg(long = "no-sleep-drain", action = clap::ArgAction::SetFalse)]
    sleep_drain: bool,
    /// Persistent devices (CleanSession=0) for the store test's bytes-per-message parts.
    #[arg(long, default_value_t = 50)]
    store_devices: usize,
    /// Messages per device in the store test's bytes-per-message parts.
    #[arg(long, default_value_t = 100)]
    store_messages: usize,
    /// Persistent devices for the store test's throughput part (store on vs off).
    #[arg(long, default_value_t = 100)]
    store_tp_devices: usize,
    /// Tests to run (default all): ceiling,up0,up1,down,latency,rss,embedded,sleep,store.
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
const PHASE_SLEEP: u8 = 7;
const PHASE_WAKE: u8 = 8;
const PHASE_WARM: u8 = 9;
const PHASE_STORE2: u8 = 10;
const PHASE_STORE_SLEEP: u8 = 11;
const PHASE_STORE_TP1: u8 = 12;
const PHASE_STORE_TP2: u8 = 13;
/// Sleep duration the sleeping devices ask for (s): far longer than the test.
const SLEEP_DURATION: u16 = 36000;
const STAMP: usize = 17;
/// The gateway's default `sleep.buffer_messages` (the bench does not change it).
const SLEEP_BUFFER_MESSAGES: usize = 100;

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

/// `extra` is appended to the config; `tag` names the config and log files.
fn start_mosquitto(
    bin: &Path,
    dir: &Path,
    nodelay: bool,
    extra: &str,
    tag: &str,
) -> Result<(Proc, u16)> {
    for _ in 0..5 {
        let port = free_tcp_port()?;
        let conf = dir.join(format!("mosquitto{tag}.conf"));
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_type error\nlog_type warning\nset_tcp_nodelay {nodelay}\n{extra}"),
        )?;
        let mut p = spawn_with_fd_limit(
            "mosquitto",
            bin,
            &["-c", conf.to_str().unwrap()],
            dir.join(format!("mosquitto{tag}.log")),
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
        dir.join(format!("mosquitto{tag}.log")).display()
    )
}

/// The `limits` section of every bench gateway: room for `max_devices`, and the hostile-peer
/// bounds opened up, since every bench device speaks from 127.0.0.1, connects at once and may
/// take a QoS 0 stream without answering (the bench is a trusted network).
fn trusted_limits(max_devices: usize) -> String {
    format!(
        "limits:\n  max_devices: {max_devices}\n  max_silent_downlink_bytes: 4294967295\n  per_source:\n    devices_per_address: {max_devices}\n    devices_per_subnet: {max_devices}\n    pending_per_address: {max_devices}\n    pending_per_subnet: {max_devices}\n    connects_per_second: 4294967295\n    connect_burst: {max_devices}\n"
    )
}

/// `store`: the SQLite file, or None for `store.path: null` (memory only).
fn gateway_config(
    dir: &Path,
    max_devices: usize,
    store: Option<&Path>,
    tag: &str,
) -> Result<PathBuf> {
    let path = dir.join(format!("gateway-{tag}.yaml"));
    std::fs::write(
        &path,
        format!(
            "broker:\n  mode: upstream\n  upstream:\n    keep_alive: 600s\n{}store:\n  path: {}\n",
            trusted_limits(max_devices),
            store.map_or("null".to_string(), |p| p.display().to_string())
        ),
    )?;
    Ok(path)
}

/// A gateway with its store at `dir/gateway.db`.
async fn start_gateway(
    bin: &Path,
    dir: &Path,
    broker_port: u16,
    max_devices: usize,
    tag: &str,
) -> Result<(Proc, SocketAddr)> {
    let db = dir.join("gateway.db");
    start_gateway_with(bin, dir, broker_port, max_devices, tag, Some(&db)).await
}

async fn start_gateway_with(
    bin: &Path,
    dir: &Path,
    broker_port: u16,
    max_devices: usize,
    tag: &str,
    store: Option<&Path>,
) -> Result<(Proc, SocketAddr)> {
    let conf = gateway_config(dir, max_devices, store, tag)?;
    let broker = format!("127.0.0.1:{broker_port}");
    spawn_gateway(bin, dir, &conf, Some(&broker), None, tag).await
}

/// Runs the gateway with config `conf`, `--broker` if given; waits until the TCP port `tcp`
/// (the embedded broker's) accepts, if given, and until the gateway answers SEARCHGW.
async fn spawn_gateway(
    bin: &Path,
    dir: &Path,
    conf: &Path,
    broker: Option<&str>,
    tcp: Option<u16>,
    tag: &str,
) -> Result<(Proc, SocketAddr)> {
    let udp_port = free_udp_port()?;
    let udp = format!("127.0.0.1:{udp_port}");
    let mut args = vec!["run", "-c", conf.to_str().unwrap(), "--udp", &udp];
    if let Some(b) = broker {
        args.extend(["--broker", b]);
    }
    args.extend(["--log", "warn"]);
    let mut p = spawn_with_fd_limit(
        "gateway",
        bin,
        &args,
        dir.join(format!("gateway-{tag}.log")),
    )?;
    let addr: SocketAddr = udp.parse()?;
    if let Some(port) = tcp {
        let deadline = Instant::now() + WAIT;
        loop {
            if !p.alive() {
                bail!("gateway exited (see {})", p.log.display());
            }
            if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "embedded broker did not listen on 127.0.0.1:{port} (see {})",
                    p.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
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

/// The receive buffer the kernel granted the UDP socket bound to `port` (`ss -m`: `rb`, the
/// doubled value, as `SO_RCVBUF` reports it).
fn udp_rcvbuf(port: u16) -> Option<u64> {
    let out = Command::new("ss")
        .args(["-uanm", "sport", "=", &format!(":{port}")])
        .output()
        .ok()?;
    let s = String::from_utf8_lossy(&out.stdout);
    let at = s.find("skmem:(")?;
    s[at..]
        .split([',', '('])
        .find_map(|f| f.strip_prefix("rb")?.parse().ok())
}

fn sysctl(name: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/sys/{}", name.replace('.', "/")))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Counters of `/proc/<pid>/io` (the whole process: every thread, the store's writer too).
#[derive(Default, Debug, Clone, Copy)]
struct Io {
    wchar: u64,
    syscw: u64,
    write_bytes: u64,
    cancelled_write_bytes: u64,
}

impl Io {
    fn read(pid: u32) -> Io {
        let s = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
        let get = |k: &str| {
            s.lines()
                .find_map(|l| l.strip_prefix(k)?.strip_prefix(':')?.trim().parse().ok())
                .unwrap_or(0)
        };
        Io {
            wchar: get("wchar"),
            syscw: get("syscw"),
            write_bytes: get("write_bytes"),
            cancelled_write_bytes: get("cancelled_write_bytes"),
        }
    }

    fn since(&self, before: &Io) -> Io {
        Io {
            wchar: self.wchar.saturating_sub(before.wchar),
            syscw: self.syscw.saturating_sub(before.syscw),
            write_bytes: self.write_bytes.saturating_sub(before.write_bytes),
            cancelled_write_bytes: self
                .cancelled_write_bytes
                .saturating_sub(before.cancelled_write_bytes),
        }
    }
}

/// Counts the fsync/fdatasync calls of a process with `perf stat` on the syscall tracepoints
/// (cheap: no ptrace). None if perf is missing or not allowed.
struct SyncCounter {
    child: Child,
    out: PathBuf,
}

impl SyncCounter {
    fn start(pid: u32, out: PathBuf) -> Option<SyncCounter> {
        let child = Command::new("perf")
            .args([
                "stat",
                "-x,",
                "-e",
                "syscalls:sys_enter_fsync,syscalls:sys_enter_fdatasync",
                "-p",
                &pid.to_string(),
                "-o",
                out.to_str()?,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        Some(SyncCounter { child, out })
    }

    /// (fsync, fdatasync) since start.
    fn stop(mut self) -> Option<(u64, u64)> {
        // SIGINT makes perf print its counts; it is our own child, addressed by its pid.
        Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .ok()?;
        self.child.wait().ok()?;
        let s = std::fs::read_to_string(&self.out).ok()?;
        let get = |ev: &str| -> Option<u64> {
            let l = s.lines().find(|l| l.contains(ev))?;
            let v = l.split(',').next()?;
            Some(v.trim().parse().unwrap_or(0)) // "<not counted>": none
        };
        Some((get("sys_enter_fsync")?, get("sys_enter_fdatasync")?))
    }
}

impl Drop for SyncCounter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
        Self::connect_opts(broker, client_id, true).await
    }

    async fn connect_opts(
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
        self.subscribe_qos(filter, mqtt::QoS::AtMostOnce).await
    }

    async fn subscribe_qos(&mut self, filter: &str, qos: mqtt::QoS) -> Result<()> {
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
    /// With `check`: copies (a device and sequence number already seen), not in `count`.
    dups: u64,
}

/// Counts PUBLISHes of `phase` until `stop`; `live` is the running count. With `check`, a
/// second copy of the same (device, sequence) is counted in `dups` instead.
async fn run_subscriber(
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
        Self::start_with(broker, id, phase, false).await
    }

    /// `check`: count duplicates (same device and sequence number) separately.
    async fn start_with(
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
    async fn start_persistent(broker: SocketAddr, id: &str, phase: u8) -> Result<Subscriber> {
        let mut c = Mqtt::connect_opts(broker, id, false).await?;
        c.subscribe_qos("bench/#", mqtt::QoS::AtLeastOnce).await?;
        let live = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(run_subscriber(c, phase, live.clone(), stop.clone(), false));
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

    /// CONNECT (CleanSession=1); the CONNACK's return code, or None on timeout.
    async fn connect(&mut self, client_id: &str, wait: Duration) -> Result<Option<ReturnCode>> {
        self.connect_with(client_id, true, wait).await
    }

    async fn connect_with(
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

    async fn subscribe(&mut self, name: &str, qos: codec::QoS) -> Result<u16> {
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
    async fn ready(gw: SocketAddr, kind: &str, i: usize) -> Result<(Device, u16)> {
        Self::ready_with(gw, kind, i, true).await
    }

    async fn ready_with(
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
        if i > 0 && (s.len() - i).is_multiple_of(3) {
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
    Ok(rt)
}

/// 3. Uplink QoS 1: one PUBLISH in flight per device.
async fn uplink_qos1(
    a: &Args,
    broker: SocketAddr,
    devs: Vec<(Device, u16)>,
    persistent_sub: bool,
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
            "{acked} PUBACKs; subscriber received {}; PUBLISH->PUBACK p50 {:.2} ms, p99 {:.2} ms; timeouts {timeouts}, rejected {rejected}",
            r.count,
            percentile(&lat, 0.5) as f64 / 1000.0,
            percentile(&lat, 0.99) as f64 / 1000.0,
        ),
    ));
    Ok((back, rt))
}

/// 5. Paced uplink latency, device send -> subscriber receive.
async fn latency(
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

/// 6. Gateway RSS idle and with many devices connected at once.
async fn rss(
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
    Ok((idle, idle_threads))
}

// ------------------------------------------------------------------ sleeping devices

/// Device number and sequence number of a stamped payload.
fn read_dev_seq(p: &[u8]) -> Option<(u8, u32, u32)> {
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
struct Wake {
    /// PINGREQ sent -> PINGRESP received (or None: no PINGRESP).
    took: Option<Duration>,
    /// New PUBLISHes of the expected phase, counted before the PINGRESP.
    publishes: u64,
    /// PUBLISHes whose sequence number was not the next one expected (gaps or reordering).
    out_of_order: u64,
    /// Re-sent PUBLISHes (DUP, or a sequence number already seen): acknowledged, not counted.
    dups: u64,
    registers: u64,
    /// PUBLISHes that were not QoS 1, or of another phase / device.
    unexpected: u64,
    /// PINGREQs re-sent after [`WAKE_RETRY`] without a datagram (§6.14 retransmission).
    pingreq_resends: u64,
    /// Datagrams received in the [`AFTER_PINGRESP`] after the PINGRESP.
    after_pingresp: u64,
}

const WAKE_RETRY: Duration = Duration::from_secs(5);
const WAKE_GIVE_UP: Duration = Duration::from_secs(60);
const AFTER_PINGRESP: Duration = Duration::from_millis(300);

/// Wakes a sleeping device with PINGREQ(ClientId) and takes what the gateway delivered,
/// answering each PUBLISH with PUBACK and each REGISTER with REGACK at once, until PINGRESP.
/// Expects PUBLISHes of `phase` for device `dev` with sequence numbers from `first_seq` on.
async fn wake(
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
async fn sleeper(gw: SocketAddr, client_id: &str, topic: &str, duration: u16) -> Result<Device> {
    sleeper_with(gw, client_id, true, topic, duration).await
}

async fn sleeper_with(
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
struct Qos1Publisher {
    w: tokio::net::tcp::OwnedWriteHalf,
    acks: Arc<AtomicU64>,
    reader: tokio::task::JoinHandle<Result<()>>,
    sent: u64,
    packet_id: u16,
}

impl Qos1Publisher {
    async fn connect(broker: SocketAddr, id: &str) -> Result<Qos1Publisher> {
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
    async fn publish(
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
    async fn acked(&self) -> u64 {
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
async fn rss_stable(pid: u32, stable: Duration, max: Duration) -> (u64, Duration) {
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
fn pending_datagrams(d: &Device) -> u64 {
    let mut buf = [0u8; 2048];
    let mut n = 0;
    while d.sock.try_recv_from(&mut buf).is_ok() {
        n += 1;
    }
    n
}

fn wake_faults(w: &Wake, expected: u64) -> Vec<String> {
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

/// Test 7, sleeping devices: RSS with messages buffered for many sleeping devices, and the
/// wake-up (PINGREQ(ClientId) -> buffered PUBLISHes, each PUBACKed -> PINGRESP) of one and of all.
async fn sleep_test(a: &Args, gw_bin: &Path, dir: &Path, rows: &mut Vec<Row>) -> Result<()> {
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
async fn drain_all(
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

fn percentile_d(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::MAX;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

// ------------------------------------------------------------------ durable store

/// What devices achieved sending uplink QoS 1 or 2, one flow in flight each.
#[derive(Default)]
struct Flows {
    /// Flows completed: PUBACK Accepted, or PUBCOMP.
    done: u64,
    /// PUBACK with a return code other than Accepted.
    rejected: u64,
    /// PUBLISHes (DUP) or PUBRELs re-sent after [`FLOW_RETRY`] without an answer.
    resends: u64,
    /// Flows given up after [`FLOW_TRIES`] sends.
    failed: u64,
    /// PUBLISH sent -> PUBACK / PUBCOMP received, µs.
    lat_us: Vec<u64>,
    /// Start -> the last device finished.
    took: Duration,
}

const FLOW_RETRY: Duration = Duration::from_secs(2);
const FLOW_TRIES: u32 = 5;

/// Waits up to `wait` for a datagram `want` accepts; others are skipped.
async fn flow_answer(
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
async fn uplink_flows(
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

fn flow_notes(f: &Flows, r: &SubResult) -> String {
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
fn io_notes(io: &Io, syncs: Option<(u64, u64)>, msgs: u64) -> String {
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

fn file_size(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

fn db_sizes(db: &Path) -> String {
    let wal = PathBuf::from(format!("{}-wal", db.display()));
    format!(
        "db file {} KiB, WAL {} KiB",
        file_size(db) / 1024,
        file_size(&wal) / 1024
    )
}

/// Starts counting a process's fsyncs, if perf is there; perf needs a moment to attach.
async fn count_syncs(pid: u32, out: PathBuf) -> Option<SyncCounter> {
    let c = SyncCounter::start(pid, out);
    tokio::time::sleep(Duration::from_millis(300)).await;
    c
}

/// Test 8, the durable store: disk writes per message for uplink QoS 2 and for QoS 1 buffered
/// for sleeping devices (then delivered), and uplink QoS 1 / QoS 2 throughput of persistent
/// devices with the store on and off.
async fn store_test(a: &Args, gw_bin: &Path, dir: &Path, rows: &mut Vec<Row>) -> Result<()> {
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

/// The numbers test 9 compares between the embedded broker and mosquitto upstream.
#[derive(Default, Clone, Copy, Debug)]
struct Cmp {
    /// Uplink QoS 0 msg/s, closed loop (`--udp-window`; open loop if that is 0).
    up0: Option<f64>,
    /// Uplink QoS 1 msg/s, one in flight per device.
    up1: Option<f64>,
    /// Paced uplink latency (p50, p99) in ms.
    lat: Option<(f64, f64)>,
    /// Gateway VmRSS 0.5 s after it answered SEARCHGW, kB.
    idle_kb: Option<u64>,
    /// Gateway threads at that moment.
    threads: Option<u64>,
}

/// Tests 6a, 5, 2w and 3 against one gateway (already started) and `broker`, the broker the
/// gateway's sessions go to: idle RSS, then `--devices` devices connect and run the paced
/// latency test, the uplink QoS 0 test (closed loop) and the uplink QoS 1 test.
async fn cmp_suite(
    a: &Args,
    gwp: &Proc,
    gw: SocketAddr,
    broker: SocketAddr,
    rows: &mut Vec<Row>,
) -> Result<Cmp> {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut c = Cmp {
        idle_kb: rss_kb(gwp.pid()),
        threads: threads(gwp.pid()),
        ..Cmp::default()
    };
    let mut devs = Vec::new();
    for i in 0..a.devices {
        devs.push(Device::ready(gw, "up", i).await?);
    }
    let socks = share(&mut devs);
    c.lat = Some(latency(a, broker, gw, &socks, rows).await?);
    c.up0 = Some(uplink_qos0(a, broker, gw, &socks, None, a.udp_window, rows).await?);
    unshare(&mut devs, socks, gw);
    drain(&mut devs).await;
    let (mut devs, r) = uplink_qos1(a, broker, devs, false, rows).await?;
    c.up1 = Some(r);
    drain(&mut devs).await;
    let (devs, _) = uplink_qos1(a, broker, devs, true, rows).await?;
    drop(devs);
    Ok(c)
}

/// Test 9: tests 5, 2w, 3 and 6a against the embedded broker (`broker.mode: embedded`, no
/// `--broker`; the bench's MQTT clients connect to `broker.embedded.bind`), next to the same
/// numbers against mosquitto upstream. Those come from tests 2w, 3, 5 and 6a of this run when
/// they ran; otherwise they are measured here first, the same way.
async fn embedded_test(
    a: &Args,
    gw_bin: &Path,
    dir: &Path,
    mosquitto: SocketAddr,
    mut up: Cmp,
    rows: &mut Vec<Row>,
) -> Result<()> {
    let max_devices = a.devices + 100;
    let mut up_note = "mosquitto numbers from tests 2w, 3, 5 and 6a of this run";
    if up.up0.is_none() || up.up1.is_none() || up.lat.is_none() || up.idle_kb.is_none() {
        eprintln!("[embedded] the mosquitto side first");
        up_note = "mosquitto numbers measured by this test (same gateway config, upstream mode)";
        let conf = gateway_config(
            dir,
            max_devices,
            Some(&dir.join("gateway-cmp.db")),
            "cmp-upstream",
        )?;
        let (mut gwp, gw) = spawn_gateway(
            gw_bin,
            dir,
            &conf,
            Some(&mosquitto.to_string()),
            None,
            "cmp-upstream",
        )
        .await?;
        let mut scratch = Vec::new();
        let m = cmp_suite(a, &gwp, gw, mosquitto, &mut scratch).await?;
        gateway_health(&mut gwp, "9z. Gateway warnings, mosquitto side", rows);
        up.up0 = up.up0.or(m.up0);
        up.up1 = up.up1.or(m.up1);
        up.lat = up.lat.or(m.lat);
        up.idle_kb = up.idle_kb.or(m.idle_kb);
        up.threads = up.threads.or(m.threads);
    }

    let port = free_tcp_port()?;
    let data = dir.join("embedded-data");
    std::fs::create_dir_all(&data)?;
    let conf = dir.join("gateway-embedded.yaml");
    std::fs::write(
        &conf,
        format!(
            "broker:\n  mode: embedded\n  upstream:\n    keep_alive: 600s\n  embedded:\n    bind: 127.0.0.1:{port}\n    data_dir: {}\n{}store:\n  path: {}\n",
            data.display(),
            trusted_limits(max_devices),
            dir.join("gateway-embedded.db").display()
        ),
    )?;
    let (mut gwp, gw) = spawn_gateway(gw_bin, dir, &conf, None, Some(port), "embedded").await?;
    let broker: SocketAddr = ([127, 0, 0, 1], port).into();
    eprintln!(
        "[embedded] gateway on {gw} (pid {}), embedded broker on {broker}",
        gwp.pid()
    );
    let mut erows = Vec::new();
    let e = cmp_suite(a, &gwp, gw, broker, &mut erows).await?;
    for r in erows {
        rows.push(row(
            if r.metric.contains("mosquitto") {
                format!("E{}", r.metric.replace("mosquitto", "embedded broker"))
            } else {
                format!("E{} (embedded broker)", r.metric)
            },
            r.value,
            &r.target,
            r.notes
                .replace(
                    &format!("; mosquitto set_tcp_nodelay {}", !a.mosquitto_nagle),
                    "",
                )
                .replace("mosquitto", "embedded broker"),
        ));
    }
    let idle_note = format!(
        "{} threads vs {}",
        e.threads.unwrap_or(0),
        up.threads.map_or("?".to_string(), |t| t.to_string()),
    );
    gateway_health(&mut gwp, "E9z. Gateway warnings, embedded broker", rows);
    drop(gwp);

    let ratio = |e: Option<f64>, m: Option<f64>| match (e, m) {
        (Some(e), Some(m)) if m > 0.0 => format!("embedded / mosquitto = {:.0} %", 100.0 * e / m),
        _ => "—".to_string(),
    };
    let rate_s = |r: Option<f64>| r.map_or("?".to_string(), |r| format!("{} msg/s", fmt_rate(r)));
    let lat_s = |l: Option<(f64, f64)>| {
        l.map_or("?".to_string(), |(p50, p99)| {
            format!("p50 {p50:.2} ms, p99 {p99:.2} ms")
        })
    };
    let cmp = "9. Embedded vs mosquitto upstream";
    rows.push(row(
        format!(
            "{cmp}: uplink QoS 0, {} devices, {}",
            a.devices,
            if a.udp_window > 0 {
                format!("closed loop, window {}", a.udp_window)
            } else {
                "open-loop blast".to_string()
            }
        ),
        format!("{} vs {}", rate_s(e.up0), rate_s(up.up0)),
        "—",
        format!("{}; {up_note}", ratio(e.up0, up.up0)),
    ));
    rows.push(row(
        format!(
            "{cmp}: uplink QoS 1, {} devices, 1 in flight each",
            a.devices
        ),
        format!("{} vs {}", rate_s(e.up1), rate_s(up.up1)),
        "—",
        ratio(e.up1, up.up1),
    ));
    rows.push(row(
        format!("{cmp}: uplink latency at {} msg/s", a.latency_rate),
        format!("{} vs {}", lat_s(e.lat), lat_s(up.lat)),
        "—",
        "device send -> subscriber receive",
    ));
    rows.push(row(
        format!("{cmp}: gateway RSS idle"),
        format!(
            "{} vs {}",
            e.idle_kb.map_or("?".to_string(), mb),
            up.idle_kb.map_or("?".to_string(), mb)
        ),
        "—",
        format!(
            "VmRSS 0.5 s after the gateway answered SEARCHGW; {idle_note}; the embedded figure includes the broker (rmqtt, sled) in the same process"
        ),
    ));
    Ok(())
}

/// A row if the gateway exited or logged warnings.
fn gateway_health(gwp: &mut Proc, metric: &str, rows: &mut Vec<Row>) {
    let alive = gwp.alive();
    let (nw, ex) = log_warnings(&gwp.log);
    if nw > 0 || !alive {
        rows.push(row(
            metric,
            if alive {
                nw.to_string()
            } else {
                "EXITED".into()
            },
            "0",
            ex.join(" | "),
        ));
    }
}

// ------------------------------------------------------------------ main

fn gateway_binary(a: &Args) -> Result<PathBuf> {
    if let Some(p) = &a.gateway {
        return Ok(p.clone());
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("building the gateway: cargo build --release -p mqttsn-gateway --bin mqttsn-gateway");
    // The bench and the gateway share the workspace's target dir, so the binary lands next to
    // this one (target/release/).
    let st = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "mqttsn-gateway",
            "--bin",
            "mqttsn-gateway",
        ])
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
    let (mut mosq, port) = start_mosquitto(&a.mosquitto, dir, !a.mosquitto_nagle, "", "")?;
    let broker: SocketAddr = ([127, 0, 0, 1], port).into();
    eprintln!("mosquitto on {broker} (pid {})", mosq.pid());

    // The mosquitto-side numbers the embedded test compares with.
    let mut upstream = Cmp::default();
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
            upstream.lat = Some(latency(a, broker, gw, &socks, &mut rows).await?);
            unshare(&mut devs, socks, gw);
        }
        if a.wants("up0") {
            let socks = share(&mut devs);
            let open = uplink_qos0(a, broker, gw, &socks, ceil, 0, &mut rows).await?;
            upstream.up0 = Some(if a.udp_window > 0 {
                uplink_qos0(a, broker, gw, &socks, ceil, a.udp_window, &mut rows).await?
            } else {
                open
            });
            unshare(&mut devs, socks, gw);
        }
        if a.wants("up1") {
            // Let the QoS 0 backlog drain before the next test.
            drain(&mut devs).await;
            let (back, r) = uplink_qos1(a, broker, devs, false, &mut rows).await?;
            devs = back;
            upstream.up1 = Some(r);
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
                "{n} warnings in its log{}{}; UDP receive buffer granted {} (ss -m rb, i.e. 2 x SO_RCVBUF asked, capped by net.core.rmem_max = {})",
                if n > 0 { ": " } else { "" },
                ex.join(" | "),
                udp_rcvbuf(gw.port()).map_or("?".to_string(), |b| format!("{b} B")),
                sysctl("net.core.rmem_max").map_or("?".to_string(), |b| b.to_string()),
            ),
        ));
        drop(devs);
        drop(gwp);
    }

    if a.wants("rss") {
        let (idle, t) = rss(a, gw_bin, dir, broker, mosq.pid(), &mut rows).await?;
        upstream.idle_kb = Some(idle);
        upstream.threads = t;
    }
    if a.wants("embedded") {
        embedded_test(a, gw_bin, dir, broker, upstream, &mut rows).await?;
    }
    if a.wants("sleep") {
        sleep_test(a, gw_bin, dir, &mut rows).await?;
    }
    if a.wants("store") {
        store_test(a, gw_bin, dir, &mut rows).await?;
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
