//! REGACK (§5.4.11, Table 15): `TopicId(2) MsgId(2) ReturnCode(1)`.
//! Owns: REGACK's variable part. Must never: panic on input or read past the message.

use bytes::{BufMut, BytesMut};

use crate::codec::cursor::Reader;
use crate::codec::{DecodeError, Regack, ReturnCode};

pub(super) fn decode_body(r: &mut Reader) -> Result<Regack, DecodeError> {
    let topic_id = r.u16("TopicId")?;
    let msg_id = r.u16("MsgId")?;
    let return_code = ReturnCode::try_from(r.u8("ReturnCode")?)?;
    Ok(Regack {
        topic_id,
        msg_id,
        return_code,
    })
}

pub(super) fn body_len() -> usize {
    5
}

pub(super) fn encode_body(m: &Regack, buf: &mut BytesMut) {
    buf.put_u16(m.topic_id);
    buf.put_u16(m.msg_id);
    buf.put_u8(m.return_code.into());
}

#[cfg(test)]
mod tests {
    use super::super::{assert_vector, decode_err};
    use crate::codec::{DecodeError, Message, MsgType, Regack, ReturnCode};

    #[test]
    fn table_15_vector() {
        assert_vector(
            &[0x07, 0x0B, 0x00, 0x2A, 0x00, 0x01, 0x00],
            Message::Regack(Regack {
                topic_id: 42,
                msg_id: 1,
                return_code: ReturnCode::Accepted,
            }),
        );
    }

    #[test]
    fn reserved_return_code() {
        assert_eq!(
            decode_err(&[0x07, 0x0B, 0x00, 0x2A, 0x00, 0x01, 0x09]),
            DecodeError::ReservedReturnCode(0x09)
        );
    }

    #[test]
    fn trailing_bytes() {
        assert_eq!(
            decode_err(&[0x08, 0x0B, 0x00, 0x2A, 0x00, 0x01, 0x00, 0x00]),
            DecodeError::TrailingBytes {
                msg_type: MsgType::Regack
            }
        );
    }
}
