//! [`LocalChain`]: [`TonChain`] over the local [`Chain`]. An external message is delivered and
//! processed to completion (every internal message it causes) before `send_message` returns.
//!
//! tycho-types' cells are reference-counted with `Rc` (its `sync` feature, which would make
//! them `Arc`, pulls in a crate not in the lock file), so a [`Chain`] is neither `Send` nor
//! `Sync` and cannot sit in an `Arc<Mutex<_>>` shared with async tasks. [`LocalChain`] instead
//! owns the chain on a dedicated thread and sends it jobs; it is a cheap, cloneable handle, and
//! the thread ends when the last handle is dropped.

use std::sync::mpsc;

use async_trait::async_trait;

use crate::chain::{Chain, Status};
use crate::error::SimError;
use crate::getter::GetValue;
use crate::tonchain::{
    AccountState, AccountStatus, ChainError, ChainTx, StackValue, TonChain, TxId,
};
use ton::address::Addr;

type Job = Box<dyn FnOnce(&mut Chain) + Send>;

/// A handle to a local chain running on its own thread, behind the [`TonChain`] interface.
#[derive(Debug, Clone)]
pub struct LocalChain {
    jobs: mpsc::Sender<Job>,
}

impl LocalChain {
    /// Starts the chain thread with the chain `make` builds there (setup — deploys, treasury
    /// sends — can happen inside `make`, or later through [`LocalChain::with`]).
    pub fn spawn<F>(make: F) -> Result<LocalChain, ChainError>
    where
        F: FnOnce() -> Result<Chain, SimError> + Send + 'static,
    {
        let (jobs, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), SimError>>();
        std::thread::Builder::new()
            .name("tonsim-chain".into())
            .spawn(move || {
                let mut chain = match make() {
                    Ok(c) => {
                        let _ = ready_tx.send(Ok(()));
                        c
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                while let Ok(job) = rx.recv() {
                    job(&mut chain);
                }
            })
            .map_err(|e| ChainError::Invalid {
                what: "chain thread",
                reason: e.to_string(),
            })?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(LocalChain { jobs }),
            Ok(Err(e)) => Err(ChainError::Local(e)),
            Err(_) => Err(ChainError::LocalStopped),
        }
    }

    /// Runs `f` on the chain and waits for its result (blocking: for setup and tests, not
    /// inside async code).
    pub fn with<R, F>(&self, f: F) -> Result<R, ChainError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Chain) -> R + Send + 'static,
    {
        let (tx, rx) = mpsc::channel();
        self.jobs
            .send(Box::new(move |c: &mut Chain| {
                let _ = tx.send(f(c));
            }))
            .map_err(|_| ChainError::LocalStopped)?;
        rx.recv().map_err(|_| ChainError::LocalStopped)
    }

    /// Runs `f` on the chain; the task waits without blocking its executor.
    pub async fn run<R, F>(&self, f: F) -> Result<R, ChainError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Chain) -> R + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Box::new(move |c: &mut Chain| {
                let _ = tx.send(f(c));
            }))
            .map_err(|_| ChainError::LocalStopped)?;
        rx.await.map_err(|_| ChainError::LocalStopped)
    }

    /// The account's transactions, most recent first, starting at `start` (inclusive; the
    /// newest if `None`), at most `limit` — the paging of toncenter's `getTransactions`.
    pub async fn history(
        &self,
        addr: &Addr,
        start: Option<TxId>,
        limit: usize,
    ) -> Result<Vec<ChainTx>, ChainError> {
        let addr = *addr;
        self.run(move |chain| history(chain, &addr, start, limit))
            .await?
    }

    /// [`TonChain::run_get_method`], with a failed method as `Ok(Err(exit_code))`.
    pub async fn get_method(
        &self,
        addr: &Addr,
        method: &str,
    ) -> Result<Result<Vec<StackValue>, i32>, ChainError> {
        let (addr, method) = (*addr, method.to_string());
        match self.run(move |c| c.run_get_method(&addr, &method)).await? {
            Ok(stack) => Ok(Ok(stack.iter().map(stack_value).collect())),
            Err(SimError::GetMethod { exit_code, .. }) => Ok(Err(exit_code)),
            Err(e) => Err(ChainError::Local(e)),
        }
    }
}

