//! RequestAuthentication: JWT validation as Envoy's jwt_authn filter does it
//! for Istio. A request without a token passes (with no principal); a token
//! that is present but invalid gets 401 with Envoy's status text. A valid
//! token yields `request.auth.principal` (`<iss>/<sub>`) and its claims.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;

use crate::config::api;
use crate::snapshot::{matcher, Labels, ROOT_NAMESPACE};

/// Clock skew Envoy allows on `exp` and `nbf`.
const CLOCK_SKEW_SECS: u64 = 60;

/// A public key from a JWKS.
#[derive(Debug, Clone)]
pub enum Key {
    Rsa { kid: Option<String>, alg: Option<String>, n: Vec<u8>, e: Vec<u8> },
    EcP256 { kid: Option<String>, alg: Option<String>, point: Vec<u8> },
}

impl Key {
    fn kid(&self) -> Option<&str> {
        match self {
            Key::Rsa { kid, .. } | Key::EcP256 { kid, .. } => kid.as_deref(),
        }
    }

    /// Whether jwt_verify_lib tries this key for a token of `kid` and `alg`: a side without a
    /// `kid` matches any, and a key that names its `alg` is for that one only.
    fn fits(&self, kid: Option<&str>, alg: &str) -> bool {
        let (Key::Rsa { alg: own, .. } | Key::EcP256 { alg: own, .. }) = self;
        (kid.is_none() || self.kid().is_none() || self.kid() == kid) && own.as_deref().is_none_or(|a| a == alg)
    }
}

/// Where a rule looks for its token.
#[derive(Debug, Clone)]
enum From {
    Header { name: HeaderName, prefix: String },
    Param(String),
    Cookie(String),
}

/// One compiled `jwtRules` entry.
#[derive(Debug, Clone)]
struct Rule {
    issuer: String,
    audiences: Vec<String>,
    keys: Result<Vec<Key>, String>,
    from: Vec<From>,
    forward_original_token: bool,
    claims_to_headers: Vec<(HeaderName, String)>,
    payload_header: Option<HeaderName>,
}

#[derive(Debug, Clone)]
struct Policy {
    namespace: String,
    selector: Option<Labels>,
    rules: Vec<Rule>,
}

/// A successfully validated token.
#[derive(Debug, Clone)]
pub struct Authenticated {
    /// `<iss>/<sub>`.
    pub principal: String,
    /// The payload.
    pub claims: Value,
}

/// Why a present token is refused (Envoy's jwt_verify_lib status text; 401, or 403 for
/// [`AUDIENCE_NOT_ALLOWED`]).
pub type JwtError = &'static str;

/// The one refusal Envoy answers with 403 rather than 401: the token is valid, but not for
/// this audience.
pub const AUDIENCE_NOT_ALLOWED: JwtError = "Audiences in Jwt are not allowed";

/// Every RequestAuthentication, compiled.
#[derive(Debug, Clone, Default)]
pub struct JwtTable {
    policies: Vec<Policy>,
}

fn b64url(s: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).ok()
}

/// Parses a JWKS document.
pub fn parse_jwks(text: &str) -> Result<Vec<Key>, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("JWKS is not JSON: {e}"))?;
    let keys = v.get("keys").and_then(Value::as_array).ok_or("JWKS has no keys")?;
    let mut out = Vec::new();
    for k in keys {
        let kid = k.get("kid").and_then(Value::as_str).map(str::to_string);
        let alg = k.get("alg").and_then(Value::as_str).map(str::to_string);
        let field = |name: &str| k.get(name).and_then(Value::as_str).and_then(b64url);
        match k.get("kty").and_then(Value::as_str) {
            Some("RSA") => {
                if let (Some(n), Some(e)) = (field("n"), field("e")) {
                    out.push(Key::Rsa { kid, alg, n, e });
                }
            }
            Some("EC") if k.get("crv").and_then(Value::as_str) == Some("P-256") => {
                if let (Some(x), Some(y)) = (field("x"), field("y")) {
                    let mut point = vec![4u8];
                    point.extend(x);
                    point.extend(y);
                    out.push(Key::EcP256 { kid, alg, point });
                }
            }
            _ => {}
        }
    }
    if out.is_empty() {
        return Err("JWKS has no usable RSA or EC P-256 key".into());
    }
    Ok(out)
}

