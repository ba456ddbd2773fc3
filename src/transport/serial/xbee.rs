//! Digi XBee API framing (Zigbee / DigiMesh API frames), API mode 1 (`AP=1`) and 2 (`AP=2`).
//!
//! A frame on the line: `0x7E`, length (2 octets, big-endian, counts the frame data only),
//! frame data (API identifier + fields), checksum = `0xFF - (sum of frame data & 0xFF)`.
//! In mode 2 every octet after the 0x7E that is 0x7E, 0x7D, 0x11 or 0x13 is sent as 0x7D
//! followed by the octet XOR 0x20; a raw 0x7E then always starts a frame, which makes
//! resynchronisation exact. In mode 1 a 0x7E may appear inside a frame, so after a bad
//! checksum the search restarts one octet after the rejected start.
//!
//! In: Receive Packet (0x90): `0x90, src64[8], src16[2], options, RF data`. Every other API
//! frame (TX status, modem status, AT responses) is counted as ignored.
//! Out: Transmit Request (0x10): `0x10, frame id 0 (no TX status), dst64[8], dst16[2],
//! radius 0, options 0, RF data`. Broadcast is dst64 `00 00 00 00 00 00 FF FF`, dst16 `FF FE`.
//!
//! Owns: API frames 0x90 in and 0x10 out. Must never: pass on a frame with a bad checksum.

use std::collections::HashMap;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::Counters;

pub const START: u8 = 0x7E;
pub const ESCAPE: u8 = 0x7D;
pub const XON: u8 = 0x11;
pub const XOFF: u8 = 0x13;
pub const RECEIVE_PACKET: u8 = 0x90;
pub const TRANSMIT_REQUEST: u8 = 0x10;
/// The 64-bit broadcast address.
pub const BROADCAST_64: [u8; 8] = [0, 0, 0, 0, 0, 0, 0xFF, 0xFF];
/// "16-bit address unknown" (and the 16-bit broadcast address in a transmit request).
pub const UNKNOWN_16: u16 = 0xFFFE;
/// Frame data of a Receive Packet before the RF data.
const RECEIVE_HEADER: usize = 12;
/// Frame data of a Transmit Request before the RF data.
const TRANSMIT_HEADER: usize = 14;

/// The radio's `AP` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiMode {
    /// `AP=1`: no escaping.
    Unescaped,
    /// `AP=2`: 0x7E, 0x7D, 0x11, 0x13 escaped.
    Escaped,
}

/// A Receive Packet (0x90).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivePacket {
    pub addr64: [u8; 8],
    pub addr16: u16,
    pub options: u8,
    pub data: Bytes,
}

#[derive(Debug, PartialEq, Eq)]
enum Check {
    Incomplete,
    /// Octets before the next start delimiter.
    Garbage(usize),
    /// A raw 0x7E (mode 2) cut the frame short after this many octets.
    Truncated(usize),
    /// The length field is 0 or over the limit.
    BadLength {
        oversized: bool,
    },
    /// A complete frame: octets consumed on the line, unescaped frame data, checksum verdict.
    Frame {
        consumed: usize,
        data: BytesMut,
        checksum_ok: bool,
    },
}

/// Streaming decoder for XBee API frames.
#[derive(Debug)]
pub struct Decoder {
    mode: ApiMode,
    buf: BytesMut,
    max_data: usize,
    counters: Counters,
}

impl Decoder {
    /// Accepts RF data up to `max_frame_size` octets.
    pub fn new(mode: ApiMode, max_frame_size: usize) -> Self {
        Decoder {
            mode,
            buf: BytesMut::new(),
            max_data: max_frame_size.saturating_add(RECEIVE_HEADER),
            counters: Counters::default(),
        }
    }

    pub fn push(&mut self, octets: &[u8]) {
        self.buf.extend_from_slice(octets);
    }

