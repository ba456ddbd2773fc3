//! The checked deserializers every section uses: integers in a range, checked strings and
//! socket addresses, durations, and lists whose entries are checked against the earlier ones
//! while they are read. Also the value checks shared with the command-line overrides
//! ([`check_log_level`], [`check_host`]).
//!
//! Sits below every other file of `config`: it imports only `duration`, never a section or
//! `mod.rs`. It knows no key names; a check for one key belongs with that key's section.
//! Owns: the shared deserializers and value checks.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use serde::de::{self, DeserializeOwned, DeserializeSeed, Deserializer, MapAccess, SeqAccess};
use serde::Deserialize;

use super::duration;

/// Checks a `log.level` / `--log` value: it must be a valid tracing EnvFilter directive.
pub fn check_log_level(level: &str) -> Result<(), String> {
    if level.trim().is_empty() {
        return Err("log level is empty (use e.g. `info` or `info,mqttsn_gateway=debug`)".into());
    }
    // EnvFilter reads a bare word it does not know (`verbose`) as a target name, which would
    // silence everything else: only level names may stand alone.
    for directive in level.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let lvl = match directive.rsplit_once('=') {
            Some((_target, lvl)) => lvl,
            None => directive,
        };
        if !LEVELS.contains(&lvl.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "invalid log level `{level}`: `{lvl}` is not a level; use one of {} (for one \
                 module: `target=level`, e.g. info,mqttsn_gateway::core=debug)",
                LEVELS.join(", ")
            ));
        }
    }
    tracing_subscriber::EnvFilter::builder()
        .parse(level)
        .map(drop)
        .map_err(|err| format!("invalid log level `{level}`: {err}"))
}

/// The level names `log.level` accepts.
const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// The filter the gateway runs with for `log.level`: a bare level (`info`) applies to the
/// gateway, while the libraries (the embedded broker, TLS, HTTP) stay at `warn` unless that is
/// more verbose than asked (`error`, `off`) or a directive names them.
pub fn effective_log_filter(level: &str) -> String {
    let mut directives: Vec<String> = Vec::new();
    let mut global = None;
    for d in level.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        if d.contains('=') {
            directives.push(d.to_owned());
        } else {
            global = Some(d.to_ascii_lowercase());
        }
    }
    let gateway = global.unwrap_or_else(|| "info".to_owned());
    let libraries = match gateway.as_str() {
        "off" | "error" => gateway.clone(),
        _ => "warn".to_owned(),
    };
    let mut out = vec![libraries, format!("mqttsn_gateway={gateway}")];
    out.extend(directives);
    out.join(",")
}

pub(super) fn check_host(host: &str) -> Result<(), String> {
    if host.is_empty() {
        Err("host is empty".to_owned())
    } else if host.contains(|c: char| c.is_whitespace() || c == '/') {
        Err(format!("`{host}` is not a host name or IP address"))
    } else {
        Ok(())
    }
}

// ---- value checks ----
//
// Each check runs inside a visitor's `visit_*` method. serde_norway attaches the location and key
// path of the value being visited to an error returned there; an error returned after
// `T::deserialize` has finished would be attributed to the enclosing mapping instead.

/// A missing section and a section written as `null` (all its keys commented out) both mean
/// "defaults".
pub(super) fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Option::<T>::deserialize(deserializer).map(Option::unwrap_or_default)
}

/// Reads an integer from `min` to `max`, then applies `check`.
struct IntVisitor {
    min: u64,
    max: u64,
    check: fn(u64) -> Result<(), String>,
}

impl IntVisitor {
    fn out_of_range(&self, value: impl fmt::Display) -> String {
        format!(
            "{value} is out of range: must be from {} to {}",
            self.min, self.max
        )
    }
}

impl de::Visitor<'_> for IntVisitor {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "an integer from {} to {}", self.min, self.max)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
        (self.check)(v).map_err(E::custom)?;
        if !(self.min..=self.max).contains(&v) {
            return Err(E::custom(self.out_of_range(v)));
        }
        Ok(v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
        match u64::try_from(v) {
            Ok(v) => self.visit_u64(v),
            Err(_) => Err(E::custom(self.out_of_range(v))),
        }
    }
}

/// `deserialize_any` rather than `deserialize_u64`: serde_norway rejects a negative number for
/// `u64` before any visitor sees it, with a confusing message.
pub(super) fn checked_int<'de, D: Deserializer<'de>>(
    deserializer: D,
    min: u64,
    max: u64,
    check: fn(u64) -> Result<(), String>,
) -> Result<u64, D::Error> {
    deserializer.deserialize_any(IntVisitor { min, max, check })
}

pub(super) fn in_range<'de, D: Deserializer<'de>, const MIN: u64, const MAX: u64>(
    deserializer: D,
) -> Result<usize, D::Error> {
    let value = checked_int(deserializer, MIN, MAX, |_| Ok(()))?;
    usize::try_from(value)
        .map_err(|_| de::Error::custom(format_args!("{value} is too large for this machine")))
}

pub(super) fn nonzero_port<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u16, D::Error> {
    let port = checked_int(deserializer, 1, 65535, |_| Ok(()))?;
    Ok(port as u16) // checked above
}

/// Reads a string and checks (and possibly rewrites) it.
struct StrVisitor {
    expecting: &'static str,
    check: fn(&str) -> Result<String, String>,
}

impl de::Visitor<'_> for StrVisitor {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        (self.check)(v).map_err(E::custom)
    }
}

pub(super) fn checked_str<'de, D: Deserializer<'de>>(
    deserializer: D,
    expecting: &'static str,
    check: fn(&str) -> Result<String, String>,
) -> Result<String, D::Error> {
    deserializer.deserialize_str(StrVisitor { expecting, check })
}

