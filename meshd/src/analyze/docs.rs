//! Reads each YAML document once: schema validation (IST0106), meshd's own
//! parser, and the typed resource the cross-resource checks use.

use std::collections::HashMap;

use super::lines::{self, FieldPath};
use super::schema;
use super::{Level, Message};
use crate::config::api::{self, ParseOutcome, Resource};
use crate::config::model::{DeploymentDef, ServiceDef};

/// One document of the analysed set.
#[derive(Debug)]
pub(crate) struct Doc {
    /// File as shown.
    pub file: String,
    /// 1-based line where the document starts in the file.
    pub start: usize,
    /// The document's text (empty for built-in resources).
    pub text: String,
    /// Kind, name and namespace as far as they can be read.
    pub kind: String,
    pub name: String,
    pub namespace: String,
    /// Whether the document is the folder's own (built-in ones get no messages).
    pub own: bool,
    /// The typed resource, when meshd's parser accepts the document.
    pub resource: Option<Resource>,
}

impl Doc {
    /// The line in the file of the field at `path` (or its nearest written ancestor).
    pub fn line(&self, path: &FieldPath) -> usize {
        if self.text.is_empty() {
            return self.start;
        }
        self.start + lines::field_line(&self.text, path) - 1
    }

    /// Adds a message about this document at the line of `path`; built-in documents never get one.
    pub fn report(&self, out: &mut Vec<Message>, level: Level, code: &'static str, path: &FieldPath, text: String) {
        self.report_at(out, level, code, self.line(path), text);
    }

    /// Adds a message about this document at a given line of its file.
    pub fn report_at(&self, out: &mut Vec<Message>, level: Level, code: &'static str, line: usize, text: String) {
        if !self.own {
            return;
        }
        out.push(Message {
            level,
            code,
            kind: self.kind.clone(),
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            file: self.file.clone(),
            line,
            text,
        });
    }

