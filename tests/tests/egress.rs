//! External services: a ServiceEntry with STATIC endpoints, and TLS
//! origination by the caller's sidecar (DestinationRule SIMPLE and MUTUAL).

mod common;

use std::sync::Arc;

use common::{Mesh, Pki, TempDir};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// An HTTPS server on loopback that says whether the client presented a certificate.
async fn tls_server(pki: &Pki) -> std::net::SocketAddr {
    let (cert, key) = pki.leaf(&["secure.local"]);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(pki.ca_pem.as_bytes()).unwrap()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            CertificateDer::pem_slice_iter(cert.as_bytes()).map(Result::unwrap).collect(),
            PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else { return };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(s).await else { return };
                let with_cert = tls.get_ref().1.peer_certificates().is_some_and(|c| !c.is_empty());
                let svc = hyper::service::service_fn(move |_req| async move {
                    let body =
                        if with_cert { "hello over tls, client-cert: yes" } else { "hello over tls, client-cert: no" };
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from(body))))
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), svc).await;
            });
        }
    });
    addr
}

fn service_entry(port: u16) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: secure}}\nspec:\n  hosts: [secure.local]\n  location: MESH_EXTERNAL\n  resolution: STATIC\n  ports:\n  - {{number: 443, name: https, protocol: HTTPS}}\n  endpoints:\n  - address: 127.0.0.1\n    ports: {{https: {port}}}\n"
    )
}

fn destination_rule(mode: &str, extra: &str) -> String {
    format!("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: secure}}\nspec:\n  host: secure.local\n  trafficPolicy:\n    tls:\n      mode: {mode}\n      caCertificates: ca.pem\n      sni: secure.local\n{extra}")
}

#[tokio::test]
async fn sidecars_originate_tls_to_external_services() {
    let pki = Pki::new("external Inc.");
    let server = tls_server(&pki).await;
    let dir = TempDir::new();
    dir.add_sample("sleep/sleep.yaml");
    dir.write("ca.pem", &pki.ca_pem);
    dir.write("se.yaml", &service_entry(server.port()));
    let mesh = Mesh::start(dir);
    // Plaintext to a TLS server: the connection fails.
    let resp = mesh.mesh_client().get("http://secure.local:443/").send().await.unwrap();
    assert_eq!(resp.status(), 503);

    let mark = mesh.mark();
    mesh.dir.write("dr.yaml", &destination_rule("SIMPLE", ""));
    mesh.wait_applied(mark);
    let resp = mesh.mesh_client().get("http://secure.local:443/").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "hello over tls, client-cert: no");

    let (ccert, ckey) = pki.leaf(&["client.local"]);
    let mark = mesh.mark();
    mesh.dir.write("client.pem", &ccert);
    mesh.dir.write("client-key.pem", &ckey);
    mesh.dir.write(
        "dr.yaml",
        &destination_rule("MUTUAL", "      clientCertificate: client.pem\n      privateKey: client-key.pem\n"),
    );
    mesh.wait_applied(mark);
    let resp = mesh.mesh_client().get("http://secure.local:443/").send().await.unwrap();
    assert_eq!(resp.text().await.unwrap(), "hello over tls, client-cert: yes");

    // A server name the certificate does not carry is refused.
    let mark = mesh.mark();
    mesh.dir.write("dr.yaml", &destination_rule("SIMPLE", "").replace("sni: secure.local", "sni: other.local"));
    mesh.wait_applied(mark);
    assert_eq!(mesh.mesh_client().get("http://secure.local:443/").send().await.unwrap().status(), 503);
}
