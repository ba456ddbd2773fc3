//! Tests that need a network of their own (multicast groups, several source addresses, a
//! narrowed port range): the test re-executes its own binary under `unshare -n` (a private
//! network namespace: only `lo`, nothing reaches another machine) and the child runs the
//! scenario there.
//!
//! Owns: the re-execution, the check that it can be done, and the "it really ran" marker.
//! Never: the scenario itself, or a skip that is silent (it prints a loud SKIPPED line).

use std::process::Command;

/// Printed by the child when the scenario passed, so the parent knows it really ran.
const PASSED: &str = "namespace scenario passed";

/// Whether this process is the child, inside the namespace (`child_env` is set).
pub fn in_private_netns(child_env: &str) -> bool {
    std::env::var_os(child_env).is_some()
}

/// The child says its scenario passed.
pub fn netns_scenario_passed() {
    println!("{PASSED}");
}

/// Why a private network namespace cannot be had here, if it cannot: root, `unshare`, `ip`,
/// and the `extra` tools the scenario runs (command, arguments that succeed).
pub fn no_private_netns(extra: &[(&str, &[&str])]) -> Option<String> {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        });
    if uid.as_deref() != Some("0") {
        return Some("needs root for `unshare -n`".into());
    }
    let base: [(&str, &[&str]); 2] = [("unshare", &["-n", "true"]), ("ip", &["-V"])];
    for (tool, args) in base.iter().chain(extra) {
        match Command::new(tool).args(*args).output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => {
                return Some(format!(
                    "`{tool} {}` failed: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&o.stderr).trim()
                ))
            }
            Err(e) => {
                return Some(format!(
                    "`{tool}` not available ({e}); install util-linux / iproute2"
                ))
            }
        }
    }
    None
}

/// Runs test `test` of this test binary again under `unshare -n` with `child_env` set, and
/// asserts that it passed there (its output is printed either way).
pub fn run_in_private_netns(test: &str, child_env: &str) {
    let exe = std::env::current_exe().expect("test binary path");
    let out = Command::new("unshare")
        .arg("-n")
        .arg(exe)
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(child_env, "1")
        .output()
        .expect("run the test binary under unshare -n");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("--- child stdout ---\n{stdout}--- child stderr ---\n{stderr}");
    assert!(out.status.success(), "the namespace scenario failed");
    assert!(
        stdout.contains(PASSED),
        "the namespace scenario did not run"
    );
}
