//! The fixed header of every MQTT 3.1.1 packet (§2.2): type nibble, flag nibble, Remaining
//! Length.
//!
//! Owns: the packet type numbers (Table 2.1), the flag rules of Table 2.2 and §3.3.1, and the
//! Remaining Length in both directions (§2.2.3, Table 2.4). Must never: look past the header,
//! report a header complete before its last Remaining Length byte, or accept a fifth length
//! byte.

use bytes::{BufMut, BytesMut};

use super::error::DecodeError;

/// The PUBLISH bits of the fixed-header flag nibble (§3.3.1).
pub(super) mod flag_bits {
    pub const DUP: u8 = 0b1000;
    pub const QOS_MASK: u8 = 0b0110;
    pub const QOS_SHIFT: u8 = 1;
    pub const RETAIN: u8 = 0b0001;
}

/// Control packet type numbers: the high nibble of the first byte (§2.2.1, Table 2.1).
pub(super) mod kind {
    pub const CONNECT: u8 = 1;
    pub const CONNACK: u8 = 2;
    pub const PUBLISH: u8 = 3;
    pub const PUBACK: u8 = 4;
    pub const PUBREC: u8 = 5;
    pub const PUBREL: u8 = 6;
    pub const PUBCOMP: u8 = 7;
    pub const SUBSCRIBE: u8 = 8;
    pub const SUBACK: u8 = 9;
    pub const UNSUBSCRIBE: u8 = 10;
    pub const UNSUBACK: u8 = 11;
    pub const PINGREQ: u8 = 12;
    pub const PINGRESP: u8 = 13;
    pub const DISCONNECT: u8 = 14;
}

/// Largest value the Remaining Length field can carry (§2.2.3).
pub const MAX_REMAINING_LENGTH: usize = 268_435_455;

/// The fixed header (§2.2): type nibble, flag nibble, Remaining Length, and its own size.
#[derive(Debug, Clone, Copy)]
pub(super) struct FixedHeader {
    pub(super) kind: u8,
    pub(super) flags: u8,
    pub(super) remaining: usize,
    /// Bytes taken by the fixed header itself: 2 to 5.
    pub(super) len: usize,
}

impl FixedHeader {
    /// `Ok(None)` while the header is incomplete. Type and flags are checked from the first byte.
    pub(super) fn parse(buf: &[u8]) -> Result<Option<Self>, DecodeError> {
        let Some(&first) = buf.first() else {
            return Ok(None);
        };
        let (kind, flags) = (first >> 4, first & 0x0F);
        check_flags(kind, flags)?;
        let mut remaining = 0usize;
        for i in 0..4 {
            let Some(&byte) = buf.get(1 + i) else {
                return Ok(None);
            };
            remaining |= usize::from(byte & 0x7F) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(Some(FixedHeader {
                    kind,
                    flags,
                    remaining,
                    len: 2 + i,
                }));
            }
        }
        Err(DecodeError::MalformedRemainingLength)
    }
}

/// The flag nibble every packet type but PUBLISH must carry (§2.2.2, Table 2.2).
pub(super) fn fixed_flags(packet_type: u8) -> u8 {
    match packet_type {
        kind::PUBREL | kind::SUBSCRIBE | kind::UNSUBSCRIBE => 0b0010,
        _ => 0,
    }
}

/// Fixed-header flag rules of §2.2.2, Table 2.2 and §3.3.1.
fn check_flags(packet_type: u8, flags: u8) -> Result<(), DecodeError> {
    match packet_type {
        0 | 15 => Err(DecodeError::ReservedPacketType(packet_type)),
        kind::PUBLISH => {
            let qos = (flags & flag_bits::QOS_MASK) >> flag_bits::QOS_SHIFT;
            let dup = flags & flag_bits::DUP != 0;
            if qos == 3 {
                Err(DecodeError::InvalidQoS(qos))
            } else if dup && qos == 0 {
                // [MQTT-3.3.1-2]
                Err(DecodeError::BadFlags { packet_type, flags })
            } else {
                Ok(())
            }
        }
        _ if flags == fixed_flags(packet_type) => Ok(()),
        _ => Err(DecodeError::BadFlags { packet_type, flags }),
    }
}

/// Bytes of the whole packet for a body of `remaining` bytes.
pub(super) fn total_len(remaining: usize) -> usize {
    1 + remaining_length_len(remaining) + remaining
}

/// Appends the fixed header; `remaining` is at most [`MAX_REMAINING_LENGTH`].
pub(super) fn put(buf: &mut BytesMut, packet_type: u8, flags: u8, remaining: usize) {
    buf.put_u8((packet_type << 4) | flags);
    put_remaining_length(buf, remaining);
}

