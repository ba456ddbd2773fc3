//! A mosquitto broker on a free loopback port, started by the test and killed (its directory
//! removed) on drop; optionally with its own persistence, stopped and resumed on the same port.
//! Owns: finding the mosquitto binary, its config file, waiting until it listens.
//! Never: a fixed port, or a mosquitto started by the system (the tests start their own).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{free_tcp_port, WAIT};

pub fn mosquitto_binary() -> Option<PathBuf> {
    for dir in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin"])
    {
        let p = PathBuf::from(dir).join("mosquitto");
        if p.is_file() {
            return Some(p);
        }
    }
    None
}

/// A mosquitto broker on a free loopback port, killed on drop.
pub struct Mosquitto {
    pub port: u16,
    child: Child,
    dir: PathBuf,
    bin: PathBuf,
}

impl Mosquitto {
    /// Starts mosquitto, or returns None (with a loud message) when it is not installed and
    /// this is not CI. In CI a missing mosquitto fails the test.
    pub fn start() -> Option<Mosquitto> {
        Self::start_with(false)
    }

    /// Like [`Mosquitto::start`], with the listener's own settings given by `listener(dir)`:
    /// lines that follow `listener <port> 127.0.0.1` in mosquitto.conf (e.g. `cafile`,
    /// `certfile`, `require_certificate true`, `password_file`, `acl_file`), `dir` being the
    /// broker's own directory, where the caller may write files the lines name. Without
    /// `allow_anonymous` among them, anonymous clients are refused (mosquitto 2's default).
    /// mosquitto's log goes to `dir/mosquitto.log` ([`Mosquitto::log`]).
    pub fn start_configured(listener: impl Fn(&std::path::Path) -> String) -> Option<Mosquitto> {
        Self::start_inner(false, Some(&listener))
    }

    /// What mosquitto logged (only for [`Mosquitto::start_configured`]).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default()
    }

    /// Like [`Mosquitto::start`], with mosquitto's own persistence on (sessions and queued
    /// messages survive [`Mosquitto::stop`] + [`Mosquitto::resume`]).
    pub fn start_persistent() -> Option<Mosquitto> {
        Self::start_with(true)
    }

    fn start_with(persistent: bool) -> Option<Mosquitto> {
        Self::start_inner(persistent, None)
    }

    #[allow(clippy::type_complexity)]
    fn start_inner(
        persistent: bool,
        listener: Option<&dyn Fn(&std::path::Path) -> String>,
    ) -> Option<Mosquitto> {
        let Some(bin) = mosquitto_binary() else {
            if std::env::var_os("CI").is_some() {
                panic!("mosquitto is not installed but CI is set: install it (apt-get install -y mosquitto)");
            }
            eprintln!("\n!!!!! SKIPPED: mosquitto is not installed; apt-get install -y mosquitto to run this test !!!!!\n");
            return None;
        };
        for _attempt in 0..5 {
            let port = free_tcp_port();
            let dir =
                std::env::temp_dir().join(format!("mqttsn-mosq-{}-{port}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let conf = dir.join("mosquitto.conf");
            let persistence = if persistent {
                // Started as root, mosquitto would drop to its own user and could not write
                // the test's directory; `user` is ignored when not started as root.
                format!(
                    "persistence true\npersistence_location {}/\nuser root\n",
                    dir.display()
                )
            } else {
                "persistence false\n".to_string()
            };
            let listener_lines = match listener {
                Some(f) => format!(
                    "{}\nlog_dest file {}/mosquitto.log\nlog_type all\nuser root\n",
                    f(&dir),
                    dir.display()
                ),
                None => "allow_anonymous true\n".to_string(),
            };
            std::fs::write(
                &conf,
                format!("listener {port} 127.0.0.1\n{listener_lines}{persistence}"),
            )
            .unwrap();
            let mut child = spawn_mosquitto(&bin, &conf);
            if wait_listening(port, &mut child) {
                return Some(Mosquitto {
                    port,
                    child,
                    dir,
                    bin,
                });
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("mosquitto did not start");
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Stops the broker with SIGTERM (it saves its persistence file) and waits for it.
    pub fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }

    /// Starts it again on the same port with the same configuration.
    pub fn resume(&mut self) {
        let conf = self.dir.join("mosquitto.conf");
        self.child = spawn_mosquitto(&self.bin, &conf);
        assert!(
            wait_listening(self.port, &mut self.child),
            "mosquitto restarts"
        );
    }
}

fn spawn_mosquitto(bin: &std::path::Path, conf: &std::path::Path) -> Child {
    Command::new(bin)
        .arg("-c")
        .arg(conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn mosquitto")
}

/// True once `port` accepts connections; false when the process exited (port taken).
fn wait_listening(port: u16, child: &mut Child) -> bool {
    let deadline = std::time::Instant::now() + WAIT;
    while std::time::Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
