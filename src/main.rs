//! `mqttsn-gateway`: the command line. Parses arguments, loads `gateway.yaml`, applies the
//! command-line overrides, sets up logging and starts the shell. The only place `anyhow` is used.
//! Owns: the CLI and logging set-up. Must never: hold gateway logic (that is the library's).

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use mqttsn_gateway::config::{self, Config};
use mqttsn_gateway::shell::{LoadConfig, Reloader, SetLogFilter};
use tracing_subscriber::EnvFilter;

const DEFAULT_CONFIG: &str = "gateway.yaml";

const EXAMPLES: &str = "\
EXAMPLES:
  mqttsn-gateway                              run with ./gateway.yaml (built-in defaults if absent)
  mqttsn-gateway run -c /etc/mqttsn/gateway.yaml
  mqttsn-gateway check -c gateway.yaml        validate and print the effective configuration
  mqttsn-gateway --udp 0.0.0.0:1884 --udp '[::]:1884' --broker broker.local:1883 --log debug
  RUST_LOG=mqttsn_gateway=trace mqttsn-gateway    RUST_LOG wins over --log and log.level

Configuration keys are described in docs/configuration.md.";

/// MQTT-SN v1.2 gateway: devices on UDP become MQTT 3.1.1 clients of a broker.
#[derive(Debug, Parser)]
#[command(version, about, after_help = EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    /// Configuration file [default: ./gateway.yaml; built-in defaults if that is absent]
    #[arg(short, long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,

    /// UDP address to listen on, e.g. 0.0.0.0:1884 or [::]:1884; repeatable; replaces transports.udp
    #[arg(long, global = true, value_name = "ADDR")]
    udp: Vec<SocketAddr>,

    /// Use the upstream broker at HOST:PORT (e.g. [::1]:1883); sets broker.mode to upstream
    #[arg(long, global = true, value_name = "HOST:PORT", value_parser = config::parse_host_port)]
    broker: Option<(String, u16)>,

    /// Log filter, e.g. info or info,mqttsn_gateway=debug; replaces log.level (RUST_LOG wins)
    #[arg(long, global = true, value_name = "LEVEL", value_parser = parse_log_level)]
    log: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway (the default)
    Run,
    /// Validate the configuration, print the effective configuration as YAML and exit
    Check {
        /// Also try what a start would do: bind the ports, open the serial ports, write in the
        /// data directories, read every secret and certificate, and connect to the upstream
        /// broker (TLS handshake and MQTT CONNECT); prints one line per step
        #[arg(long)]
        deep: bool,
    },
}

fn parse_log_level(text: &str) -> Result<String, String> {
    config::check_log_level(text).map(|()| text.to_owned())
}

