//! Target `mqtt_decode`: the MQTT 3.1.1 streaming decoder (`mqtt::decode`) on a TCP receive
//! stream made of well-formed packets (encoded from arbitrary fields) and raw octets, under an
//! arbitrary packet-size cap.
//!
//! Checks: no panic; a packet never takes more than its header plus the cap; every decoded
//! packet re-encodes and decodes to itself; feeding the stream in one piece or cut at
//! arbitrary points gives the same packets and the same final error (or the same incomplete
//! tail); and a stream of only well-formed packets decodes to exactly those packets, up to the
//! first one over the cap, which is refused with `PacketTooLarge` before its body arrives.

use arbitrary::{Result, Unstructured};
use bytes::BytesMut;
use mqttsn_gateway::mqtt::{self, DecodeError, Packet, MAX_REMAINING_LENGTH};

use super::gen;

pub fn run(data: &[u8]) {
    let _ = body(&mut Unstructured::new(data));
}

/// How decoding a stream ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// Waiting for more octets, with this many buffered.
    Incomplete(usize),
    Error(DecodeError),
}

/// Decodes everything `buf` holds; `Some` once the stream is broken.
fn drain(buf: &mut BytesMut, max: usize, out: &mut Vec<Packet>) -> Option<DecodeError> {
    loop {
        let before = buf.len();
        match mqtt::decode(buf, max) {
            Ok(Some(p)) => {
                let taken = before - buf.len();
                assert!(
                    taken >= 2 && taken <= 5 + max,
                    "took {taken} octets, cap {max}"
                );
                let again = p.to_bytes().expect("a decoded packet re-encodes");
                assert_eq!(Ok(again.len()), p.encoded_len());
                let mut again = BytesMut::from(&again[..]);
                let back = mqtt::decode(&mut again, MAX_REMAINING_LENGTH);
                assert_eq!(
                    back,
                    Ok(Some(p.clone())),
                    "re-encoded packet decodes to itself"
                );
                assert!(again.is_empty());
                out.push(p);
            }
            Ok(None) => {
                assert_eq!(buf.len(), before, "an incomplete packet consumes nothing");
                return None;
            }
            Err(e) => return Some(e),
        }
    }
}

fn end(buf: &BytesMut, err: Option<DecodeError>) -> End {
    match err {
        Some(e) => End::Error(e),
        None => End::Incomplete(buf.len()),
    }
}

/// Remaining Length of one encoded packet.
fn remaining_len(encoded: &[u8]) -> usize {
    let len_octets = 1 + encoded
        .get(1..)
        .unwrap_or_default()
        .iter()
        .take_while(|b| **b & 0x80 != 0)
        .count();
    encoded.len() - 1 - len_octets
}

fn body(u: &mut Unstructured<'_>) -> Result<()> {
    let max = gen::pick(
        u,
        &[
            0,
            1,
            2,
            64,
            127,
            128,
            300,
            16_383,
            16_384,
            65_536,
            MAX_REMAINING_LENGTH,
        ],
    )?;
    let mut stream = Vec::new();
    // The well-formed packets, while nothing else has been put in the stream.
    let mut expected: Option<Vec<(Packet, usize)>> = Some(Vec::new());
    for _ in 0..u.int_in_range(0..=8)? {
        if u.ratio(2, 3)? {
            let p = gen::mqtt_packet(u, &[1, 2, 0xFFFF])?;
            if let Ok(b) = p.to_bytes() {
                assert_eq!(Ok(b.len()), p.encoded_len());
                if let Some(e) = &mut expected {
                    e.push((p, remaining_len(&b)));
                }
                stream.extend_from_slice(&b);
            }
        } else {
            let raw = gen::bytes(u, 64)?;
            if !raw.is_empty() {
                expected = None;
            }
            stream.extend_from_slice(&raw);
        }
    }
    let mut cuts = Vec::new();
    for _ in 0..u.int_in_range(0..=8)? {
        cuts.push(usize::from(u.arbitrary::<u16>()?));
    }
    let rest = u.bytes(u.len())?;
    if !rest.is_empty() {
        expected = None;
    }
    stream.extend_from_slice(rest);

    // In one piece.
    let mut whole = BytesMut::from(&stream[..]);
    let mut whole_packets = Vec::new();
    let whole_err = drain(&mut whole, max, &mut whole_packets);
    let whole_end = end(&whole, whole_err);

    // Cut at the chosen points.
    let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (stream.len() + 1)).collect();
    cuts.push(stream.len());
    cuts.sort_unstable();
    let mut buf = BytesMut::new();
    let mut packets = Vec::new();
    let mut err = None;
    let mut from = 0;
    for cut in cuts {
        buf.extend_from_slice(&stream[from..cut]);
        from = cut;
        err = drain(&mut buf, max, &mut packets);
        if err.is_some() {
            break;
        }
    }
    assert_eq!(
        packets, whole_packets,
        "chunked and whole decoding disagree"
    );
    assert_eq!(
        end(&buf, err),
        whole_end,
        "chunked and whole decoding end differently"
    );

    if let Some(expected) = expected {
        let mut want = Vec::new();
        let mut want_end = End::Incomplete(0);
        for (p, remaining) in expected {
            if remaining > max {
                want_end = End::Error(DecodeError::PacketTooLarge {
                    size: remaining,
                    max,
                });
                break;
            }
            want.push(p);
        }
        assert_eq!(
            whole_packets, want,
            "well-formed packets decode to themselves"
        );
        assert_eq!(whole_end, want_end);
    }
    Ok(())
}
