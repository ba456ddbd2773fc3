//! Gateway-wide context a device's state machine may use: settings, the output queue, counters,
//! session ids. Split from `Gateway` so a `&mut Device` and the context can be borrowed together;
//! which device owns a session is the registry's, told through `SessionChange`s.
//! Owns: `Ctx`. Must never: hold a device's state, do I/O or read the clock.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use tracing::debug;

use super::durability::Durability;
use super::settings::Settings;
use super::status::Availability;
use super::topics::Predefined;
use super::types::DeviceId;
use super::types::{DeviceAddr, OpenFor, Output, PeerName, PersistOp, SessionId, Stats};
use crate::codec::{Encapsulation, Frame, Message};
use crate::mqtt;

/// A change to which device owns which upstream session, applied by the registry
/// (`Registry::sync_sessions`) when the input is done.
pub(super) enum SessionChange {
    Opened(SessionId, DeviceId),
    Closed(SessionId),
}

pub(crate) struct Ctx {
    pub settings: Settings,
    pub out: VecDeque<Output>,
    pub stats: Stats,
    /// Sessions opened for and closed by devices during this input, for the registry.
    session_changes: Vec<SessionChange>,
    next_session: u64,
    /// Predefined topics both ways.
    pub predefined: Predefined,
    scratch: BytesMut,
    /// The batch of the current input and the effects waiting for the store.
    durability: Durability,
    /// Octets of every frame queued for a device so far (the gateway charges the difference
    /// around a device's input to that device).
    pub tx_bytes: u64,
    /// Devices' availability changes during this input, for `status` (empty when it is off).
    availability: Vec<(String, Availability)>,
}

impl Ctx {
    pub(super) fn new(settings: Settings) -> Self {
        let predefined = Predefined::new(&settings.predefined_topics);
        Ctx {
            durability: Durability::new(settings.persistent),
            settings,
            out: VecDeque::new(),
            stats: Stats::default(),
            session_changes: Vec::new(),
            next_session: 1,
            predefined,
            scratch: BytesMut::with_capacity(256),
            tx_bytes: 0,
            availability: Vec::new(),
        }
    }

    /// A device's availability changed (see `status.rs`); nothing when `status` is off.
    pub(super) fn report_availability(&mut self, client_id: &str, state: Availability) {
        if self.settings.status.is_some() {
            self.availability.push((client_id.to_owned(), state));
        }
    }

    /// The availability changes since the last call.
    pub(super) fn take_availability(&mut self) -> Vec<(String, Availability)> {
        std::mem::take(&mut self.availability)
    }

