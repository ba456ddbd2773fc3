//! Aggregating mode (`broker.upstream.sessions: aggregating`): every device keeps its own
//! state machine and its own *virtual* upstream session, and this module carries those virtual
//! sessions over a few shared ones.
//!
//! The device state machine is the same as in transparent mode: it opens a session, sends
//! packets on it and closes it through [`Ctx`] as always. The gateway passes every output
//! through [`Aggregate::translate`]: an `Open` for a device becomes a virtual session here
//! (answered with a CONNACK at once, or when its shared session is accepted), its packets are
//! rewritten onto a shared session (packet ids re-allocated per shared session, acks routed
//! back), its `Close` releases its subscriptions and, without a DISCONNECT before it, makes
//! the gateway publish its will. What the broker sends is routed back as packets on virtual
//! sessions ([`Aggregate::take_inbox`]), which the gateway hands to the device like any
//! upstream packet.
//!
//! Files: `shared.rs` (a shared session: connection, packet-id flights), `filters.rs` (the
//! filter refcount table), `trie.rs` (its index by level), `device_side.rs` (what a device sends on its virtual session),
//! `broker_side.rs` (what the broker sends on a shared session: fan-out, acks).
//!
//! Owns: [`Aggregate`]. Must never: do I/O, read the clock, or reach into a device (it only
//! sees packets on virtual sessions).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::Instant;

use crate::core::ctx::Ctx;
use crate::core::settings::AggregateSettings;
use crate::core::types::{Output, SessionId};
use crate::mqtt;

mod broker_side;
mod device_side;
mod filters;
mod shared;
mod trie;

use filters::Filters;
use shared::Shared;

/// A downlink packet id of one shared session on one of its connections.
type DownKey = (usize, u64, u16);

/// One device's virtual session.
#[derive(Debug)]
struct Virtual {
    client_id: String,
    /// Its ClientId as the device gave it (its rows in the store are under it).
    key: String,
    /// Clean session 0 with a store: its QoS 2 flows are written down.
    durable: bool,
    /// The shared session it rides on (its uplink; its subscriptions ride on session 0).
    shared: usize,
    /// Its will, published by the gateway when the session ends without DISCONNECT.
    will: Option<mqtt::LastWill>,
    /// It said DISCONNECT: the end is clean, no will.
    said_bye: bool,
    /// Its CONNACK was given (else it waits for its shared session).
    accepted: bool,
    /// A durable device's session that ended: its filters stay (as a broker keeps a persistent
    /// session's), what they match is buffered by the device until it connects again.
    detached: bool,
    /// Its uplink QoS 1/2 packet ids → (shared session, its packet id).
    up: HashMap<u16, (usize, u16)>,
    /// Packet ids it was given for downlink messages → the broker's message.
    down: HashMap<u16, DownKey>,
    next_down: u16,
    /// Filters it holds.
    filters: BTreeSet<String>,
}

/// A downlink QoS 1/2 message fanned out, waiting for its devices to take it.
#[derive(Debug)]
struct Owed {
    remaining: usize,
    qos: mqtt::QoS,
}

/// The shared sessions, the virtual ones riding on them, and the filter table.
#[derive(Debug)]
pub(crate) struct Aggregate {
    settings: AggregateSettings,
    shared: Vec<Shared>,
    virt: HashMap<SessionId, Virtual>,
    filters: Filters,
    owed: HashMap<DownKey, Owed>,
    /// Downlink QoS 2 messages whose PUBREC went up (shared session, broker packet id): a
    /// re-sent PUBLISH is answered with PUBREC again, never delivered twice.
    received: BTreeSet<(usize, u16)>,
    /// Filters whose last device left during this input: UNSUBSCRIBEd at its end unless a
    /// device joined again meanwhile (a will update replaces a virtual session).
    leaving: BTreeSet<String>,
    /// Outputs ready for the shell, in order.
    ready: VecDeque<Output>,
    /// Sessions the shell really opens (shared, status, QoS -1) and has not closed: a packet
    /// for any other id (a virtual session that is gone) never reaches the shell.
    real: std::collections::HashSet<SessionId>,
    /// Packets for devices, on their virtual sessions.
    inbox: VecDeque<(SessionId, mqtt::Packet)>,
    /// QoS 2 flows of durable devices without a virtual session now (restored from the store,
    /// or left by a session that ended): (device packet id, shared session, its packet id),
    /// taken up by the device's next session. At most `limits.max_queued_per_device` each.
    parked: HashMap<String, Vec<(u16, usize, u16)>>,
    /// Durable devices not connected, by ClientId: their detached virtual session.
    detached: HashMap<String, SessionId>,
    /// ClientIds the gateway forgot during this input: their detached session goes at its end
    /// (after their last session's `Close` was translated).
    forgotten: Vec<String>,
    /// Messages for detached sessions (ClientId, session, PUBLISH), for the gateway to hand to
    /// the device's buffer.
    to_detached: Vec<(String, SessionId, mqtt::Publish)>,
}

