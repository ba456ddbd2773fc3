//! The payload stamp every bench message carries (phase, device, sequence, send time) and the
//! phase numbers that tell one test's messages from another's.
//! Owns: the stamp's layout. Never: anything about sockets or processes.

use crate::*;

pub(crate) static EPOCH: OnceLock<Instant> = OnceLock::new();

pub(crate) fn now_ns() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

pub(crate) const PHASE_CEILING: u8 = 1;
pub(crate) const PHASE_UP0: u8 = 2;
pub(crate) const PHASE_UP1: u8 = 3;
pub(crate) const PHASE_DOWN: u8 = 4;
pub(crate) const PHASE_LAT: u8 = 5;
pub(crate) const PHASE_LAT_DIRECT: u8 = 6;
pub(crate) const PHASE_SLEEP: u8 = 7;
pub(crate) const PHASE_WAKE: u8 = 8;
pub(crate) const PHASE_WARM: u8 = 9;
pub(crate) const PHASE_STORE2: u8 = 10;
pub(crate) const PHASE_STORE_SLEEP: u8 = 11;
pub(crate) const PHASE_STORE_TP1: u8 = 12;
pub(crate) const PHASE_STORE_TP2: u8 = 13;
/// Sleep duration the sleeping devices ask for (s): far longer than the test.
pub(crate) const SLEEP_DURATION: u16 = 36000;
pub(crate) const STAMP: usize = 17;
/// The gateway's default `sleep.buffer_messages` (the bench does not change it).
pub(crate) const SLEEP_BUFFER_MESSAGES: usize = 100;

/// Writes phase, device, sequence and send time into the last `STAMP` octets' place: the
/// payload is always the tail of an encoded PUBLISH (MQTT and MQTT-SN alike).
pub(crate) fn stamp(frame: &mut [u8], payload_len: usize, phase: u8, dev: u32, seq: u32) {
    let at = frame.len() - payload_len;
    let p = &mut frame[at..];
    p[0] = phase;
    p[1..5].copy_from_slice(&dev.to_le_bytes());
    p[5..9].copy_from_slice(&seq.to_le_bytes());
    p[9..17].copy_from_slice(&now_ns().to_le_bytes());
}

pub(crate) fn read_stamp(p: &[u8]) -> Option<(u8, u64)> {
    if p.len() < STAMP {
        return None;
    }
    Some((p[0], u64::from_le_bytes(p[9..17].try_into().ok()?)))
}
