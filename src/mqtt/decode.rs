//! Bytes -> packet, streaming from a TCP receive buffer (§2, §3).
//!
//! Check-then-parse: the fixed header is read from a borrowed slice, and its type, flags and
//! Remaining Length are validated (including the caller's size limit) before the body is
//! awaited; only a complete packet is split off the buffer. Every field read is bounds-checked
//! against the packet's own Remaining Length, so no wire length reaches an index or allocation
//! unchecked.

use bytes::{Buf, Bytes, BytesMut};

use super::error::DecodeError;
use super::packet::{
    connect_flags, kind, Connect, ConnectReturnCode, LastWill, Packet, Publish, QoS, SubackCode,
    PROTOCOL_LEVEL, PROTOCOL_NAME,
};
use super::topic::{valid_topic_filter, valid_topic_name};

/// Decodes one packet from the front of a TCP byte stream.
///
/// - `Ok(None)`: more bytes are needed; nothing is consumed.
/// - `Ok(Some(packet))`: exactly that packet's bytes are consumed from the front of `buf`.
/// - `Err(_)`: the stream is malformed, or the Remaining Length exceeds `max_packet_size`
///   (checked as soon as the fixed header is complete, before the body arrives). The
///   connection must then be closed (§4.8); what is left in `buf` is unspecified.
///
/// PUBLISH payloads, Will messages and passwords are zero-copy slices of `buf`'s storage.
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
    parse_body(header, Reader { buf: body }).map(Some)
}

/// The fixed header (§2.2): type nibble, flag nibble, Remaining Length, and its own size.
#[derive(Debug, Clone, Copy)]
struct FixedHeader {
    kind: u8,
    flags: u8,
    remaining: usize,
    /// Bytes taken by the fixed header itself: 2 to 5.
    len: usize,
}

impl FixedHeader {
    /// `Ok(None)` while the header is incomplete. Type and flags are checked from the first byte.
    fn parse(buf: &[u8]) -> Result<Option<Self>, DecodeError> {
        let Some(&first) = buf.first() else {
            return Ok(None);
        };
        let (kind, flags) = (first >> 4, first & 0x0F);
        check_flags(kind, flags)?;
        let mut remaining = 0usize;
        for i in 0..4 {
            let Some(&byte) = buf.get(1 + i) else {
                return Ok(None);
            };
            remaining |= usize::from(byte & 0x7F) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(Some(FixedHeader {
                    kind,
                    flags,
                    remaining,
                    len: 2 + i,
                }));
            }
        }
        Err(DecodeError::MalformedRemainingLength)
    }

    /// QoS from PUBLISH flags; `check_flags` already rejected 3.
    fn publish_qos(self) -> Result<QoS, DecodeError> {
        QoS::try_from((self.flags >> 1) & 0b11)
    }
}

/// Fixed-header flag rules of §2.2.2, Table 2.2 and §3.3.1.
fn check_flags(packet_type: u8, flags: u8) -> Result<(), DecodeError> {
    let bad = DecodeError::BadFlags { packet_type, flags };
    match packet_type {
        0 | 15 => Err(DecodeError::ReservedPacketType(packet_type)),
        kind::PUBLISH => {
            let qos = (flags >> 1) & 0b11;
            let dup = flags & 0b1000 != 0;
            if qos == 3 {
                Err(DecodeError::InvalidQoS(qos))
            } else if dup && qos == 0 {
                // [MQTT-3.3.1-2]
                Err(bad)
            } else {
                Ok(())
            }
        }
        kind::PUBREL | kind::SUBSCRIBE | kind::UNSUBSCRIBE if flags == 0b0010 => Ok(()),
        kind::PUBREL | kind::SUBSCRIBE | kind::UNSUBSCRIBE => Err(bad),
        _ if flags == 0 => Ok(()),
        _ => Err(bad),
    }
}

