//! Issue 12 items 4–6: device admission at CONNECT (allow-list, globs, bindings to an address,
//! a transport, a link address or a forwarder node; takeover from elsewhere refused with the
//! real session untouched; a restored session the rules no longer admit), topic permissions
//! per device (publish, REGISTER, will topic, subscribe), and the QoS -1 policy.

use super::record::persistent;
use super::*;
use crate::core::rules::{AddressMatch, AdmissionRules, DeviceRule, QosMinusOnePolicy};
use crate::core::{DeviceState, PeerAddr};

fn rule(client_id: &str) -> DeviceRule {
    DeviceRule {
        client_id: client_id.to_owned(),
        transports: None,
        address: None,
        node: None,
        publish: None,
        subscribe: None,
    }
}

fn with_rules(listed: bool, devices: Vec<DeviceRule>) -> Settings {
    Settings {
        admission: AdmissionRules { listed, devices },
        ..settings()
    }
}

fn at(s: &str) -> Option<AddressMatch> {
    Some(AddressMatch::parse(s).unwrap())
}

impl World {
    /// CONNECT from `from` is refused with CONNACK "not supported" and opens nothing.
    #[track_caller]
    fn assert_refused(&mut self, from: &DeviceAddr, client_id: &str) {
        let before = self.gw.stats().connects_refused_admission;
        self.device_send(from, connect_msg(client_id, true, false, 60));
        assert_eq!(
            self.take_to_device(from),
            vec![connack(ReturnCode::NotSupported)]
        );
        assert_eq!(self.gw.stats().connects_refused_admission, before + 1);
        self.assert_quiet();
    }

    /// CONNECT from `from` is admitted: an upstream session opens for it.
    #[track_caller]
    fn assert_admitted(&mut self, from: &DeviceAddr, client_id: &str) {
        self.device_send(from, connect_msg(client_id, true, false, 60));
        let opened = self.opened();
        assert_eq!(opened.len(), 1, "{client_id} from {from}");
        self.broker_connack(opened[0].0);
        assert_eq!(
            self.take_to_device(from),
            vec![connack(ReturnCode::Accepted)]
        );
    }
}

// ---------------------------------------------------------------- admission

#[test]
fn listed_admission_refuses_an_unknown_client_id_before_any_session() {
    let mut w = World::with(with_rules(true, vec![rule("known")]));
    w.assert_refused(&addr(1), "stranger");
    assert_eq!(w.gw.device_count(), 0, "a refused CONNECT leaves no record");
    w.assert_admitted(&addr(1), "known");
    // Open admission (the default) lets the stranger in.
    let mut w = World::with(with_rules(false, vec![rule("known")]));
    w.assert_admitted(&addr(1), "stranger");
}

#[test]
fn globs_name_client_ids() {
    let mut w = World::with(with_rules(true, vec![rule("sensor-*"), rule("a?c")]));
    w.assert_admitted(&addr(1), "sensor-12");
    w.assert_admitted(&addr(2), "abc");
    w.assert_refused(&addr(3), "sensor");
    w.assert_refused(&addr(3), "abbc");
}

#[test]
fn bindings_to_an_address_a_subnet_a_port_and_a_transport() {
    let mut w = World::with(with_rules(
        true,
        vec![
            DeviceRule {
                address: at("10.0.0.1"),
                ..rule("exact")
            },
            DeviceRule {
                address: at("10.0.0.0/24"),
                ..rule("subnet")
            },
            DeviceRule {
                address: at("10.0.0.3:1000"),
                ..rule("port")
            },
            DeviceRule {
                transports: Some(vec![TransportId(1)]),
                ..rule("second-socket")
            },
        ],
    ));
    w.assert_admitted(&addr(1), "exact");
    w.assert_refused(&addr(2), "exact");
    w.assert_admitted(&addr(9), "subnet");
    let elsewhere = DeviceAddr::udp(TransportId(0), "10.0.1.9:1000".parse().unwrap());
    w.assert_refused(&elsewhere, "subnet");
    w.assert_admitted(&addr(3), "port");
    let other_port = DeviceAddr::udp(TransportId(0), "10.0.0.3:1001".parse().unwrap());
    w.assert_refused(&other_port, "port");
    w.assert_refused(&addr(4), "second-socket");
    let on_second = DeviceAddr::udp(TransportId(1), "10.0.0.4:1000".parse().unwrap());
    w.assert_admitted(&on_second, "second-socket");
}

