//! Cross-check against Istio's CRD schemas (`crd-all.gen.yaml`).
//!
//! For every property path under `spec` of each emulated Istio kind, a
//! document is generated that sets that field (inside a minimal valid parent)
//! and parsed:
//! - with strings set to `"x"`, no error may be an "unknown field" error;
//! - with strings set to `"1s"` (valid for both plain strings and durations),
//!   enums to their first value, integers to 1, booleans to true, objects to
//!   their minimal valid form, the document must parse (and so must every
//!   enum value);
//! - integers, numbers, booleans and enums must reject a wrong value;
//! - every object with declared properties must reject an extra field.

use serde_json::{json, Map, Value};

use meshd::config::api::parse_document;

const CRDS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/istio-samples/crds/crd-all.gen.yaml");

const KINDS: &[(&str, &str)] = &[
    ("networking.istio.io", "VirtualService"),
    ("networking.istio.io", "DestinationRule"),
    ("networking.istio.io", "Gateway"),
    ("networking.istio.io", "ServiceEntry"),
    ("networking.istio.io", "Sidecar"),
    ("networking.istio.io", "WorkloadEntry"),
    ("networking.istio.io", "EnvoyFilter"),
    ("security.istio.io", "PeerAuthentication"),
    ("security.istio.io", "AuthorizationPolicy"),
    ("security.istio.io", "RequestAuthentication"),
];

#[derive(Clone, Debug)]
enum Step {
    Field(String),
    Item,
    MapValue,
}

fn display(path: &[Step]) -> String {
    let mut s = String::from("spec");
    for step in path {
        match step {
            Step::Field(k) => {
                s.push('.');
                s.push_str(k);
            }
            Step::Item => s.push_str("[]"),
            Step::MapValue => s.push_str(".{key}"),
        }
    }
    s
}

