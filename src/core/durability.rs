//! Durability bookkeeping (design rule 2: an acknowledgement that promises durability waits for
//! the store): the batch of changes an input makes, its sequence number, the effects held
//! until a batch is confirmed, and the sessions whose later packets must wait behind a held one.
//!
//! Owns: the batch/seq/confirm protocol between the core and the shell's store
//! (`Output::Persist { seq }` out, `Gateway::handle_persisted(seq)` in). Must never: release
//! an effect before every batch up to its own is confirmed, reorder packets on a session, or do
//! I/O.

use std::collections::{HashMap, VecDeque};

use super::types::{Output, PersistOp, SessionId};

#[derive(Debug)]
pub(crate) struct Durability {
    /// A store is attached; without one everything is released at once and nothing persisted.
    enabled: bool,
    /// Changes to make durable, emitted as one `Output::Persist` per input.
    batch: Vec<PersistOp>,
    /// Sequence number of the batch being built.
    seq: u64,
    /// Effects that promise durability, released once their batch is confirmed.
    pending: VecDeque<(u64, Output)>,
    /// Sessions with a deferred packet: later packets on them wait too, to keep their order.
    waiting_sessions: HashMap<SessionId, usize>,
    /// Highest batch the store confirmed.
    confirmed: u64,
}

impl Durability {
    pub(super) fn new(enabled: bool) -> Self {
        Durability {
            enabled,
            batch: Vec::new(),
            seq: 1,
            pending: VecDeque::new(),
            waiting_sessions: HashMap::new(),
            confirmed: 0,
        }
    }

    /// Adds a change to the current batch (nothing when no store is attached).
    pub(super) fn persist(&mut self, op: PersistOp) {
        if self.enabled {
            self.batch.push(op);
        }
    }

    /// Whether a packet on `session` waits for the store, so a later one must wait too.
    pub(super) fn holds(&self, session: SessionId) -> bool {
        self.waiting_sessions.contains_key(&session)
    }

    /// Emits `effect` into `out` once everything persisted so far is durable (at once without
    /// a store).
    pub(super) fn after_persist(&mut self, out: &mut VecDeque<Output>, effect: Output) {
        if !self.enabled {
            out.push_back(effect);
            return;
        }
        if let Output::Send { session, .. } = &effect {
            *self.waiting_sessions.entry(*session).or_insert(0) += 1;
        }
        self.pending.push_back((self.seq, effect));
    }

    /// Closes the current batch: emits it as `Output::Persist`. Deferred effects of an input
    /// that persisted nothing wait only for the batches before it.
    pub(super) fn flush(&mut self, out: &mut VecDeque<Output>) {
        if self.batch.is_empty() {
            let prev = self.seq - 1;
            if self.confirmed >= prev {
                self.confirm(out, self.seq);
            } else {
                for (s, _) in self.pending.iter_mut().rev() {
                    if *s != self.seq {
                        break;
                    }
                    *s = prev;
                }
            }
            return;
        }
        let ops = std::mem::take(&mut self.batch);
        out.push_back(Output::Persist { seq: self.seq, ops });
        self.seq += 1;
    }

    /// The store made batch `seq` (and every earlier one) durable: release what waited on it.
    pub(super) fn confirm(&mut self, out: &mut VecDeque<Output>, seq: u64) {
        self.confirmed = self.confirmed.max(seq.min(self.seq - 1));
        while self.pending.front().is_some_and(|(s, _)| *s <= seq) {
            let Some((_, effect)) = self.pending.pop_front() else {
                break;
            };
            if let Output::Send { session, .. } = &effect {
                if let Some(n) = self.waiting_sessions.get_mut(session) {
                    *n -= 1;
                    if *n == 0 {
                        self.waiting_sessions.remove(session);
                    }
                }
            }
            out.push_back(effect);
        }
    }
}
