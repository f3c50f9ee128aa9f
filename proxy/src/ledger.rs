//! The accounting seam: a [`Ledger`] holds account balances, reservations for requests in
//! flight, and per-account usage records. The relay reserves the worst-case cost of a request
//! before forwarding it, commits the actual cost when the worker reports usage, and releases
//! the reservation when the request fails.
//!
//! [`MemoryLedger`] keeps everything in memory (development, tests). A durable ledger — which
//! must be durable before the proxy signs any payment voucher — implements the same trait.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use protocol::Usage;
use serde::Serialize;

use crate::config::AccountsConfig;

pub mod durable;

/// Why the configured ledger could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenLedgerError {
    #[error("cannot read the key passphrase {path}: {source}")]
    Passphrase {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Keys(#[from] crate::keystore::KeyStoreError),
    #[error(transparent)]
    Ledger(#[from] durable::OpenError),
}

/// The ledger the config asks for (see [`open_configured`]).
#[derive(Debug)]
pub struct Opened {
    /// What the relay uses.
    pub ledger: std::sync::Arc<dyn Ledger>,
    /// The durable ledger, if configured (the payments engine settles it).
    pub durable: Option<std::sync::Arc<durable::DurableLedger>>,
    /// The key store the durable ledger's key came from.
    pub keys: Option<crate::keystore::EncryptedFileStore>,
    /// The proxy key Kp's seed (loaded once: each load runs the store's PBKDF2).
    pub kp: Option<zeroize::Zeroizing<[u8; 32]>>,
    /// What opening the durable ledger recovered.
    pub recovery: Option<durable::Recovery>,
}

/// The ledger the config asks for: in memory, or the durable ledger keyed by Kp from the key
/// store (opening balances apply to accounts it does not hold yet).
pub fn open_configured(
    settings: Option<&crate::config::LedgerSettings>,
    prices: &protocol::usage::Prices,
    accounts: &AccountsConfig,
) -> Result<Opened, OpenLedgerError> {
    use crate::keystore::KeyStore as _;
    let Some(s) = settings else {
        return Ok(Opened {
            ledger: std::sync::Arc::new(MemoryLedger::new(accounts)),
            durable: None,
            keys: None,
            kp: None,
            recovery: None,
        });
    };
    let passphrase =
        std::fs::read(&s.passphrase_file).map_err(|source| OpenLedgerError::Passphrase {
            path: s.passphrase_file.clone(),
            source,
        })?;
    let mut passphrase = zeroize::Zeroizing::new(passphrase);
    while passphrase.last().is_some_and(|b| b.is_ascii_whitespace()) {
        passphrase.pop();
    }
    let store = crate::keystore::EncryptedFileStore::new(&s.keys_dir, passphrase)?;
    let kp = store.load_or_create(crate::keystore::PROXY_KEY)?;
    let (ledger, recovery) = durable::DurableLedger::open(
        durable::DurableOptions {
            path: s.path.clone(),
            price_per_token: prices.price_per_token,
            default_balance_nano: accounts.default_balance_nano,
        },
        durable::LedgerKey::derive(&kp),
    )?;
    for (account, balance) in &accounts.balances {
        let _ = ledger.open_account(account, *balance);
    }
    Ok(Opened {
        ledger: ledger.clone(),
        durable: Some(ledger),
        keys: Some(store),
        kp: Some(kp),
        recovery: Some(recovery),
    })
}

/// Ledger failures.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    #[error("account {account} is unknown")]
    UnknownAccount { account: String },
    #[error(
        "account {account}: reservation of {needed} nano exceeds the available {available} nano"
    )]
    InsufficientFunds {
        account: String,
        needed: u64,
        available: u64,
    },
    #[error("reservation {0} is unknown (already committed or released)")]
    UnknownReservation(u64),
    #[error("ledger storage failed: {0}")]
    Storage(String),
    /// Payments on: no client contract carries this account's binding hash.
    #[error("no client contract is bound to account {account}: set its secret hash to {binding} (cocoon-client account bind) and top it up")]
    Unbound { account: String, binding: String },
    /// Payments on and the chain contradicts the ledger: the proxy serves nothing.
    #[error("the proxy stopped billing: {0}")]
    Stopped(String),
}

/// A reservation of funds for one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reservation {
    pub id: u64,
    pub account: String,
    pub amount: u64,
}

/// An account's funds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Balance {
    /// Funds on the account, nano-TON.
    pub balance_nano: u64,
    /// Part of the balance reserved by requests in flight.
    pub reserved_nano: u64,
}

