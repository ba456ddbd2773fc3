//! The MQTT 3.1.1 control packets as plain data (spec §2, §3).
//!
//! Owns: the packet types, the small enums of the wire format and the QoS / return-code byte
//! conversions. Invariants that the type system cannot carry (e.g. `Publish::packet_id` is
//! `Some` iff `qos > 0`) are checked by the encoder and guaranteed by the decoder. Must never:
//! hold wire bytes or encoding logic; those live in the per-kind modules.

use bytes::Bytes;

use super::error::DecodeError;
use super::header::kind;

/// Quality of service of a message or a subscription (§4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum QoS {
    AtMostOnce = 0,
    AtLeastOnce = 1,
    ExactlyOnce = 2,
}

impl TryFrom<u8> for QoS {
    type Error = DecodeError;

    fn try_from(value: u8) -> Result<Self, Self::Error> {
        match value {
            0 => Ok(QoS::AtMostOnce),
            1 => Ok(QoS::AtLeastOnce),
            2 => Ok(QoS::ExactlyOnce),
            other => Err(DecodeError::InvalidQoS(other)),
        }
    }
}

impl From<QoS> for u8 {
    fn from(qos: QoS) -> u8 {
        qos as u8
    }
}

/// The Will of a CONNECT (§3.1.2.5 - §3.1.2.7, §3.1.3.2 - §3.1.3.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastWill {
    pub topic: String,
    pub message: Bytes,
    pub qos: QoS,
    pub retain: bool,
}

/// CONNECT (§3.1), protocol name "MQTT", level 4. Its `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Connect {
    pub client_id: String,
    pub clean_session: bool,
    /// Seconds; 0 turns the keep-alive mechanism off (§3.1.2.10).
    pub keep_alive: u16,
    pub will: Option<LastWill>,
    pub username: Option<String>,
    /// Only allowed together with `username` (§3.1.2.9, [MQTT-3.1.2-22]).
    pub password: Option<Bytes>,
}

impl std::fmt::Debug for Connect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connect")
            .field("client_id", &self.client_id)
            .field("clean_session", &self.clean_session)
            .field("keep_alive", &self.keep_alive)
            .field("will", &self.will)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "********"))
            .finish()
    }
}

/// CONNACK return codes (§3.2.2.3, Table 3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ConnectReturnCode {
    Accepted = 0,
    UnacceptableProtocolVersion = 1,
    IdentifierRejected = 2,
    ServerUnavailable = 3,
    BadUserNameOrPassword = 4,
    NotAuthorized = 5,
}

impl TryFrom<u8> for ConnectReturnCode {
    type Error = DecodeError;

    fn try_from(value: u8) -> Result<Self, Self::Error> {
        match value {
            0 => Ok(ConnectReturnCode::Accepted),
            1 => Ok(ConnectReturnCode::UnacceptableProtocolVersion),
            2 => Ok(ConnectReturnCode::IdentifierRejected),
            3 => Ok(ConnectReturnCode::ServerUnavailable),
            4 => Ok(ConnectReturnCode::BadUserNameOrPassword),
            5 => Ok(ConnectReturnCode::NotAuthorized),
            other => Err(DecodeError::InvalidReturnCode(other)),
        }
    }
}

impl From<ConnectReturnCode> for u8 {
    fn from(code: ConnectReturnCode) -> u8 {
        code as u8
    }
}

/// PUBLISH (§3.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// Must be false for QoS 0 ([MQTT-3.3.1-2]).
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    /// A topic name: non-empty, no wildcards (§4.7.3, [MQTT-3.3.2-2]).
    pub topic: String,
    /// `Some` (and non-zero) iff `qos > AtMostOnce` (§2.3.1).
    pub packet_id: Option<u16>,
    /// On decode, a zero-copy slice of the received buffer.
    pub payload: Bytes,
}

/// One SUBACK return code (§3.9.3): the granted QoS, or 0x80 for failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SubackCode {
    Granted(QoS),
    Failure,
}

/// Every MQTT 3.1.1 control packet, client-to-server and server-to-client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// Boxed: CONNECT is rare and large, and every queued packet is as big as the largest
    /// variant.
    Connect(Box<Connect>),
    ConnAck {
        session_present: bool,
        code: ConnectReturnCode,
    },
    Publish(Publish),
    PubAck {
        packet_id: u16,
    },
    PubRec {
        packet_id: u16,
    },
    PubRel {
        packet_id: u16,
    },
    PubComp {
        packet_id: u16,
    },
    Subscribe {
        packet_id: u16,
        filters: Vec<(String, QoS)>,
    },
    SubAck {
        packet_id: u16,
        codes: Vec<SubackCode>,
    },
    Unsubscribe {
        packet_id: u16,
        filters: Vec<String>,
    },
    UnsubAck {
        packet_id: u16,
    },
    PingReq,
    PingResp,
    Disconnect,
}

impl Packet {
    /// The fixed-header type nibble of this packet.
    pub(crate) fn kind(&self) -> u8 {
        match self {
            Packet::Connect(_) => kind::CONNECT,
            Packet::ConnAck { .. } => kind::CONNACK,
            Packet::Publish(_) => kind::PUBLISH,
            Packet::PubAck { .. } => kind::PUBACK,
            Packet::PubRec { .. } => kind::PUBREC,
            Packet::PubRel { .. } => kind::PUBREL,
            Packet::PubComp { .. } => kind::PUBCOMP,
            Packet::Subscribe { .. } => kind::SUBSCRIBE,
            Packet::SubAck { .. } => kind::SUBACK,
            Packet::Unsubscribe { .. } => kind::UNSUBSCRIBE,
            Packet::UnsubAck { .. } => kind::UNSUBACK,
            Packet::PingReq => kind::PINGREQ,
            Packet::PingResp => kind::PINGRESP,
            Packet::Disconnect => kind::DISCONNECT,
        }
    }
}