#[test]
fn the_first_entry_whose_bindings_hold_is_the_rule() {
    // Two entries for one ClientId: the gateway tries both in order.
    let mut w = World::with(with_rules(
        true,
        vec![
            DeviceRule {
                address: at("10.0.0.1"),
                publish: Some(vec!["a/#".into()]),
                ..rule("dev")
            },
            DeviceRule {
                address: at("10.0.0.2"),
                publish: Some(vec!["b/#".into()]),
                ..rule("dev")
            },
        ],
    ));
    let b = addr(2);
    w.assert_admitted(&b, "dev");
    // Under the second entry: b/ is allowed, a/ is not.
    w.register(&b, "b/x", 1);
    w.device_send(
        &b,
        Message::Register(codec::Register {
            topic_id: 0,
            msg_id: 2,
            topic_name: "a/x".into(),
        }),
    );
    let down = w.take_to_device(&b);
    let [Message::Regack(r)] = down.as_slice() else {
        panic!("{down:?}")
    };
    assert_eq!(r.return_code, ReturnCode::NotSupported);
}

#[test]
fn bindings_to_a_link_address_and_a_forwarder_node() {
    let radio = |b: u8| DeviceAddr {
        transport: TransportId(2),
        peer: PeerAddr::Link(Bytes::from(vec![
            0x00, 0x13, 0xa2, 0x00, 0x41, 0xa7, 0xb3, b,
        ])),
        wireless_node_id: None,
    };
    let node = Bytes::from_static(&[0x0a, 0x1b]);
    let mut w = World::with(with_rules(
        true,
        vec![
            DeviceRule {
                address: at("0013a20041a7b3c2"),
                ..rule("xbee")
            },
            DeviceRule {
                node: Some(node.clone()),
                ..rule("behind")
            },
        ],
    ));
    w.assert_admitted(&radio(0xc2), "xbee");
    w.assert_refused(&radio(0xc3), "xbee");
    // Behind a forwarder: the CONNECT comes encapsulated with the node's id.
    let fwd = addr(5);
    let enc = |id: &Bytes, m: Message| Frame {
        encapsulation: Some(codec::Encapsulation {
            ctrl: 0,
            wireless_node_id: id.clone(),
        }),
        message: m,
    };
    let other = Bytes::from_static(&[0x0a, 0x1c]);
    w.device_send_frame(&fwd, enc(&other, connect_msg("behind", true, false, 60)));
    let via_other = DeviceAddr {
        wireless_node_id: Some(other.clone()),
        ..fwd.clone()
    };
    assert_eq!(
        w.take_frames_to(&via_other),
        vec![enc(&other, connack(ReturnCode::NotSupported))]
    );
    assert!(w.opened().is_empty());
    // Not forwarded at all is not behind the node either.
    w.assert_refused(&fwd, "behind");
    w.device_send_frame(&fwd, enc(&node, connect_msg("behind", true, false, 60)));
    assert_eq!(w.opened().len(), 1);
}

#[test]
fn takeover_from_another_address_is_refused_and_the_real_session_is_untouched() {
    let mut w = World::with(with_rules(
        true,
        vec![DeviceRule {
            address: at("10.0.0.1"),
            ..rule("dev")
        }],
    ));
    let (real, thief) = (addr(1), addr(2));
    let will = Will {
        topic: "w/dev",
        qos: QoS::AtLeastOnce,
        retain: false,
        msg: b"gone",
    };
    let s = w.connect(&real, "dev", true, Some(will));
    let id = w.register(&real, "t", 1);
    for clean in [true, false] {
        for will in [false, true] {
            w.device_send(&thief, connect_msg("dev", clean, will, 60));
            assert_eq!(
                w.take_to_device(&thief),
                vec![connack(ReturnCode::NotSupported)]
            );
            // Nothing reached the real session: no DISCONNECT, no close (the will stays
            // unfired), no new session, nothing to the real device.
            let all = w.take_all();
            assert!(all.is_empty(), "{all:?}");
        }
    }
    assert_eq!(w.gw.stats().connects_refused_admission, 4);
    assert_eq!(w.gw.device_state("dev"), Some(DeviceState::Active));
    // The thief's address has no session; the real device carries on with the same one.
    w.device_send(&thief, publish(QoS::AtLeastOnce, TopicRef::Id(id), 2, b"x"));
    assert_eq!(
        w.take_to_device(&thief),
        vec![Message::Disconnect { duration: None }]
    );
    w.device_send(&real, publish(QoS::AtLeastOnce, TopicRef::Id(id), 3, b"ok"));
    let up = w.take_upstream(s);
    assert!(
        matches!(up.as_slice(), [mqtt::Packet::Publish(p)] if p.topic == "t"),
        "{up:?}"
    );
    w.assert_quiet();
}