impl Balance {
    /// What a new reservation can take.
    pub fn available(&self) -> u64 {
        self.balance_nano.saturating_sub(self.reserved_nano)
    }
}

/// Usage billed to one account (or served by one worker).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct UsageRecord {
    pub requests: u64,
    pub prompt_tokens: u64,
    pub cached_tokens: u64,
    pub completion_tokens: u64,
    pub reasoning_tokens: u64,
    pub cost_nano: u64,
}

impl UsageRecord {
    /// Adds one request's usage and cost.
    pub fn add(&mut self, usage: &Usage, cost: u64) {
        self.requests = self.requests.saturating_add(1);
        self.prompt_tokens = self.prompt_tokens.saturating_add(usage.prompt_tokens);
        self.cached_tokens = self.cached_tokens.saturating_add(usage.cached_tokens);
        self.completion_tokens = self
            .completion_tokens
            .saturating_add(usage.completion_tokens);
        self.reasoning_tokens = self.reasoning_tokens.saturating_add(usage.reasoning_tokens);
        self.cost_nano = self.cost_nano.saturating_add(cost);
    }
}

/// A committed charge.
#[derive(Debug)]
pub struct Committed {
    /// What was charged (nano-TON).
    pub charged: u64,
    /// `None`: in memory only, nothing to wait for.
    pub durable: Option<durable::Ticket>,
}

/// Balances, reservations and usage records.
pub trait Ledger: Send + Sync + std::fmt::Debug {
    /// Reserves `amount` of `account`'s available funds.
    fn reserve(&self, account: &str, amount: u64) -> Result<Reservation, LedgerError>;

    /// Charges `cost` (at most the reserved amount; the charge is returned), records `usage`
    /// for the account (and for `worker`, which served it) and frees the rest of the
    /// reservation. A durable ledger also returns the [`durable::Ticket`] that reports the
    /// charge on disk: the relay holds the usage event and `[DONE]` until then.
    fn commit(
        &self,
        reservation: &Reservation,
        cost: u64,
        usage: &Usage,
        worker: Option<&str>,
    ) -> Result<Committed, LedgerError>;

    /// [`Self::commit`] of an encrypted request, billed on the worker's verified receipt
    /// (`(request hash, signed receipt)`). A durable ledger stores the receipt in the same
    /// write as the charge; the in-memory ledger (development, nothing durable) only charges.
    fn commit_receipted(
        &self,
        reservation: &Reservation,
        cost: u64,
        usage: &Usage,
        worker: Option<&str>,
        receipt: (&[u8; 32], &[u8]),
    ) -> Result<Committed, LedgerError> {
        let _ = receipt;
        self.commit(reservation, cost, usage, worker)
    }

    /// Receipts stored for the account that [`Self::records`] lists under `key` (`None`: this
    /// ledger stores none).
    fn receipts(&self, key: &str) -> Option<u64> {
        let _ = key;
        None
    }

    /// Frees a reservation without charging.
    fn release(&self, reservation: &Reservation) -> Result<(), LedgerError>;

    /// The account's funds (`None`: unknown account).
    fn balance(&self, account: &str) -> Option<Balance>;

    /// Usage records by account.
    fn records(&self) -> BTreeMap<String, UsageRecord>;
}

#[derive(Debug, Default)]
struct Inner {
    accounts: HashMap<String, Balance>,
    reservations: HashMap<u64, (String, u64)>,
    next_id: u64,
    records: BTreeMap<String, UsageRecord>,
}

/// An in-memory [`Ledger`].
#[derive(Debug, Default)]
pub struct MemoryLedger {
    inner: Mutex<Inner>,
    /// Balance of accounts created on first use (`None`: unknown accounts are refused).
    default_balance: Option<u64>,
}

impl MemoryLedger {
    /// A ledger with the opening balances and auto-creation rule of `accounts`.
    pub fn new(accounts: &AccountsConfig) -> Self {
        let ledger = Self {
            inner: Mutex::new(Inner::default()),
            default_balance: accounts.default_balance_nano,
        };
        for (account, balance) in &accounts.balances {
            ledger.deposit(account, *balance);
        }
        ledger
    }

