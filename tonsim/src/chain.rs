//! The local chain: accounts, a logical-time-ordered message queue and a transaction log.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use tycho_executor::{Executor, ExecutorInspector, ParsedConfig, TxError};
use tycho_types::cell::{Cell as TCell, CellBuilder, CellFamily, HashBytes, Lazy};
use tycho_types::dict::Dict;
use tycho_types::models::{
    Account, AccountState, AccountStatus, CurrencyCollection, ExtInMsgInfo, IntAddr, IntMsgInfo,
    Message, MsgInfo, OptionalAccount, ShardAccount, StateInit as TStateInit, StorageInfo,
};
use tycho_types::num::Tokens;

use crate::config::{mainnet_config, ton_executor_params};
use crate::convert::{from_int, from_tycho, to_std, to_tycho};
use crate::error::{cell_err, SimError};
use crate::log::{OutMsg, TxRecord};
use ton::address::Addr;
use ton::cell::Cell;
use ton::contracts::StateInit;

/// At most this many transactions run for one delivered message (a loop guard).
pub const MAX_TRANSACTIONS_PER_DELIVERY: usize = 10_000;

/// Status of an account, as TON defines it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Never existed or deleted.
    NonExist,
    /// Has a balance but no code.
    Uninit,
    /// Has code and data.
    Active,
    /// Frozen for unpaid storage.
    Frozen,
}

/// A snapshot of one account.
#[derive(Debug, Clone)]
pub struct AccountInfo {
    /// The address.
    pub addr: Addr,
    /// Balance in nanotons (the executor's, after fees).
    pub balance: u128,
    /// Status.
    pub status: Status,
    /// Code, when active.
    pub code: Option<Cell>,
    /// Data, when active.
    pub data: Option<Cell>,
    /// The account's `last_trans_lt` (the end of its last transaction's logical-time range:
    /// the transaction's lt plus one per outbound message, plus one).
    pub last_trans_lt: u64,
    /// Logical time of the account's last transaction itself (0 if none; `ShardAccount`'s
    /// `last_trans_lt`, what TON APIs report as `last_transaction_id.lt`).
    pub last_tx_lt: u64,
    /// Representation hash of the account's last transaction (zero if none).
    pub last_tx_hash: [u8; 32],
}

/// An internal message put on the chain from outside (a "treasury" send: the sender's own
/// transaction and its fees are not simulated; the message arrives with `fwd_fee = 0`).
#[derive(Debug, Clone)]
pub struct Internal {
    /// Source address written into the message.
    pub src: Addr,
    /// Destination.
    pub dst: Addr,
    /// Value in nanotons.
    pub value: u128,
    /// Bounce flag.
    pub bounce: bool,
    /// Optional `StateInit` (deploy).
    pub init: Option<StateInit>,
    /// Body.
    pub body: Cell,
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Queued {
    created_lt: u64,
    seq: u64,
    dst: [u8; 32],
    wc: i8,
    msg: QueuedCell,
}

/// Message cell wrapper ordered only by queue position (see `Queued`).
#[derive(Debug)]
struct QueuedCell(TCell);

impl PartialEq for QueuedCell {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for QueuedCell {}
impl PartialOrd for QueuedCell {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for QueuedCell {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}

/// A single-workchain local chain running real contract code in tycho-executor under TON's
/// mainnet config.
#[derive(Debug)]
pub struct Chain {
    config: ParsedConfig,
    now: u32,
    lt: u64,
    seq: u64,
    accounts: BTreeMap<Addr, ShardAccount>,
    queue: BinaryHeap<Reverse<Queued>>,
    log: Vec<TxRecord>,
}

impl Chain {
    /// A new, empty chain at unix time `now`.
    pub fn new(now: u32) -> Result<Chain, SimError> {
        Ok(Chain {
            config: mainnet_config(now)?,
            now,
            lt: 1_000_000,
            seq: 0,
            accounts: BTreeMap::new(),
            queue: BinaryHeap::new(),
            log: Vec::new(),
        })
    }

    /// The current unix time of the chain.
    pub fn now(&self) -> u32 {
        self.now
    }

