//! [`TonChain`]: the narrow I/O interface cocoon needs from a TON chain (send an external, read
//! an account, run a get-method, list transactions, read the chain's time), with two
//! implementations: [`crate::local::LocalChain`] over the local [`crate::Chain`] and
//! [`crate::http_client::HttpChain`] over a toncenter-style TON HTTP API (v2).
//!
//! Values cross the trait in chain form: cells as `ton` cells (decoded from BOC), messages and
//! transactions as BOC bytes, so both implementations must agree to the byte. A transaction is
//! described by parsing its own BOC ([`ChainTx::from_boc`]) in both implementations, never by
//! the JSON fields a server adds around it.

use async_trait::async_trait;

use ton::address::Addr;
use ton::cell::Cell;
use ton::transaction::Transaction;

pub use crate::chain_config::{ApiKey, ChainConfig, MAINNET_URL, TESTNET_URL};

/// An error of a [`TonChain`]. HTTP errors name the API endpoint (`getAddressInformation`, …).
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// The server could not be reached (connect, write or read failed, or timed out).
    #[error("{endpoint}: cannot reach {url}: {reason}")]
    Unreachable {
        /// API endpoint.
        endpoint: &'static str,
        /// Base URL.
        url: String,
        /// Underlying error text.
        reason: String,
    },
    /// The response was not the expected JSON.
    #[error("{endpoint}: malformed response: {reason}")]
    Malformed {
        /// API endpoint.
        endpoint: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// The API answered `{"ok": false}` (or a non-success HTTP status without a JSON error).
    #[error("{endpoint}: api error {code}: {message}")]
    Api {
        /// API endpoint.
        endpoint: &'static str,
        /// The `code` field, else the HTTP status.
        code: i64,
        /// The `error` field.
        message: String,
    },
    /// The chain did not accept an external message (the contract did not `ACCEPT` it).
    #[error("external message rejected: {reason}")]
    Rejected {
        /// Why, as the chain reports it.
        reason: String,
    },
    /// A get-method ended with an exit code other than 0 or 1.
    #[error("get-method {method} on {addr}: exit code {exit_code}")]
    GetMethod {
        /// Account.
        addr: Addr,
        /// Method name.
        method: String,
        /// TVM exit code.
        exit_code: i32,
    },
    /// An argument or configuration value is invalid (bad message BOC, unsupported URL).
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// Which value.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// The local chain failed (not a contract failure).
    #[error("local chain: {0}")]
    Local(crate::error::SimError),
    /// The local chain's thread is gone (it panicked, or its setup failed).
    #[error("local chain thread stopped")]
    LocalStopped,
}

/// Account status as TON APIs report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountStatus {
    /// No account (no balance, never had a transaction).
    NonExist,
    /// A balance but no code.
    Uninit,
    /// Code and data.
    Active,
    /// Frozen for unpaid storage.
    Frozen,
}

/// A transaction's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxId {
    /// Logical time.
    pub lt: u64,
    /// Representation hash of the transaction cell.
    pub hash: [u8; 32],
}

/// An account as read from the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountState {
    /// Balance in nanotons.
    pub balance: u128,
    /// Status.
    pub status: AccountStatus,
    /// Code, when active.
    pub code: Option<Cell>,
    /// Data, when active.
    pub data: Option<Cell>,
    /// The account's last transaction, if any.
    pub last_tx: Option<TxId>,
}

/// A get-method stack entry. Slices come back as cells (toncenter renders both as `"cell"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StackValue {
    /// `null`.
    Null,
    /// An integer in decimal (TVM integers have 257 bits).
    Int(String),
    /// A cell (or a slice, as the cell of its remaining bits and refs).
    Cell(Cell),
    /// A tuple.
    Tuple(Vec<StackValue>),
    /// Anything else (builder, continuation), with its type name.
    Unsupported(String),
}

impl StackValue {
    /// The integer, if it fits `i128`.
    pub fn int(&self) -> Option<i128> {
        match self {
            StackValue::Int(s) => s.parse().ok(),
            _ => None,
        }
    }

