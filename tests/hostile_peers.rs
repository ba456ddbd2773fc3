//! Hostile peers end to end, over real UDP sockets and a real broker (both backends): a flood
//! of CONNECTs from many source addresses cannot lock a talking device out, and a device that
//! never answers is not sent unbounded traffic (it is lost, and its will fires). The many
//! source addresses are loopback ones (127.N.N.1: Linux answers the whole 127/8 on `lo`), so
//! nothing leaves the machine.

#[macro_use]
mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use mqttsn_gateway::codec::{self, Message, QoS, ReturnCode, TopicFilter, TopicRef};
use mqttsn_gateway::config::Sessions;
use mqttsn_gateway::mqtt;
use tokio::net::UdpSocket;

on_both_backends_and_modes!(
    a_connect_flood_from_many_addresses_cannot_lock_out_a_talking_device,
    a_device_that_never_answers_is_lost_at_the_silence_bound_and_its_will_fires,
);

/// One CONNECT (Duration 0) from 127.N.N.1 (a /24 of its own) and nothing after: what a
/// spoofer can do.
async fn spoofed_connect(gateway: std::net::SocketAddr, n: u16) -> UdpSocket {
    let ip = std::net::Ipv4Addr::new(127, (n >> 8) as u8 + 1, n as u8, 1);
    let sock = UdpSocket::bind((ip, 0))
        .await
        .expect("bind a loopback address");
    let connect = Message::Connect(codec::Connect {
        will: false,
        clean_session: true,
        protocol_id: codec::PROTOCOL_ID_V1_2,
        duration: 0,
        client_id: format!("spoof-{n}"),
    });
    sock.send_to(&connect.to_bytes().unwrap(), gateway)
        .await
        .unwrap();
    sock
}

async fn a_connect_flood_from_many_addresses_cannot_lock_out_a_talking_device(
    backend: Backend,
    sessions: Sessions,
) {
    let broker = broker_or_skip!(backend);
    let mut config = mode_config(broker.port, sessions);
    config.limits.max_devices = 60;
    let (gw, gw_addr) = start_gateway(&config).await;
    let mut sub = MqttClient::connect(broker.addr(), "watch").await;
    sub.subscribe("real/#", mqtt::QoS::AtLeastOnce).await;

    let mut spoofers = Vec::new();
    for n in 0..60 {
        spoofers.push(spoofed_connect(gw_addr, n).await);
    }
    // Let the table fill.
    let deadline = tokio::time::Instant::now() + WAIT;
    while gw.stats().devices_active < 60 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let dev = SnClient::new(gw_addr).await;
    dev.connect("real", true, 60).await;
    let tid = dev.register("real/t", 1).await;
    // A second wave while the real device is connected.
    for n in 60..180 {
        spoofers.push(spoofed_connect(gw_addr, n).await);
    }
    dev.publish(TopicRef::Id(tid), QoS::AtLeastOnce, false, 2, b"still here")
        .await;
    assert_eq!(
        dev.recv().await,
        Message::Puback(codec::Puback {
            topic_id: tid,
            msg_id: 2,
            return_code: ReturnCode::Accepted
        })
    );
    let p = sub.next_publish(WAIT).await.expect("delivered");
    assert_eq!(&p.payload[..], b"still here");
    let stats = gw.stats();
    assert!(stats.devices_evicted >= 120, "{stats:?}");
    gw.shutdown().await;
}

async fn a_device_that_never_answers_is_lost_at_the_silence_bound_and_its_will_fires(
    backend: Backend,
    sessions: Sessions,
) {
    let broker = broker_or_skip!(backend);
    let mut config = mode_config(broker.port, sessions);
    config.limits.max_silent_downlink_bytes = 4096;
    let (gw, gw_addr) = start_gateway(&config).await;
    let mut watch = MqttClient::connect(broker.addr(), "watch").await;
    watch.subscribe("will/#", mqtt::QoS::AtLeastOnce).await;

    let victim = SnClient::new(gw_addr).await;
    victim
        .connect_with_will("victim", 0, "will/victim", b"gone", QoS::AtLeastOnce, false)
        .await;
    let sub = victim
        .subscribe(TopicFilter::Name("feed/x".into()), QoS::AtMostOnce, 1)
        .await;
    assert_eq!(sub.return_code, ReturnCode::Accepted);

    let mut publisher = MqttClient::connect(broker.addr(), "feeder").await;
    for _ in 0..300 {
        publisher
            .publish("feed/x", &[0x55; 100], mqtt::QoS::AtMostOnce, false)
            .await;
    }
    let will = watch.next_publish(WAIT).await.expect("the will fires");
    assert_eq!(
        (will.topic.as_str(), will.payload),
        ("will/victim", Bytes::from_static(b"gone"))
    );
    // Everything the victim's address was sent after its SUBACK.
    let mut received = 0;
    let mut buf = vec![0u8; 2048];
    while let Ok(Ok((n, _))) =
        tokio::time::timeout(Duration::from_millis(300), victim.sock.recv_from(&mut buf)).await
    {
        received += n;
    }
    assert!(
        received <= 4096 + 200,
        "{received} octets to a silent device"
    );
    assert!(
        received >= 2048,
        "the feed did flow until the bound: {received}"
    );
    assert_eq!(gw.stats().devices_silent_lost, 1);
    gw.shutdown().await;
}
