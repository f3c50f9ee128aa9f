//! Request metadata carried in headers, so that the proxy routes and bills without parsing the
//! body (which can later be end-to-end encrypted to the worker).
//!
//! | header | meaning | set by |
//! |---|---|---|
//! | `cocoon-protocol-version` | [`crate::PROTOCOL_VERSION`] of the sender | client library, proxy |
//! | `cocoon-request-id` | 1–64 chars of `[A-Za-z0-9_-]`, unique per request | client library |
//! | `cocoon-model` | model name (1–128 printable ASCII chars) | client library |
//! | `cocoon-max-tokens` | completion tokens the client pays for at most (1..=1_000_000) | client library; the proxy rewrites it to its reservation |
//! | `cocoon-max-prompt-tokens` | prompt tokens the proxy reserved for (proxy → worker) | proxy |
//! | `cocoon-price-cap` | most the client will pay for this request, nano-TON (optional) | client library |
//! | `cocoon-stream-tag` | the proxy's number for the request, unique on its connection to the worker; names it in a cancel (proxy → worker, optional) | proxy |

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::{ApiError, ErrorKind};

pub const H_VERSION: &str = "cocoon-protocol-version";
pub const H_REQUEST_ID: &str = "cocoon-request-id";
pub const H_MODEL: &str = "cocoon-model";
pub const H_MAX_TOKENS: &str = "cocoon-max-tokens";
pub const H_MAX_PROMPT_TOKENS: &str = "cocoon-max-prompt-tokens";
pub const H_PRICE_CAP: &str = "cocoon-price-cap";
pub const H_STREAM_TAG: &str = "cocoon-stream-tag";

/// The metadata header names as [`HeaderName`]s, made at compile time: a lookup or insert by
/// `&str` parses and validates the name on every call, a visible share of the relay's work per
/// request.
pub mod names {
    use super::*;
    pub static VERSION: HeaderName = HeaderName::from_static(H_VERSION);
    pub static REQUEST_ID: HeaderName = HeaderName::from_static(H_REQUEST_ID);
    pub static MODEL: HeaderName = HeaderName::from_static(H_MODEL);
    pub static MAX_TOKENS: HeaderName = HeaderName::from_static(H_MAX_TOKENS);
    pub static MAX_PROMPT_TOKENS: HeaderName = HeaderName::from_static(H_MAX_PROMPT_TOKENS);
    pub static PRICE_CAP: HeaderName = HeaderName::from_static(H_PRICE_CAP);
    pub static STREAM_TAG: HeaderName = HeaderName::from_static(H_STREAM_TAG);
}

/// A header value unique to one request (its id, the proxy's stream tag), marked so that
/// HTTP/2 sends it as a never-indexed literal: indexed, every request's value would take a
/// slot of the connection's HPACK table, evict a reusable header, and lengthen the table's
/// search for the next one.
pub fn unique_value(v: HeaderValue) -> HeaderValue {
    let mut v = v;
    v.set_sensitive(true);
    v
}

/// Upper bound for `cocoon-max-tokens`.
pub const MAX_TOKENS_LIMIT: u32 = 1_000_000;

/// The two OpenAI endpoints cocoon serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    ChatCompletions,
    Completions,
}

impl Endpoint {
    pub fn from_path(path: &str) -> Option<Self> {
        match path {
            crate::paths::CHAT_COMPLETIONS => Some(Self::ChatCompletions),
            crate::paths::COMPLETIONS => Some(Self::Completions),
            _ => None,
        }
    }

    pub fn path(self) -> &'static str {
        match self {
            Self::ChatCompletions => crate::paths::CHAT_COMPLETIONS,
            Self::Completions => crate::paths::COMPLETIONS,
        }
    }
}

/// A validated request id.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(std::sync::Arc<str>);

