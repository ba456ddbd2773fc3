//! A small MQTT 3.1.1 client over TCP (the peer of the gateway on the broker side).
//! Owns: CONNECT, SUBSCRIBE, PUBLISH and receiving, with the gateway's own MQTT codec.
//! Never: a wait without a bound ([`WAIT`]).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use mqttsn_gateway::mqtt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::WAIT;

/// A plain MQTT 3.1.1 client over TCP, using the crate's own packet codec.
pub struct MqttClient {
    stream: TcpStream,
    buf: BytesMut,
    next_id: u16,
}

impl MqttClient {
    pub async fn connect(broker: SocketAddr, client_id: &str) -> MqttClient {
        Self::connect_with(broker, client_id, true, None).await
    }

    /// A client whose session (subscriptions, queued QoS 1/2) the broker keeps.
    pub async fn connect_persistent(broker: SocketAddr, client_id: &str) -> MqttClient {
        Self::connect_with(broker, client_id, false, None).await
    }

    /// CONNECT with the given clean-session flag and optional (username, password); expects
    /// it accepted.
    pub async fn connect_with(
        broker: SocketAddr,
        client_id: &str,
        clean_session: bool,
        login: Option<(&str, &str)>,
    ) -> MqttClient {
        let (c, code) = Self::try_connect(broker, client_id, clean_session, login).await;
        assert_eq!(code, mqtt::ConnectReturnCode::Accepted);
        c
    }

    /// CONNECT and return the CONNACK's return code.
    pub async fn try_connect(
        broker: SocketAddr,
        client_id: &str,
        clean_session: bool,
        login: Option<(&str, &str)>,
    ) -> (MqttClient, mqtt::ConnectReturnCode) {
        let stream = TcpStream::connect(broker).await.unwrap();
        let mut c = MqttClient {
            stream,
            buf: BytesMut::new(),
            next_id: 0,
        };
        c.send(mqtt::Packet::Connect(Box::new(mqtt::Connect {
            client_id: client_id.into(),
            clean_session,
            keep_alive: 60,
            will: None,
            username: login.map(|(u, _)| u.into()),
            password: login.map(|(_, p)| Bytes::copy_from_slice(p.as_bytes())),
        })))
        .await;
        match c.recv().await {
            mqtt::Packet::ConnAck { code, .. } => (c, code),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    pub async fn send(&mut self, p: mqtt::Packet) {
        let bytes = p.to_bytes().unwrap();
        self.stream.write_all(&bytes).await.unwrap();
    }

    /// The next packet; panics after [`WAIT`].
    pub async fn recv(&mut self) -> mqtt::Packet {
        self.try_recv(WAIT).await.expect("a packet from the broker")
    }

    pub async fn try_recv(&mut self, wait: Duration) -> Option<mqtt::Packet> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(p) = mqtt::decode(&mut self.buf, 1 << 20).unwrap() {
                return Some(p);
            }
            let n = tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf))
                .await
                .ok()?
                .unwrap();
            assert!(n > 0, "broker closed the connection");
        }
    }

    fn id(&mut self) -> u16 {
        self.next_id = self.next_id.wrapping_add(1).max(1);
        self.next_id
    }

    pub async fn subscribe(&mut self, filter: &str, qos: mqtt::QoS) {
        let packet_id = self.id();
        self.send(mqtt::Packet::Subscribe {
            packet_id,
            filters: vec![(filter.into(), qos)],
        })
        .await;
        loop {
            match self.recv().await {
                mqtt::Packet::SubAck { packet_id: id, .. } if id == packet_id => return,
                _ => continue,
            }
        }
    }

    /// Publishes and completes the QoS handshake.
    pub async fn publish(&mut self, topic: &str, payload: &[u8], qos: mqtt::QoS, retain: bool) {
        let packet_id = (qos != mqtt::QoS::AtMostOnce).then(|| self.id());
        self.send(mqtt::Packet::Publish(mqtt::Publish {
            dup: false,
            qos,
            retain,
            topic: topic.into(),
            packet_id,
            payload: Bytes::copy_from_slice(payload),
        }))
        .await;
        match qos {
            mqtt::QoS::AtMostOnce => {}
            mqtt::QoS::AtLeastOnce => loop {
                if let mqtt::Packet::PubAck { .. } = self.recv().await {
                    break;
                }
            },
            mqtt::QoS::ExactlyOnce => {
                loop {
                    if let mqtt::Packet::PubRec { packet_id } = self.recv().await {
                        self.send(mqtt::Packet::PubRel { packet_id }).await;
                        break;
                    }
                }
                loop {
                    if let mqtt::Packet::PubComp { .. } = self.recv().await {
                        break;
                    }
                }
            }
        }
    }

    /// The next PUBLISH whose topic is not under `prefix` (a `#` watcher also sees the
    /// gateway's own `mqttsn/` status topics); the others are acknowledged and skipped.
    pub async fn next_publish_outside(
        &mut self,
        prefix: &str,
        wait: Duration,
    ) -> Option<mqtt::Publish> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let p = self.next_publish(left).await?;
            if !p.topic.starts_with(prefix) {
                return Some(p);
            }
        }
    }

    /// The next PUBLISH delivered to this client (acknowledged as its QoS requires).
    pub async fn next_publish(&mut self, wait: Duration) -> Option<mqtt::Publish> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.try_recv(left).await? {
                mqtt::Packet::Publish(p) => {
                    match (p.qos, p.packet_id) {
                        (mqtt::QoS::AtLeastOnce, Some(packet_id)) => {
                            self.send(mqtt::Packet::PubAck { packet_id }).await
                        }
                        (mqtt::QoS::ExactlyOnce, Some(packet_id)) => {
                            self.send(mqtt::Packet::PubRec { packet_id }).await
                        }
                        _ => {}
                    }
                    return Some(p);
                }
                mqtt::Packet::PubRel { packet_id } => {
                    self.send(mqtt::Packet::PubComp { packet_id }).await
                }
                _ => {}
            }
        }
    }
}
