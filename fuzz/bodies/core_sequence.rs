//! Target `core_sequence`: one `core::Gateway` driven, through its public API only, by a fuzzed
//! sequence of inputs, the way the shell's driver drives it:
//!
//! - settings drawn within the ranges `config` accepts (small limits, so the bounds are hit);
//! - when persistence is on, a `restore` first from arbitrary records (well-formed ones built
//!   from arbitrary fields, and raw keys and values);
//! - frames from a few device addresses (UDP, XBee link, point-to-point, behind a forwarder):
//!   mostly well-formed MQTT-SN messages from arbitrary fields with the ids the gateway handed
//!   out, answers a device owes (PUBACK, PUBREC, PUBREL, PUBCOMP, REGACK, will data), raw bytes;
//! - a simulated broker on every session the gateway opened: it answers CONNECT with CONNACK
//!   (or refuses), PUBLISH with PUBACK / PUBREC, PUBREL with PUBCOMP, SUBSCRIBE with SUBACK,
//!   and so on, delivers PUBLISHes (and PUBRELs for them), sends arbitrary packets, or closes;
//! - time moving forward, timer by timer as the driver does or in one jump;
//! - a simulated store that makes `Output::Persist` batches durable and confirms them with
//!   `handle_persisted`, and a restart that restores a new gateway from what the store holds.
//!
//! Invariants checked after every input: no panic; at most a bounded number of outputs;
//! `device_count() <= max_devices`; frames to devices decode and fit `max_frame_size`; packets
//! upstream encode and go only to sessions opened and not yet closed by the gateway; session ids
//! are never reused; persist batches are numbered upwards; after `handle_timeout(now)` the next
//! deadline is later than `now`; and a restart from records the gateway wrote itself skips none.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use arbitrary::{Arbitrary, Result, Unstructured};
use bytes::Bytes;
use mqttsn_gateway::codec::{self, Encapsulation, Frame, Message, TopicRef};
use mqttsn_gateway::core::persist::{
    self, AddrRecord, BufferedRecord, DeviceRecord, Hex, StoredState, UplinkRecord, WillRecord,
};
use mqttsn_gateway::core::{
    DeviceAddr, Gateway, Output, PeerAddr, PersistOp, SessionId, Settings, Table, TransportId,
};
use mqttsn_gateway::mqtt;

use super::gen::{self, Hints};

const MAX_OPS: usize = 200;
const MAX_RESTARTS: usize = 3;
/// Kept per device / session so that the simulators stay small.
const MAX_REMEMBERED: usize = 16;

/// `FUZZ_TRACE=1` prints every input and output (to turn a crash into a unit test).
fn trace() -> bool {
    static TRACE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("FUZZ_TRACE").is_some())
}

pub fn run(data: &[u8]) {
    let _ = body(&mut Unstructured::new(data));
}

fn udp(transport: u16, s: &str) -> DeviceAddr {
    let a: SocketAddr = s.parse().unwrap_or_else(|_| ([127, 0, 0, 1], 1).into());
    DeviceAddr::udp(TransportId(transport), a)
}

/// The device addresses frames come from.
fn addresses() -> Vec<DeviceAddr> {
    vec![
        udp(0, "10.0.0.1:1000"),
        udp(0, "10.0.0.2:1000"),
        udp(1, "[::1]:1884"),
        DeviceAddr {
            transport: TransportId(2),
            peer: PeerAddr::Link(Bytes::from_static(&[0, 0x13, 0xA2, 0, 0x41, 0x7E, 0x7D, 1])),
            wireless_node_id: None,
        },
        DeviceAddr {
            transport: TransportId(3),
            peer: PeerAddr::Link(Bytes::new()),
            wireless_node_id: None,
        },
    ]
}

