//! `broker.upstream.tls`: the rustls client configs of the upstream sessions, built once at
//! start — one for the global (or no) client certificate and one per distinct certificate of a
//! `devices` entry — with the start-up checks of every file they read.
//!
//! Crypto is rustls with its `ring` provider, given explicitly (never the process default).
//! A CA, certificate or key that cannot be read or parsed, a key that does not match its
//! certificate, or an expired client certificate stops the start ([`ShellError::Tls`]); a
//! certificate that expires within [`EXPIRY_WARNING`] is warned about once. Must never: read a
//! file after start, or log key material.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::crypto::ring;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tracing::{info, warn};

use super::error::ShellError;
use super::settings::device_key;
use super::upstream::TlsTarget;
use crate::config::{Config, UpstreamTls};

/// A certificate that expires sooner than this is warned about at start.
pub(super) const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 24 * 3600);

/// The TLS side of every upstream session.
pub(super) struct Tls {
    global: TlsTarget,
    /// By index in [`Config::all_devices`]: the entry's own client certificate, if it has one.
    devices: Vec<Option<TlsTarget>>,
}

impl Tls {
    /// `None` when `broker.upstream.tls` is not set. Reads and checks every file.
    pub(super) fn load(config: &Config) -> Result<Option<Tls>, ShellError> {
        let upstream = &config.broker.upstream;
        let Some(tls) = &upstream.tls else {
            if let Some((i, _)) = config
                .all_devices()
                .enumerate()
                .find(|(_, d)| d.cert_file.is_some())
            {
                return Err(ShellError::Device {
                    key: device_key(config, i),
                    reason: "cert_file is set but broker.upstream.tls is not: the certificate \
                             would never be used (set broker.upstream.tls, or remove cert_file \
                             and key_file)"
                        .into(),
                });
            }
            return Ok(None);
        };
        let name = tls.server_name.as_deref().unwrap_or(&upstream.host);
        let server_name = ServerName::try_from(name.to_owned()).map_err(|_| ShellError::Tls {
            key: "broker.upstream.tls.server_name".into(),
            file: None,
            reason: format!("`{name}` is not a DNS name or IP address"),
        })?;
        let roots = Arc::new(roots(tls)?);
        let target = |config: Arc<ClientConfig>| TlsTarget {
            config,
            server_name: server_name.clone(),
        };
        let global = match (&tls.cert_file, &tls.key_file) {
            (Some(cert), Some(key)) => {
                let keys = (
                    "broker.upstream.tls.cert_file",
                    "broker.upstream.tls.key_file",
                );
                target(client_config(tls, &roots, Some((keys, cert, key)))?)
            }
            _ => target(client_config(tls, &roots, None)?),
        };
        // One config per distinct certificate: many entries (globs) may share one.
        let mut built: HashMap<(PathBuf, PathBuf), Arc<ClientConfig>> = HashMap::new();
        let mut devices = Vec::new();
        for (i, d) in config.all_devices().enumerate() {
            let (Some(cert), Some(key)) = (&d.cert_file, &d.key_file) else {
                devices.push(None);
                continue;
            };
            let pair = (cert.clone(), key.clone());
            let config = match built.get(&pair) {
                Some(c) => c.clone(),
                None => {
                    let entry = device_key(config, i);
                    let (ck, kk) = (format!("{entry}.cert_file"), format!("{entry}.key_file"));
                    let c = client_config(tls, &roots, Some(((&ck, &kk), cert, key)))?;
                    built.insert(pair, c.clone());
                    c
                }
            };
            devices.push(Some(target(config)));
        }
        info!(
            server_name = name,
            client_certificates = built.len() + usize::from(tls.cert_file.is_some()),
            "upstream TLS"
        );
        Ok(Some(Tls { global, devices }))
    }

    /// The TLS target of a session of the device whose rule is `rule` (the global one when
    /// the rule has no certificate of its own, or for the gateway's own sessions).
    pub(super) fn target(&self, rule: Option<usize>) -> TlsTarget {
        rule.and_then(|r| self.devices.get(r))
            .and_then(Option::as_ref)
            .unwrap_or(&self.global)
            .clone()
    }
}

