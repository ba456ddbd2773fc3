//! `status`: the gateway's availability session and each device's retained state, with
//! explicit time (the session's back-off takes no time at all).

use std::time::Duration;

use super::*;
use crate::core::status::{object_id, topic_level};
use crate::core::StatusSettings;

fn with_status(ha: bool, f: impl FnOnce(&mut Settings)) -> Settings {
    let mut s = Settings {
        status: Some(StatusSettings {
            topic_prefix: "mqttsn/1".to_owned(),
            homeassistant: ha.then(|| "homeassistant".to_owned()),
        }),
        ..settings()
    };
    f(&mut s);
    s
}

/// The status session's PUBLISHes (topic, payload), each checked retained QoS 1, and
/// PUBACKed when `ack`.
fn published(w: &mut World, s: SessionId, ack: bool) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in w.take_upstream(s) {
        let mqtt::Packet::Publish(p) = p else {
            panic!("only PUBLISH on the status session, got {p:?}");
        };
        assert!(p.retain, "{p:?}");
        assert_eq!(p.qos, mqtt::QoS::AtLeastOnce);
        if ack {
            w.broker(
                s,
                mqtt::Packet::PubAck {
                    packet_id: p.packet_id.unwrap(),
                },
            );
        }
        out.push((p.topic, String::from_utf8(p.payload.to_vec()).unwrap()));
    }
    out
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(t, p)| (t.to_string(), p.to_string()))
        .collect()
}

/// A gateway with `status` whose session the broker accepted; its `online` is taken.
fn up(settings: Settings) -> (World, SessionId) {
    let mut w = World::with(settings);
    let opened = w.opened();
    assert_eq!(opened.len(), 1, "the status session opens at start");
    let (s, connect) = opened.into_iter().next().unwrap();
    assert_eq!(connect.client_id, "mqttsn-gateway-1");
    assert!(connect.clean_session);
    assert_eq!(
        connect.will,
        Some(mqtt::LastWill {
            topic: "mqttsn/1/state".into(),
            message: Bytes::from_static(b"offline"),
            qos: mqtt::QoS::AtLeastOnce,
            retain: true,
        })
    );
    w.broker_connack(s);
    assert_eq!(
        published(&mut w, s, true),
        pairs(&[("mqttsn/1/state", "online")])
    );
    (w, s)
}

fn state(client_id: &str, s: &str) -> (String, String) {
    (format!("mqttsn/1/devices/{client_id}/state"), s.to_owned())
}

#[test]
fn off_by_default_in_the_core_no_session() {
    let mut w = World::new();
    assert!(w.opened().is_empty());
    let a = addr(1);
    w.connect(&a, "d1", true, None);
    w.device_send(&a, Message::Disconnect { duration: None });
    assert_eq!(w.gw.stats().status_publishes, 0);
}

#[test]
fn one_publish_per_change_active_asleep_awake_active_disconnected() {
    let (mut w, st) = up(with_status(false, |_| {}));
    let a = addr(1);
    let s = w.connect(&a, "d1", false, None);
    assert_eq!(published(&mut w, st, true), vec![state("d1", "active")]);
    w.device_send(
        &a,
        Message::Disconnect {
            duration: Some(600),
        },
    );
    w.take_to_device(&a);
    assert_eq!(published(&mut w, st, true), vec![state("d1", "asleep")]);
    // A PINGREQ wake-up (Awake, then Asleep again after PINGRESP) is no change.
    w.device_send(
        &a,
        Message::PingReq {
            client_id: Some("d1".into()),
        },
    );
    assert_eq!(w.take_to_device(&a), vec![Message::PingResp]);
    assert!(published(&mut w, st, true).is_empty());
    // Waking with CONNECT: active.
    w.device_send(&a, connect_msg("d1", false, false, 60));
    assert_eq!(w.take_to_device(&a), vec![connack(ReturnCode::Accepted)]);
    assert_eq!(published(&mut w, st, true), vec![state("d1", "active")]);
    // A PINGREQ while active and traffic are no change either.
    w.device_send(&a, Message::PingReq { client_id: None });
    assert!(published(&mut w, st, true).is_empty());
    w.device_send(&a, Message::Disconnect { duration: None });
    assert_eq!(
        published(&mut w, st, true),
        vec![state("d1", "disconnected")]
    );
    let _ = w.take_upstream(s);
    assert_eq!(w.gw.stats().status_publishes, 5); // online + 4 changes
}

