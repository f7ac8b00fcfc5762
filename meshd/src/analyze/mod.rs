//! `meshd analyze`: finds mistakes in a folder of Istio YAML before it is run,
//! with `istioctl analyze`'s codes, levels and message texts, e.g.
//!
//! `Error [IST0101] (VirtualService reviews.default reviews.yaml:8) Referenced host not found: "reviewz"`
//!
//! The folder is analysed as `meshd up` runs it: its files plus the built-in
//! Bookinfo set when it declares no Deployment. Only the folder's own files
//! get messages. The checks follow Istio's analyzers (messages.yaml and
//! `pkg/config/analysis/analyzers`); see each module for what is covered.

mod docs;
mod gateways;
pub mod lines;
mod mtls;
mod refs;
mod routes;
pub mod schema;
#[cfg(test)]
mod tests;

use std::fmt;
use std::path::Path;

use serde::Serialize;

use self::docs::Doc;

/// How serious a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Level {
    /// The config is wrong: traffic will not flow as written (or `meshd up` refuses it).
    Error,
    /// Probably a mistake.
    Warning,
    /// Worth knowing.
    Info,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Error => "Error",
            Level::Warning => "Warning",
            Level::Info => "Info",
        })
    }
}

/// One finding, located to a resource, file and line.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Message {
    /// Level.
    pub level: Level,
    /// Istio's code, e.g. `IST0101`.
    pub code: &'static str,
    /// Kind of the resource, e.g. `VirtualService`; empty when it cannot be read.
    pub kind: String,
    /// `metadata.name`; empty when it cannot be read.
    pub name: String,
    /// `metadata.namespace` (`default` when absent).
    pub namespace: String,
    /// File, relative to the analysed folder.
    pub file: String,
    /// 1-based line of the offending field (else of the document start) in the file.
    pub line: usize,
    /// The message text, from Istio's template.
    pub text: String,
}

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} [{}] (", self.level, self.code)?;
        match (self.kind.is_empty(), self.name.is_empty()) {
            (true, _) => {}
            (false, true) => write!(f, "{} ", self.kind)?,
            (false, false) => write!(f, "{} {}.{} ", self.kind, self.name, self.namespace)?,
        }
        write!(f, "{}:{}) {}", self.file, self.line, self.text)
    }
}

/// Every message of one analysis.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Messages sorted by file, line and code, without duplicates.
    pub messages: Vec<Message>,
}

impl Report {
    /// Whether any message is an error.
    pub fn has_errors(&self) -> bool {
        self.messages.iter().any(|m| m.level == Level::Error)
    }

    fn new(mut messages: Vec<Message>) -> Report {
        messages.sort_by(|a, b| {
            (&a.file, a.line, a.code, &a.kind, &a.name, &a.text)
                .cmp(&(&b.file, b.line, b.code, &b.kind, &b.name, &b.text))
        });
        // istioctl prints a sorted, de-duplicated copy.
        messages.dedup();
        Report { messages }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for m in &self.messages {
            writeln!(f, "{m}")?;
        }
        Ok(())
    }
}

/// Analyses a folder as `meshd up` would run it (folder files + the built-in Bookinfo set when the
/// folder declares no Deployment, see `config::with_builtin`). Messages are only reported for the
/// folder's own files, never for built-in resources.
pub fn analyze_dir(dir: &Path) -> Report {
    let mut paths: Vec<std::path::PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && crate::config::load::is_config_file(p))
            .collect(),
        Err(e) => return Report::new(vec![internal_error(&dir.display().to_string(), &format!("cannot read: {e}"))]),
    };
    paths.sort();
    let mut files = Vec::new();
    let mut messages = Vec::new();
    for path in paths {
        let shown = path.strip_prefix(dir).unwrap_or(&path).display().to_string();
        match std::fs::read_to_string(&path) {
            Ok(text) => files.push((shown, text)),
            Err(e) => messages.push(internal_error(&shown, &format!("cannot read: {e}"))),
        }
    }
    let mut report = analyze_files(&files);
    messages.append(&mut report.messages);
    Report::new(messages)
}

/// The Gateway API routes in force that `meshd up` would refuse, as it turns them into Istio's
/// kinds: a value the CRD's validation refuses (a regular expression, a port, a duration), at
/// its line.
fn gateway_api(set: &[&Doc], out: &mut Vec<Message>) {
    use crate::config::{Located, Origin};
    let located: Vec<Located> = set
        .iter()
        .filter_map(|d| {
            let resource = d.resource.clone()?;
            Some(Located { resource, origin: Origin { file: d.file.clone(), line: d.start } })
        })
        .collect();
    for e in crate::config::translate_gateway_api::translate(&located).errors {
        if let Some(d) = set.iter().find(|d| d.file == e.file && d.start == e.line) {
            let text = format!("Schema validation error: {}: {}", e.field, e.message);
            d.report(out, Level::Error, "IST0106", &lines::FieldPath::parse(&e.field), text);
        }
    }
}

/// Same over in-memory files (name, text) — used by tests and by the daemon on reload. Files are taken in
/// the order given (`meshd up` reads them sorted by name): of two documents with the same kind and name,
/// the later one is in force.
pub fn analyze_files(files: &[(String, String)]) -> Report {
    let mut messages = Vec::new();
    let mut own: Vec<Doc> = Vec::new();
    for (file, text) in files {
        for (start, doc) in crate::config::load::split_documents(text) {
            if let Some(d) = docs::read(file, start, doc, &mut messages) {
                own.push(d);
            }
        }
    }
    let builtin = docs::builtin_for(&own);
    let set = docs::effective(&own, &builtin);
    gateway_api(&set.docs, &mut messages);
    refs::check(&set, &mut messages);
    routes::check(&set, &mut messages);
    gateways::check(&set, &mut messages);
    mtls::check(&set, &mut messages);
    Report::new(messages)
}

/// IST0001 for a problem of the tool itself (an unreadable file).
fn internal_error(file: &str, detail: &str) -> Message {
    Message {
        level: Level::Error,
        code: "IST0001",
        kind: String::new(),
        name: String::new(),
        namespace: String::new(),
        file: file.to_string(),
        line: 0,
        text: format!("Internal error: {detail}"),
    }
}
