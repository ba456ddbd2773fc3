//! UNSUBSCRIBE (§5.4.17, Table 19): `Flags(1) MsgId(2) TopicName(n) | TopicId(2)`.
//!
//! Only TopicIdType of Flags matters; the tail is shared with SUBSCRIBE.
//! Owns: UNSUBSCRIBE's Flags and MsgId. Must never: parse the tail itself (subscribe.rs does), or
//! panic on input.

use bytes::{BufMut, BytesMut};

use super::subscribe::{decode_topic_filter, encode_topic_filter, topic_filter_len};
use crate::codec::cursor::Reader;
use crate::codec::{DecodeError, Flags, MsgType, Unsubscribe};

pub(super) fn decode_body(r: &mut Reader) -> Result<Unsubscribe, DecodeError> {
    let topic_id_type = Flags(r.u8("Flags")?).topic_id_type()?;
    let msg_id = r.u16("MsgId")?;
    let topic = decode_topic_filter(topic_id_type, r, MsgType::Unsubscribe)?;
    Ok(Unsubscribe { msg_id, topic })
}

pub(super) fn body_len(u: &Unsubscribe) -> usize {
    3 + topic_filter_len(&u.topic)
}

pub(super) fn encode_body(u: &Unsubscribe, buf: &mut BytesMut) {
    buf.put_u8(
        Flags::default()
            .with_topic_id_type(u.topic.topic_id_type())
            .bits(),
    );
    buf.put_u16(u.msg_id);
    encode_topic_filter(&u.topic, buf);
}

#[cfg(test)]
mod tests {
    use super::super::{assert_vector, decode_err, decode_message};
    use crate::codec::{DecodeError, Message, MsgType, TopicFilter, Unsubscribe};
    use bytes::Bytes;

    fn unsub(msg_id: u16, topic: TopicFilter) -> Message {
        Message::Unsubscribe(Unsubscribe { msg_id, topic })
    }

    #[test]
    fn table_19_vectors() {
        assert_vector(
            &[0x08, 0x14, 0x00, 0x00, 0x05, b'a', b'/', b'#'],
            unsub(5, TopicFilter::Name("a/#".into())),
        );
        assert_vector(
            &[0x07, 0x14, 0x01, 0x00, 0x05, 0x01, 0x00],
            unsub(5, TopicFilter::Predefined(0x0100)),
        );
        assert_vector(
            &[0x07, 0x14, 0x02, 0x00, 0x05, b'z', b'z'],
            unsub(5, TopicFilter::Short(*b"zz")),
        );
    }

    #[test]
    fn only_topic_id_type_matters() {
        // DUP, QoS 2, Retain, Will, CleanSession all set: ignored.
        assert_eq!(
            decode_message(Bytes::from_static(&[
                0x07, 0x14, 0xFD, 0x00, 0x05, 0x00, 0x01
            ])),
            Ok(unsub(5, TopicFilter::Predefined(1)))
        );
    }

    #[test]
    fn reserved_topic_id_type() {
        assert_eq!(
            decode_err(&[0x07, 0x14, 0x03, 0x00, 0x05, 0x00, 0x01]),
            DecodeError::ReservedTopicIdType
        );
    }

    #[test]
    fn trailing_bytes_after_predefined_id() {
        assert_eq!(
            decode_err(&[0x08, 0x14, 0x01, 0x00, 0x05, 0x00, 0x01, 0x00]),
            DecodeError::TrailingBytes {
                msg_type: MsgType::Unsubscribe
            }
        );
    }
}
