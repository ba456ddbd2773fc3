//! Serial transports end to end, no hardware: the gateway opens one end of a socat
//! pseudo-terminal pair, a simulated device (raw, SLIP) or local XBee radio sits on the other,
//! and device sessions go through a real mosquitto.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use mqttsn_gateway::codec::{self, Encapsulation, Message, QoS, ReturnCode, TopicFilter, TopicRef};
use mqttsn_gateway::config::SerialFraming;
use mqttsn_gateway::mqtt;
use mqttsn_gateway::shell::{self, ShellError};
use mqttsn_gateway::transport::serial::{xbee, Framing};

macro_rules! or_skip {
    ($e:expr) => {
        match $e {
            Some(v) => v,
            None => return,
        }
    };
}

/// A point-to-point line has no address; this is what raw and SLIP devices "send from".
const P2P: ([u8; 8], u16) = ([0; 8], 0);
const RADIO_A: ([u8; 8], u16) = ([0x00, 0x13, 0xa2, 0x00, 0x41, 0x52, 0x7e, 0x11], 0x7d33);
const RADIO_B: ([u8; 8], u16) = ([0x00, 0x13, 0xa2, 0x00, 0x40, 0x0a, 0x01, 0x27], 0x1234);

fn connect_msg(client_id: &str) -> Message {
    Message::Connect(codec::Connect {
        will: false,
        clean_session: true,
        protocol_id: codec::PROTOCOL_ID_V1_2,
        duration: 60,
        client_id: client_id.into(),
    })
}

fn connack() -> Message {
    Message::Connack {
        return_code: ReturnCode::Accepted,
    }
}

/// REGISTER `name` from `from`; returns the TopicId.
async fn register(line: &mut SerialLine, from: ([u8; 8], u16), name: &str, msg_id: u16) -> u16 {
    line.send(
        from,
        Message::Register(codec::Register {
            topic_id: 0,
            msg_id,
            topic_name: name.into(),
        }),
    )
    .await;
    match line.recv().await {
        (_, Message::Regack(r)) if r.return_code == ReturnCode::Accepted => r.topic_id,
        other => panic!("expected REGACK, got {other:?}"),
    }
}

fn publish(topic_id: u16, qos: QoS, msg_id: u16, data: &'static [u8]) -> Message {
    Message::Publish(codec::Publish {
        dup: false,
        qos,
        retain: false,
        topic: TopicRef::Id(topic_id),
        msg_id,
        data: Bytes::from_static(data),
    })
}

/// Connect, QoS 1 up, subscription delivery down, through the real broker.
async fn device_round_trip(config_framing: SerialFraming, framing: Framing, tag: &str) {
    let broker = or_skip!(Mosquitto::start());
    let socat = or_skip!(Socat::start());
    let mut config = serial_config(broker.port, &socat.gateway_end, config_framing);
    if let Framing::Xbee { api_mode } = framing {
        config.transports.serial[0].xbee_api_mode = match api_mode {
            xbee::ApiMode::Unescaped => 1,
            xbee::ApiMode::Escaped => 2,
        };
    }
    let gw = shell::start(&config).await.expect("gateway starts");
    assert!(gw.udp_addrs.is_empty());
    let mut line = SerialLine::open(&socat.device_end, framing);
    let from = if matches!(framing, Framing::Xbee { .. }) {
        RADIO_A
    } else {
        P2P
    };
    let mut sub = MqttClient::connect(broker.addr(), &format!("sub-{tag}")).await;
    sub.subscribe(&format!("{tag}/up"), mqtt::QoS::AtLeastOnce)
        .await;

    line.send(from, connect_msg(&format!("dev-{tag}"))).await;
    let (dest, msg) = line.recv().await;
    assert_eq!(msg, connack());
    if matches!(framing, Framing::Xbee { .. }) {
        assert_eq!(
            dest,
            Some(from),
            "reply goes to the sender's 64- and 16-bit address"
        );
    }

    // Up: QoS 1, PUBACK to the device, delivered to the MQTT subscriber.
    let tid = register(&mut line, from, &format!("{tag}/up"), 1).await;
    line.send(
        from,
        publish(tid, QoS::AtLeastOnce, 0x0102, b"\x7e\x7d\x11\x13\xc0\xdb"),
    )
    .await;
    match line.recv().await.1 {
        Message::Puback(p) => {
            assert_eq!((p.msg_id, p.return_code), (0x0102, ReturnCode::Accepted))
        }
        other => panic!("expected PUBACK, got {other:?}"),
    }
    let p = sub.next_publish(WAIT).await.expect("uplink delivered");
    assert_eq!(&p.payload[..], b"\x7e\x7d\x11\x13\xc0\xdb");

    // Down: a subscription delivery.
    line.send(
        from,
        Message::Subscribe(codec::Subscribe {
            dup: false,
            qos: QoS::AtLeastOnce,
            msg_id: 2,
            topic: TopicFilter::Name(format!("{tag}/down")),
        }),
    )
    .await;
    let down_id = match line.recv().await.1 {
        Message::Suback(s) => s.topic_id,
        other => panic!("expected SUBACK, got {other:?}"),
    };
    sub.publish(
        &format!("{tag}/down"),
        b"hello device",
        mqtt::QoS::AtLeastOnce,
        false,
    )
    .await;
    match line.recv().await.1 {
        Message::Publish(p) => {
            assert_eq!(p.topic, TopicRef::Id(down_id));
            assert_eq!(&p.data[..], b"hello device");
            assert_eq!(p.qos, QoS::AtLeastOnce);
            line.send(
                from,
                Message::Puback(codec::Puback {
                    topic_id: down_id,
                    msg_id: p.msg_id,
                    return_code: ReturnCode::Accepted,
                }),
            )
            .await;
        }
        other => panic!("expected PUBLISH, got {other:?}"),
    }
    assert_eq!(gw.stats().devices_active, 1);
    gw.shutdown().await;
}

