//! SLIP framing (RFC 1055) with a CRC-16/CCITT-FALSE trailer.
//!
//! On the line: `END` (0xC0), then the escaped bytes of `payload ++ crc_hi ++ crc_lo`, then
//! `END`. Escaping: 0xC0 -> 0xDB 0xDC, 0xDB -> 0xDB 0xDD; nothing else changes. The CRC
//! ([`super::crc::crc16_ccitt_false`]) covers the unescaped payload and is sent big-endian.
//! Empty frames (END END) are ignored, so a sender may start every frame with END to flush
//! line noise. A frame with a bad escape, a bad CRC or fewer than 3 octets is dropped and
//! counted.
//!
//! Owns: SLIP escaping and the CRC trailer. Must never: pass on a frame with a bad CRC or escape.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::crc::crc16_ccitt_false;
use super::Counters;

pub const END: u8 = 0xC0;
pub const ESC: u8 = 0xDB;
pub const ESC_END: u8 = 0xDC;
pub const ESC_ESC: u8 = 0xDD;

/// Streaming decoder for SLIP + CRC.
#[derive(Debug)]
pub struct Decoder {
    buf: BytesMut,
    max_frame_size: usize,
    /// An over-long frame is being thrown away up to its END.
    discarding: bool,
    counters: Counters,
}

impl Decoder {
    pub fn new(max_frame_size: usize) -> Self {
        Decoder {
            buf: BytesMut::new(),
            max_frame_size,
            discarding: false,
            counters: Counters::default(),
        }
    }

    /// Most escaped octets a frame of `max_frame_size` (plus CRC) can take.
    fn max_escaped(&self) -> usize {
        self.max_frame_size.saturating_add(2).saturating_mul(2)
    }

    pub fn push(&mut self, octets: &[u8]) {
        self.buf.extend_from_slice(octets);
    }

