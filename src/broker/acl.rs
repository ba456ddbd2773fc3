//! `broker.embedded.acl_file`: who may publish and subscribe to what on the embedded broker,
//! in mosquitto's ACL file format.
//!
//! ```text
//! # comment
//! topic read public/#            # before any `user` line: anonymous clients
//! user homeassistant             # the lines below, up to the next `user`, are this user's
//! topic readwrite homeassistant/#
//! topic deny homeassistant/secret/#
//! pattern read devices/%c/#      # every client, with %c = its ClientId, %u = its user name
//! ```
//!
//! `topic`/`pattern` take an access (`read`, `write`, `readwrite`, `deny`; none = `readwrite`)
//! and a topic filter (the rest of the line, so it may contain spaces). As in mosquitto,
//! `pattern` lines apply to every client wherever they stand in the file; a pattern with `%u`
//! never applies to an anonymous client, and one whose ClientId or user name contains `+` or
//! `#` applies to nobody.
//!
//! Checks: a PUBLISH to a topic is allowed when some applicable `write` rule matches it and no
//! `deny` rule does. A SUBSCRIBE filter is allowed when some applicable `read` rule covers it
//! (every topic the filter matches, the rule matches too) and no `deny` rule overlaps it (no
//! topic matches both). mosquitto checks `read` again for each delivered message and lets a
//! wide subscription through; the broker offers a hook per SUBSCRIBE, not per delivery, so a
//! subscription that could deliver a topic the client may not read is refused as a whole.
//! A client that no rule applies to may do nothing. Owns: parsing the file and the checks.
//! Must never: name the broker crate.

/// Longest line of an ACL file.
const MAX_LINE: usize = 4096;

/// Why an ACL file was refused: the line (1-based) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct AclError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

/// What a rule grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Read,
    Write,
    ReadWrite,
    Deny,
}

impl Access {
    fn reads(self) -> bool {
        matches!(self, Access::Read | Access::ReadWrite)
    }

    fn writes(self) -> bool {
        matches!(self, Access::Write | Access::ReadWrite)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    access: Access,
    filter: String,
}

/// A parsed ACL file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Acl {
    /// `topic` lines before any `user` line.
    anonymous: Vec<Rule>,
    /// `topic` lines of each `user` section, in file order (a user may have several sections).
    users: std::collections::HashMap<String, Vec<Rule>>,
    /// `pattern` lines, for everyone.
    patterns: Vec<Rule>,
}

/// Who is asking: the ClientId and the user name of the CONNECT (`None`: anonymous).
#[derive(Debug, Clone, Copy)]
pub struct Client<'a> {
    /// The ClientId.
    pub client_id: &'a str,
    /// The user name, `None` for an anonymous client.
    pub username: Option<&'a str>,
}

impl Acl {
    /// Reads an ACL file's text.
    pub fn parse(text: &str) -> Result<Acl, AclError> {
        let mut acl = Acl::default();
        let mut section: Option<String> = None;
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let err = |reason: String| AclError { line, reason };
            if raw.len() > MAX_LINE {
                return Err(err(format!("longer than {MAX_LINE} bytes")));
            }
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let (keyword, rest) = trimmed
                .split_once(char::is_whitespace)
                .map(|(k, r)| (k, r.trim_start()))
                .unwrap_or((trimmed, ""));
            match keyword {
                "user" => {
                    if rest.is_empty() {
                        return Err(err("`user` needs a user name".into()));
                    }
                    section = Some(rest.to_owned());
                    acl.users.entry(rest.to_owned()).or_default();
                }
                "topic" | "pattern" => {
                    let rule = parse_rule(keyword, rest).map_err(err)?;
                    if keyword == "pattern" {
                        acl.patterns.push(rule);
                    } else {
                        match &section {
                            None => acl.anonymous.push(rule),
                            Some(user) => acl.users.entry(user.clone()).or_default().push(rule),
                        }
                    }
                }
                other => {
                    return Err(err(format!(
                        "unknown keyword `{other}` (expected user, topic or pattern)"
                    )))
                }
            }
        }
        Ok(acl)
    }

    /// The rules that apply to `client`, patterns substituted.
    fn rules<'s>(&'s self, client: Client<'_>) -> impl Iterator<Item = (Access, String)> + 's {
        let own = match client.username {
            None => Some(&self.anonymous),
            Some(user) => self.users.get(user),
        };
        let fixed = own
            .into_iter()
            .flatten()
            .map(|r| (r.access, r.filter.clone()));
        let client_id = client.client_id.to_owned();
        let username = client.username.map(str::to_owned);
        let patterns = self.patterns.iter().filter_map(move |r| {
            substitute(&r.filter, &client_id, username.as_deref()).map(|f| (r.access, f))
        });
        fixed.chain(patterns)
    }

    /// Whether `client` may publish to `topic`.
    pub fn may_publish(&self, client: Client<'_>, topic: &str) -> bool {
        let mut allowed = false;
        for (access, filter) in self.rules(client) {
            if covers(&filter, topic) {
                if access == Access::Deny {
                    return false;
                }
                allowed |= access.writes();
            }
        }
        allowed
    }

    /// Whether `client` may subscribe to `filter`.
    pub fn may_subscribe(&self, client: Client<'_>, filter: &str) -> bool {
        let mut allowed = false;
        for (access, rule) in self.rules(client) {
            if access == Access::Deny {
                if overlaps(&rule, filter) {
                    return false;
                }
            } else if access.reads() && covers(&rule, filter) {
                allowed = true;
            }
        }
        allowed
    }
}

