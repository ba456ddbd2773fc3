//! MQTT 3.1.1 packets on the wire: the gateway's side of the broker connection.
//!
//! Owns: the OASIS MQTT 3.1.1 packet format (§2, §3) for both directions (the gateway is the
//! client; the test fake broker is the server), and topic name/filter rules (§4.7). Must
//! never: do I/O, read a clock, panic on input, or allocate for a packet larger than the
//! caller's limit.
//!
//! Entry points: [`decode`] (a TCP receive buffer -> one [`Packet`] at a time) and
//! [`Packet::encode`] / [`Packet::to_bytes`]. PUBLISH payloads are zero-copy [`Bytes`] slices
//! of the receive buffer.
//!
//! [`Bytes`]: bytes::Bytes

mod decode;
mod encode;
mod error;
mod packet;
mod topic;

#[cfg(test)]
mod tests;

pub use decode::decode;
pub use error::{DecodeError, EncodeError};
pub use packet::{
    Connect, ConnectReturnCode, LastWill, Packet, Publish, QoS, SubackCode, MAX_REMAINING_LENGTH,
};
pub use topic::{topic_matches, valid_topic_filter, valid_topic_name};
