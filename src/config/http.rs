//! `http`: the status page, `/api/devices` and `/metrics` listener.
//!
//! Checked as a whole when read: `username` and a password source go together, and a `bind`
//! address reachable from other machines needs them (the device list names every device and
//! where it is). The password is kept as its *source* ([`SecretSource`]) and read by the shell
//! at start, never here. Must never import from `mod.rs`.
//! Owns: [`Http`] and its checks.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use serde::de::Deserializer;
use serde::{Deserialize, Serialize};

use super::checks::{checked_section, in_range, socket_addr};
use super::devices::SecretSource;

/// `http`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Http {
    /// `bind`: where the listener is; `null` turns it off.
    #[serde(deserialize_with = "optional_bind")]
    pub bind: Option<SocketAddr>,
    /// `username`: when set (with a password source), every request must log in with HTTP
    /// Basic auth. Required when `bind` is not loopback.
    pub username: Option<String>,
    /// `password`, `password_file`, `password_env`: the password, in one of three ways.
    pub password: Option<String>,
    pub password_file: Option<PathBuf>,
    pub password_env: Option<String>,
    /// `max_connections`: connections served at once; more wait in the kernel's backlog.
    #[serde(deserialize_with = "in_range::<_, 1, 1024>")]
    pub max_connections: usize,
}

/// The default listener: loopback only, so no login is needed.
pub const DEFAULT_HTTP_BIND: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9184);

impl Default for Http {
    fn default() -> Self {
        Http {
            bind: Some(DEFAULT_HTTP_BIND),
            username: None,
            password: None,
            password_file: None,
            password_env: None,
            max_connections: 16,
        }
    }
}

impl fmt::Debug for Http {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Http")
            .field("bind", &self.bind)
            .field("username", &self.username)
            .field("secret", &self.secret())
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

impl Http {
    /// Where the password comes from.
    pub fn secret(&self) -> SecretSource {
        SecretSource {
            password: self.password.clone(),
            password_file: self.password_file.clone(),
            password_env: self.password_env.clone(),
        }
    }

    /// The checks that span several keys of the section.
    fn check(&self) -> Result<(), String> {
        let secret = self.secret();
        secret.check()?;
        match (&self.username, secret.is_empty()) {
            (Some(_), true) => {
                return Err(
                    "username is set but no password is: set password, password_file or \
                     password_env"
                        .into(),
                )
            }
            (None, false) => return Err("a password is set but username is not: set both".into()),
            _ => {}
        }
        if let Some(bind) = self.bind {
            if !bind.ip().is_loopback() && self.username.is_none() {
                return Err(format!(
                    "bind: {bind} is reachable from other machines, and the status page and \
                     /api/devices there would show anyone every device and where it is: set \
                     username and password (or password_file / password_env), or bind to \
                     127.0.0.1"
                ));
            }
        }
        Ok(())
    }
}

/// `bind`: an address, or `null` for no listener.
fn optional_bind<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<SocketAddr>, D::Error> {
    struct Bind(SocketAddr);
    impl<'de> Deserialize<'de> for Bind {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            socket_addr(d).map(Bind)
        }
    }
    Option::<Bind>::deserialize(deserializer).map(|b| b.map(|b| b.0))
}

/// `http`: `null` means defaults; a mapping is read and then checked as a whole inside its
/// own `visit_map`, so the error carries the section's key path and line.
pub(super) fn http<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Http, D::Error> {
    checked_section(
        deserializer,
        "a mapping of the http listener's keys",
        |s: &mut Http| s.check(),
    )
}
