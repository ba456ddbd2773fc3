//! CPU time of processes from `/proc/<pid>/stat` (utime + stime, every thread of the process),
//! and the CPU per message of a measured window for the gateway, the broker and the bench.
//! Owns: reading and converting clock ticks. Never: measuring a window itself (the caller
//! reads just before and just after it).

use crate::*;

/// Clock ticks per second (`getconf CLK_TCK`, read once; 100 if that fails).
pub(crate) fn clk_tck() -> u64 {
    static TCK: OnceLock<u64> = OnceLock::new();
    *TCK.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .filter(|t| *t > 0)
            .unwrap_or(100)
    })
}

/// utime + stime of `pid` in clock ticks. The fields are read after the LAST ')' because the
/// command name in parentheses may itself contain spaces and parentheses.
pub(crate) fn cpu_ticks(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_ticks(&s)
}

/// `cpu_ticks` of this process (the bench and all its threads).
pub(crate) fn own_ticks() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/stat").ok()?;
    parse_ticks(&s)
}

fn parse_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After ')' come field 3 (state), 4, ...: utime is field 14, stime field 15.
    let mut f = rest.split_whitespace().skip(11);
    let utime: u64 = f.next()?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some(utime + stime)
}

/// CPU ticks of the gateway (if any), the broker and the bench at one instant.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct CpuSnap {
    pub(crate) gateway: Option<u64>,
    pub(crate) broker: Option<u64>,
    pub(crate) bench: Option<u64>,
}

impl CpuSnap {
    pub(crate) fn take(gateway: Option<u32>, broker: u32) -> CpuSnap {
        CpuSnap {
            gateway: gateway.and_then(cpu_ticks),
            broker: cpu_ticks(broker),
            bench: own_ticks(),
        }
    }
}

/// CPU per message over a window: µs of CPU (utime + stime) per message delivered.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct CpuPerMsg {
    pub(crate) gateway: Option<f64>,
    pub(crate) broker: Option<f64>,
    pub(crate) bench: Option<f64>,
}

impl CpuPerMsg {
    pub(crate) fn between(before: &CpuSnap, after: &CpuSnap, msgs: u64) -> CpuPerMsg {
        let per = |b: Option<u64>, a: Option<u64>| {
            let d = a?.checked_sub(b?)?;
            (msgs > 0).then(|| ticks_us(d) / msgs as f64)
        };
        CpuPerMsg {
            gateway: per(before.gateway, after.gateway),
            broker: per(before.broker, after.broker),
            bench: per(before.bench, after.bench),
        }
    }
}

/// Ticks to µs.
pub(crate) fn ticks_us(ticks: u64) -> f64 {
    ticks as f64 * 1e6 / clk_tck() as f64
}

/// "12.3" or "—".
pub(crate) fn fmt_us(v: Option<f64>) -> String {
    v.map_or("—".to_string(), |v| format!("{v:.1}"))
}

/// The gateway process's CPU per message between `before` (ticks) and now, for a note.
pub(crate) fn gateway_cpu_note(pid: u32, before: Option<u64>, msgs: u64) -> String {
    match (before, cpu_ticks(pid)) {
        (Some(b), Some(a)) if msgs > 0 && a >= b => format!(
            "; gateway CPU {:.1} µs/msg (utime+stime over the whole test, drain included)",
            ticks_us(a - b) / msgs as f64
        ),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_after_the_last_paren() {
        // comm "a) (b c" with spaces and parentheses; utime 7, stime 5.
        let s = "123 (a) (b c) S 1 123 123 0 -1 4194560 100 0 0 0 7 5 0 0 20 0 4 0 1000 0 0";
        assert_eq!(parse_ticks(s), Some(12));
        assert_eq!(parse_ticks("no paren here"), None);
    }

    #[test]
    fn own_process_has_ticks_and_tck_is_sane() {
        assert!(own_ticks().is_some());
        assert!(clk_tck() >= 1);
    }
}
