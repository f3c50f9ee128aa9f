//! Real Intel TDX vectors from ../shared/testdata (see its README for provenance and verdicts).
#![allow(dead_code)]

use std::path::PathBuf;

use measurements::quote::decode_quote_input;
use measurements::Collateral;

pub fn testdata() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata/tdx")
}

pub struct Vector {
    pub name: &'static str,
    pub quote: &'static str,
    pub hex: bool,
    pub collateral: &'static str,
    pub at: u64,
}

pub const UPTODATE: Vector = Vector {
    name: "dcapqvl_v4_uptodate",
    quote: "quotes/dcapqvl_v4_uptodate.quote",
    hex: false,
    collateral: "collateral/dcapqvl_v4_uptodate.collateral.json",
    at: 1752919234,
};
pub const NEAR: Vector = Vector {
    name: "near_v4_uptodate",
    quote: "quotes/near_v4_uptodate.quote.hex",
    hex: true,
    collateral: "collateral/near_v4_uptodate.collateral.json",
    at: 1759388630,
};
pub const OUTOFDATE: Vector = Vector {
    name: "automata_v4_outofdate",
    quote: "quotes/automata_v4_outofdate.quote",
    hex: false,
    collateral: "collateral/fmspc_00806f050000_2025-07-07.collateral.json",
    at: 1754471202,
};
pub const NOTCBLEVEL: Vector = Vector {
    name: "gotdx_spr_e4_v4_notcblevel",
    quote: "quotes/gotdx_spr_e4_v4_notcblevel.quote",
    hex: false,
    collateral: "collateral/fmspc_50806f000000_2023-06-18.collateral.json",
    at: 1688173200,
};

impl Vector {
    pub fn quote_path(&self) -> PathBuf {
        testdata().join(self.quote)
    }
    pub fn collateral_path(&self) -> PathBuf {
        testdata().join(self.collateral)
    }
    pub fn quote_bytes(&self) -> Vec<u8> {
        decode_quote_input(&std::fs::read(self.quote_path()).unwrap(), self.hex).unwrap()
    }
    pub fn collateral(&self) -> Collateral {
        Collateral::from_json(&std::fs::read(self.collateral_path()).unwrap()).unwrap()
    }
}
