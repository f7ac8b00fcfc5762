//! Validation of Istio documents against the `openAPIV3Schema` of Istio's own
//! CRD file (`crds/crd-all.gen.yaml`, embedded), as the API server would do.
//!
//! The validator covers what these schemas use: `type`, `properties`,
//! `additionalProperties`, `required`, `items`, `enum`, `pattern`,
//! `maxItems`/`minItems`, `maxLength`/`minLength`, `maxProperties`/`minProperties`,
//! `minimum`/`maximum`, `oneOf`/`anyOf`/`allOf`/`not` (mostly alternatives of
//! `required`), `nullable`, `x-kubernetes-preserve-unknown-fields` and
//! `x-kubernetes-int-or-string`. `format` is not checked (date-time, int32...).
//! `x-kubernetes-validations` (CEL rules) are skipped: meshd's parser checks the
//! important ones (durations, ...) itself.
//!
//! Unlike the API server, which prunes unknown fields, an unknown field is an
//! error, as `istioctl` reports it. The Gateway API kinds have no schema in
//! Istio's file and are left to meshd's parser.

use std::collections::HashMap;
use std::fmt;
use std::sync::OnceLock;

use serde_json::{Map, Value};

use super::lines::FieldPath;

/// Istio's CRDs, as shipped with Istio.
const CRD_ALL: &str = include_str!("../../crds/crd-all.gen.yaml");

/// API groups whose kinds are validated here.
pub const SCHEMA_GROUPS: &[&str] =
    &["networking.istio.io", "security.istio.io", "telemetry.istio.io", "extensions.istio.io"];

/// The embedded CRD file could not be read (a build problem, never the user's).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CrdError {
    /// A document is not valid YAML.
    #[error("crd-all.gen.yaml: {0}")]
    Yaml(String),
    /// A CRD lacks a field the index needs.
    #[error("crd-all.gen.yaml: CRD #{index} has no {field}")]
    Shape {
        /// Position of the CRD in the file.
        index: usize,
        /// What is missing.
        field: &'static str,
    },
}

/// The schemas by (group, version, kind).
#[derive(Debug)]
pub struct Crds {
    schemas: HashMap<(String, String, String), Value>,
}

impl Crds {
    /// Reads a CRD file (any number of `CustomResourceDefinition` documents).
    pub fn parse(text: &str) -> Result<Crds, CrdError> {
        let mut schemas = HashMap::new();
        for (index, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let crd = <Value as serde::Deserialize>::deserialize(doc).map_err(|e| CrdError::Yaml(e.to_string()))?;
            if crd.is_null() {
                continue;
            }
            let spec = crd.get("spec").ok_or(CrdError::Shape { index, field: "spec" })?;
            let group = spec.get("group").and_then(Value::as_str).ok_or(CrdError::Shape { index, field: "group" })?;
            let kind = spec
                .pointer("/names/kind")
                .and_then(Value::as_str)
                .ok_or(CrdError::Shape { index, field: "names.kind" })?;
            let versions =
                spec.get("versions").and_then(Value::as_array).ok_or(CrdError::Shape { index, field: "versions" })?;
            for v in versions {
                let name = v.get("name").and_then(Value::as_str).ok_or(CrdError::Shape { index, field: "name" })?;
                let schema =
                    v.pointer("/schema/openAPIV3Schema").ok_or(CrdError::Shape { index, field: "openAPIV3Schema" })?;
                schemas.insert((group.to_string(), name.to_string(), kind.to_string()), schema.clone());
            }
        }
        Ok(Crds { schemas })
    }

    /// The schema of a kind at a version.
    pub fn schema(&self, group: &str, version: &str, kind: &str) -> Option<&Value> {
        self.schemas.get(&(group.to_string(), version.to_string(), kind.to_string()))
    }

    /// Every (group, version, kind) with a schema, sorted.
    pub fn kinds(&self) -> Vec<(String, String, String)> {
        let mut v: Vec<_> = self.schemas.keys().cloned().collect();
        v.sort();
        v
    }
}

/// Istio's CRDs, parsed once.
pub fn crds() -> Result<&'static Crds, CrdError> {
    static CRDS: OnceLock<Result<Crds, CrdError>> = OnceLock::new();
    CRDS.get_or_init(|| Crds::parse(CRD_ALL)).as_ref().map_err(Clone::clone)
}

