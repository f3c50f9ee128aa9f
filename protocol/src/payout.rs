//! Payouts between proxy and worker, on their attested connection.
//!
//! A worker that wants to be paid names, in its [`crate::Registration`], the owner of its worker
//! contract ([`PayoutAdvert`]: the address of the wallet it sends vouchers from). The proxy
//! derives the worker contract from that owner, its own proxy contract, Kp and params, and
//! bills the worker's tokens to it. Whenever its ledger has anchored more tokens for the
//! worker — and once right after registration, before the worker gets any request — the proxy
//! POSTs a [`PayoutVoucher`] to [`crate::paths::PAYOUT`]: the signed payout voucher (BOC) for
//! the worker contract's cumulative token count. The worker checks it against the proxy
//! contract on chain (Kp, params, the worker contract it derives itself), refuses a count
//! below the highest it has seen (a rolled-back or cloned proxy) with 401
//! [`PROXY_WENT_BACKWARDS`], and answers a [`PayoutAck`]. Submitting the voucher to the
//! worker contract is the worker's business (its own wallet pays the fees).

use serde::{Deserialize, Serialize};

use crate::{ApiError, ErrorKind};

/// Largest voucher BOC (hex characters) a worker accepts: a signed voucher is two cells.
pub const MAX_VOUCHER_HEX: usize = 4096;

/// The error message prefix of a refusal for a count below the highest seen.
pub const PROXY_WENT_BACKWARDS: &str = "proxy went backwards";

/// What a worker registers to be paid.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayoutAdvert {
    /// Owner of the worker contract (raw `0:<hex>` or user-friendly): the worker's wallet.
    pub owner: String,
}

/// Proxy → worker: the latest payout voucher for the worker's contract.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayoutVoucher {
    /// The proxy contract (raw address).
    pub proxy_contract: String,
    /// The worker contract the voucher pays (raw address).
    pub worker_contract: String,
    /// Cumulative tokens the voucher pays up to.
    pub tokens: u64,
    /// The signed payout message (`ton::messages::signed`), BOC in hex.
    pub voucher: String,
}

impl PayoutVoucher {
    /// Shape checks (sizes, hex); the signature and addresses are the worker's to check.
    pub fn validate(&self) -> Result<(), ApiError> {
        check_shape(
            "payout",
            &self.voucher,
            [&self.proxy_contract, &self.worker_contract],
        )
    }
}

/// Proxy → client: the charge voucher for the client contract bound to the connection's
/// account key, for the cumulative tokens the proxy's ledger has committed and anchored. The
/// client checks it (Kp signature, its own contract, a count its receipts justify) and may
/// submit it to its client contract itself (Cocoon's client does once its unpaid usage passes
/// half its stake).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChargeVoucher {
    /// The proxy contract (raw address).
    pub proxy_contract: String,
    /// The client contract the voucher charges (raw address).
    pub client_contract: String,
    /// Cumulative tokens the voucher charges up to.
    pub tokens: u64,
    /// The signed charge message (`ton::messages::signed`), BOC in hex.
    pub voucher: String,
}

impl ChargeVoucher {
    /// Shape checks (sizes, hex); signature, addresses and count are the client's to check.
    pub fn validate(&self) -> Result<(), ApiError> {
        check_shape(
            "charge",
            &self.voucher,
            [&self.proxy_contract, &self.client_contract],
        )
    }
}

fn check_shape(what: &str, voucher: &str, addrs: [&String; 2]) -> Result<(), ApiError> {
    let bad = |m: &str| {
        Err(ApiError::new(
            ErrorKind::InvalidRequest,
            format!("{what}: {m}"),
        ))
    };
    if voucher.is_empty() || voucher.len() > MAX_VOUCHER_HEX {
        return bad("voucher size");
    }
    if hex::decode(voucher).is_err() {
        return bad("voucher is not hex");
    }
    if addrs.iter().any(|a| a.len() > 128) {
        return bad("address too long");
    }
    Ok(())
}

/// Worker → proxy: the voucher was accepted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayoutAck {
    /// The highest count the worker has seen from this proxy contract (after this voucher).
    pub highest_tokens: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        let v = PayoutVoucher {
            proxy_contract: "0:00".into(),
            worker_contract: "0:01".into(),
            tokens: 5,
            voucher: "b5ee".into(),
        };
        v.validate().unwrap();
        let j = serde_json::to_string(&v).unwrap();
        assert_eq!(serde_json::from_str::<PayoutVoucher>(&j).unwrap(), v);
        assert!(serde_json::from_str::<PayoutVoucher>(
            &j.replace("\"tokens\"", "\"x\":1,\"tokens\"")
        )
        .is_err());
        for bad in ["", "zz", &"0".repeat(MAX_VOUCHER_HEX + 2)] {
            let mut b = v.clone();
            b.voucher = bad.into();
            assert!(b.validate().is_err(), "{bad}");
        }
        let c = ChargeVoucher {
            proxy_contract: "0:00".into(),
            client_contract: "0:02".into(),
            tokens: 7,
            voucher: "b5ee".into(),
        };
        c.validate().unwrap();
        let mut long = c.clone();
        long.client_contract = "0".repeat(129);
        assert!(long.validate().unwrap_err().message.contains("charge"));
    }
}
