//! HTTPS servers of the ingress gateway: certificates from a
//! `kubernetes.io/tls` Secret named by `credentialName` (or files), SIMPLE or
//! MUTUAL TLS, chosen per connection by SNI among the servers' hosts.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

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
            let ns = s.metadata.namespace.clone().unwrap_or_else(|| "default".into());
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
    let mut cfg = if mode == api::ServerTlsMode::Mutual {
        let ca = ca_pem.ok_or("MUTUAL needs a CA: caCertificates, ca.crt in the Secret, or a <name>-cacert Secret")?;
        let mut roots = RootCertStore::empty();
        for c in certs(&ca, "CA certificate")? {
            roots.add(c).map_err(|e| format!("CA certificate: {e}"))?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| e.to_string())?;
        builder.with_client_cert_verifier(verifier).with_single_cert(chain, key)
    } else {
        builder.with_no_client_auth().with_single_cert(chain, key)
    }
    .map_err(|e| format!("certificate and key: {e}"))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}