impl JwtTable {
    /// Compiles the policies. `jwks_for(uri)` resolves a `jwksUri` to the document (fetched by the caller).
    pub fn compile(
        policies: &[&api::Object<api::RequestAuthenticationSpec>],
        jwks_for: &dyn Fn(&str) -> Result<String, String>,
    ) -> (JwtTable, Vec<String>) {
        let mut out = Vec::new();
        let mut warnings = Vec::new();
        for p in policies {
            let ns = p.metadata.ns().to_string();
            let name = p.metadata.name.clone().unwrap_or_default();
            if p.spec.target_ref.is_some() || !p.spec.target_refs.is_empty() {
                warnings
                    .push(format!("RequestAuthentication {ns}/{name}: targetRefs not emulated yet, policy ignored"));
                continue;
            }
            let mut rules = Vec::new();
            for r in &p.spec.jwt_rules {
                let keys = match (&r.jwks, &r.jwks_uri) {
                    (Some(inline), _) => parse_jwks(inline),
                    (None, Some(uri)) => jwks_for(uri).and_then(|t| parse_jwks(&t)),
                    (None, None) => Err("no jwks or jwksUri".to_string()),
                };
                if let Err(e) = &keys {
                    warnings.push(format!(
                        "RequestAuthentication {ns}/{name}: issuer {:?}: {e}: its tokens fail",
                        r.issuer
                    ));
                }
                let mut from: Vec<From> = r
                    .from_headers
                    .iter()
                    .filter_map(|h| {
                        let name = HeaderName::from_bytes(h.name.to_ascii_lowercase().as_bytes()).ok()?;
                        Some(From::Header { name, prefix: h.prefix.clone().unwrap_or_default() })
                    })
                    .chain(r.from_params.iter().map(|p| From::Param(p.clone())))
                    .chain(r.from_cookies.iter().map(|c| From::Cookie(c.clone())))
                    .collect();
                if from.is_empty() {
                    from = vec![
                        From::Header { name: http::header::AUTHORIZATION, prefix: "Bearer ".into() },
                        From::Param("access_token".into()),
                    ];
                }
                rules.push(Rule {
                    issuer: r.issuer.clone().unwrap_or_default(),
                    audiences: r.audiences.clone(),
                    keys,
                    from,
                    forward_original_token: r.forward_original_token.unwrap_or(false),
                    claims_to_headers: r
                        .output_claim_to_headers
                        .iter()
                        .filter_map(|c| {
                            Some((
                                HeaderName::from_bytes(c.header.to_ascii_lowercase().as_bytes()).ok()?,
                                c.claim.clone(),
                            ))
                        })
                        .collect(),
                    payload_header: r
                        .output_payload_to_header
                        .as_deref()
                        .and_then(|h| HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()).ok()),
                });
            }
            let selector = p.spec.selector.as_ref().map(|s| s.match_labels.clone()).filter(|l| !l.is_empty());
            out.push(Policy { namespace: ns, selector, rules });
        }
        (JwtTable { policies: out }, warnings)
    }

    fn rules_for<'a>(&'a self, namespace: &'a str, labels: &'a Labels) -> impl Iterator<Item = &'a Rule> + 'a {
        self.policies
            .iter()
            .filter(move |p| p.namespace == namespace || p.namespace == ROOT_NAMESPACE)
            .filter(move |p| p.selector.as_ref().is_none_or(|s| crate::snapshot::selects(s, labels)))
            .flat_map(|p| p.rules.iter())
    }

    /// Whether any rule applies to the workload (lets the proxy skip the work).
    pub fn applies_to(&self, namespace: &str, labels: &Labels) -> bool {
        self.rules_for(namespace, labels).next().is_some()
    }

    /// Validates the request's token(s) for the workload; rewrites headers as the rules say.
    /// Ok(None): no token. Err: a token is present but invalid (401).
    pub fn authenticate(
        &self,
        namespace: &str,
        labels: &Labels,
        headers: &mut HeaderMap,
        query: Option<&str>,
        now_secs: u64,
    ) -> Result<Option<Authenticated>, JwtError> {
        let rules: Vec<&Rule> = self.rules_for(namespace, labels).collect();
        if rules.is_empty() {
            return Ok(None);
        }
        // Envoy drops the client's own copies of the headers a rule writes, token or not: they
        // could otherwise pass as the proxy's word on a verified token.
        for r in &rules {
            for (h, _) in &r.claims_to_headers {
                headers.remove(h);
            }
            if let Some(h) = &r.payload_header {
                headers.remove(h);
            }
        }
        // Find the first token in any rule's locations.
        let mut found: Option<(String, &From)> = None;
        'search: for r in &rules {
            for f in &r.from {
                if let Some(t) = extract(f, headers, query) {
                    found = Some((t, f));
                    break 'search;
                }
            }
        }
        let Some((token, from)) = found else { return Ok(None) };
        let parts: Vec<&str> = token.split('.').collect();
        if parts.len() != 3 {
            return Err("Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections");
        }
        let header: Value =
            b64url(parts[0]).and_then(|b| serde_json::from_slice(&b).ok()).ok_or("Jwt header is an invalid JSON")?;
        let payload: Value =
            b64url(parts[1]).and_then(|b| serde_json::from_slice(&b).ok()).ok_or("Jwt payload is an invalid JSON")?;
        let signature = b64url(parts[2]).ok_or("Jwt signature is an invalid Base64url encoded")?;
        let iss = payload.get("iss").and_then(Value::as_str).unwrap_or("");
        let rule = rules.iter().find(|r| r.issuer == iss).ok_or("Jwt issuer is not configured")?;
        if let Some(exp) = payload.get("exp").and_then(Value::as_u64) {
            if now_secs > exp + CLOCK_SKEW_SECS {
                return Err("Jwt is expired");
            }
        }
        if let Some(nbf) = payload.get("nbf").and_then(Value::as_u64) {
            if now_secs + CLOCK_SKEW_SECS < nbf {
                return Err("Jwt not yet valid");
            }
        }
        if !rule.audiences.is_empty() {
            let aud: Vec<&str> = match payload.get("aud") {
                Some(Value::String(s)) => vec![s.as_str()],
                Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
                _ => vec![],
            };
            if !aud.iter().any(|a| rule.audiences.iter().any(|x| x == a)) {
                return Err(AUDIENCE_NOT_ALLOWED);
            }
        }
        let keys = rule.keys.as_ref().map_err(|_| "Jwks remote fetch is failed")?;
        let alg = header.get("alg").and_then(Value::as_str).unwrap_or("");
        let kid = header.get("kid").and_then(Value::as_str);
        let signed = format!("{}.{}", parts[0], parts[1]);
        // jwt_verify_lib tries the keys that fit the token's `kid` and `alg`, and names the case
        // where none does apart from a bad signature.
        let mut candidates = keys.iter().filter(|k| k.fits(kid, alg)).peekable();
        if candidates.peek().is_none() {
            return Err("Jwks doesn't have key to match kid or alg from Jwt");
        }
        if !candidates.any(|k| verify(k, alg, signed.as_bytes(), &signature)) {
            return Err("Jwt verification fails");
        }
        let sub = payload.get("sub").and_then(Value::as_str).unwrap_or("");
        if !rule.forward_original_token {
            if let From::Header { name, .. } = from {
                headers.remove(name);
            }
        }
        for (h, claim) in &rule.claims_to_headers {
            let v = match payload.get(claim) {
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Number(n)) => Some(n.to_string()),
                Some(Value::Bool(b)) => Some(b.to_string()),
                _ => None,
            };
            if let Some(v) = v.and_then(|v| HeaderValue::from_str(&v).ok()) {
                headers.insert(h.clone(), v);
            }
        }
        if let Some(h) = &rule.payload_header {
            if let Ok(v) = HeaderValue::from_str(parts[1]) {
                headers.insert(h.clone(), v);
            }
        }
        Ok(Some(Authenticated { principal: format!("{iss}/{sub}"), claims: payload }))
    }
}

