//! `broker.embedded.tls`: the embedded broker's TLS listener.
//!
//! rmqtt 0.24's own TLS listener (its `tls` feature, rmqtt-net's) hard-wires rustls' aws-lc-rs
//! provider, whose C build needs cmake and bindgen — too much for a cross-build to a Raspberry
//! Pi. So TLS ends here, with rustls on the `ring` provider (already in the tree via quinn):
//! each accepted TLS connection is handshaken, then relayed byte for byte to a broker listener
//! of its own on loopback (`relay`), which device sessions never use. The broker therefore
//! sees TLS clients coming from 127.0.0.1; the real address is logged here.
//!
//! The certificate, key and CA are read and checked at start ([`server_config`]), so a bad
//! file stops the gateway with the key, the file and the reason. Owns: the TLS accept loop,
//! the relay tasks, the PEM checks. Must never: log key material, or relay anything before the
//! handshake (and, with `require_certificate`, the client's certificate) succeeded.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info};

use super::{BrokerError, TlsSettings};

/// How long a client may take for the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

fn tls_err(key: &'static str, path: &Path, reason: impl Into<String>) -> BrokerError {
    BrokerError::Tls {
        key,
        path: path.to_owned(),
        reason: reason.into(),
    }
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, BrokerError> {
    std::fs::read(path).map_err(|e| tls_err(key, path, format!("cannot read it: {e}")))
}

fn certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, BrokerError> {
    let pem = read(key, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_err(key, path, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(tls_err(
            key,
            path,
            "no `-----BEGIN CERTIFICATE-----` block in it",
        ));
    }
    Ok(certs)
}

/// The rustls configuration of `settings`, every file read and checked.
pub fn server_config(settings: &TlsSettings) -> Result<ServerConfig, BrokerError> {
    const CERT: &str = "broker.embedded.tls.cert_file";
    const KEY: &str = "broker.embedded.tls.key_file";
    const CA: &str = "broker.embedded.tls.ca_file";
    let chain = certs(CERT, &settings.cert_file)?;
    let key = PrivateKeyDer::from_pem_slice(&read(KEY, &settings.key_file)?).map_err(|e| {
        tls_err(
            KEY,
            &settings.key_file,
            format!("no usable private key (PKCS#8, PKCS#1 or SEC1 PEM): {e}"),
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    provider
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| {
            tls_err(
                KEY,
                &settings.key_file,
                format!("unusable private key: {e}"),
            )
        })?;
    let verifier = match &settings.ca_file {
        Some(ca_file) => {
            let mut roots = RootCertStore::empty();
            for cert in certs(CA, ca_file)? {
                roots.add(cert).map_err(|e| {
                    tls_err(CA, ca_file, format!("not a usable CA certificate: {e}"))
                })?;
            }
            let builder =
                WebPkiClientVerifier::builder_with_provider(roots.into(), provider.clone());
            let builder = if settings.require_certificate {
                builder
            } else {
                builder.allow_unauthenticated()
            };
            builder
                .build()
                .map_err(|e| tls_err(CA, ca_file, e.to_string()))?
        }
        None => WebPkiClientVerifier::no_client_auth(),
    };
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(CERT, &settings.cert_file, e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => tls_err(
                KEY,
                &settings.key_file,
                format!(
                    "the private key does not belong to the certificate in {} ({e})",
                    settings.cert_file.display()
                ),
            ),
            e @ rustls::Error::InvalidCertificate(_) => tls_err(
                CERT,
                &settings.cert_file,
                format!("not a valid X.509 certificate: {e}"),
            ),
            e => tls_err(KEY, &settings.key_file, e.to_string()),
        })?;
    Ok(config)
}

/// Binds `settings.bind`; the accept loop is [`serve`].
pub fn bind(settings: &TlsSettings) -> Result<std::net::TcpListener, BrokerError> {
    let listener = std::net::TcpListener::bind(settings.bind).map_err(|e| BrokerError::Bind {
        addr: settings.bind,
        reason: format!("broker.embedded.tls.bind: {e}"),
    })?;
    listener
        .set_nonblocking(true)
        .map_err(|e| BrokerError::Bind {
            addr: settings.bind,
            reason: format!("broker.embedded.tls.bind: {e}"),
        })?;
    Ok(listener)
}

/// Accepts TLS clients on `listener` and relays each to the broker at `relay`; at most
/// `max_connections` at a time (more are closed at once).
pub async fn serve(
    listener: std::net::TcpListener,
    config: ServerConfig,
    relay: SocketAddr,
    max_connections: usize,
) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "embedded broker TLS listener failed");
            return;
        }
    };
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "embedded MQTT broker listening for TLS");
    }
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let slots = Arc::new(Semaphore::new(max_connections));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: wait a moment rather than spin.
                debug!(error = %e, "TLS accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            info!(%peer, max_connections, "TLS client refused: broker.embedded.tls.max_connections reached");
            continue;
        };
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let _slot = slot;
            relay_one(acceptor, stream, peer, relay).await;
        });
    }
}

async fn relay_one(acceptor: TlsAcceptor, stream: TcpStream, peer: SocketAddr, relay: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let mut tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            info!(%peer, error = %e, "TLS handshake refused");
            return;
        }
        Err(_) => {
            info!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let mut broker = match TcpStream::connect(relay).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "cannot reach the broker's TLS relay listener");
            return;
        }
    };
    let _ = broker.set_nodelay(true);
    let local = broker.local_addr().ok();
    debug!(%peer, relay_from = ?local, "TLS client relayed to the broker");
    let _ = tokio::io::copy_bidirectional(&mut tls, &mut broker).await;
    debug!(%peer, "TLS client gone");
}
