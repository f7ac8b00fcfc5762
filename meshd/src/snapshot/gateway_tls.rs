//! HTTPS servers of the ingress gateway: certificates from a
//! `kubernetes.io/tls` Secret named by `credentialName` (or files), SIMPLE or
//! MUTUAL TLS, chosen per connection by SNI among the servers' hosts. X.509 v1
//! certificates, which webpki refuses and Envoy takes, are served and, from
//! clients, verified as Envoy's BoringSSL does.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, SubjectPublicKeyInfoDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, InconsistentKeys, OtherError, PeerMisbehaved,
    RootCertStore, ServerConfig, SignatureScheme,
};
use x509_parser::certificate::X509Certificate;
use x509_parser::oid_registry::{
    OID_PKCS1_SHA1WITHRSA, OID_SHA1_WITH_RSA, OID_X509_EXT_BASIC_CONSTRAINTS, OID_X509_EXT_EXTENDED_KEY_USAGE,
    OID_X509_EXT_KEY_USAGE, OID_X509_EXT_NAME_CONSTRAINTS,
};

use super::matcher::HostPattern;
use crate::config::api;

/// An HTTPS server of the gateway.
#[derive(Debug)]
pub struct TlsServer {
    /// `ns/name` of the Gateway.
    pub gateway: String,
    /// Hosts it serves (SNI).
    pub hosts: Vec<HostPattern>,
    /// Its TLS configuration.
    pub config: Arc<ServerConfig>,
}

/// The data of a Secret: key -> bytes.
pub type SecretData = HashMap<String, Vec<u8>>;

/// Decodes every Secret: `data` is base64, `stringData` plain.
pub fn secrets(resources: &[crate::config::Located]) -> HashMap<(String, String), SecretData> {
    let mut out = HashMap::new();
    for r in resources {
        if let api::Resource::Secret(s) = &r.resource {
            let mut data: SecretData = HashMap::new();
            for (k, v) in &s.data {
                if let Ok(b) = STANDARD.decode(v.split_whitespace().collect::<String>()) {
                    data.insert(k.clone(), b);
                }
            }
            for (k, v) in &s.string_data {
                data.insert(k.clone(), v.clone().into_bytes());
            }
            let ns = s.metadata.ns().to_string();
            out.insert((ns, s.metadata.name.clone().unwrap_or_default()), data);
        }
    }
    out
}

fn certs(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let v: Vec<_> = CertificateDer::pem_slice_iter(pem).filter_map(Result::ok).collect();
    if v.is_empty() {
        return Err(format!("{what}: no PEM certificate"));
    }
    Ok(v)
}