fn parse_rule(keyword: &str, rest: &str) -> Result<Rule, String> {
    let (first, after) = rest
        .split_once(char::is_whitespace)
        .map(|(a, b)| (a, b.trim_start()))
        .unwrap_or((rest, ""));
    let access = match first {
        "read" => Some(Access::Read),
        "write" => Some(Access::Write),
        "readwrite" => Some(Access::ReadWrite),
        "deny" => Some(Access::Deny),
        _ => None,
    };
    let (access, filter) = match access {
        Some(a) => (a, after),
        None => (Access::ReadWrite, rest),
    };
    if filter.is_empty() {
        return Err(format!("`{keyword}` needs a topic filter"));
    }
    check_filter(filter).map_err(|reason| format!("`{filter}`: {reason}"))?;
    Ok(Rule {
        access,
        filter: filter.to_owned(),
    })
}

/// A valid MQTT topic filter: `#` only as the whole last level, `+` only as a whole level.
fn check_filter(filter: &str) -> Result<(), String> {
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
            return Err("`#` must be a whole level and the last one".into());
        }
        if level.contains('+') && *level != "+" {
            return Err("`+` must be a whole level".into());
        }
    }
    Ok(())
}

/// `%c` and `%u` replaced; `None` when the pattern cannot apply (no user name for `%u`, or a
/// value that would widen the filter).
fn substitute(pattern: &str, client_id: &str, username: Option<&str>) -> Option<String> {
    let wild = |s: &str| s.contains(['+', '#']);
    let mut out = pattern.to_owned();
    if out.contains("%c") {
        if wild(client_id) {
            return None;
        }
        out = out.replace("%c", client_id);
    }
    if pattern.contains("%u") {
        let user = username?;
        if wild(user) {
            return None;
        }
        out = out.replace("%u", user);
    }
    Some(out)
}

/// Whether every topic `filter` matches, `rule` matches too. With a plain topic as `filter`:
/// whether `rule` matches that topic. Wildcards in the first level do not match topics
/// starting with `$` (MQTT 3.1.1 §4.7.2).
fn covers(rule: &str, filter: &str) -> bool {
    let r: Vec<&str> = rule.split('/').collect();
    let f: Vec<&str> = filter.split('/').collect();
    if f[0].starts_with('$') && (r[0] == "+" || r[0] == "#") {
        return false;
    }
    covers_levels(&r, &f)
}

fn covers_levels(r: &[&str], f: &[&str]) -> bool {
    match (r.first(), f.first()) {
        (Some(&"#"), _) => true,
        (None, None) => true,
        (None, Some(_)) => false,
        // `a/#` also matches `a`.
        (Some(_), None) => r == ["#"],
        (Some(&"+"), Some(&fl)) => fl != "#" && covers_levels(&r[1..], &f[1..]),
        (Some(&rl), Some(&fl)) => rl == fl && covers_levels(&r[1..], &f[1..]),
    }
}

/// Whether some topic matches both filters.
fn overlaps(a: &str, b: &str) -> bool {
    let x: Vec<&str> = a.split('/').collect();
    let y: Vec<&str> = b.split('/').collect();
    let wild = |l: &str| l == "+" || l == "#";
    if (x[0].starts_with('$') && wild(y[0])) || (y[0].starts_with('$') && wild(x[0])) {
        return false;
    }
    overlaps_levels(&x, &y)
}