fn tls_error(key: &str, file: &Path, reason: impl Into<String>) -> ShellError {
    ShellError::Tls {
        key: key.to_owned(),
        file: Some(file.to_owned()),
        reason: reason.into(),
    }
}

fn read(key: &str, file: &Path) -> Result<Vec<u8>, ShellError> {
    std::fs::read(file).map_err(|e| tls_error(key, file, format!("cannot read: {e}")))
}

/// Every certificate of a PEM file (at least one).
fn certificates(key: &str, file: &Path) -> Result<Vec<CertificateDer<'static>>, ShellError> {
    let pem = read(key, file)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_error(key, file, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(tls_error(
            key,
            file,
            "holds no certificate (expected PEM `-----BEGIN CERTIFICATE-----`)",
        ));
    }
    Ok(certs)
}

/// `ca_file`, or the system's roots.
fn roots(tls: &UpstreamTls) -> Result<RootCertStore, ShellError> {
    let mut store = RootCertStore::empty();
    match &tls.ca_file {
        Some(file) => {
            let key = "broker.upstream.tls.ca_file";
            for (i, cert) in certificates(key, file)?.into_iter().enumerate() {
                check_expiry(key, file, &cert, false)?;
                store.add(cert).map_err(|e| {
                    tls_error(
                        key,
                        file,
                        format!("certificate {}: not usable as a CA: {e}", i + 1),
                    )
                })?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found
                    .errors
                    .first()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default();
                return Err(ShellError::Tls {
                    key: "broker.upstream.tls".into(),
                    file: None,
                    reason: format!(
                        "no system root certificates found{why}: install ca-certificates or set \
                         broker.upstream.tls.ca_file"
                    ),
                });
            }
        }
    }
    Ok(store)
}

/// One client config: the roots, ALPN, and the client certificate when given
/// (`((cert key, key key), cert file, key file)`).
fn client_config(
    tls: &UpstreamTls,
    roots: &Arc<RootCertStore>,
    client: Option<((&str, &str), &Path, &Path)>,
) -> Result<Arc<ClientConfig>, ShellError> {
    let builder = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| ShellError::Tls {
            key: "broker.upstream.tls".into(),
            file: None,
            reason: e.to_string(),
        })?
        .with_root_certificates(roots.clone());
    let mut config = match client {
        None => builder.with_no_client_auth(),
        Some(((cert_key, key_key), cert_file, key_file)) => {
            let chain = certificates(cert_key, cert_file)?;
            check_expiry(cert_key, cert_file, &chain[0], true)?;
            let pem = read(key_key, key_file)?;
            let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
                tls_error(
                    key_key,
                    key_file,
                    format!("not a PEM private key (PKCS#8, PKCS#1 or SEC1): {e}"),
                )
            })?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                tls_error(
                    key_key,
                    key_file,
                    format!("cannot be used with {}: {e}", cert_file.display()),
                )
            })?
        }
    };
    config.alpn_protocols = tls.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Ok(Arc::new(config))
}

/// An expired certificate: an error for a client certificate (`client`), a warning for a CA;
/// one that expires within [`EXPIRY_WARNING`]: a warning naming the file and the date.
fn check_expiry(
    key: &str,
    file: &Path,
    cert: &CertificateDer<'_>,
    client: bool,
) -> Result<(), ShellError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| tls_error(key, file, format!("not an X.509 certificate: {e}")))?;
    let not_after = parsed.validity().not_after;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let left = not_after.timestamp().saturating_sub(now);
    let subject = parsed.subject().to_string();
    if left <= 0 {
        if client {
            return Err(tls_error(
                key,
                file,
                format!("the certificate ({subject}) expired on {not_after}"),
            ));
        }
        warn!(key, file = %file.display(), %subject, expired = %not_after, "CA certificate has expired");
    } else if left < EXPIRY_WARNING.as_secs() as i64 {
        warn!(
            key,
            file = %file.display(),
            %subject,
            expires = %not_after,
            "certificate expires within {} days: renew it", EXPIRY_WARNING.as_secs() / 86400
        );
    }
    Ok(())
}
