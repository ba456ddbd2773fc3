//! Aggregating mode (`core/aggregate/`): devices share a few upstream sessions. CONNECT and
//! DISCONNECT without upstream CONNECTs, uplink at every QoS with packet ids re-allocated per
//! shared session, subscriptions multiplexed (refcount, max QoS, fan-out at each device's
//! QoS, UNSUBSCRIBE on the last leave, retained only to the new subscriber), wills kept by the
//! gateway, and a broker outage the devices ride out.

use super::*;
use crate::core::AggregateSettings;

fn agg_settings(connections: usize) -> Settings {
    Settings {
        aggregate: Some(AggregateSettings {
            connections,
            client_id: "agg".to_owned(),
        }),
        ..settings()
    }
}

/// A world whose `connections` shared sessions are accepted; returns them in order.
fn agg_world(connections: usize) -> (World, Vec<SessionId>) {
    let mut w = World::with(agg_settings(connections));
    let opened = w.opened();
    assert_eq!(opened.len(), connections, "{opened:?}");
    let shared: Vec<SessionId> = opened.iter().map(|(s, _)| *s).collect();
    for (k, (s, c)) in opened.iter().enumerate() {
        let want = if connections == 1 {
            "agg".to_owned()
        } else {
            format!("agg-{k}")
        };
        assert_eq!(c.client_id, want);
        assert!(c.will.is_none());
        w.broker_connack(*s);
    }
    w.assert_quiet();
    (w, shared)
}

/// CONNECT answered by the gateway alone: no upstream session is opened.
fn agg_connect(w: &mut World, at: &DeviceAddr, client_id: &str, will: Option<&Will>) {
    w.device_send(at, connect_msg(client_id, true, will.is_some(), 60));
    if let Some(will) = will {
        assert_eq!(w.take_to_device(at), vec![Message::WillTopicReq]);
        w.device_send(
            at,
            Message::WillTopic(Some(WillTopic {
                qos: will.qos,
                retain: will.retain,
                topic: will.topic.to_owned(),
            })),
        );
        assert_eq!(w.take_to_device(at), vec![Message::WillMsgReq]);
        w.device_send(
            at,
            Message::WillMsg {
                msg: Bytes::from_static(will.msg),
            },
        );
    }
    assert_eq!(w.take_to_device(at), vec![connack(ReturnCode::Accepted)]);
    assert!(w.opened().is_empty(), "no upstream CONNECT for a device");
}

fn agg_subscribe(
    w: &mut World,
    at: &DeviceAddr,
    s0: SessionId,
    filter: &str,
    qos: QoS,
    msg_id: u16,
) -> (u16, mqtt::QoS) {
    w.subscribe_asked(at, s0, filter, qos, mqtt::QoS::ExactlyOnce, msg_id)
}

/// The next PUBLISH to the device, answering the REGISTER before it when there is one.
fn take_pub(w: &mut World, at: &DeviceAddr) -> codec::Publish {
    let down = w.take_to_device(at);
    w.publish_after_register(at, down)
}

fn up_publish(up: Vec<mqtt::Packet>) -> mqtt::Publish {
    match up.as_slice() {
        [mqtt::Packet::Publish(p)] => p.clone(),
        other => panic!("expected one PUBLISH upstream, got {other:?}"),
    }
}