#[allow(clippy::needless_update)] // others may add settings; they take their defaults here
fn settings(u: &mut Unstructured<'_>) -> Result<Settings> {
    let secs = |u: &mut Unstructured<'_>, from: &[u64]| -> Result<Duration> {
        Ok(Duration::from_secs(gen::pick(u, from)?))
    };
    Ok(Settings {
        gateway_id: u.arbitrary()?,
        predefined_topics: vec![(7, "pre/seven".to_owned()), (8, "t".to_owned())],
        max_devices: u.int_in_range(1..=4)?,
        max_topics_per_device: u.int_in_range(0..=4)?,
        max_queued_per_device: u.int_in_range(1..=4)?,
        max_frame_size: gen::pick(u, &[16, 24, 64, 1024])?,
        max_client_id_len: gen::pick(u, &[1, 4, 23, 64])?,
        retry_interval: secs(u, &[1, 10])?,
        max_retries: u.int_in_range(0..=3)?,
        advertise_interval: if u.ratio(1, 4)? {
            Some(secs(u, &[1, 60, 900])?)
        } else {
            None
        },
        upstream_keep_alive: secs(u, &[0, 60])?,
        upstream_connect_timeout: secs(u, &[1, 10])?,
        client_id_prefix: gen::pick(u, &["", "gw/"])?.to_owned(),
        sleep_buffer_messages: u.int_in_range(2..=5)?,
        sleep_buffer_bytes: gen::pick(u, &[64, 256, 65_536])?,
        sleep_keep_qos0: u.arbitrary()?,
        persistent: u.arbitrary()?,
        ..Settings::default()
    })
}

/// The broker's side of one upstream session.
#[derive(Debug, Default)]
struct Session {
    /// Packets from the gateway that want an answer, oldest first (CONNECT first of all).
    pending: VecDeque<mqtt::Packet>,
    /// Downlink QoS 2 messages the gateway sent PUBREC for: the broker owes PUBREL.
    owe_rel: VecDeque<u16>,
    /// Packet ids seen on this session, for answers that refer to real flows.
    pkids: Vec<u16>,
}

/// A device's side: what it owes the gateway and the ids it has seen.
#[derive(Debug)]
struct DeviceSide {
    addr: DeviceAddr,
    owed: VecDeque<Message>,
    hints: Hints,
}

fn remember<T>(v: &mut Vec<T>, x: T) {
    if v.len() >= MAX_REMEMBERED {
        v.remove(0);
    }
    v.push(x);
}

fn topic_id_of(t: TopicRef) -> u16 {
    match t {
        TopicRef::Id(id) | TopicRef::Predefined(id) => id,
        TopicRef::Short(s) => u16::from_be_bytes(s),
    }
}

type Store = BTreeMap<(Table, Vec<u8>), Vec<u8>>;

fn apply(store: &mut Store, ops: Vec<PersistOp>) {
    for op in ops {
        match op {
            PersistOp::Put { table, key, value } => {
                store.insert((table, key), value);
            }
            PersistOp::Delete { table, key } => {
                store.remove(&(table, key));
            }
            PersistOp::DeletePrefix { table, prefix } => {
                store.retain(|(t, k), _| *t != table || !k.starts_with(&prefix));
            }
        }
    }
}

struct Sim {
    gw: Gateway,
    settings: Settings,
    now: Instant,
    devices: Vec<DeviceSide>,
    /// Sessions the gateway opened and neither side closed yet, by id.
    sessions: BTreeMap<SessionId, Session>,
    opened: HashSet<SessionId>,
    /// Sessions the gateway emitted `Close` for.
    closed: HashSet<SessionId>,
    durable: Store,
    unconfirmed: VecDeque<(u64, Vec<PersistOp>)>,
    last_seq: u64,
    /// The store holds records the gateway did not write (the arbitrary initial ones).
    foreign_records: bool,
    restarts: usize,
}

impl Sim {
    fn new(settings: Settings, now: Instant) -> Self {
        Sim {
            gw: Gateway::new(settings.clone(), now),
            settings,
            now,
            devices: addresses()
                .into_iter()
                .map(|addr| DeviceSide {
                    addr,
                    owed: VecDeque::new(),
                    hints: Hints::default(),
                })
                .collect(),
            sessions: BTreeMap::new(),
            opened: HashSet::new(),
            closed: HashSet::new(),
            durable: Store::new(),
            unconfirmed: VecDeque::new(),
            last_seq: 0,
            foreign_records: false,
            restarts: 0,
        }
    }

