//! Scenario tests for the sans-IO core, in the style of quinn-proto's tests: a `World` holds
//! the gateway and a simulated clock; devices and the broker are played by the test through
//! helpers that encode what they send and decode what the gateway emits. No sockets, no sleeps.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{DeviceAddr, Gateway, Output, SessionId, Settings, TransportId};
use crate::codec::{self, Frame, Message, QoS, ReturnCode, TopicRef, WillTopic};
use crate::mqtt;

mod aggregate;
mod aggregate_store;
mod connect;
mod discovery;
mod downlink;
mod lifecycle;
mod limits;
mod outage;
mod policy;
mod record;
mod reload;
mod session_switch;
mod sleep;
mod status;
mod subscriptions;
mod timers;
mod topics;
mod uplink;

pub(super) struct World {
    pub gw: Gateway,
    pub now: Instant,
    pub out: Vec<Output>,
    /// What the store has made durable (persistence tests).
    pub store: std::collections::BTreeMap<(crate::core::Table, Vec<u8>), Vec<u8>>,
    /// Batches emitted but not yet confirmed by the (simulated) store.
    pub unconfirmed: Vec<(u64, Vec<crate::core::PersistOp>)>,
    /// The simulated broker's memory: ClientIds whose persistent session it keeps (so its
    /// CONNACK says Session Present 1 when one of them connects with clean session 0 again).
    pub broker_sessions: std::collections::HashSet<String>,
    /// (ClientId, clean session) of every session the gateway opened.
    pub session_clients: std::collections::HashMap<SessionId, (String, bool)>,
}

pub(super) fn addr(n: u8) -> DeviceAddr {
    let a: SocketAddr = format!("10.0.0.{n}:1000").parse().unwrap();
    DeviceAddr::udp(TransportId(0), a)
}

pub(super) fn connect_msg(client_id: &str, clean: bool, will: bool, duration: u16) -> Message {
    Message::Connect(codec::Connect {
        will,
        clean_session: clean,
        protocol_id: codec::PROTOCOL_ID_V1_2,
        duration,
        client_id: client_id.to_owned(),
    })
}

pub(super) fn publish(qos: QoS, topic: TopicRef, msg_id: u16, data: &'static [u8]) -> Message {
    Message::Publish(codec::Publish {
        dup: false,
        qos,
        retain: false,
        topic,
        msg_id,
        data: Bytes::from_static(data),
    })
}

pub(super) fn sn_publish(
    dup: bool,
    qos: QoS,
    retain: bool,
    topic: TopicRef,
    msg_id: u16,
    data: &'static [u8],
) -> Message {
    Message::Publish(codec::Publish {
        dup,
        qos,
        retain,
        topic,
        msg_id,
        data: Bytes::from_static(data),
    })
}

pub(super) fn mqtt_publish(
    qos: mqtt::QoS,
    retain: bool,
    topic: &str,
    packet_id: Option<u16>,
    payload: &'static [u8],
) -> mqtt::Packet {
    mqtt::Packet::Publish(mqtt::Publish {
        dup: false,
        qos,
        retain,
        topic: topic.to_owned(),
        packet_id,
        payload: Bytes::from_static(payload),
    })
}

/// PUBACK "accepted" from a device.
pub(super) fn puback(topic_id: u16, msg_id: u16) -> Message {
    Message::Puback(codec::Puback {
        topic_id,
        msg_id,
        return_code: ReturnCode::Accepted,
    })
}

/// The one PUBLISH among `down` (panics otherwise).
pub(super) fn one_pub(down: Vec<Message>) -> codec::Publish {
    match down.as_slice() {
        [Message::Publish(p)] => p.clone(),
        other => panic!("expected one PUBLISH to the device, got {other:?}"),
    }
}

pub(super) fn connack(rc: ReturnCode) -> Message {
    Message::Connack { return_code: rc }
}

/// Will data a device sends when prompted.
#[derive(Clone)]
pub(super) struct Will {
    pub topic: &'static str,
    pub qos: QoS,
    pub retain: bool,
    pub msg: &'static [u8],
}

