//! PINGREQ (§3.12), PINGRESP (§3.13) and DISCONNECT (§3.14): no variable header, no payload.
//!
//! Owns: the fact that these bodies are empty. Decoding needs no code beyond the dispatcher's
//! trailing-byte check. Must never: write a body byte.

pub(super) fn body_len() -> usize {
    0
}

#[cfg(test)]
mod tests {
    use crate::mqtt::test_util::encode;
    use crate::mqtt::Packet;

    #[test]
    fn pingreq_pingresp_disconnect_vectors() {
        assert_eq!(encode(&Packet::PingReq), vec![0xC0, 0x00]);
        assert_eq!(encode(&Packet::PingResp), vec![0xD0, 0x00]);
        assert_eq!(encode(&Packet::Disconnect), vec![0xE0, 0x00]);
    }
}
