//! SUBSCRIBE (§5.4.15, Table 19): `Flags(1) MsgId(2) TopicName(n) | TopicId(2)`.
//!
//! Flags uses DUP, QoS and TopicIdType. Also owns the TopicName-or-TopicId tail shared with
//! UNSUBSCRIBE: TopicIdType 00 is a UTF-8 name (wildcards allowed) to the end of the message;
//! 01 and 10 are exactly two octets.
//! Must never: accept TopicIdType 11 or a TopicId tail that is not exactly two octets, or panic
//! on input.

use bytes::{BufMut, BytesMut};

use crate::codec::cursor::Reader;
use crate::codec::flags::TopicIdType;
use crate::codec::{DecodeError, Flags, MsgType, Subscribe, TopicFilter};

pub(super) fn decode_body(r: &mut Reader) -> Result<Subscribe, DecodeError> {
    let flags = Flags(r.u8("Flags")?);
    let topic_id_type = flags.topic_id_type()?;
    let msg_id = r.u16("MsgId")?;
    let topic = decode_topic_filter(topic_id_type, r, MsgType::Subscribe)?;
    Ok(Subscribe {
        dup: flags.dup(),
        qos: flags.qos(),
        msg_id,
        topic,
    })
}

pub(super) fn body_len(s: &Subscribe) -> usize {
    3 + topic_filter_len(&s.topic)
}

pub(super) fn encode_body(s: &Subscribe, buf: &mut BytesMut) {
    let flags = Flags::default()
        .with_dup(s.dup)
        .with_qos(s.qos)
        .with_topic_id_type(s.topic.topic_id_type());
    buf.put_u8(flags.bits());
    buf.put_u16(s.msg_id);
    encode_topic_filter(&s.topic, buf);
}

/// Reads the tail after MsgId; for the 2-octet kinds, extra octets are
/// [`DecodeError::TrailingBytes`] of `msg_type`.
pub(super) fn decode_topic_filter(
    topic_id_type: TopicIdType,
    r: &mut Reader,
    msg_type: MsgType,
) -> Result<TopicFilter, DecodeError> {
    let topic = match topic_id_type {
        TopicIdType::Normal => return Ok(TopicFilter::Name(r.rest_utf8("TopicName")?)),
        TopicIdType::Predefined => TopicFilter::Predefined(r.u16("TopicId")?),
        TopicIdType::Short => TopicFilter::Short(r.array2("TopicId")?),
    };
    if !r.is_empty() {
        return Err(DecodeError::TrailingBytes { msg_type });
    }
    Ok(topic)
}

pub(super) fn topic_filter_len(t: &TopicFilter) -> usize {
    match t {
        TopicFilter::Name(name) => name.len(),
        TopicFilter::Predefined(_) | TopicFilter::Short(_) => 2,
    }
}

pub(super) fn encode_topic_filter(t: &TopicFilter, buf: &mut BytesMut) {
    match t {
        TopicFilter::Name(name) => buf.extend_from_slice(name.as_bytes()),
        TopicFilter::Predefined(id) => buf.put_u16(*id),
        TopicFilter::Short(name) => buf.extend_from_slice(name),
    }
}

#[cfg(test)]
mod tests {
    use super::super::{assert_vector, decode_err, decode_message};
    use crate::codec::{DecodeError, Message, MsgType, QoS, Subscribe, TopicFilter};
    use bytes::Bytes;

    fn sub(dup: bool, qos: QoS, msg_id: u16, topic: TopicFilter) -> Message {
        Message::Subscribe(Subscribe {
            dup,
            qos,
            msg_id,
            topic,
        })
    }

    #[test]
    fn table_19_vector_topic_name_with_wildcards() {
        // QoS 1 (0x20), TopicIdType 00, MsgId 1, "a/+/#".
        assert_vector(
            &[0x0A, 0x12, 0x20, 0x00, 0x01, b'a', b'/', b'+', b'/', b'#'],
            sub(
                false,
                QoS::AtLeastOnce,
                1,
                TopicFilter::Name("a/+/#".into()),
            ),
        );
    }

    #[test]
    fn table_19_vector_predefined_id() {
        assert_vector(
            &[0x07, 0x12, 0x01, 0x00, 0x02, 0x00, 0x09],
            sub(false, QoS::AtMostOnce, 2, TopicFilter::Predefined(9)),
        );
    }

    #[test]
    fn table_19_vector_short_name_dup_qos2() {
        assert_vector(
            &[0x07, 0x12, 0xC2, 0x00, 0x03, b'x', b'y'],
            sub(true, QoS::ExactlyOnce, 3, TopicFilter::Short(*b"xy")),
        );
    }

    #[test]
    fn unused_flag_bits_are_ignored() {
        // Retain, Will, CleanSession set.
        assert_eq!(
            decode_message(Bytes::from_static(&[0x06, 0x12, 0x1C, 0x00, 0x01, b't'])),
            Ok(sub(
                false,
                QoS::AtMostOnce,
                1,
                TopicFilter::Name("t".into())
            ))
        );
    }

    #[test]
    fn reserved_topic_id_type() {
        assert_eq!(
            decode_err(&[0x07, 0x12, 0x03, 0x00, 0x01, 0x00, 0x01]),
            DecodeError::ReservedTopicIdType
        );
    }

    #[test]
    fn truncated_predefined_topic_id() {
        assert_eq!(
            decode_err(&[0x06, 0x12, 0x01, 0x00, 0x01, 0x00]),
            DecodeError::Truncated { field: "TopicId" }
        );
    }

    #[test]
    fn trailing_bytes_after_short_name() {
        assert_eq!(
            decode_err(&[0x08, 0x12, 0x02, 0x00, 0x01, b'a', b'b', b'c']),
            DecodeError::TrailingBytes {
                msg_type: MsgType::Subscribe
            }
        );
    }

    #[test]
    fn invalid_utf8_topic_name() {
        assert_eq!(
            decode_err(&[0x06, 0x12, 0x00, 0x00, 0x01, 0xFE]),
            DecodeError::InvalidUtf8 { field: "TopicName" }
        );
    }
}
