//! Packet -> bytes (§2, §3).
//!
//! Two passes over the same packet: [`Packet::remaining_len`] validates every field and sizes
//! the body, then the writer appends. Nothing is written unless the whole packet is valid.

use bytes::{BufMut, Bytes, BytesMut};

use super::error::EncodeError;
use super::packet::{
    connect_flags, Connect, Packet, Publish, QoS, MAX_REMAINING_LENGTH, PROTOCOL_LEVEL,
    PROTOCOL_NAME,
};
use super::topic::{valid_topic_filter, valid_topic_name};

impl Packet {
    /// Appends this packet to `buf`. On error `buf` is left unchanged.
    pub fn encode(&self, buf: &mut BytesMut) -> Result<(), EncodeError> {
        let remaining = self.remaining_len()?;
        let start = buf.len();
        buf.reserve(1 + remaining_length_len(remaining) + remaining);
        buf.put_u8((self.kind() << 4) | self.header_flags());
        put_remaining_length(buf, remaining);
        if let Err(e) = self.put_body(buf) {
            // Unreachable after `remaining_len` succeeded; keep the promise anyway.
            buf.truncate(start);
            return Err(e);
        }
        Ok(())
    }

    /// Total bytes [`Packet::encode`] would append, fixed header included.
    pub fn encoded_len(&self) -> Result<usize, EncodeError> {
        let remaining = self.remaining_len()?;
        Ok(1 + remaining_length_len(remaining) + remaining)
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
            Packet::Publish(p) => {
                (u8::from(p.dup) << 3) | (u8::from(p.qos) << 1) | u8::from(p.retain)
            }
            Packet::PubRel { .. } | Packet::Subscribe { .. } | Packet::Unsubscribe { .. } => 0b0010,
            _ => 0,
        }
    }

    /// Validates the packet and returns its Remaining Length.
    fn remaining_len(&self) -> Result<usize, EncodeError> {
        let len = match self {
            Packet::Connect(c) => connect_len(c)?,
            Packet::ConnAck { .. } => 2,
            Packet::Publish(p) => publish_len(p)?,
            Packet::PubAck { packet_id }
            | Packet::PubRec { packet_id }
            | Packet::PubRel { packet_id }
            | Packet::PubComp { packet_id }
            | Packet::UnsubAck { packet_id } => {
                check_packet_id(*packet_id)?;
                2
            }
            Packet::Subscribe { packet_id, filters } => {
                check_packet_id(*packet_id)?;
                if filters.is_empty() {
                    return Err(EncodeError::EmptyPayload);
                }
                let mut len = 2;
                for (filter, _qos) in filters {
                    len += filter_len(filter)? + 1;
                }
                len
            }
            Packet::SubAck { packet_id, codes } => {
                check_packet_id(*packet_id)?;
                if codes.is_empty() {
                    return Err(EncodeError::EmptyPayload);
                }
                2 + codes.len()
            }
            Packet::Unsubscribe { packet_id, filters } => {
                check_packet_id(*packet_id)?;
                if filters.is_empty() {
                    return Err(EncodeError::EmptyPayload);
                }
                let mut len = 2;
                for filter in filters {
                    len += filter_len(filter)?;
                }
                len
            }
            Packet::PingReq | Packet::PingResp | Packet::Disconnect => 0,
        };
        if len > MAX_REMAINING_LENGTH {
            return Err(EncodeError::PacketTooLarge { size: len });
        }
        Ok(len)
    }

    fn put_body(&self, buf: &mut BytesMut) -> Result<(), EncodeError> {
        match self {
            Packet::Connect(c) => put_connect(buf, c)?,
            Packet::ConnAck {
                session_present,
                code,
            } => {
                buf.put_u8(u8::from(*session_present));
                buf.put_u8((*code).into());
            }
            Packet::Publish(p) => {
                put_string(buf, &p.topic)?;
                if let Some(id) = p.packet_id {
                    buf.put_u16(id);
                }
                buf.put_slice(&p.payload);
            }
            Packet::PubAck { packet_id }
            | Packet::PubRec { packet_id }
            | Packet::PubRel { packet_id }
            | Packet::PubComp { packet_id }
            | Packet::UnsubAck { packet_id } => buf.put_u16(*packet_id),
            Packet::Subscribe { packet_id, filters } => {
                buf.put_u16(*packet_id);
                for (filter, qos) in filters {
                    put_string(buf, filter)?;
                    buf.put_u8((*qos).into());
                }
            }
            Packet::SubAck { packet_id, codes } => {
                buf.put_u16(*packet_id);
                for code in codes {
                    buf.put_u8(code.to_byte());
                }
            }
            Packet::Unsubscribe { packet_id, filters } => {
                buf.put_u16(*packet_id);
                for filter in filters {
                    put_string(buf, filter)?;
                }
            }
            Packet::PingReq | Packet::PingResp | Packet::Disconnect => {}
        }
        Ok(())
    }
}

