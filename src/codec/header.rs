//! The message header of spec §5.2: Length (1 or 3 octets) and MsgType, plus the code tables
//! ([`MsgType`], [`ReturnCode`]) that map single octets to enums.
//!
//! Owns: reading and writing Length/MsgType and choosing the Length form. Must never: look past
//! the header, or trust the Length field before comparing it with the octets actually present.

use bytes::{BufMut, BytesMut};

use super::{DecodeError, EncodeError, MsgType, ReturnCode};

/// First Length octet announcing the 3-octet form.
pub const LONG_LENGTH_MARKER: u8 = 0x01;
/// Largest total a 1-octet Length can carry.
pub const MAX_SHORT_TOTAL: usize = 255;
/// Largest total the 3-octet Length can carry.
pub const MAX_TOTAL: usize = 65535;
/// Header size with the 1-octet Length (Length + MsgType).
pub const SHORT_HEADER_LEN: usize = 2;
/// Header size with the 3-octet Length (0x01, total hi, total lo, MsgType).
pub const LONG_HEADER_LEN: usize = 4;

/// A parsed header. `msg_type` stays raw so the caller decides how to treat reserved codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Total message length as declared by the Length field (header included).
    pub declared_len: usize,
    /// 2 or 4: where the variable part starts.
    pub header_len: usize,
    pub msg_type: u8,
}

/// Reads Length and MsgType from the front of `frame`. Does not compare `declared_len` with
/// `frame.len()`; the caller knows whether trailing octets are allowed.
pub fn parse(frame: &[u8]) -> Result<Header, DecodeError> {
    let first = *frame.first().ok_or(DecodeError::Empty)?;
    if first == LONG_LENGTH_MARKER {
        let (hi, lo) = match (frame.get(1), frame.get(2)) {
            (Some(hi), Some(lo)) => (*hi, *lo),
            _ => return Err(DecodeError::Truncated { field: "Length" }),
        };
        let declared_len = usize::from(u16::from_be_bytes([hi, lo]));
        if declared_len < LONG_HEADER_LEN {
            return Err(DecodeError::LengthTooSmall {
                declared: declared_len,
            });
        }
        let msg_type = *frame
            .get(3)
            .ok_or(DecodeError::Truncated { field: "MsgType" })?;
        Ok(Header {
            declared_len,
            header_len: LONG_HEADER_LEN,
            msg_type,
        })
    } else {
        // 0x01 is the long-form marker, so the only too-small 1-octet value left is 0.
        if first == 0 {
            return Err(DecodeError::LengthTooSmall { declared: 0 });
        }
        let msg_type = *frame
            .get(1)
            .ok_or(DecodeError::Truncated { field: "MsgType" })?;
        Ok(Header {
            declared_len: usize::from(first),
            header_len: SHORT_HEADER_LEN,
            msg_type,
        })
    }
}

/// Total encoded length for a variable part of `body_len` octets, using the 1-octet Length
/// whenever it fits (the spec's preferred form) and the 3-octet one otherwise.
pub fn total_len(body_len: usize) -> usize {
    let short = body_len.saturating_add(SHORT_HEADER_LEN);
    if short <= MAX_SHORT_TOTAL {
        short
    } else {
        body_len.saturating_add(LONG_HEADER_LEN)
    }
}

/// Writes the header for a message of `total` octets (as returned by [`total_len`]).
pub fn put(buf: &mut BytesMut, total: usize, msg_type: MsgType) -> Result<(), EncodeError> {
    if total <= MAX_SHORT_TOTAL {
        // total >= 2 always: it includes the header itself.
        buf.put_u8(total as u8);
    } else {
        let long = u16::try_from(total).map_err(|_| EncodeError::TooLong { len: total })?;
        buf.put_u8(LONG_LENGTH_MARKER);
        buf.put_u16(long);
    }
    buf.put_u8(msg_type as u8);
    Ok(())
}

impl TryFrom<u8> for MsgType {
    type Error = DecodeError;

    fn try_from(code: u8) -> Result<Self, DecodeError> {
        use MsgType::*;
        Ok(match code {
            0x00 => Advertise,
            0x01 => SearchGw,
            0x02 => GwInfo,
            0x04 => Connect,
            0x05 => Connack,
            0x06 => WillTopicReq,
            0x07 => WillTopic,
            0x08 => WillMsgReq,
            0x09 => WillMsg,
            0x0A => Register,
            0x0B => Regack,
            0x0C => Publish,
            0x0D => Puback,
            0x0E => Pubcomp,
            0x0F => Pubrec,
            0x10 => Pubrel,
            0x12 => Subscribe,
            0x13 => Suback,
            0x14 => Unsubscribe,
            0x15 => Unsuback,
            0x16 => PingReq,
            0x17 => PingResp,
            0x18 => Disconnect,
            0x1A => WillTopicUpd,
            0x1B => WillTopicResp,
            0x1C => WillMsgUpd,
            0x1D => WillMsgResp,
            0xFE => Encapsulated,
            other => return Err(DecodeError::ReservedMsgType(other)),
        })
    }
}

impl From<MsgType> for u8 {
    fn from(t: MsgType) -> u8 {
        t as u8
    }
}

impl TryFrom<u8> for ReturnCode {
    type Error = DecodeError;

    fn try_from(code: u8) -> Result<Self, DecodeError> {
        Ok(match code {
            0x00 => ReturnCode::Accepted,
            0x01 => ReturnCode::Congestion,
            0x02 => ReturnCode::InvalidTopicId,
            0x03 => ReturnCode::NotSupported,
            other => return Err(DecodeError::ReservedReturnCode(other)),
        })
    }
}

impl From<ReturnCode> for u8 {
    fn from(rc: ReturnCode) -> u8 {
        rc as u8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msg_type_table_3_round_trips_and_reserved_codes_fail() {
        let mut known = 0;
        for code in 0..=255u8 {
            match MsgType::try_from(code) {
                Ok(t) => {
                    known += 1;
                    assert_eq!(u8::from(t), code);
                }
                Err(e) => assert_eq!(e, DecodeError::ReservedMsgType(code)),
            }
        }
        assert_eq!(known, 28);
    }

    #[test]
    fn return_code_table_5() {
        for code in 0..4u8 {
            assert_eq!(ReturnCode::try_from(code).map(u8::from), Ok(code));
        }
        assert_eq!(
            ReturnCode::try_from(4),
            Err(DecodeError::ReservedReturnCode(4))
        );
    }

    #[test]
    fn parses_both_length_forms() {
        assert_eq!(
            parse(&[0x03, 0x05, 0x00]),
            Ok(Header {
                declared_len: 3,
                header_len: 2,
                msg_type: 0x05
            })
        );
        assert_eq!(
            parse(&[0x01, 0x01, 0x00, 0x0C]),
            Ok(Header {
                declared_len: 256,
                header_len: 4,
                msg_type: 0x0C
            })
        );
    }

    #[test]
    fn total_len_switches_form_at_255() {
        assert_eq!(total_len(253), 255);
        assert_eq!(total_len(254), 258);
    }

    #[test]
    fn put_writes_long_form_above_255() {
        let mut buf = BytesMut::new();
        put(&mut buf, 300, MsgType::Publish).unwrap();
        assert_eq!(&buf[..], &[0x01, 0x01, 0x2C, 0x0C]);
        assert_eq!(
            put(&mut buf, 65536, MsgType::Publish),
            Err(EncodeError::TooLong { len: 65536 })
        );
    }
}
