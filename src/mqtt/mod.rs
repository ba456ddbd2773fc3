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
//! # Map: what each file owns, and what it must never do
//!
//! - `mod.rs`: [`decode`] (streaming, size cap checked before the body arrives) and the
//!   dispatch of `decode` and `Packet::{encode, encoded_len, to_bytes}` to the kinds. Never
//!   parses or writes a field itself.
//! - `header.rs`: packet type numbers, fixed-header flag rules, Remaining Length both ways.
//!   Never looks past the fixed header.
//! - `reader.rs`: the one checked reader (bytes, u16, packet ids, strings, binary data, topic
//!   names and filters, nothing-left-over). Never indexes unchecked or reads past the body.
//! - `field.rs`: the encode-side length/put helpers for the same fields. Never writes a field
//!   its length check would reject.
//! - One file per kind, each owning that kind's body both ways: `connect.rs`, `connack.rs`,
//!   `publish.rs` (also the PUBLISH flag bits), `packet_id_only.rs` (PUBACK, PUBREC, PUBREL,
//!   PUBCOMP, UNSUBACK), `subscribe.rs`, `suback.rs` (also the [`SubackCode`] byte),
//!   `unsubscribe.rs`, `empty.rs` (PINGREQ, PINGRESP, DISCONNECT). Never reads wire data
//!   except through the reader, or checks the fixed header.
//! - `packet.rs`: the packet types as plain data. Never holds encoding logic.
//! - `error.rs`: the typed errors. Never carries free-form text.
//! - `topic.rs`: topic name/filter validity and matching. Never matches an invalid argument.
//!
//! Every kind module has the same shape: `decode_body` (from the reader, positioned after the
//! fixed header), `body_len` (validates the packet, returns its Remaining Length) and
//! `encode_body`, with its byte vectors beside them. `tests.rs` holds the round trips and
//! property tests that span all kinds.
//!
//! [`Bytes`]: bytes::Bytes

// Input must never be able to panic the codec; clippy enforces it outside tests.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::unreachable,
        clippy::indexing_slicing
    )
)]

mod connack;
mod connect;
mod empty;
mod error;
mod field;
mod header;
mod packet;
mod packet_id_only;
mod publish;
mod reader;
mod suback;
mod subscribe;
mod topic;
mod unsubscribe;

#[cfg(test)]
mod tests;

use bytes::{Bytes, BytesMut};

pub use error::{DecodeError, EncodeError};
pub use header::MAX_REMAINING_LENGTH;
pub use packet::{Connect, ConnectReturnCode, LastWill, Packet, Publish, QoS, SubackCode};
pub use topic::{topic_matches, valid_topic_filter, valid_topic_name};

use header::{kind, FixedHeader};
use reader::Reader;

/// Decodes one packet from the front of a TCP byte stream.
///
/// - `Ok(None)`: more bytes are needed; nothing is consumed.
/// - `Ok(Some(packet))`: exactly that packet's bytes are consumed from the front of `buf`.
/// - `Err(_)`: the stream is malformed, or the Remaining Length exceeds `max_packet_size`
///   (checked as soon as the fixed header is complete, before the body arrives). The
///   connection must then be closed (§4.8); what is left in `buf` is unspecified.
///
/// PUBLISH payloads, Will messages and passwords are zero-copy slices of `buf`'s storage.
///
/// Check-then-parse: the fixed header is read from a borrowed slice, and its type, flags and
/// Remaining Length are validated (including the caller's size limit) before the body is
/// awaited; only a complete packet is split off the buffer. Every field read is bounds-checked
/// against the packet's own Remaining Length, so no wire length reaches an index or allocation
/// unchecked.
pub fn decode(buf: &mut BytesMut, max_packet_size: usize) -> Result<Option<Packet>, DecodeError> {
    let Some(header) = FixedHeader::parse(buf)? else {
        return Ok(None);
    };
    if header.remaining > max_packet_size {
        return Err(DecodeError::PacketTooLarge {
            size: header.remaining,
            max: max_packet_size,
        });
    }
    // Cannot overflow: `remaining` came from at most 4 bytes of 7 bits.
    let total = header.len + header.remaining;
    if buf.len() < total {
        return Ok(None);
    }
    let mut frame = buf.split_to(total).freeze();
    // `header.len <= total == frame.len()` by construction.
    let body = frame.split_off(header.len);
    decode_body(header, body).map(Some)
}

