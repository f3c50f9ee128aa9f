//! The client sending its own charge, as Cocoon's client does: once its unpaid usage passes
//! half its stake, it asks the proxy for the charge voucher of its client contract
//! ([`protocol::paths::CHARGE`]), checks it and submits it from its own wallet (the proxy
//! submits charges only past its own threshold, 1 TON by default).
//!
//! Checks on the voucher, each refusing with a named reason:
//! - it parses as a signed message with op `charge`, signed by the proxy contract's Kp (read
//!   from the chain, tied to the proxy contract's address), for this client contract, and its
//!   count is the one the proxy's JSON states;
//! - with a receipt log: the count is at most the adjusted tokens the client's verified
//!   receipts justify ([`crate::receipts::audit`]) — else [`ChargeError::Overcharged`], and
//!   nothing is submitted;
//! - the chain has not charged that count already.
//!
//! The voucher's excess address is replaced by the client's wallet (the signature covers only
//! the payload), so the excess of the client's own gas comes back to it.

use ton::address::Addr;
use ton::messages::signed::{SignedMessage, SignedOp};
use tonsim::tonchain::ClientState;

use super::{Account, AccountError, Outcome};

/// What [`decide`] concluded.
#[derive(Debug)]
pub enum Decision {
    /// Nothing to charge: the chain has charged the voucher's count already.
    NothingDue { charged: u64 },
    /// Unpaid usage below half the stake: left to the proxy.
    BelowHalfStake {
        unpaid_nano: u128,
        half_stake_nano: u128,
    },
    /// Due: submit this body (repacked with the client's wallet as the excess address).
    Submit {
        tokens: u64,
        charged: u64,
        unpaid_nano: u128,
        body: ton::cell::Cell,
    },
}

/// Why a charge voucher was refused.
#[derive(Debug, thiserror::Error)]
pub enum ChargeError {
    #[error("charge voucher: {0}")]
    Invalid(String),
    #[error(
        "over-charged: the proxy's charge voucher counts {voucher} tokens, the receipts justify \
         {justified}: {over} tokens ({over_nano} nanoton) more; not submitted"
    )]
    Overcharged {
        voucher: u64,
        justified: u64,
        over: u64,
        over_nano: u128,
    },
    #[error(
        "over-charged: the chain shows {charged} tokens charged to this client contract, the \
         receipts justify {justified}: {over} tokens ({over_nano} nanoton) more"
    )]
    ChargedTooMuch {
        charged: u64,
        justified: u64,
        over: u64,
        over_nano: u128,
    },
    #[error(transparent)]
    Account(#[from] AccountError),
}

impl ChargeError {
    /// Whether the proxy charged, or asked to charge, more than the receipts justify (the
    /// client stops using it).
    pub fn is_overcharge(&self) -> bool {
        matches!(self, Self::Overcharged { .. } | Self::ChargedTooMuch { .. })
    }
}

