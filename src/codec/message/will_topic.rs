//! WILLTOPIC (§5.4.7, Table 12) and WILLTOPICUPD (§5.4.22, Table 25): `[Flags(1) WillTopic(n)]`.
//!
//! No octets after MsgType is the "empty" message that deletes the will (`None`). Otherwise Flags
//! carries QoS and Retain (other bits ignored / written 0) and the rest is the UTF-8 topic, which
//! must not be empty: a Flags octet with no topic is neither form, so it is
//! [`DecodeError::BadWillTopic`].
//! Owns: these kinds' variable part. Must never: accept a Flags octet without a topic, or panic
//! on input.

use bytes::{BufMut, BytesMut};

use crate::codec::cursor::Reader;
use crate::codec::{DecodeError, EncodeError, Flags, WillTopic};

pub(super) fn decode_body(r: &mut Reader) -> Result<Option<WillTopic>, DecodeError> {
    if r.is_empty() {
        return Ok(None);
    }
    let flags = Flags(r.u8("Flags")?);
    if r.is_empty() {
        return Err(DecodeError::BadWillTopic);
    }
    let topic = r.rest_utf8("WillTopic")?;
    Ok(Some(WillTopic {
        qos: flags.qos(),
        retain: flags.retain(),
        topic,
    }))
}

pub(super) fn validate(w: Option<&WillTopic>) -> Result<(), EncodeError> {
    match w {
        Some(w) if w.topic.is_empty() => Err(EncodeError::EmptyWillTopic),
        _ => Ok(()),
    }
}

pub(super) fn body_len(w: Option<&WillTopic>) -> usize {
    w.map_or(0, |w| 1 + w.topic.len())
}

pub(super) fn encode_body(w: Option<&WillTopic>, buf: &mut BytesMut) {
    if let Some(w) = w {
        buf.put_u8(
            Flags::default()
                .with_qos(w.qos)
                .with_retain(w.retain)
                .bits(),
        );
        buf.extend_from_slice(w.topic.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::super::{assert_vector, decode_err, decode_message};
    use crate::codec::{DecodeError, EncodeError, Message, QoS, WillTopic};
    use bytes::Bytes;

    fn will(qos: QoS, retain: bool, topic: &str) -> Option<WillTopic> {
        Some(WillTopic {
            qos,
            retain,
            topic: topic.to_owned(),
        })
    }

    #[test]
    fn table_12_vector() {
        // QoS 1 (0x20) + Retain (0x10), topic "a/b".
        assert_vector(
            &[0x06, 0x07, 0x30, b'a', b'/', b'b'],
            Message::WillTopic(will(QoS::AtLeastOnce, true, "a/b")),
        );
    }

    #[test]
    fn table_25_vector() {
        assert_vector(
            &[0x04, 0x1A, 0x40, b't'],
            Message::WillTopicUpd(will(QoS::ExactlyOnce, false, "t")),
        );
    }

    #[test]
    fn empty_message_deletes_the_will() {
        assert_vector(&[0x02, 0x07], Message::WillTopic(None));
        assert_vector(&[0x02, 0x1A], Message::WillTopicUpd(None));
    }

    #[test]
    fn unused_flag_bits_are_ignored() {
        // DUP, Will, CleanSession, TopicIdType=11 set: ignored here.
        assert_eq!(
            decode_message(Bytes::from_static(&[0x04, 0x07, 0x8F, b't'])),
            Ok(Message::WillTopic(will(QoS::AtMostOnce, false, "t")))
        );
    }

    #[test]
    fn bad_will_topic() {
        assert_eq!(decode_err(&[0x03, 0x07, 0x20]), DecodeError::BadWillTopic);
        assert_eq!(decode_err(&[0x03, 0x1A, 0x00]), DecodeError::BadWillTopic);
        let msg = Message::WillTopic(will(QoS::AtMostOnce, false, ""));
        assert_eq!(msg.to_bytes(), Err(EncodeError::EmptyWillTopic));
    }

    #[test]
    fn invalid_utf8_will_topic() {
        assert_eq!(
            decode_err(&[0x05, 0x07, 0x00, 0xC3, 0x28]),
            DecodeError::InvalidUtf8 { field: "WillTopic" }
        );
    }
}
