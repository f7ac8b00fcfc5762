//! Every YAML document under the shared Istio samples parses.

use std::path::{Path, PathBuf};

use meshd::config::api::{parse_document, ParseOutcome};

const SAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/istio-samples");

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n == "crds") {
                continue;
            }
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
}

/// Splits a file on lines that are exactly `---`.
fn split_documents(text: &str) -> Vec<String> {
    let mut docs = vec![String::new()];
    for line in text.lines() {
        if line == "---" {
            docs.push(String::new());
        } else {
            let last = docs.last_mut().unwrap();
            last.push_str(line);
            last.push('\n');
        }
    }
    docs
}

#[test]
fn every_sample_document_parses() {
    if !Path::new(SAMPLES).is_dir() {
        panic!("{SAMPLES} is missing: the tests need shared/ beside the checkout");
    }
    let mut files = Vec::new();
    yaml_files(Path::new(SAMPLES), &mut files);
    assert!(files.len() > 50, "expected the sample corpus, found {}", files.len());
    let (mut known, mut not_emulated, mut empty) = (0, 0, 0);
    let mut failures = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for (i, doc) in split_documents(&text).iter().enumerate() {
            match parse_document(doc) {
                Ok(ParseOutcome::Known(_)) => known += 1,
                Ok(ParseOutcome::NotEmulated { kind, .. }) => {
                    eprintln!("not emulated: {} doc {i}: {kind}", file.display());
                    not_emulated += 1;
                }
                Ok(ParseOutcome::Empty) => empty += 1,
                Err(e) => failures.push(format!("{} doc {i} (line {:?}): {e}", file.display(), e.line)),
            }
        }
    }
    eprintln!("{} files: {known} known, {not_emulated} not emulated, {empty} empty", files.len());
    assert!(failures.is_empty(), "failures:\n{}", failures.join("\n"));
    assert!(known > 100);
}

#[test]
fn bookinfo_kubernetes_objects_are_typed() {
    use meshd::config::api::Resource;
    let path = Path::new(SAMPLES).join("bookinfo/platform/kube/bookinfo.yaml");
    let Ok(text) = std::fs::read_to_string(&path) else {
        panic!("{} is missing: the tests need shared/ beside the checkout", path.display());
    };
    let resources: Vec<Resource> = split_documents(&text)
        .iter()
        .filter_map(|doc| match parse_document(doc).unwrap() {
            ParseOutcome::Known(r) => Some(r),
            _ => None,
        })
        .collect();
    let deployment = resources
        .iter()
        .find_map(|r| match r {
            Resource::Deployment(d) if d.metadata.name.as_deref() == Some("details-v1") => Some(d),
            _ => None,
        })
        .expect("details-v1 deployment");
    let pod = &deployment.spec.template.spec;
    assert_eq!(pod.service_account_name.as_deref(), Some("bookinfo-details"));
    assert_eq!(pod.containers[0].ports[0].container_port, 9080);
    assert_eq!(deployment.spec.template.metadata.labels.get("version").map(String::as_str), Some("v1"));
    let service = resources
        .iter()
        .find_map(|r| match r {
            Resource::Service(s) if s.metadata.name.as_deref() == Some("details") => Some(s),
            _ => None,
        })
        .expect("details service");
    assert_eq!(service.spec.ports[0].port, 9080);
    assert_eq!(service.spec.ports[0].name.as_deref(), Some("http"));
    assert_eq!(service.spec.selector["app"], "details");
    assert!(resources.iter().any(|r| r.kind() == "ServiceAccount"));
}
