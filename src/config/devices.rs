//! `admission`, `devices`, `devices_file` and `qos_minus_one`: who may connect, with which
//! credentials, from where, to which topics; and who may publish QoS -1.
//!
//! Every value is checked while it is read (ClientId globs, addresses, topic patterns, that a
//! password has one source), so an error names the file, line and key. The entries of
//! `devices_file` are read by `Config::load` with that file's own name in its errors. Secrets
//! are kept as their *source* (`password`, `password_file`, `password_env`) and read by the
//! shell at start, never here. Must never import from `mod.rs`.
//! Owns: the types of these sections and their checks.

use std::path::PathBuf;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};

use super::checks::{checked_str, unique_list};
use crate::core::rules::{check_client_id_glob, AddressMatch};
use crate::mqtt::valid_topic_filter;

/// `admission`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Admission {
    /// Any ClientId gets a session (entries of `devices` that name it still bind it and
    /// restrict its topics).
    #[default]
    Open,
    /// Only ClientIds matched by an entry of `devices` (or `devices_file`); others get CONNACK
    /// "rejected: not supported" and no upstream session.
    Listed,
}

/// A password (or other secret) given in one of three ways; at most one may be set.
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecretSource {
    /// The secret itself, in the file (discouraged: the file is then a secret too).
    pub password: Option<String>,
    /// A file holding the secret (one trailing newline is ignored), e.g. a systemd credential.
    pub password_file: Option<PathBuf>,
    /// An environment variable holding the secret.
    pub password_env: Option<String>,
}

impl std::fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretSource")
            .field("password", &self.password.as_ref().map(|_| "********"))
            .field("password_file", &self.password_file)
            .field("password_env", &self.password_env)
            .finish()
    }
}

impl SecretSource {
    /// Nothing set.
    pub fn is_empty(&self) -> bool {
        self.password.is_none() && self.password_file.is_none() && self.password_env.is_none()
    }

    /// At most one of the three keys.
    pub(super) fn check(&self) -> Result<(), String> {
        let set = [
            self.password.is_some(),
            self.password_file.is_some(),
            self.password_env.is_some(),
        ]
        .iter()
        .filter(|s| **s)
        .count();
        if set > 1 {
            return Err(
                "password, password_file and password_env are three ways to give the same \
                 secret: set only one"
                    .into(),
            );
        }
        if let Some(var) = &self.password_env {
            if var.is_empty() || var.contains('=') || var.contains('\0') {
                return Err(format!(
                    "password_env: `{var}` is not an environment variable name"
                ));
            }
        }
        Ok(())
    }
}

/// One entry of `devices` (or of the list in `devices_file`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawDevice", into = "RawDevice")]
pub struct DeviceEntry {
    /// `client_id`: an exact ClientId or a glob (`*`, `?`). Required.
    pub client_id: String,
    /// `transport`: `udp`, `serial`, a UDP transport's `bind` address or a serial
    /// transport's `path`; the device must come in on it.
    pub transport: Option<String>,
    /// `address`: the source the device must come from (see [`AddressMatch::parse`]).
    pub address: Option<String>,
    /// `node`: the forwarder wireless node id (hex) the device must sit behind.
    pub node: Option<String>,
    /// `username`: its upstream user name (template: `{client_id}`, `{transport}`).
    pub username: Option<String>,
    /// `password` / `password_file` / `password_env`: its upstream password.
    pub secret: SecretSource,
    /// `cert_file` + `key_file`: its own client certificate for a TLS upstream.
    pub cert_file: Option<PathBuf>,
    /// See `cert_file`.
    pub key_file: Option<PathBuf>,
    /// `publish`: topic patterns it may publish to (`{client_id}` substituted; MQTT
    /// wildcards). Absent: any.
    pub publish: Option<Vec<String>>,
    /// `subscribe`: topic patterns its subscriptions must stay within. Absent: any.
    pub subscribe: Option<Vec<String>>,
}

/// [`DeviceEntry`] as written, before the checks that span its keys.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDevice {
    #[serde(deserialize_with = "client_id_glob")]
    client_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    transport: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    node: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    password: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    password_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    password_env: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cert_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    publish: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    subscribe: Option<Vec<String>>,
}

