//! Topic resolution, defined once: the per-device topic-id table (spec §6.5, §7.3: tables are
//! per client, never shared), the predefined topics (§2.6.x, `topics.predefined`), short names
//! (§6.7), and each way a TopicId or a filter becomes a topic name and back: an uplink
//! PUBLISH's TopicRef (QoS -1's included), a downlink topic name as a TopicRef or a REGISTER,
//! SUBSCRIBE's and UNSUBSCRIBE's filters.
//!
//! The table is bounded by `limits.max_topics_per_device`. Must never: send, or keep state
//! beyond the table and the predefined topics.

use std::collections::HashMap;

use crate::codec::{ReturnCode, TopicFilter, TopicRef};
use crate::mqtt;

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

/// The predefined topics (`topics.predefined`), both ways; the same for every device.
#[derive(Debug, Default)]
pub(crate) struct Predefined {
    by_id: HashMap<u16, String>,
    by_name: HashMap<String, u16>,
}

impl Predefined {
    pub(crate) fn new(topics: &[(u16, String)]) -> Self {
        Predefined {
            by_id: topics.iter().cloned().collect(),
            by_name: topics
                .iter()
                .map(|(id, name)| (name.clone(), *id))
                .collect(),
        }
    }

    pub(crate) fn name(&self, id: u16) -> Option<&str> {
        self.by_id.get(&id).map(String::as_str)
    }

    pub(crate) fn id(&self, name: &str) -> Option<u16> {
        self.by_name.get(name).copied()
    }
}

/// A short topic name as text; short names are two characters (spec §6.7).
pub(crate) fn short_name(s: [u8; 2]) -> Option<String> {
    std::str::from_utf8(&s).ok().map(str::to_owned)
}

/// The topic name an uplink PUBLISH's TopicId names: a normal id in the device's `table`
/// (`None` for QoS -1, which has no normal ids, §6.8), a predefined id, or a short name that is
/// a valid topic name. `None` when it names nothing.
pub(crate) fn publish_name(
    predefined: &Predefined,
    table: Option<&TopicTable>,
    topic: TopicRef,
) -> Option<String> {
    match topic {
        TopicRef::Id(id) => table?.name(id).map(str::to_owned),
        TopicRef::Predefined(id) => predefined.name(id).map(str::to_owned),
        TopicRef::Short(s) => short_name(s).filter(|n| mqtt::valid_topic_name(n)),
    }
}

/// The id a device's REGISTER gets for `name` (known by the device from now on); Err is the
/// REGACK's return code.
pub(crate) fn register_name(
    table: &mut TopicTable,
    name: &str,
    limit: usize,
) -> Result<u16, ReturnCode> {
    if !mqtt::valid_topic_name(name) {
        return Err(ReturnCode::NotSupported);
    }
    table
        .get_or_insert(name, true, limit)
        .map_err(|_| ReturnCode::Congestion)
}

/// How a downlink topic name is named to the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DownlinkTopic {
    /// Usable as is: an id the device knows, a predefined id or a short name.
    Ready(TopicRef),
    /// An id in the table the device does not know yet: REGISTER it (unless one is on its way).
    Unregistered(u16),
    /// An id just added to the table: REGISTER it.
    Added(u16),
}

/// Names downlink `topic` to the device: its table id, a predefined id or a short name, else a
/// new table id. `None` when the table is full (`limit`).
pub(crate) fn downlink_topic(
    predefined: &Predefined,
    table: &mut TopicTable,
    topic: &str,
    limit: usize,
) -> Option<DownlinkTopic> {
    if let Some((id, known)) = table.id_of(topic) {
        return Some(if known {
            DownlinkTopic::Ready(TopicRef::Id(id))
        } else {
            DownlinkTopic::Unregistered(id)
        });
    }
    if let Some(id) = predefined.id(topic) {
        return Some(DownlinkTopic::Ready(TopicRef::Predefined(id)));
    }
    if let Ok(s) = <[u8; 2]>::try_from(topic.as_bytes()) {
        return Some(DownlinkTopic::Ready(TopicRef::Short(s)));
    }
    let id = table.get_or_insert(topic, false, limit).ok()?;
    Some(DownlinkTopic::Added(id))
}

/// SUBSCRIBE's topic as the MQTT filter and the TopicId its SUBACK carries (0 for a wildcard or
/// a short name: ids come later by REGISTER). A topic name gets a table id the device knows.
/// Err is the SUBACK's TopicId and return code when it cannot be subscribed.
pub(crate) fn subscribe_filter(
    predefined: &Predefined,
    table: &mut TopicTable,
    topic: &TopicFilter,
    limit: usize,
) -> Result<(String, u16), (u16, ReturnCode)> {
    match topic {
        TopicFilter::Name(name) => {
            if !mqtt::valid_topic_filter(name) {
                return Err((0, ReturnCode::NotSupported));
            }
            if mqtt::valid_topic_name(name) {
                match table.get_or_insert(name, true, limit) {
                    Ok(id) => Ok((name.clone(), id)),
                    Err(_) => Err((0, ReturnCode::Congestion)),
                }
            } else {
                Ok((name.clone(), 0)) // wildcard: ids come later by REGISTER
            }
        }
        TopicFilter::Predefined(id) => match predefined.name(*id) {
            Some(name) => Ok((name.to_owned(), *id)),
            None => Err((*id, ReturnCode::InvalidTopicId)),
        },
        TopicFilter::Short(s) => match short_name(*s).filter(|n| mqtt::valid_topic_filter(n)) {
            Some(n) => Ok((n, 0)),
            None => Err((0, ReturnCode::NotSupported)),
        },
    }
}

/// UNSUBSCRIBE's topic as the MQTT filter; `None` when it names no valid filter.
pub(crate) fn unsubscribe_filter(predefined: &Predefined, topic: &TopicFilter) -> Option<String> {
    let filter = match topic {
        TopicFilter::Name(n) => Some(n.clone()),
        TopicFilter::Predefined(id) => predefined.name(*id).map(str::to_owned),
        TopicFilter::Short(s) => short_name(*s),
    };
    filter.filter(|f| mqtt::valid_topic_filter(f))
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
