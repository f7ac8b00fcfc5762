//! Errors a user sees: paths, locations and messages.

use meshd::config::api::{parse_document, DocError, ParseOutcome, Resource, SimpleLb, StringMatch, TlsMode};

fn err(text: &str) -> DocError {
    match parse_document(text) {
        Ok(outcome) => panic!("expected an error, got {outcome:?}"),
        Err(e) => e,
    }
}

fn known(text: &str) -> Resource {
    match parse_document(text) {
        Ok(ParseOutcome::Known(r)) => r,
        other => panic!("expected a known resource, got {other:?}"),
    }
}

const VS_HEAD: &str = "\
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
";

#[test]
fn typo_reports_path_and_line() {
    let text = format!("{VS_HEAD}        hots: reviews\n        subset: v1\n");
    let e = err(&text);
    assert_eq!(e.path, "spec.http[0].route[0].destination");
    assert_eq!(e.line, Some(11), "{e:?}");
    assert_eq!(e.column, Some(9), "{e:?}");
    assert!(e.message.starts_with("unknown field `hots`, expected one of"), "{e:?}");
    assert!(!e.message.contains("line "), "location kept in message: {e:?}");
    assert_eq!(e.to_string(), format!("spec.http[0].route[0].destination: {}", e.message));
}

#[test]
fn missing_host_is_an_error() {
    let text = format!("{VS_HEAD}        subset: v1\n");
    let e = err(&text);
    assert!(e.message.contains("missing field `host`"), "{e:?}");
    assert!(e.path.starts_with("spec.http[0].route[0]"), "{e:?}");
    assert!(e.line.is_some());
}

#[test]
fn wrong_weight_type_is_an_error() {
    let text = format!("{VS_HEAD}        host: reviews\n      weight: \"abc\"\n");
    let e = err(&text);
    assert_eq!(e.path, "spec.http[0].route[0].weight");
    assert_eq!(e.line, Some(12));
    assert!(e.message.contains("invalid type"), "{e:?}");

    let text = format!("{VS_HEAD}        host: reviews\n      weight: abc\n");
    assert_eq!(err(&text).path, "spec.http[0].route[0].weight");
}

#[test]
fn bad_enum_value_is_an_error() {
    let text = "\
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata:
  name: r
spec:
  host: ratings
  trafficPolicy:
    loadBalancer:
      simple: FASTEST
";
    let e = err(text);
    assert_eq!(e.path, "spec.trafficPolicy.loadBalancer.simple");
    assert_eq!(e.line, Some(9));
    assert!(e.message.contains("unknown variant `FASTEST`"), "{e:?}");
    assert!(e.message.contains("ROUND_ROBIN"), "{e:?}");
}

#[test]
fn good_destination_rule_is_typed() {
    let text = "\
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata:
  name: r
  namespace: default
spec:
  host: ratings
  trafficPolicy:
    loadBalancer:
      simple: LEAST_REQUEST
    tls:
      mode: ISTIO_MUTUAL
    connectionPool:
      tcp:
        maxConnections: 1
        connectTimeout: 0.5s
    outlierDetection:
      consecutive5xxErrors: 1
      interval: 1s
      baseEjectionTime: 3m
  subsets:
  - name: v1
    labels:
      version: v1
";
    let Resource::DestinationRule(dr) = known(text) else { panic!("not a DestinationRule") };
    let tp = dr.spec.traffic_policy.unwrap();
    assert_eq!(tp.load_balancer.unwrap().simple, Some(SimpleLb::LeastRequest));
    assert_eq!(tp.tls.unwrap().mode, Some(TlsMode::IstioMutual));
    let tcp = tp.connection_pool.unwrap().tcp.unwrap();
    assert_eq!(tcp.connect_timeout.unwrap().0, std::time::Duration::from_millis(500));
    let od = tp.outlier_detection.unwrap();
    assert_eq!(od.consecutive_5xx_errors, Some(1));
    assert_eq!(od.base_ejection_time.unwrap().0.as_secs(), 180);
    assert_eq!(dr.spec.subsets[0].name, "v1");
    assert_eq!(dr.metadata.namespace.as_deref(), Some("default"));
}

fn vs_with_timeout(timeout: &str) -> String {
    format!("{VS_HEAD}        host: reviews\n    timeout: {timeout}\n")
}

