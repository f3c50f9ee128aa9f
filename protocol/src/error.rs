//! Errors as every hop reports them: an HTTP status plus an OpenAI-style JSON body
//! `{"error": {"message", "type", "param", "code"}}`. The same value travels inside an
//! `event: cocoon-error` when a stream fails after its first byte.

use serde::{Deserialize, Serialize};

/// What went wrong, from the caller's point of view. Each kind has one HTTP status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Malformed JSON, unknown or duplicate field, bad value (400).
    InvalidRequest,
    /// The prompt does not fit the model's context window (400; OpenAI's
    /// `context_length_exceeded`).
    ContextLengthExceeded,
    /// Missing or invalid account credentials (401).
    Unauthorized,
    /// The account cannot cover the reservation (402).
    InsufficientFunds,
    /// No worker serves this model (404).
    ModelNotFound,
    /// Path not served (404).
    NotFound,
    /// Request body above the limit (413).
    PayloadTooLarge,
    /// Every worker for the model is at capacity (429).
    NoCapacity,
    /// The account exceeded a per-account rate (429; OpenAI's `rate_limit_exceeded`): the
    /// proxy's limit on streams abandoned before they could be billed.
    RateLimited,
    /// A worker or the proxy failed (502).
    Upstream,
    /// The peer's attestation was rejected (502; the message names the reason).
    Attestation,
    /// No answer in time (504).
    Timeout,
    /// The service cannot take the request now and says so: it is shutting down, or a
    /// request waited in the proxy's queue past its deadline (503; retry later, elsewhere).
    Unavailable,
    /// Protocol version not supported (400).
    UnsupportedVersion,
    /// A bug or resource failure on the reporting side (500).
    Internal,
    /// An encrypted request names no worker that can take it here: its recipients are gone
    /// or were never connected to this proxy (421; the client refreshes the worker keys from
    /// the proxy's directory and seals again).
    RecipientUnavailable,
}

impl ErrorKind {
    pub fn status(self) -> u16 {
        match self {
            Self::InvalidRequest | Self::ContextLengthExceeded | Self::UnsupportedVersion => 400,
            Self::Unauthorized => 401,
            Self::InsufficientFunds => 402,
            Self::ModelNotFound | Self::NotFound => 404,
            Self::PayloadTooLarge => 413,
            Self::NoCapacity | Self::RateLimited => 429,
            Self::Upstream | Self::Attestation => 502,
            Self::Timeout => 504,
            Self::Unavailable => 503,
            Self::Internal => 500,
            Self::RecipientUnavailable => 421,
        }
    }

    /// The OpenAI `type` field.
    pub fn openai_type(self) -> &'static str {
        match self {
            Self::InvalidRequest
            | Self::ContextLengthExceeded
            | Self::UnsupportedVersion
            | Self::PayloadTooLarge
            | Self::RecipientUnavailable => "invalid_request_error",
            Self::Unauthorized => "authentication_error",
            Self::InsufficientFunds => "insufficient_quota",
            Self::ModelNotFound | Self::NotFound => "not_found_error",
            Self::NoCapacity | Self::RateLimited => "rate_limit_error",
            Self::Upstream
            | Self::Attestation
            | Self::Timeout
            | Self::Unavailable
            | Self::Internal => "api_error",
        }
    }

    /// The stable `code` string.
    pub fn code(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::ContextLengthExceeded => "context_length_exceeded",
            Self::Unauthorized => "unauthorized",
            Self::InsufficientFunds => "insufficient_funds",
            Self::ModelNotFound => "model_not_found",
            Self::NotFound => "not_found",
            Self::PayloadTooLarge => "payload_too_large",
            Self::NoCapacity => "no_capacity",
            Self::RateLimited => "rate_limit_exceeded",
            Self::Upstream => "upstream_error",
            Self::Attestation => "attestation_rejected",
            Self::Timeout => "timeout",
            Self::Unavailable => "service_unavailable",
            Self::UnsupportedVersion => "unsupported_version",
            Self::Internal => "internal_error",
            Self::RecipientUnavailable => "e2e_recipient_unavailable",
        }
    }

    fn from_code(code: &str) -> Option<Self> {
        use ErrorKind::*;
        [
            InvalidRequest,
            ContextLengthExceeded,
            Unauthorized,
            InsufficientFunds,
            ModelNotFound,
            NotFound,
            PayloadTooLarge,
            NoCapacity,
            RateLimited,
            Upstream,
            Attestation,
            Timeout,
            Unavailable,
            UnsupportedVersion,
            Internal,
            RecipientUnavailable,
        ]
        .into_iter()
        .find(|k| k.code() == code)
    }
}

