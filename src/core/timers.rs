//! A lazy deadline queue: one heap entry per (deadline, device), stale entries skipped on pop.
//!
//! Owns no clock: callers pass deadlines and `now`.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

/// Deadlines keyed by `K`. The owner keeps, per key, the deadline it last scheduled; an entry
/// popped whose deadline is not that one is stale and ignored by the owner.
#[derive(Debug)]
pub struct TimerQueue<K: Ord> {
    heap: BinaryHeap<Reverse<(Instant, K)>>,
}

impl<K: Ord + Copy> Default for TimerQueue<K> {
    fn default() -> Self {
        TimerQueue {
            heap: BinaryHeap::new(),
        }
    }
}

impl<K: Ord + Copy> TimerQueue<K> {
    pub fn push(&mut self, at: Instant, key: K) {
        self.heap.push(Reverse((at, key)));
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Pops one entry due at or before `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<(Instant, K)> {
        match self.heap.peek() {
            Some(Reverse((at, _))) if *at <= now => self.heap.pop().map(|Reverse(e)| e),
            _ => None,
        }
    }
}
