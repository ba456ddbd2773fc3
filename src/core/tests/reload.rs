//! Issue 13 item 4: `Gateway::reconfigure` (SIGHUP) — new predefined topics apply with every
//! device still connected; new admission rules judge every device again: its rule (and so its
//! topic permissions) follows the new list, and a device the rules no longer admit is told
//! DISCONNECT, its session ended gracefully and forgotten; nothing else is disturbed.

use super::*;
use crate::core::rules::{AdmissionRules, DeviceRule};
use crate::core::DeviceState;

fn rule(client_id: &str, publish: Option<Vec<String>>) -> DeviceRule {
    DeviceRule {
        client_id: client_id.to_owned(),
        transports: None,
        address: None,
        node: None,
        publish,
        subscribe: None,
    }
}

#[test]
fn a_new_predefined_topic_applies_with_the_device_still_connected() {
    let mut w = World::new();
    let a = addr(1);
    let s = w.connect(&a, "dev", true, None);
    w.device_send(
        &a,
        publish(QoS::AtMostOnce, TopicRef::Predefined(8), 0, b"x"),
    );
    let down = w.take_to_device(&a);
    let [Message::Puback(p)] = down.as_slice() else {
        panic!("{down:?}")
    };
    assert_eq!(p.return_code, ReturnCode::InvalidTopicId);
    assert!(w.take_upstream(s).is_empty());

    let mut next = w.gw.settings().clone();
    next.predefined_topics.push((8, "plant/boiler".into()));
    let ended = w.gw.reconfigure(w.now, next);
    assert_eq!(ended, 0);
    w.assert_quiet();

    w.device_send(
        &a,
        publish(QoS::AtLeastOnce, TopicRef::Predefined(8), 2, b"y"),
    );
    let up = w.take_upstream(s);
    let [mqtt::Packet::Publish(p)] = up.as_slice() else {
        panic!("{up:?}")
    };
    assert_eq!(p.topic, "plant/boiler");
    assert_eq!(w.gw.device_state("dev"), Some(DeviceState::Active));
}

#[test]
fn new_admission_rules_rejudge_every_device() {
    let mut settings = settings();
    settings.admission = AdmissionRules {
        listed: true,
        devices: vec![
            rule("keep", Some(vec!["keep/#".into()])),
            rule("drop", None),
        ],
    };
    let mut w = World::with(settings);
    let (k, d) = (addr(1), addr(2));
    let ks = w.connect(&k, "keep", true, None);
    let ds = w.connect(&d, "drop", true, None);

    // "drop" leaves the list; "keep" moves to the second entry with other permissions.
    let mut next = w.gw.settings().clone();
    next.admission.devices = vec![
        rule("other", None),
        rule("keep", Some(vec!["moved/#".into()])),
    ];
    let ended = w.gw.reconfigure(w.now, next);
    assert_eq!(ended, 1);
    assert_eq!(
        w.take_to_device(&d),
        vec![Message::Disconnect { duration: None }]
    );
    assert_eq!(w.take_upstream(ds), vec![mqtt::Packet::Disconnect]);
    assert_eq!(w.closed(), vec![ds]);
    assert_eq!(w.gw.device_state("drop"), None, "forgotten");
    assert_eq!(w.gw.stats().devices_refused_on_reload, 1);
    // "keep" was not disturbed: no frame, no packet, same session, still active.
    assert!(w.take_to_device(&k).is_empty());
    assert!(w.take_upstream(ks).is_empty());
    assert_eq!(w.gw.device_state("keep"), Some(DeviceState::Active));
    // Its permissions are the new entry's.
    let id = w.register(&k, "moved/a", 1);
    w.device_send(&k, publish(QoS::AtLeastOnce, TopicRef::Id(id), 2, b"1"));
    assert_eq!(w.take_upstream(ks).len(), 1, "moved/a is allowed now");
    w.device_send(
        &k,
        Message::Register(codec::Register {
            topic_id: 0,
            msg_id: 3,
            topic_name: "keep/a".into(),
        }),
    );
    let down = w.take_to_device(&k);
    let [Message::Regack(r)] = down.as_slice() else {
        panic!("{down:?}")
    };
    assert_eq!(
        r.return_code,
        ReturnCode::NotSupported,
        "keep/ is not any more"
    );
    // A CONNECT of the dropped ClientId is refused now.
    w.device_send(&d, connect_msg("drop", true, false, 60));
    assert_eq!(
        w.take_to_device(&d),
        vec![connack(ReturnCode::NotSupported)]
    );
}
