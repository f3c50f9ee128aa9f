//! The forwarding recorder, a development test hook (`record_forwarded` in the config): every
//! byte the proxy forwards after TLS, in both directions, appended to one file. It exists so
//! that a test with real processes can show what the proxy sees of an end-to-end encrypted
//! request (docs/threat-model.md): a canary in the prompt or the completion must not be in the
//! recording; the model name (a routing header) must.
//!
//! The recording is taken at the HTTP layer, where the proxy handles each request: the head it
//! sends to the worker (method, path, every header as `name: value`), the body it forwards,
//! the worker's response head and every data frame of the worker's answer, and error bodies.
//! That is the strongest place for a *negative* check: below it, HTTP/2 header compression
//! (HPACK, Huffman coding) would hide a header value from a byte search even though the proxy
//! reads it.
//!
//! Refused unless `tee.kind = "sim"` ([`crate::config`]). The option is part of the config
//! file, whose digest the simulated platform measures into RTMR3, so a recording proxy also
//! has a runtime configuration that clients pinned to the real one refuse.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

/// Appends records `=== <label> <len>\n<bytes>\n` to a file (see the module docs).
#[derive(Debug)]
pub struct Recorder {
    file: Mutex<File>,
}

impl Recorder {
    /// Opens (creates or appends to) `path`, mode 0600.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)?;
        Ok(Self {
            file: Mutex::new(file),
        })
    }

    /// Appends one record. Write errors are logged once per call, never fatal.
    pub fn record(&self, label: &str, bytes: &[u8]) {
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let head = format!("=== {label} {}\n", bytes.len());
        let r = f
            .write_all(head.as_bytes())
            .and_then(|()| f.write_all(bytes))
            .and_then(|()| f.write_all(b"\n"));
        if let Err(e) = r {
            tracing::warn!(error = %e, "record_forwarded: write failed");
        }
    }

    /// Appends an HTTP head: the first line, then one `name: value` line per header.
    pub fn record_head(&self, label: &str, first: &str, headers: &http::HeaderMap) {
        let mut text = format!("{first}\n");
        for (name, value) in headers {
            text.push_str(name.as_str());
            text.push_str(": ");
            text.push_str(&String::from_utf8_lossy(value.as_bytes()));
            text.push('\n');
        }
        self.record(label, text.as_bytes());
    }
}
