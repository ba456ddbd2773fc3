//! The fuzz targets' bodies (`fuzz/bodies/`) on a few hundred pseudo-random inputs each, under
//! plain `cargo test` on stable: a target that stops compiling, or trips on easy input, fails
//! here long before anyone runs `cargo fuzz`. Coverage-guided runs: `docs/fuzzing.md`.

#[path = "../fuzz/bodies/mod.rs"]
mod bodies;

use proptest::collection::vec;
use proptest::prelude::*;

/// A fixed seed: the same inputs on every run, so CI never fails by chance; finding new
/// failures is the fuzzer's job.
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x6d71_7474_736e),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn decode(data in vec(any::<u8>(), 0..512)) {
        bodies::sn_decode::run(&data);
    }

    #[test]
    fn mqtt_decode(data in vec(any::<u8>(), 0..2048)) {
        bodies::mqtt_decode::run(&data);
    }

    #[test]
    fn serial_raw(data in vec(any::<u8>(), 0..2048)) {
        bodies::serial::raw(&data);
    }

    #[test]
    fn serial_slip(data in vec(any::<u8>(), 0..2048)) {
        bodies::serial::slip(&data);
    }

    #[test]
    fn serial_xbee(data in vec(any::<u8>(), 0..2048)) {
        bodies::serial::xbee(&data);
    }
}

proptest! {
    #![proptest_config(config(96))]

    #[test]
    fn core_sequence(data in vec(any::<u8>(), 0..4096)) {
        bodies::core_sequence::run(&data);
    }
}

/// The body of the target called `name`.
fn body(name: &str) -> fn(&[u8]) {
    match name {
        "decode" => bodies::sn_decode::run,
        "mqtt_decode" => bodies::mqtt_decode::run,
        "serial_raw" => bodies::serial::raw,
        "serial_slip" => bodies::serial::slip,
        "serial_xbee" => bodies::serial::xbee,
        "core_sequence" => bodies::core_sequence::run,
        other => panic!("no target {other}"),
    }
}

/// Runs `data` through target `name` on its own thread: a panic or a hang (over 60 s) fails.
fn run_guarded(name: &str, data: Vec<u8>, what: &str) {
    let run = body(name);
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        run(&data);
        let _ = done.send(());
    });
    match finished.recv_timeout(std::time::Duration::from_secs(60)) {
        Ok(()) => {}
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!("{what} hangs"),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => panic!("{what} panicked"),
    }
}

/// Every input a target once failed or hung on (`fuzz/regressions/TARGET/*`), on every run.
#[test]
fn regressions() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
    for dir in std::fs::read_dir(&root).expect("fuzz/regressions exists") {
        let dir = dir.unwrap().path();
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        for file in std::fs::read_dir(&dir).unwrap() {
            let file = file.unwrap().path();
            let data = std::fs::read(&file).unwrap();
            run_guarded(&name, data, &file.display().to_string());
        }
    }
}

/// Replays one input file through one body, e.g. a crash libFuzzer saved:
/// `FUZZ_TARGET=core_sequence FUZZ_INPUT=fuzz/artifacts/core_sequence/crash-... FUZZ_TRACE=1
/// cargo test --test fuzz_smoke replay -- --ignored --nocapture`.
#[test]
#[ignore = "needs FUZZ_TARGET and FUZZ_INPUT"]
fn replay() {
    let target = std::env::var("FUZZ_TARGET").expect("FUZZ_TARGET names a target");
    let input = std::env::var("FUZZ_INPUT").expect("FUZZ_INPUT names a file");
    let data = std::fs::read(&input).expect("FUZZ_INPUT is readable");
    body(&target)(&data);
}

// ------------------------------------------------------------- what the targets found

use std::time::Instant;

use mqttsn_gateway::codec::{self, Message, ReturnCode};
use mqttsn_gateway::core::{DeviceAddr, Gateway, Output, Settings, TransportId};

/// Found by `core_sequence`: a ClientId with U+0000 cannot go into an MQTT CONNECT
/// ([MQTT-1.5.3-2]), so the upstream session could never open; the gateway refuses it at once.
#[test]
fn connect_with_nul_in_client_id_is_refused() {
    let now = Instant::now();
    let mut gw = Gateway::new(Settings::default(), now);
    let from = DeviceAddr::udp(TransportId(0), "10.0.0.1:1000".parse().unwrap());
    let connect = Message::Connect(codec::Connect {
        will: false,
        clean_session: true,
        protocol_id: codec::PROTOCOL_ID_V1_2,
        duration: 60,
        client_id: "a\0b".to_owned(),
    });
    gw.handle_frame(now, from.clone(), connect.to_bytes().unwrap());
    let out: Vec<Output> = std::iter::from_fn(|| gw.poll_output()).collect();
    let refused = Message::Connack {
        return_code: ReturnCode::NotSupported,
    }
    .to_bytes()
    .unwrap();
    assert_eq!(
        out,
        vec![Output::Transmit {
            to: from,
            frame: refused
        }]
    );
    assert_eq!(gw.device_count(), 0);
}
