//! `/metrics`: a [`Snapshot`] in the OpenMetrics text format (which Prometheus scrapes), written
//! by `prometheus-client`. The values are the core's [`Stats`](crate::core::Stats) and totals
//! and the shell's transport, upstream and store counters, all read at one moment by the
//! driver: nothing is registered or updated on the message path.
//!
//! Owns the metric names, labels and help texts (docs/operations.md has the table). Must never
//! ask the driver anything.

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use super::{Clock, GatewayInfo};
use crate::core::DeviceState;
use crate::shell::status::Snapshot;

pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The text for one scrape.
pub fn render(s: &Snapshot, info: &GatewayInfo, started: &Clock) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Scrape {
        snapshot: Arc::new(s.clone()),
        version: info.version,
        started_unix: started
            .wall
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64()),
    }));
    let mut out = String::with_capacity(8 * 1024);
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    out
}

#[derive(Debug)]
struct Scrape {
    snapshot: Arc<Snapshot>,
    version: &'static str,
    started_unix: f64,
}

type Labels = Vec<(&'static str, String)>;

/// One metric family: its samples, each with its labels.
struct Family<'a, V> {
    name: &'a str,
    help: &'a str,
    unit: Option<Unit>,
    samples: Vec<(Labels, V)>,
}

fn one<V>(name: &'static str, help: &'static str, v: V) -> Family<'static, V> {
    Family {
        name,
        help,
        unit: None,
        samples: vec![(Vec::new(), v)],
    }
}

fn counter(e: &mut DescriptorEncoder, f: Family<'_, u64>) -> std::fmt::Result {
    let mut m = e.encode_descriptor(f.name, f.help, f.unit.as_ref(), MetricType::Counter)?;
    for (labels, v) in &f.samples {
        if labels.is_empty() {
            m.encode_counter::<NoLabelSet, _, u64>(v, None)?;
        } else {
            m.encode_family(labels)?
                .encode_counter::<NoLabelSet, _, u64>(v, None)?;
        }
    }
    Ok(())
}

fn gauge(e: &mut DescriptorEncoder, f: Family<'_, u64>) -> std::fmt::Result {
    let mut m = e.encode_descriptor(f.name, f.help, f.unit.as_ref(), MetricType::Gauge)?;
    for (labels, v) in &f.samples {
        if labels.is_empty() {
            m.encode_gauge(v)?;
        } else {
            m.encode_family(labels)?.encode_gauge(v)?;
        }
    }
    Ok(())
}