fn parse_body(header: FixedHeader, mut r: Reader) -> Result<Packet, DecodeError> {
    let packet = match header.kind {
        kind::CONNECT => Packet::Connect(Box::new(parse_connect(&mut r)?)),
        kind::CONNACK => {
            let ack_flags = r.u8()?;
            if ack_flags & 0xFE != 0 {
                return Err(DecodeError::InvalidConnAckFlags(ack_flags));
            }
            Packet::ConnAck {
                session_present: ack_flags & 0x01 != 0,
                code: ConnectReturnCode::try_from(r.u8()?)?,
            }
        }
        kind::PUBLISH => {
            let qos = header.publish_qos()?;
            let topic = r.string()?;
            if !valid_topic_name(&topic) {
                return Err(DecodeError::InvalidTopicName);
            }
            let packet_id = match qos {
                QoS::AtMostOnce => None,
                QoS::AtLeastOnce | QoS::ExactlyOnce => Some(r.packet_id()?),
            };
            Packet::Publish(Publish {
                dup: header.flags & 0b1000 != 0,
                qos,
                retain: header.flags & 0b0001 != 0,
                topic,
                packet_id,
                payload: r.take_rest(),
            })
        }
        kind::PUBACK => Packet::PubAck {
            packet_id: r.packet_id()?,
        },
        kind::PUBREC => Packet::PubRec {
            packet_id: r.packet_id()?,
        },
        kind::PUBREL => Packet::PubRel {
            packet_id: r.packet_id()?,
        },
        kind::PUBCOMP => Packet::PubComp {
            packet_id: r.packet_id()?,
        },
        kind::SUBSCRIBE => {
            let packet_id = r.packet_id()?;
            let mut filters = Vec::new();
            while !r.is_empty() {
                let filter = r.topic_filter()?;
                let qos = QoS::try_from(r.u8()?)?;
                filters.push((filter, qos));
            }
            if filters.is_empty() {
                return Err(DecodeError::EmptyPayload {
                    packet_type: header.kind,
                });
            }
            Packet::Subscribe { packet_id, filters }
        }
        kind::SUBACK => {
            let packet_id = r.packet_id()?;
            let codes = r
                .take_rest()
                .iter()
                .map(|&b| SubackCode::from_byte(b))
                .collect::<Result<Vec<_>, _>>()?;
            if codes.is_empty() {
                return Err(DecodeError::EmptyPayload {
                    packet_type: header.kind,
                });
            }
            Packet::SubAck { packet_id, codes }
        }
        kind::UNSUBSCRIBE => {
            let packet_id = r.packet_id()?;
            let mut filters = Vec::new();
            while !r.is_empty() {
                filters.push(r.topic_filter()?);
            }
            if filters.is_empty() {
                return Err(DecodeError::EmptyPayload {
                    packet_type: header.kind,
                });
            }
            Packet::Unsubscribe { packet_id, filters }
        }
        kind::UNSUBACK => Packet::UnsubAck {
            packet_id: r.packet_id()?,
        },
        kind::PINGREQ => Packet::PingReq,
        kind::PINGRESP => Packet::PingResp,
        kind::DISCONNECT => Packet::Disconnect,
        // `check_flags` rejected 0 and 15; a nibble has no other values.
        other => return Err(DecodeError::ReservedPacketType(other)),
    };
    r.finish()?;
    Ok(packet)
}