    /// A cell holding exactly one standard address.
    pub fn addr(&self) -> Option<Addr> {
        match self {
            StackValue::Cell(c) => {
                let mut s = c.parse();
                let a = s.load_addr().ok()?;
                s.ensure_empty().ok()?;
                Some(a)
            }
            _ => None,
        }
    }
}

/// A client contract's state as its `get_cocoon_client_data` get-method returns it (the first
/// nine stack entries: owner, proxy contract, proxy public key, state, balance, stake, tokens
/// used, unlock time, secret hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientState {
    pub owner: Addr,
    pub proxy: Addr,
    /// The proxy's Ed25519 key (Kp) the contract checks vouchers against.
    pub proxy_public_key: [u8; 32],
    /// 0 open, 1 closing, 2 closed.
    pub state: u8,
    /// Nanotons the client has on the contract.
    pub balance: u128,
    /// Nanotons of stake.
    pub stake: u128,
    /// The highest charged cumulative token count.
    pub tokens_used: u64,
    /// While closing: the unix time after which the owner may force the refund.
    pub unlock_ts: u32,
    /// The secret hash the owner set (cocoon: the account binding hash,
    /// `ton::contracts::account_binding_hash`); `None` if the API left it out.
    pub secret_hash: Option<[u8; 32]>,
}

impl ClientState {
    /// The get-method this decodes.
    pub const GET_METHOD: &'static str = "get_cocoon_client_data";

    /// Decodes the stack (bottom first) of [`ClientState::GET_METHOD`].
    pub fn from_stack(stack: &[StackValue]) -> Result<Self, ChainError> {
        let bad = |what: &str| ChainError::Malformed {
            endpoint: Self::GET_METHOD,
            reason: format!("stack entry {what} missing or of the wrong type"),
        };
        let int = |i: usize, what: &str| {
            stack
                .get(i)
                .and_then(StackValue::int)
                .ok_or_else(|| bad(what))
        };
        let addr = |i: usize, what: &str| {
            stack
                .get(i)
                .and_then(StackValue::addr)
                .ok_or_else(|| bad(what))
        };
        let key = match stack.get(2) {
            Some(StackValue::Int(s)) => decimal_to_u256(s).ok_or_else(|| bad("2 (proxy key)"))?,
            _ => return Err(bad("2 (proxy key)")),
        };
        let state = u8::try_from(int(3, "3 (state)")?).map_err(|_| bad("3 (state)"))?;
        let balance = u128::try_from(int(4, "4 (balance)")?).map_err(|_| bad("4 (balance)"))?;
        let stake = u128::try_from(int(5, "5 (stake)")?).map_err(|_| bad("5 (stake)"))?;
        let tokens_used =
            u64::try_from(int(6, "6 (tokens used)")?).map_err(|_| bad("6 (tokens used)"))?;
        let unlock_ts =
            u32::try_from(int(7, "7 (unlock time)")?).map_err(|_| bad("7 (unlock time)"))?;
        let secret_hash = match stack.get(8) {
            None => None,
            Some(StackValue::Int(s)) => {
                Some(decimal_to_u256(s).ok_or_else(|| bad("8 (secret hash)"))?)
            }
            Some(_) => return Err(bad("8 (secret hash)")),
        };
        Ok(Self {
            owner: addr(0, "0 (owner)")?,
            proxy: addr(1, "1 (proxy)")?,
            proxy_public_key: key,
            state,
            balance,
            stake,
            tokens_used,
            unlock_ts,
            secret_hash,
        })
    }
}

/// A non-negative decimal integer below 2^256 as 32 big-endian bytes.
fn decimal_to_u256(s: &str) -> Option<[u8; 32]> {
    if s.is_empty() || s.len() > 78 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut out = [0u8; 32];
    for d in s.bytes() {
        let mut carry = u32::from(d - b'0');
        for byte in out.iter_mut().rev() {
            let v = u32::from(*byte) * 10 + carry;
            *byte = (v & 0xff) as u8;
            carry = v >> 8;
        }
        if carry != 0 {
            return None;
        }
    }
    Some(out)
}