/// An error reported to a caller.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{} ({}): {message}", kind.code(), kind.status())]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
    /// The offending request field, if any.
    pub param: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct Body {
    error: Inner,
}

#[derive(Serialize, Deserialize)]
struct Inner {
    message: String,
    #[serde(rename = "type")]
    kind: String,
    param: Option<String>,
    code: Option<String>,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            param: None,
        }
    }

    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    pub fn status(&self) -> u16 {
        self.kind.status()
    }

    /// The OpenAI-style JSON body.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(&Body {
            error: Inner {
                message: self.message.clone(),
                kind: self.kind.openai_type().into(),
                param: self.param.clone(),
                code: Some(self.kind.code().into()),
            },
        })
        .unwrap_or_default()
    }

    /// Parses an error body; `status` is the HTTP status it came with (used when the body has
    /// no cocoon code, e.g. from an upstream OpenAI-compatible server).
    pub fn from_json(status: u16, body: &[u8]) -> Self {
        match serde_json::from_slice::<Body>(body) {
            Ok(b) => {
                let kind = b
                    .error
                    .code
                    .as_deref()
                    .and_then(ErrorKind::from_code)
                    .unwrap_or_else(|| kind_for_status(status));
                Self {
                    kind,
                    message: b.error.message,
                    param: b.error.param,
                }
            }
            Err(_) => Self::new(
                kind_for_status(status),
                format!(
                    "status {status}: {}",
                    String::from_utf8_lossy(&body[..body.len().min(200)])
                ),
            ),
        }
    }
}

/// The closest kind for a bare HTTP status.
pub fn kind_for_status(status: u16) -> ErrorKind {
    match status {
        400 => ErrorKind::InvalidRequest,
        401 | 403 => ErrorKind::Unauthorized,
        402 => ErrorKind::InsufficientFunds,
        404 => ErrorKind::NotFound,
        413 => ErrorKind::PayloadTooLarge,
        429 => ErrorKind::NoCapacity,
        503 => ErrorKind::Unavailable,
        504 => ErrorKind::Timeout,
        500 => ErrorKind::Internal,
        _ => ErrorKind::Upstream,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_statuses() {
        let e = ApiError::new(ErrorKind::InvalidRequest, "unknown field `foo`").with_param("foo");
        let back = ApiError::from_json(400, &e.to_json());
        assert_eq!(back, e);
        let j: serde_json::Value = serde_json::from_slice(&e.to_json()).unwrap();
        assert_eq!(j["error"]["type"], "invalid_request_error");
        assert_eq!(j["error"]["code"], "invalid_request");
        assert_eq!(ErrorKind::PayloadTooLarge.status(), 413);
        assert_eq!(ErrorKind::NoCapacity.status(), 429);
        assert_eq!(ErrorKind::ModelNotFound.status(), 404);
        assert_eq!(ErrorKind::Timeout.status(), 504);
        assert_eq!(ErrorKind::Unavailable.status(), 503);
        let down = ApiError::new(ErrorKind::Unavailable, "proxy shutting down");
        assert_eq!(ApiError::from_json(502, &down.to_json()), down);
        assert_eq!(
            ApiError::from_json(503, b"{}").kind,
            ErrorKind::Unavailable,
            "a bare 503 is unavailable"
        );
        assert_eq!(
            ApiError::from_json(429, b"garbage").kind,
            ErrorKind::NoCapacity
        );
    }

    #[test]
    fn context_length_exceeded_is_openais_code() {
        let e = ApiError::new(ErrorKind::ContextLengthExceeded, "too long").with_param("messages");
        assert_eq!(e.status(), 400);
        let j: serde_json::Value = serde_json::from_slice(&e.to_json()).unwrap();
        assert_eq!(j["error"]["type"], "invalid_request_error");
        assert_eq!(j["error"]["code"], "context_length_exceeded");
        assert_eq!(j["error"]["param"], "messages");
        assert_eq!(ApiError::from_json(400, &e.to_json()), e);
    }
}
