//! TON mainnet blockchain configuration for the executor.
//!
//! The fixture `fixtures/ton-mainnet-config.boc` is the config-params dictionary that the official
//! emulator package @ton/sandbox 0.41.0 ships as `defaultConfig` (mainnet, key block seqno
//! 52956904); see `fixtures/README.md` for provenance and how to regenerate it.

use tycho_executor::{ExecutorParams, ParsedConfig};
use tycho_types::boc::Boc;
use tycho_types::cell::{CellBuilder, HashBytes};
use tycho_types::dict::Dict;
use tycho_types::models::{
    BlockchainConfig, BlockchainConfigParams, ConfigParam12, WorkchainDescription,
};

use crate::error::SimError;

/// TON mainnet config params (BOC of the `Hashmap 32 ^Cell` root), from @ton/sandbox 0.41.0.
pub const TON_MAINNET_CONFIG_BOC: &[u8] = include_bytes!("../fixtures/ton-mainnet-config.boc");

/// Masterchain key block seqno the fixture was taken from (`defaultConfigSeqno` in @ton/sandbox).
pub const TON_MAINNET_CONFIG_SEQNO: u32 = 52_956_904;

/// The parsed mainnet config, with the storage prices valid at `now`.
pub fn mainnet_config(now: u32) -> Result<ParsedConfig, SimError> {
    let root = Boc::decode(TON_MAINNET_CONFIG_BOC).map_err(|e| SimError::Config {
        what: "config boc",
        reason: e.to_string(),
    })?;
    let mut params = BlockchainConfigParams::from_raw(root);
    downgrade_workchains(&mut params)?;
    // Param 0 is the config contract's address (-1:5555…).
    let address = params
        .get_raw_cell(0)
        .ok()
        .flatten()
        .and_then(|c| c.parse::<HashBytes>().ok())
        .unwrap_or(HashBytes([0x55; 32]));
    let config = BlockchainConfig { address, params };
    ParsedConfig::parse(config, now).map_err(|e| SimError::Config {
        what: "parse",
        reason: e.to_string(),
    })
}

/// TON mainnet describes workchain 0 as `workchain_v2#a7` (the `#a6` fields, then split/merge
/// timings for the collator); tycho-types reads only `workchain#a6`. The executor uses the
/// description to check message destinations (workchain known, `accept_msgs`, address format),
/// so each `#a7` entry is re-read as `#a6` with every field kept and the timings dropped.
fn downgrade_workchains(params: &mut BlockchainConfigParams) -> Result<(), SimError> {
    let bad = |what: &'static str| {
        move |e: tycho_types::error::Error| SimError::Config {
            what,
            reason: e.to_string(),
        }
    };
    let Some(raw) = params.get::<ConfigParam12>().map_err(bad("param 12"))? else {
        return Ok(());
    };
    let raw: Dict<i32, WorkchainDescription> = Dict::from_raw(raw.into_root());
    let mut out = Dict::<i32, WorkchainDescription>::new();
    for key in raw.keys() {
        let wc = key.map_err(bad("param 12 key"))?;
        let Some(mut cs) = raw.get_raw(wc).map_err(bad("param 12 entry"))? else {
            continue;
        };
        let tag = cs.load_u8().map_err(bad("param 12 tag"))?;
        let mut b = CellBuilder::new();
        b.store_u8(0xa6).map_err(bad("param 12 rebuild"))?;
        match tag {
            0xa6 | 0xa7 => b.store_slice(cs).map_err(bad("param 12 rebuild"))?,
            other => {
                return Err(SimError::Config {
                    what: "param 12 tag",
                    reason: format!("unknown workchain description tag {other:#x}"),
                });
            }
        }
        let desc: WorkchainDescription = b
            .build()
            .and_then(|c| c.parse::<WorkchainDescription>())
            .map_err(bad("param 12 parse"))?;
        out.set(wc, desc).map_err(bad("param 12 set"))?;
    }
    params.set_workchains(&out).map_err(bad("param 12 store"))?;
    Ok(())
}

/// Executor parameters that match TON's ordinary-transaction rules as of the fixture's global
/// version: no signature id or domains (TON mainnet has neither), bounce bodies truncated to
/// 256 bits (TON's `capBounceMsgBody`, not Tycho's full body), action fines on a failed action
/// phase (TON since global version 4), signature checks always on.
pub fn ton_executor_params(now: u32, block_lt: u64, rand_seed: [u8; 32]) -> ExecutorParams {
    ExecutorParams {
        rand_seed: HashBytes(rand_seed),
        block_unixtime: now,
        block_lt,
        vm_modifiers: tycho_vm::BehaviourModifiers::default(),
        full_body_in_bounced: false,
        charge_action_fees_on_fail: true,
        strict_extra_currency: false,
        authority_marks_enabled: false,
        disable_delete_frozen_accounts: false,
        ..Default::default()
    }
}
