//! Aggregating mode with a store: persistent devices' QoS 2 uplink is exactly once across a
//! gateway restart (the shared packet id is on disk before the broker sees it), their
//! subscriptions come back into the filter table after a restart, and the shared session is
//! persistent.

use super::*;
use crate::core::{AggregateSettings, Table};

fn agg_persistent() -> Settings {
    Settings {
        persistent: true,
        aggregate: Some(AggregateSettings {
            connections: 1,
            client_id: "agg".to_owned(),
        }),
        ..settings()
    }
}

/// The shared session of a fresh gateway, accepted.
fn accept_shared(w: &mut World) -> SessionId {
    let opened = w.opened();
    assert_eq!(opened.len(), 1, "{opened:?}");
    assert!(
        !opened[0].1.clean_session,
        "with a store the shared session is persistent"
    );
    w.broker_connack(opened[0].0);
    opened[0].0
}

fn persistent_device(w: &mut World, at: &DeviceAddr, client_id: &str) {
    w.device_send(at, connect_msg(client_id, false, false, 60));
    w.commit_all();
    assert_eq!(w.take_to_device(at), vec![connack(ReturnCode::Accepted)]);
}

/// Commits until the store has nothing more to write (a durable QoS 2 flow takes two
/// batches in aggregating mode: the device's row, then the shared packet id's).
fn settle_store(w: &mut World) {
    for _ in 0..4 {
        w.commit_all();
    }
}

/// `dev` SUBSCRIBEs `topic` at QoS 1 (MsgId `msg_id`); the shared session `s` carries it
/// upstream and the broker grants QoS 1.
fn subscribe_granted(w: &mut World, s: SessionId, dev: &DeviceAddr, msg_id: u16, topic: &str) {
    w.device_send(
        dev,
        Message::Subscribe(codec::Subscribe {
            dup: false,
            qos: QoS::AtLeastOnce,
            msg_id,
            topic: codec::TopicFilter::Name(topic.to_owned()),
        }),
    );
    let up = w.take_upstream(s);
    let [mqtt::Packet::Subscribe { packet_id, .. }] = up.as_slice() else {
        panic!("{up:?}")
    };
    w.broker(
        s,
        mqtt::Packet::SubAck {
            packet_id: *packet_id,
            codes: vec![mqtt::SubackCode::Granted(mqtt::QoS::AtLeastOnce)],
        },
    );
}

#[test]
fn aggregated_uplink_qos2_is_exactly_once_across_a_restart() {
    let mut w = World::with(agg_persistent());
    let s = accept_shared(&mut w);
    let a = addr(1);
    persistent_device(&mut w, &a, "dev");
    let id = w.register(&a, "up/t", 1);
    w.commit_all();
    w.device_send(&a, publish(QoS::ExactlyOnce, TopicRef::Id(id), 7, b"once"));
    w.commit_all();
    assert!(
        w.take_upstream(s).is_empty(),
        "not before the shared packet id is durable"
    );
    w.commit_all();
    let up = w.take_upstream(s);
    let [mqtt::Packet::Publish(p)] = up.as_slice() else {
        panic!("{up:?}")
    };
    let pkid = p.packet_id.unwrap();
    w.broker(s, mqtt::Packet::PubRec { packet_id: pkid });
    settle_store(&mut w);
    assert_eq!(w.take_to_device(&a), vec![Message::Pubrec { msg_id: 7 }]);

    // Crash; the device did not hear PUBREC and re-sends PUBLISH, then PUBREL.
    w.restart(agg_persistent());
    let s2 = accept_shared(&mut w);
    settle_store(&mut w);
    w.take_upstream(s2);
    w.device_send(
        &a,
        sn_publish(true, QoS::ExactlyOnce, false, TopicRef::Id(id), 7, b"once"),
    );
    assert_eq!(w.take_to_device(&a), vec![Message::Pubrec { msg_id: 7 }]);
    assert!(
        w.take_upstream(s2).is_empty(),
        "never a second copy upstream"
    );
    w.device_send(&a, Message::Pubrel { msg_id: 7 });
    settle_store(&mut w);
    assert_eq!(
        w.take_upstream(s2),
        vec![mqtt::Packet::PubRel { packet_id: pkid }],
        "released under the shared packet id it went up with"
    );
    w.broker(s2, mqtt::Packet::PubComp { packet_id: pkid });
    settle_store(&mut w);
    assert_eq!(w.take_to_device(&a), vec![Message::Pubcomp { msg_id: 7 }]);
    assert!(
        !w.store.keys().any(|(t, _)| *t == Table::Uplink),
        "{:?}",
        w.store
    );
}

