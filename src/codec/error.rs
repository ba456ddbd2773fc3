//! Codec errors: one typed variant per way a frame can be malformed or a message unencodable.
//!
//! Owns: [`DecodeError`] and [`EncodeError`]. Must never: carry borrowed input or allocate; errors
//! are small `Copy`-able values so the gateway can count and log them cheaply.

use super::MsgType;

/// Why a frame could not be decoded. Every rejection the decoder makes is one of these.
///
/// Length rules (spec §5.2.1), decided here because the spec is silent on them:
/// - 1-octet form: the octet must be `2..=255` (`0` is [`DecodeError::LengthTooSmall`], `1` is the
///   3-octet marker).
/// - 3-octet form: the 16-bit total must be `>= 4` (its own 3 octets plus MsgType). Totals below
///   256 are accepted in this form: the spec says short messages *may* use the 1-octet form.
/// - Encapsulation (§5.5): Length is always 1 octet and must be `>= 3` (Length, MsgType, Ctrl).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The frame has no octets at all.
    #[error("empty frame")]
    Empty,
    /// The frame ends before `field` (header or message body) is complete.
    #[error("frame truncated: {field} is incomplete")]
    Truncated { field: &'static str },
    /// The Length field disagrees with the number of octets actually present.
    #[error("length field says {declared} octets but the frame has {actual}")]
    LengthMismatch { declared: usize, actual: usize },
    /// The Length field declares fewer octets than its own header occupies.
    #[error("length field value {declared} is smaller than the header it belongs to")]
    LengthTooSmall { declared: usize },
    /// MsgType is one of the reserved codes (0x03, 0x11, 0x19, 0x1E-0xFD, 0xFF).
    #[error("reserved MsgType 0x{0:02X}")]
    ReservedMsgType(u8),
    /// An encapsulated message (0xFE) where a plain one is required: in
    /// [`decode_message`](super::decode_message), inside an encapsulation, or with a 3-octet Length.
    #[error("forwarder encapsulation not allowed here")]
    UnexpectedEncapsulation,
    /// TopicIdType 0b11 in a message that uses TopicIdType (PUBLISH, SUBSCRIBE, UNSUBSCRIBE).
    #[error("reserved TopicIdType 0b11")]
    ReservedTopicIdType,
    /// ReturnCode 0x04-0xFF.
    #[error("reserved ReturnCode 0x{0:02X}")]
    ReservedReturnCode(u8),
    /// A text field (ClientId, TopicName, WillTopic) is not valid UTF-8.
    #[error("{field} is not valid UTF-8")]
    InvalidUtf8 { field: &'static str },
    /// A message whose size is fixed by its type has octets after its last field.
    #[error("{msg_type:?} has trailing octets after its last field")]
    TrailingBytes { msg_type: MsgType },
    /// CONNECT without a ClientId (the spec requires 1 or more characters).
    #[error("CONNECT has an empty ClientId")]
    EmptyClientId,
    /// WILLTOPIC / WILLTOPICUPD with a Flags octet but no topic: neither the empty (delete) form
    /// nor a usable will topic.
    #[error("will topic message has flags but no topic")]
    BadWillTopic,
}

/// Why a message could not be encoded. The encoder refuses anything its decoder would reject, so
/// `decode(encode(m)) == m` holds for every message that encodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The encoded message would exceed 65535 octets, the most the 3-octet Length can say.
    #[error("message of {len} octets exceeds the 65535-octet maximum")]
    TooLong { len: usize },
    /// The encapsulation header (Length, 0xFE, Ctrl, WirelessNodeId) exceeds its 1-octet Length.
    #[error("encapsulation header of {len} octets exceeds 255")]
    EncapsulationTooLong { len: usize },
    /// A CONNECT or waking PINGREQ with an empty ClientId; it would not decode back.
    #[error("empty ClientId")]
    EmptyClientId,
    /// GWINFO with `Some` but empty GwAdd; it would decode back as `None`.
    #[error("empty GwAdd")]
    EmptyGwAdd,
    /// A will topic with an empty topic name; it would not decode back.
    #[error("empty will topic")]
    EmptyWillTopic,
}
