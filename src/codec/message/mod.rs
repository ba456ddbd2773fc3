//! Every message of spec §5.4, one module per kind, and the dispatch between them.
//!
//! Owns: [`decode`], [`decode_message`], and `encode` / `encoded_len` / `to_bytes` on
//! [`Message`] and [`Frame`]. Each kind's module owns that kind's variable part only, with the
//! same three functions: `decode_body` (from a [`Reader`] positioned after MsgType), `body_len`
//! and `encode_body`. This module adds and strips the header. Must never: panic on input, index
//! wire data unchecked, or encode something its own decoder would reject.

mod advertise;
mod connect;
mod disconnect;
mod forwarder;
mod gwinfo;
mod header_only;
mod msg_id_only;
mod pingreq;
mod puback;
mod publish;
mod regack;
mod register;
mod return_code_only;
mod searchgw;
mod suback;
mod subscribe;
mod unsubscribe;
mod will_msg;
mod will_topic;

use bytes::{Bytes, BytesMut};

use super::cursor::Reader;
use super::header::{self, MAX_TOTAL};
use super::{DecodeError, EncodeError, Frame, Message, MsgType};

/// Decodes one whole datagram / serial frame: a plain message, or one wrapped by a forwarder
/// (§5.5). The frame must be exactly one message; payloads are zero-copy slices of `frame`.
pub fn decode(frame: Bytes) -> Result<Frame, DecodeError> {
    if forwarder::is_encapsulated(&frame) {
        let (encapsulation, inner) = forwarder::decode_header(frame)?;
        let message = decode_message(inner)?;
        Ok(Frame {
            encapsulation: Some(encapsulation),
            message,
        })
    } else {
        Ok(Frame {
            encapsulation: None,
            message: decode_message(frame)?,
        })
    }
}

/// Decodes exactly one plain (not encapsulated) message filling all of `frame`.
pub fn decode_message(mut frame: Bytes) -> Result<Message, DecodeError> {
    let hdr = header::parse(&frame)?;
    let msg_type = MsgType::try_from(hdr.msg_type)?;
    // Before the Length check: an encapsulation's Length means something else entirely.
    if msg_type == MsgType::Encapsulated {
        return Err(DecodeError::UnexpectedEncapsulation);
    }
    if hdr.declared_len != frame.len() {
        return Err(DecodeError::LengthMismatch {
            declared: hdr.declared_len,
            actual: frame.len(),
        });
    }
    // parse() guarantees header_len octets exist and declared_len >= header_len.
    let body = frame.split_off(hdr.header_len);
    decode_body(msg_type, Reader::new(body))
}

fn decode_body(msg_type: MsgType, mut r: Reader) -> Result<Message, DecodeError> {
    use MsgType as T;
    let msg = match msg_type {
        T::Advertise => advertise::decode_body(&mut r)?,
        T::SearchGw => searchgw::decode_body(&mut r)?,
        T::GwInfo => gwinfo::decode_body(&mut r)?,
        T::Connect => Message::Connect(connect::decode_body(&mut r)?),
        T::Connack => Message::Connack {
            return_code: return_code_only::decode_body(&mut r)?,
        },
        T::WillTopicResp => Message::WillTopicResp {
            return_code: return_code_only::decode_body(&mut r)?,
        },
        T::WillMsgResp => Message::WillMsgResp {
            return_code: return_code_only::decode_body(&mut r)?,
        },
        T::WillTopicReq => Message::WillTopicReq,
        T::WillMsgReq => Message::WillMsgReq,
        T::PingResp => Message::PingResp,
        T::WillTopic => Message::WillTopic(will_topic::decode_body(&mut r)?),
        T::WillTopicUpd => Message::WillTopicUpd(will_topic::decode_body(&mut r)?),
        T::WillMsg => Message::WillMsg {
            msg: will_msg::decode_body(&mut r),
        },
        T::WillMsgUpd => Message::WillMsgUpd {
            msg: will_msg::decode_body(&mut r),
        },
        T::Register => Message::Register(register::decode_body(&mut r)?),
        T::Regack => Message::Regack(regack::decode_body(&mut r)?),
        T::Publish => Message::Publish(publish::decode_body(&mut r)?),
        T::Puback => Message::Puback(puback::decode_body(&mut r)?),
        T::Pubcomp => Message::Pubcomp {
            msg_id: msg_id_only::decode_body(&mut r)?,
        },
        T::Pubrec => Message::Pubrec {
            msg_id: msg_id_only::decode_body(&mut r)?,
        },
        T::Pubrel => Message::Pubrel {
            msg_id: msg_id_only::decode_body(&mut r)?,
        },
        T::Unsuback => Message::Unsuback {
            msg_id: msg_id_only::decode_body(&mut r)?,
        },
        T::Subscribe => Message::Subscribe(subscribe::decode_body(&mut r)?),
        T::Suback => Message::Suback(suback::decode_body(&mut r)?),
        T::Unsubscribe => Message::Unsubscribe(unsubscribe::decode_body(&mut r)?),
        T::PingReq => Message::PingReq {
            client_id: pingreq::decode_body(&mut r)?,
        },
        T::Disconnect => Message::Disconnect {
            duration: disconnect::decode_body(&mut r)?,
        },
        // Rejected in decode_message already; kept for exhaustiveness.
        T::Encapsulated => return Err(DecodeError::UnexpectedEncapsulation),
    };
    // Variable-length kinds consumed everything above; fixed-size kinds must not have more.
    r.finish(msg_type)?;
    Ok(msg)
}