impl TryFrom<RawDevice> for DeviceEntry {
    type Error = String;

    fn try_from(r: RawDevice) -> Result<Self, String> {
        if let Some(t) = &r.transport {
            check_transport_selector(t)?;
        }
        if let Some(a) = &r.address {
            AddressMatch::parse(a).map_err(|e| format!("address: {e}"))?;
        }
        if let Some(n) = &r.node {
            match AddressMatch::parse(n) {
                Ok(AddressMatch::Link(_)) => {}
                _ => {
                    return Err(format!(
                        "node: `{n}` is not a wireless node id in hex (e.g. 0a1b)"
                    ))
                }
            }
        }
        if let Some(u) = &r.username {
            check_template("username", u)?;
        }
        let secret = SecretSource {
            password: r.password,
            password_file: r.password_file,
            password_env: r.password_env,
        };
        secret.check()?;
        match (&r.cert_file, &r.key_file) {
            (Some(_), None) => return Err("cert_file is set but key_file is not: set both".into()),
            (None, Some(_)) => return Err("key_file is set but cert_file is not: set both".into()),
            _ => {}
        }
        for (key, list) in [("publish", &r.publish), ("subscribe", &r.subscribe)] {
            for (i, p) in list.iter().flatten().enumerate() {
                check_topic_pattern(p).map_err(|e| format!("{key}[{i}]: {e}"))?;
            }
        }
        Ok(DeviceEntry {
            client_id: r.client_id,
            transport: r.transport,
            address: r.address,
            node: r.node,
            username: r.username,
            secret,
            cert_file: r.cert_file,
            key_file: r.key_file,
            publish: r.publish,
            subscribe: r.subscribe,
        })
    }
}

impl From<DeviceEntry> for RawDevice {
    fn from(d: DeviceEntry) -> Self {
        RawDevice {
            client_id: d.client_id,
            transport: d.transport,
            address: d.address,
            node: d.node,
            username: d.username,
            password: d.secret.password,
            password_file: d.secret.password_file,
            password_env: d.secret.password_env,
            cert_file: d.cert_file,
            key_file: d.key_file,
            publish: d.publish,
            subscribe: d.subscribe,
        }
    }
}

fn client_id_glob<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    checked_str(deserializer, "a ClientId or a glob like `sensor-*`", |s| {
        check_client_id_glob(s)?;
        Ok(s.to_owned())
    })
}

/// `udp`, `serial`, a socket address, or an absolute path.
fn check_transport_selector(t: &str) -> Result<(), String> {
    if t == "udp"
        || t == "serial"
        || t.parse::<std::net::SocketAddr>().is_ok()
        || t.starts_with('/')
    {
        Ok(())
    } else {
        Err(format!(
            "transport: `{t}`: expected `udp`, `serial`, a UDP transport's bind address \
             (0.0.0.0:1884) or a serial transport's path (/dev/ttyUSB0)"
        ))
    }
}

/// Only `{client_id}` and `{transport}` may appear in braces.
pub(super) fn check_template(key: &str, t: &str) -> Result<(), String> {
    let mut rest = t;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            return Err(format!("{key}: `{t}` has a `{{` without its `}}`"));
        };
        let name = &after[..close];
        if name != "client_id" && name != "transport" {
            return Err(format!(
                "{key}: `{{{name}}}` is not a template field: use {{client_id}} or {{transport}}"
            ));
        }
        rest = &after[close + 1..];
    }
    if t.contains('\0') {
        return Err(format!("{key}: contains a NUL character"));
    }
    Ok(())
}

/// An MQTT topic filter once `{client_id}` is replaced.
fn check_topic_pattern(p: &str) -> Result<(), String> {
    let probe = p.replace("{client_id}", "x");
    if probe.contains('{') || probe.contains('}') {
        return Err(format!(
            "`{p}`: only {{client_id}} may be substituted in a topic pattern"
        ));
    }
    if !valid_topic_filter(&probe) {
        return Err(format!(
            "`{p}` is not an MQTT topic filter (`+` and `#` must fill a whole level, `#` last)"
        ));
    }
    Ok(())
}

