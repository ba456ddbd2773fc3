//! Hostile peers: a UDP source address proves nothing, so no sender may fill the device table
//! (per-source limits, the connect rate, eviction of silent sessions), hold it with will prompts,
//! make the gateway send unbounded traffic to an address that never answers, or grow a device's
//! subscriptions without bound. Removed devices leave nothing behind in the timer table. The
//! `max_devices` bound: a table of connected devices refuses, a disconnected device is evicted.

use super::*;
use crate::core::settings::SourceLimits;
use crate::core::DeviceState;

fn at(ip: [u8; 4], port: u16) -> DeviceAddr {
    DeviceAddr::udp(TransportId(0), SocketAddr::from((ip, port)))
}

/// Address `i` in a /24 of its own (so per-subnet limits do not interfere).
fn spread(i: u32) -> DeviceAddr {
    at([10, (i >> 8) as u8, i as u8, 1], 1000)
}

fn limits(f: impl FnOnce(&mut SourceLimits)) -> Settings {
    let mut s = settings();
    f(&mut s.per_source);
    s
}

impl World {
    /// A CONNECT (Duration 0, nothing after) whose upstream session the broker accepts.
    fn spoofed_connect(&mut self, from: &DeviceAddr, client_id: &str) {
        self.device_send(from, connect_msg(client_id, true, false, 0));
        for (s, _) in self.opened() {
            self.broker_connack(s);
        }
        self.take_all();
    }

    fn ping(&mut self, from: &DeviceAddr) {
        self.device_send(from, Message::PingReq { client_id: None });
        assert_eq!(self.take_to_device(from), vec![Message::PingResp]);
    }

    fn refused(&mut self, from: &DeviceAddr, client_id: &str, will: bool) -> bool {
        self.device_send(from, connect_msg(client_id, true, will, 60));
        let down = self.take_to_device(from);
        self.take_all();
        down == vec![connack(ReturnCode::Congestion)]
    }
}

#[test]
fn connect_only_floods_cannot_lock_out_a_talking_device() {
    let mut w = World::with(Settings {
        max_devices: 100,
        ..settings()
    });
    for i in 0..100 {
        w.spoofed_connect(&spread(i), &format!("spoof{i}"));
    }
    assert_eq!(w.gw.device_count(), 100);
    let real = at([192, 168, 1, 10], 5000);
    w.connect(&real, "real", true, None);
    assert_eq!(w.gw.stats().devices_evicted, 1);
    w.ping(&real);
    // A second wave cannot push out the device that talks.
    for i in 100..400 {
        w.spoofed_connect(&spread(i), &format!("spoof{i}"));
    }
    assert_eq!(w.gw.device_state("real"), Some(DeviceState::Active));
    assert_eq!(w.gw.device_count(), 100);
    assert_eq!(w.gw.stats().devices_evicted, 301);
    // Nor can it push out a second real device that joins while it goes on.
    let other = at([192, 168, 1, 11], 5000);
    w.connect(&other, "other", true, None);
    w.ping(&other);
    for i in 400..500 {
        w.spoofed_connect(&spread(i), &format!("spoof{i}"));
    }
    assert_eq!(w.gw.device_state("other"), Some(DeviceState::Active));
    assert_eq!(w.gw.device_state("real"), Some(DeviceState::Active));
}

#[test]
fn the_least_recently_heard_pending_device_is_evicted_first() {
    let mut w = World::with(Settings {
        max_devices: 3,
        ..settings()
    });
    for i in 0..3 {
        w.spoofed_connect(&spread(i), &format!("p{i}"));
        w.now += Duration::from_secs(1);
    }
    w.connect(&spread(9), "new", true, None);
    assert_eq!(w.gw.device_state("p0"), None);
    assert!(w.gw.device_state("p1").is_some() && w.gw.device_state("p2").is_some());
}

#[test]
fn an_evicted_pending_device_is_told_to_reconnect_and_its_session_ends_without_will() {
    let mut w = World::with(Settings {
        max_devices: 1,
        ..settings()
    });
    let a = spread(1);
    let s = w.connect(&a, "quiet", true, None);
    w.connect(&spread(2), "new", true, None);
    assert_eq!(w.take_upstream(s), vec![mqtt::Packet::Disconnect]);
    assert_eq!(w.closed(), vec![s]);
    assert_eq!(
        w.take_to_device(&a),
        vec![Message::Disconnect { duration: None }]
    );
}