#[test]
fn aggregated_uplink_qos2_lost_before_pubrec_goes_again_under_the_same_shared_id() {
    let mut w = World::with(agg_persistent());
    let s = accept_shared(&mut w);
    let a = addr(1);
    persistent_device(&mut w, &a, "dev");
    let id = w.register(&a, "up/t", 1);
    w.device_send(&a, publish(QoS::ExactlyOnce, TopicRef::Id(id), 7, b"once"));
    settle_store(&mut w);
    let up = w.take_upstream(s);
    let [mqtt::Packet::Publish(p)] = up.as_slice() else {
        panic!("{up:?}")
    };
    let pkid = p.packet_id.unwrap();
    w.restart(agg_persistent());
    let s2 = accept_shared(&mut w);
    settle_store(&mut w);
    w.take_upstream(s2);
    w.device_send(
        &a,
        sn_publish(true, QoS::ExactlyOnce, false, TopicRef::Id(id), 7, b"once"),
    );
    settle_store(&mut w);
    let up = w.take_upstream(s2);
    let [mqtt::Packet::Publish(again)] = up.as_slice() else {
        panic!("{up:?}")
    };
    assert_eq!(again.packet_id, Some(pkid));
    assert!(again.dup);
    w.broker(s2, mqtt::Packet::PubRec { packet_id: pkid });
    settle_store(&mut w);
    assert_eq!(w.take_to_device(&a), vec![Message::Pubrec { msg_id: 7 }]);
}

#[test]
fn persistent_subscriptions_come_back_into_the_filter_table_after_a_restart() {
    let mut w = World::with(agg_persistent());
    let s = accept_shared(&mut w);
    let a = addr(1);
    persistent_device(&mut w, &a, "dev");
    subscribe_granted(&mut w, s, &a, 1, "p/t");
    settle_store(&mut w);
    assert!(matches!(
        w.take_to_device(&a).as_slice(),
        [Message::Suback(_)]
    ));

    w.restart(agg_persistent());
    let s2 = accept_shared(&mut w);
    let up = w.take_upstream(s2);
    let [mqtt::Packet::Subscribe { packet_id, filters }] = up.as_slice() else {
        panic!("the restored device subscribes again: {up:?}")
    };
    assert_eq!(filters, &vec![("p/t".to_owned(), mqtt::QoS::AtLeastOnce)]);
    w.broker(
        s2,
        mqtt::Packet::SubAck {
            packet_id: *packet_id,
            codes: vec![mqtt::SubackCode::Granted(mqtt::QoS::AtLeastOnce)],
        },
    );
    settle_store(&mut w);
    assert!(w.take_to_device(&a).is_empty(), "the device is not told");
    w.broker(
        s2,
        mqtt_publish(mqtt::QoS::AtLeastOnce, false, "p/t", Some(3), b"after"),
    );
    let down = w.take_to_device(&a);
    // The device may be told the topic id again after the restart.
    let p = w.publish_after_register(&a, down);
    assert_eq!(&p.data[..], b"after");
}

