//! Envoy's `normalize_path`, which Istio turns on by default (`pathNormalization: BASE`): the
//! path every proxy routes on, authorizes and forwards is RFC 3986's normal form, so `/./headers`,
//! `/status/../headers` and `/%68eaders` are all `/headers` to an AuthorizationPolicy.

use std::borrow::Cow;

use http::uri::{PathAndQuery, Uri};

/// Whether a path may need work: almost none does, and those are left untouched.
fn plain(path: &str) -> bool {
    let b = path.as_bytes();
    !b.iter().any(|&c| c == b'%' || c == b'\\') && !b.windows(2).any(|w| w == b"/.")
}

/// RFC 3986's unreserved characters, which an escape must not hide (section 2.3).
fn unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')
}

/// The path in normal form: escapes of unreserved characters decoded and the others in upper
/// case, backslashes made slashes (as Chromium's canonicalizer, which Envoy uses, does), and `.`
/// and `..` segments resolved (RFC 3986 section 5.2.4). None: a malformed escape, which Envoy
/// refuses with 400.
pub fn path(path: &str) -> Option<Cow<'_, str>> {
    if plain(path) {
        return Some(Cow::Borrowed(path));
    }
    let b = path.as_bytes();
    let mut decoded = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b.get(i + 1..i + 3)?;
                let byte = u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
                if unreserved(byte) {
                    decoded.push(byte);
                } else {
                    decoded.push(b'%');
                    decoded.extend(hex.iter().map(u8::to_ascii_uppercase));
                }
                i += 3;
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

/// Puts `uri`'s path in normal form, keeping its query, scheme and authority. Err: a malformed
/// escape (400).
pub fn uri(uri: &mut Uri) -> Result<(), ()> {
    let Some(pq) = uri.path_and_query() else { return Ok(()) };
    let normal = match path(pq.path()).ok_or(())? {
        Cow::Borrowed(_) => return Ok(()),
        Cow::Owned(p) => p,
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
            "\\headers",
            "/a/../../headers",
        ] {
            assert_eq!(path(p).unwrap(), "/headers", "{p}");
        }
        assert!(matches!(path("/status/200"), Some(Cow::Borrowed(_))), "a plain path is not copied");
        assert_eq!(path("/a/b/..").unwrap(), "/a/");
        assert_eq!(path("/a/./").unwrap(), "/a/");
        // Escapes of reserved characters stay escaped, in upper case: `%2F` is not a slash here.
        assert_eq!(path("/a%2fb/%3f").unwrap(), "/a%2Fb/%3F");
        assert_eq!(path("/caf%C3%A9").unwrap(), "/caf%C3%A9");
        assert!(path("/%zz").is_none() && path("/%4").is_none(), "malformed escapes are refused");
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
