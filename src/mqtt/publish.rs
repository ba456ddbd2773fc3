//! PUBLISH (§3.3): DUP, QoS and RETAIN in the fixed-header flags; topic name, packet identifier
//! (QoS 1 and 2 only), then the payload to the end of the packet.
//!
//! Owns: packing the PUBLISH flags (their bit positions are in header.rs) and the body both
//! ways, and the rule that a packet identifier is present iff QoS > 0. The header checks the flag nibble (QoS 3, DUP on QoS 0) before the body
//! arrives. Must never: copy the payload on decode (it is a slice of the receive buffer), or
//! write a topic with wildcards.

use bytes::{BufMut, BytesMut};

use super::error::{DecodeError, EncodeError};
use super::field::{check_packet_id, put_string, topic_name_len};
use super::header::flag_bits;
use super::packet::{Publish, QoS};
use super::reader::Reader;

/// `flags` is the fixed header's low nibble, already checked by the header.
pub(super) fn decode_body(flags: u8, r: &mut Reader) -> Result<Publish, DecodeError> {
    let qos = QoS::try_from((flags & flag_bits::QOS_MASK) >> flag_bits::QOS_SHIFT)?;
    let topic = r.topic_name()?;
    let packet_id = match qos {
        QoS::AtMostOnce => None,
        QoS::AtLeastOnce | QoS::ExactlyOnce => Some(r.packet_id()?),
    };
    Ok(Publish {
        dup: flags & flag_bits::DUP != 0,
        qos,
        retain: flags & flag_bits::RETAIN != 0,
        topic,
        packet_id,
        payload: r.rest(),
    })
}

/// The fixed header's low nibble for `p`.
pub(super) fn header_flags(p: &Publish) -> u8 {
    let mut flags = u8::from(p.qos) << flag_bits::QOS_SHIFT;
    if p.dup {
        flags |= flag_bits::DUP;
    }
    if p.retain {
        flags |= flag_bits::RETAIN;
    }
    flags
}

/// Validates `p` and returns its Remaining Length.
pub(super) fn body_len(p: &Publish) -> Result<usize, EncodeError> {
    match (p.qos, p.packet_id) {
        (QoS::AtMostOnce, None) => {
            if p.dup {
                return Err(EncodeError::DupWithQoS0);
            }
        }
        (QoS::AtLeastOnce | QoS::ExactlyOnce, Some(id)) => check_packet_id(id)?,
        _ => return Err(EncodeError::PacketIdQoSMismatch),
    }
    let id_len = if p.packet_id.is_some() { 2 } else { 0 };
    Ok(topic_name_len(&p.topic)? + id_len + p.payload.len())
}

pub(super) fn encode_body(p: &Publish, buf: &mut BytesMut) -> Result<(), EncodeError> {
    put_string(buf, &p.topic)?;
    if let Some(id) = p.packet_id {
        buf.put_u16(id);
    }
    buf.put_slice(&p.payload);
    Ok(())
}

#[cfg(test)]
mod tests {
    use bytes::{Bytes, BytesMut};

    use crate::mqtt::test_util::{decode_all, encode, publish0, MAX};
    use crate::mqtt::{decode, EncodeError, Packet, Publish, QoS, MAX_REMAINING_LENGTH};

    #[test]
    fn decodes_publish_qos1_vector() {
        let expected = Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: true,
            topic: "a/b".into(),
            packet_id: Some(10),
            payload: Bytes::from_static(b"hi"),
        });
        assert_eq!(
            decode_all(b"\x33\x09\x00\x03a/b\x00\x0ahi"),
            Ok(Some(expected))
        );
    }

    #[test]
    fn publish_payload_is_zero_copy() {
        let mut buf = BytesMut::from(&b"\x30\x07\x00\x03a/bhi"[..]);
        let base = buf.as_ptr() as usize;
        let Ok(Some(Packet::Publish(p))) = decode(&mut buf, MAX) else {
            panic!("expected a publish");
        };
        assert_eq!(&p.payload[..], b"hi");
        assert_eq!(p.payload.as_ptr() as usize, base + 7);
    }

    #[test]
    fn publish_qos0_vector() {
        assert_eq!(
            encode(&publish0("a/b", b"hi".to_vec())),
            b"\x30\x07\x00\x03a/bhi".to_vec()
        );
    }

    #[test]
    fn publish_qos1_retain_vector() {
        let packet = Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: true,
            topic: "a/b".into(),
            packet_id: Some(10),
            payload: Bytes::from_static(b"hi"),
        });
        assert_eq!(encode(&packet), b"\x33\x09\x00\x03a/b\x00\x0ahi".to_vec());
    }

    #[test]
    fn publish_qos2_dup_vector() {
        let packet = Packet::Publish(Publish {
            dup: true,
            qos: QoS::ExactlyOnce,
            retain: false,
            topic: "t".into(),
            packet_id: Some(0x1234),
            payload: Bytes::new(),
        });
        assert_eq!(encode(&packet), b"\x3c\x05\x00\x01t\x12\x34".to_vec());
    }

    #[test]
    fn encode_rejects_remaining_length_over_limit() {
        let packet = publish0("t", vec![0; MAX_REMAINING_LENGTH - 2]);
        assert_eq!(
            packet.encoded_len(),
            Err(EncodeError::PacketTooLarge {
                size: MAX_REMAINING_LENGTH + 1
            })
        );
    }
}
