//! Gateway discovery (spec §5.4.2-3, §5.5, §6.1): ADVERTISE at start and every interval, SEARCHGW
//! answered with GWINFO and the radius it came with, also through a forwarder's Ctrl octet and on
//! a group.

use bytes::Bytes;

use super::*;
use crate::core::GroupId;

/// A frame as a forwarder sends it for `node`, with the given Ctrl octet.
fn via_forwarder(ctrl: u8, node: &Bytes, message: Message) -> Frame {
    Frame {
        encapsulation: Some(codec::Encapsulation {
            ctrl,
            wireless_node_id: node.clone(),
        }),
        message,
    }
}

#[test]
fn searchgw_through_a_forwarder_gets_gwinfo_with_its_radius_in_the_ctrl_octet() {
    let mut w = World::with(Settings {
        gateway_id: 9,
        ..settings()
    });
    let fwd = addr(5);
    let node = Bytes::from_static(&[0x12, 0x34]);
    let to = DeviceAddr {
        wireless_node_id: Some(node.clone()),
        ..fwd.clone()
    };
    let gwinfo = Message::GwInfo {
        gw_id: 9,
        gw_add: None,
    };
    // (radius in SEARCHGW, Ctrl the forwarder sent, Ctrl expected back). Ctrl has two bits of
    // radius: a wider radius than 3 becomes 0 ("whole network") so the searcher still hears
    // it. Reserved bits the forwarder set are not echoed.
    for (radius, ctrl_in, ctrl_out) in [(1, 0, 1), (2, 0, 2), (3, 0xFC, 3), (0, 0, 0), (5, 1, 0)] {
        w.device_send_frame(
            &fwd,
            via_forwarder(ctrl_in, &node, Message::SearchGw { radius }),
        );
        assert_eq!(
            w.take_frames_to(&to),
            vec![via_forwarder(ctrl_out, &node, gwinfo.clone())],
            "SEARCHGW radius {radius}"
        );
    }
    // Other replies through the forwarder still carry Ctrl 0.
    w.device_send_frame(
        &fwd,
        via_forwarder(2, &node, Message::PingReq { client_id: None }),
    );
    assert_eq!(
        w.take_frames_to(&to),
        vec![via_forwarder(
            0,
            &node,
            Message::Disconnect { duration: None }
        )]
    );
    w.assert_quiet();
    assert_eq!(w.gw.device_count(), 0);
}

impl World {
    /// `msg` from `from`, heard on multicast group `group`.
    fn group_send(&mut self, group: GroupId, from: &DeviceAddr, msg: Message) {
        let frame = msg.to_bytes().expect("test message encodes");
        self.gw
            .handle_group_frame(self.now, group, from.clone(), frame);
    }

    /// Frames sent to multicast groups, decoded, removed from the pending outputs.
    fn multicasts(&mut self) -> Vec<(GroupId, u8, Message)> {
        let mut taken = Vec::new();
        for o in self.take_all() {
            match o {
                Output::Multicast {
                    group,
                    radius,
                    frame,
                } => taken.push((
                    group,
                    radius,
                    codec::decode_message(frame).expect("multicast decodes"),
                )),
                o => self.out.push(o),
            }
        }
        taken
    }
}

#[test]
fn searchgw_heard_on_a_group_is_answered_to_that_group_with_its_radius() {
    let mut w = World::with(Settings {
        gateway_id: 4,
        ..settings()
    });
    let gwinfo = Message::GwInfo {
        gw_id: 4,
        gw_add: None,
    };
    let device = addr(8);
    w.group_send(GroupId(1), &device, Message::SearchGw { radius: 3 });
    assert_eq!(w.multicasts(), vec![(GroupId(1), 3, gwinfo.clone())]);
    w.group_send(GroupId(0), &device, Message::SearchGw { radius: 0 });
    assert_eq!(w.multicasts(), vec![(GroupId(0), 0, gwinfo.clone())]);
    // Nothing went to the device's own address.
    assert!(w.take_frames_to(&device).is_empty());
    // The same device asking the gateway's address directly is answered directly.
    w.device_send(&device, Message::SearchGw { radius: 3 });
    assert_eq!(w.take_to_device(&device), vec![gwinfo]);
    assert!(w.multicasts().is_empty());
    w.assert_quiet();
    assert_eq!(w.gw.device_count(), 0);
}

