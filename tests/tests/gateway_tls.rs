//! Istio's secure-gateway task: HTTPS at the ingress gateway with a
//! certificate from a `kubernetes.io/tls` Secret, SIMPLE and MUTUAL, checked
//! with a client that verifies the chain; and `httpsRedirect`.

mod common;

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use common::{Mesh, Pki, TempDir};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

fn secret(name: &str, cert: &str, key: &str, ca: Option<&str>) -> String {
    let mut s = format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: istio-system\ntype: kubernetes.io/tls\ndata:\n  tls.crt: {}\n  tls.key: {}\n",
        STANDARD.encode(cert),
        STANDARD.encode(key)
    );
    if let Some(ca) = ca {
        s.push_str(&format!("  ca.crt: {}\n", STANDARD.encode(ca)));
    }
    s
}

fn gateway(mode: &str, redirect: bool) -> String {
    let mut g = format!(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: mygateway
spec:
  selector:
    istio: ingressgateway
  servers:
  - port:
      number: 443
      name: https
      protocol: HTTPS
    tls:
      mode: {mode}
      credentialName: httpbin-credential
    hosts:
    - httpbin.example.com
"#
    );
    if redirect {
        g.push_str("  - port:\n      number: 80\n      name: http\n      protocol: HTTP\n    tls:\n      httpsRedirect: true\n    hosts:\n    - httpbin.example.com\n");
    }
    g
}

const VS: &str = r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: httpbin
spec:
  hosts:
  - "httpbin.example.com"
  gateways:
  - mygateway
  http:
  - match:
    - uri:
        prefix: /status
    - uri:
        prefix: /delay
    route:
    - destination:
        port:
          number: 8000
        host: httpbin
"#;

/// GET https://httpbin.example.com{path} at the gateway's HTTPS port, trusting `ca_pem`.
async fn https_get(mesh: &Mesh, ca_pem: &str, client: Option<(&str, &str)>, path: &str) -> Result<u16, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match client {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(cert.as_bytes()).map(Result::unwrap).collect();
            builder.with_client_auth_cert(chain, PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap()).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    let tcp = tokio::net::TcpStream::connect(mesh.gateway_tls).await.map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("httpbin.example.com").unwrap(), tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = hyper::Request::get(path).header("host", "httpbin.example.com").body(Empty::<Bytes>::new()).unwrap();
    let resp = send.send_request(req).await.map_err(|e| format!("request: {e}"))?;
    let status = resp.status().as_u16();
    let _ = resp.into_body().collect().await;
    Ok(status)
}

#[tokio::test]
async fn https_at_the_gateway_simple_mutual_and_redirect() {
    let pki = Pki::new("example Inc.");
    let (cert, key) = pki.leaf(&["httpbin.example.com"]);
    let dir = TempDir::new();
    dir.add_sample("httpbin/httpbin.yaml");
    dir.write("secret.yaml", &secret("httpbin-credential", &cert, &key, Some(&pki.ca_pem)));
    dir.write("gateway.yaml", &gateway("SIMPLE", true));
    dir.write("vs.yaml", VS);
    let mesh = Mesh::start(dir);

    assert_eq!(https_get(&mesh, &pki.ca_pem, None, "/status/418").await, Ok(418));
    assert_eq!(https_get(&mesh, &pki.ca_pem, None, "/headers").await, Ok(404), "no route for /headers");
    let stranger = Pki::new("someone else");
    let err = https_get(&mesh, &stranger.ca_pem, None, "/status/200").await.unwrap_err();
    assert!(err.starts_with("handshake"), "a chain from another CA is refused: {err}");

    // httpsRedirect on the HTTP server.
    let resp = mesh.client().get(mesh.url("/status/200")).header("host", "httpbin.example.com").send().await.unwrap();
    assert_eq!(resp.status(), 301);
    assert_eq!(resp.headers()["location"], "https://httpbin.example.com/status/200");

    // MUTUAL: the client must present a certificate from the Secret's CA.
    let mark = mesh.mark();
    mesh.dir.write("gateway.yaml", &gateway("MUTUAL", false));
    mesh.wait_applied(mark);
    assert!(https_get(&mesh, &pki.ca_pem, None, "/status/200").await.is_err(), "no client certificate");
    let (ccert, ckey) = pki.leaf(&["client.example.com"]);
    assert_eq!(https_get(&mesh, &pki.ca_pem, Some((&ccert, &ckey)), "/status/200").await, Ok(200));
}