fn history(
    chain: &Chain,
    addr: &Addr,
    start: Option<TxId>,
    limit: usize,
) -> Result<Vec<ChainTx>, ChainError> {
    let mut out = Vec::new();
    let mut started = start.is_none();
    for t in chain.log().iter().rev().filter(|t| t.account == *addr) {
        if !started {
            match start {
                Some(s) if s.lt == t.lt && s.hash == t.hash => started = true,
                _ => continue,
            }
        }
        if out.len() >= limit {
            break;
        }
        out.push(ChainTx::from_boc(&t.boc).map_err(|reason| {
            ChainError::Local(SimError::Convert {
                what: "transaction",
                reason,
            })
        })?);
    }
    Ok(out)
}

fn account_state(chain: &Chain, addr: &Addr) -> Result<AccountState, ChainError> {
    let Some(a) = chain.account(addr).map_err(ChainError::Local)? else {
        return Ok(AccountState {
            balance: 0,
            status: AccountStatus::NonExist,
            code: None,
            data: None,
            last_tx: None,
        });
    };
    Ok(AccountState {
        balance: a.balance,
        status: match a.status {
            Status::NonExist => AccountStatus::NonExist,
            Status::Uninit => AccountStatus::Uninit,
            Status::Active => AccountStatus::Active,
            Status::Frozen => AccountStatus::Frozen,
        },
        code: a.code,
        data: a.data,
        last_tx: (a.last_tx_lt != 0).then_some(TxId {
            lt: a.last_tx_lt,
            hash: a.last_tx_hash,
        }),
    })
}

fn stack_value(v: &GetValue) -> StackValue {
    match v {
        GetValue::Null => StackValue::Null,
        GetValue::Int(s) => StackValue::Int(s.clone()),
        GetValue::Cell(c) | GetValue::Slice(c) => StackValue::Cell(c.clone()),
        GetValue::Tuple(t) => StackValue::Tuple(t.iter().map(stack_value).collect()),
        GetValue::Other => StackValue::Unsupported("other".into()),
    }
}

#[async_trait]
impl TonChain for LocalChain {
    async fn send_message(&self, boc: &[u8]) -> Result<(), ChainError> {
        let boc = boc.to_vec();
        match self
            .run(move |c| c.send_external_boc(&boc).map(|_| ()))
            .await?
        {
            Ok(()) => Ok(()),
            Err(SimError::Skipped { dst, .. }) => Err(ChainError::Rejected {
                reason: format!("external message to {dst} was not accepted"),
            }),
            Err(SimError::Convert { reason, .. }) => Err(ChainError::Invalid {
                what: "external message",
                reason,
            }),
            Err(e) => Err(ChainError::Local(e)),
        }
    }

    async fn account(&self, addr: &Addr) -> Result<AccountState, ChainError> {
        let addr = *addr;
        self.run(move |c| account_state(c, &addr)).await?
    }

    async fn run_get_method(
        &self,
        addr: &Addr,
        method: &str,
    ) -> Result<Vec<StackValue>, ChainError> {
        self.get_method(addr, method)
            .await?
            .map_err(|exit_code| ChainError::GetMethod {
                addr: *addr,
                method: method.to_string(),
                exit_code,
            })
    }

    async fn transactions(
        &self,
        addr: &Addr,
        since_lt: u64,
        limit: usize,
    ) -> Result<Vec<ChainTx>, ChainError> {
        let mut txs = self.history(addr, None, limit).await?;
        txs.retain(|t| t.id.lt > since_lt);
        Ok(txs)
    }

    async fn now(&self) -> Result<u32, ChainError> {
        self.run(|c| c.now()).await
    }
}
