//! PUBLISH (§5.4.12, Table 16): `Flags(1) TopicId(2) MsgId(2) Data(n)`.
//!
//! Flags uses DUP, QoS, Retain and TopicIdType; Will and CleanSession are ignored / written 0.
//! TopicIdType selects how the 2-octet TopicId is read ([`TopicRef`]); 0b11 is rejected. Data is
//! a zero-copy slice. The codec does not police QoS/MsgId combinations: that is protocol logic.
//! Owns: PUBLISH's variable part. Must never: copy Data, accept TopicIdType 0b11, or panic on
//! input.

use bytes::{BufMut, BytesMut};

use crate::codec::cursor::Reader;
use crate::codec::flags::TopicIdType;
use crate::codec::{DecodeError, Flags, Publish, TopicRef};

pub(super) fn decode_body(r: &mut Reader) -> Result<Publish, DecodeError> {
    let flags = Flags(r.u8("Flags")?);
    let topic_id_type = flags.topic_id_type()?;
    let raw = r.array2("TopicId")?;
    let topic = match topic_id_type {
        TopicIdType::Normal => TopicRef::Id(u16::from_be_bytes(raw)),
        TopicIdType::Predefined => TopicRef::Predefined(u16::from_be_bytes(raw)),
        TopicIdType::Short => TopicRef::Short(raw),
    };
    let msg_id = r.u16("MsgId")?;
    Ok(Publish {
        dup: flags.dup(),
        qos: flags.qos(),
        retain: flags.retain(),
        topic,
        msg_id,
        data: r.rest(),
    })
}

pub(super) fn body_len(p: &Publish) -> usize {
    5 + p.data.len()
}

pub(super) fn encode_body(p: &Publish, buf: &mut BytesMut) {
    let flags = Flags::default()
        .with_dup(p.dup)
        .with_qos(p.qos)
        .with_retain(p.retain)
        .with_topic_id_type(p.topic.topic_id_type());
    buf.put_u8(flags.bits());
    match p.topic {
        TopicRef::Id(id) | TopicRef::Predefined(id) => buf.put_u16(id),
        TopicRef::Short(name) => buf.extend_from_slice(&name),
    }
    buf.put_u16(p.msg_id);
    buf.extend_from_slice(&p.data);
}

#[cfg(test)]
mod tests {
    use super::super::{assert_vector, decode_err, decode_message};
    use crate::codec::{DecodeError, EncodeError, Message, Publish, QoS, TopicRef};
    use bytes::Bytes;

    fn publish(
        dup: bool,
        qos: QoS,
        retain: bool,
        topic: TopicRef,
        msg_id: u16,
        data: &'static [u8],
    ) -> Message {
        Message::Publish(Publish {
            dup,
            qos,
            retain,
            topic,
            msg_id,
            data: Bytes::from_static(data),
        })
    }

    #[test]
    fn table_16_vector_normal_topic_id() {
        // QoS 1 (0x20), TopicIdType 00, TopicId 1, MsgId 0x0102, "hi".
        assert_vector(
            &[0x09, 0x0C, 0x20, 0x00, 0x01, 0x01, 0x02, b'h', b'i'],
            publish(
                false,
                QoS::AtLeastOnce,
                false,
                TopicRef::Id(1),
                0x0102,
                b"hi",
            ),
        );
    }

    #[test]
    fn table_16_vector_predefined_qos_minus_one() {
        // QoS -1 (0x60) + TopicIdType 01, MsgId 0.
        assert_vector(
            &[0x08, 0x0C, 0x61, 0x00, 0x05, 0x00, 0x00, 0x2A],
            publish(
                false,
                QoS::MinusOne,
                false,
                TopicRef::Predefined(5),
                0,
                &[0x2A],
            ),
        );
    }

    #[test]
    fn table_16_vector_short_name_dup_retain_qos2() {
        // DUP (0x80) + QoS 2 (0x40) + Retain (0x10) + TopicIdType 10 = 0xD2.
        assert_vector(
            &[0x07, 0x0C, 0xD2, b'a', b'b', 0x00, 0x07],
            publish(
                true,
                QoS::ExactlyOnce,
                true,
                TopicRef::Short(*b"ab"),
                7,
                b"",
            ),
        );
    }

    #[test]
    fn will_and_clean_session_bits_are_ignored() {
        assert_eq!(
            decode_message(Bytes::from_static(&[
                0x07, 0x0C, 0x0C, 0x00, 0x01, 0x00, 0x00
            ])),
            Ok(publish(
                false,
                QoS::AtMostOnce,
                false,
                TopicRef::Id(1),
                0,
                b""
            ))
        );
    }

    #[test]
    fn long_length_form_vector() {
        // 300 octets of data: 4 + 5 + 300 = 309 = 0x0135, so the 3-octet Length is used.
        let data: &'static [u8] = &[0x55; 300];
        let mut bytes = vec![0x01, 0x01, 0x35, 0x0C, 0x00, 0x00, 0x01, 0x00, 0x00];
        bytes.extend_from_slice(data);
        assert_vector(
            &bytes,
            publish(false, QoS::AtMostOnce, false, TopicRef::Id(1), 0, data),
        );
    }

    #[test]
    fn largest_encodable_and_too_long() {
        let max = vec![0u8; 65535 - 9];
        let msg = Message::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: TopicRef::Id(1),
            msg_id: 0,
            data: Bytes::from(max),
        });
        let bytes = msg.to_bytes().expect("fits exactly");
        assert_eq!(bytes.len(), 65535);
        assert_eq!(decode_message(bytes), Ok(msg.clone()));
        let Message::Publish(mut p) = msg else {
            unreachable!()
        };
        p.data = Bytes::from(vec![0u8; 65535 - 8]);
        assert_eq!(
            Message::Publish(p).to_bytes(),
            Err(EncodeError::TooLong { len: 65536 })
        );
    }

    #[test]
    fn reserved_topic_id_type() {
        assert_eq!(
            decode_err(&[0x07, 0x0C, 0x03, 0x00, 0x01, 0x00, 0x00]),
            DecodeError::ReservedTopicIdType
        );
    }

    #[test]
    fn truncated_msg_id() {
        assert_eq!(
            decode_err(&[0x06, 0x0C, 0x00, 0x00, 0x01, 0x00]),
            DecodeError::Truncated { field: "MsgId" }
        );
    }

    #[test]
    fn data_is_a_zero_copy_slice() {
        let frame = Bytes::from_static(&[0x09, 0x0C, 0x00, 0x00, 0x01, 0x00, 0x00, b'h', b'i']);
        let Ok(Message::Publish(p)) = decode_message(frame.clone()) else {
            panic!()
        };
        assert_eq!(p.data.as_ptr(), frame[7..].as_ptr());
    }
}
