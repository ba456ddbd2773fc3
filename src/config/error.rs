//! [`ConfigError`]: why a configuration could not be loaded, with the file, line, column and
//! key path taken apart from serde_norway's message.
//!
//! Owns the error's wording (tests compare it byte for byte). Must never check values: the
//! checks are in the deserializers, so that their errors carry a location.

use std::path::PathBuf;

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read: {source}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The text is not valid YAML, or a key or value is wrong.
    #[error("{origin}{}: {}{message}", position(*.line, *.column), key_prefix(.key))]
    Invalid {
        /// The file name (or another origin such as `<string>`).
        origin: String,
        /// 1-based line, when known.
        line: Option<usize>,
        /// 1-based column, when known.
        column: Option<usize>,
        /// The key path, like `transports.udp[0].bind`; empty for the document itself.
        key: String,
        /// What is wrong.
        message: String,
    },
}

fn position(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(line), Some(column)) => format!(":{line}:{column}"),
        (Some(line), None) => format!(":{line}"),
        _ => String::new(),
    }
}

fn key_prefix(key: &str) -> String {
    if key.is_empty() {
        String::new()
    } else {
        format!("{key}: ")
    }
}

impl ConfigError {
    /// Splits a `serde_norway` error into location, key path and message.
    ///
    /// `serde_norway` renders its errors as `PATH: MESSAGE at line L column C` and exposes only
    /// the location, so the path is taken back off the front of the text. A path never contains
    /// whitespace, which tells it apart from messages such as `invalid type: ...`.
    pub(super) fn from_yaml(err: &serde_norway::Error, origin: &str) -> ConfigError {
        let mut text = err.to_string();
        let (line, column) = match err.location() {
            Some(location) => {
                let at = format!(" at line {} column {}", location.line(), location.column());
                text = text.replacen(&at, "", 1);
                (Some(location.line()), Some(location.column()))
            }
            None => (None, None),
        };
        let (mut key, message) = match text.split_once(": ") {
            Some((path, rest)) if !path.is_empty() && !path.contains(char::is_whitespace) => {
                (path.to_owned(), rest.to_owned())
            }
            _ => (String::new(), text),
        };
        // serde reports an unknown key at its parent; name the key itself.
        if let Some(unknown) = message
            .strip_prefix("unknown field `")
            .and_then(|rest| rest.split_once('`'))
            .map(|(name, _)| name)
        {
            if !key.is_empty() {
                key.push('.');
            }
            key.push_str(unknown);
        }
        ConfigError::Invalid {
            origin: origin.to_owned(),
            line,
            column,
            key,
            message,
        }
    }
}
