//! The JSON of `/api/gateway`, `/api/devices` and `/api/devices/{client_id}`, built from a
//! [`Snapshot`]. Times are RFC 3339 UTC (`…_at`) plus whole seconds relative to the snapshot
//! (`…_ago_s` for the past, `…_in_s` for deadlines).
//!
//! Owns the field names (docs/operations.md lists them). Must never ask the driver anything.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use super::{Clock, GatewayInfo};
use crate::core::{DeviceView, PeerAddr};
use crate::shell::status::Snapshot;

/// `/api/gateway`: the gateway itself, its transports and broker link, the device totals.
pub fn gateway(s: &Snapshot, info: &GatewayInfo, started: &Clock) -> Value {
    let mut by_state = serde_json::Map::new();
    for (state, n) in crate::core::DeviceState::ALL
        .iter()
        .zip(s.totals.by_state.iter())
    {
        by_state.insert(state.name().into(), json!(n));
    }
    let transports: Vec<Value> = s
        .transports
        .iter()
        .enumerate()
        .map(|(i, (t, c))| {
            json!({
                "id": i,
                "kind": t.kind,
                "name": t.name,
                "frames_in": c.frames_in,
                "frames_out": c.frames_out,
                "bytes_in": c.bytes_in,
                "bytes_out": c.bytes_out,
            })
        })
        .collect();
    json!({
        "version": info.version,
        "started_at": rfc3339(started.wall),
        "uptime_s": s.taken.saturating_duration_since(started.mono).as_secs(),
        "now": rfc3339(started.wall_of(s.taken)),
        "broker": {
            "mode": info.broker_mode,
            "address": info.broker.to_string(),
            "link": s.upstream.link(),
            "sessions_connected": s.upstream.connected,
        },
        "transports": transports,
        "devices": by_state,
        "sleep_buffered": s.totals.sleep_buffered,
        "store": s.store.is_some(),
        "aggregate": s.aggregate.map(|a| json!({
            "shared_sessions": a.shared,
            "shared_sessions_connected": a.shared_connected,
            "devices": a.devices,
            "filters": a.filters,
            "memberships": a.memberships,
            "in_flight": a.in_flight,
        })),
    })
}

/// `/api/devices`: every device, sorted by ClientId.
pub fn devices(s: &Snapshot, clock: &Clock) -> Value {
    let mut views: Vec<&DeviceView> = s.devices.iter().collect();
    views.sort_by(|a, b| a.client_id.cmp(&b.client_id));
    Value::Array(views.into_iter().map(|d| device(d, s, clock)).collect())
}

/// One device.
pub fn device(d: &DeviceView, s: &Snapshot, clock: &Clock) -> Value {
    let transport = s.transports.get(usize::from(d.addr.transport.0));
    let address = match &d.addr.peer {
        PeerAddr::Udp(a) => a.to_string(),
        PeerAddr::Link(l) => hex(l),
    };
    let ago = |at: Instant| s.taken.saturating_duration_since(at).as_secs();
    let until = |at: Instant| at.saturating_duration_since(s.taken).as_secs();
    let at = |i: Instant| rfc3339(clock.wall_of(i));
    json!({
        "client_id": d.client_id,
        "transport": {
            "id": d.addr.transport.0,
            "kind": transport.map(|(t, _)| t.kind),
            "name": transport.map(|(t, _)| t.name.as_str()),
        },
        "address": address,
        "node": d.addr.wireless_node_id.as_deref().map(hex),
        "state": d.state.name(),
        "connected_since_at": d.connected_since.map(at),
        "connected_since_ago_s": d.connected_since.map(ago),
        "last_seen_at": at(d.last_heard),
        "last_seen_ago_s": ago(d.last_heard),
        "keep_alive_s": d.keep_alive.as_secs(),
        "keep_alive_deadline_at": d.keep_alive_deadline.map(at),
        "keep_alive_deadline_in_s": d.keep_alive_deadline.map(until),
        "sleep_duration_s": d.sleep_duration.map(|x| x.as_secs()),
        "sleep_deadline_at": d.sleep_deadline.map(at),
        "sleep_deadline_in_s": d.sleep_deadline.map(until),
        "queued_messages": d.queued,
        "queued_bytes": d.queued_bytes,
        "inflight_down": u8::from(d.inflight_down),
        "inflight_up": d.inflight_up,
        "clean_session": d.clean_session,
        "topics": d.topics.iter().map(|(id, name)| json!({"id": id, "name": name})).collect::<Vec<_>>(),
        "subscriptions": d.subscriptions.iter().map(|(f, q)| json!({"filter": f, "qos": q})).collect::<Vec<_>>(),
        "will_topic": d.will_topic,
    })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `2026-12-02T01:10:46Z` (UTC, whole seconds); times before 1970 show as the epoch.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01 (H. Hinnant's civil_from_days).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_in_utc() {
        let t = |s: u64| rfc3339(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(t(0), "1970-01-01T00:00:00Z");
        assert_eq!(t(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(t(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(t(4_107_542_399), "2100-02-28T23:59:59Z");
    }
}