fn decode_body(header: FixedHeader, body: Bytes) -> Result<Packet, DecodeError> {
    let mut r = Reader::new(body);
    let packet = match header.kind {
        kind::CONNECT => Packet::Connect(Box::new(connect::decode_body(&mut r)?)),
        kind::CONNACK => connack::decode_body(&mut r)?,
        kind::PUBLISH => Packet::Publish(publish::decode_body(header.flags, &mut r)?),
        kind::PUBACK => Packet::PubAck {
            packet_id: packet_id_only::decode_body(&mut r)?,
        },
        kind::PUBREC => Packet::PubRec {
            packet_id: packet_id_only::decode_body(&mut r)?,
        },
        kind::PUBREL => Packet::PubRel {
            packet_id: packet_id_only::decode_body(&mut r)?,
        },
        kind::PUBCOMP => Packet::PubComp {
            packet_id: packet_id_only::decode_body(&mut r)?,
        },
        kind::SUBSCRIBE => subscribe::decode_body(&mut r)?,
        kind::SUBACK => suback::decode_body(&mut r)?,
        kind::UNSUBSCRIBE => unsubscribe::decode_body(&mut r)?,
        kind::UNSUBACK => Packet::UnsubAck {
            packet_id: packet_id_only::decode_body(&mut r)?,
        },
        kind::PINGREQ => Packet::PingReq,
        kind::PINGRESP => Packet::PingResp,
        kind::DISCONNECT => Packet::Disconnect,
        // The header rejected 0 and 15; a nibble has no other values.
        other => return Err(DecodeError::ReservedPacketType(other)),
    };
    // Variable-length kinds consumed everything above; fixed-size kinds must not have more.
    r.finish()?;
    Ok(packet)
}

impl Packet {
    /// Appends this packet to `buf`. On error `buf` is left unchanged.
    pub fn encode(&self, buf: &mut BytesMut) -> Result<(), EncodeError> {
        let remaining = self.remaining_len()?;
        let start = buf.len();
        buf.reserve(header::total_len(remaining));
        header::put(buf, self.kind(), self.header_flags(), remaining);
        if let Err(e) = self.encode_body(buf) {
            // Unreachable after `remaining_len` succeeded; keep the promise anyway.
            buf.truncate(start);
            return Err(e);
        }
        Ok(())
    }

    /// Total bytes [`Packet::encode`] would append, fixed header included.
    pub fn encoded_len(&self) -> Result<usize, EncodeError> {
        Ok(header::total_len(self.remaining_len()?))
    }

    /// This packet as a fresh buffer.
    pub fn to_bytes(&self) -> Result<Bytes, EncodeError> {
        let mut buf = BytesMut::with_capacity(self.encoded_len()?);
        self.encode(&mut buf)?;
        Ok(buf.freeze())
    }

    /// Low nibble of the first byte (§2.2.2).
    fn header_flags(&self) -> u8 {
        match self {
            Packet::Publish(p) => publish::header_flags(p),
            _ => header::fixed_flags(self.kind()),
        }
    }

    /// Validates the packet and returns its Remaining Length.
    fn remaining_len(&self) -> Result<usize, EncodeError> {
        let len = match self {
            Packet::Connect(c) => connect::body_len(c)?,
            Packet::ConnAck { .. } => connack::body_len(),
            Packet::Publish(p) => publish::body_len(p)?,
            Packet::PubAck { packet_id }
            | Packet::PubRec { packet_id }
            | Packet::PubRel { packet_id }
            | Packet::PubComp { packet_id }
            | Packet::UnsubAck { packet_id } => packet_id_only::body_len(*packet_id)?,
            Packet::Subscribe { packet_id, filters } => subscribe::body_len(*packet_id, filters)?,
            Packet::SubAck { packet_id, codes } => suback::body_len(*packet_id, codes)?,
            Packet::Unsubscribe { packet_id, filters } => {
                unsubscribe::body_len(*packet_id, filters)?
            }
            Packet::PingReq | Packet::PingResp | Packet::Disconnect => empty::body_len(),
        };
        if len > MAX_REMAINING_LENGTH {
            return Err(EncodeError::PacketTooLarge { size: len });
        }
        Ok(len)
    }

    /// Writes the body; only called after `remaining_len` accepted the packet.
    fn encode_body(&self, buf: &mut BytesMut) -> Result<(), EncodeError> {
        match self {
            Packet::Connect(c) => connect::encode_body(c, buf)?,
            Packet::ConnAck {
                session_present,
                code,
            } => connack::encode_body(*session_present, *code, buf),
            Packet::Publish(p) => publish::encode_body(p, buf)?,
            Packet::PubAck { packet_id }
            | Packet::PubRec { packet_id }
            | Packet::PubRel { packet_id }
            | Packet::PubComp { packet_id }
            | Packet::UnsubAck { packet_id } => packet_id_only::encode_body(*packet_id, buf),
            Packet::Subscribe { packet_id, filters } => {
                subscribe::encode_body(*packet_id, filters, buf)?
            }
            Packet::SubAck { packet_id, codes } => suback::encode_body(*packet_id, codes, buf),
            Packet::Unsubscribe { packet_id, filters } => {
                unsubscribe::encode_body(*packet_id, filters, buf)?
            }
            Packet::PingReq | Packet::PingResp | Packet::Disconnect => {}
        }
        Ok(())
    }
}

/// Helpers for the per-kind tests: the same checks on every vector.
#[cfg(test)]
mod test_util {
    use bytes::BytesMut;

    use super::{decode, DecodeError, Packet, Publish, QoS};

    pub(super) const MAX: usize = 1 << 20;

    pub(super) fn decode_all(bytes: &[u8]) -> Result<Option<Packet>, DecodeError> {
        decode(&mut BytesMut::from(bytes), MAX)
    }