    /// Upper bound on the outputs of one input: everything queued for every device, twice,
    /// plus the session and store traffic around it.
    fn output_bound(&self) -> usize {
        let s = &self.settings;
        let per_device = s.max_queued_per_device
            + s.sleep_buffer_messages
            + s.max_topics_per_device
            + s.predefined_topics.len()
            + 16;
        64 + 4 * s.max_devices.saturating_add(1) * per_device
    }

    fn device(&mut self, addr: &DeviceAddr) -> &mut DeviceSide {
        let i = match self.devices.iter().position(|d| d.addr == *addr) {
            Some(i) => i,
            None => {
                self.devices.push(DeviceSide {
                    addr: addr.clone(),
                    owed: VecDeque::new(),
                    hints: Hints::default(),
                });
                self.devices.len() - 1
            }
        };
        &mut self.devices[i]
    }

    /// Drains and checks the gateway's outputs, feeding the simulators.
    fn drain(&mut self) {
        let bound = self.output_bound();
        let mut n = 0;
        while let Some(out) = self.gw.poll_output() {
            n += 1;
            assert!(n <= bound, "more than {bound} outputs for one input");
            self.output(out);
        }
        assert!(self.gw.device_count() <= self.settings.max_devices);
        let stats = self.gw.stats();
        assert!(stats.devices_asleep <= stats.devices_active);
        assert!(stats.devices_active <= self.gw.device_count() as u64);
    }

    fn output(&mut self, out: Output) {
        if trace() {
            eprintln!("  gateway: {out:?}");
        }
        match out {
            Output::Transmit { to, frame } => {
                assert!(
                    frame.len() <= self.settings.max_frame_size,
                    "frame over the limit"
                );
                let decoded = codec::decode(frame).expect("frames to devices decode");
                self.told_device(&to, decoded.message);
            }
            Output::Broadcast { frame } | Output::Multicast { frame, .. } => {
                codec::decode(frame).expect("broadcasts decode");
            }
            Output::Open {
                session, connect, ..
            } => {
                assert!(self.opened.insert(session), "session id {session:?} reused");
                let connect = mqtt::Packet::Connect(Box::new(connect));
                if let Err(e) = connect.to_bytes() {
                    panic!("CONNECT does not encode ({e}): {connect:?}");
                }
                let mut s = Session::default();
                s.pending.push_back(connect);
                self.sessions.insert(session, s);
            }
            Output::Send { session, packet } => {
                assert!(
                    self.opened.contains(&session),
                    "send on unopened {session:?}"
                );
                assert!(
                    !self.closed.contains(&session),
                    "send after close on {session:?}"
                );
                if let Err(e) = packet.to_bytes() {
                    panic!("packet upstream does not encode ({e}): {packet:?}");
                }
                let Some(s) = self.sessions.get_mut(&session) else {
                    return; // the broker closed it; the packet is lost
                };
                match &packet {
                    mqtt::Packet::Publish(p) => {
                        if let Some(id) = p.packet_id {
                            remember(&mut s.pkids, id);
                            s.pending.push_back(packet);
                        }
                    }
                    mqtt::Packet::PubRel { packet_id }
                    | mqtt::Packet::Subscribe { packet_id, .. }
                    | mqtt::Packet::Unsubscribe { packet_id, .. } => {
                        remember(&mut s.pkids, *packet_id);
                        s.pending.push_back(packet);
                    }
                    mqtt::Packet::PubRec { packet_id } if s.owe_rel.len() < MAX_REMEMBERED => {
                        s.owe_rel.push_back(*packet_id);
                    }
                    mqtt::Packet::PingReq | mqtt::Packet::Disconnect => {
                        s.pending.push_back(packet);
                    }
                    _ => {}
                }
                while s.pending.len() > 4 * MAX_REMEMBERED {
                    s.pending.pop_front();
                }
            }
            Output::Close { session } => {
                assert!(
                    self.opened.contains(&session),
                    "close of unopened {session:?}"
                );
                self.closed.insert(session);
                self.sessions.remove(&session);
            }
            Output::Persist { seq, ops } => {
                assert!(self.settings.persistent, "persist without a store");
                assert!(seq > self.last_seq, "persist batches numbered upwards");
                self.last_seq = seq;
                self.unconfirmed.push_back((seq, ops));
            }
        }
    }

