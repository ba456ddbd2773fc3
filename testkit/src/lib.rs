//! The test kit of the MQTT-SN gateway: real parts for integration tests and the bench. A broker
//! on a free port (a real mosquitto, or the gateway's embedded broker — see [`Backend`]), the
//! gateway in-process or as a separate process, a raw MQTT-SN device over UDP, a small MQTT 3.1.1
//! client over TCP, a plain HTTP GET and headless Chromium for the status page, socat
//! pseudo-terminal pairs for serial lines, child processes killed on drop,
//! free ports and temp dirs.
//!
//! Owns: starting and stopping those parts, and waiting (bounded by [`WAIT`]) for them.
//! Never: a fixed port, a process left running after its handle is dropped, or a protocol codec
//! of its own — every frame is encoded and decoded by `mqttsn_gateway` itself, so the kit tests
//! the gateway's wire format against the gateway's peers, not against a second implementation.
//!
//! Used as a dev-dependency of `mqttsn-gateway` (tests/common/mod.rs re-exports it, and adds the
//! macros and the gateway binary's path, which only a test of that package can name) and as a
//! dependency of the `bench` package.

use std::net::TcpListener;
use std::path::PathBuf;
use std::time::Duration;

mod backend;
mod browser;
mod mosquitto;
mod mqtt_client;
mod netns;
mod pki;
mod process;
mod serial;
mod sn_client;

pub use backend::{
    start_backend, start_gateway, test_config, Backend, EmbeddedTestBroker, TestBroker,
};
pub use browser::{chromium_binary, chromium_or_skip, dump_dom, http_get, HttpResponse};
pub use mosquitto::{mosquitto_binary, Mosquitto};
pub use mqtt_client::MqttClient;
pub use netns::{in_private_netns, netns_scenario_passed, no_private_netns, run_in_private_netns};
pub use pki::{CertFiles, TestCa, Validity};
pub use process::{spawn_with_fd_limit, GatewayProcess, LoggedGateway, Proc};
pub use serial::{serial_config, LineFrame, SerialLine, Socat};
pub use sn_client::SnClient;

/// How long a test waits for something that should happen.
pub const WAIT: Duration = Duration::from_secs(5);

/// Whether the command-line tool `tool` (from the Debian package `package`) can be run. When
/// it cannot: under CI (env `CI` set) a panic naming the package, else a loud SKIPPED line and
/// `false`, so the test returns.
pub fn have_tool(tool: &str, package: &str) -> bool {
    let found = std::process::Command::new(tool)
        .arg("--help")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok();
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "{tool} missing in CI (apt-get install -y {package})"
        );
        eprintln!("\n!!!!! SKIPPED: {tool} not installed (apt-get install -y {package}) !!!!!\n");
    }
    found
}

/// A free TCP port on 127.0.0.1 (bound to port 0 and read back).
pub fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A free UDP port on 127.0.0.1 (bound to port 0 and read back), for a child process to bind.
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A fresh directory under the system temp dir, unique to this process and call (kept).
pub fn temp_dir(what: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("mqttsn-{what}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("mqttsn-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
