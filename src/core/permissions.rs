//! Topic permissions of a device (`devices[].publish` / `devices[].subscribe`): whether a topic
//! it publishes to (its will included) lies within a pattern, and whether every topic a filter
//! it subscribes to can match does.
//!
//! A pattern is an MQTT topic filter in which `{client_id}` stands for the device's ClientId.
//! The ClientId is never pasted into the pattern and re-parsed: each level is compared on its
//! own, and where a pattern level has `{client_id}`, the topic's level must contain the
//! ClientId there literally. So a ClientId with `+` or `#` never acts as a wildcard, and one
//! with `/` never matches (a topic level holds no `/`): such a device cannot leave its topics by
//! its choice of name. As in MQTT (§4.7.2), a pattern's leading `+` or `#` does not reach topics
//! that start with `$`.
//!
//! Owns the matching. Must never: allocate (it runs for every PUBLISH of a restricted
//! device), or decide what a refusal looks like (the device's state machine answers).

use super::rules::AdmissionRules;

/// The `publish` patterns of rule `rule` (`None`: the device may publish anywhere).
pub(crate) fn publish_patterns(rules: &AdmissionRules, rule: Option<usize>) -> Option<&[String]> {
    rules.devices.get(rule?)?.publish.as_deref()
}

/// The `subscribe` patterns of rule `rule` (`None`: the device may subscribe to anything).
pub(crate) fn subscribe_patterns(rules: &AdmissionRules, rule: Option<usize>) -> Option<&[String]> {
    rules.devices.get(rule?)?.subscribe.as_deref()
}

/// Whether `client_id` may publish to the topic name `topic` under `patterns` (`None`: no
/// restriction; an empty list allows nothing).
pub(crate) fn may_publish(patterns: Option<&[String]>, client_id: &str, topic: &str) -> bool {
    patterns.is_none_or(|ps| ps.iter().any(|p| topic_matches(p, client_id, topic)))
}

/// Whether `client_id` may subscribe to `filter` under `patterns`: every topic the filter can
/// match must lie within one pattern.
pub(crate) fn may_subscribe(patterns: Option<&[String]>, client_id: &str, filter: &str) -> bool {
    patterns.is_none_or(|ps| ps.iter().any(|p| filter_covered(p, client_id, filter)))
}

/// Whether the topic name `topic` matches `pattern`.
pub(crate) fn topic_matches(pattern: &str, client_id: &str, topic: &str) -> bool {
    let mut pat = pattern.split('/');
    let mut top = topic.split('/');
    let mut first = true;
    loop {
        match (pat.next(), top.next()) {
            // `a/#` matches `a` too (MQTT §4.7.1.2).
            (Some("#"), t) => return !(first && t.is_some_and(|t| t.starts_with('$'))),
            (Some("+"), Some(t)) => {
                if first && t.starts_with('$') {
                    return false;
                }
            }
            (Some(p), Some(t)) => {
                if !level_matches(p, client_id, t) {
                    return false;
                }
            }
            (None, None) => return true,
            _ => return false,
        }
        first = false;
    }
}

/// Whether every topic `filter` can match also matches `pattern`, level by level: a pattern
/// `#` covers whatever follows, a pattern `+` covers one level (a filter `+` included), a
/// filter `#` is covered only by a pattern `#`, a filter `+` only by a pattern `+` or `#`.
pub(crate) fn filter_covered(pattern: &str, client_id: &str, filter: &str) -> bool {
    let mut pat = pattern.split('/');
    let mut fil = filter.split('/');
    let mut first = true;
    loop {
        match (pat.next(), fil.next()) {
            (Some("#"), f) => return !(first && f.is_some_and(|f| f.starts_with('$'))),
            (_, Some("#")) => return false,
            (Some("+"), Some(f)) => {
                if first && f.starts_with('$') {
                    return false;
                }
            }
            (Some(_), Some("+")) => return false,
            (Some(p), Some(f)) => {
                if !level_matches(p, client_id, f) {
                    return false;
                }
            }
            (None, None) => return true,
            _ => return false,
        }
        first = false;
    }
}

