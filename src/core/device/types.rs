//! Small things two or more device features share: the device's life state, the PUBACK a
//! device is owed, the packet-id space, and [`Link`] (who the device is, for a feature that
//! sends to it or writes its rows). QoS and the other MQTT mappings are in `core/bridge.rs`.
//!
//! Owns no state. Must never: import a feature file (they all sit above this one).

use std::time::Duration;

use crate::codec::{Message, Puback, Publish, ReturnCode, TopicRef};
use crate::core::types::{DeviceAddr, SessionId};

/// Where a device is in its life (spec §6.14's client states, as seen from the gateway).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceState {
    /// CONNECT with Will=1 received; WILLTOPICREQ sent.
    AwaitWillTopic,
    /// WILLTOPIC received; WILLMSGREQ sent.
    AwaitWillMsg,
    /// Upstream session opening; the device's CONNACK waits for the broker's.
    AwaitBroker,
    Active,
    /// Sent DISCONNECT (or the broker closed its session).
    Disconnected,
    /// Keep-alive or N_RETRY exceeded: the upstream session was dropped so the will fired.
    Lost,
    /// Sent DISCONNECT with a Duration: the upstream session stays, messages are buffered,
    /// the sleep timer supervises the device (spec §6.14).
    Asleep,
    /// Sent PINGREQ with its ClientId: the buffer is being delivered; PINGRESP ends it.
    Awake,
}

impl DeviceState {
    /// Connected to the gateway with a live upstream session.
    pub fn is_live(self) -> bool {
        matches!(
            self,
            DeviceState::Active | DeviceState::Asleep | DeviceState::Awake
        )
    }
}

/// The upstream session's packet-id space. Uplink flows, subscriptions and parked messages
/// share it; the caller says which ids are in use.
#[derive(Debug, Default)]
pub(crate) struct PacketIds {
    next: u16,
}

impl PacketIds {
    /// The next free packet id after the last one given (never 0).
    pub(super) fn alloc(&mut self, in_use: impl Fn(u16) -> bool) -> u16 {
        loop {
            self.next = self.next.wrapping_add(1);
            if self.next != 0 && !in_use(self.next) {
                return self.next;
            }
        }
    }

    /// Ids up to `id` were given out before a restart: start after it.
    pub(super) fn at_least(&mut self, id: u16) {
        self.next = self.next.max(id);
    }
}

/// A feature that holds packet ids of the upstream session (uplink flows, subscription
/// requests, parked messages on their way).
pub(crate) trait HoldsPacketIds {
    fn holds(&self, id: u16) -> bool;
    /// How many it holds now.
    fn held(&self) -> usize;
}

/// The packet-id space as one feature sees it: the allocator, the ids the other features hold,
/// and the bound on ids held at once (`limits.max_queued_per_device`).
pub(crate) struct IdSpace<'a> {
    pub ids: &'a mut PacketIds,
    pub others: &'a [&'a dyn HoldsPacketIds],
    pub limit: usize,
}

impl IdSpace<'_> {
    /// Whether a feature holding `own` ids may take another.
    pub(super) fn full(&self, own: usize) -> bool {
        own + self.others.iter().map(|o| o.held()).sum::<usize>() >= self.limit
    }

    /// The next free id; `own` says which the asking feature holds.
    pub(super) fn alloc(&mut self, own: impl Fn(u16) -> bool) -> u16 {
        let others = self.others;
        self.ids
            .alloc(|id| own(id) || others.iter().any(|o| o.holds(id)))
    }
}

/// Who a feature is working for: where the device is, its ClientId (the store's key prefix)
/// and its current upstream session.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Link<'a> {
    pub addr: &'a DeviceAddr,
    pub client_id: &'a str,
    pub session: Option<SessionId>,
}

/// Spec §7.2: the gateway tolerates +50 % on short periods, +10 % on periods over a minute.
pub fn with_tolerance(period: Duration) -> Duration {
    if period > Duration::from_secs(60) {
        period + period / 10
    } else {
        period + period / 2
    }
}

/// The TopicId a PUBACK for `p` carries: the id, or the short name's two octets.
pub(crate) fn puback_topic_id(p: &Publish) -> u16 {
    match p.topic {
        TopicRef::Id(i) | TopicRef::Predefined(i) => i,
        TopicRef::Short(s) => u16::from_be_bytes(s),
    }
}

/// PUBACK for the device's `p` with `rc`.
pub(crate) fn puback_for(p: &Publish, rc: ReturnCode) -> Message {
    Message::Puback(Puback {
        topic_id: puback_topic_id(p),
        msg_id: p.msg_id,
        return_code: rc,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packet_ids_skip_zero_and_ids_in_use() {
        let mut ids = PacketIds::default();
        assert_eq!(ids.alloc(|_| false), 1);
        assert_eq!(ids.alloc(|id| id == 2 || id == 3), 4);
        ids.at_least(0xFFFE);
        assert_eq!(ids.alloc(|_| false), 0xFFFF);
        // Wraps past 0, which is never a packet id.
        assert_eq!(ids.alloc(|_| false), 1);
    }
}
