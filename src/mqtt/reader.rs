//! The one checked reader over a packet body, and the field encodings it reads (§1.5).
//!
//! Owns: every read of wire data in the packet-kind modules: bytes, big-endian u16, packet
//! identifiers (non-zero, [MQTT-2.3.1-1]), binary data and UTF-8 strings (§1.5.3), topic names
//! and filters (§4.7), and the "nothing left over" check. Must never: index without a bounds
//! check, read past the packet's own Remaining Length, or copy more than the field it returns.

use bytes::Bytes;

use super::error::DecodeError;
use super::topic::{valid_topic_filter, valid_topic_name};

/// Consumes one packet body from the front; byte fields it returns are zero-copy slices.
#[derive(Debug)]
pub(super) struct Reader {
    buf: Bytes,
}

impl Reader {
    pub(super) fn new(buf: Bytes) -> Self {
        Reader { buf }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Takes exactly `n` bytes, or fails without consuming anything.
    fn take(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated);
        }
        Ok(self.buf.split_to(n))
    }

    pub(super) fn u8(&mut self) -> Result<u8, DecodeError> {
        let byte = *self.buf.first().ok_or(DecodeError::Truncated)?;
        let _ = self.buf.split_to(1);
        Ok(byte)
    }

    /// Big-endian (§1.5.2).
    pub(super) fn u16(&mut self) -> Result<u16, DecodeError> {
        let two = self.take(2)?;
        <[u8; 2]>::try_from(two.as_ref())
            .map(u16::from_be_bytes)
            .map_err(|_| DecodeError::Truncated)
    }

    /// A packet identifier: two bytes, never zero ([MQTT-2.3.1-1]).
    pub(super) fn packet_id(&mut self) -> Result<u16, DecodeError> {
        match self.u16()? {
            0 => Err(DecodeError::ZeroPacketId),
            id => Ok(id),
        }
    }

    /// Everything left (possibly empty).
    pub(super) fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }

    /// Two-byte length, then that many bytes (§1.5.3, §3.1.3.3).
    pub(super) fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let len = self.u16()?;
        self.take(usize::from(len))
    }

    /// A UTF-8 encoded string (§1.5.3): well-formed, no U+0000 ([MQTT-1.5.3-1], [MQTT-1.5.3-2]).
    pub(super) fn string(&mut self) -> Result<String, DecodeError> {
        let raw = self.binary()?;
        let s = std::str::from_utf8(&raw).map_err(|_| DecodeError::InvalidUtf8)?;
        if s.contains('\0') {
            return Err(DecodeError::InvalidUtf8);
        }
        Ok(s.to_owned())
    }

    /// A topic name (PUBLISH, Will): a string without wildcards (§4.7.3, [MQTT-3.3.2-2]).
    pub(super) fn topic_name(&mut self) -> Result<String, DecodeError> {
        let topic = self.string()?;
        if !valid_topic_name(&topic) {
            return Err(DecodeError::InvalidTopicName);
        }
        Ok(topic)
    }

    /// A topic filter (SUBSCRIBE, UNSUBSCRIBE): a string obeying §4.7.1.
    pub(super) fn topic_filter(&mut self) -> Result<String, DecodeError> {
        let filter = self.string()?;
        if !valid_topic_filter(&filter) {
            return Err(DecodeError::InvalidTopicFilter);
        }
        Ok(filter)
    }

    /// Fails if any byte is left after the packet's last field.
    pub(super) fn finish(&self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes)
        }
    }
}

/// Each failure the reader reports, through every kind that reads the field.
#[cfg(test)]
mod tests {
    use crate::mqtt::test_util::{connect_bytes, decode_all};
    use crate::mqtt::DecodeError;

