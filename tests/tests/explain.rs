//! `meshd explain` on the request-routing, fault-injection and authorization
//! tasks' YAML: the rule that matched and why earlier ones did not, the
//! destination, the policies and the authorization decision.

mod common;

use common::{Mesh, TempDir};

const AUTHZ: &str = "istio.io-tasks/authz-http/";

fn explain(mesh: &Mesh, args: &[&str]) -> String {
    let mut all = vec!["explain"];
    all.extend_from_slice(args);
    let out = mesh.cli(&all);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn line<'a>(text: &'a str, stage: &str, containing: &str) -> &'a str {
    text.lines()
        .find(|l| l.contains(&format!("[{stage}]")) && l.contains(containing))
        .unwrap_or_else(|| panic!("no [{stage}] line with {containing:?} in\n{text}"))
}

#[test]
fn request_routing_names_the_rule_and_why_the_header_rule_was_skipped() {
    let dir = TempDir::new();
    dir.add_sample("bookinfo/networking/destination-rule-all.yaml");
    dir.add_sample("bookinfo/networking/virtual-service-all-v1.yaml");
    dir.add_sample("bookinfo/networking/virtual-service-reviews-test-v2.yaml");
    let mesh = Mesh::start(dir);
    let jason = explain(&mesh, &["http://reviews:9080/reviews/0", "--from", "productpage-v1", "-H", "end-user: jason"]);
    line(&jason, "source", "workload productpage-v1");
    line(&jason, "virtualservice", "default/reviews rule #0 matched: match #0 headers end-user exact \"jason\"");
    line(&jason, "destination", "outbound|9080|v2|reviews.default.svc.cluster.local 100%");
    line(&jason, "destinationrule", "DestinationRule reviews.default");
    line(&jason, "mtls", "auto mTLS");
    line(&jason, "result", "forwarded to reviews-v2-");

    let other = explain(&mesh, &["http://reviews:9080/reviews/0", "--from", "productpage-v1", "-H", "end-user: bob"]);
    line(
        &other,
        "virtualservice",
        "rule #0 skipped: match #0 (headers end-user exact \"jason\"): header end-user is \"bob\"",
    );
    line(&other, "virtualservice", "rule #1 matched");
    line(&other, "destination", "outbound|9080|v1|reviews.default.svc.cluster.local 100%");
    line(&other, "policy", "timeout: none");
    line(&other, "policy", "retries: 2 attempts");

    let anon = explain(&mesh, &["http://reviews:9080/reviews/0", "--from", "productpage-v1"]);
    line(&anon, "virtualservice", "header end-user is missing");

    let gw = explain(&mesh, &["/productpage", "--from", "istio-ingressgateway"]);
    line(&gw, "virtualservice", "default/bookinfo rule #0 matched: match #0 uri exact \"/productpage\"");
    let none = explain(&mesh, &["/nope", "--from", "istio-ingressgateway"]);
    line(&none, "result", "404 NR");

    let bad = mesh.cli(&["explain", "http://reviews:9080/", "--from", "nobody"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no pod or workload named \"nobody\""));
}

#[test]
fn fault_injection_abort_and_delay_are_explained_for_jason_only() {
    let dir = TempDir::new();
    dir.add_sample("bookinfo/networking/destination-rule-all.yaml");
    dir.add_sample("bookinfo/networking/virtual-service-all-v1.yaml");
    dir.add_sample("bookinfo/networking/virtual-service-reviews-test-v2.yaml");
    dir.add_sample("bookinfo/networking/virtual-service-ratings-test-abort.yaml");
    let mesh = Mesh::start(dir);
    let jason = explain(&mesh, &["http://ratings:9080/ratings/0", "--from", "reviews-v2", "-H", "end-user: jason"]);
    line(&jason, "policy", "fault: abort with HTTP 500 for 100% of requests");
    line(&jason, "result", "HTTP 500 `fault filter abort`");
    let other = explain(&mesh, &["http://ratings:9080/ratings/0", "--from", "reviews-v2"]);
    assert!(!other.contains("[policy] fault"), "{other}");
    line(&other, "result", "forwarded to ratings-v1-");

    let mark = mesh.mark();
    mesh.dir.remove("virtual-service-ratings-test-abort.yaml");
    mesh.dir.add_sample("bookinfo/networking/virtual-service-ratings-test-delay.yaml");
    mesh.wait_applied(mark);
    let delayed = explain(&mesh, &["http://ratings:9080/ratings/0", "--from", "reviews-v2", "-H", "end-user: jason"]);
    line(&delayed, "policy", "fault: delay 7s for 100% of requests");
    line(&delayed, "result", "forwarded to ratings-v1-");
}

#[test]
fn authorization_decision_names_the_policy_outcome() {
    let dir = TempDir::new();
    dir.add_sample(&format!("{AUTHZ}1-allow-nothing.yaml"));
    let mesh = Mesh::start(dir);
    let denied = explain(&mesh, &["/productpage", "--from", "istio-ingressgateway"]);
    line(&denied, "authorization", "no ALLOW rule matched");
    line(&denied, "result", "403 RBAC: access denied");
    let mark = mesh.mark();
    mesh.dir.add_sample(&format!("{AUTHZ}2-productpage-viewer.yaml"));
    mesh.wait_applied(mark);
    let get = explain(&mesh, &["/productpage", "--from", "istio-ingressgateway"]);
    line(&get, "authorization", "allowed");
    let post = explain(&mesh, &["/productpage", "--from", "istio-ingressgateway", "-X", "POST"]);
    line(&post, "result", "403");
}