/// `devices`: `null` or a list.
pub(super) fn device_list<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<DeviceEntry>, D::Error> {
    let list = unique_list(
        deserializer,
        "a list of device entries (`- client_id: ...`)",
        true,
        |_: &[DeviceEntry], _: &DeviceEntry| Ok(()),
    )?;
    Ok(list.unwrap_or_default())
}

/// The whole of a `devices_file`: a list of entries, read like `devices`.
#[derive(Deserialize)]
pub(super) struct DevicesFile(#[serde(deserialize_with = "device_list")] pub Vec<DeviceEntry>);

/// `qos_minus_one`: `all`, `off`, or a mapping of what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum QosMinusOne {
    /// `all` (the default: today's behaviour) or `off`.
    Switch(QosMinusOneSwitch),
    /// Only to these topics and/or from these sources; each list that is given and not empty
    /// must match.
    Listed(QosMinusOneList),
}

impl Default for QosMinusOne {
    fn default() -> Self {
        QosMinusOne::Switch(QosMinusOneSwitch::All)
    }
}

/// `qos_minus_one: all | off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QosMinusOneSwitch {
    All,
    Off,
}

/// `qos_minus_one: { predefined, short, sources }`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "RawQosMinusOneList")]
pub struct QosMinusOneList {
    /// Predefined topic ids that may be published to.
    pub predefined: Vec<u16>,
    /// Short topic names (two characters) that may be published to.
    pub short: Vec<String>,
    /// Source addresses that may publish (see [`AddressMatch::parse`]).
    pub sources: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct RawQosMinusOneList {
    predefined: Vec<u16>,
    short: Vec<String>,
    sources: Vec<String>,
}

impl TryFrom<RawQosMinusOneList> for QosMinusOneList {
    type Error = String;

    fn try_from(r: RawQosMinusOneList) -> Result<Self, String> {
        for (i, s) in r.short.iter().enumerate() {
            if s.len() != 2 {
                return Err(format!(
                    "short[{i}]: `{s}` is not a short topic name (exactly two octets)"
                ));
            }
        }
        for (i, s) in r.sources.iter().enumerate() {
            AddressMatch::parse(s).map_err(|e| format!("sources[{i}]: {e}"))?;
        }
        if r.predefined.is_empty() && r.short.is_empty() && r.sources.is_empty() {
            return Err(
                "an empty list allows nothing: write `qos_minus_one: off`, or list \
                 predefined ids, short names or sources"
                    .into(),
            );
        }
        Ok(QosMinusOneList {
            predefined: r.predefined,
            short: r.short,
            sources: r.sources,
        })
    }
}

/// A word (`all`, `off`) or a mapping, with the error of the form that was written (an
/// untagged enum would only say that nothing matched).
impl<'de> Deserialize<'de> for QosMinusOne {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = QosMinusOne;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("`all`, `off`, or a mapping with predefined, short and/or sources")
            }
            fn visit_unit<E: de::Error>(self) -> Result<QosMinusOne, E> {
                Ok(QosMinusOne::default())
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<QosMinusOne, E> {
                match v {
                    "all" => Ok(QosMinusOne::Switch(QosMinusOneSwitch::All)),
                    "off" => Ok(QosMinusOne::Switch(QosMinusOneSwitch::Off)),
                    other => Err(E::custom(format_args!(
                        "`{other}`: expected `all`, `off`, or a mapping with predefined, short \
                         and/or sources"
                    ))),
                }
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<QosMinusOne, E> {
                Err(E::custom(format_args!(
                    "`{v}`: write `all` or `off` (or a mapping with predefined, short and/or \
                     sources)"
                )))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<QosMinusOne, A::Error> {
                QosMinusOneList::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(QosMinusOne::Listed)
            }
        }
        deserializer.deserialize_any(V)
    }
}

impl QosMinusOne {
    /// Whether every sender may publish to every predefined id and short name.
    pub fn is_all(&self) -> bool {
        matches!(self, QosMinusOne::Switch(QosMinusOneSwitch::All))
    }
}
