//! The HTTP responses every cocoon service (client `serve`, proxy, worker) builds the same
//! way: JSON bodies, OpenAI error objects with the status of their [`ErrorKind`], and the
//! headers of an event stream. Pure: these build `http` values; each service puts the body
//! into its own body type with [`http::Response::map`].
//!
//! [`ErrorKind`]: crate::ErrorKind

use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Response, StatusCode};

use crate::{ApiError, RequestId};

/// `Content-Type` of JSON bodies.
pub const APPLICATION_JSON: &str = "application/json";
/// `Content-Type` of server-sent event streams ([`crate::sse`]).
pub const TEXT_EVENT_STREAM: &str = "text/event-stream";

/// A response with `status` and a JSON `body`.
pub fn json<B>(status: StatusCode, body: B) -> Response<B> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(APPLICATION_JSON));
    resp
}

/// The OpenAI error object for `err`, with the status of its kind.
pub fn error(err: &ApiError) -> Response<Vec<u8>> {
    json(status_of(err), err.to_json())
}

/// The HTTP status of `err` ([`ApiError::status`], which is always a valid code).
pub fn status_of(err: &ApiError) -> StatusCode {
    StatusCode::from_u16(err.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// Sets the headers of an event-stream response: `Content-Type: text/event-stream`,
/// `Cache-Control: no-cache`, and the request id if there is one.
pub fn event_stream_headers(headers: &mut HeaderMap, request_id: Option<&RequestId>) {
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(TEXT_EVENT_STREAM));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Some(id) = request_id {
        if let Ok(v) = HeaderValue::from_str(id.as_str()) {
            headers.insert(
                crate::meta::names::REQUEST_ID.clone(),
                crate::meta::unique_value(v),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::H_REQUEST_ID;
    use crate::ErrorKind;

    #[test]
    fn error_carries_the_status_of_its_kind_and_a_json_body() {
        for kind in [
            ErrorKind::InvalidRequest,
            ErrorKind::UnsupportedVersion,
            ErrorKind::Unauthorized,
            ErrorKind::InsufficientFunds,
            ErrorKind::ModelNotFound,
            ErrorKind::NotFound,
            ErrorKind::PayloadTooLarge,
            ErrorKind::NoCapacity,
            ErrorKind::Upstream,
            ErrorKind::Attestation,
            ErrorKind::Timeout,
            ErrorKind::Unavailable,
            ErrorKind::Internal,
        ] {
            let err = ApiError::new(kind, "m");
            let resp = error(&err);
            assert_eq!(resp.status().as_u16(), kind.status(), "{kind:?}");
            assert_eq!(resp.headers()[CONTENT_TYPE], APPLICATION_JSON);
            assert_eq!(resp.body(), &err.to_json());
        }
    }

    #[test]
    fn event_stream_headers_name_the_request() {
        let mut h = HeaderMap::new();
        let id = RequestId::parse("req-1").unwrap();
        event_stream_headers(&mut h, Some(&id));
        assert_eq!(h[CONTENT_TYPE], TEXT_EVENT_STREAM);
        assert_eq!(h[CACHE_CONTROL], "no-cache");
        assert_eq!(h[H_REQUEST_ID], "req-1");
        let mut h = HeaderMap::new();
        event_stream_headers(&mut h, None);
        assert!(!h.contains_key(H_REQUEST_ID));
    }
}
