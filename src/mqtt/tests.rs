//! Round trips across encoder and decoder, and property tests.
//!
//! Owns: the properties that span every kind (each sample and each arbitrary packet decodes to
//! itself, any split of a stream decodes the same, arbitrary bytes never panic). Per-kind byte
//! vectors live beside their kind. Must never: weaken a property to make a case pass.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use super::*;

const MAX: usize = 1 << 20;

fn round_trip(packet: &Packet) {
    let bytes = packet.to_bytes().expect("test packet encodes");
    assert_eq!(packet.encoded_len(), Ok(bytes.len()), "{packet:?}");
    let mut buf = BytesMut::from(&bytes[..]);
    assert_eq!(decode(&mut buf, MAX), Ok(Some(packet.clone())));
    assert!(buf.is_empty(), "{packet:?} left {buf:?}");
}

/// One of each packet type, both directions, with the optional parts present and absent.
fn samples() -> Vec<Packet> {
    let will = LastWill {
        topic: "dev/1/status".into(),
        message: Bytes::from_static(b"gone"),
        qos: QoS::ExactlyOnce,
        retain: false,
    };
    vec![
        Packet::Connect(Box::new(Connect {
            client_id: "gw-1".into(),
            clean_session: true,
            keep_alive: 60,
            will: Some(will.clone()),
            username: Some("user".into()),
            password: Some(Bytes::from_static(b"\x00\xffsecret")),
        })),
        Packet::Connect(Box::new(Connect {
            client_id: String::new(),
            clean_session: false,
            keep_alive: u16::MAX,
            will: None,
            username: Some("only-user".into()),
            password: None,
        })),
        Packet::Connect(Box::new(Connect {
            client_id: "ü".into(),
            clean_session: true,
            keep_alive: 0,
            will: Some(LastWill {
                retain: true,
                message: Bytes::new(),
                ..will
            }),
            username: None,
            password: None,
        })),
        Packet::ConnAck {
            session_present: true,
            code: ConnectReturnCode::Accepted,
        },
        Packet::ConnAck {
            session_present: false,
            code: ConnectReturnCode::BadUserNameOrPassword,
        },
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: true,
            topic: "$SYS/x".into(),
            packet_id: None,
            payload: Bytes::new(),
        }),
        Packet::Publish(Publish {
            dup: true,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: "a/b/c".into(),
            packet_id: Some(1),
            payload: Bytes::from_static(b"payload"),
        }),
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::ExactlyOnce,
            retain: true,
            topic: "/".into(),
            packet_id: Some(u16::MAX),
            payload: Bytes::from(vec![7; 300]),
        }),
        Packet::PubAck { packet_id: 1 },
        Packet::PubRec { packet_id: 2 },
        Packet::PubRel { packet_id: 3 },
        Packet::PubComp { packet_id: 4 },
        Packet::Subscribe {
            packet_id: 5,
            filters: vec![
                ("#".into(), QoS::AtMostOnce),
                ("a/+/c".into(), QoS::AtLeastOnce),
                ("$SYS/#".into(), QoS::ExactlyOnce),
            ],
        },
        Packet::SubAck {
            packet_id: 5,
            codes: vec![
                SubackCode::Granted(QoS::AtMostOnce),
                SubackCode::Granted(QoS::AtLeastOnce),
                SubackCode::Granted(QoS::ExactlyOnce),
                SubackCode::Failure,
            ],
        },
        Packet::Unsubscribe {
            packet_id: 6,
            filters: vec!["#".into(), "a/+/c".into()],
        },
        Packet::UnsubAck { packet_id: 6 },
        Packet::PingReq,
        Packet::PingResp,
        Packet::Disconnect,
    ]
}

#[test]
fn round_trip_every_packet_type() {
    let samples = samples();
    let mut kinds: Vec<u8> = samples.iter().map(Packet::kind).collect();
    kinds.dedup();
    assert_eq!(kinds, (1..=14).collect::<Vec<u8>>(), "one sample per type");
    for packet in &samples {
        round_trip(packet);
    }
}

