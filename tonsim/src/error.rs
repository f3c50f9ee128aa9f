//! Errors of the local chain.

use ton::address::Addr;

/// An error of the simulated chain (not a contract failure: those are recorded in the
/// transaction log with their exit codes).
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The blockchain config could not be loaded.
    #[error("config: {what}: {reason}")]
    Config {
        /// Which step.
        what: &'static str,
        /// Underlying error text.
        reason: String,
    },
    /// A cell could not be converted between the `ton` crate and tycho-types.
    #[error("cell conversion: {what}: {reason}")]
    Convert {
        /// Which value.
        what: &'static str,
        /// Underlying error text.
        reason: String,
    },
    /// A cell could not be built or read by tycho-types.
    #[error("tycho cell: {what}: {reason}")]
    Cell {
        /// Which value.
        what: &'static str,
        /// Underlying error text.
        reason: String,
    },
    /// The executor refused the message (TON would not include it in a block).
    #[error("message to {dst} skipped by the executor (not accepted, exit code {exit_code:?})")]
    Skipped {
        /// Destination account.
        dst: String,
        /// The compute phase's exit code when the contract ran and did not accept (an
        /// external that throws before `ACCEPT`, e.g. the wallet's 1035); `None` when it did
        /// not run.
        exit_code: Option<i32>,
    },
    /// The executor failed internally.
    #[error("executor failed for {dst}: {reason}")]
    Executor {
        /// Destination account.
        dst: String,
        /// Underlying error text.
        reason: String,
    },
    /// The message queue did not drain within the step limit.
    #[error("message queue still busy after {limit} transactions")]
    QueueLimit {
        /// The limit.
        limit: usize,
    },
    /// No such account (for reads and get-methods).
    #[error("account {0} not found or not active")]
    NoAccount(Addr),
    /// A get-method failed.
    #[error("get-method {method} on {addr}: exit code {exit_code}")]
    GetMethod {
        /// Account.
        addr: Addr,
        /// Method name.
        method: String,
        /// TVM exit code.
        exit_code: i32,
    },
    /// An amount does not fit the field.
    #[error("amount {0} out of range")]
    Amount(u128),
}

/// Maps a tycho-types error into [`SimError::Cell`].
#[cfg(feature = "local")]
pub(crate) fn cell_err(what: &'static str) -> impl Fn(tycho_types::error::Error) -> SimError {
    move |e| SimError::Cell {
        what,
        reason: e.to_string(),
    }
}
