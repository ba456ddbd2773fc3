//! SIGHUP: what a new `gateway.yaml` may change while every device stays connected, and what
//! needs a restart.
//!
//! Applied live: `predefined_topics`, `admission`, `devices` / `devices_file` (bindings,
//! topic permissions, credentials), `qos_minus_one`, `log.level`, `sleep.keep_qos0`, and the
//! bounds that only grow (`limits.max_topics_per_device`, `limits.max_queued_per_device`,
//! `limits.max_subscriptions_per_device`, `limits.max_silent_downlink_bytes`,
//! `sleep.buffer_messages`, `sleep.buffer_bytes`). Everything else that differs is reported as
//! needing a restart and left as it runs (`broker.upstream.source_addresses` is named alone).
//! Owns the plan only (pure: no I/O); `run` in `mod.rs` reads the file and carries the plan out.

use crate::config::Config;
use crate::core::Settings;

/// Reads the configuration again (see [`Reloader::load`]).
pub type LoadConfig = Box<dyn Fn() -> Result<Config, String> + Send + Sync>;
/// Installs a new `log.level` (see [`Reloader::set_log_filter`]).
pub type SetLogFilter = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// How the binary's edge gives the shell a fresh configuration and a new log filter (the
/// command-line overrides re-applied; the `tracing` subscriber lives in `main`).
pub struct Reloader {
    /// Reads `gateway.yaml` again (with the command-line overrides), or says why it could not.
    pub load: LoadConfig,
    /// Installs `log.level` as the filter (a no-op, saying so, when `RUST_LOG` wins).
    pub set_log_filter: SetLogFilter,
}

/// What a reload will do.
#[derive(Debug)]
pub(super) struct Plan {
    /// The running configuration with the live changes applied: the next reload's base.
    pub live: Config,
    /// Keys whose new values are applied now.
    pub applied: Vec<String>,
    /// Keys whose new values wait for a restart.
    pub restart: Vec<String>,
}

impl Plan {
    pub(super) fn devices_changed(&self) -> bool {
        self.applied.iter().any(|k| k == "devices")
    }
}

/// Compares the running configuration with the one just read.
pub(super) fn plan(running: &Config, new: &Config) -> Plan {
    let mut live = running.clone();
    // `new` with the lowered grow-only bounds put back, so they are named once, alone.
    let mut probe = new.clone();
    let mut applied = Vec::new();
    let mut restart = Vec::new();

    macro_rules! any_change {
        ($($field:ident).+, $name:expr) => {
            if new.$($field).+ != running.$($field).+ {
                live.$($field).+ = new.$($field).+.clone();
                applied.push($name.to_string());
            }
        };
    }
    macro_rules! grow_only {
        ($($field:ident).+, $name:expr) => {
            if new.$($field).+ > running.$($field).+ {
                live.$($field).+ = new.$($field).+;
                applied.push($name.to_string());
            } else if new.$($field).+ < running.$($field).+ {
                restart.push(format!("{} (lowered)", $name));
                probe.$($field).+ = running.$($field).+;
            }
        };
    }
    any_change!(predefined_topics, "predefined_topics");
    any_change!(admission, "admission");
    if new.devices != running.devices
        || new.devices_file != running.devices_file
        || new.devices_from_file != running.devices_from_file
    {
        live.devices = new.devices.clone();
        live.devices_file = new.devices_file.clone();
        live.devices_from_file = new.devices_from_file.clone();
        applied.push("devices".into());
    }
    any_change!(qos_minus_one, "qos_minus_one");
    any_change!(log.level, "log.level");
    any_change!(sleep.keep_qos0, "sleep.keep_qos0");
    grow_only!(limits.max_topics_per_device, "limits.max_topics_per_device");
    grow_only!(limits.max_queued_per_device, "limits.max_queued_per_device");
    grow_only!(
        limits.max_subscriptions_per_device,
        "limits.max_subscriptions_per_device"
    );
    grow_only!(
        limits.max_silent_downlink_bytes,
        "limits.max_silent_downlink_bytes"
    );
    grow_only!(sleep.buffer_messages, "sleep.buffer_messages");
    grow_only!(sleep.buffer_bytes, "sleep.buffer_bytes");

    // Whatever still differs needs a restart; named by section (and key where known).
    macro_rules! rest {
        ($($field:ident).+, $name:expr) => {
            if probe.$($field).+ != live.$($field).+ {
                restart.push($name.to_string());
            }
        };
    }
    // Named on its own (new sessions would pick it up, but the sessions already open keep
    // their address, so it waits for a restart like the rest of `broker`).
    if probe.broker.upstream.source_addresses != live.broker.upstream.source_addresses {
        restart.push("broker.upstream.source_addresses".to_string());
        probe.broker.upstream.source_addresses = live.broker.upstream.source_addresses.clone();
    }
    rest!(gateway, "gateway");
    rest!(transports, "transports");
    rest!(discovery, "discovery");
    rest!(broker, "broker");
    rest!(limits, "limits");
    rest!(timers, "timers");
    rest!(sleep, "sleep");
    rest!(store, "store");
    rest!(log.format, "log.format");
    rest!(http, "http");
    rest!(status, "status");
    rest!(runtime, "runtime");
    Plan {
        live,
        applied,
        restart,
    }
}