#[test]
fn durations_parse() {
    for (text, want) in [
        ("0.5s", 500),
        ("3m", 180_000),
        ("1h", 3_600_000),
        ("500ms", 500),
        ("1h30m", 5_400_000),
        ("2.5s", 2500),
        ("\"10s\"", 10_000),
    ] {
        let Resource::VirtualService(vs) = known(&vs_with_timeout(text)) else { panic!() };
        let got = vs.spec.http[0].timeout.unwrap().0;
        assert_eq!(got.as_millis(), want, "{text}");
    }
}

#[test]
fn bad_durations_fail() {
    for text in ["7", "-1s", "abc", "10", "1x", "\"\""] {
        let e = err(&vs_with_timeout(text));
        assert_eq!(e.path, "spec.http[0].timeout", "{text}: {e:?}");
        assert_eq!(e.line, Some(12), "{text}: {e:?}");
        assert!(e.message.contains("duration"), "{text}: {e:?}");
    }
}

#[test]
fn string_match_and_fault() {
    let text = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: ratings
spec:
  hosts: [ratings]
  http:
  - match:
    - headers:
        end-user:
          exact: jason
        x-present: {}
      uri:
        prefix: /api
    fault:
      delay:
        percentage:
          value: 100.0
        fixedDelay: 7s
      abort:
        httpStatus: 500
        percentage: {}
    route:
    - destination:
        host: ratings
        subset: v1
        port:
          number: 9080
    mirror_percent: 5
    redirect:
      derivePort: FROM_REQUEST_PORT
    directResponse:
      status: 503
      body:
        string: unavailable
";
    let Resource::VirtualService(vs) = known(text) else { panic!() };
    let route = &vs.spec.http[0];
    let m = &route.r#match[0];
    assert_eq!(m.headers["end-user"].exact.as_deref(), Some("jason"));
    assert_eq!(m.headers["x-present"], StringMatch::default());
    assert_eq!(m.uri.as_ref().unwrap().prefix.as_deref(), Some("/api"));
    let fault = route.fault.as_ref().unwrap();
    assert_eq!(fault.delay.as_ref().unwrap().percentage.unwrap().value, 100.0);
    assert_eq!(fault.abort.as_ref().unwrap().percentage.unwrap().value, 0.0);
    assert_eq!(route.route[0].destination.port.unwrap().number, 9080);
    assert_eq!(route.mirror_percent, Some(5));
    assert_eq!(route.direct_response.as_ref().unwrap().status, 503);

    let bad = text.replace("exact: jason", "exact: jason\n          suffix: x");
    let e = err(&bad);
    assert_eq!(e.path, "spec.http[0].match[0].headers.end-user");
    assert!(e.message.contains("unknown field `suffix`"), "{e:?}");

    let bad = text.replace("FROM_REQUEST_PORT", "FROM_NOWHERE");
    assert_eq!(err(&bad).path, "spec.http[0].redirect.derivePort");
}

#[test]
fn required_fields() {
    // DestinationRule.host, absent spec included.
    let dr = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: x\n";
    assert!(err(dr).message.contains("host"), "{:?}", err(dr));
    let dr = format!("{dr}spec:\n  subsets:\n  - name: v1\n");
    let e = err(&dr);
    assert_eq!(e.path, "spec");
    assert!(e.message.contains("missing field `host`"), "{e:?}");
    // Subset.name.
    let e = err(&dr.replace("- name: v1", "- labels: {version: v1}").replace("spec:\n", "spec:\n  host: h\n"));
    assert_eq!(e.path, "spec.subsets[0]");
    assert!(e.message.contains("missing field `name`"), "{e:?}");
    // Gateway server port needs number, protocol and name.
    let gw = "\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: g
spec:
  servers:
  - port:
      number: 80
      protocol: HTTP
    hosts: ['*']
";
    let e = err(gw);
    assert_eq!(e.path, "spec.servers[0].port");
    assert!(e.message.contains("missing field `name`"), "{e:?}");
    // HTTPDirectResponse.status.
    let vs = format!("{VS_HEAD}        host: r\n    directResponse:\n      body:\n        string: x\n");
    assert!(err(&vs).message.contains("missing field `status`"));
}

