//! Cross-message tests: property round trips over every message kind (plain, encapsulated, both
//! Length forms), header-level malformed cases, and "arbitrary bytes never panic".
//! Per-kind byte vectors live next to each kind in `message/*.rs`.

use bytes::{Bytes, BytesMut};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;

use super::*;

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::MinusOne),
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce),
    ]
}

fn return_code() -> impl Strategy<Value = ReturnCode> {
    prop_oneof![
        Just(ReturnCode::Accepted),
        Just(ReturnCode::Congestion),
        Just(ReturnCode::InvalidTopicId),
        Just(ReturnCode::NotSupported),
    ]
}

/// Mostly short payloads, sometimes long enough to need the 3-octet Length.
fn payload() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        4 => vec(any::<u8>(), 0..40),
        1 => vec(any::<u8>(), 240..700),
    ]
    .prop_map(Bytes::from)
}

/// Any UTF-8 (multi-byte included), sometimes past 255 octets.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![4 => ".{0,20}", 1 => ".{200,300}"]
}

fn non_empty_text() -> impl Strategy<Value = String> {
    prop_oneof![4 => ".{1,20}", 1 => ".{200,300}"]
}

fn topic_ref() -> impl Strategy<Value = TopicRef> {
    prop_oneof![
        any::<u16>().prop_map(TopicRef::Id),
        any::<u16>().prop_map(TopicRef::Predefined),
        any::<[u8; 2]>().prop_map(TopicRef::Short),
    ]
}

fn topic_filter() -> impl Strategy<Value = TopicFilter> {
    prop_oneof![
        text().prop_map(TopicFilter::Name),
        any::<u16>().prop_map(TopicFilter::Predefined),
        any::<[u8; 2]>().prop_map(TopicFilter::Short),
    ]
}

fn will_topic() -> impl Strategy<Value = Option<WillTopic>> {
    option::of(
        (qos(), any::<bool>(), non_empty_text()).prop_map(|(qos, retain, topic)| WillTopic {
            qos,
            retain,
            topic,
        }),
    )
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (any::<u8>(), any::<u16>())
            .prop_map(|(gw_id, duration)| Message::Advertise { gw_id, duration }),
        any::<u8>().prop_map(|radius| Message::SearchGw { radius }),
        (
            any::<u8>(),
            option::of(payload().prop_filter("non-empty", |b| !b.is_empty()))
        )
            .prop_map(|(gw_id, gw_add)| Message::GwInfo { gw_id, gw_add }),
        (
            any::<bool>(),
            any::<bool>(),
            any::<u8>(),
            any::<u16>(),
            non_empty_text()
        )
            .prop_map(|(will, clean_session, protocol_id, duration, client_id)| {
                Message::Connect(Connect {
                    will,
                    clean_session,
                    protocol_id,
                    duration,
                    client_id,
                })
            }),
        return_code().prop_map(|return_code| Message::Connack { return_code }),
        Just(Message::WillTopicReq),
        will_topic().prop_map(Message::WillTopic),
        Just(Message::WillMsgReq),
        payload().prop_map(|msg| Message::WillMsg { msg }),
        (any::<u16>(), any::<u16>(), text()).prop_map(|(topic_id, msg_id, topic_name)| {
            Message::Register(Register {
                topic_id,
                msg_id,
                topic_name,
            })
        }),
        (any::<u16>(), any::<u16>(), return_code()).prop_map(|(topic_id, msg_id, return_code)| {
            Message::Regack(Regack {
                topic_id,
                msg_id,
                return_code,
            })
        }),
        (
            any::<bool>(),
            qos(),
            any::<bool>(),
            topic_ref(),
            any::<u16>(),
            payload()
        )
            .prop_map(|(dup, qos, retain, topic, msg_id, data)| {
                Message::Publish(Publish {
                    dup,
                    qos,
                    retain,
                    topic,
                    msg_id,
                    data,
                })
            }),
        (any::<u16>(), any::<u16>(), return_code()).prop_map(|(topic_id, msg_id, return_code)| {
            Message::Puback(Puback {
                topic_id,
                msg_id,
                return_code,
            })
        }),
        any::<u16>().prop_map(|msg_id| Message::Pubcomp { msg_id }),
        any::<u16>().prop_map(|msg_id| Message::Pubrec { msg_id }),
        any::<u16>().prop_map(|msg_id| Message::Pubrel { msg_id }),
        (any::<bool>(), qos(), any::<u16>(), topic_filter()).prop_map(
            |(dup, qos, msg_id, topic)| Message::Subscribe(Subscribe {
                dup,
                qos,
                msg_id,
                topic
            })
        ),
        (qos(), any::<u16>(), any::<u16>(), return_code()).prop_map(
            |(qos, topic_id, msg_id, return_code)| {
                Message::Suback(Suback {
                    qos,
                    topic_id,
                    msg_id,
                    return_code,
                })
            }
        ),
        (any::<u16>(), topic_filter())
            .prop_map(|(msg_id, topic)| Message::Unsubscribe(Unsubscribe { msg_id, topic })),
        any::<u16>().prop_map(|msg_id| Message::Unsuback { msg_id }),
        option::of(non_empty_text()).prop_map(|client_id| Message::PingReq { client_id }),
        Just(Message::PingResp),
        option::of(any::<u16>()).prop_map(|duration| Message::Disconnect { duration }),
        will_topic().prop_map(Message::WillTopicUpd),
        return_code().prop_map(|return_code| Message::WillTopicResp { return_code }),
        payload().prop_map(|msg| Message::WillMsgUpd { msg }),
        return_code().prop_map(|return_code| Message::WillMsgResp { return_code }),
    ]
}