#[test]
fn a_sleeping_bound_device_cannot_be_moved_by_a_pingreq_from_elsewhere() {
    let mut w = World::with(with_rules(
        true,
        vec![DeviceRule {
            address: at("10.0.0.1"),
            ..rule("dev")
        }],
    ));
    let (real, thief) = (addr(1), addr(2));
    let s = w.connect(&real, "dev", false, None);
    w.device_send(
        &real,
        Message::Disconnect {
            duration: Some(600),
        },
    );
    assert_eq!(
        w.take_to_device(&real),
        vec![Message::Disconnect { duration: None }]
    );
    w.device_send(
        &thief,
        Message::PingReq {
            client_id: Some("dev".into()),
        },
    );
    let all = w.take_all();
    assert!(all.is_empty(), "{all:?}");
    assert_eq!(w.gw.stats().moves_refused, 1);
    assert_eq!(w.gw.device_state("dev"), Some(DeviceState::Asleep));
    // A message for it is buffered, and the real device gets it at its own PINGREQ.
    w.broker(
        s,
        mqtt_publish(mqtt::QoS::AtMostOnce, false, "ab", None, b"m"),
    );
    w.device_send(
        &real,
        Message::PingReq {
            client_id: Some("dev".into()),
        },
    );
    let down = w.take_to_device(&real);
    assert!(
        matches!(down.first(), Some(Message::Publish(_))),
        "{down:?}"
    );
    assert!(w.take_to_device(&thief).is_empty());
}

#[test]
fn a_restored_session_the_rules_no_longer_admit_is_ended() {
    let mut w = World::with(persistent());
    let (a, b) = (addr(1), addr(2));
    let s = w.connect(&a, "gone", false, None);
    w.subscribe(&a, s, "x", QoS::AtMostOnce, mqtt::QoS::AtMostOnce, 1);
    w.commit_all();
    w.connect(&b, "kept", false, None);
    w.commit_all();
    assert!(w.store.len() >= 3, "{:?}", w.store);
    // After the restart only `kept` is listed.
    let listed = Settings {
        admission: AdmissionRules {
            listed: true,
            devices: vec![rule("kept")],
        },
        ..persistent()
    };
    let report = w.restart(listed);
    assert_eq!((report.devices, report.refused, report.skipped), (1, 1, 0));
    let opened = w.opened();
    assert_eq!(opened.len(), 1, "only kept's session is reopened");
    assert_eq!(opened[0].1.client_id, "kept");
    assert_eq!(w.gw.device_state("gone"), None);
    w.commit_all();
    let gone = crate::core::persist::device_prefix("gone");
    assert!(
        w.store.keys().all(|(_, k)| !k.starts_with(&gone)),
        "every row of gone is deleted: {:?}",
        w.store
    );
    // It is refused like any stranger when it comes back.
    w.assert_refused(&a, "gone");
}

// ---------------------------------------------------------------- topic permissions

fn restricted() -> Settings {
    with_rules(
        false,
        vec![DeviceRule {
            publish: Some(vec!["s/{client_id}/#".into()]),
            subscribe: Some(vec!["cmd/{client_id}/#".into(), "all/+".into()]),
            ..rule("*")
        }],
    )
}

#[test]
fn a_publish_outside_the_patterns_gets_puback_not_supported_at_every_qos() {
    let mut w = World::with(Settings {
        predefined_topics: vec![(7, "pre/seven".into()), (8, "s/dev/pre".into())],
        ..restricted()
    });
    let a = addr(1);
    let s = w.connect(&a, "dev", true, None);
    let ok = w.register(&a, "s/dev/temp", 1);
    // REGISTER for a topic outside: no id.
    w.device_send(
        &a,
        Message::Register(codec::Register {
            topic_id: 0,
            msg_id: 2,
            topic_name: "s/other/temp".into(),
        }),
    );
    assert_eq!(
        w.take_to_device(&a),
        vec![Message::Regack(codec::Regack {
            topic_id: 0,
            msg_id: 2,
            return_code: ReturnCode::NotSupported,
        })]
    );
    // Predefined ids and short names are judged by the topic they stand for.
    let denied = [
        (QoS::AtMostOnce, TopicRef::Predefined(7), 0),
        (QoS::AtLeastOnce, TopicRef::Predefined(7), 3),
        (QoS::ExactlyOnce, TopicRef::Short(*b"ab"), 4),
        (QoS::AtMostOnce, TopicRef::Short(*b"ab"), 0),
    ];
    for (qos, topic, msg_id) in denied {
        w.device_send(&a, publish(qos, topic, msg_id, b"no"));
        assert_eq!(
            w.take_to_device(&a),
            vec![Message::Puback(codec::Puback {
                topic_id: match topic {
                    TopicRef::Predefined(id) => id,
                    TopicRef::Short(s) => u16::from_be_bytes(s),
                    TopicRef::Id(id) => id,
                },
                msg_id,
                return_code: ReturnCode::NotSupported,
            })],
            "{qos:?} {topic:?}"
        );
        assert!(w.take_upstream(s).is_empty(), "nothing upstream");
    }
    assert_eq!(w.gw.stats().publishes_denied, 5);
    // What is inside goes up: a registered id, a predefined id standing for an allowed topic.
    w.device_send(&a, publish(QoS::AtMostOnce, TopicRef::Id(ok), 0, b"yes"));
    w.device_send(
        &a,
        publish(QoS::AtMostOnce, TopicRef::Predefined(8), 0, b"pre"),
    );
    assert_eq!(
        w.take_upstream(s),
        vec![
            mqtt_publish(mqtt::QoS::AtMostOnce, false, "s/dev/temp", None, b"yes"),
            mqtt_publish(mqtt::QoS::AtMostOnce, false, "s/dev/pre", None, b"pre"),
        ]
    );
    w.assert_quiet();
}

