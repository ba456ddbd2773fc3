//! SUBACK (§3.9): packet identifier, then one return code per requested filter.
//!
//! Owns: the SUBACK body both ways and the return-code byte of [`SubackCode`] (granted QoS 0-2,
//! or 0x80 for failure). Must never: accept or write an empty list, or any other code byte.

use bytes::{BufMut, BytesMut};

use super::error::{DecodeError, EncodeError};
use super::field::check_packet_id;
use super::header::kind;
use super::packet::{Packet, QoS, SubackCode};
use super::reader::Reader;

impl SubackCode {
    pub(crate) const FAILURE: u8 = 0x80;

    pub(crate) fn to_byte(self) -> u8 {
        match self {
            SubackCode::Granted(qos) => qos.into(),
            SubackCode::Failure => Self::FAILURE,
        }
    }

    pub(crate) fn from_byte(byte: u8) -> Result<Self, DecodeError> {
        match byte {
            Self::FAILURE => Ok(SubackCode::Failure),
            0..=2 => QoS::try_from(byte).map(SubackCode::Granted),
            other => Err(DecodeError::InvalidSubackCode(other)),
        }
    }
}

pub(super) fn decode_body(r: &mut Reader) -> Result<Packet, DecodeError> {
    let packet_id = r.packet_id()?;
    let codes = r
        .rest()
        .iter()
        .map(|&b| SubackCode::from_byte(b))
        .collect::<Result<Vec<_>, _>>()?;
    if codes.is_empty() {
        return Err(DecodeError::EmptyPayload {
            packet_type: kind::SUBACK,
        });
    }
    Ok(Packet::SubAck { packet_id, codes })
}

/// Validates the fields and returns the Remaining Length.
pub(super) fn body_len(packet_id: u16, codes: &[SubackCode]) -> Result<usize, EncodeError> {
    check_packet_id(packet_id)?;
    if codes.is_empty() {
        return Err(EncodeError::EmptyPayload);
    }
    Ok(2 + codes.len())
}

pub(super) fn encode_body(packet_id: u16, codes: &[SubackCode], buf: &mut BytesMut) {
    buf.put_u16(packet_id);
    for code in codes {
        buf.put_u8(code.to_byte());
    }
}

#[cfg(test)]
mod tests {
    use crate::mqtt::test_util::{decode_all, encode};
    use crate::mqtt::{DecodeError, Packet, QoS, SubackCode};

    #[test]
    fn suback_vector() {
        let packet = Packet::SubAck {
            packet_id: 1,
            codes: vec![
                SubackCode::Granted(QoS::AtLeastOnce),
                SubackCode::Failure,
                SubackCode::Granted(QoS::ExactlyOnce),
            ],
        };
        assert_eq!(
            encode(&packet),
            vec![0x90, 0x05, 0x00, 0x01, 0x01, 0x80, 0x02]
        );
    }

    /// The requested-QoS byte of SUBSCRIBE and the return code of SUBACK.
    #[test]
    fn invalid_subscribe_and_suback_codes() {
        assert_eq!(
            decode_all(b"\x82\x06\x00\x01\x00\x01a\x03"),
            Err(DecodeError::InvalidQoS(3))
        );
        // Reserved upper bits of the requested QoS byte [MQTT-3.8.3-4]
        assert_eq!(
            decode_all(b"\x82\x06\x00\x01\x00\x01a\x41"),
            Err(DecodeError::InvalidQoS(0x41))
        );
        assert_eq!(
            decode_all(b"\x90\x03\x00\x01\x03"),
            Err(DecodeError::InvalidSubackCode(3))
        );
        assert_eq!(
            decode_all(b"\x90\x03\x00\x01\x81"),
            Err(DecodeError::InvalidSubackCode(0x81))
        );
    }
}
