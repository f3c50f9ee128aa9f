//! The payments engine on a local chain running Cocoon's real contracts (`tonsim::LocalChain`
//! behind `Arc<dyn TonChain>`): the proxy's wallet deploys itself and the proxy contract; a
//! client contract is topped up; usage billed in the durable ledger is anchored, charged with
//! a voucher and seen back through the 1-nano notification; forged notifications and anchors
//! are ignored; a worker cashes a payout voucher; proxy fees are withdrawn; a closing client
//! gets its refund; a restored older ledger file stops the engine with `AnchorAhead`.

use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use proxy::ledger::durable::RollbackError;
use proxy::payments::{Health, PaymentsConfig, PaymentsError, ProxyWallet};
use ton::address::Coins;
use ton::cell::Cell;
use ton::contracts::{ProxyData, WorkerData};
use ton::messages::notify::{ClientNotification, ClientSnapshot};
use ton::messages::signed::{SignedMessage, SignedOp};
use ton::messages::unsigned::Request;
use tonsim::TonChain;

mod common;

use common::chain::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anchor_charge_payout_refund_on_the_real_contracts() {
    let d = dir("flow");
    let ledger = open_ledger(&d.join("ledger.redb"));
    let worker_wallet_key = SigningKey::from_bytes(&[5; 32]);
    let wallet_addr = wallet_address(&wallet_key(), owner());
    let worker_wallet_addr = wallet_address(&worker_wallet_key, worker_owner());
    let local = local_chain(wallet_addr, worker_wallet_addr);
    let chain: Arc<dyn TonChain> = Arc::new(local.clone());
    let p = engine(&chain, &ledger, config());

    // a wallet without funds says so before sending anything
    let empty = ProxyWallet::new(
        chain.clone(),
        SigningKey::from_bytes(&[6; 32]),
        owner(),
        Duration::from_secs(1),
        Duration::from_millis(10),
    )
    .unwrap();
    match empty.send_one(owner(), TON, false, None, None).await {
        Err(proxy::payments::WalletError::Underfunded {
            balance: 0, needed, ..
        }) => assert_eq!(needed, 3 * TON),
        other => panic!("expected Underfunded, got {other:?}"),
    }
    assert_eq!(p.wallet().address(), wallet_addr);
    assert_eq!(p.wallet().seqno().await.unwrap(), None, "not deployed yet");
    let client = deploy_proxy_and_client(&p, &local).await;
    assert_eq!(
        p.wallet().seqno().await.unwrap(),
        Some(1),
        "deployed with its first external"
    );

    // the worker contract
    let worker_init = WorkerData::initial(
        worker_owner(),
        p.proxy_contract(),
        kp().verifying_key().to_bytes(),
        params(),
    )
    .state_init()
    .unwrap();
    let worker = worker_init.address().unwrap();
    assert_eq!(p.worker_contract(&worker_owner()).unwrap(), worker);
    send(
        &local,
        worker_owner(),
        worker,
        300_000_000,
        Some(worker_init),
        Cell::empty(),
    )
    .await;

    // forgeries: a client notification claiming 1000 TON from an address that is not the
    // derived contract (for the real owner, and for the forger as owner), and an anchor from
    // someone other than the proxy's wallet
    for claimed_owner in [client_owner(), forger()] {
        let forged = ClientNotification {
            qid: 1,
            owner: claimed_owner,
            snapshot: ClientSnapshot {
                state: 0,
                balance: Coins::from_nano(1000 * TON),
                stake: Coins::from_nano(1000 * TON),
                tokens_used: 0,
                secret_hash: [0; 32],
            },
            payload: None,
        }
        .to_cell()
        .unwrap();
        send(&local, forger(), p.proxy_contract(), 1, None, forged).await;
    }
    let forged_anchor = Request::SaveState {
        qid: 1,
        seqno: 1000,
        hash: [0xaa; 32],
    }
    .to_cell()
    .unwrap();
    send(
        &local,
        forger(),
        p.proxy_contract(),
        10_000_000,
        None,
        forged_anchor,
    )
    .await;

    // the watcher reads the history: the top-up, not the forgeries
    assert_eq!(*p.health().borrow(), Health::Syncing);
    assert!(matches!(p.settle().await, Err(PaymentsError::NotSynced)));
    p.sync_chain().await.unwrap();
    assert_eq!(*p.health().borrow(), Health::Healthy);
    let a = ledger.client(&client.to_string()).expect("client observed");
    assert_eq!((a.balance_nano, a.stake_nano), (5 * TON as u64, TON as u64));
    assert!(ledger.client(&forger().to_string()).is_none());
    // The TLS account bound by the contract's secret hash maps to it; other keys to nothing.
    assert_eq!(p.account_contract(&hex::encode(ACCOUNT_KEY)), Some(client));
    assert_eq!(p.account_contract(&hex::encode([0xad; 32])), None);
    assert_eq!(p.account_contract("not hex"), None);
    // The relay's view: the bound account reserves from its contract, an unbound one is told
    // which secret hash to set.
    {
        use proxy::ledger::{Ledger, LedgerError};
        let paid = proxy::payments::PaidLedger::new(ledger.clone(), p.clone());
        let r = paid.reserve(&hex::encode(ACCOUNT_KEY), 1_000).unwrap();
        assert_eq!(r.account, client.to_string());
        paid.release(&r).unwrap();
        assert_eq!(
            paid.balance(&hex::encode(ACCOUNT_KEY)),
            ledger.balance(&client.to_string())
        );
        match paid.reserve(&hex::encode([0xad; 32]), 1) {
            Err(LedgerError::Unbound { binding, .. }) => assert_eq!(
                binding,
                hex::encode(ton::contracts::account_binding_hash(&[0xad; 32]))
            ),
            other => panic!("expected Unbound, got {other:?}"),
        }
    }
    let stats = p.stats();
    assert_eq!(stats.ignored_messages, 3, "{stats:?}");
    assert_eq!(stats.last_anchor_seqno, None);
    assert_eq!(stats.history_gaps, 0, "pages doubled until the history fit");

    // run the engine; bill 100,000 tokens (0.1 TON: the test threshold) to the client and the
    // worker
    let task = p.start();
    bill(&ledger, &client, Some(&worker), 100_000).await;
    let c2 = chain.clone();
    until("the charge to land on the client contract", || {
        let c2 = c2.clone();
        async move { client_state(&c2, &client).await.tokens_used == 100_000 }
    })
    .await;
    let s = client_state(&chain, &client).await;
    assert_eq!(
        s.balance,
        5 * TON - 100_000 * u128::from(PRICE),
        "exactly count × price"
    );
    // the client contract's 1-nano notification (compute skipped) updated the ledger
    until("the charge notification", || async {
        ledger.client(&client.to_string()).unwrap().charged_tokens == 100_000
    })
    .await;
    let proxy_txs = chain
        .transactions(&p.proxy_contract(), 0, 100)
        .await
        .unwrap();
    assert!(
        proxy_txs.iter().any(|t| {
            t.exit_code.is_none()
                && t.in_msg
                    .as_deref()
                    .and_then(|m| proxy::payments::inbound::parse_inbound(m).ok().flatten())
                    .is_some_and(|m| m.src == client && m.value == 1)
        }),
        "a compute-skipped 1-nano notification from the client contract"
    );
    let a = ledger.client(&client.to_string()).unwrap();
    assert_eq!(
        (a.used_tokens, a.anchored_tokens, a.voucher_tokens),
        (100_000, 100_000, 100_000)
    );
    let stats = p.stats();
    assert!(stats.last_anchor_seqno.is_some(), "{stats:?}");
    assert_eq!(stats.clients[&client.to_string()].pending_tokens, 0);
    assert_eq!(stats.health, "healthy");
    serde_json::to_string(&stats).unwrap();
    // a voucher for the same count is the same bytes
    assert_eq!(
        p.voucher(SignedOp::Charge, &client, 100_000).unwrap(),
        p.voucher(SignedOp::Charge, &client, 100_000).unwrap()
    );

    // payout: the worker's wallet sends the voucher (repacked with its own excess address)
    let (count, voucher) = p.payout_voucher(&worker).await.unwrap().expect("anchored");
    assert_eq!(count, 100_000);
    let (again_count, again) = p.payout_voucher(&worker).await.unwrap().unwrap();
    assert_eq!(
        (again_count, &again),
        (count, &voucher),
        "the same voucher again"
    );
    let repacked = SignedMessage::parse(&voucher)
        .unwrap()
        .repack(&worker_wallet_addr)
        .unwrap();
    let worker_wallet = ProxyWallet::new(
        chain.clone(),
        worker_wallet_key,
        worker_owner(),
        Duration::from_secs(2),
        Duration::from_millis(10),
    )
    .unwrap();
    let before = balance(&local, worker_owner()).await;
    let mark = log_len(&local).await;
    worker_wallet
        .send_one(worker, 700_000_000, true, None, Some(repacked))
        .await
        .unwrap();
    let owner_fees = fees_since(&local, worker_owner(), mark).await;
    assert_eq!(
        balance(&local, worker_owner()).await + owner_fees - before,
        u128::from(count) * WORKER_FEE,
        "worker owner receives Δ × worker_fee"
    );
    until("the worker notification", || async {
        p.paid_worker_tokens().get(&worker) == Some(&100_000)
    })
    .await;
    let ws = &p.stats().workers[&worker.to_string()];
    assert_eq!((ws.paid_nano, ws.pending_tokens), (40_000_000, 0));

    // proxy fees: Δ × (price − worker_fee) go to the proxy contract's owner
    let proxy = p.proxy_contract();
    let data = local.run(move |c| c.data(&proxy).unwrap()).await.unwrap();
    let fees = ProxyData::from_cell(&data).unwrap().balance.nano();
    assert_eq!(fees, 100_000 * (u128::from(PRICE) - WORKER_FEE));
    let before = balance(&local, owner()).await;
    let mark = log_len(&local).await;
    p.withdraw_fees().await.unwrap();
    let owner_fees = fees_since(&local, owner(), mark).await;
    assert_eq!(balance(&local, owner()).await + owner_fees - before, fees);

    // a closing client gets grant_refund for everything billed (5,000 more tokens, below the
    // charge threshold)
    bill(&ledger, &client, None, 5_000).await;
    let refund = Request::RequestRefund {
        qid: 9,
        excess: client_owner(),
    }
    .to_cell()
    .unwrap();
    send(&local, client_owner(), client, 500_000_000, None, refund).await;
    let c2 = chain.clone();
    until("the refund", || {
        let c2 = c2.clone();
        async move { client_state(&c2, &client).await.state == 2 }
    })
    .await;
    let s = client_state(&chain, &client).await;
    assert_eq!(s.tokens_used, 105_000);
    assert_eq!(s.balance, 0);
    until("the closed state in the stats", || async {
        p.stats().clients[&client.to_string()].chain_state == Some(2)
    })
    .await;
    assert_eq!(*p.health().borrow(), Health::Healthy);
    task.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_older_ledger_is_fatal() {
    let d = dir("rollback");
    let path = d.join("ledger.redb");
    let backup = d.join("backup.redb");
    let wallet_addr = wallet_address(&wallet_key(), owner());
    let local = local_chain(wallet_addr, addr(0x77));
    let chain: Arc<dyn TonChain> = Arc::new(local.clone());
    let c = PaymentsConfig {
        charge_threshold_nano: 1_000 * 1_000_000_000,
        ..config()
    };

    // first run: 1,000 tokens billed and anchored
    let ledger = open_ledger(&path);
    let p = engine(&chain, &ledger, c.clone());
    let client = deploy_proxy_and_client(&p, &local).await;
    p.sync_chain().await.unwrap();
    bill(&ledger, &client, None, 1_000).await;
    assert_eq!(p.anchor().await.unwrap(), Some(1));
    assert_eq!(
        ledger.client(&client.to_string()).unwrap().anchored_tokens,
        1_000
    );
    assert_eq!(p.anchor().await.unwrap(), None, "nothing new to anchor");
    drop(p);
    ledger.close();
    drop(ledger);
    std::fs::copy(&path, &backup).unwrap();

    // second run: 1,000 more, anchored as seqno 2
    let ledger = open_ledger(&path);
    let p = engine(&chain, &ledger, c.clone());
    let task = p.start();
    until("healthy", || async {
        *p.health().borrow() == Health::Healthy
    })
    .await;
    bill(&ledger, &client, None, 1_000).await;
    until("anchor 2", || async {
        p.stats().last_anchor_seqno == Some(2)
    })
    .await;
    task.shutdown().await;
    drop(p);
    ledger.close();
    drop(ledger);

    // the host restores the older file: the chain holds anchor 2, the file sent at most 1
    std::fs::copy(&backup, &path).unwrap();
    let ledger = open_ledger(&path);
    let p = engine(&chain, &ledger, c);
    let mut health = p.health();
    let task = p.start();
    let fatal = tokio::time::timeout(Duration::from_secs(15), health.wait_for(Health::is_fatal))
        .await
        .expect("reported in time")
        .unwrap()
        .clone();
    assert_eq!(
        fatal,
        Health::Fatal(RollbackError::AnchorAhead {
            chain_seqno: 2,
            ledger_seqno: 1
        })
    );
    assert!(fatal.to_string().contains("rolled back"), "{fatal}");
    task.shutdown().await;
    // nothing is signed any more
    assert!(matches!(
        p.payout_voucher(&addr(0x78)).await,
        Err(PaymentsError::Rollback(RollbackError::AnchorAhead { .. }))
    ));
    assert!(matches!(
        p.sync_chain().await,
        Err(PaymentsError::Rollback(_))
    ));
    assert!(p.stats().health.starts_with("fatal: "));
    // and the relay reserves nothing for anyone
    {
        use proxy::ledger::{Ledger, LedgerError};
        let paid = proxy::payments::PaidLedger::new(ledger.clone(), p.clone());
        assert!(matches!(
            paid.reserve(&hex::encode([0xac; 32]), 1),
            Err(LedgerError::Stopped(m)) if m.contains("rolled back")
        ));
    }
}
