//! Live reload of workloads: manifest edits start and stop pods, and a
//! request in flight finishes on the pod and snapshot it started with.

mod common;

use std::time::Duration;

use common::{Mesh, TempDir};

fn pods(mesh: &Mesh) -> Vec<String> {
    let out = mesh.cli(&["status"]);
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_string))
        .collect()
}

#[tokio::test]
async fn replicas_and_new_deployments_start_and_stop_pods() {
    let dir = TempDir::new();
    dir.add_sample("httpbin/httpbin.yaml");
    let mesh = Mesh::start(dir);
    let before = pods(&mesh);
    assert_eq!(before.iter().filter(|p| p.starts_with("httpbin-")).count(), 1, "{before:?}");

    let yaml = std::fs::read_to_string(common::samples().join("httpbin/httpbin.yaml")).unwrap();
    let three = yaml.replace("replicas: 1", "replicas: 3");
    assert_ne!(three, yaml, "the sample sets replicas: 1");
    let mark = mesh.mark();
    mesh.dir.write("httpbin.yaml", &three);
    mesh.wait_applied(mark);
    let after = pods(&mesh);
    let httpbins: Vec<_> = after.iter().filter(|p| p.starts_with("httpbin-")).collect();
    assert_eq!(httpbins.len(), 3, "{after:?}");
    assert!(after.contains(&before[0]), "scaling up keeps the running pod");
    // Each replica answers with its own name.
    let mut names = std::collections::HashSet::new();
    for _ in 0..60 {
        let body = mesh.mesh_client().get("http://httpbin:8000/hostname").send().await.unwrap().text().await.unwrap();
        names.insert(body);
        if names.len() == 3 {
            break;
        }
    }
    assert_eq!(names.len(), 3, "requests spread over the replicas: {names:?}");

    let mark = mesh.mark();
    mesh.dir.add_sample("httpbin/sample-client/fortio-deploy.yaml");
    mesh.wait_applied(mark);
    assert!(pods(&mesh).iter().any(|p| p.starts_with("fortio-deploy-")));

    let mark = mesh.mark();
    mesh.dir.write("httpbin.yaml", &yaml);
    mesh.wait_applied(mark);
    let last = pods(&mesh);
    assert_eq!(last.iter().filter(|p| p.starts_with("httpbin-")).count(), 1, "{last:?}");
}

#[tokio::test]
async fn request_in_flight_finishes_across_a_rollout() {
    let dir = TempDir::new();
    dir.add_sample("httpbin/httpbin.yaml");
    let mesh = Mesh::start(dir);
    let client = mesh.mesh_client();
    let slow = tokio::spawn(async move { client.get("http://httpbin:8000/delay/2").send().await.map(|r| r.status()) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A template change (new env) replaces the pod while the request is in flight.
    let yaml = std::fs::read_to_string(common::samples().join("httpbin/httpbin.yaml")).unwrap();
    let changed = yaml.replace("- containerPort: 8080", "- containerPort: 8080\n          name: http");
    assert_ne!(changed, yaml);
    let mark = mesh.mark();
    mesh.dir.write("httpbin.yaml", &changed);
    let applied = mesh.wait_applied(mark);
    assert!(applied.contains("- Pod httpbin-"), "{applied}");
    assert_eq!(slow.await.unwrap().unwrap(), 200);
    let resp = mesh.mesh_client().get("http://httpbin:8000/get").send().await.unwrap();
    assert_eq!(resp.status(), 200, "the new pod serves");
}
