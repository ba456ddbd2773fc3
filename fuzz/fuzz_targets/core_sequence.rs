//! A `Gateway` driven by a fuzzed sequence of inputs against a simulated broker and store;
//! see `bodies/core_sequence.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fuzz_bodies::core_sequence::run(data));