#[test]
fn a_will_topic_outside_the_patterns_is_refused() {
    let mut w = World::with(restricted());
    let a = addr(1);
    w.device_send(&a, connect_msg("dev", true, true, 60));
    assert_eq!(w.take_to_device(&a), vec![Message::WillTopicReq]);
    w.device_send(
        &a,
        Message::WillTopic(Some(WillTopic {
            qos: QoS::AtMostOnce,
            retain: false,
            topic: "elsewhere".into(),
        })),
    );
    assert_eq!(
        w.take_to_device(&a),
        vec![connack(ReturnCode::NotSupported)]
    );
    assert!(w.opened().is_empty());
    // Inside the patterns it is accepted; a WILLTOPICUPD outside them is refused.
    let will = Will {
        topic: "s/dev/will",
        qos: QoS::AtMostOnce,
        retain: false,
        msg: b"bye",
    };
    let s = w.connect(&a, "dev", true, Some(will));
    w.device_send(
        &a,
        Message::WillTopicUpd(Some(WillTopic {
            qos: QoS::AtMostOnce,
            retain: false,
            topic: "elsewhere".into(),
        })),
    );
    assert_eq!(
        w.take_to_device(&a),
        vec![Message::WillTopicResp {
            return_code: ReturnCode::NotSupported
        }]
    );
    assert!(w.opened().is_empty(), "no session switch");
    assert!(w.closed().is_empty());
    assert!(w.take_upstream(s).is_empty());
    assert_eq!(w.gw.stats().publishes_denied, 2);
}

#[test]
fn a_subscribe_outside_the_patterns_gets_suback_not_supported() {
    let mut w = World::with(restricted());
    let a = addr(1);
    let s = w.connect(&a, "dev", true, None);
    w.subscribe(
        &a,
        s,
        "cmd/dev/#",
        QoS::AtLeastOnce,
        mqtt::QoS::AtLeastOnce,
        1,
    );
    w.subscribe(
        &a,
        s,
        "cmd/dev/+/x",
        QoS::AtMostOnce,
        mqtt::QoS::AtMostOnce,
        2,
    );
    w.subscribe(&a, s, "all/+", QoS::AtMostOnce, mqtt::QoS::AtMostOnce, 3);
    w.subscribe(&a, s, "all/news", QoS::AtMostOnce, mqtt::QoS::AtMostOnce, 4);
    let denied = [
        (codec::TopicFilter::Name("cmd/#".into()), 0),
        (codec::TopicFilter::Name("cmd/+/x".into()), 0),
        (codec::TopicFilter::Name("all/#".into()), 0),
        (codec::TopicFilter::Name("#".into()), 0),
        (codec::TopicFilter::Predefined(7), 7),
        (codec::TopicFilter::Short(*b"ab"), 0),
    ];
    for (i, (topic, topic_id)) in denied.into_iter().enumerate() {
        let msg_id = 10 + i as u16;
        w.device_send(
            &a,
            Message::Subscribe(codec::Subscribe {
                dup: false,
                qos: QoS::AtLeastOnce,
                msg_id,
                topic,
            }),
        );
        assert_eq!(
            w.take_to_device(&a),
            vec![Message::Suback(codec::Suback {
                qos: QoS::AtMostOnce,
                topic_id,
                msg_id,
                return_code: ReturnCode::NotSupported,
            })]
        );
        assert!(w.take_upstream(s).is_empty(), "no SUBSCRIBE upstream");
    }
    assert_eq!(w.gw.stats().subscribes_denied, 6);
    w.assert_quiet();
}

