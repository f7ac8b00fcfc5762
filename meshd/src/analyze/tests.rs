//! Crafted broken folders, one per check, asserting the whole istioctl-style line.

use super::*;

/// Every message of analysing the files (over the built-in set when they declare no Deployment).
fn lines(files: &[(&str, &str)]) -> Vec<String> {
    let files: Vec<(String, String)> = files.iter().map(|(n, t)| (n.to_string(), t.to_string())).collect();
    analyze_files(&files).messages.iter().map(ToString::to_string).collect()
}

const VS_TYPO: &str = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
  - reviews
  http:
  - route:
    - destination:
        host: reviewz
";

#[test]
fn ist0101_host_not_found() {
    assert_eq!(
        lines(&[("reviews.yaml", VS_TYPO)]),
        ["Error [IST0101] (VirtualService reviews.default reviews.yaml:11) Referenced host not found: \"reviewz\""]
    );
}

#[test]
fn analyze_dir_names_files_relative_to_the_folder() {
    let dir = std::env::temp_dir().join(format!("meshd-analyze-unit-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("reviews.yaml"), format!("# leading comment\n---\n{VS_TYPO}")).unwrap();
    std::fs::write(dir.join("README.md"), "not yaml: [").unwrap();
    let report = analyze_dir(&dir);
    std::fs::remove_dir_all(&dir).unwrap();
    let shown: Vec<String> = report.messages.iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        ["Error [IST0101] (VirtualService reviews.default reviews.yaml:13) Referenced host not found: \"reviewz\""]
    );
    assert!(report.has_errors());
    let json = serde_json::to_value(&report.messages[0]).unwrap();
    assert_eq!(json["level"], "Error");
    assert_eq!(json["code"], "IST0101");
    assert_eq!(json["line"], 13);
}

#[test]
fn a_missing_folder_is_an_error() {
    let report = analyze_dir(Path::new("/nonexistent/meshd-analyze"));
    assert!(report.has_errors());
    assert!(report.messages[0]
        .to_string()
        .starts_with("Error [IST0001] (/nonexistent/meshd-analyze:0) Internal error: cannot read"));
}

const DR_REVIEWS: &str = "\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
spec:
  host: reviews
  subsets:
  - name: v1
    labels:
      version: v1
";

#[test]
fn ist0101_subset_and_mirrors() {
    let vs = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
  - reviews
  http:
  - route:
    - destination:
        host: reviews
        subset: v4
    mirror:
      host: ratingz
  - route:
    - destination:
        host: reviews.default.svc.cluster.local
        subset: v1
        port:
          number: 9090
";
    assert_eq!(
        lines(&[("dr.yaml", DR_REVIEWS), ("vs.yaml", vs)]),
        [
            "Error [IST0101] (VirtualService reviews.default vs.yaml:11) Referenced host+subset in destinationrule not \
             found: \"reviews+v4\"",
            "Error [IST0101] (VirtualService reviews.default vs.yaml:14) Referenced mirror host not found: \"ratingz\"",
            "Warning [IST0130] (VirtualService reviews.default vs.yaml:15) VirtualService rule #1 not used (only the \
             last rule can have no matches).",
            "Error [IST0101] (VirtualService reviews.default vs.yaml:17) Referenced host:port not found: \
             \"reviews.default.svc.cluster.local:9090\"",
        ]
    );
}

#[test]
fn ist0101_gateway_not_found_and_ist0132() {
    let vs = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: bookinfo
spec:
  hosts:
  - \"*\"
  gateways:
  - bookinfo-gatewy
  - mesh
  - bookinfo-gateway
  http:
  - route:
    - destination:
        host: productpage
        port:
          number: 9080
";
    // bookinfo-gateway is built in; Istio also reports the hosts of a missing gateway as not found.
    assert_eq!(
        lines(&[("vs.yaml", vs)]),
        [
            "Error [IST0101] (VirtualService bookinfo.default vs.yaml:9) Referenced gateway not found: \
             \"bookinfo-gatewy\"",
            "Warning [IST0132] (VirtualService bookinfo.default vs.yaml:9) one or more host [*] defined in \
             VirtualService default/bookinfo not found in Gateway default/bookinfo-gatewy.",
        ]
    );
}

#[test]
fn ist0132_host_not_in_gateway() {
    let files = "\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: testing-gateway
  namespace: istio-system
spec:
  selector:
    istio: ingressgateway
  servers:
  - port:
      number: 80
      name: http
      protocol: HTTP
    hosts:
    - \"./testing.com\"
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: testing-service
spec:
  hosts:
  - wrong.com
  - testing.com
  gateways:
  - istio-system/testing-gateway
  http:
  - route:
    - destination:
        host: httpbin
        port:
          number: 8000
";
    assert_eq!(
        lines(&[("testing.yaml", files)]),
        ["Warning [IST0132] (VirtualService testing-service.default testing.yaml:26) one or more host [wrong.com \
             testing.com] defined in VirtualService default/testing-service not found in Gateway \
             istio-system/testing-gateway."]
    );
}

#[test]
fn ist0112_port_selector_required() {
    let files = "\
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector:
    app: web
  ports:
  - name: http
    port: 80
  - name: admin
    port: 9901
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
      - name: web
        image: web
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: web
spec:
  hosts:
  - web
  http:
  - route:
    - destination:
        host: web
";
    assert_eq!(
        lines(&[("web.yaml", files)]),
        ["Error [IST0112] (VirtualService web.default web.yaml:38) This VirtualService routes to a service \"web\" \
             that exposes multiple ports [80 9901]. Specifying a port in the destination is required to disambiguate."]
    );
}

#[test]
fn ist0106_schema_errors() {
    let vs = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
  namespace: shop
spec:
  hosts:
  - reviews
  http:
  - route:
    - destination:
        hots: reviews
";
    let dr = "\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
spec:
  host: reviews
  trafficPolicy:
    tls:
      mode: STRICT
";
    assert_eq!(
        lines(&[("dr.yaml", dr), ("vs.yaml", vs)]),
        [
            "Error [IST0106] (DestinationRule reviews.default dr.yaml:9) Schema validation error: \
             spec.trafficPolicy.tls.mode: Unsupported value: \"STRICT\": supported values: \"DISABLE\", \"SIMPLE\", \
             \"MUTUAL\", \"ISTIO_MUTUAL\"",
            "Error [IST0106] (VirtualService reviews.shop vs.yaml:11) Schema validation error: \
             spec.http[0].route[0].destination.host: Required value",
            "Error [IST0106] (VirtualService reviews.shop vs.yaml:12) Schema validation error: \
             spec.http[0].route[0].destination.hots: unknown field",
        ]
    );
}

#[test]
fn ist0106_what_meshd_refuses_beyond_the_schema() {
    // The schema leaves durations to CEL rules; meshd's parser rejects this one.
    let vs = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
  - reviews
  http:
  - timeout: 5x
    route:
    - destination:
        host: reviews
";
    let svc = "\
apiVersion: v1
kind: Service
metadata:
  name: big
spec:
  ports:
  - port: 70000
";
    let broken = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata:\n  name: gw\nspec:\n  servers: [\n";
    let got = lines(&[("broken.yaml", broken), ("svc.yaml", svc), ("vs.yaml", vs)]);
    assert_eq!(got.len(), 3, "{got:#?}");
    assert_eq!(
        got[0],
        "Error [IST0106] (Gateway gw.default broken.yaml:7) Schema validation error: did not find expected node \
         content, while parsing a flow node"
    );
    assert_eq!(
        got[1],
        "Error [IST0106] (Service big.default svc.yaml:7) Schema validation error: spec.ports[0].port: port 70000 is \
         out of range 1-65535"
    );
    assert!(
        got[2].starts_with(
            "Error [IST0106] (VirtualService reviews.default vs.yaml:9) Schema validation error: spec.http[0].timeout: \
             invalid duration `5x`"
        ),
        "{}",
        got[2]
    );
}

#[test]
fn ist0113_mtls_conflicts() {
    let pa = "\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default
spec:
  mtls:
    mode: STRICT
";
    let dr = "\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
spec:
  host: reviews
  trafficPolicy:
    tls:
      mode: DISABLE
";
    assert_eq!(
        lines(&[("dr.yaml", dr), ("pa.yaml", pa)]),
        ["Error [IST0113] (DestinationRule reviews.default dr.yaml:9) A DestinationRule and Policy are in conflict \
             with regards to mTLS for host reviews.default.svc.cluster.local:9080. The DestinationRule \
             \"default/reviews\" specifies that mTLS must be false but the Policy object \"default/default\" \
             specifies STRICT."]
    );
    // A port-level DISABLE on the policy side makes ISTIO_MUTUAL the conflict.
    let pa_port = "\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: reviews
spec:
  selector:
    matchLabels:
      app: reviews
  portLevelMtls:
    9080:
      mode: DISABLE
";
    let dr_mutual = dr.replace("DISABLE", "ISTIO_MUTUAL");
    let got = lines(&[("dr.yaml", &dr_mutual), ("pa.yaml", pa_port)]);
    assert_eq!(got.len(), 1, "{got:#?}");
    assert!(got[0].contains("mTLS must be true but the Policy object \"default/reviews\" specifies DISABLE."));
    assert!(lines(&[("dr.yaml", &dr_mutual), ("pa.yaml", pa)]).is_empty());
}

#[test]
fn ist0122_invalid_regexp() {
    let vs = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
  - reviews
  http:
  - match:
    - uri:
        regex: \"/api/[a\"
    route:
    - destination:
        host: reviews
";
    assert_eq!(
        lines(&[("vs.yaml", vs)]),
        [
            "Error [IST0106] (VirtualService reviews.default vs.yaml:11) Schema validation error: \"uri\": error \
             parsing regexp: unclosed character class: `/api/[a`; Istio uses RE2 style regex-based match \
             (https://github.com/google/re2/wiki/Syntax)",
            "Warning [IST0122] (VirtualService reviews.default vs.yaml:11) Field \"uri\" regular expression invalid: \
             \"/api/[a\" (error parsing regexp: unclosed character class: `/api/[a`)",
        ]
    );
}

#[test]
fn ist0130_and_ist0131_unreachable_rules_and_matches() {
    let vs = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
  - reviews
  http:
  - match:
    - uri:
        prefix: /
    route:
    - destination:
        host: reviews
  - name: foo
    match:
    - uri:
        prefix: /foo
    - name: exact-dup
      uri:
        prefix: /
    route:
    - destination:
        host: reviews
  - match:
    - uri:
        prefix: /
    route:
    - destination:
        host: reviews
  - route:
    - destination:
        host: reviews
  - route:
    - destination:
        host: reviews
  - match:
    - uri:
        exact: /late
    route:
    - destination:
        host: reviews
";
    assert_eq!(
        lines(&[("vs.yaml", vs)]),
        [
            "Info [IST0131] (VirtualService reviews.default vs.yaml:17) VirtualService rule \"foo\" match #0 of prefix \
             /foo is not used (duplicate/overlapping match in rule #0 of prefix / on #0).",
            "Info [IST0131] (VirtualService reviews.default vs.yaml:19) VirtualService rule \"foo\" match \
             \"exact-dup\" is not used (duplicate/overlapping match in rule #0).",
            "Warning [IST0130] (VirtualService reviews.default vs.yaml:25) VirtualService rule #2 not used (all \
             matches used by prior rules).",
            "Info [IST0131] (VirtualService reviews.default vs.yaml:26) VirtualService rule #2 match #0 is not used \
             (duplicate/overlapping match in rule #0).",
            "Warning [IST0130] (VirtualService reviews.default vs.yaml:34) VirtualService rule #4 not used (only the \
             last rule can have no matches).",
            "Warning [IST0130] (VirtualService reviews.default vs.yaml:37) VirtualService rule #5 not used (route \
             without matches defined before).",
        ]
    );
}

#[test]
fn ist0130_tcp_rules() {
    let vs = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: echo
spec:
  hosts:
  - tcp-echo
  tcp:
  - match:
    - port: 9000
    route:
    - destination:
        host: tcp-echo
        port:
          number: 9000
  - match:
    - port: 9000
    route:
    - destination:
        host: tcp-echo
        port:
          number: 9000
";
    let svc = "\
apiVersion: v1
kind: Service
metadata:
  name: tcp-echo
spec:
  ports:
  - name: tcp
    port: 9000
";
    assert_eq!(
        lines(&[("svc.yaml", svc), ("vs.yaml", vs)]),
        [
            "Warning [IST0130] (VirtualService echo.default vs.yaml:16) VirtualService rule #1 not used (all matches \
             used by prior rules).",
            "Info [IST0131] (VirtualService echo.default vs.yaml:17) VirtualService rule #1 match #0 is not used \
             (duplicate/overlapping match in rule #0).",
        ]
    );
}

#[test]
fn ist0145_conflicting_gateways() {
    let gws = "\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: gw-a
spec:
  selector:
    istio: ingressgateway
  servers:
  - port:
      number: 80
      name: http
      protocol: HTTP
    hosts:
    - httpbin.example.com
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: gw-b
spec:
  selector:
    app: istio-ingressgateway
    istio: ingressgateway
  servers:
  - port:
      number: 80
      name: http
      protocol: HTTP
    hosts:
    - httpbin.example.com
  - port:
      number: 443
      name: https
      protocol: HTTPS
    hosts:
    - httpbin.example.com
    tls:
      mode: SIMPLE
      credentialName: httpbin-cert
";
    // Different selectors, one within the other, and meshd's ingress gateway carries both.
    assert_eq!(
        lines(&[("gateways.yaml", gws)]),
        [
            "Error [IST0145] (Gateway gw-a.default gateways.yaml:9) Conflict with gateways default/gw-b (workload \
             selector istio=ingressgateway, port 80, hosts httpbin.example.com).",
            "Error [IST0145] (Gateway gw-b.default gateways.yaml:25) Conflict with gateways default/gw-a (workload \
             selector app=istio-ingressgateway,istio=ingressgateway, port 80, hosts httpbin.example.com).",
        ]
    );
}

#[test]
fn only_the_folders_own_files_get_messages_and_later_documents_win() {
    // The built-in Bookinfo gateway is replaced by this one; the first reviews VS by the second.
    let files = format!("{}---\n{}", VS_TYPO, VS_TYPO.replace("reviewz", "reviews"));
    assert!(lines(&[("reviews.yaml", &files)]).is_empty());
    assert!(lines(&[("empty.yaml", "# nothing\n---\n")]).is_empty());
}

#[test]
fn ist0106_for_an_httproute_value_meshd_up_would_refuse_at_its_line() {
    let route = "\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: bad
spec:
  parentRefs:
  - name: bookinfo-gateway
  rules:
  - matches:
    - path:
        type: RegularExpression
        value: \"/(\"
    backendRefs:
    - name: productpage
      port: 9080
";
    let out = lines(&[("bad-route.yaml", route)]);
    assert_eq!(out.len(), 1, "{out:?}");
    // A later copy of the same route is the one in force, as `meshd up` reads the folder.
    let fixed = route.replace("type: RegularExpression\n        value: \"/(\"", "type: PathPrefix\n        value: /ok");
    assert_eq!(lines(&[("bad-route.yaml", route), ("fixed.yaml", &fixed)]), Vec::<String>::new());
    assert!(
        out[0].starts_with(
            "Error [IST0106] (HTTPRoute bad.default bad-route.yaml:12) Schema validation error: spec.rules[0].matches[0].path.value: invalid regular expression"
        ),
        "{out:?}"
    );
}

#[test]
fn a_folders_own_ingress_replaces_the_built_in_one_for_the_analysis_too() {
    let gateway = "\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: my-gw
spec:
  selector:
    istio: ingressgateway
  servers:
  - port:
      number: 8080
      name: http
      protocol: HTTP
    hosts:
    - \"*\"
";
    assert_eq!(lines(&[("gw.yaml", gateway)]), Vec::<String>::new(), "no conflict with the built-in bookinfo-gateway");
}