impl Message {
    /// The MsgType code this message is sent with.
    pub fn msg_type(&self) -> MsgType {
        use MsgType as T;
        match self {
            Message::Advertise { .. } => T::Advertise,
            Message::SearchGw { .. } => T::SearchGw,
            Message::GwInfo { .. } => T::GwInfo,
            Message::Connect(_) => T::Connect,
            Message::Connack { .. } => T::Connack,
            Message::WillTopicReq => T::WillTopicReq,
            Message::WillTopic(_) => T::WillTopic,
            Message::WillMsgReq => T::WillMsgReq,
            Message::WillMsg { .. } => T::WillMsg,
            Message::Register(_) => T::Register,
            Message::Regack(_) => T::Regack,
            Message::Publish(_) => T::Publish,
            Message::Puback(_) => T::Puback,
            Message::Pubcomp { .. } => T::Pubcomp,
            Message::Pubrec { .. } => T::Pubrec,
            Message::Pubrel { .. } => T::Pubrel,
            Message::Subscribe(_) => T::Subscribe,
            Message::Suback(_) => T::Suback,
            Message::Unsubscribe(_) => T::Unsubscribe,
            Message::Unsuback { .. } => T::Unsuback,
            Message::PingReq { .. } => T::PingReq,
            Message::PingResp => T::PingResp,
            Message::Disconnect { .. } => T::Disconnect,
            Message::WillTopicUpd(_) => T::WillTopicUpd,
            Message::WillTopicResp { .. } => T::WillTopicResp,
            Message::WillMsgUpd { .. } => T::WillMsgUpd,
            Message::WillMsgResp { .. } => T::WillMsgResp,
        }
    }

    /// Octets after MsgType.
    fn body_len(&self) -> usize {
        match self {
            Message::Advertise { .. } => advertise::body_len(),
            Message::SearchGw { .. } => searchgw::body_len(),
            Message::GwInfo { gw_add, .. } => gwinfo::body_len(gw_add.as_ref()),
            Message::Connect(c) => connect::body_len(c),
            Message::Connack { .. }
            | Message::WillTopicResp { .. }
            | Message::WillMsgResp { .. } => return_code_only::body_len(),
            Message::WillTopicReq | Message::WillMsgReq | Message::PingResp => {
                header_only::body_len()
            }
            Message::WillTopic(w) | Message::WillTopicUpd(w) => will_topic::body_len(w.as_ref()),
            Message::WillMsg { msg } | Message::WillMsgUpd { msg } => will_msg::body_len(msg),
            Message::Register(m) => register::body_len(m),
            Message::Regack(_) => regack::body_len(),
            Message::Publish(p) => publish::body_len(p),
            Message::Puback(_) => puback::body_len(),
            Message::Pubcomp { .. }
            | Message::Pubrec { .. }
            | Message::Pubrel { .. }
            | Message::Unsuback { .. } => msg_id_only::body_len(),
            Message::Subscribe(s) => subscribe::body_len(s),
            Message::Suback(_) => suback::body_len(),
            Message::Unsubscribe(u) => unsubscribe::body_len(u),
            Message::PingReq { client_id } => pingreq::body_len(client_id.as_deref()),
            Message::Disconnect { duration } => disconnect::body_len(*duration),
        }
    }

    /// Rejects what would encode but not decode back to the same message.
    fn validate(&self) -> Result<(), EncodeError> {
        match self {
            Message::Connect(c) => connect::validate(c),
            Message::GwInfo { gw_add, .. } => gwinfo::validate(gw_add.as_ref()),
            Message::PingReq { client_id } => pingreq::validate(client_id.as_deref()),
            Message::WillTopic(w) | Message::WillTopicUpd(w) => will_topic::validate(w.as_ref()),
            _ => Ok(()),
        }
    }

