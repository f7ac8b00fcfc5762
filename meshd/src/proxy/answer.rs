//! A response on its way back to the client. An HTTP/1.1 upstream's head is passed on as the
//! bytes it came in, with the proxy's edits kept beside them: a header map would hash and copy
//! every field only for the fields to be written out again. Everything else (local replies,
//! HTTP/2 upstreams, a head the route edits) is a header map.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};

use super::Body;

/// A response: its status, its fields and its body.
pub struct Answer {
    pub status: StatusCode,
    pub fields: Fields,
    pub body: Body,
}

impl From<Response<Body>> for Answer {
    fn from(resp: Response<Body>) -> Answer {
        let (parts, body) = resp.into_parts();
        Answer { status: parts.status, fields: Fields::Map(parts.headers), body }
    }
}

impl Answer {
    /// As an `http` response (for hyper's server).
    pub fn into_response(self) -> Response<Body> {
        let mut resp = Response::new(self.body);
        *resp.status_mut() = self.status;
        *resp.headers_mut() = self.fields.into_map();
        resp
    }
}

/// A response's fields: an upstream's head as it came, or a header map.
#[derive(Debug)]
pub enum Fields {
    Head(Head),
    Map(HeaderMap),
}

impl Fields {
    /// The first value of `name`.
    pub fn get(&self, name: &HeaderName) -> Option<&[u8]> {
        match self {
            Fields::Head(h) => h.get(name),
            Fields::Map(m) => m.get(name).map(HeaderValue::as_bytes),
        }
    }

    /// The first value of `name`, as a value that shares the head's bytes.
    pub fn value(&self, name: &HeaderName) -> Option<HeaderValue> {
        match self {
            Fields::Head(h) => h.value(name),
            Fields::Map(m) => m.get(name).cloned(),
        }
    }

    /// Replaces every value of `name` with `value`.
    pub fn set(&mut self, name: HeaderName, value: HeaderValue) {
        match self {
            Fields::Head(h) => {
                h.remove(&name);
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

    /// Drops every field whose name `drop` says to.
    pub fn remove_if(&mut self, drop: impl Fn(&[u8]) -> bool) {
        match self {
            Fields::Head(h) => {
                let bytes = &h.bytes;
                if h.fields.iter().any(|f| drop(f.name(bytes))) {
                    h.fields.retain(|f| !drop(f.name(bytes)));
                }
                h.added.retain(|(n, _)| !drop(n.as_str().as_bytes()));
            }
            Fields::Map(m) => {
                let gone: Vec<HeaderName> = m.keys().filter(|n| drop(n.as_str().as_bytes())).cloned().collect();
                for n in gone {
                    m.remove(n);
                }
            }
        }
    }

    /// The fields as a header map, which a head becomes first (for edits made on a map).
    pub fn map_mut(&mut self) -> &mut HeaderMap {
        if let Fields::Head(h) = self {
            let map = std::mem::take(h).into_map();
            *self = Fields::Map(map);
        }
        match self {
            Fields::Map(m) => m,
            Fields::Head(_) => unreachable!("a head was just made a map"),
        }
    }

    /// Every field in order, names in lower case.
    pub fn for_each(&self, mut f: impl FnMut(&[u8], &[u8])) {
        match self {
            Fields::Head(h) => {
                for field in &h.fields {
                    f(field.name(&h.bytes), field.value(&h.bytes));
                }
                for (n, v) in &h.added {
                    f(n.as_str().as_bytes(), v.as_bytes());
                }
            }
            Fields::Map(m) => {
                for (n, v) in m {
                    f(n.as_str().as_bytes(), v.as_bytes());
                }
            }
        }
    }

    fn into_map(self) -> HeaderMap {
        match self {
            Fields::Head(h) => h.into_map(),
            Fields::Map(m) => m,
        }
    }

    /// The head of a response written out (`Name: value` lines after the status line), its
    /// names in lower case as the parse leaves them.
    #[cfg(test)]
    pub fn from_text(text: impl Into<Vec<u8>>) -> Fields {
        let mut text: Vec<u8> = text.into();
        let line_end = |text: &[u8], from: usize| from + text[from..].windows(2).position(|w| w == b"\r\n").unwrap();
        let mut fields = Vec::new();
        let mut at = line_end(&text, 0) + 2;
        while &text[at..at + 2] != b"\r\n" {
            let end = line_end(&text, at);
            let colon = at + text[at..end].iter().position(|&b| b == b':').unwrap();
            fields.push(Field::at((at, colon), (colon + 2, end)));
            text[at..colon].make_ascii_lowercase();
            at = end + 2;
        }
        Fields::Head(Head::new(text.into(), fields))
    }
}

/// Where a field's name and value lie in a head's bytes.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    name: (u32, u32),
    value: (u32, u32),
}

impl Field {
    /// A field at these offsets of the head.
    pub fn at(name: (usize, usize), value: (usize, usize)) -> Field {
        Field { name: (name.0 as u32, name.1 as u32), value: (value.0 as u32, value.1 as u32) }
    }

    /// Where the name lies.
    pub fn name_range(&self) -> std::ops::Range<usize> {
        self.name.0 as usize..self.name.1 as usize
    }

    /// Where the value lies.
    pub fn value_range(&self) -> std::ops::Range<usize> {
        self.value.0 as usize..self.value.1 as usize
    }

    fn name<'a>(&self, bytes: &'a Bytes) -> &'a [u8] {
        &bytes[self.name_range()]
    }

