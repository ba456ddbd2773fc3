//! The filters of the aggregate's table by level, so a topic finds the filters that match it by
//! walking its levels (cost: the topic's depth times the `+` branches), not by testing every
//! filter: 100,000 devices with a `cmd/<id>/#` each are 100,000 wildcard filters.
//!
//! Matching is MQTT 3.1.1 §4.7, the same as `mqtt::topic_matches` (a property test holds them
//! equal): `+` one level, `#` the parent level and every level below, and a topic starting with
//! `$` is not matched by a filter starting with a wildcard.
//!
//! Owns: [`Trie`]. Must never: hold anything but filter names.

use std::collections::HashMap;

#[derive(Debug, Default)]
struct Node {
    /// Literal levels, and `+`.
    children: HashMap<String, Node>,
    /// The filter that ends at this node.
    here: Option<String>,
    /// The filter `<this node's path>/#` (or `#` at the root).
    hash: Option<String>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.here.is_none() && self.hash.is_none()
    }
}

/// Filter names by level.
#[derive(Debug, Default)]
pub(super) struct Trie {
    root: Node,
}

impl Trie {
    pub(super) fn insert(&mut self, filter: &str) {
        let mut node = &mut self.root;
        for level in filter.split('/') {
            if level == "#" {
                node.hash = Some(filter.to_owned());
                return;
            }
            node = node.children.entry(level.to_owned()).or_default();
        }
        node.here = Some(filter.to_owned());
    }

    pub(super) fn remove(&mut self, filter: &str) {
        let levels: Vec<&str> = filter.split('/').collect();
        remove(&mut self.root, &levels);
    }

    /// Calls `found` with every filter that matches `topic`, each once.
    pub(super) fn matches<'a>(&'a self, topic: &str, found: &mut impl FnMut(&'a str)) {
        let levels: Vec<&str> = topic.split('/').collect();
        walk(&self.root, &levels, 0, topic.starts_with('$'), found);
    }
}

/// Removes the filter of `levels` below `node`; true when `node` is left empty.
fn remove(node: &mut Node, levels: &[&str]) -> bool {
    match levels.split_first() {
        None => node.here = None,
        Some((&"#", _)) => node.hash = None,
        Some((first, rest)) => {
            if let Some(child) = node.children.get_mut(*first) {
                if remove(child, rest) {
                    node.children.remove(*first);
                }
            }
        }
    }
    node.is_empty()
}

fn walk<'a>(
    node: &'a Node,
    levels: &[&str],
    i: usize,
    dollar: bool,
    found: &mut impl FnMut(&'a str),
) {
    // A wildcard never matches the first level of a `$` topic.
    let wild = !(i == 0 && dollar);
    if let (Some(f), true) = (&node.hash, wild) {
        found(f);
    }
    let Some(level) = levels.get(i) else {
        if let Some(f) = &node.here {
            found(f);
        }
        return;
    };
    if let Some(child) = node.children.get(*level) {
        walk(child, levels, i + 1, dollar, found);
    }
    if let (Some(child), true, false) = (node.children.get("+"), wild, *level == "+") {
        walk(child, levels, i + 1, dollar, found);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;
    use crate::mqtt;

    fn found(t: &Trie, topic: &str) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        t.matches(topic, &mut |f| {
            assert!(out.insert(f.to_owned()), "{f} found twice for {topic}");
        });
        out
    }

    #[test]
    fn levels_plus_hash_and_dollar_topics() {
        let mut t = Trie::default();
        for f in ["a/b", "a/+", "a/#", "#", "+/b", "$SYS/#", "a/b/c"] {
            t.insert(f);
        }
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        assert_eq!(found(&t, "a/b"), set(&["a/b", "a/+", "a/#", "#", "+/b"]));
        assert_eq!(found(&t, "a"), set(&["a/#", "#"]));
        assert_eq!(found(&t, "$SYS/x"), set(&["$SYS/#"]));
        t.remove("a/#");
        t.remove("#");
        assert_eq!(found(&t, "a"), set(&[]));
        assert_eq!(found(&t, "a/b/c"), set(&["a/b/c"]));
    }

    fn level() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("a".to_string()),
            Just("b".to_string()),
            Just(String::new()),
            Just("$s".to_string()),
        ]
    }

    fn filter() -> impl Strategy<Value = String> {
        let lvl = prop_oneof![3 => level(), 1 => Just("+".to_string())];
        (prop::collection::vec(lvl, 1..4), any::<bool>())
            .prop_map(|(mut v, hash)| {
                if hash {
                    v.push("#".into());
                }
                v.join("/")
            })
            .prop_filter("a filter is not empty", |f| !f.is_empty())
    }

    fn topic() -> impl Strategy<Value = String> {
        prop::collection::vec(level(), 1..5)
            .prop_map(|v| v.join("/"))
            .prop_filter("a topic is not empty", |t| !t.is_empty())
    }

    proptest! {
        #[test]
        fn the_trie_agrees_with_topic_matches(
            filters in prop::collection::btree_set(filter(), 0..12),
            removed in prop::collection::vec(any::<prop::sample::Index>(), 0..4),
            topics in prop::collection::vec(topic(), 1..8),
        ) {
            let mut t = Trie::default();
            let mut held: BTreeSet<String> = filters.clone();
            for f in &filters {
                t.insert(f);
            }
            let all: Vec<String> = filters.iter().cloned().collect();
            if !all.is_empty() {
                for r in removed {
                    let f = &all[r.index(all.len())];
                    t.remove(f);
                    held.remove(f);
                }
            }
            for topic in topics {
                let want: BTreeSet<String> = held
                    .iter()
                    .filter(|f| mqtt::topic_matches(f, &topic))
                    .cloned()
                    .collect();
                prop_assert_eq!(found(&t, &topic), want, "topic {}", topic);
            }
        }
    }
}
