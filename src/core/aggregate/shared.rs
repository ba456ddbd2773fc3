//! One shared upstream session of aggregating mode: its connection (open, CONNACK deadline,
//! back-off, reconnect) and its packet-id space, which every device spread over it shares.
//!
//! Owns: [`Shared`] and its [`Flight`]s (what each packet id of this session carries). Must
//! never: know devices or filters (a flight names its device's virtual session and nothing
//! more), do I/O or read the clock.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use tracing::info;

use crate::core::ctx::Ctx;
use crate::core::settings::AggregateSettings;
use crate::core::types::{Output, SessionId};
use crate::mqtt;

/// First wait before reopening a lost or refused shared session; doubled up to the maximum.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What one packet id of a shared session carries until the broker completes it.
#[derive(Debug, Clone)]
pub(super) enum Flight {
    /// A QoS 1/2 PUBLISH toward the broker: a device's (`from`: its virtual session and its
    /// own packet id; `None` once that session ended, or for a will the gateway publishes).
    Publish {
        from: Option<(SessionId, u16)>,
        /// `None`: a QoS 2 flow restored from the store, whose PUBLISH the device sends again.
        publish: Option<mqtt::Publish>,
        /// The ClientId and device packet id whose stored row names this flight (durable
        /// QoS 2), deleted at its end.
        row: Option<(String, u16)>,
        /// Sent at least once (a re-send carries DUP); what was not sent on the current
        /// connection goes out when the session is accepted.
        sent: bool,
        /// PUBREL sent (QoS 2 after PUBREC): re-sent as PUBREL, never as PUBLISH.
        released: bool,
    },
    /// A SUBSCRIBE: each filter with the generation it opened, and the device that asked
    /// (its virtual session, packet id, requested QoS per filter); `None` when the gateway
    /// re-subscribes by itself.
    Subscribe {
        filters: Vec<(String, mqtt::QoS, u32)>,
        waiter: Option<(SessionId, u16, Vec<mqtt::QoS>)>,
    },
    /// An UNSUBSCRIBE after the last device left these filters.
    Unsubscribe { filters: Vec<String> },
}

impl Flight {
    /// The packet that (re)sends this flight under `packet_id` (none for a restored PUBLISH
    /// whose content the device has not sent again yet).
    pub(super) fn packet(&self, packet_id: u16, again: bool) -> Option<mqtt::Packet> {
        Some(match self {
            Flight::Publish { released: true, .. } => mqtt::Packet::PubRel { packet_id },
            Flight::Publish { publish, .. } => mqtt::Packet::Publish(mqtt::Publish {
                dup: again,
                packet_id: Some(packet_id),
                ..publish.clone()?
            }),
            Flight::Subscribe { filters, .. } => mqtt::Packet::Subscribe {
                packet_id,
                filters: filters.iter().map(|(f, q, _)| (f.clone(), *q)).collect(),
            },
            Flight::Unsubscribe { filters } => mqtt::Packet::Unsubscribe {
                packet_id,
                filters: filters.clone(),
            },
        })
    }
}

/// One shared session.
#[derive(Debug)]
pub(super) struct Shared {
    index: usize,
    pub session: Option<SessionId>,
    pub connected: bool,
    /// Counts accepted connections: a downlink packet id is only meaningful within one.
    pub epoch: u64,
    connect_deadline: Option<Instant>,
    retry_at: Option<Instant>,
    backoff: Duration,
    was_connected: bool,
    /// Packet ids in use, in order (re-sent in that order after a reconnect).
    flights: BTreeMap<u16, Flight>,
    next_id: u16,
    /// Virtual sessions (devices) spread over this one.
    pub devices: usize,
    stopped: bool,
}

impl Shared {
    pub(super) fn new(index: usize) -> Self {
        Shared {
            index,
            session: None,
            connected: false,
            epoch: 0,
            connect_deadline: None,
            retry_at: None,
            backoff: Duration::ZERO,
            was_connected: false,
            flights: BTreeMap::new(),
            next_id: 0,
            devices: 0,
            stopped: false,
        }
    }

    /// Opens the connection (at start and on each retry).
    pub(super) fn open(&mut self, ctx: &mut Ctx, agg: &AggregateSettings, now: Instant) {
        if self.stopped || self.session.is_some() {
            return;
        }
        let connect = mqtt::Connect {
            client_id: agg.session_client_id(self.index),
            // With a store the broker keeps the shared session (persistent devices'
            // subscriptions and messages survive a gateway restart); without one it is clean.
            clean_session: !ctx.settings.persistent,
            keep_alive: u16::try_from(ctx.settings.upstream_keep_alive.as_secs())
                .unwrap_or(u16::MAX),
            will: None,
            username: None,
            password: None,
        };
        self.retry_at = None;
        self.connect_deadline = Some(now + ctx.settings.upstream_connect_timeout);
        self.session = Some(ctx.open(None, connect, None));
    }

    pub(super) fn next_deadline(&self) -> Option<Instant> {
        [self.retry_at, self.connect_deadline]
            .into_iter()
            .flatten()
            .min()
    }

    /// Connect deadline and reconnect; true when the session was given up (not accepted in
    /// time) so the caller can tell what depended on it.
    pub(super) fn on_timeout(
        &mut self,
        ctx: &mut Ctx,
        out: &mut VecDeque<Output>,
        agg: &AggregateSettings,
        now: Instant,
    ) {
        if self.connect_deadline.is_some_and(|t| t <= now) {
            info!(
                session = self.index,
                "the broker did not accept the shared session in time"
            );
            if let Some(s) = self.session {
                out.push_back(Output::Close { session: s });
            }
            self.failed(now);
        }
        if self.retry_at.is_some_and(|t| t <= now) {
            self.open(ctx, agg, now);
        }
    }