    /// `namespace/name`, as Istio prints a resource's full name.
    pub fn full_name(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// IST0106 text.
fn schema_error(detail: impl std::fmt::Display) -> String {
    format!("Schema validation error: {detail}")
}

/// Reads one document of a folder file; `None` for an empty one. Reports IST0106 for a document
/// the CRD schema or meshd's parser rejects.
pub(crate) fn read(file: &str, start: usize, text: &str, out: &mut Vec<Message>) -> Option<Doc> {
    if is_blank(text) {
        return None;
    }
    let (kind, name, namespace) = sniff(text);
    let mut doc =
        Doc { file: file.to_string(), start, text: text.to_string(), kind, name, namespace, own: true, resource: None };
    let value = match serde_yaml::from_str::<serde_yaml::Value>(text) {
        Ok(v) => schema::yaml_to_json(&v),
        Err(e) => {
            let line = e.location().map(|l| start + l.line() - 1).unwrap_or(start);
            doc.report_at(out, Level::Error, "IST0106", line, schema_error(without_location(&e.to_string())));
            return Some(doc);
        }
    };
    if value.is_null() {
        return None;
    }
    let field = |k: &str| value.get(k).and_then(|v| v.as_str()).unwrap_or_default().to_string();
    let (api_version, kind) = (field("apiVersion"), field("kind"));
    let mut schema_rejects = false;
    match schema::validate(&api_version, &kind, &value) {
        Ok(Some(errors)) => {
            for e in errors {
                schema_rejects = true;
                doc.report(out, Level::Error, "IST0106", &e.path, schema_error(&e));
            }
        }
        Ok(None) => {}
        Err(e) => doc.report(out, Level::Error, "IST0001", &FieldPath::default(), format!("Internal error: {e}")),
    }
    match api::parse_document(text) {
        Ok(ParseOutcome::Known(resource)) => {
            let m = resource.metadata();
            doc.kind = resource.kind().to_string();
            doc.name = m.name.clone().unwrap_or_default();
            doc.namespace = m.ns().to_string();
            convert_workload(&doc, &resource, out);
            doc.resource = Some(resource);
        }
        Ok(_) => {}
        // Anything meshd up would refuse must be an error here too.
        Err(e) if !schema_rejects => {
            let path = FieldPath::parse(if e.path == "." { "" } else { &e.path });
            let detail = if e.path == "." { e.message.clone() } else { e.to_string() };
            let line = e.line.map(|l| start + l - 1).unwrap_or_else(|| doc.line(&path));
            doc.report_at(out, Level::Error, "IST0106", line, schema_error(detail));
        }
        Err(_) => {}
    }
    Some(doc)
}

/// A YAML error without its ` at line L column C` (the message carries the line already).
fn without_location(message: &str) -> String {
    static LOCATION: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let re = LOCATION.get_or_init(|| regex::Regex::new(r" at line \d+ column \d+").expect("valid pattern"));
    re.replace_all(message, "").into_owned()
}

/// Services and Deployments go through meshd's conversion too (port ranges).
fn convert_workload(doc: &Doc, resource: &Resource, out: &mut Vec<Message>) {
    let origin = crate::config::Origin { file: doc.file.clone(), line: doc.start };
    let err = match resource {
        Resource::Service(s) => ServiceDef::from_resource(s, &origin).err(),
        Resource::Deployment(d) => DeploymentDef::from_resource(d, &origin).err(),
        _ => None,
    };
    if let Some(e) = err {
        let path = FieldPath::parse(&e.field);
        doc.report(out, Level::Error, "IST0106", &path, schema_error(format!("{}: {}", e.field, e.message)));
    }
}

/// True when the text holds only comments, whitespace and document markers.
fn is_blank(text: &str) -> bool {
    text.lines().all(|line| {
        let t = line.trim();
        t.is_empty() || t.starts_with('#') || t == "---" || t == "..."
    })
}

/// Kind, name and namespace read line by line, so a document that is not valid YAML
/// still names what it is.
fn sniff(text: &str) -> (String, String, String) {
    let (mut kind, mut name, mut namespace) = (String::new(), String::new(), String::new());
    let mut in_metadata = false;
    let unquote = |s: &str| s.split(" #").next().unwrap_or("").trim().trim_matches(['"', '\'']).to_string();
    for line in text.lines() {
        if !line.starts_with(' ') && !line.trim().is_empty() && !line.starts_with('#') {
            in_metadata = line.trim_end() == "metadata:";
        }
        if let Some(v) = line.strip_prefix("kind:") {
            kind = unquote(v);
        } else if in_metadata {
            let t = line.trim_start();
            let indent = line.len() - t.len();
            if indent > 0 && indent <= 2 {
                if let Some(v) = t.strip_prefix("name:") {
                    name = unquote(v);
                } else if let Some(v) = t.strip_prefix("namespace:") {
                    namespace = unquote(v);
                }
            }
        }
    }
    if namespace.is_empty() {
        namespace = "default".to_string();
    }
    (kind, name, namespace)
}

/// The built-in documents `meshd up` adds to a folder that declares no Deployment.
pub(crate) fn builtin_for(own: &[Doc]) -> Vec<Doc> {
    crate::config::builtin_for(own.iter().filter_map(|d| d.resource.as_ref()))
        .into_iter()
        .map(|l| {
            let m = l.resource.metadata();
            Doc {
                file: l.origin.file.clone(),
                start: l.origin.line,
                text: String::new(),
                kind: l.resource.kind().to_string(),
                name: m.name.clone().unwrap_or_default(),
                namespace: m.ns().to_string(),
                own: false,
                resource: Some(l.resource),
            }
        })
        .collect()
}

/// The resources in force: the folder's (the last of several with the same kind and name, as
/// `kubectl apply` in file order), then built-in ones the folder does not override.
pub(crate) fn effective<'a>(own: &'a [Doc], builtin: &'a [Doc]) -> Set<'a> {
    let key = |d: &Doc| d.resource.as_ref().map(crate::config::resource_key);
    let mut last: HashMap<String, usize> = HashMap::new();
    for (i, d) in own.iter().enumerate() {
        if let Some(k) = key(d) {
            last.insert(k, i);
        }
    }
    let mut docs: Vec<&Doc> =
        own.iter().enumerate().filter(|(i, d)| key(d).is_some_and(|k| last[&k] == *i)).map(|(_, d)| d).collect();
    docs.extend(builtin.iter().filter(|d| key(d).is_some_and(|k| !last.contains_key(&k))));
    Set { docs }
}

/// The analysed resources, with typed accessors per kind.
pub(crate) struct Set<'a> {
    pub docs: Vec<&'a Doc>,
}

macro_rules! accessor {
    ($name:ident, $variant:ident, $spec:ty) => {
        /// Every resource of this kind, with its document.
        pub fn $name(&self) -> impl Iterator<Item = (&'a Doc, &'a api::Object<$spec>)> + '_ {
            self.docs.iter().filter_map(|d| match &d.resource {
                Some(Resource::$variant(o)) => Some((*d, o)),
                _ => None,
            })
        }
    };
}

impl<'a> Set<'a> {
    accessor!(virtual_services, VirtualService, api::VirtualServiceSpec);
    accessor!(destination_rules, DestinationRule, api::DestinationRuleSpec);
    accessor!(gateways, Gateway, api::GatewaySpec);
    accessor!(service_entries, ServiceEntry, api::ServiceEntrySpec);
    accessor!(services, Service, api::ServiceSpec);
    accessor!(deployments, Deployment, api::DeploymentSpec);
    accessor!(peer_authentications, PeerAuthentication, api::PeerAuthenticationSpec);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_what_a_broken_document_is() {
        let text =
            "apiVersion: v1\nkind: VirtualService\nmetadata:\n  name: \"reviews\" # c\n  namespace: shop\nspec: [\n";
        assert_eq!(sniff(text), ("VirtualService".into(), "reviews".into(), "shop".into()));
        assert_eq!(sniff("kind: Gateway\nspec:\n  name: x\n"), ("Gateway".into(), String::new(), "default".into()));
    }
}