fn frame() -> impl Strategy<Value = Frame> {
    let encapsulation = option::of((any::<u8>(), vec(any::<u8>(), 0..=252)).prop_map(
        |(ctrl, id)| Encapsulation {
            ctrl,
            wireless_node_id: Bytes::from(id),
        },
    ));
    (encapsulation, message()).prop_map(|(encapsulation, message)| Frame {
        encapsulation,
        message,
    })
}

/// Re-encodes `bytes` with a 3-octet Length (which the encoder never chooses below 256).
fn with_long_length(bytes: &[u8]) -> Vec<u8> {
    let total = bytes.len() + 2;
    let mut out = vec![0x01];
    out.extend_from_slice(&u16::try_from(total).unwrap().to_be_bytes());
    out.extend_from_slice(&bytes[1..]);
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn message_round_trip(msg in message()) {
        let bytes = msg.to_bytes().unwrap();
        prop_assert_eq!(bytes.len(), msg.encoded_len());
        prop_assert_eq!(&decode_message(bytes.clone()).unwrap(), &msg);
        // encode appends: existing buffer contents are kept.
        let mut buf = BytesMut::from(&b"xy"[..]);
        msg.encode(&mut buf).unwrap();
        prop_assert_eq!(&buf[2..], &bytes[..]);
    }

    #[test]
    fn message_round_trip_via_long_length_form(msg in message()) {
        let bytes = msg.to_bytes().unwrap();
        if bytes.len() <= 255 {
            let long = with_long_length(&bytes);
            prop_assert_eq!(decode_message(Bytes::from(long)).unwrap(), msg);
        } else {
            prop_assert_eq!(bytes[0], 0x01);
        }
    }

    #[test]
    fn frame_round_trip(f in frame()) {
        let bytes = f.to_bytes().unwrap();
        prop_assert_eq!(bytes.len(), f.encoded_len());
        prop_assert_eq!(decode(bytes).unwrap(), f);
    }

    #[test]
    fn decode_arbitrary_bytes_never_panics(bytes in vec(any::<u8>(), 0..300)) {
        if let Ok(f) = decode(Bytes::from(bytes)) {
            // Whatever decodes must re-encode and decode to the same frame.
            let again = f.to_bytes().unwrap();
            prop_assert_eq!(decode(again).unwrap(), f);
        }
    }

    #[test]
    fn decode_well_formed_header_arbitrary_body_never_panics(
        msg_type in any::<u8>(),
        body in vec(any::<u8>(), 0..40),
        encapsulate in any::<bool>(),
    ) {
        // Random bodies rarely get past the Length check; this gives every MsgType a real try.
        let mut bytes = vec![u8::try_from(body.len() + 2).unwrap(), msg_type];
        bytes.extend_from_slice(&body);
        if encapsulate {
            let mut outer = vec![0x04, 0xFE, 0x00, 0x42];
            outer.extend_from_slice(&bytes);
            bytes = outer;
        }
        if let Ok(f) = decode(Bytes::from(bytes)) {
            prop_assert_eq!(decode(f.to_bytes().unwrap()).unwrap(), f);
        }
    }
}

