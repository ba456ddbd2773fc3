//! The encoder's side of the field encodings (§1.5): the length and put helpers every kind
//! uses for packet identifiers, UTF-8 strings, binary data, topic names and topic filters.
//!
//! Owns: the encode-time checks of those fields (length <= 65535, no U+0000, topic validity,
//! packet identifier non-zero). The `*_len` functions validate; the `put_*` functions write.
//! Must never: write a field its `*_len` function would reject, or write anything a reader
//! would not read back as the same value.

use bytes::{BufMut, BytesMut};

use super::error::EncodeError;
use super::topic::{valid_topic_filter, valid_topic_name};

/// A packet identifier is never zero ([MQTT-2.3.1-1]).
pub(super) fn check_packet_id(id: u16) -> Result<(), EncodeError> {
    if id == 0 {
        Err(EncodeError::ZeroPacketId)
    } else {
        Ok(())
    }
}

/// Bytes of a length-prefixed field (§1.5.3 strings, §3.1.3 binary data).
pub(super) fn field_len(len: usize) -> Result<usize, EncodeError> {
    if len > usize::from(u16::MAX) {
        Err(EncodeError::FieldTooLong { len })
    } else {
        Ok(2 + len)
    }
}

pub(super) fn string_len(s: &str) -> Result<usize, EncodeError> {
    if s.contains('\0') {
        return Err(EncodeError::NulCharacter);
    }
    field_len(s.len())
}

pub(super) fn topic_name_len(topic: &str) -> Result<usize, EncodeError> {
    let len = string_len(topic)?;
    if !valid_topic_name(topic) {
        return Err(EncodeError::InvalidTopicName);
    }
    Ok(len)
}

pub(super) fn filter_len(filter: &str) -> Result<usize, EncodeError> {
    let len = string_len(filter)?;
    if !valid_topic_filter(filter) {
        return Err(EncodeError::InvalidTopicFilter);
    }
    Ok(len)
}

/// Two-byte length, then the bytes.
pub(super) fn put_binary(buf: &mut BytesMut, data: &[u8]) -> Result<(), EncodeError> {
    let len =
        u16::try_from(data.len()).map_err(|_| EncodeError::FieldTooLong { len: data.len() })?;
    buf.put_u16(len);
    buf.put_slice(data);
    Ok(())
}

pub(super) fn put_string(buf: &mut BytesMut, s: &str) -> Result<(), EncodeError> {
    put_binary(buf, s.as_bytes())
}

/// Each failure the field checks and the kinds report, through `encoded_len` and `to_bytes`.
#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use crate::mqtt::{Connect, EncodeError, Packet, Publish, QoS};

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
}
