//! Istio's HTTP authorization task and the end-user JWT steps of the
//! authentication task, with the task YAML and a signing key made here.

mod common;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::{in_namespace, samples, Mesh, TempDir};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

const AUTHZ: &str = "istio.io-tasks/authz-http/";
const AUTHN: &str = "istio.io-tasks/authn-policy/";

#[tokio::test]
async fn the_http_authorization_task_step_by_step() {
    let dir = TempDir::new();
    // As the task's test.sh does: reviews v3, so ratings is called.
    dir.add_sample("bookinfo/networking/destination-rule-all.yaml");
    dir.add_sample("bookinfo/networking/virtual-service-reviews-v3.yaml");
    dir.add_sample(&format!("{AUTHZ}1-allow-nothing.yaml"));
    let mesh = Mesh::start(dir);
    let resp = mesh.client().get(mesh.url("/productpage")).send().await.unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(resp.text().await.unwrap(), "RBAC: access denied");

    let step = |file: &str| {
        let mark = mesh.mark();
        mesh.dir.add_sample(&format!("{AUTHZ}{file}"));
        mesh.wait_applied(mark);
    };
    step("2-productpage-viewer.yaml");
    let page = mesh.page("/productpage").await;
    assert!(page.contains("William Shakespeare"));
    assert!(page.contains("Error fetching product details"), "details still denied");
    assert!(page.contains("Error fetching product reviews"), "reviews still denied");
    let resp = mesh.client().post(mesh.url("/productpage")).send().await.unwrap();
    assert_eq!(resp.status(), 403, "only GET is allowed");

    step("3-details-viewer.yaml");
    step("4-reviews-viewer.yaml");
    let page = mesh.page("/productpage").await;
    assert!(page.contains("Book Details") && page.contains("Book Reviews"), "{page}");
    assert!(page.contains("Ratings service is currently unavailable"), "ratings still denied");

    step("5-ratings-viewer.yaml");
    let page = mesh.page("/productpage").await;
    assert!(page.contains("glyphicon glyphicon-star") && page.contains("text-red-500"), "red stars from v3");
    assert!(!page.contains("Ratings service is currently unavailable"));
}

struct Signer {
    key: EcdsaKeyPair,
    rng: SystemRandom,
}

impl Signer {
    fn new() -> Signer {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
        Signer { key, rng }
    }

    fn jwks(&self) -> String {
        let p = self.key.public_key().as_ref();
        format!(
            r#"{{"keys":[{{"kty":"EC","crv":"P-256","kid":"meshd-test","x":"{}","y":"{}"}}]}}"#,
            URL_SAFE_NO_PAD.encode(&p[1..33]),
            URL_SAFE_NO_PAD.encode(&p[33..65])
        )
    }

