//! rustls configurations for mTLS between sidecars: each workload presents
//! its SPIFFE certificate, verifies the peer's chain to the mesh root, and
//! reads the peer's SPIFFE identity from its URI SAN. Certificates rotate
//! under live configs: the resolvers read the current one on each handshake.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::{ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

use super::ca::{Ca, CaError, Identity};

/// The crypto provider: rustls with ring, its cipher suites in the order Envoy's BoringSSL offers
/// them. With AES instructions that is AES-128-GCM first, where ring's default puts AES-256-GCM
/// first, so two sidecars settle on the suite two Envoys settle on, which also costs four AES
/// rounds fewer a block; without them, ChaCha20-Poly1305 first. As a server rustls keeps to the
/// client's order, as BoringSSL does among the AES suites.
pub fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::ring::cipher_suite as cs;
    let (aes128, aes256, chacha) =
        (cs::TLS13_AES_128_GCM_SHA256, cs::TLS13_AES_256_GCM_SHA384, cs::TLS13_CHACHA20_POLY1305_SHA256);
    let tls13 = if aes_hardware() { [aes128, aes256, chacha] } else { [chacha, aes128, aes256] };
    // Envoy's default TLS 1.2 list in its order, less what rustls does not implement (CBC, RSA key exchange).
    let tls12 = [
        cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    ];
    Arc::new(CryptoProvider {
        cipher_suites: tls13.into_iter().chain(tls12).collect(),
        ..rustls::crypto::ring::default_provider()
    })
}

/// Whether the CPU has AES and carry-less multiply instructions: BoringSSL's
/// `EVP_has_aes_hardware`, which orders its suites.
fn aes_hardware() -> bool {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    {
        std::arch::is_x86_feature_detected!("aes") && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        // Rust's `aes` feature on aarch64 is FEAT_AES with FEAT_PMULL.
        std::arch::is_aarch64_feature_detected!("aes")
    }
    #[cfg(not(any(target_arch = "x86", target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// A workload's current certificate, swapped on rotation.
pub struct Current {
    /// Certificate and key details.
    pub identity: Identity,
    /// The same, ready for rustls.
    pub certified: Arc<CertifiedKey>,
}

impl std::fmt::Debug for Current {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.identity.fmt(f)
    }
}

fn certified(identity: Identity, provider: &CryptoProvider) -> Result<Current, CaError> {
    let key = provider
        .key_provider
        .load_private_key(identity.private_key())
        .map_err(|_| CaError::Cert(rcgen::Error::CouldNotParseKeyPair))?;
    let certified = Arc::new(CertifiedKey::new(vec![identity.cert.clone()], key));
    Ok(Current { identity, certified })
}

#[derive(Debug)]
struct Resolver(Arc<ArcSwap<Current>>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load().certified.clone())
    }
}

impl ResolvesClientCert for Resolver {
    fn resolve(&self, _issuers: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load().certified.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Verifies a server's chain to the mesh root, without a DNS name: mesh
/// certificates carry only a SPIFFE URI, which the caller checks after the handshake.
#[derive(Debug)]
struct MeshServerVerifier {
    root: CertificateDer<'static>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for MeshServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let anchor = webpki::anchor_from_trusted_cert(&self.root)
            .map_err(|_| rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer))?;
        let cert = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding))?;
        cert.verify_for_usage(
            self.provider.signature_verification_algorithms.all,
            &[anchor],
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(|e| match e {
            webpki::Error::CertExpired { .. } => rustls::Error::InvalidCertificate(rustls::CertificateError::Expired),
            _ => rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        })?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// The SPIFFE URI SAN of a certificate, if it has one.
pub fn spiffe_of(cert: &[u8]) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    let san = parsed.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        x509_parser::extensions::GeneralName::URI(u) if u.starts_with("spiffe://") => Some(u.to_string()),
        _ => None,
    })
}

/// Istio's `X-Forwarded-Client-Cert` for a request that arrived over mTLS.
pub fn xfcc(server: &str, client_cert: &[u8], client: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, client_cert);
    let hash: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("By={server};Hash={hash};Subject=\"\";URI={client}")
}

/// Certificates and TLS configs of every workload identity, rotated before expiry.
pub struct Security {
    ca: Arc<Ca>,
    ttl: Duration,
    provider: Arc<CryptoProvider>,
    identities: Mutex<HashMap<String, Arc<ArcSwap<Current>>>>,
    servers: Mutex<HashMap<String, Arc<ServerConfig>>>,
    clients: Mutex<HashMap<String, Arc<ClientConfig>>>,
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Security").field("ttl", &self.ttl).finish()
    }
}

impl Security {
    /// Security backed by `ca`, issuing certificates that live `ttl`.
    pub fn new(ca: Ca, ttl: Duration) -> Security {
        Security {
            ca: Arc::new(ca),
            ttl,
            provider: provider(),
            identities: Mutex::default(),
            servers: Mutex::default(),
            clients: Mutex::default(),
        }
    }

