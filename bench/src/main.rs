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
//! 10. TLS upstream: uplink QoS 1 over plain TCP and over TLS to the same mosquitto, and the
//!     ratio.
//! 11. aggregating mode: uplink QoS 1 throughput and CPU per message beside transparent mode,
//!     and 100,000 devices connected at once over 4 upstream sessions (`aggregate`).
//! 12. `compare` (issue 14): the same closed-loop loads (QoS 0 / 1 / 2 uplink, QoS 1 downlink,
//!     paced QoS 1 latency) as MQTT clients on mosquitto alone and as MQTT-SN devices through
//!     the gateway, side by side, with the CPU per message of the gateway, mosquitto and the
//!     bench (`/proc/<pid>/stat`); `--gateway-b` adds the same rows for a second binary.
//! 13. scale: toward `--scale-devices` (50,000) devices connected at once through
//!     `broker.upstream.source_addresses`, as far as the open-file limit allows; connect rate,
//!     gateway and mosquitto RSS, the RSS at 50,000 extrapolated when the limit stops it short.
//!
//! See docs/benchmarks.md. Run: `cargo run -p bench --release -- --help`.
//!
//! This file owns the flags, the order of the tests and the printed table; each test group has
//! a file of its own (throughput, downlink, rss, scale, sleep + wake, store, embedded, tls,
//! aggregate, compare), the processes and /proc readings are in `procs` and `cpu`, the load
//! generators in `clients` (and `cmpload` for the side-by-side group). The bench never measures
//! an in-process gateway: it runs the release binary as a child so RSS and disk I/O are its own.

mod aggregate;
mod clients;
mod cmpload;
mod compare;
mod cpu;
mod downlink;
mod embedded;
mod procs;
mod results;
mod rss;
mod scale;
mod sleep;
mod stamp;
mod store;
mod throughput;
mod tls;
mod wake;

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

use testkit::{free_tcp_port, free_udp_port, spawn_with_fd_limit, temp_dir, Proc};

use aggregate::*;
use clients::*;
use compare::*;
use cpu::*;
use downlink::*;
use embedded::*;
use procs::*;
use results::*;
use rss::*;
use scale::*;
use sleep::*;
use stamp::*;
use store::*;
use throughput::*;
use tls::*;
use wake::*;

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
    /// Devices the scale test aims for (it stops at what the open-file limit allows).
    #[arg(long, default_value_t = 50_000)]
    scale_devices: usize,
    /// Outstanding CONNECTs while connecting devices for the RSS and scale tests.
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
    /// Devices connected at once in the aggregating test (over 4 upstream sessions; spread
    /// over child processes of this binary); 0 = skip that part.
    #[arg(long, default_value_t = 100_000)]
    agg_devices: usize,
    /// Internal: run as a device-holding child of the aggregating test.
    #[arg(long, hide = true)]
    agg_child: Option<String>,
    /// Tests to run (default all): ceiling,up0,up1,down,latency,rss,scale,embedded,sleep,store,
    /// tls,aggregate,compare.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Gateway binary; default: build and use target/release/mqttsn-gateway next to this one.
    #[arg(long)]
    gateway: Option<PathBuf>,
    /// compare: a second gateway binary; every gateway row runs again with it ("gateway (B)").
    #[arg(long)]
    gateway_b: Option<PathBuf>,
    /// compare: client counts (MQTT clients, or MQTT-SN devices; subscribers for downlink).
    #[arg(long, value_delimiter = ',', default_value = "10,50")]
    compare_clients: Vec<usize>,
    /// compare: QoS 0 uplink messages each client keeps outstanding (sent, not yet received by
    /// the subscriber).
    #[arg(long, default_value_t = 8)]
    compare_window: u64,
    /// compare: downlink messages the publisher may be ahead of the slowest subscriber (below
    /// mosquitto's default in-flight window of 20 per client, so nothing queues or drops).
    #[arg(long, default_value_t = 16)]
    compare_down_window: u64,
    /// compare: clients of the latency rows (and of an extra QoS 1 row that sets their pace).
    #[arg(long, default_value_t = 100)]
    compare_latency_clients: usize,
    /// compare: the latency rows' pace as a fraction of the slowest gateway's QoS 1 rate with
    /// that many clients in the same run.
    #[arg(long, default_value_t = 0.5)]
    compare_latency_load: f64,
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
    /// Run every gateway with `status.enabled: false` (no availability topics), to compare.
    #[arg(long)]
    no_status: bool,
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
    if let Some(spec) = &a.agg_child {
        return agg_child(spec).await;
    }
    procs::NO_STATUS.store(a.no_status, std::sync::atomic::Ordering::Relaxed);
    if a.payload < STAMP {
        bail!("--payload must be at least {STAMP}");
    }
    if a.devices == 0 || a.down_devices == 0 {
        bail!("--devices and --down-devices must be at least 1");
    }
    EPOCH.get_or_init(Instant::now);
    let _ = rlimit::increase_nofile_limit(65536);
    let gw_bin = gateway_binary(&a)?;
    let dir = temp_dir("bench");
    let t_all = Instant::now();
    let result = run(&a, &gw_bin, &dir).await;
    match &result {
        Ok((rows, tables)) => {
            println!();
            println!(
                "Machine: {}; payload {} B; {:.0} s per throughput test; total run {:.0} s",
                machine(),
                a.payload,
                a.secs,
                t_all.elapsed().as_secs_f64()
            );
            if !rows.is_empty() {
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
            for t in tables {
                println!();
                print!("{t}");
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

async fn run(a: &Args, gw_bin: &Path, dir: &Path) -> Result<(Vec<Row>, Vec<String>)> {
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
            let open =
                uplink_qos0(a, broker, (gw, Some(gwp.pid())), &socks, ceil, 0, &mut rows).await?;
            upstream.up0 = Some(if a.udp_window > 0 {
                uplink_qos0(
                    a,
                    broker,
                    (gw, Some(gwp.pid())),
                    &socks,
                    ceil,
                    a.udp_window,
                    &mut rows,
                )
                .await?
            } else {
                open
            });
            unshare(&mut devs, socks, gw);
        }
        if a.wants("up1") {
            // Let the QoS 0 backlog drain before the next test.
            drain(&mut devs).await;
            let (back, r) = uplink_qos1(a, broker, devs, false, Some(gwp.pid()), &mut rows).await?;
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
    if a.wants("scale") {
        scale_test(a, gw_bin, dir, &mut rows).await?;
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
    if a.wants("tls") {
        tls_test(a, gw_bin, dir, &mut rows).await?;
    }
    if a.wants("aggregate") {
        aggregate_test(a, gw_bin, dir, broker, &mut rows).await?;
    }
    let mut tables = Vec::new();
    if a.wants("compare") {
        let mut gws = vec![(String::from("gateway"), gw_bin.to_path_buf())];
        if let Some(b) = &a.gateway_b {
            gws[0].0 = "gateway (A)".into();
            gws.push(("gateway (B)".into(), b.clone()));
        }
        tables.push(compare_test(a, &gws, dir, broker, mosq.pid()).await?);
    }
    if !mosq.alive() {
        bail!("mosquitto exited (see {})", mosq.log.display());
    }
    let _ = mosq.name;
    Ok((rows, tables))
}