fn labels<const N: usize>(pairs: [(&'static str, &str); N]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
}

impl Collector for Scrape {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let s = &*self.snapshot;
        let st = &s.stats;
        {
            let info = [("version", self.version)];
            let mut m = e.encode_descriptor(
                "mqttsn_gateway",
                "The gateway's version",
                None,
                MetricType::Info,
            )?;
            m.encode_info(&info)?;
        }
        {
            let mut m = e.encode_descriptor(
                "mqttsn_start_time",
                "When the gateway started, in seconds since the Unix epoch",
                Some(&Unit::Seconds),
                MetricType::Gauge,
            )?;
            m.encode_gauge(&self.started_unix)?;
        }
        gauge(
            &mut e,
            Family {
                name: "mqttsn_devices",
                help: "Devices the gateway holds, by state",
                unit: None,
                samples: DeviceState::ALL
                    .iter()
                    .zip(s.totals.by_state)
                    .map(|(state, n)| (labels([("state", state.name())]), n))
                    .collect(),
            },
        )?;
        let by_qos = |dir: &'static str, v: [u64; 3]| {
            (0..3).map(move |q| {
                (
                    labels([("direction", dir), ("qos", ["0", "1", "2"][q])]),
                    v[q],
                )
            })
        };
        counter(
            &mut e,
            Family {
                name: "mqttsn_messages",
                help: "PUBLISH messages forwarded (first transmissions): up = device to broker, down = broker to device",
                unit: None,
                samples: by_qos("up", st.uplink_by_qos)
                    .chain(by_qos("down", st.downlink_by_qos))
                    .collect(),
            },
        )?;
        counter(
            &mut e,
            Family {
                name: "mqttsn_message_payload",
                help: "Payload octets of the messages counted in mqttsn_messages",
                unit: Some(Unit::Bytes),
                samples: by_qos("up", st.uplink_bytes_by_qos)
                    .chain(by_qos("down", st.downlink_bytes_by_qos))
                    .collect(),
            },
        )?;
        counter(
            &mut e,
            one(
                "mqttsn_frames_received",
                "MQTT-SN frames handed to the core",
                st.frames_in,
            ),
        )?;
        counter(
            &mut e,
            Family {
                name: "mqttsn_frames_dropped",
                help: "Frames from devices dropped, by reason",
                unit: None,
                samples: vec![
                    (labels([("reason", "malformed")]), st.malformed),
                    (labels([("reason", "oversized")]), st.oversized),
                    (labels([("reason", "unknown_peer")]), st.unknown_peer),
                    (labels([("reason", "wrong_state")]), st.wrong_state),
                ],
            },
        )?;
        counter(
            &mut e,
            Family {
                name: "mqttsn_messages_dropped",
                help: "Messages dropped, by reason",
                unit: None,
                samples: vec![
                    (
                        labels([("reason", "uplink_broker_away")]),
                        st.uplink_dropped,
                    ),
                    (
                        labels([("reason", "downlink_undeliverable")]),
                        st.downlink_dropped,
                    ),
                    (
                        labels([("reason", "sleep_buffer_full")]),
                        st.sleep_buffer_dropped,
                    ),
                ],
            },
        )?;
        counter(
            &mut e,
            Family {
                name: "mqttsn_connects_refused",
                help: "CONNECTs refused, by reason",
                unit: None,
                samples: vec![
                    (
                        labels([("reason", "source_limit")]),
                        st.connects_refused_source,
                    ),
                    (
                        labels([("reason", "admission")]),
                        st.connects_refused_admission,
                    ),
                    (labels([("reason", "table_full")]), st.connects_refused_full),
                ],
            },
        )?;
        counter(
            &mut e,
            one(
                "mqttsn_subscriptions_refused",
                "SUBSCRIBEs refused at limits.max_subscriptions_per_device",
                st.subscriptions_refused,
            ),
        )?;
        counter(
            &mut e,
            one(
                "mqttsn_retransmissions",
                "Re-sends toward devices after T_RETRY",
                st.retransmissions,
            ),
        )?;
        counter(
            &mut e,
            Family {
                name: "mqttsn_devices_lost",
                help: "Devices declared lost, by reason",
                unit: None,
                samples: vec![
                    (
                        labels([("reason", "timeout")]),
                        st.devices_lost.saturating_sub(st.devices_silent_lost),
                    ),
                    (labels([("reason", "silent")]), st.devices_silent_lost),
                ],
            },
        )?;
        counter(
            &mut e,
            one(
                "mqttsn_devices_evicted",
                "Devices removed to make room for a newcomer",
                st.devices_evicted,
            ),
        )?;
        gauge(
            &mut e,
            one(
                "mqttsn_sleep_buffer_messages",
                "Messages buffered for asleep and awake devices",
                s.totals.sleep_buffered,
            ),
        )?;
        gauge(
            &mut e,
            Family {
                name: "mqttsn_sleep_buffer",
                help: "Octets buffered for asleep and awake devices",
                unit: Some(Unit::Bytes),
                samples: vec![(Vec::new(), s.totals.sleep_buffered_bytes)],
            },
        )?;
        gauge(
            &mut e,
            one(
                "mqttsn_downlink_queued_messages",
                "Messages queued for devices that are not asleep",
                s.totals.queued,
            ),
        )?;
        let up = &s.upstream;
        counter(
            &mut e,
            one(
                "mqttsn_upstream_session_opens",
                "Upstream MQTT sessions the gateway opened",
                st.upstream_opens,
            ),
        )?;
        counter(
            &mut e,
            Family {
                name: "mqttsn_upstream_connacks",
                help: "CONNACKs from the broker, by result",
                unit: None,
                samples: vec![
                    (labels([("result", "accepted")]), up.accepted),
                    (labels([("result", "refused")]), up.refused),
                ],
            },
        )?;
        counter(
            &mut e,
            one(
                "mqttsn_upstream_connect_failures",
                "Upstream connections that ended before a CONNACK (refused, timed out, reset)",
                up.failed,
            ),
        )?;
        counter(
            &mut e,
            one(
                "mqttsn_upstream_sessions_closed",
                "Upstream connections that ended after their CONNACK",
                up.closed,
            ),
        )?;
        gauge(
            &mut e,
            one(
                "mqttsn_upstream_sessions_connected",
                "Upstream sessions connected now",
                up.connected,
            ),
        )?;
        gauge(
            &mut e,
            one(
                "mqttsn_broker_link_up",
                "1 while an upstream session is connected",
                u64::from(up.link() == "up"),
            ),
        )?;
        if let Some(a) = &s.aggregate {
            let n = |v: usize| v as u64;
            for (name, help, v) in [
                (
                    "mqttsn_aggregate_shared_sessions_connected",
                    "Aggregating mode: shared upstream sessions connected now",
                    n(a.shared_connected),
                ),
                (
                    "mqttsn_aggregate_devices",
                    "Aggregating mode: devices carried over the shared sessions (persistent ones away included)",
                    n(a.devices),
                ),
                (
                    "mqttsn_aggregate_filters",
                    "Aggregating mode: distinct filters subscribed upstream",
                    n(a.filters),
                ),
                (
                    "mqttsn_aggregate_memberships",
                    "Aggregating mode: device subscriptions counted on those filters",
                    n(a.memberships),
                ),
                (
                    "mqttsn_aggregate_in_flight",
                    "Aggregating mode: packet ids in flight on the shared sessions",
                    n(a.in_flight),
                ),
            ] {
                gauge(&mut e, one(name, help, v))?;
            }
        }
        let per_transport = |f: fn(&crate::shell::status::TransportCounters) -> (u64, u64)| {
            let mut v = Vec::new();
            for (i, (t, c)) in s.transports.iter().enumerate() {
                let (rx, tx) = f(c);
                let id = i.to_string();
                for (dir, n) in [("in", rx), ("out", tx)] {
                    v.push((
                        vec![
                            ("transport", id.clone()),
                            ("kind", t.kind.to_owned()),
                            ("name", t.name.clone()),
                            ("direction", dir.to_owned()),
                        ],
                        n,
                    ));
                }
            }
            v
        };
        counter(
            &mut e,
            Family {
                name: "mqttsn_transport_frames",
                help: "Frames (datagrams, serial frames) received from and sent to devices, per transport",
                unit: None,
                samples: per_transport(|c| (c.frames_in, c.frames_out)),
            },
        )?;
        counter(
            &mut e,
            Family {
                name: "mqttsn_transport",
                help: "Octets of those frames",
                unit: Some(Unit::Bytes),
                samples: per_transport(|c| (c.bytes_in, c.bytes_out)),
            },
        )?;
        counter(
            &mut e,
            Family {
                name: "mqttsn_transport_send_failures",
                help: "Frames to devices the socket refused or the serial backlog had no room for",
                unit: None,
                samples: s
                    .transports
                    .iter()
                    .enumerate()
                    .map(|(i, (t, c))| {
                        (
                            vec![
                                ("transport", i.to_string()),
                                ("kind", t.kind.to_owned()),
                                ("name", t.name.clone()),
                            ],
                            c.send_failed,
                        )
                    })
                    .collect(),
            },
        )?;
        if let Some(store) = &s.store {
            counter(
                &mut e,
                one(
                    "mqttsn_store_commits",
                    "Store transactions committed",
                    store.commits,
                ),
            )?;
            counter(
                &mut e,
                one(
                    "mqttsn_store_commit_failures",
                    "Store commits that failed (each is retried)",
                    store.failed_commits,
                ),
            )?;
            counter(
                &mut e,
                one(
                    "mqttsn_store_ops",
                    "Records written or deleted by those commits",
                    store.ops,
                ),
            )?;
            let mut m = e.encode_descriptor(
                "mqttsn_store_commit",
                "Time spent committing (SQLite synchronous=FULL: mostly the WAL fsync)",
                Some(&Unit::Seconds),
                MetricType::Counter,
            )?;
            m.encode_counter::<NoLabelSet, _, u64>(&(store.commit_nanos as f64 / 1e9), None)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Instant;

    use super::*;
    use crate::core::{DeviceTotals, Stats};
    use crate::shell::status::{StoreTotals, TransportCounters, TransportInfo, UpstreamCounters};

    fn snapshot() -> Snapshot {
        let mut stats = Stats {
            malformed: 3,
            retransmissions: 2,
            uplink_dropped: 1,
            ..Stats::default()
        };
        stats.uplink_by_qos = [5, 6, 7];
        stats.uplink_bytes_by_qos = [50, 60, 70];
        stats.downlink_by_qos[1] = 4;
        let mut totals = DeviceTotals {
            sleep_buffered: 9,
            ..DeviceTotals::default()
        };
        totals.by_state[DeviceState::ALL
            .iter()
            .position(|s| *s == DeviceState::Asleep)
            .unwrap()] = 2;
        Snapshot {
            taken: Instant::now(),
            stats,
            totals,
            devices: Vec::new(),
            transports: vec![(
                TransportInfo {
                    kind: "udp",
                    name: "127.0.0.1:1884".into(),
                },
                TransportCounters {
                    frames_in: 11,
                    frames_out: 12,
                    bytes_in: 110,
                    bytes_out: 120,
                    send_failed: 0,
                },
            )],
            upstream: UpstreamCounters {
                accepted: 2,
                connected: 1,
                ..UpstreamCounters::default()
            },
            store: Some(StoreTotals {
                commits: 4,
                failed_commits: 0,
                ops: 8,
                commit_nanos: 1_500_000_000,
            }),
            aggregate: Some(crate::core::AggregateSizes {
                shared_connected: 2,
                shared: 2,
                devices: 7,
                filters: 3,
                memberships: 5,
                in_flight: 1,
            }),
        }
    }

    #[test]
    fn the_text_carries_every_family() {
        let info = GatewayInfo {
            version: "9.9.9",
            broker_mode: "embedded",
            broker: "127.0.0.1:1883".parse::<SocketAddr>().unwrap(),
        };
        let text = render(&snapshot(), &info, &Clock::now());
        for line in [
            "mqttsn_gateway_info{version=\"9.9.9\"} 1",
            "mqttsn_devices{state=\"asleep\"} 2",
            "mqttsn_devices{state=\"active\"} 0",
            "mqttsn_messages_total{direction=\"up\",qos=\"2\"} 7",
            "mqttsn_messages_total{direction=\"down\",qos=\"1\"} 4",
            "mqttsn_message_payload_bytes_total{direction=\"up\",qos=\"1\"} 60",
            "mqttsn_frames_dropped_total{reason=\"malformed\"} 3",
            "mqttsn_messages_dropped_total{reason=\"uplink_broker_away\"} 1",
            "mqttsn_retransmissions_total 2",
            "mqttsn_sleep_buffer_messages 9",
            "mqttsn_upstream_connacks_total{result=\"accepted\"} 2",
            "mqttsn_broker_link_up 1",
            "mqttsn_aggregate_devices 7",
            "mqttsn_aggregate_shared_sessions_connected 2",
            "mqttsn_transport_frames_total{transport=\"0\",kind=\"udp\",name=\"127.0.0.1:1884\",direction=\"in\"} 11",
            "mqttsn_transport_bytes_total{transport=\"0\",kind=\"udp\",name=\"127.0.0.1:1884\",direction=\"out\"} 120",
            "mqttsn_store_commits_total 4",
            "mqttsn_store_commit_seconds_total 1.5",
            "# TYPE mqttsn_messages counter",
            "# EOF",
        ] {
            assert!(text.lines().any(|l| l == line), "missing `{line}` in\n{text}");
        }
    }

    #[test]
    fn no_store_no_store_metrics() {
        let mut s = snapshot();
        s.store = None;
        let info = GatewayInfo {
            version: "1",
            broker_mode: "upstream",
            broker: "127.0.0.1:1883".parse::<SocketAddr>().unwrap(),
        };
        let text = render(&s, &info, &Clock::now());
        assert!(!text.contains("mqttsn_store"), "{text}");
    }
}