#[test]
fn a_table_full_of_talking_devices_refuses_and_counts() {
    let mut w = World::with(Settings {
        max_devices: 3,
        ..settings()
    });
    for i in 0..3 {
        w.connect(&spread(i), &format!("d{i}"), true, None);
        w.ping(&spread(i));
    }
    assert!(w.refused(&spread(7), "late", false));
    assert_eq!(w.gw.stats().connects_refused_full, 1);
    assert_eq!(w.gw.device_count(), 3);
}

#[test]
fn one_address_holds_at_most_pending_per_address_silent_sessions() {
    let mut w = World::with(limits(|l| l.pending_per_address = 4));
    let ip = [10, 1, 1, 1];
    for port in 1..=4 {
        w.spoofed_connect(&at(ip, port), &format!("d{port}"));
    }
    assert!(w.refused(&at(ip, 5), "d5", false));
    assert_eq!(w.gw.stats().connects_refused_source, 1);
    // Another address is not affected.
    assert!(!w.refused(&at([10, 1, 1, 2], 5), "x", false));
    // Once one of them talks it no longer counts as pending.
    w.ping(&at(ip, 1));
    assert!(!w.refused(&at(ip, 5), "d5", false));
}

#[test]
fn a_repeated_connect_does_not_count_against_its_own_device() {
    let mut w = World::with(limits(|l| l.pending_per_address = 1));
    let a = at([10, 1, 1, 1], 1);
    w.spoofed_connect(&a, "d1");
    // The same device connecting again (a new session) is not refused for its own slot.
    assert!(!w.refused(&a, "d1", false));
}

#[test]
fn one_subnet_holds_at_most_pending_per_subnet_silent_sessions() {
    let mut w = World::with(limits(|l| {
        l.pending_per_address = 100;
        l.pending_per_subnet = 4;
    }));
    for host in 1..=4 {
        w.spoofed_connect(&at([10, 1, 1, host], 1), &format!("d{host}"));
    }
    assert!(w.refused(&at([10, 1, 1, 5], 1), "d5", false));
    assert!(!w.refused(&at([10, 1, 2, 5], 1), "d6", false));
}

#[test]
fn ipv6_sources_are_grouped_by_their_64() {
    let mut w = World::with(limits(|l| {
        l.pending_per_address = 100;
        l.pending_per_subnet = 2;
    }));
    let v6 = |s: &str| DeviceAddr::udp(TransportId(0), s.parse().unwrap());
    w.spoofed_connect(&v6("[2001:db8:0:1::1]:1"), "a");
    w.spoofed_connect(&v6("[2001:db8:0:1::2]:1"), "b");
    assert!(w.refused(&v6("[2001:db8:0:1:ffff::3]:1"), "c", false));
    assert!(!w.refused(&v6("[2001:db8:0:2::3]:1"), "d", false));
}

#[test]
fn devices_per_address_bounds_connected_devices_that_talk() {
    let mut w = World::with(limits(|l| l.devices_per_address = 3));
    let ip = [10, 1, 1, 1];
    for port in 1..=3 {
        w.connect(&at(ip, port), &format!("d{port}"), true, None);
        w.ping(&at(ip, port));
    }
    assert!(w.refused(&at(ip, 4), "d4", false));
    w.device_send(&at(ip, 1), Message::Disconnect { duration: None });
    w.take_all();
    assert!(!w.refused(&at(ip, 4), "d4", false));
}

#[test]
fn a_subnet_may_start_sessions_only_at_its_connect_rate() {
    let mut w = World::with(limits(|l| {
        l.pending_per_address = 100;
        l.connects_per_second = 10;
        l.connect_burst = 3;
    }));
    for port in 1..=3 {
        assert!(!w.refused(&at([10, 1, 1, 1], port), &format!("d{port}"), false));
    }
    assert!(w.refused(&at([10, 1, 1, 2], 4), "d4", false));
    // Another subnet has its own bucket.
    assert!(!w.refused(&at([10, 1, 2, 1], 1), "e1", false));
    w.now += Duration::from_millis(100); // one token back
    assert!(!w.refused(&at([10, 1, 1, 2], 4), "d4", false));
    assert!(w.refused(&at([10, 1, 1, 2], 5), "d5", false));
    assert_eq!(w.gw.stats().connects_refused_source, 2);
}