impl RequestId {
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        let ok = (1..=64).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if ok {
            Ok(Self(s.into()))
        } else {
            Err(ApiError::new(
                ErrorKind::InvalidRequest,
                format!("{H_REQUEST_ID}: expected 1-64 characters of [A-Za-z0-9_-]"),
            ))
        }
    }

    /// A request id from 16 random bytes (hex).
    pub fn from_random(bytes: [u8; 16]) -> Self {
        Self(hex::encode(bytes).into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id as a shared string (a clone is a reference count, not a copy).
    pub fn shared(&self) -> &std::sync::Arc<str> {
        &self.0
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Metadata of one inference request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestMeta {
    pub version: u32,
    pub request_id: RequestId,
    pub model: String,
    pub max_tokens: u32,
    pub price_cap: Option<u64>,
}

fn header<'a>(h: &'a HeaderMap, name: &HeaderName) -> Result<Option<&'a str>, ApiError> {
    let mut values = h.get_all(name).iter();
    let Some(v) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ApiError::new(
            ErrorKind::InvalidRequest,
            format!("header {name} given more than once"),
        ));
    }
    v.to_str().map(Some).map_err(|_| {
        ApiError::new(
            ErrorKind::InvalidRequest,
            format!("header {name} is not visible ascii"),
        )
    })
}

fn required<'a>(h: &'a HeaderMap, name: &HeaderName) -> Result<&'a str, ApiError> {
    header(h, name)?
        .ok_or_else(|| ApiError::new(ErrorKind::InvalidRequest, format!("missing header {name}")))
}

fn number<T: std::str::FromStr>(name: &'static str, s: &str) -> Result<T, ApiError> {
    s.trim().parse().map_err(|_| {
        ApiError::new(
            ErrorKind::InvalidRequest,
            format!("header {name}: not a number: {:?}", &s[..s.len().min(40)]),
        )
    })
}

/// Checks the `cocoon-protocol-version` header (absent means the current version).
pub fn check_version(h: &HeaderMap) -> Result<u32, ApiError> {
    let Some(v) = header(h, &names::VERSION)? else {
        return Ok(crate::PROTOCOL_VERSION);
    };
    let v: u32 = number(H_VERSION, v)?;
    if crate::SUPPORTED_VERSIONS.contains(&v) {
        Ok(v)
    } else {
        Err(ApiError::new(
            ErrorKind::UnsupportedVersion,
            format!(
                "protocol version {v} not supported (supported: {:?})",
                crate::SUPPORTED_VERSIONS
            ),
        ))
    }
}

/// Validates a model name.
pub fn check_model(model: &str) -> Result<(), ApiError> {
    if (1..=128).contains(&model.len()) && model.bytes().all(|b| (0x21..0x7f).contains(&b)) {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorKind::InvalidRequest,
            "model: expected 1-128 printable ascii characters without spaces",
        )
        .with_param("model"))
    }
}

/// The prompt budget the proxy reserved for a request ([`H_MAX_PROMPT_TOKENS`]), if it sent
/// one: the worker refuses a prompt of more tokens before generating, so that no request uses
/// more than was reserved for it.
pub fn max_prompt_tokens(h: &HeaderMap) -> Result<Option<u32>, ApiError> {
    let Some(v) = header(h, &names::MAX_PROMPT_TOKENS)? else {
        return Ok(None);
    };
    let n: u32 = number(H_MAX_PROMPT_TOKENS, v)?;
    if n == 0 {
        return Err(ApiError::new(
            ErrorKind::InvalidRequest,
            format!("header {H_MAX_PROMPT_TOKENS}: must be positive"),
        ));
    }
    Ok(Some(n))
}

/// The request id a cancel names ([`H_REQUEST_ID`], [`crate::paths::CANCEL`]): required, one
/// value, in the request id syntax.
pub fn request_id(h: &HeaderMap) -> Result<RequestId, ApiError> {
    let v = required(h, &names::REQUEST_ID).map_err(|e| e.with_param(H_REQUEST_ID))?;
    RequestId::parse(v)
}

/// The proxy's tag of a request ([`H_STREAM_TAG`]), if it sent one. Request ids are the
/// clients' and one connection carries many clients, so a cancel names the generation to stop
/// by this tag, which the proxy makes unique per connection ([`crate::paths::CANCEL`]).
pub fn stream_tag(h: &HeaderMap) -> Result<Option<u64>, ApiError> {
    match header(h, &names::STREAM_TAG)? {
        Some(v) => number(H_STREAM_TAG, v).map(Some),
        None => Ok(None),
    }
}