/// Builds the rustls config of one HTTPS server.
pub fn server_config(
    tls: &api::ServerTlsSettings,
    gateway_ns: &str,
    secrets: &HashMap<(String, String), SecretData>,
    base: Option<&Path>,
) -> Result<Arc<ServerConfig>, String> {
    let mode = tls.mode.unwrap_or(api::ServerTlsMode::Passthrough);
    if !matches!(mode, api::ServerTlsMode::Simple | api::ServerTlsMode::Mutual) {
        return Err(format!("tls.mode {mode:?} not emulated yet"));
    }
    let read = |p: &str| -> Result<Vec<u8>, String> {
        let path = match base {
            Some(b) if Path::new(p).is_relative() => b.join(p),
            _ => Path::new(p).to_path_buf(),
        };
        std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))
    };
    let lookup = |name: &str| {
        // Istio reads the Secret from the gateway workload's namespace (istio-system); the
        // Gateway's own namespace is accepted too.
        secrets
            .get(&("istio-system".to_string(), name.to_string()))
            .or_else(|| secrets.get(&(gateway_ns.to_string(), name.to_string())))
    };
    let (cert_pem, key_pem, mut ca_pem) = if let Some(name) = &tls.credential_name {
        let s = lookup(name)
            .ok_or_else(|| format!("credentialName {name}: no such Secret in istio-system or {gateway_ns}"))?;
        let pick = |keys: &[&str]| keys.iter().find_map(|k| s.get(*k).cloned());
        let cert = pick(&["tls.crt", "cert"]).ok_or_else(|| format!("Secret {name} has no tls.crt"))?;
        let key = pick(&["tls.key", "key"]).ok_or_else(|| format!("Secret {name} has no tls.key"))?;
        let ca = pick(&["ca.crt", "cacert"])
            .or_else(|| lookup(&format!("{name}-cacert")).and_then(|c| c.get("cacert").or(c.get("ca.crt")).cloned()));
        (cert, key, ca)
    } else {
        let cert = tls.server_certificate.as_deref().ok_or("serverCertificate or credentialName is required")?;
        let key = tls.private_key.as_deref().ok_or("privateKey is required with serverCertificate")?;
        (read(cert)?, read(key)?, None)
    };
    if let Some(ca) = &tls.ca_certificates {
        ca_pem = Some(read(ca)?);
    }
    let chain = certs(&cert_pem, "server certificate")?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| "private key: no PEM key".to_string())?;
    let provider = crate::security::tls::provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = if mode == api::ServerTlsMode::Mutual {
        let ca = ca_pem.ok_or("MUTUAL needs a CA: caCertificates, ca.crt in the Secret, or a <name>-cacert Secret")?;
        builder.with_client_cert_verifier(client_verifier(&ca, &provider)?)
    } else {
        builder.with_no_client_auth()
    };
    let certified = certified_key(chain, key, &provider).map_err(|e| format!("certificate and key: {e}"))?;
    let mut cfg = builder.with_cert_resolver(Arc::new(SingleCertAndKey::from(certified)));
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// The chain and its key, checked to match as `with_single_cert` does, but with x509-parser:
/// `with_single_cert` parses the leaf with webpki, which refuses X.509 v1 certificates, and
/// OpenSSL 3.0's `openssl x509 -req` makes v1 ones (Istio's secure-gateway task's), which
/// Envoy serves.
fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, rustls::Error> {
    let signing_key = provider.key_provider.load_private_key(key)?;
    let leaf_der = chain.first().ok_or(rustls::Error::NoCertificatesPresented)?;
    let leaf = parse(leaf_der)?;
    // A key that cannot tell its public half is taken on trust, as `with_single_cert` does.
    if signing_key.public_key().is_some_and(|spki| spki.as_ref() != leaf.public_key().raw) {
        return Err(InconsistentKeys::KeyMismatch.into());
    }
    Ok(CertifiedKey::new(chain, signing_key))
}

/// The verifier of a MUTUAL server's client certificates, from the CA certificates' PEM.
fn client_verifier(ca_pem: &[u8], provider: &Arc<CryptoProvider>) -> Result<Arc<V1ClientVerifier>, String> {
    let ca = certs(ca_pem, "CA certificate")?;
    let mut roots = RootCertStore::empty();
    for c in &ca {
        roots.add(c.clone()).map_err(|e| format!("CA certificate: {e}"))?;
    }
    let webpki = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| e.to_string())?;
    Ok(Arc::new(V1ClientVerifier { webpki, roots: ca, algorithms: provider.signature_verification_algorithms }))
}

/// Client certificates of a MUTUAL server: webpki's verifier, and for the X.509 v1 leaves that
/// it refuses for their version alone (OpenSSL 3.0's `openssl x509 -req` makes them, as in
/// Istio's secure-gateway task), which Envoy's BoringSSL accepts, the checks BoringSSL makes of
/// them: a chain by name and signature to a configured CA, and the validity period.
#[derive(Debug)]
struct V1ClientVerifier {
    webpki: Arc<dyn ClientCertVerifier>,
    /// The configured CA certificates: webpki's roots, kept whole to be parsed again.
    roots: Vec<CertificateDer<'static>>,
    algorithms: WebPkiSupportedAlgorithms,
}

/// Whether webpki refused a certificate for its version: rustls wraps the webpki errors it
/// has no variant for, `UnsupportedCertVersion` among them, in `CertificateError::Other`.
fn is_version_refusal(e: &rustls::Error) -> bool {
    match e {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(e))) => {
            matches!(e.downcast_ref::<webpki::Error>(), Some(webpki::Error::UnsupportedCertVersion))
        }
        _ => false,
    }
}

/// A certificate by x509-parser, which takes v1 ones; nothing may follow it, as for webpki.
fn parse(der: &[u8]) -> Result<X509Certificate<'_>, rustls::Error> {
    match x509_parser::parse_x509_certificate(der) {
        Ok(([], cert)) => Ok(cert),
        _ => Err(CertificateError::BadEncoding.into()),
    }
}

fn unix(secs: i64) -> UnixTime {
    UnixTime::since_unix_epoch(Duration::from_secs(u64::try_from(secs).unwrap_or(0)))
}

