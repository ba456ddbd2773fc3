//! SUBACK (§5.4.16, Table 20): `Flags(1) TopicId(2) MsgId(2) ReturnCode(1)`.
//!
//! Only QoS (the granted level) of Flags is used.
//! Owns: SUBACK's variable part. Must never: panic on input or write Flags bits other than QoS.

use bytes::{BufMut, BytesMut};

use crate::codec::cursor::Reader;
use crate::codec::{DecodeError, Flags, ReturnCode, Suback};

pub(super) fn decode_body(r: &mut Reader) -> Result<Suback, DecodeError> {
    let qos = Flags(r.u8("Flags")?).qos();
    let topic_id = r.u16("TopicId")?;
    let msg_id = r.u16("MsgId")?;
    let return_code = ReturnCode::try_from(r.u8("ReturnCode")?)?;
    Ok(Suback {
        qos,
        topic_id,
        msg_id,
        return_code,
    })
}

pub(super) fn body_len() -> usize {
    6
}

pub(super) fn encode_body(s: &Suback, buf: &mut BytesMut) {
    buf.put_u8(Flags::default().with_qos(s.qos).bits());
    buf.put_u16(s.topic_id);
    buf.put_u16(s.msg_id);
    buf.put_u8(s.return_code.into());
}

#[cfg(test)]
mod tests {
    use super::super::{assert_vector, decode_err, decode_message};
    use crate::codec::{DecodeError, Message, MsgType, QoS, ReturnCode, Suback};
    use bytes::Bytes;

    #[test]
    fn table_20_vector() {
        assert_vector(
            &[0x08, 0x13, 0x20, 0x00, 0x07, 0x00, 0x01, 0x00],
            Message::Suback(Suback {
                qos: QoS::AtLeastOnce,
                topic_id: 7,
                msg_id: 1,
                return_code: ReturnCode::Accepted,
            }),
        );
    }

    #[test]
    fn unused_flag_bits_are_ignored() {
        assert_eq!(
            decode_message(Bytes::from_static(&[
                0x08, 0x13, 0x9F, 0x00, 0x00, 0x00, 0x01, 0x03
            ])),
            Ok(Message::Suback(Suback {
                qos: QoS::AtMostOnce,
                topic_id: 0,
                msg_id: 1,
                return_code: ReturnCode::NotSupported,
            }))
        );
    }

    #[test]
    fn reserved_return_code() {
        assert_eq!(
            decode_err(&[0x08, 0x13, 0x20, 0x00, 0x07, 0x00, 0x01, 0x80]),
            DecodeError::ReservedReturnCode(0x80)
        );
    }

    #[test]
    fn trailing_bytes() {
        assert_eq!(
            decode_err(&[0x09, 0x13, 0x20, 0x00, 0x07, 0x00, 0x01, 0x00, 0x00]),
            DecodeError::TrailingBytes {
                msg_type: MsgType::Suback
            }
        );
    }
}