#[test]
fn object_level_rules() {
    // Blank documents.
    assert_eq!(parse_document("").unwrap(), ParseOutcome::Empty);
    assert_eq!(parse_document("# only a comment\n\n   # another\n").unwrap(), ParseOutcome::Empty);
    // Missing apiVersion / kind.
    let e = err("kind: VirtualService\nmetadata:\n  name: x\n");
    assert_eq!(e.path, "apiVersion");
    assert!(e.message.contains("missing field `apiVersion`"));
    let e = err("apiVersion: v1\nmetadata:\n  name: x\n");
    assert_eq!(e.path, "kind");
    // Unknown version of an Istio kind.
    let e = err("apiVersion: networking.istio.io/v2\nkind: VirtualService\nmetadata:\n  name: x\n");
    assert_eq!(e.path, "apiVersion");
    assert_eq!(e.line, Some(1));
    assert!(e.message.contains("networking.istio.io/v1alpha3"), "{e:?}");
    let e = err("apiVersion: networking.istio.io/v1\nkind: EnvoyFilter\nmetadata:\n  name: x\n");
    assert!(e.message.contains("networking.istio.io/v1alpha3"), "{e:?}");
    // Not emulated kinds.
    assert_eq!(
        parse_document("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm\ndata:\n  a: b\n").unwrap(),
        ParseOutcome::NotEmulated { api_version: "v1".into(), kind: "ConfigMap".into(), name: "cm".into() }
    );
    for (api, kind) in [
        ("apps/v1", "StatefulSet"),
        ("networking.k8s.io/v1", "Ingress"),
        ("telemetry.istio.io/v1", "Telemetry"),
        ("networking.istio.io/v1", "WorkloadGroup"),
    ] {
        let doc = format!("apiVersion: {api}\nkind: {kind}\nmetadata:\n  name: n\n");
        assert!(matches!(parse_document(&doc), Ok(ParseOutcome::NotEmulated { .. })), "{api} {kind}");
    }
    // Status and other top-level keys are accepted; spec-less objects are fine.
    let ap = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: deny\nstatus:\n  x: 1\n";
    let r = known(ap);
    assert_eq!(r.kind(), "AuthorizationPolicy");
    assert_eq!(r.metadata().name.as_deref(), Some("deny"));
    // Syntax error.
    let e = err("apiVersion: v1\nkind: [unclosed\n");
    assert!(e.line.is_some(), "{e:?}");
    // Not a mapping.
    assert!(parse_document("- a\n- b\n").is_err());
}

#[test]
fn kubernetes_kinds_are_lenient() {
    let text = "\
apiVersion: v1
kind: Service
metadata:
  name: details
  labels:
    app: details
spec:
  clusterIP: None
  type: NodePort
  ports:
  - port: 9080
    name: http
    targetPort: 9080
  - port: 9090
    name: grpc
    targetPort: grpc-port
  selector:
    app: details
";
    let Resource::Service(svc) = known(text) else { panic!() };
    assert_eq!(svc.spec.type_.as_deref(), Some("NodePort"));
    assert_eq!(svc.spec.ports[0].target_port, Some(meshd::config::api::IntOrString::Int(9080)));
    assert_eq!(svc.spec.ports[1].target_port, Some(meshd::config::api::IntOrString::String("grpc-port".into())));
    let secret = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: s\ntype: kubernetes.io/tls\ndata:\n  tls.crt: YQ==\nstringData:\n  x: y\n";
    let Resource::Secret(s) = known(secret) else { panic!() };
    assert_eq!(s.type_.as_deref(), Some("kubernetes.io/tls"));
    assert_eq!(s.data["tls.crt"], "YQ==");
    assert_eq!(s.string_data["x"], "y");
}

#[test]
fn peer_authentication_port_keys() {
    let text = "\
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata:
  name: p
spec:
  selector:
    matchLabels:
      app: httpbin
  mtls:
    mode: STRICT
  portLevelMtls:
    80:
      mode: DISABLE
";
    let Resource::PeerAuthentication(pa) = known(text) else { panic!() };
    assert_eq!(pa.spec.port_level_mtls["80"].mode, Some(meshd::config::api::MtlsMode::Disable));
    let e = err(&text.replace("DISABLE", "OFF"));
    assert_eq!(e.path, "spec.portLevelMtls.80.mode");
}

#[test]
fn round_trip_through_yaml() {
    let text = format!(
        "{VS_HEAD}        host: reviews\n    timeout: 0.5s\n    retries:\n      attempts: 3\n      perTryTimeout: 2s\n"
    );
    let Resource::VirtualService(vs) = known(&text) else { panic!() };
    let yaml = serde_yaml::to_string(&vs).unwrap();
    let Resource::VirtualService(again) = known(&yaml) else { panic!() };
    assert_eq!(vs, again);
}