fn overlaps_levels(x: &[&str], y: &[&str]) -> bool {
    match (x.first(), y.first()) {
        (Some(&"#"), _) | (_, Some(&"#")) => true,
        (None, None) => true,
        (None, Some(_)) | (Some(_), None) => false,
        (Some(&a), Some(&b)) => {
            (a == "+" || b == "+" || a == b) && overlaps_levels(&x[1..], &y[1..])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "\
# anonymous clients
topic read public/#

user homeassistant
topic readwrite homeassistant/#
topic deny homeassistant/secret/#
topic read sensors/+/temperature
topic write commands/lamp 1

user alice
topic sensors/#

pattern read devices/%c/#
pattern write users/%u/out
";

    fn anon(id: &str) -> Client<'_> {
        Client {
            client_id: id,
            username: None,
        }
    }

    fn user<'a>(id: &'a str, name: &'a str) -> Client<'a> {
        Client {
            client_id: id,
            username: Some(name),
        }
    }

    #[test]
    fn sections_and_access() {
        let acl = Acl::parse(FILE).unwrap();
        let ha = user("ha", "homeassistant");
        assert!(acl.may_subscribe(ha, "homeassistant/light/#"));
        assert!(!acl.may_subscribe(ha, "homeassistant/secret/key"));
        // `homeassistant/#` overlaps the denied subtree: refused as a whole.
        assert!(!acl.may_subscribe(ha, "homeassistant/#"));
        assert!(acl.may_publish(ha, "homeassistant/light/set"));
        assert!(!acl.may_publish(ha, "homeassistant/secret/x"));
        assert!(acl.may_subscribe(ha, "sensors/kitchen/temperature"));
        assert!(acl.may_subscribe(ha, "sensors/+/temperature"));
        assert!(!acl.may_subscribe(ha, "sensors/#"));
        assert!(!acl.may_publish(ha, "sensors/kitchen/temperature"));
        // A filter with a space.
        assert!(acl.may_publish(ha, "commands/lamp 1"));
        assert!(!acl.may_subscribe(ha, "commands/lamp 1"));
        // Anonymous rules are not the user's.
        assert!(!acl.may_subscribe(ha, "public/x"));

        // No access word: readwrite.
        let alice = user("a1", "alice");
        assert!(acl.may_publish(alice, "sensors/x"));
        assert!(acl.may_subscribe(alice, "sensors/#"));
        assert!(!acl.may_subscribe(alice, "#"));

        let nobody = anon("anon-1");
        assert!(acl.may_subscribe(nobody, "public/news"));
        assert!(!acl.may_publish(nobody, "public/news"));
        assert!(!acl.may_subscribe(nobody, "sensors/#"));

        // A user with no section gets only the patterns.
        let mallory = user("m", "mallory");
        assert!(!acl.may_subscribe(mallory, "public/news"));
        assert!(acl.may_publish(mallory, "users/mallory/out"));
        assert!(!acl.may_publish(mallory, "users/alice/out"));
    }

    #[test]
    fn patterns_substitute() {
        let acl = Acl::parse(FILE).unwrap();
        assert!(acl.may_subscribe(anon("dev1"), "devices/dev1/#"));
        assert!(acl.may_subscribe(anon("dev1"), "devices/dev1/state"));
        assert!(!acl.may_subscribe(anon("dev1"), "devices/dev2/state"));
        assert!(!acl.may_subscribe(anon("dev1"), "devices/+/state"));
        // %u never applies to an anonymous client.
        assert!(!acl.may_publish(anon("dev1"), "users//out"));
        // A ClientId with a wildcard gets nothing from a pattern.
        assert!(!acl.may_subscribe(anon("#"), "devices/x/y"));
        assert!(!acl.may_subscribe(anon("+"), "devices/x/y"));
        assert!(!acl.may_publish(user("c", "a+b"), "users/a+b/out"));
    }

    #[test]
    fn dollar_topics_need_an_explicit_rule() {
        let acl = Acl::parse("topic read #\ntopic read $SYS/broker/#\n").unwrap();
        assert!(acl.may_subscribe(anon("c"), "a/b"));
        assert!(!acl.may_subscribe(anon("c"), "$SYS/x"));
        assert!(acl.may_subscribe(anon("c"), "$SYS/broker/load"));
        let deny = Acl::parse("topic read #\ntopic deny #\n").unwrap();
        assert!(!deny.may_subscribe(anon("c"), "a"));
    }

    #[test]
    fn filter_algebra() {
        assert!(covers("a/#", "a"));
        assert!(covers("a/#", "a/b/c"));
        assert!(covers("a/+", "a/b"));
        assert!(!covers("a/+", "a/#"));
        assert!(!covers("a/+", "a/b/c"));
        assert!(covers("+/+", "+/b"));
        assert!(!covers("a/b", "a/+"));
        assert!(!covers("a", "a/b"));
        assert!(overlaps("a/+", "+/b"));
        assert!(overlaps("a/#", "a"));
        assert!(!overlaps("a/b", "a/c"));
        assert!(!overlaps("a/b", "a/b/c"));
        assert!(overlaps("#", "x"));
    }

    #[test]
    fn malformed_lines_name_their_line() {
        let err = |text: &str| Acl::parse(text).unwrap_err();
        let e = err("topic read a\n\nfrobnicate a\n");
        assert_eq!(e.line, 3);
        assert!(
            e.reason.contains("unknown keyword `frobnicate`"),
            "{}",
            e.reason
        );
        let e = err("# c\nuser\n");
        assert_eq!(e.line, 2);
        assert!(e.reason.contains("user name"), "{}", e.reason);
        assert!(err("topic read").reason.contains("needs a topic filter"));
        assert!(err("topic").reason.contains("needs a topic filter"));
        assert!(err("topic read a/#/b").reason.contains("`#`"));
        assert!(err("pattern write a/b#").reason.contains("`#`"));
        assert!(err("topic read a/x+").reason.contains("`+`"));
        assert!(err(&"x".repeat(MAX_LINE + 1)).reason.contains("longer"));
    }

    #[test]
    fn empty_file_denies_everything() {
        let acl = Acl::parse("# nothing\n").unwrap();
        assert!(!acl.may_publish(anon("c"), "a"));
        assert!(!acl.may_subscribe(user("c", "u"), "a"));
    }
}
