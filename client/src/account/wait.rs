//! Following an operation on chain: find the transaction each message caused (by the hash of
//! its inbound message) on the accounts we watch, polling each account's transaction list
//! until a deadline; fail on the first transaction that did not succeed.
//!
//! The wallet's external is matched first; then every internal message a followed transaction
//! sends to a watched account (wallet, client contract, proxy contract) is followed in turn.
//! Messages to other accounts (none in Cocoon's client flows) are not followed.
//!
//! A transaction fails the operation when its compute phase ran and failed, or its action
//! phase failed. A *skipped* compute phase (aborted, no exit code) fails it only on an account
//! that must execute every message ([`Watched::must_run`], the client contract): the client
//! contract notifies the proxy contract with 1 nanoton in some requests (e.g. a
//! `request_refund` with nothing above the stake), too little for any gas, so the proxy's
//! transaction is skipped by design.

use std::collections::VecDeque;
use std::time::Duration;

use ton::address::Addr;
use ton::cell::Cell;
use ton::explain::{action_code_meaning, exit_code_meaning};
use ton::transaction::Message;
use tonsim::{ChainTx, TonChain};

use super::AccountError;

/// Most transactions followed for one operation.
const MAX_STEPS: usize = 16;
/// Transactions requested per poll.
const PAGE: usize = 32;

/// How long to wait and how often to poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitOptions {
    /// Deadline for the whole operation (also the external's validity).
    pub timeout: Duration,
    /// Pause between polls.
    pub poll: Duration,
}

/// One followed transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Which account (`wallet`, `client contract`, `proxy contract`).
    pub role: &'static str,
    /// Its address.
    pub addr: Addr,
    /// Value of the inbound message (0 for the external).
    pub value_in: u128,
    /// Compute exit code, if the TVM ran.
    pub exit_code: Option<i32>,
    /// Total fees.
    pub fee: u128,
    /// Outbound messages: destination (if internal) and value.
    pub out: Vec<(Option<Addr>, u128)>,
}

/// "exit code 1011 (not unlocked yet: …)", "action result code 37 (…)", "aborted".
pub fn describe_failure(exit: Option<i32>, action: Option<i32>, aborted: bool) -> String {
    let mut parts = Vec::new();
    if let Some(c) = exit.filter(|c| *c != 0 && *c != 1) {
        let m = exit_code_meaning(c).unwrap_or("unknown exit code");
        parts.push(format!("exit code {c} ({m})"));
    }
    if let Some(c) = action.filter(|c| *c != 0) {
        let m = action_code_meaning(c).unwrap_or("unknown result code");
        parts.push(format!("action result code {c} ({m})"));
    }
    if parts.is_empty() {
        parts.push(if aborted { "aborted" } else { "not successful" }.to_string());
    }
    parts.join(", ")
}

/// An account whose transactions are followed.
#[derive(Debug, Clone, Copy)]
pub struct Watched {
    /// Name in reports and errors.
    pub role: &'static str,
    /// Address.
    pub addr: Addr,
    /// A skipped compute phase here is a failure.
    pub must_run: bool,
}

/// The last logical time of each watched account (0 if it has no transaction).
pub async fn last_lts(chain: &dyn TonChain, watched: &[Watched]) -> Result<Vec<u64>, AccountError> {
    let mut out = Vec::new();
    for w in watched {
        out.push(chain.account(&w.addr).await?.last_tx.map_or(0, |t| t.lt));
    }
    Ok(out)
}

fn decode(boc: &[u8]) -> Result<Cell, AccountError> {
    ton::boc::decode(boc).map_err(|e| AccountError::Malformed(format!("message boc: {e}")))
}

/// Follows the external `ext_boc` sent to `watched[0]` and everything it causes on `watched`
/// accounts; `since[i]` is account i's last logical time before sending.
pub async fn follow(
    chain: &dyn TonChain,
    ext_boc: &[u8],
    watched: &[Watched],
    since: &[u64],
    opts: &WaitOptions,
) -> Result<Vec<Step>, AccountError> {
    let deadline = tokio::time::Instant::now() + opts.timeout;
    let mut queue: VecDeque<(usize, Cell)> = VecDeque::new();
    queue.push_back((0, decode(ext_boc)?));
    let mut steps = Vec::new();
    while let Some((i, msg)) = queue.pop_front() {
        if steps.len() >= MAX_STEPS {
            break;
        }
        let Watched {
            role,
            addr,
            must_run,
        } = watched[i];
        let tx = find(chain, addr, since[i], &msg, deadline, opts, role).await?;
        // the wallet's transaction must send exactly the one message
        if i == 0 && steps.is_empty() && tx.success && tx.out_msgs.is_empty() {
            return Err(AccountError::NotSent { addr });
        }
        let action_code = ton::boc::decode(&tx.boc)
            .ok()
            .and_then(|c| ton::transaction::Transaction::parse(&c).ok())
            .and_then(|t| t.action.map(|a| a.result_code));
        let skipped = tx.exit_code.is_none() && action_code.is_none();
        if !tx.success && (must_run || !skipped) {
            return Err(AccountError::Failed {
                role,
                addr,
                exit_code: tx.exit_code,
                action_code,
                aborted: tx.aborted,
            });
        }
        let mut out = Vec::new();
        for m in &tx.out_msgs {
            let cell = decode(m)?;
            let parsed = Message::parse(&cell)
                .map_err(|e| AccountError::Malformed(format!("outbound message: {e}")))?;
            let dst = parsed.internal_dst();
            out.push((dst, msg_value(&parsed)));
            if let Some(j) = dst.and_then(|d| watched.iter().position(|w| w.addr == d)) {
                queue.push_back((j, cell));
            }
        }
        let value_in = Message::parse(&msg).map(|m| msg_value(&m)).unwrap_or(0);
        steps.push(Step {
            role,
            addr,
            value_in,
            exit_code: tx.exit_code,
            fee: tx.fee,
            out,
        });
    }
    Ok(steps)
}

fn msg_value(m: &Message) -> u128 {
    match &m.info {
        ton::transaction::MsgInfo::Internal { value, .. } => value.nano(),
        _ => 0,
    }
}

/// Polls `addr`'s transactions (after `since`) for the one whose inbound message is `msg`.
async fn find(
    chain: &dyn TonChain,
    addr: Addr,
    since: u64,
    msg: &Cell,
    deadline: tokio::time::Instant,
    opts: &WaitOptions,
    role: &'static str,
) -> Result<ChainTx, AccountError> {
    let want = msg.hash();
    loop {
        let txs = chain.transactions(&addr, since, PAGE).await?;
        for tx in txs {
            let Some(in_boc) = &tx.in_msg else { continue };
            if decode(in_boc)?.hash() == want {
                return Ok(tx);
            }
        }
        if tokio::time::Instant::now() + opts.poll > deadline {
            return Err(AccountError::Timeout {
                what: role,
                addr,
                secs: opts.timeout.as_secs(),
            });
        }
        tokio::time::sleep(opts.poll).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_described_with_their_codes() {
        let s = describe_failure(Some(1011), None, true);
        assert!(s.starts_with("exit code 1011 (not unlocked yet"), "{s}");
        let s = describe_failure(Some(0), Some(37), false);
        assert_eq!(
            s,
            "action result code 37 (not enough TON to send the message)"
        );
        assert_eq!(
            describe_failure(Some(77), None, true),
            "exit code 77 (unknown exit code)"
        );
        assert_eq!(describe_failure(None, None, true), "aborted");
    }
}
