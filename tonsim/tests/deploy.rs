//! Must-show 1: the proxy, client and worker contracts deploy at the addresses the `ton` crate
//! derives, and the executor's account address (from the StateInit it checks) is the same.

mod common;
use common::*;
use tonsim::chain::tycho_address;
use tonsim::{Compute, Status};

#[test]
fn addresses_match_golden_vectors_and_tycho() {
    for (init, name) in [
        (proxy_init(), "proxy_addr"),
        (client_init(), "client_addr"),
        (worker_init(), "worker_addr"),
    ] {
        let ours = init.address().unwrap();
        assert_eq!(ours, vector_addr(name), "{name}");
        assert_eq!(tycho_address(&init).unwrap(), ours, "{name} (tycho-types)");
    }
}

#[test]
fn deploys_proxy_client_worker() {
    let mut c = chain();
    // fees as the official emulator charged them (flow.js): 259,600 / 238,800 / 259,600 nano
    for (init, from, value, fees) in [
        (proxy_init(), "proxyOwner", 2 * TON, 259_600),
        (client_init(), "clientOwner", 800_000_000, 238_800),
        (worker_init(), "workerOwner", 300_000_000, 259_600),
    ] {
        let addr = init.address().unwrap();
        let code_hash = init.code.hash();
        let data_hash = init.data.hash();
        let txs = deploy(&mut c, from, init, value);
        let first = &txs[0];
        assert_eq!(first.account, addr, "{}", show(&txs));
        assert!(first.in_msg.as_ref().unwrap().has_init);
        assert!(
            matches!(
                first.compute,
                Compute::Executed {
                    exit_code: 0,
                    success: true,
                    ..
                }
            ),
            "{}",
            show(&txs)
        );
        assert!(txs.iter().all(|t| t.success()), "{}", show(&txs));
        let acc = c.account(&addr).unwrap().unwrap();
        assert_eq!(acc.status, Status::Active);
        assert_eq!(acc.code.unwrap().hash(), code_hash);
        // Deploy with an empty body: the contracts accept it without changing their data.
        assert_eq!(acc.data.unwrap().hash(), data_hash);
        assert_eq!(first.total_fees, fees);
        assert_eq!(acc.balance, value - fees);
    }
}
