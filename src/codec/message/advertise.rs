//! ADVERTISE (§5.4.1, Table 6): `GwId(1) Duration(2)`.
//! Owns: ADVERTISE's variable part. Must never: panic on input or read past the message.

use bytes::{BufMut, BytesMut};

use crate::codec::cursor::Reader;
use crate::codec::{DecodeError, Message};

pub(super) fn decode_body(r: &mut Reader) -> Result<Message, DecodeError> {
    let gw_id = r.u8("GwId")?;
    let duration = r.u16("Duration")?;
    Ok(Message::Advertise { gw_id, duration })
}

pub(super) fn body_len() -> usize {
    3
}

pub(super) fn encode_body(gw_id: u8, duration: u16, buf: &mut BytesMut) {
    buf.put_u8(gw_id);
    buf.put_u16(duration);
}

#[cfg(test)]
mod tests {
    use super::super::{assert_vector, decode_err};
    use crate::codec::{DecodeError, Message, MsgType};

    #[test]
    fn table_6_vector() {
        // GwId 7, next ADVERTISE in 900 s (0x0384).
        assert_vector(
            &[0x05, 0x00, 0x07, 0x03, 0x84],
            Message::Advertise {
                gw_id: 7,
                duration: 900,
            },
        );
    }

    #[test]
    fn truncated_duration() {
        assert_eq!(
            decode_err(&[0x04, 0x00, 0x07, 0x03]),
            DecodeError::Truncated { field: "Duration" }
        );
    }

    #[test]
    fn trailing_bytes() {
        assert_eq!(
            decode_err(&[0x06, 0x00, 0x07, 0x03, 0x84, 0x00]),
            DecodeError::TrailingBytes {
                msg_type: MsgType::Advertise
            }
        );
    }
}
