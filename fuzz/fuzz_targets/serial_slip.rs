//! The SLIP + CRC-16 serial framing, whole and in chunks; see `bodies/serial.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fuzz_bodies::serial::slip(data));
