//! Order-preserving JSON: parses upstream bodies and prints them the way Python, Node, Ruby or Go would.
//!
//! serde_json's `Value` sorts object keys (its `preserve_order` feature is off in this workspace), but
//! productpage re-serialises details/reviews JSON in upstream order, and each original runtime
//! uses its own separators and escaping; so the apps keep their own small value type.

use std::fmt::Write as _;

/// A JSON value whose objects keep their key order and whose numbers keep their source text.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Json {
    Null,
    Bool(bool),
    /// Kept as text so re-printing does not reformat it.
    Num(String),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

/// How a runtime prints JSON.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Style {
    /// Spaces per level; None prints on one line.
    pub indent: Option<usize>,
    pub item_sep: &'static str,
    pub key_sep: &'static str,
    /// Escape every non-ASCII character as `\uXXXX` (Python's `ensure_ascii`).
    pub ascii: bool,
    /// Go's encoder: escapes U+2028/U+2029 and re-prints numbers as float64.
    pub go: bool,
}

/// Node `JSON.stringify` and Ruby `to_json`.
pub(crate) const COMPACT: Style = Style { indent: None, item_sep: ",", key_sep: ":", ascii: false, go: false };

/// Python `json.dumps` defaults.
pub(crate) const PYTHON: Style = Style { indent: None, item_sep: ", ", key_sep: ": ", ascii: true, go: false };

/// Flask `jsonify` with pretty printing (the kennethreitz httpbin), keys sorted by the caller.
pub(crate) const FLASK_PRETTY: Style = Style { indent: Some(2), item_sep: ", ", key_sep: ": ", ascii: true, go: false };

/// Go `json.Encoder` with `SetIndent("", "  ")` and HTML escaping off (go-httpbin).
pub(crate) const GO_PRETTY: Style = Style { indent: Some(2), item_sep: ",", key_sep: ": ", ascii: false, go: true };

/// Nesting limit, so hostile bodies cannot exhaust the stack.
const MAX_DEPTH: usize = 256;

impl Json {
    /// Parses strict JSON (RFC 8259) text.
    pub(crate) fn parse(text: &str) -> Result<Json, String> {
        let mut p = Parser { s: text.as_bytes(), i: 0, depth: 0 };
        p.ws();
        let v = p.value()?;
        p.ws();
        if p.i != p.s.len() {
            return Err(format!("unexpected data after JSON value at offset {}", p.i));
        }
        Ok(v)
    }

    /// A string value.
    pub(crate) fn str(s: impl Into<String>) -> Json {
        Json::Str(s.into())
    }

    /// An integer value.
    pub(crate) fn int(n: i64) -> Json {
        Json::Num(n.to_string())
    }

    /// An object from ordered pairs.
    pub(crate) fn obj(pairs: Vec<(&str, Json)>) -> Json {
        Json::Obj(pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
    }

    /// Member lookup; the last duplicate wins, as in Python, Node and Go decoders.
    pub(crate) fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Obj(m) => m.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The text of a string value.
    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            Json::Str(s) => Some(s),
            _ => None,
        }
    }

    /// An integral number (fractions truncate, as Java's `JsonNumber.intValue` does).
    pub(crate) fn as_i64(&self) -> Option<i64> {
        match self {
            Json::Num(t) => {
                t.parse::<i64>().ok().or_else(|| t.parse::<f64>().ok().filter(|f| f.is_finite()).map(|f| f as i64))
            }
            _ => None,
        }
    }

    /// The items of an array.
    pub(crate) fn as_array(&self) -> Option<&[Json]> {
        match self {
            Json::Arr(a) => Some(a),
            _ => None,
        }
    }

    /// Python truthiness, as Jinja's `{% if %}` sees it.
    pub(crate) fn truthy(&self) -> bool {
        match self {
            Json::Null => false,
            Json::Bool(b) => *b,
            Json::Num(t) => t.parse::<f64>().map(|f| f != 0.0).unwrap_or(true),
            Json::Str(s) => !s.is_empty(),
            Json::Arr(a) => !a.is_empty(),
            Json::Obj(o) => !o.is_empty(),
        }
    }

    /// The value as Jinja would print it in a template.
    pub(crate) fn display(&self) -> String {
        match self {
            Json::Null => "None".to_string(),
            Json::Bool(true) => "True".to_string(),
            Json::Bool(false) => "False".to_string(),
            Json::Num(t) => t.clone(),
            Json::Str(s) => s.clone(),
            other => other.render(&PYTHON),
        }
    }

    /// Sorts object keys recursively and drops shadowed duplicates, as decoding into a map
    /// (Go `map[string]any`, Python `dict` with `sort_keys`) does.
    pub(crate) fn sorted(self) -> Json {
        match self {
            Json::Arr(a) => Json::Arr(a.into_iter().map(Json::sorted).collect()),
            Json::Obj(o) => {
                let mut map = std::collections::BTreeMap::new();
                for (k, v) in o {
                    map.insert(k, v.sorted());
                }
                Json::Obj(map.into_iter().collect())
            }
            other => other,
        }
    }

    /// Prints the value in the given style.
    pub(crate) fn render(&self, style: &Style) -> String {
        let mut out = String::new();
        self.write(&mut out, style, 0);
        out
    }

    fn write(&self, out: &mut String, st: &Style, level: usize) {
        match self {
            Json::Null => out.push_str("null"),
            Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Json::Num(t) if st.go => out.push_str(&go_number(t)),
            Json::Num(t) => out.push_str(t),
            Json::Str(s) => write_str(out, s, st),
            Json::Arr(a) if a.is_empty() => out.push_str("[]"),
            Json::Obj(o) if o.is_empty() => out.push_str("{}"),
            Json::Arr(a) => {
                out.push('[');
                for (i, v) in a.iter().enumerate() {
                    if i > 0 {
                        out.push_str(st.item_sep);
                    }
                    newline(out, st, level + 1);
                    v.write(out, st, level + 1);
                }
                newline(out, st, level);
                out.push(']');
            }
            Json::Obj(o) => {
                out.push('{');
                for (i, (k, v)) in o.iter().enumerate() {
                    if i > 0 {
                        out.push_str(st.item_sep);
                    }
                    newline(out, st, level + 1);
                    write_str(out, k, st);
                    out.push_str(st.key_sep);
                    v.write(out, st, level + 1);
                }
                newline(out, st, level);
                out.push('}');
            }
        }
    }
}

