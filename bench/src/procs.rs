//! The processes of a run: mosquitto and the gateway started with a high fd limit, their
//! configs and logs, and what the bench reads about them from /proc, ss and perf (RSS, threads,
//! UDP drops and buffers, disk writes, fsyncs, warnings in a log).
//! Owns: spawning, readiness waits, killing on drop, the readings. Never: a fixed port, or a
//! process left running when its handle drops.

use crate::*;

/// `extra` is appended to the config; `tag` names the config and log files.
pub(crate) fn start_mosquitto(
    bin: &Path,
    dir: &Path,
    nodelay: bool,
    extra: &str,
    tag: &str,
) -> Result<(Proc, u16)> {
    for _ in 0..5 {
        let port = free_tcp_port();
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

/// `--no-status`: every bench gateway runs with `status.enabled: false` (to measure what the
/// availability topics cost; they are on by default).
pub(crate) static NO_STATUS: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// The `limits` section of every bench gateway: room for `max_devices`, and the hostile-peer
/// bounds opened up, since every bench device speaks from 127.0.0.1, connects at once and may
/// take a QoS 0 stream without answering (the bench is a trusted network). With `--no-status`
/// also `status.enabled: false`.
pub(crate) fn trusted_limits(max_devices: usize) -> String {
    let status = if NO_STATUS.load(std::sync::atomic::Ordering::Relaxed) {
        "status:\n  enabled: false\n"
    } else {
        ""
    };
    format!(
        "{status}limits:\n  max_devices: {max_devices}\n  max_silent_downlink_bytes: 4294967295\n  per_source:\n    devices_per_address: {max_devices}\n    devices_per_subnet: {max_devices}\n    pending_per_address: {max_devices}\n    pending_per_subnet: {max_devices}\n    connects_per_second: 4294967295\n    connect_burst: {max_devices}\n"
    )
}

/// `store`: the SQLite file, or None for `store.path: null` (memory only).
pub(crate) fn gateway_config(
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
pub(crate) async fn start_gateway(
    bin: &Path,
    dir: &Path,
    broker_port: u16,
    max_devices: usize,
    tag: &str,
) -> Result<(Proc, SocketAddr)> {
    let db = dir.join("gateway.db");
    start_gateway_with(bin, dir, broker_port, max_devices, tag, Some(&db)).await
}

pub(crate) async fn start_gateway_with(
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
pub(crate) async fn spawn_gateway(
    bin: &Path,
    dir: &Path,
    conf: &Path,
    broker: Option<&str>,
    tcp: Option<u16>,
    tag: &str,
) -> Result<(Proc, SocketAddr)> {
    let udp_port = free_udp_port();
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

pub(crate) fn rss_kb(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

pub(crate) fn threads(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("Threads:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The kernel's drop counter of the UDP socket bound to `port` (receive buffer overflows).
pub(crate) fn udp_drops(port: u16) -> Option<u64> {
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
pub(crate) fn udp_rcvbuf(port: u16) -> Option<u64> {
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

pub(crate) fn sysctl(name: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/sys/{}", name.replace('.', "/")))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Counters of `/proc/<pid>/io` (the whole process: every thread, the store's writer too).
#[derive(Default, Debug, Clone, Copy)]
pub(crate) struct Io {
    pub(crate) wchar: u64,
    pub(crate) syscw: u64,
    pub(crate) write_bytes: u64,
    pub(crate) cancelled_write_bytes: u64,
}

impl Io {
    pub(crate) fn read(pid: u32) -> Io {
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

    pub(crate) fn since(&self, before: &Io) -> Io {
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
pub(crate) struct SyncCounter {
    pub(crate) child: Child,
    pub(crate) out: PathBuf,
}

impl SyncCounter {
    pub(crate) fn start(pid: u32, out: PathBuf) -> Option<SyncCounter> {
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
    pub(crate) fn stop(mut self) -> Option<(u64, u64)> {
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
pub(crate) fn log_warnings(path: &Path) -> (usize, Vec<String>) {
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