    pub fn next_frame(&mut self) -> Option<ReceivePacket> {
        loop {
            match check(&self.buf, self.mode, self.max_data) {
                Check::Incomplete => return None,
                Check::Garbage(n) => {
                    self.counters.skipped_octets += n as u64;
                    self.buf.advance(n);
                }
                Check::Truncated(n) => {
                    self.counters.truncated += 1;
                    self.buf.advance(n);
                }
                Check::BadLength { oversized } => {
                    if oversized {
                        self.counters.oversized += 1;
                    } else {
                        self.counters.skipped_octets += 1;
                    }
                    self.buf.advance(1);
                }
                Check::Frame {
                    consumed,
                    data,
                    checksum_ok,
                } => {
                    if !checksum_ok {
                        self.counters.bad_checksum += 1;
                        // Mode 1: the 0x7E may have been data; look again from the next octet.
                        let skip = match self.mode {
                            ApiMode::Unescaped => 1,
                            ApiMode::Escaped => consumed,
                        };
                        self.buf.advance(skip);
                        continue;
                    }
                    self.buf.advance(consumed);
                    match parse_receive_packet(data.freeze()) {
                        Some(rx) => {
                            self.counters.frames += 1;
                            return Some(rx);
                        }
                        None => self.counters.ignored += 1,
                    }
                }
            }
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

fn check(buf: &[u8], mode: ApiMode, max_data: usize) -> Check {
    match buf.iter().position(|&b| b == START) {
        None if buf.is_empty() => return Check::Incomplete,
        None => return Check::Garbage(buf.len()),
        Some(0) => {}
        Some(n) => return Check::Garbage(n),
    }
    // Unescape after the delimiter until length + data + checksum are in hand.
    let mut data = BytesMut::new();
    let mut need = 2usize; // the length field first
    let mut len = 0usize;
    let mut i = 1usize;
    loop {
        if data.len() == need {
            if need == 2 {
                len = usize::from((&data[..]).get_u16());
                if len == 0 || len > max_data {
                    return Check::BadLength {
                        oversized: len > max_data,
                    };
                }
                need = 2 + len + 1;
                data.reserve(need);
                continue;
            }
            break;
        }
        let Some(&b) = buf.get(i) else {
            return Check::Incomplete;
        };
        let b = match (mode, b) {
            (ApiMode::Escaped, START) => return Check::Truncated(i),
            (ApiMode::Escaped, ESCAPE) => match buf.get(i + 1) {
                None => return Check::Incomplete,
                Some(&START) => return Check::Truncated(i + 1),
                Some(&next) => {
                    i += 1;
                    next ^ 0x20
                }
            },
            (_, b) => b,
        };
        data.put_u8(b);
        i += 1;
    }
    let sum = data
        .get(2..)
        .unwrap_or_default()
        .iter()
        .fold(0u8, |s, &b| s.wrapping_add(b));
    data.advance(2);
    data.truncate(len);
    Check::Frame {
        consumed: i,
        data,
        checksum_ok: sum == 0xFF,
    }
}

fn parse_receive_packet(mut data: Bytes) -> Option<ReceivePacket> {
    if data.len() < RECEIVE_HEADER || data.first() != Some(&RECEIVE_PACKET) {
        return None;
    }
    data.advance(1);
    let mut addr64 = [0u8; 8];
    data.copy_to_slice(&mut addr64);
    let addr16 = data.get_u16();
    let options = data.get_u8();
    Some(ReceivePacket {
        addr64,
        addr16,
        options,
        data,
    })
}

fn put(out: &mut BytesMut, mode: ApiMode, b: u8) {
    match (mode, b) {
        (ApiMode::Escaped, START | ESCAPE | XON | XOFF) => {
            out.extend_from_slice(&[ESCAPE, b ^ 0x20])
        }
        _ => out.put_u8(b),
    }
}

/// Appends one API frame around `frame_data` (API identifier first).
pub fn encode_api_frame(mode: ApiMode, frame_data: &[u8], out: &mut BytesMut) {
    let len = u16::try_from(frame_data.len()).unwrap_or(u16::MAX);
    let frame_data = frame_data.get(..usize::from(len)).unwrap_or_default();
    out.reserve(2 * (frame_data.len() + 3) + 1);
    out.put_u8(START);
    for b in len.to_be_bytes() {
        put(out, mode, b);
    }
    let mut sum = 0u8;
    for &b in frame_data {
        sum = sum.wrapping_add(b);
        put(out, mode, b);
    }
    put(out, mode, 0xFF - sum);
}

/// Appends a Transmit Request (0x10) carrying `rf_data` to `addr64` / `addr16`.
pub fn encode_transmit_request(
    mode: ApiMode,
    addr64: [u8; 8],
    addr16: u16,
    rf_data: &[u8],
    out: &mut BytesMut,
) {
    let mut data = BytesMut::with_capacity(TRANSMIT_HEADER + rf_data.len());
    data.put_u8(TRANSMIT_REQUEST);
    data.put_u8(0); // frame id 0: no TX status wanted
    data.put_slice(&addr64);
    data.put_u16(addr16);
    data.put_u8(0); // broadcast radius: the radio's maximum
    data.put_u8(0); // options
    data.put_slice(rf_data);
    encode_api_frame(mode, &data, out);
}

/// Appends a Receive Packet (0x90): what the local radio hands the gateway. For tests and
/// for simulating a radio.
pub fn encode_receive_packet(
    mode: ApiMode,
    addr64: [u8; 8],
    addr16: u16,
    rf_data: &[u8],
    out: &mut BytesMut,
) {
    let mut data = BytesMut::with_capacity(RECEIVE_HEADER + rf_data.len());
    data.put_u8(RECEIVE_PACKET);
    data.put_slice(&addr64);
    data.put_u16(addr16);
    data.put_u8(0x01); // options: acknowledged
    data.put_slice(rf_data);
    encode_api_frame(mode, &data, out);
}

/// A Transmit Request (0x10) as the radio reads it: destination and RF data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransmitRequest {
    pub addr64: [u8; 8],
    pub addr16: u16,
    pub data: Bytes,
}

/// Decodes Transmit Requests: the radio's side of the line (tests, simulators).
#[derive(Debug)]
pub struct TransmitDecoder {
    mode: ApiMode,
    buf: BytesMut,
    max_data: usize,
}

impl TransmitDecoder {
    pub fn new(mode: ApiMode, max_frame_size: usize) -> Self {
        TransmitDecoder {
            mode,
            buf: BytesMut::new(),
            max_data: max_frame_size.saturating_add(TRANSMIT_HEADER),
        }
    }

    pub fn push(&mut self, octets: &[u8]) {
        self.buf.extend_from_slice(octets);
    }

    /// The next well-formed Transmit Request; anything else is skipped.
    pub fn next_request(&mut self) -> Option<TransmitRequest> {
        loop {
            match check(&self.buf, self.mode, self.max_data) {
                Check::Incomplete => return None,
                Check::Garbage(n) | Check::Truncated(n) => self.buf.advance(n),
                Check::BadLength { .. } => self.buf.advance(1),
                Check::Frame {
                    consumed,
                    mut data,
                    checksum_ok,
                } => {
                    self.buf.advance(consumed);
                    if !checksum_ok
                        || data.len() < TRANSMIT_HEADER
                        || data.first() != Some(&TRANSMIT_REQUEST)
                    {
                        continue;
                    }
                    data.advance(2);
                    let mut addr64 = [0u8; 8];
                    data.copy_to_slice(&mut addr64);
                    let addr16 = data.get_u16();
                    data.advance(2);
                    return Some(TransmitRequest {
                        addr64,
                        addr16,
                        data: data.freeze(),
                    });
                }
            }
        }
    }
}

/// The 16-bit address last heard from each remote radio, for replies. Bounded: when full, an
/// arbitrary entry is forgotten (a reply then goes out with 0xFFFE, which the radio resolves).
#[derive(Debug)]
pub struct AddressBook {
    map: HashMap<[u8; 8], u16>,
    capacity: usize,
}

impl AddressBook {
    pub fn new(capacity: usize) -> Self {
        AddressBook {
            map: HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    pub fn learn(&mut self, addr64: [u8; 8], addr16: u16) {
        if !self.map.contains_key(&addr64) && self.map.len() >= self.capacity {
            if let Some(victim) = self.map.keys().next().copied() {
                self.map.remove(&victim);
            }
        }
        self.map.insert(addr64, addr16);
    }

    pub fn lookup(&self, addr64: &[u8]) -> Option<u16> {
        let key = <[u8; 8]>::try_from(addr64).ok()?;
        self.map.get(&key).copied()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONNECT: &[u8] = &[0x0a, 0x04, 0x04, 0x01, 0x00, 0x3c, b'd', b'e', b'v', b'1'];
    const A: [u8; 8] = [0x00, 0x13, 0xa2, 0x00, 0x41, 0x52, 0x7e, 0x11];
    const B: [u8; 8] = [0x00, 0x13, 0xa2, 0x00, 0x40, 0x0a, 0x01, 0x27];

    fn rx(mode: ApiMode, addr64: [u8; 8], addr16: u16, data: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        encode_receive_packet(mode, addr64, addr16, data, &mut out);
        out.to_vec()
    }

    fn all(d: &mut Decoder) -> Vec<ReceivePacket> {
        std::iter::from_fn(|| d.next_frame()).collect()
    }

    #[test]
    fn digi_example_checksum() {
        // Digi's documented AT command frame "NJ": 7E 00 04 08 01 4E 4A 5E.
        let mut out = BytesMut::new();
        encode_api_frame(ApiMode::Unescaped, &[0x08, 0x01, 0x4E, 0x4A], &mut out);
        assert_eq!(&out[..], &[0x7E, 0x00, 0x04, 0x08, 0x01, 0x4E, 0x4A, 0x5E]);
    }

    /// The hex examples in docs/serial.md.
    #[test]
    fn documented_examples() {
        let hex = |s: &str| -> Vec<u8> {
            s.split_whitespace()
                .map(|b| u8::from_str_radix(b, 16).unwrap())
                .collect()
        };
        let mut out = BytesMut::new();
        encode_receive_packet(ApiMode::Unescaped, A, 0x7d33, CONNECT, &mut out);
        assert_eq!(
            out.to_vec(),
            hex("7E 00 16 90 00 13 A2 00 41 52 7E 11 7D 33 01 0A 04 04 01 00 3C 64 65 76 31 28")
        );
        out.clear();
        encode_receive_packet(ApiMode::Escaped, A, 0x7d33, CONNECT, &mut out);
        assert_eq!(
            out.to_vec(),
            hex("7E 00 16 90 00 7D 33 A2 00 41 52 7D 5E 7D 31 7D 5D 33 01 0A 04 04 01 00 3C 64 65 76 31 28")
        );
        out.clear();
        encode_transmit_request(ApiMode::Escaped, A, 0x7d33, &[0x03, 0x05, 0x00], &mut out);
        assert_eq!(
            out.to_vec(),
            hex("7E 00 7D 31 10 00 00 7D 33 A2 00 41 52 7D 5E 7D 31 7D 5D 33 00 00 03 05 00 60")
        );
        out.clear();
        let advertise = [0x05, 0x00, 0x01, 0x03, 0x84];
        encode_transmit_request(
            ApiMode::Unescaped,
            BROADCAST_64,
            UNKNOWN_16,
            &advertise,
            &mut out,
        );
        assert_eq!(
            out.to_vec(),
            hex("7E 00 13 10 00 00 00 00 00 00 00 FF FF FF FE 00 00 05 00 01 03 84 67")
        );
    }

    #[test]
    fn transmit_request_bytes_as_documented() {
        let mut out = BytesMut::new();
        encode_transmit_request(ApiMode::Unescaped, B, 0x1234, CONNECT, &mut out);
        let mut want = vec![0x7E, 0x00, 0x18, 0x10, 0x00];
        want.extend_from_slice(&B);
        want.extend_from_slice(&[0x12, 0x34, 0x00, 0x00]);
        want.extend_from_slice(CONNECT);
        let sum = want[3..].iter().fold(0u8, |s, &b| s.wrapping_add(b));
        want.push(0xFF - sum);
        assert_eq!(&out[..], &want[..]);
    }

    #[test]
    fn both_modes_decode_split_anywhere() {
        for mode in [ApiMode::Unescaped, ApiMode::Escaped] {
            let wire = [rx(mode, A, 0x7d11, CONNECT), rx(mode, B, 0xfffe, CONNECT)].concat();
            for split in 0..wire.len() {
                let mut d = Decoder::new(mode, 1024);
                d.push(&wire[..split]);
                let mut got = all(&mut d);
                d.push(&wire[split..]);
                got.extend(all(&mut d));
                assert_eq!(got.len(), 2, "{mode:?} split at {split}");
                assert_eq!((got[0].addr64, got[0].addr16), (A, 0x7d11));
                assert_eq!((got[1].addr64, got[1].addr16), (B, 0xfffe));
                assert_eq!(&got[1].data[..], CONNECT);
            }
        }
    }

    #[test]
    fn escaped_bytes_round_trip() {
        let payload = [0x7e, 0x7d, 0x11, 0x13, 0x00, 0xff];
        let wire = rx(ApiMode::Escaped, A, 0x7e7d, &payload);
        // After the start delimiter no raw special octet remains.
        assert!(!wire[1..].contains(&START));
        assert!(!wire[1..].contains(&XON) && !wire[1..].contains(&XOFF));
        let mut d = Decoder::new(ApiMode::Escaped, 1024);
        d.push(&wire);
        let got = all(&mut d);
        assert_eq!(got.len(), 1);
        assert_eq!(
            (&got[0].data[..], got[0].addr64, got[0].addr16),
            (&payload[..], A, 0x7e7d)
        );

        let mut out = BytesMut::new();
        encode_transmit_request(ApiMode::Escaped, A, 0x7e7d, &payload, &mut out);
        let mut t = TransmitDecoder::new(ApiMode::Escaped, 1024);
        t.push(&out);
        let req = t.next_request().unwrap();
        assert_eq!(
            (&req.data[..], req.addr64, req.addr16),
            (&payload[..], A, 0x7e7d)
        );
    }

    #[test]
    fn bad_checksum_is_skipped_and_the_next_frame_accepted() {
        for mode in [ApiMode::Unescaped, ApiMode::Escaped] {
            let mut bad = rx(mode, A, 1, CONNECT);
            let last = bad.len() - 1;
            bad[last] = bad[last].wrapping_add(1);
            if matches!(bad[last], START | ESCAPE | XON | XOFF) {
                bad[last] = bad[last].wrapping_add(1);
            }
            let mut d = Decoder::new(mode, 1024);
            d.push(&bad);
            d.push(&rx(mode, B, 2, CONNECT));
            let got = all(&mut d);
            assert_eq!(got.len(), 1, "{mode:?}");
            assert_eq!(got[0].addr64, B);
            assert_eq!(d.counters().bad_checksum, 1);
        }
    }

    #[test]
    fn other_api_frames_are_ignored_and_noise_skipped() {
        let mut d = Decoder::new(ApiMode::Unescaped, 1024);
        d.push(&[0x00, 0x55]);
        let mut status = BytesMut::new();
        encode_api_frame(ApiMode::Unescaped, &[0x8A, 0x00], &mut status); // modem status
        d.push(&status);
        d.push(&rx(ApiMode::Unescaped, A, 1, CONNECT));
        assert_eq!(all(&mut d).len(), 1);
        let c = d.counters();
        assert_eq!((c.skipped_octets, c.ignored, c.frames), (2, 1, 1));
    }

    #[test]
    fn mode2_truncated_frame_is_cut_by_the_next_start() {
        let good = rx(ApiMode::Escaped, A, 1, CONNECT);
        let mut d = Decoder::new(ApiMode::Escaped, 1024);
        d.push(&good[..7]);
        d.push(&good);
        assert_eq!(all(&mut d).len(), 1);
        assert_eq!(d.counters().truncated, 1);
    }

    #[test]
    fn oversized_length_and_reset_partial() {
        let mut d = Decoder::new(ApiMode::Unescaped, 16);
        d.push(&[START, 0x10, 0x00]);
        assert!(all(&mut d).is_empty());
        assert_eq!(d.counters().oversized, 1);
        d.push(&[START, 0x00, 0x14, 0x90]);
        assert!(all(&mut d).is_empty());
        assert!(d.has_partial());
        d.reset_partial();
        assert_eq!(d.counters().truncated, 1);
        d.push(&rx(ApiMode::Unescaped, A, 1, CONNECT));
        assert_eq!(all(&mut d).len(), 1);
    }

    #[test]
    fn arbitrary_input_never_panics() {
        for mode in [ApiMode::Unescaped, ApiMode::Escaped] {
            let mut d = Decoder::new(mode, 64);
            let mut x: u32 = 7;
            for _ in 0..20_000 {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                let mut b = x.to_le_bytes();
                if x.is_multiple_of(7) {
                    b[0] = START;
                }
                d.push(&b);
                while d.next_frame().is_some() {}
                assert!(d.buf.len() <= 2 * (64 + 12 + 3) + 8);
            }
        }
    }

    #[test]
    fn address_book_is_bounded() {
        let mut book = AddressBook::new(2);
        book.learn(A, 1);
        book.learn(B, 2);
        book.learn([9; 8], 3);
        assert_eq!(book.len(), 2);
        assert_eq!(book.lookup(&[9; 8]), Some(3));
        assert_eq!(book.lookup(&[1, 2]), None);
    }
}
