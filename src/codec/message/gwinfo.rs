//! GWINFO (§5.4.3, Table 8): `GwId(1) [GwAdd(n)]`. GwAdd is only sent when a client answers for a
//! gateway; it is opaque (its format depends on the network) and runs to the end of the message.
//! Owns: GWINFO's variable part. Must never: interpret GwAdd or panic on input.

use bytes::{Bytes, BytesMut};

use crate::codec::cursor::Reader;
use crate::codec::{DecodeError, EncodeError, Message};

pub(super) fn decode_body(r: &mut Reader) -> Result<Message, DecodeError> {
    let gw_id = r.u8("GwId")?;
    let rest = r.rest();
    // No octets after GwId means "sent by a gateway": no GwAdd at all.
    let gw_add = if rest.is_empty() { None } else { Some(rest) };
    Ok(Message::GwInfo { gw_id, gw_add })
}

/// `Some(empty)` has no wire form distinct from `None`, so it is refused rather than altered.
pub(super) fn validate(gw_add: Option<&Bytes>) -> Result<(), EncodeError> {
    match gw_add {
        Some(add) if add.is_empty() => Err(EncodeError::EmptyGwAdd),
        _ => Ok(()),
    }
}

pub(super) fn body_len(gw_add: Option<&Bytes>) -> usize {
    1 + gw_add.map_or(0, Bytes::len)
}

pub(super) fn encode_body(gw_id: u8, gw_add: Option<&Bytes>, buf: &mut BytesMut) {
    buf.extend_from_slice(&[gw_id]);
    if let Some(add) = gw_add {
        buf.extend_from_slice(add);
    }
}

#[cfg(test)]
mod tests {
    use super::super::{assert_vector, decode_err, decode_message};
    use crate::codec::{DecodeError, EncodeError, Message};
    use bytes::Bytes;

    #[test]
    fn table_8_vector_from_gateway() {
        assert_vector(
            &[0x03, 0x02, 0x05],
            Message::GwInfo {
                gw_id: 5,
                gw_add: None,
            },
        );
    }

    #[test]
    fn table_8_vector_from_client_with_gw_add() {
        // A 2-octet ZigBee network address as GwAdd.
        assert_vector(
            &[0x05, 0x02, 0x05, 0x12, 0x34],
            Message::GwInfo {
                gw_id: 5,
                gw_add: Some(Bytes::from_static(&[0x12, 0x34])),
            },
        );
    }

    #[test]
    fn gw_add_is_a_zero_copy_slice() {
        let frame = Bytes::from_static(&[0x05, 0x02, 0x05, 0x12, 0x34]);
        let Ok(Message::GwInfo {
            gw_add: Some(add), ..
        }) = decode_message(frame.clone())
        else {
            panic!("not a GWINFO with GwAdd");
        };
        assert_eq!(add.as_ptr(), frame[3..].as_ptr());
    }

    #[test]
    fn truncated_gw_id() {
        assert_eq!(
            decode_err(&[0x02, 0x02]),
            DecodeError::Truncated { field: "GwId" }
        );
    }

    #[test]
    fn empty_gw_add_is_refused_on_encode() {
        let msg = Message::GwInfo {
            gw_id: 1,
            gw_add: Some(Bytes::new()),
        };
        assert_eq!(msg.to_bytes(), Err(EncodeError::EmptyGwAdd));
    }
}
