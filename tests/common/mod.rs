//! Shared parts of the integration tests: everything of `testkit` (brokers on free ports, the
//! gateway in-process or as a process, a raw MQTT-SN device, an MQTT 3.1.1 client, pty pairs,
//! temp dirs), plus what only a test of this package can have: the scenario macros and the path
//! of the gateway binary cargo built for the tests.
//!
//! Owns: the macros `broker_or_skip!` and `on_both_backends!`, and [`GATEWAY_BIN`].
//! Never: harness code of its own — new harness parts go to testkit/, shared with the bench.
#![allow(dead_code, unused_macros, unused_imports)]

pub use testkit::*;

/// The gateway binary of this package, as cargo built it for the integration tests.
pub const GATEWAY_BIN: &str = env!("CARGO_BIN_EXE_mqttsn-gateway");

/// The broker of a scenario, or return (skipped loudly) when it cannot run here.
macro_rules! broker_or_skip {
    ($backend:expr) => {
        match start_backend($backend).await {
            Some(b) => b,
            None => return,
        }
    };
}

/// Runs each named `async fn(Backend)` scenario twice, as `NAME::mosquitto` and
/// `NAME::embedded`. Multi-threaded, since a scenario may block on a command-line client while
/// the embedded broker runs in-process.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn mosquitto() {
                super::$name(Backend::Mosquitto).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn embedded() {
                super::$name(Backend::Embedded).await
            }
        }
    )*};
}

/// `test_config` with the upstream sessions of `sessions` (aggregating: two shared sessions, so
/// devices really are spread).
pub fn mode_config(
    broker_port: u16,
    sessions: mqttsn_gateway::config::Sessions,
) -> mqttsn_gateway::config::Config {
    let mut c = test_config(broker_port);
    c.broker.upstream.sessions = sessions;
    if sessions == mqttsn_gateway::config::Sessions::Aggregating {
        c.broker.upstream.connections = 2;
    }
    c
}

/// As `on_both_backends!`, for scenarios `async fn(Backend, Sessions)` that also run in
/// aggregating mode: `NAME::mosquitto`, `NAME::embedded`, `NAME::mosquitto_aggregating`,
/// `NAME::embedded_aggregating`.
macro_rules! on_both_backends_and_modes {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use super::*;
            use mqttsn_gateway::config::Sessions;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn mosquitto() {
                super::$name(Backend::Mosquitto, Sessions::Transparent).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn embedded() {
                super::$name(Backend::Embedded, Sessions::Transparent).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn mosquitto_aggregating() {
                super::$name(Backend::Mosquitto, Sessions::Aggregating).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn embedded_aggregating() {
                super::$name(Backend::Embedded, Sessions::Aggregating).await
            }
        }
    )*};
}
