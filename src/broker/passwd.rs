//! `broker.embedded.users_file`: the user table of the embedded broker, read from a file that
//! `mosquitto_passwd` wrote, so users can be managed with mosquitto's own tool.
//!
//! One `user:hash` per line; blank lines and lines starting with `#` are skipped. The hashes
//! mosquitto 2.0 reads:
//! - `$7$<iterations>$<salt, base64>$<hash, base64>`: PBKDF2-HMAC-SHA512, 64-byte hash (what
//!   `mosquitto_passwd` 2.0 writes by default, `-H sha512-pbkdf2`);
//! - `$6$<salt, base64>$<hash, base64>`: SHA-512(password ‖ salt) (`-H sha512`, mosquitto 1.x).
//!
//! Anything else (a plain-text password, argon2id `$8$` of mosquitto 2.1) is refused with the
//! line and the reason. Owns: parsing and checking a password. Must never: log or keep a
//! password, compare a hash in time that depends on where it differs, or name the broker crate.

use std::collections::HashMap;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use sha2::{Digest, Sha512};

use super::constant_time_eq;

/// Highest PBKDF2 iteration count accepted; mosquitto writes 101. A line asking for more would
/// make every CONNECT of that user cost seconds of CPU.
const MAX_ITERATIONS: u32 = 1_000_000;
/// Longest line of a users file; mosquitto's hashes are about 130 bytes.
const MAX_LINE: usize = 4096;

/// Why a users file was refused: the line (1-based) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct PasswdError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong, never containing the password or hash.
    pub reason: String,
}

/// One stored hash.
#[derive(Clone, PartialEq, Eq)]
enum Hash {
    /// `$7$`: PBKDF2-HMAC-SHA512.
    Pbkdf2 {
        iterations: u32,
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
    /// `$6$`: SHA-512(password ‖ salt).
    Sha512 { salt: Vec<u8>, hash: Vec<u8> },
}

impl Hash {
    /// Whether `password` hashes to this, compared in constant time.
    fn verify(&self, password: &[u8]) -> bool {
        match self {
            Hash::Pbkdf2 {
                iterations,
                salt,
                hash,
            } => {
                let mut out = vec![0u8; hash.len()];
                pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, *iterations, &mut out);
                constant_time_eq(&out, hash)
            }
            Hash::Sha512 { salt, hash } => {
                let mut h = Sha512::new();
                h.update(password);
                h.update(salt);
                constant_time_eq(&h.finalize(), hash)
            }
        }
    }
}

/// The users of a users file: user name → hash. Its Debug lists the names only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Users {
    users: HashMap<String, Hash>,
}

impl std::fmt::Debug for Users {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&String> = self.users.keys().collect();
        names.sort();
        f.debug_struct("Users")
            .field("names", &names)
            .finish_non_exhaustive()
    }
}

/// Checked against when the user name is unknown, so the answer takes as long as for a known
/// user (mosquitto's default cost).
fn decoy() -> Hash {
    Hash::Pbkdf2 {
        iterations: 101,
        salt: vec![0; 12],
        hash: vec![0; 64],
    }
}

impl Users {
    /// Reads a users file's text.
    pub fn parse(text: &str) -> Result<Users, PasswdError> {
        let mut users = HashMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let err = |reason: String| PasswdError { line, reason };
            if raw.len() > MAX_LINE {
                return Err(err(format!("longer than {MAX_LINE} bytes")));
            }
            let trimmed = raw.trim_end_matches('\r');
            if trimmed.trim().is_empty() || trimmed.trim_start().starts_with('#') {
                continue;
            }
            let Some((name, hash)) = trimmed.split_once(':') else {
                return Err(err(
                    "not `user:hash` (no `:`); make the file with mosquitto_passwd".into(),
                ));
            };
            if name.is_empty() {
                return Err(err("the user name is empty".into()));
            }
            let hash = parse_hash(hash).map_err(err)?;
            if users.insert(name.to_owned(), hash).is_some() {
                return Err(err(format!("user `{name}` appears a second time")));
            }
        }
        Ok(Users { users })
    }

    /// How many users there are.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether the file named no user.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Whether `name` is a user.
    pub fn contains(&self, name: &str) -> bool {
        self.users.contains_key(name)
    }

    /// Whether `user` exists and `password` is theirs. An unknown user costs a hash too.
    pub fn verify(&self, user: &str, password: &[u8]) -> bool {
        match self.users.get(user) {
            Some(hash) => hash.verify(password),
            None => {
                let _ = decoy().verify(password);
                false
            }
        }
    }
}

fn b64(field: &str, what: &str) -> Result<Vec<u8>, String> {
    STANDARD
        .decode(field)
        .map_err(|e| format!("the {what} is not base64 ({e})"))
}

