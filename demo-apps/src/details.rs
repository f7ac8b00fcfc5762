//! details: the Bookinfo book-details service (Ruby WEBrick) — `/health` and `/details/<id>`.

use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::util::env_nonempty;
use crate::AppEnv;

/// Builds the details router. v2's Google Books lookup is not emulated (meshd runs offline):
/// v2 answers like v1 and says so in its log.
pub(crate) fn router(env: &AppEnv) -> Router {
    if env_nonempty(&env.env, "ENABLE_EXTERNAL_BOOK_SERVICE") == Some("true") {
        (env.log)(
            "details: ENABLE_EXTERNAL_BOOK_SERVICE=true, but the external book service \
             (www.googleapis.com) is not emulated; answering with the built-in book details",
        );
    }
    // WEBrick mounts `/details` as a prefix, so `/details`, `/details/1/2` all reach the handler.
    Router::new()
        .route("/health", get(health))
        .route("/details", get(details))
        .route("/details/", get(details))
        .route("/details/{*rest}", get(details))
}

fn json(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn health() -> Response {
    json(StatusCode::OK, r#"{"status":"Details is healthy"}"#.to_string())
}

async fn details(uri: Uri) -> Response {
    // Ruby's `String#split('/')` drops trailing empty fields, so `/details/0/` still yields "0".
    let last = uri.path().split('/').rev().find(|p| !p.is_empty()).unwrap_or_default();
    match ruby_integer(last) {
        Some(id) => json(
            StatusCode::OK,
            format!(
                concat!(
                    r#"{{"id":{},"author":"William Shakespeare","year":1595,"type":"paperback","#,
                    r#""pages":200,"publisher":"PublisherA","language":"English","#,
                    r#""ISBN-10":"1234567890","ISBN-13":"123-1234567890"}}"#
                ),
                id
            ),
        ),
        None => json(StatusCode::BAD_REQUEST, r#"{"error":"please provide numeric product id"}"#.to_string()),
    }
}

/// Ruby `Integer(str)`: surrounding whitespace, a sign, `0x`/`0b`/`0o`/leading-`0` (octal)
/// prefixes and single underscores between digits are accepted; anything else is an error.
fn ruby_integer(s: &str) -> Option<i128> {
    let t = s.trim_matches(|c: char| c.is_ascii_whitespace());
    let (neg, t) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let lower = t.to_ascii_lowercase();
    let (radix, digits) = if let Some(d) = lower.strip_prefix("0x") {
        (16, d)
    } else if let Some(d) = lower.strip_prefix("0b") {
        (2, d)
    } else if let Some(d) = lower.strip_prefix("0o") {
        (8, d)
    } else if let Some(d) = lower.strip_prefix("0d") {
        (10, d)
    } else if lower.len() > 1 && lower.starts_with('0') {
        (8, &lower[1..])
    } else {
        (10, lower.as_str())
    };
    if digits.is_empty() || digits.starts_with('_') || digits.ends_with('_') || digits.contains("__") {
        return None;
    }
    let clean: String = digits.chars().filter(|&c| c != '_').collect();
    let v = i128::from_str_radix(&clean, radix).ok()?;
    if clean.starts_with(['+', '-']) {
        return None;
    }
    Some(if neg { -v } else { v })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ruby_integers() {
        assert_eq!(ruby_integer("0"), Some(0));
        assert_eq!(ruby_integer(" 12 "), Some(12));
        assert_eq!(ruby_integer("-3"), Some(-3));
        assert_eq!(ruby_integer("1_000"), Some(1000));
        assert_eq!(ruby_integer("010"), Some(8));
        assert_eq!(ruby_integer("0x1A"), Some(26));
        for bad in ["", "abc", "08", "1__0", "_1", "1.5", "--1", "+-1", "details"] {
            assert_eq!(ruby_integer(bad), None, "{bad}");
        }
    }
}