    /// Remembers what a device is told: ids to use, answers it owes.
    fn told_device(&mut self, to: &DeviceAddr, msg: Message) {
        let d = self.device(to);
        let answer = match &msg {
            Message::Publish(p) => {
                remember(&mut d.hints.topic_ids, topic_id_of(p.topic));
                remember(&mut d.hints.msg_ids, p.msg_id);
                match p.qos {
                    codec::QoS::AtLeastOnce => Some(Message::Puback(codec::Puback {
                        topic_id: topic_id_of(p.topic),
                        msg_id: p.msg_id,
                        return_code: codec::ReturnCode::Accepted,
                    })),
                    codec::QoS::ExactlyOnce => Some(Message::Pubrec { msg_id: p.msg_id }),
                    _ => None,
                }
            }
            Message::Pubrel { msg_id } => Some(Message::Pubcomp { msg_id: *msg_id }),
            Message::Pubrec { msg_id } => Some(Message::Pubrel { msg_id: *msg_id }),
            Message::Register(r) => {
                remember(&mut d.hints.topic_ids, r.topic_id);
                remember(&mut d.hints.msg_ids, r.msg_id);
                Some(Message::Regack(codec::Regack {
                    topic_id: r.topic_id,
                    msg_id: r.msg_id,
                    return_code: codec::ReturnCode::Accepted,
                }))
            }
            Message::Regack(r) => {
                remember(&mut d.hints.topic_ids, r.topic_id);
                None
            }
            Message::Suback(s) => {
                remember(&mut d.hints.topic_ids, s.topic_id);
                None
            }
            Message::WillTopicReq => Some(Message::WillTopic(Some(codec::WillTopic {
                qos: codec::QoS::AtLeastOnce,
                retain: false,
                topic: "will/t".to_owned(),
            }))),
            Message::WillMsgReq => Some(Message::WillMsg {
                msg: Bytes::from_static(b"gone"),
            }),
            _ => None,
        };
        if let Some(a) = answer {
            if d.owed.len() >= MAX_REMEMBERED {
                d.owed.pop_front();
            }
            d.owed.push_back(a);
        }
    }

    fn frame(&mut self, from: DeviceAddr, frame: Bytes) {
        if trace() {
            match codec::decode(frame.clone()) {
                Ok(f) => eprintln!("{from} -> {f:?}"),
                Err(_) => eprintln!("{from} -> raw {frame:02x?}"),
            }
        }
        self.gw.handle_frame(self.now, from, frame);
        self.drain();
    }

    fn upstream(&mut self, session: SessionId, packet: mqtt::Packet) {
        // The shell hands on only what `mqtt::decode` produced, and exactly those packets
        // encode (target `mqtt_decode` checks it).
        if packet.to_bytes().is_err() {
            return;
        }
        if trace() {
            eprintln!("broker {session:?} -> {packet:?}");
        }
        self.gw.handle_upstream(self.now, session, packet);
        self.drain();
    }

    fn upstream_closed(&mut self, session: SessionId) {
        if trace() {
            eprintln!("broker {session:?} closed");
        }
        self.sessions.remove(&session);
        self.gw.handle_upstream_closed(self.now, session);
        self.drain();
    }

    fn timeout(&mut self) {
        self.gw.handle_timeout(self.now);
        self.drain();
        if let Some(next) = self.gw.poll_timeout() {
            assert!(next > self.now, "a deadline not consumed by handle_timeout");
        }
    }

