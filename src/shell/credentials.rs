//! The user names and passwords of the upstream sessions: read once at start from where the
//! config says (`password`, `password_file`, `password_env`), then filled into each session's
//! CONNECT when the driver opens it — the core never holds a credential.
//!
//! Upstream mode: a device whose rule (a `devices` entry) gives a `username` or a password
//! uses the entry's; any other session uses `broker.upstream.username` / password. User names
//! (and the global password) are templates: `{client_id}` (the device's ClientId, without
//! `client_id_prefix`) and `{transport}` (`udp` or `serial`). Embedded mode: every session logs
//! in with `broker.embedded`'s credentials. Must never: log a secret, read a file after start.

use std::path::Path;

use bytes::Bytes;

use super::error::ShellError;
use super::settings::device_key;
use crate::config::{BrokerMode, Config, SecretSource};
use crate::core::OpenFor;
use crate::mqtt;

/// A password; its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub(super) struct Secret(String);

impl Secret {
    /// The secret itself, for the one place that hands it on (never a log line).
    pub(super) fn into_inner(self) -> String {
        self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(********)")
    }
}

/// A user name template and its password.
#[derive(Debug, Clone, Default)]
struct Login {
    username: Option<String>,
    password: Option<Secret>,
    /// The password is a template too (the global one).
    password_template: bool,
}

/// Every session's credentials.
#[derive(Debug)]
pub(super) struct Credentials {
    global: Login,
    /// By index in [`Config::all_devices`]: the entry's own login, if it gives one.
    devices: Vec<Option<Login>>,
    /// Transports below this id are UDP, the others serial.
    udp_transports: usize,
    client_id_prefix: String,
}

/// Reads the secret of `source` (`key` is where it is written, e.g. `devices[2]`); `None`
/// when none is given. A file's contents lose one trailing newline.
pub(super) fn read_secret(key: &str, source: &SecretSource) -> Result<Option<Secret>, ShellError> {
    let err = |what: &str, reason: String| ShellError::Credential {
        key: format!("{key}.{what}"),
        reason,
    };
    if let Some(p) = &source.password {
        return Ok(Some(Secret(p.clone())));
    }
    if let Some(file) = &source.password_file {
        return read_file(file)
            .map(Some)
            .map_err(|reason| err("password_file", reason));
    }
    if let Some(var) = &source.password_env {
        return match std::env::var(var) {
            Ok(v) => Ok(Some(Secret(v))),
            Err(std::env::VarError::NotPresent) => Err(err(
                "password_env",
                format!("the environment variable {var} is not set"),
            )),
            Err(std::env::VarError::NotUnicode(_)) => Err(err(
                "password_env",
                format!("the environment variable {var} is not valid UTF-8"),
            )),
        };
    }
    Ok(None)
}

fn read_file(file: &Path) -> Result<Secret, String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let text = match text.strip_suffix('\n') {
        Some(t) => t.strip_suffix('\r').unwrap_or(t),
        None => &text,
    };
    Ok(Secret(text.to_owned()))
}

/// `{client_id}` and `{transport}` replaced.
fn expand(template: &str, client_id: &str, transport: &str) -> String {
    if !template.contains('{') {
        return template.to_owned();
    }
    template
        .replace("{client_id}", client_id)
        .replace("{transport}", transport)
}

impl Credentials {
    /// Reads every secret the configuration names.
    pub(super) fn load(config: &Config) -> Result<Credentials, ShellError> {
        let mut credentials = Credentials {
            global: Login::default(),
            devices: Vec::new(),
            udp_transports: config.transports.udp.len(),
            client_id_prefix: config.broker.upstream.client_id_prefix.clone(),
        };
        match config.broker.mode {
            BrokerMode::Embedded => {
                let e = &config.broker.embedded;
                credentials.global = Login {
                    username: e.username.clone(),
                    password: read_secret("broker.embedded", &e.secret())?,
                    password_template: false,
                };
            }
            BrokerMode::Upstream => {
                let u = &config.broker.upstream;
                credentials.global = Login {
                    username: u.username.clone(),
                    password: read_secret("broker.upstream", &u.secret())?,
                    password_template: true,
                };
                for (i, d) in config.all_devices().enumerate() {
                    let key = device_key(config, i);
                    let password = read_secret(&key, &d.secret)?;
                    if d.username.is_none() && password.is_none() {
                        credentials.devices.push(None);
                        continue;
                    }
                    let login = Login {
                        username: d.username.clone().or_else(|| u.username.clone()),
                        password,
                        password_template: false,
                    };
                    if login.username.is_none() {
                        return Err(ShellError::Credential {
                            key,
                            reason: "a password needs a user name (MQTT sends no password \
                                     without one): set username here or broker.upstream.username"
                                .into(),
                        });
                    }
                    credentials.devices.push(Some(login));
                }
            }
        }
        Ok(credentials)
    }

    /// Embedded mode: every session logs in with the broker's per-process login (so its
    /// `users_file` and `acl_file` never hinder the gateway's own sessions).
    pub(super) fn use_embedded_login(&mut self, username: &str, password: &[u8]) {
        self.global = Login {
            username: Some(username.to_owned()),
            password: Some(Secret(String::from_utf8_lossy(password).into_owned())),
            password_template: false,
        };
    }