    /// The session changes since the last call.
    pub(super) fn take_session_changes(&mut self) -> std::vec::Drain<'_, SessionChange> {
        self.session_changes.drain(..)
    }

    pub(super) fn persistent(&self) -> bool {
        self.settings.persistent
    }

    /// Adds a change to the current durable batch (nothing when persistence is off).
    pub(super) fn persist(&mut self, op: PersistOp) {
        self.durability.persist(op);
    }

    /// Emits `out` once everything persisted so far is durable (at once when persistence is
    /// off). Design rule 2: an acknowledgement that promises durability waits for the store.
    pub(super) fn after_persist(&mut self, out: Output) {
        self.durability.after_persist(&mut self.out, out);
    }

    /// Closes the current batch: emits it as `Output::Persist`.
    pub(super) fn flush_persist(&mut self) {
        self.durability.flush(&mut self.out);
    }

    /// The store made batch `seq` (and every earlier one) durable: release what waited on it.
    pub(super) fn confirm(&mut self, seq: u64) {
        self.durability.confirm(&mut self.out, seq);
    }

    /// Encodes `message` for `to` (encapsulated again when it came through a forwarder).
    /// Returns the frame, or `None` when it cannot be encoded or exceeds the frame limit
    /// (spec §6.10: the gateway then silently aborts that message).
    pub(super) fn encode(&mut self, to: &DeviceAddr, message: Message) -> Option<Bytes> {
        self.encode_ctrl(to, message, 0)
    }

    /// As [`Ctx::encode`], with `ctrl` as the Ctrl octet when the frame is encapsulated for a
    /// forwarder (its bits 1-0 are the broadcast radius, spec §5.5 Table 29).
    pub(super) fn encode_ctrl(
        &mut self,
        to: &DeviceAddr,
        message: Message,
        ctrl: u8,
    ) -> Option<Bytes> {
        let frame = Frame {
            encapsulation: to.wireless_node_id.as_ref().map(|id| Encapsulation {
                ctrl,
                wireless_node_id: id.clone(),
            }),
            message,
        };
        self.scratch.clear();
        if let Err(e) = frame.encode(&mut self.scratch) {
            debug!(peer = %self.peer(to), error = %e, "cannot encode frame for device");
            return None;
        }
        if self.scratch.len() > self.settings.max_frame_size {
            debug!(peer = %self.peer(to), len = self.scratch.len(), "frame for device exceeds max_frame_size");
            return None;
        }
        Some(self.scratch.split().freeze())
    }

    /// Encodes and queues `message` to `to`; false when it could not be encoded.
    pub(super) fn transmit(&mut self, to: &DeviceAddr, message: Message) -> bool {
        match self.encode(to, message) {
            Some(frame) => {
                self.transmit_frame(to, frame);
                true
            }
            None => false,
        }
    }

    /// Encodes and queues `message` to `to`; when `durable`, only once everything persisted so
    /// far is on disk (an acknowledgement that promises durability). Counted in `tx_bytes`
    /// either way.
    pub(super) fn transmit_after_persist(
        &mut self,
        durable: bool,
        to: &DeviceAddr,
        message: Message,
    ) {
        if !durable {
            self.transmit(to, message);
            return;
        }
        if let Some(frame) = self.encode(to, message) {
            self.tx_bytes += frame.len() as u64;
            self.after_persist(Output::Transmit {
                to: to.clone(),
                frame,
            });
        }
    }

    pub(super) fn transmit_frame(&mut self, to: &DeviceAddr, frame: Bytes) {
        self.tx_bytes += frame.len() as u64;
        self.out.push_back(Output::Transmit {
            to: to.clone(),
            frame,
        });
    }

    pub(super) fn send(&mut self, session: SessionId, packet: mqtt::Packet) {
        if let mqtt::Packet::Publish(p) = &packet {
            if !p.dup {
                self.stats.count_uplink(p.qos, p.payload.len());
            }
        }
        self.send_own(session, packet);
    }

    /// A packet of the gateway's own (availability) session: not a device's message, so the
    /// message counters leave it out (it has `status_publishes`).
    pub(super) fn send_own(&mut self, session: SessionId, packet: mqtt::Packet) {
        if self.durability.holds(session) {
            // An earlier packet on this session waits for the store: keep the order.
            self.after_persist(Output::Send { session, packet });
        } else {
            self.out.push_back(Output::Send { session, packet });
        }
    }

    /// A fresh session id, opened by no one (aggregating mode: a restored device's detached
    /// virtual session).
    pub(super) fn new_session_id(&mut self) -> SessionId {
        let session = SessionId(self.next_session);
        self.next_session += 1;
        session
    }

    /// Allocates a session id and queues its opening for `owner` (None: the gateway's own).
    pub(super) fn open(
        &mut self,
        owner: Option<DeviceId>,
        connect: mqtt::Connect,
        device: Option<OpenFor>,
    ) -> SessionId {
        let session = SessionId(self.next_session);
        self.next_session += 1;
        self.stats.upstream_opens += 1;
        if let Some(owner) = owner {
            self.session_changes
                .push(SessionChange::Opened(session, owner));
        }
        self.out.push_back(Output::Open {
            session,
            connect,
            device,
        });
        session
    }

    /// Closes a session. `graceful` sends DISCONNECT first so the broker discards the will.
    pub(super) fn close(&mut self, session: SessionId, graceful: bool) {
        if graceful {
            self.send(session, mqtt::Packet::Disconnect);
        }
        self.session_changes.push(SessionChange::Closed(session));
        if self.durability.holds(session) {
            // Packets still wait for the store: the close follows them, never overtakes them.
            self.after_persist(Output::Close { session });
        } else {
            self.out.push_back(Output::Close { session });
        }
    }

    /// `addr` as a log line names it (the serial port's path, the radio's node address).
    pub(super) fn peer<'a>(&'a self, addr: &'a DeviceAddr) -> PeerName<'a> {
        PeerName {
            names: &self.settings.transport_names,
            addr,
        }
    }

    /// The MQTT CONNECT for a device's upstream session, without credentials: the shell fills
    /// in the user name and password of whose session it is (`Output::Open::device`).
    pub(super) fn connect_packet(
        &self,
        client_id: &str,
        clean_session: bool,
        will: Option<mqtt::LastWill>,
    ) -> mqtt::Connect {
        mqtt::Connect {
            client_id: format!("{}{}", self.settings.client_id_prefix, client_id),
            clean_session,
            keep_alive: u16::try_from(self.settings.upstream_keep_alive.as_secs())
                .unwrap_or(u16::MAX),
            will,
            username: None,
            password: None,
        }
    }
}