    /// Moves the clock: timer by timer (the driver's way) or in one late jump.
    fn advance(&mut self, by: Duration, stepwise: bool) {
        if trace() {
            eprintln!("advance {by:?} stepwise {stepwise}");
        }
        let target = self.now + by;
        if stepwise {
            for _ in 0..1000 {
                match self.gw.poll_timeout() {
                    Some(t) if t <= target => {
                        self.now = self.now.max(t);
                        self.timeout();
                    }
                    _ => break,
                }
            }
        }
        self.now = target;
        self.timeout();
    }

    /// The broker answers the oldest request on `session`; `refuse` turns a CONNACK down.
    fn answer(&mut self, u: &mut Unstructured<'_>, session: SessionId, refuse: bool) -> Result<()> {
        let Some(s) = self.sessions.get_mut(&session) else {
            return Ok(());
        };
        let Some(request) = s.pending.pop_front() else {
            return Ok(());
        };
        let reply = match request {
            mqtt::Packet::Connect(_) => mqtt::Packet::ConnAck {
                session_present: u.arbitrary()?,
                code: if refuse {
                    gen::connect_code(u)?
                } else {
                    mqtt::ConnectReturnCode::Accepted
                },
            },
            mqtt::Packet::Publish(p) => match (p.qos, p.packet_id) {
                (mqtt::QoS::AtLeastOnce, Some(packet_id)) => mqtt::Packet::PubAck { packet_id },
                (_, Some(packet_id)) => mqtt::Packet::PubRec { packet_id },
                _ => return Ok(()),
            },
            mqtt::Packet::PubRel { packet_id } => mqtt::Packet::PubComp { packet_id },
            mqtt::Packet::Subscribe { packet_id, filters } => {
                let mut codes = Vec::with_capacity(filters.len());
                for (_, qos) in &filters {
                    codes.push(if refuse {
                        mqtt::SubackCode::Failure
                    } else if u.ratio(3, 4)? {
                        mqtt::SubackCode::Granted(*qos)
                    } else {
                        gen::suback_code(u)?
                    });
                }
                mqtt::Packet::SubAck { packet_id, codes }
            }
            mqtt::Packet::Unsubscribe { packet_id, .. } => mqtt::Packet::UnsubAck { packet_id },
            mqtt::Packet::PingReq => mqtt::Packet::PingResp,
            mqtt::Packet::Disconnect => {
                self.upstream_closed(session);
                return Ok(());
            }
            _ => return Ok(()),
        };
        self.upstream(session, reply);
        Ok(())
    }

    /// Everyone answers everything they owe, and the store confirms all: lets flows finish.
    fn settle(&mut self, u: &mut Unstructured<'_>) -> Result<()> {
        for _ in 0..8 {
            let mut busy = false;
            let sessions: Vec<SessionId> = self.sessions.keys().copied().collect();
            for s in sessions {
                while self.sessions.get(&s).is_some_and(|x| !x.pending.is_empty()) {
                    busy = true;
                    self.answer(u, s, false)?;
                }
                while let Some(pkid) = self
                    .sessions
                    .get_mut(&s)
                    .and_then(|x| x.owe_rel.pop_front())
                {
                    busy = true;
                    self.upstream(s, mqtt::Packet::PubRel { packet_id: pkid });
                }
            }
            for i in 0..self.devices.len() {
                while let Some(m) = self.devices[i].owed.pop_front() {
                    busy = true;
                    let addr = self.devices[i].addr.clone();
                    if let Ok(f) = m.to_bytes() {
                        self.frame(addr, f);
                    }
                }
            }
            if let Some(&(seq, _)) = self.unconfirmed.back() {
                busy = true;
                self.confirm(seq);
            }
            if !busy {
                break;
            }
        }
        Ok(())
    }

    /// The store made every batch up to `seq` durable.
    fn confirm(&mut self, seq: u64) {
        if trace() {
            eprintln!("store confirms {seq}");
        }
        while self.unconfirmed.front().is_some_and(|(s, _)| *s <= seq) {
            if let Some((_, ops)) = self.unconfirmed.pop_front() {
                apply(&mut self.durable, ops);
            }
        }
        self.gw.handle_persisted(self.now, seq);
        self.drain();
    }

