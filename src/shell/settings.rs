//! [`Config`] → the core's [`Settings`] and the embedded broker's [`EmbeddedSettings`].
//!
//! Plain field mapping, no I/O: the start-up adjustments (the open-file limit, the store being
//! attached) are made by `start` on the result. Must never hold a default of its own: a key's
//! default is the config's, which reads the core's.

use super::error::ShellError;
use crate::broker::EmbeddedSettings;
use crate::config::Sessions;
use crate::config::{Admission, Config, QosMinusOne, QosMinusOneSwitch};
use crate::core::rules::{AddressMatch, AdmissionRules, DeviceRule, QosMinusOnePolicy};
use crate::core::settings::SourceLimits;
use crate::core::{AggregateSettings, Settings, StatusSettings, TransportId};

/// The core's settings from the configuration file.
pub fn settings_from(config: &Config) -> Result<Settings, ShellError> {
    Ok(Settings {
        gateway_id: config.gateway.id,
        predefined_topics: config
            .predefined_topics
            .iter()
            .map(|t| (t.id, t.topic.clone()))
            .collect(),
        max_devices: config.limits.max_devices,
        max_topics_per_device: config.limits.max_topics_per_device,
        max_queued_per_device: config.limits.max_queued_per_device,
        max_frame_size: config.limits.max_frame_size,
        max_client_id_len: config.limits.max_client_id_len,
        retry_interval: config.timers.retry_interval,
        max_retries: u32::from(config.timers.max_retries),
        advertise_interval: config.discovery.advertise.as_ref().map(|a| a.interval),
        upstream_keep_alive: config.broker.upstream.keep_alive,
        upstream_connect_timeout: config.broker.upstream.connect_timeout,
        client_id_prefix: config.broker.upstream.client_id_prefix.clone(),
        sleep_buffer_messages: config.sleep.buffer_messages,
        sleep_buffer_bytes: config.sleep.buffer_bytes,
        sleep_keep_qos0: config.sleep.keep_qos0,
        persistent: false,
        per_source: per_source(&config.limits.per_source),
        max_silent_downlink_bytes: config.limits.max_silent_downlink_bytes,
        max_subscriptions_per_device: config.limits.max_subscriptions_per_device,
        admission: admission_rules(config)?,
        qos_minus_one: qos_minus_one(&config.qos_minus_one),
        transport_names: config
            .transports
            .udp
            .iter()
            .map(|u| u.bind.to_string())
            .chain(
                config
                    .transports
                    .serial
                    .iter()
                    .map(|s| s.path.display().to_string()),
            )
            .collect(),
        status: status(config),
        aggregate: aggregate(config),
    })
}

/// `broker.upstream.sessions: aggregating` as the core's settings; `None`: transparent.
fn aggregate(config: &Config) -> Option<AggregateSettings> {
    let u = &config.broker.upstream;
    (u.sessions == Sessions::Aggregating).then(|| AggregateSettings {
        connections: u.connections,
        client_id: u.aggregate_client_id(config.gateway.id),
    })
}

/// `status` as the core's settings; `None` when it is off.
fn status(config: &Config) -> Option<StatusSettings> {
    let s = &config.status;
    s.enabled.then(|| StatusSettings {
        topic_prefix: s.effective_prefix(config.gateway.id),
        homeassistant: s.homeassistant.then(|| s.homeassistant_prefix.clone()),
    })
}

/// Where an entry of [`Config::all_devices`] is written: `devices[i]` or `devices_file[j]`.
pub fn device_key(config: &Config, index: usize) -> String {
    if index < config.devices.len() {
        format!("devices[{index}]")
    } else {
        format!("devices_file[{}]", index - config.devices.len())
    }
}