#[test]
fn serial_peers_are_not_limited_per_source() {
    let mut w = World::with(limits(|l| {
        l.pending_per_address = 1;
        l.connect_burst = 1;
    }));
    for n in 1..=3u8 {
        let link = DeviceAddr {
            transport: TransportId(1),
            peer: crate::core::PeerAddr::Link(Bytes::from(vec![n; 8])),
            wireless_node_id: None,
        };
        assert!(!w.refused(&link, &format!("s{n}"), false));
    }
}

// ---------------------------------------------------------------- will prompts (item 11)

#[test]
fn unanswered_will_prompts_cannot_lock_out_a_real_device() {
    let mut w = World::with(Settings {
        max_devices: 50,
        ..settings()
    });
    for i in 0..50 {
        w.device_send(&spread(i), connect_msg(&format!("w{i}"), true, true, 0));
        assert_eq!(w.take_to_device(&spread(i)), vec![Message::WillTopicReq]);
    }
    assert_eq!(w.gw.device_count(), 50);
    let will = Will {
        topic: "w/real",
        qos: QoS::AtMostOnce,
        retain: false,
        msg: b"gone",
    };
    w.connect(&at([192, 168, 1, 10], 1), "real", true, Some(will));
    assert_eq!(w.gw.device_state("w0"), None, "oldest prompt evicted");
    assert_eq!(
        w.take_to_device(&spread(0)),
        vec![Message::Disconnect { duration: None }]
    );
    // The evicted one answering late is told it has no session.
    w.device_send(
        &spread(0),
        Message::WillTopic(Some(WillTopic {
            qos: QoS::AtMostOnce,
            retain: false,
            topic: "x".into(),
        })),
    );
    assert_eq!(
        w.take_to_device(&spread(0)),
        vec![Message::Disconnect { duration: None }]
    );
}

#[test]
fn will_prompts_count_as_pending_per_address() {
    let mut w = World::with(limits(|l| l.pending_per_address = 2));
    let ip = [10, 1, 1, 1];
    for port in 1..=2 {
        w.device_send(
            &at(ip, port),
            connect_msg(&format!("w{port}"), true, true, 0),
        );
        assert_eq!(w.take_to_device(&at(ip, port)), vec![Message::WillTopicReq]);
    }
    assert!(w.refused(&at(ip, 3), "w3", true));
}

// ---------------------------------------------------------------- timers (item 12)

#[test]
fn removed_devices_leave_no_timer_entries() {
    let mut w = World::with(Settings {
        max_devices: 10,
        ..settings()
    });
    // Each will prompt has a 40 s deadline; each is evicted by the next wave long before it.
    for i in 0..2000 {
        w.device_send(&spread(i), connect_msg(&format!("w{i}"), true, true, 0));
        w.take_all();
        let (timers, index) = w.gw.index_sizes();
        assert!(timers <= w.gw.device_count(), "{timers} timer entries");
        assert_eq!(index, w.gw.device_count());
    }
    assert_eq!(w.gw.device_count(), 10);
}

// ---------------------------------------------------------------- reflection (item 9)

fn silent_subscriber(max_silent: usize) -> (World, DeviceAddr, SessionId) {
    let mut w = World::with(Settings {
        max_silent_downlink_bytes: max_silent,
        ..settings()
    });
    let a = at([203, 0, 113, 9], 1);
    let s = w.connect_with(&a, "victim", true, None, 0);
    w.subscribe(&a, s, "feed/x", QoS::AtMostOnce, mqtt::QoS::AtMostOnce, 1);
    (w, a, s)
}

fn bytes_to(w: &mut World, to: &DeviceAddr) -> usize {
    w.drain();
    let mut n = 0;
    w.out.retain(|o| match o {
        Output::Transmit { to: t, frame } if t == to => {
            n += frame.len();
            false
        }
        _ => true,
    });
    n
}

#[test]
fn a_device_that_never_answers_is_not_sent_unbounded_traffic() {
    let (mut w, a, s) = silent_subscriber(4096);
    let mut sent = 0;
    for _ in 0..1000 {
        w.broker(
            s,
            mqtt_publish(mqtt::QoS::AtMostOnce, false, "feed/x", None, &[0x55; 100]),
        );
        sent += bytes_to(&mut w, &a);
    }
    assert!(sent <= 4096 + 200, "{sent} octets sent to a silent device");
    assert_eq!(w.gw.device_state("victim"), Some(DeviceState::Lost));
    assert_eq!(w.gw.stats().devices_silent_lost, 1);
    // Lost, not disconnected: the session ends without DISCONNECT so the will fires.
    assert!(!w.take_upstream(s).contains(&mqtt::Packet::Disconnect));
    assert_eq!(w.closed(), vec![s]);
}