impl RequestMeta {
    /// Reads and validates the metadata headers.
    pub fn from_headers(h: &HeaderMap) -> Result<Self, ApiError> {
        let version = check_version(h)?;
        let request_id = RequestId::parse(required(h, &names::REQUEST_ID)?)?;
        let model = required(h, &names::MODEL)?.to_string();
        check_model(&model)?;
        let max_tokens: u32 = number(H_MAX_TOKENS, required(h, &names::MAX_TOKENS)?)?;
        if !(1..=MAX_TOKENS_LIMIT).contains(&max_tokens) {
            return Err(ApiError::new(
                ErrorKind::InvalidRequest,
                format!("header {H_MAX_TOKENS}: {max_tokens} outside 1..={MAX_TOKENS_LIMIT}"),
            ));
        }
        let price_cap = header(h, &names::PRICE_CAP)?
            .map(|v| number::<u64>(H_PRICE_CAP, v))
            .transpose()?;
        Ok(Self {
            version,
            request_id,
            model,
            max_tokens,
            price_cap,
        })
    }

    /// Writes the metadata headers (replacing existing ones).
    pub fn write_headers(&self, h: &mut HeaderMap) {
        h.insert(names::VERSION.clone(), HeaderValue::from(self.version));
        // Both were validated (a request id's and a model's characters are all valid in a
        // header value).
        if let Ok(v) = HeaderValue::from_str(self.request_id.as_str()) {
            h.insert(names::REQUEST_ID.clone(), unique_value(v));
        }
        if let Ok(v) = HeaderValue::from_str(&self.model) {
            h.insert(names::MODEL.clone(), v);
        }
        h.insert(
            names::MAX_TOKENS.clone(),
            HeaderValue::from(self.max_tokens),
        );
        if let Some(cap) = self.price_cap {
            h.insert(names::PRICE_CAP.clone(), HeaderValue::from(cap));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> RequestMeta {
        RequestMeta {
            version: 1,
            request_id: RequestId::parse("req-1_A").unwrap(),
            model: "smollm2-135m".into(),
            max_tokens: 64,
            price_cap: Some(1000),
        }
    }

    #[test]
    fn headers_round_trip() {
        let mut h = HeaderMap::new();
        meta().write_headers(&mut h);
        assert_eq!(RequestMeta::from_headers(&h).unwrap(), meta());
        // The id is unique per request: never indexed by HPACK; the rest is.
        assert!(h[H_REQUEST_ID].is_sensitive());
        for name in [H_VERSION, H_MODEL, H_MAX_TOKENS, H_PRICE_CAP] {
            assert!(!h[name].is_sensitive(), "{name}");
        }
        // The compile-time names are the string constants.
        assert_eq!(names::STREAM_TAG.as_str(), H_STREAM_TAG);
        assert_eq!(names::MAX_PROMPT_TOKENS.as_str(), H_MAX_PROMPT_TOKENS);
    }

    #[test]
    fn bad_headers_are_invalid_requests() {
        let cases: Vec<(&str, &str)> = vec![
            (H_MAX_TOKENS, "0"),
            (H_MAX_TOKENS, "abc"),
            (H_MAX_TOKENS, "2000000"),
            (H_REQUEST_ID, "has space"),
            (H_MODEL, "a b"),
            (H_PRICE_CAP, "-1"),
        ];
        for (name, value) in cases {
            let mut h = HeaderMap::new();
            meta().write_headers(&mut h);
            h.insert(name, HeaderValue::from_str(value).unwrap());
            let e = RequestMeta::from_headers(&h).unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidRequest, "{name}={value}");
        }
        let mut h = HeaderMap::new();
        meta().write_headers(&mut h);
        h.insert(H_VERSION, HeaderValue::from_static("99"));
        assert_eq!(
            RequestMeta::from_headers(&h).unwrap_err().kind,
            ErrorKind::UnsupportedVersion
        );
        let mut h = HeaderMap::new();
        meta().write_headers(&mut h);
        h.append(H_MODEL, HeaderValue::from_static("other"));
        assert!(RequestMeta::from_headers(&h).is_err());
        h.remove(H_MODEL);
        assert!(RequestMeta::from_headers(&h)
            .unwrap_err()
            .message
            .contains("missing header cocoon-model"));
    }
}