fn extract(from: &From, headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    match from {
        From::Header { name, prefix } => {
            let v = headers.get(name)?.to_str().ok()?;
            v.strip_prefix(prefix.as_str()).map(|t| t.trim().to_string())
        }
        From::Param(p) => query?.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            (k == p).then(|| v.to_string())
        }),
        From::Cookie(c) => headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|s| matcher::cookie(s, c).map(str::to_string)),
    }
}

fn verify(key: &Key, alg: &str, message: &[u8], signature: &[u8]) -> bool {
    use ring::signature as sig;
    match (key, alg) {
        (Key::Rsa { n, e, .. }, "RS256" | "RS384" | "RS512") => {
            let params = match alg {
                "RS256" => &sig::RSA_PKCS1_2048_8192_SHA256,
                "RS384" => &sig::RSA_PKCS1_2048_8192_SHA384,
                _ => &sig::RSA_PKCS1_2048_8192_SHA512,
            };
            sig::RsaPublicKeyComponents { n, e }.verify(params, message, signature).is_ok()
        }
        (Key::EcP256 { point, .. }, "ES256") => {
            sig::UnparsedPublicKey::new(&sig::ECDSA_P256_SHA256_FIXED, point).verify(message, signature).is_ok()
        }
        _ => false,
    }
}