/// One transaction, as its BOC describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainTx {
    /// Identity.
    pub id: TxId,
    /// The account's previous transaction (`None` for its first).
    pub prev: Option<TxId>,
    /// Unix time.
    pub utime: u32,
    /// Total fees (nanotons).
    pub fee: u128,
    /// Inbound message (BOC of the whole message).
    pub in_msg: Option<Vec<u8>>,
    /// Compute exit code, if the TVM ran.
    pub exit_code: Option<i32>,
    /// Not aborted, compute and action phases (where they ran) succeeded.
    pub success: bool,
    /// The transaction was aborted.
    pub aborted: bool,
    /// Outbound messages (BOC of each whole message), in creation order.
    pub out_msgs: Vec<Vec<u8>>,
    /// The transaction itself (BOC).
    pub boc: Vec<u8>,
}

impl ChainTx {
    /// Parses a transaction BOC (untrusted bytes: errors, never panics), with the `ton` crate's
    /// own parser ([`ton::transaction::Transaction`]; no TVM library needed).
    pub fn from_boc(boc: &[u8]) -> Result<ChainTx, String> {
        let cell = ton::boc::decode(boc).map_err(|e| format!("transaction boc: {e}"))?;
        let tx = Transaction::parse(&cell).map_err(|e| format!("transaction: {e}"))?;
        Ok(ChainTx {
            id: TxId {
                lt: tx.lt,
                hash: cell.hash(),
            },
            prev: (tx.prev_lt != 0).then_some(TxId {
                lt: tx.prev_lt,
                hash: tx.prev_hash,
            }),
            utime: tx.now,
            fee: tx.total_fees.nano(),
            in_msg: tx.in_msg.as_ref().map(ton::boc::encode),
            exit_code: tx.exit_code(),
            success: tx.success(),
            aborted: tx.aborted,
            out_msgs: tx.out_msgs.iter().map(ton::boc::encode).collect(),
            boc: boc.to_vec(),
        })
    }
}

/// What cocoon needs from a TON chain. Implementations never panic on bad responses.
#[async_trait]
pub trait TonChain: Send + Sync + std::fmt::Debug {
    /// Sends an inbound external message (BOC of the whole message, see [`external_boc`]).
    /// The local chain processes it and everything it causes before returning; a real network
    /// only queues it.
    async fn send_message(&self, boc: &[u8]) -> Result<(), ChainError>;

    /// Reads an account (a missing account is [`AccountStatus::NonExist`], not an error).
    async fn account(&self, addr: &Addr) -> Result<AccountState, ChainError>;

    /// Runs get-method `method` with no arguments; returns the stack, bottom first.
    async fn run_get_method(
        &self,
        addr: &Addr,
        method: &str,
    ) -> Result<Vec<StackValue>, ChainError>;

    /// The account's transactions with logical time above `since_lt`, most recent first, at
    /// most `limit` of them.
    async fn transactions(
        &self,
        addr: &Addr,
        since_lt: u64,
        limit: usize,
    ) -> Result<Vec<ChainTx>, ChainError>;

    /// The chain's current unix time.
    async fn now(&self) -> Result<u32, ChainError>;
}

/// The BOC of an inbound external message to `dst` (what [`TonChain::send_message`] takes).
pub fn external_boc(
    dst: Addr,
    init: Option<&ton::contracts::StateInit>,
    body: &Cell,
) -> Result<Vec<u8>, ChainError> {
    let cell = ton::transaction::external_in(dst, init, body).map_err(|e| ChainError::Invalid {
        what: "external message",
        reason: e.to_string(),
    })?;
    Ok(ton::boc::encode(&cell))
}

/// Decimal text of a toncenter integer (`"0x1a"`, `"-0x1a"`); `None` if it is not one.
pub fn int_from_hex(text: &str) -> Option<String> {
    let (neg, rest) = match text.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, text),
    };
    let digits = rest
        .strip_prefix("0x")
        .or_else(|| rest.strip_prefix("0X"))?;
    let dec = format_mag(parse_mag(digits, 16)?, 10);
    Some(if neg && dec != "0" {
        format!("-{dec}")
    } else {
        dec
    })
}