    #[test]
    fn truncated_fields() {
        let cases: &[&[u8]] = &[
            b"\x40\x01\x00",                         // PUBACK id cut short
            b"\x40\x00",                             // PUBACK without id
            b"\x20\x01\x00",                         // CONNACK missing return code
            b"\x30\x03\x00\x05abc", // topic longer than the packet (then "bc" trails)
            b"\x32\x04\x00\x01t\x00", // QoS 1 id cut short
            b"\x82\x05\x00\x01\x00\x01a", // SUBSCRIBE filter without QoS byte
            b"\x10\x05\x00\x04MQT", // CONNECT protocol name cut short
            b"\x10\x0a\x00\x04MQTT\x04\x02\x00\x3c", // CONNECT without client id
        ];
        for &bytes in cases {
            assert_eq!(
                decode_all(bytes),
                Err(DecodeError::Truncated),
                "{bytes:02x?}"
            );
        }
    }

    #[test]
    fn trailing_bytes() {
        let cases: &[&[u8]] = &[
            b"\x40\x03\x00\x01\x00",
            b"\x20\x03\x00\x00\x00",
            b"\xc0\x01\x00",
            b"\xe0\x01\x00",
            b"\xb0\x03\x00\x01\x00",
        ];
        for &bytes in cases {
            assert_eq!(
                decode_all(bytes),
                Err(DecodeError::TrailingBytes),
                "{bytes:02x?}"
            );
        }
        let mut connect = connect_bytes(b"MQTT", 4, 0x02, b"\x00\x01c");
        connect.push(0);
        if let Some(len) = connect.get_mut(1) {
            *len += 1;
        }
        assert_eq!(decode_all(&connect), Err(DecodeError::TrailingBytes));
    }

    #[test]
    fn invalid_utf8_and_nul() {
        assert_eq!(
            decode_all(b"\x30\x05\x00\x02\xc3\x28x"),
            Err(DecodeError::InvalidUtf8)
        );
        assert_eq!(
            decode_all(b"\x30\x05\x00\x02a\x00x"),
            Err(DecodeError::InvalidUtf8)
        );
        // UTF-16 surrogate encoded as UTF-8 [MQTT-1.5.3-1]
        assert_eq!(
            decode_all(b"\x30\x05\x00\x03\xed\xa0\x80"),
            Err(DecodeError::InvalidUtf8)
        );
        assert_eq!(
            decode_all(&connect_bytes(b"MQTT", 4, 0x02, b"\x00\x01\xff")),
            Err(DecodeError::InvalidUtf8)
        );
    }

    #[test]
    fn zero_packet_id() {
        let cases: &[&[u8]] = &[
            b"\x32\x05\x00\x01t\x00\x00",
            b"\x40\x02\x00\x00",
            b"\x50\x02\x00\x00",
            b"\x62\x02\x00\x00",
            b"\x70\x02\x00\x00",
            b"\x82\x06\x00\x00\x00\x01a\x00",
            b"\x90\x03\x00\x00\x00",
            b"\xa2\x05\x00\x00\x00\x01a",
            b"\xb0\x02\x00\x00",
        ];
        for &bytes in cases {
            assert_eq!(
                decode_all(bytes),
                Err(DecodeError::ZeroPacketId),
                "{bytes:02x?}"
            );
        }
    }

    #[test]
    fn invalid_topics() {
        assert_eq!(
            decode_all(b"\x30\x02\x00\x00"),
            Err(DecodeError::InvalidTopicName)
        );
        assert_eq!(
            decode_all(b"\x30\x05\x00\x03a/+"),
            Err(DecodeError::InvalidTopicName)
        );
        assert_eq!(
            decode_all(b"\x82\x0a\x00\x01\x00\x05a/#/b\x00"),
            Err(DecodeError::InvalidTopicFilter)
        );
        assert_eq!(
            decode_all(b"\xa2\x06\x00\x01\x00\x02a+"),
            Err(DecodeError::InvalidTopicFilter)
        );
        assert_eq!(
            decode_all(b"\x82\x05\x00\x01\x00\x00\x00"),
            Err(DecodeError::InvalidTopicFilter)
        );
    }
}
