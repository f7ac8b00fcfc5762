//! `meshd analyze` over real configurations: the repo's samples and Bookinfo as the
//! Istio tasks set it up report no errors, and every Istio sample document of a kind
//! with a CRD schema validates against it.

use std::path::{Path, PathBuf};

use meshd::analyze::{analyze_dir, schema, Level, Report};

/// `shared/` beside the checkout, as the other tests find it; `MESHD_SHARED_DIR` when the
/// checkout is elsewhere (a worktree).
fn shared() -> PathBuf {
    let beside = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared");
    if beside.is_dir() {
        return beside;
    }
    match std::env::var_os("MESHD_SHARED_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => panic!("{} is missing: the tests need shared/ beside the checkout", beside.display()),
    }
}

fn errors(report: &Report) -> Vec<String> {
    report.messages.iter().filter(|m| m.level == Level::Error).map(ToString::to_string).collect()
}

/// A fresh, empty folder under the system temp dir.
fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("meshd-analyze-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn repo_samples_have_no_errors() {
    let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../samples");
    let mut dirs: Vec<PathBuf> =
        std::fs::read_dir(&samples).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_dir()).collect();
    dirs.sort();
    assert!(dirs.len() >= 10, "expected the samples, found {dirs:?}");
    let mut failures = Vec::new();
    for dir in &dirs {
        let report = analyze_dir(dir);
        for m in &report.messages {
            eprintln!("samples/{}: {m}", dir.file_name().unwrap().to_string_lossy());
        }
        failures.extend(errors(&report).into_iter().map(|e| format!("{}: {e}", dir.display())));
    }
    assert!(failures.is_empty(), "errors:\n{}", failures.join("\n"));
}

#[test]
fn bookinfo_as_the_tasks_set_it_up_has_no_errors() {
    let bookinfo = shared().join("istio-samples/bookinfo");
    let networking = bookinfo.join("networking");
    let mut vs_files: Vec<PathBuf> = std::fs::read_dir(&networking)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("virtual-service-"))
        .collect();
    vs_files.sort();
    assert!(vs_files.len() >= 10, "{vs_files:?}");
    let base = [
        bookinfo.join("platform/kube/bookinfo.yaml"),
        networking.join("bookinfo-gateway.yaml"),
        networking.join("destination-rule-all.yaml"),
    ];
    let mut failures = Vec::new();
    for (i, vs) in vs_files.iter().enumerate() {
        let dir = temp_dir(&format!("bookinfo-{i}"));
        for f in base.iter().chain([vs]) {
            std::fs::copy(f, dir.join(f.file_name().unwrap())).unwrap();
        }
        let report = analyze_dir(&dir);
        let name = vs.file_name().unwrap().to_string_lossy().to_string();
        for m in &report.messages {
            eprintln!("bookinfo + {name}: {m}");
        }
        failures.extend(errors(&report).into_iter().map(|e| format!("{name}: {e}")));
        std::fs::remove_dir_all(&dir).unwrap();
    }
    assert!(failures.is_empty(), "errors:\n{}", failures.join("\n"));
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n != "crds") {
                yaml_files(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
}

#[test]
fn every_istio_sample_validates_against_its_crd_schema() {
    let root = shared().join("istio-samples");
    let mut files = Vec::new();
    yaml_files(&root, &mut files);
    assert!(files.len() > 50, "{}", files.len());
    let (mut validated, mut failures) = (0, Vec::new());
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for (line, doc) in meshd::config::load::split_documents(&text) {
            let Ok(yaml) = serde_yaml::from_str::<serde_yaml::Value>(doc) else { continue };
            let value = schema::yaml_to_json(&yaml);
            let field = |k: &str| value.get(k).and_then(|v| v.as_str()).unwrap_or_default().to_string();
            match schema::validate(&field("apiVersion"), &field("kind"), &value).unwrap() {
                None => {}
                Some(errors) => {
                    validated += 1;
                    for e in errors {
                        failures.push(format!("{}:{line}: {e}", file.display()));
                    }
                }
            }
        }
    }
    eprintln!("{validated} documents validated against the CRD schemas");
    assert!(validated > 60, "{validated}");
    assert!(failures.is_empty(), "schema errors:\n{}", failures.join("\n"));
}