    /// A crash and restart: the first `written` unconfirmed batches reached the disk (batches
    /// are atomic), the rest are lost; a new gateway restores from the store.
    fn restart(&mut self, written: usize) {
        if trace() {
            eprintln!("restart, {written} unconfirmed batches written");
        }
        for _ in 0..written {
            if let Some((_, ops)) = self.unconfirmed.pop_front() {
                apply(&mut self.durable, ops);
            }
        }
        self.unconfirmed.clear();
        self.last_seq = 0;
        self.sessions.clear();
        self.opened.clear();
        self.closed.clear();
        for d in &mut self.devices {
            d.owed.clear();
        }
        self.gw = Gateway::new(self.settings.clone(), self.now);
        let records: Vec<(Table, Vec<u8>, Vec<u8>)> = self
            .durable
            .iter()
            .map(|((t, k), v)| (*t, k.clone(), v.clone()))
            .collect();
        let report = self.gw.restore(self.now, records);
        if !self.foreign_records {
            assert_eq!(
                report.skipped, 0,
                "own records skipped on restore: {report:?}"
            );
        }
        self.drain();
    }
}

/// A topic name as the gateway checked it before storing it.
fn name(u: &mut Unstructured<'_>) -> Result<String> {
    let t = gen::topic(u)?;
    Ok(if mqtt::valid_topic_name(&t) {
        t
    } else {
        "t".to_owned()
    })
}

fn filter(u: &mut Unstructured<'_>) -> Result<String> {
    let t = gen::topic(u)?;
    Ok(if mqtt::valid_topic_filter(&t) {
        t
    } else {
        "t/#".to_owned()
    })
}

/// Records as a store might hold them: well-formed ones (what the gateway could have written,
/// with arbitrary fields: its topic names and filters were checked before they were stored),
/// and junk keys and values.
fn records(u: &mut Unstructured<'_>, addrs: &[DeviceAddr]) -> Result<Store> {
    let mut store = Store::new();
    for _ in 0..u.int_in_range(0..=8)? {
        // The gateway only ever stores ClientIds it accepted in a CONNECT.
        let client_id = gen::client_id(u)?;
        let client_id = if client_id.is_empty() || client_id.contains('\0') {
            "a".to_owned()
        } else {
            client_id
        };
        let n = u64::from(u.int_in_range(0u8..=4)?);
        let qos = |u: &mut Unstructured<'_>| -> Result<u8> {
            if u.ratio(7, 8)? {
                u.int_in_range(0..=2)
            } else {
                u.arbitrary()
            }
        };
        let op = match u.int_in_range(0..=8)? {
            0..=3 => {
                let addr = if u.ratio(7, 8)? {
                    AddrRecord::from_addr(gen::pick(u, &addrs.iter().collect::<Vec<_>>())?)
                } else {
                    AddrRecord {
                        transport: u.arbitrary()?,
                        udp: Option::<String>::arbitrary(u)?,
                        link: Option::<Vec<u8>>::arbitrary(u)?.map(Hex),
                        node: Option::<Vec<u8>>::arbitrary(u)?.map(Hex),
                    }
                };
                let mut subs = Vec::new();
                for _ in 0..u.int_in_range(0..=3)? {
                    subs.push((filter(u)?, qos(u)?));
                }
                let mut topics = Vec::new();
                for _ in 0..u.int_in_range(0..=5)? {
                    topics.push((gen::id(u, &[1, 2, 3])?, name(u)?, u.arbitrary()?));
                }
                let record = DeviceRecord {
                    client_id: client_id.clone(),
                    addr,
                    state: match u.int_in_range(0..=2)? {
                        0 => StoredState::Active,
                        1 => StoredState::Asleep(gen::pick(u, &[0, 1, 60, u16::MAX])?),
                        _ => StoredState::Offline,
                    },
                    keep_alive: gen::pick(u, &[0, 1, 60, u16::MAX])?,
                    will: if u.ratio(1, 3)? {
                        Some(WillRecord {
                            topic: name(u)?,
                            qos: qos(u)?,
                            retain: u.arbitrary()?,
                            msg: Hex(gen::bytes(u, 16)?.to_vec()),
                        })
                    } else {
                        None
                    },
                    subs,
                    topics,
                };
                persist::put(Table::Device, persist::device_prefix(&client_id), &record)
            }
            4..=5 => persist::put(
                Table::Buffer,
                persist::numbered_key(&client_id, n),
                &BufferedRecord {
                    topic: name(u)?,
                    qos: qos(u)?,
                    retain: u.arbitrary()?,
                    data: Hex(gen::bytes(u, 32)?.to_vec()),
                },
            ),
            6..=7 => {
                let record = if u.ratio(1, 2)? {
                    UplinkRecord::Qos2 {
                        msg_id: gen::id(u, &[1, 2])?,
                        // Packet ids are never 0 ([MQTT-2.3.1-1]), so none is stored.
                        pkid: gen::id(u, &[1, 2])?.max(1),
                        topic_id: gen::id(u, &[1, 7])?,
                        released: u.arbitrary()?,
                        acked: u.arbitrary()?,
                    }
                } else {
                    UplinkRecord::Parked {
                        topic: name(u)?,
                        // Only QoS 1 and 2 are ever parked; other values must be skipped.
                        qos: if u.ratio(7, 8)? {
                            u.int_in_range(1..=2)?
                        } else {
                            u.int_in_range(3..=255)?
                        },
                        retain: u.arbitrary()?,
                        data: Hex(gen::bytes(u, 32)?.to_vec()),
                        pkid: if u.ratio(1, 2)? {
                            Some(gen::id(u, &[1, 2])?.max(1))
                        } else {
                            None
                        },
                        released: u.arbitrary()?,
                    }
                };
                persist::put(Table::Uplink, persist::numbered_key(&client_id, n), &record)
            }
            _ => PersistOp::Put {
                table: gen::pick(u, &[Table::Device, Table::Buffer, Table::Uplink])?,
                key: gen::bytes(u, 16)?.to_vec(),
                value: gen::bytes(u, 64)?.to_vec(),
            },
        };
        apply(&mut store, vec![op]);
    }
    Ok(store)
}