/// The running core settings with the live parts of `new` (built from [`Plan::live`]) put
/// in: what start-up adjusted (`max_devices` to the open-file limit, `persistent`) stays.
pub(super) fn live_settings(running: &Settings, new: Settings) -> Settings {
    Settings {
        predefined_topics: new.predefined_topics,
        admission: new.admission,
        qos_minus_one: new.qos_minus_one,
        sleep_keep_qos0: new.sleep_keep_qos0,
        max_topics_per_device: new.max_topics_per_device,
        max_queued_per_device: new.max_queued_per_device,
        max_subscriptions_per_device: new.max_subscriptions_per_device,
        max_silent_downlink_bytes: new.max_silent_downlink_bytes,
        sleep_buffer_messages: new.sleep_buffer_messages,
        sleep_buffer_bytes: new.sleep_buffer_bytes,
        ..running.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> Config {
        Config::from_yaml_str(yaml, "t").unwrap()
    }

    #[test]
    fn live_keys_apply_and_the_rest_waits_for_a_restart() {
        let old = config("limits: { max_queued_per_device: 64, max_topics_per_device: 256 }\n");
        let new = config(
            "predefined_topics: [{ id: 1, topic: a/b }]\n\
             admission: listed\n\
             devices: [{ client_id: x }]\n\
             log: { level: debug, format: json }\n\
             limits: { max_queued_per_device: 128, max_topics_per_device: 100, max_frame_size: 512 }\n\
             timers: { retry_interval: 3s }\n",
        );
        let p = plan(&old, &new);
        assert_eq!(
            p.applied,
            [
                "predefined_topics",
                "admission",
                "devices",
                "log.level",
                "limits.max_queued_per_device"
            ]
        );
        assert_eq!(
            p.restart,
            [
                "limits.max_topics_per_device (lowered)",
                "limits",
                "timers",
                "log.format"
            ]
        );
        assert!(p.devices_changed());
        assert_eq!(p.live.limits.max_queued_per_device, 128);
        assert_eq!(p.live.limits.max_topics_per_device, 256, "lowering waits");
        assert_eq!(p.live.limits.max_frame_size, old.limits.max_frame_size);
        assert_eq!(p.live.log.format, old.log.format);
        // source_addresses is named alone, and waits for the next start.
        let new = config("broker: { upstream: { source_addresses: [127.0.0.2] } }\n");
        let p = plan(&old, &new);
        assert!(p.applied.is_empty());
        assert_eq!(p.restart, ["broker.upstream.source_addresses"]);
        assert!(p.live.broker.upstream.source_addresses.is_empty());
        // Nothing changed: nothing to do.
        let p = plan(&old, &old);
        assert!(p.applied.is_empty() && p.restart.is_empty());
    }
}
