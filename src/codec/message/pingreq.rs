//! PINGREQ (§5.4.19, Table 22): `[ClientId(n)]`. Any octets after MsgType are the ClientId of a
//! sleeping client waking up; none means an ordinary keep-alive ping.
//! Owns: PINGREQ's optional ClientId. Must never: panic on input or copy the ClientId.

use bytes::BytesMut;

use crate::codec::cursor::Reader;
use crate::codec::{DecodeError, EncodeError};

pub(super) fn decode_body(r: &mut Reader) -> Result<Option<String>, DecodeError> {
    if r.is_empty() {
        return Ok(None);
    }
    r.rest_utf8("ClientId").map(Some)
}

/// `Some("")` would go out as a plain ping and come back as `None`.
pub(super) fn validate(client_id: Option<&str>) -> Result<(), EncodeError> {
    match client_id {
        Some("") => Err(EncodeError::EmptyClientId),
        _ => Ok(()),
    }
}

pub(super) fn body_len(client_id: Option<&str>) -> usize {
    client_id.map_or(0, str::len)
}

pub(super) fn encode_body(client_id: Option<&str>, buf: &mut BytesMut) {
    if let Some(id) = client_id {
        buf.extend_from_slice(id.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::super::{assert_vector, decode_err};
    use crate::codec::{DecodeError, EncodeError, Message};

    #[test]
    fn table_22_vectors() {
        assert_vector(&[0x02, 0x16], Message::PingReq { client_id: None });
        assert_vector(
            &[0x05, 0x16, b'd', b'e', b'v'],
            Message::PingReq {
                client_id: Some("dev".into()),
            },
        );
    }

    #[test]
    fn invalid_utf8_client_id() {
        assert_eq!(
            decode_err(&[0x03, 0x16, 0xFF]),
            DecodeError::InvalidUtf8 { field: "ClientId" }
        );
    }

    #[test]
    fn empty_client_id_is_refused_on_encode() {
        let msg = Message::PingReq {
            client_id: Some(String::new()),
        };
        assert_eq!(msg.to_bytes(), Err(EncodeError::EmptyClientId));
    }
}
