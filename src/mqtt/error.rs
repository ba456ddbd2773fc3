//! Typed codec errors: protocol violations are data, not strings.
//!
//! Owns: [`DecodeError`] and [`EncodeError`], one variant per rule a packet can break. Must
//! never: carry free-form text or wire bytes, or lose which rule was broken.

use thiserror::Error;

/// Why a byte stream is not a well-formed MQTT 3.1.1 packet.
///
/// Any of these means the connection must be closed (§4.8, [MQTT-4.8.0-1]); the stream cannot
/// be resynchronised.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The Remaining Length field runs past its 4 bytes (§2.2.3).
    #[error("malformed remaining length")]
    MalformedRemainingLength,
    /// The Remaining Length exceeds the caller's limit; `size` is the Remaining Length.
    #[error("packet too large: remaining length {size} exceeds maximum {max}")]
    PacketTooLarge { size: usize, max: usize },
    /// Packet type 0 or 15 (§2.2.1).
    #[error("reserved packet type {0}")]
    ReservedPacketType(u8),
    /// Fixed-header flags not allowed for this packet type (§2.2.2, [MQTT-2.2.2-2]).
    #[error("invalid flags {flags:#06b} for packet type {packet_type}")]
    BadFlags { packet_type: u8, flags: u8 },
    /// A field runs past the end of the packet.
    #[error("packet truncated: a field runs past the remaining length")]
    Truncated,
    /// Bytes left over after the last field of the packet.
    #[error("trailing bytes after the last field")]
    TrailingBytes,
    /// A string is not well-formed UTF-8 or contains U+0000 (§1.5.3).
    #[error("invalid UTF-8 string")]
    InvalidUtf8,
    /// The CONNECT protocol name is not "MQTT" (§3.1.2.1).
    #[error("invalid protocol name")]
    InvalidProtocol,
    /// The CONNECT protocol level is not 4 (§3.1.2.2). A server answers CONNACK 0x01.
    #[error("unsupported protocol level {0}")]
    UnsupportedProtocolLevel(u8),
    /// A QoS value (or requested-QoS byte) other than 0, 1, 2.
    #[error("invalid QoS {0}")]
    InvalidQoS(u8),
    /// CONNECT flags violate §3.1.2.3 - §3.1.2.9.
    #[error("invalid connect flags {0:#010b}")]
    InvalidConnectFlags(u8),
    /// CONNACK acknowledge flags with reserved bits set (§3.2.2.1).
    #[error("invalid connack flags {0:#010b}")]
    InvalidConnAckFlags(u8),
    /// CONNACK return code above 5 (§3.2.2.3).
    #[error("invalid connect return code {0}")]
    InvalidReturnCode(u8),
    /// SUBACK return code other than 0, 1, 2, 0x80 (§3.9.3).
    #[error("invalid suback return code {0:#04x}")]
    InvalidSubackCode(u8),
    /// A packet identifier of 0 ([MQTT-2.3.1-1]).
    #[error("packet identifier is zero")]
    ZeroPacketId,
    /// A PUBLISH or Will topic that is empty or has wildcards (§4.7.3, [MQTT-3.3.2-2]).
    #[error("invalid topic name")]
    InvalidTopicName,
    /// A SUBSCRIBE or UNSUBSCRIBE topic filter that breaks §4.7.1.
    #[error("invalid topic filter")]
    InvalidTopicFilter,
    /// SUBSCRIBE, SUBACK or UNSUBSCRIBE without a single entry ([MQTT-3.8.3-3], [MQTT-3.10.3-2]).
    #[error("empty payload for packet type {packet_type}")]
    EmptyPayload { packet_type: u8 },
}

/// Why a [`Packet`](super::Packet) cannot be put on the wire. On error nothing is written.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// A string or binary field longer than 65535 bytes (§1.5.3).
    #[error("field of {len} bytes exceeds 65535")]
    FieldTooLong { len: usize },
    /// The Remaining Length would exceed 268 435 455 (§2.2.3).
    #[error("remaining length {size} exceeds 268435455")]
    PacketTooLarge { size: usize },
    /// A string contains U+0000 ([MQTT-1.5.3-2]).
    #[error("string contains U+0000")]
    NulCharacter,
    /// A PUBLISH or Will topic that is empty or has wildcards.
    #[error("invalid topic name")]
    InvalidTopicName,
    /// A SUBSCRIBE or UNSUBSCRIBE topic filter that breaks §4.7.1.
    #[error("invalid topic filter")]
    InvalidTopicFilter,
    /// `Publish::packet_id` must be `Some` iff QoS > 0.
    #[error("packet identifier presence does not match QoS")]
    PacketIdQoSMismatch,
    /// A packet identifier of 0 ([MQTT-2.3.1-1]).
    #[error("packet identifier is zero")]
    ZeroPacketId,
    /// DUP set on a QoS 0 PUBLISH ([MQTT-3.3.1-2]).
    #[error("DUP set on a QoS 0 publish")]
    DupWithQoS0,
    /// A password without a username ([MQTT-3.1.2-22]).
    #[error("password without username")]
    PasswordWithoutUsername,
    /// SUBSCRIBE, SUBACK or UNSUBSCRIBE without a single entry.
    #[error("empty payload")]
    EmptyPayload,
}