    /// The CONNACK. Returns `Some(session_present)` when accepted; a refusal closes the
    /// connection and schedules a retry.
    pub(super) fn on_connack(
        &mut self,
        out: &mut VecDeque<Output>,
        now: Instant,
        code: mqtt::ConnectReturnCode,
        session_present: bool,
    ) -> Option<bool> {
        let session = self.session?;
        if self.connected {
            return None;
        }
        self.connect_deadline = None;
        if code != mqtt::ConnectReturnCode::Accepted {
            info!(
                session = self.index,
                ?code,
                "broker refused the shared session"
            );
            out.push_back(Output::Close { session });
            self.failed(now);
            return None;
        }
        self.connected = true;
        self.epoch += 1;
        self.backoff = Duration::ZERO;
        if self.was_connected {
            info!(
                session = self.index,
                session_present, "shared session back; devices stayed connected"
            );
        } else {
            info!(
                session = self.index,
                session_present, "shared session accepted"
            );
        }
        self.was_connected = true;
        // What the broker has not completed goes again, in packet-id order.
        for (&id, flight) in self.flights.iter_mut() {
            let again = match flight {
                Flight::Publish { sent, .. } => std::mem::replace(sent, true),
                _ => false,
            };
            if let Some(packet) = flight.packet(id, again) {
                out.push_back(Output::Send { session, packet });
            }
        }
        Some(session_present)
    }

    /// The connection ended (broker down, refused, reset); a retry is scheduled.
    pub(super) fn on_closed(&mut self, now: Instant) {
        if self.connected {
            info!(
                session = self.index,
                "shared session lost; devices stay connected, reconnecting"
            );
        }
        self.failed(now);
    }

    fn failed(&mut self, now: Instant) {
        self.session = None;
        self.connected = false;
        self.connect_deadline = None;
        if self.stopped {
            return;
        }
        self.backoff = if self.backoff.is_zero() {
            FIRST_BACKOFF
        } else {
            (self.backoff * 2).min(MAX_BACKOFF)
        };
        self.retry_at = Some(now + self.backoff);
    }

    /// Sends `packet` now when connected (else drops it: what must survive is a flight).
    pub(super) fn send(&self, out: &mut VecDeque<Output>, packet: mqtt::Packet) -> bool {
        match (self.connected, self.session) {
            (true, Some(session)) => {
                out.push_back(Output::Send { session, packet });
                true
            }
            _ => false,
        }
    }

    /// Takes a free packet id for `flight` and sends it when connected. `None`: all 65535
    /// ids of this session are in flight (the natural bound of the table).
    pub(super) fn start(&mut self, out: &mut VecDeque<Output>, flight: Flight) -> Option<u16> {
        let id = self.reserve(flight)?;
        self.resend(out, id);
        Some(id)
    }

    /// Takes a free packet id for `flight` without sending it (the caller sends it once the
    /// stored row that names it is durable; or the next CONNACK does).
    pub(super) fn reserve(&mut self, flight: Flight) -> Option<u16> {
        if self.flights.len() >= usize::from(u16::MAX) {
            return None;
        }
        let mut id = self.next_id;
        loop {
            id = id.wrapping_add(1).max(1);
            if !self.flights.contains_key(&id) {
                break;
            }
        }
        self.next_id = id;
        self.flights.insert(id, flight);
        Some(id)
    }

    /// Puts back flight `id` restored from the store (a restart).
    pub(super) fn restore(&mut self, id: u16, flight: Flight) {
        self.next_id = self.next_id.max(id);
        self.flights.insert(id, flight);
    }

    /// (Re-)sends flight `id` when connected (a PUBLISH carries DUP once it went out before).
    pub(super) fn resend(&mut self, out: &mut VecDeque<Output>, id: u16) {
        if let Some(packet) = self.take_send(id) {
            if let Some(session) = self.session {
                out.push_back(Output::Send { session, packet });
            }
        }
    }

    /// The packet that sends flight `id` now (marked sent), when connected.
    pub(super) fn take_send(&mut self, id: u16) -> Option<mqtt::Packet> {
        if !self.connected || self.session.is_none() {
            return None;
        }
        let flight = self.flights.get_mut(&id)?;
        let again = match flight {
            Flight::Publish { sent, .. } => std::mem::replace(sent, true),
            _ => true,
        };
        flight.packet(id, again)
    }

    pub(super) fn flight_mut(&mut self, id: u16) -> Option<&mut Flight> {
        self.flights.get_mut(&id)
    }

    pub(super) fn finish(&mut self, id: u16) -> Option<Flight> {
        self.flights.remove(&id)
    }

    /// Whether a SUBSCRIBE for `filter` is still waiting for its SUBACK.
    pub(super) fn subscribing(&self, filter: &str) -> bool {
        self.flights.values().any(|f| match f {
            Flight::Subscribe { filters, .. } => filters.iter().any(|(x, _, _)| x == filter),
            _ => false,
        })
    }

    /// A clean stop: DISCONNECT, then close; never reopened.
    pub(super) fn shutdown(&mut self, out: &mut VecDeque<Output>) {
        self.stopped = true;
        self.retry_at = None;
        self.connect_deadline = None;
        if let Some(session) = self.session.take() {
            if self.connected {
                out.push_back(Output::Send {
                    session,
                    packet: mqtt::Packet::Disconnect,
                });
            }
            out.push_back(Output::Close { session });
        }
        self.connected = false;
    }

    /// Packet ids in flight (tests, status).
    pub(super) fn in_flight(&self) -> usize {
        self.flights.len()
    }
}
