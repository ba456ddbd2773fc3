//! Decodes arbitrary bytes as one frame; whatever decodes must re-encode and decode to the same
//! frame. Panics (including inside the codec) are what libFuzzer reports.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use mqttsn_gateway::codec::decode;

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = decode(Bytes::copy_from_slice(data)) {
        let encoded = frame.to_bytes().expect("a decoded frame must re-encode");
        assert_eq!(encoded.len(), frame.encoded_len());
        let again = decode(encoded).expect("a re-encoded frame must decode");
        assert_eq!(again, frame);
    }
});
