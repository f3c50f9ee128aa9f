//! The ledger the relay sees when payments are on: TLS accounts are mapped to the client
//! contracts bound to them (`ton::contracts::account_binding_hash`), and nothing is reserved
//! once the engine has found the chain contradicting the ledger.

use std::collections::BTreeMap;
use std::sync::Arc;

use protocol::Usage;

use super::{Health, Payments};
use crate::ledger::durable::DurableLedger;
use crate::ledger::{Balance, Committed, Ledger, LedgerError, Reservation, UsageRecord};

/// [`DurableLedger`] behind the account mapping of a [`Payments`] engine.
#[derive(Debug)]
pub struct PaidLedger {
    inner: Arc<DurableLedger>,
    payments: Arc<Payments>,
}

impl PaidLedger {
    pub fn new(inner: Arc<DurableLedger>, payments: Arc<Payments>) -> Self {
        Self { inner, payments }
    }

    /// The client contract (raw address, the ledger account) paying for TLS `account`.
    fn contract(&self, account: &str) -> Result<String, LedgerError> {
        if let Health::Fatal(e) = &*self.payments.health().borrow() {
            return Err(LedgerError::Stopped(e.to_string()));
        }
        self.payments
            .account_contract(account)
            .map(|a| a.to_string())
            .ok_or_else(|| {
                let mut key = [0u8; 32];
                let binding = match hex::decode_to_slice(account, &mut key) {
                    Ok(()) => hex::encode(ton::contracts::account_binding_hash(&key)),
                    Err(_) => "(not an account key)".into(),
                };
                LedgerError::Unbound {
                    account: account.to_string(),
                    binding,
                }
            })
    }
}

impl Ledger for PaidLedger {
    fn reserve(&self, account: &str, amount: u64) -> Result<Reservation, LedgerError> {
        let contract = self.contract(account)?;
        self.inner.reserve(&contract, amount)
    }

    fn commit(
        &self,
        reservation: &Reservation,
        cost: u64,
        usage: &Usage,
        worker: Option<&str>,
    ) -> Result<Committed, LedgerError> {
        self.inner.commit(reservation, cost, usage, worker)
    }

    fn commit_receipted(
        &self,
        reservation: &Reservation,
        cost: u64,
        usage: &Usage,
        worker: Option<&str>,
        receipt: (&[u8; 32], &[u8]),
    ) -> Result<Committed, LedgerError> {
        self.inner
            .commit_receipted(reservation, cost, usage, worker, receipt)
    }

    fn receipts(&self, key: &str) -> Option<u64> {
        self.inner.receipts(key)
    }

    fn release(&self, reservation: &Reservation) -> Result<(), LedgerError> {
        self.inner.release(reservation)
    }

    fn balance(&self, account: &str) -> Option<Balance> {
        let contract = self.contract(account).ok()?;
        self.inner.balance(&contract)
    }

    fn records(&self) -> BTreeMap<String, UsageRecord> {
        self.inner.records()
    }
}