#[test]
fn devices_connect_without_upstream_connects_spread_over_the_shared_sessions() {
    let mut w = World::with(agg_settings(2));
    let shared: Vec<SessionId> = w.opened().into_iter().map(|(s, _)| s).collect();
    assert_eq!(shared.len(), 2);
    // Before its shared session is accepted a device waits for its CONNACK.
    let a = addr(1);
    w.device_send(&a, connect_msg("d1", true, false, 60));
    assert!(w.take_to_device(&a).is_empty());
    w.broker_connack(shared[0]);
    assert_eq!(w.take_to_device(&a), vec![connack(ReturnCode::Accepted)]);
    w.broker_connack(shared[1]);
    for n in 2..=4 {
        agg_connect(&mut w, &addr(n), &format!("d{n}"), None);
    }
    assert_eq!(
        w.gw.aggregate_sizes()
            .map(|s| (s.shared_connected, s.devices)),
        Some((2, 4))
    );
    assert_eq!(
        w.gw.stats().upstream_opens,
        2,
        "only the shared sessions were opened"
    );
    assert_eq!(w.gw.stats().devices_active, 4);
    // DISCONNECT: answered by the gateway, nothing upstream.
    w.device_send(&a, Message::Disconnect { duration: None });
    assert_eq!(
        w.take_to_device(&a),
        vec![Message::Disconnect { duration: None }]
    );
    w.assert_quiet();
    assert_eq!(w.gw.aggregate_sizes().map(|s| s.devices), Some(3));
}

#[test]
fn uplink_packet_ids_are_per_shared_session_and_acks_go_back_to_their_device() {
    let (mut w, shared) = agg_world(1);
    let (a, b) = (addr(1), addr(2));
    agg_connect(&mut w, &a, "d1", None);
    agg_connect(&mut w, &b, "d2", None);
    let ta = w.register(&a, "s/a", 1);
    let tb = w.register(&b, "s/b", 1);
    // Both devices use MsgId 5: two distinct packet ids upstream.
    w.device_send(
        &a,
        sn_publish(false, QoS::AtLeastOnce, false, TopicRef::Id(ta), 5, b"A"),
    );
    let pa = up_publish(w.take_upstream(shared[0]));
    w.device_send(
        &b,
        sn_publish(false, QoS::AtLeastOnce, false, TopicRef::Id(tb), 5, b"B"),
    );
    let pb = up_publish(w.take_upstream(shared[0]));
    assert_eq!((pa.topic.as_str(), pb.topic.as_str()), ("s/a", "s/b"));
    assert_ne!(pa.packet_id, pb.packet_id);
    // The second PUBACK first: it reaches b, with b's MsgId.
    w.broker(
        shared[0],
        mqtt::Packet::PubAck {
            packet_id: pb.packet_id.unwrap(),
        },
    );
    assert!(w.take_to_device(&a).is_empty());
    assert_eq!(w.take_to_device(&b), vec![puback(tb, 5)]);
    w.broker(
        shared[0],
        mqtt::Packet::PubAck {
            packet_id: pa.packet_id.unwrap(),
        },
    );
    assert_eq!(w.take_to_device(&a), vec![puback(ta, 5)]);
    // QoS 0 goes up as it is.
    w.device_send(
        &a,
        sn_publish(false, QoS::AtMostOnce, true, TopicRef::Id(ta), 0, b"0"),
    );
    let p0 = up_publish(w.take_upstream(shared[0]));
    assert!(p0.retain && p0.packet_id.is_none());
    // QoS 2: PUBREC / PUBREL / PUBCOMP under the shared id, the device's MsgId toward it.
    w.device_send(
        &a,
        sn_publish(false, QoS::ExactlyOnce, false, TopicRef::Id(ta), 9, b"2"),
    );
    let p2 = up_publish(w.take_upstream(shared[0]));
    let s2 = p2.packet_id.unwrap();
    w.broker(shared[0], mqtt::Packet::PubRec { packet_id: s2 });
    assert_eq!(w.take_to_device(&a), vec![Message::Pubrec { msg_id: 9 }]);
    w.device_send(&a, Message::Pubrel { msg_id: 9 });
    assert_eq!(
        w.take_upstream(shared[0]),
        vec![mqtt::Packet::PubRel { packet_id: s2 }]
    );
    w.broker(shared[0], mqtt::Packet::PubComp { packet_id: s2 });
    assert_eq!(w.take_to_device(&a), vec![Message::Pubcomp { msg_id: 9 }]);
    assert_eq!(
        w.gw.aggregate_sizes().map(|s| s.in_flight),
        Some(0),
        "no packet id left in flight"
    );
    w.assert_quiet();
}

