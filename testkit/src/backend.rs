//! The broker of a scenario ([`Backend`]: a real mosquitto, or the gateway's embedded broker in
//! this process), the gateway's test configuration and the gateway started in-process.
//! Owns: choosing and starting the broker for a backend, skipping loudly when it cannot run.
//! Never: a fixed port, or a config value a test did not ask for beyond short timers.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use mqttsn_gateway::config::{BrokerMode, Config, PredefinedTopic, UdpTransport};
use mqttsn_gateway::shell::{self, Running};

use crate::{temp_dir, Mosquitto};

/// Which broker the end-to-end scenarios run against. The gateway reaches either one through
/// the same TCP client path (upstream mode to the test broker's port).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A real mosquitto process.
    Mosquitto,
    /// The gateway's own embedded broker (`mqttsn_gateway::broker`), in this process.
    Embedded,
}

/// A broker for one test, stopped on drop.
pub struct TestBroker {
    pub port: u16,
    _inner: TestBrokerInner,
}

// Held only for its Drop (stops the broker).
#[allow(dead_code)]
enum TestBrokerInner {
    Mosquitto(Mosquitto),
    Embedded(EmbeddedTestBroker),
}

impl TestBroker {
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

/// The embedded broker on a free loopback port with its own data directory.
pub struct EmbeddedTestBroker {
    pub handle: Option<mqttsn_gateway::broker::BrokerHandle>,
    pub data_dir: PathBuf,
}

impl Drop for EmbeddedTestBroker {
    fn drop(&mut self) {
        let _ = self.handle.take();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// A fresh directory under the system temp dir, unique to this process and call.
/// Starts the broker of `backend`, or returns None (with a loud message) when it is not
/// available: mosquitto not installed outside CI, or a build without `embedded-broker`.
pub async fn start_backend(backend: Backend) -> Option<TestBroker> {
    match backend {
        Backend::Mosquitto => Mosquitto::start().map(|m| TestBroker {
            port: m.port,
            _inner: TestBrokerInner::Mosquitto(m),
        }),
        Backend::Embedded => {
            if !mqttsn_gateway::broker::BUILT_IN {
                eprintln!("\n!!!!! SKIPPED: built without the embedded-broker feature !!!!!\n");
                return None;
            }
            let data_dir = temp_dir("broker");
            let settings = mqttsn_gateway::broker::EmbeddedSettings {
                bind: "127.0.0.1:0".parse().unwrap(),
                data_dir: data_dir.clone(),
                username: None,
                password: None,
                users_file: None,
                acl_file: None,
                tls: None,
                allow_anonymous: false,
                max_queued_messages: 1000,
            };
            let handle = mqttsn_gateway::broker::start(&settings)
                .await
                .expect("embedded broker starts");
            Some(TestBroker {
                port: handle.local_addr().port(),
                _inner: TestBrokerInner::Embedded(EmbeddedTestBroker {
                    handle: Some(handle),
                    data_dir,
                }),
            })
        }
    }
}
/// A gateway configuration for tests: UDP on a free loopback port, upstream to `broker_port`,
/// short timers.
pub fn test_config(broker_port: u16) -> Config {
    let mut c = Config::default();
    // Memory only unless a test asks for a store (see `with_store`).
    c.store.path = None;
    // The status listener on a free port (the default 9184 would be shared by parallel tests).
    c.http.bind = Some("127.0.0.1:0".parse().unwrap());
    c.transports.udp = vec![UdpTransport {
        bind: "127.0.0.1:0".parse().unwrap(),
    }];
    c.broker.mode = BrokerMode::Upstream;
    c.broker.upstream.host = "127.0.0.1".into();
    c.broker.upstream.port = broker_port;
    c.broker.upstream.connect_timeout = Duration::from_secs(3);
    c.timers.retry_interval = Duration::from_millis(300);
    c.predefined_topics = vec![PredefinedTopic {
        id: 7,
        topic: "sensors/predefined".into(),
    }];
    c
}

pub async fn start_gateway(config: &Config) -> (Running, SocketAddr) {
    let running = shell::start(config).await.expect("gateway starts");
    let addr = running.udp_addrs[0];
    (running, addr)
}