fn load_crds() -> Vec<Value> {
    let text = std::fs::read_to_string(CRDS).expect("read crd-all.gen.yaml");
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| <Value as serde::Deserialize>::deserialize(doc).expect("CRD YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

fn is_preserve(schema: &Value) -> bool {
    schema["x-kubernetes-preserve-unknown-fields"] == json!(true)
}

/// Every node below (and including) `schema`, with its path.
fn walk(schema: &Value, path: Vec<Step>, out: &mut Vec<(Vec<Step>, Value)>) {
    out.push((path.clone(), schema.clone()));
    if let Some(props) = schema["properties"].as_object() {
        for (k, v) in props {
            let mut p = path.clone();
            p.push(Step::Field(k.clone()));
            walk(v, p, out);
        }
    }
    if schema["items"].is_object() {
        let mut p = path.clone();
        p.push(Step::Item);
        walk(&schema["items"], p, out);
    }
    if schema["additionalProperties"].is_object() {
        let mut p = path;
        p.push(Step::MapValue);
        walk(&schema["additionalProperties"], p, out);
    }
}

/// A value of the schema's type; strings get `string`.
fn sample(schema: &Value, string: &str) -> Value {
    if let Some(first) = schema["enum"].as_array().and_then(|e| e.first()) {
        return first.clone();
    }
    match schema["type"].as_str() {
        Some("string") => json!(string),
        Some("integer") | Some("number") => json!(1),
        Some("boolean") => json!(true),
        Some("array") => json!([]),
        _ => minimal(schema),
    }
}

/// The smallest valid value: an object carries its required fields.
fn minimal(schema: &Value) -> Value {
    match schema["type"].as_str() {
        Some("object") | None => {
            let mut obj = Map::new();
            for req in schema["required"].as_array().into_iter().flatten() {
                let k = req.as_str().unwrap();
                obj.insert(k.to_string(), sample(&schema["properties"][k], "1s"));
            }
            Value::Object(obj)
        }
        _ => sample(schema, "1s"),
    }
}

/// A value for `schema` that has `leaf` at `path`, in minimal valid parents.
fn build(schema: &Value, path: &[Step], leaf: Value) -> Value {
    let Some((first, rest)) = path.split_first() else {
        return leaf;
    };
    match first {
        Step::Field(k) => {
            let mut obj = match minimal(schema) {
                Value::Object(o) => o,
                _ => Map::new(),
            };
            obj.insert(k.clone(), build(&schema["properties"][k], rest, leaf));
            Value::Object(obj)
        }
        Step::Item => json!([build(&schema["items"], rest, leaf)]),
        Step::MapValue => json!({ "key": build(&schema["additionalProperties"], rest, leaf) }),
    }
}

fn document(api_version: &str, kind: &str, spec: Value) -> String {
    serde_yaml::to_string(&json!({
        "apiVersion": api_version,
        "kind": kind,
        "metadata": { "name": "crd-check", "namespace": "default" },
        "spec": spec,
    }))
    .unwrap()
}

#[test]
fn every_crd_field_is_accepted_and_unknown_fields_rejected() {
    if !std::path::Path::new(CRDS).is_file() {
        panic!("{CRDS} is missing: the tests need shared/ beside the checkout");
    }
    let crds = load_crds();
    let mut failures = Vec::new();
    let mut checked = 0usize;
    for (group, kind) in KINDS {
        let crd = crds
            .iter()
            .find(|c| c["spec"]["group"] == json!(group) && c["spec"]["names"]["kind"] == json!(kind))
            .unwrap_or_else(|| panic!("{kind} not in CRDs"));
        for version in crd["spec"]["versions"].as_array().unwrap() {
            let api_version = format!("{group}/{}", version["name"].as_str().unwrap());
            let spec_schema = &version["schema"]["openAPIV3Schema"]["properties"]["spec"];
            assert!(spec_schema.is_object(), "{kind}: no spec schema");
            let mut nodes = Vec::new();
            walk(spec_schema, Vec::new(), &mut nodes);
            for (path, schema) in &nodes {
                checked += 1;
                let where_ = format!("{api_version} {kind} {}", display(path));

                // 1. Any value of the right JSON type: never "unknown field".
                let doc = document(&api_version, kind, build(spec_schema, path, sample(schema, "x")));
                if let Err(e) = parse_document(&doc) {
                    if e.message.contains("unknown field") {
                        failures.push(format!("{where_}: rejected as unknown: {e}"));
                    }
                }

                // 2. A valid value parses.
                let doc = document(&api_version, kind, build(spec_schema, path, sample(schema, "1s")));
                if let Err(e) = parse_document(&doc) {
                    failures.push(format!("{where_}: valid value rejected: {e}\n{doc}"));
                }

                // 2b. Every enum value parses.
                for value in schema["enum"].as_array().into_iter().flatten().skip(1) {
                    let doc = document(&api_version, kind, build(spec_schema, path, value.clone()));
                    if let Err(e) = parse_document(&doc) {
                        failures.push(format!("{where_}: enum value {value} rejected: {e}"));
                    }
                }

                // 3. Integers, numbers, booleans and enums reject a wrong value.
                let scalar = matches!(schema["type"].as_str(), Some("integer") | Some("number") | Some("boolean"))
                    || schema["enum"].is_array();
                if scalar {
                    let doc = document(&api_version, kind, build(spec_schema, path, json!("notAValue")));
                    if parse_document(&doc).is_ok() {
                        failures.push(format!("{where_}: wrong-typed value accepted"));
                    }
                }

                // 4. Objects with declared fields reject an extra one.
                let is_struct = schema["properties"].is_object() && !is_preserve(schema);
                if is_struct {
                    let mut obj = minimal(schema);
                    obj.as_object_mut().unwrap().insert("notAnIstioField".into(), json!("1s"));
                    let doc = document(&api_version, kind, build(spec_schema, path, obj));
                    match parse_document(&doc) {
                        Err(e) if e.message.contains("unknown field `notAnIstioField`") => {}
                        other => failures.push(format!("{where_}: extra field not rejected: {other:?}")),
                    }
                }
            }
        }
    }
    eprintln!("checked {checked} schema nodes");
    assert!(checked > 1000, "only {checked} nodes checked");
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}