#[test]
fn a_client_id_with_wildcards_or_slashes_does_not_widen_its_patterns() {
    let mut w = World::with(restricted());
    for (n, client_id, topic, filter) in [
        (1, "+", "s/x/t", "cmd/+/t"),
        (2, "#", "s/x", "cmd/#"),
        (3, "a/b", "s/a/b", "cmd/a/b"),
    ] {
        let a = addr(n);
        let s = w.connect(&a, client_id, true, None);
        w.device_send(
            &a,
            Message::Register(codec::Register {
                topic_id: 0,
                msg_id: 1,
                topic_name: topic.into(),
            }),
        );
        let down = w.take_to_device(&a);
        assert!(
            matches!(down.as_slice(), [Message::Regack(r)] if r.return_code == ReturnCode::NotSupported),
            "{client_id}: {down:?}"
        );
        w.device_send(
            &a,
            Message::Subscribe(codec::Subscribe {
                dup: false,
                qos: QoS::AtMostOnce,
                msg_id: 2,
                topic: codec::TopicFilter::Name(filter.into()),
            }),
        );
        let down = w.take_to_device(&a);
        assert!(
            matches!(down.as_slice(), [Message::Suback(r)] if r.return_code == ReturnCode::NotSupported),
            "{client_id}: {down:?}"
        );
        assert!(w.take_upstream(s).is_empty());
    }
}

// ---------------------------------------------------------------- QoS -1 policy

#[test]
fn qos_minus_one_off_drops_every_publish() {
    let mut w = World::with(Settings {
        qos_minus_one: QosMinusOnePolicy::Off,
        ..settings()
    });
    w.device_send(
        &addr(1),
        publish(QoS::MinusOne, TopicRef::Predefined(7), 0, b"x"),
    );
    w.device_send(
        &addr(2),
        publish(QoS::MinusOne, TopicRef::Short(*b"ab"), 0, b"x"),
    );
    w.assert_quiet();
    assert_eq!(w.gw.stats().qos_minus_one_denied, 2);
    assert_eq!(w.gw.stats().uplink_publishes, 0);
}

#[test]
fn qos_minus_one_listed_accepts_only_listed_topics_from_listed_sources() {
    let mut w = World::with(Settings {
        qos_minus_one: QosMinusOnePolicy::Listed {
            predefined: vec![7],
            short: vec![*b"ok"],
            sources: vec![AddressMatch::parse("10.0.0.0/30").unwrap()],
        },
        ..settings()
    });
    let (inside, outside) = (addr(1), addr(9));
    w.device_send(
        &outside,
        publish(QoS::MinusOne, TopicRef::Predefined(7), 0, b"x"),
    );
    w.device_send(
        &inside,
        publish(QoS::MinusOne, TopicRef::Short(*b"no"), 0, b"x"),
    );
    w.device_send(
        &inside,
        publish(QoS::MinusOne, TopicRef::Predefined(8), 0, b"x"),
    );
    w.assert_quiet();
    assert_eq!(w.gw.stats().qos_minus_one_denied, 3);
    w.device_send(
        &inside,
        publish(QoS::MinusOne, TopicRef::Predefined(7), 0, b"a"),
    );
    w.device_send(
        &inside,
        publish(QoS::MinusOne, TopicRef::Short(*b"ok"), 0, b"b"),
    );
    let opened = w.opened();
    assert_eq!(opened.len(), 1);
    w.broker_connack(opened[0].0);
    assert_eq!(
        w.take_upstream(opened[0].0),
        vec![
            mqtt_publish(mqtt::QoS::AtMostOnce, false, "pre/seven", None, b"a"),
            mqtt_publish(mqtt::QoS::AtMostOnce, false, "ok", None, b"b"),
        ]
    );

    // Sources only: any predefined id or short name from them.
    let mut w = World::with(Settings {
        qos_minus_one: QosMinusOnePolicy::Listed {
            predefined: vec![],
            short: vec![],
            sources: vec![AddressMatch::parse("10.0.0.1").unwrap()],
        },
        ..settings()
    });
    w.device_send(
        &addr(2),
        publish(QoS::MinusOne, TopicRef::Short(*b"ab"), 0, b"x"),
    );
    w.assert_quiet();
    w.device_send(
        &addr(1),
        publish(QoS::MinusOne, TopicRef::Short(*b"ab"), 0, b"x"),
    );
    assert_eq!(w.opened().len(), 1);
}
