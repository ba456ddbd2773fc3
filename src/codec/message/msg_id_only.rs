//! PUBREC, PUBREL, PUBCOMP (§5.4.14, Table 18) and UNSUBACK (§5.4.18, Table 21): `MsgId(2)`.
//! Owns: these kinds' MsgId body. Must never: panic on input or read past the message.

use bytes::{BufMut, BytesMut};

use crate::codec::cursor::Reader;
use crate::codec::DecodeError;

pub(super) fn decode_body(r: &mut Reader) -> Result<u16, DecodeError> {
    r.u16("MsgId")
}

pub(super) fn body_len() -> usize {
    2
}

pub(super) fn encode_body(msg_id: u16, buf: &mut BytesMut) {
    buf.put_u16(msg_id);
}

#[cfg(test)]
mod tests {
    use super::super::{assert_vector, decode_err};
    use crate::codec::{DecodeError, Message, MsgType};

    #[test]
    fn table_18_and_21_vectors() {
        // Note the spec's order: PUBCOMP 0x0E, PUBREC 0x0F, PUBREL 0x10.
        assert_vector(
            &[0x04, 0x0E, 0x12, 0x34],
            Message::Pubcomp { msg_id: 0x1234 },
        );
        assert_vector(
            &[0x04, 0x0F, 0x12, 0x34],
            Message::Pubrec { msg_id: 0x1234 },
        );
        assert_vector(
            &[0x04, 0x10, 0x12, 0x34],
            Message::Pubrel { msg_id: 0x1234 },
        );
        assert_vector(
            &[0x04, 0x15, 0xFF, 0xFF],
            Message::Unsuback { msg_id: 0xFFFF },
        );
    }

    #[test]
    fn truncated_msg_id() {
        assert_eq!(
            decode_err(&[0x03, 0x0F, 0x12]),
            DecodeError::Truncated { field: "MsgId" }
        );
    }

    #[test]
    fn trailing_bytes() {
        assert_eq!(
            decode_err(&[0x05, 0x10, 0x12, 0x34, 0x00]),
            DecodeError::TrailingBytes {
                msg_type: MsgType::Pubrel
            }
        );
    }
}
