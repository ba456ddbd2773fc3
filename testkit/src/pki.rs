//! Certificates a test makes itself: a CA, server certificates for `localhost`/`127.0.0.1`,
//! client certificates, and the broken ones (expired, wrong name, another CA), written as PEM
//! files in a directory the caller owns.
//!
//! Owns: generating keys and certificates (rcgen, ECDSA P-256) and writing them. Never: a
//! certificate checked into the repository, or a file outside the given directory.

use std::path::{Path, PathBuf};

use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// A certificate authority; issues server and client certificates into `dir`.
pub struct TestCa {
    dir: PathBuf,
    name: String,
    params: CertificateParams,
    key: KeyPair,
    /// The CA's own certificate (PEM), as a `ca_file` / mosquitto `cafile`.
    pub cert_file: PathBuf,
}

/// A certificate and its private key, as PEM files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// What a leaf certificate is for.
#[derive(Clone, Copy)]
enum Role {
    Server,
    Client,
}

/// How long a leaf is valid.
#[derive(Clone, Copy)]
pub enum Validity {
    /// 1975..4096.
    Long,
    /// Ended in 2000.
    Expired,
    /// Valid now, ends in about `days` days (for the expiry warning).
    EndsInDays(i64),
}

impl TestCa {
    /// A new CA named `name`, its certificate written to `dir/<name>-ca.pem`.
    pub fn new(dir: &Path, name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let cert_file = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&cert_file, cert.pem()).unwrap();
        TestCa {
            dir: dir.to_path_buf(),
            name: name.to_owned(),
            params,
            key,
            cert_file,
        }
    }

    /// A server certificate for `localhost` and `127.0.0.1` (and `::1`).
    pub fn server(&self, file_stem: &str) -> CertFiles {
        self.leaf(
            file_stem,
            &["localhost", "127.0.0.1", "::1"],
            "localhost",
            Role::Server,
            Validity::Long,
        )
    }

    /// A server certificate for the given names only (e.g. a name the gateway does not use).
    pub fn server_for(&self, file_stem: &str, names: &[&str], validity: Validity) -> CertFiles {
        self.leaf(file_stem, names, names[0], Role::Server, validity)
    }

    /// A client certificate with `common_name` as its subject CN (mosquitto's
    /// `use_identity_as_username` reads it).
    pub fn client(&self, file_stem: &str, common_name: &str) -> CertFiles {
        self.leaf(file_stem, &[], common_name, Role::Client, Validity::Long)
    }

    /// A client certificate with a chosen validity.
    pub fn client_with(&self, file_stem: &str, common_name: &str, validity: Validity) -> CertFiles {
        self.leaf(file_stem, &[], common_name, Role::Client, validity)
    }

    fn leaf(
        &self,
        file_stem: &str,
        names: &[&str],
        common_name: &str,
        role: Role,
        validity: Validity,
    ) -> CertFiles {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![match role {
            Role::Server => ExtendedKeyUsagePurpose::ServerAuth,
            Role::Client => ExtendedKeyUsagePurpose::ClientAuth,
        }];
        params.use_authority_key_identifier_extension = true;
        match validity {
            Validity::Long => {
                params.not_before = date_time_ymd(2000, 1, 1);
                params.not_after = date_time_ymd(4000, 1, 1);
            }
            Validity::Expired => {
                params.not_before = date_time_ymd(1999, 1, 1);
                params.not_after = date_time_ymd(2000, 1, 1);
            }
            Validity::EndsInDays(days) => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs() as i64;
                params.not_before = date_time_ymd(2000, 1, 1);
                params.not_after = date_time_ymd(1970, 1, 1)
                    + std::time::Duration::from_secs((now + days * 86_400).max(0) as u64);
            }
        }
        let key = KeyPair::generate().unwrap();
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        let cert_file = self.dir.join(format!("{}-{file_stem}.pem", self.name));
        let key_file = self.dir.join(format!("{}-{file_stem}.key", self.name));
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        CertFiles {
            cert_file,
            key_file,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_pem_files() {
        let dir = crate::TempDir::new("pki");
        let ca = TestCa::new(&dir.0, "a");
        let s = ca.server("srv");
        let c = ca.client_with("cl", "dev1", Validity::EndsInDays(10));
        for f in [&ca.cert_file, &s.cert_file, &c.cert_file] {
            let text = std::fs::read_to_string(f).unwrap();
            assert!(text.starts_with("-----BEGIN CERTIFICATE-----"), "{text}");
        }
        assert!(std::fs::read_to_string(&c.key_file)
            .unwrap()
            .contains("PRIVATE KEY"));
    }
}
