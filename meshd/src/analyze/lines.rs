//! Finds the line of a field in a YAML document's text, so a message can
//! point at `host: reviewz` rather than at the start of the document.
//!
//! This reads block-style YAML by indentation (mappings, sequences, `- key:`
//! items, quoted keys, comments), which is how Kubernetes manifests are
//! written. Flow collections (`[a, b]`, `{a: 1}`) are not entered: the line of
//! the key that holds them is returned instead.

use std::fmt;

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    /// A mapping key.
    Key(String),
    /// A sequence index.
    Index(usize),
}

/// A field path such as `spec.http[0].route[0].destination.host`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldPath(pub Vec<Seg>);

impl FieldPath {
    /// Parses the dotted form (`a.b[0].c`). Keys cannot contain `.` or `[` in this form;
    /// build the path with [`FieldPath::key`] for such keys.
    pub fn parse(s: &str) -> FieldPath {
        let mut segs = Vec::new();
        for part in s.split('.').filter(|p| !p.is_empty()) {
            let (key, mut rest) = match part.find('[') {
                Some(i) => (&part[..i], &part[i..]),
                None => (part, ""),
            };
            if !key.is_empty() {
                segs.push(Seg::Key(key.to_string()));
            }
            while let Some(end) = rest.find(']') {
                if let Ok(n) = rest[1..end].parse() {
                    segs.push(Seg::Index(n));
                }
                rest = &rest[end + 1..];
            }
        }
        FieldPath(segs)
    }

    /// This path extended by a key.
    pub fn key(&self, k: &str) -> FieldPath {
        let mut p = self.clone();
        p.0.push(Seg::Key(k.to_string()));
        p
    }

    /// This path extended by an index.
    pub fn index(&self, i: usize) -> FieldPath {
        let mut p = self.clone();
        p.0.push(Seg::Index(i));
        p
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.0.iter().enumerate() {
            match s {
                Seg::Key(k) if i == 0 => f.write_str(k)?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// A content line: number, indentation, text after the indentation.
#[derive(Debug, Clone, Copy)]
struct Line<'a> {
    no: usize,
    indent: usize,
    text: &'a str,
}

/// The 1-based line (within `doc`) of the field at `path`; when the field is not
/// written, the line of its nearest written ancestor; 1 when nothing is found.
pub fn field_line(doc: &str, path: &FieldPath) -> usize {
    let mut node: Vec<Line<'_>> = doc
        .lines()
        .enumerate()
        .filter_map(|(i, raw)| {
            let text = raw.trim_start_matches(' ');
            let t = text.trim_end();
            if t.is_empty() || t.starts_with('#') || t == "---" || t == "..." {
                return None;
            }
            Some(Line { no: i + 1, indent: raw.len() - text.len(), text: t })
        })
        .collect();
    let mut best = 1;
    for seg in &path.0 {
        if node.is_empty() {
            break;
        }
        let found = match seg {
            Seg::Key(k) => child_of_key(&node, k),
            Seg::Index(n) => item(&node, *n),
        };
        match found {
            Some((no, child)) => {
                best = no;
                node = child;
            }
            None => break,
        }
    }
    best
}

/// Splits `key: rest` into the unquoted key and what follows the colon.
fn split_key(text: &str) -> Option<(String, &str)> {
    let (key, after) = if let Some(q) = text.strip_prefix('"') {
        let end = q.find('"')?;
        (q[..end].to_string(), q[end + 1..].trim_start())
    } else if let Some(q) = text.strip_prefix('\'') {
        let end = q.find('\'')?;
        (q[..end].to_string(), q[end + 1..].trim_start())
    } else {
        let colon = text.find(": ").or_else(|| text.strip_suffix(':').map(|s| s.len()))?;
        (text[..colon].trim_end().to_string(), &text[colon..])
    };
    let rest = after.strip_prefix(':')?;
    Some((key, rest.trim()))
}

/// Whether a value written after `key:` leaves the value to the following lines.
fn value_follows(rest: &str) -> bool {
    rest.is_empty() || rest.starts_with('#') || (rest.starts_with('&') && !rest.contains(' '))
}

/// The lines after `node[at]` that belong to the value of a key at `indent`: deeper
/// lines, or a sequence written at the key's own indentation (`hosts:\n- a`).
fn value_lines<'a>(node: &[Line<'a>], at: usize, indent: usize) -> Vec<Line<'a>> {
    let rest = &node[at + 1..];
    let same_level_seq = rest.first().is_some_and(|l| l.indent == indent && is_item(l.text));
    rest.iter()
        .take_while(|l| l.indent > indent || (same_level_seq && l.indent == indent && is_item(l.text)))
        .copied()
        .collect()
}

