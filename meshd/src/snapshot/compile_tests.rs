//! Routing from YAML to decision, without sockets: the sample YAML is
//! compiled with fake pods and each request's decision is checked.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use http::{HeaderMap, HeaderValue, Method};

use super::matcher::{split_authority, RequestView, SourceView};
use super::route::{decide, Decision, Target};
use super::*;
use crate::config::load::{parse_text, Loaded};
use crate::config::model::Workloads;

const SAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/istio-samples/");

fn sample(rel: &str) -> String {
    std::fs::read_to_string(format!("{SAMPLES}{rel}")).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// A fake running pod for every Deployment in the config (one replica each).
fn pods_for(workloads: &Workloads) -> Vec<PodInfo> {
    let mut port = 20000;
    crate::workload::plan(workloads)
        .into_iter()
        .map(|t| {
            let mut inbound = BTreeMap::new();
            for (_, p) in &t.ports {
                port += 1;
                inbound.insert(*p, SocketAddr::from(([127, 0, 0, 1], port)));
            }
            PodInfo {
                name: format!("{}-pod", t.deployment.meta.name),
                namespace: t.deployment.meta.namespace.clone(),
                labels: t.deployment.labels.clone(),
                service_account: t.deployment.service_account.clone(),
                workload: t.deployment.meta.name.clone(),
                container_ports: t.ports.clone(),
                inbound,
                outbound: None,
                sidecar: true,
            }
        })
        .collect()
}

fn build(texts: &[&str]) -> Result<Snapshot, Vec<crate::config::ConfigError>> {
    let mut loaded = Loaded::default();
    let mut errors = vec![];
    for (i, t) in texts.iter().enumerate() {
        parse_text(&format!("f{i}.yaml"), t, &mut loaded, &mut errors);
    }
    assert!(errors.is_empty(), "{errors:?}");
    let workloads = Workloads::from_resources(&loaded.resources).unwrap();
    let pods = pods_for(&workloads);
    compile(CompileInput {
        resources: &loaded.resources,
        workloads: &workloads,
        pods: &pods,
        generation: 1,
        not_emulated: &[],
        base: None,
        jwks: &Default::default(),
    })
}

/// What a request decides to, as a short string: a cluster name, `NR`, `NC`, `301 <location>`, `direct 200 <body>`.
fn route(snap: &Snapshot, from: Option<&Labels>, url: &str, headers: &[(&str, &str)]) -> String {
    let (authority, rest) = url.trim_start_matches("http://").split_once('/').unwrap();
    let path_q = format!("/{rest}");
    let (path, query) = match path_q.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (path_q.clone(), None),
    };
    let mut h = HeaderMap::new();
    for (k, v) in headers {
        h.insert(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
    }
    let (host, port) = split_authority(authority);
    let view = RequestView {
        method: &Method::GET,
        path: &path,
        query: query.as_deref(),
        scheme: "http",
        authority,
        port: port.unwrap_or(80),
        headers: &h,
    };
    let gw_labels = compile::ingress_labels();
    let (vhost, src) = match from {
        Some(l) => (snap.mesh["default"].lookup(host), SourceView { labels: l, namespace: "default", gateway: "mesh" }),
        None => (snap.ingress.lookup(host), SourceView { labels: &gw_labels, namespace: "istio-system", gateway: "" }),
    };
    let Some(vhost) = vhost else { return "NR".into() };
    match decide(&vhost.routes, &view, &src) {
        Decision::Forward { cluster, matched, .. } => {
            let mut s = cluster.name.clone();
            if let Some(rw) = &matched.route.rewrite {
                if let Some(p) = rw.path(&path, query.as_deref(), matched.prefix) {
                    s.push_str(&format!(" path={p}"));
                }
                if let Some(a) = &rw.authority {
                    s.push_str(&format!(" authority={a}"));
                }
            }
            s
        }
        Decision::Redirect { code, location, .. } => format!("{code} {location}"),
        Decision::Direct { status, body, .. } => format!("direct {status} {}", String::from_utf8_lossy(body)),
        Decision::Reply(r) => r.flag().into(),
    }
}

const V1: &str = "outbound|9080|v1|reviews.default.svc.cluster.local";
const V2: &str = "outbound|9080|v2|reviews.default.svc.cluster.local";

#[test]
fn bookinfo_header_routing_from_the_samples() {
    let snap = build(&[
        &sample("bookinfo/platform/kube/bookinfo.yaml"),
        &sample("bookinfo/networking/destination-rule-all.yaml"),
        &sample("bookinfo/networking/virtual-service-reviews-test-v2.yaml"),
    ])
    .unwrap();
    let pp = labels(&[("app", "productpage"), ("version", "v1")]);
    assert_eq!(route(&snap, Some(&pp), "http://reviews:9080/reviews/0", &[("end-user", "jason")]), V2);
    assert_eq!(route(&snap, Some(&pp), "http://reviews:9080/reviews/0", &[("end-user", "bob")]), V1);
    assert_eq!(route(&snap, Some(&pp), "http://reviews:9080/reviews/0", &[]), V1);
    // Every alias of the host, with and without the port.
    for host in ["reviews", "reviews.default", "reviews.default.svc", "reviews.default.svc.cluster.local"] {
        assert_eq!(route(&snap, Some(&pp), &format!("http://{host}:9080/x"), &[("end-user", "jason")]), V2);
        assert_eq!(route(&snap, Some(&pp), &format!("http://{host}/x"), &[("end-user", "jason")]), V2);
    }
    // No VirtualService for ratings: the service's default cluster.
    assert_eq!(
        route(&snap, Some(&pp), "http://ratings:9080/ratings/0", &[]),
        "outbound|9080||ratings.default.svc.cluster.local"
    );
    assert_eq!(route(&snap, Some(&pp), "http://nowhere:9080/", &[]), "NR");
    let cluster = |name: &str| snap.clusters.iter().find(|c| c.name == name).unwrap().clone();
    let c = cluster(V2);
    assert_eq!(c.endpoints.len(), 1);
    assert_eq!(c.endpoints[0].pod, "reviews-v2-pod");
    assert_eq!(cluster("outbound|9080||reviews.default.svc.cluster.local").endpoints.len(), 3);
}

#[test]
fn gateway_binds_hosts_and_answers_nr() {
    let snap = build(&[
        &sample("httpbin/httpbin.yaml"),
        &sample("istio.io-tasks/ingress-control/1-httpbin-gateway.yaml"),
        &sample("istio.io-tasks/ingress-control/2-httpbin-virtualservice.yaml"),
    ])
    .unwrap();
    let cluster = "outbound|8000||httpbin.default.svc.cluster.local";
    assert_eq!(route(&snap, None, "http://httpbin.example.com/status/200", &[]), cluster);
    assert_eq!(route(&snap, None, "http://httpbin.example.com:8080/delay/1", &[]), cluster);
    assert_eq!(route(&snap, None, "http://httpbin.example.com/headers", &[]), "NR");
    assert_eq!(route(&snap, None, "http://other.example.com/status/200", &[]), "NR");
    // The VS is bound to the gateway only, not to the mesh.
    let any = labels(&[("app", "x")]);
    assert_eq!(route(&snap, Some(&any), "http://httpbin.example.com/status/200", &[]), "NR");
}

#[test]
fn missing_subset_and_unknown_host_are_nc() {
    let snap = build(&[
        &sample("bookinfo/platform/kube/bookinfo.yaml"),
        &sample("bookinfo/networking/virtual-service-all-v1.yaml"),
    ])
    .unwrap();
    let pp = labels(&[("app", "productpage")]);
    assert_eq!(route(&snap, Some(&pp), "http://reviews:9080/reviews/0", &[]), "NC");
    let vs = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ghost}
spec:
  hosts: [ghost.example.com]
  http:
  - route:
    - destination: {host: nothere}
"#;
    let snap = build(&[&sample("bookinfo/platform/kube/bookinfo.yaml"), vs]).unwrap();
    assert_eq!(route(&snap, Some(&pp), "http://ghost.example.com/", &[]), "NC");
}

