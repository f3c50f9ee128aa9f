//! `cocoon-init` status lines on the guest's serial console.
//!
//! PID 1 prints one line per boot step: `COCOON-INIT ` followed by a JSON object with at least
//! `"stage"` (`mount`, `modules`, `config`, `verity`, `network`, `service`, `ready`, `exit`);
//! `exit` carries `"code"` (0: clean power-off) and usually `"reason"`. Other fields are kept
//! as they are. The marker may follow other console output on the same line (kernel messages
//! interleave), so it is searched for anywhere in the line.
//!
//! The console is guest output read by the host (`cocoon-host launch`), which does not trust
//! it: the parser is total (never panics; fuzz target `guest_status`) and bounds what it
//! keeps. `cocoon-init` writes these lines (`guest-init/src/status.rs`).

use serde_json::{Map, Value};

/// The marker that starts a status line.
pub const MARKER: &str = super::STATUS_PREFIX;
/// Longest line parsed; longer ones are reported as malformed.
pub const MAX_LINE: usize = 16 * 1024;

/// A boot stage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stage {
    Mount,
    Modules,
    Config,
    Verity,
    Network,
    Service,
    Ready,
    Exit,
    /// A stage this launcher does not know (newer guest).
    Other(String),
}

impl Stage {
    fn parse(s: &str) -> Self {
        match s {
            "mount" => Self::Mount,
            "modules" => Self::Modules,
            "config" => Self::Config,
            "verity" => Self::Verity,
            "network" => Self::Network,
            "service" => Self::Service,
            "ready" => Self::Ready,
            "exit" => Self::Exit,
            other => Self::Other(terminal_safe(other).chars().take(64).collect()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Self::Mount => "mount",
            Self::Modules => "modules",
            Self::Config => "config",
            Self::Verity => "verity",
            Self::Network => "network",
            Self::Service => "service",
            Self::Ready => "ready",
            Self::Exit => "exit",
            Self::Other(s) => s,
        }
    }
}

/// One parsed status line.
#[derive(Clone, Debug, PartialEq)]
pub struct Status {
    pub stage: Stage,
    /// `"code"` (exit stage).
    pub code: Option<i64>,
    /// `"reason"`.
    pub reason: Option<String>,
    /// The whole object.
    pub fields: Map<String, Value>,
}

/// Why a line with the marker did not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StatusError {
    #[error("status line longer than {MAX_LINE} bytes")]
    TooLong,
    #[error("status line is not a json object: {0}")]
    Json(String),
    #[error("status line has no string \"stage\"")]
    NoStage,
    #[error("status line \"code\" is not an integer")]
    BadCode,
}

/// `s` with every control character but tab written as its escape (`\u{1b}` for ESC), so
/// that guest or QEMU output echoed to the operator's terminal, or quoted in an error,
/// cannot move the cursor, retitle the window or write the clipboard (terminal escape
/// sequences); other text is unchanged.
pub fn terminal_safe(s: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| c.is_control() && c != '\t';
    if !s.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if unsafe_char(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// `None` if `line` has no status marker; otherwise the parsed status or why it is malformed.
pub fn parse_line(line: &str) -> Option<Result<Status, StatusError>> {
    let at = line.find(MARKER)?;
    Some(parse_payload(&line[at + MARKER.len()..]))
}

fn parse_payload(payload: &str) -> Result<Status, StatusError> {
    if payload.len() > MAX_LINE {
        return Err(StatusError::TooLong);
    }
    let payload = payload.trim_end_matches(['\r', '\n', ' ']);
    let value: Value = serde_json::from_str(payload).map_err(|e| {
        StatusError::Json(terminal_safe(&e.to_string()).chars().take(120).collect())
    })?;
    let Value::Object(fields) = value else {
        return Err(StatusError::Json("not an object".into()));
    };
    let stage = match fields.get("stage") {
        Some(Value::String(s)) => Stage::parse(s),
        _ => return Err(StatusError::NoStage),
    };
    let code = match fields.get("code") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_i64().ok_or(StatusError::BadCode)?),
    };
    let reason = match fields.get("reason") {
        Some(Value::String(s)) => Some(terminal_safe(s).chars().take(1024).collect()),
        Some(Value::Null) | None => None,
        Some(other) => Some(
            terminal_safe(&other.to_string())
                .chars()
                .take(1024)
                .collect(),
        ),
    };
    Ok(Status {
        stage,
        code,
        reason,
        fields,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_escapes_are_written_out() {
        assert!(matches!(
            terminal_safe("plain\ttext é"),
            std::borrow::Cow::Borrowed(_)
        ));
        assert_eq!(
            terminal_safe("a\u{1b}]52;c;aGk=\u{7}b\u{9b}2Jc\r"),
            "a\\u{1b}]52;c;aGk=\\u{7}b\\u{9b}2Jc\\u{d}"
        );
        let s = parse_line(
            "COCOON-INIT {\"stage\":\"\\u001b[2J\",\"code\":1,\"reason\":\"x\\u001b]0;pwned\\u0007\"}",
        )
        .unwrap()
        .unwrap();
        assert_eq!(s.stage.as_str(), "\\u{1b}[2J");
        assert_eq!(s.reason.as_deref(), Some("x\\u{1b}]0;pwned\\u{7}"));
    }

    #[test]
    fn good_lines() {
        let s = parse_line(r#"COCOON-INIT {"stage":"ready","service":"worker"}"#)
            .unwrap()
            .unwrap();
        assert_eq!(s.stage, Stage::Ready);
        assert_eq!(s.fields["service"], "worker");
        let s = parse_line("[    3.1] foo COCOON-INIT {\"stage\":\"exit\",\"code\":3,\"reason\":\"verity: root hash mismatch\"}\r")
            .unwrap()
            .unwrap();
        assert_eq!(s.stage, Stage::Exit);
        assert_eq!(s.code, Some(3));
        assert_eq!(s.reason.as_deref(), Some("verity: root hash mismatch"));
        let s = parse_line(r#"COCOON-INIT {"stage":"gpu-attest"}"#)
            .unwrap()
            .unwrap();
        assert_eq!(s.stage, Stage::Other("gpu-attest".into()));
    }

    #[test]
    fn garbage_never_panics() {
        assert!(parse_line("").is_none());
        assert!(parse_line("Linux version 6.12").is_none());
        assert!(parse_line("COCOON-INIT").is_none());
        for bad in [
            "COCOON-INIT ",
            "COCOON-INIT {",
            "COCOON-INIT []",
            "COCOON-INIT {\"stage\":1}",
            "COCOON-INIT {\"code\":0}",
            "COCOON-INIT {\"stage\":\"exit\",\"code\":\"x\"}",
            "COCOON-INIT {\"stage\":\"exit\",\"code\":1.5}",
            "COCOON-INIT \u{0}\u{ffff}{\"stage\"",
            "COCOON-INIT {\"stage\":\"ready\"} trailing",
        ] {
            assert!(parse_line(bad).unwrap().is_err(), "{bad:?}");
        }
        let long = format!("COCOON-INIT {{\"stage\":\"{}\"}}", "x".repeat(MAX_LINE));
        assert_eq!(parse_line(&long), Some(Err(StatusError::TooLong)));
        // Every prefix of a good line, including ones cut inside a multi-byte character.
        let good = "COCOON-INIT {\"stage\":\"exit\",\"code\":0,\"reason\":\"arrêt ✓\"}";
        for i in 0..=good.len() {
            if let Some(prefix) = good.get(..i) {
                let _ = parse_line(prefix);
            }
        }
    }
}
