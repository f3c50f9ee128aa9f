//! `GET /v1/models/{id}`: the model id carried in the path, and the OpenAI error for a model
//! that is not served.
//!
//! Model ids may contain `/` (`org/name`), so everything after [`MODEL_PREFIX`] is the id,
//! percent-decoded (`org%2Fname` and `org/name` name the same model). An id that is malformed
//! (a `%` not followed by two hex digits) or fails [`crate::meta::check_model`] once decoded
//! names no model: it gets the same 404 `model_not_found` as an unknown one. Pure.

use crate::{ApiError, ErrorKind};

/// Path prefix of one model (`/v1/models/` + the id).
pub const MODEL_PREFIX: &str = "/v1/models/";

/// The model id `path` names: `None` if `path` is not under [`MODEL_PREFIX`], else the
/// decoded, checked id or the 404 `model_not_found` for it.
pub fn id_from_path(path: &str) -> Option<Result<String, ApiError>> {
    let raw = path.strip_prefix(MODEL_PREFIX)?;
    Some(decode_id(raw))
}

fn invalid(why: &str) -> ApiError {
    ApiError::new(
        ErrorKind::ModelNotFound,
        format!("model id in the path: {why}"),
    )
    .with_param("model")
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Percent-decodes `raw` and checks the result as a model name.
fn decode_id(raw: &str) -> Result<String, ApiError> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hi = bytes.get(i + 1).copied().and_then(hex_value);
            let lo = bytes.get(i + 2).copied().and_then(hex_value);
            match (hi, lo) {
                (Some(h), Some(l)) => out.push(h << 4 | l),
                _ => return Err(invalid("malformed percent-encoding")),
            }
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    let id = String::from_utf8(out).map_err(|_| invalid("not utf-8 once decoded"))?;
    crate::meta::check_model(&id)
        .map_err(|_| invalid("expected 1-128 printable ascii characters without spaces"))?;
    Ok(id)
}

/// The path of model `id`: [`MODEL_PREFIX`] and the id with every byte other than
/// `A-Z a-z 0-9 - . _ ~ /` percent-encoded.
pub fn path_of(id: &str) -> String {
    let mut out = String::with_capacity(MODEL_PREFIX.len() + id.len());
    out.push_str(MODEL_PREFIX);
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The 404 `model_not_found` for a valid id that no worker serves.
pub fn not_found(id: &str) -> ApiError {
    ApiError::new(
        ErrorKind::ModelNotFound,
        format!("the model {id:?} does not exist"),
    )
    .with_param("model")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(path: &str) -> Result<String, ApiError> {
        id_from_path(path).expect("under the prefix")
    }

    #[test]
    fn ids_are_decoded_and_may_contain_slashes() {
        assert_eq!(id("/v1/models/smollm2").unwrap(), "smollm2");
        assert_eq!(id("/v1/models/org/name").unwrap(), "org/name");
        assert_eq!(id("/v1/models/org%2Fname").unwrap(), "org/name");
        assert_eq!(id("/v1/models/org%2fname").unwrap(), "org/name");
        assert_eq!(id("/v1/models/a%3Ab").unwrap(), "a:b");
        assert!(id_from_path("/v1/models").is_none());
        assert!(id_from_path("/v1/modelsx/a").is_none());
    }

    #[test]
    fn malformed_or_invalid_ids_are_model_not_found() {
        for (path, why) in [
            ("/v1/models/", "expected 1-128"),
            ("/v1/models/a%2", "malformed percent-encoding"),
            ("/v1/models/a%zz", "malformed percent-encoding"),
            ("/v1/models/%", "malformed percent-encoding"),
            ("/v1/models/a%20b", "expected 1-128"),
            ("/v1/models/%00", "expected 1-128"),
            ("/v1/models/%C3%A9", "expected 1-128"),
            ("/v1/models/%FF", "not utf-8"),
        ] {
            let e = id(path).unwrap_err();
            assert_eq!(e.kind, ErrorKind::ModelNotFound, "{path}");
            assert_eq!(e.status(), 404, "{path}");
            assert_eq!(e.param.as_deref(), Some("model"), "{path}");
            assert!(e.message.contains(why), "{path}: {}", e.message);
        }
        let long = format!("/v1/models/{}", "a".repeat(129));
        assert_eq!(id(&long).unwrap_err().kind, ErrorKind::ModelNotFound);
        let max = format!("/v1/models/{}", "a".repeat(128));
        assert_eq!(id(&max).unwrap(), "a".repeat(128));
    }

    #[test]
    fn path_of_round_trips() {
        assert_eq!(path_of("org/name"), "/v1/models/org/name");
        assert_eq!(path_of("a%b?c#d"), "/v1/models/a%25b%3Fc%23d");
        for s in ["x", "org/name", "a%b?c#d", "!\"$&'()*+,;=:@[]{}|\\^`<>"] {
            assert_eq!(id(&path_of(s)).unwrap(), s);
            assert!(path_of(s).parse::<http::Uri>().is_ok(), "{s}");
        }
    }

    #[test]
    fn not_found_is_openai_shaped() {
        let e = not_found("nope");
        let j: serde_json::Value = serde_json::from_slice(&e.to_json()).unwrap();
        assert_eq!(j["error"]["code"], "model_not_found");
        assert_eq!(j["error"]["param"], "model");
        assert_eq!(j["error"]["message"], "the model \"nope\" does not exist");
        assert_eq!(e.status(), 404);
    }
}