/// A field the schema rejects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaError {
    /// The field (for an unknown field, the field itself).
    pub path: FieldPath,
    /// What is wrong.
    pub detail: String,
}

impl fmt::Display for SchemaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.0.is_empty() {
            f.write_str(&self.detail)
        } else {
            write!(f, "{}: {}", self.path, self.detail)
        }
    }
}

/// Validates a whole object (`apiVersion`, `kind`, `metadata`, `spec`...). `Ok(None)` when its
/// group is not one validated here; `Ok(Some(errors))` otherwise.
pub fn validate(api_version: &str, kind: &str, object: &Value) -> Result<Option<Vec<SchemaError>>, CrdError> {
    let Some((group, version)) = api_version.split_once('/') else { return Ok(None) };
    if !SCHEMA_GROUPS.contains(&group) {
        return Ok(None);
    }
    let Some(schema) = crds()?.schema(group, version, kind) else {
        return Ok(Some(vec![SchemaError {
            path: FieldPath::parse("kind"),
            detail: format!("no matches for kind \"{kind}\" in version \"{api_version}\""),
        }]));
    };
    // The API server handles these itself; the schema describes the rest.
    let mut rest = object.as_object().cloned().unwrap_or_default();
    for k in ["apiVersion", "kind", "metadata"] {
        rest.remove(k);
    }
    let mut errors = Vec::new();
    check(schema, &Value::Object(rest), &FieldPath::default(), &mut errors);
    Ok(Some(errors))
}

/// Converts YAML to the JSON the API server sees: keys become strings, tags are dropped.
pub fn yaml_to_json(v: &serde_yaml::Value) -> Value {
    use serde_yaml::Value as Y;
    match v {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(*b),
        Y::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                n.as_f64().and_then(serde_json::Number::from_f64).map(Value::Number).unwrap_or(Value::Null)
            }
        }
        Y::String(s) => Value::String(s.clone()),
        Y::Sequence(items) => Value::Array(items.iter().map(yaml_to_json).collect()),
        Y::Mapping(m) => {
            let mut out = Map::new();
            for (k, v) in m {
                let key = match k {
                    Y::String(s) => s.clone(),
                    Y::Number(n) => n.to_string(),
                    Y::Bool(b) => b.to_string(),
                    Y::Null => "null".to_string(),
                    other => serde_yaml::to_string(other).unwrap_or_default().trim().to_string(),
                };
                out.insert(key, yaml_to_json(v));
            }
            Value::Object(out)
        }
        Y::Tagged(t) => yaml_to_json(&t.value),
    }
}

/// The JSON type name of a value, as schemas spell it.
fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Whether `v` has the schema type `t`.
fn has_type(v: &Value, t: &str) -> bool {
    match t {
        "number" => v.is_number(),
        other => type_name(v) == other,
    }
}

fn flag(schema: &Value, key: &str) -> bool {
    schema.get(key).and_then(Value::as_bool).unwrap_or(false)
}

fn num(schema: &Value, key: &str) -> Option<f64> {
    schema.get(key).and_then(Value::as_f64)
}

fn count(schema: &Value, key: &str) -> Option<usize> {
    schema.get(key).and_then(Value::as_u64).map(|n| n as usize)
}

/// Whether `v` satisfies `schema`, without reporting.
fn matches(schema: &Value, v: &Value, path: &FieldPath) -> bool {
    let mut errors = Vec::new();
    check(schema, v, path, &mut errors);
    errors.is_empty()
}

