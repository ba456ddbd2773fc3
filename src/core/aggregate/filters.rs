//! The filter table of aggregating mode: one upstream subscription per distinct filter,
//! reference-counted across devices (their virtual sessions), at the highest QoS any of them
//! asked for; and which devices a PUBLISH from the broker goes to.
//!
//! Retained messages: a new device subscription on a filter that already exists upstream is
//! SUBSCRIBEd again (the broker then re-sends the filter's retained messages, with RETAIN 1).
//! Each SUBSCRIBE of a filter opens a generation; a retained PUBLISH goes only to the devices
//! of the generation most recently acknowledged, so devices subscribed earlier do not get the
//! retained messages twice. (A cache kept by the gateway cannot work: in MQTT 3.1.1 a PUBLISH
//! that matches an established subscription arrives with RETAIN 0, so the gateway never learns
//! that a retained message was replaced or cleared.)
//!
//! Owns: [`Filters`]. Must never: send anything (callers turn its answers into packets).
//! Bounded by the devices' own limits: at most `limits.max_devices` ×
//! `limits.max_subscriptions_per_device` memberships.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::trie::Trie;

use crate::core::types::SessionId;
use crate::mqtt;

#[derive(Debug, Clone, Copy)]
struct Member {
    qos: mqtt::QoS,
    generation: u32,
}

#[derive(Debug, Default)]
struct Filter {
    members: BTreeMap<SessionId, Member>,
    /// Generations opened (one per upstream SUBSCRIBE) and the latest one acknowledged.
    generation: u32,
    acked: u32,
    /// The highest QoS asked for (what the upstream SUBSCRIBE requests).
    requested: Option<mqtt::QoS>,
}

/// Every filter some device holds.
#[derive(Debug, Default)]
pub(super) struct Filters {
    table: HashMap<String, Filter>,
    /// Every filter of `table`, by level (what a topic matches).
    index: Trie,
}

impl Filters {
    /// Device `vs` subscribes to `filter` at `qos`. Returns the QoS the upstream SUBSCRIBE
    /// asks for (the highest of all its devices) and the generation it opens.
    pub(super) fn join(&mut self, filter: &str, vs: SessionId, qos: mqtt::QoS) -> (mqtt::QoS, u32) {
        if !self.table.contains_key(filter) {
            self.index.insert(filter);
        }
        let f = self.table.entry(filter.to_owned()).or_default();
        f.generation += 1;
        let generation = f.generation;
        f.members.insert(vs, Member { qos, generation });
        let requested = f.requested.map_or(qos, |r| r.max(qos));
        f.requested = Some(requested);
        (requested, generation)
    }

    /// The QoS an upstream SUBSCRIBE of `filter` asks for now (the gateway re-subscribing by
    /// itself opens a generation no device is in).
    pub(super) fn resubscribe(&mut self, filter: &str) -> Option<(mqtt::QoS, u32)> {
        let f = self.table.get_mut(filter)?;
        f.generation += 1;
        Some((f.requested?, f.generation))
    }

    /// The broker answered the SUBSCRIBE of generation `generation`.
    pub(super) fn acked(&mut self, filter: &str, generation: u32) {
        if let Some(f) = self.table.get_mut(filter) {
            f.acked = f.acked.max(generation);
        }
    }

    /// Device `vs` leaves `filter`. Returns true when that was the last one: the filter is
    /// gone and the caller unsubscribes upstream.
    pub(super) fn leave(&mut self, filter: &str, vs: SessionId) -> bool {
        let Some(f) = self.table.get_mut(filter) else {
            return false;
        };
        if f.members.remove(&vs).is_none() {
            return false;
        }
        if !f.members.is_empty() {
            // The next SUBSCRIBE asks for what the devices still there want.
            f.requested = f.members.values().map(|m| m.qos).max();
            return false;
        }
        self.table.remove(filter);
        self.index.remove(filter);
        true
    }

    /// Whether any device holds `filter`.
    pub(super) fn holds(&self, filter: &str) -> bool {
        self.table.contains_key(filter)
    }

    /// Every filter held, for a re-subscription after the broker lost the shared session.
    pub(super) fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.table.keys().cloned().collect();
        v.sort();
        v
    }

    /// The devices a PUBLISH on `topic` goes to, each once, in session order. A retained one
    /// (sent because of a SUBSCRIBE) only to the devices of the filter's newest acknowledged
    /// generation.
    pub(super) fn targets(&self, topic: &str, retained: bool) -> Vec<SessionId> {
        let mut out = BTreeSet::new();
        let mut add = |f: &Filter| {
            for (vs, m) in &f.members {
                if !retained || m.generation == f.acked {
                    out.insert(*vs);
                }
            }
        };
        let table = &self.table;
        self.index.matches(topic, &mut |name| {
            if let Some(f) = table.get(name) {
                add(f);
            }
        });
        out.into_iter().collect()
    }

    /// Distinct filters, and memberships across devices (tests, status).
    pub(super) fn sizes(&self) -> (usize, usize) {
        (
            self.table.len(),
            self.table.values().map(|f| f.members.len()).sum(),
        )
    }

    /// The QoS `vs` asked for on `filter` (tests).
    #[cfg(test)]
    pub(super) fn member_qos(&self, filter: &str, vs: SessionId) -> Option<mqtt::QoS> {
        self.table.get(filter)?.members.get(&vs).map(|m| m.qos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refcounts_max_qos_and_retained_generations() {
        let mut f = Filters::default();
        let (a, b) = (SessionId(1), SessionId(2));
        assert_eq!(
            f.join("s/+", a, mqtt::QoS::AtMostOnce),
            (mqtt::QoS::AtMostOnce, 1)
        );
        f.acked("s/+", 1);
        // A second device at a higher QoS raises the upstream request, opens generation 2.
        assert_eq!(
            f.join("s/+", b, mqtt::QoS::AtLeastOnce),
            (mqtt::QoS::AtLeastOnce, 2)
        );
        assert_eq!(f.targets("s/x", false), vec![a, b]);
        // Before generation 2 is acknowledged retained messages are generation 1's (a's).
        assert_eq!(f.targets("s/x", true), vec![a]);
        f.acked("s/+", 2);
        assert_eq!(f.targets("s/x", true), vec![b]);
        assert_eq!(f.member_qos("s/+", a), Some(mqtt::QoS::AtMostOnce));
        assert!(!f.leave("s/+", a));
        assert!(f.leave("s/+", b), "the last device out unsubscribes");
        assert!(f.targets("s/x", false).is_empty());
        assert_eq!(f.sizes(), (0, 0));
    }
}
