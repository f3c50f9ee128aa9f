//! The transaction log: what each transaction received, computed and sent.

use tycho_types::cell::CellBuilder;
use tycho_types::models::{
    BouncePhase, ComputePhase, ComputePhaseSkipReason, Message, MsgInfo, Transaction, TxInfo,
};

use crate::chain::Status;
use crate::convert::{from_int, from_tycho};
use crate::error::{cell_err, SimError};
use ton::address::Addr;
use ton::cell::Cell;

/// The compute phase of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compute {
    /// Skipped (no state, bad state, no gas, suspended).
    Skipped(SkipReason),
    /// Ran the TVM.
    Executed {
        /// TVM exit code (0 and 1 are success).
        exit_code: i32,
        /// Whether the compute phase succeeded.
        success: bool,
        /// Gas used.
        gas_used: u64,
        /// Gas fees charged (nanotons).
        gas_fees: u128,
    },
}

/// Why a compute phase was skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// The account has no code and the message no (matching) state init.
    NoState,
    /// The state init did not match the address or was invalid.
    BadState,
    /// Not enough value for any gas.
    NoGas,
    /// The account is suspended.
    Suspended,
}

/// An inbound message as recorded.
#[derive(Debug, Clone)]
pub struct InMsg {
    /// `None` for an external message.
    pub src: Option<Addr>,
    /// Value in nanotons (0 for externals).
    pub value: u128,
    /// Bounce flag.
    pub bounce: bool,
    /// This is a bounced message.
    pub bounced: bool,
    /// Carried a state init.
    pub has_init: bool,
    /// The body.
    pub body: Cell,
}

/// An outbound message as recorded.
#[derive(Debug, Clone)]
pub struct OutMsg {
    /// Destination (`None` for external-out messages).
    pub dst: Option<Addr>,
    /// Value in nanotons.
    pub value: u128,
    /// Bounce flag.
    pub bounce: bool,
    /// This is a bounce of an inbound message.
    pub bounced: bool,
    /// Forwarding fee the message carries.
    pub fwd_fee: u128,
    /// Logical time of creation.
    pub created_lt: u64,
    /// The body.
    pub body: Cell,
}

/// One transaction.
#[derive(Debug, Clone)]
pub struct TxRecord {
    /// The account.
    pub account: Addr,
    /// Logical time.
    pub lt: u64,
    /// Unix time.
    pub now: u32,
    /// Inbound message (`None` only for tick-tock, which this chain never runs).
    pub in_msg: Option<InMsg>,
    /// Compute phase.
    pub compute: Compute,
    /// Action phase: `(success, result_code)`, if it ran.
    pub action: Option<(bool, i32)>,
    /// The transaction was aborted (its state changes, except fees, were rolled back).
    pub aborted: bool,
    /// The bounce phase produced a bounced message.
    pub bounced: bool,
    /// Account status after the transaction.
    pub end_status: Status,
    /// Account balance after the transaction (nanotons).
    pub balance_after: u128,
    /// Total fees collected from the account (nanotons).
    pub total_fees: u128,
    /// Outbound messages in creation order.
    pub out_msgs: Vec<OutMsg>,
    /// Representation hash of the transaction cell.
    pub hash: [u8; 32],
    /// The transaction, serialized as a BOC (what a TON API returns as `data`).
    pub boc: Vec<u8>,
}

impl TxRecord {
    /// Compute exit code, if the TVM ran.
    pub fn exit_code(&self) -> Option<i32> {
        match self.compute {
            Compute::Executed { exit_code, .. } => Some(exit_code),
            Compute::Skipped(_) => None,
        }
    }

    /// Not aborted, compute phase (if it ran) and action phase (if it ran) succeeded.
    pub fn success(&self) -> bool {
        let compute_ok = match self.compute {
            Compute::Executed { success, .. } => success,
            Compute::Skipped(_) => true,
        };
        !self.aborted && compute_ok && self.action.is_none_or(|(ok, _)| ok)
    }
}

fn body_cell(m: &Message<'_>) -> Result<Cell, SimError> {
    let mut b = CellBuilder::new();
    b.store_slice(m.body).map_err(cell_err("body"))?;
    from_tycho(&b.build().map_err(cell_err("body"))?)
}

impl InMsg {
    fn from_message(m: &Message<'_>) -> Result<InMsg, SimError> {
        let body = body_cell(m)?;
        let has_init = m.init.is_some();
        Ok(match &m.info {
            MsgInfo::Int(i) => InMsg {
                src: from_int(&i.src),
                value: i.value.tokens.into_inner(),
                bounce: i.bounce,
                bounced: i.bounced,
                has_init,
                body,
            },
            _ => InMsg {
                src: None,
                value: 0,
                bounce: false,
                bounced: false,
                has_init,
                body,
            },
        })
    }
}

impl OutMsg {
    pub(crate) fn from_message(m: &Message<'_>) -> Result<OutMsg, SimError> {
        let body = body_cell(m)?;
        Ok(match &m.info {
            MsgInfo::Int(i) => OutMsg {
                dst: from_int(&i.dst),
                value: i.value.tokens.into_inner(),
                bounce: i.bounce,
                bounced: i.bounced,
                fwd_fee: i.fwd_fee.into_inner(),
                created_lt: i.created_lt,
                body,
            },
            MsgInfo::ExtOut(e) => OutMsg {
                dst: None,
                value: 0,
                bounce: false,
                bounced: false,
                fwd_fee: 0,
                created_lt: e.created_lt,
                body,
            },
            MsgInfo::ExtIn(_) => OutMsg {
                dst: None,
                value: 0,
                bounce: false,
                bounced: false,
                fwd_fee: 0,
                created_lt: 0,
                body,
            },
        })
    }
}

pub(crate) fn record(
    tx: &Transaction,
    account: Addr,
    end_status: Status,
) -> Result<TxRecord, SimError> {
    let in_msg = match tx.load_in_msg().map_err(cell_err("in message"))? {
        Some(m) => Some(InMsg::from_message(&m)?),
        None => None,
    };
    let TxInfo::Ordinary(info) = tx.load_info().map_err(cell_err("tx info"))? else {
        return Err(SimError::Cell {
            what: "tx info",
            reason: "not an ordinary transaction".into(),
        });
    };
    let compute = match &info.compute_phase {
        ComputePhase::Skipped(s) => Compute::Skipped(match s.reason {
            ComputePhaseSkipReason::NoState => SkipReason::NoState,
            ComputePhaseSkipReason::BadState => SkipReason::BadState,
            ComputePhaseSkipReason::NoGas => SkipReason::NoGas,
            ComputePhaseSkipReason::Suspended => SkipReason::Suspended,
        }),
        ComputePhase::Executed(e) => Compute::Executed {
            exit_code: e.exit_code,
            success: e.success,
            gas_used: e.gas_used.into_inner(),
            gas_fees: e.gas_fees.into_inner(),
        },
    };
    Ok(TxRecord {
        account,
        lt: tx.lt,
        now: tx.now,
        in_msg,
        compute,
        action: info
            .action_phase
            .as_ref()
            .map(|a| (a.success, a.result_code)),
        aborted: info.aborted,
        bounced: matches!(info.bounce_phase, Some(BouncePhase::Executed(_))),
        end_status,
        balance_after: 0,
        total_fees: 0,
        out_msgs: Vec::new(),
        hash: [0; 32],
        boc: Vec::new(),
    })
}