/// Exit code for a configuration that does not load (clap uses 2 for usage errors too).
const EXIT_BAD_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (mut config, note) = match load(
        cli.config.as_deref(),
        matches!(cli.command, Some(Command::Check { .. })),
    ) {
        Ok(loaded) => loaded,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    // SIGHUP reads the same file again with the same overrides (none without a file).
    let reload_config: Option<LoadConfig> = if note.is_none() {
        let path = cli
            .config
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
        let (udp, broker, log) = (cli.udp.clone(), cli.broker.clone(), cli.log.clone());
        Some(Box::new(move || {
            let mut c = Config::load(&path).map_err(|e| e.to_string())?;
            c.apply_overrides(&udp, broker.clone(), log.clone());
            Ok(c)
        }))
    } else {
        None
    };
    config.apply_overrides(&cli.udp, cli.broker, cli.log);

    match cli.command.unwrap_or(Command::Run) {
        Command::Check { deep } => {
            if let Some(note) = note {
                eprintln!("{note}");
            }
            // As YAML comments: what admission means here, and the output still loads back.
            for line in admission_report(&config) {
                println!("# {line}");
            }
            if !deep {
                print!("{}", config.redacted().to_yaml());
                return ExitCode::SUCCESS;
            }
            let report = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt.block_on(mqttsn_gateway::shell::check::deep(&config)),
                Err(e) => {
                    eprintln!("error: starting the tokio runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            print!("{}", report.text());
            if report.ok() {
                println!("all checks passed");
                ExitCode::SUCCESS
            } else {
                println!("some checks failed: see FAIL above");
                ExitCode::FAILURE
            }
        }
        Command::Run => match run(config, note, reload_config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("error: {}", error_chain(&err));
                ExitCode::FAILURE
            }
        },
    }
}

/// The error and its causes, each said once: many of the gateway's errors already name their
/// cause in their own message (`cannot bind UDP …: Address already in use`), so a cause whose
/// text is already there is not repeated.
fn error_chain(err: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// What `check` says of `admission`, `devices` and `qos_minus_one`, one line each.
fn admission_report(config: &Config) -> Vec<String> {
    let rules = config.all_devices().count();
    let from_file = config.devices_from_file.len();
    let entries = match (rules, from_file) {
        (1, 0) => "1 entry".to_owned(),
        (n, 0) => format!("{n} entries"),
        (n, f) => format!("{n} entries, {f} of them from devices_file"),
    };
    let admission = match config.admission {
        config::Admission::Open => format!(
            "admission: open — any device that sends CONNECT gets a session; devices: {entries} \
             (they bind or restrict the ClientIds they name)"
        ),
        config::Admission::Listed => format!(
            "admission: listed — only a ClientId matched by devices ({entries}), from where its \
             entry binds it, gets a session; others get CONNACK rejected: not supported"
        ),
    };
    let qos = match &config.qos_minus_one {
        q if q.is_all() => {
            "qos_minus_one: all — anyone may publish QoS -1 to any predefined id or short name"
                .to_owned()
        }
        config::QosMinusOne::Listed(_) => {
            "qos_minus_one: listed — only the listed topics and/or sources".to_owned()
        }
        _ => "qos_minus_one: off — every QoS -1 publish is dropped".to_owned(),
    };
    vec![admission, qos]
}

/// Loads the configuration. Without `-c`, a missing `./gateway.yaml` means built-in defaults
/// (for `run`) and the returned note says so; a file named with `-c` must exist.
fn load(
    path: Option<&Path>,
    strict: bool,
) -> Result<(Config, Option<String>), config::ConfigError> {
    match path {
        Some(path) => Ok((Config::load(path)?, None)),
        None => {
            let path = Path::new(DEFAULT_CONFIG);
            if !strict && !path.exists() {
                let note = format!(
                    "no {DEFAULT_CONFIG} in the current directory: running on built-in defaults"
                );
                return Ok((Config::default(), Some(note)));
            }
            Ok((Config::load(path)?, None))
        }
    }
}

fn run(
    config: Config,
    note: Option<String>,
    reload_config: Option<LoadConfig>,
) -> anyhow::Result<()> {
    let set_log_filter = init_logging(&config.log)?;
    if let Some(note) = note {
        tracing::info!("{note}");
    }
    tracing::debug!(config = %config.redacted().to_yaml(), "effective configuration");
    let runtime = build_runtime(&config.runtime).context("starting the tokio runtime")?;
    runtime
        .block_on(mqttsn_gateway::shell::run(
            config,
            reload_config.map(|load| Reloader {
                load,
                set_log_filter,
            }),
        ))
        .context("gateway stopped")
}

/// `runtime.worker_threads`: 1 is tokio's current-thread scheduler (every task on this
/// thread, no hand-over between threads per message); more is the multi-thread scheduler.
fn build_runtime(r: &config::Runtime) -> std::io::Result<tokio::runtime::Runtime> {
    if r.worker_threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(r.worker_threads)
            .enable_all()
            .build()
    }
}

/// Logs to stderr, filtered by `RUST_LOG` when it is set, else by `level` (`--log` / `log.level`).
///
/// A bare level applies to the gateway; libraries stay at `warn` unless named
/// ([`config::effective_log_filter`]). `RUST_LOG` is taken as written. Returns how to set a new
/// `log.level` (SIGHUP): a no-op that says so when `RUST_LOG` wins.
fn init_logging(log: &config::Log) -> anyhow::Result<SetLogFilter> {
    let from_env = std::env::var("RUST_LOG").is_ok_and(|e| !e.trim().is_empty());
    let filter = match std::env::var("RUST_LOG") {
        Ok(env) if !env.trim().is_empty() => {
            EnvFilter::try_new(&env).with_context(|| format!("invalid RUST_LOG `{env}`"))?
        }
        _ => {
            let level = &log.level;
            EnvFilter::try_new(config::effective_log_filter(level))
                .with_context(|| format!("invalid log level `{level}`"))?
        }
    };
    let builder = tracing_subscriber::fmt().with_writer(std::io::stderr);
    // One arm per format: each subscriber type has its own reload handle type.
    macro_rules! install {
        ($builder:expr) => {{
            let builder = $builder.with_env_filter(filter).with_filter_reloading();
            let handle = builder.reload_handle();
            builder.init();
            let set: SetLogFilter = if from_env {
                Box::new(|_| Err("RUST_LOG is set and wins over log.level: unchanged".into()))
            } else {
                Box::new(move |level: &str| {
                    let filter = EnvFilter::try_new(config::effective_log_filter(level))
                        .map_err(|e| e.to_string())?;
                    handle.reload(filter).map_err(|e| e.to_string())
                })
            };
            set
        }};
    }
    Ok(match log.format {
        config::LogFormat::Json => install!(builder.json()),
        // Colour only on a terminal, not in journald or a log file.
        config::LogFormat::Text => install!(builder.with_ansi(std::io::stderr().is_terminal())),
    })
}
