//! Message bodies the proxy, worker and client build, send or must verify.

pub mod notify;
pub mod signed;
pub mod unsigned;
pub mod wallet;

use crate::cell::CellError;

/// An error in a message body. Every variant names the field or value at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// A field could not be read or written.
    #[error("field {field}: {source}")]
    Field {
        field: &'static str,
        source: CellError,
    },
    /// An opcode this layout does not know.
    #[error("field {field}: unknown op {op:#010x}")]
    UnknownOp { field: &'static str, op: u32 },
    /// Envelope and signed payload disagree.
    #[error("{field} mismatch: envelope {envelope:#x}, payload {payload:#x}")]
    Mismatch {
        field: &'static str,
        envelope: u64,
        payload: u64,
    },
    /// The token counter is present/absent against the op's layout.
    #[error("op {op:#010x}: tokens field must be {}", if *expected { "present" } else { "absent" })]
    TokensPresence { op: u32, expected: bool },
    /// Not a valid Ed25519 public key.
    #[error("public key: not a valid ed25519 point")]
    BadPublicKey,
    /// Signature does not verify.
    #[error("signature: does not verify with the given public key")]
    BadSignature,
    /// The signed payload names another contract.
    #[error("expected_my_address: expected {expected}, got {got}")]
    WrongAddress { expected: String, got: String },
    /// A value outside its allowed range.
    #[error("field {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    /// Wallet message past its validity.
    #[error("valid_until {valid_until} is not after now {now}")]
    Expired { valid_until: u32, now: u32 },
}

/// Maps a cell error to [`MessageError::Field`] for `field`.
pub(crate) fn fld(field: &'static str) -> impl Fn(CellError) -> MessageError {
    move |source| MessageError::Field { field, source }
}