impl Will {
    pub(super) fn last_will(&self) -> mqtt::LastWill {
        mqtt::LastWill {
            topic: self.topic.to_owned(),
            message: Bytes::from_static(self.msg),
            qos: match self.qos {
                QoS::AtLeastOnce => mqtt::QoS::AtLeastOnce,
                QoS::ExactlyOnce => mqtt::QoS::ExactlyOnce,
                _ => mqtt::QoS::AtMostOnce,
            },
            retain: self.retain,
        }
    }
}

pub(super) fn settings() -> Settings {
    Settings {
        predefined_topics: vec![(7, "pre/seven".to_owned())],
        ..Settings::default()
    }
}

impl World {
    pub(super) fn new() -> Self {
        Self::with(settings())
    }

    pub(super) fn with(settings: Settings) -> Self {
        let now = Instant::now();
        World {
            gw: Gateway::new(settings, now),
            now,
            out: Vec::new(),
            store: Default::default(),
            unconfirmed: Vec::new(),
            broker_sessions: Default::default(),
            session_clients: Default::default(),
        }
    }

    fn drain(&mut self) {
        while let Some(o) = self.gw.poll_output() {
            match o {
                Output::Persist { seq, ops } => self.unconfirmed.push((seq, ops)),
                o => {
                    if let Output::Open {
                        session, connect, ..
                    } = &o
                    {
                        self.session_clients
                            .insert(*session, (connect.client_id.clone(), connect.clean_session));
                    }
                    self.out.push(o)
                }
            }
        }
    }

    pub(super) fn device_send(&mut self, from: &DeviceAddr, msg: Message) {
        let frame = msg.to_bytes().expect("test message encodes");
        self.device_send_raw(from, frame);
    }

    pub(super) fn device_send_frame(&mut self, from: &DeviceAddr, frame: Frame) {
        let bytes = frame.to_bytes().expect("test frame encodes");
        self.device_send_raw(from, bytes);
    }

    pub(super) fn device_send_raw(&mut self, from: &DeviceAddr, frame: Bytes) {
        self.gw.handle_frame(self.now, from.clone(), frame);
        self.drain();
    }

    /// Decoded frames transmitted to `to`, removed from the pending outputs.
    pub(super) fn take_frames_to(&mut self, to: &DeviceAddr) -> Vec<Frame> {
        self.drain();
        let mut taken = Vec::new();
        self.out.retain(|o| match o {
            Output::Transmit { to: t, frame } if t == to => {
                taken.push(codec::decode(frame.clone()).expect("gateway frames decode"));
                false
            }
            _ => true,
        });
        taken
    }

    pub(super) fn take_to_device(&mut self, to: &DeviceAddr) -> Vec<Message> {
        self.take_frames_to(to)
            .into_iter()
            .map(|f| {
                assert!(f.encapsulation.is_none(), "unexpected encapsulation");
                f.message
            })
            .collect()
    }

    pub(super) fn take_upstream(&mut self, session: SessionId) -> Vec<mqtt::Packet> {
        self.drain();
        let mut taken = Vec::new();
        self.out.retain(|o| match o {
            Output::Send { session: s, packet } if *s == session => {
                taken.push(packet.clone());
                false
            }
            _ => true,
        });
        taken
    }

    pub(super) fn opened(&mut self) -> Vec<(SessionId, mqtt::Connect)> {
        self.drain();
        let mut taken = Vec::new();
        self.out.retain(|o| match o {
            Output::Open {
                session, connect, ..
            } => {
                taken.push((*session, connect.clone()));
                false
            }
            _ => true,
        });
        taken
    }

    pub(super) fn closed(&mut self) -> Vec<SessionId> {
        self.drain();
        let mut taken = Vec::new();
        self.out.retain(|o| match o {
            Output::Close { session } => {
                taken.push(*session);
                false
            }
            _ => true,
        });
        taken
    }

    pub(super) fn broadcasts(&mut self) -> Vec<Message> {
        self.drain();
        let mut taken = Vec::new();
        self.out.retain(|o| match o {
            Output::Broadcast { frame } => {
                taken.push(codec::decode_message(frame.clone()).expect("broadcast decodes"));
                false
            }
            _ => true,
        });
        taken
    }