/// Validates `v` against `schema`, appending every violation.
fn check(schema: &Value, v: &Value, path: &FieldPath, errors: &mut Vec<SchemaError>) {
    let mut err = |p: &FieldPath, detail: String| errors.push(SchemaError { path: p.clone(), detail });
    // The API server drops a null unless the field is nullable; either way there is nothing to check.
    if v.is_null() {
        return;
    }
    let int_or_string = flag(schema, "x-kubernetes-int-or-string");
    if int_or_string {
        if !(v.is_string() || type_name(v) == "integer") {
            err(path, format!("must be an integer or a string, got {}", type_name(v)));
            return;
        }
    } else if let Some(t) = schema.get("type").and_then(Value::as_str) {
        if !has_type(v, t) {
            err(path, format!("must be of type {t}, got {}", type_name(v)));
            return;
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
        if !allowed.contains(v) {
            let list: Vec<String> = allowed.iter().map(Value::to_string).collect();
            err(path, format!("Unsupported value: {v}: supported values: {}", list.join(", ")));
        }
    }
    match v {
        Value::String(s) => {
            let len = s.chars().count();
            if let Some(max) = count(schema, "maxLength").filter(|m| len > *m) {
                err(path, format!("may not be longer than {max}"));
            }
            if let Some(min) = count(schema, "minLength").filter(|m| len < *m) {
                err(path, format!("should be at least {min} chars long"));
            }
            if let Some(p) = schema.get("pattern").and_then(Value::as_str) {
                // A pattern the regex crate cannot compile is not the document's fault.
                if regex::Regex::new(p).is_ok_and(|re| !re.is_match(s)) {
                    err(path, format!("should match '{p}'"));
                }
            }
        }
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or_default();
            if let Some(min) = num(schema, "minimum").filter(|m| x < *m) {
                err(path, format!("should be greater than or equal to {min}"));
            }
            if let Some(max) = num(schema, "maximum").filter(|m| x > *m) {
                err(path, format!("should be less than or equal to {max}"));
            }
        }
        Value::Array(items) => {
            if let Some(max) = count(schema, "maxItems").filter(|m| items.len() > *m) {
                err(path, format!("must have at most {max} items"));
            }
            if let Some(min) = count(schema, "minItems").filter(|m| items.len() < *m) {
                err(path, format!("must have at least {min} items"));
            }
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    check(item_schema, item, &path.index(i), errors);
                }
            }
        }
        Value::Object(map) => check_object(schema, map, path, errors),
        Value::Bool(_) | Value::Null => {}
    }
    check_combinators(schema, v, path, errors);
}

fn check_object(schema: &Value, map: &Map<String, Value>, path: &FieldPath, errors: &mut Vec<SchemaError>) {
    let props = schema.get("properties").and_then(Value::as_object);
    let additional = schema.get("additionalProperties");
    let preserve = flag(schema, "x-kubernetes-preserve-unknown-fields");
    // Only a schema that describes an object decides which fields are unknown; the bare
    // `required` alternatives inside oneOf/anyOf do not.
    let typed_object = schema.get("type").and_then(Value::as_str) == Some("object");
    for (k, child) in map {
        let child_path = path.key(k);
        if let Some(s) = props.and_then(|p| p.get(k)) {
            check(s, child, &child_path, errors);
        } else if let Some(s) = additional.filter(|a| a.is_object()) {
            check(s, child, &child_path, errors);
        } else if additional.and_then(Value::as_bool) == Some(true) || preserve || !typed_object {
            // Accepted as is.
        } else {
            errors.push(SchemaError { path: child_path, detail: "unknown field".to_string() });
        }
    }
    if let Some(required) = schema.get("required").and_then(Value::as_array) {
        for name in required.iter().filter_map(Value::as_str) {
            if map.get(name).is_none_or(Value::is_null) {
                errors.push(SchemaError { path: path.key(name), detail: "Required value".to_string() });
            }
        }
    }
    if let Some(max) = count(schema, "maxProperties").filter(|m| map.len() > *m) {
        errors.push(SchemaError { path: path.clone(), detail: format!("must have at most {max} properties") });
    }
    if let Some(min) = count(schema, "minProperties").filter(|m| map.len() < *m) {
        errors.push(SchemaError { path: path.clone(), detail: format!("must have at least {min} properties") });
    }
}

/// The fields named by `required` in the branches of a combinator: Istio writes its
/// "only one of" rules as `oneOf: [not: {anyOf: [required: [a], ...]}, required: [a], ...]`.
fn required_names(branches: &[Value]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for b in branches {
        for n in b.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str) {
            if !names.iter().any(|x| x == n) {
                names.push(n.to_string());
            }
        }
    }
    names
}