    /// Fills in the user name and password of the session opened for `device` (`None`: the
    /// gateway's own session, whose `{client_id}` is its ClientId and `{transport}` empty).
    pub(super) fn fill(&self, connect: &mut mqtt::Connect, device: Option<&OpenFor>) {
        let login = device
            .and_then(|d| d.rule)
            .and_then(|r| self.devices.get(r))
            .and_then(Option::as_ref)
            .unwrap_or(&self.global);
        let (client_id, transport) = match device {
            Some(d) => (
                d.client_id.as_str(),
                if usize::from(d.transport.0) < self.udp_transports {
                    "udp"
                } else {
                    "serial"
                },
            ),
            None => (
                connect
                    .client_id
                    .strip_prefix(&self.client_id_prefix)
                    .unwrap_or(&connect.client_id),
                "",
            ),
        };
        let username = login
            .username
            .as_deref()
            .map(|u| expand(u, client_id, transport));
        let password = login.password.as_ref().map(|p| {
            let p = if login.password_template {
                expand(&p.0, client_id, transport)
            } else {
                p.0.clone()
            };
            Bytes::from(p)
        });
        // MQTT sends a password only with a user name ([MQTT-3.1.2-22]).
        connect.password = password.filter(|_| username.is_some());
        connect.username = username;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::TransportId;

    fn config(yaml: &str) -> Config {
        Config::from_yaml_str(yaml, "<test>").unwrap()
    }

    fn connect(client_id: &str) -> mqtt::Connect {
        mqtt::Connect {
            client_id: client_id.into(),
            clean_session: true,
            keep_alive: 60,
            will: None,
            username: None,
            password: None,
        }
    }

    fn open_for(client_id: &str, transport: u16, rule: Option<usize>) -> OpenFor {
        OpenFor {
            client_id: client_id.into(),
            transport: TransportId(transport),
            rule,
        }
    }

    #[test]
    fn templates_expand_per_device_and_entries_win() {
        let c = config(
            "broker:\n  mode: upstream\n  upstream:\n    client_id_prefix: gw-\n    \
             username: 'u-{client_id}-{transport}'\n    password: 'p-{client_id}'\n\
             transports:\n  udp: [{bind: '127.0.0.1:0'}]\n  serial: [{path: /dev/null}]\n\
             devices:\n  - client_id: 'own-*'\n    username: '{client_id}'\n    password: s3\n\
             \n  - client_id: 'plain'\n",
        );
        let creds = Credentials::load(&c).unwrap();
        let mut k = connect("gw-dev1");
        creds.fill(&mut k, Some(&open_for("dev1", 0, None)));
        assert_eq!(k.username.as_deref(), Some("u-dev1-udp"));
        assert_eq!(k.password.as_deref(), Some(&b"p-dev1"[..]));
        creds.fill(&mut k, Some(&open_for("dev1", 1, Some(1))));
        assert_eq!(
            k.username.as_deref(),
            Some("u-dev1-serial"),
            "entry without login"
        );
        let mut k = connect("gw-own-7");
        creds.fill(&mut k, Some(&open_for("own-7", 0, Some(0))));
        assert_eq!(k.username.as_deref(), Some("own-7"));
        assert_eq!(k.password.as_deref(), Some(&b"s3"[..]));
        let mut k = connect("gw-mqttsn-gw-1-qos-1");
        creds.fill(&mut k, None);
        assert_eq!(k.username.as_deref(), Some("u-mqttsn-gw-1-qos-1-"));
    }

    #[test]
    fn password_file_loses_one_newline_and_errors_name_the_key() {
        let dir = std::env::temp_dir().join(format!("creds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pw");
        std::fs::write(&file, "secret\n\n").unwrap();
        let source = SecretSource {
            password_file: Some(file.clone()),
            ..SecretSource::default()
        };
        let s = read_secret("devices[2]", &source).unwrap().unwrap();
        assert_eq!(s.0, "secret\n");
        assert_eq!(format!("{s:?}"), "Secret(********)");
        let missing = SecretSource {
            password_file: Some(dir.join("nope")),
            ..SecretSource::default()
        };
        let e = read_secret("devices[2]", &missing).unwrap_err().to_string();
        assert!(
            e.starts_with("devices[2].password_file: cannot read") && e.contains("nope"),
            "{e}"
        );
        let env = SecretSource {
            password_env: Some("MQTTSN_TEST_SURELY_UNSET_VAR".into()),
            ..SecretSource::default()
        };
        let e = read_secret("broker.upstream", &env)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("broker.upstream.password_env") && e.contains("not set"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn embedded_mode_uses_the_embedded_login() {
        let c = config(
            "broker:\n  embedded:\n    username: gw\n    password: pw\n  upstream:\n    \
             username: other\n",
        );
        let creds = Credentials::load(&c).unwrap();
        let mut k = connect("dev");
        creds.fill(&mut k, Some(&open_for("dev", 0, None)));
        assert_eq!(k.username.as_deref(), Some("gw"));
        assert_eq!(k.password.as_deref(), Some(&b"pw"[..]));
    }
}
