//! `cocoon-client account` end to end on the real contract code: a local chain (tonsim,
//! running Cocoon's compiled contracts) behind its toncenter-style HTTP server, reached through
//! the real `HttpChain`. A proxy contract is deployed and the client's Cocoon wallet funded on
//! the chain directly; everything after that goes through the account commands: init → deploy
//! → balance → topup → withdraw → refund (closing) → refund after the delay (closed), with the
//! contract's refusals (1001, 1011) reported by exit code; and the error cases (insufficient
//! funds, wrong proxy address, chain unreachable, key file exists), also through the binary.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use client::account::{Account, AccountError, WaitOptions, Wallet, TON};
use ton::address::Addr;
use ton::cell::Cell;
use ton::contracts::{ContractKind, ProxyData};
use ton::params::ParamsV3;
use tonsim::http_server::LocalServer;
use tonsim::{AccountStatus, ChainError, HttpChain, Internal, LocalChain, TonChain};

const NOW: u32 = 1_750_000_000;

fn funder() -> Addr {
    Addr::basechain([0xf0; 32])
}
fn wallet_owner() -> Addr {
    Addr::basechain([0x0e; 32])
}
fn proxy_owner() -> Addr {
    Addr::basechain([0x9a; 32])
}
fn root() -> Addr {
    Addr::basechain([0x88; 32])
}
fn proxy_key() -> [u8; 32] {
    ed25519_dalek::SigningKey::from_bytes(&[1; 32])
        .verifying_key()
        .to_bytes()
}
fn proxy_data() -> ProxyData {
    let pp =
        ParamsV3::reference().for_proxy(ContractKind::Worker.code(), ContractKind::Client.code());
    ProxyData::initial(proxy_owner(), proxy_key(), root(), pp)
}
fn proxy_addr() -> Addr {
    proxy_data().state_init().unwrap().address().unwrap()
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cocoon-account-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A chain with the proxy contract deployed (2 TON) and `wallet_funds` on the (uninit) wallet.
fn local_chain(wallet: Addr, wallet_funds: u128) -> LocalChain {
    LocalChain::spawn(move || {
        let mut c = tonsim::Chain::new(NOW)?;
        c.add_treasury(funder(), 1_000_000 * TON)?;
        c.add_treasury(proxy_owner(), 1_000_000 * TON)?;
        c.add_treasury(wallet_owner(), 0)?;
        let init = proxy_data()
            .state_init()
            .map_err(|e| tonsim::SimError::Config {
                what: "proxy state init",
                reason: e.to_string(),
            })?;
        c.send_internal(&Internal {
            src: proxy_owner(),
            dst: proxy_addr(),
            value: 2 * TON,
            bounce: false,
            init: Some(init),
            body: Cell::empty(),
        })?;
        c.send_internal(&Internal {
            src: funder(),
            dst: wallet,
            value: wallet_funds,
            bounce: false,
            init: None,
            body: Cell::empty(),
        })?;
        Ok(c)
    })
    .unwrap()
}

fn fast() -> WaitOptions {
    WaitOptions {
        timeout: Duration::from_secs(20),
        poll: Duration::from_millis(20),
    }
}

fn wallet_from(key: &Path) -> Wallet {
    let seed = client::key::read_seed(key).unwrap();
    Wallet::new(&seed, wallet_owner()).unwrap()
}

async fn wallet_balance(c: &dyn TonChain, w: &Addr) -> u128 {
    c.account(w).await.unwrap().balance
}

async fn binary(args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_cocoon-client"))
        .args(args)
        .env_remove("TONCENTER_API_KEY")
        .output()
        .await
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_flow_over_http_on_the_real_contracts() {
    let dir = tmp("flow");
    let key = dir.join("wallet.key");
    let key_s = key.to_str().unwrap().to_string();
    let owner_s = wallet_owner().to_string();

    // init through the binary: key file (0600) and the wallet address
    let (code, out, err) = binary(&["account", "init", "--key", &key_s, "--owner", &owner_s]).await;
    assert_eq!(code, 0, "{out}{err}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let wallet = wallet_from(&key);
    assert!(
        out.contains(&format!("wallet: {}", wallet.address())),
        "{out}"
    );
    // again: refused, the key is unchanged
    let before = std::fs::read(&key).unwrap();
    let (code, _, err) = binary(&["account", "init", "--key", &key_s, "--owner", &owner_s]).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("refusing to overwrite"), "{err}");
    assert_eq!(std::fs::read(&key).unwrap(), before);

    let waddr = wallet.address();
    let local = local_chain(waddr, 20 * TON);
    let server = LocalServer::start(local.clone()).await.unwrap();
    let url = server.url();
    let http: Arc<dyn TonChain> = Arc::new(HttpChain::new(&url, None).unwrap());

    // the binary: address and balance before the deploy
    let proxy_s = proxy_addr().to_string();
    let common = [
        "--key",
        &key_s,
        "--owner",
        &owner_s,
        "--proxy",
        &proxy_s,
        "--chain",
        &url,
        "--poll-ms",
        "20",
        "--timeout",
        "20",
    ];
    let run = |cmd: &'static [&'static str]| {
        let mut v: Vec<String> = vec!["account".into()];
        v.extend(cmd.iter().map(|s| s.to_string()));
        v.extend(common.iter().map(|s| s.to_string()));
        v
    };
    let args = run(&["address"]);
    let (code, out, err) = binary(&args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    assert_eq!(code, 0, "{out}{err}");

    let acct = Account::open(http.clone(), wallet_from(&key), proxy_addr(), fast())
        .await
        .unwrap();
    let client_addr = acct.client_address();
    assert!(
        out.contains(&format!("client contract: {client_addr}")),
        "{out}"
    );
    let b = acct.balances().await.unwrap();
    assert_eq!(b.wallet_status, AccountStatus::Uninit);
    assert_eq!(b.wallet_balance, 20 * TON);
    assert_eq!(b.client_state, None);
    assert!(matches!(
        acct.top_up(TON).await,
        Err(AccountError::NotDeployed { .. })
    ));
    assert!(matches!(
        acct.deploy(TON / 2).await,
        Err(AccountError::Amount { .. })
    ));

    // deploy with 3 TON: the wallet deploys itself with this first external
    let o = acct.deploy(3 * TON).await.unwrap();
    let cs = o.client_state.clone().unwrap();
    assert_eq!((cs.state, cs.balance, cs.stake), (0, 3 * TON, TON));
    assert_eq!(cs.owner, waddr);
    assert_eq!(cs.proxy, proxy_addr());
    assert_eq!(cs.proxy_public_key, proxy_key());
    assert_eq!(o.steps[0].role, "wallet");
    assert!(o.steps.iter().any(|s| s.role == "client contract"));
    assert!(o.steps.iter().any(|s| s.role == "proxy contract"));
    assert_eq!(
        http.account(&waddr).await.unwrap().status,
        AccountStatus::Active
    );
    assert!(matches!(
        acct.deploy(3 * TON).await,
        Err(AccountError::AlreadyDeployed { .. })
    ));

    // balance through the binary shows the stake and the balance
    let args = run(&["balance"]);
    let (code, out, err) = binary(&args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("state: normal"), "{out}");
    assert!(
        out.contains("balance: 3.000000000 TON (3000000000 nanoton)"),
        "{out}"
    );
    assert!(
        out.contains("stake: 1.000000000 TON (1000000000 nanoton)"),
        "{out}"
    );

    // bind: the contract's secret hash becomes the binding hash of the client's TLS account
    // key (through the binary), which is what the proxy bills by
    let cs = acct.client_state().await.unwrap().unwrap();
    assert_eq!(cs.secret_hash, Some([0; 32]), "unbound after deploy");
    let account_key = dir.join("bind-account.key");
    let (tls_key, created) = client::key::load_or_create(&account_key).unwrap();
    assert!(created);
    let mut public = [0u8; 32];
    hex::decode_to_slice(tls_key.account_id(), &mut public).unwrap();
    let mut args = run(&["bind"]);
    args.extend([
        "--account-key".to_string(),
        account_key.display().to_string(),
    ]);
    let (code, out, err) = binary(&args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&tls_key.account_id()), "{out}");
    let cs = acct.client_state().await.unwrap().unwrap();
    assert_eq!(
        cs.secret_hash,
        Some(ton::contracts::account_binding_hash(&public))
    );
    // a missing key file is a configuration error, nothing is sent
    let args = run(&["bind", "--account-key", "/nonexistent/client.key"]);
    let (code, _, err) = binary(&args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("/nonexistent/client.key"), "{err}");

    // top-up: the stored balance rises by exactly the amount; the wallet pays the amount and
    // fees, the rest of the attached value comes back
    // (through the binary)
    let w0 = wallet_balance(http.as_ref(), &waddr).await;
    let args = run(&["topup", "--amount", "2000000000"]);
    let (code, out, err) = binary(&args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("sent 2.200000000 TON (2200000000 nanoton)"),
        "{out}"
    );
    assert!(
        out.contains("balance: 5.000000000 TON (5000000000 nanoton)"),
        "{out}"
    );
    let cs = acct.client_state().await.unwrap().unwrap();
    assert_eq!(cs.balance, 5 * TON);
    let w1 = wallet_balance(http.as_ref(), &waddr).await;
    let spent = w0 - w1;
    assert!(
        spent > 2 * TON && spent < 2 * TON + 50_000_000,
        "spent {spent}"
    );
    // the excess of the attached value comes back to the wallet
    assert!(
        out.lines()
            .any(|l| l.trim_start().starts_with("wallet ") && !l.contains("in 0.000000000 TON")),
        "{out}"
    );

    // withdraw: the balance above the stake (4 TON) goes back to the wallet
    let o = acct.withdraw().await.unwrap();
    assert_eq!(o.client_state.as_ref().unwrap().balance, TON);
    let w2 = wallet_balance(http.as_ref(), &waddr).await;
    assert!(w2 > w1 + 4 * TON - 50_000_000, "{w1} → {w2}");
    // again: nothing above the stake → the contract refuses with 1001
    match acct.withdraw().await {
        Err(
            e @ AccountError::Failed {
                role: "client contract",
                exit_code: Some(1001),
                ..
            },
        ) => assert!(e.to_string().contains("exit code 1001"), "{e}"),
        other => panic!("expected exit 1001, got {other:?}"),
    }

    // refund: closing, unlock after client_delay_before_close
    let o = acct.request_refund().await.unwrap();
    let cs = o.client_state.unwrap();
    assert_eq!((cs.state, cs.unlock_ts), (1, NOW + 86_400));
    // too early → 1011, named
    match acct.request_refund().await {
        Err(
            e @ AccountError::Failed {
                exit_code: Some(1011),
                ..
            },
        ) => assert!(e.to_string().contains("not unlocked yet"), "{e}"),
        other => panic!("expected exit 1011, got {other:?}"),
    }
    // after the delay: closed (forced refund; this proxy has no stake, so it pays 0)
    local
        .run(|c| c.set_now(NOW + 86_401))
        .await
        .unwrap()
        .unwrap();
    let o = acct.request_refund().await.unwrap();
    let cs = o.client_state.unwrap();
    assert_eq!((cs.state, cs.balance), (2, 0));
    // closed: a top-up is refused by the contract (1006)
    match acct.top_up(TON).await {
        Err(AccountError::Failed {
            exit_code: Some(1006),
            ..
        }) => {}
        other => panic!("expected exit 1006, got {other:?}"),
    }
    let args = run(&["topup", "--amount", "1000000000"]);
    let (code, out, err) = binary(&args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("client contract") && err.contains("exit code 1006 (contract is closed)"),
        "{err}"
    );

    // insufficient funds: refused before sending, naming the amounts
    let seqno_before = http.account(&waddr).await.unwrap().last_tx;
    match acct.top_up(1000 * TON).await {
        Err(e @ AccountError::InsufficientFunds { .. }) => {
            let s = e.to_string();
            assert!(
                s.contains("insufficient funds") && s.contains("1000.200000000 TON"),
                "{s}"
            );
        }
        other => panic!("expected insufficient funds, got {other:?}"),
    }
    assert_eq!(http.account(&waddr).await.unwrap().last_tx, seqno_before);

    // wrong proxy addresses
    match Account::open(
        http.clone(),
        wallet_from(&key),
        Addr::basechain([0x42; 32]),
        fast(),
    )
    .await
    {
        Err(e @ AccountError::ProxyNotFound { .. }) => {
            assert!(e.to_string().contains("check the proxy address"), "{e}")
        }
        other => panic!("expected proxy not found, got {other:?}"),
    }
    match Account::open(http.clone(), wallet_from(&key), waddr, fast()).await {
        Err(AccountError::ProxyInvalid { reason, .. }) => {
            assert!(reason.contains("wallet code"), "{reason}")
        }
        other => panic!("expected an invalid proxy, got {other:?}"),
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wallet_without_enough_funds_is_refused_before_sending() {
    let dir = tmp("poor");
    let key = dir.join("wallet.key");
    client::key::create_seed(&key).unwrap();
    // a second create never overwrites
    match client::key::create_seed(&key) {
        Err(client::key::KeyFileError::Io { source, .. }) => {
            assert_eq!(source.kind(), std::io::ErrorKind::AlreadyExists)
        }
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    let wallet = wallet_from(&key);
    // 3 TON: a 1 TON deploy would leave less than the 2 TON the wallet needs to send again
    let local = local_chain(wallet.address(), 3 * TON);
    let server = LocalServer::start(local).await.unwrap();
    let http: Arc<dyn TonChain> = Arc::new(HttpChain::new(&server.url(), None).unwrap());
    let acct = Account::open(http.clone(), wallet, proxy_addr(), fast())
        .await
        .unwrap();
    match acct.deploy(TON).await {
        Err(AccountError::InsufficientFunds { balance, value, .. }) => {
            assert_eq!((balance, value), (3 * TON, TON + 300_000_000))
        }
        other => panic!("expected insufficient funds, got {other:?}"),
    }
    let w = http.account(&acct.wallet().address()).await.unwrap();
    assert_eq!((w.status, w.balance), (AccountStatus::Uninit, 3 * TON));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn an_unreachable_chain_is_a_clear_error() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/api/v2", l.local_addr().unwrap());
    drop(l);
    let dir = tmp("down");
    let key = dir.join("wallet.key");
    client::key::create_seed(&key).unwrap();
    let http: Arc<dyn TonChain> = Arc::new(HttpChain::new(&url, None).unwrap());
    match Account::open(http, wallet_from(&key), proxy_addr(), fast()).await {
        Err(AccountError::Chain(ChainError::Unreachable { .. })) => {}
        other => panic!("expected unreachable, got {other:?}"),
    }
    let key_s = key.to_str().unwrap();
    let owner_s = wallet_owner().to_string();
    let proxy_s = proxy_addr().to_string();
    let (code, out, err) = binary(&[
        "account", "balance", "--key", key_s, "--owner", &owner_s, "--proxy", &proxy_s, "--chain",
        &url,
    ])
    .await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("cannot reach"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    // a missing setting is a usage error naming the flag
    let (code, _, err) = binary(&["account", "balance", "--key", key_s, "--owner", &owner_s]).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--proxy"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The client's own charge, as Cocoon's client sends it once its unpaid usage passes half its
/// stake: vouchers signed with the proxy key Kp (seed `[1; 32]`, as the proxy hands them out
/// on `GET /cocoon/v1/charge`) are checked, then submitted from the client's wallet to its
/// contract running the real code, which charges exactly the voucher's count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_submits_its_own_charge_past_half_its_stake() {
    use client::account::charge::{decide, ChargeError, Decision};
    use protocol::payout::ChargeVoucher;
    use ton::messages::signed::{build_signed, SignedOp, SignedPayload};

    let dir = tmp("charge");
    let key = dir.join("wallet.key");
    client::key::create_seed(&key).unwrap();
    let wallet = wallet_from(&key);
    let local = local_chain(wallet.address(), 20 * TON);
    let server = LocalServer::start(local).await.unwrap();
    let http: Arc<dyn TonChain> = Arc::new(HttpChain::new(&server.url(), None).unwrap());
    let acct = Account::open(http.clone(), wallet, proxy_addr(), fast())
        .await
        .unwrap();
    acct.deploy(3 * TON).await.unwrap();
    let state = acct.client_state().await.unwrap().unwrap();
    let price = acct.proxy().params.price_per_token.nano();
    let half_stake_tokens = u64::try_from(state.stake / 2 / price).unwrap();
    let kp = ed25519_dalek::SigningKey::from_bytes(&[1; 32]);
    let client = acct.client_address();
    let voucher = |key: &ed25519_dalek::SigningKey, target: Addr, op: SignedOp, tokens: u64| {
        let payload = SignedPayload {
            op,
            qid: 7,
            tokens: Some(tokens),
            expected_address: target,
        };
        let body = build_signed(key, &payload, &proxy_owner()).unwrap();
        ChargeVoucher {
            proxy_contract: proxy_addr().to_string(),
            client_contract: target.to_string(),
            tokens,
            voucher: ton::boc::encode_hex(&body),
        }
    };
    let due = half_stake_tokens + 10;
    let v = voucher(&kp, client, SignedOp::Charge, due);

    // Below half the stake: left to the proxy (unless forced).
    let small = voucher(&kp, client, SignedOp::Charge, half_stake_tokens / 2);
    assert!(matches!(
        decide(&acct, &state, &small, None, false).unwrap(),
        Decision::BelowHalfStake { .. }
    ));
    assert!(matches!(
        decide(&acct, &state, &small, None, true).unwrap(),
        Decision::Submit { .. }
    ));

    // Refused, named: another key, another contract, another op, a count the signature does
    // not carry, and more than the receipts justify.
    let invalid = |v: &ChargeVoucher, want: &str| match decide(&acct, &state, v, None, false) {
        Err(ChargeError::Invalid(m)) => assert!(m.contains(want), "{m}"),
        other => panic!("{want}: {other:?}"),
    };
    let other_key = ed25519_dalek::SigningKey::from_bytes(&[2; 32]);
    invalid(
        &voucher(&other_key, client, SignedOp::Charge, due),
        "signature",
    );
    invalid(
        &voucher(&kp, Addr::basechain([5; 32]), SignedOp::Charge, due),
        "for client contract",
    );
    invalid(
        &voucher(&kp, client, SignedOp::GrantRefund, due),
        "expected a charge",
    );
    let mut lying = v.clone();
    lying.tokens = due - 1;
    invalid(&lying, "signed count");
    match decide(&acct, &state, &v, Some(due - 3), false) {
        Err(ChargeError::Overcharged {
            voucher,
            justified,
            over,
            over_nano,
        }) => assert_eq!(
            (voucher, justified, over, over_nano),
            (due, due - 3, 3, 3 * price)
        ),
        other => panic!("expected an over-charge, got {other:?}"),
    }

    // Due: submitted from the wallet; the contract charges exactly the voucher's count.
    let Decision::Submit {
        body,
        tokens,
        charged,
        unpaid_nano,
    } = decide(&acct, &state, &v, Some(due), false).unwrap()
    else {
        panic!("expected a submission")
    };
    assert_eq!((tokens, charged), (due, 0));
    assert_eq!(unpaid_nano, u128::from(due) * price);
    let o = acct.submit_charge(body).await.unwrap();
    let after = o.client_state.unwrap();
    assert_eq!(after.tokens_used, due);
    assert_eq!(state.balance - after.balance, u128::from(due) * price);
    // The same voucher again: nothing is due.
    assert!(matches!(
        decide(&acct, &after, &v, Some(due), false).unwrap(),
        Decision::NothingDue { charged } if charged == due
    ));

    // What `serve` with `[account]` runs every `check_secs` (`charge::round`):
    use client::account::charge::{round, Round};
    // receipts justify what is charged, nothing unpaid: the proxy is not even asked;
    let idle = round(&acct, Some(due), || async {
        panic!("the proxy is asked only when the unpaid usage passes half the stake")
    })
    .await
    .unwrap();
    assert_eq!(idle, Round::Idle);
    // unpaid usage past half the stake: the voucher is fetched, checked and submitted;
    let next = due + half_stake_tokens + 1;
    let v2 = voucher(&kp, client, SignedOp::Charge, next);
    let done = round(&acct, Some(next), || async { Ok(v2.clone()) })
        .await
        .unwrap();
    assert_eq!(done, Round::Submitted { tokens: next });
    assert_eq!(
        acct.client_state().await.unwrap().unwrap().tokens_used,
        next
    );
    // the proxy has nothing (404): idle;
    let none = round(&acct, None, || async {
        Err(protocol::ApiError::new(
            protocol::ErrorKind::NotFound,
            "nothing due",
        ))
    })
    .await
    .unwrap();
    assert_eq!(none, Round::Idle);
    // the chain shows more charged than the receipts justify (the proxy charged itself):
    // the over-charge is named and ends the client.
    match round(&acct, Some(next - 5), || async { Ok(v2.clone()) }).await {
        Err(ChargeError::ChargedTooMuch {
            charged: voucher,
            justified,
            over,
            over_nano,
        }) => assert_eq!(
            (voucher, justified, over, over_nano),
            (next, next - 5, 5, 5 * price)
        ),
        other => panic!("expected an over-charge, got {other:?}"),
    }

    // The same through `cocoon-client serve` with `[account]`: its receipt log is empty, the
    // chain shows `next` tokens charged to its contract, so the client stops (exit 3) and
    // names the amount. (The proxy address is closed: the chain check needs no proxy.)
    let url = server.url();
    std::fs::write(
        dir.join("account.toml"),
        format!(
            "key = \"wallet.key\"\nowner = \"{}\"\nproxy = \"{}\"\nchain = \"{url}\"\npoll_ms = 20\ntimeout_secs = 20\n",
            wallet_owner(),
            proxy_addr()
        ),
    )
    .unwrap();
    std::fs::write(dir.join("receipts.jsonl"), b"").unwrap();
    let config = dir.join("client.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\nproxy = \"127.0.0.1:9\"\naccount_key_file = \"account.key\"\n\
             encryption = \"off\"\nreceipts_file = \"receipts.jsonl\"\n\
             [policy]\nimages = [\"{}\"]\nrtmr3 = [\"{}\"]\n\
             [account]\nsettings = \"account.toml\"\ncheck_secs = 1\n",
            "ab".repeat(32),
            "cd".repeat(48)
        ),
    )
    .unwrap();
    let started = std::time::Instant::now();
    let (code, out, err) = tokio::time::timeout(
        Duration::from_secs(60),
        binary(&["serve", "--config", config.to_str().unwrap()]),
    )
    .await
    .expect("serve stops by itself");
    assert_eq!(code, 3, "{out}{err}");
    let want = format!(
        "over-charged: the chain shows {next} tokens charged to this client contract, the \
         receipts justify 0: {next} tokens ({} nanoton) more",
        u128::from(next) * price
    );
    assert!(err.contains(&want), "{err}");
    assert!(started.elapsed() < Duration::from_secs(30));
    let _ = std::fs::remove_dir_all(&dir);
}
