//! Serial framings: one module per way of delimiting MQTT-SN frames on a UART.
//!
//! | module | on the line | addresses |
//! |---|---|---|
//! | [`raw`] | the MQTT-SN message itself, delimited by its Length field | none (point-to-point) |
//! | [`slip`] | RFC 1055 SLIP with a CRC-16/CCITT-FALSE trailer | none (point-to-point) |
//! | [`xbee`] | Digi XBee API frames, mode 1 or 2 | 64-bit (+16-bit) per remote radio |
//!
//! Every decoder has the same shape (check-then-parse, as in mini-redis): [`Decoder::push`]
//! appends received octets, [`Decoder::next_frame`] yields complete frames until it needs more
//! input, [`Decoder::reset_partial`] drops a frame stalled half-way (the caller decides when:
//! after an idle gap on the line; the codec has no clock). Malformed input is skipped and
//! counted in [`Counters`], never an error and never a panic. The buffer holds at most one
//! partial frame plus the octets of the last `push`.
//!
//! Docs with the bytes on the wire: `docs/serial.md`.
//!
//! Owns: the [`Decoder`] shape and [`Counters`]. Must never: open a port, read a clock, or panic.

// Input must never be able to panic a decoder; clippy enforces it outside tests.
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

pub mod crc;
pub mod raw;
pub mod slip;
pub mod xbee;

use bytes::{Bytes, BytesMut};

/// What a decoder has seen and dropped. Monotonic; the shell logs and exports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Frames handed on.
    pub frames: u64,
    /// Octets skipped while looking for the start of a frame (line noise, resynchronisation).
    pub skipped_octets: u64,
    /// Frames whose checksum or CRC did not match.
    pub bad_checksum: u64,
    /// Frames longer than the decoder's limit.
    pub oversized: u64,
    /// Frames started but never finished: cut by [`Decoder::reset_partial`] or by the start of
    /// another frame.
    pub truncated: u64,
    /// Well-formed frames of a kind this gateway does not use (e.g. an XBee modem status).
    pub ignored: u64,
}

/// Which framing, with its parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Raw,
    Slip,
    Xbee { api_mode: xbee::ApiMode },
}

/// One frame received from the line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbound {
    /// The sender's link address: empty for raw and SLIP; for XBee the 64-bit source address
    /// (8 octets, big-endian).
    pub link: Bytes,
    /// For XBee, the sender's 16-bit network address (0xFFFE when unknown); keep it for
    /// replies.
    pub short_addr: Option<u16>,
    /// The MQTT-SN frame (possibly forwarder-encapsulated).
    pub frame: Bytes,
}

/// Where an outbound frame goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination<'a> {
    /// One peer: its link address (empty for point-to-point) and, for XBee, its 16-bit
    /// address if known.
    Unicast {
        link: &'a [u8],
        short_addr: Option<u16>,
    },
    /// Everyone on the link (XBee broadcast; the one peer for point-to-point).
    Broadcast,
}

/// A decoder for any [`Framing`].
#[derive(Debug)]
pub enum Decoder {
    Raw(raw::Decoder),
    Slip(slip::Decoder),
    Xbee(xbee::Decoder),
}

impl Decoder {
    /// A decoder for `framing` accepting MQTT-SN frames up to `max_frame_size` octets.
    pub fn new(framing: Framing, max_frame_size: usize) -> Self {
        match framing {
            Framing::Raw => Decoder::Raw(raw::Decoder::new(max_frame_size)),
            Framing::Slip => Decoder::Slip(slip::Decoder::new(max_frame_size)),
            Framing::Xbee { api_mode } => {
                Decoder::Xbee(xbee::Decoder::new(api_mode, max_frame_size))
            }
        }
    }

    /// Appends octets read from the line.
    pub fn push(&mut self, octets: &[u8]) {
        match self {
            Decoder::Raw(d) => d.push(octets),
            Decoder::Slip(d) => d.push(octets),
            Decoder::Xbee(d) => d.push(octets),
        }
    }

    /// The next complete frame, or `None` when more input is needed.
    pub fn next_frame(&mut self) -> Option<Inbound> {
        match self {
            Decoder::Raw(d) => d.next_frame().map(|frame| Inbound {
                link: Bytes::new(),
                short_addr: None,
                frame,
            }),
            Decoder::Slip(d) => d.next_frame().map(|frame| Inbound {
                link: Bytes::new(),
                short_addr: None,
                frame,
            }),
            Decoder::Xbee(d) => d.next_frame().map(|rx| Inbound {
                link: Bytes::copy_from_slice(&rx.addr64),
                short_addr: Some(rx.addr16),
                frame: rx.data,
            }),
        }
    }

    /// True while part of a frame is buffered: the caller starts its idle timer.
    pub fn has_partial(&self) -> bool {
        match self {
            Decoder::Raw(d) => d.has_partial(),
            Decoder::Slip(d) => d.has_partial(),
            Decoder::Xbee(d) => d.has_partial(),
        }
    }

    /// Drops a partly received frame (the line went quiet half-way); counted as truncated.
    pub fn reset_partial(&mut self) {
        match self {
            Decoder::Raw(d) => d.reset_partial(),
            Decoder::Slip(d) => d.reset_partial(),
            Decoder::Xbee(d) => d.reset_partial(),
        }
    }

    pub fn counters(&self) -> Counters {
        match self {
            Decoder::Raw(d) => d.counters(),
            Decoder::Slip(d) => d.counters(),
            Decoder::Xbee(d) => d.counters(),
        }
    }
}

/// Appends `frame` framed for the line. XBee needs the destination; raw and SLIP ignore it.
pub fn encode(framing: Framing, to: &Destination<'_>, frame: &[u8], out: &mut BytesMut) {
    match framing {
        Framing::Raw => raw::encode(frame, out),
        Framing::Slip => slip::encode(frame, out),
        Framing::Xbee { api_mode } => {
            let (addr64, addr16) = match to {
                Destination::Unicast { link, short_addr } => (
                    <[u8; 8]>::try_from(*link).unwrap_or(xbee::BROADCAST_64),
                    short_addr.unwrap_or(xbee::UNKNOWN_16),
                ),
                Destination::Broadcast => (xbee::BROADCAST_64, xbee::UNKNOWN_16),
            };
            xbee::encode_transmit_request(api_mode, addr64, addr16, frame, out)
        }
    }
}
