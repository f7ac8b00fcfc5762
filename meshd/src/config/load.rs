//! Reads a folder of YAML into located resources: every `*.yaml`/`*.yml`,
//! multi-document, with errors that name the file, line and field.

use std::fmt;
use std::path::{Path, PathBuf};

use super::api::{self, ParseOutcome, Resource};

/// Where a resource was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// File path as shown to the user.
    pub file: String,
    /// 1-based line where the document starts.
    pub line: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// A parsed resource and where it came from.
#[derive(Debug, Clone)]
pub struct Located {
    /// The resource.
    pub resource: Resource,
    /// Its file and line.
    pub origin: Origin,
}

/// A problem in the configuration, located to the file, line and field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {field}{sep}{message}", sep = if field.is_empty() { "" } else { ": " })]
pub struct ConfigError {
    /// File path.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// Dotted field path (`spec.http[0].route[0].destination`), or empty.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// A document of a kind meshd does not emulate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotEmulated {
    /// `apiVersion` and `kind`, e.g. `networking.k8s.io/v1 Ingress`.
    pub kind: String,
    /// `metadata.name`.
    pub name: String,
    /// Where it is.
    pub origin: Origin,
}

/// Everything read from one folder.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    /// Known resources, in file order (files sorted by name).
    pub resources: Vec<Located>,
    /// Documents of kinds that are not emulated.
    pub not_emulated: Vec<NotEmulated>,
    /// Resources replaced by a later one of the same kind and name, as `kubectl apply` of the
    /// files in order would: `Kind ns/name (file:line) replaced by file:line`.
    pub replaced: Vec<String>,
}

impl Loaded {
    /// Keeps the last of resources that share kind, namespace and name.
    pub(crate) fn keep_last(&mut self) {
        let mut last: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
        for (i, r) in self.resources.iter().enumerate() {
            last.insert(super::resource_key(&r.resource), i);
        }
        let mut i = 0;
        let mut replaced = Vec::new();
        self.resources.retain(|r| {
            let key = super::resource_key(&r.resource);
            let keep = last[&key] == i;
            if !keep {
                replaced.push((key, r.origin.clone()));
            }
            i += 1;
            keep
        });
        for (key, origin) in replaced {
            let by =
                self.resources.iter().find(|r| super::resource_key(&r.resource) == key).map(|r| r.origin.to_string());
            self.replaced.push(format!("{key} ({origin}) replaced by {}", by.unwrap_or_default()));
        }
    }
}

/// Whether a path is a config file meshd reads.
pub fn is_config_file(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    !name.starts_with('.')
        && !name.ends_with('~')
        && matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
}

/// Reads every config file directly in `dir` (sorted by name), or fails with every error found.
pub fn load_dir(dir: &Path) -> Result<Loaded, Vec<ConfigError>> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file() && is_config_file(p)).collect(),
        Err(e) => {
            return Err(vec![ConfigError {
                file: dir.display().to_string(),
                line: 0,
                field: String::new(),
                message: format!("cannot read the folder: {e}"),
            }])
        }
    };
    files.sort();
    let mut loaded = Loaded::default();
    let mut errors = Vec::new();
    for path in files {
        let shown = path.display().to_string();
        match std::fs::read_to_string(&path) {
            Ok(text) => parse_text(&shown, &text, &mut loaded, &mut errors),
            Err(e) => errors.push(ConfigError {
                file: shown,
                line: 0,
                field: String::new(),
                message: format!("cannot read: {e}"),
            }),
        }
    }
    if errors.is_empty() {
        loaded.keep_last();
        Ok(loaded)
    } else {
        Err(errors)
    }
}

/// Parses one file's text (any number of documents) into `loaded`, collecting errors.
pub fn parse_text(file: &str, text: &str, loaded: &mut Loaded, errors: &mut Vec<ConfigError>) {
    for (start, doc) in split_documents(text) {
        let origin = Origin { file: file.to_string(), line: start };
        match api::parse_document(doc) {
            Ok(ParseOutcome::Known(resource)) => loaded.resources.push(Located { resource, origin }),
            Ok(ParseOutcome::NotEmulated { api_version, kind, name }) => {
                loaded.not_emulated.push(NotEmulated { kind: format!("{api_version} {kind}"), name, origin })
            }
            Ok(ParseOutcome::Empty) => {}
            Err(e) => errors.push(ConfigError {
                file: file.to_string(),
                line: start + e.line.unwrap_or(1).saturating_sub(1),
                field: e.path.clone(),
                message: e.message.clone(),
            }),
        }
    }
}

/// Splits a multi-document YAML text on `---` lines; yields (1-based start line, text).
pub fn split_documents(text: &str) -> Vec<(usize, &str)> {
    let mut docs = Vec::new();
    let mut start_byte = 0;
    let mut start_line = 1;
    let mut offset = 0;
    for (idx, line) in text.split_inclusive('\n').enumerate() {
        let trimmed = line.trim_end();
        let is_sep = trimmed == "---" || trimmed.starts_with("--- ") || trimmed.starts_with("---#");
        if is_sep {
            docs.push((start_line, &text[start_byte..offset]));
            start_byte = offset + line.len();
            start_line = idx + 2;
        }
        offset += line.len();
    }
    docs.push((start_line, &text[start_byte..]));
    docs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_with_line_numbers() {
        let text = "a: 1\n---\nb: 2\nc: 3\n--- \nd: 4";
        let docs = split_documents(text);
        assert_eq!(docs, vec![(1, "a: 1\n"), (3, "b: 2\nc: 3\n"), (6, "d: 4")]);
    }

    #[test]
    fn config_files() {
        assert!(is_config_file(Path::new("a/reviews.yaml")));
        assert!(is_config_file(Path::new("a/reviews.yml")));
        assert!(!is_config_file(Path::new("a/.reviews.yaml.swp")));
        assert!(!is_config_file(Path::new("a/README.md")));
    }
}
