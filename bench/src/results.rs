//! The rows of the result table and the arithmetic behind them (rates, percentages, percentiles).
//! Owns: formatting numbers. Never: measuring anything.

use crate::*;

pub(crate) struct Row {
    pub(crate) metric: String,
    pub(crate) value: String,
    pub(crate) target: String,
    pub(crate) notes: String,
}

pub(crate) fn row(
    metric: impl Into<String>,
    value: impl Into<String>,
    target: &str,
    notes: impl Into<String>,
) -> Row {
    Row {
        metric: metric.into(),
        value: value.into(),
        target: target.into(),
        notes: notes.into(),
    }
}

pub(crate) fn rate(n: u64, d: Duration) -> f64 {
    if d.is_zero() {
        0.0
    } else {
        n as f64 / d.as_secs_f64()
    }
}

pub(crate) fn pct(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        100.0 * a as f64 / b as f64
    }
}

pub(crate) fn fmt_rate(r: f64) -> String {
    let r = r.round() as u64;
    let s = r.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

pub(crate) fn mb(kb: u64) -> String {
    format!("{:.1} MB", kb as f64 / 1024.0)
}

pub(crate) fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub(crate) fn percentile_d(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::MAX;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// A row if the gateway exited or logged warnings.
pub(crate) fn gateway_health(gwp: &mut Proc, metric: &str, rows: &mut Vec<Row>) {
    let alive = gwp.alive();
    let (nw, ex) = log_warnings(&gwp.log);
    if nw > 0 || !alive {
        rows.push(row(
            metric,
            if alive {
                nw.to_string()
            } else {
                "EXITED".into()
            },
            "0",
            ex.join(" | "),
        ));
    }
}