    /// Adds funds to `account` (creating it).
    pub fn deposit(&self, account: &str, amount: u64) {
        let mut inner = self.lock();
        let b = inner.accounts.entry(account.to_string()).or_default();
        b.balance_nano = b.balance_nano.saturating_add(amount);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Ledger for MemoryLedger {
    fn reserve(&self, account: &str, amount: u64) -> Result<Reservation, LedgerError> {
        let mut inner = self.lock();
        if !inner.accounts.contains_key(account) {
            let Some(initial) = self.default_balance else {
                return Err(LedgerError::UnknownAccount {
                    account: account.to_string(),
                });
            };
            inner.accounts.insert(
                account.to_string(),
                Balance {
                    balance_nano: initial,
                    reserved_nano: 0,
                },
            );
        }
        let b = inner
            .accounts
            .get_mut(account)
            .ok_or_else(|| LedgerError::UnknownAccount {
                account: account.to_string(),
            })?;
        if b.available() < amount {
            return Err(LedgerError::InsufficientFunds {
                account: account.to_string(),
                needed: amount,
                available: b.available(),
            });
        }
        b.reserved_nano += amount;
        inner.next_id += 1;
        let id = inner.next_id;
        inner.reservations.insert(id, (account.to_string(), amount));
        Ok(Reservation {
            id,
            account: account.to_string(),
            amount,
        })
    }

    fn commit(
        &self,
        reservation: &Reservation,
        cost: u64,
        usage: &Usage,
        _worker: Option<&str>,
    ) -> Result<Committed, LedgerError> {
        let mut inner = self.lock();
        let (account, amount) = inner
            .reservations
            .remove(&reservation.id)
            .ok_or(LedgerError::UnknownReservation(reservation.id))?;
        let charge = cost.min(amount);
        if let Some(b) = inner.accounts.get_mut(&account) {
            b.reserved_nano = b.reserved_nano.saturating_sub(amount);
            b.balance_nano = b.balance_nano.saturating_sub(charge);
        }
        inner.records.entry(account).or_default().add(usage, charge);
        Ok(Committed {
            charged: charge,
            durable: None,
        })
    }

    fn release(&self, reservation: &Reservation) -> Result<(), LedgerError> {
        let mut inner = self.lock();
        let (account, amount) = inner
            .reservations
            .remove(&reservation.id)
            .ok_or(LedgerError::UnknownReservation(reservation.id))?;
        if let Some(b) = inner.accounts.get_mut(&account) {
            b.reserved_nano = b.reserved_nano.saturating_sub(amount);
        }
        Ok(())
    }

    fn balance(&self, account: &str) -> Option<Balance> {
        self.lock().accounts.get(account).copied()
    }

    fn records(&self) -> BTreeMap<String, UsageRecord> {
        self.lock().records.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(p: u64, c: u64) -> Usage {
        Usage {
            prompt_tokens: p,
            completion_tokens: c,
            ..Usage::default()
        }
    }

    #[test]
    fn reserve_commit_release() {
        let l = MemoryLedger::new(&AccountsConfig {
            default_balance_nano: None,
            balances: [("a".to_string(), 100)].into(),
        });
        assert!(matches!(
            l.reserve("b", 1),
            Err(LedgerError::UnknownAccount { .. })
        ));
        let r1 = l.reserve("a", 60).unwrap();
        assert_eq!(
            l.reserve("a", 50),
            Err(LedgerError::InsufficientFunds {
                account: "a".into(),
                needed: 50,
                available: 40
            })
        );
        // Charges are capped at the reservation.
        assert_eq!(l.commit(&r1, 70, &usage(3, 4), None).unwrap().charged, 60);
        assert_eq!(
            l.balance("a"),
            Some(Balance {
                balance_nano: 40,
                reserved_nano: 0
            })
        );
        assert!(l.commit(&r1, 1, &usage(0, 0), None).is_err());
        let r2 = l.reserve("a", 40).unwrap();
        l.release(&r2).unwrap();
        assert!(l.release(&r2).is_err());
        assert_eq!(l.balance("a").map(|b| b.available()), Some(40));
        let rec = l.records()["a"];
        assert_eq!((rec.requests, rec.prompt_tokens, rec.cost_nano), (1, 3, 60));
    }

    #[test]
    fn default_balance_creates_accounts() {
        let l = MemoryLedger::new(&AccountsConfig {
            default_balance_nano: Some(10),
            balances: BTreeMap::new(),
        });
        let r = l.reserve("new", 10).unwrap();
        assert!(l.reserve("new", 1).is_err());
        l.commit(&r, 4, &usage(1, 1), None).unwrap();
        assert_eq!(l.balance("new").map(|b| b.balance_nano), Some(6));
    }
}
