//! A message's header fields, requests' and responses' alike. A head the proxy parsed is kept as
//! the bytes it came in, with the proxy's edits beside them: a header map would hash and copy
//! every field only for most of them to be written out again as they were. Everything else
//! (hyper's messages, local replies, a head a route edits, a request a policy reads as a map) is
//! a header map.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};

use super::h1::{write_line, Field};
use crate::snapshot::matcher::Headers;

/// A message's fields: a head as it came, or a header map.
#[derive(Debug)]
pub enum Fields {
    Head(Head),
    Map(HeaderMap),
}

impl Default for Fields {
    /// No fields, and nothing allocated.
    fn default() -> Fields {
        Fields::Head(Head::default())
    }
}

impl Fields {
    /// The first value of `name`.
    pub fn get(&self, name: &HeaderName) -> Option<&[u8]> {
        match self {
            Fields::Head(h) => {
                let spelled = name.as_str().as_bytes();
                h.find(|n| n == spelled)
            }
            Fields::Map(m) => m.get(name).map(HeaderValue::as_bytes),
        }
    }

    /// Every value of `name`, in order.
    pub fn each_value<'s>(&'s self, name: &HeaderName, mut f: impl FnMut(&'s [u8])) {
        match self {
            Fields::Head(h) => {
                let spelled = name.as_str().as_bytes();
                h.each(|n, v| {
                    if n == spelled {
                        f(v)
                    }
                })
            }
            Fields::Map(m) => m.get_all(name).iter().for_each(|v| f(v.as_bytes())),
        }
    }

    /// The first value of `name`, as a value of its own that shares its bytes.
    pub fn value(&self, name: &HeaderName) -> Option<HeaderValue> {
        match self {
            Fields::Map(m) => m.get(name).cloned(),
            Fields::Head(_) => self.get(name).and_then(|v| self.shared(v)),
        }
    }

    /// Whether `name` has exactly one value, and it is `value`.
    pub fn holds_only(&self, name: &HeaderName, value: &[u8]) -> bool {
        let (mut count, mut same) = (0, false);
        self.each_value(name, |v| {
            count += 1;
            same = v == value;
        });
        count == 1 && same
    }

    /// The first value of `name`, spelled in any case, as bytes (a value need not be text).
    pub fn get_named(&self, name: &str) -> Option<&[u8]> {
        match self {
            Fields::Head(h) => h.find(|n| n.eq_ignore_ascii_case(name.as_bytes())),
            Fields::Map(m) => m.get(name).map(HeaderValue::as_bytes),
        }
    }

    /// A value these fields hold, as a value of its own: one from the head's bytes, or a map's
    /// or one the proxy added (the gateway's `x-forwarded-for`, which the access log keeps),
    /// shares its bytes.
    pub fn shared(&self, value: &[u8]) -> Option<HeaderValue> {
        let same = |v: &&HeaderValue| std::ptr::eq(v.as_bytes(), value);
        let found = match self {
            Fields::Head(h) if h.holds(value) => return HeaderValue::from_maybe_shared(h.bytes.slice_ref(value)).ok(),
            Fields::Head(h) => h.added.iter().map(|(_, v)| v).find(same),
            Fields::Map(m) => m.values().find(same),
        };
        match found {
            Some(v) => Some(v.clone()),
            None => HeaderValue::from_bytes(value).ok(),
        }
    }

    /// Replaces every value of `name` with `value`: where the first one was when the message
    /// came with it, at the end otherwise (a field the proxy added, or none).
    pub fn set(&mut self, name: HeaderName, value: HeaderValue) {
        match self {
            // A head's own field cannot take a new value in its place: a map can (a rare case:
            // a client's Host the route rewrites, a length the proxy states anew).
            Fields::Head(h) if h.fields.iter().any(|f| &h.bytes[f.name_range()] == name.as_str().as_bytes()) => {
                self.map_mut().insert(name, value);
            }
            Fields::Head(h) => {
                // None of the head's own fields has the name (above): only an added one can.
                let spelled = name.as_str().as_bytes();
                h.remove_added_if(|n| n == spelled);
                h.added.push((name, value));
            }
            Fields::Map(m) => {
                m.insert(name, value);
            }
        }
    }

