//! Istio's TCP traffic-shifting task through the gateway's TCP server, and
//! AuthorizationPolicy on TCP (a denial closes the connection).

mod common;

use common::{tcp_echo, Mesh, TempDir};

#[tokio::test]
async fn tcp_traffic_shifting_task() {
    let dir = TempDir::new();
    dir.add_sample("tcp-echo/tcp-echo-services.yaml");
    dir.add_sample("tcp-echo/tcp-echo-all-v1.yaml");
    let mesh = Mesh::start(dir);
    let addr = mesh.gateway_tcp(31400);
    for i in 0..10 {
        assert_eq!(tcp_echo(addr, &format!("hello {i}")).as_deref(), Some(format!("one hello {i}").as_str()));
    }

    // Applied over all-v1 (same VirtualService name): in a folder the file that sorts later wins,
    // as with `kubectl apply -f folder/`, so the step's file is saved under a later name.
    let mark = mesh.mark();
    let step = std::fs::read_to_string(common::samples().join("tcp-echo/tcp-echo-20-v2.yaml")).unwrap();
    mesh.dir.write("tcp-echo-step2-20-v2.yaml", &step);
    mesh.wait_applied(mark);
    let n = 200;
    let two = (0..n).filter(|_| tcp_echo(addr, "x").is_some_and(|l| l.starts_with("two "))).count();
    // p = 0.2 over 200 connections: sd 2.8 points; [8%, 35%] is over 4 sd each way.
    assert!((16..=70).contains(&two), "about 20% to v2, per connection: {two}/{n}");
}

#[tokio::test]
async fn tcp_authorization_denial_closes_the_connection() {
    let dir = TempDir::new();
    dir.add_sample("tcp-echo/tcp-echo-services.yaml");
    dir.add_sample("tcp-echo/tcp-echo-all-v1.yaml");
    let mesh = Mesh::start(dir);
    let addr = mesh.gateway_tcp(31400);
    assert!(tcp_echo(addr, "before").is_some());
    let mark = mesh.mark();
    mesh.dir.write(
        "deny.yaml",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: tcp-deny}\nspec:\n  selector: {matchLabels: {app: tcp-echo}}\n  action: DENY\n  rules:\n  - to:\n    - operation: {ports: [\"9000\"]}\n",
    );
    mesh.wait_applied(mark);
    assert_eq!(tcp_echo(addr, "after"), None, "denied: closed without an echo");
    // An ALLOW policy that needs an HTTP attribute never matches TCP: nothing is allowed.
    let mark = mesh.mark();
    mesh.dir.write(
        "deny.yaml",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: tcp-allow-get}\nspec:\n  selector: {matchLabels: {app: tcp-echo}}\n  rules:\n  - to:\n    - operation: {methods: [\"GET\"]}\n",
    );
    mesh.wait_applied(mark);
    assert_eq!(tcp_echo(addr, "get"), None);
    let mark = mesh.mark();
    mesh.dir.remove("deny.yaml");
    mesh.wait_applied(mark);
    assert_eq!(tcp_echo(addr, "again").as_deref(), Some("one again"));
}
