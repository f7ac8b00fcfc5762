//! TLS origination for DestinationRule `tls.mode` SIMPLE and MUTUAL: the
//! caller's sidecar opens TLS to the endpoint itself (an external service of
//! a ServiceEntry), verifying it with `caCertificates` (or the CA in the
//! Secret named by `credentialName`) and presenting a client certificate for
//! MUTUAL.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};

use crate::config::api;
use crate::snapshot::gateway_tls::SecretData;

/// A compiled origination: the client config and the SNI to send.
#[derive(Debug)]
pub struct OriginTls {
    /// rustls client configuration.
    pub config: Arc<ClientConfig>,
    /// Server name sent and verified.
    pub sni: ServerName<'static>,
    /// Identifies the settings, so pooled connections are kept only while they stay the same.
    pub fingerprint: u64,
}

#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Compiles `tls` (mode SIMPLE or MUTUAL) for `host`. Files are relative to `base`; a
/// `credentialName` Secret is looked up in `namespace`.
pub fn compile(
    tls: &api::ClientTlsSettings,
    host: &str,
    namespace: &str,
    secrets: &HashMap<(String, String), SecretData>,
    base: Option<&Path>,
) -> Result<Arc<OriginTls>, String> {
    let read = |p: &str| -> Result<Vec<u8>, String> {
        let path = match base {
            Some(b) if Path::new(p).is_relative() => b.join(p),
            _ => Path::new(p).to_path_buf(),
        };
        std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))
    };
    let secret = match &tls.credential_name {
        Some(n) => Some(
            secrets
                .get(&(namespace.to_string(), n.clone()))
                .ok_or_else(|| format!("credentialName {n}: no such Secret in {namespace}"))?,
        ),
        None => None,
    };
    let from_secret = |keys: &[&str]| secret.and_then(|s| keys.iter().find_map(|k| s.get(*k).cloned()));
    let ca = match &tls.ca_certificates {
        Some(p) => Some(read(p)?),
        None => from_secret(&["ca.crt", "cacert"]),
    };
    let provider = crate::security::tls::provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = if tls.insecure_skip_verify.unwrap_or(false) {
        builder.dangerous().with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
    } else {
        let ca = ca.ok_or("caCertificates (or ca.crt in the credentialName Secret) is needed to verify the server: meshd has no system roots")?;
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(&ca) {
            roots.add(c.map_err(|_| "caCertificates: bad PEM".to_string())?).map_err(|e| e.to_string())?;
        }
        builder.with_root_certificates(roots)
    };
    let config = if tls.mode == Some(api::TlsMode::Mutual) {
        let (cert, key) = match (&tls.client_certificate, &tls.private_key) {
            (Some(c), Some(k)) => (read(c)?, read(k)?),
            _ => (
                from_secret(&["tls.crt", "cert"]).ok_or("MUTUAL needs clientCertificate or a credentialName Secret")?,
                from_secret(&["tls.key", "key"]).ok_or("MUTUAL needs privateKey or a credentialName Secret")?,
            ),
        };
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(&cert).filter_map(Result::ok).collect();
        let key = PrivateKeyDer::from_pem_slice(&key).map_err(|_| "privateKey: no PEM key".to_string())?;
        builder.with_client_auth_cert(chain, key).map_err(|e| e.to_string())?
    } else {
        builder.with_no_client_auth()
    };
    let sni = tls.sni.clone().unwrap_or_else(|| host.to_string());
    let fingerprint = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        format!("{tls:?}").hash(&mut h);
        sni.hash(&mut h);
        h.finish()
    };
    let sni = ServerName::try_from(sni.clone()).map_err(|_| format!("sni {sni:?} is not a valid server name"))?;
    Ok(Arc::new(OriginTls { config: Arc::new(config), sni, fingerprint }))
}