fn check_packet_id(id: u16) -> Result<(), EncodeError> {
    if id == 0 {
        Err(EncodeError::ZeroPacketId)
    } else {
        Ok(())
    }
}

/// Bytes of a length-prefixed field (§1.5.3 strings, §3.1.3 binary data).
fn field_len(len: usize) -> Result<usize, EncodeError> {
    if len > usize::from(u16::MAX) {
        Err(EncodeError::FieldTooLong { len })
    } else {
        Ok(2 + len)
    }
}

fn string_len(s: &str) -> Result<usize, EncodeError> {
    if s.contains('\0') {
        return Err(EncodeError::NulCharacter);
    }
    field_len(s.len())
}

fn topic_name_len(topic: &str) -> Result<usize, EncodeError> {
    let len = string_len(topic)?;
    if !valid_topic_name(topic) {
        return Err(EncodeError::InvalidTopicName);
    }
    Ok(len)
}

fn filter_len(filter: &str) -> Result<usize, EncodeError> {
    let len = string_len(filter)?;
    if !valid_topic_filter(filter) {
        return Err(EncodeError::InvalidTopicFilter);
    }
    Ok(len)
}

fn connect_len(c: &Connect) -> Result<usize, EncodeError> {
    if c.password.is_some() && c.username.is_none() {
        return Err(EncodeError::PasswordWithoutUsername);
    }
    // Protocol name, level, flags, keep alive.
    let mut len = 2 + PROTOCOL_NAME.len() + 1 + 1 + 2;
    len += string_len(&c.client_id)?;
    if let Some(will) = &c.will {
        len += topic_name_len(&will.topic)?;
        len += field_len(will.message.len())?;
    }
    if let Some(username) = &c.username {
        len += string_len(username)?;
    }
    if let Some(password) = &c.password {
        len += field_len(password.len())?;
    }
    Ok(len)
}

fn publish_len(p: &Publish) -> Result<usize, EncodeError> {
    match (p.qos, p.packet_id) {
        (QoS::AtMostOnce, None) => {
            if p.dup {
                return Err(EncodeError::DupWithQoS0);
            }
        }
        (QoS::AtLeastOnce | QoS::ExactlyOnce, Some(id)) => check_packet_id(id)?,
        _ => return Err(EncodeError::PacketIdQoSMismatch),
    }
    let id_len = if p.packet_id.is_some() { 2 } else { 0 };
    Ok(topic_name_len(&p.topic)? + id_len + p.payload.len())
}

fn put_connect(buf: &mut BytesMut, c: &Connect) -> Result<(), EncodeError> {
    put_string(buf, PROTOCOL_NAME)?;
    buf.put_u8(PROTOCOL_LEVEL);
    let mut flags = 0;
    if c.clean_session {
        flags |= connect_flags::CLEAN_SESSION;
    }
    if let Some(will) = &c.will {
        flags |= connect_flags::WILL | (u8::from(will.qos) << connect_flags::WILL_QOS_SHIFT);
        if will.retain {
            flags |= connect_flags::WILL_RETAIN;
        }
    }
    if c.username.is_some() {
        flags |= connect_flags::USERNAME;
    }
    if c.password.is_some() {
        flags |= connect_flags::PASSWORD;
    }
    buf.put_u8(flags);
    buf.put_u16(c.keep_alive);
    put_string(buf, &c.client_id)?;
    if let Some(will) = &c.will {
        put_string(buf, &will.topic)?;
        put_binary(buf, &will.message)?;
    }
    if let Some(username) = &c.username {
        put_string(buf, username)?;
    }
    if let Some(password) = &c.password {
        put_binary(buf, password)?;
    }
    Ok(())
}