#[test]
fn subscriptions_are_refcounted_at_the_highest_qos_and_fanned_out_at_each_devices_qos() {
    let (mut w, shared) = agg_world(2);
    let s0 = shared[0];
    let (a, b) = (addr(1), addr(2));
    agg_connect(&mut w, &a, "d1", None);
    agg_connect(&mut w, &b, "d2", None);
    let (ta, asked) = agg_subscribe(&mut w, &a, s0, "t/+", QoS::AtMostOnce, 1);
    assert_eq!(asked, mqtt::QoS::AtMostOnce);
    // b rides on the second shared session, but subscriptions all go on the first.
    let (tb, asked) = agg_subscribe(&mut w, &b, s0, "t/+", QoS::AtLeastOnce, 1);
    assert_eq!(
        asked,
        mqtt::QoS::AtLeastOnce,
        "the highest QoS any device asked for"
    );
    assert_eq!(
        w.gw.aggregate_sizes().map(|s| (s.filters, s.memberships)),
        Some((1, 2))
    );
    // A QoS 1 message: a gets it at QoS 0, b at QoS 1; the broker's PUBACK waits for b.
    w.broker(
        s0,
        mqtt_publish(mqtt::QoS::AtLeastOnce, false, "t/x", Some(40), b"hi"),
    );
    let pa = take_pub(&mut w, &a);
    assert_eq!((pa.qos, &pa.data[..]), (QoS::AtMostOnce, &b"hi"[..]));
    let pb = take_pub(&mut w, &b);
    assert_eq!(pb.qos, QoS::AtLeastOnce);
    let _ = (ta, tb);
    assert!(
        w.take_upstream(s0).is_empty(),
        "not acknowledged before b took it"
    );
    let topic_id = match pb.topic {
        TopicRef::Id(t) => t,
        other => panic!("{other:?}"),
    };
    w.device_send(&b, puback(topic_id, pb.msg_id));
    assert_eq!(
        w.take_upstream(s0),
        vec![mqtt::Packet::PubAck { packet_id: 40 }]
    );
    // The first device out: no UNSUBSCRIBE yet; the last: UNSUBSCRIBE.
    let unsub = |msg_id| {
        Message::Unsubscribe(codec::Unsubscribe {
            msg_id,
            topic: codec::TopicFilter::Name("t/+".to_owned()),
        })
    };
    w.device_send(&a, unsub(2));
    assert_eq!(w.take_to_device(&a), vec![Message::Unsuback { msg_id: 2 }]);
    assert!(w.take_upstream(s0).is_empty());
    w.device_send(&b, unsub(2));
    assert_eq!(w.take_to_device(&b), vec![Message::Unsuback { msg_id: 2 }]);
    let up = w.take_upstream(s0);
    let [mqtt::Packet::Unsubscribe { packet_id, filters }] = up.as_slice() else {
        panic!("expected UNSUBSCRIBE, got {up:?}");
    };
    assert_eq!(filters, &vec!["t/+".to_owned()]);
    w.broker(
        s0,
        mqtt::Packet::UnsubAck {
            packet_id: *packet_id,
        },
    );
    // Nobody holds it: a late message is acknowledged and goes nowhere.
    w.broker(
        s0,
        mqtt_publish(mqtt::QoS::AtLeastOnce, false, "t/x", Some(41), b"late"),
    );
    assert_eq!(
        w.take_upstream(s0),
        vec![mqtt::Packet::PubAck { packet_id: 41 }]
    );
    w.assert_quiet();
}

