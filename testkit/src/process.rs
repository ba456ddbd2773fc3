//! Child processes: the gateway binary for a test (killed on drop, or with SIGKILL on request),
//! its config written to a file, its UDP address read back from its log; the gateway run from a
//! config file with its stderr kept in a file (`LoggedGateway`); and, for the bench, any
//! program started with a high fd limit, its output in a log file, killed on drop.
//! Owns: spawning the binary the caller names and killing it. Never: finds the gateway binary
//! itself (a test passes `env!("CARGO_BIN_EXE_mqttsn-gateway")`, the bench its --gateway path).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use mqttsn_gateway::config::Config;

use crate::WAIT;

/// The gateway binary as a separate process (so it can be killed with SIGKILL), with its
/// config in a file; UDP on a free loopback port read back from its log.
pub struct GatewayProcess {
    child: Child,
    pub udp: SocketAddr,
}

impl GatewayProcess {
    /// Starts `bin` (the gateway binary) with `config` written to `dir/gateway.yaml`.
    pub fn start(bin: &Path, config: &Config, dir: &Path) -> GatewayProcess {
        use std::io::{BufRead, BufReader};
        let file = dir.join("gateway.yaml");
        std::fs::write(&file, config.to_yaml()).unwrap();
        let mut child = Command::new(bin)
            .args(["run", "-c"])
            .arg(&file)
            .args([
                "--log",
                if std::env::var_os("MQTTSN_TEST_LOG").is_some() {
                    "debug"
                } else {
                    "info"
                },
            ])
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the gateway");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if std::env::var_os("MQTTSN_TEST_LOG").is_some() {
                    eprintln!("[gateway] {line}");
                }
                let _ = tx.send(line);
            }
        });
        let deadline = std::time::Instant::now() + WAIT;
        let udp = loop {
            let wait = deadline.saturating_duration_since(std::time::Instant::now());
            let Ok(line) = rx.recv_timeout(wait) else {
                break None;
            };
            if line.contains("UDP transport listening") {
                break line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("addr="))
                    .and_then(|a| a.parse().ok());
            }
        };
        match udp {
            Some(udp) => GatewayProcess { child, udp },
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the gateway did not log its UDP address");
            }
        }
    }

    /// SIGKILL: no shutdown, no flush.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A child process with its output in `log`, killed on drop.
pub struct Proc {
    pub name: &'static str,
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// True while the process has not exited.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `/bin/bash -c 'ulimit -n …; exec BIN ARGS'`, so the child (same pid) gets a high fd limit;
/// stdout and stderr go to `log`.
pub fn spawn_with_fd_limit(
    name: &'static str,
    bin: &Path,
    args: &[&str],
    log: PathBuf,
) -> std::io::Result<Proc> {
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
        .map_err(|e| std::io::Error::new(e.kind(), format!("spawn {}: {e}", bin.display())))?;
    Ok(Proc { name, child, log })
}

/// The gateway binary `bin` run with the config file `config`, its stderr appended to
/// `dir/stderr.log` (for tests that read what it logged, or why it exited); SIGKILLed when
/// dropped, so a failing test leaves no process behind.
pub struct LoggedGateway(pub Child);

impl LoggedGateway {
    pub fn spawn(bin: &Path, config: &Path, dir: &Path) -> LoggedGateway {
        Self::spawn_env(bin, config, dir, &[])
    }

    /// [`LoggedGateway::spawn`] with these environment variables set for the gateway (e.g. a
    /// `password_env` secret).
    pub fn spawn_env(bin: &Path, config: &Path, dir: &Path, env: &[(&str, &str)]) -> LoggedGateway {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("stderr.log"))
            .expect("open stderr.log");
        Command::new(bin)
            .args(["run", "-c"])
            .arg(config)
            .env_remove("RUST_LOG")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map(LoggedGateway)
            .expect("spawn the gateway")
    }

    /// The gateway binary toward an upstream broker on 127.0.0.1:`broker_port`, one UDP
    /// transport on a free port (returned), no store, no status page; `upstream` are more lines
    /// under `broker.upstream` (indented four spaces), `sections` more top-level YAML (e.g.
    /// `status:\n  enabled: false\n`). Its config is `dir/gateway.yaml`, its log
    /// `dir/stderr.log`; returns once it listens.
    pub fn upstream(
        bin: &Path,
        dir: &Path,
        broker_port: u16,
        upstream: &str,
        sections: &str,
    ) -> (LoggedGateway, std::net::SocketAddr) {
        let udp = crate::free_udp_port();
        let file = dir.join("gateway.yaml");
        std::fs::write(
            &file,
            format!(
                "transports:\n  udp:\n    - bind: 127.0.0.1:{udp}\n\
                 broker:\n  mode: upstream\n  upstream:\n    port: {broker_port}\n{upstream}\
                 store:\n  path: null\nhttp:\n  bind: null\n{sections}"
            ),
        )
        .expect("write gateway.yaml");
        let mut gw = Self::spawn(bin, &file, dir);
        gw.wait_log("UDP transport listening", dir);
        (gw, std::net::SocketAddr::from(([127, 0, 0, 1], udp)))
    }

    /// Waits (up to 20 s) until something accepts TCP on 127.0.0.1:`port` (the embedded
    /// broker); panics with the log in `dir` if the gateway exits first.
    pub fn wait_listening(&mut self, port: u16, dir: &Path) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return;
            }
            if let Some(status) = self.0.try_wait().expect("wait on the gateway") {
                let log = std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default();
                panic!("gateway exited with {status}: {log}");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        panic!("embedded broker did not listen on {port}");
    }

    /// Waits (up to 20 s) until `dir/stderr.log` contains `needle` (e.g. `UDP transport
    /// listening`); panics with the log if the gateway exits first or it never appears.
    pub fn wait_log(&mut self, needle: &str, dir: &Path) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let log = std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default();
            if log.contains(needle) {
                return;
            }
            if let Some(status) = self.0.try_wait().expect("wait on the gateway") {
                panic!("gateway exited with {status} before logging `{needle}`: {log}");
            }
            if std::time::Instant::now() > deadline {
                panic!("gateway did not log `{needle}`: {log}");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl std::ops::Deref for LoggedGateway {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for LoggedGateway {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for LoggedGateway {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
