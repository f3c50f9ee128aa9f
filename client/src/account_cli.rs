//! `cocoon-client account <init|address|deploy|topup|bind|balance|audit|withdraw|refund>`:
//! flags, output and exit codes around [`client::account`] (and [`client::receipts::audit`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Args, Subcommand};
use client::account::settings::{AccountFile, SettingsError};
use client::account::{addr_str, amount_str, state_name, Account, AccountError, Outcome, Wallet};
use tonsim::tonchain::ClientState;
use tonsim::TonChain;

use crate::Exit;

/// Settings of the account commands (each overrides the same key of `--account-config`).
#[derive(Args, Debug, Default)]
pub struct Flags {
    /// account.toml with defaults for the flags below
    #[arg(long, global = true, value_name = "FILE")]
    account_config: Option<PathBuf>,
    /// Wallet key file (32-byte Ed25519 seed as 64 hex characters, mode 0600)
    #[arg(long, global = true, value_name = "FILE")]
    key: Option<PathBuf>,
    /// Owner of the Cocoon wallet: an address you control, which may withdraw everything from
    /// the wallet (raw `0:…` or user-friendly); part of the wallet's address
    #[arg(long, global = true, value_name = "ADDR")]
    owner: Option<String>,
    /// Proxy contract address
    #[arg(long, global = true, value_name = "ADDR")]
    proxy: Option<String>,
    /// toncenter v2 base URL (e.g. https://toncenter.com/api/v2)
    #[arg(long, global = true, value_name = "URL")]
    chain: Option<String>,
    /// Environment variable holding the toncenter API key [default: TONCENTER_API_KEY]
    #[arg(long, global = true, value_name = "NAME")]
    api_key_env: Option<String>,
    /// Wait at most this long for the transactions [default: 120]
    #[arg(long, global = true, value_name = "SECS")]
    timeout: Option<u64>,
    /// Poll interval while waiting [default: 2000]
    #[arg(long, global = true, value_name = "MS")]
    poll_ms: Option<u64>,
}

/// Account subcommands. Amounts are in nanoton (1 TON = 1000000000).
#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Create a new wallet key file (refuses to overwrite) and print the wallet address.
    Init,
    /// Print the wallet address and the client contract address for the proxy.
    Address,
    /// Deploy the client contract through the wallet with a first top-up of AMOUNT (at least
    /// the stake).
    Deploy {
        /// Nanoton to put on the client contract
        #[arg(long, value_name = "NANO", value_parser = parse_nano)]
        amount: u128,
    },
    /// Add AMOUNT to the client contract's balance.
    Topup {
        /// Nanoton to add
        #[arg(long, value_name = "NANO", value_parser = parse_nano)]
        amount: u128,
    },
    /// Bind the client contract to the account key the local client uses in TLS (its
    /// `account_key_file`): the proxy then bills that account's requests to this contract.
    Bind {
        /// The client's account key file (64 hex characters, mode 0600)
        #[arg(long, value_name = "FILE")]
        account_key: std::path::PathBuf,
    },
    /// Print the wallet balance and the client contract's state.
    Balance,
    /// Check what the proxy charged the client contract against the receipt log of the
    /// client (`receipts_file`): every receipt is verified again and priced at the proxy
    /// contract's params. Exit 3 when the chain shows more tokens charged than the receipts
    /// justify (naming the difference), 0 otherwise.
    Audit {
        /// The client's receipt log (`receipts_file` in client.toml)
        #[arg(long, value_name = "FILE")]
        receipts: PathBuf,
        /// The client contract (default: derived from the wallet key, owner and proxy)
        #[arg(long, value_name = "ADDR")]
        contract: Option<String>,
    },
    /// Ask the proxy (over the attested connection client.toml describes) for the charge
    /// voucher of this account's client contract, check it (Kp signature, this contract, a
    /// count the receipt log justifies) and submit it from the wallet once the unpaid usage
    /// passes half the stake, as Cocoon's client does. Exit 3 when the voucher charges more
    /// than the receipts justify (nothing is submitted).
    Charge {
        /// The local client's config (client.toml): proxy, policy, account key, receipts_file
        #[arg(long, value_name = "FILE")]
        client_config: PathBuf,
        /// Submit even when the unpaid usage is below half the stake
        #[arg(long)]
        force: bool,
    },
    /// Take the client contract's balance above the stake back to the wallet.
    Withdraw,
    /// Request a refund: pays out the balance above the stake and starts closing; after the
    /// contract's close delay, forces the rest out (paid from the proxy's stake).
    Refund,
}