#[tokio::test]
async fn raw_device_publishes_qos1_and_receives_a_subscription_delivery() {
    device_round_trip(SerialFraming::Raw, Framing::Raw, "raw").await;
}

#[tokio::test]
async fn slip_device_publishes_qos1_and_receives_a_subscription_delivery() {
    device_round_trip(SerialFraming::Slip, Framing::Slip, "slip").await;
}

#[tokio::test]
async fn xbee_mode1_device_publishes_qos1_and_receives_a_subscription_delivery() {
    let framing = Framing::Xbee {
        api_mode: xbee::ApiMode::Unescaped,
    };
    device_round_trip(SerialFraming::Xbee, framing, "xbee1").await;
}

#[tokio::test]
async fn xbee_mode2_escaped_device_publishes_qos1_and_receives_a_subscription_delivery() {
    let framing = Framing::Xbee {
        api_mode: xbee::ApiMode::Escaped,
    };
    device_round_trip(SerialFraming::Xbee, framing, "xbee2").await;
}

#[tokio::test]
async fn xbee_two_remote_radios_are_two_devices_with_separate_sessions() {
    let broker = or_skip!(Mosquitto::start());
    let socat = or_skip!(Socat::start());
    let config = serial_config(broker.port, &socat.gateway_end, SerialFraming::Xbee);
    let gw = shell::start(&config).await.expect("gateway starts");
    let framing = Framing::Xbee {
        api_mode: xbee::ApiMode::Unescaped,
    };
    let mut line = SerialLine::open(&socat.device_end, framing);
    let mut sub = MqttClient::connect(broker.addr(), "sub-two").await;
    sub.subscribe("two/#", mqtt::QoS::AtLeastOnce).await;

    for (radio, id) in [(RADIO_A, "radio-a"), (RADIO_B, "radio-b")] {
        line.send(radio, connect_msg(id)).await;
        assert_eq!(line.recv().await, (Some(radio), connack()));
    }
    // Each has its own topic table: both get the first TopicId for different names.
    let ta = register(&mut line, RADIO_A, "two/a", 1).await;
    let tb = register(&mut line, RADIO_B, "two/b", 1).await;
    assert_eq!(ta, tb);
    line.send(RADIO_A, publish(ta, QoS::AtLeastOnce, 10, b"from a"))
        .await;
    assert!(matches!(line.recv().await, (Some(d), Message::Puback(_)) if d == RADIO_A));
    line.send(RADIO_B, publish(tb, QoS::AtLeastOnce, 10, b"from b"))
        .await;
    assert!(matches!(line.recv().await, (Some(d), Message::Puback(_)) if d == RADIO_B));
    let mut got = Vec::new();
    for _ in 0..2 {
        let p = sub.next_publish(WAIT).await.expect("delivered");
        got.push((p.topic, p.payload.to_vec()));
    }
    got.sort();
    assert_eq!(
        got,
        vec![
            ("two/a".to_string(), b"from a".to_vec()),
            ("two/b".to_string(), b"from b".to_vec())
        ]
    );
    assert_eq!(gw.stats().devices_active, 2);
    // A disconnecting does not touch B's session.
    line.send(RADIO_A, Message::Disconnect { duration: None })
        .await;
    assert_eq!(
        line.recv().await,
        (Some(RADIO_A), Message::Disconnect { duration: None })
    );
    line.send(RADIO_B, Message::PingReq { client_id: None })
        .await;
    assert_eq!(line.recv().await, (Some(RADIO_B), Message::PingResp));
    gw.shutdown().await;
}

