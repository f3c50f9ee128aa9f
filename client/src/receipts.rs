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
//! finish reason, times, the cost, the worker's receipt key (as attested when the client
//! verified it) and the signed receipt. Lines are appended with one `write` each (mode
//! 0600); a write error is logged and does not fail the request.
//!
//! [`audit`] reads a log back for `cocoon-client account audit`: every receipt is verified
//! again and its adjusted tokens are recomputed from the signed usage at the network's prices
//! (the proxy contract's params), never from the log's own `cost_nano`; the total is what the
//! client contract may at most have been charged.

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
    path: std::path::PathBuf,
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
            path: path.to_path_buf(),
            prices,
        })
    }

    /// Where the log is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// [`audit`] of everything logged so far, priced at `prices`.
    pub fn audit_now(&self, prices: &Prices) -> Result<Audited, String> {
        let _writer = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let text = std::fs::read_to_string(&self.path)
            .map_err(|e| format!("{}: {e}", self.path.display()))?;
        audit(&text, prices).map_err(|e| format!("{}: {e}", self.path.display()))
    }

    /// The line for `receipt` (whose signed encoding is `signed`, verified with `key`).
    pub fn line(
        &self,
        receipt: &Receipt,
        signed: &[u8],
        key: &ed25519_dalek::VerifyingKey,
    ) -> String {
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
            "receipt_key": hex::encode(key.as_bytes()),
            "receipt": base64::engine::general_purpose::STANDARD.encode(signed),
        })
        .to_string();
        line.push('\n');
        line
    }

    /// Appends the line for a verified receipt.
    pub fn append(&self, receipt: &Receipt, signed: &[u8], key: &ed25519_dalek::VerifyingKey) {
        let line = self.line(receipt, signed, key);
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = f.write_all(line.as_bytes()) {
            tracing::warn!(error = %e, "receipts_file: write failed");
        }
    }
}

/// What a receipt log adds up to ([`audit`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Audited {
    /// Distinct receipts (by request hash).
    pub receipts: u64,
    /// Their adjusted tokens at the given prices: the most the account may have been charged.
    pub tokens: u128,
    /// Lines that named a request hash already counted.
    pub duplicates: u64,
}

/// A receipt log line that does not hold a valid receipt.
#[derive(Debug, thiserror::Error)]
#[error("receipt log line {line}: {reason}")]
pub struct AuditError {
    pub line: usize,
    pub reason: String,
}

/// Verifies every line of a receipt log and adds up the adjusted tokens of its receipts at
/// `prices` (see the module docs). Empty lines are skipped; anything else that is not a
/// receipt verifying with its line's key is an error naming the line.
pub fn audit(text: &str, prices: &Prices) -> Result<Audited, AuditError> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Audited::default();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |reason: &str| AuditError {
            line: i + 1,
            reason: reason.to_string(),
        };
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|_| bad("not a JSON object"))?;
        let signed = v["receipt"]
            .as_str()
            .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
            .ok_or_else(|| bad("no base64 receipt"))?;
        let mut key = [0u8; 32];
        v["receipt_key"]
            .as_str()
            .and_then(|s| hex::decode_to_slice(s, &mut key).ok())
            .ok_or_else(|| bad("no receipt key (64 hex digits)"))?;
        let key = ed25519_dalek::VerifyingKey::from_bytes(&key)
            .map_err(|_| bad("receipt key is not an Ed25519 point"))?;
        let r = Receipt::verify(&signed, &key).map_err(|e| bad(&e.to_string()))?;
        if !seen.insert(r.request_hash) {
            out.duplicates += 1;
            continue;
        }
        out.receipts += 1;
        out.tokens = out
            .tokens
            .saturating_add(prices.adjusted_tokens(&r.usage, r.price_coefficient_milli));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;
    use protocol::Usage;

    fn receipt(n: u8, completion: u64) -> Receipt {
        Receipt {
            request_id: format!("r{n}"),
            request_hash: [n; 32],
            claims_hash: [1; 32],
            model: "m".into(),
            model_digest: "d".into(),
            usage: Usage {
                prompt_tokens: 10,
                completion_tokens: completion,
                ..Usage::default()
            },
            price_coefficient_milli: 1500,
            finish_reason: "stop".into(),
            chunks: 2,
            time: 1,
        }
    }

    fn log_text(receipts: &[Receipt], key: &SigningKey) -> String {
        let dir = std::env::temp_dir().join(format!("cocoon-receipts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = ReceiptLog::open(
            &dir.join(format!("{}.jsonl", receipts.len())),
            Prices::default(),
        )
        .unwrap();
        receipts
            .iter()
            .map(|r| log.line(r, &r.sign(key).unwrap(), &key.verifying_key()))
            .collect()
    }

    #[test]
    fn a_log_adds_up_to_its_receipts_at_the_given_prices() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let rs = [receipt(1, 4), receipt(2, 0), receipt(3, 100)];
        let mut text = log_text(&rs, &key);
        let p = Prices::default();
        let want: u128 = rs
            .iter()
            .map(|r| p.adjusted_tokens(&r.usage, r.price_coefficient_milli))
            .sum();
        // 10 prompt ×1.5 = 15, completion ×4 ×1.5 = 6 per token: 15+24, 15, 15+600.
        assert_eq!(want, 669);
        let a = audit(&text, &p).unwrap();
        assert_eq!((a.receipts, a.tokens, a.duplicates), (3, 669, 0));
        // The log's cost is what the client computed at its prices.
        let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(first["cost_nano"], p.cost(&rs[0].usage, 1500));
        // A line appended twice counts once.
        let again = text.lines().next().unwrap().to_string();
        text.push_str(&again);
        text.push_str("\n\n");
        let a = audit(&text, &p).unwrap();
        assert_eq!((a.receipts, a.tokens, a.duplicates), (3, 669, 1));
    }

    #[test]
    fn an_edited_line_is_named() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let text = log_text(&[receipt(1, 4), receipt(2, 5)], &key);
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        // Editing the JSON usage changes nothing (the signed receipt counts) ...
        lines[0] = lines[0].replace("\"completion_tokens\":4", "\"completion_tokens\":400");
        assert_eq!(
            audit(&lines.join("\n"), &Prices::default()).unwrap().tokens,
            15 + 24 + 15 + 30
        );
        // ... editing the signed receipt is refused, naming the line.
        let mut v: serde_json::Value = serde_json::from_str(&lines[1]).unwrap();
        let mut signed = base64::engine::general_purpose::STANDARD
            .decode(v["receipt"].as_str().unwrap())
            .unwrap();
        signed[40] ^= 1;
        v["receipt"] = base64::engine::general_purpose::STANDARD
            .encode(signed)
            .into();
        lines[1] = v.to_string();
        let e = audit(&lines.join("\n"), &Prices::default()).unwrap_err();
        assert_eq!(e.line, 2);
        assert!(audit("{}", &Prices::default())
            .unwrap_err()
            .reason
            .contains("receipt"));
        assert_eq!(audit("nope", &Prices::default()).unwrap_err().line, 1);
    }
}