fn parse_nano(s: &str) -> Result<u128, String> {
    let n: u128 = s
        .parse()
        .map_err(|_| format!("{s:?}: expected a whole number of nanoton"))?;
    if n == 0 || n >= 1 << 120 {
        return Err(format!("{s}: must be between 1 and 2^120 - 1 nanoton"));
    }
    Ok(n)
}

/// A failure and its exit code.
struct Fail(Exit, String);

impl From<SettingsError> for Fail {
    fn from(e: SettingsError) -> Self {
        Fail(Exit::Config, e.to_string())
    }
}

impl From<AccountError> for Fail {
    fn from(e: AccountError) -> Self {
        let exit = match e {
            AccountError::Key(_) | AccountError::Settings(_) => Exit::Config,
            _ => Exit::Runtime,
        };
        Fail(exit, e.to_string())
    }
}

/// Runs one account command.
pub fn run(flags: Flags, cmd: Cmd) -> Exit {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cocoon-client: tokio runtime: {e}");
            return Exit::Runtime;
        }
    };
    match runtime.block_on(run_async(flags, cmd)) {
        Ok(()) => Exit::Clean,
        Err(Fail(exit, msg)) => {
            eprintln!("cocoon-client account: {msg}");
            exit
        }
    }
}

fn settings(flags: Flags) -> Result<AccountFile, Fail> {
    let file = match &flags.account_config {
        Some(p) => AccountFile::read(p)?,
        None => AccountFile::default(),
    };
    Ok(file.overridden_by(AccountFile {
        key: flags.key,
        owner: flags.owner,
        proxy: flags.proxy,
        chain: flags.chain,
        api_key_env: flags.api_key_env,
        timeout_secs: flags.timeout,
        poll_ms: flags.poll_ms,
    }))
}

fn wallet(s: &AccountFile) -> Result<Wallet, Fail> {
    Ok(s.wallet()?)
}

fn chain(s: &AccountFile) -> Result<Arc<dyn TonChain>, Fail> {
    Ok(s.chain()?)
}

async fn open(s: &AccountFile) -> Result<Account, Fail> {
    Ok(s.open().await?)
}