/// Checks `v` against the chain (client `state`) and, if given, the adjusted tokens the
/// client's receipts justify; decides whether it is due (unpaid usage above half the stake,
/// or `force`).
pub fn decide(
    account: &Account,
    state: &ClientState,
    v: &protocol::payout::ChargeVoucher,
    justified_tokens: Option<u64>,
    force: bool,
) -> Result<Decision, ChargeError> {
    let bad = |m: String| ChargeError::Invalid(m);
    v.validate().map_err(|e| bad(e.message))?;
    let own = account.client_address();
    let named = Addr::parse_raw(&v.client_contract)
        .map_err(|e| bad(format!("client_contract {:?}: {e}", v.client_contract)))?;
    if named != own {
        return Err(bad(format!(
            "for client contract {named}, this account's is {own}"
        )));
    }
    let cell = ton::boc::decode_hex(&v.voucher).map_err(|e| bad(format!("boc: {e}")))?;
    let msg = SignedMessage::parse_verified(&cell, &account.proxy().public_key, &own)
        .map_err(|e| bad(e.to_string()))?;
    if msg.op != SignedOp::Charge {
        return Err(bad(format!("op {:?}, expected a charge", msg.op)));
    }
    let tokens = msg
        .payload
        .tokens
        .ok_or_else(|| bad("carries no token count".into()))?;
    if tokens != v.tokens {
        return Err(bad(format!(
            "signed count {tokens}, the proxy's answer says {}",
            v.tokens
        )));
    }
    let price = account.proxy().params.price_per_token.nano();
    if let Some(justified) = justified_tokens {
        if tokens > justified {
            let over = tokens - justified;
            return Err(ChargeError::Overcharged {
                voucher: tokens,
                justified,
                over,
                over_nano: u128::from(over) * price,
            });
        }
    }
    let charged = state.tokens_used;
    if tokens <= charged {
        return Ok(Decision::NothingDue { charged });
    }
    let unpaid_nano = u128::from(tokens - charged) * price;
    let half_stake_nano = state.stake / 2;
    if unpaid_nano <= half_stake_nano && !force {
        return Ok(Decision::BelowHalfStake {
            unpaid_nano,
            half_stake_nano,
        });
    }
    let body = msg
        .repack(&account.wallet().address())
        .map_err(|e| bad(e.to_string()))?;
    Ok(Decision::Submit {
        tokens,
        charged,
        unpaid_nano,
        body,
    })
}

impl Account {
    /// Sends a checked charge body ([`Decision::Submit`]) from the wallet to the client
    /// contract and follows its transactions.
    pub async fn submit_charge(&self, body: ton::cell::Cell) -> Result<Outcome, AccountError> {
        self.require_deployed().await?;
        self.send(super::REQUEST_VALUE, None, body).await
    }
}

/// What one [`round`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Round {
    /// Nothing to do (no voucher, nothing due, or below half the stake).
    Idle,
    /// A charge was submitted and the contract now shows `tokens` charged.
    Submitted { tokens: u64 },
}

/// One check of a running client (`cocoon-client serve` with `[account]`): the chain's
/// charged count against the receipts (an over-charge by the proxy's own charges ends the
/// client), then the proxy's voucher through [`decide`], submitted when due.
/// `justified_tokens` are the adjusted tokens of the client's verified receipts (`None`
/// without a receipt log: nothing is checked against receipts); `voucher` asks the proxy.
pub async fn round<F, Fut>(
    account: &Account,
    justified_tokens: Option<u64>,
    voucher: F,
) -> Result<Round, ChargeError>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<protocol::payout::ChargeVoucher, protocol::ApiError>>,
{
    let state = account
        .client_state()
        .await?
        .ok_or(AccountError::NotDeployed {
            addr: account.client_address(),
        })?;
    let price = account.proxy().params.price_per_token.nano();
    if let Some(justified) = justified_tokens {
        if state.tokens_used > justified {
            let over = state.tokens_used - justified;
            return Err(ChargeError::ChargedTooMuch {
                charged: state.tokens_used,
                justified,
                over,
                over_nano: u128::from(over) * price,
            });
        }
        let unpaid = u128::from(justified - state.tokens_used) * price;
        if unpaid <= state.stake / 2 {
            return Ok(Round::Idle);
        }
    }
    let v = match voucher().await {
        Ok(v) => v,
        Err(e) if e.kind == protocol::ErrorKind::NotFound => return Ok(Round::Idle),
        Err(e) => return Err(ChargeError::Invalid(format!("proxy: {e}"))),
    };
    match decide(account, &state, &v, justified_tokens, false)? {
        Decision::Submit { body, tokens, .. } => {
            let outcome = account.submit_charge(body).await?;
            let charged = outcome.client_state.map_or(0, |s| s.tokens_used);
            if charged < tokens {
                return Err(ChargeError::Invalid(format!(
                    "submitted a charge to {tokens} tokens, the contract shows {charged}"
                )));
            }
            Ok(Round::Submitted { tokens })
        }
        Decision::NothingDue { .. } | Decision::BelowHalfStake { .. } => Ok(Round::Idle),
    }
}