    /// Everything pending, in order.
    pub(super) fn take_all(&mut self) -> Vec<Output> {
        self.drain();
        std::mem::take(&mut self.out)
    }

    #[track_caller]
    pub(super) fn assert_quiet(&mut self) {
        self.drain();
        assert!(self.out.is_empty(), "unexpected outputs: {:#?}", self.out);
    }

    /// Moves the clock forward, firing every timer that falls due on the way at its deadline,
    /// as the shell's driver would.
    pub(super) fn advance(&mut self, by: Duration) {
        let target = self.now + by;
        while let Some(t) = self.gw.poll_timeout() {
            if t > target {
                break;
            }
            self.now = self.now.max(t);
            self.gw.handle_timeout(self.now);
            self.drain();
            if let Some(next) = self.gw.poll_timeout() {
                assert!(
                    next > self.now,
                    "timer at {next:?} not consumed by handle_timeout"
                );
            }
        }
        self.now = target;
        self.gw.handle_timeout(self.now);
        self.drain();
    }

    pub(super) fn broker(&mut self, session: SessionId, packet: mqtt::Packet) {
        self.gw.handle_upstream(self.now, session, packet);
        self.drain();
    }

    /// CONNACK with `code`; Session Present as a broker that keeps persistent sessions says it.
    pub(super) fn broker_connack_code(
        &mut self,
        session: SessionId,
        code: mqtt::ConnectReturnCode,
    ) {
        let mut session_present = false;
        if code == mqtt::ConnectReturnCode::Accepted {
            if let Some((client_id, clean)) = self.session_clients.get(&session).cloned() {
                if clean {
                    self.broker_sessions.remove(&client_id);
                } else {
                    session_present = !self.broker_sessions.insert(client_id);
                }
            }
        }
        self.broker(
            session,
            mqtt::Packet::ConnAck {
                session_present,
                code,
            },
        );
    }

    /// The broker forgets every session (restarted without persistence, or expired them).
    pub(super) fn broker_loses_sessions(&mut self) {
        self.broker_sessions.clear();
    }

    pub(super) fn broker_connack(&mut self, session: SessionId) {
        self.broker_connack_code(session, mqtt::ConnectReturnCode::Accepted);
    }

    pub(super) fn broker_closed(&mut self, session: SessionId) {
        self.gw.handle_upstream_closed(self.now, session);
        self.drain();
    }

    /// Runs the whole handshake (with will prompting when `will` is given) up to CONNACK
    /// accepted, with keep-alive `duration`. Returns the upstream session.
    pub(super) fn connect_with(
        &mut self,
        at: &DeviceAddr,
        client_id: &str,
        clean: bool,
        will: Option<Will>,
        duration: u16,
    ) -> SessionId {
        self.device_send(at, connect_msg(client_id, clean, will.is_some(), duration));
        if let Some(w) = &will {
            assert_eq!(self.take_to_device(at), vec![Message::WillTopicReq]);
            self.device_send(
                at,
                Message::WillTopic(Some(WillTopic {
                    qos: w.qos,
                    retain: w.retain,
                    topic: w.topic.to_owned(),
                })),
            );
            assert_eq!(self.take_to_device(at), vec![Message::WillMsgReq]);
            self.device_send(
                at,
                Message::WillMsg {
                    msg: Bytes::from_static(w.msg),
                },
            );
        }
        let opened = self.opened();
        assert_eq!(opened.len(), 1, "one upstream session opened: {opened:?}");
        let (session, connect) = opened.into_iter().next().unwrap();
        assert_eq!(connect.client_id, client_id);
        assert_eq!(connect.clean_session, clean);
        assert_eq!(connect.will, will.as_ref().map(Will::last_will));
        assert!(
            self.take_to_device(at).is_empty(),
            "no CONNACK before the broker's"
        );
        self.broker_connack(session);
        assert_eq!(self.take_to_device(at), vec![connack(ReturnCode::Accepted)]);
        session
    }

