//! SEARCHGW (§5.4.2, Table 7): `Radius(1)`.
//! Owns: SEARCHGW's variable part. Must never: panic on input or read past the message.

use bytes::{BufMut, BytesMut};

use crate::codec::cursor::Reader;
use crate::codec::{DecodeError, Message};

pub(super) fn decode_body(r: &mut Reader) -> Result<Message, DecodeError> {
    Ok(Message::SearchGw {
        radius: r.u8("Radius")?,
    })
}

pub(super) fn body_len() -> usize {
    1
}

pub(super) fn encode_body(radius: u8, buf: &mut BytesMut) {
    buf.put_u8(radius);
}

#[cfg(test)]
mod tests {
    use super::super::{assert_vector, decode_err};
    use crate::codec::{DecodeError, Message, MsgType};

    #[test]
    fn table_7_vector() {
        assert_vector(&[0x03, 0x01, 0x00], Message::SearchGw { radius: 0 });
        assert_vector(&[0x03, 0x01, 0x02], Message::SearchGw { radius: 2 });
    }

    #[test]
    fn truncated_radius() {
        assert_eq!(
            decode_err(&[0x02, 0x01]),
            DecodeError::Truncated { field: "Radius" }
        );
    }

    #[test]
    fn trailing_bytes() {
        assert_eq!(
            decode_err(&[0x04, 0x01, 0x00, 0x00]),
            DecodeError::TrailingBytes {
                msg_type: MsgType::SearchGw
            }
        );
    }
}
