//! PUBACK (§5.4.13, Table 17): `TopicId(2) MsgId(2) ReturnCode(1)`.
//! Owns: PUBACK's variable part. Must never: panic on input or read past the message.

use bytes::{BufMut, BytesMut};

use crate::codec::cursor::Reader;
use crate::codec::{DecodeError, Puback, ReturnCode};

pub(super) fn decode_body(r: &mut Reader) -> Result<Puback, DecodeError> {
    let topic_id = r.u16("TopicId")?;
    let msg_id = r.u16("MsgId")?;
    let return_code = ReturnCode::try_from(r.u8("ReturnCode")?)?;
    Ok(Puback {
        topic_id,
        msg_id,
        return_code,
    })
}

pub(super) fn body_len() -> usize {
    5
}

pub(super) fn encode_body(m: &Puback, buf: &mut BytesMut) {
    buf.put_u16(m.topic_id);
    buf.put_u16(m.msg_id);
    buf.put_u8(m.return_code.into());
}

#[cfg(test)]
mod tests {
    use super::super::{assert_vector, decode_err};
    use crate::codec::{DecodeError, Message, MsgType, Puback, ReturnCode};

    #[test]
    fn table_17_vector() {
        assert_vector(
            &[0x07, 0x0D, 0x00, 0x01, 0x01, 0x02, 0x02],
            Message::Puback(Puback {
                topic_id: 1,
                msg_id: 0x0102,
                return_code: ReturnCode::InvalidTopicId,
            }),
        );
    }

    #[test]
    fn truncated_return_code() {
        assert_eq!(
            decode_err(&[0x06, 0x0D, 0x00, 0x01, 0x01, 0x02]),
            DecodeError::Truncated {
                field: "ReturnCode"
            }
        );
    }

    #[test]
    fn trailing_bytes() {
        assert_eq!(
            decode_err(&[0x08, 0x0D, 0x00, 0x01, 0x01, 0x02, 0x00, 0x00]),
            DecodeError::TrailingBytes {
                msg_type: MsgType::Puback
            }
        );
    }
}