#[test]
fn a_device_that_answers_now_and_then_keeps_its_feed() {
    let (mut w, a, s) = silent_subscriber(4096);
    for i in 0..1000 {
        w.broker(
            s,
            mqtt_publish(mqtt::QoS::AtMostOnce, false, "feed/x", None, &[0x55; 100]),
        );
        bytes_to(&mut w, &a);
        if i % 20 == 19 {
            w.ping(&a);
        }
    }
    assert_eq!(w.gw.device_state("victim"), Some(DeviceState::Active));
}

// ---------------------------------------------------------------- subscriptions (item 7)

#[test]
fn subscriptions_per_device_are_bounded() {
    let mut w = World::with(Settings {
        max_subscriptions_per_device: 3,
        ..settings()
    });
    let a = addr(1);
    let s = w.connect(&a, "dev", true, None);
    for (i, f) in ["a/#", "b/+", "c"].iter().enumerate() {
        w.subscribe(
            &a,
            s,
            f,
            QoS::AtMostOnce,
            mqtt::QoS::AtMostOnce,
            i as u16 + 1,
        );
    }
    let sub = |filter: &str, msg_id| {
        Message::Subscribe(codec::Subscribe {
            dup: false,
            qos: QoS::AtLeastOnce,
            msg_id,
            topic: codec::TopicFilter::Name(filter.to_owned()),
        })
    };
    w.device_send(&a, sub("d/#", 9));
    assert!(w.take_upstream(s).is_empty(), "nothing goes upstream");
    let down = w.take_to_device(&a);
    let [Message::Suback(sb)] = down.as_slice() else {
        panic!("expected SUBACK, got {down:?}");
    };
    assert_eq!((sb.msg_id, sb.return_code), (9, ReturnCode::Congestion));
    assert_eq!(w.gw.stats().subscriptions_refused, 1);
    // Changing the QoS of a filter it holds still works.
    w.subscribe(&a, s, "a/#", QoS::AtLeastOnce, mqtt::QoS::AtLeastOnce, 10);
    // After an UNSUBSCRIBE there is room again.
    w.device_send(
        &a,
        Message::Unsubscribe(codec::Unsubscribe {
            msg_id: 11,
            topic: codec::TopicFilter::Name("c".into()),
        }),
    );
    let up = w.take_upstream(s);
    let [mqtt::Packet::Unsubscribe { packet_id, .. }] = up.as_slice() else {
        panic!("expected UNSUBSCRIBE, got {up:?}");
    };
    w.broker(
        s,
        mqtt::Packet::UnsubAck {
            packet_id: *packet_id,
        },
    );
    w.take_to_device(&a);
    w.subscribe(&a, s, "d/#", QoS::AtMostOnce, mqtt::QoS::AtMostOnce, 12);
}

// ---------------------------------------------------------------- limits

#[test]
fn max_devices_all_connected_refuses_with_congestion() {
    let mut w = World::with(Settings {
        max_devices: 2,
        ..settings()
    });
    w.connect(&addr(1), "d1", true, None);
    w.connect(&addr(2), "d2", true, None);
    // Both talk after their CONNACK: neither may be evicted for a newcomer.
    for a in [addr(1), addr(2)] {
        w.device_send(&a, Message::PingReq { client_id: None });
        assert_eq!(w.take_to_device(&a), vec![Message::PingResp]);
    }
    w.device_send(&addr(3), connect_msg("d3", true, false, 60));
    assert_eq!(
        w.take_to_device(&addr(3)),
        vec![connack(ReturnCode::Congestion)]
    );
    assert!(w.opened().is_empty());
    assert_eq!(w.gw.device_count(), 2);
}

#[test]
fn max_devices_evicts_a_disconnected_device() {
    let mut w = World::with(Settings {
        max_devices: 2,
        ..settings()
    });
    let s1 = w.connect(&addr(1), "d1", true, None);
    w.connect(&addr(2), "d2", true, None);
    w.device_send(&addr(1), Message::Disconnect { duration: None });
    w.take_upstream(s1);
    w.closed();
    w.take_to_device(&addr(1));
    w.connect(&addr(3), "d3", true, None);
    assert_eq!(w.gw.device_count(), 2);
    assert_eq!(w.gw.device_state("d1"), None);
    assert_eq!(w.gw.device_state("d3"), Some(DeviceState::Active));
}
