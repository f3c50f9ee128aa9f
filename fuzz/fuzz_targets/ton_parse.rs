//! TON payment-contract messages, data cells, whole messages and transactions read from the chain (BOC bytes, untrusted): never panic; re-encoding is stable.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(c) = ton::boc::decode(data) else { return };
    let pk = [0x8a; 32];
    let me = ton::address::Addr::basechain([0; 32]);
    if let Ok(m) = ton::messages::signed::SignedMessage::parse(&c) {
        let _ = m.verify(&pk, &me);
    }
    let _ = ton::messages::unsigned::Request::parse(&c);
    let _ = ton::messages::notify::ClientNotification::parse(&c);
    let _ = ton::messages::notify::WorkerNotification::parse(&c);
    let _ = ton::messages::wallet::WalletExternal::parse_verified(&c, &pk, 0, 0);
    let _ = ton::messages::wallet::InternalMessage::parse(&c);
    let _ = ton::contracts::ProxyData::from_cell(&c);
    let _ = ton::contracts::WorkerData::from_cell(&c);
    let _ = ton::contracts::ClientData::from_cell(&c);
    let _ = ton::params::ParamsV3::from_cell(&c);
    let _ = ton::explain::explain(&c);
    let _ = ton::transaction::Message::parse(&c);
    let _ = ton::transaction::Transaction::parse(&c);
    let again = ton::boc::decode(&ton::boc::encode(&c)).expect("re-encoded boc decodes");
    assert_eq!(again.hash(), c.hash());
});