/// Claims as AuthorizationPolicy conditions see them (`request.auth.claims[a][b]`).
pub fn claim<'v>(claims: &'v Value, path: &[&str]) -> Option<&'v Value> {
    path.iter().try_fold(claims, |v, k| v.get(*k))
}

/// The `jwksUri` values the policies need fetched (rules without inline `jwks`).
pub fn jwks_uris(policies: &[&api::Object<api::RequestAuthenticationSpec>]) -> Vec<String> {
    let mut v: Vec<String> = policies
        .iter()
        .flat_map(|p| p.spec.jwt_rules.iter())
        .filter(|r| r.jwks.is_none())
        .filter_map(|r| r.jwks_uri.clone())
        .collect();
    v.sort();
    v.dedup();
    v
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

    /// A test signer: an EC P-256 key, its JWKS, and tokens.
    pub(crate) struct Signer {
        key: EcdsaKeyPair,
        rng: SystemRandom,
    }

    impl Signer {
        pub(crate) fn new() -> Signer {
            let rng = SystemRandom::new();
            let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
            let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
            Signer { key, rng }
        }

        pub(crate) fn jwks(&self) -> String {
            let p = self.key.public_key().as_ref();
            let (x, y) = (&p[1..33], &p[33..65]);
            format!(
                r#"{{"keys":[{{"kty":"EC","crv":"P-256","kid":"test","x":"{}","y":"{}"}}]}}"#,
                URL_SAFE_NO_PAD.encode(x),
                URL_SAFE_NO_PAD.encode(y)
            )
        }

        pub(crate) fn token(&self, claims: &Value) -> String {
            self.token_with_kid("test", claims)
        }

        pub(crate) fn token_with_kid(&self, kid: &str, claims: &Value) -> String {
            let h = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"ES256","kid":"{kid}","typ":"JWT"}}"#));
            let p = URL_SAFE_NO_PAD.encode(claims.to_string());
            let sig = self.key.sign(&self.rng, format!("{h}.{p}").as_bytes()).unwrap();
            format!("{h}.{p}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
        }
    }

    fn table(jwks: &str, extra: &str) -> JwtTable {
        let yaml = format!(
            "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: jwt-example, namespace: istio-system}}\nspec:\n  selector: {{matchLabels: {{istio: ingressgateway}}}}\n  jwtRules:\n  - issuer: testing@secure.istio.io\n    jwks: '{jwks}'\n{extra}"
        );
        let ra: api::Object<api::RequestAuthenticationSpec> = serde_yaml::from_str(&yaml).unwrap();
        let (t, w) = JwtTable::compile(&[&ra], &|_| Err("unused".into()));
        assert!(w.is_empty(), "{w:?}");
        t
    }

    fn gw() -> Labels {
        [("istio".to_string(), "ingressgateway".to_string())].into_iter().collect()
    }

    fn run(t: &JwtTable, auth: Option<&str>) -> Result<Option<Authenticated>, JwtError> {
        let mut h = HeaderMap::new();
        if let Some(a) = auth {
            h.insert(http::header::AUTHORIZATION, HeaderValue::from_str(a).unwrap());
        }
        t.authenticate("istio-system", &gw(), &mut h, None, 1_700_000_000)
    }

    #[test]
    fn the_jwt_steps() {
        let s = Signer::new();
        let t = table(&s.jwks(), "");
        assert!(run(&t, None).unwrap().is_none(), "no token: allowed, no principal");
        assert_eq!(
            run(&t, Some("Bearer deadbeef")).unwrap_err(),
            "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"
        );
        let good = s.token(&serde_json::json!({"iss":"testing@secure.istio.io","sub":"testing@secure.istio.io","exp":4685989700u64,"foo":"bar"}));
        let ok = run(&t, Some(&format!("Bearer {good}"))).unwrap().unwrap();
        assert_eq!(ok.principal, "testing@secure.istio.io/testing@secure.istio.io");
        let expired = s.token(&serde_json::json!({"iss":"testing@secure.istio.io","sub":"x","exp":1_600_000_000u64}));
        assert_eq!(run(&t, Some(&format!("Bearer {expired}"))).unwrap_err(), "Jwt is expired");
        let other = Signer::new().token(&serde_json::json!({"iss":"testing@secure.istio.io","sub":"x"}));
        assert_eq!(run(&t, Some(&format!("Bearer {other}"))).unwrap_err(), "Jwt verification fails");
        // jwt_verify_lib tells a key it cannot find from a signature that does not verify: an
        // unknown kid, or a key that names another alg.
        let rs_only = table(&s.jwks().replace(r#""kid":"test""#, r#""kid":"test","alg":"RS256""#), "");
        let tok = s.token(&serde_json::json!({"iss":"testing@secure.istio.io","sub":"x"}));
        assert_eq!(
            run(&rs_only, Some(&format!("Bearer {tok}"))).unwrap_err(),
            "Jwks doesn't have key to match kid or alg from Jwt"
        );
        let unknown_kid = s.token_with_kid("rotated", &serde_json::json!({"iss":"testing@secure.istio.io","sub":"x"}));
        assert_eq!(
            run(&t, Some(&format!("Bearer {unknown_kid}"))).unwrap_err(),
            "Jwks doesn't have key to match kid or alg from Jwt"
        );
        let wrong_iss = s.token(&serde_json::json!({"iss":"someone-else","sub":"x"}));
        assert_eq!(run(&t, Some(&format!("Bearer {wrong_iss}"))).unwrap_err(), "Jwt issuer is not configured");
        // Other workloads are not covered.
        let mut h = HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, HeaderValue::from_static("Bearer deadbeef"));
        assert!(t.authenticate("default", &Labels::new(), &mut h, None, 0).unwrap().is_none());
    }

    #[test]
    fn token_forwarding_and_claim_headers() {
        let s = Signer::new();
        let t =
            table(&s.jwks(), "    outputClaimToHeaders: [{header: x-jwt-foo, claim: foo}]\n    audiences: [meshd]\n");
        let tok = s.token(&serde_json::json!({"iss":"testing@secure.istio.io","sub":"u","aud":["meshd"],"foo":"bar"}));
        let mut h = HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, HeaderValue::from_str(&format!("Bearer {tok}")).unwrap());
        let ok = t.authenticate("istio-system", &gw(), &mut h, None, 0).unwrap().unwrap();
        assert_eq!(claim(&ok.claims, &["foo"]).unwrap(), "bar");
        assert!(!h.contains_key(http::header::AUTHORIZATION), "not forwarded by default");
        assert_eq!(h["x-jwt-foo"], "bar");
        let bad_aud = s.token(&serde_json::json!({"iss":"testing@secure.istio.io","sub":"u","aud":"other"}));
        assert_eq!(run(&t, Some(&format!("Bearer {bad_aud}"))).unwrap_err(), "Audiences in Jwt are not allowed");
        // A client's own copy of a header the rule writes is dropped, token or not, as Envoy's
        // filter sanitizes them: it would otherwise pass for a verified claim.
        let mut h = HeaderMap::new();
        h.insert("x-jwt-foo", HeaderValue::from_static("admin"));
        assert!(t.authenticate("istio-system", &gw(), &mut h, None, 0).unwrap().is_none());
        assert!(!h.contains_key("x-jwt-foo"), "{h:?}");
        // The access_token query parameter is a default location.
        let mut h = HeaderMap::new();
        let q = format!("a=1&access_token={tok}");
        assert!(t.authenticate("istio-system", &gw(), &mut h, Some(&q), 0).unwrap().is_some());
    }
}
