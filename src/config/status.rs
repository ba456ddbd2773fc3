//! `status`: availability on the broker (the gateway's `online` / `offline` and each device's
//! state, retained) and the optional Home Assistant discovery. Values are checked while they
//! are read, like the rest of `config`.
//! Owns: the `status` section's types, defaults and checks. Must never import from `mod.rs`.

use std::fmt;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};

use super::checks::checked_str;
use crate::mqtt;

/// `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Status {
    /// `status.enabled`: publish availability (and open the gateway's status session).
    pub enabled: bool,
    /// `status.topic_prefix`: where the topics go; `None` (`null`): `mqttsn/<gateway.id>`.
    #[serde(deserialize_with = "topic_prefix")]
    pub topic_prefix: Option<String>,
    /// `status.homeassistant`: also publish a Home Assistant discovery config per device.
    pub homeassistant: bool,
    /// `status.homeassistant_prefix`: Home Assistant's discovery prefix.
    #[serde(deserialize_with = "homeassistant_prefix")]
    pub homeassistant_prefix: String,
}

impl Default for Status {
    fn default() -> Self {
        Status {
            enabled: true,
            topic_prefix: None,
            homeassistant: false,
            homeassistant_prefix: "homeassistant".to_owned(),
        }
    }
}

impl Status {
    /// The prefix in effect: the configured one, else `mqttsn/<gateway_id>`.
    pub fn effective_prefix(&self, gateway_id: u8) -> String {
        self.topic_prefix
            .clone()
            .unwrap_or_else(|| format!("mqttsn/{gateway_id}"))
    }
}

/// A prefix of topic names: a valid topic name without wildcards, no empty level at either
/// end, not a `$` topic (brokers keep those for themselves, and `#` does not match them).
fn check_prefix(v: &str) -> Result<String, String> {
    if v.is_empty() {
        return Err("an empty prefix: give one like `mqttsn/1` (or null for the default)".into());
    }
    if !mqtt::valid_topic_name(v) {
        return Err(format!(
            "`{v}` is not a valid MQTT topic name (no `+`, `#` or NUL, at most 65535 octets)"
        ));
    }
    if v.starts_with('/') || v.ends_with('/') {
        return Err(format!("`{v}` starts or ends with `/`: write it without"));
    }
    if v.starts_with('$') {
        return Err(format!(
            "`{v}` starts with `$`: brokers reserve those topics and `#` does not match them"
        ));
    }
    Ok(v.to_owned())
}

fn topic_prefix<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    struct Optional;

    impl<'de> de::Visitor<'de> for Optional {
        type Value = Option<String>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a topic prefix like `mqttsn/1`, or null")
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            checked_str(d, "a topic prefix like `mqttsn/1`", check_prefix).map(Some)
        }
    }

    deserializer.deserialize_option(Optional)
}

fn homeassistant_prefix<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    checked_str(
        deserializer,
        "a topic prefix like `homeassistant`",
        check_prefix,
    )
}