impl Aggregate {
    /// Opens the shared sessions.
    pub(crate) fn new(ctx: &mut Ctx, settings: AggregateSettings, now: Instant) -> Self {
        let mut shared: Vec<Shared> = (0..settings.connections.max(1)).map(Shared::new).collect();
        for s in &mut shared {
            s.open(ctx, &settings, now);
        }
        Aggregate {
            settings,
            shared,
            virt: HashMap::new(),
            filters: Filters::default(),
            owed: HashMap::new(),
            received: BTreeSet::new(),
            leaving: BTreeSet::new(),
            ready: VecDeque::new(),
            real: std::collections::HashSet::new(),
            inbox: VecDeque::new(),
            parked: HashMap::new(),
            detached: HashMap::new(),
            forgotten: Vec::new(),
            to_detached: Vec::new(),
        }
    }

    /// Whether `session` is one of the shared sessions.
    pub(crate) fn owns(&self, session: SessionId) -> Option<usize> {
        self.shared.iter().position(|s| s.session == Some(session))
    }

    pub(crate) fn poll_output(&mut self) -> Option<Output> {
        self.ready.pop_front()
    }

    /// Packets for devices produced since the last call.
    pub(crate) fn take_inbox(&mut self) -> VecDeque<(SessionId, mqtt::Packet)> {
        std::mem::take(&mut self.inbox)
    }

    /// Messages for durable devices that are not connected, since the last call.
    pub(crate) fn take_detached(&mut self) -> Vec<(String, SessionId, mqtt::Publish)> {
        std::mem::take(&mut self.to_detached)
    }