const SVC: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  ports: [{name: http, port: 80, targetPort: 8080}]
  selector: {app: web}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web-v1}
spec:
  template:
    metadata: {labels: {app: web, version: v1}}
    spec:
      containers: [{name: web, image: docker.io/mccutchen/go-httpbin:v2.15.0, ports: [{containerPort: 8080}]}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web-v2}
spec:
  template:
    metadata: {labels: {app: web, version: v2}}
    spec:
      containers: [{name: web, image: docker.io/mccutchen/go-httpbin:v2.15.0, ports: [{containerPort: 8080}]}]
---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: web}
spec:
  host: web
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"#;

const WEB_V1: &str = "outbound|80|v1|web.default.svc.cluster.local";
const WEB_V2: &str = "outbound|80|v2|web.default.svc.cluster.local";

#[test]
fn every_match_kind_rewrite_redirect_direct_response() {
    let vs = r#"
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: web}
spec:
  hosts: [web]
  http:
  - match: [{sourceLabels: {app: canary-client}}]
    route: [{destination: {host: web, subset: v2}}]
  - match: [{queryParams: {u: {exact: test}}}]
    route: [{destination: {host: web, subset: v2}}]
  - match: [{uri: {prefix: /OLD}, ignoreUriCase: true}]
    rewrite: {uri: /new, authority: web.internal}
    route: [{destination: {host: web, subset: v1}}]
  - match: [{uri: {exact: /moved}}]
    redirect: {uri: /elsewhere, authority: example.com, redirectCode: 302}
  - match: [{uri: {regex: '/api/v[0-9]+/.*'}, method: {exact: POST}}]
    directResponse: {status: 418, body: {string: teapot}}
  - match: [{withoutHeaders: {x-debug: {}}, uri: {prefix: /quiet}}]
    route: [{destination: {host: web, subset: v1}}]
  - match: [{headers: {x-debug: {}}}]
    route: [{destination: {host: web, subset: v2}}]
  - match: [{uri: {regex: '/svc/([^/]+)/(.*)'}}]
    rewrite: {uriRegexRewrite: {match: '/svc/([^/]+)/(.*)', rewrite: '/\2/\1'}}
    route: [{destination: {host: web, subset: v1}}]