    /// The root CA.
    pub fn ca(&self) -> &Ca {
        &self.ca
    }

    fn current(&self, spiffe: &str) -> Result<Arc<ArcSwap<Current>>, CaError> {
        let mut map = self.identities.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = map.get(spiffe) {
            return Ok(c.clone());
        }
        let cur = Arc::new(ArcSwap::from_pointee(certified(self.ca.issue(spiffe, self.ttl)?, &self.provider)?));
        map.insert(spiffe.to_string(), cur.clone());
        Ok(cur)
    }

    /// The server config of workload identity `spiffe`: its certificate, client certificates required.
    pub fn server_config(&self, spiffe: &str) -> Result<Arc<ServerConfig>, CaError> {
        if let Some(c) = self.servers.lock().unwrap_or_else(|e| e.into_inner()).get(spiffe) {
            return Ok(c.clone());
        }
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.root.clone()).map_err(|_| CaError::Cert(rcgen::Error::CouldNotParseCertificate))?;
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
            .build()
            .map_err(|_| CaError::Cert(rcgen::Error::CouldNotParseCertificate))?;
        let mut cfg = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|_| CaError::Cert(rcgen::Error::Time))?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(Resolver(self.current(spiffe)?)));
        cfg.alpn_protocols = vec![b"istio-http/1.1".to_vec(), b"http/1.1".to_vec()];
        let cfg = Arc::new(cfg);
        self.servers.lock().unwrap_or_else(|e| e.into_inner()).insert(spiffe.to_string(), cfg.clone());
        Ok(cfg)
    }

    /// The client config of workload identity `spiffe`: presents its certificate, verifies the mesh chain.
    pub fn client_config(&self, spiffe: &str) -> Result<Arc<ClientConfig>, CaError> {
        if let Some(c) = self.clients.lock().unwrap_or_else(|e| e.into_inner()).get(spiffe) {
            return Ok(c.clone());
        }
        let cfg = Arc::new(self.new_client_config(spiffe, self.provider.clone())?);
        self.clients.lock().unwrap_or_else(|e| e.into_inner()).insert(spiffe.to_string(), cfg.clone());
        Ok(cfg)
    }

    /// A client config for `spiffe` on `provider`, uncached: what [`Self::client_config`] caches.
    fn new_client_config(&self, spiffe: &str, provider: Arc<CryptoProvider>) -> Result<ClientConfig, CaError> {
        let verifier = Arc::new(MeshServerVerifier { root: self.ca.root.clone(), provider: provider.clone() });
        let mut cfg = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|_| CaError::Cert(rcgen::Error::Time))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_cert_resolver(Arc::new(Resolver(self.current(spiffe)?)));
        cfg.alpn_protocols = vec![b"istio-http/1.1".to_vec(), b"http/1.1".to_vec()];
        Ok(cfg)
    }

    /// Re-issues every certificate past half its lifetime; returns how many rotated.
    pub fn rotate(&self) -> usize {
        let now = SystemTime::now();
        let map = self.identities.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut n = 0;
        for (spiffe, cur) in map {
            if cur.load().identity.due(now) {
                match self.ca.issue(&spiffe, self.ttl).and_then(|id| certified(id, &self.provider)) {
                    Ok(c) => {
                        cur.store(Arc::new(c));
                        n += 1;
                    }
                    Err(e) => tracing::warn!(%spiffe, error = %e, "certificate rotation failed"),
                }
            }
        }
        n
    }

    /// How often to check for rotation.
    pub fn rotation_period(&self) -> Duration {
        (self.ttl / 10).max(Duration::from_millis(100))
    }

    /// Every issued identity: (spiffe, serial-free summary of validity, leaf PEM).
    pub fn issued(&self) -> Vec<(String, SystemTime, SystemTime, String)> {
        let map = self.identities.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<_> = map
            .iter()
            .map(|(k, c)| {
                let c = c.load();
                (k.clone(), c.identity.not_before, c.identity.not_after, c.identity.cert_pem.clone())
            })
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::ca::spiffe_id;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn handshake(server: &Security, client: &Security) -> Result<Option<String>, std::io::Error> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(server.server_config(&spiffe_id("default", "httpbin")).unwrap());
        let srv = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let mut tls = acceptor.accept(s).await?;
            let peer = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(|c| spiffe_of(c));
            tls.write_all(b"ok").await?;
            Ok::<_, std::io::Error>(peer)
        });
        let connector = tokio_rustls::TlsConnector::from(client.client_config(&spiffe_id("default", "sleep")).unwrap());
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let name = ServerName::try_from("httpbin.default.svc.cluster.local").unwrap();
        let res = async {
            let mut tls = connector.connect(name, tcp).await?;
            let server_id = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(|c| spiffe_of(c));
            assert_eq!(server_id.as_deref(), Some("spiffe://cluster.local/ns/default/sa/httpbin"));
            let mut buf = [0u8; 2];
            tls.read_exact(&mut buf).await?;
            Ok::<_, std::io::Error>(())
        }
        .await;
        let peer = srv.await.unwrap();
        res?;
        peer
    }

    #[tokio::test]
    async fn mutual_tls_carries_spiffe_identities() {
        let sec = Security::new(Ca::ephemeral().unwrap(), Duration::from_secs(3600));
        let peer = handshake(&sec, &sec).await.unwrap();
        assert_eq!(peer.as_deref(), Some("spiffe://cluster.local/ns/default/sa/sleep"));
    }

    /// Hands each side's flights to the other until the handshake is done: the suite agreed.
    fn agree(client: Arc<ClientConfig>, server: Arc<ServerConfig>) -> rustls::CipherSuite {
        let name = ServerName::try_from("httpbin.default.svc.cluster.local").unwrap();
        let mut c = rustls::Connection::from(rustls::ClientConnection::new(client, name).unwrap());
        let mut s = rustls::Connection::from(rustls::ServerConnection::new(server).unwrap());
        for _ in 0..8 {
            pass(&mut c, &mut s);
            pass(&mut s, &mut c);
        }
        assert!(!c.is_handshaking() && !s.is_handshaking(), "the handshake completes");
        let suite = s.negotiated_cipher_suite().unwrap().suite();
        assert_eq!(c.negotiated_cipher_suite().map(|c| c.suite()), Some(suite));
        suite
    }

    fn pass(from: &mut rustls::Connection, to: &mut rustls::Connection) {
        let mut wire = Vec::new();
        while from.wants_write() {
            from.write_tls(&mut wire).unwrap();
        }
        let mut rd = &wire[..];
        while !rd.is_empty() {
            to.read_tls(&mut rd).unwrap();
            to.process_new_packets().unwrap();
        }
    }

    #[test]
    fn sidecars_agree_on_the_suite_two_envoys_agree_on() {
        let sec = Security::new(Ca::ephemeral().unwrap(), Duration::from_secs(3600));
        let client = sec.client_config(&spiffe_id("default", "sleep")).unwrap();
        let server = sec.server_config(&spiffe_id("default", "httpbin")).unwrap();
        // BoringSSL's client order, which its server keeps among the AES suites.
        let want = if aes_hardware() {
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
        } else {
            rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
        };
        assert_eq!(agree(client, server), want);
    }

    #[test]
    fn a_sidecar_keeps_to_the_order_of_a_client_that_prefers_aes_256() {
        use rustls::crypto::ring::cipher_suite as cs;
        let sec = Security::new(Ca::ephemeral().unwrap(), Duration::from_secs(3600));
        // OpenSSL's default order for TLS 1.3, as curl offers it.
        let openssl = Arc::new(CryptoProvider {
            cipher_suites: vec![
                cs::TLS13_AES_256_GCM_SHA384,
                cs::TLS13_CHACHA20_POLY1305_SHA256,
                cs::TLS13_AES_128_GCM_SHA256,
            ],
            ..rustls::crypto::ring::default_provider()
        });
        let client = sec.new_client_config(&spiffe_id("default", "sleep"), openssl).unwrap();
        let server = sec.server_config(&spiffe_id("default", "httpbin")).unwrap();
        assert_eq!(agree(Arc::new(client), server), rustls::CipherSuite::TLS13_AES_256_GCM_SHA384);
    }

    #[tokio::test]
    async fn a_certificate_from_another_ca_is_refused() {
        let server = Security::new(Ca::ephemeral().unwrap(), Duration::from_secs(3600));
        let stranger = Security::new(Ca::ephemeral().unwrap(), Duration::from_secs(3600));
        assert!(handshake(&server, &stranger).await.is_err());
    }

    #[test]
    fn rotation_replaces_due_certificates() {
        let sec = Security::new(Ca::ephemeral().unwrap(), Duration::from_millis(200));
        let id = spiffe_id("default", "sleep");
        sec.client_config(&id).unwrap();
        let before = sec.issued()[0].3.clone();
        assert_eq!(sec.rotate(), 0, "fresh certificates stay");
        std::thread::sleep(Duration::from_millis(150));
        assert_eq!(sec.rotate(), 1);
        assert_ne!(sec.issued()[0].3, before);
    }

    #[test]
    fn xfcc_has_istios_shape() {
        let x = xfcc("spiffe://cluster.local/ns/foo/sa/httpbin", b"cert", "spiffe://cluster.local/ns/foo/sa/sleep");
        assert!(x.starts_with("By=spiffe://cluster.local/ns/foo/sa/httpbin;Hash="));
        assert!(x.ends_with(";Subject=\"\";URI=spiffe://cluster.local/ns/foo/sa/sleep"));
        assert_eq!(x.split(';').nth(1).unwrap().len(), "Hash=".len() + 64);
    }
}