#[test]
fn keep_alive_expiry_and_sleep_expiry_are_lost() {
    let (mut w, st) = up(with_status(false, |_| {}));
    let a = addr(1);
    w.connect_with(&a, "d1", true, None, 10);
    assert_eq!(published(&mut w, st, true), vec![state("d1", "active")]);
    w.advance(Duration::from_secs(30));
    assert_eq!(published(&mut w, st, true), vec![state("d1", "lost")]);

    let b = addr(2);
    w.connect(&b, "d2", false, None);
    w.device_send(&b, Message::Disconnect { duration: Some(10) });
    assert_eq!(
        published(&mut w, st, true),
        vec![state("d2", "active"), state("d2", "asleep")]
    );
    w.advance(Duration::from_secs(60));
    assert_eq!(published(&mut w, st, true), vec![state("d2", "lost")]);
}

#[test]
fn a_device_that_never_was_active_is_not_announced() {
    let (mut w, st) = up(with_status(false, |_| {}));
    let a = addr(1);
    w.device_send(&a, connect_msg("d1", true, false, 60));
    let (s, _) = w.opened().into_iter().next().unwrap();
    w.broker_connack_code(s, mqtt::ConnectReturnCode::NotAuthorized);
    assert_eq!(
        w.gw.device_state("d1"),
        Some(crate::core::DeviceState::Disconnected)
    );
    assert!(published(&mut w, st, true).is_empty());
}

#[test]
fn session_down_keeps_the_latest_state_per_device_and_flushes_on_reconnect() {
    let (mut w, st) = up(with_status(false, |_| {}));
    w.broker_closed(st);
    let (a, b) = (addr(1), addr(2));
    w.connect(&a, "d1", false, None);
    w.device_send(
        &a,
        Message::Disconnect {
            duration: Some(600),
        },
    );
    w.device_send(&a, connect_msg("d1", false, false, 60));
    w.device_send(&a, Message::Disconnect { duration: None });
    w.connect(&b, "d2", true, None);
    assert_eq!(w.gw.status_pending(), 2, "one state per device");
    // Reconnect after the back-off (1 s), then online and the latest states.
    w.advance(Duration::from_millis(999));
    assert!(w.opened().is_empty());
    w.advance(Duration::from_millis(1));
    let opened = w.opened();
    assert_eq!(opened.len(), 1);
    let st2 = opened[0].0;
    assert_eq!(opened[0].1.client_id, "mqttsn-gateway-1");
    w.broker_connack(st2);
    assert_eq!(
        published(&mut w, st2, true),
        vec![
            ("mqttsn/1/state".into(), "online".into()),
            state("d1", "disconnected"),
            state("d2", "active"),
        ]
    );
    assert_eq!(w.gw.status_pending(), 0);
    assert_eq!(w.gw.stats().status_reconnects, 1);
}

#[test]
fn unacknowledged_states_are_published_again_after_a_drop_unless_newer() {
    let (mut w, st) = up(with_status(false, |_| {}));
    let (a, b) = (addr(1), addr(2));
    w.connect(&a, "d1", true, None);
    w.connect(&b, "d2", true, None);
    assert_eq!(published(&mut w, st, false).len(), 2); // never acknowledged
    w.broker_closed(st);
    w.device_send(&b, Message::Disconnect { duration: None }); // newer than d2's active
    w.advance(Duration::from_secs(1));
    let st2 = w.opened()[0].0;
    w.broker_connack(st2);
    assert_eq!(
        published(&mut w, st2, true),
        vec![
            ("mqttsn/1/state".into(), "online".into()),
            state("d1", "active"),
            state("d2", "disconnected"),
        ]
    );
}

#[test]
fn reconnects_back_off_doubling_to_a_minute() {
    let (mut w, st) = up(with_status(false, |_| {}));
    w.broker_closed(st);
    let mut waits = Vec::new();
    for _ in 0..9 {
        let from = w.now;
        let mut opened = w.opened();
        while opened.is_empty() {
            w.advance(Duration::from_millis(500));
            opened = w.opened();
        }
        waits.push((w.now - from).as_secs());
        w.broker_closed(opened[0].0); // broker still down
    }
    assert_eq!(waits, vec![1, 2, 4, 8, 16, 32, 60, 60, 60]);
    assert_eq!(w.gw.stats().status_reconnects, 0);
}