"#;
    let snap = build(&[SVC, vs]).unwrap();
    let me = labels(&[("app", "sleep")]);
    let canary = labels(&[("app", "canary-client")]);
    assert_eq!(route(&snap, Some(&canary), "http://web/x", &[]), WEB_V2);
    assert_eq!(route(&snap, Some(&me), "http://web/x?u=test", &[]), WEB_V2);
    assert_eq!(
        route(&snap, Some(&me), "http://web/old/page?a=1", &[]),
        format!("{WEB_V1} path=/new/page?a=1 authority=web.internal")
    );
    assert_eq!(route(&snap, Some(&me), "http://web/moved?q=1", &[]), "302 http://example.com/elsewhere?q=1");
    assert_eq!(route(&snap, Some(&me), "http://web/quiet", &[]), WEB_V1);
    assert_eq!(route(&snap, Some(&me), "http://web/quiet", &[("x-debug", "1")]), WEB_V2);
    assert_eq!(route(&snap, Some(&me), "http://web/svc/foo/bar", &[]), format!("{WEB_V1} path=/bar/foo"));
    assert_eq!(route(&snap, Some(&me), "http://web/nothing", &[]), "NR");
    // GET does not satisfy the POST-only direct response.
    assert_eq!(route(&snap, Some(&me), "http://web/api/v1/x", &[]), "NR");
}

#[test]
fn delegate_routes_are_merged_under_the_parent_match() {
    let root = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: root}
spec:
  hosts: [web]
  http:
  - match: [{uri: {prefix: /api}}]
    delegate: {name: api, namespace: default}
  - route: [{destination: {host: web, subset: v1}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: api}
spec:
  http:
  - match: [{uri: {prefix: /api/v2}}]
    route: [{destination: {host: web, subset: v2}}]
  - match: [{headers: {x-rewrite: {exact: "yes"}}}]
    rewrite: {uri: /v2}
    route: [{destination: {host: web, subset: v2}}]
"#;
    let snap = build(&[SVC, root]).unwrap();
    let me = labels(&[("app", "sleep")]);
    assert_eq!(route(&snap, Some(&me), "http://web/api/v2/items", &[]), WEB_V2);
    // A delegate's route without a uri condition takes its parent's: the rewrite replaces `/api`.
    assert_eq!(
        route(&snap, Some(&me), "http://web/api/items", &[("x-rewrite", "yes")]),
        format!("{WEB_V2} path=/v2/items")
    );
    // Under /api but not matched by the delegate: evaluation goes on with the next root route.
    assert_eq!(route(&snap, Some(&me), "http://web/api/v1/items", &[]), WEB_V1);
    assert_eq!(route(&snap, Some(&me), "http://web/other", &[]), WEB_V1);
}