fn parse_hash(text: &str) -> Result<Hash, String> {
    let Some(rest) = text.strip_prefix('$') else {
        return Err(
            "plain-text password: hash the file with `mosquitto_passwd -U FILE` \
                    (or add users with `mosquitto_passwd -b FILE USER PASSWORD`)"
                .into(),
        );
    };
    let fields: Vec<&str> = rest.split('$').collect();
    match fields.as_slice() {
        ["7", iterations, salt, hash] => {
            let iterations: u32 = iterations
                .parse()
                .map_err(|_| format!("$7$: iteration count `{iterations}` is not a number"))?;
            if iterations == 0 || iterations > MAX_ITERATIONS {
                return Err(format!(
                    "$7$: iteration count {iterations} is outside 1..={MAX_ITERATIONS}"
                ));
            }
            let salt = b64(salt, "salt")?;
            let hash = b64(hash, "hash")?;
            if hash.len() != 64 {
                return Err(format!(
                    "$7$: the hash is {} bytes, PBKDF2-HMAC-SHA512 gives 64",
                    hash.len()
                ));
            }
            Ok(Hash::Pbkdf2 {
                iterations,
                salt,
                hash,
            })
        }
        ["6", salt, hash] => {
            let salt = b64(salt, "salt")?;
            let hash = b64(hash, "hash")?;
            if hash.len() != 64 {
                return Err(format!(
                    "$6$: the hash is {} bytes, SHA-512 gives 64",
                    hash.len()
                ));
            }
            Ok(Hash::Sha512 { salt, hash })
        }
        ["7", ..] => Err("$7$ wants `$7$<iterations>$<salt>$<hash>`".into()),
        ["6", ..] => Err("$6$ wants `$6$<salt>$<hash>`".into()),
        ["8", ..] => Err("argon2id hashes ($8$, mosquitto 2.1) are not supported: \
                          write this user with `mosquitto_passwd -H sha512-pbkdf2`"
            .into()),
        [kind, ..] => Err(format!(
            "unknown hash type `${kind}$` (supported: $7$ PBKDF2-SHA512, $6$ SHA-512)"
        )),
        [] => Err("empty hash".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Written by mosquitto_passwd 2.0.11: `-c -b f alice 's3cret pw'` and
    // `-H sha512 -c -b f bob hunter2`.
    const ALICE: &str = "alice:$7$101$HeRxT687d1Jgofe4$AoDrjbkm/UbamhHY8x+7jQI4oKvFNNPtnK7vby/hevK8FsS3DNyG2LnFVORgM5sgi6ZEECpUCvIfHhxYuHpZCg==";
    const BOB: &str = "bob:$6$vfpqmGEHoyGOswAb$HCy5HUbwrEzw+M/fPbxYxyAOvbAf2mpbzeAdcvZjZJED04EzneQsQg4MVrJ7tQCrWzyP3CeXetav9T7okHjBbg==";

    #[test]
    fn mosquitto_hashes_verify() {
        let users = Users::parse(&format!("# users\n\n{ALICE}\r\n{BOB}\n")).unwrap();
        assert_eq!(users.len(), 2);
        assert!(users.verify("alice", b"s3cret pw"));
        assert!(!users.verify("alice", b"s3cret pW"));
        assert!(!users.verify("alice", b""));
        assert!(users.verify("bob", b"hunter2"));
        assert!(!users.verify("bob", b"hunter3"));
        assert!(!users.verify("carol", b"hunter2"));
        assert!(!users.verify("Alice", b"s3cret pw"));
    }

    #[test]
    fn debug_shows_names_not_hashes() {
        let users = Users::parse(ALICE).unwrap();
        let shown = format!("{users:?}");
        assert!(shown.contains("alice"), "{shown}");
        assert!(!shown.contains("HeRxT"), "{shown}");
    }

    fn line_of(text: &str) -> (usize, String) {
        let e = Users::parse(text).unwrap_err();
        (e.line, e.reason)
    }

    #[test]
    fn malformed_lines_name_their_line() {
        let (line, reason) = line_of(&format!("{ALICE}\ncarol:plaintext\n"));
        assert_eq!(line, 2);
        assert!(reason.contains("plain-text"), "{reason}");
        assert!(
            !reason.contains("plaintext"),
            "the password leaked: {reason}"
        );

        let (line, reason) = line_of("\n\nnocolon\n");
        assert_eq!(line, 3);
        assert!(reason.contains("no `:`"), "{reason}");

        assert!(line_of(":$6$AAAA$AAAA").1.contains("empty"));
        assert!(line_of("u:$7$abc$AAAA$AAAA").1.contains("not a number"));
        assert!(line_of("u:$7$0$AAAA$AAAA").1.contains("outside"));
        assert!(line_of("u:$7$101$AAAA").1.contains("$7$ wants"));
        assert!(line_of("u:$7$101$!!$AAAA").1.contains("salt is not base64"));
        assert!(line_of("u:$7$101$AAAA$AAAA").1.contains("64"));
        assert!(line_of("u:$6$AAAA$AAAA").1.contains("64"));
        assert!(line_of("u:$8$x$y$z").1.contains("argon2id"));
        assert!(line_of("u:$5$x$y").1.contains("unknown hash type"));
        let (line, reason) = line_of(&format!("{ALICE}\n{ALICE}\n"));
        assert_eq!(line, 2);
        assert!(reason.contains("second time"), "{reason}");
        assert!(line_of(&"x".repeat(MAX_LINE + 1)).1.contains("longer"));
    }

    #[test]
    fn empty_file_has_no_users() {
        let users = Users::parse("# nobody yet\n").unwrap();
        assert!(users.is_empty());
        assert!(!users.verify("", b""));
    }
}
