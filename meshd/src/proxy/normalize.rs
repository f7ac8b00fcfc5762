//! Envoy's `normalize_path`, which Istio turns on by default (`pathNormalization: BASE`): the
//! path every proxy routes on, authorizes and forwards is RFC 3986's normal form, so `/./headers`,
//! `/status/../headers` and `/%68eaders` are all `/headers` to an AuthorizationPolicy.

use std::borrow::Cow;

use http::uri::{PathAndQuery, Uri};

/// Whether a path may need work: almost none does, and those are left untouched. One pass:
/// an escape, a backslash, or a `.` or `..` segment (not a name that starts with a dot).
fn plain(path: &str) -> bool {
    let b = path.as_bytes();
    for (i, &c) in b.iter().enumerate() {
        match c {
            b'%' | b'\\' => return false,
            b'/' => {
                let seg = &b[i + 1..];
                let end = seg.iter().position(|&c| c == b'/').unwrap_or(seg.len());
                if matches!(&seg[..end], b"." | b"..") {
                    return false;
                }
            }
            _ => {}
        }
    }
    true
}

/// RFC 3986's unreserved characters, which an escape must not hide (section 2.3).
fn unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')
}

/// The path in normal form: escapes of unreserved characters decoded and the others kept as
/// written, backslashes made slashes (as Chromium's canonicalizer, which Envoy uses, does), and
/// `.` and `..` segments resolved (RFC 3986 section 5.2.4). None: a path that does not start
/// with `/`, or an escaped NUL, which are refused (400).
pub fn path(path: &str) -> Option<Cow<'_, str>> {
    if !path.starts_with('/') {
        return None;
    }
    if plain(path) {
        return Some(Cow::Borrowed(path));
    }
    let b = path.as_bytes();
    let mut decoded = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let byte = b.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
                match byte {
                    Some(0) => return None,
                    Some(c) if unreserved(c) => {
                        decoded.push(c);
                        i += 3;
                    }
                    // Kept as written, case and all; a malformed escape passes as it came.
                    _ => {
                        decoded.push(b'%');
                        i += 1;
                    }
                }
            }
            b'\\' => {
                decoded.push(b'/');
                i += 1;
            }
            c => {
                decoded.push(c);
                i += 1;
            }
        }
    }
    // Only ASCII went in or was decoded (escapes of other bytes stay escaped).
    let decoded = String::from_utf8(decoded).ok()?;
    Some(Cow::Owned(remove_dot_segments(&decoded)))
}

/// RFC 3986 section 5.2.4, on an absolute path: `..` never climbs above the root.
fn remove_dot_segments(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    for (i, seg) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        match *seg {
            "." | ".." => {
                if *seg == ".." {
                    out.pop();
                }
                // A dot segment at the end leaves the directory it names: `/a/b/..` is `/a/`.
                if last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/"))
}

/// Puts `uri`'s path in normal form, keeping its query, scheme and authority. Err: a path that
/// is refused (400).
pub fn uri(uri: &mut Uri) -> Result<(), ()> {
    let Some(pq) = uri.path_and_query() else { return Ok(()) };
    // `OPTIONS *` names no path.
    if pq.path() == "*" {
        return Ok(());
    }
    let normal = match path(pq.path()).ok_or(())? {
        Cow::Owned(p) if p != pq.path() => p,
        _ => return Ok(()),
    };
    let pq = match pq.query() {
        Some(q) => format!("{normal}?{q}"),
        None => normal,
    };
    let mut parts = std::mem::take(uri).into_parts();
    parts.path_and_query = Some(PathAndQuery::try_from(pq).map_err(|_| ())?);
    *uri = Uri::from_parts(parts).map_err(|_| ())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_forms_istio_lists_for_authorization_normalize_to_one_path() {
        for p in [
            "/headers",
            "/./headers",
            "/status/../headers",
            "/%68eaders",
            "/%2e/headers",
            "/status\\..\\headers",
            "/a/../../headers",
        ] {
            assert_eq!(path(p).unwrap(), "/headers", "{p}");
        }
        for p in ["/status/200", "/.well-known/x", "/a/..b/c."] {
            assert!(matches!(path(p), Some(Cow::Borrowed(_))), "{p} is not copied");
        }
        assert_eq!(path("/a/b/..").unwrap(), "/a/");
        assert_eq!(path("/a/./").unwrap(), "/a/");
        // Escapes of reserved characters stay as written (Envoy's own cases): `%2f` is not a slash.
        assert_eq!(path("/a/%2F%2f/c").unwrap(), "/a/%2F%2f/c");
        assert_eq!(path("/%5c%25").unwrap(), "/%5c%25");
        assert_eq!(path("/caf%C3%A9").unwrap(), "/caf%C3%A9");
        assert_eq!(path("/%zz/%4").unwrap(), "/%zz/%4", "a malformed escape passes as it came");
        assert!(path("/a%00b").is_none(), "an escaped NUL is refused");
        // A path must be absolute (an HTTP/2 `:path` of `admin` would pass a DENY on `/admin`).
        assert!(path("admin").is_none() && path("a/b/../c").is_none());
    }

    #[test]
    fn a_uri_keeps_its_query_and_authority() {
        let mut u: Uri = "http://httpbin:8000/status/../get?a=%2e".parse().unwrap();
        uri(&mut u).unwrap();
        assert_eq!(u.to_string(), "http://httpbin:8000/get?a=%2e");
        let mut u: Uri = "/./headers".parse().unwrap();
        uri(&mut u).unwrap();
        assert_eq!(u, "/headers");
    }
}
