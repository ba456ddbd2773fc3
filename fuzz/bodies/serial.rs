//! Targets `serial_raw`, `serial_slip`, `serial_xbee`: the serial de-framers of
//! `transport::serial` on a line carrying well-formed frames (MQTT-SN frames, or for SLIP and
//! XBee any payload) mixed with line noise, under an arbitrary frame-size limit.
//!
//! Checks: no panic; no frame over the limit is handed on (raw: and each one decodes as
//! MQTT-SN); pushing the line in one piece or cut at arbitrary points yields the same frames;
//! the frame counter counts them; `reset_partial` leaves nothing buffered; a line of only
//! well-formed frames yields exactly those that fit (SLIP and XBee mode 2 also skip the ones
//! that do not and resynchronise exactly); and for XBee, every frame sent back to its sender
//! (Transmit Request, unicast and broadcast) decodes on the radio's side to the same RF data.

use arbitrary::{Arbitrary, Result, Unstructured};
use bytes::{Bytes, BytesMut};
use mqttsn_gateway::codec::{self, Encapsulation, Frame};
use mqttsn_gateway::transport::serial::{
    self, raw, slip, xbee, Decoder, Destination, Framing, Inbound,
};

use super::gen;

pub fn raw(data: &[u8]) {
    let _ = body(&mut Unstructured::new(data), |_| Ok(Framing::Raw));
}

pub fn slip(data: &[u8]) {
    let _ = body(&mut Unstructured::new(data), |_| Ok(Framing::Slip));
}

/// Both API modes: the first choice of the input picks one.
pub fn xbee(data: &[u8]) {
    let _ = body(&mut Unstructured::new(data), |u| {
        Ok(Framing::Xbee {
            api_mode: gen::pick(u, &[xbee::ApiMode::Unescaped, xbee::ApiMode::Escaped])?,
        })
    });
}

/// An MQTT-SN frame, sometimes forwarder-encapsulated; `None` if those fields do not encode.
fn sn_frame(u: &mut Unstructured<'_>) -> Result<Option<Bytes>> {
    let encapsulation = if u.ratio(1, 4)? {
        Some(Encapsulation {
            ctrl: u.int_in_range(0..=3)?,
            wireless_node_id: gen::bytes(u, 8)?,
        })
    } else {
        None
    };
    let message = gen::sn_message(u, &gen::Hints::default())?;
    Ok(Frame {
        encapsulation,
        message,
    }
    .to_bytes()
    .ok())
}

fn collect(d: &mut Decoder, out: &mut Vec<Inbound>) {
    while let Some(f) = d.next_frame() {
        out.push(f);
    }
}

