//! CONNECT (§3.1): protocol name "MQTT", level 4, connect flags, keep alive, then client id,
//! Will topic and message, username, password.
//!
//! Owns: the CONNECT variable header and payload both ways, and the connect-flag rules of
//! §3.1.2.3 - §3.1.2.9. Must never: accept another protocol name or level, accept a password
//! without a username, or let a flag and the presence of its field disagree.

use bytes::{BufMut, BytesMut};

use super::error::{DecodeError, EncodeError};
use super::field::{field_len, put_binary, put_string, string_len, topic_name_len};
use super::packet::{Connect, LastWill, QoS};
use super::reader::Reader;

/// Protocol name and level of MQTT 3.1.1 (§3.1.2.1, §3.1.2.2).
const PROTOCOL_NAME: &str = "MQTT";
const PROTOCOL_LEVEL: u8 = 4;

/// CONNECT flag bits (§3.1.2.3).
mod connect_flags {
    pub const RESERVED: u8 = 0x01;
    pub const CLEAN_SESSION: u8 = 0x02;
    pub const WILL: u8 = 0x04;
    pub const WILL_QOS_SHIFT: u8 = 3;
    pub const WILL_QOS_MASK: u8 = 0x18;
    pub const WILL_RETAIN: u8 = 0x20;
    pub const PASSWORD: u8 = 0x40;
    pub const USERNAME: u8 = 0x80;
}

pub(super) fn decode_body(r: &mut Reader) -> Result<Connect, DecodeError> {
    if r.binary()? != PROTOCOL_NAME.as_bytes() {
        return Err(DecodeError::InvalidProtocol);
    }
    let level = r.u8()?;
    if level != PROTOCOL_LEVEL {
        return Err(DecodeError::UnsupportedProtocolLevel(level));
    }
    let flags = r.u8()?;
    let has = |bit: u8| flags & bit != 0;
    let will_qos = (flags & connect_flags::WILL_QOS_MASK) >> connect_flags::WILL_QOS_SHIFT;
    let bad_flags = has(connect_flags::RESERVED) // [MQTT-3.1.2-3]
        || (!has(connect_flags::WILL) && (will_qos != 0 || has(connect_flags::WILL_RETAIN))) // [MQTT-3.1.2-13], [MQTT-3.1.2-15]
        || (has(connect_flags::PASSWORD) && !has(connect_flags::USERNAME)); // [MQTT-3.1.2-22]
    if bad_flags {
        return Err(DecodeError::InvalidConnectFlags(flags));
    }
    let will_qos = QoS::try_from(will_qos)?; // [MQTT-3.1.2-14]
    let keep_alive = r.u16()?;
    let client_id = r.string()?;
    let will = if has(connect_flags::WILL) {
        Some(LastWill {
            topic: r.topic_name()?,
            message: r.binary()?,
            qos: will_qos,
            retain: has(connect_flags::WILL_RETAIN),
        })
    } else {
        None
    };
    let username = if has(connect_flags::USERNAME) {
        Some(r.string()?)
    } else {
        None
    };
    let password = if has(connect_flags::PASSWORD) {
        Some(r.binary()?)
    } else {
        None
    };
    Ok(Connect {
        client_id,
        clean_session: has(connect_flags::CLEAN_SESSION),
        keep_alive,
        will,
        username,
        password,
    })
}

/// Validates `c` and returns its Remaining Length.
pub(super) fn body_len(c: &Connect) -> Result<usize, EncodeError> {
    if c.password.is_some() && c.username.is_none() {
        return Err(EncodeError::PasswordWithoutUsername);
    }
    // Protocol name, level, flags, keep alive.
    let mut len = 2 + PROTOCOL_NAME.len() + 1 + 1 + 2;
    len += string_len(&c.client_id)?;
    if let Some(will) = &c.will {
        len += topic_name_len(&will.topic)?;
        len += field_len(will.message.len())?;
    }
    if let Some(username) = &c.username {
        len += string_len(username)?;
    }
    if let Some(password) = &c.password {
        len += field_len(password.len())?;
    }
    Ok(len)
}

