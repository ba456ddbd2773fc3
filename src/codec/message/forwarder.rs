//! Forwarder encapsulation (§5.5, Tables 28-29):
//! `Length(1) 0xFE Ctrl(1) WirelessNodeId(n)` followed by one ordinary MQTT-SN message.
//!
//! Length is always one octet and counts only up to the end of WirelessNodeId. The inner message
//! must fill the rest of the frame exactly (checked by its own Length). Encapsulations do not
//! nest. Ctrl is kept whole (reserved bits included) so a frame can be relayed unchanged; the
//! WirelessNodeId is opaque, possibly empty, and a zero-copy slice.
//! Owns: the encapsulation header. Must never: accept a nested encapsulation or copy the
//! WirelessNodeId.

use bytes::{BufMut, Bytes, BytesMut};

use crate::codec::header::{LONG_LENGTH_MARKER, MAX_SHORT_TOTAL};
use crate::codec::{DecodeError, Encapsulation, EncodeError, MsgType};

/// Length, MsgType, Ctrl.
const FIXED_LEN: usize = 3;

/// Whether `frame` starts with an encapsulation header. A leading 0x01 means a 3-octet Length,
/// which an encapsulation never has, so such a frame is treated as a plain message.
pub(super) fn is_encapsulated(frame: &[u8]) -> bool {
    frame.first() != Some(&LONG_LENGTH_MARKER)
        && frame.get(1) == Some(&(MsgType::Encapsulated as u8))
}

/// Splits an encapsulated frame into its header and the (still encoded) inner message.
pub(super) fn decode_header(mut frame: Bytes) -> Result<(Encapsulation, Bytes), DecodeError> {
    let declared = usize::from(*frame.first().ok_or(DecodeError::Empty)?);
    if declared < FIXED_LEN {
        return Err(DecodeError::LengthTooSmall { declared });
    }
    if declared > frame.len() {
        return Err(DecodeError::LengthMismatch {
            declared,
            actual: frame.len(),
        });
    }
    let ctrl = *frame
        .get(2)
        .ok_or(DecodeError::Truncated { field: "Ctrl" })?;
    // declared <= frame.len() was checked above, so both splits are in range.
    let mut outer = frame.split_to(declared);
    let wireless_node_id = outer.split_off(FIXED_LEN);
    if frame.is_empty() {
        return Err(DecodeError::Truncated {
            field: "encapsulated message",
        });
    }
    Ok((
        Encapsulation {
            ctrl,
            wireless_node_id,
        },
        frame,
    ))
}

pub(super) fn header_len(enc: &Encapsulation) -> usize {
    FIXED_LEN + enc.wireless_node_id.len()
}

pub(super) fn check(enc: &Encapsulation) -> Result<(), EncodeError> {
    let len = header_len(enc);
    if len > MAX_SHORT_TOTAL {
        return Err(EncodeError::EncapsulationTooLong { len });
    }
    Ok(())
}

pub(super) fn encode_header(enc: &Encapsulation, buf: &mut BytesMut) -> Result<(), EncodeError> {
    let len = header_len(enc);
    let len_octet = u8::try_from(len).map_err(|_| EncodeError::EncapsulationTooLong { len })?;
    buf.put_u8(len_octet);
    buf.put_u8(MsgType::Encapsulated as u8);
    buf.put_u8(enc.ctrl);
    buf.extend_from_slice(&enc.wireless_node_id);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::decode;
    use crate::codec::{DecodeError, Encapsulation, EncodeError, Frame, Message};
    use bytes::Bytes;

    fn frame(ctrl: u8, node: &'static [u8], message: Message) -> Frame {
        Frame {
            encapsulation: Some(Encapsulation {
                ctrl,
                wireless_node_id: Bytes::from_static(node),
            }),
            message,
        }
    }

    #[test]
    fn table_28_vector() {
        // Length 5 = Length + 0xFE + Ctrl + 2-octet node id, then a PINGREQ.
        let bytes: &[u8] = &[0x05, 0xFE, 0x01, 0xAB, 0xCD, 0x02, 0x16];
        let f = frame(0x01, &[0xAB, 0xCD], Message::PingReq { client_id: None });
        assert_eq!(f.to_bytes().as_deref(), Ok(bytes));
        assert_eq!(f.encoded_len(), bytes.len());
        assert_eq!(decode(Bytes::from_static(bytes)), Ok(f));
    }

    #[test]
    fn empty_wireless_node_id_is_accepted() {
        let bytes: &[u8] = &[0x03, 0xFE, 0x00, 0x03, 0x01, 0x00];
        assert_eq!(
            decode(Bytes::from_static(bytes)),
            Ok(frame(0x00, &[], Message::SearchGw { radius: 0 }))
        );
    }

    #[test]
    fn wireless_node_id_is_a_zero_copy_slice() {
        let bytes = Bytes::from_static(&[0x05, 0xFE, 0x00, 0xAB, 0xCD, 0x02, 0x16]);
        let Ok(Frame {
            encapsulation: Some(enc),
            ..
        }) = decode(bytes.clone())
        else {
            panic!()
        };
        assert_eq!(enc.wireless_node_id.as_ptr(), bytes[3..].as_ptr());
    }

    #[test]
    fn encapsulation_length_too_small() {
        assert_eq!(
            decode(Bytes::from_static(&[0x02, 0xFE, 0x02, 0x16])),
            Err(DecodeError::LengthTooSmall { declared: 2 })
        );
    }

    #[test]
    fn encapsulation_length_beyond_frame() {
        assert_eq!(
            decode(Bytes::from_static(&[0x09, 0xFE, 0x00, 0xAB])),
            Err(DecodeError::LengthMismatch {
                declared: 9,
                actual: 4
            })
        );
    }

    #[test]
    fn encapsulation_without_message() {
        assert_eq!(
            decode(Bytes::from_static(&[0x04, 0xFE, 0x00, 0xAB])),
            Err(DecodeError::Truncated {
                field: "encapsulated message"
            })
        );
    }

    #[test]
    fn inner_message_must_fill_the_rest() {
        assert_eq!(
            decode(Bytes::from_static(&[
                0x04, 0xFE, 0x00, 0xAB, 0x02, 0x16, 0x00
            ])),
            Err(DecodeError::LengthMismatch {
                declared: 2,
                actual: 3
            })
        );
    }

    #[test]
    fn nested_encapsulation() {
        assert_eq!(
            decode(Bytes::from_static(&[0x03, 0xFE, 0x00, 0x03, 0xFE, 0x00])),
            Err(DecodeError::UnexpectedEncapsulation)
        );
    }

    #[test]
    fn encapsulation_too_long_on_encode() {
        let f = Frame {
            encapsulation: Some(Encapsulation {
                ctrl: 0,
                wireless_node_id: Bytes::from(vec![0; 253]),
            }),
            message: Message::PingResp,
        };
        assert_eq!(
            f.to_bytes(),
            Err(EncodeError::EncapsulationTooLong { len: 256 })
        );
    }
}
