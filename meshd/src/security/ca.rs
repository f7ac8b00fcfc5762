//! The built-in certificate authority: a root kept in the folder's state
//! directory (so `curl --cacert` keeps working across restarts), and
//! short-lived workload certificates whose only name is the SPIFFE URI
//! `spiffe://cluster.local/ns/<ns>/sa/<sa>`, as Istio issues them.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// The trust domain.
pub const TRUST_DOMAIN: &str = "cluster.local";

/// CA errors.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// Reading or writing the state directory failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// Making or parsing a certificate or key failed.
    #[error("certificate: {0}")]
    Cert(#[from] rcgen::Error),
}

/// A workload's certificate and key.
pub struct Identity {
    /// `spiffe://cluster.local/ns/<ns>/sa/<sa>`.
    pub spiffe: String,
    /// Leaf certificate (the root is not sent; peers have it).
    pub cert: CertificateDer<'static>,
    /// PKCS#8 private key. Never logged.
    pub key: PrivatePkcs8KeyDer<'static>,
    /// Leaf PEM, for `meshd certs`.
    pub cert_pem: String,
    /// Validity start (a minute before issue, for clock slack).
    pub not_before: SystemTime,
    /// When it was issued.
    pub issued: SystemTime,
    /// Expiry.
    pub not_after: SystemTime,
}

impl std::fmt::Debug for Identity {
    // The key stays out of logs and debug output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity").field("spiffe", &self.spiffe).field("not_after", &self.not_after).finish()
    }
}

impl Identity {
    /// The private key as rustls takes it.
    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }

    /// Whether it should be replaced now: past half of its lifetime, as Istio rotates.
    pub fn due(&self, now: SystemTime) -> bool {
        let life = self.not_after.duration_since(self.issued).unwrap_or_default();
        now >= self.issued + life / 2
    }
}

/// The root CA.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    /// Root certificate, DER.
    pub root: CertificateDer<'static>,
    /// Root certificate, PEM (`ca.pem` in the state directory).
    pub root_pem: String,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ca")
    }
}

/// The root's parameters; rebuilt identically on load so issued certificates name the same issuer.
fn root_params() -> Result<CertificateParams, rcgen::Error> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, TRUST_DOMAIN);
    dn.push(DnType::CommonName, "meshd root CA");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::days(1);
    p.not_after = now + time::Duration::days(3650);
    Ok(p)
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CaError + '_ {
    move |source| CaError::Io { path: path.to_path_buf(), source }
}

impl Ca {
    /// A CA kept only in memory (tests, or a read-only folder).
    pub fn ephemeral() -> Result<Ca, CaError> {
        let key = KeyPair::generate()?;
        let params = root_params()?;
        let cert = params.self_signed(&key)?;
        Ok(Ca { root: cert.der().clone(), root_pem: cert.pem(), issuer: Issuer::new(params, key) })
    }

    /// Loads the root from `dir` (`ca.pem`, `ca-key.pem`), creating it on first start.
    pub fn load_or_create(dir: &Path) -> Result<Ca, CaError> {
        let cert_path = dir.join("ca.pem");
        let key_path = dir.join("ca-key.pem");
        if cert_path.exists() && key_path.exists() {
            let pem = std::fs::read_to_string(&cert_path).map_err(io(&cert_path))?;
            let key_pem = std::fs::read_to_string(&key_path).map_err(io(&key_path))?;
            let key = KeyPair::from_pem(&key_pem)?;
            let der = rustls_pki_types::pem::PemObject::from_pem_slice(pem.as_bytes())
                .map_err(|_| CaError::Cert(rcgen::Error::CouldNotParseCertificate))?;
            return Ok(Ca { root: der, root_pem: pem, issuer: Issuer::new(root_params()?, key) });
        }
        let ca = Ca::ephemeral()?;
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        std::fs::write(&cert_path, &ca.root_pem).map_err(io(&cert_path))?;
        write_private(&key_path, &ca.issuer_key_pem())?;
        Ok(ca)
    }

    fn issuer_key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// Issues a workload certificate for `spiffe`, valid for `ttl`.
    pub fn issue(&self, spiffe: &str, ttl: Duration) -> Result<Identity, CaError> {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.subject_alt_names = vec![SanType::URI(spiffe.try_into()?)];
        // Istio's workload certificates have an empty subject; the SPIFFE URI is the identity.
        p.distinguished_name = DistinguishedName::new();
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let now = SystemTime::now();
        // A little slack for clocks of peers that read the time a moment earlier.
        let not_before = now - Duration::from_secs(60);
        let not_after = now + ttl;
        p.not_before = time::OffsetDateTime::from(not_before);
        p.not_after = time::OffsetDateTime::from(not_after);
        let cert = p.signed_by(&key, &self.issuer)?;
        Ok(Identity {
            spiffe: spiffe.to_string(),
            cert: cert.der().clone(),
            key: PrivatePkcs8KeyDer::from(key.serialize_der()),
            cert_pem: cert.pem(),
            not_before,
            issued: now,
            not_after,
        })
    }
}

/// Writes a key file readable by its owner only.
fn write_private(path: &Path, text: &str) -> Result<(), CaError> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(io(path))?;
    f.write_all(text.as_bytes()).map_err(io(path))
}

/// The SPIFFE identity of a service account.
pub fn spiffe_id(namespace: &str, service_account: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/ns/{namespace}/sa/{service_account}")
}

/// Shared handle to the CA.
pub type SharedCa = Arc<Ca>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_survives_a_restart_and_signs_workloads() {
        let dir = std::env::temp_dir().join(format!("meshd-ca-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let a = Ca::load_or_create(&dir).unwrap();
        let b = Ca::load_or_create(&dir).unwrap();
        assert_eq!(a.root_pem, b.root_pem, "the same root after a restart");
        let id = b.issue(&spiffe_id("default", "bookinfo-reviews"), Duration::from_secs(3600)).unwrap();
        let cert = x509_parser::parse_x509_certificate(&id.cert).unwrap().1;
        let root = x509_parser::parse_x509_certificate(&a.root).unwrap().1;
        assert_eq!(cert.issuer(), root.subject());
        assert!(cert.verify_signature(Some(root.public_key())).is_ok(), "signed by the stored root");
        assert!(!id.due(SystemTime::now()));
        assert!(id.due(SystemTime::now() + Duration::from_secs(1900)));
        assert!(!format!("{id:?}").contains("key"), "no key material in debug output");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