    fn encode_body(&self, buf: &mut BytesMut) {
        match self {
            Message::Advertise { gw_id, duration } => {
                advertise::encode_body(*gw_id, *duration, buf)
            }
            Message::SearchGw { radius } => searchgw::encode_body(*radius, buf),
            Message::GwInfo { gw_id, gw_add } => gwinfo::encode_body(*gw_id, gw_add.as_ref(), buf),
            Message::Connect(c) => connect::encode_body(c, buf),
            Message::Connack { return_code }
            | Message::WillTopicResp { return_code }
            | Message::WillMsgResp { return_code } => {
                return_code_only::encode_body(*return_code, buf)
            }
            Message::WillTopicReq | Message::WillMsgReq | Message::PingResp => {}
            Message::WillTopic(w) | Message::WillTopicUpd(w) => {
                will_topic::encode_body(w.as_ref(), buf)
            }
            Message::WillMsg { msg } | Message::WillMsgUpd { msg } => {
                will_msg::encode_body(msg, buf)
            }
            Message::Register(m) => register::encode_body(m, buf),
            Message::Regack(m) => regack::encode_body(m, buf),
            Message::Publish(p) => publish::encode_body(p, buf),
            Message::Puback(m) => puback::encode_body(m, buf),
            Message::Pubcomp { msg_id }
            | Message::Pubrec { msg_id }
            | Message::Pubrel { msg_id }
            | Message::Unsuback { msg_id } => msg_id_only::encode_body(*msg_id, buf),
            Message::Subscribe(s) => subscribe::encode_body(s, buf),
            Message::Suback(s) => suback::encode_body(s, buf),
            Message::Unsubscribe(u) => unsubscribe::encode_body(u, buf),
            Message::PingReq { client_id } => pingreq::encode_body(client_id.as_deref(), buf),
            Message::Disconnect { duration } => disconnect::encode_body(*duration, buf),
        }
    }

    /// Total octets [`Message::encode`] writes (header included, 1- or 3-octet Length chosen as
    /// in `encode`). May exceed 65535 for a message that then fails to encode.
    pub fn encoded_len(&self) -> usize {
        header::total_len(self.body_len())
    }

    /// Appends the encoded message to `buf`. On error nothing is written.
    pub fn encode(&self, buf: &mut BytesMut) -> Result<(), EncodeError> {
        self.validate()?;
        let total = self.encoded_len();
        if total > MAX_TOTAL {
            return Err(EncodeError::TooLong { len: total });
        }
        buf.reserve(total);
        header::put(buf, total, self.msg_type())?;
        self.encode_body(buf);
        Ok(())
    }

    /// The encoded message in a fresh buffer.
    pub fn to_bytes(&self) -> Result<Bytes, EncodeError> {
        let mut buf = BytesMut::new();
        self.encode(&mut buf)?;
        Ok(buf.freeze())
    }
}

impl Frame {
    /// A plain, not encapsulated, frame.
    pub fn plain(message: Message) -> Self {
        Frame {
            encapsulation: None,
            message,
        }
    }

    /// Total octets [`Frame::encode`] writes.
    pub fn encoded_len(&self) -> usize {
        let outer = self.encapsulation.as_ref().map_or(0, forwarder::header_len);
        outer.saturating_add(self.message.encoded_len())
    }

    /// Appends the frame (encapsulation header, if any, then the message). On error nothing is
    /// written.
    pub fn encode(&self, buf: &mut BytesMut) -> Result<(), EncodeError> {
        match &self.encapsulation {
            None => self.message.encode(buf),
            Some(enc) => {
                forwarder::check(enc)?;
                // Encode the inner message first so a failure leaves `buf` untouched.
                let inner = self.message.to_bytes()?;
                buf.reserve(forwarder::header_len(enc) + inner.len());
                forwarder::encode_header(enc, buf)?;
                buf.extend_from_slice(&inner);
                Ok(())
            }
        }
    }

    /// The encoded frame in a fresh buffer.
    pub fn to_bytes(&self) -> Result<Bytes, EncodeError> {
        let mut buf = BytesMut::new();
        self.encode(&mut buf)?;
        Ok(buf.freeze())
    }
}

impl From<Message> for Frame {
    fn from(message: Message) -> Self {
        Frame::plain(message)
    }
}

/// Test helper for the per-kind modules: `bytes` is exactly how `msg` looks on the wire.
#[cfg(test)]
pub(crate) fn assert_vector(bytes: &[u8], msg: Message) {
    assert_eq!(msg.to_bytes().as_deref(), Ok(bytes), "encode {msg:?}");
    assert_eq!(msg.encoded_len(), bytes.len(), "encoded_len {msg:?}");
    assert_eq!(
        decode_message(Bytes::copy_from_slice(bytes)),
        Ok(msg),
        "decode {bytes:02X?}"
    );
}

/// Test helper: what decoding `bytes` as a plain message fails with.
#[cfg(test)]
pub(crate) fn decode_err(bytes: &[u8]) -> DecodeError {
    match decode_message(Bytes::copy_from_slice(bytes)) {
        Ok(m) => panic!("{bytes:02X?} decoded to {m:?}"),
        Err(e) => e,
    }
}