    fn value<'a>(&self, bytes: &'a Bytes) -> &'a [u8] {
        &bytes[self.value_range()]
    }
}

/// An upstream's response head: its bytes, where each field lies (httparse has checked every
/// name and value against the rules `http` holds them to; names are in lower case), and the
/// fields the proxy added. Fields are found by their spelling in one pass: a response carries
/// a few.
#[derive(Debug, Default)]
pub struct Head {
    bytes: Bytes,
    fields: Vec<Field>,
    /// Written after the upstream's fields (`server`, the service time, a cookie).
    added: Vec<(HeaderName, HeaderValue)>,
}

impl Head {
    /// The head in `bytes`, its fields at `fields`.
    pub fn new(bytes: Bytes, fields: Vec<Field>) -> Head {
        Head { bytes, fields, added: Vec::new() }
    }

    fn position(&self, name: &HeaderName) -> Option<&Field> {
        let name = name.as_str().as_bytes();
        self.fields.iter().find(|f| f.name(&self.bytes) == name)
    }

    fn get(&self, name: &HeaderName) -> Option<&[u8]> {
        match self.position(name) {
            Some(f) => Some(f.value(&self.bytes)),
            None => self.added.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_bytes()),
        }
    }

    fn value(&self, name: &HeaderName) -> Option<HeaderValue> {
        match self.position(name) {
            Some(f) => HeaderValue::from_maybe_shared(self.bytes.slice(f.value_range())).ok(),
            None => self.added.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone()),
        }
    }

    /// Removes every value of `name`.
    pub fn remove(&mut self, name: &HeaderName) {
        let (bytes, spelled) = (&self.bytes, name.as_str().as_bytes());
        if self.fields.iter().any(|f| f.name(bytes) == spelled) {
            self.fields.retain(|f| f.name(bytes) != spelled);
        }
        if !self.added.is_empty() {
            self.added.retain(|(n, _)| n != name);
        }
    }

    fn into_map(self) -> HeaderMap {
        let mut map = HeaderMap::with_capacity(self.fields.len() + self.added.len() + 4);
        for f in &self.fields {
            let name = HeaderName::from_bytes(f.name(&self.bytes));
            let value = HeaderValue::from_maybe_shared(self.bytes.slice(f.value_range()));
            if let (Ok(n), Ok(v)) = (name, value) {
                map.append(n, v);
            }
        }
        for (n, v) in self.added {
            map.append(n, v);
        }
        map
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{CONTENT_LENGTH, SERVER, SET_COOKIE};

    fn head(text: &'static [u8]) -> Fields {
        Fields::from_text(text)
    }

    fn listed(fields: &Fields) -> Vec<(String, String)> {
        let mut out = Vec::new();
        fields.for_each(|n, v| {
            out.push((String::from_utf8_lossy(n).into_owned(), String::from_utf8_lossy(v).into_owned()))
        });
        out
    }

    const TEXT: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nServer: app\r\nX-A: 1\r\nx-a: 2\r\n\r\n";

    #[test]
    fn a_head_is_read_and_edited_as_a_map_would_be() {
        let mut raw = head(TEXT);
        let mut map = Fields::Map(head(TEXT).map_mut().clone());
        for f in [&mut raw, &mut map] {
            assert_eq!(f.get(&CONTENT_LENGTH), Some(&b"5"[..]));
            assert_eq!(f.get(&HeaderName::from_static("x-a")), Some(&b"1"[..]), "the first value");
            f.set(SERVER, HeaderValue::from_static("envoy"));
            f.append(SET_COOKIE, HeaderValue::from_static("a=1"));
            f.remove_if(|n| n == b"x-a");
            assert_eq!(f.value(&SERVER).unwrap(), "envoy");
            assert_eq!(f.get(&HeaderName::from_static("x-a")), None);
        }
        let mut expected = listed(&map);
        let mut got = listed(&raw);
        expected.sort();
        got.sort();
        assert_eq!(got, expected);
        assert_eq!(got.len(), 3, "{got:?}");
    }

    #[test]
    fn a_head_made_a_map_keeps_every_field_in_order() {
        let mut raw = head(TEXT);
        raw.set(SERVER, HeaderValue::from_static("envoy"));
        let map = raw.map_mut().clone();
        let values: Vec<_> = map.get_all("x-a").iter().collect();
        assert_eq!(values, ["1", "2"]);
        assert_eq!(map[SERVER], "envoy");
        assert_eq!(map.len(), 4);
        let answer = Answer { status: StatusCode::OK, fields: raw, body: crate::proxy::respond::full("hello") };
        let resp = answer.into_response();
        assert_eq!(resp.headers()["content-length"], "5");
    }
}