    /// Sets the chain's unix time (the `now` of subsequent transactions; storage fees accrue
    /// over the gap).
    pub fn set_now(&mut self, now: u32) -> Result<(), SimError> {
        self.config
            .update_storage_prices(now)
            .map_err(cell_err("storage prices"))?;
        self.now = now;
        Ok(())
    }

    /// The next logical time the chain will use.
    pub fn lt(&self) -> u64 {
        self.lt
    }

    /// Every transaction so far, in execution order.
    pub fn log(&self) -> &[TxRecord] {
        &self.log
    }

    /// Value that reached `account` in inbound messages recorded from log position `from` on
    /// (only from `src`, if given). What an account was paid, before its own fees.
    pub fn received(&self, account: &Addr, from: usize, src: Option<&Addr>) -> u128 {
        self.log
            .get(from..)
            .unwrap_or_default()
            .iter()
            .filter(|t| t.account == *account)
            .filter_map(|t| t.in_msg.as_ref())
            .filter(|m| src.is_none_or(|s| m.src.as_ref() == Some(s)))
            .map(|m| m.value)
            .sum()
    }

    /// Creates (or replaces) an always-accepting account: active, empty code (the TVM returns
    /// at once with exit code 0) and empty data, holding `balance` nanotons. Stands in for
    /// the sandbox's treasury wallets, so that messages to it are credited, not bounced.
    pub fn add_treasury(&mut self, addr: Addr, balance: u128) -> Result<(), SimError> {
        let tokens = tokens(balance)?;
        let account = Account {
            address: IntAddr::Std(to_std(&addr)),
            storage_stat: StorageInfo {
                last_paid: self.now,
                ..Default::default()
            },
            last_trans_lt: 0,
            balance: CurrencyCollection::new(tokens.into_inner()),
            state: AccountState::Active(TStateInit {
                split_depth: None,
                special: None,
                code: Some(TCell::empty_cell()),
                data: Some(TCell::empty_cell()),
                libraries: Dict::new(),
            }),
        };
        let shard = ShardAccount {
            account: Lazy::new(&OptionalAccount(Some(account))).map_err(cell_err("account"))?,
            last_trans_hash: HashBytes::ZERO,
            last_trans_lt: 0,
        };
        self.accounts.insert(addr, shard);
        Ok(())
    }

    /// A snapshot of `addr`, or `None` if it does not exist.
    pub fn account(&self, addr: &Addr) -> Result<Option<AccountInfo>, SimError> {
        let Some(shard) = self.accounts.get(addr) else {
            return Ok(None);
        };
        let Some(acc) = shard.load_account().map_err(cell_err("account"))? else {
            return Ok(None);
        };
        let (status, code, data) = match &acc.state {
            AccountState::Uninit => (Status::Uninit, None, None),
            AccountState::Frozen(_) => (Status::Frozen, None, None),
            AccountState::Active(init) => (
                Status::Active,
                init.code.as_ref().map(from_tycho).transpose()?,
                init.data.as_ref().map(from_tycho).transpose()?,
            ),
        };
        Ok(Some(AccountInfo {
            addr: *addr,
            balance: acc.balance.tokens.into_inner(),
            status,
            code,
            data,
            last_trans_lt: acc.last_trans_lt,
            last_tx_lt: shard.last_trans_lt,
            last_tx_hash: shard.last_trans_hash.0,
        }))
    }

    pub(crate) fn raw_account(&self, addr: &Addr) -> Result<Option<Account>, SimError> {
        match self.accounts.get(addr) {
            Some(shard) => shard.load_account().map_err(cell_err("account")),
            None => Ok(None),
        }
    }

    pub(crate) fn config_params(&self) -> tycho_types::models::BlockchainConfigParams {
        self.config.raw.params.clone()
    }

    /// Balance of `addr` in nanotons (0 if it does not exist).
    pub fn balance(&self, addr: &Addr) -> Result<u128, SimError> {
        Ok(self.account(addr)?.map_or(0, |a| a.balance))
    }

    /// Data cell of an active account.
    pub fn data(&self, addr: &Addr) -> Result<Cell, SimError> {
        self.account(addr)?
            .and_then(|a| a.data)
            .ok_or(SimError::NoAccount(*addr))
    }