/// `cert` within its validity period at `now`.
fn check_validity(cert: &X509Certificate<'_>, now: UnixTime) -> Result<(), rustls::Error> {
    let (time, v) = (now.as_secs(), cert.validity());
    let (not_before, not_after) = (v.not_before.timestamp(), v.not_after.timestamp());
    if i64::try_from(time).is_ok_and(|t| t < not_before) {
        return Err(CertificateError::NotValidYetContext { time: now, not_before: unix(not_before) }.into());
    }
    if i64::try_from(time).map_or(true, |t| t > not_after) {
        return Err(CertificateError::ExpiredContext { time: now, not_after: unix(not_after) }.into());
    }
    Ok(())
}

/// `cert` signed by `issuer`'s key. SHA-1 is refused, as webpki refuses it for v3 certificates.
fn signed_by(cert: &X509Certificate<'_>, issuer: &X509Certificate<'_>) -> bool {
    let alg = &cert.signature_algorithm.algorithm;
    *alg != OID_PKCS1_SHA1WITHRSA
        && *alg != OID_SHA1_WITH_RSA
        && cert.verify_signature(Some(issuer.public_key())).is_ok()
}

impl V1ClientVerifier {
    /// What BoringSSL checks of the v1 leaf that webpki refused (`refused`): a path through the
    /// presented intermediates to a configured CA, by issuer name and signature, every
    /// certificate on it but the CA valid at `now`.
    fn verify_v1(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        refused: rustls::Error,
    ) -> Result<(), rustls::Error> {
        let leaf = parse(end_entity)?;
        // Only a v1 leaf, and one as OpenSSL 3.0 makes it, without extensions (RFC 5280 keeps
        // them to v3): anything else webpki refused stays refused.
        if leaf.version() != x509_parser::x509::X509Version::V1 || !leaf.extensions().is_empty() {
            return Err(refused);
        }
        check_validity(&leaf, now)?;
        // Bounded as webpki bounds its own search: a client's certificate message is ours to
        // verify before we trust anything in it, and every signature costs.
        const MAX_INTERMEDIATES: usize = 6;
        const MAX_SIGNATURES: usize = 100;
        if intermediates.len() > MAX_INTERMEDIATES {
            return Err(CertificateError::UnknownIssuer.into());
        }
        let roots = self.roots.iter().filter_map(|c| parse(c).ok()).collect::<Vec<_>>();
        let intermediates = intermediates.iter().map(|c| parse(c)).collect::<Result<Vec<_>, _>>()?;
        // Why no path was found, for the log: the last issuer of the right name that failed, or
        // none of that name.
        let mut refusal: rustls::Error = CertificateError::UnknownIssuer.into();
        let mut budget = MAX_SIGNATURES;
        let mut signed = |cert: &X509Certificate<'_>, issuer: &X509Certificate<'_>| {
            budget = budget.checked_sub(1)?;
            Some(signed_by(cert, issuer))
        };
        let mut used = vec![false; intermediates.len()];
        let mut cert = &leaf;
        // Each step goes one unused intermediate up: no longer than those presented, no loop.
        for below in 0..=intermediates.len() {
            let issued = |ca: &X509Certificate<'_>| ca.subject().as_raw() == cert.issuer().as_raw();
            for root in roots.iter().filter(|r| issued(r)) {
                // A root that constrains names is not trusted for a leaf whose names go unchecked.
                if root.name_constraints().ok().flatten().is_some() {
                    continue;
                }
                match signed(cert, root) {
                    Some(true) => return Ok(()),
                    Some(false) => refusal = CertificateError::BadSignature.into(),
                    None => return Err(refusal),
                }
            }
            let mut next = None;
            for (i, ca) in intermediates.iter().enumerate() {
                if used[i] || !issued(ca) || !issues_certificates(ca, below) {
                    continue;
                }
                if let Err(e) = check_validity(ca, now) {
                    refusal = e;
                    continue;
                }
                match signed(cert, ca) {
                    Some(true) => {
                        next = Some(i);
                        break;
                    }
                    Some(false) => refusal = CertificateError::BadSignature.into(),
                    None => return Err(refusal),
                }
            }
            match next {
                Some(i) => {
                    used[i] = true;
                    cert = &intermediates[i];
                }
                None => break,
            }
        }
        Err(refusal)
    }
}