/// Bytes of the Remaining Length field for `len` (§2.2.3, Table 2.4).
fn remaining_length_len(len: usize) -> usize {
    match len {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Variable-length encoding of §2.2.3; `len` is at most [`MAX_REMAINING_LENGTH`].
fn put_remaining_length(buf: &mut BytesMut, mut len: usize) {
    loop {
        // Masked to 7 bits, so the cast is lossless.
        let mut byte = (len & 0x7F) as u8;
        len >>= 7;
        if len > 0 {
            byte |= 0x80;
        }
        buf.put_u8(byte);
        if len == 0 {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::test_util::{decode_all, encode, publish0};

    #[test]
    fn remaining_length_boundaries_decode() {
        let cases: &[(&[u8], usize)] = &[
            (&[0x7F], 127),
            (&[0x80, 0x01], 128),
            (&[0xFF, 0x7F], 16_383),
            (&[0x80, 0x80, 0x01], 16_384),
            (&[0xFF, 0xFF, 0x7F], 2_097_151),
            (&[0x80, 0x80, 0x80, 0x01], 2_097_152),
            (&[0xFF, 0xFF, 0xFF, 0x7F], 268_435_455),
        ];
        for &(len_bytes, expected) in cases {
            let mut bytes = vec![0x30];
            bytes.extend_from_slice(len_bytes);
            let header = FixedHeader::parse(&bytes);
            let Ok(Some(header)) = header else {
                panic!("header {len_bytes:?}: {header:?}");
            };
            assert_eq!(header.remaining, expected);
            assert_eq!(header.len, 1 + len_bytes.len());
        }
    }

    #[test]
    fn malformed_remaining_length() {
        assert_eq!(
            decode_all(b"\x30\xff\xff\xff\xff\x7f"),
            Err(DecodeError::MalformedRemainingLength)
        );
        assert_eq!(
            decode_all(b"\x30\x80\x80\x80\x80"),
            Err(DecodeError::MalformedRemainingLength)
        );
        // Four continuation bytes seen is not yet an error with only three of them.
        assert_eq!(decode_all(b"\x30\x80\x80\x80"), Ok(None));
    }

    #[test]
    fn reserved_packet_types() {
        assert_eq!(
            decode_all(b"\x00\x00"),
            Err(DecodeError::ReservedPacketType(0))
        );
        assert_eq!(
            decode_all(b"\xf0\x00"),
            Err(DecodeError::ReservedPacketType(15))
        );
        // Detected from the first byte alone.
        assert_eq!(
            decode_all(b"\xf0"),
            Err(DecodeError::ReservedPacketType(15))
        );
    }

    #[test]
    fn bad_fixed_header_flags() {
        let cases: &[(&[u8], u8, u8)] = &[
            (b"\x11\x00", 1, 1),
            (b"\x28\x02\x00\x00", 2, 8),
            (b"\x41\x02\x00\x01", 4, 1),
            (b"\x52\x02\x00\x01", 5, 2),
            (b"\x60\x02\x00\x01", 6, 0),
            (b"\x63\x02\x00\x01", 6, 3),
            (b"\x72\x02\x00\x01", 7, 2),
            (b"\x80\x06\x00\x01\x00\x01a\x00", 8, 0),
            (b"\x92\x03\x00\x01\x00", 9, 2),
            (b"\xa0\x05\x00\x01\x00\x01a", 10, 0),
            (b"\xb1\x02\x00\x01", 11, 1),
            (b"\xc1\x00", 12, 1),
            (b"\xd2\x00", 13, 2),
            (b"\xe4\x00", 14, 4),
            // DUP on a QoS 0 publish [MQTT-3.3.1-2]
            (b"\x38\x03\x00\x01t", 3, 8),
        ];
        for &(bytes, packet_type, flags) in cases {
            assert_eq!(
                decode_all(bytes),
                Err(DecodeError::BadFlags { packet_type, flags }),
                "{bytes:02x?}"
            );
        }
    }

    #[test]
    fn publish_qos3_is_malformed() {
        assert_eq!(
            decode_all(b"\x36\x05\x00\x01t\x00\x01"),
            Err(DecodeError::InvalidQoS(3))
        );
    }

    #[test]
    fn remaining_length_boundaries_in_publish() {
        // Topic "t" takes 3 bytes of the Remaining Length; the payload fills the rest.
        let cases: &[(usize, &[u8])] = &[
            (127, &[0x7F]),
            (128, &[0x80, 0x01]),
            (16_383, &[0xFF, 0x7F]),
            (16_384, &[0x80, 0x80, 0x01]),
        ];
        for &(remaining, len_bytes) in cases {
            let bytes = encode(&publish0("t", vec![0xAB; remaining - 3]));
            assert_eq!(bytes.len(), 1 + len_bytes.len() + remaining);
            assert_eq!(bytes.first(), Some(&0x30));
            assert_eq!(
                bytes.get(1..1 + len_bytes.len()),
                Some(len_bytes),
                "{remaining}"
            );
            assert_eq!(
                bytes.get(1 + len_bytes.len()..4 + len_bytes.len()),
                Some(&b"\x00\x01t"[..])
            );
        }
    }

    #[test]
    fn remaining_length_encoding_table() {
        // §2.2.3, Table 2.4
        let cases: &[(usize, &[u8])] = &[
            (0, &[0x00]),
            (127, &[0x7F]),
            (128, &[0x80, 0x01]),
            (16_383, &[0xFF, 0x7F]),
            (16_384, &[0x80, 0x80, 0x01]),
            (2_097_151, &[0xFF, 0xFF, 0x7F]),
            (2_097_152, &[0x80, 0x80, 0x80, 0x01]),
            (268_435_455, &[0xFF, 0xFF, 0xFF, 0x7F]),
        ];
        for &(len, expected) in cases {
            let mut buf = BytesMut::new();
            put_remaining_length(&mut buf, len);
            assert_eq!(&buf[..], expected, "{len}");
            assert_eq!(remaining_length_len(len), expected.len(), "{len}");
        }
    }
}
