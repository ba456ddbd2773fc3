//! CONNECT (§5.4.4, Table 9): `Flags(1) ProtocolId(1) Duration(2) ClientId(n)`.
//!
//! Only Will and CleanSession of Flags are used; the other bits are ignored on decode and written
//! as 0. ProtocolId is kept raw so the gateway (not the codec) answers a foreign one. The ClientId
//! must be non-empty UTF-8; the spec's 23-character limit is policy and is left to the gateway.
//! Owns: CONNECT's variable part. Must never: enforce policy (ClientId length, ProtocolId) or
//! panic on input.

use bytes::{BufMut, BytesMut};

use crate::codec::cursor::Reader;
use crate::codec::{Connect, DecodeError, EncodeError, Flags};

pub(super) fn decode_body(r: &mut Reader) -> Result<Connect, DecodeError> {
    let flags = Flags(r.u8("Flags")?);
    let protocol_id = r.u8("ProtocolId")?;
    let duration = r.u16("Duration")?;
    if r.is_empty() {
        return Err(DecodeError::EmptyClientId);
    }
    let client_id = r.rest_utf8("ClientId")?;
    Ok(Connect {
        will: flags.will(),
        clean_session: flags.clean_session(),
        protocol_id,
        duration,
        client_id,
    })
}

pub(super) fn validate(c: &Connect) -> Result<(), EncodeError> {
    if c.client_id.is_empty() {
        return Err(EncodeError::EmptyClientId);
    }
    Ok(())
}

pub(super) fn body_len(c: &Connect) -> usize {
    4 + c.client_id.len()
}

pub(super) fn encode_body(c: &Connect, buf: &mut BytesMut) {
    let flags = Flags::default()
        .with_will(c.will)
        .with_clean_session(c.clean_session);
    buf.put_u8(flags.bits());
    buf.put_u8(c.protocol_id);
    buf.put_u16(c.duration);
    buf.extend_from_slice(c.client_id.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::super::{assert_vector, decode_err, decode_message};
    use crate::codec::{Connect, DecodeError, EncodeError, Message, PROTOCOL_ID_V1_2};
    use bytes::Bytes;

    fn connect(will: bool, clean_session: bool, client_id: &str) -> Message {
        Message::Connect(Connect {
            will,
            clean_session,
            protocol_id: PROTOCOL_ID_V1_2,
            duration: 60,
            client_id: client_id.to_owned(),
        })
    }

    #[test]
    fn table_9_vector() {
        // Will=1 (0x08), CleanSession=1 (0x04), ProtocolId 0x01, keep-alive 60 s, "dev1".
        assert_vector(
            &[0x0A, 0x04, 0x0C, 0x01, 0x00, 0x3C, b'd', b'e', b'v', b'1'],
            connect(true, true, "dev1"),
        );
        assert_vector(
            &[0x07, 0x04, 0x00, 0x01, 0x00, 0x3C, b'x'],
            connect(false, false, "x"),
        );
    }

    #[test]
    fn unused_flag_bits_are_ignored() {
        // DUP, QoS, Retain and TopicIdType set: all ignored.
        let got = decode_message(Bytes::from_static(&[
            0x07, 0x04, 0xF7, 0x01, 0x00, 0x3C, b'x',
        ]));
        assert_eq!(got, Ok(connect(false, true, "x")));
    }

    #[test]
    fn foreign_protocol_id_is_kept() {
        let got = decode_message(Bytes::from_static(&[
            0x07, 0x04, 0x00, 0x02, 0x00, 0x3C, b'x',
        ]));
        let Ok(Message::Connect(c)) = got else {
            panic!("{got:?}")
        };
        assert_eq!(c.protocol_id, 0x02);
    }

    #[test]
    fn client_id_longer_than_23_is_accepted() {
        let id = "a".repeat(64);
        let mut bytes = vec![6 + 64, 0x04, 0x04, 0x01, 0x00, 0x3C];
        bytes.extend_from_slice(id.as_bytes());
        assert_vector(&bytes, connect(false, true, &id));
    }

    #[test]
    fn empty_client_id() {
        assert_eq!(
            decode_err(&[0x06, 0x04, 0x04, 0x01, 0x00, 0x3C]),
            DecodeError::EmptyClientId
        );
        assert_eq!(
            connect(false, true, "").to_bytes(),
            Err(EncodeError::EmptyClientId)
        );
    }

    #[test]
    fn invalid_utf8_client_id() {
        assert_eq!(
            decode_err(&[0x07, 0x04, 0x04, 0x01, 0x00, 0x3C, 0xFF]),
            DecodeError::InvalidUtf8 { field: "ClientId" }
        );
    }

    #[test]
    fn truncated_duration() {
        assert_eq!(
            decode_err(&[0x05, 0x04, 0x04, 0x01, 0x00]),
            DecodeError::Truncated { field: "Duration" }
        );
    }
}