#[tokio::test]
async fn xbee_bad_checksum_is_skipped_and_the_next_frame_accepted() {
    let broker = or_skip!(Mosquitto::start());
    let socat = or_skip!(Socat::start());
    let mut config = serial_config(broker.port, &socat.gateway_end, SerialFraming::Xbee);
    config.transports.serial[0].xbee_api_mode = 2;
    let gw = shell::start(&config).await.expect("gateway starts");
    let mode = xbee::ApiMode::Escaped;
    let mut line = SerialLine::open(&socat.device_end, Framing::Xbee { api_mode: mode });

    let mut bad = bytes::BytesMut::new();
    let connect_a = connect_msg("bad-sum").to_bytes().unwrap();
    xbee::encode_receive_packet(mode, RADIO_A.0, RADIO_A.1, &connect_a, &mut bad);
    let last = bad.len() - 1;
    bad[last] = bad[last].wrapping_add(1);
    if matches!(bad[last], 0x7e | 0x7d | 0x11 | 0x13) {
        bad[last] = bad[last].wrapping_add(1);
    }
    line.send_bytes(&bad).await;
    line.send(RADIO_B, connect_msg("good-sum")).await;
    assert_eq!(line.recv().await, (Some(RADIO_B), connack()));
    assert!(
        line.try_recv_frame(Duration::from_millis(300))
            .await
            .is_none(),
        "the frame with the bad checksum got an answer"
    );
    assert_eq!(gw.stats().devices_active, 1);
    gw.shutdown().await;
}

#[tokio::test]
async fn raw_framing_recovers_after_garbage_and_a_truncated_frame() {
    let broker = or_skip!(Mosquitto::start());
    let socat = or_skip!(Socat::start());
    let config = serial_config(broker.port, &socat.gateway_end, SerialFraming::Raw);
    let gw = shell::start(&config).await.expect("gateway starts");
    let mut line = SerialLine::open(&socat.device_end, Framing::Raw);

    // Line noise, then a PUBLISH that promises 200 octets and stops after 6.
    line.send_bytes(&[0x00, 0xff, 0x03, 0x00, 0x00]).await;
    line.send_bytes(&[0xc8, 0x0c, 0x20, 0x00, 0x01, 0x00]).await;
    // Like a real device: CONNECT, and again when no CONNACK comes. The first attempt is
    // swallowed by the stalled frame, which the gateway drops after frame_timeout of quiet.
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut attempts = 0;
    loop {
        assert!(tokio::time::Instant::now() < deadline, "never connected");
        attempts += 1;
        line.send(P2P, connect_msg("dev-resync")).await;
        if let Some(f) = line.try_recv_frame(Duration::from_millis(400)).await {
            assert_eq!(codec::decode_message(f.frame).unwrap(), connack());
            break;
        }
    }
    assert!(
        attempts >= 2,
        "the truncated frame should have swallowed the first CONNECT"
    );
    // And the line is in step afterwards.
    let tid = register(&mut line, P2P, "resync/t", 1).await;
    line.send(P2P, publish(tid, QoS::AtLeastOnce, 5, b"ok"))
        .await;
    assert!(matches!(line.recv().await.1, Message::Puback(_)));
    gw.shutdown().await;
}