#[test]
fn a_disconnected_persistent_device_gets_what_arrived_meanwhile_when_it_connects_again() {
    let mut w = World::with(agg_persistent());
    let s = accept_shared(&mut w);
    let a = addr(1);
    persistent_device(&mut w, &a, "dev");
    subscribe_granted(&mut w, s, &a, 1, "away/t");
    settle_store(&mut w);
    w.take_to_device(&a);
    w.device_send(&a, Message::Disconnect { duration: None });
    settle_store(&mut w);
    assert_eq!(
        w.take_to_device(&a),
        vec![Message::Disconnect { duration: None }]
    );
    assert!(
        w.take_upstream(s).is_empty(),
        "no UNSUBSCRIBE: the subscription outlives it"
    );
    // QoS 1 while it is away: stored for it, acknowledged upstream once durable. QoS 0 is not
    // kept (as a broker keeps none for a persistent session).
    w.broker(
        s,
        mqtt_publish(mqtt::QoS::AtMostOnce, false, "away/t", None, b"lost"),
    );
    w.broker(
        s,
        mqtt_publish(mqtt::QoS::AtLeastOnce, false, "away/t", Some(9), b"kept"),
    );
    assert!(w.take_upstream(s).is_empty(), "not before it is durable");
    settle_store(&mut w);
    assert_eq!(
        w.take_upstream(s),
        vec![mqtt::Packet::PubAck { packet_id: 9 }]
    );
    assert!(w.take_to_device(&a).is_empty());
    // It connects again: subscribed again, and the message arrives.
    w.device_send(&a, connect_msg("dev", false, false, 60));
    settle_store(&mut w);
    let mut down = w.take_to_device(&a);
    assert_eq!(down.remove(0), connack(ReturnCode::Accepted));
    // A REGISTER may come first: the new session's topic table is empty.
    let p = w.publish_after_register(&a, down);
    assert_eq!(&p.data[..], b"kept");
    let up = w.take_upstream(s);
    assert!(
        matches!(up.as_slice(), [mqtt::Packet::Subscribe { filters, .. }] if filters[0].0 == "away/t"),
        "{up:?}"
    );
    assert_eq!(
        w.gw.aggregate_sizes().map(|z| (z.devices, z.memberships)),
        Some((1, 1)),
        "one session, one membership"
    );
}

#[test]
fn an_evicted_persistent_device_takes_its_kept_filters_with_it() {
    let mut w = World::with(Settings {
        max_devices: 1,
        ..agg_persistent()
    });
    let s = accept_shared(&mut w);
    let a = addr(1);
    persistent_device(&mut w, &a, "old");
    subscribe_granted(&mut w, s, &a, 1, "old/t");
    w.device_send(&a, Message::Disconnect { duration: None });
    settle_store(&mut w);
    w.take_to_device(&a);
    assert_eq!(
        w.gw.aggregate_sizes().map(|z| (z.devices, z.memberships)),
        Some((1, 1)),
        "kept while away"
    );
    // A newcomer takes its slot: the kept filter goes with it.
    let b = addr(2);
    w.device_send(&b, connect_msg("new", true, false, 60));
    settle_store(&mut w);
    assert_eq!(w.take_to_device(&b), vec![connack(ReturnCode::Accepted)]);
    let up = w.take_upstream(s);
    assert!(
        matches!(up.as_slice(), [mqtt::Packet::Unsubscribe { filters, .. }] if filters[0] == "old/t"),
        "{up:?}"
    );
    assert_eq!(
        w.gw.aggregate_sizes().map(|z| (z.devices, z.memberships)),
        Some((1, 0))
    );
}

#[test]
fn a_persistent_device_away_across_a_restart_still_gets_its_messages() {
    let mut w = World::with(agg_persistent());
    let s = accept_shared(&mut w);
    let a = addr(1);
    persistent_device(&mut w, &a, "dev");
    subscribe_granted(&mut w, s, &a, 1, "r/+");
    w.device_send(&a, Message::Disconnect { duration: None });
    settle_store(&mut w);
    w.take_to_device(&a);

    w.restart(agg_persistent());
    let s2 = accept_shared(&mut w);
    // The broker kept the shared session (and its subscription): what it queued arrives.
    w.broker(
        s2,
        mqtt_publish(mqtt::QoS::AtLeastOnce, false, "r/x", Some(4), b"queued"),
    );
    settle_store(&mut w);
    assert_eq!(
        w.take_upstream(s2),
        vec![mqtt::Packet::PubAck { packet_id: 4 }]
    );
    w.device_send(&a, connect_msg("dev", false, false, 60));
    settle_store(&mut w);
    let mut down = w.take_to_device(&a);
    assert_eq!(down.remove(0), connack(ReturnCode::Accepted));
    // A REGISTER may come first: the new session's topic table is empty.
    let p = w.publish_after_register(&a, down);
    assert_eq!(&p.data[..], b"queued");
}
