//! # mqttsn-gateway
//!
//! An MQTT-SN v1.2 gateway: battery-powered radios speak MQTT-SN over UDP or serial, and each
//! device becomes an ordinary MQTT 3.1.1 client of a broker (embedded or upstream).
//!
//! The crate is layered; each layer uses only the ones below it:
//!
//! | module | layer | owns |
//! |---|---|---|
//! | [`codec`] | sans-IO | MQTT-SN v1.2 wire format: bytes <-> [`codec::Message`] |
//! | [`mqtt`] | sans-IO | the MQTT 3.1.1 packets the gateway speaks toward the broker |
//! | [`core`] | sans-IO | the `Gateway` state machine: devices, topic tables, QoS flows, timers |
//! | [`store`] | std thread | durable key-value records (SQLite, WAL) and the batching writer |
//! | [`config`] | edge | `gateway.yaml`: typed, validated, with defaults |
//! | [`transport`] | sans-IO | link framings: serial raw, SLIP + CRC-16, XBee API frames <-> MQTT-SN frames |
//! | [`shell`] | tokio | sockets, serial ports, upstream TCP sessions, the driver task that owns the core |
//! | [`util`] | any | small helpers shared by layers (constant-time comparison) |
//! | [`broker`] | tokio | the embedded MQTT 3.1.1 broker (feature `embedded-broker`); the only place its crate is named |
//!
//! `codec`, `mqtt` and `core` never touch a socket, a file or the clock: time comes in as an
//! argument and effects go out as values. See `docs/architecture.md`.
//!
//! Owns: the layer declarations and re-exports. Must never: hold logic of its own.

pub mod broker;
pub mod codec;
pub mod config;
pub mod core;
pub mod mqtt;
pub mod shell;
pub mod store;
pub mod transport;
pub mod util;
