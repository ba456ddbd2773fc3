//! The bodies of the fuzz targets, one module per target (or family of targets).
//!
//! Each body is a plain `fn(&[u8])` that panics when it finds a bug. Two callers share them:
//! the libFuzzer targets in `fuzz/fuzz_targets/` (coverage-guided, `cargo fuzz run NAME`), and
//! `tests/fuzz_smoke.rs` in the main crate, which includes this file by path and runs every
//! body on a few hundred pseudo-random inputs under plain `cargo test` on stable, so a target
//! that no longer compiles or trips on easy input fails CI. Paths between the modules are
//! `super::`, never `crate::`, because the including crate differs.

pub mod core_sequence;
pub mod gen;
pub mod mqtt_decode;
pub mod serial;
pub mod sn_decode;
