//! DISCONNECT (§5.4.21, Table 24): `[Duration(2)]`. Exactly 0 or 2 octets after MsgType; a
//! Duration means the client asks to sleep. 1 octet is a truncated Duration, 3 or more are
//! trailing octets.
//! Owns: DISCONNECT's variable part. Must never: panic on input or accept a partial Duration.

use bytes::{BufMut, BytesMut};

use crate::codec::cursor::Reader;
use crate::codec::DecodeError;

pub(super) fn decode_body(r: &mut Reader) -> Result<Option<u16>, DecodeError> {
    if r.is_empty() {
        return Ok(None);
    }
    // Anything after Duration is caught by the dispatcher's trailing-octet check.
    r.u16("Duration").map(Some)
}

pub(super) fn body_len(duration: Option<u16>) -> usize {
    if duration.is_some() {
        2
    } else {
        0
    }
}

pub(super) fn encode_body(duration: Option<u16>, buf: &mut BytesMut) {
    if let Some(d) = duration {
        buf.put_u16(d);
    }
}

#[cfg(test)]
mod tests {
    use super::super::{assert_vector, decode_err};
    use crate::codec::{DecodeError, Message, MsgType};

    #[test]
    fn table_24_vectors() {
        assert_vector(&[0x02, 0x18], Message::Disconnect { duration: None });
        assert_vector(
            &[0x04, 0x18, 0x0E, 0x10],
            Message::Disconnect {
                duration: Some(3600),
            },
        );
    }

    #[test]
    fn truncated_duration() {
        assert_eq!(
            decode_err(&[0x03, 0x18, 0x0E]),
            DecodeError::Truncated { field: "Duration" }
        );
    }

    #[test]
    fn trailing_bytes() {
        assert_eq!(
            decode_err(&[0x05, 0x18, 0x0E, 0x10, 0x00]),
            DecodeError::TrailingBytes {
                msg_type: MsgType::Disconnect
            }
        );
    }
}