#[test]
fn retained_messages_reach_only_the_new_subscriber_of_an_existing_filter() {
    let (mut w, shared) = agg_world(1);
    let s0 = shared[0];
    let (a, b) = (addr(1), addr(2));
    agg_connect(&mut w, &a, "d1", None);
    agg_connect(&mut w, &b, "d2", None);
    agg_subscribe(&mut w, &a, s0, "r/t", QoS::AtMostOnce, 1);
    w.broker(
        s0,
        mqtt_publish(mqtt::QoS::AtMostOnce, true, "r/t", None, b"old"),
    );
    assert_eq!(&one_pub(w.take_to_device(&a)).data[..], b"old");
    // b subscribes to the same filter: subscribed again upstream, the broker re-sends the
    // retained message, and only b gets it.
    agg_subscribe(&mut w, &b, s0, "r/t", QoS::AtMostOnce, 1);
    w.broker(
        s0,
        mqtt_publish(mqtt::QoS::AtMostOnce, true, "r/t", None, b"old"),
    );
    assert!(w.take_to_device(&a).is_empty(), "a had it already");
    let p = one_pub(w.take_to_device(&b));
    assert!(p.retain);
    // A live message reaches both.
    w.broker(
        s0,
        mqtt_publish(mqtt::QoS::AtMostOnce, false, "r/t", None, b"new"),
    );
    assert_eq!(&one_pub(w.take_to_device(&a)).data[..], b"new");
    assert_eq!(&one_pub(w.take_to_device(&b)).data[..], b"new");
}

#[test]
fn wills_are_published_by_the_gateway_when_a_device_is_lost_not_on_disconnect() {
    let (mut w, shared) = agg_world(1);
    let will = Will {
        topic: "w/d1",
        qos: QoS::AtLeastOnce,
        retain: true,
        msg: b"gone",
    };
    let (a, b) = (addr(1), addr(2));
    agg_connect(&mut w, &a, "d1", Some(&will));
    agg_connect(
        &mut w,
        &b,
        "d2",
        Some(&Will {
            topic: "w/d2",
            ..will.clone()
        }),
    );
    // b says DISCONNECT: no will.
    w.device_send(&b, Message::Disconnect { duration: None });
    w.take_to_device(&b);
    assert!(w.take_upstream(shared[0]).is_empty());
    // a goes silent: keep-alive (60 s, with tolerance) runs out and the gateway publishes it.
    w.advance(Duration::from_secs(200));
    let p = up_publish(w.take_upstream(shared[0]));
    assert_eq!(
        (p.topic.as_str(), &p.payload[..], p.retain),
        ("w/d1", &b"gone"[..], true)
    );
    assert_eq!(p.qos, mqtt::QoS::AtLeastOnce);
    w.broker(
        shared[0],
        mqtt::Packet::PubAck {
            packet_id: p.packet_id.unwrap(),
        },
    );
    assert_eq!(
        w.gw.aggregate_sizes().map(|s| (s.devices, s.in_flight)),
        Some((0, 0))
    );
}

#[test]
fn a_will_update_applies_at_once_without_an_upstream_reconnect() {
    let (mut w, shared) = agg_world(1);
    let will = Will {
        topic: "w/d1",
        qos: QoS::AtMostOnce,
        retain: false,
        msg: b"old",
    };
    let a = addr(1);
    agg_connect(&mut w, &a, "d1", Some(&will));
    w.device_send(
        &a,
        Message::WillMsgUpd {
            msg: Bytes::from_static(b"new"),
        },
    );
    assert_eq!(
        w.take_to_device(&a),
        vec![Message::WillMsgResp {
            return_code: ReturnCode::Accepted
        }]
    );
    assert!(
        w.opened().is_empty() && w.closed().is_empty(),
        "nothing upstream"
    );
    assert!(w.take_upstream(shared[0]).is_empty());
    w.advance(Duration::from_secs(200));
    let p = up_publish(w.take_upstream(shared[0]));
    assert_eq!(&p.payload[..], b"new");
}

