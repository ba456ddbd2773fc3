//! The gateway binary as a separate process (killed on drop, or with SIGKILL on request), its
//! config written to a file, its UDP address read back from its log.
//! Owns: spawning the binary the caller names and reading its UDP address.
//! Never: finds the binary itself (a test passes `env!("CARGO_BIN_EXE_mqttsn-gateway")`).

use std::net::SocketAddr;
use std::path::Path;
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