async fn run_async(flags: Flags, cmd: Cmd) -> Result<(), Fail> {
    let s = settings(flags)?;
    match cmd {
        Cmd::Init => {
            let owner = s.owner_addr()?;
            let path = s.key_path()?;
            let seed = client::key::create_seed(path).map_err(|e| {
                let exists = matches!(&e, client::key::KeyFileError::Io { source, .. }
                    if source.kind() == std::io::ErrorKind::AlreadyExists);
                if exists {
                    Fail(
                        Exit::Config,
                        format!(
                            "{}: exists; refusing to overwrite a wallet key",
                            path.display()
                        ),
                    )
                } else {
                    Fail(Exit::Runtime, e.to_string())
                }
            })?;
            let w = Wallet::new(&seed, owner)?;
            println!("wallet key: {} (mode 0600)", path.display());
            println!("wallet: {}", addr_str(&w.address()));
            println!("wallet owner: {}", addr_str(&w.owner()));
            println!(
                "fund the wallet (at least 2 TON stay in it: the wallet contract sends nothing \
                 below that), then run `cocoon-client account deploy --amount NANO`"
            );
        }
        Cmd::Address => {
            let w = wallet(&s)?;
            println!("wallet: {}", addr_str(&w.address()));
            let a = Account::open(chain(&s)?, w, s.proxy_addr()?, s.wait()?).await?;
            println!("proxy contract: {}", addr_str(&a.proxy().addr));
            println!("client contract: {}", addr_str(&a.client_address()));
        }
        Cmd::Balance => {
            let a = open(&s).await?;
            let b = a.balances().await?;
            println!(
                "wallet: {} status {:?} balance {}",
                b.wallet,
                b.wallet_status,
                amount_str(b.wallet_balance)
            );
            match &b.client_state {
                None => println!("client contract: {} not deployed", b.client),
                Some(cs) => {
                    println!("client contract: {}", b.client);
                    print_state(cs);
                    println!(
                        "  account balance (storage and fee reserve): {}",
                        amount_str(b.client_account_balance)
                    );
                }
            }
        }
        Cmd::Audit { receipts, contract } => audit(&s, &receipts, contract.as_deref()).await?,
        Cmd::Charge {
            client_config,
            force,
        } => charge(&s, &client_config, force).await?,
        Cmd::Deploy { amount } => {
            let a = open(&s).await?;
            report("deploy", &a, &a.deploy(amount).await?);
        }
        Cmd::Topup { amount } => {
            let a = open(&s).await?;
            report("topup", &a, &a.top_up(amount).await?);
        }
        Cmd::Bind { account_key } => {
            let seed = client::key::read_seed(&account_key)
                .map_err(|e| Fail(Exit::Config, e.to_string()))?;
            let key = ratls::account::AccountKey::from_seed(*seed);
            let id = key.account_id();
            let mut public = [0u8; 32];
            hex::decode_to_slice(&id, &mut public).map_err(|_| {
                Fail(
                    Exit::Config,
                    format!("{}: not a valid Ed25519 seed", account_key.display()),
                )
            })?;
            let a = open(&s).await?;
            report("bind", &a, &a.bind(&public).await?);
            println!(
                "account {id} is billed to client contract {}",
                addr_str(&a.client_address())
            );
        }
        Cmd::Withdraw => {
            let a = open(&s).await?;
            report("withdraw", &a, &a.withdraw().await?);
        }
        Cmd::Refund => {
            let a = open(&s).await?;
            let o = a.request_refund().await?;
            report("refund", &a, &o);
            if let Some(cs) = &o.client_state {
                if cs.state == 1 {
                    println!(
                        "closing: the proxy should grant the refund; if it does not, run \
                         `refund` again after unix time {}",
                        cs.unlock_ts
                    );
                }
            }
        }
    }
    Ok(())
}

/// `account charge` (see [`Cmd::Charge`]).
async fn charge(s: &AccountFile, client_config: &Path, force: bool) -> Result<(), Fail> {
    use client::account::charge::{decide, ChargeError, Decision};
    let serve = client::config::open(client_config)
        .map_err(|e| Fail(Exit::Config, format!("{}: {e}", client_config.display())))?;
    let a = open(s).await?;
    let state = a.client_state().await?.ok_or_else(|| {
        Fail(
            Exit::Runtime,
            format!(
                "client contract {} is not deployed",
                addr_str(&a.client_address())
            ),
        )
    })?;
    let prices = protocol::usage::Prices::of_params(&a.proxy().params);
    let justified = match &serve.client.receipts {
        Some(log) => {
            let audited = log.audit_now(&prices).map_err(|e| Fail(Exit::Config, e))?;
            Some(u64::try_from(audited.tokens).unwrap_or(u64::MAX))
        }
        None => {
            eprintln!(
                "cocoon-client account: no receipts_file in {}: the voucher's count is not \
                 checked against receipts",
                client_config.display()
            );
            None
        }
    };
    let proxy = client::Client::connect(serve.client.clone())
        .await
        .map_err(|e| Fail(Exit::Runtime, format!("proxy: {e}")))?;
    let v = match proxy.charge_voucher().await {
        Ok(v) => v,
        Err(e) if e.kind == protocol::ErrorKind::NotFound => {
            println!("no charge due: {}", e.message);
            return Ok(());
        }
        Err(e) => return Err(Fail(Exit::Runtime, format!("proxy: {e}"))),
    };
    let decision = decide(&a, &state, &v, justified, force).map_err(|e| match e {
        ChargeError::Overcharged { .. } | ChargeError::ChargedTooMuch { .. } => {
            Fail(Exit::Overcharged, e.to_string())
        }
        ChargeError::Account(e) => Fail::from(e),
        ChargeError::Invalid(_) => Fail(Exit::Runtime, e.to_string()),
    })?;
    println!("client contract: {}", addr_str(&a.client_address()));
    match decision {
        Decision::NothingDue { charged } => {
            println!("nothing to charge: the chain has charged {charged} tokens already")
        }
        Decision::BelowHalfStake {
            unpaid_nano,
            half_stake_nano,
        } => println!(
            "unpaid {} is below half the stake ({}): left to the proxy (--force submits now)",
            amount_str(unpaid_nano),
            amount_str(half_stake_nano)
        ),
        Decision::Submit {
            tokens,
            charged,
            unpaid_nano,
            body,
        } => {
            println!(
                "submitting the charge: {charged} → {tokens} tokens ({} unpaid)",
                amount_str(unpaid_nano)
            );
            report("charge", &a, &a.submit_charge(body).await?);
        }
    }
    Ok(())
}

