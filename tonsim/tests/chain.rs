//! The chain's own behaviour: bounces, logical-time order of the log, time as a parameter, and
//! typed errors (no panics) on bad input.

mod common;
use common::*;
use ton::address::Addr;
use ton::cell::{Cell, CellBuilder};
use tonsim::log::SkipReason;
use tonsim::{Chain, Compute, Internal, SimError, Status};

fn nowhere() -> Addr {
    Addr::basechain([0xab; 32])
}

#[test]
fn bounceable_message_to_an_empty_address_bounces_back() {
    let mut c = chain();
    let before = c.balance(&treasury("relay")).unwrap();
    let txs = send(&mut c, "relay", nowhere(), TON, Cell::empty());
    assert_eq!(txs.len(), 2, "{}", show(&txs));
    // no code at the destination: compute skipped, message bounced
    assert_eq!(txs[0].account, nowhere());
    assert_eq!(txs[0].compute, Compute::Skipped(SkipReason::NoState));
    assert!(txs[0].bounced && txs[0].aborted);
    let back = &txs[0].out_msgs[0];
    assert!(back.bounced && !back.bounce);
    assert_eq!(back.dst, Some(treasury("relay")));
    // the bounce arrives, credited to the sender (minus forwarding and its own compute fees)
    assert_eq!(txs[1].account, treasury("relay"));
    assert!(txs[1].in_msg.as_ref().unwrap().bounced);
    assert_eq!(
        c.balance(&treasury("relay")).unwrap(),
        before + back.value - txs[1].total_fees
    );
    // nothing stays at the empty address
    assert!(c.account(&nowhere()).unwrap().is_none());
}

#[test]
fn non_bounceable_value_creates_an_uninit_account() {
    let mut c = chain();
    let txs = c
        .send_internal(&Internal {
            src: treasury("relay"),
            dst: nowhere(),
            value: TON,
            bounce: false,
            init: None,
            body: Cell::empty(),
        })
        .unwrap();
    assert_eq!(txs.len(), 1);
    let acc = c.account(&nowhere()).unwrap().unwrap();
    assert_eq!(acc.status, Status::Uninit);
    assert_eq!(acc.balance, TON);
}

#[test]
fn log_is_in_logical_time_order() {
    let mut c = chain();
    deploy_proxy_and_client(&mut c);
    let body = ton::messages::unsigned::Request::TopUp {
        qid: 1,
        amount: ton::address::Coins::from_nano(5 * TON),
        excess: treasury("clientOwner"),
    }
    .to_cell()
    .unwrap();
    send(&mut c, "clientOwner", client_addr(), 5_200_000_000, body);
    let lts: Vec<u64> = c.log().iter().map(|t| t.lt).collect();
    assert!(lts.windows(2).all(|w| w[0] < w[1]), "{lts:?}");
    // every outbound internal message is created after its transaction started and is
    // delivered later in the log
    for (i, t) in c.log().iter().enumerate() {
        for m in &t.out_msgs {
            assert!(m.created_lt > t.lt);
            let dst = m.dst.unwrap();
            assert!(c.log()[i + 1..].iter().any(|u| u.account == dst));
        }
        assert_eq!(t.now, NOW);
    }
}

#[test]
fn time_is_the_callers() {
    let mut c = chain();
    deploy(&mut c, "proxyOwner", proxy_init(), 2 * TON);
    let t = c.log().last().unwrap().clone();
    assert_eq!(t.now, NOW);
    c.set_now(NOW + 365 * 86_400).unwrap();
    assert_eq!(c.now(), NOW + 365 * 86_400);
    let before = c.balance(&proxy_addr()).unwrap();
    // an unknown op after a year: the contract throws, the message bounces; a year of storage
    // fees is collected first
    let mut b = CellBuilder::new();
    b.store_uint(0x0bad_0bad, 32).unwrap();
    b.store_uint(0, 64).unwrap();
    let txs = send(&mut c, "relay", proxy_addr(), TON, b.build().unwrap());
    assert_eq!(txs[0].now, NOW + 365 * 86_400);
    // exactly as the official emulator (same steps in @ton/sandbox 0.41.0 with bc.now moved
    // by a year): exit 1012, total fees 32,122,484 nano of which storage 30,715,553, bounce
    // value 998,326,400, proxy balance 1,969,024,847
    check(
        &txs[0],
        &Expect {
            account: proxy_addr(),
            in_value: TON,
            exit: Some(1012),
            aborted: true,
            fees: 32_122_484,
            outs: &[("relay", 998_326_400)],
        },
    );
    assert!(txs[0].bounced);
    assert_eq!(c.balance(&proxy_addr()).unwrap(), 1_969_024_847);
    assert_eq!(before, 2 * TON - 259_600);
}

#[test]
fn bad_input_is_a_typed_error() {
    let mut c = chain();
    // an external to an address with no account: not accepted
    assert!(matches!(
        c.send_external(nowhere(), None, &Cell::empty()),
        Err(SimError::Skipped { .. })
    ));
    // an amount that does not fit `Coins`
    let too_much = Internal {
        src: treasury("relay"),
        dst: nowhere(),
        value: 1 << 121,
        bounce: false,
        init: None,
        body: Cell::empty(),
    };
    assert!(matches!(
        c.send_internal(&too_much),
        Err(SimError::Amount(_))
    ));
    assert!(matches!(
        c.add_treasury(nowhere(), 1 << 121),
        Err(SimError::Amount(_))
    ));
    // get-method on a missing account
    assert!(matches!(
        c.run_get_method(&nowhere(), "seqno"),
        Err(SimError::NoAccount(_))
    ));
    // an unknown get-method on a real contract: a TVM exit code, not a panic
    deploy(&mut c, "clientOwner", client_init(), 800_000_000);
    assert!(matches!(
        c.run_get_method(&client_addr(), "no_such_method"),
        Err(SimError::GetMethod { .. })
    ));
    // garbage bodies to each contract: exit codes, bounces, no panics, state unchanged
    deploy(&mut c, "proxyOwner", proxy_init(), 2 * TON);
    for addr in [client_addr(), proxy_addr()] {
        let data = c.data(&addr).unwrap().hash();
        for bits in [0usize, 7, 32, 96, 1023] {
            let mut b = CellBuilder::new();
            b.store_bits(&[0xff; 128], bits).unwrap();
            let txs = send(&mut c, "relay", addr, TON, b.build().unwrap());
            assert!(!txs.is_empty());
            assert_eq!(c.data(&addr).unwrap().hash(), data, "{}", show(&txs));
        }
    }
    let _ = Chain::new(0).unwrap();
}