/// `admission` + `devices` + `devices_file` as the core's rules; transports named by kind,
/// bind address or path become the ids the shell gives them (UDP in order, then serial).
fn admission_rules(config: &Config) -> Result<AdmissionRules, ShellError> {
    let udp = &config.transports.udp;
    let serial = &config.transports.serial;
    let id = |i: usize| TransportId(u16::try_from(i).unwrap_or(u16::MAX));
    let mut devices = Vec::new();
    for (index, d) in config.all_devices().enumerate() {
        let err = |reason: String| ShellError::Device {
            key: device_key(config, index),
            reason,
        };
        let transports = match d.transport.as_deref() {
            None => None,
            Some("udp") => Some((0..udp.len()).map(id).collect()),
            Some("serial") => Some((udp.len()..udp.len() + serial.len()).map(id).collect()),
            Some(sel) => {
                let by_bind = udp
                    .iter()
                    .position(|u| u.bind.to_string() == sel || sel.parse().ok() == Some(u.bind));
                let by_path = serial
                    .iter()
                    .position(|s| s.path.as_os_str() == sel)
                    .map(|j| udp.len() + j);
                match by_bind.or(by_path) {
                    Some(i) => Some(vec![id(i)]),
                    None => {
                        return Err(err(format!(
                            "transport: `{sel}` is neither a transports.udp[].bind nor a \
                             transports.serial[].path of this configuration"
                        )))
                    }
                }
            }
        };
        let parse =
            |what: &str, text: &Option<String>| -> Result<Option<AddressMatch>, ShellError> {
                text.as_deref()
                    .map(AddressMatch::parse)
                    .transpose()
                    .map_err(|e| err(format!("{what}: {e}")))
            };
        let address = parse("address", &d.address)?;
        let node = match parse("node", &d.node)? {
            Some(AddressMatch::Link(b)) => Some(b),
            Some(_) => return Err(err("node: expected a node id in hex".into())),
            None => None,
        };
        devices.push(DeviceRule {
            client_id: d.client_id.clone(),
            transports,
            address,
            node,
            publish: d.publish.clone(),
            subscribe: d.subscribe.clone(),
        });
    }
    Ok(AdmissionRules {
        listed: config.admission == Admission::Listed,
        devices,
    })
}

/// `qos_minus_one` as the core's policy (values were checked when read).
fn qos_minus_one(q: &QosMinusOne) -> QosMinusOnePolicy {
    match q {
        QosMinusOne::Switch(QosMinusOneSwitch::All) => QosMinusOnePolicy::All,
        QosMinusOne::Switch(QosMinusOneSwitch::Off) => QosMinusOnePolicy::Off,
        QosMinusOne::Listed(l) => QosMinusOnePolicy::Listed {
            predefined: l.predefined.clone(),
            short: l
                .short
                .iter()
                .filter_map(|s| <[u8; 2]>::try_from(s.as_bytes()).ok())
                .collect(),
            sources: l
                .sources
                .iter()
                .filter_map(|s| AddressMatch::parse(s).ok())
                .collect(),
        },
    }
}

fn per_source(p: &crate::config::PerSource) -> SourceLimits {
    let u32_of = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
    SourceLimits {
        devices_per_address: p.devices_per_address,
        devices_per_subnet: p.devices_per_subnet,
        pending_per_address: p.pending_per_address,
        pending_per_subnet: p.pending_per_subnet,
        connects_per_second: u32_of(p.connects_per_second),
        connect_burst: u32_of(p.connect_burst),
        ipv4_prefix: u8::try_from(p.ipv4_subnet_prefix).unwrap_or(32),
        ipv6_prefix: u8::try_from(p.ipv6_subnet_prefix).unwrap_or(128),
    }
}

/// The embedded broker's settings from `broker.embedded`.
///
/// Reads `password_file` / `password_env` (an unreadable one stops the start, naming it).
pub fn embedded_settings(config: &Config) -> Result<EmbeddedSettings, ShellError> {
    let e = &config.broker.embedded;
    let password = super::credentials::read_secret("broker.embedded", &e.secret())?;
    Ok(EmbeddedSettings {
        bind: e.bind,
        data_dir: e.data_dir.clone(),
        username: e.username.clone(),
        password: password.map(super::credentials::Secret::into_inner),
        users_file: e.users_file.clone(),
        acl_file: e.acl_file.clone(),
        tls: e.tls.as_ref().map(|t| crate::broker::TlsSettings {
            bind: t.bind,
            cert_file: t.cert_file.clone(),
            key_file: t.key_file.clone(),
            ca_file: t.ca_file.clone(),
            require_certificate: t.require_certificate,
            max_connections: t.max_connections,
        }),
        allow_anonymous: e.allow_anonymous,
        max_queued_messages: e.max_queued_messages,
    })
}