#[test]
fn a_broker_outage_keeps_devices_connected_and_resends_what_was_in_flight() {
    let (mut w, shared) = agg_world(1);
    let s0 = shared[0];
    let a = addr(1);
    agg_connect(&mut w, &a, "d1", None);
    agg_subscribe(&mut w, &a, s0, "o/t", QoS::AtLeastOnce, 1);
    let t = w.register(&a, "o/up", 2);
    w.device_send(
        &a,
        sn_publish(false, QoS::AtLeastOnce, false, TopicRef::Id(t), 3, b"x"),
    );
    let p = up_publish(w.take_upstream(s0));
    w.broker_closed(s0);
    assert!(w.take_to_device(&a).is_empty(), "the device is not told");
    assert_eq!(
        w.gw.device_state("d1"),
        Some(crate::core::DeviceState::Active)
    );
    // QoS 0 while away is dropped and counted.
    w.device_send(
        &a,
        sn_publish(false, QoS::AtMostOnce, false, TopicRef::Id(t), 0, b"0"),
    );
    assert_eq!(w.gw.stats().uplink_dropped, 1);
    w.device_send(&a, Message::PingReq { client_id: None });
    assert_eq!(w.take_to_device(&a), vec![Message::PingResp]);
    // After the back-off the shared session is opened again (same ClientId).
    w.advance(Duration::from_secs(1));
    let opened = w.opened();
    assert_eq!(opened.len(), 1);
    assert_eq!(opened[0].1.client_id, "agg");
    let s1 = opened[0].0;
    w.broker_connack(s1);
    let up = w.take_upstream(s1);
    // The PUBLISH again with DUP under its id, and the filter subscribed again.
    assert!(
        up.contains(&mqtt::Packet::Publish(mqtt::Publish {
            dup: true,
            ..p.clone()
        })),
        "{up:?}"
    );
    assert!(
        up.iter()
            .any(|x| matches!(x, mqtt::Packet::Subscribe { filters, .. } if filters[0].0 == "o/t")),
        "{up:?}"
    );
    w.broker(
        s1,
        mqtt::Packet::PubAck {
            packet_id: p.packet_id.unwrap(),
        },
    );
    assert_eq!(w.take_to_device(&a), vec![puback(t, 3)]);
    // Downlink flows again.
    w.broker(
        s1,
        mqtt_publish(mqtt::QoS::AtMostOnce, false, "o/t", None, b"back"),
    );
    assert_eq!(&one_pub(w.take_to_device(&a)).data[..], b"back");
}

#[test]
fn downlink_qos2_is_received_once_and_acknowledged_after_the_devices() {
    let (mut w, shared) = agg_world(1);
    let s0 = shared[0];
    let a = addr(1);
    agg_connect(&mut w, &a, "d1", None);
    agg_subscribe(&mut w, &a, s0, "q/2", QoS::ExactlyOnce, 1);
    w.broker(
        s0,
        mqtt_publish(mqtt::QoS::ExactlyOnce, false, "q/2", Some(7), b"once"),
    );
    let p = one_pub(w.take_to_device(&a));
    assert_eq!(p.qos, QoS::ExactlyOnce);
    assert!(w.take_upstream(s0).is_empty());
    w.device_send(&a, Message::Pubrec { msg_id: p.msg_id });
    let down = w.take_to_device(&a);
    assert_eq!(down, vec![Message::Pubrel { msg_id: p.msg_id }]);
    assert_eq!(
        w.take_upstream(s0),
        vec![mqtt::Packet::PubRec { packet_id: 7 }]
    );
    // The broker re-sends the PUBLISH (it missed our PUBREC): not delivered again.
    w.broker(
        s0,
        mqtt::Packet::Publish(mqtt::Publish {
            dup: true,
            ..match mqtt_publish(mqtt::QoS::ExactlyOnce, false, "q/2", Some(7), b"once") {
                mqtt::Packet::Publish(p) => p,
                _ => unreachable!(),
            }
        }),
    );
    assert!(w.take_to_device(&a).is_empty());
    assert_eq!(
        w.take_upstream(s0),
        vec![mqtt::Packet::PubRec { packet_id: 7 }]
    );
    w.broker(s0, mqtt::Packet::PubRel { packet_id: 7 });
    assert_eq!(
        w.take_upstream(s0),
        vec![mqtt::Packet::PubComp { packet_id: 7 }]
    );
}
