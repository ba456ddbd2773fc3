//! SUBSCRIBE (§3.8): packet identifier, then one or more (topic filter, requested QoS) pairs.
//!
//! Owns: the SUBSCRIBE body both ways. Must never: accept or write an empty list
//! ([MQTT-3.8.3-3]), an invalid filter, or a requested-QoS byte with reserved bits set
//! ([MQTT-3.8.3-4]).

use bytes::{BufMut, BytesMut};

use super::error::{DecodeError, EncodeError};
use super::field::{check_packet_id, filter_len, put_string};
use super::header::kind;
use super::packet::{Packet, QoS};
use super::reader::Reader;

pub(super) fn decode_body(r: &mut Reader) -> Result<Packet, DecodeError> {
    let packet_id = r.packet_id()?;
    let mut filters = Vec::new();
    while !r.is_empty() {
        let filter = r.topic_filter()?;
        let qos = QoS::try_from(r.u8()?)?;
        filters.push((filter, qos));
    }
    if filters.is_empty() {
        return Err(DecodeError::EmptyPayload {
            packet_type: kind::SUBSCRIBE,
        });
    }
    Ok(Packet::Subscribe { packet_id, filters })
}

/// Validates the fields and returns the Remaining Length.
pub(super) fn body_len(packet_id: u16, filters: &[(String, QoS)]) -> Result<usize, EncodeError> {
    check_packet_id(packet_id)?;
    if filters.is_empty() {
        return Err(EncodeError::EmptyPayload);
    }
    let mut len = 2;
    for (filter, _qos) in filters {
        len += filter_len(filter)? + 1;
    }
    Ok(len)
}

pub(super) fn encode_body(
    packet_id: u16,
    filters: &[(String, QoS)],
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    buf.put_u16(packet_id);
    for (filter, qos) in filters {
        put_string(buf, filter)?;
        buf.put_u8((*qos).into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::mqtt::test_util::encode;
    use crate::mqtt::{Packet, QoS};

    #[test]
    fn subscribe_vector() {
        let packet = Packet::Subscribe {
            packet_id: 1,
            filters: vec![
                ("a/+".into(), QoS::AtLeastOnce),
                ("#".into(), QoS::AtMostOnce),
            ],
        };
        assert_eq!(
            encode(&packet),
            b"\x82\x0c\x00\x01\x00\x03a/+\x01\x00\x01#\x00".to_vec()
        );
    }
}
