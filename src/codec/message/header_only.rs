//! WILLTOPICREQ (§5.4.6), WILLMSGREQ (§5.4.8) and PINGRESP (§5.4.20): header only, no variable
//! part. Decoding needs no code beyond the dispatcher's trailing-octet check.
//! Owns: the zero-length bodies of these kinds. Must never: accept a variable part.

pub(super) fn body_len() -> usize {
    0
}

#[cfg(test)]
mod tests {
    use super::super::{assert_vector, decode_err};
    use crate::codec::{DecodeError, Message, MsgType};

    #[test]
    fn table_11_and_23_vectors() {
        assert_vector(&[0x02, 0x06], Message::WillTopicReq);
        assert_vector(&[0x02, 0x08], Message::WillMsgReq);
        assert_vector(&[0x02, 0x17], Message::PingResp);
    }

    #[test]
    fn long_length_form_is_accepted() {
        assert_eq!(
            super::super::decode_message(bytes::Bytes::from_static(&[0x01, 0x00, 0x04, 0x17])),
            Ok(Message::PingResp)
        );
    }

    #[test]
    fn trailing_bytes() {
        assert_eq!(
            decode_err(&[0x03, 0x17, 0x00]),
            DecodeError::TrailingBytes {
                msg_type: MsgType::PingResp
            }
        );
        assert_eq!(
            decode_err(&[0x03, 0x06, 0x00]),
            DecodeError::TrailingBytes {
                msg_type: MsgType::WillTopicReq
            }
        );
    }
}
