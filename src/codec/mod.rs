//! MQTT-SN v1.2 on the wire: bytes <-> typed messages.
//!
//! Owns: the wire format of spec §5 (header, flags, every message of §5.4) and the forwarder
//! encapsulation of §5.5. Must never: do I/O, read a clock, panic on input, or allocate more
//! than the frame it was given.
//!
//! Entry points: [`decode`] (one datagram / serial frame -> [`Frame`]) and [`Frame::encode`] /
//! [`Message::encode`]. Payloads ([`Bytes`]) are zero-copy slices of the input frame.

// Input must never be able to panic the codec; clippy enforces it outside tests.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::unreachable,
        clippy::indexing_slicing
    )
)]

mod cursor;
pub mod error;
pub mod flags;
pub mod header;
pub mod message;
#[cfg(test)]
mod tests;

pub use error::{DecodeError, EncodeError};
pub use flags::Flags;
pub use message::{decode, decode_message};

use bytes::Bytes;

/// MsgType codes of spec §5.2.2, Table 3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MsgType {
    Advertise = 0x00,
    SearchGw = 0x01,
    GwInfo = 0x02,
    Connect = 0x04,
    Connack = 0x05,
    WillTopicReq = 0x06,
    WillTopic = 0x07,
    WillMsgReq = 0x08,
    WillMsg = 0x09,
    Register = 0x0A,
    Regack = 0x0B,
    Publish = 0x0C,
    Puback = 0x0D,
    Pubcomp = 0x0E,
    Pubrec = 0x0F,
    Pubrel = 0x10,
    Subscribe = 0x12,
    Suback = 0x13,
    Unsubscribe = 0x14,
    Unsuback = 0x15,
    PingReq = 0x16,
    PingResp = 0x17,
    Disconnect = 0x18,
    WillTopicUpd = 0x1A,
    WillTopicResp = 0x1B,
    WillMsgUpd = 0x1C,
    WillMsgResp = 0x1D,
    Encapsulated = 0xFE,
}

/// QoS as carried in the Flags byte (§5.3.4). `MinusOne` is the connectionless "QoS -1" (0b11).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum QoS {
    MinusOne,
    AtMostOnce,
    AtLeastOnce,
    ExactlyOnce,
}

/// ReturnCode of §5.3.10. Values 0x04-0xFF are reserved and rejected by the decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ReturnCode {
    Accepted = 0x00,
    Congestion = 0x01,
    InvalidTopicId = 0x02,
    NotSupported = 0x03,
}

/// The ProtocolId of a v1.2 CONNECT (§5.3.8).
pub const PROTOCOL_ID_V1_2: u8 = 0x01;

/// How a PUBLISH names its topic (TopicIdType 00 / 01 / 10 of §5.3.4 with the TopicId field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TopicRef {
    /// A normal topic id, obtained by REGISTER/REGACK.
    Id(u16),
    /// A pre-defined topic id (§6.7).
    Predefined(u16),
    /// A two-octet short topic name (§6.7), carried verbatim.
    Short([u8; 2]),
}

/// What a SUBSCRIBE / UNSUBSCRIBE names (§5.4.15: TopicName or TopicId by TopicIdType).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TopicFilter {
    /// TopicIdType 00: a topic name or a filter with `+` / `#` wildcards (UTF-8).
    Name(String),
    /// TopicIdType 01: a pre-defined topic id.
    Predefined(u16),
    /// TopicIdType 10: a two-octet short topic name.
    Short([u8; 2]),
}

/// Will topic carried by WILLTOPIC / WILLTOPICUPD (§5.4.7, §5.4.22). An empty message (no flags,
/// no topic) is represented by `None` at the message level and deletes the will.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WillTopic {
    pub qos: QoS,
    pub retain: bool,
    pub topic: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    pub will: bool,
    pub clean_session: bool,
    /// Kept raw so the gateway can answer a foreign value with CONNACK "not supported".
    pub protocol_id: u8,
    /// Keep-alive in seconds.
    pub duration: u16,
    pub client_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Register {
    /// 0x0000 when sent by a client.
    pub topic_id: u16,
    pub msg_id: u16,
    pub topic_name: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Regack {
    pub topic_id: u16,
    pub msg_id: u16,
    pub return_code: ReturnCode,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    pub topic: TopicRef,
    /// 0x0000 for QoS 0 and -1.
    pub msg_id: u16,
    pub data: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Puback {
    pub topic_id: u16,
    pub msg_id: u16,
    pub return_code: ReturnCode,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    pub dup: bool,
    /// Requested QoS (0, 1 or 2; -1 is not meaningful here but is carried if sent).
    pub qos: QoS,
    pub msg_id: u16,
    pub topic: TopicFilter,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suback {
    /// Granted QoS.
    pub qos: QoS,
    /// 0x0000 for wildcard filters and short names.
    pub topic_id: u16,
    pub msg_id: u16,
    pub return_code: ReturnCode,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    pub msg_id: u16,
    pub topic: TopicFilter,
}

/// Every message of spec §5.4.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Advertise {
        gw_id: u8,
        duration: u16,
    },
    SearchGw {
        radius: u8,
    },
    /// `gw_add` is present only when a client answers on behalf of a gateway.
    GwInfo {
        gw_id: u8,
        gw_add: Option<Bytes>,
    },
    Connect(Connect),
    Connack {
        return_code: ReturnCode,
    },
    WillTopicReq,
    /// `None` is the empty WILLTOPIC that deletes the will.
    WillTopic(Option<WillTopic>),
    WillMsgReq,
    WillMsg {
        msg: Bytes,
    },
    Register(Register),
    Regack(Regack),
    Publish(Publish),
    Puback(Puback),
    Pubcomp {
        msg_id: u16,
    },
    Pubrec {
        msg_id: u16,
    },
    Pubrel {
        msg_id: u16,
    },
    Subscribe(Subscribe),
    Suback(Suback),
    Unsubscribe(Unsubscribe),
    Unsuback {
        msg_id: u16,
    },
    /// `client_id` is present only when a sleeping client wakes up.
    PingReq {
        client_id: Option<String>,
    },
    PingResp,
    /// `duration` is present only when a client asks to sleep.
    Disconnect {
        duration: Option<u16>,
    },
    /// `None` is the empty WILLTOPICUPD that deletes the will.
    WillTopicUpd(Option<WillTopic>),
    WillTopicResp {
        return_code: ReturnCode,
    },
    WillMsgUpd {
        msg: Bytes,
    },
    WillMsgResp {
        return_code: ReturnCode,
    },
}

/// Forwarder encapsulation header (§5.5).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Encapsulation {
    /// Ctrl octet; bits 1-0 are the broadcast radius (gateway -> forwarder only).
    pub ctrl: u8,
    /// Identifies the wireless node behind the forwarder; opaque to us.
    pub wireless_node_id: Bytes,
}

/// One received or sent unit: a plain message, or a message wrapped by a forwarder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub encapsulation: Option<Encapsulation>,
    pub message: Message,
}
