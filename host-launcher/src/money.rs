//! `launch --local --payments`: the local network with money in it.
//!
//! The launcher runs a local TON chain in its own process (`tonsim::LocalChain`: Cocoon's real
//! compiled contracts in a pure-Rust TVM under mainnet's config) and serves it on loopback
//! through the toncenter-style HTTP API (`tonsim::http_server::LocalServer`), which the proxy
//! and the worker reach with the same client they would use on the live network. Then:
//!
//! 1. **Keys.** The proxy's development key store (`keys/`, passphrase in `keys.pass`) is
//!    created here, so the launcher knows the proxy key Kp and the proxy wallet's address; the
//!    worker's wallet key is `worker-wallet.key` (mode 0600). In local mode the host writes
//!    every config and holds these keys: development only (docs/threat-model.md).
//! 2. **Test money.** Fixed treasury addresses own the proxy contract, the root, the worker's
//!    earnings and the client's Cocoon wallet (`client-wallet.key`, its owner [`client_owner`]).
//!    The proxy wallet gets [`PROXY_WALLET_FUND`], the worker wallet [`WORKER_WALLET_FUND`],
//!    the client wallet [`CLIENT_WALLET_FUND`].
//! 3. **Contracts.** The proxy deploys its own contract from its wallet once it runs
//!    ([`Money::wait_proxy_contract`]); the launcher then deploys the client contract from the
//!    client's wallet with [`CLIENT_DEPOSIT`] and binds it to the client's account key
//!    (`secret_hash` = `account_binding_hash`) — `cocoon-client account deploy` and `bind`,
//!    through the same library ([`Money::fund_client`]) — before the client starts. The
//!    client gets `account.toml` and `[account]` in its config, so while it serves it checks
//!    what the chain charged against its receipts (docs/payments.md).
//! 4. **Reporting.** [`Money::figures`] reads the money back from the chain (client contract
//!    balance, worker contract's paid tokens, proxy contract's fee balance); the launcher
//!    writes them as `payments.json` once the proxy reports everything billed as charged and
//!    paid out.
//!
//! Each launch starts a new chain (it lives in the launcher's memory), so the ledger of the
//! previous launch (`ledger.redb`) is removed first: its anchors name a chain that is gone.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;
use ton::address::Addr;
use ton::cell::Cell;
use ton::contracts::{ClientData, ContractKind, ProxyData, StateInit, WalletData, WorkerData};
use ton::params::ParamsV3;
use tonsim::http_server::LocalServer;
use tonsim::{AccountStatus, Chain, Internal, LocalChain, TonChain};

const TON: u128 = 1_000_000_000;
/// What the proxy's wallet starts with (it pays anchors, vouchers and the contract deploy).
pub const PROXY_WALLET_FUND: u128 = 100 * TON;
/// What the worker's wallet starts with (2 TON must stay; 0.7 TON goes with each voucher and
/// mostly comes back).
pub const WORKER_WALLET_FUND: u128 = 10 * TON;
/// What the client deposits into its contract (the stake is the params' `min_client_stake`).
pub const CLIENT_DEPOSIT: u128 = 50 * TON;

/// The ledger file in the launch directory.
pub const LEDGER_FILE: &str = "ledger.redb";
/// The proxy's key store directory.
pub const KEYS_DIR: &str = "keys";
/// The key store's passphrase file.
pub const PASSPHRASE_FILE: &str = "keys.pass";
/// The worker's wallet key.
pub const WORKER_WALLET_KEY: &str = "worker-wallet.key";
/// The client's Cocoon wallet key (it owns the client contract, and pays its own charges).
pub const CLIENT_WALLET_KEY: &str = "client-wallet.key";
/// The client's account settings (`cocoon-client account --account-config`, and `[account]`
/// of the local client's config).
pub const CLIENT_ACCOUNT_FILE: &str = "account.toml";
/// What the client's wallet starts with: the deposit, what deploy and bind cost, and room for
/// the 2 TON the wallet keeps and for charges the client sends itself.
pub const CLIENT_WALLET_FUND: u128 = CLIENT_DEPOSIT + 10 * TON;
/// The worker's highest seen voucher counts.
pub const PAYOUT_STATE_FILE: &str = "payout-state.json";
/// The figures, written once payments settle.
pub const PAYMENTS_FILE: &str = "payments.json";