    /// CONNECT with Will=1 from `at`, answering both prompts with `will` (no Open expected).
    pub(super) fn connect_prompts(
        &mut self,
        at: &DeviceAddr,
        client_id: &str,
        clean: bool,
        will: &Will,
    ) {
        self.device_send(at, connect_msg(client_id, clean, true, 60));
        assert_eq!(self.take_to_device(at), vec![Message::WillTopicReq]);
        self.device_send(
            at,
            Message::WillTopic(Some(WillTopic {
                qos: will.qos,
                retain: will.retain,
                topic: will.topic.to_owned(),
            })),
        );
        assert_eq!(self.take_to_device(at), vec![Message::WillMsgReq]);
        self.device_send(
            at,
            Message::WillMsg {
                msg: Bytes::from_static(will.msg),
            },
        );
    }

    pub(super) fn connect(
        &mut self,
        at: &DeviceAddr,
        client_id: &str,
        clean: bool,
        will: Option<Will>,
    ) -> SessionId {
        self.connect_with(at, client_id, clean, will, 60)
    }

    /// Device subscribes to `filter` at `qos`; the broker grants `granted`. Returns the SUBACK's
    /// topic id.
    pub(super) fn subscribe(
        &mut self,
        at: &DeviceAddr,
        session: SessionId,
        filter: &str,
        qos: QoS,
        granted: mqtt::QoS,
        msg_id: u16,
    ) -> u16 {
        self.subscribe_asked(at, session, filter, qos, granted, msg_id)
            .0
    }

    /// [`subscribe`](Self::subscribe), also returning the QoS the upstream SUBSCRIBE asked for.
    pub(super) fn subscribe_asked(
        &mut self,
        at: &DeviceAddr,
        session: SessionId,
        filter: &str,
        qos: QoS,
        granted: mqtt::QoS,
        msg_id: u16,
    ) -> (u16, mqtt::QoS) {
        self.device_send(
            at,
            Message::Subscribe(codec::Subscribe {
                dup: false,
                qos,
                msg_id,
                topic: codec::TopicFilter::Name(filter.to_owned()),
            }),
        );
        let up = self.take_upstream(session);
        let [mqtt::Packet::Subscribe { packet_id, filters }] = up.as_slice() else {
            panic!("expected one SUBSCRIBE upstream, got {up:?}");
        };
        assert_eq!(filters.len(), 1);
        assert_eq!(filters[0].0, filter);
        let asked = filters[0].1;
        self.broker(
            session,
            mqtt::Packet::SubAck {
                packet_id: *packet_id,
                codes: vec![mqtt::SubackCode::Granted(granted)],
            },
        );
        let down = self.take_to_device(at);
        let [Message::Suback(s)] = down.as_slice() else {
            panic!("expected one SUBACK, got {down:?}");
        };
        assert_eq!(s.msg_id, msg_id);
        assert_eq!(s.return_code, ReturnCode::Accepted);
        (s.topic_id, asked)
    }

    /// The one PUBLISH in `down` (what the device was just sent), answering the REGISTER that
    /// comes alone before it when the device does not know the topic yet.
    pub(super) fn publish_after_register(
        &mut self,
        at: &DeviceAddr,
        mut down: Vec<Message>,
    ) -> codec::Publish {
        if let [Message::Register(r)] = down.as_slice() {
            let r = r.clone();
            self.device_send(
                at,
                Message::Regack(codec::Regack {
                    topic_id: r.topic_id,
                    msg_id: r.msg_id,
                    return_code: ReturnCode::Accepted,
                }),
            );
            down = self.take_to_device(at);
        }
        one_pub(down)
    }

    /// Device registers `name`; returns the REGACK's topic id.
    pub(super) fn register(&mut self, at: &DeviceAddr, name: &str, msg_id: u16) -> u16 {
        self.device_send(
            at,
            Message::Register(codec::Register {
                topic_id: 0,
                msg_id,
                topic_name: name.to_owned(),
            }),
        );
        let down = self.take_to_device(at);
        let [Message::Regack(r)] = down.as_slice() else {
            panic!("expected one REGACK, got {down:?}");
        };
        assert_eq!(r.msg_id, msg_id);
        assert_eq!(r.return_code, ReturnCode::Accepted);
        assert_ne!(r.topic_id, 0);
        r.topic_id
    }
}