fn body(u: &mut Unstructured<'_>) -> Result<()> {
    let settings = settings(u)?;
    let mut sim = Sim::new(settings, Instant::now());
    if trace() {
        eprintln!("settings {:?}", sim.settings);
    }
    if sim.settings.persistent && u.ratio(1, 2)? {
        let addrs: Vec<DeviceAddr> = sim.devices.iter().map(|d| d.addr.clone()).collect();
        sim.durable = records(u, &addrs)?;
        sim.foreign_records = !sim.durable.is_empty();
        if trace() {
            eprintln!("restore {:?}", sim.durable);
        }
        let records: Vec<(Table, Vec<u8>, Vec<u8>)> = sim
            .durable
            .iter()
            .map(|((t, k), v)| (*t, k.clone(), v.clone()))
            .collect();
        sim.gw.restore(sim.now, records);
        sim.drain();
    }
    for _ in 0..MAX_OPS {
        if u.is_empty() {
            break;
        }
        step(&mut sim, u)?;
    }
    Ok(())
}

/// The index of one of `n` things, or `None` when there are none.
fn index(u: &mut Unstructured<'_>, n: usize) -> Result<Option<usize>> {
    if n == 0 {
        return Ok(None);
    }
    Ok(Some(u.choose_index(n)?))
}

