//! Target `decode`: arbitrary bytes as one MQTT-SN frame. Whatever decodes must re-encode (with
//! the length `encoded_len` promised) and decode to the same frame.

use bytes::Bytes;
use mqttsn_gateway::codec::decode;

pub fn run(data: &[u8]) {
    if let Ok(frame) = decode(Bytes::copy_from_slice(data)) {
        let encoded = frame.to_bytes().expect("a decoded frame must re-encode");
        assert_eq!(encoded.len(), frame.encoded_len());
        let again = decode(encoded).expect("a re-encoded frame must decode");
        assert_eq!(again, frame);
    }
}
