//! WILLMSG (§5.4.9, Table 13) and WILLMSGUPD (§5.4.23, Table 26): `WillMsg(n)`, opaque octets
//! to the end of the message (may be empty). Zero-copy.
//! Owns: these kinds' WillMsg body. Must never: interpret or copy the octets.

use bytes::{Bytes, BytesMut};

use crate::codec::cursor::Reader;

pub(super) fn decode_body(r: &mut Reader) -> Bytes {
    r.rest()
}

pub(super) fn body_len(msg: &Bytes) -> usize {
    msg.len()
}

pub(super) fn encode_body(msg: &Bytes, buf: &mut BytesMut) {
    buf.extend_from_slice(msg);
}

#[cfg(test)]
mod tests {
    use super::super::{assert_vector, decode_message};
    use crate::codec::Message;
    use bytes::Bytes;

    #[test]
    fn table_13_and_26_vectors() {
        assert_vector(
            &[0x06, 0x09, b'g', b'o', b'n', b'e'],
            Message::WillMsg {
                msg: Bytes::from_static(b"gone"),
            },
        );
        assert_vector(
            &[0x03, 0x1C, 0x00],
            Message::WillMsgUpd {
                msg: Bytes::from_static(&[0]),
            },
        );
        assert_vector(&[0x02, 0x09], Message::WillMsg { msg: Bytes::new() });
    }

    #[test]
    fn will_msg_is_a_zero_copy_slice() {
        let frame = Bytes::from_static(&[0x04, 0x09, 0xAA, 0xBB]);
        let Ok(Message::WillMsg { msg }) = decode_message(frame.clone()) else {
            panic!()
        };
        assert_eq!(msg.as_ptr(), frame[2..].as_ptr());
    }
}