fn body(
    u: &mut Unstructured<'_>,
    framing: impl FnOnce(&mut Unstructured<'_>) -> Result<Framing>,
) -> Result<()> {
    let framing = framing(u)?;
    let max = gen::pick(u, &[0, 1, 2, 3, 16, 64, 255, 256, 1024, 65_535])?;
    // Exact resynchronisation after a frame that is too long: SLIP (END) and XBee mode 2 (a raw
    // 0x7E only ever starts a frame). Raw and XBee mode 1 may find a false frame inside it.
    let exact_resync = matches!(
        framing,
        Framing::Slip
            | Framing::Xbee {
                api_mode: xbee::ApiMode::Escaped
            }
    );

    let mut line = BytesMut::new();
    let mut expected = Some(Vec::new());
    for _ in 0..u.int_in_range(0..=8)? {
        if u.ratio(1, 4)? {
            let noise = gen::bytes(u, 48)?;
            if !noise.is_empty() {
                expected = None;
            }
            line.extend_from_slice(&noise);
            continue;
        }
        let payload = match framing {
            Framing::Raw => sn_frame(u)?,
            _ if u.ratio(1, 2)? => sn_frame(u)?,
            _ => Some(gen::bytes(u, 96)?),
        };
        let Some(payload) = payload else { continue };
        let (link, short_addr, fits) = match framing {
            Framing::Raw => {
                raw::encode(&payload, &mut line);
                (Bytes::new(), None, payload.len() <= max)
            }
            Framing::Slip => {
                slip::encode(&payload, &mut line);
                (
                    Bytes::new(),
                    None,
                    !payload.is_empty() && payload.len() <= max,
                )
            }
            Framing::Xbee { api_mode } => {
                let addr64 = if u.ratio(1, 2)? {
                    [0x00, 0x13, 0xA2, 0x00, 0x41, 0x7E, 0x7D, 0x11]
                } else {
                    <[u8; 8]>::arbitrary(u)?
                };
                let addr16 = u16::arbitrary(u)?;
                xbee::encode_receive_packet(api_mode, addr64, addr16, &payload, &mut line);
                (
                    Bytes::copy_from_slice(&addr64),
                    Some(addr16),
                    payload.len() <= max,
                )
            }
        };
        match &mut expected {
            Some(e) if fits => e.push(Inbound {
                link,
                short_addr,
                frame: payload,
            }),
            Some(_) if !exact_resync => expected = None,
            _ => {}
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
    line.extend_from_slice(rest);

    let mut whole = Decoder::new(framing, max);
    whole.push(&line);
    let mut whole_frames = Vec::new();
    collect(&mut whole, &mut whole_frames);

    let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (line.len() + 1)).collect();
    cuts.push(line.len());
    cuts.sort_unstable();
    let mut chunked = Decoder::new(framing, max);
    let mut frames = Vec::new();
    let mut from = 0;
    for cut in cuts {
        chunked.push(&line[from..cut]);
        from = cut;
        collect(&mut chunked, &mut frames);
    }
    assert_eq!(
        frames, whole_frames,
        "chunked and whole de-framing disagree"
    );

    for d in [&mut whole, &mut chunked] {
        assert_eq!(d.counters().frames, whole_frames.len() as u64);
        d.reset_partial();
        assert!(!d.has_partial());
        assert!(d.next_frame().is_none());
    }
    for f in &whole_frames {
        assert!(
            f.frame.len() <= max,
            "frame of {} octets, limit {max}",
            f.frame.len()
        );
        match framing {
            Framing::Raw => {
                assert!(codec::decode(f.frame.clone()).is_ok(), "raw frame decodes");
                assert!(f.link.is_empty() && f.short_addr.is_none());
            }
            Framing::Slip => assert!(f.link.is_empty() && f.short_addr.is_none()),
            Framing::Xbee { api_mode } => {
                assert_eq!(f.link.len(), 8);
                assert!(f.short_addr.is_some());
                reply_round_trip(api_mode, max, f);
            }
        }
    }
    if let Some(expected) = expected {
        assert_eq!(
            whole_frames, expected,
            "well-formed frames come back as sent"
        );
    }
    Ok(())
}

/// What the gateway sends back to `f`'s sender (and to everyone) reaches the radio intact.
fn reply_round_trip(api_mode: xbee::ApiMode, max: usize, f: &Inbound) {
    let framing = Framing::Xbee { api_mode };
    let mut radio = xbee::TransmitDecoder::new(api_mode, max);
    let mut out = BytesMut::new();
    let to = Destination::Unicast {
        link: &f.link,
        short_addr: f.short_addr,
    };
    serial::encode(framing, &to, &f.frame, &mut out);
    serial::encode(framing, &Destination::Broadcast, &f.frame, &mut out);
    radio.push(&out);
    let unicast = radio.next_request().expect("the unicast reply decodes");
    assert_eq!(&unicast.addr64[..], &f.link[..]);
    assert_eq!(Some(unicast.addr16), f.short_addr);
    assert_eq!(unicast.data, f.frame);
    let broadcast = radio.next_request().expect("the broadcast decodes");
    assert_eq!(broadcast.addr64, xbee::BROADCAST_64);
    assert_eq!(broadcast.addr16, xbee::UNKNOWN_16);
    assert_eq!(broadcast.data, f.frame);
    assert!(radio.next_request().is_none());
}