fn step(sim: &mut Sim, u: &mut Unstructured<'_>) -> Result<()> {
    match u.int_in_range(0..=19)? {
        // A well-formed message from a device, sometimes through a forwarder.
        0..=5 => {
            let Some(i) = index(u, sim.devices.len())? else {
                return Ok(());
            };
            let mut relay = sim.devices[i].addr.clone();
            let message = gen::sn_message(u, &sim.devices[i].hints)?;
            // A forwarder adds its header; the datagram comes from the forwarder's address.
            let node = match relay.wireless_node_id.take() {
                Some(node) => Some(node),
                None if u.ratio(1, 8)? => Some(Bytes::from(vec![u.int_in_range(1..=2)?])),
                None => None,
            };
            let encapsulation = node.map(|wireless_node_id| Encapsulation {
                ctrl: 0,
                wireless_node_id,
            });
            if let Ok(f) = (Frame {
                encapsulation,
                message,
            })
            .to_bytes()
            {
                sim.frame(relay, f);
            }
        }
        6 => {
            let Some(i) = index(u, sim.devices.len())? else {
                return Ok(());
            };
            let raw = gen::bytes(u, 80)?;
            sim.frame(sim.devices[i].addr.clone(), raw);
        }
        // A device answers what it owes, in order or not, sometimes with a refusal.
        7..=9 => {
            let owing: Vec<usize> = (0..sim.devices.len())
                .filter(|&i| !sim.devices[i].owed.is_empty())
                .collect();
            let Some(i) = index(u, owing.len())? else {
                return Ok(());
            };
            let d = &mut sim.devices[owing[i]];
            let k = if u.ratio(3, 4)? {
                0
            } else {
                u.choose_index(d.owed.len())?
            };
            let Some(mut m) = d.owed.remove(k) else {
                return Ok(());
            };
            if u.ratio(1, 8)? {
                match &mut m {
                    Message::Puback(p) => p.return_code = gen::return_code(u)?,
                    Message::Regack(r) => r.return_code = gen::return_code(u)?,
                    _ => {}
                }
            }
            let mut to = d.addr.clone();
            // Replies to a device behind a forwarder come back through it.
            let encapsulation = to.wireless_node_id.take().map(|id| Encapsulation {
                ctrl: 0,
                wireless_node_id: id,
            });
            if let Ok(f) = (Frame {
                encapsulation,
                message: m,
            })
            .to_bytes()
            {
                sim.frame(to, f);
            }
        }
        // The broker.
        10..=13 => {
            let ids: Vec<SessionId> = sim.sessions.keys().copied().collect();
            let Some(i) = index(u, ids.len())? else {
                return Ok(());
            };
            let session = ids[i];
            match u.int_in_range(0..=9)? {
                0..=4 => sim.answer(u, session, false)?,
                5 => sim.answer(u, session, true)?,
                6 => {
                    let pkids = sim.sessions.get(&session).map(|s| s.pkids.clone());
                    let p = gen::mqtt_publish(u, &pkids.unwrap_or_default())?;
                    if let (Some(s), Some(id)) = (sim.sessions.get_mut(&session), p.packet_id) {
                        remember(&mut s.pkids, id);
                    }
                    sim.upstream(session, mqtt::Packet::Publish(p));
                }
                7 => {
                    let rel = sim
                        .sessions
                        .get_mut(&session)
                        .and_then(|s| s.owe_rel.pop_front());
                    if let Some(packet_id) = rel {
                        sim.upstream(session, mqtt::Packet::PubRel { packet_id });
                    }
                }
                8 => sim.upstream_closed(session),
                _ => {
                    let pkids = sim.sessions.get(&session).map(|s| s.pkids.clone());
                    let p = gen::mqtt_packet(u, &pkids.unwrap_or_default())?;
                    sim.upstream(session, p);
                }
            }
        }
        14..=15 => {
            let by = Duration::from_millis(gen::pick(
                u,
                &[
                    0, 1, 500, 1_000, 5_000, 10_000, 11_000, 30_000, 61_000, 300_000, 86_400_000,
                ],
            )?);
            let stepwise = u.ratio(3, 4)?;
            sim.advance(by, stepwise);
        }
        16 => {
            let Some(i) = index(u, sim.unconfirmed.len())? else {
                return Ok(());
            };
            let seq = sim.unconfirmed[i].0;
            sim.confirm(seq);
        }
        17 => {
            if sim.settings.persistent && sim.restarts < MAX_RESTARTS {
                sim.restarts += 1;
                let written = u.int_in_range(0..=sim.unconfirmed.len())?;
                sim.restart(written);
            }
        }
        _ => sim.settle(u)?,
    }
    Ok(())
}