#[test]
fn only_searchgw_is_served_on_a_group() {
    let mut w = World::new();
    let device = addr(8);
    // Our own GWINFO and ADVERTISE looped back, and another gateway's: ignored, not counted.
    w.group_send(
        GroupId(0),
        &device,
        Message::GwInfo {
            gw_id: 1,
            gw_add: None,
        },
    );
    w.group_send(
        GroupId(0),
        &device,
        Message::Advertise {
            gw_id: 1,
            duration: 900,
        },
    );
    assert_eq!(w.gw.stats().wrong_state, 0);
    // A device talking to the group instead of the gateway: no session, no DISCONNECT.
    w.group_send(GroupId(0), &device, connect_msg("d1", true, false, 60));
    w.group_send(GroupId(0), &device, Message::PingReq { client_id: None });
    w.group_send(
        GroupId(0),
        &device,
        publish(QoS::MinusOne, TopicRef::Predefined(7), 0, b"x"),
    );
    assert_eq!(w.gw.stats().wrong_state, 3);
    // A forwarder's frame on a group, malformed and oversized frames: dropped and counted.
    let enc = Frame {
        encapsulation: Some(codec::Encapsulation {
            ctrl: 0,
            wireless_node_id: Bytes::from_static(&[1]),
        }),
        message: Message::SearchGw { radius: 1 },
    };
    w.gw.handle_group_frame(w.now, GroupId(0), device.clone(), enc.to_bytes().unwrap());
    assert_eq!(w.gw.stats().wrong_state, 4);
    w.gw.handle_group_frame(
        w.now,
        GroupId(0),
        device.clone(),
        Bytes::from_static(&[3, 1]),
    );
    assert_eq!(w.gw.stats().malformed, 1);
    let big = Bytes::from(vec![0u8; w.gw.settings().max_frame_size + 1]);
    w.gw.handle_group_frame(w.now, GroupId(0), device.clone(), big);
    assert_eq!(w.gw.stats().oversized, 1);
    assert_eq!(w.gw.stats().frames_in, 8);
    w.assert_quiet();
    assert_eq!(w.gw.device_count(), 0);
    assert!(w.opened().is_empty());
}

// ---------------------------------------------------------------- discovery

#[test]
fn searchgw_gets_gwinfo_with_the_gateway_id() {
    let mut w = World::with(Settings {
        gateway_id: 42,
        ..settings()
    });
    let a = addr(9);
    w.device_send(&a, Message::SearchGw { radius: 0 });
    assert_eq!(
        w.take_to_device(&a),
        vec![Message::GwInfo {
            gw_id: 42,
            gw_add: None
        }]
    );
    assert_eq!(w.gw.device_count(), 0);
}

#[test]
fn advertise_is_broadcast_at_start_and_every_interval() {
    let mut w = World::with(Settings {
        gateway_id: 3,
        advertise_interval: Some(Duration::from_secs(900)),
        ..settings()
    });
    let adv = Message::Advertise {
        gw_id: 3,
        duration: 900,
    };
    assert_eq!(w.gw.poll_timeout(), Some(w.now));
    w.advance(Duration::ZERO);
    assert_eq!(w.broadcasts(), vec![adv.clone()]);
    w.advance(Duration::from_secs(899));
    assert!(w.broadcasts().is_empty());
    w.advance(Duration::from_secs(1));
    assert_eq!(w.broadcasts(), vec![adv.clone()]);
    w.advance(Duration::from_secs(1800));
    assert_eq!(w.broadcasts(), vec![adv.clone(), adv]);
}

#[test]
fn no_advertise_without_an_interval() {
    let mut w = World::new();
    assert_eq!(w.gw.poll_timeout(), None);
    w.advance(Duration::from_secs(3600));
    w.assert_quiet();
}