    /// Delivers an internal message from outside, then every message it causes, in logical-time
    /// order. Returns the records of all transactions that ran.
    pub fn send_internal(&mut self, m: &Internal) -> Result<Vec<TxRecord>, SimError> {
        let body = to_tycho(&m.body)?;
        let init = m.init.as_ref().map(tycho_state_init).transpose()?;
        let created_lt = self.take_lt();
        let msg = Message {
            info: MsgInfo::Int(IntMsgInfo {
                ihr_disabled: true,
                bounce: m.bounce,
                bounced: false,
                src: IntAddr::Std(to_std(&m.src)),
                dst: IntAddr::Std(to_std(&m.dst)),
                value: CurrencyCollection::new(tokens(m.value)?.into_inner()),
                fwd_fee: Tokens::ZERO,
                created_lt,
                created_at: self.now,
                ..Default::default()
            }),
            init,
            body: body.as_slice().map_err(cell_err("body"))?,
            layout: None,
        };
        let cell = CellBuilder::build_from(msg).map_err(cell_err("message"))?;
        let start = self.log.len();
        self.push(created_lt, m.dst, cell);
        self.drain()?;
        Ok(self.log[start..].to_vec())
    }

    /// Delivers an inbound external message (`init` deploys, as wallets do on their first
    /// message), then every message it causes. An external the contract does not accept
    /// (no `ACCEPT`, or an exception before it) is not included: [`SimError::Skipped`].
    pub fn send_external(
        &mut self,
        dst: Addr,
        init: Option<&StateInit>,
        body: &Cell,
    ) -> Result<Vec<TxRecord>, SimError> {
        let cell = external_cell(dst, init, body)?;
        let start = self.log.len();
        self.execute(dst, true, cell)?;
        self.drain()?;
        Ok(self.log[start..].to_vec())
    }

    /// Delivers a serialized inbound external message (`ext_in_msg_info`, as a client would
    /// hand it to `sendBoc`), then every message it causes. Fails with [`SimError::Convert`]
    /// for bytes that are not a BOC of an external message to a standard address, and with
    /// [`SimError::Skipped`] when the contract does not accept it.
    pub fn send_external_boc(&mut self, boc: &[u8]) -> Result<Vec<TxRecord>, SimError> {
        let bad = |reason: String| SimError::Convert {
            what: "external message",
            reason,
        };
        let cell = tycho_types::boc::Boc::decode(boc).map_err(|e| bad(e.to_string()))?;
        let dst = {
            let msg: Message<'_> = cell.parse().map_err(|e| bad(e.to_string()))?;
            match &msg.info {
                MsgInfo::ExtIn(info) => {
                    from_int(&info.dst).ok_or_else(|| bad("addr_var".into()))?
                }
                _ => return Err(bad("not an inbound external message".into())),
            }
        };
        let start = self.log.len();
        self.execute(dst, true, cell)?;
        self.drain()?;
        Ok(self.log[start..].to_vec())
    }

    fn take_lt(&mut self) -> u64 {
        let lt = self.lt;
        self.lt += 1;
        lt
    }

    fn push(&mut self, created_lt: u64, dst: Addr, msg: TCell) {
        self.seq += 1;
        self.queue.push(Reverse(Queued {
            created_lt,
            seq: self.seq,
            dst: dst.hash,
            wc: dst.workchain,
            msg: QueuedCell(msg),
        }));
    }

    fn drain(&mut self) -> Result<(), SimError> {
        let mut steps = 0;
        while let Some(Reverse(q)) = self.queue.pop() {
            steps += 1;
            if steps > MAX_TRANSACTIONS_PER_DELIVERY {
                return Err(SimError::QueueLimit {
                    limit: MAX_TRANSACTIONS_PER_DELIVERY,
                });
            }
            let dst = Addr {
                workchain: q.wc,
                hash: q.dst,
            };
            match self.execute(dst, false, q.msg.0) {
                // An internal message the executor skips is dropped, as a validator would.
                Err(SimError::Skipped { .. }) => {}
                other => other?,
            }
        }
        Ok(())
    }