fn parse_connect(r: &mut Reader) -> Result<Connect, DecodeError> {
    if r.binary()? != PROTOCOL_NAME.as_bytes() {
        return Err(DecodeError::InvalidProtocol);
    }
    let level = r.u8()?;
    if level != PROTOCOL_LEVEL {
        return Err(DecodeError::UnsupportedProtocolLevel(level));
    }
    let flags = r.u8()?;
    let has = |bit: u8| flags & bit != 0;
    let will_qos = (flags & connect_flags::WILL_QOS_MASK) >> connect_flags::WILL_QOS_SHIFT;
    let bad_flags = has(connect_flags::RESERVED) // [MQTT-3.1.2-3]
        || (!has(connect_flags::WILL) && (will_qos != 0 || has(connect_flags::WILL_RETAIN))) // [MQTT-3.1.2-13], [MQTT-3.1.2-15]
        || (has(connect_flags::PASSWORD) && !has(connect_flags::USERNAME)); // [MQTT-3.1.2-22]
    if bad_flags {
        return Err(DecodeError::InvalidConnectFlags(flags));
    }
    let will_qos = QoS::try_from(will_qos)?; // [MQTT-3.1.2-14]
    let keep_alive = r.u16()?;
    let client_id = r.string()?;
    let will = if has(connect_flags::WILL) {
        let topic = r.string()?;
        if !valid_topic_name(&topic) {
            return Err(DecodeError::InvalidTopicName);
        }
        Some(LastWill {
            topic,
            message: r.binary()?,
            qos: will_qos,
            retain: has(connect_flags::WILL_RETAIN),
        })
    } else {
        None
    };
    let username = if has(connect_flags::USERNAME) {
        Some(r.string()?)
    } else {
        None
    };
    let password = if has(connect_flags::PASSWORD) {
        Some(r.binary()?)
    } else {
        None
    };
    Ok(Connect {
        client_id,
        clean_session: has(connect_flags::CLEAN_SESSION),
        keep_alive,
        will,
        username,
        password,
    })
}

/// Bounds-checked field reads over one packet body.
struct Reader {
    buf: Bytes,
}

