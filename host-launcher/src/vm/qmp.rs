//! The one QMP conversation the launcher has with QEMU: press Ctrl-Alt-Del, which cocoon-init
//! (with Ctrl-Alt-Del disabled in the kernel) receives as SIGINT and answers with a clean stop:
//! the service drains, `COCOON-INIT {"stage":"exit","code":0}`, power off.
//!
//! QMP (QEMU `docs/interop/qmp-spec.rst`): one JSON object per line; the server greets with
//! `{"QMP": …}`, the client sends `qmp_capabilities`, then commands; replies carry `"return"`
//! or `"error"`, and asynchronous `"event"` lines may come in between.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// The command that presses Ctrl-Alt-Del on the guest's keyboard.
pub const CTRL_ALT_DELETE: &str = r#"{"execute":"send-key","arguments":{"keys":[{"type":"qcode","data":"ctrl"},{"type":"qcode","data":"alt"},{"type":"qcode","data":"delete"}]}}"#;
/// Leaves capabilities negotiation.
pub const CAPABILITIES: &str = r#"{"execute":"qmp_capabilities"}"#;
/// Longest QMP line read.
const MAX_LINE: usize = 64 * 1024;

/// One line from the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Greeting,
    Return,
    Error(String),
    Event,
    /// Not a QMP object.
    Other,
}

/// Classifies a server line (pure).
pub fn classify(line: &str) -> Reply {
    let Ok(Value::Object(m)) = serde_json::from_str::<Value>(line.trim()) else {
        return Reply::Other;
    };
    if m.contains_key("QMP") {
        Reply::Greeting
    } else if m.contains_key("return") {
        Reply::Return
    } else if let Some(e) = m.get("error") {
        let desc = e
            .get("desc")
            .and_then(Value::as_str)
            .unwrap_or("unknown error");
        Reply::Error(desc.chars().take(200).collect())
    } else if m.contains_key("event") {
        Reply::Event
    } else {
        Reply::Other
    }
}

/// QMP failures.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("qmp {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("qmp {path}: {what}")]
    Protocol { path: PathBuf, what: String },
    #[error("qmp {path}: no answer in {secs} s")]
    Timeout { path: PathBuf, secs: u64 },
}

async fn conversation(path: &Path) -> Result<(), QmpError> {
    let io = |source| QmpError::Io {
        path: path.to_path_buf(),
        source,
    };
    let proto = |what: String| QmpError::Protocol {
        path: path.to_path_buf(),
        what,
    };
    let stream = UnixStream::connect(path).await.map_err(io)?;
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let mut line = String::new();
    // Greeting.
    read_line(&mut r, &mut line).await.map_err(io)?;
    if classify(&line) != Reply::Greeting {
        return Err(proto(format!("expected a greeting, got {:?}", trim(&line))));
    }
    for command in [CAPABILITIES, CTRL_ALT_DELETE] {
        w.write_all(format!("{command}\n").as_bytes())
            .await
            .map_err(io)?;
        loop {
            read_line(&mut r, &mut line).await.map_err(io)?;
            if line.len() > MAX_LINE {
                return Err(proto("reply too long".into()));
            }
            match classify(&line) {
                Reply::Return => break,
                Reply::Error(e) => return Err(proto(e)),
                Reply::Event | Reply::Greeting | Reply::Other => continue,
            }
        }
    }
    Ok(())
}

async fn read_line(
    r: &mut BufReader<tokio::net::unix::OwnedReadHalf>,
    line: &mut String,
) -> std::io::Result<()> {
    line.clear();
    if r.read_line(line).await? == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed",
        ));
    }
    Ok(())
}

fn trim(s: &str) -> String {
    s.trim().chars().take(120).collect()
}

/// Presses Ctrl-Alt-Del through the QMP socket at `path`, within `timeout`.
pub async fn ctrl_alt_delete(path: &Path, timeout: Duration) -> Result<(), QmpError> {
    match tokio::time::timeout(timeout, conversation(path)).await {
        Ok(r) => r,
        Err(_) => Err(QmpError::Timeout {
            path: path.to_path_buf(),
            secs: timeout.as_secs(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies() {
        assert_eq!(
            classify(
                r#"{"QMP": {"version": {"qemu": {"micro": 2, "minor": 0, "major": 10}}, "capabilities": []}}"#
            ),
            Reply::Greeting
        );
        assert_eq!(classify("{\"return\": {}}\r\n"), Reply::Return);
        assert_eq!(
            classify(r#"{"error": {"class": "GenericError", "desc": "no keyboard"}}"#),
            Reply::Error("no keyboard".into())
        );
        assert_eq!(
            classify(r#"{"timestamp": {"seconds": 1}, "event": "RESET"}"#),
            Reply::Event
        );
        for other in ["", "{", "[]", "{\"x\":1}", "null"] {
            assert_eq!(classify(other), Reply::Other, "{other}");
        }
    }
}