fn treasury(b: u8) -> Addr {
    Addr::basechain([b; 32])
}
/// Owner of the proxy contract (its fees go there).
pub fn proxy_owner() -> Addr {
    treasury(0xa1)
}
/// The root contract's address (part of the proxy contract's address; not deployed).
pub fn root() -> Addr {
    treasury(0xa2)
}
/// The worker's owner: receives its earnings.
pub fn worker_owner() -> Addr {
    treasury(0xa3)
}
/// Owner of the client's Cocoon wallet (the address that could withdraw everything from it).
pub fn client_owner() -> Addr {
    treasury(0xa4)
}
fn funder() -> Addr {
    treasury(0xa5)
}

/// The local chain, its HTTP server and every address of the local network's money.
pub struct Money {
    chain: LocalChain,
    _server: LocalServer,
    pub url: String,
    pub params: ParamsV3,
    pub proxy_contract: Addr,
    pub proxy_wallet: Addr,
    pub worker_wallet: Addr,
    /// The client's Cocoon wallet: owns the client contract.
    pub client_wallet: Addr,
    client_seed: [u8; 32],
    kp_pub: [u8; 32],
}

impl std::fmt::Debug for Money {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Money")
            .field("url", &self.url)
            .field("proxy_contract", &self.proxy_contract)
            .finish_non_exhaustive()
    }
}

/// What `payments.json` holds (integers, nanoton).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Figures {
    pub client_balance_before_nano: u128,
    pub client_balance_after_nano: u128,
    pub charged_nano: u128,
    pub worker_earned_nano: u128,
    /// What reached the worker owner's account in payout messages (the chain's transactions).
    pub worker_owner_received_nano: u128,
    pub proxy_kept_nano: u128,
    pub requests: u64,
    /// Tokens the client contract was charged for.
    pub charged_tokens: u64,
    /// Tokens the worker contract paid out.
    pub paid_tokens: u64,
    pub client_contract: String,
    pub worker_contract: String,
    pub proxy_contract: String,
}

fn err<E: std::fmt::Display>(what: &str) -> impl Fn(E) -> String + '_ {
    move |e| format!("{what}: {e}")
}

impl Money {
    /// Keys, a new chain with the test money, and its HTTP server (see the module docs).
    pub async fn start(dir: &Path) -> Result<Money, String> {
        use proxy::keystore::KeyStore as _;
        match std::fs::remove_file(dir.join(LEDGER_FILE)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("{LEDGER_FILE}: {e}")),
        }
        let _ = std::fs::remove_file(dir.join(PAYOUT_STATE_FILE));
        let _ = std::fs::remove_file(dir.join(PAYMENTS_FILE));
        let pass_path = dir.join(PASSPHRASE_FILE);
        if !pass_path.exists() {
            let mut pass = [0u8; 32];
            getrandom::getrandom(&mut pass).map_err(|e| format!("randomness: {e}"))?;
            write_private(&pass_path, format!("{}\n", hex::encode(pass)).as_bytes())?;
        }
        let passphrase = std::fs::read(&pass_path).map_err(err(PASSPHRASE_FILE))?;
        let passphrase = zeroize::Zeroizing::new(passphrase.trim_ascii_end().to_vec());
        let store = proxy::keystore::EncryptedFileStore::new(&dir.join(KEYS_DIR), passphrase)
            .map_err(|e| e.to_string())?;
        let kp = store
            .load_or_create(proxy::keystore::PROXY_KEY)
            .map_err(|e| e.to_string())?;
        let wallet = store
            .load_or_create(proxy::keystore::WALLET_KEY)
            .map_err(|e| e.to_string())?;
        let kp_pub = ed25519_dalek::SigningKey::from_bytes(&kp)
            .verifying_key()
            .to_bytes();
        let wallet_pub = ed25519_dalek::SigningKey::from_bytes(&wallet)
            .verifying_key()
            .to_bytes();
        let worker_seed = seed_file(&dir.join(WORKER_WALLET_KEY))?;
        let client_seed = seed_file(&dir.join(CLIENT_WALLET_KEY))?;
        let public = |seed: &[u8; 32]| {
            ed25519_dalek::SigningKey::from_bytes(seed)
                .verifying_key()
                .to_bytes()
        };
        let (worker_pub, client_pub) = (public(&worker_seed), public(&client_seed));

