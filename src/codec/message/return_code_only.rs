//! CONNACK (§5.4.5), WILLTOPICRESP (§5.4.24) and WILLMSGRESP (§5.4.25): `ReturnCode(1)`.
//! Owns: these kinds' ReturnCode body. Must never: panic on input or read past the message.

use bytes::{BufMut, BytesMut};

use crate::codec::cursor::Reader;
use crate::codec::{DecodeError, ReturnCode};

pub(super) fn decode_body(r: &mut Reader) -> Result<ReturnCode, DecodeError> {
    ReturnCode::try_from(r.u8("ReturnCode")?)
}

pub(super) fn body_len() -> usize {
    1
}

pub(super) fn encode_body(return_code: ReturnCode, buf: &mut BytesMut) {
    buf.put_u8(return_code.into());
}

#[cfg(test)]
mod tests {
    use super::super::{assert_vector, decode_err};
    use crate::codec::{DecodeError, Message, MsgType, ReturnCode};

    #[test]
    fn table_10_and_27_vectors() {
        assert_vector(
            &[0x03, 0x05, 0x00],
            Message::Connack {
                return_code: ReturnCode::Accepted,
            },
        );
        assert_vector(
            &[0x03, 0x05, 0x03],
            Message::Connack {
                return_code: ReturnCode::NotSupported,
            },
        );
        assert_vector(
            &[0x03, 0x1B, 0x01],
            Message::WillTopicResp {
                return_code: ReturnCode::Congestion,
            },
        );
        assert_vector(
            &[0x03, 0x1D, 0x02],
            Message::WillMsgResp {
                return_code: ReturnCode::InvalidTopicId,
            },
        );
    }

    #[test]
    fn reserved_return_code() {
        assert_eq!(
            decode_err(&[0x03, 0x05, 0x04]),
            DecodeError::ReservedReturnCode(0x04)
        );
        assert_eq!(
            decode_err(&[0x03, 0x1B, 0xFF]),
            DecodeError::ReservedReturnCode(0xFF)
        );
    }

    #[test]
    fn truncated_return_code() {
        assert_eq!(
            decode_err(&[0x02, 0x1D]),
            DecodeError::Truncated {
                field: "ReturnCode"
            }
        );
    }

    #[test]
    fn trailing_bytes() {
        assert_eq!(
            decode_err(&[0x04, 0x05, 0x00, 0x00]),
            DecodeError::TrailingBytes {
                msg_type: MsgType::Connack
            }
        );
    }
}