impl Reader {
    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        if self.buf.remaining() < 1 {
            return Err(DecodeError::Truncated);
        }
        Ok(self.buf.get_u8())
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        if self.buf.remaining() < 2 {
            return Err(DecodeError::Truncated);
        }
        Ok(self.buf.get_u16())
    }

    fn packet_id(&mut self) -> Result<u16, DecodeError> {
        match self.u16()? {
            0 => Err(DecodeError::ZeroPacketId),
            id => Ok(id),
        }
    }

    fn take(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        if self.buf.remaining() < n {
            return Err(DecodeError::Truncated);
        }
        Ok(self.buf.split_to(n))
    }

    fn take_rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }

    /// Two-byte length, then that many bytes (§1.5.3, §3.1.3.3).
    fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let len = self.u16()?;
        self.take(usize::from(len))
    }

    /// A UTF-8 encoded string (§1.5.3): well-formed, no U+0000 ([MQTT-1.5.3-1], [MQTT-1.5.3-2]).
    fn string(&mut self) -> Result<String, DecodeError> {
        let raw = self.binary()?;
        let s = std::str::from_utf8(&raw).map_err(|_| DecodeError::InvalidUtf8)?;
        if s.contains('\0') {
            return Err(DecodeError::InvalidUtf8);
        }
        Ok(s.to_owned())
    }

    fn topic_filter(&mut self) -> Result<String, DecodeError> {
        let filter = self.string()?;
        if !valid_topic_filter(&filter) {
            return Err(DecodeError::InvalidTopicFilter);
        }
        Ok(filter)
    }

    fn finish(&self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 1 << 20;

    fn decode_all(bytes: &[u8]) -> Result<Option<Packet>, DecodeError> {
        decode(&mut BytesMut::from(bytes), MAX)
    }

    fn connect_bytes(name: &[u8], level: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&[0, 4]);
        body.extend_from_slice(name);
        body.extend_from_slice(&[level, flags, 0, 60]);
        body.extend_from_slice(payload);
        let mut bytes = vec![0x10, u8::try_from(body.len()).expect("short test body")];
        bytes.extend_from_slice(&body);
        bytes
    }

    #[test]
    fn decodes_connect_vector() {
        let mut bytes = vec![0x10, 49];
        bytes.extend_from_slice(b"\x00\x04MQTT\x04\xee\x00\x3c");
        bytes.extend_from_slice(b"\x00\x04gw-1\x00\x0cdev/1/status\x00\x07offline");
        bytes.extend_from_slice(b"\x00\x04user\x00\x02pw");
        let expected = Packet::Connect(Box::new(Connect {
            client_id: "gw-1".into(),
            clean_session: true,
            keep_alive: 60,
            will: Some(LastWill {
                topic: "dev/1/status".into(),
                message: Bytes::from_static(b"offline"),
                qos: QoS::AtLeastOnce,
                retain: true,
            }),
            username: Some("user".into()),
            password: Some(Bytes::from_static(b"pw")),
        }));
        assert_eq!(decode_all(&bytes), Ok(Some(expected)));
    }

    #[test]
    fn decodes_publish_qos1_vector() {
        let expected = Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: true,
            topic: "a/b".into(),
            packet_id: Some(10),
            payload: Bytes::from_static(b"hi"),
        });
        assert_eq!(
            decode_all(b"\x33\x09\x00\x03a/b\x00\x0ahi"),
            Ok(Some(expected))
        );
    }

    #[test]
    fn publish_payload_is_zero_copy() {
        let mut buf = BytesMut::from(&b"\x30\x07\x00\x03a/bhi"[..]);
        let base = buf.as_ptr() as usize;
        let Ok(Some(Packet::Publish(p))) = decode(&mut buf, MAX) else {
            panic!("expected a publish");
        };
        assert_eq!(&p.payload[..], b"hi");
        assert_eq!(p.payload.as_ptr() as usize, base + 7);
    }

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

    #[test]
    fn remaining_length_boundaries_decode() {
        let cases: &[(&[u8], usize)] = &[
            (&[0x7F], 127),
            (&[0x80, 0x01], 128),
            (&[0xFF, 0x7F], 16_383),
            (&[0x80, 0x80, 0x01], 16_384),
            (&[0xFF, 0xFF, 0x7F], 2_097_151),
            (&[0x80, 0x80, 0x80, 0x01], 2_097_152),
            (&[0xFF, 0xFF, 0xFF, 0x7F], 268_435_455),
        ];
        for &(len_bytes, expected) in cases {
            let mut bytes = vec![0x30];
            bytes.extend_from_slice(len_bytes);
            let header = FixedHeader::parse(&bytes);
            let Ok(Some(header)) = header else {
                panic!("header {len_bytes:?}: {header:?}");
            };
            assert_eq!(header.remaining, expected);
            assert_eq!(header.len, 1 + len_bytes.len());
        }
    }

    #[test]
    fn malformed_remaining_length() {
        assert_eq!(
            decode_all(b"\x30\xff\xff\xff\xff\x7f"),
            Err(DecodeError::MalformedRemainingLength)
        );
        assert_eq!(
            decode_all(b"\x30\x80\x80\x80\x80"),
            Err(DecodeError::MalformedRemainingLength)
        );
        // Four continuation bytes seen is not yet an error with only three of them.
        assert_eq!(decode_all(b"\x30\x80\x80\x80"), Ok(None));
    }

    #[test]
    fn reserved_packet_types() {
        assert_eq!(
            decode_all(b"\x00\x00"),
            Err(DecodeError::ReservedPacketType(0))
        );
        assert_eq!(
            decode_all(b"\xf0\x00"),
            Err(DecodeError::ReservedPacketType(15))
        );
        // Detected from the first byte alone.
        assert_eq!(
            decode_all(b"\xf0"),
            Err(DecodeError::ReservedPacketType(15))
        );
    }

    #[test]
    fn bad_fixed_header_flags() {
        let cases: &[(&[u8], u8, u8)] = &[
            (b"\x11\x00", 1, 1),
            (b"\x28\x02\x00\x00", 2, 8),
            (b"\x41\x02\x00\x01", 4, 1),
            (b"\x52\x02\x00\x01", 5, 2),
            (b"\x60\x02\x00\x01", 6, 0),
            (b"\x63\x02\x00\x01", 6, 3),
            (b"\x72\x02\x00\x01", 7, 2),
            (b"\x80\x06\x00\x01\x00\x01a\x00", 8, 0),
            (b"\x92\x03\x00\x01\x00", 9, 2),
            (b"\xa0\x05\x00\x01\x00\x01a", 10, 0),
            (b"\xb1\x02\x00\x01", 11, 1),
            (b"\xc1\x00", 12, 1),
            (b"\xd2\x00", 13, 2),
            (b"\xe4\x00", 14, 4),
            // DUP on a QoS 0 publish [MQTT-3.3.1-2]
            (b"\x38\x03\x00\x01t", 3, 8),
        ];
        for &(bytes, packet_type, flags) in cases {
            assert_eq!(
                decode_all(bytes),
                Err(DecodeError::BadFlags { packet_type, flags }),
                "{bytes:02x?}"
            );
        }
    }

    #[test]
    fn publish_qos3_is_malformed() {
        assert_eq!(
            decode_all(b"\x36\x05\x00\x01t\x00\x01"),
            Err(DecodeError::InvalidQoS(3))
        );
    }

    #[test]
    fn truncated_fields() {
        let cases: &[&[u8]] = &[
            b"\x40\x01\x00",                         // PUBACK id cut short
            b"\x40\x00",                             // PUBACK without id
            b"\x20\x01\x00",                         // CONNACK missing return code
            b"\x30\x03\x00\x05abc", // topic longer than the packet (then "bc" trails)
            b"\x32\x04\x00\x01t\x00", // QoS 1 id cut short
            b"\x82\x05\x00\x01\x00\x01a", // SUBSCRIBE filter without QoS byte
            b"\x10\x05\x00\x04MQT", // CONNECT protocol name cut short
            b"\x10\x0a\x00\x04MQTT\x04\x02\x00\x3c", // CONNECT without client id
        ];
        for &bytes in cases {
            assert_eq!(
                decode_all(bytes),
                Err(DecodeError::Truncated),
                "{bytes:02x?}"
            );
        }
    }

    #[test]
    fn trailing_bytes() {
        let cases: &[&[u8]] = &[
            b"\x40\x03\x00\x01\x00",
            b"\x20\x03\x00\x00\x00",
            b"\xc0\x01\x00",
            b"\xe0\x01\x00",
            b"\xb0\x03\x00\x01\x00",
        ];
        for &bytes in cases {
            assert_eq!(
                decode_all(bytes),
                Err(DecodeError::TrailingBytes),
                "{bytes:02x?}"
            );
        }
        let mut connect = connect_bytes(b"MQTT", 4, 0x02, b"\x00\x01c");
        connect.push(0);
        if let Some(len) = connect.get_mut(1) {
            *len += 1;
        }
        assert_eq!(decode_all(&connect), Err(DecodeError::TrailingBytes));
    }

    #[test]
    fn invalid_utf8_and_nul() {
        assert_eq!(
            decode_all(b"\x30\x05\x00\x02\xc3\x28x"),
            Err(DecodeError::InvalidUtf8)
        );
        assert_eq!(
            decode_all(b"\x30\x05\x00\x02a\x00x"),
            Err(DecodeError::InvalidUtf8)
        );
        // UTF-16 surrogate encoded as UTF-8 [MQTT-1.5.3-1]
        assert_eq!(
            decode_all(b"\x30\x05\x00\x03\xed\xa0\x80"),
            Err(DecodeError::InvalidUtf8)
        );
        assert_eq!(
            decode_all(&connect_bytes(b"MQTT", 4, 0x02, b"\x00\x01\xff")),
            Err(DecodeError::InvalidUtf8)
        );
    }

    #[test]
    fn invalid_protocol_name_or_level() {
        assert_eq!(
            decode_all(&connect_bytes(b"MQTX", 4, 0x02, b"\x00\x00")),
            Err(DecodeError::InvalidProtocol)
        );
        let mut mqisdp = vec![0x10, 0x0e, 0x00, 0x06];
        mqisdp.extend_from_slice(b"MQIsdp\x03\x02\x00\x3c\x00\x00");
        assert_eq!(decode_all(&mqisdp), Err(DecodeError::InvalidProtocol));
        assert_eq!(
            decode_all(&connect_bytes(b"MQTT", 3, 0x02, b"\x00\x00")),
            Err(DecodeError::UnsupportedProtocolLevel(3))
        );
        assert_eq!(
            decode_all(&connect_bytes(b"MQTT", 5, 0x02, b"\x00\x00")),
            Err(DecodeError::UnsupportedProtocolLevel(5))
        );
    }

    #[test]
    fn invalid_connect_flags() {
        for flags in [
            0x03, // reserved bit
            0x0A, // will QoS without will flag
            0x22, // will retain without will flag
            0x42, // password without username
        ] {
            assert_eq!(
                decode_all(&connect_bytes(b"MQTT", 4, flags, b"\x00\x00")),
                Err(DecodeError::InvalidConnectFlags(flags)),
                "{flags:#04x}"
            );
        }
        // Will QoS 3 [MQTT-3.1.2-14]
        assert_eq!(
            decode_all(&connect_bytes(
                b"MQTT",
                4,
                0x1E,
                b"\x00\x00\x00\x01t\x00\x00"
            )),
            Err(DecodeError::InvalidQoS(3))
        );
        // Will topic with a wildcard
        assert_eq!(
            decode_all(&connect_bytes(
                b"MQTT",
                4,
                0x06,
                b"\x00\x00\x00\x01#\x00\x00"
            )),
            Err(DecodeError::InvalidTopicName)
        );
    }

    #[test]
    fn invalid_connack() {
        assert_eq!(
            decode_all(b"\x20\x02\x02\x00"),
            Err(DecodeError::InvalidConnAckFlags(2))
        );
        assert_eq!(
            decode_all(b"\x20\x02\x00\x06"),
            Err(DecodeError::InvalidReturnCode(6))
        );
    }

    #[test]
    fn invalid_subscribe_and_suback_codes() {
        assert_eq!(
            decode_all(b"\x82\x06\x00\x01\x00\x01a\x03"),
            Err(DecodeError::InvalidQoS(3))
        );
        // Reserved upper bits of the requested QoS byte [MQTT-3.8.3-4]
        assert_eq!(
            decode_all(b"\x82\x06\x00\x01\x00\x01a\x41"),
            Err(DecodeError::InvalidQoS(0x41))
        );
        assert_eq!(
            decode_all(b"\x90\x03\x00\x01\x03"),
            Err(DecodeError::InvalidSubackCode(3))
        );
        assert_eq!(
            decode_all(b"\x90\x03\x00\x01\x81"),
            Err(DecodeError::InvalidSubackCode(0x81))
        );
    }

    #[test]
    fn zero_packet_id() {
        let cases: &[&[u8]] = &[
            b"\x32\x05\x00\x01t\x00\x00",
            b"\x40\x02\x00\x00",
            b"\x50\x02\x00\x00",
            b"\x62\x02\x00\x00",
            b"\x70\x02\x00\x00",
            b"\x82\x06\x00\x00\x00\x01a\x00",
            b"\x90\x03\x00\x00\x00",
            b"\xa2\x05\x00\x00\x00\x01a",
            b"\xb0\x02\x00\x00",
        ];
        for &bytes in cases {
            assert_eq!(
                decode_all(bytes),
                Err(DecodeError::ZeroPacketId),
                "{bytes:02x?}"
            );
        }
    }

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
    fn invalid_topics() {
        assert_eq!(
            decode_all(b"\x30\x02\x00\x00"),
            Err(DecodeError::InvalidTopicName)
        );
        assert_eq!(
            decode_all(b"\x30\x05\x00\x03a/+"),
            Err(DecodeError::InvalidTopicName)
        );
        assert_eq!(
            decode_all(b"\x82\x0a\x00\x01\x00\x05a/#/b\x00"),
            Err(DecodeError::InvalidTopicFilter)
        );
        assert_eq!(
            decode_all(b"\xa2\x06\x00\x01\x00\x02a+"),
            Err(DecodeError::InvalidTopicFilter)
        );
        assert_eq!(
            decode_all(b"\x82\x05\x00\x01\x00\x00\x00"),
            Err(DecodeError::InvalidTopicFilter)
        );
    }
}