        let params = ParamsV3::reference();
        let address = |init: Result<StateInit, ton::cell::CellError>| {
            init.and_then(|i| i.address()).map_err(|e| e.to_string())
        };
        let proxy_params =
            params.for_proxy(ContractKind::Worker.code(), ContractKind::Client.code());
        let proxy_contract =
            address(ProxyData::initial(proxy_owner(), kp_pub, root(), proxy_params).state_init())?;
        let proxy_wallet = address(WalletData::initial(wallet_pub, proxy_owner()).state_init())?;
        let worker_wallet = address(WalletData::initial(worker_pub, worker_owner()).state_init())?;
        let client_wallet = address(WalletData::initial(client_pub, client_owner()).state_init())?;

        let now = u32::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        )
        .unwrap_or(u32::MAX);
        let chain = LocalChain::spawn(move || {
            let mut c = Chain::new(now)?;
            for a in [
                proxy_owner(),
                root(),
                worker_owner(),
                client_owner(),
                funder(),
            ] {
                c.add_treasury(a, 1_000_000 * TON)?;
            }
            for (dst, value) in [
                (proxy_wallet, PROXY_WALLET_FUND),
                (worker_wallet, WORKER_WALLET_FUND),
                (client_wallet, CLIENT_WALLET_FUND),
            ] {
                c.send_internal(&Internal {
                    src: funder(),
                    dst,
                    value,
                    bounce: false,
                    init: None,
                    body: Cell::empty(),
                })?;
            }
            Ok(c)
        })
        .map_err(err("local chain"))?;
        let server = LocalServer::start(chain.clone())
            .await
            .map_err(|e| format!("local chain server: {e}"))?;
        Ok(Money {
            url: server.url(),
            chain,
            _server: server,
            params,
            proxy_contract,
            proxy_wallet,
            worker_wallet,
            client_wallet,
            client_seed: *client_seed,
            kp_pub,
        })
    }

    /// `account.toml` of the local client: its wallet key, the wallet's owner, the proxy
    /// contract and the local chain (written into the launch directory).
    pub fn client_account_toml(&self) -> String {
        format!(
            "# generated by cocoon-host launch --local --payments\n\
             key = \"{CLIENT_WALLET_KEY}\"\nowner = \"{}\"\nproxy = \"{}\"\nchain = \"{}\"\n\
             poll_ms = 200\ntimeout_secs = 60\n",
            client_owner(),
            self.proxy_contract,
            self.url
        )
    }

    /// `[payments]` of the local proxy: anchors every 2 s, a poll every 500 ms, and a charge as
    /// soon as anything is anchored (the demo shows money move within seconds; Cocoon waits
    /// for 1 TON).
    pub fn proxy_payments(&self) -> proxy::payments::PaymentsConfig {
        proxy::payments::PaymentsConfig {
            anchor_interval_ms: 2_000,
            poll_interval_ms: 500,
            charge_threshold_nano: 1,
            voucher_retry_ms: 10_000,
            wallet_timeout_ms: 20_000,
            ..proxy::payments::PaymentsConfig::new(&self.url, &self.params, &proxy_owner(), &root())
        }
    }

    /// The prices for `urls.json`.
    pub fn prices_json(&self) -> serde_json::Value {
        let p = &self.params;
        serde_json::json!({
            "price_per_token": p.price_per_token.nano(),
            "worker_fee_per_token": p.worker_fee_per_token.nano(),
            "multipliers": {
                "prompt": p.multipliers.prompt,
                "cached": p.multipliers.cached,
                "completion": p.multipliers.completion,
                "reasoning": p.multipliers.reasoning,
            },
            "price_coefficient_milli": worker::config::DEFAULT_PRICE_COEFFICIENT_MILLI,
        })
    }

    /// `[payout]` of the local worker.
    pub fn worker_payout(&self) -> worker::config::PayoutFile {
        worker::config::PayoutFile {
            chain_url: self.url.clone(),
            chain_api_key_env: None,
            owner: worker_owner().to_string(),
            wallet_key: PathBuf::from(WORKER_WALLET_KEY),
            wallet_owner: None,
            state_file: Some(PathBuf::from(PAYOUT_STATE_FILE)),
            voucher_value_nano: None,
            wallet_timeout_ms: Some(20_000),
        }
    }

    /// The client contract of the local client.
    pub fn client_contract(&self) -> Result<(StateInit, Addr), String> {
        let init = ClientData::initial(
            self.client_wallet,
            self.proxy_contract,
            self.kp_pub,
            self.params.min_client_stake,
            self.params.clone(),
        )
        .state_init()
        .map_err(|e| e.to_string())?;
        let addr = init.address().map_err(|e| e.to_string())?;
        Ok((init, addr))
    }

    /// The local worker's contract under the local proxy.
    pub fn worker_contract(&self) -> Result<Addr, String> {
        WorkerData::initial(
            worker_owner(),
            self.proxy_contract,
            self.kp_pub,
            self.params.clone(),
        )
        .state_init()
        .and_then(|i| i.address())
        .map_err(|e| e.to_string())
    }

    /// Waits until the proxy has deployed its contract.
    pub async fn wait_proxy_contract(&self, timeout: Duration) -> Result<(), String> {
        let started = Instant::now();
        loop {
            let a = self
                .chain
                .account(&self.proxy_contract)
                .await
                .map_err(|e| e.to_string())?;
            if a.status == AccountStatus::Active {
                return Ok(());
            }
            if started.elapsed() > timeout {
                return Err(format!(
                    "the proxy did not deploy its contract {} within {timeout:?} (see logs/proxy.log)",
                    self.proxy_contract
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Deploys the client contract from the client's Cocoon wallet with [`CLIENT_DEPOSIT`]
    /// and binds it to `account_key` (what `cocoon-client account deploy` and `bind` do);
    /// returns the contract's address.
    pub async fn fund_client(&self, account_key: &[u8; 32]) -> Result<Addr, String> {
        let wallet = client::account::Wallet::new(&self.client_seed, client_owner())
            .map_err(|e| e.to_string())?;
        let chain: std::sync::Arc<dyn TonChain> = std::sync::Arc::new(self.chain.clone());
        let wait = client::account::WaitOptions {
            timeout: Duration::from_secs(60),
            poll: Duration::from_millis(50),
        };
        let account = client::account::Account::open(chain, wallet, self.proxy_contract, wait)
            .await
            .map_err(err("client account"))?;
        let (_, client) = self.client_contract()?;
        if account.client_address() != client {
            return Err(format!(
                "client contract: the account derives {}, the launcher {client}",
                account.client_address()
            ));
        }
        account
            .deploy(CLIENT_DEPOSIT)
            .await
            .map_err(err("client contract deploy"))?;
        account
            .bind(account_key)
            .await
            .map_err(err("client contract bind"))?;
        Ok(client)
    }

    /// The money as the chain shows it now; `before` is the client contract's balance after
    /// its deposit, `requests` the proxy's count.
    pub async fn figures(&self, before: u128, requests: u64) -> Result<Figures, String> {
        let (_, client) = self.client_contract()?;
        let worker = self.worker_contract()?;
        let proxy = self.proxy_contract;
        let (client_data, worker_data, proxy_data, received) = self
            .chain
            .run(move |c| {
                let data = |a: &Addr| c.data(a).ok();
                let received = c.received(&worker_owner(), 0, Some(&proxy));
                (data(&client), data(&worker), data(&proxy), received)
            })
            .await
            .map_err(|e| e.to_string())?;
        let client_data = client_data
            .ok_or("no client contract")
            .and_then(|d| ClientData::from_cell(&d).map_err(|_| "client contract data"))?;
        let paid_tokens = match worker_data {
            Some(d) => WorkerData::from_cell(&d).map_err(|e| e.to_string())?.tokens,
            None => 0,
        };
        let proxy_kept = match proxy_data {
            Some(d) => ProxyData::from_cell(&d)
                .map_err(|e| e.to_string())?
                .balance
                .nano(),
            None => 0,
        };
        let after = client_data.balance.nano();
        Ok(Figures {
            client_balance_before_nano: before,
            client_balance_after_nano: after,
            charged_nano: before.saturating_sub(after),
            worker_earned_nano: u128::from(paid_tokens) * self.params.worker_fee_per_token.nano(),
            worker_owner_received_nano: received,
            proxy_kept_nano: proxy_kept,
            requests,
            charged_tokens: client_data.tokens_used,
            paid_tokens,
            client_contract: client.to_string(),
            worker_contract: worker.to_string(),
            proxy_contract: proxy.to_string(),
        })
    }

    /// The client contract's stored balance.
    pub async fn client_balance(&self) -> Result<u128, String> {
        let (_, client) = self.client_contract()?;
        let data = self
            .chain
            .run(move |c| c.data(&client).map_err(|e| e.to_string()))
            .await
            .map_err(|e| e.to_string())??;
        Ok(ClientData::from_cell(&data)
            .map_err(|e| e.to_string())?
            .balance
            .nano())
    }
}

/// The wallet seed in `path`, created (mode 0600) if the file does not exist.
fn seed_file(path: &Path) -> Result<zeroize::Zeroizing<[u8; 32]>, String> {
    match ratls::key_file::read_seed(path) {
        Ok(s) => Ok(s),
        Err(ratls::key_file::KeyFileError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            ratls::key_file::create_seed(path).map_err(|e| e.to_string())
        }
        Err(e) => Err(e.to_string()),
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(bytes)
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Writes `payments.json` atomically.
pub fn write_figures(dir: &Path, f: &Figures) -> Result<(), String> {
    let tmp = dir.join(format!("{PAYMENTS_FILE}.tmp"));
    let text = serde_json::to_string_pretty(f).map_err(|e| e.to_string())?;
    std::fs::write(&tmp, text).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, dir.join(PAYMENTS_FILE)).map_err(|e| format!("{PAYMENTS_FILE}: {e}"))
}

/// The settledness the proxy reports in `/jsonstats` for the local client contract:
/// `(requests, billed tokens, settled)` where settled means everything billed is charged to
/// the client and paid out to every worker.
pub fn proxy_view(jsonstats: &serde_json::Value, client_contract: &str) -> (u64, u64, bool) {
    let requests = jsonstats["clients"][client_contract]["requests"]
        .as_u64()
        .unwrap_or(0);
    let p = &jsonstats["payments"];
    let c = &p["clients"][client_contract];
    let billed = c["billed_tokens"].as_u64().unwrap_or(0);
    let client_settled = c["pending_tokens"].as_u64() == Some(0);
    let workers_settled = p["workers"]
        .as_object()
        .is_some_and(|w| w.values().all(|w| w["pending_tokens"].as_u64() == Some(0)));
    (
        requests,
        billed,
        billed > 0 && client_settled && workers_settled,
    )
}

/// GETs `path` from a plain-HTTP/1.1 admin port on loopback and parses the JSON body.
pub async fn get_json(addr: std::net::SocketAddr, path: &str) -> Result<serde_json::Value, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let io = |e: std::io::Error| format!("{addr}{path}: {e}");
    let mut s = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| format!("{addr}: connect timed out"))?
        .map_err(io)?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .map_err(io)?;
    let mut buf = Vec::new();
    tokio::time::timeout(
        Duration::from_secs(5),
        (&mut s).take(16 << 20).read_to_end(&mut buf),
    )
    .await
    .map_err(|_| format!("{addr}{path}: read timed out"))?
    .map_err(io)?;
    let at = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("{addr}{path}: no HTTP head"))?;
    if !buf.starts_with(b"HTTP/1.1 200") {
        return Err(format!(
            "{addr}{path}: {}",
            String::from_utf8_lossy(&buf[..at.min(64)])
        ));
    }
    serde_json::from_slice(&buf[at + 4..]).map_err(|e| format!("{addr}{path}: {e}"))
}