    fn token(&self, exp: u64) -> String {
        let h = URL_SAFE_NO_PAD.encode(br#"{"alg":"ES256","kid":"meshd-test","typ":"JWT"}"#);
        let claims = format!(
            r#"{{"exp":{exp},"foo":"bar","iat":1532389700,"iss":"testing@secure.istio.io","sub":"testing@secure.istio.io"}}"#
        );
        let p = URL_SAFE_NO_PAD.encode(claims);
        let sig = self.key.sign(&self.rng, format!("{h}.{p}").as_bytes()).unwrap();
        format!("{h}.{p}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }
}

#[tokio::test]
async fn end_user_authentication_at_the_gateway() {
    let signer = Signer::new();
    let dir = TempDir::new();
    dir.write(
        "ns.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: foo\n  labels: {istio-injection: enabled}\n",
    );
    dir.write("httpbin-foo.yaml", &in_namespace("httpbin/httpbin.yaml", "foo"));
    dir.add_sample(&format!("{AUTHN}09-foo-httpbin-gateway.yaml"));
    dir.add_sample(&format!("{AUTHN}10-foo-httpbin-virtualservice.yaml"));
    let mesh = Mesh::start(dir);
    let get = |path: &'static str, token: Option<String>| {
        let c = mesh.client();
        let url = mesh.url(path);
        async move {
            let mut req = c.get(url);
            if let Some(t) = token {
                req = req.header("authorization", format!("Bearer {t}"));
            }
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    assert_eq!(get("/headers", None).await.0, 200);

    // The task's RequestAuthentication, with this test's key inline instead of the jwksUri on GitHub.
    let ra =
        std::fs::read_to_string(samples().join(format!("{AUTHN}11-jwt-example-requestauthentication.yaml"))).unwrap();
    let uri_line = ra.lines().find(|l| l.trim_start().starts_with("jwksUri:")).expect("the sample names a jwksUri");
    let indent = &uri_line[..uri_line.len() - uri_line.trim_start().len()];
    let ra = ra.replace(uri_line, &format!("{indent}jwks: '{}'", signer.jwks()));
    let mark = mesh.mark();
    mesh.dir.write("11-jwt-example.yaml", &ra);
    mesh.wait_applied(mark);
    assert_eq!(get("/headers", None).await.0, 200, "no token: allowed");
    let (code, body) = get("/headers", Some("deadbeef".into())).await;
    assert_eq!(code, 401);
    assert_eq!(body, "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections");
    let good = signer.token(4685989700);
    assert_eq!(get("/headers", Some(good.clone())).await.0, 200);
    let (code, body) = get("/headers", Some(signer.token(1_600_000_000))).await;
    assert_eq!((code, body.as_str()), (401, "Jwt is expired"));
    // Envoy's details carry the reason, its spaces made underscores.
    mesh.proxy_log_line(
        "istio-ingressgateway",
        &["\"GET /headers HTTP/1.1\" 401 - jwt_authn_access_denied{Jwt_is_expired}"],
    );

    let mark = mesh.mark();
    mesh.dir.add_sample(&format!("{AUTHN}12-frontend-ingress-require-token.yaml"));
    mesh.wait_applied(mark);
    assert_eq!(get("/headers", None).await, (403, "RBAC: access denied".into()));
    // The DENY rule that matched, named as Istio names its RBAC policies.
    mesh.proxy_log_line(
        "istio-ingressgateway",
        &["403 - rbac_access_denied_matched_policy[ns[istio-system]-policy[frontend-ingress]-rule[0]]"],
    );
    assert_eq!(get("/headers", Some(good.clone())).await.0, 200);

    let mark = mesh.mark();
    mesh.dir.remove("12-frontend-ingress-require-token.yaml");
    mesh.dir.add_sample(&format!("{AUTHN}13-frontend-ingress-require-token-per-path.yaml"));
    mesh.wait_applied(mark);
    assert_eq!(get("/headers", None).await.0, 403);
    assert_eq!(get("/ip", None).await.0, 200);
}

/// Serves `body` on every path over plain HTTP on loopback.
async fn serve_text(body: String) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else { return };
            let body = body.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    let body = body.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(
                            hyper::body::Bytes::from(body),
                        )))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

// Multi-threaded: the JWKS server must answer while this thread waits for meshd to start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_from_a_uri_served_through_the_mesh_and_from_a_file() {
    let web = Signer::new();
    let filed = Signer::new();
    let jwks_server = serve_text(web.jwks()).await;
    let dir = TempDir::new();
    dir.add_sample("httpbin/httpbin.yaml");
    dir.add_sample("istio.io-tasks/ingress-control/5-browser-httpbin-gateway-and-vs.yaml");
    dir.write("jwks.json", &filed.jwks());
    dir.write(
        "jwks-service.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: jwks}}\nspec:\n  hosts: [jwks.local]\n  resolution: STATIC\n  ports: [{{number: 80, name: http, protocol: HTTP}}]\n  endpoints:\n  - address: 127.0.0.1\n    ports: {{http: {}}}\n",
            jwks_server.port()
        ),
    );
    dir.write(
        "ra.yaml",
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: jwt, namespace: istio-system}\nspec:\n  selector: {matchLabels: {istio: ingressgateway}}\n  jwtRules:\n  - issuer: testing@secure.istio.io\n    jwksUri: http://jwks.local/jwks.json\n  - issuer: file-issuer\n    jwksUri: jwks.json\n",
    );
    let mesh = Mesh::start(dir);
    let get = |token: String| {
        let c = mesh.client();
        let url = mesh.url("/headers");
        async move { c.get(url).header("authorization", format!("Bearer {token}")).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(get(web.token(4685989700)).await, 200, "keys fetched from jwks.local through the mesh");
    assert_eq!(get(filed.token(4685989700)).await, 401, "the file's keys are for the other issuer");
    let h = URL_SAFE_NO_PAD.encode(br#"{"alg":"ES256","kid":"meshd-test"}"#);
    let p = URL_SAFE_NO_PAD.encode(br#"{"iss":"file-issuer","sub":"me","exp":4685989700}"#);
    let sig = filed.key.sign(&filed.rng, format!("{h}.{p}").as_bytes()).unwrap();
    assert_eq!(get(format!("{h}.{p}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))).await, 200, "keys from the file");
}

/// The status line of `GET {target}` sent as written (an HTTP client would resolve its dot
/// segments itself).
async fn raw_status(addr: std::net::SocketAddr, target: &str) -> String {
    let req = format!("GET {target} HTTP/1.1\r\nhost: httpbin.example.com\r\nconnection: close\r\n\r\n");
    common::raw_exchange(addr, req.as_bytes()).await.lines().next().unwrap_or_default().to_string()
}

/// Istio's default path normalization (BASE): a DENY on a path holds for every spelling of it
/// that RFC 3986 makes the same (istio.io's "Authorization Policy Normalization").
#[tokio::test]
async fn a_deny_on_a_path_holds_for_its_dot_segments_and_escapes() {
    let dir = TempDir::new();
    dir.add_sample("httpbin/httpbin.yaml");
    dir.add_sample("istio.io-tasks/ingress-control/5-browser-httpbin-gateway-and-vs.yaml");
    dir.write(
        "deny.yaml",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-headers}\nspec:\n  selector: {matchLabels: {app: httpbin}}\n  action: DENY\n  rules: [{to: [{operation: {paths: [/headers]}}]}]\n",
    );
    let mesh = Mesh::start(dir);
    // httpbin's inbound sidecar, straight: the gateway's normalizing must not be what holds.
    let status = String::from_utf8(mesh.cli(&["status"]).stdout).unwrap();
    let inbound: std::net::SocketAddr = status
        .lines()
        .find(|l| l.split_whitespace().nth(1).is_some_and(|n| n.starts_with("httpbin-")))
        .and_then(|l| l.split_whitespace().nth(5)?.split_once("->")?.1.split(',').next()?.parse().ok())
        .unwrap_or_else(|| panic!("httpbin's inbound listener:\n{status}"));
    for addr in [mesh.gateway, inbound] {
        for target in ["/headers", "/./headers", "/status/../headers", "/%68eaders", "/headers/x/.."] {
            let status = raw_status(addr, target).await;
            let want = if target == "/headers/x/.." { "HTTP/1.1 404" } else { "HTTP/1.1 403" };
            assert!(status.starts_with(want), "{addr} {target}: {status}");
        }
        assert!(raw_status(addr, "/%00headers").await.starts_with("HTTP/1.1 400"), "an escaped NUL");
    }
    // The access log has the path the proxy routed on.
    mesh.proxy_log_line("istio-ingressgateway", &["\"GET /headers HTTP/1.1\" 403"]);
    let log = String::from_utf8(mesh.cli(&["logs", "istio-ingressgateway", "-c", "istio-proxy"]).stdout).unwrap();
    assert!(!log.contains("/./headers") && !log.contains("%68"), "{log}");
}