#[test]
fn bad_regex_is_an_error_with_file_line_and_field() {
    let vs = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: web}\nspec:\n  hosts: [web]\n  http:\n  - match: [{uri: {regex: '/a(b'}}]\n    route: [{destination: {host: web}}]\n";
    let errs = build(&[SVC, vs]).unwrap_err();
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].file, "f1.yaml");
    assert_eq!(errs[0].field, "spec.http[0].match[0].uri.regex");
    assert!(errs[0].message.contains("invalid regular expression"), "{}", errs[0].message);
}

#[test]
fn every_sample_folder_of_the_project_compiles() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../samples");
    let mut n = 0;
    for entry in std::fs::read_dir(root).unwrap() {
        let dir = entry.unwrap().path();
        if !dir.is_dir() {
            continue;
        }
        let loaded = crate::config::load::load_dir(&dir).unwrap_or_else(|e| panic!("{}: {e:?}", dir.display()));
        let (loaded, _) = crate::config::with_builtin(loaded);
        let workloads = Workloads::from_resources(&loaded.resources).unwrap();
        let pods = pods_for(&workloads);
        let snap = compile(CompileInput {
            resources: &loaded.resources,
            workloads: &workloads,
            pods: &pods,
            generation: 1,
            not_emulated: &loaded.not_emulated,
            base: None,
            jwks: &Default::default(),
        })
        .unwrap_or_else(|e| panic!("{}: {e:?}", dir.display()));
        // Every route target of a sample resolves: no sample ships a 503 NC.
        for vh in snap.mesh["default"].hosts.values().chain(snap.ingress.vhosts.iter().map(|(_, v)| v)) {
            for r in vh.routes.iter() {
                if let route::RouteAction::Forward { targets, .. } = &r.action {
                    for t in targets {
                        assert!(
                            matches!(t.target, Target::Clusters(_)),
                            "{}: {} {:?}",
                            dir.display(),
                            vh.name,
                            t.target
                        );
                    }
                }
            }
        }
        n += 1;
    }
    assert!(n >= 6, "sample folders found: {n}");
}

#[test]
fn subset_and_port_level_policies_merge_as_istio_does() {
    let dr = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web}
spec:
  host: web
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
    connectionPool: {tcp: {maxConnections: 7}}
    outlierDetection: {consecutive5xxErrors: 3}
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy:
      connectionPool: {http: {http1MaxPendingRequests: 2}}
  - name: v2
    labels: {version: v2}
    trafficPolicy:
      portLevelSettings:
      - port: {number: 80}
        loadBalancer: {simple: RANDOM}
"#;
    let svc = SVC.split("---\napiVersion: networking.istio.io/v1beta1").next().unwrap();
    let vs = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: web}\nspec:\n  hosts: [web]\n  http:\n  - route:\n    - {destination: {host: web, subset: v1}, weight: 50}\n    - {destination: {host: web, subset: v2}, weight: 50}\n";
    let snap = build(&[svc, dr, vs]).unwrap();
    let c = |name: &str| snap.clusters.iter().find(|c| c.name == name).unwrap().clone();
    let v1 = c(WEB_V1);
    // The subset's connectionPool replaces the rule's whole connectionPool; lb and outlier are inherited.
    assert_eq!(v1.lb, policy::LbPolicy::RoundRobin);
    assert_eq!(v1.pool.max_pending, 2);
    assert_eq!(v1.pool.max_connections, u32::MAX);
    assert_eq!(v1.outlier.as_ref().unwrap().consecutive_5xx, Some(3));
    // A port-level entry replaces every field for its port, with defaults for what it leaves out.
    let v2 = c(WEB_V2);
    assert_eq!(v2.lb, policy::LbPolicy::Random);
    assert_eq!(v2.pool.max_connections, u32::MAX);
    assert!(v2.outlier.is_none());
    let default = c("outbound|80||web.default.svc.cluster.local");
    assert_eq!(default.pool.max_connections, 7);
}