/// An intermediate that may issue a client's chain with `below` intermediates under it, as
/// OpenSSL and BoringSSL tell it: basicConstraints cA (a v1 certificate has none) within its
/// pathLenConstraint, keyCertSign if it has a keyUsage, clientAuth if it has an extKeyUsage.
/// One with constraints this does not check (nameConstraints, other critical extensions) is
/// refused rather than trusted beyond them.
fn issues_certificates(ca: &X509Certificate<'_>, below: usize) -> bool {
    let checked = [OID_X509_EXT_BASIC_CONSTRAINTS, OID_X509_EXT_KEY_USAGE, OID_X509_EXT_EXTENDED_KEY_USAGE];
    let unchecked = ca
        .extensions()
        .iter()
        .any(|e| e.oid == OID_X509_EXT_NAME_CONSTRAINTS || (e.critical && !checked.contains(&e.oid)));
    let is_ca = matches!(ca.basic_constraints(), Ok(Some(bc)) if bc.value.ca
        && bc.value.path_len_constraint.is_none_or(|n| u32::try_from(below).is_ok_and(|b| b <= n)));
    let signs = match ca.key_usage() {
        Ok(None) => true,
        Ok(Some(ku)) => ku.value.key_cert_sign(),
        Err(_) => false,
    };
    let for_clients = match ca.extended_key_usage() {
        Ok(None) => true,
        Ok(Some(eku)) => eku.value.any || eku.value.client_auth,
        Err(_) => false,
    };
    !unchecked && is_ca && signs && for_clients
}