#[test]
fn an_unanswered_connect_is_given_up_and_retried() {
    let (mut w, st) = up(with_status(false, |_| {}));
    w.broker_closed(st);
    w.advance(Duration::from_secs(1));
    let st2 = w.opened()[0].0;
    // No CONNACK within upstream_connect_timeout (10 s): closed, retried after 2 s.
    w.advance(Duration::from_secs(10));
    assert_eq!(w.closed(), vec![st2]);
    w.advance(Duration::from_secs(2));
    assert_eq!(w.opened().len(), 1);
}

#[test]
fn shutdown_publishes_offline_before_disconnect() {
    let (mut w, st) = up(with_status(false, |_| {}));
    assert_eq!(w.gw.shutdown(w.now), Some(st), "wait for it to close");
    let out = w.take_all();
    let [Output::Send {
        session: s1,
        packet: mqtt::Packet::Publish(p),
    }, Output::Send {
        session: s2,
        packet: mqtt::Packet::Disconnect,
    }, Output::Close { session: s3 }] = out.as_slice()
    else {
        panic!("expected PUBLISH offline, DISCONNECT, Close; got {out:?}");
    };
    assert_eq!((*s1, *s2, *s3), (st, st, st));
    assert_eq!(p.topic, "mqttsn/1/state");
    assert_eq!(&p.payload[..], b"offline");
    assert!(p.retain);
    assert_eq!(p.qos, mqtt::QoS::AtLeastOnce);
    // Stopped for good: no reopen, no more states.
    let a = addr(1);
    w.gw.handle_frame(
        w.now,
        a.clone(),
        connect_msg("d1", true, false, 60).to_bytes().unwrap(),
    );
    w.advance(Duration::from_secs(120));
    let opened = w.opened();
    assert_eq!(opened.len(), 1, "only the device's own session: {opened:?}");
    assert_eq!(opened[0].1.client_id, "d1");
}

#[test]
fn shutdown_while_the_session_is_down_says_nothing() {
    let (mut w, st) = up(with_status(false, |_| {}));
    w.broker_closed(st);
    assert_eq!(w.gw.shutdown(w.now), None);
    w.assert_quiet();
    w.advance(Duration::from_secs(120));
    assert!(w.opened().is_empty());
}

#[test]
fn client_ids_that_are_no_topic_level_are_percent_escaped() {
    assert_eq!(topic_level("plain-id_1"), "plain-id_1");
    assert_eq!(topic_level("a/b+c#d%e"), "a%2Fb%2Bc%23d%25e");
    assert_eq!(topic_level("x\0"), "x%00");
    // `%` itself is escaped, so "a/b" and the ClientId "a%2Fb" never share a topic.
    assert_ne!(topic_level("a/b"), topic_level("a%2Fb"));
    let (mut w, st) = up(with_status(false, |_| {}));
    let a = addr(1);
    w.connect(&a, "room/1+#", true, None);
    assert_eq!(
        published(&mut w, st, true),
        vec![state("room%2F1%2B%23", "active")]
    );
}

#[test]
fn pending_states_are_bounded_by_max_devices() {
    let (mut w, st) = up(with_status(false, |s| s.max_devices = 3));
    w.broker_closed(st);
    // Three devices come and go, three newcomers evict them: six ClientIds have a state.
    for n in 0..3u8 {
        let a = addr(n + 1);
        w.connect(&a, &format!("old{n}"), true, None);
        w.device_send(&a, Message::Disconnect { duration: None });
    }
    for n in 0..3u8 {
        w.connect(&addr(n + 10), &format!("new{n}"), true, None);
    }
    assert_eq!(w.gw.status_pending(), 3);
    assert_eq!(w.gw.stats().status_dropped, 3);
    w.advance(Duration::from_secs(1));
    let st2 = w.opened()[0].0;
    w.broker_connack(st2);
    assert_eq!(published(&mut w, st2, true).len(), 4); // online + 3
}

#[test]
fn at_most_a_window_of_publishes_is_unacknowledged() {
    let (mut w, st) = up(with_status(false, |_| {}));
    for n in 0..40u8 {
        w.connect(&addr(n + 1), &format!("d{n:02}"), true, None);
    }
    let first = w.take_upstream(st);
    assert_eq!(first.len(), 32, "the window");
    assert_eq!(w.gw.status_pending(), 8);
    for p in first {
        let mqtt::Packet::Publish(p) = p else {
            panic!()
        };
        w.broker(
            st,
            mqtt::Packet::PubAck {
                packet_id: p.packet_id.unwrap(),
            },
        );
    }
    assert_eq!(published(&mut w, st, true).len(), 8);
    assert_eq!(w.gw.status_pending(), 0);
}

