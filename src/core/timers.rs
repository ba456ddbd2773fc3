//! The gateway's deadline table: at most one entry per key, ordered by deadline.
//!
//! Owns no clock: callers pass deadlines and `now`. Every operation is O(log n) in the number
//! of keys with a deadline, and a removed key leaves nothing behind (a device removed from the
//! registry must not keep a stale entry for hours).
//! Owns: the deadline table. Must never: read the clock or keep an entry for a removed key.

use std::collections::{BTreeSet, HashMap};
use std::hash::Hash;
use std::time::Instant;

/// Deadlines keyed by `K`, one per key.
#[derive(Debug)]
pub(super) struct TimerQueue<K: Ord + Hash> {
    order: BTreeSet<(Instant, K)>,
    by_key: HashMap<K, Instant>,
}

impl<K: Ord + Hash + Copy> Default for TimerQueue<K> {
    fn default() -> Self {
        TimerQueue {
            order: BTreeSet::new(),
            by_key: HashMap::new(),
        }
    }
}

impl<K: Ord + Hash + Copy> TimerQueue<K> {
    /// The deadline `key` has now, if any.
    pub(super) fn get(&self, key: K) -> Option<Instant> {
        self.by_key.get(&key).copied()
    }

    /// Sets (or moves) `key`'s deadline to `at`.
    pub(super) fn set(&mut self, at: Instant, key: K) {
        if let Some(old) = self.by_key.insert(key, at) {
            if old == at {
                return;
            }
            self.order.remove(&(old, key));
        }
        self.order.insert((at, key));
    }

    /// Drops `key`'s deadline, if it has one.
    pub(super) fn remove(&mut self, key: K) {
        if let Some(old) = self.by_key.remove(&key) {
            self.order.remove(&(old, key));
        }
    }

    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.order.first().map(|(at, _)| *at)
    }

    /// Takes one key due at or before `now` off the table.
    pub(super) fn pop_due(&mut self, now: Instant) -> Option<(Instant, K)> {
        let (at, key) = *self.order.first()?;
        if at > now {
            return None;
        }
        self.order.remove(&(at, key));
        self.by_key.remove(&key);
        Some((at, key))
    }

    /// Keys with a deadline.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.by_key.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn one_entry_per_key_and_removal_leaves_nothing() {
        let t0 = Instant::now();
        let mut q = TimerQueue::default();
        for i in 0..1000u64 {
            q.set(t0 + Duration::from_secs(i), i);
            q.set(t0 + Duration::from_secs(i + 5000), i); // moved later
        }
        assert_eq!(q.len(), 1000);
        for i in 0..1000u64 {
            q.remove(i);
        }
        assert_eq!(q.len(), 0);
        assert_eq!(q.next_deadline(), None);
    }

    #[test]
    fn pops_in_deadline_order() {
        let t0 = Instant::now();
        let mut q = TimerQueue::default();
        q.set(t0 + Duration::from_secs(3), 1u64);
        q.set(t0 + Duration::from_secs(1), 2);
        q.set(t0 + Duration::from_secs(2), 3);
        q.set(t0 + Duration::from_secs(5), 2); // 2 moves behind the others
        let now = t0 + Duration::from_secs(10);
        let order: Vec<u64> = std::iter::from_fn(|| q.pop_due(now).map(|(_, k)| k)).collect();
        assert_eq!(order, vec![3, 1, 2]);
        assert_eq!(q.pop_due(now), None);
    }
}