/// `account audit` (see [`Cmd::Audit`]).
async fn audit(s: &AccountFile, receipts: &Path, contract: Option<&str>) -> Result<(), Fail> {
    let text = std::fs::read_to_string(receipts)
        .map_err(|e| Fail(Exit::Config, format!("{}: {e}", receipts.display())))?;
    let chain = chain(s)?;
    let contract = match contract {
        Some(c) => ton::address::Addr::parse_any(c)
            .map_err(|e| Fail(Exit::Config, format!("--contract {c:?}: {e}")))?,
        None => open(s).await?.client_address(),
    };
    let state = chain
        .run_get_method(&contract, ClientState::GET_METHOD)
        .await
        .map_err(AccountError::from)?;
    let cs = ClientState::from_stack(&state).map_err(|e| {
        Fail(
            Exit::Runtime,
            format!("client contract {}: {e}", addr_str(&contract)),
        )
    })?;
    let proxy = client::account::read_proxy(chain.as_ref(), cs.proxy).await?;
    let prices = protocol::usage::Prices::of_params(&proxy.params);
    let a = client::receipts::audit(&text, &prices)
        .map_err(|e| Fail(Exit::Config, format!("{}: {e}", receipts.display())))?;
    let charged = u128::from(cs.tokens_used);
    println!("client contract: {}", addr_str(&contract));
    println!(
        "receipts: {} ({} duplicate lines ignored), {} adjusted tokens at {} nano each",
        a.receipts, a.duplicates, a.tokens, prices.price_per_token
    );
    println!("charged on chain: {charged} tokens");
    if charged > a.tokens {
        let over = charged - a.tokens;
        return Err(Fail(
            Exit::Overcharged,
            format!(
                "over-charged: the chain shows {charged} tokens charged, the receipts justify \
                 {}: {over} tokens ({}) more",
                a.tokens,
                amount_str(over.saturating_mul(u128::from(prices.price_per_token)))
            ),
        ));
    }
    println!(
        "not over-charged: {} tokens received and not yet charged",
        a.tokens - charged
    );
    Ok(())
}

fn print_state(cs: &ClientState) {
    println!("  state: {}", state_name(cs.state));
    println!("  balance: {}", amount_str(cs.balance));
    println!("  stake: {}", amount_str(cs.stake));
    println!("  tokens used: {}", cs.tokens_used);
    if cs.state == 1 {
        println!("  unlock time: {}", cs.unlock_ts);
    }
    match cs.secret_hash {
        Some(h) if h == [0; 32] => println!("  bound account: none (run `account bind`)"),
        Some(h) => println!("  bound account hash: {}", hex::encode(h)),
        None => {}
    }
}

fn report(what: &str, a: &Account, o: &Outcome) {
    println!(
        "{what}: wallet {} sent {} to client contract {}",
        a.wallet().address(),
        amount_str(o.value),
        a.client_address()
    );
    for st in &o.steps {
        let outs: Vec<String> = st
            .out
            .iter()
            .map(|(d, v)| {
                let d = d
                    .map(|d| d.to_string())
                    .unwrap_or_else(|| "external".into());
                format!("{} to {d}", client::account::ton_str(*v))
            })
            .collect();
        println!(
            "  {} {}: in {}, exit {}, fee {}{}",
            st.role,
            st.addr,
            client::account::ton_str(st.value_in),
            st.exit_code.map_or("-".to_string(), |c| c.to_string()),
            client::account::ton_str(st.fee),
            if outs.is_empty() {
                String::new()
            } else {
                format!(", sent {}", outs.join(", "))
            }
        );
    }
    match &o.client_state {
        Some(cs) => {
            println!("client contract: {}", a.client_address());
            print_state(cs);
        }
        None => println!("client contract: {} not deployed", a.client_address()),
    }
}