/// Reads a socket address and checks it.
pub(super) struct AddrVisitor {
    pub(super) check: fn(SocketAddr) -> Result<(), String>,
}

impl de::Visitor<'_> for AddrVisitor {
    type Value = SocketAddr;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a socket address like 0.0.0.0:1884 or \"[::]:1884\" (quote IPv6 in YAML)")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<SocketAddr, E> {
        let addr: SocketAddr = v.parse().map_err(|_| {
            E::custom(format_args!(
                "invalid socket address `{v}`: expected IP:PORT like 0.0.0.0:1884 or [::]:1884"
            ))
        })?;
        (self.check)(addr).map_err(E::custom)?;
        Ok(addr)
    }
}

pub(super) fn socket_addr<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<SocketAddr, D::Error> {
    deserializer.deserialize_str(AddrVisitor { check: |_| Ok(()) })
}

/// A destination needs a real address and port (unlike a bind address).
pub(super) fn check_destination(addr: SocketAddr) -> Result<(), String> {
    if addr.ip().is_unspecified() || addr.port() == 0 {
        Err(format!(
            "`{addr}` cannot be a destination (use e.g. 255.255.255.255:1884)"
        ))
    } else {
        Ok(())
    }
}

pub(super) fn positive_duration<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Duration, D::Error> {
    duration::deserialize_checked(deserializer, |value| {
        if value.is_zero() {
            Err("must be longer than 0s".to_owned())
        } else {
            Ok(())
        }
    })
}

/// Whole seconds up to 65535 (a u16 on the wire), optionally allowing zero.
fn whole_seconds_u16(value: Duration, allow_zero: bool) -> Result<(), String> {
    if value.subsec_nanos() != 0 {
        return Err(format!(
            "`{}` must be whole seconds",
            duration::format(value)
        ));
    }
    if value.as_secs() > 65535 || (!allow_zero && value.is_zero()) {
        let min = if allow_zero { "0s" } else { "1s" };
        return Err(format!(
            "out of range: must be from {min} to 65535s (18h12m15s)"
        ));
    }
    Ok(())
}

pub(super) fn keep_alive<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    duration::deserialize_checked(deserializer, |value| whole_seconds_u16(value, true))
}

pub(super) fn advertise_interval<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Duration, D::Error> {
    duration::deserialize_checked(deserializer, |value| whole_seconds_u16(value, false))
}

/// Reads a list of mappings (or `null`, giving `None`), checking each entry against the
/// earlier ones as it is read.
///
/// The check runs inside the entry's own `visit_map`, so serde_norway attaches the entry's key
/// path (`predefined_topics[2]`) and line to the error, which a check after loading could not.
pub(super) fn unique_list<'de, D, T>(
    deserializer: D,
    what: &'static str,
    allow_empty: bool,
    check: fn(&[T], &T) -> Result<(), String>,
) -> Result<Option<Vec<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned,
{
    deserializer.deserialize_option(OptionalList(ListVisitor {
        what,
        allow_empty,
        check,
    }))
}

struct OptionalList<T>(ListVisitor<T>);

impl<'de, T: DeserializeOwned> de::Visitor<'de> for OptionalList<T> {
    type Value = Option<Vec<T>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.what)
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_seq(self.0).map(Some)
    }
}

struct ListVisitor<T> {
    what: &'static str,
    allow_empty: bool,
    check: fn(&[T], &T) -> Result<(), String>,
}

impl<'de, T: DeserializeOwned> de::Visitor<'de> for ListVisitor<T> {
    type Value = Vec<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.what)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        let mut entries = Vec::new();
        while let Some(entry) = seq.next_element_seed(CheckedEntry {
            earlier: &entries,
            check: self.check,
        })? {
            entries.push(entry);
        }
        if entries.is_empty() && !self.allow_empty {
            return Err(de::Error::custom(
                "the list is empty; at least one entry is needed",
            ));
        }
        Ok(entries)
    }
}

struct CheckedEntry<'a, T> {
    earlier: &'a [T],
    check: fn(&[T], &T) -> Result<(), String>,
}

impl<'de, T: DeserializeOwned> DeserializeSeed<'de> for CheckedEntry<'_, T> {
    type Value = T;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<T, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de, T: DeserializeOwned> de::Visitor<'de> for CheckedEntry<'_, T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        let entry = T::deserialize(de::value::MapAccessDeserializer::new(map))?;
        (self.check)(self.earlier, &entry).map_err(de::Error::custom)?;
        Ok(entry)
    }
}

/// A section that is `null` (its defaults) or a mapping, read and then checked as a whole
/// inside its own `visit_map`, so a failed `check` carries the section's key path and line;
/// `check` may also fill in defaults that depend on other keys (`broker.upstream.port`).
pub(super) fn checked_section<'de, D, T>(
    deserializer: D,
    what: &'static str,
    check: fn(&mut T) -> Result<(), String>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned + Default,
{
    struct Section<T> {
        what: &'static str,
        check: fn(&mut T) -> Result<(), String>,
    }

    impl<'de, T: DeserializeOwned + Default> de::Visitor<'de> for Section<T> {
        type Value = T;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.what)
        }

        fn visit_none<E: de::Error>(self) -> Result<T, E> {
            Ok(T::default())
        }

        fn visit_unit<E: de::Error>(self) -> Result<T, E> {
            Ok(T::default())
        }

        fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<T, D::Error> {
            deserializer.deserialize_map(self)
        }

        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
            let mut section = T::deserialize(de::value::MapAccessDeserializer::new(map))?;
            (self.check)(&mut section).map_err(de::Error::custom)?;
            Ok(section)
        }
    }

    deserializer.deserialize_option(Section { what, check })
}
