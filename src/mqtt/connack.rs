//! CONNACK (§3.2): acknowledge flags (only Session Present, §3.2.2.2) and a return code.
//!
//! Owns: the two-byte CONNACK body both ways. Must never: accept reserved acknowledge-flag
//! bits or a return code outside Table 3.1.

use bytes::{BufMut, BytesMut};

use super::error::DecodeError;
use super::packet::{ConnectReturnCode, Packet};
use super::reader::Reader;

/// Session Present; the other seven bits are reserved (§3.2.2.1).
const SESSION_PRESENT: u8 = 0x01;

pub(super) fn decode_body(r: &mut Reader) -> Result<Packet, DecodeError> {
    let ack_flags = r.u8()?;
    if ack_flags & !SESSION_PRESENT != 0 {
        return Err(DecodeError::InvalidConnAckFlags(ack_flags));
    }
    Ok(Packet::ConnAck {
        session_present: ack_flags & SESSION_PRESENT != 0,
        code: ConnectReturnCode::try_from(r.u8()?)?,
    })
}

pub(super) fn body_len() -> usize {
    2
}

pub(super) fn encode_body(session_present: bool, code: ConnectReturnCode, buf: &mut BytesMut) {
    buf.put_u8(u8::from(session_present));
    buf.put_u8(code.into());
}

#[cfg(test)]
mod tests {
    use crate::mqtt::test_util::{decode_all, encode};
    use crate::mqtt::{ConnectReturnCode, DecodeError, Packet};

    #[test]
    fn connack_vector() {
        let packet = Packet::ConnAck {
            session_present: true,
            code: ConnectReturnCode::Accepted,
        };
        assert_eq!(encode(&packet), vec![0x20, 0x02, 0x01, 0x00]);
        let packet = Packet::ConnAck {
            session_present: false,
            code: ConnectReturnCode::NotAuthorized,
        };
        assert_eq!(encode(&packet), vec![0x20, 0x02, 0x00, 0x05]);
    }

    #[test]
    fn invalid_connack() {
        assert_eq!(
            decode_all(b"\x20\x02\x02\x00"),
            Err(DecodeError::InvalidConnAckFlags(2))
        );
        assert_eq!(
            decode_all(b"\x20\x02\x00\x06"),
            Err(DecodeError::InvalidReturnCode(6))
        );
    }
}
