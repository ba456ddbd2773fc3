//! Decodes arbitrary bytes as one MQTT-SN frame; see `bodies/sn_decode.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fuzz_bodies::sn_decode::run(data));