#[tokio::test]
async fn forwarder_encapsulated_device_over_serial_is_served_and_replies_encapsulated() {
    let broker = or_skip!(Mosquitto::start());
    let socat = or_skip!(Socat::start());
    let config = serial_config(broker.port, &socat.gateway_end, SerialFraming::Raw);
    let gw = shell::start(&config).await.expect("gateway starts");
    let mut line = SerialLine::open(&socat.device_end, Framing::Raw);
    let mut sub = MqttClient::connect(broker.addr(), "sub-fwd").await;
    sub.subscribe("fwd/#", mqtt::QoS::AtLeastOnce).await;

    let wrap = |node: &'static [u8], message: Message| codec::Frame {
        encapsulation: Some(Encapsulation {
            ctrl: 0,
            wireless_node_id: Bytes::from_static(node),
        }),
        message,
    };
    let recv_wrapped = |f: LineFrame| {
        let frame = codec::decode(f.frame).expect("valid frame");
        let enc = frame.encapsulation.expect("reply is encapsulated");
        (enc.wireless_node_id, frame.message)
    };
    for (node, id) in [(&b"\xab\xcd"[..], "fwd-1"), (&b"\x01"[..], "fwd-2")] {
        line.send(P2P, wrap(node, connect_msg(id))).await;
        let f = line.try_recv_frame(WAIT).await.expect("CONNACK");
        assert_eq!(recv_wrapped(f), (Bytes::from_static(node), connack()));
    }
    line.send(
        P2P,
        wrap(
            b"\xab\xcd",
            Message::Register(codec::Register {
                topic_id: 0,
                msg_id: 1,
                topic_name: "fwd/t".into(),
            }),
        ),
    )
    .await;
    let (node, msg) = recv_wrapped(line.try_recv_frame(WAIT).await.expect("REGACK"));
    assert_eq!(&node[..], b"\xab\xcd");
    let Message::Regack(r) = msg else {
        panic!("expected REGACK, got {msg:?}")
    };
    line.send(
        P2P,
        wrap(
            b"\xab\xcd",
            publish(r.topic_id, QoS::AtLeastOnce, 3, b"via forwarder"),
        ),
    )
    .await;
    let (node, msg) = recv_wrapped(line.try_recv_frame(WAIT).await.expect("PUBACK"));
    assert_eq!(&node[..], b"\xab\xcd");
    assert!(matches!(msg, Message::Puback(_)), "{msg:?}");
    let p = sub.next_publish(WAIT).await.expect("delivered");
    assert_eq!(
        (p.topic.as_str(), &p.payload[..]),
        ("fwd/t", &b"via forwarder"[..])
    );
    assert_eq!(gw.stats().devices_active, 2);
    gw.shutdown().await;
}

/// Publishes QoS 1 until a PUBACK comes (the device's own retry), within `wait`.
async fn publish_until_acked(line: &mut SerialLine, tid: u16, msg_id: u16, wait: Duration) {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no PUBACK after the port came back"
        );
        line.send(P2P, publish(tid, QoS::AtLeastOnce, msg_id, b"after replug"))
            .await;
        if let Some(f) = line.try_recv_frame(Duration::from_millis(300)).await {
            match codec::decode_message(f.frame).unwrap() {
                Message::Puback(p) if p.msg_id == msg_id => return,
                other => panic!("expected PUBACK, got {other:?}"),
            }
        }
    }
}

#[tokio::test]
async fn unplugged_port_is_reopened_and_the_device_carries_on() {
    let broker = or_skip!(Mosquitto::start());
    let mut socat = or_skip!(Socat::start());
    let config = serial_config(broker.port, &socat.gateway_end, SerialFraming::Slip);
    let gw = shell::start(&config).await.expect("gateway starts");
    let mut sub = MqttClient::connect(broker.addr(), "sub-replug").await;
    sub.subscribe("replug/t", mqtt::QoS::AtLeastOnce).await;
    let mut line = SerialLine::open(&socat.device_end, Framing::Slip);
    line.send(P2P, connect_msg("dev-replug")).await;
    assert_eq!(line.recv().await.1, connack());
    let tid = register(&mut line, P2P, "replug/t", 1).await;

    drop(line);
    socat.unplug();
    socat.replug();
    let mut line = SerialLine::open(&socat.device_end, Framing::Slip);
    // Back-off starts at 1 s; allow a few rounds.
    publish_until_acked(&mut line, tid, 9, Duration::from_secs(10)).await;
    let p = sub
        .next_publish(WAIT)
        .await
        .expect("delivered after replug");
    assert_eq!(&p.payload[..], b"after replug");
    assert_eq!(gw.stats().devices_active, 1, "same session, no new CONNECT");
    gw.shutdown().await;
}

#[tokio::test]
async fn missing_port_is_an_error_naming_the_path_unless_not_required() {
    let broker = or_skip!(Mosquitto::start());
    let mut socat = or_skip!(Socat::start());
    socat.unplug();
    let mut config = serial_config(broker.port, &socat.gateway_end, SerialFraming::Raw);
    match shell::start(&config).await {
        Err(e @ ShellError::OpenSerial { .. }) => {
            let text = e.to_string();
            assert!(
                text.contains(&socat.gateway_end.display().to_string()),
                "{text}"
            );
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("a required port that is missing must stop the start"),
    }

    config.transports.serial[0].required = false;
    let gw = shell::start(&config)
        .await
        .expect("starts without the port");
    socat.replug();
    let mut line = SerialLine::open(&socat.device_end, Framing::Raw);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        assert!(tokio::time::Instant::now() < deadline, "port never opened");
        line.send(P2P, connect_msg("dev-late")).await;
        if let Some(f) = line.try_recv_frame(Duration::from_millis(300)).await {
            assert_eq!(codec::decode_message(f.frame).unwrap(), connack());
            break;
        }
    }
    gw.shutdown().await;
}