fn newline(out: &mut String, st: &Style, level: usize) {
    if let Some(n) = st.indent {
        out.push('\n');
        out.extend(std::iter::repeat_n(' ', n * level));
    }
}

fn write_str(out: &mut String, s: &str, st: &Style) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            '\u{2028}' | '\u{2029}' if st.go => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if st.ascii && (c as u32) > 0x7f => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    let _ = write!(out, "\\u{:04x}", unit);
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Re-prints a number as Go prints a float64: plain notation in [1e-6, 1e21), otherwise an
/// exponent with a sign and at least two digits.
fn go_number(text: &str) -> String {
    let Ok(f) = text.parse::<f64>() else {
        return text.to_string();
    };
    if !f.is_finite() {
        return text.to_string();
    }
    let abs = f.abs();
    if abs == 0.0 || (1e-6..1e21).contains(&abs) {
        return format!("{f}");
    }
    let e = format!("{f:e}");
    match e.split_once('e') {
        Some((mant, exp)) => {
            let (sign, digits) = match exp.strip_prefix('-') {
                Some(d) => ('-', d),
                None => ('+', exp),
            };
            format!("{mant}e{sign}{digits:0>2}")
        }
        None => e,
    }
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
    depth: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.s.get(self.i) {
            self.i += 1;
        }
    }

    fn err<T>(&self, what: &str) -> Result<T, String> {
        Err(format!("{what} at offset {}", self.i))
    }

    fn value(&mut self) -> Result<Json, String> {
        match self.s.get(self.i) {
            Some(b'{') => self.nested(Parser::object),
            Some(b'[') => self.nested(Parser::array),
            Some(b'"') => Ok(Json::Str(self.string()?)),
            Some(b't') => self.literal("true", Json::Bool(true)),
            Some(b'f') => self.literal("false", Json::Bool(false)),
            Some(b'n') => self.literal("null", Json::Null),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => self.err("invalid character"),
            None => self.err("unexpected end of JSON input"),
        }
    }

    fn nested(&mut self, f: fn(&mut Self) -> Result<Json, String>) -> Result<Json, String> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return self.err("nesting too deep");
        }
        let v = f(self);
        self.depth -= 1;
        v
    }

    fn literal(&mut self, word: &str, v: Json) -> Result<Json, String> {
        if self.s[self.i..].starts_with(word.as_bytes()) {
            self.i += word.len();
            Ok(v)
        } else {
            self.err("invalid literal")
        }
    }

    fn object(&mut self) -> Result<Json, String> {
        self.i += 1;
        let mut members = Vec::new();
        self.ws();
        if self.s.get(self.i) == Some(&b'}') {
            self.i += 1;
            return Ok(Json::Obj(members));
        }
        loop {
            self.ws();
            if self.s.get(self.i) != Some(&b'"') {
                return self.err("expected object key");
            }
            let k = self.string()?;
            self.ws();
            if self.s.get(self.i) != Some(&b':') {
                return self.err("expected ':'");
            }
            self.i += 1;
            self.ws();
            let v = self.value()?;
            members.push((k, v));
            self.ws();
            match self.s.get(self.i) {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Ok(Json::Obj(members));
                }
                _ => return self.err("expected ',' or '}'"),
            }
        }
    }

    fn array(&mut self) -> Result<Json, String> {
        self.i += 1;
        let mut items = Vec::new();
        self.ws();
        if self.s.get(self.i) == Some(&b']') {
            self.i += 1;
            return Ok(Json::Arr(items));
        }
        loop {
            self.ws();
            items.push(self.value()?);
            self.ws();
            match self.s.get(self.i) {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    return Ok(Json::Arr(items));
                }
                _ => return self.err("expected ',' or ']'"),
            }
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while let Some(b'0'..=b'9') = self.s.get(self.i) {
            self.i += 1;
        }
        self.i - start
    }

    fn number(&mut self) -> Result<Json, String> {
        let start = self.i;
        if self.s.get(self.i) == Some(&b'-') {
            self.i += 1;
        }
        match self.s.get(self.i) {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return self.err("invalid number"),
        }
        if self.s.get(self.i) == Some(&b'.') {
            self.i += 1;
            if self.digits() == 0 {
                return self.err("invalid number");
            }
        }
        if let Some(b'e' | b'E') = self.s.get(self.i) {
            self.i += 1;
            if let Some(b'+' | b'-') = self.s.get(self.i) {
                self.i += 1;
            }
            if self.digits() == 0 {
                return self.err("invalid number");
            }
        }
        let text = String::from_utf8_lossy(&self.s[start..self.i]).into_owned();
        Ok(Json::Num(text))
    }

    fn hex4(&mut self) -> Result<u32, String> {
        let Some(h) = self.s.get(self.i..self.i + 4) else {
            return self.err("invalid \\u escape");
        };
        let parsed = std::str::from_utf8(h).ok().and_then(|h| u32::from_str_radix(h, 16).ok());
        match parsed {
            Some(v) => {
                self.i += 4;
                Ok(v)
            }
            None => self.err("invalid \\u escape"),
        }
    }

    fn string(&mut self) -> Result<String, String> {
        self.i += 1;
        let mut out: Vec<u8> = Vec::new();
        loop {
            let Some(&b) = self.s.get(self.i) else {
                return self.err("unterminated string");
            };
            self.i += 1;
            match b {
                b'"' => break,
                b'\\' => {
                    let Some(&e) = self.s.get(self.i) else {
                        return self.err("unterminated string");
                    };
                    self.i += 1;
                    let c = match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => self.unicode_escape()?,
                        _ => return self.err("invalid escape"),
                    };
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
                0..=0x1f => return self.err("control character in string"),
                _ => out.push(b),
            }
        }
        // The input was a &str and escapes add whole characters, so this is valid UTF-8.
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    fn unicode_escape(&mut self) -> Result<char, String> {
        let hi = self.hex4()?;
        if (0xD800..0xDC00).contains(&hi) && self.s[self.i..].starts_with(b"\\u") {
            let save = self.i;
            self.i += 2;
            let lo = self.hex4()?;
            if (0xDC00..0xE000).contains(&lo) {
                let c = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
                return Ok(char::from_u32(c).unwrap_or('\u{fffd}'));
            }
            self.i = save;
        }
        Ok(char::from_u32(hi).unwrap_or('\u{fffd}'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_keep_order_and_text() {
        let src = r#"{"id":0,"b":[1,2.50,{"z":null,"a":true}],"s":"é\"\n"}"#;
        let v = Json::parse(src).unwrap();
        assert_eq!(v.render(&COMPACT), src);
        assert_eq!(v.render(&PYTHON), r#"{"id": 0, "b": [1, 2.50, {"z": null, "a": true}], "s": "\u00e9\"\n"}"#);
    }

    #[test]
    fn pretty_styles() {
        let v = Json::obj(vec![("b", Json::Arr(vec![Json::str("x")])), ("a", Json::Obj(vec![]))]);
        assert_eq!(v.render(&GO_PRETTY), "{\n  \"b\": [\n    \"x\"\n  ],\n  \"a\": {}\n}");
        assert_eq!(v.clone().sorted().render(&FLASK_PRETTY), "{\n  \"a\": {}, \n  \"b\": [\n    \"x\"\n  ]\n}");
    }

    #[test]
    fn go_numbers() {
        assert_eq!(go_number("1.50"), "1.5");
        assert_eq!(go_number("1e2"), "100");
        assert_eq!(go_number("1e21"), "1e+21");
        assert_eq!(go_number("0.0000001"), "1e-07");
    }

    #[test]
    fn rejects_bad_input() {
        for bad in ["", "{", "[1,]", "01", "\"a", "{\"a\" 1}", "tru", "1 2", "\"\u{1}\""] {
            assert!(Json::parse(bad).is_err(), "{bad:?} should fail");
        }
        let deep = "[".repeat(MAX_DEPTH + 1);
        assert!(Json::parse(&deep).is_err());
    }

    #[test]
    fn surrogates() {
        let v = Json::parse(r#""\ud83d\ude00\ud800""#).unwrap();
        assert_eq!(v.as_str(), Some("😀\u{fffd}"));
        assert_eq!(v.render(&PYTHON), r#""\ud83d\ude00\ufffd""#);
    }
}
