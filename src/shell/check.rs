//! `mqttsn-gateway check --deep`: beyond reading the file, tries what a start would do, each
//! step on its own so one failure does not hide the next: bind every UDP transport and the
//! HTTP listener, open every serial port, write in the store's and the embedded broker's
//! directories, read every secret and certificate, and (upstream mode) connect to the broker:
//! TCP (binding each `broker.upstream.source_addresses` entry first), the TLS handshake, MQTT
//! CONNECT with the configured login and its CONNACK.
//!
//! Owns the steps and their report; binds and connects only for a moment and leaves nothing
//! behind (a probe file is removed, the broker session says DISCONNECT). Must never start a
//! device session or write the store.

use std::net::SocketAddr;
use std::path::Path;

use super::credentials::Credentials;
use super::source;
use super::tls::Tls;
use super::upstream;
use crate::config::{BrokerMode, Config};
use crate::mqtt;

/// One step of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// What was tried, e.g. `transports.udp[0] 0.0.0.0:1884`.
    pub what: String,
    /// `Ok(detail)` or `Err(reason and what to do)`.
    pub outcome: Result<String, String>,
}

/// The whole report, in the order the steps ran.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub steps: Vec<Step>,
}

impl Report {
    fn push(&mut self, what: impl Into<String>, outcome: Result<String, String>) {
        self.steps.push(Step {
            what: what.into(),
            outcome,
        });
    }

    /// Every step passed.
    pub fn ok(&self) -> bool {
        self.steps.iter().all(|s| s.outcome.is_ok())
    }

    /// One line per step: `ok   what: detail` or `FAIL what: reason`.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for s in &self.steps {
            match &s.outcome {
                Ok(detail) => out.push_str(&format!("ok   {}: {detail}\n", s.what)),
                Err(reason) => out.push_str(&format!("FAIL {}: {reason}\n", s.what)),
            }
        }
        out
    }
}

/// Runs every step.
pub async fn deep(config: &Config) -> Report {
    let mut r = Report::default();
    for (i, t) in config.transports.udp.iter().enumerate() {
        let outcome = match std::net::UdpSocket::bind(t.bind) {
            Ok(s) => Ok(format!(
                "can bind ({})",
                s.local_addr().map(|a| a.to_string()).unwrap_or_default()
            )),
            Err(e) => Err(format!(
                "{e} (another process on this port? `ss -ulpn | grep {}`)",
                t.bind.port()
            )),
        };
        r.push(format!("transports.udp[{i}] {}", t.bind), outcome);
    }
    for (i, t) in config.transports.serial.iter().enumerate() {
        let outcome = match super::serial::open(t) {
            Ok(_) => Ok(format!("opens at {} baud", t.baud)),
            Err(e) => Err(format!(
                "{e} (does it exist? is this user in the dialout group?{})",
                if t.required {
                    ""
                } else {
                    "; required: false, so the gateway would start and retry"
                }
            )),
        };
        r.push(
            format!("transports.serial[{i}] {}", t.path.display()),
            outcome,
        );
    }
    if let Some(addr) = config.http.bind {
        r.push(format!("http.bind {addr}"), bind_tcp(addr));
    }
    if let Some(path) = &config.store.path {
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        r.push(
            format!("store.path {}", path.display()),
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))
                .and_then(|()| writable(dir))
                .map(|()| format!("{} is writable", dir.display())),
        );
    }
    let credentials = Credentials::load(config);
    r.push(
        "secrets (password_file, password_env)",
        credentials
            .as_ref()
            .map(|_| "every one readable".to_owned())
            .map_err(|e| e.to_string()),
    );
    match config.broker.mode {
        BrokerMode::Embedded => {
            let e = &config.broker.embedded;
            r.push(format!("broker.embedded.bind {}", e.bind), bind_tcp(e.bind));
            if let Some(tls) = &e.tls {
                r.push(
                    format!("broker.embedded.tls.bind {}", tls.bind),
                    bind_tcp(tls.bind),
                );
            }
            r.push(
                format!("broker.embedded.data_dir {}", e.data_dir.display()),
                std::fs::create_dir_all(&e.data_dir)
                    .map_err(|err| err.to_string())
                    .and_then(|()| writable(&e.data_dir))
                    .map(|()| "is writable".to_owned()),
            );
        }
        BrokerMode::Upstream => upstream_steps(config, credentials.ok(), &mut r).await,
    }
    r
}

async fn upstream_steps(config: &Config, credentials: Option<Credentials>, r: &mut Report) {
    let u = &config.broker.upstream;
    let tls = match Tls::load(config) {
        Ok(t) => {
            r.push(
                "broker.upstream.tls",
                Ok(match &t {
                    Some(_) => "certificates and keys load".to_owned(),
                    None => "off (plain TCP)".to_owned(),
                }),
            );
            t
        }
        Err(e) => {
            r.push("broker.upstream.tls", Err(e.to_string()));
            return;
        }
    };
    let what = format!("broker.upstream {}:{}", u.host, u.port);
    let addr = match tokio::net::lookup_host((u.host.as_str(), u.port)).await {
        Ok(mut it) => match it.next() {
            Some(a) => a,
            None => {
                r.push(what, Err("the name resolves to no address".into()));
                return;
            }
        },
        Err(e) => {
            r.push(what, Err(format!("cannot resolve: {e}")));
            return;
        }
    };
    // Each source address: of the broker's family, and an address a socket can be bound to.
    for (i, source) in u.source_addresses.iter().enumerate() {
        let outcome = if source.is_ipv4() == addr.is_ipv4() {
            source::check_bind(*source, addr)
        } else {
            Err(format!(
                "cannot reach the broker at {addr} (another address family)"
            ))
        };
        r.push(
            format!("broker.upstream.source_addresses[{i}] {source}"),
            outcome,
        );
    }
    let mut connect = mqtt::Connect {
        client_id: format!(
            "{}mqttsn-gateway-check-{}",
            u.client_id_prefix,
            std::process::id()
        ),
        clean_session: true,
        keep_alive: 30,
        will: None,
        username: None,
        password: None,
    };
    if let Some(c) = &credentials {
        c.fill(&mut connect, None);
    }
    // From the first source address, as the first session would connect.
    let outcome = match upstream::probe(
        addr,
        u.source_addresses.first().copied(),
        tls.as_ref().map(|t| t.target(None)),
        connect,
        u.connect_timeout,
    )
    .await
    {
        Ok(mqtt::ConnectReturnCode::Accepted) => Ok(format!(
            "{addr}: {}MQTT CONNECT accepted",
            if tls.is_some() {
                "TLS handshake done, "
            } else {
                ""
            }
        )),
        Ok(code) => Err(format!(
            "{addr}: the broker refused the CONNECT: {code:?} (check username and password, \
             and the broker's ACL)"
        )),
        Err(reason) => Err(format!("{addr}: {reason}")),
    };
    r.push(what, outcome);
}

fn bind_tcp(addr: SocketAddr) -> Result<String, String> {
    std::net::TcpListener::bind(addr)
        .map(|_| "can listen".to_owned())
        .map_err(|e| {
            format!(
                "{e} (another process on this port? `ss -tlpn | grep {}`)",
                addr.port()
            )
        })
}

/// Creates and removes a probe file in `dir`.
fn writable(dir: &Path) -> Result<(), String> {
    let probe = dir.join(format!(".mqttsn-gateway-check-{}", std::process::id()));
    std::fs::write(&probe, b"probe")
        .map_err(|e| format!("{} is not writable: {e}", dir.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}