fn err(bytes: &'static [u8]) -> DecodeError {
    decode(Bytes::from_static(bytes)).unwrap_err()
}

#[test]
fn empty() {
    assert_eq!(err(&[]), DecodeError::Empty);
}

#[test]
fn truncated_msg_type() {
    assert_eq!(err(&[0x02]), DecodeError::Truncated { field: "MsgType" });
    assert_eq!(
        err(&[0x01, 0x00, 0x04]),
        DecodeError::Truncated { field: "MsgType" }
    );
}

#[test]
fn truncated_long_length() {
    assert_eq!(
        err(&[0x01, 0x00]),
        DecodeError::Truncated { field: "Length" }
    );
}

#[test]
fn length_mismatch_frame_shorter_than_declared() {
    assert_eq!(
        err(&[0x05, 0x0F, 0x00]),
        DecodeError::LengthMismatch {
            declared: 5,
            actual: 3
        }
    );
}

#[test]
fn length_mismatch_trailing_bytes_after_message() {
    assert_eq!(
        err(&[0x04, 0x0F, 0x00, 0x01, 0xAA]),
        DecodeError::LengthMismatch {
            declared: 4,
            actual: 5
        }
    );
    assert_eq!(
        err(&[0x01, 0x00, 0x04, 0x17, 0x00]),
        DecodeError::LengthMismatch {
            declared: 4,
            actual: 5
        }
    );
}

#[test]
fn length_too_small_short_form() {
    assert_eq!(
        err(&[0x00, 0x17]),
        DecodeError::LengthTooSmall { declared: 0 }
    );
}

#[test]
fn length_too_small_long_form() {
    assert_eq!(
        err(&[0x01, 0x00, 0x03, 0x17]),
        DecodeError::LengthTooSmall { declared: 3 }
    );
    assert_eq!(
        err(&[0x01, 0x00, 0x00]),
        DecodeError::LengthTooSmall { declared: 0 }
    );
}

#[test]
fn reserved_msg_type() {
    for code in [0x03, 0x11, 0x19, 0x1E, 0xFD, 0xFF] {
        let bytes = Bytes::from(vec![0x02, code]);
        assert_eq!(decode(bytes), Err(DecodeError::ReservedMsgType(code)));
    }
}

#[test]
fn unexpected_encapsulation_in_decode_message() {
    let bytes = Bytes::from_static(&[0x03, 0xFE, 0x00, 0x02, 0x16]);
    assert_eq!(
        decode_message(bytes),
        Err(DecodeError::UnexpectedEncapsulation)
    );
}

#[test]
fn unexpected_encapsulation_with_long_length() {
    assert_eq!(
        err(&[0x01, 0x00, 0x05, 0xFE, 0x00]),
        DecodeError::UnexpectedEncapsulation
    );
}

#[test]
fn frame_encode_leaves_buffer_untouched_on_error() {
    let f = Frame {
        encapsulation: Some(Encapsulation {
            ctrl: 0,
            wireless_node_id: Bytes::new(),
        }),
        message: Message::PingReq {
            client_id: Some(String::new()),
        },
    };
    let mut buf = BytesMut::new();
    assert_eq!(f.encode(&mut buf), Err(EncodeError::EmptyClientId));
    assert!(buf.is_empty());
}

#[test]
fn too_long_text_field() {
    let msg = Message::Register(Register {
        topic_id: 0,
        msg_id: 1,
        topic_name: "t".repeat(65530),
    });
    assert_eq!(msg.to_bytes(), Err(EncodeError::TooLong { len: 65534 + 4 }));
}
