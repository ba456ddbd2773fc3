//! Per-device topic-id table (spec §6.5, §7.3: tables are per client, never shared).
//!
//! Owns the mapping between normal topic ids and topic names for one device, bounded by
//! `limits.max_topics_per_device`. Pre-defined ids and short names live outside it.

use std::collections::HashMap;

/// Normal topic ids of one device.
#[derive(Debug, Default, Clone)]
pub(super) struct TopicTable {
    by_id: HashMap<u16, Entry>,
    by_name: HashMap<String, u16>,
    next_id: u16,
}

#[derive(Debug, Clone)]
struct Entry {
    name: String,
    /// The device knows this id: it registered it, got it in a SUBACK, or acknowledged our
    /// REGISTER. Until then a downlink PUBLISH must wait for the REGACK.
    known_by_device: bool,
}

/// Why a topic could not be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TopicTableFull {
    Full,
}

impl TopicTable {
    pub(super) fn name(&self, id: u16) -> Option<&str> {
        self.by_id.get(&id).map(|e| e.name.as_str())
    }

    /// The id of `name` and whether the device already knows it.
    pub(super) fn id_of(&self, name: &str) -> Option<(u16, bool)> {
        let id = *self.by_name.get(name)?;
        let known = self.by_id.get(&id).is_some_and(|e| e.known_by_device);
        Some((id, known))
    }

    /// Returns the id for `name`, adding it when absent. `known_by_device` marks it as known
    /// (an existing unknown entry is upgraded, never downgraded).
    pub(super) fn get_or_insert(
        &mut self,
        name: &str,
        known_by_device: bool,
        limit: usize,
    ) -> Result<u16, TopicTableFull> {
        if let Some(&id) = self.by_name.get(name) {
            if known_by_device {
                if let Some(e) = self.by_id.get_mut(&id) {
                    e.known_by_device = true;
                }
            }
            return Ok(id);
        }
        // 0x0000 and 0xFFFF are reserved (§5.3.11); the usable space is 65534 ids.
        if self.by_id.len() >= limit.min(0xFFFE) {
            return Err(TopicTableFull::Full);
        }
        let id = loop {
            self.next_id = match self.next_id {
                0xFFFE | 0xFFFF => 1,
                n => n + 1,
            };
            if !self.by_id.contains_key(&self.next_id) {
                break self.next_id;
            }
        };
        self.by_id.insert(
            id,
            Entry {
                name: name.to_owned(),
                known_by_device,
            },
        );
        self.by_name.insert(name.to_owned(), id);
        Ok(id)
    }

    pub(super) fn mark_known(&mut self, id: u16) {
        if let Some(e) = self.by_id.get_mut(&id) {
            e.known_by_device = true;
        }
    }

    /// The device no longer knows `id` (it said "invalid topic id"): register it again.
    pub(super) fn mark_unknown(&mut self, id: u16) {
        if let Some(e) = self.by_id.get_mut(&id) {
            e.known_by_device = false;
        }
    }

    /// Forgets every device-side acknowledgement, e.g. after the device reconnects: ids stay
    /// stable, but each is registered again before its next PUBLISH.
    pub(super) fn mark_all_unknown(&mut self) {
        for e in self.by_id.values_mut() {
            e.known_by_device = false;
        }
    }

    pub(super) fn remove(&mut self, id: u16) -> Option<String> {
        let e = self.by_id.remove(&id)?;
        self.by_name.remove(&e.name);
        Some(e.name)
    }

    /// Every entry as (id, name, known by the device), sorted by id, for the store.
    pub(super) fn entries(&self) -> Vec<(u16, String, bool)> {
        let mut v: Vec<_> = self
            .by_id
            .iter()
            .map(|(id, e)| (*id, e.name.clone(), e.known_by_device))
            .collect();
        v.sort_unstable_by_key(|e| e.0);
        v
    }

    /// Puts back an entry read from the store.
    pub(super) fn restore(&mut self, id: u16, name: String, known_by_device: bool) {
        if id == 0 || id == 0xFFFF || self.by_name.contains_key(&name) {
            return;
        }
        self.by_name.insert(name.clone(), id);
        self.by_id.insert(
            id,
            Entry {
                name,
                known_by_device,
            },
        );
        self.next_id = self.next_id.max(id);
    }

    pub(super) fn clear(&mut self) {
        self.by_id.clear();
        self.by_name.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_unique_and_skip_reserved() {
        let mut t = TopicTable::default();
        let a = t.get_or_insert("a/b", true, 10).unwrap();
        let b = t.get_or_insert("c/d", false, 10).unwrap();
        assert_ne!(a, b);
        assert_ne!(a, 0);
        assert_eq!(t.get_or_insert("a/b", false, 10), Ok(a));
        assert_eq!(t.id_of("a/b"), Some((a, true)));
        assert_eq!(t.id_of("c/d"), Some((b, false)));
        t.mark_known(b);
        assert_eq!(t.id_of("c/d"), Some((b, true)));
        assert_eq!(t.name(a), Some("a/b"));
    }

    #[test]
    fn limit_is_enforced() {
        let mut t = TopicTable::default();
        t.get_or_insert("a", true, 2).unwrap();
        t.get_or_insert("b", true, 2).unwrap();
        assert_eq!(t.get_or_insert("c", true, 2), Err(TopicTableFull::Full));
        // An existing name is still found when full.
        assert!(t.get_or_insert("a", true, 2).is_ok());
    }

    #[test]
    fn wraps_without_reusing_live_ids_or_reserved_values() {
        let mut t = TopicTable {
            next_id: 0xFFFD,
            ..Default::default()
        };
        let a = t.get_or_insert("a", true, 100).unwrap();
        let b = t.get_or_insert("b", true, 100).unwrap();
        assert_eq!(a, 0xFFFE);
        assert_eq!(b, 1);
    }

    #[test]
    fn remove_frees_the_name() {
        let mut t = TopicTable::default();
        let a = t.get_or_insert("a", true, 1).unwrap();
        assert_eq!(t.remove(a).as_deref(), Some("a"));
        assert!(t.id_of("a").is_none());
        assert!(t.get_or_insert("b", true, 1).is_ok());
    }
}
