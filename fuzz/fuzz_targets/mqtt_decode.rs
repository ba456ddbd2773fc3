//! The MQTT 3.1.1 streaming decoder, whole and in chunks; see `bodies/mqtt_decode.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fuzz_bodies::mqtt_decode::run(data));
