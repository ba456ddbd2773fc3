//! The `mqttsn-gateway` binary: `check`, `--version`, `--help`, overrides, and a short `run`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

fn gateway() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mqttsn-gateway"));
    command
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("RUST_LOG");
    command
}

fn shipped_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("gateway.yaml")
}

/// A file in the temp dir, removed on drop; the name is unique per process and call.
struct TempFile(PathBuf);

impl TempFile {
    fn new(contents: &str) -> TempFile {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "mqttsn-cli-test-{}-{}.yaml",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let path = std::env::temp_dir().join(name);
        std::fs::write(&path, contents).unwrap();
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn run(command: &mut Command) -> Output {
    command.output().expect("binary runs")
}

#[test]
fn check_shipped_config_prints_effective_config() {
    let out = run(gateway().arg("check").arg("-c").arg(shipped_config()));
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    for key in [
        "gateway:",
        "bind: 0.0.0.0:1884",
        "mode: embedded",
        "keep_alive:",
        "max_frame_size: 1024",
        "retry_interval: 10s",
        "level: info",
    ] {
        assert!(stdout.contains(key), "missing `{key}` in:\n{stdout}");
    }
    // What check prints is a valid config that means the same.
    let printed = mqttsn_gateway::config::Config::from_yaml_str(&stdout, "stdout").unwrap();
    assert_eq!(printed, mqttsn_gateway::config::Config::default());
}

#[test]
fn check_misspelt_key_fails_naming_key_and_line() {
    let file = TempFile::new(
        "gateway:\n  id: 1\nbroker:\n  mode: upstream\n  upstream:\n    hots: example.org\n",
    );
    let out = run(gateway().arg("check").arg("-c").arg(&file.0));
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    let expected = format!(
        "{}:6:5: broker.upstream.hots: unknown field `hots`",
        file.0.display()
    );
    assert!(stderr.contains(&expected), "stderr: {stderr}");
    assert!(out.stdout.is_empty());
}

#[test]
fn check_bad_value_fails() {
    let file = TempFile::new("limits:\n  max_frame_size: 8\n");
    let out = run(gateway().arg("check").arg("-c").arg(&file.0));
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(":2:19: limits.max_frame_size:"),
        "stderr: {stderr}"
    );
}

#[test]
fn explicit_missing_config_fails() {
    let missing = std::env::temp_dir().join("mqttsn-cli-test-does-not-exist.yaml");
    for sub in ["check", "run"] {
        let out = run(gateway().arg(sub).arg("-c").arg(&missing));
        assert_eq!(out.status.code(), Some(2), "{sub}");
        assert!(text(&out.stderr).contains("cannot read"), "{sub}");
    }
}

#[test]
fn version() {
    let out = run(gateway().arg("--version"));
    assert!(out.status.success());
    assert_eq!(
        text(&out.stdout).trim(),
        format!("mqttsn-gateway {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn help_has_examples() {
    let out = run(gateway().arg("--help"));
    assert!(out.status.success());
    let stdout = text(&out.stdout);
    assert!(stdout.contains("EXAMPLES"), "{stdout}");
    for flag in ["--config", "--udp", "--broker", "--log", "check", "run"] {
        assert!(stdout.contains(flag), "missing {flag} in help");
    }
}

#[test]
fn overrides_show_in_check_output() {
    let out = run(gateway()
        .args(["check", "-c"])
        .arg(shipped_config())
        .args(["--udp", "127.0.0.1:0", "--udp", "[::1]:1885"])
        .args(["--broker", "[::1]:1999", "--log", "debug"]));
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let config =
        mqttsn_gateway::config::Config::from_yaml_str(&text(&out.stdout), "stdout").unwrap();
    let binds: Vec<String> = config
        .transports
        .udp
        .iter()
        .map(|t| t.bind.to_string())
        .collect();
    assert_eq!(binds, ["127.0.0.1:0", "[::1]:1885"]);
    assert_eq!(
        config.broker.mode,
        mqttsn_gateway::config::BrokerMode::Upstream
    );
    assert_eq!(config.broker.upstream.host, "::1");
    assert_eq!(config.broker.upstream.port, 1999);
    assert_eq!(config.log.level, "debug");
}

#[test]
fn global_flags_work_before_the_subcommand() {
    let out = run(gateway()
        .args(["--broker", "broker.local:1883", "-c"])
        .arg(shipped_config())
        .arg("check"));
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("mode: upstream") && stdout.contains("host: broker.local"),
        "{stdout}"
    );
}

#[test]
fn bad_flag_values_are_rejected() {
    for args in [
        ["--broker", "::1:1883"],
        ["--broker", "host"],
        ["--udp", "localhost:1884"],
        ["--log", "info,[=x"],
    ] {
        let out = run(gateway().arg("check").args(args));
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(!out.stderr.is_empty(), "{args:?}");
    }
}

#[test]
fn check_redacts_the_password() {
    let file = TempFile::new("broker:\n  upstream:\n    username: u\n    password: hunter2\n");
    let out = run(gateway().arg("check").arg("-c").arg(&file.0));
    assert!(out.status.success());
    assert!(!text(&out.stdout).contains("hunter2"));
}

/// `run` binds the configured UDP sockets (port 0: the OS picks a free port) and says so.
#[test]
fn run_binds_udp_and_logs() {
    let seen = run_until_listening("text", |line| {
        line.contains("UDP transport listening") && line.contains("127.0.0.1:")
    });
    // Libraries (the embedded broker) stay at warn under `--log info`.
    let chatty: Vec<_> = seen
        .iter()
        .filter(|l| l.contains(" INFO ") && !l.contains("mqttsn_gateway"))
        .collect();
    assert!(chatty.is_empty(), "library lines at info: {chatty:#?}");
}

#[test]
fn json_log_format_writes_one_object_per_line() {
    let seen = run_until_listening("json", |line| line.contains("UDP transport listening"));
    for line in &seen {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v.get("level").is_some() && v.get("fields").is_some(),
            "{line}"
        );
    }
}

/// Runs the gateway on the shipped defaults (every port free, every file in a temp directory)
/// with `log.format: format` until a log line satisfies `ready`, then stops it with SIGTERM
/// and checks it exits 0. Returns the lines seen.
fn run_until_listening(format: &str, ready: fn(&str) -> bool) -> Vec<String> {
    let dir = std::env::temp_dir().join(format!("mqttsn-cli-run-{}-{format}", std::process::id()));
    let config = TempFile::new(&format!(
        "broker:\n  embedded:\n    bind: 127.0.0.1:0\n    data_dir: {}\nstore:\n  path: {}\nlog:\n  format: {format}\nhttp:\n  bind: null\n",
        dir.join("broker").display(),
        dir.join("gateway.db").display()
    ));
    let mut command = gateway();
    command
        .args(["run", "-c"])
        .arg(&config.0)
        .args(["--udp", "127.0.0.1:0", "--log", "info"]);
    if !mqttsn_gateway::broker::BUILT_IN {
        // The upstream-only build refuses embedded mode; nothing needs to listen there.
        command.args(["--broker", "127.0.0.1:9"]);
    }
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    let mut bound = false;
    while !bound && Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            bound |= ready(&line);
            seen.push(line);
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("gateway exited early with {status}: {seen:#?}");
        }
    }
    assert!(bound, "log lines: {seen:#?}");
    // SIGTERM: a clean shutdown with exit status 0.
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = std::fs::remove_dir_all(&dir);
    assert!(status.success(), "exit status {status}");
    seen
}