#[test]
fn evicted_devices_are_lost() {
    let (mut w, st) = up(with_status(false, |s| s.max_devices = 1));
    w.connect(&addr(1), "quiet", true, None);
    assert_eq!(published(&mut w, st, true), vec![state("quiet", "active")]);
    // It never spoke after its CONNACK: a newcomer evicts it.
    w.connect(&addr(2), "newcomer", true, None);
    assert_eq!(
        published(&mut w, st, true),
        vec![state("quiet", "lost"), state("newcomer", "active")]
    );
}

#[test]
fn home_assistant_discovery_once_per_device_and_session() {
    let (mut w, st) = up(with_status(true, |_| {}));
    let a = addr(1);
    w.connect(&a, "room/1", false, None);
    let out = published(&mut w, st, true);
    assert_eq!(out.len(), 2);
    let id = object_id(1, "room/1");
    assert_eq!(id, "mqttsn_1_room_2f1");
    assert_eq!(out[0].0, format!("homeassistant/binary_sensor/{id}/config"));
    let config: serde_json::Value = serde_json::from_str(&out[0].1).unwrap();
    assert_eq!(config["device_class"], "connectivity");
    assert_eq!(config["unique_id"], id.as_str());
    assert_eq!(config["state_topic"], "mqttsn/1/devices/room%2F1/state");
    assert_eq!(config["payload_on"], "active");
    assert_eq!(config["payload_off"], "inactive");
    assert_eq!(config["availability_topic"], "mqttsn/1/state");
    assert_eq!(config["payload_available"], "online");
    assert_eq!(config["payload_not_available"], "offline");
    assert_eq!(config["device"]["identifiers"][0], id.as_str());
    assert_eq!(out[1], state("room%2F1", "active"));
    // Later changes: the state only.
    w.device_send(&a, Message::Disconnect { duration: Some(60) });
    assert_eq!(
        published(&mut w, st, true),
        vec![state("room%2F1", "asleep")]
    );
    // A new session (the broker may have lost its retained messages): announced again.
    w.broker_closed(st);
    w.device_send(&a, connect_msg("room/1", false, false, 60));
    w.advance(Duration::from_secs(1));
    let st2 = w.opened()[0].0;
    w.broker_connack(st2);
    let out = published(&mut w, st2, true);
    let topics: Vec<&str> = out.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        topics,
        vec![
            "mqttsn/1/state",
            "homeassistant/binary_sensor/mqttsn_1_room_2f1/config",
            "mqttsn/1/devices/room%2F1/state",
        ]
    );
    // Object ids are injective: `_` is escaped too.
    assert_ne!(object_id(1, "a_2f"), object_id(1, "a/"));
}

#[test]
fn restored_devices_are_reported_once_the_session_is_up() {
    let mut w = World::with(with_status(false, |s| s.persistent = true));
    let st = w.opened()[0].0;
    let a = addr(1);
    let record = crate::core::persist::DeviceRecord {
        client_id: "kept".into(),
        addr: crate::core::persist::AddrRecord::from_addr(&a),
        state: crate::core::persist::StoredState::Asleep(600),
        keep_alive: 60,
        will: None,
        subs: Vec::new(),
        topics: Vec::new(),
    };
    let value = serde_json::to_vec(&record).unwrap();
    w.gw.restore(
        w.now,
        vec![(crate::core::Table::Device, b"kept".to_vec(), value)],
    );
    w.broker_connack(st);
    let out = published(&mut w, st, true);
    assert_eq!(
        out,
        vec![
            ("mqttsn/1/state".into(), "online".into()),
            state("kept", "asleep")
        ]
    );
}

#[test]
fn shutdown_before_the_connack_drops_the_session_without_disconnect() {
    let mut w = World::with(with_status(false, |_| {}));
    let st = w.opened()[0].0;
    assert_eq!(w.gw.shutdown(w.now), None);
    assert_eq!(w.take_all(), vec![Output::Close { session: st }]);
}

#[test]
fn a_device_may_not_take_the_status_sessions_client_id() {
    let (mut w, _) = up(with_status(false, |_| {}));
    let a = addr(1);
    w.device_send(&a, connect_msg("mqttsn-gateway-1", true, false, 60));
    assert_eq!(
        w.take_to_device(&a),
        vec![connack(ReturnCode::NotSupported)]
    );
    assert!(w.opened().is_empty());
}
