//! One `[[models]]` entry of the worker's config: [`ModelFile`], a tagged enum per engine
//! (`engine = "mistralrs" | "upstream" | "stub"`, like `[tee]`'s `kind`), each variant with
//! exactly the keys its engine takes (`deny_unknown_fields`).
//!
//! Entries are deserialized one by one ([`parse_entry`]) through a small serde deserializer
//! whose error type keeps serde's structured reports (missing key, unknown key, unknown
//! engine), so every error names the key: `models[2].gguf: not an option of engine = "stub"`.
//! Through the `toml` crate an internally tagged enum's errors name no key.

use std::path::PathBuf;

use serde::de::value::{MapDeserializer, SeqDeserializer};
use serde::de::{self, IntoDeserializer, Visitor};
use serde::{Deserialize, Serialize};

use ratls::service_config::{field, ConfigError};

/// One `[[models]]` entry as written (see the module docs of `crate::config`).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(tag = "engine", rename_all = "lowercase", deny_unknown_fields)]
pub enum ModelFile {
    /// In-process GGUF inference (feature `mistralrs`).
    Mistralrs {
        name: String,
        /// Relative to the config file's directory.
        gguf: PathBuf,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_completion_tokens: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_context: Option<u32>,
    },
    /// An OpenAI-compatible server.
    Upstream {
        name: String,
        url: String,
        upstream_model: String,
        /// SHA-256 (hex) of the weights the server runs.
        model_hash: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        api_key: Option<String>,
        max_completion_tokens: u32,
        max_context: u32,
    },
    /// The stub engine (tests, load tests): `tokens` tokens at `tokens_per_second`.
    Stub {
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_completion_tokens: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_context: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tokens: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tokens_per_second: Option<f64>,
    },
}

/// The engine names, as written.
const ENGINES: &str = "\"mistralrs\", \"upstream\" or \"stub\"";

/// Deserializes entry `index` of the `models` array; errors name `models[index].<key>`.
pub fn parse_entry(index: usize, entry: toml::Value) -> Result<ModelFile, ConfigError> {
    let at = format!("models[{index}]");
    let engine = entry
        .get("engine")
        .and_then(toml::Value::as_str)
        .unwrap_or("")
        .to_string();
    ModelFile::deserialize(Entry(entry)).map_err(|e| match e {
        EntryError::Missing("engine") => {
            field(format!("{at}.engine"), format!("required ({ENGINES})"))
        }
        EntryError::Missing(key) => field(
            format!("{at}.{key}"),
            format!("required for engine = {engine:?}"),
        ),
        EntryError::Unknown(key) => field(
            format!("{at}.{key}"),
            format!("not an option of engine = {engine:?}"),
        ),
        EntryError::UnknownEngine(name) => field(
            format!("{at}.engine"),
            format!("unknown engine {name:?} (expected {ENGINES})"),
        ),
        EntryError::Other(detail) => field(at, detail),
    })
}

/// What serde reports about an entry, kept structured.
#[derive(Debug)]
enum EntryError {
    Missing(&'static str),
    Unknown(String),
    UnknownEngine(String),
    Other(String),
}

impl std::fmt::Display for EntryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Missing(k) => write!(f, "missing key {k}"),
            Self::Unknown(k) => write!(f, "unknown key {k}"),
            Self::UnknownEngine(e) => write!(f, "unknown engine {e}"),
            Self::Other(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for EntryError {}

impl de::Error for EntryError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        Self::Other(msg.to_string())
    }

    fn missing_field(field: &'static str) -> Self {
        Self::Missing(field)
    }

    fn unknown_field(field: &str, _expected: &'static [&'static str]) -> Self {
        Self::Unknown(field.to_string())
    }

    fn unknown_variant(variant: &str, _expected: &'static [&'static str]) -> Self {
        Self::UnknownEngine(variant.to_string())
    }
}

/// A parsed TOML value as a serde deserializer with [`EntryError`].
struct Entry(toml::Value);

impl<'de> IntoDeserializer<'de, EntryError> for Entry {
    type Deserializer = Self;

    fn into_deserializer(self) -> Self {
        self
    }
}

impl<'de> de::Deserializer<'de> for Entry {
    type Error = EntryError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, EntryError> {
        match self.0 {
            toml::Value::String(s) => visitor.visit_string(s),
            toml::Value::Integer(i) => visitor.visit_i64(i),
            toml::Value::Float(f) => visitor.visit_f64(f),
            toml::Value::Boolean(b) => visitor.visit_bool(b),
            toml::Value::Datetime(d) => visitor.visit_string(d.to_string()),
            toml::Value::Array(a) => {
                visitor.visit_seq(SeqDeserializer::new(a.into_iter().map(Entry)))
            }
            toml::Value::Table(t) => visitor.visit_map(MapDeserializer::new(
                t.into_iter().map(|(k, v)| (k, Entry(v))),
            )),
        }
    }

    /// A key that is present holds a value (TOML has no null).
    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, EntryError> {
        visitor.visit_some(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        unit unit_struct newtype_struct seq tuple tuple_struct map struct enum identifier
        ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(text: &str) -> Result<ModelFile, String> {
        let v: toml::Value = toml::Value::Table(text.parse().unwrap());
        parse_entry(3, v).map_err(|e| e.to_string())
    }

    #[test]
    fn every_error_names_the_key() {
        assert_eq!(
            entry("name = \"m\"\nengine = \"stub\"\ntokens_per_second = 20").unwrap(),
            ModelFile::Stub {
                name: "m".into(),
                max_completion_tokens: None,
                max_context: None,
                tokens: None,
                tokens_per_second: Some(20.0)
            }
        );
        for (text, want) in [
            ("name = \"m\"", "models[3].engine: required"),
            (
                "name = \"m\"\nengine = \"vllm\"",
                "models[3].engine: unknown engine \"vllm\"",
            ),
            (
                "name = \"m\"\nengine = \"mistralrs\"",
                "models[3].gguf: required for engine = \"mistralrs\"",
            ),
            (
                "name = \"m\"\nengine = \"stub\"\nurl = \"x\"",
                "models[3].url: not an option of engine = \"stub\"",
            ),
            ("engine = \"stub\"", "models[3].name: required"),
            (
                "name = \"m\"\nengine = \"stub\"\ntokens = \"x\"",
                "models[3]: invalid type",
            ),
        ] {
            let e = entry(text).unwrap_err();
            assert!(e.starts_with(want), "{text}: {e}");
        }
    }
}
