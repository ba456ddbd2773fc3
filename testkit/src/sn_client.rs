//! A raw MQTT-SN device over a real UDP socket: sends messages (or raw octets) to the gateway
//! and receives, decodes and answers what the gateway sends.
//! Owns: the device side of the MQTT-SN exchanges the tests drive.
//! Never: a wait without a bound ([`WAIT`]); what a test did not get is a panic saying what it expected.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use mqttsn_gateway::codec::{self, Message};
use tokio::net::UdpSocket;
use tokio::time::timeout;

use crate::WAIT;

/// A raw MQTT-SN device over a real UDP socket.
pub struct SnClient {
    pub sock: UdpSocket,
    pub gateway: SocketAddr,
}

impl SnClient {
    pub async fn new(gateway: SocketAddr) -> SnClient {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        SnClient { sock, gateway }
    }

    pub async fn send(&self, m: Message) {
        let bytes = m.to_bytes().unwrap();
        self.sock.send_to(&bytes, self.gateway).await.unwrap();
    }

    pub async fn send_raw(&self, bytes: &[u8]) {
        self.sock.send_to(bytes, self.gateway).await.unwrap();
    }

    /// The next message from the gateway; panics after [`WAIT`].
    pub async fn recv(&self) -> Message {
        self.try_recv(WAIT)
            .await
            .expect("a message from the gateway")
    }

    pub async fn try_recv(&self, wait: Duration) -> Option<Message> {
        let mut buf = vec![0u8; 2048];
        let (n, _) = timeout(wait, self.sock.recv_from(&mut buf))
            .await
            .ok()?
            .unwrap();
        Some(
            codec::decode_message(Bytes::copy_from_slice(&buf[..n]))
                .expect("gateway sends valid frames"),
        )
    }

    /// CONNECT (no will) and expect CONNACK accepted.
    pub async fn connect(&self, client_id: &str, clean: bool, duration: u16) {
        self.send(Message::Connect(codec::Connect {
            will: false,
            clean_session: clean,
            protocol_id: codec::PROTOCOL_ID_V1_2,
            duration,
            client_id: client_id.into(),
        }))
        .await;
        assert_eq!(
            self.recv().await,
            Message::Connack {
                return_code: codec::ReturnCode::Accepted
            }
        );
    }

    /// CONNECT with a will, answering the prompts; expects CONNACK accepted.
    pub async fn connect_with_will(
        &self,
        client_id: &str,
        duration: u16,
        topic: &str,
        msg: &[u8],
        qos: codec::QoS,
        retain: bool,
    ) {
        self.send(Message::Connect(codec::Connect {
            will: true,
            clean_session: true,
            protocol_id: codec::PROTOCOL_ID_V1_2,
            duration,
            client_id: client_id.into(),
        }))
        .await;
        assert_eq!(self.recv().await, Message::WillTopicReq);
        self.send(Message::WillTopic(Some(codec::WillTopic {
            qos,
            retain,
            topic: topic.into(),
        })))
        .await;
        assert_eq!(self.recv().await, Message::WillMsgReq);
        self.send(Message::WillMsg {
            msg: Bytes::copy_from_slice(msg),
        })
        .await;
        assert_eq!(
            self.recv().await,
            Message::Connack {
                return_code: codec::ReturnCode::Accepted
            }
        );
    }

    /// REGISTER `name`; returns the topic id.
    pub async fn register(&self, name: &str, msg_id: u16) -> u16 {
        self.send(Message::Register(codec::Register {
            topic_id: 0,
            msg_id,
            topic_name: name.into(),
        }))
        .await;
        match self.recv().await {
            Message::Regack(r) => {
                assert_eq!(r.msg_id, msg_id);
                assert_eq!(r.return_code, codec::ReturnCode::Accepted);
                r.topic_id
            }
            other => panic!("expected REGACK, got {other:?}"),
        }
    }

    /// SUBSCRIBE and return the SUBACK.
    pub async fn subscribe(
        &self,
        topic: codec::TopicFilter,
        qos: codec::QoS,
        msg_id: u16,
    ) -> codec::Suback {
        self.send(Message::Subscribe(codec::Subscribe {
            dup: false,
            qos,
            msg_id,
            topic,
        }))
        .await;
        match self.recv().await {
            Message::Suback(s) => {
                assert_eq!(s.msg_id, msg_id);
                s
            }
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    /// While awake: acknowledges every REGISTER and PUBLISH (full QoS handshake) until PINGRESP;
    /// returns the PUBLISHes in arrival order with their topic names (`known`: id -> name,
    /// extended by the REGISTERs seen).
    pub async fn drain_until_pingresp(
        &self,
        known: &mut std::collections::HashMap<u16, String>,
    ) -> Vec<(String, codec::Publish)> {
        let mut got = Vec::new();
        loop {
            match self.recv().await {
                Message::PingResp => return got,
                Message::Register(r) => {
                    known.insert(r.topic_id, r.topic_name.clone());
                    self.send(Message::Regack(codec::Regack {
                        topic_id: r.topic_id,
                        msg_id: r.msg_id,
                        return_code: codec::ReturnCode::Accepted,
                    }))
                    .await;
                }
                Message::Publish(p) => {
                    let codec::TopicRef::Id(id) = p.topic else {
                        panic!("unexpected topic {:?}", p.topic)
                    };
                    let name = known
                        .get(&id)
                        .cloned()
                        .expect("PUBLISH before its REGISTER");
                    match p.qos {
                        codec::QoS::AtLeastOnce => {
                            self.send(Message::Puback(codec::Puback {
                                topic_id: id,
                                msg_id: p.msg_id,
                                return_code: codec::ReturnCode::Accepted,
                            }))
                            .await
                        }
                        codec::QoS::ExactlyOnce => {
                            self.send(Message::Pubrec { msg_id: p.msg_id }).await;
                            assert_eq!(self.recv().await, Message::Pubrel { msg_id: p.msg_id });
                            self.send(Message::Pubcomp { msg_id: p.msg_id }).await;
                        }
                        _ => {}
                    }
                    got.push((name, p));
                }
                other => panic!("unexpected while awake: {other:?}"),
            }
        }
    }

    pub async fn publish(
        &self,
        topic: codec::TopicRef,
        qos: codec::QoS,
        retain: bool,
        msg_id: u16,
        data: &[u8],
    ) {
        self.send(Message::Publish(codec::Publish {
            dup: false,
            qos,
            retain,
            topic,
            msg_id,
            data: Bytes::copy_from_slice(data),
        }))
        .await;
    }
}