#[test]
fn all_samples_back_to_back_in_one_buffer() {
    let samples = samples();
    let mut buf = BytesMut::new();
    for packet in &samples {
        packet.encode(&mut buf).expect("encodes");
    }
    for packet in &samples {
        assert_eq!(decode(&mut buf, MAX).as_ref(), Ok(&Some(packet.clone())));
    }
    assert_eq!(decode(&mut buf, MAX), Ok(None));
    assert!(buf.is_empty());
}

#[test]
fn qos_and_return_code_conversions() {
    for v in 0..=2u8 {
        assert_eq!(QoS::try_from(v).map(u8::from), Ok(v));
    }
    assert_eq!(QoS::try_from(3), Err(DecodeError::InvalidQoS(3)));
    assert!(QoS::AtMostOnce < QoS::AtLeastOnce && QoS::AtLeastOnce < QoS::ExactlyOnce);
    for v in 0..=5u8 {
        assert_eq!(ConnectReturnCode::try_from(v).map(u8::from), Ok(v));
    }
    assert_eq!(
        ConnectReturnCode::try_from(6),
        Err(DecodeError::InvalidReturnCode(6))
    );
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

fn topic_name() -> impl Strategy<Value = String> {
    "[^+#\\x00]{1,40}"
}

fn topic_filter() -> impl Strategy<Value = String> {
    prop::collection::vec(prop_oneof![Just("+".to_string()), "[^+#/\\x00]{0,8}"], 1..5)
        .prop_flat_map(|levels| {
            prop_oneof![Just(false), Just(true)].prop_map(move |hash| {
                let mut filter = levels.join("/");
                if hash {
                    filter.push_str("/#");
                }
                filter
            })
        })
        .prop_filter("non-empty", |f| !f.is_empty())
}

fn publish() -> impl Strategy<Value = Publish> {
    (
        qos(),
        any::<bool>(),
        any::<bool>(),
        topic_name(),
        1..=u16::MAX,
        prop::collection::vec(any::<u8>(), 0..600),
    )
        .prop_map(|(qos, dup, retain, topic, id, payload)| {
            let at_most_once = qos == QoS::AtMostOnce;
            Publish {
                dup: dup && !at_most_once,
                qos,
                retain,
                topic,
                packet_id: (!at_most_once).then_some(id),
                payload: payload.into(),
            }
        })
}

fn packet() -> impl Strategy<Value = Packet> {
    let id = 1..=u16::MAX;
    let will = (
        topic_name(),
        prop::collection::vec(any::<u8>(), 0..50),
        qos(),
        any::<bool>(),
    )
        .prop_map(|(topic, message, qos, retain)| LastWill {
            topic,
            message: message.into(),
            qos,
            retain,
        });
    let credentials = prop::option::of((
        "[^\\x00]{0,20}",
        prop::option::of(prop::collection::vec(any::<u8>(), 0..20)),
    ));
    let connect = (
        "[^\\x00]{0,23}",
        any::<bool>(),
        any::<u16>(),
        prop::option::of(will),
        credentials,
    )
        .prop_map(
            |(client_id, clean_session, keep_alive, will, credentials)| {
                let (username, password) = match credentials {
                    Some((user, password)) => (Some(user), password.map(Bytes::from)),
                    None => (None, None),
                };
                Packet::Connect(Box::new(Connect {
                    client_id,
                    clean_session,
                    keep_alive,
                    will,
                    username,
                    password,
                }))
            },
        );
    let return_code = (0..=5u8).prop_filter_map("valid", |c| ConnectReturnCode::try_from(c).ok());
    let suback_code = prop_oneof![
        qos().prop_map(SubackCode::Granted),
        Just(SubackCode::Failure)
    ];
    prop_oneof![
        connect,
        (any::<bool>(), return_code).prop_map(|(session_present, code)| Packet::ConnAck {
            session_present,
            code
        }),
        publish().prop_map(Packet::Publish),
        id.clone()
            .prop_map(|packet_id| Packet::PubAck { packet_id }),
        id.clone()
            .prop_map(|packet_id| Packet::PubRec { packet_id }),
        id.clone()
            .prop_map(|packet_id| Packet::PubRel { packet_id }),
        id.clone()
            .prop_map(|packet_id| Packet::PubComp { packet_id }),
        (
            id.clone(),
            prop::collection::vec((topic_filter(), qos()), 1..5)
        )
            .prop_map(|(packet_id, filters)| Packet::Subscribe { packet_id, filters }),
        (id.clone(), prop::collection::vec(suback_code, 1..5))
            .prop_map(|(packet_id, codes)| Packet::SubAck { packet_id, codes }),
        (id.clone(), prop::collection::vec(topic_filter(), 1..5))
            .prop_map(|(packet_id, filters)| Packet::Unsubscribe { packet_id, filters }),
        id.prop_map(|packet_id| Packet::UnsubAck { packet_id }),
        Just(Packet::PingReq),
        Just(Packet::PingResp),
        Just(Packet::Disconnect),
    ]
}

/// Decodes until the buffer runs dry or errors; each `Some` must consume bytes.
fn drain(buf: &mut BytesMut, max: usize) {
    loop {
        let before = buf.len();
        match decode(buf, max) {
            Ok(Some(_)) => assert!(buf.len() < before, "a packet consumed nothing"),
            Ok(None) => {
                assert_eq!(buf.len(), before, "None consumed bytes");
                return;
            }
            Err(_) => return,
        }
    }
}

proptest! {
    #[test]
    fn decode_arbitrary_bytes_never_panics(
        bytes in prop::collection::vec(any::<u8>(), 0..512),
        max in 0usize..1024,
    ) {
        drain(&mut BytesMut::from(&bytes[..]), max);
    }

    /// Garbage behind a well-formed fixed header reaches the body parsers.
    #[test]
    fn decode_arbitrary_bodies_never_panics(
        first in any::<u8>(),
        body in prop::collection::vec(any::<u8>(), 0..200),
    ) {
        let mut buf = BytesMut::new();
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: "t".into(),
            packet_id: None,
            payload: Bytes::from(body.clone()),
        })
        .encode(&mut buf)
        .expect("encodes");
        // Keep the Remaining Length, swap the type/flags byte and the body.
        let header_len = buf.len() - body.len() - 3;
        let mut bytes = vec![first];
        bytes.extend_from_slice(buf.get(1..header_len).unwrap_or_default());
        bytes.extend_from_slice(&[0, 1, b't']);
        bytes.extend_from_slice(&body);
        drain(&mut BytesMut::from(&bytes[..]), MAX);
    }

    #[test]
    fn arbitrary_publish_round_trips(publish in publish()) {
        round_trip(&Packet::Publish(publish));
    }

    #[test]
    fn arbitrary_packet_round_trips(packet in packet()) {
        round_trip(&packet);
    }

    /// However the stream is cut, the decoder returns the same packets.
    #[test]
    fn arbitrary_packets_survive_any_split(
        packets in prop::collection::vec(packet(), 1..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut wire = BytesMut::new();
        for p in &packets {
            p.encode(&mut wire).expect("encodes");
        }
        let cut = cut.index(wire.len() + 1);
        let tail = wire.split_off(cut);
        let mut buf = BytesMut::new();
        let mut decoded = Vec::new();
        for chunk in [wire, tail] {
            buf.extend_from_slice(&chunk);
            while let Some(p) = decode(&mut buf, MAX).expect("valid stream") {
                decoded.push(p);
            }
        }
        prop_assert_eq!(decoded, packets);
        prop_assert!(buf.is_empty());
    }
}

#[test]
fn connect_debug_redacts_the_password() {
    let c = Connect {
        client_id: "dev".into(),
        clean_session: true,
        keep_alive: 60,
        will: None,
        username: Some("user".into()),
        password: Some(Bytes::from_static(b"hunter2-secret")),
    };
    let shown = format!("{c:?} {:?}", Packet::Connect(Box::new(c.clone())));
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(
        shown.contains("********") && shown.contains("user"),
        "{shown}"
    );
}