    /// The device of detached session `vs` did not take message `packet_id` (it connected
    /// meanwhile, or no longer exists: `gone`, and its filters go too).
    pub(crate) fn declined(&mut self, vs: SessionId, packet_id: Option<u16>, gone: bool) {
        if gone {
            self.drop_virtual(vs);
            return;
        }
        let key = packet_id.and_then(|id| self.virt.get_mut(&vs)?.down.remove(&id));
        if let Some(key) = key {
            self.taken(key);
        }
    }

    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.shared.iter().filter_map(Shared::next_deadline).min()
    }

    pub(crate) fn on_timeout(&mut self, ctx: &mut Ctx, now: Instant) {
        for s in &mut self.shared {
            s.on_timeout(ctx, &mut self.ready, &self.settings, now);
        }
    }

    /// Moves everything the core queued in `ctx.out` to the shell's queue, rewriting what
    /// devices sent on virtual sessions.
    pub(crate) fn translate(&mut self, ctx: &mut Ctx) {
        while let Some(o) = ctx.out.pop_front() {
            match o {
                Output::Open {
                    session,
                    connect,
                    device: Some(device),
                } => {
                    // Not a connection: the CONNECT stays here.
                    ctx.stats.upstream_opens = ctx.stats.upstream_opens.saturating_sub(1);
                    let durable = ctx.persistent() && !connect.clean_session;
                    self.open_virtual(session, &connect, device.client_id, durable);
                }
                Output::Open {
                    session,
                    connect,
                    device: None,
                } => {
                    self.real.insert(session);
                    self.ready.push_back(Output::Open {
                        session,
                        connect,
                        device: None,
                    });
                }
                Output::Send { session, packet } if self.virt.contains_key(&session) => {
                    self.on_device_packet(ctx, session, packet);
                }
                Output::Close { session } if self.virt.contains_key(&session) => {
                    self.close_virtual(session);
                }
                Output::Send { session, .. } | Output::Close { session }
                    if !self.real.contains(&session) =>
                {
                    // A virtual session that is gone (released after the store confirmed).
                }
                other => {
                    if let Output::Close { session } = &other {
                        self.real.remove(session);
                    }
                    self.ready.push_back(other)
                }
            }
        }
    }

    /// The gateway forgot device `client_id` (evicted, refused on reload).
    pub(crate) fn forget_client(&mut self, client_id: &str) {
        self.forgotten.push(client_id.to_owned());
    }

    /// The end of an input: forgotten devices' detached sessions go, and filters nobody holds
    /// any more are UNSUBSCRIBEd.
    pub(crate) fn end_input(&mut self) {
        for key in std::mem::take(&mut self.forgotten) {
            if let Some(vs) = self.detached.get(&key).copied() {
                self.drop_virtual(vs);
            }
        }
        let gone: Vec<String> = std::mem::take(&mut self.leaving)
            .into_iter()
            .filter(|f| !self.filters.holds(f))
            .collect();
        if gone.is_empty() {
            return;
        }
        let flight = shared::Flight::Unsubscribe { filters: gone };
        // Not connected: the flight goes when the session is back. No id free: the broker
        // keeps a subscription nobody holds; its messages are acknowledged and dropped.
        let _ = self.shared[0].start(&mut self.ready, flight);
    }

    /// A QoS 2 flow of `client_id` read from the store (before any input).
    pub(crate) fn restore_flow(&mut self, client_id: &str, flow: (u16, usize, u16)) {
        if flow.1 >= self.shared.len() {
            tracing::info!(client_id, shared = flow.1, "a stored QoS 2 flow names a shared session broker.upstream.connections no longer has; dropped");
            return;
        }
        self.parked
            .entry(client_id.to_owned())
            .or_default()
            .push(flow);
    }

    /// A durable device that was away when the gateway stopped: its filters go back into the
    /// table under the detached session `vs` (the shared session's CONNACK subscribes them
    /// again if the broker lost them).
    pub(crate) fn restore_detached(
        &mut self,
        vs: SessionId,
        client_id: String,
        filters: Vec<(String, mqtt::QoS)>,
    ) {
        let mut held = BTreeSet::new();
        for (f, q) in filters {
            let (_, generation) = self.filters.join(&f, vs, q);
            self.filters.acked(&f, generation);
            held.insert(f);
        }
        self.detached.insert(client_id.clone(), vs);
        self.virt.insert(
            vs,
            Virtual {
                client_id: client_id.clone(),
                key: client_id,
                durable: true,
                shared: 0,
                will: None,
                said_bye: true,
                accepted: true,
                detached: true,
                up: HashMap::new(),
                down: HashMap::new(),
                next_down: 0,
                filters: held,
            },
        );
    }

    /// A clean stop: every shared session says DISCONNECT.
    pub(crate) fn shutdown(&mut self) {
        for s in &mut self.shared {
            s.shutdown(&mut self.ready);
        }
    }

    /// What the aggregate holds now — tests, `/api/gateway` and `/metrics`.
    pub(crate) fn sizes(&self) -> AggregateSizes {
        let (filters, memberships) = self.filters.sizes();
        AggregateSizes {
            shared_connected: self.shared.iter().filter(|s| s.connected).count(),
            shared: self.shared.len(),
            devices: self.virt.len(),
            filters,
            memberships,
            in_flight: self.shared.iter().map(Shared::in_flight).sum(),
        }
    }
}

/// Aggregating mode's sizes at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AggregateSizes {
    /// Shared upstream sessions connected (their CONNACK accepted) now.
    pub shared_connected: usize,
    /// Shared upstream sessions configured (`broker.upstream.connections`).
    pub shared: usize,
    /// Devices' virtual sessions carried over them (persistent devices away included).
    pub devices: usize,
    /// Distinct filters subscribed upstream.
    pub filters: usize,
    /// Device subscriptions counted on those filters.
    pub memberships: usize,
    /// Packet ids in flight on the shared sessions.
    pub in_flight: usize,
}
