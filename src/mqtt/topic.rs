//! Topic names, topic filters and matching (§4.7).
//!
//! Owns: what a valid topic name and topic filter are, and whether a filter matches a name.
//! Pure string functions; the codec uses the validity checks, the broker side uses matching.
//! Must never: allocate per level, or match anything when either argument is invalid.

/// Longest string the wire format can carry (§1.5.3).
const MAX_STRING_LEN: usize = 65_535;

/// Checks shared by names and filters: at least one character, fits a UTF-8 string field,
/// no U+0000 (§4.7.3).
fn valid_topic_string(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_STRING_LEN && !s.contains('\0')
}

/// A topic name (PUBLISH, Will): non-empty and free of the wildcards `+` and `#`.
pub fn valid_topic_name(t: &str) -> bool {
    valid_topic_string(t) && !t.contains(['+', '#'])
}

/// A topic filter (SUBSCRIBE, UNSUBSCRIBE): non-empty; `#` only as the whole last level;
/// `+` only as a whole level (§4.7.1.2, §4.7.1.3).
pub fn valid_topic_filter(f: &str) -> bool {
    if !valid_topic_string(f) {
        return false;
    }
    let mut levels = f.split('/').peekable();
    while let Some(level) = levels.next() {
        let is_last = levels.peek().is_none();
        if level.contains('#') && (level != "#" || !is_last) {
            return false;
        }
        if level.contains('+') && level != "+" {
            return false;
        }
    }
    true
}

/// Whether `topic` (a topic name) is matched by `filter` (§4.7).
///
/// `+` matches exactly one level (possibly empty), `#` matches the parent level and any number
/// of child levels, so `sport/#` matches `sport`. Topics starting with `$` are not matched by
/// filters starting with a wildcard (§4.7.2). Returns false if either argument is invalid.
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    if !valid_topic_filter(filter) || !valid_topic_name(topic) {
        return false;
    }
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut filter_levels = filter.split('/');
    let mut topic_levels = topic.split('/');
    loop {
        match (filter_levels.next(), topic_levels.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(f), Some(t)) if f == t => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_matches_table() {
        // (filter, topic, expected)
        let table: &[(&str, &str, bool)] = &[
            // exact
            ("sport/tennis", "sport/tennis", true),
            ("sport/tennis", "sport/Tennis", false),
            ("sport/tennis", "sport/tennis/", false),
            ("/", "/", true),
            // multi-level wildcard (§4.7.1.2)
            ("sport/tennis/player1/#", "sport/tennis/player1", true),
            (
                "sport/tennis/player1/#",
                "sport/tennis/player1/ranking",
                true,
            ),
            (
                "sport/tennis/player1/#",
                "sport/tennis/player1/score/wimbledon",
                true,
            ),
            ("sport/#", "sport", true),
            ("sport/#", "sports", false),
            ("sport/#", "sport/", true),
            ("#", "sport/tennis", true),
            ("#", "/", true),
            // single-level wildcard (§4.7.1.3)
            ("sport/tennis/+", "sport/tennis/player1", true),
            ("sport/tennis/+", "sport/tennis/player2", true),
            ("sport/tennis/+", "sport/tennis/player1/ranking", false),
            ("sport/+", "sport", false),
            ("sport/+", "sport/", true),
            ("+", "sport", true),
            ("+", "/finance", false),
            ("+/+", "/finance", true),
            ("/+", "/finance", true),
            ("+/tennis/#", "sport/tennis/player1", true),
            ("+/+/+", "a/b", false),
            // $-topics (§4.7.2)
            ("#", "$SYS/broker/uptime", false),
            ("+/monitor/Clients", "$SYS/monitor/Clients", false),
            ("$SYS/#", "$SYS/monitor/Clients", true),
            ("$SYS/monitor/+", "$SYS/monitor/Clients", true),
            ("a/#", "a/$SYS", true),
            // invalid arguments never match
            ("sport/tennis#", "sport/tennis#", false),
            ("sport/#/ranking", "sport/x/ranking", false),
            ("sport+", "sport+", false),
            ("a", "", false),
            ("", "a", false),
            ("#", "a/+", false),
        ];
        for &(filter, topic, expected) in table {
            assert_eq!(
                topic_matches(filter, topic),
                expected,
                "filter {filter:?} topic {topic:?}"
            );
        }
    }

    #[test]
    fn topic_name_validity() {
        for ok in [
            "a",
            "/",
            "a/b",
            "$SYS/x",
            " ",
            "sport/tennis/player1",
            "ü/ß",
        ] {
            assert!(valid_topic_name(ok), "{ok:?}");
        }
        for bad in ["", "a/+", "#", "a/#", "a+b", "a\0b"] {
            assert!(!valid_topic_name(bad), "{bad:?}");
        }
        assert!(valid_topic_name(&"a".repeat(65_535)));
        assert!(!valid_topic_name(&"a".repeat(65_536)));
    }

    #[test]
    fn topic_filter_validity() {
        for ok in [
            "#",
            "+",
            "+/+",
            "/+",
            "sport/#",
            "sport/+/player1",
            "+/tennis/#",
            "a/b",
            "/",
        ] {
            assert!(valid_topic_filter(ok), "{ok:?}");
        }
        for bad in [
            "",
            "sport/tennis#",
            "sport/#/ranking",
            "sport+",
            "#/a",
            "a/##",
            "++",
            "a\0",
        ] {
            assert!(!valid_topic_filter(bad), "{bad:?}");
        }
    }
}