fn check_combinators(schema: &Value, v: &Value, path: &FieldPath, errors: &mut Vec<SchemaError>) {
    // An int-or-string field spells its two types as anyOf; the flag was checked already.
    let int_or_string = flag(schema, "x-kubernetes-int-or-string");
    if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
        for s in all {
            check(s, v, path, errors);
        }
    }
    if let Some(any) = schema.get("anyOf").and_then(Value::as_array) {
        if !int_or_string && !any.iter().any(|s| matches(s, v, path)) {
            let names = required_names(any);
            let detail = if names.is_empty() {
                "must match at least one schema in anyOf".to_string()
            } else {
                format!("one of {} must be set", names.join(", "))
            };
            errors.push(SchemaError { path: path.clone(), detail });
        }
    }
    if let Some(one) = schema.get("oneOf").and_then(Value::as_array) {
        let n = one.iter().filter(|s| matches(s, v, path)).count();
        if n != 1 {
            let names = required_names(one);
            let detail = match (names.is_empty(), v.as_object()) {
                (false, Some(map)) => {
                    let set: Vec<&str> = names
                        .iter()
                        .map(String::as_str)
                        .filter(|k| map.get(*k).is_some_and(|x| !x.is_null()))
                        .collect();
                    format!("only one of {} may be set, found {}", names.join(", "), set.join(" and "))
                }
                _ => "must match exactly one schema in oneOf".to_string(),
            };
            errors.push(SchemaError { path: path.clone(), detail });
        }
    }
    if let Some(not) = schema.get("not") {
        if matches(not, v, path) {
            errors.push(SchemaError { path: path.clone(), detail: "must not match the schema in not".to_string() });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        let v = yaml_to_json(&serde_yaml::from_str(text).unwrap());
        let (av, kind) = (v["apiVersion"].as_str().unwrap(), v["kind"].as_str().unwrap());
        validate(av, kind, &v).unwrap().unwrap().iter().map(ToString::to_string).collect()
    }

    #[test]
    fn the_crd_file_parses() {
        let crds = crds().unwrap();
        let kinds = crds.kinds();
        assert!(kinds.len() >= 30, "{kinds:?}");
        for k in ["VirtualService", "DestinationRule", "Gateway", "ServiceEntry", "Sidecar", "EnvoyFilter"] {
            assert!(crds
                .schema("networking.istio.io", if k == "EnvoyFilter" { "v1alpha3" } else { "v1" }, k)
                .is_some());
        }
        assert!(crds.schema("security.istio.io", "v1", "AuthorizationPolicy").is_some());
        assert!(crds.schema("telemetry.istio.io", "v1", "Telemetry").is_some());
        assert!(crds.schema("extensions.istio.io", "v1alpha1", "WasmPlugin").is_some());
    }

    #[test]
    fn unknown_fields_types_enums_and_required() {
        let vs = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r}\nspec:\n  hosts: reviews\n  http:\n  - route:\n    - destination: {hots: reviews}\n      weight: x\n";
        assert_eq!(
            errors(vs),
            [
                "spec.hosts: must be of type array, got string",
                "spec.http[0].route[0].destination.hots: unknown field",
                "spec.http[0].route[0].destination.host: Required value",
                "spec.http[0].route[0].weight: must be of type integer, got string",
            ]
        );
        let dr = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: r}\nspec:\n  host: r\n  trafficPolicy:\n    tls: {mode: STRICT}\n    loadBalancer: {simple: ROUND_ROBIN, consistentHash: {useSourceIp: true}}\n";
        assert_eq!(
            errors(dr),
            [
                "spec.trafficPolicy.loadBalancer: only one of simple, consistentHash, backendUtilization may be set, found simple and consistentHash",
                "spec.trafficPolicy.tls.mode: Unsupported value: \"STRICT\": supported values: \"DISABLE\", \"SIMPLE\", \"MUTUAL\", \"ISTIO_MUTUAL\"",
            ]
        );
    }

    #[test]
    fn spec_is_required_and_unknown_kinds_are_reported() {
        assert_eq!(
            errors("apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: g}\n"),
            ["spec: Required value"]
        );
        assert_eq!(
            errors("apiVersion: networking.istio.io/v1\nkind: Route\nspec: {}\n"),
            ["kind: no matches for kind \"Route\" in version \"networking.istio.io/v1\""]
        );
        let v = yaml_to_json(&serde_yaml::from_str("kind: Service").unwrap());
        assert_eq!(validate("v1", "Service", &v).unwrap(), None);
    }

    #[test]
    fn int_or_string_and_preserved_fields() {
        let ef = "apiVersion: networking.istio.io/v1alpha3\nkind: EnvoyFilter\nmetadata: {name: e}\nspec:\n  configPatches:\n  - applyTo: HTTP_FILTER\n    patch:\n      operation: INSERT_BEFORE\n      value: {anything: {goes: 1}}\n";
        assert!(errors(ef).is_empty(), "{:?}", errors(ef));
    }
}
