//! The client's receipt log (`receipts_file` in `client.toml`): every worker receipt the client
//! verified, one JSON line each, with the cost the client computes for it at the prices it
//! expects (`[prices]`, default the network's defaults, [`Prices::default`]).
//!
//! It is the client's own record of what it was served, to hold against what the proxy
//! charges: the sum of `cost_nano` over the log is what the account should have been debited
//! for these requests (the proxy bills an encrypted request only on a receipt that verifies,
//! at `cost(usage, price_coefficient_milli)`). Each line carries the signed receipt itself
//! (base64), so a third party can check it against the worker's attested receipt key.
//!
//! A line holds no prompt or completion text: request id, model, hashes, token counts, the
//! finish reason, times and the cost. Lines are appended with one `write` each (mode 0600);
//! a write error is logged and does not fail the request.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use base64::Engine as _;
use protocol::e2e::Receipt;
use protocol::usage::Prices;

/// Appends verified receipts (see the module docs).
#[derive(Debug)]
pub struct ReceiptLog {
    file: Mutex<File>,
    prices: Prices,
}

impl ReceiptLog {
    /// Opens (creates or appends to) `path`.
    pub fn open(path: &Path, prices: Prices) -> std::io::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)?;
        Ok(Self {
            file: Mutex::new(file),
            prices,
        })
    }

    /// The line for `receipt` (whose signed encoding is `signed`).
    pub fn line(&self, receipt: &Receipt, signed: &[u8]) -> String {
        let r = receipt;
        let mut line = serde_json::json!({
            "request_id": r.request_id,
            "model": r.model,
            "model_digest": r.model_digest,
            "request_hash": hex::encode(r.request_hash),
            "worker_claims_hash": hex::encode(r.claims_hash),
            "usage": r.usage,
            "price_coefficient_milli": r.price_coefficient_milli,
            "finish_reason": r.finish_reason,
            "chunks": r.chunks,
            "time": r.time,
            "cost_nano": self.prices.cost(&r.usage, r.price_coefficient_milli),
            "receipt": base64::engine::general_purpose::STANDARD.encode(signed),
        })
        .to_string();
        line.push('\n');
        line
    }

    /// Appends the line for a verified receipt.
    pub fn append(&self, receipt: &Receipt, signed: &[u8]) {
        let line = self.line(receipt, signed);
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = f.write_all(line.as_bytes()) {
            tracing::warn!(error = %e, "receipts_file: write failed");
        }
    }
}
