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
        kind::CONNECT => Packet::Connect(parse_connect(&mut r)?),
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