    fn execute(&mut self, dst: Addr, external: bool, msg: TCell) -> Result<(), SimError> {
        let state = match self.accounts.get(&dst) {
            Some(s) => s.clone(),
            None => ShardAccount {
                account: Lazy::new(&OptionalAccount::EMPTY).map_err(cell_err("account"))?,
                last_trans_hash: HashBytes::ZERO,
                last_trans_lt: 0,
            },
        };
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&self.lt.to_be_bytes());
        seed[8..12].copy_from_slice(&self.now.to_be_bytes());
        let params = ton_executor_params(self.now, self.lt, seed);
        let fail = |reason: String| SimError::Executor {
            dst: dst.to_string(),
            reason,
        };
        let mut inspector = ExecutorInspector::default();
        let out = match Executor::new(&params, &self.config)
            .with_min_lt(self.lt)
            .begin_ordinary_ext(&to_std(&dst), external, msg, &state, Some(&mut inspector))
        {
            Ok(tx) => tx.commit().map_err(|e| fail(format!("{e:#}")))?,
            Err(TxError::Skipped) => {
                return Err(SimError::Skipped {
                    dst: dst.to_string(),
                    exit_code: inspector.exit_code,
                });
            }
            Err(TxError::Fatal(e)) => return Err(fail(format!("{e:#}"))),
        };
        self.lt = self.lt.max(out.transaction_meta.next_lt) + 1;
        let tx = out.transaction.load().map_err(cell_err("transaction"))?;
        let status = match tx.end_status {
            AccountStatus::NotExists => Status::NonExist,
            AccountStatus::Uninit => Status::Uninit,
            AccountStatus::Active => Status::Active,
            AccountStatus::Frozen => Status::Frozen,
        };
        let mut record = crate::log::record(&tx, dst, status)?;
        record.hash = out.transaction.inner().repr_hash().0;
        record.boc = tycho_types::boc::Boc::encode(out.transaction.inner().as_ref());
        record.balance_after = out.new_state_meta.balance.tokens.into_inner();
        record.total_fees = out.transaction_meta.total_fees.into_inner();
        self.accounts.insert(dst, out.new_state);
        let mut outs = Vec::new();
        for lazy in &out.transaction_meta.out_msgs {
            let cell = lazy.inner().clone();
            let m: Message<'_> = cell.parse().map_err(cell_err("out message"))?;
            let parsed = OutMsg::from_message(&m)?;
            if let MsgInfo::Int(info) = &m.info {
                if let Some(to) = from_int(&info.dst) {
                    outs.push((info.created_lt, to, cell.clone()));
                }
            }
            record.out_msgs.push(parsed);
        }
        for (created_lt, to, cell) in outs {
            self.push(created_lt, to, cell);
        }
        self.log.push(record);
        Ok(())
    }
}

/// The cell of an inbound external message to `dst` (`ext_in_msg_info`, no source, zero
/// import fee; `init` and `body` as the executor expects them). Its BOC is what a client sends.
pub fn external_cell(dst: Addr, init: Option<&StateInit>, body: &Cell) -> Result<TCell, SimError> {
    let body = to_tycho(body)?;
    let init = init.map(tycho_state_init).transpose()?;
    let msg = Message {
        info: MsgInfo::ExtIn(ExtInMsgInfo {
            src: None,
            dst: IntAddr::Std(to_std(&dst)),
            import_fee: Tokens::ZERO,
        }),
        init,
        body: body.as_slice().map_err(cell_err("body"))?,
        layout: None,
    };
    CellBuilder::build_from(msg).map_err(cell_err("message"))
}

/// The `StateInit` as tycho-types sees it (code and data refs, nothing else).
pub fn tycho_state_init(init: &StateInit) -> Result<TStateInit, SimError> {
    Ok(TStateInit {
        split_depth: None,
        special: None,
        code: Some(to_tycho(&init.code)?),
        data: Some(to_tycho(&init.data)?),
        libraries: Dict::new(),
    })
}

/// The address tycho-types derives for `init` (basechain, `repr_hash` of its `StateInit` cell).
pub fn tycho_address(init: &StateInit) -> Result<Addr, SimError> {
    let cell = CellBuilder::build_from(tycho_state_init(init)?).map_err(cell_err("state init"))?;
    Ok(Addr::basechain(cell.repr_hash().0))
}

fn tokens(nano: u128) -> Result<Tokens, SimError> {
    let t = Tokens::new(nano);
    if t.is_valid() {
        Ok(t)
    } else {
        Err(SimError::Amount(nano))
    }
}