    /// Adds a value of `name` after those there are.
    pub fn append(&mut self, name: HeaderName, value: HeaderValue) {
        match self {
            Fields::Head(h) => h.added.push((name, value)),
            Fields::Map(m) => {
                m.append(name, value);
            }
        }
    }

    /// Removes every value of `name`.
    pub fn remove(&mut self, name: &HeaderName) {
        match self {
            Fields::Head(h) => h.remove(name),
            Fields::Map(m) => {
                m.remove(name);
            }
        }
    }

    /// Drops every field whose name `drop` says to.
    pub fn remove_if(&mut self, drop: impl Fn(&[u8]) -> bool) {
        match self {
            Fields::Head(h) => h.remove_if(drop),
            Fields::Map(m) => {
                let gone: Vec<HeaderName> = m.keys().filter(|n| drop(n.as_str().as_bytes())).cloned().collect();
                for n in gone {
                    m.remove(n);
                }
            }
        }
    }

    /// The fields as a header map, which a head becomes first (for edits and readers that take
    /// a map).
    pub fn map_mut(&mut self) -> &mut HeaderMap {
        if let Fields::Head(h) = self {
            let map = h.to_map();
            *self = Fields::Map(map);
        }
        match self {
            Fields::Map(m) => m,
            Fields::Head(_) => unreachable!("a head was just made a map"),
        }
    }

    /// Writes the fields `keep` keeps as HTTP/1.1 lines, in order.
    pub fn write_h1(&self, w: &mut Vec<u8>, keep: impl FnMut(&[u8], &[u8]) -> bool) {
        match self {
            Fields::Head(h) => h.write_h1(w, keep),
            Fields::Map(m) => {
                let mut keep = keep;
                for (n, v) in m {
                    if keep(n.as_str().as_bytes(), v.as_bytes()) {
                        write_line(w, n.as_str().as_bytes(), v.as_bytes());
                    }
                }
            }
        }
    }

    /// Every field in order, names in lower case.
    pub fn for_each<'s>(&'s self, mut f: impl FnMut(&'s [u8], &'s [u8])) {
        match self {
            Fields::Head(h) => h.each(f),
            Fields::Map(m) => {
                for (n, v) in m {
                    f(n.as_str().as_bytes(), v.as_bytes());
                }
            }
        }
    }

    /// A copy as a header map; the head's values share its bytes.
    pub fn to_map(&self) -> HeaderMap {
        match self {
            Fields::Head(h) => h.to_map(),
            Fields::Map(m) => m.clone(),
        }
    }

    /// The fields as a header map.
    pub fn into_map(self) -> HeaderMap {
        match self {
            // Values are reference-counted: the copy costs no more than a move would.
            Fields::Head(h) => h.to_map(),
            Fields::Map(m) => m,
        }
    }

    /// A response head as the HTTP/1.1 client parses it.
    #[cfg(test)]
    pub fn from_text(text: &str) -> Fields {
        Fields::Head(super::h1::parse_response_head(text.as_bytes()))
    }
}

impl Headers for Fields {
    fn first(&self, name: &str) -> Option<&str> {
        text(self.get_named(name)?)
    }
}

/// A value as text, as `HeaderValue::to_str` reads one: visible ASCII and tabs, or `None`.
pub fn text(value: &[u8]) -> Option<&str> {
    if value.iter().all(|&b| b == b'\t' || (32..127).contains(&b)) {
        std::str::from_utf8(value).ok()
    } else {
        None
    }
}

/// A head the proxy parsed: its bytes, where each field lies (httparse has checked every name and
/// value against the rules `http` holds them to; names are in lower case), and the fields the
/// proxy added. Fields are found by their spelling in one pass: a message carries a few.
#[derive(Debug, Default)]
pub struct Head {
    bytes: Bytes,
    fields: Vec<Field>,
    /// Written after the head's own fields (`server`, the service time, a request id).
    added: Vec<(HeaderName, HeaderValue)>,
}

impl Head {
    /// The head in `bytes`, its fields at `fields` (names in lower case).
    pub fn new(bytes: Bytes, fields: Vec<Field>) -> Head {
        Head { bytes, fields, added: Vec::new() }
    }

