//! A read-only view of the devices, for the status page, `/api/devices` and `/metrics`.
//!
//! Owns [`DeviceView`] (one device as a person reads it) and [`DeviceTotals`] (the gauges over
//! all devices), and the `Gateway` methods that build them. Built on request only (never per
//! message), from the device's sub-structs through small getters. Must never: change state, or
//! read the clock: times are the `Instant`s the core keeps; the shell turns them into wall-clock
//! time.

use std::time::{Duration, Instant};

use super::device::DeviceState;
use super::gateway::Gateway;
use super::types::DeviceAddr;

/// One device as the core knows it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceView {
    pub client_id: String,
    /// Where it is reached (transport, peer, forwarder node).
    pub addr: DeviceAddr,
    pub state: DeviceState,
    /// Since when it has been connected (active, asleep or awake); `None` when it is not.
    pub connected_since: Option<Instant>,
    /// When a frame from it was last heard.
    pub last_heard: Instant,
    /// The Duration of its CONNECT (zero: no keep-alive supervision).
    pub keep_alive: Duration,
    /// When it is lost unless heard from (Active with a keep-alive only).
    pub keep_alive_deadline: Option<Instant>,
    /// The Duration of its DISCONNECT(Duration), while asleep or awake.
    pub sleep_duration: Option<Duration>,
    /// When an asleep device is lost unless heard from.
    pub sleep_deadline: Option<Instant>,
    /// PUBLISHes waiting to go down to it (the sleep buffer while it sleeps), and the octets
    /// of everything queued (payloads, and topic names of pending REGISTERs).
    pub queued: usize,
    pub queued_bytes: usize,
    /// A message to it is in flight (sent, not yet acknowledged).
    pub inflight_down: bool,
    /// Its QoS 1/2 messages the broker has not yet acknowledged.
    pub inflight_up: usize,
    /// CleanSession of its CONNECT.
    pub clean_session: bool,
    /// Its registered topic ids, by id.
    pub topics: Vec<(u16, String)>,
    /// Its granted subscriptions (filter, MQTT QoS).
    pub subscriptions: Vec<(String, u8)>,
    /// Its will topic, if it set one.
    pub will_topic: Option<String>,
}

/// Gauges over every device the gateway holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeviceTotals {
    /// Devices per state, indexed like [`DeviceState::ALL`].
    pub by_state: [u64; DeviceState::ALL.len()],
    /// Messages buffered for asleep and awake devices, and their octets.
    pub sleep_buffered: u64,
    pub sleep_buffered_bytes: u64,
    /// Messages queued for devices that are not sleeping.
    pub queued: u64,
}

impl DeviceState {
    /// Every state, in a fixed order (for counting and for labels).
    pub const ALL: [DeviceState; 8] = [
        DeviceState::AwaitWillTopic,
        DeviceState::AwaitWillMsg,
        DeviceState::AwaitBroker,
        DeviceState::Active,
        DeviceState::Asleep,
        DeviceState::Awake,
        DeviceState::Disconnected,
        DeviceState::Lost,
    ];

    /// A short lower-case name, as `/api/devices` and the metrics' `state` label show it.
    pub fn name(self) -> &'static str {
        match self {
            DeviceState::AwaitWillTopic => "await_will_topic",
            DeviceState::AwaitWillMsg => "await_will_msg",
            DeviceState::AwaitBroker => "await_broker",
            DeviceState::Active => "active",
            DeviceState::Asleep => "asleep",
            DeviceState::Awake => "awake",
            DeviceState::Disconnected => "disconnected",
            DeviceState::Lost => "lost",
        }
    }

    fn index(self) -> usize {
        DeviceState::ALL
            .iter()
            .position(|s| *s == self)
            .unwrap_or_default()
    }
}