fn put_binary(buf: &mut BytesMut, data: &[u8]) -> Result<(), EncodeError> {
    let len =
        u16::try_from(data.len()).map_err(|_| EncodeError::FieldTooLong { len: data.len() })?;
    buf.put_u16(len);
    buf.put_slice(data);
    Ok(())
}

fn put_string(buf: &mut BytesMut, s: &str) -> Result<(), EncodeError> {
    put_binary(buf, s.as_bytes())
}

/// Bytes of the Remaining Length field for `len` (§2.2.3, Table 2.4).
pub(crate) fn remaining_length_len(len: usize) -> usize {
    match len {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Variable-length encoding of §2.2.3; `len` is at most [`MAX_REMAINING_LENGTH`].
pub(crate) fn put_remaining_length(buf: &mut BytesMut, mut len: usize) {
    loop {
        // Masked to 7 bits, so the cast is lossless.
        let mut byte = (len & 0x7F) as u8;
        len >>= 7;
        if len > 0 {
            byte |= 0x80;
        }
        buf.put_u8(byte);
        if len == 0 {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::{ConnectReturnCode, LastWill, SubackCode};

    fn encode(packet: &Packet) -> Vec<u8> {
        let bytes = packet.to_bytes().expect("test packet encodes");
        assert_eq!(packet.encoded_len(), Ok(bytes.len()));
        bytes.to_vec()
    }

    fn publish0(topic: &str, payload: Vec<u8>) -> Packet {
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: topic.into(),
            packet_id: None,
            payload: payload.into(),
        })
    }

    #[test]
    fn connect_with_will_username_password_vector() {
        let packet = Packet::Connect(Box::new(Connect {
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
        let mut expected = vec![0x10, 49];
        expected.extend_from_slice(b"\x00\x04MQTT\x04");
        // username | password | will retain | will QoS 1 | will | clean session
        expected.push(0b1110_1110);
        expected.extend_from_slice(&[0x00, 60]);
        expected.extend_from_slice(b"\x00\x04gw-1");
        expected.extend_from_slice(b"\x00\x0cdev/1/status");
        expected.extend_from_slice(b"\x00\x07offline");
        expected.extend_from_slice(b"\x00\x04user");
        expected.extend_from_slice(b"\x00\x02pw");
        assert_eq!(expected.len(), 2 + 49);
        assert_eq!(encode(&packet), expected);
    }

    #[test]
    fn connect_minimal_vector() {
        let packet = Packet::Connect(Box::new(Connect {
            client_id: String::new(),
            clean_session: true,
            keep_alive: 0,
            will: None,
            username: None,
            password: None,
        }));
        assert_eq!(
            encode(&packet),
            b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x00\x00\x00".to_vec()
        );
    }

    #[test]
    fn connack_vector() {
        let packet = Packet::ConnAck {
            session_present: true,
            code: ConnectReturnCode::Accepted,
        };
        assert_eq!(encode(&packet), vec![0x20, 0x02, 0x01, 0x00]);
        let packet = Packet::ConnAck {
            session_present: false,
            code: ConnectReturnCode::NotAuthorized,
        };
        assert_eq!(encode(&packet), vec![0x20, 0x02, 0x00, 0x05]);
    }

    #[test]
    fn publish_qos0_vector() {
        assert_eq!(
            encode(&publish0("a/b", b"hi".to_vec())),
            b"\x30\x07\x00\x03a/bhi".to_vec()
        );
    }

    #[test]
    fn publish_qos1_retain_vector() {
        let packet = Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: true,
            topic: "a/b".into(),
            packet_id: Some(10),
            payload: Bytes::from_static(b"hi"),
        });
        assert_eq!(encode(&packet), b"\x33\x09\x00\x03a/b\x00\x0ahi".to_vec());
    }

    #[test]
    fn publish_qos2_dup_vector() {
        let packet = Packet::Publish(Publish {
            dup: true,
            qos: QoS::ExactlyOnce,
            retain: false,
            topic: "t".into(),
            packet_id: Some(0x1234),
            payload: Bytes::new(),
        });
        assert_eq!(encode(&packet), b"\x3c\x05\x00\x01t\x12\x34".to_vec());
    }

    #[test]
    fn ack_vectors() {
        assert_eq!(
            encode(&Packet::PubAck { packet_id: 7 }),
            vec![0x40, 2, 0, 7]
        );
        assert_eq!(
            encode(&Packet::PubRec { packet_id: 7 }),
            vec![0x50, 2, 0, 7]
        );
        assert_eq!(
            encode(&Packet::PubRel { packet_id: 7 }),
            vec![0x62, 2, 0, 7]
        );
        assert_eq!(
            encode(&Packet::PubComp { packet_id: 7 }),
            vec![0x70, 2, 0, 7]
        );
        assert_eq!(
            encode(&Packet::UnsubAck { packet_id: 0x0102 }),
            vec![0xB0, 2, 1, 2]
        );
    }

    #[test]
    fn subscribe_vector() {
        let packet = Packet::Subscribe {
            packet_id: 1,
            filters: vec![
                ("a/+".into(), QoS::AtLeastOnce),
                ("#".into(), QoS::AtMostOnce),
            ],
        };
        assert_eq!(
            encode(&packet),
            b"\x82\x0c\x00\x01\x00\x03a/+\x01\x00\x01#\x00".to_vec()
        );
    }

    #[test]
    fn suback_vector() {
        let packet = Packet::SubAck {
            packet_id: 1,
            codes: vec![
                SubackCode::Granted(QoS::AtLeastOnce),
                SubackCode::Failure,
                SubackCode::Granted(QoS::ExactlyOnce),
            ],
        };
        assert_eq!(
            encode(&packet),
            vec![0x90, 0x05, 0x00, 0x01, 0x01, 0x80, 0x02]
        );
    }

    #[test]
    fn unsubscribe_vector() {
        let packet = Packet::Unsubscribe {
            packet_id: 2,
            filters: vec!["a/+".into(), "b".into()],
        };
        assert_eq!(
            encode(&packet),
            b"\xa2\x0a\x00\x02\x00\x03a/+\x00\x01b".to_vec()
        );
    }

    #[test]
    fn pingreq_pingresp_disconnect_vectors() {
        assert_eq!(encode(&Packet::PingReq), vec![0xC0, 0x00]);
        assert_eq!(encode(&Packet::PingResp), vec![0xD0, 0x00]);
        assert_eq!(encode(&Packet::Disconnect), vec![0xE0, 0x00]);
    }

    #[test]
    fn remaining_length_boundaries_in_publish() {
        // Topic "t" takes 3 bytes of the Remaining Length; the payload fills the rest.
        let cases: &[(usize, &[u8])] = &[
            (127, &[0x7F]),
            (128, &[0x80, 0x01]),
            (16_383, &[0xFF, 0x7F]),
            (16_384, &[0x80, 0x80, 0x01]),
        ];
        for &(remaining, len_bytes) in cases {
            let bytes = encode(&publish0("t", vec![0xAB; remaining - 3]));
            assert_eq!(bytes.len(), 1 + len_bytes.len() + remaining);
            assert_eq!(bytes.first(), Some(&0x30));
            assert_eq!(
                bytes.get(1..1 + len_bytes.len()),
                Some(len_bytes),
                "{remaining}"
            );
            assert_eq!(
                bytes.get(1 + len_bytes.len()..4 + len_bytes.len()),
                Some(&b"\x00\x01t"[..])
            );
        }
    }

    #[test]
    fn remaining_length_encoding_table() {
        // §2.2.3, Table 2.4
        let cases: &[(usize, &[u8])] = &[
            (0, &[0x00]),
            (127, &[0x7F]),
            (128, &[0x80, 0x01]),
            (16_383, &[0xFF, 0x7F]),
            (16_384, &[0x80, 0x80, 0x01]),
            (2_097_151, &[0xFF, 0xFF, 0x7F]),
            (2_097_152, &[0x80, 0x80, 0x80, 0x01]),
            (268_435_455, &[0xFF, 0xFF, 0xFF, 0x7F]),
        ];
        for &(len, expected) in cases {
            let mut buf = BytesMut::new();
            put_remaining_length(&mut buf, len);
            assert_eq!(&buf[..], expected, "{len}");
            assert_eq!(remaining_length_len(len), expected.len(), "{len}");
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

    #[test]
    fn encode_rejects_invalid_packets() {
        let publish = |dup, qos, topic: &str, packet_id| {
            Packet::Publish(Publish {
                dup,
                qos,
                retain: false,
                topic: topic.into(),
                packet_id,
                payload: Bytes::new(),
            })
        };
        let connect = |username: Option<&str>, password: Option<&'static [u8]>| {
            Packet::Connect(Box::new(Connect {
                client_id: "c".into(),
                clean_session: true,
                keep_alive: 0,
                will: None,
                username: username.map(Into::into),
                password: password.map(Bytes::from_static),
            }))
        };
        let long = "a".repeat(65_536);
        let cases = vec![
            (
                publish(false, QoS::AtMostOnce, "t", Some(1)),
                EncodeError::PacketIdQoSMismatch,
            ),
            (
                publish(false, QoS::AtLeastOnce, "t", None),
                EncodeError::PacketIdQoSMismatch,
            ),
            (
                publish(false, QoS::ExactlyOnce, "t", Some(0)),
                EncodeError::ZeroPacketId,
            ),
            (
                publish(true, QoS::AtMostOnce, "t", None),
                EncodeError::DupWithQoS0,
            ),
            (
                publish(false, QoS::AtMostOnce, "a/#", None),
                EncodeError::InvalidTopicName,
            ),
            (
                publish(false, QoS::AtMostOnce, "", None),
                EncodeError::InvalidTopicName,
            ),
            (
                publish(false, QoS::AtMostOnce, "a\0", None),
                EncodeError::NulCharacter,
            ),
            (
                publish(false, QoS::AtMostOnce, &long, None),
                EncodeError::FieldTooLong { len: 65_536 },
            ),
            (
                connect(None, Some(b"pw")),
                EncodeError::PasswordWithoutUsername,
            ),
            (
                connect(Some(&long), None),
                EncodeError::FieldTooLong { len: 65_536 },
            ),
            (
                Packet::Subscribe {
                    packet_id: 1,
                    filters: vec![],
                },
                EncodeError::EmptyPayload,
            ),
            (
                Packet::Subscribe {
                    packet_id: 1,
                    filters: vec![("a/#/b".into(), QoS::AtMostOnce)],
                },
                EncodeError::InvalidTopicFilter,
            ),
            (
                Packet::Unsubscribe {
                    packet_id: 1,
                    filters: vec!["a+".into()],
                },
                EncodeError::InvalidTopicFilter,
            ),
            (
                Packet::SubAck {
                    packet_id: 1,
                    codes: vec![],
                },
                EncodeError::EmptyPayload,
            ),
            (Packet::UnsubAck { packet_id: 0 }, EncodeError::ZeroPacketId),
        ];
        for (packet, expected) in cases {
            assert_eq!(packet.encoded_len(), Err(expected.clone()), "{packet:?}");
            assert_eq!(packet.to_bytes(), Err(expected), "{packet:?}");
        }
    }

    #[test]
    fn encode_rejects_remaining_length_over_limit() {
        let packet = publish0("t", vec![0; MAX_REMAINING_LENGTH - 2]);
        assert_eq!(
            packet.encoded_len(),
            Err(EncodeError::PacketTooLarge {
                size: MAX_REMAINING_LENGTH + 1
            })
        );
    }
}
