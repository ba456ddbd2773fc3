//! Raw framing: MQTT-SN messages back to back, delimited only by their own Length field
//! (1 octet, or 0x01 + 2 octets big-endian). A forwarder-encapsulated frame (0xFE) is its
//! encapsulation header followed by one message; both Lengths are read.
//!
//! No checksum and no delimiter, so resynchronisation is heuristic: a candidate frame must have
//! a plausible Length, a known MsgType and decode as a whole MQTT-SN message; otherwise its
//! first octet is skipped (counted) and the search goes on from the next. A frame whose Length
//! promises more than ever arrives stays partial until the caller's idle timer calls
//! [`Decoder::reset_partial`].
//!
//! Owns: the raw framing both ways. Must never: panic on input, or hold more than one partial frame.

use bytes::{Buf, Bytes, BytesMut};

use super::Counters;
use crate::codec::{self, header, DecodeError, MsgType};

/// What the front of the buffer holds.
#[derive(Debug, PartialEq, Eq)]
enum Check {
    /// A plausible start; more octets needed.
    Incomplete,
    /// The first octet cannot start a frame.
    Skip { oversized: bool },
    /// A candidate frame of this many octets.
    Frame(usize),
}

/// Streaming decoder for the raw framing.
#[derive(Debug)]
pub struct Decoder {
    buf: BytesMut,
    max_frame_size: usize,
    counters: Counters,
}

impl Decoder {
    pub fn new(max_frame_size: usize) -> Self {
        Decoder {
            buf: BytesMut::new(),
            max_frame_size,
            counters: Counters::default(),
        }
    }

    pub fn push(&mut self, octets: &[u8]) {
        self.buf.extend_from_slice(octets);
    }

    pub fn next_frame(&mut self) -> Option<Bytes> {
        loop {
            match check(&self.buf, self.max_frame_size) {
                Check::Incomplete => return None,
                Check::Skip { oversized } => {
                    self.counters.oversized += u64::from(oversized);
                    self.skip_one();
                }
                Check::Frame(len) => {
                    let candidate = Bytes::copy_from_slice(self.buf.get(..len)?);
                    if codec::decode(candidate.clone()).is_ok() {
                        self.buf.advance(len);
                        self.counters.frames += 1;
                        return Some(candidate);
                    }
                    self.skip_one();
                }
            }
        }
    }

    fn skip_one(&mut self) {
        if !self.buf.is_empty() {
            self.buf.advance(1);
            self.counters.skipped_octets += 1;
        }
    }

    pub fn has_partial(&self) -> bool {
        !self.buf.is_empty()
    }

    pub fn reset_partial(&mut self) {
        if !self.buf.is_empty() {
            self.counters.truncated += 1;
            self.buf.clear();
        }
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }
}

/// Reads one MQTT-SN header at the front of `buf`: its declared length and MsgType.
fn message_header(buf: &[u8], max: usize) -> Result<(usize, MsgType), Check> {
    let hdr = match header::parse(buf) {
        Ok(h) => h,
        Err(DecodeError::Empty | DecodeError::Truncated { .. }) => return Err(Check::Incomplete),
        Err(_) => return Err(Check::Skip { oversized: false }),
    };
    let Ok(msg_type) = MsgType::try_from(hdr.msg_type) else {
        return Err(Check::Skip { oversized: false });
    };
    if hdr.declared_len > max {
        return Err(Check::Skip { oversized: true });
    }
    Ok((hdr.declared_len, msg_type))
}

fn check(buf: &[u8], max: usize) -> Check {
    let (len, msg_type) = match message_header(buf, max) {
        Ok(h) => h,
        Err(c) => return c,
    };
    let total = if msg_type == MsgType::Encapsulated {
        // Encapsulation header, then one plain message with its own Length.
        let Some(inner) = buf.get(len..) else {
            return Check::Incomplete;
        };
        match message_header(inner, max) {
            Ok((_, MsgType::Encapsulated)) => return Check::Skip { oversized: false },
            Ok((inner_len, _)) => len.saturating_add(inner_len),
            Err(c) => return c,
        }
    } else {
        len
    };
    if total > max {
        Check::Skip { oversized: true }
    } else if buf.len() < total {
        Check::Incomplete
    } else {
        Check::Frame(total)
    }
}

/// Raw framing adds nothing.
pub fn encode(frame: &[u8], out: &mut BytesMut) {
    out.extend_from_slice(frame);
}

#[cfg(test)]
mod tests {
    use super::*;

    // CONNECT, clean session, duration 60, ClientId "dev1".
    const CONNECT: &[u8] = &[0x0a, 0x04, 0x04, 0x01, 0x00, 0x3c, b'd', b'e', b'v', b'1'];
    const PINGREQ: &[u8] = &[0x02, 0x16];