    /// The first value of a name `is` picks: in the head, or else among the values the proxy
    /// added.
    fn find(&self, is: impl Fn(&[u8]) -> bool) -> Option<&[u8]> {
        match self.fields.iter().find(|f| is(&self.bytes[f.name_range()])) {
            Some(f) => Some(&self.bytes[f.value_range()]),
            None => self.added.iter().find(|(n, _)| is(n.as_str().as_bytes())).map(|(_, v)| v.as_bytes()),
        }
    }

    fn each<'s>(&'s self, mut f: impl FnMut(&'s [u8], &'s [u8])) {
        for field in &self.fields {
            f(&self.bytes[field.name_range()], &self.bytes[field.value_range()]);
        }
        for (n, v) in &self.added {
            f(n.as_str().as_bytes(), v.as_bytes());
        }
    }

    /// Writes the fields `keep` keeps. The head's own lines that came as `name: value\r\n`,
    /// one after another, are copied as one span: a head is mostly such lines, and a copy a
    /// name and a value each cost a request some 20 calls to `memcpy`.
    fn write_h1(&self, w: &mut Vec<u8>, mut keep: impl FnMut(&[u8], &[u8]) -> bool) {
        let bytes = &self.bytes[..];
        // Whole lines kept and not yet written.
        let mut run = 0..0;
        for f in &self.fields {
            let (n, v) = (f.name_range(), f.value_range());
            let (name, value) = (&bytes[n.clone()], &bytes[v.clone()]);
            if !keep(name, value) {
                continue;
            }
            let (start, end) = (n.start, v.end);
            // `get`: an empty value may lie anywhere on its line.
            let whole = bytes.get(n.end..v.start) == Some(b": ") && bytes.get(end..end + 2) == Some(b"\r\n");
            if whole && !run.is_empty() && run.end == start {
                run.end = end + 2;
                continue;
            }
            w.extend_from_slice(&bytes[run]);
            run = 0..0;
            if whole {
                run = start..end + 2;
            } else {
                write_line(w, name, value);
            }
        }
        w.extend_from_slice(&bytes[run]);
        for (n, v) in &self.added {
            if keep(n.as_str().as_bytes(), v.as_bytes()) {
                write_line(w, n.as_str().as_bytes(), v.as_bytes());
            }
        }
    }

    /// Whether `value` is a slice of the head's bytes.
    fn holds(&self, value: &[u8]) -> bool {
        let (start, at) = (self.bytes.as_ptr() as usize, value.as_ptr() as usize);
        at >= start && at + value.len() <= start + self.bytes.len()
    }

    /// Removes every value of `name`.
    pub fn remove(&mut self, name: &HeaderName) {
        let spelled = name.as_str().as_bytes();
        self.remove_if(|n| n == spelled);
    }

    fn remove_if(&mut self, drop: impl Fn(&[u8]) -> bool) {
        // A look first: most calls remove nothing, and `retain` costs more than a pass even then
        // (about 250 instructions a request in `make bench-instructions`).
        let bytes = &self.bytes;
        if self.fields.iter().any(|f| drop(&bytes[f.name_range()])) {
            self.fields.retain(|f| !drop(&bytes[f.name_range()]));
        }
        self.remove_added_if(drop);
    }

    fn remove_added_if(&mut self, drop: impl Fn(&[u8]) -> bool) {
        if self.added.iter().any(|(n, _)| drop(n.as_str().as_bytes())) {
            self.added.retain(|(n, _)| !drop(n.as_str().as_bytes()));
        }
    }

    fn to_map(&self) -> HeaderMap {
        let mut map = HeaderMap::with_capacity(self.fields.len() + self.added.len() + 4);
        for (n, v) in self.fields.iter().filter_map(|f| f.entry(&self.bytes)) {
            map.append(n, v);
        }
        for (n, v) in &self.added {
            map.append(n.clone(), v.clone());
        }
        map
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{CONTENT_LENGTH, HOST, SERVER, SET_COOKIE};

    fn head(text: &str) -> Fields {
        Fields::from_text(text)
    }

    fn listed(fields: &Fields) -> Vec<(String, String)> {
        let mut out = Vec::new();
        fields.for_each(|n, v| {
            out.push((String::from_utf8_lossy(n).into_owned(), String::from_utf8_lossy(v).into_owned()))
        });
        out
    }

    const TEXT: &str = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nServer: app\r\nX-A: 1\r\nx-a: 2\r\n\r\n";

    #[test]
    fn a_head_is_read_and_edited_as_a_map_would_be() {
        let mut raw = head(TEXT);
        let mut map = Fields::Map(head(TEXT).map_mut().clone());
        for f in [&mut raw, &mut map] {
            assert_eq!(f.get(&CONTENT_LENGTH), Some(&b"5"[..]));
            let x_a = HeaderName::from_static("x-a");
            assert_eq!(f.get(&x_a), Some(&b"1"[..]), "the first value");
            let mut all = Vec::new();
            f.each_value(&x_a, |v| all.push(v.to_vec()));
            assert_eq!(all, [b"1", b"2"]);
            assert_eq!(f.first("X-A"), Some("1"), "a name in any case, as a matcher asks");
            f.set(SERVER, HeaderValue::from_static("envoy"));
            f.append(SET_COOKIE, HeaderValue::from_static("a=1"));
            f.remove_if(|n| n == b"x-a");
            assert_eq!(f.value(&SERVER).unwrap(), "envoy");
            assert_eq!(f.get(&x_a), None);
            assert_eq!(f.first("set-cookie"), Some("a=1"), "an added field is found too");
            f.remove(&SET_COOKIE);
            assert_eq!(f.get(&SET_COOKIE), None);
        }
        let mut expected = listed(&map);
        let mut got = listed(&raw);
        expected.sort();
        got.sort();
        assert_eq!(got, expected);
        assert_eq!(got.len(), 2, "{got:?}");
    }

    #[test]
    fn fields_are_written_as_lines_one_at_a_time_would_write_them() {
        let heads = [
            TEXT,
            "HTTP/1.1 200 OK\r\n\r\n",
            "HTTP/1.1 200 OK\r\nA: 1\r\nb:2\r\nC:  3  \r\nd: 4\r\ne: 5\r\nE:\r\nf: \r\ng: 7\r\n\r\n",
            "HTTP/1.1 200 OK\nA: 1\nB: 2\n\n",
            "HTTP/1.1 200 OK\r\nConnection: close\r\nA: 1\r\nConnection: x\r\nB: 2\r\nC: 3\r\n\r\n",
        ];
        for text in heads {
            let mut raw = head(text);
            raw.append(HeaderName::from_static("x-added"), HeaderValue::from_static("yes"));
            raw.append(HeaderName::from_static("connection"), HeaderValue::from_static("added"));
            let map = Fields::Map(raw.to_map());
            for drop in [&b""[..], b"connection", b"d", b"a"] {
                let mut want = Vec::new();
                raw.for_each(|n, v| {
                    if n != drop {
                        write_line(&mut want, n, v)
                    }
                });
                let mut got = Vec::new();
                let mut seen = Vec::new();
                raw.write_h1(&mut got, |n, v| {
                    seen.push((n.to_vec(), v.to_vec()));
                    n != drop
                });
                assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(&want), "{text:?} less {drop:?}");
                assert_eq!(seen.len(), listed(&raw).len(), "every field is shown to `keep`");
                let mut from_map = Vec::new();
                map.write_h1(&mut from_map, |n, _| n != drop);
                let lines = |b: &[u8]| {
                    let mut l: Vec<_> = b.split(|&c| c == b'\n').map(<[u8]>::to_vec).collect();
                    l.sort();
                    l
                };
                assert_eq!(lines(&from_map), lines(&want), "a map writes the same lines");
            }
        }
    }

    #[test]
    fn a_value_the_proxy_added_is_shared_not_copied() {
        let mut raw = head(TEXT);
        raw.append(HeaderName::from_static("x-forwarded-for"), HeaderValue::from(7u16));
        let added = raw.get(&HeaderName::from_static("x-forwarded-for")).unwrap();
        assert_eq!(raw.shared(added).unwrap().as_bytes().as_ptr(), added.as_ptr());
        assert_eq!(raw.shared(b"7").unwrap(), "7", "a value from elsewhere is copied");
    }

    #[test]
    fn a_field_set_anew_keeps_its_place() {
        for mut f in [
            head("HTTP/1.1 200 OK\r\nHost: a\r\nX-A: 1\r\n\r\n"),
            Fields::Map(head("HTTP/1.1 200 OK\r\nHost: a\r\nX-A: 1\r\n\r\n").map_mut().clone()),
        ] {
            f.set(HOST, HeaderValue::from_static("b"));
            f.set(SERVER, HeaderValue::from_static("envoy"));
            let names: Vec<_> = listed(&f).into_iter().map(|(n, v)| format!("{n}: {v}")).collect();
            assert_eq!(names, ["host: b", "x-a: 1", "server: envoy"]);
        }
    }

    #[test]
    fn fields_the_proxy_adds_keep_their_order_and_one_set_anew_goes_last() {
        let mut f = head("HTTP/1.1 200 OK\r\nX-A: 1\r\n\r\n");
        for (name, value) in [("x-b", "1"), ("x-c", "1"), ("x-d", "1"), ("x-c", "2")] {
            f.append(HeaderName::from_static(name), HeaderValue::from_static(value));
        }
        let names = |f: &Fields| listed(f).into_iter().map(|(n, v)| format!("{n}: {v}")).collect::<Vec<_>>();
        assert_eq!(names(&f), ["x-a: 1", "x-b: 1", "x-c: 1", "x-d: 1", "x-c: 2"]);
        assert_eq!(f.get(&HeaderName::from_static("x-d")), Some(&b"1"[..]));
        // What is removed leaves the rest in order; what comes next goes last.
        f.remove(&HeaderName::from_static("x-b"));
        f.append(HeaderName::from_static("x-e"), HeaderValue::from_static("1"));
        assert_eq!(names(&f), ["x-a: 1", "x-c: 1", "x-d: 1", "x-c: 2", "x-e: 1"]);
        f.set(HeaderName::from_static("x-c"), HeaderValue::from_static("3"));
        assert_eq!(names(&f), ["x-a: 1", "x-d: 1", "x-e: 1", "x-c: 3"]);
        assert_eq!(f.to_map().len(), 4);
    }

    #[test]
    fn a_head_made_a_map_keeps_every_field_in_order() {
        let mut raw = head(TEXT);
        raw.set(SERVER, HeaderValue::from_static("envoy"));
        let copy = raw.to_map();
        let map = raw.map_mut().clone();
        assert_eq!(copy, map);
        let values: Vec<_> = map.get_all("x-a").iter().collect();
        assert_eq!(values, ["1", "2"]);
        assert_eq!(map[SERVER], "envoy");
        assert_eq!(map.len(), 4);
    }

    #[test]
    fn a_value_read_from_a_head_shares_its_bytes_and_only_visible_text_is_text() {
        let mut raw = head("HTTP/1.1 200 OK\r\nHost: a\r\nX-B: café\r\n\r\n");
        raw.append(HeaderName::from_static("x-c"), HeaderValue::from_static("added"));
        let host = raw.get(&HOST).unwrap();
        let Fields::Head(h) = &raw else { panic!("a head") };
        assert!(h.holds(host));
        assert_eq!(raw.shared(host).unwrap().as_bytes().as_ptr(), host.as_ptr(), "shared, not copied");
        let added = raw.get(&HeaderName::from_static("x-c")).unwrap();
        assert!(!h.holds(added), "an added value is not the head's");
        assert_eq!(raw.shared(added).unwrap(), "added");
        assert_eq!(raw.first("x-b"), None, "as HeaderValue::to_str reads it");
        assert_eq!(raw.get_named("X-B"), Some("café".as_bytes()), "the bytes, text or not");
        let map = raw.to_map();
        let mapped = Fields::Map(map.clone());
        let value = mapped.get(&HOST).unwrap();
        assert_eq!(mapped.shared(value).unwrap().as_bytes().as_ptr(), value.as_ptr(), "a map's value is shared too");
        assert_eq!(raw.to_map().first("x-b"), None);
        assert_eq!(Fields::default().first("host"), None);
    }
}