#[test]
fn corrupt_store_is_a_clear_error_naming_the_file() {
    let dir = std::env::temp_dir().join(format!("mqttsn-cli-store-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("gateway.db");
    std::fs::write(&db, vec![0x5Au8; 8192]).unwrap();
    let config = TempFile::new(&format!(
        "transports:\n  udp:\n    - bind: 127.0.0.1:0\nbroker:\n  mode: upstream\nstore:\n  path: {}\n",
        db.display()
    ));
    let out = gateway()
        .args(["run", "-c"])
        .arg(&config.0)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("store.path"), "{stderr}");
    assert!(stderr.contains(&db.display().to_string()), "{stderr}");
    assert!(stderr.contains("move it aside"), "{stderr}");
}

/// `check` says whether admission is open and how many rules there are (as YAML comments, so
/// the output still loads back).
#[test]
fn check_says_whether_admission_is_open() {
    let out = run(gateway().arg("check").arg("-c").arg(shipped_config()));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(
            "# admission: open — any device that sends CONNECT gets a session; devices: 0 entries"
        ),
        "{stdout}"
    );
    assert!(stdout.contains("# qos_minus_one: all"), "{stdout}");
    let file = TempFile::new(
        "admission: listed\ndevices:\n  - client_id: a\n  - client_id: b\nqos_minus_one: off\n",
    );
    let out = run(gateway().arg("check").arg("-c").arg(&file.0));
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("# admission: listed — only a ClientId matched by devices (2 entries)"),
        "{stdout}"
    );
    assert!(stdout.contains("# qos_minus_one: off"), "{stdout}");
    mqttsn_gateway::config::Config::from_yaml_str(&stdout, "stdout").unwrap();
}

#[test]
fn a_start_error_says_its_cause_once() {
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = std::env::temp_dir().join(format!("mqttsn-cli-once-{}", std::process::id()));
    let config = TempFile::new(&format!(
        "transports:\n  udp:\n    - bind: 127.0.0.1:{port}\nbroker:\n  mode: upstream\n  upstream:\n    port: 9\nstore:\n  path: {}\nhttp:\n  bind: null\n",
        dir.join("gateway.db").display()
    ));
    let out = run(gateway().args(["run", "-c"]).arg(&config.0));
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("error: "), "{stderr}");
    assert_eq!(last.matches("Address already in use").count(), 1, "{last}");
}