/// toncenter's hex form (`"0x1a"`, `"-0x1a"`) of a decimal integer; `None` if it is not one.
pub fn int_to_hex(text: &str) -> Option<String> {
    let (neg, digits) = match text.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, text),
    };
    let hex = format_mag(parse_mag(digits, 10)?, 16);
    Some(if neg && hex != "0" {
        format!("-0x{hex}")
    } else {
        format!("0x{hex}")
    })
}

/// Longest digit string accepted (a 257-bit integer has 78 decimal digits).
const MAX_DIGITS: usize = 100;

fn parse_mag(digits: &str, radix: u32) -> Option<Vec<u32>> {
    if digits.is_empty() || digits.len() > MAX_DIGITS {
        return None;
    }
    let mut limbs: Vec<u32> = Vec::new();
    for ch in digits.chars() {
        let mut carry = u64::from(ch.to_digit(radix)?);
        for l in limbs.iter_mut() {
            let v = u64::from(*l) * u64::from(radix) + carry;
            *l = v as u32;
            carry = v >> 32;
        }
        if carry > 0 {
            limbs.push(carry as u32);
        }
    }
    Some(limbs)
}

fn format_mag(mut limbs: Vec<u32>, radix: u32) -> String {
    let mut out = Vec::new();
    while limbs.iter().any(|&l| l != 0) {
        let mut rem = 0u64;
        for l in limbs.iter_mut().rev() {
            let v = (rem << 32) | u64::from(*l);
            *l = (v / u64::from(radix)) as u32;
            rem = v % u64::from(radix);
        }
        out.push(char::from_digit(rem as u32, radix).unwrap_or('?'));
    }
    if out.is_empty() {
        "0".into()
    } else {
        out.iter().rev().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_keys_and_client_state_errors() {
        assert_eq!(decimal_to_u256("0"), Some([0; 32]));
        let mut one = [0; 32];
        one[31] = 1;
        assert_eq!(decimal_to_u256("1"), Some(one));
        let max = "115792089237316195423570985008687907853269984665640564039457584007913129639935";
        assert_eq!(decimal_to_u256(max), Some([0xff; 32]));
        let over = "115792089237316195423570985008687907853269984665640564039457584007913129639936";
        assert_eq!(decimal_to_u256(over), None);
        assert_eq!(decimal_to_u256("-1"), None);
        assert_eq!(decimal_to_u256(""), None);
        let err = ClientState::from_stack(&[StackValue::Null]).unwrap_err();
        assert!(err.to_string().contains("get_cocoon_client_data"), "{err}");
    }

    #[test]
    fn ints_round_trip() {
        for (dec, hex) in [
            ("0", "0x0"),
            ("26", "0x1a"),
            ("-26", "-0x1a"),
            ("4900000000", "0x124101100"),
            (
                "115792089237316195423570985008687907853269984665640564039457584007913129639935",
                "0xffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
            ),
        ] {
            assert_eq!(int_to_hex(dec).as_deref(), Some(hex));
            assert_eq!(int_from_hex(hex).as_deref(), Some(dec));
        }
        assert_eq!(int_from_hex("0X1A").as_deref(), Some("26"));
        for bad in ["", "0x", "1a", "0xg", "-", "0x-1"] {
            assert_eq!(int_from_hex(bad), None, "{bad}");
        }
        assert_eq!(int_to_hex(&"9".repeat(101)), None);
        assert_eq!(int_from_hex("-0x0").as_deref(), Some("0"));
    }

    #[test]
    fn bad_transaction_bytes_are_errors() {
        assert!(ChainTx::from_boc(b"").is_err());
        assert!(ChainTx::from_boc(&[0xb5, 0xee, 0x9c, 0x72, 1, 2, 3]).is_err());
        let empty = ton::boc::encode(&Cell::empty());
        assert!(ChainTx::from_boc(&empty).is_err());
    }
}
