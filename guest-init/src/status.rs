//! Structured status lines on the serial console.
//!
//! Every line cocoon-init itself prints is `COCOON-INIT {json}` with a `"stage"` field, so the
//! host (`cocoon-host launch`) can follow boot without parsing free text:
//!
//! ```text
//! COCOON-INIT {"stage":"mount"}
//! COCOON-INIT {"stage":"config","sha256":"…","rtmr3":"…"}
//! COCOON-INIT {"stage":"ready","role":"worker"}
//! COCOON-INIT {"stage":"exit","code":20,"reason":"model disk: verity check failed …"}
//! ```
//!
//! Lines never contain prompts, completions or keys: the service's own output is copied to the
//! console unchanged, and the services never log those either.

use serde_json::{Map, Value};

/// Prefix of every status line.
pub const PREFIX: &str = protocol::guest::STATUS_PREFIX;

/// One status line.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    fields: Map<String, Value>,
}

impl Status {
    pub fn new(stage: &str) -> Self {
        let mut fields = Map::new();
        fields.insert("stage".into(), Value::String(stage.into()));
        Self { fields }
    }

    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.fields.insert(key.into(), value.into());
        self
    }

    /// The line, without a trailing newline.
    pub fn line(&self) -> String {
        format!("{PREFIX}{}", Value::Object(self.fields.clone()))
    }

    /// Prints the line on stdout (the console), with the guest's uptime in milliseconds
    /// (`uptime_ms`, from /proc/uptime once it is mounted) so boot stages can be timed.
    pub fn emit(&self) {
        let mut s = self.clone();
        if let Some(ms) = uptime_ms() {
            s = s.with("uptime_ms", ms);
        }
        println!("{}", s.line());
    }
}

fn uptime_ms() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/uptime").ok()?;
    let secs: f64 = text.split_whitespace().next()?.parse().ok()?;
    Some((secs * 1000.0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let s = Status::new("exit")
            .with("code", 20)
            .with("reason", "model disk: \"x\"");
        let line = s.line();
        assert!(line.starts_with("COCOON-INIT {"));
        // The host parses these lines (`protocol::guest::status::parse_line`, tested there
        // against garbage too, and fuzzed with these lines: `guest_status`); here: the prefix,
        // then one JSON object.
        let json = line.strip_prefix(PREFIX).unwrap();
        let m: Map<String, Value> = serde_json::from_str(json).unwrap();
        assert_eq!(m["stage"], "exit");
        assert_eq!(m["code"], 20);
    }
}