/// One literal pattern level against one topic level: equal, with each `{client_id}` in the
/// pattern standing for exactly the ClientId's characters.
fn level_matches(pattern: &str, client_id: &str, level: &str) -> bool {
    const FIELD: &str = "{client_id}";
    let mut rest = level;
    for (i, piece) in pattern.split(FIELD).enumerate() {
        if i > 0 {
            match rest.strip_prefix(client_id) {
                Some(r) => rest = r,
                None => return false,
            }
        }
        match rest.strip_prefix(piece) {
            Some(r) => rest = r,
            None => return false,
        }
    }
    rest.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_match_level_by_level() {
        let m = |p, t| topic_matches(p, "dev1", t);
        assert!(m("sensors/{client_id}/#", "sensors/dev1/temp"));
        assert!(m("sensors/{client_id}/#", "sensors/dev1"));
        assert!(!m("sensors/{client_id}/#", "sensors/dev2/temp"));
        assert!(!m("sensors/{client_id}/#", "sensors/dev10/temp"));
        assert!(m("a/+/c", "a/b/c"));
        assert!(!m("a/+/c", "a/c"));
        assert!(!m("a/+", "a/b/c"));
        assert!(m("x/pre-{client_id}-post", "x/pre-dev1-post"));
        assert!(!m("x/pre-{client_id}-post", "x/pre-dev1-pos"));
        assert!(m("x/{client_id}{client_id}", "x/dev1dev1"));
        assert!(!m("x/{client_id}{client_id}", "x/dev1"));
        assert!(m("#", "anything/at/all"));
        assert!(!m("#", "$SYS/broker"));
        assert!(!m("+/x", "$SYS/x"));
        assert!(m("$SYS/#", "$SYS/broker"));
        assert!(m("a//b", "a//b"));
        assert!(!m("a/b", "a/b/"));
    }

    #[test]
    fn a_client_id_never_widens_a_pattern() {
        // Substituted literally: the ClientId `+` matches only a level that is `+`, which no
        // topic name has; `#` likewise; a `/` in it never fits one level.
        assert!(!topic_matches("s/{client_id}", "+", "s/x"));
        assert!(!topic_matches("s/{client_id}/t", "#", "s/x/t"));
        assert!(!topic_matches("s/{client_id}", "a/b", "s/a/b"));
        assert!(!filter_covered("s/{client_id}", "+", "s/+"));
        assert!(!filter_covered("s/{client_id}/#", "#", "s/#"));
        assert!(!filter_covered("s/{client_id}", "a/b", "s/a/b"));
        assert!(topic_matches("s/{client_id}", "a.b", "s/a.b"));
    }

    #[test]
    fn filters_are_covered_only_when_every_topic_is() {
        let c = |p, f| filter_covered(p, "dev1", f);
        assert!(c("cmd/{client_id}/#", "cmd/dev1/#"));
        assert!(c("cmd/{client_id}/#", "cmd/dev1/+/x"));
        assert!(c("cmd/{client_id}/#", "cmd/dev1"));
        assert!(!c("cmd/{client_id}/#", "cmd/+/x"));
        assert!(!c("cmd/{client_id}/#", "cmd/#"));
        assert!(c("a/+/c", "a/+/c"));
        assert!(c("a/+/c", "a/b/c"));
        assert!(!c("a/+/c", "a/+/#"));
        assert!(!c("a/b", "a/+"));
        assert!(!c("a/b", "#"));
        assert!(c("#", "#"));
        assert!(c("#", "+/x"));
        assert!(!c("#", "$SYS/#"));
        assert!(!c("a/+", "a"));
        assert!(c("a/#", "a"));
    }

    #[test]
    fn no_patterns_means_no_restriction_and_an_empty_list_nothing() {
        assert!(may_publish(None, "d", "any"));
        assert!(!may_publish(Some(&[]), "d", "any"));
        let ps = ["a/#".to_owned(), "b/{client_id}".to_owned()];
        assert!(may_publish(Some(&ps), "d", "b/d"));
        assert!(may_subscribe(Some(&ps), "d", "a/+"));
        assert!(!may_subscribe(Some(&ps), "d", "b/+"));
    }
}
