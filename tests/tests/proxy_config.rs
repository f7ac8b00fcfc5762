//! `meshd proxy-config`, `proxy-status`, `describe`, and Envoy's `/config_dump`
//! and `/listeners`, on the fault-injection task's Bookinfo.

mod common;

use common::{Mesh, TempDir};

fn run(mesh: &Mesh, args: &[&str]) -> String {
    let out = mesh.cli(args);
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn row<'a>(text: &'a str, cells: &[&str]) -> &'a str {
    text.lines()
        .find(|l| {
            let words: Vec<&str> = l.split("   ").map(str::trim).filter(|w| !w.is_empty()).collect();
            cells.iter().all(|c| words.contains(c))
        })
        .unwrap_or_else(|| panic!("no row with {cells:?} in\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istioctl_views_of_the_fault_injection_task() {
    let dir = TempDir::new();
    dir.add_sample("bookinfo/networking/destination-rule-all.yaml");
    dir.add_sample("bookinfo/networking/virtual-service-all-v1.yaml");
    dir.add_sample("bookinfo/networking/virtual-service-reviews-test-v2.yaml");
    let mesh = Mesh::start(dir);

    let routes = run(&mesh, &["proxy-config", "routes", "productpage-v1"]);
    assert!(routes.starts_with("NAME"), "{routes}");
    assert!(routes.lines().next().unwrap().contains("VIRTUAL SERVICE"));
    let jason = row(&routes, &["9080", "headers end-user exact \"jason\"", "reviews.default"]);
    assert!(jason.contains("reviews.default.svc.cluster.local"));

    let clusters = run(&mesh, &["proxy-config", "clusters", "productpage-v1"]);
    assert!(clusters.starts_with("SERVICE FQDN"));
    row(&clusters, &["reviews.default.svc.cluster.local", "9080", "v2", "outbound", "EDS", "reviews.default"]);
    row(&clusters, &["9080", "-", "inbound", "ORIGINAL_DST"]);
    row(&clusters, &["BlackHoleCluster"]);

    let endpoints = run(&mesh, &["proxy-config", "endpoints", "productpage-v1"]);
    assert!(endpoints.starts_with("ENDPOINT"));
    row(&endpoints, &["HEALTHY", "OK", "outbound|9080|v1|reviews.default.svc.cluster.local"]);

    let listeners = run(&mesh, &["proxy-config", "listeners", "istio-ingressgateway"]);
    row(&listeners, &["127.0.0.1", &mesh.gateway.port().to_string(), "HTTP"]);

    let status = run(&mesh, &["proxy-status"]);
    assert!(status.starts_with("PROXY"));
    assert!(status.lines().next().unwrap().contains("CDS") && status.contains("PILOT"));
    let pp = status.lines().find(|l| l.starts_with("productpage-v1-")).expect("productpage row");
    assert!(pp.contains(".default ") && pp.contains("SYNCED"), "{pp}");

    let v1 = run(&mesh, &["describe", "reviews-v1"]);
    assert!(v1.starts_with("Pod: reviews-v1-"), "{v1}");
    assert!(v1.contains("Service: reviews\n   Port: http 9080/HTTP targets pod port 9080"));
    assert!(v1.contains("DestinationRule: reviews.default for \"reviews\"\n   Matching subsets: v1"));
    assert!(v1.contains("Route to non-matching subset v2 for (when headers end-user exact \"jason\")"), "{v1}");
    let v3 = run(&mesh, &["describe", "reviews-v3"]);
    assert!(v3.contains("WARNING: No destinations match pod subsets (checked 2 HTTP routes)"), "{v3}");
    assert!(v3.contains("Workload mTLS mode: PERMISSIVE"));

    let client = mesh.client();
    let admin = |path: &str| {
        let (client, url) = (client.clone(), format!("http://{}{path}", mesh.admin));
        async move { client.get(url).send().await.unwrap().text().await.unwrap() }
    };
    let dump: serde_json::Value =
        serde_json::from_str(&admin("/config_dump?proxy=istio-ingressgateway").await).unwrap();
    let types: Vec<&str> = dump["configs"].as_array().unwrap().iter().map(|c| c["@type"].as_str().unwrap()).collect();
    assert!(types.contains(&"type.googleapis.com/envoy.admin.v3.ClustersConfigDump"), "{types:?}");
    let l = admin("/listeners?proxy=istio-ingressgateway").await;
    assert!(l.contains(&format!("0.0.0.0_8080::{}", mesh.gateway)), "{l}");
}
