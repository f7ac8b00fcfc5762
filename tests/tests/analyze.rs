//! `meshd analyze` as users run it: offline on a folder (istioctl's lines and
//! exit code), and by the daemon on every reload (printed and in the admin API).

mod common;

use std::process::Command;
use std::time::Duration;

use common::{meshd_bin, samples, Mesh, TempDir};

#[test]
fn offline_analyze_names_code_file_and_line_and_fails_on_errors() {
    let dir = TempDir::new();
    dir.add_sample("bookinfo/networking/destination-rule-all.yaml");
    let vs = std::fs::read_to_string(samples().join("bookinfo/networking/virtual-service-all-v1.yaml")).unwrap();
    dir.write("virtual-service-all-v1.yaml", &vs.replacen("host: reviews\n", "host: reviewz\n", 1));
    let out = Command::new(meshd_bin()).args(["analyze"]).arg(&dir.0).output().unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(79), "{stdout}{stderr}");
    let line = vs.lines().position(|l| l.trim() == "host: reviews").unwrap() + 1;
    assert!(
        stdout.contains(&format!(
            "Error [IST0101] (VirtualService reviews.default virtual-service-all-v1.yaml:{line}) Referenced host not found: \"reviewz\""
        )),
        "{stdout}"
    );
    assert!(stderr.contains("Error: Analyzers found issues"));

    let good = TempDir::new();
    good.add_sample("bookinfo/platform/kube/bookinfo.yaml");
    good.add_sample("bookinfo/networking/bookinfo-gateway.yaml");
    good.add_sample("bookinfo/networking/destination-rule-all.yaml");
    good.add_sample("bookinfo/networking/virtual-service-reviews-80-20.yaml");
    let out = Command::new(meshd_bin()).args(["analyze"]).arg(&good.0).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(String::from_utf8_lossy(&out.stderr).contains("No validation issues found"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_analyzes_every_reload() {
    let dir = TempDir::new();
    dir.add_sample("bookinfo/networking/destination-rule-all.yaml");
    let mesh = Mesh::start(dir);
    let mark = mesh.mark();
    let vs = std::fs::read_to_string(samples().join("bookinfo/networking/bookinfo-gateway.yaml")).unwrap();
    mesh.dir.write("bookinfo-gateway.yaml", &vs.replace("- bookinfo-gateway", "- bookinfo-gatewy"));
    let line = mesh.wait_for_line_after(
        mark,
        |l| l.starts_with("meshd: analyze: ") && l.contains("Referenced gateway not found: \"bookinfo-gatewy\""),
        Duration::from_secs(10),
    );
    assert!(line.contains("[IST0101] (VirtualService bookinfo.default bookinfo-gateway.yaml:"), "{line}");
    let v: serde_json::Value =
        mesh.client().get(format!("http://{}/meshd/analyze", mesh.admin)).send().await.unwrap().json().await.unwrap();
    let msgs = v["messages"].as_array().unwrap();
    let m = msgs.iter().find(|m| m["code"] == "IST0101" && m["kind"] == "VirtualService").expect("IST0101 in the API");
    assert_eq!(m["level"], "Error");
    assert_eq!(m["file"], "bookinfo-gateway.yaml");
    assert!(m["line_text"].as_str().unwrap().starts_with("Error [IST0101]"));
}