    pub fn next_frame(&mut self) -> Option<Bytes> {
        loop {
            let Some(end) = self.buf.iter().position(|&b| b == END) else {
                if self.buf.len() > self.max_escaped() {
                    if !self.discarding {
                        self.counters.oversized += 1;
                    }
                    self.discarding = true;
                    self.counters.skipped_octets += self.buf.len() as u64;
                    self.buf.clear();
                }
                return None;
            };
            let escaped = self.buf.split_to(end);
            self.buf.advance(1); // the END
            if std::mem::take(&mut self.discarding) {
                self.counters.skipped_octets += escaped.len() as u64;
                continue;
            }
            if escaped.is_empty() {
                continue;
            }
            let Some(mut body) = unescape(&escaped) else {
                self.counters.skipped_octets += escaped.len() as u64;
                continue;
            };
            if body.len() > self.max_frame_size.saturating_add(2) {
                self.counters.oversized += 1;
                continue;
            }
            if body.len() < 3 {
                self.counters.skipped_octets += escaped.len() as u64;
                continue;
            }
            let crc_at = body.len() - 2;
            let received = body.split_off(crc_at).get_u16();
            if crc16_ccitt_false(&body) != received {
                self.counters.bad_checksum += 1;
                continue;
            }
            self.counters.frames += 1;
            return Some(body.freeze());
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
        self.discarding = false;
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }
}

/// Undoes SLIP escaping; `None` for an ESC not followed by ESC_END or ESC_ESC.
fn unescape(escaped: &[u8]) -> Option<BytesMut> {
    let mut out = BytesMut::with_capacity(escaped.len());
    let mut it = escaped.iter();
    while let Some(&b) = it.next() {
        if b == ESC {
            match it.next() {
                Some(&ESC_END) => out.put_u8(END),
                Some(&ESC_ESC) => out.put_u8(ESC),
                _ => return None,
            }
        } else {
            out.put_u8(b);
        }
    }
    Some(out)
}

fn put_escaped(out: &mut BytesMut, b: u8) {
    match b {
        END => out.extend_from_slice(&[ESC, ESC_END]),
        ESC => out.extend_from_slice(&[ESC, ESC_ESC]),
        _ => out.put_u8(b),
    }
}

/// Appends `END escaped(frame ++ crc16_be(frame)) END`.
pub fn encode(frame: &[u8], out: &mut BytesMut) {
    out.reserve(frame.len() * 2 + 6);
    out.put_u8(END);
    for &b in frame {
        put_escaped(out, b);
    }
    for b in crc16_ccitt_false(frame).to_be_bytes() {
        put_escaped(out, b);
    }
    out.put_u8(END);
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONNECT: &[u8] = &[0x0a, 0x04, 0x04, 0x01, 0x00, 0x3c, b'd', b'e', b'v', b'1'];

    fn encoded(frame: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        encode(frame, &mut out);
        out.to_vec()
    }

    fn all(d: &mut Decoder) -> Vec<Bytes> {
        std::iter::from_fn(|| d.next_frame()).collect()
    }

    #[test]
    fn connect_bytes_as_documented() {
        // docs/serial.md shows these exact bytes.
        let crc = crc16_ccitt_false(CONNECT);
        let mut want = vec![END];
        want.extend_from_slice(CONNECT);
        want.extend_from_slice(&crc.to_be_bytes());
        want.push(END);
        assert!(!crc.to_be_bytes().contains(&END) && !crc.to_be_bytes().contains(&ESC));
        assert_eq!(encoded(CONNECT), want);
        assert_eq!(crc, 0xBEEB);
    }

    #[test]
    fn escaped_bytes_round_trip() {
        let frame = [0x07, 0x0c, 0xc0, 0xdb, 0xdc, 0xdd, 0xc0];
        let wire = encoded(&frame);
        assert!(wire.windows(2).any(|w| w == [ESC, ESC_END]));
        assert!(wire.windows(2).any(|w| w == [ESC, ESC_ESC]));
        assert_eq!(wire.iter().filter(|&&b| b == END).count(), 2);
        for split in 0..wire.len() {
            let mut d = Decoder::new(1024);
            d.push(&wire[..split]);
            let mut got = all(&mut d);
            d.push(&wire[split..]);
            got.extend(all(&mut d));
            assert_eq!(got, vec![&frame[..]], "split at {split}");
        }
    }

    #[test]
    fn bad_crc_is_dropped_and_the_next_frame_accepted() {
        let mut bad = encoded(CONNECT);
        bad[3] ^= 0x01;
        let mut d = Decoder::new(1024);
        d.push(&bad);
        d.push(&encoded(CONNECT));
        assert_eq!(all(&mut d), vec![CONNECT]);
        assert_eq!(d.counters().bad_checksum, 1);
    }

    #[test]
    fn noise_bad_escape_and_runts_are_counted() {
        let mut d = Decoder::new(1024);
        d.push(&[0x11, 0x22, END, ESC, 0x01, END, 0x01, END, END]);
        d.push(&encoded(CONNECT));
        assert_eq!(all(&mut d), vec![CONNECT]);
        let c = d.counters();
        assert_eq!(c.frames, 1);
        assert!(c.skipped_octets >= 5, "{c:?}");
    }

    #[test]
    fn overlong_frame_is_discarded_to_its_end() {
        let mut d = Decoder::new(16);
        d.push(&[0x55; 100]);
        assert!(all(&mut d).is_empty());
        d.push(&[0x55; 10]);
        d.push(&encoded(CONNECT));
        assert_eq!(all(&mut d), vec![CONNECT]);
        assert_eq!(d.counters().oversized, 1);
        assert!(d.buf.len() <= 40);
    }

    #[test]
    fn reset_partial_drops_a_stalled_frame() {
        let mut d = Decoder::new(1024);
        let wire = encoded(CONNECT);
        d.push(&wire[1..5]); // no leading END: the partial run is all that is buffered
        assert!(d.has_partial());
        d.reset_partial();
        d.push(&wire);
        assert_eq!(all(&mut d), vec![CONNECT]);
        assert_eq!(d.counters().truncated, 1);
    }
}
