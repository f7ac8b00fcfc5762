//! A response on its way back to the client. An HTTP/1.1 upstream's head is passed on as the
//! bytes it came in, with the proxy's edits kept beside them (see [`Fields`]); everything else
//! (local replies, HTTP/2 upstreams, a head the route edits) is a header map.

use http::{Response, StatusCode};

use super::fields::Fields;
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

#[cfg(test)]
mod tests {
    use http::header::SERVER;
    use http::HeaderValue;

    use super::*;

    #[test]
    fn an_answer_from_a_head_is_a_response_with_every_field() {
        let mut fields = Fields::from_text("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\nx-a: 2\r\n\r\n");
        fields.set(SERVER, HeaderValue::from_static("envoy"));
        let answer = Answer { status: StatusCode::OK, fields, body: crate::proxy::respond::full("hello") };
        let resp = answer.into_response();
        assert_eq!(resp.headers()["content-length"], "5");
        assert_eq!(resp.headers()[SERVER], "envoy");
        assert_eq!(resp.headers().get_all("x-a").iter().collect::<Vec<_>>(), ["1", "2"]);
    }
}