fn is_item(text: &str) -> bool {
    text == "-" || text.starts_with("- ")
}

/// The line of `key` in the mapping `node` and the lines of its value.
fn child_of_key<'a>(node: &[Line<'a>], key: &str) -> Option<(usize, Vec<Line<'a>>)> {
    let indent = node[0].indent;
    for (i, l) in node.iter().enumerate() {
        if l.indent != indent {
            continue;
        }
        let Some((k, rest)) = split_key(l.text) else { continue };
        if k == key {
            let child = if value_follows(rest) { value_lines(node, i, indent) } else { Vec::new() };
            return Some((l.no, child));
        }
    }
    None
}

/// The line of item `n` of the sequence `node` and the lines of its value. The text
/// after `- ` becomes a line of its own, indented past the dash.
fn item<'a>(node: &[Line<'a>], n: usize) -> Option<(usize, Vec<Line<'a>>)> {
    let indent = node[0].indent;
    let starts: Vec<usize> =
        node.iter().enumerate().filter(|(_, l)| l.indent == indent && is_item(l.text)).map(|(i, _)| i).collect();
    let start = *starts.get(n)?;
    let end = starts.get(n + 1).copied().unwrap_or(node.len());
    let first = node[start];
    let mut child = Vec::new();
    if first.text.len() > 1 {
        let after = &first.text[1..];
        let text = after.trim_start_matches(' ');
        let inner = Line { no: first.no, indent: indent + 1 + (after.len() - text.len()), text };
        if text.starts_with('[') || text.starts_with('{') {
            return Some((first.no, Vec::new()));
        }
        child.push(inner);
    }
    child.extend(node[start + 1..end].iter().copied());
    Some((first.no, child))
}

#[cfg(test)]
mod tests {
    use super::*;

    const VS: &str = "\
# a comment
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
  - reviews
  http:
  - match:
    - headers:
        \"end-user\":
          exact: jason
    route:
    - destination:
        host: reviews
        subset: v2
  - route:
      - destination:
          host: reviewz   # typo
        weight: 100
  tcp: [{route: []}]
";

    fn line(path: &str) -> usize {
        field_line(VS, &FieldPath::parse(path))
    }

    #[test]
    fn finds_fields() {
        assert_eq!(line("kind"), 3);
        assert_eq!(line("metadata.name"), 5);
        assert_eq!(line("spec.hosts[0]"), 8);
        assert_eq!(line("spec.http[0]"), 10);
        assert_eq!(line("spec.http[0].match[0].headers"), 11);
        assert_eq!(line("spec.http[0].route[0].destination.host"), 16);
        assert_eq!(line("spec.http[0].route[0].destination.subset"), 17);
        assert_eq!(line("spec.http[1].route[0].destination.host"), 20);
        assert_eq!(line("spec.http[1].route[0].weight"), 21);
    }

    #[test]
    fn quoted_keys() {
        let p = FieldPath::parse("spec.http[0].match[0].headers").key("end-user").key("exact");
        assert_eq!(field_line(VS, &p), 13);
    }

    #[test]
    fn falls_back_to_the_nearest_ancestor() {
        assert_eq!(line("spec.http[0].route[0].destination.port.number"), 15);
        assert_eq!(line("spec.http[5]"), 9);
        assert_eq!(line("spec.tcp[0].route"), 22, "flow collections are not entered");
        assert_eq!(line("status"), 1);
    }

    #[test]
    fn paths_round_trip() {
        let p = FieldPath::parse("spec.http[0].route[12].destination.host");
        assert_eq!(p.to_string(), "spec.http[0].route[12].destination.host");
        assert_eq!(p.0[2], Seg::Index(0));
        assert_eq!(FieldPath::parse("").to_string(), "");
    }

    #[test]
    fn block_scalars_and_nested_dashes() {
        let doc = "spec:\n  a: |\n    b: 1\n  c:\n    - - x\n      - y\n  d: 2\n";
        assert_eq!(field_line(doc, &FieldPath::parse("spec.c[0][1]")), 6);
        assert_eq!(field_line(doc, &FieldPath::parse("spec.a.b")), 2);
        assert_eq!(field_line(doc, &FieldPath::parse("spec.d")), 7);
    }
}