impl Gateway {
    /// Every device the gateway holds, in no particular order.
    pub fn device_views(&self) -> impl Iterator<Item = DeviceView> + '_ {
        self.registry().iter().map(|d| d.view())
    }

    /// The device with this ClientId.
    pub fn device_view(&self, client_id: &str) -> Option<DeviceView> {
        let r = self.registry();
        r.get(r.by_client_id(client_id)?).map(|d| d.view())
    }

    /// Counts by state and the buffered messages, without copying any device.
    pub fn device_totals(&self) -> DeviceTotals {
        let mut t = DeviceTotals::default();
        for d in self.registry().iter() {
            t.by_state[d.state.index()] += 1;
            let (n, bytes) = d.queue_depth();
            if matches!(d.state, DeviceState::Asleep | DeviceState::Awake) {
                t.sleep_buffered += n as u64;
                t.sleep_buffered_bytes += bytes as u64;
            } else {
                t.queued += n as u64;
            }
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::{Duration, Instant};

    use bytes::{Bytes, BytesMut};

    use super::*;
    use crate::codec::{self, Message, TopicFilter};
    use crate::core::{Output, Settings, TransportId};
    use crate::mqtt;

    fn frame(m: Message) -> Bytes {
        let mut b = BytesMut::new();
        m.encode(&mut b).unwrap();
        b.freeze()
    }

    /// Answers every upstream packet that needs an answer (CONNACK, SUBACK).
    fn broker(gw: &mut Gateway, now: Instant) {
        while let Some(out) = gw.poll_output() {
            match out {
                Output::Open { session, .. } => gw.handle_upstream(
                    now,
                    session,
                    mqtt::Packet::ConnAck {
                        session_present: false,
                        code: mqtt::ConnectReturnCode::Accepted,
                    },
                ),
                Output::Send {
                    session,
                    packet: mqtt::Packet::Subscribe { packet_id, filters },
                } => gw.handle_upstream(
                    now,
                    session,
                    mqtt::Packet::SubAck {
                        packet_id,
                        codes: filters
                            .iter()
                            .map(|(_, q)| mqtt::SubackCode::Granted(*q))
                            .collect(),
                    },
                ),
                _ => {}
            }
        }
    }

    fn connect(gw: &mut Gateway, now: Instant, from: SocketAddr, id: &str, keep_alive: u16) {
        let addr = crate::core::DeviceAddr::udp(TransportId(0), from);
        let c = Message::Connect(codec::Connect {
            will: false,
            clean_session: true,
            protocol_id: codec::PROTOCOL_ID_V1_2,
            duration: keep_alive,
            client_id: id.into(),
        });
        gw.handle_frame(now, addr, frame(c));
        broker(gw, now);
    }

    #[test]
    fn views_show_state_times_subscriptions_and_the_sleep_buffer() {
        let t0 = Instant::now();
        let mut gw = Gateway::new(Settings::default(), t0);
        let a: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:5000".parse().unwrap();
        connect(&mut gw, t0, a, "alpha", 60);
        connect(&mut gw, t0, b, "beta", 30);
        let ab = crate::core::DeviceAddr::udp(TransportId(0), b);
        let sub = Message::Subscribe(codec::Subscribe {
            dup: false,
            qos: codec::QoS::AtLeastOnce,
            msg_id: 1,
            topic: TopicFilter::Name("cmd/beta".into()),
        });
        gw.handle_frame(t0, ab.clone(), frame(sub));
        broker(&mut gw, t0);
        let t1 = t0 + Duration::from_secs(5);
        gw.handle_frame(
            t1,
            ab.clone(),
            frame(Message::Disconnect {
                duration: Some(120),
            }),
        );
        broker(&mut gw, t1);
        let beta = gw.device_view("beta").unwrap();
        assert_eq!(beta.state, DeviceState::Asleep);
        assert_eq!(beta.state.name(), "asleep");
        assert_eq!(beta.connected_since, Some(t0));
        assert_eq!(beta.last_heard, t1);
        assert_eq!(beta.keep_alive, Duration::from_secs(30));
        assert_eq!(beta.keep_alive_deadline, None);
        assert_eq!(beta.sleep_duration, Some(Duration::from_secs(120)));
        assert_eq!(
            beta.sleep_deadline,
            Some(t1 + crate::core::with_tolerance(Duration::from_secs(120)))
        );
        assert_eq!(beta.subscriptions, vec![("cmd/beta".to_string(), 1)]);
        assert_eq!(beta.topics.len(), 1);
        assert_eq!(beta.topics[0].1, "cmd/beta");

        let alpha = gw.device_view("alpha").unwrap();
        assert_eq!(alpha.state, DeviceState::Active);
        assert_eq!(alpha.addr.peer, crate::core::PeerAddr::Udp(a));
        assert_eq!(
            alpha.keep_alive_deadline,
            Some(t0 + crate::core::with_tolerance(Duration::from_secs(60)))
        );
        assert_eq!(alpha.sleep_duration, None);
        assert!(gw.device_view("gamma").is_none());
        assert_eq!(gw.device_views().count(), 2);

        let totals = gw.device_totals();
        assert_eq!(totals.by_state[DeviceState::Active.index()], 1);
        assert_eq!(totals.by_state[DeviceState::Asleep.index()], 1);
        assert_eq!(totals.by_state.iter().sum::<u64>(), 2);
    }

    #[test]
    fn a_message_for_a_sleeper_counts_in_its_view_and_the_totals() {
        let t0 = Instant::now();
        let mut gw = Gateway::new(Settings::default(), t0);
        let b: SocketAddr = "10.0.0.2:5000".parse().unwrap();
        let ab = crate::core::DeviceAddr::udp(TransportId(0), b);
        let c = Message::Connect(codec::Connect {
            will: false,
            clean_session: true,
            protocol_id: codec::PROTOCOL_ID_V1_2,
            duration: 30,
            client_id: "beta".into(),
        });
        gw.handle_frame(t0, ab.clone(), frame(c));
        let mut session = None;
        while let Some(out) = gw.poll_output() {
            if let Output::Open { session: s, .. } = out {
                session = Some(s);
            }
        }
        let session = session.unwrap();
        gw.handle_upstream(
            t0,
            session,
            mqtt::Packet::ConnAck {
                session_present: false,
                code: mqtt::ConnectReturnCode::Accepted,
            },
        );
        gw.handle_frame(
            t0,
            ab,
            frame(Message::Disconnect {
                duration: Some(120),
            }),
        );
        gw.handle_upstream(
            t0,
            session,
            mqtt::Packet::Publish(mqtt::Publish {
                dup: false,
                qos: mqtt::QoS::AtMostOnce,
                retain: false,
                topic: "cmd/beta".into(),
                packet_id: None,
                payload: Bytes::from_static(b"hello"),
            }),
        );
        let beta = gw.device_view("beta").unwrap();
        assert_eq!(beta.state, DeviceState::Asleep);
        // The PUBLISH (and its REGISTER, not counted as a message) wait for the wake-up.
        assert_eq!(beta.queued, 1, "{beta:?}");
        assert!(beta.queued_bytes >= 5);
        let totals = gw.device_totals();
        assert_eq!(totals.sleep_buffered, beta.queued as u64);
        assert_eq!(totals.queued, 0);
    }
}