/// The leaf's public key, for the handshake signature of a v1 leaf, which webpki will not parse.
fn leaf_spki(cert: &CertificateDer<'_>) -> Result<SubjectPublicKeyInfoDer<'static>, rustls::Error> {
    Ok(SubjectPublicKeyInfoDer::from(parse(cert)?.public_key().raw.to_vec()))
}

/// `verify_tls12_signature` with a public key instead of a certificate: rustls has it for
/// TLS 1.3 only (`verify_tls13_signature_with_raw_key`). As rustls does for TLS 1.2, each
/// algorithm the scheme maps to is tried, since the scheme does not name one alone.
fn verify_tls12_signature_with_raw_key(
    message: &[u8],
    spki: &SubjectPublicKeyInfoDer<'_>,
    dss: &DigitallySignedStruct,
    algorithms: &WebPkiSupportedAlgorithms,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    let key = webpki::RawPublicKeyEntity::try_from(spki).map_err(|_| CertificateError::BadEncoding)?;
    let candidates = algorithms
        .mapping
        .iter()
        .find_map(|(scheme, algs)| (*scheme == dss.scheme).then_some(*algs))
        .ok_or(PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme)?;
    let mut mismatch = None;
    for alg in candidates {
        match key.verify_signature(*alg, message, dss.signature()) {
            Ok(()) => return Ok(HandshakeSignatureValid::assertion()),
            Err(webpki::Error::UnsupportedSignatureAlgorithmForPublicKeyContext(cx)) => mismatch = Some(cx),
            Err(webpki::Error::InvalidSignatureForPublicKey) => return Err(CertificateError::BadSignature.into()),
            Err(e) => return Err(CertificateError::Other(OtherError(Arc::new(e))).into()),
        }
    }
    // No algorithm of the scheme fits the key's type (an RSA scheme for an ECDSA key).
    Err(match mismatch {
        Some(cx) => CertificateError::UnsupportedSignatureAlgorithmForPublicKeyContext {
            signature_algorithm_id: cx.signature_algorithm_id,
            public_key_algorithm_id: cx.public_key_algorithm_id,
        }
        .into(),
        None => PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme.into(),
    })
}

impl ClientCertVerifier for V1ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.webpki.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.webpki.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.webpki.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        match self.webpki.verify_client_cert(end_entity, intermediates, now) {
            Err(e) if is_version_refusal(&e) => {
                self.verify_v1(end_entity, intermediates, now, e).map(|()| ClientCertVerified::assertion())
            }
            verdict => verdict,
        }
    }

    // The handshake signatures: webpki parses the certificate for its key, and refuses a v1
    // one as above; the key is then taken with x509-parser. Only a certificate that
    // `verify_client_cert` accepted gets here.
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        match self.webpki.verify_tls12_signature(message, cert, dss) {
            Err(e) if is_version_refusal(&e) => {
                verify_tls12_signature_with_raw_key(message, &leaf_spki(cert)?, dss, &self.algorithms)
            }
            verdict => verdict,
        }
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        match self.webpki.verify_tls13_signature(message, cert, dss) {
            Err(e) if is_version_refusal(&e) => {
                rustls::crypto::verify_tls13_signature_with_raw_key(message, &leaf_spki(cert)?, dss, &self.algorithms)
            }
            verdict => verdict,
        }
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The secure-ingress task's own certificates (OpenSSL 3.0, v1 leaves): see its README.
    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/secure-ingress");

    fn fixture(rel: &str) -> Vec<u8> {
        std::fs::read(Path::new(FIXTURES).join(rel)).unwrap()
    }

    fn der(rel: &str) -> CertificateDer<'static> {
        certs(&fixture(rel), rel).unwrap().remove(0)
    }

    /// A SIMPLE server from certificate and key files.
    fn simple(cert: &str, key: &str, base: &Path) -> Result<Arc<ServerConfig>, String> {
        let tls = api::ServerTlsSettings {
            mode: Some(api::ServerTlsMode::Simple),
            server_certificate: Some(cert.into()),
            private_key: Some(key.into()),
            ..Default::default()
        };
        server_config(&tls, "default", &HashMap::new(), Some(base))
    }

    /// A CA of rcgen's (v3) and a client certificate it signs: (CA PEM, leaf DER, leaf PEM, key PEM).
    fn rcgen_pki() -> (String, CertificateDer<'static>, String, String) {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::OrganizationName, "someone else");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = p.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(p, ca_key);
        let key = KeyPair::generate().unwrap();
        let leaf =
            CertificateParams::new(vec!["client.example.com".to_string()]).unwrap().signed_by(&key, &issuer).unwrap();
        (ca.pem(), leaf.der().clone(), leaf.pem(), key.serialize_pem())
    }

    fn at(secs: u64) -> UnixTime {
        UnixTime::since_unix_epoch(Duration::from_secs(secs))
    }
    // January 1st of these years. The fixtures are good from 2026 to 2036.
    const Y2001: u64 = 978_307_200;
    const Y2040: u64 = 2_208_988_800;
    const Y4100: u64 = 67_216_348_800;
    /// Inside the fixtures' validity, whatever this machine's clock says.
    const Y2030: u64 = 1_893_456_000;

    #[test]
    fn task_fixtures_are_v1_leaves() {
        for leaf in ["example_certs1/httpbin.example.com.crt", "example_certs1/client.example.com.crt"] {
            let d = der(leaf);
            assert_eq!(parse(&d).unwrap().version(), x509_parser::x509::X509Version::V1, "{leaf}");
            // What webpki, and so rustls's own checks, make of them.
            assert!(matches!(webpki::EndEntityCert::try_from(&d), Err(webpki::Error::UnsupportedCertVersion)));
        }
    }

    #[test]
    fn v1_server_certificate_is_served() {
        let base = Path::new(FIXTURES);
        simple("example_certs1/httpbin.example.com.crt", "example_certs1/httpbin.example.com.key", base).unwrap();
    }

    #[test]
    fn certificate_with_another_key_is_refused() {
        let base = Path::new(FIXTURES);
        // The client's key with the server's v1 certificate.
        let err = simple("example_certs1/httpbin.example.com.crt", "example_certs1/client.example.com.key", base)
            .unwrap_err();
        assert_eq!(err, "certificate and key: keys may not be consistent: KeyMismatch");
        // The same message as `with_single_cert`'s for a v3 certificate, as before.
        let dir = std::env::temp_dir().join(format!("meshd-gateway-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (_, _, cert, _) = rcgen_pki();
        let (_, _, _, key) = rcgen_pki();
        std::fs::write(dir.join("v3.crt"), cert).unwrap();
        std::fs::write(dir.join("other.key"), key).unwrap();
        let v3 = simple("v3.crt", "other.key", &dir);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(v3.unwrap_err(), "certificate and key: keys may not be consistent: KeyMismatch");
        let err = simple("example_certs1/httpbin.example.com.crt", "example_certs1/httpbin.example.com.csr", base);
        assert_eq!(err.unwrap_err(), "private key: no PEM key");
    }

    fn verifier(ca: &[&str]) -> Arc<V1ClientVerifier> {
        let pem: Vec<u8> = ca.iter().flat_map(|c| fixture(c)).collect();
        client_verifier(&pem, &crate::security::tls::provider()).unwrap()
    }

    fn verify(v: &V1ClientVerifier, chain: &[&str], now: UnixTime) -> Result<ClientCertVerified, rustls::Error> {
        let ders: Vec<_> = chain.iter().map(|c| der(c)).collect();
        v.verify_client_cert(&ders[0], &ders[1..], now)
    }

    #[test]
    fn v1_client_certificate_of_the_ca_is_accepted() {
        let v = verifier(&["example_certs1/example.com.crt"]);
        let now = at(Y2030);
        verify(&v, &["example_certs1/client.example.com.crt"], now).unwrap();
        // Through an intermediate CA the client presents.
        verify(&v, &["chain/client.example.com.crt", "chain/intermediate.crt"], now).unwrap();
        // Two CAs of one name (the task's two): the one whose key signed it.
        let both = verifier(&["example_certs2/example.com.crt", "example_certs1/example.com.crt"]);
        verify(&both, &["example_certs1/client.example.com.crt"], now).unwrap();
        verify(&both, &["example_certs2/client.example.com.crt"], now).unwrap();
    }

    #[test]
    fn v1_client_certificate_refusals() {
        let v = verifier(&["example_certs1/example.com.crt"]);
        let now = at(Y2030);
        let refusal = |chain: &[&str], now| match verify(&v, chain, now) {
            Err(rustls::Error::InvalidCertificate(e)) => e,
            other => panic!("{chain:?}: {other:?}"),
        };
        // Named as issued by the CA, signed by the other CA of the same name.
        assert_eq!(refusal(&["example_certs2/client.example.com.crt"], now), CertificateError::BadSignature);
        // Outside its validity period.
        let err = refusal(&["example_certs1/client.example.com.crt"], at(Y2040));
        assert!(matches!(err, CertificateError::ExpiredContext { .. }), "{err:?}");
        let err = refusal(&["example_certs1/client.example.com.crt"], at(Y2001));
        assert!(matches!(err, CertificateError::NotValidYetContext { .. }), "{err:?}");
        // An intermediate not presented, or one that is no CA (a v1 leaf, which signed it).
        assert_eq!(refusal(&["chain/client.example.com.crt"], now), CertificateError::UnknownIssuer);
        let err = refusal(&["chain/client-of-httpbin.crt", "example_certs1/httpbin.example.com.crt"], now);
        assert_eq!(err, CertificateError::UnknownIssuer);
        // The search is bounded as webpki's is: past six intermediates nothing is tried.
        let mut long = vec!["chain/client.example.com.crt"];
        long.extend(["chain/intermediate.crt"; 7]);
        assert_eq!(refusal(&long, now), CertificateError::UnknownIssuer);
        // An intermediate presented twice is used once.
        verify(&v, &["chain/client.example.com.crt", "chain/intermediate.crt", "chain/intermediate.crt"], now).unwrap();
        // A CA that did not sign it, of another name.
        let (ca, ..) = rcgen_pki();
        let other = client_verifier(ca.as_bytes(), &crate::security::tls::provider()).unwrap();
        let err = other.verify_client_cert(&der("example_certs1/client.example.com.crt"), &[], now).unwrap_err();
        assert_eq!(err, rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer));
    }

    #[test]
    fn v3_client_certificates_stay_with_webpki() {
        let (ca, leaf, ..) = rcgen_pki();
        let v = client_verifier(ca.as_bytes(), &crate::security::tls::provider()).unwrap();
        v.verify_client_cert(&leaf, &[], UnixTime::now()).unwrap();
        // rcgen's certificates end in 4096.
        let err = v.verify_client_cert(&leaf, &[], at(Y4100)).unwrap_err();
        assert!(matches!(err, rustls::Error::InvalidCertificate(CertificateError::ExpiredContext { .. })), "{err:?}");
        let task = verifier(&["example_certs1/example.com.crt"]);
        let err = task.verify_client_cert(&leaf, &[], UnixTime::now()).unwrap_err();
        assert_eq!(err, rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer));
        // The task's v1 client certificate under the inner webpki verifier alone: refused for
        // its version, the one refusal that takes the v1 path.
        let err = task.webpki.verify_client_cert(&der("example_certs1/client.example.com.crt"), &[], at(Y2030));
        assert!(is_version_refusal(&err.unwrap_err()));
    }
}
