//! PUBACK (§3.4), PUBREC (§3.5), PUBREL (§3.6), PUBCOMP (§3.7) and UNSUBACK (§3.11): a body of
//! exactly one packet identifier.
//!
//! Owns: that two-byte body both ways. Must never: accept or write a zero packet identifier;
//! which of the five kinds it is, and PUBREL's fixed flags, are the header's business.

use bytes::{BufMut, BytesMut};

use super::error::{DecodeError, EncodeError};
use super::field::check_packet_id;
use super::reader::Reader;

pub(super) fn decode_body(r: &mut Reader) -> Result<u16, DecodeError> {
    r.packet_id()
}

pub(super) fn body_len(packet_id: u16) -> Result<usize, EncodeError> {
    check_packet_id(packet_id)?;
    Ok(2)
}

pub(super) fn encode_body(packet_id: u16, buf: &mut BytesMut) {
    buf.put_u16(packet_id);
}

#[cfg(test)]
mod tests {
    use crate::mqtt::test_util::encode;
    use crate::mqtt::Packet;

    #[test]
    fn ack_vectors() {
        assert_eq!(
            encode(&Packet::PubAck { packet_id: 7 }),
            vec![0x40, 2, 0, 7]
        );
        assert_eq!(
            encode(&Packet::PubRec { packet_id: 7 }),
            vec![0x50, 2, 0, 7]
        );
        assert_eq!(
            encode(&Packet::PubRel { packet_id: 7 }),
            vec![0x62, 2, 0, 7]
        );
        assert_eq!(
            encode(&Packet::PubComp { packet_id: 7 }),
            vec![0x70, 2, 0, 7]
        );
        assert_eq!(
            encode(&Packet::UnsubAck { packet_id: 0x0102 }),
            vec![0xB0, 2, 1, 2]
        );
    }
}