    fn all(d: &mut Decoder) -> Vec<Bytes> {
        std::iter::from_fn(|| d.next_frame()).collect()
    }

    #[test]
    fn back_to_back_and_split_anywhere() {
        let stream = [CONNECT, PINGREQ, CONNECT].concat();
        for split in 0..stream.len() {
            let mut d = Decoder::new(1024);
            d.push(&stream[..split]);
            let mut got = all(&mut d);
            d.push(&stream[split..]);
            got.extend(all(&mut d));
            assert_eq!(got, vec![CONNECT, PINGREQ, CONNECT], "split at {split}");
            assert!(!d.has_partial());
            assert_eq!(d.counters().skipped_octets, 0);
        }
    }

    #[test]
    fn long_length_form() {
        let mut frame = vec![0x01, 0x00, 0x0c, 0x04, 0x04, 0x01, 0x00, 0x3c];
        frame.extend_from_slice(b"dev1");
        let mut d = Decoder::new(1024);
        d.push(&frame);
        assert_eq!(all(&mut d), vec![frame]);
    }

    #[test]
    fn garbage_before_and_between_is_skipped_and_counted() {
        let mut d = Decoder::new(1024);
        d.push(&[0x00, 0xff, 0x03, 0x00, 0x00]);
        d.push(CONNECT);
        d.push(&[0x00, 0x00]);
        d.push(PINGREQ);
        assert_eq!(all(&mut d), vec![CONNECT, PINGREQ]);
        assert_eq!(d.counters().skipped_octets, 7);
        assert_eq!(d.counters().frames, 2);
    }

    #[test]
    fn truncated_frame_that_cannot_merge_recovers_without_a_timer() {
        // A CONNACK cut before its ReturnCode, then a whole CONNECT: the merged candidate
        // [03 05 0a] has a reserved ReturnCode, so octets are skipped until CONNECT lines up.
        let mut d = Decoder::new(1024);
        d.push(&[0x03, 0x05]);
        assert!(all(&mut d).is_empty());
        d.push(CONNECT);
        d.push(PINGREQ);
        assert_eq!(all(&mut d), vec![CONNECT, PINGREQ]);
        assert_eq!(d.counters().skipped_octets, 2);
    }

    #[test]
    fn truncated_frame_whose_length_swallows_the_next_needs_the_idle_gap() {
        // A PUBLISH promising 40 octets, cut after 6. What follows within the gap is taken as
        // its body (raw framing cannot know better); after the caller's idle reset the next
        // frame is read cleanly.
        let mut d = Decoder::new(1024);
        d.push(&[0x28, 0x0c, 0x20, 0x00, 0x01, 0x00]);
        d.push(PINGREQ);
        assert!(all(&mut d).is_empty());
        d.reset_partial();
        d.push(CONNECT);
        assert_eq!(all(&mut d), vec![CONNECT]);
        assert_eq!(d.counters().truncated, 1);
    }

    #[test]
    fn stalled_frame_is_dropped_by_reset_partial() {
        let mut d = Decoder::new(1024);
        d.push(&[0x40, 0x0c, 0x20]); // promises 64 octets that never come
        assert!(all(&mut d).is_empty());
        assert!(d.has_partial());
        d.reset_partial();
        assert!(!d.has_partial());
        d.push(CONNECT);
        assert_eq!(all(&mut d), vec![CONNECT]);
        assert_eq!(d.counters().truncated, 1);
    }

    #[test]
    fn oversized_length_is_skipped() {
        let mut d = Decoder::new(64);
        d.push(&[0x01, 0xff, 0xff, 0xff]);
        d.push(CONNECT);
        assert_eq!(all(&mut d), vec![CONNECT]);
        assert!(d.counters().oversized >= 1);
    }

    #[test]
    fn forwarder_encapsulation_is_one_frame() {
        // Length 5, 0xFE, Ctrl 0, WirelessNodeId 0xAB 0xCD, then the CONNECT.
        let frame = [&[0x05, 0xfe, 0x00, 0xab, 0xcd][..], CONNECT].concat();
        let mut d = Decoder::new(1024);
        d.push(&frame);
        d.push(PINGREQ);
        assert_eq!(all(&mut d), vec![&frame[..], PINGREQ]);
    }

    #[test]
    fn arbitrary_input_never_panics_and_stays_bounded() {
        let mut d = Decoder::new(64);
        let mut x: u32 = 1;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            d.push(&x.to_le_bytes());
            while d.next_frame().is_some() {}
            assert!(d.buf.len() <= 2 * 64 + 4);
        }
    }
}
