//! REGISTER (§5.4.10, Table 14): `TopicId(2) MsgId(2) TopicName(n)`.
//!
//! TopicName is UTF-8 to the end of the message. Its content (empty, wildcards) is the gateway's
//! concern, not the codec's.
//! Owns: REGISTER's variable part. Must never: judge the TopicName beyond UTF-8, or panic on
//! input.

use bytes::{BufMut, BytesMut};

use crate::codec::cursor::Reader;
use crate::codec::{DecodeError, Register};

pub(super) fn decode_body(r: &mut Reader) -> Result<Register, DecodeError> {
    let topic_id = r.u16("TopicId")?;
    let msg_id = r.u16("MsgId")?;
    let topic_name = r.rest_utf8("TopicName")?;
    Ok(Register {
        topic_id,
        msg_id,
        topic_name,
    })
}

pub(super) fn body_len(m: &Register) -> usize {
    4 + m.topic_name.len()
}

pub(super) fn encode_body(m: &Register, buf: &mut BytesMut) {
    buf.put_u16(m.topic_id);
    buf.put_u16(m.msg_id);
    buf.extend_from_slice(m.topic_name.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::super::{assert_vector, decode_err};
    use crate::codec::{DecodeError, Message, Register};

    #[test]
    fn table_14_vector_from_client() {
        assert_vector(
            &[0x09, 0x0A, 0x00, 0x00, 0x00, 0x01, b'a', b'/', b'b'],
            Message::Register(Register {
                topic_id: 0,
                msg_id: 1,
                topic_name: "a/b".into(),
            }),
        );
    }

    #[test]
    fn table_14_vector_from_gateway() {
        assert_vector(
            &[0x07, 0x0A, 0x12, 0x34, 0xBE, 0xEF, b't'],
            Message::Register(Register {
                topic_id: 0x1234,
                msg_id: 0xBEEF,
                topic_name: "t".into(),
            }),
        );
    }

    #[test]
    fn truncated_msg_id() {
        assert_eq!(
            decode_err(&[0x05, 0x0A, 0x00, 0x00, 0x00]),
            DecodeError::Truncated { field: "MsgId" }
        );
    }

    #[test]
    fn invalid_utf8_topic_name() {
        assert_eq!(
            decode_err(&[0x07, 0x0A, 0x00, 0x00, 0x00, 0x01, 0x80]),
            DecodeError::InvalidUtf8 { field: "TopicName" }
        );
    }
}
