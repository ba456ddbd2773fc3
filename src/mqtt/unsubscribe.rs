//! UNSUBSCRIBE (§3.10): packet identifier, then one or more topic filters.
//!
//! Owns: the UNSUBSCRIBE body both ways. Must never: accept or write an empty list
//! ([MQTT-3.10.3-2]) or an invalid filter.

use bytes::{BufMut, BytesMut};

use super::error::{DecodeError, EncodeError};
use super::field::{check_packet_id, filter_len, put_string};
use super::header::kind;
use super::packet::Packet;
use super::reader::Reader;

pub(super) fn decode_body(r: &mut Reader) -> Result<Packet, DecodeError> {
    let packet_id = r.packet_id()?;
    let mut filters = Vec::new();
    while !r.is_empty() {
        filters.push(r.topic_filter()?);
    }
    if filters.is_empty() {
        return Err(DecodeError::EmptyPayload {
            packet_type: kind::UNSUBSCRIBE,
        });
    }
    Ok(Packet::Unsubscribe { packet_id, filters })
}

/// Validates the fields and returns the Remaining Length.
pub(super) fn body_len(packet_id: u16, filters: &[String]) -> Result<usize, EncodeError> {
    check_packet_id(packet_id)?;
    if filters.is_empty() {
        return Err(EncodeError::EmptyPayload);
    }
    let mut len = 2;
    for filter in filters {
        len += filter_len(filter)?;
    }
    Ok(len)
}

pub(super) fn encode_body(
    packet_id: u16,
    filters: &[String],
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    buf.put_u16(packet_id);
    for filter in filters {
        put_string(buf, filter)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::mqtt::test_util::encode;
    use crate::mqtt::Packet;

    #[test]
    fn unsubscribe_vector() {
        let packet = Packet::Unsubscribe {
            packet_id: 2,
            filters: vec!["a/+".into(), "b".into()],
        };
        assert_eq!(
            encode(&packet),
            b"\xa2\x0a\x00\x02\x00\x03a/+\x00\x01b".to_vec()
        );
    }
}