#[test]
fn destination_rule_fields_meshd_does_not_act_on_are_reported() {
    let svc = SVC.split("---\napiVersion: networking.istio.io/v1beta1").next().unwrap();
    let dr = r#"apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web}
spec:
  host: web
  trafficPolicy:
    retryBudget: {percent: 0, minRetryConcurrency: 1}
    connectionPool: {http: {maxRetries: 1}}
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN, localityLbSetting: {enabled: true}}}
"#;
    let snap = build(&[svc, dr]).unwrap();
    let reported: Vec<&String> =
        snap.not_emulated.iter().filter(|n| n.starts_with("DestinationRule default/web")).collect();
    assert_eq!(reported.len(), 2, "{:?}", snap.not_emulated);
    assert!(reported[0].ends_with(": trafficPolicy.retryBudget"), "{reported:?}");
    assert!(reported[1].ends_with(": subsets[v1].trafficPolicy.loadBalancer.localityLbSetting"), "{reported:?}");
}

#[test]
fn the_apps_own_service_speaks_for_its_pods_whatever_the_file_order() {
    let (apps, versions) =
        (sample("bookinfo/platform/kube/bookinfo.yaml"), sample("bookinfo/platform/kube/bookinfo-versions.yaml"));
    for texts in [[apps.as_str(), versions.as_str()], [versions.as_str(), apps.as_str()]] {
        let snap = build(&texts).unwrap();
        let pod = snap.pods.iter().find(|p| p.workload == "reviews-v1").unwrap();
        let names: Vec<_> = snap.services_of(pod).iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["reviews", "reviews-v1"]);
    }
}

#[test]
fn a_gateway_api_prefix_is_a_segment_prefix_and_an_istio_one_a_string_prefix() {
    let bookinfo = sample("bookinfo/platform/kube/bookinfo.yaml");
    let page = "outbound|9080||productpage.default.svc.cluster.local";
    let gateway_api = build(&[&bookinfo, &sample("bookinfo/gateway-api/bookinfo-gateway.yaml")]).unwrap();
    let istio = build(&[&bookinfo, &sample("bookinfo/networking/bookinfo-gateway.yaml")]).unwrap();
    for (snap, staticfoo) in [(&gateway_api, "NR"), (&istio, page)] {
        assert_eq!(route(snap, None, "http://localhost/static/app.css", &[]), page);
        assert_eq!(route(snap, None, "http://localhost/static", &[]), page);
        assert_eq!(route(snap, None, "http://localhost/staticfoo", &[]), staticfoo);
    }
    // A rewrite of a Gateway API prefix keeps one slash.
    let rewrite = "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r}
spec:
  parentRefs: [{name: bookinfo-gateway}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /app/}}]
    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}}]
    backendRefs: [{name: productpage, port: 9080}]
";
    let snap = build(&[&bookinfo, &sample("bookinfo/gateway-api/bookinfo-gateway.yaml"), rewrite]).unwrap();
    assert_eq!(
        route(&snap, None, "http://localhost/app/productpage?u=1", &[]),
        format!("{page} path=/productpage?u=1")
    );
    assert_eq!(route(&snap, None, "http://localhost/app", &[]), format!("{page} path=/"));
}

#[test]
fn a_missing_backend_is_500_on_a_gateway_api_route_and_503_on_an_istio_one() {
    let route = "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: reviews}
spec:
  parentRefs: [{group: '', kind: Service, name: reviews, port: 9080}]
  rules: [{backendRefs: [{name: reviews-v9, port: 9080}]}]
";
    let bookinfo = sample("bookinfo/platform/kube/bookinfo.yaml");
    let istio = sample("bookinfo/networking/virtual-service-all-v1.yaml");
    let pp = labels(&[("app", "productpage"), ("version", "v1")]);
    let status = |snap: &Snapshot| {
        let h = HeaderMap::new();
        let view = RequestView {
            method: &Method::GET,
            path: "/reviews/0",
            query: None,
            scheme: "http",
            authority: "reviews:9080",
            port: 9080,
            headers: &h,
        };
        let src = SourceView { labels: &pp, namespace: "default", gateway: "mesh" };
        match decide(&snap.mesh["default"].lookup("reviews").unwrap().routes, &view, &src) {
            Decision::Reply(r) => (r.status(), r.flag()),
            _ => panic!("a reply"),
        }
    };
    assert_eq!(status(&build(&[&bookinfo, route]).unwrap()), (500, "NC"));
    assert_eq!(status(&build(&[&bookinfo, &istio]).unwrap()), (503, "NC"), "no DestinationRule: subset v1 is missing");
}
