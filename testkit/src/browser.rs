//! The HTTP side of the gateway for tests: a plain HTTP/1.1 GET over a raw TCP stream (one
//! request per connection), and a real browser, headless Debian Chromium, that loads a page and
//! returns its DOM after the page's scripts ran.
//!
//! Owns: the request, the browser's command line. Never: an HTTP client crate, an unbounded
//! wait (the request is bounded by [`WAIT`], the browser by a kill after its budget).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::WAIT;

/// What a GET returned.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    /// The header lines, as sent (`Name: value`).
    pub headers: Vec<String>,
    pub body: String,
}

impl HttpResponse {
    /// The value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find_map(|h| {
            let (n, v) = h.split_once(':')?;
            n.eq_ignore_ascii_case(name).then_some(v.trim())
        })
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// `GET path` on `addr`, with `Authorization: <authorization>` when given. Retries the connect
/// until [`WAIT`] (the listener may still be starting); panics after.
pub async fn http_get(addr: SocketAddr, path: &str, authorization: Option<&str>) -> HttpResponse {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut stream = loop {
        match TcpStream::connect(addr).await {
            Ok(s) => break s,
            Err(e) if tokio::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("cannot connect to {addr}: {e}"),
        }
    };
    let auth = authorization
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n");
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, async {
        stream.write_all(request.as_bytes()).await?;
        stream.read_to_end(&mut raw).await
    })
    .await
    .unwrap_or_else(|_| panic!("GET {path}: no complete answer in {WAIT:?}"))
    .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("GET {path}: no header end in {text:?}"));
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("GET {path}: no status line in {head:?}"));
    HttpResponse {
        status,
        headers: lines.map(str::to_owned).collect(),
        body: body.to_owned(),
    }
}

/// The Chromium binary, if installed (Debian's `chromium` package).
pub fn chromium_binary() -> Option<PathBuf> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// Headless Chromium, or `None` (skipped loudly) when it is not installed and this is not CI.
/// In CI a missing Chromium fails the test.
pub fn chromium_or_skip() -> Option<PathBuf> {
    match chromium_binary() {
        Some(p) => Some(p),
        None if std::env::var_os("CI").is_some() => {
            panic!(
                "chromium is not installed but CI is set: install it (apt-get install -y chromium)"
            )
        }
        None => {
            eprintln!("\n!!!!! SKIPPED: chromium is not installed; apt-get install -y chromium to run the browser test !!!!!\n");
            None
        }
    }
}

/// Loads `url` in headless Chromium and returns the DOM once the page has run for `budget`
/// of virtual time (its timers and fetches included). Blocking: call it from
/// `spawn_blocking`.
pub fn dump_dom(chromium: &std::path::Path, url: &str, budget: Duration) -> String {
    // A profile of its own, so parallel runs do not share one (Chromium locks it).
    let profile = crate::TempDir::new("chromium");
    let child = Command::new(chromium)
        .args([
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            "--no-first-run",
            "--disable-extensions",
            "--disable-dev-shm-usage",
            &format!("--user-data-dir={}", profile.0.display()),
            &format!("--virtual-time-budget={}", budget.as_millis()),
            "--dump-dom",
            url,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let pid = child.id();
    // A browser that hangs is killed, so the test fails instead of waiting for ever.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(budget + Duration::from_secs(60)) {
        Ok(Ok(out)) => String::from_utf8_lossy(&out.stdout).into_owned(),
        Ok(Err(e)) => panic!("chromium: {e}"),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("chromium did not finish loading {url}");
        }
    }
}