pub(super) fn encode_body(c: &Connect, buf: &mut BytesMut) -> Result<(), EncodeError> {
    put_string(buf, PROTOCOL_NAME)?;
    buf.put_u8(PROTOCOL_LEVEL);
    let mut flags = 0;
    if c.clean_session {
        flags |= connect_flags::CLEAN_SESSION;
    }
    if let Some(will) = &c.will {
        flags |= connect_flags::WILL | (u8::from(will.qos) << connect_flags::WILL_QOS_SHIFT);
        if will.retain {
            flags |= connect_flags::WILL_RETAIN;
        }
    }
    if c.username.is_some() {
        flags |= connect_flags::USERNAME;
    }
    if c.password.is_some() {
        flags |= connect_flags::PASSWORD;
    }
    buf.put_u8(flags);
    buf.put_u16(c.keep_alive);
    put_string(buf, &c.client_id)?;
    if let Some(will) = &c.will {
        put_string(buf, &will.topic)?;
        put_binary(buf, &will.message)?;
    }
    if let Some(username) = &c.username {
        put_string(buf, username)?;
    }
    if let Some(password) = &c.password {
        put_binary(buf, password)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use crate::mqtt::test_util::{connect_bytes, decode_all, encode};
    use crate::mqtt::{Connect, DecodeError, LastWill, Packet, QoS};

    #[test]
    fn decodes_connect_vector() {
        let mut bytes = vec![0x10, 49];
        bytes.extend_from_slice(b"\x00\x04MQTT\x04\xee\x00\x3c");
        bytes.extend_from_slice(b"\x00\x04gw-1\x00\x0cdev/1/status\x00\x07offline");
        bytes.extend_from_slice(b"\x00\x04user\x00\x02pw");
        let expected = Packet::Connect(Box::new(Connect {
            client_id: "gw-1".into(),
            clean_session: true,
            keep_alive: 60,
            will: Some(LastWill {
                topic: "dev/1/status".into(),
                message: Bytes::from_static(b"offline"),
                qos: QoS::AtLeastOnce,
                retain: true,
            }),
            username: Some("user".into()),
            password: Some(Bytes::from_static(b"pw")),
        }));
        assert_eq!(decode_all(&bytes), Ok(Some(expected)));
    }

    #[test]
    fn connect_with_will_username_password_vector() {
        let packet = Packet::Connect(Box::new(Connect {
            client_id: "gw-1".into(),
            clean_session: true,
            keep_alive: 60,
            will: Some(LastWill {
                topic: "dev/1/status".into(),
                message: Bytes::from_static(b"offline"),
                qos: QoS::AtLeastOnce,
                retain: true,
            }),
            username: Some("user".into()),
            password: Some(Bytes::from_static(b"pw")),
        }));
        let mut expected = vec![0x10, 49];
        expected.extend_from_slice(b"\x00\x04MQTT\x04");
        // username | password | will retain | will QoS 1 | will | clean session
        expected.push(0b1110_1110);
        expected.extend_from_slice(&[0x00, 60]);
        expected.extend_from_slice(b"\x00\x04gw-1");
        expected.extend_from_slice(b"\x00\x0cdev/1/status");
        expected.extend_from_slice(b"\x00\x07offline");
        expected.extend_from_slice(b"\x00\x04user");
        expected.extend_from_slice(b"\x00\x02pw");
        assert_eq!(expected.len(), 2 + 49);
        assert_eq!(encode(&packet), expected);
    }

    #[test]
    fn connect_minimal_vector() {
        let packet = Packet::Connect(Box::new(Connect {
            client_id: String::new(),
            clean_session: true,
            keep_alive: 0,
            will: None,
            username: None,
            password: None,
        }));
        assert_eq!(
            encode(&packet),
            b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x00\x00\x00".to_vec()
        );
    }

    #[test]
    fn invalid_protocol_name_or_level() {
        assert_eq!(
            decode_all(&connect_bytes(b"MQTX", 4, 0x02, b"\x00\x00")),
            Err(DecodeError::InvalidProtocol)
        );
        let mut mqisdp = vec![0x10, 0x0e, 0x00, 0x06];
        mqisdp.extend_from_slice(b"MQIsdp\x03\x02\x00\x3c\x00\x00");
        assert_eq!(decode_all(&mqisdp), Err(DecodeError::InvalidProtocol));
        assert_eq!(
            decode_all(&connect_bytes(b"MQTT", 3, 0x02, b"\x00\x00")),
            Err(DecodeError::UnsupportedProtocolLevel(3))
        );
        assert_eq!(
            decode_all(&connect_bytes(b"MQTT", 5, 0x02, b"\x00\x00")),
            Err(DecodeError::UnsupportedProtocolLevel(5))
        );
    }

    #[test]
    fn invalid_connect_flags() {
        for flags in [
            0x03, // reserved bit
            0x0A, // will QoS without will flag
            0x22, // will retain without will flag
            0x42, // password without username
        ] {
            assert_eq!(
                decode_all(&connect_bytes(b"MQTT", 4, flags, b"\x00\x00")),
                Err(DecodeError::InvalidConnectFlags(flags)),
                "{flags:#04x}"
            );
        }
        // Will QoS 3 [MQTT-3.1.2-14]
        assert_eq!(
            decode_all(&connect_bytes(
                b"MQTT",
                4,
                0x1E,
                b"\x00\x00\x00\x01t\x00\x00"
            )),
            Err(DecodeError::InvalidQoS(3))
        );
        // Will topic with a wildcard
        assert_eq!(
            decode_all(&connect_bytes(
                b"MQTT",
                4,
                0x06,
                b"\x00\x00\x00\x01#\x00\x00"
            )),
            Err(DecodeError::InvalidTopicName)
        );
    }
}