    /// `packet` on the wire; also checks that `encoded_len` agrees.
    pub(super) fn encode(packet: &Packet) -> Vec<u8> {
        let bytes = packet.to_bytes().expect("test packet encodes");
        assert_eq!(packet.encoded_len(), Ok(bytes.len()));
        bytes.to_vec()
    }

    pub(super) fn publish0(topic: &str, payload: Vec<u8>) -> Packet {
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: topic.into(),
            packet_id: None,
            payload: payload.into(),
        })
    }

    /// A CONNECT with keep alive 60 and the given protocol name, level, flags and payload.
    pub(super) fn connect_bytes(name: &[u8], level: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&[0, 4]);
        body.extend_from_slice(name);
        body.extend_from_slice(&[level, flags, 0, 60]);
        body.extend_from_slice(payload);
        let mut bytes = vec![0x10, u8::try_from(body.len()).expect("short test body")];
        bytes.extend_from_slice(&body);
        bytes
    }
}

/// The streaming contract of [`decode`] and the append contract of [`Packet::encode`].
#[cfg(test)]
mod stream_tests {
    use bytes::BytesMut;

    use super::test_util::{decode_all, MAX};
    use super::{decode, DecodeError, EncodeError, Packet, QoS};

    #[test]
    fn byte_at_a_time_yields_none_until_complete() {
        let packet = Packet::Subscribe {
            packet_id: 9,
            filters: vec![("sensors/+/temp".into(), QoS::ExactlyOnce)],
        };
        let bytes = packet.to_bytes().expect("encodes");
        let mut buf = BytesMut::new();
        for (i, &byte) in bytes.iter().enumerate() {
            assert_eq!(decode(&mut buf, MAX), Ok(None), "after {i} bytes");
            assert_eq!(buf.len(), i, "nothing consumed while incomplete");
            buf.extend_from_slice(&[byte]);
        }
        assert_eq!(decode(&mut buf, MAX), Ok(Some(packet)));
        assert!(buf.is_empty());
        assert_eq!(decode(&mut buf, MAX), Ok(None));
    }

    #[test]
    fn byte_at_a_time_with_multi_byte_remaining_length() {
        let mut bytes = vec![0x30, 0x80, 0x01, 0x00, 0x01, b't'];
        bytes.extend_from_slice(&[0x55; 125]);
        let mut buf = BytesMut::new();
        for &byte in &bytes {
            assert_eq!(decode(&mut buf, MAX), Ok(None));
            buf.extend_from_slice(&[byte]);
        }
        let Ok(Some(Packet::Publish(p))) = decode(&mut buf, MAX) else {
            panic!("expected a publish");
        };
        assert_eq!(p.payload.len(), 125);
        assert!(buf.is_empty());
    }

    #[test]
    fn two_packets_in_one_buffer() {
        let mut buf = BytesMut::from(&b"\x40\x02\x00\x05\xd0\x00\x30"[..]);
        assert_eq!(
            decode(&mut buf, MAX),
            Ok(Some(Packet::PubAck { packet_id: 5 }))
        );
        assert_eq!(decode(&mut buf, MAX), Ok(Some(Packet::PingResp)));
        // The start of a third packet stays put.
        assert_eq!(decode(&mut buf, MAX), Ok(None));
        assert_eq!(&buf[..], b"\x30");
    }

    #[test]
    fn oversize_rejected_before_body_arrives() {
        // Remaining Length 16383, body absent.
        let mut buf = BytesMut::from(&b"\x30\xff\x7f"[..]);
        assert_eq!(
            decode(&mut buf, 1024),
            Err(DecodeError::PacketTooLarge {
                size: 16_383,
                max: 1024
            })
        );
        // The limit is on the Remaining Length, inclusive.
        let mut buf = BytesMut::from(&b"\x30\x80\x08"[..]);
        assert_eq!(decode(&mut buf, 1024), Ok(None));
        let mut buf = BytesMut::from(&b"\x30\x81\x08"[..]);
        assert_eq!(
            decode(&mut buf, 1024),
            Err(DecodeError::PacketTooLarge {
                size: 1025,
                max: 1024
            })
        );
    }

    /// SUBSCRIBE, SUBACK and UNSUBSCRIBE each need at least one entry.
    #[test]
    fn empty_payloads() {
        for (bytes, packet_type) in [
            (&b"\x82\x02\x00\x01"[..], 8),
            (&b"\x90\x02\x00\x01"[..], 9),
            (&b"\xa2\x02\x00\x01"[..], 10),
        ] {
            assert_eq!(
                decode_all(bytes),
                Err(DecodeError::EmptyPayload { packet_type }),
                "{bytes:02x?}"
            );
        }
    }

    #[test]
    fn encode_appends_and_leaves_buffer_untouched_on_error() {
        let mut buf = BytesMut::from(&b"xy"[..]);
        Packet::PingReq.encode(&mut buf).expect("pingreq encodes");
        assert_eq!(&buf[..], b"xy\xc0\x00");
        let bad = Packet::PubAck { packet_id: 0 };
        assert_eq!(bad.encode(&mut buf), Err(EncodeError::ZeroPacketId));
        assert_eq!(&buf[..], b"xy\xc0\x00");
    }
}
