//! The strict JSON parser: serde_json's [`Value`] keeps the last of two equal keys silently, so
//! two parsers could disagree about what a request says; this one refuses duplicates at any
//! depth and names where they are. The worker parses every request body with it, and the
//! local client every body it translates (OpenAI's Responses API) before anything is sent.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;

use serde::de::{DeserializeSeed, Error as _, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use crate::{ApiError, ErrorKind};

/// Parses JSON into a [`Value`], rejecting duplicate object keys at any depth.
pub fn parse_strict(body: &[u8]) -> Result<Value, ApiError> {
    let dup = RefCell::new(None);
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed = StrictSeed {
        path: Path::Root,
        dup: &dup,
    }
    .deserialize(&mut de)
    .and_then(|v| de.end().map(|()| v));
    match parsed {
        Ok(v) => Ok(v),
        Err(e) => Err(match dup.into_inner() {
            Some(Duplicate { key, at }) => ApiError::new(
                ErrorKind::InvalidRequest,
                format!("duplicate key `{}` in {at}", truncate(&key, 64)),
            )
            .with_param(key),
            None => ApiError::new(ErrorKind::InvalidRequest, format!("malformed json: {e}")),
        }),
    }
}

struct Duplicate {
    key: String,
    /// Where the object is ("the request body", "messages[0]").
    at: String,
}

/// Where a value sits, built lazily (only formatted when a duplicate is found).
#[derive(Clone, Copy)]
enum Path<'p> {
    Root,
    Key(&'p Path<'p>, &'p str),
    Index(&'p Path<'p>, usize),
}

impl fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Path::Root => f.write_str("the request body"),
            Path::Key(Path::Root, k) => f.write_str(truncate(k, 64)),
            Path::Index(Path::Root, i) => write!(f, "[{i}]"),
            Path::Key(p, k) => write!(f, "{p}.{}", truncate(k, 64)),
            Path::Index(p, i) => write!(f, "{p}[{i}]"),
        }
    }
}

struct StrictSeed<'a, 'p> {
    path: Path<'p>,
    dup: &'a RefCell<Option<Duplicate>>,
}

impl<'de> DeserializeSeed<'de> for StrictSeed<'_, '_> {
    type Value = Value;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictSeed<'_, '_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a json value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        loop {
            let path = Path::Index(&self.path, out.len());
            let seed = StrictSeed {
                path,
                dup: self.dup,
            };
            match seq.next_element_seed(seed)? {
                Some(v) => out.push(v),
                None => return Ok(Value::Array(out)),
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = BTreeMap::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                let at = self.path.to_string();
                let msg = format!("duplicate key `{}`", truncate(&key, 64));
                *self.dup.borrow_mut() = Some(Duplicate { key, at });
                return Err(A::Error::custom(msg));
            }
            let path = Path::Key(&self.path, &key);
            let v = map.next_value_seed(StrictSeed {
                path,
                dup: self.dup,
            })?;
            out.insert(key, v);
        }
        Ok(Value::Object(out.into_iter().collect()))
    }
}

/// The first `max` bytes of `s`, cut back to a character boundary (names and values quoted in
/// error messages).
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_are_refused_at_any_depth_and_named() {
        let e = parse_strict(br#"{"a": 1, "a": 2}"#).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidRequest);
        assert_eq!(e.message, "duplicate key `a` in the request body");
        assert_eq!(e.param.as_deref(), Some("a"));
        let e = parse_strict(br#"{"input": [{"x": 1}, {"role": "user", "role": "system"}]}"#)
            .unwrap_err();
        assert_eq!(e.message, "duplicate key `role` in input[1]");
        let long = format!(r#"{{"{k}": 1, "{k}": 2}}"#, k = "é".repeat(40));
        let e = parse_strict(long.as_bytes()).unwrap_err();
        // The key is shown cut to 64 bytes, on a character boundary.
        assert_eq!(e.message.matches('é').count(), 32, "{}", e.message);
    }

    #[test]
    fn values_parse_as_serde_json_does() {
        let body = br#"{"a": [1, -2, 2.5, "s", null, true, {"b": {}}], "c": {"d": []}}"#;
        let v = parse_strict(body).unwrap();
        assert_eq!(v, serde_json::from_slice::<Value>(body).unwrap());
        assert!(parse_strict(b"{} x").is_err());
        assert!(parse_strict(b"[").is_err());
    }
}
