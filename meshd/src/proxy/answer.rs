//! A response on its way back to the client. An HTTP/1.1 upstream's head is passed on as the
//! bytes it came in, with the proxy's edits kept beside them: a header map would hash and copy
//! every field only for the fields to be written out again. Everything else (local replies,
//! HTTP/2 upstreams, a head the route edits) is a header map.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};

use super::h1::Field;
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

    /// The first value of `name`, as a value of its own (for tests).
    #[cfg(test)]
    pub fn value(&self, name: &HeaderName) -> Option<HeaderValue> {
        self.get(name).map(|v| HeaderValue::from_bytes(v).expect("a parsed or added value is valid"))
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
            Fields::Head(h) => h.remove_if(drop),
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
                    f(&h.bytes[field.name_range()], &h.bytes[field.value_range()]);
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

    /// A response head as the HTTP/1.1 client parses it.
    #[cfg(test)]
    pub fn from_text(text: &str) -> Fields {
        Fields::Head(super::h1::parse_response_head(text.as_bytes()))
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

    /// The first value of `name`: in the head, or else among the values the proxy added.
    fn get(&self, name: &HeaderName) -> Option<&[u8]> {
        let spelled = name.as_str().as_bytes();
        match self.fields.iter().find(|f| &self.bytes[f.name_range()] == spelled) {
            Some(f) => Some(&self.bytes[f.value_range()]),
            None => self.added.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_bytes()),
        }
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
        if self.added.iter().any(|(n, _)| drop(n.as_str().as_bytes())) {
            self.added.retain(|(n, _)| !drop(n.as_str().as_bytes()));
        }
    }

    fn into_map(self) -> HeaderMap {
        let mut map = HeaderMap::with_capacity(self.fields.len() + self.added.len() + 4);
        for (n, v) in self.fields.iter().filter_map(|f| f.entry(&self.bytes)) {
            map.append(n, v);
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
