//! Cocoon network parameters, version 3, as the root contract stores them and every proxy, worker
//! and client contract embeds them in its data (and therefore in its address).
//!
//! `ver:8=3 params_version:32 unique_id:32 is_test:1 price_per_token:Coins
//! worker_fee_per_token:Coins prompt_mult:32 cached_mult:32 completion_mult:32 reasoning_mult:32
//! proxy_delay_before_close:32 client_delay_before_close:32 min_proxy_stake:Coins
//! min_client_stake:Coins Maybe^proxy_code Maybe^worker_code Maybe^client_code`.
//!
//! The proxy contract embeds the params with worker and client code (no proxy code); client and
//! worker contracts embed them without any code.

use crate::address::Coins;
use crate::cell::{Cell, CellBuilder, CellError};
use crate::contracts::{check_code, CodeError, ContractKind};

/// An error while reading params.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamsError {
    /// A field could not be read.
    #[error("params field {field}: {source}")]
    Field {
        field: &'static str,
        source: CellError,
    },
    /// The version byte is not 3.
    #[error("params version byte: expected 3, got {got}")]
    Version { got: u8 },
    /// Embedded code has an unknown hash or is in the wrong slot.
    #[error("params {field}: {source}")]
    Code {
        field: &'static str,
        source: CodeError,
    },
}

/// Per-class token multipliers (10000 = 1.0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Multipliers {
    /// Prompt tokens.
    pub prompt: u32,
    /// Cached prompt tokens.
    pub cached: u32,
    /// Completion tokens.
    pub completion: u32,
    /// Reasoning tokens.
    pub reasoning: u32,
}

/// Params v3.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamsV3 {
    /// Bumped by the root owner; a proxy closes when it changes.
    pub params_version: u32,
    /// Network id.
    pub unique_id: u32,
    /// Test network flag.
    pub is_test: bool,
    /// Price per (adjusted) token, nanotons.
    pub price_per_token: Coins,
    /// Worker's share per token, nanotons.
    pub worker_fee_per_token: Coins,
    /// Per-class multipliers.
    pub multipliers: Multipliers,
    /// Seconds.
    pub proxy_delay_before_close: u32,
    /// Seconds.
    pub client_delay_before_close: u32,
    /// Nanotons.
    pub min_proxy_stake: Coins,
    /// Nanotons.
    pub min_client_stake: Coins,
    /// Proxy contract code, if embedded.
    pub proxy_code: Option<Cell>,
    /// Worker contract code, if embedded.
    pub worker_code: Option<Cell>,
    /// Client contract code, if embedded.
    pub client_code: Option<Cell>,
}

impl ParamsV3 {
    /// The same params without any code (as client and worker contracts embed them).
    pub fn without_code(&self) -> ParamsV3 {
        ParamsV3 {
            proxy_code: None,
            worker_code: None,
            client_code: None,
            ..self.clone()
        }
    }

    /// The same params with worker and client code only (as the proxy contract embeds them).
    pub fn for_proxy(&self, worker_code: Cell, client_code: Cell) -> ParamsV3 {
        ParamsV3 {
            proxy_code: None,
            worker_code: Some(worker_code),
            client_code: Some(client_code),
            ..self.clone()
        }
    }

    /// Serializes to a cell.
    pub fn to_cell(&self) -> Result<Cell, CellError> {
        let m = &self.multipliers;
        let mut b = CellBuilder::new();
        b.store_uint(3, 8)?
            .store_uint(self.params_version.into(), 32)?
            .store_uint(self.unique_id.into(), 32)?
            .store_bit(self.is_test)?
            .store_coins(self.price_per_token)?
            .store_coins(self.worker_fee_per_token)?
            .store_uint(m.prompt.into(), 32)?
            .store_uint(m.cached.into(), 32)?
            .store_uint(m.completion.into(), 32)?
            .store_uint(m.reasoning.into(), 32)?
            .store_uint(self.proxy_delay_before_close.into(), 32)?
            .store_uint(self.client_delay_before_close.into(), 32)?
            .store_coins(self.min_proxy_stake)?
            .store_coins(self.min_client_stake)?
            .store_maybe_ref(self.proxy_code.clone())?
            .store_maybe_ref(self.worker_code.clone())?
            .store_maybe_ref(self.client_code.clone())?;
        b.build()
    }

    /// Parses a params cell (no trailing data). Embedded code is not checked here; see
    /// [`ParamsV3::check_code`].
    pub fn from_cell(c: &Cell) -> Result<ParamsV3, ParamsError> {
        let f = |field: &'static str| move |source| ParamsError::Field { field, source };
        let mut s = c.parse();
        let ver = s.load_u8().map_err(f("ver"))?;
        if ver != 3 {
            return Err(ParamsError::Version { got: ver });
        }
        let p = ParamsV3 {
            params_version: s.load_u32().map_err(f("params_version"))?,
            unique_id: s.load_u32().map_err(f("unique_id"))?,
            is_test: s.load_bit().map_err(f("is_test"))?,
            price_per_token: s.load_coins().map_err(f("price_per_token"))?,
            worker_fee_per_token: s.load_coins().map_err(f("worker_fee_per_token"))?,
            multipliers: Multipliers {
                prompt: s.load_u32().map_err(f("prompt_multiplier"))?,
                cached: s.load_u32().map_err(f("cached_multiplier"))?,
                completion: s.load_u32().map_err(f("completion_multiplier"))?,
                reasoning: s.load_u32().map_err(f("reasoning_multiplier"))?,
            },
            proxy_delay_before_close: s.load_u32().map_err(f("proxy_delay_before_close"))?,
            client_delay_before_close: s.load_u32().map_err(f("client_delay_before_close"))?,
            min_proxy_stake: s.load_coins().map_err(f("min_proxy_stake"))?,
            min_client_stake: s.load_coins().map_err(f("min_client_stake"))?,
            proxy_code: s.load_maybe_ref().map_err(f("proxy_code"))?,
            worker_code: s.load_maybe_ref().map_err(f("worker_code"))?,
            client_code: s.load_maybe_ref().map_err(f("client_code"))?,
        };
        s.ensure_empty().map_err(f("end"))?;
        Ok(p)
    }

    /// Every embedded code cell must be the known code of its slot.
    pub fn check_code(&self) -> Result<(), ParamsError> {
        let slots = [
            ("proxy_code", &self.proxy_code, ContractKind::Proxy),
            ("worker_code", &self.worker_code, ContractKind::Worker),
            ("client_code", &self.client_code, ContractKind::Client),
        ];
        for (field, code, kind) in slots {
            if let Some(c) = code {
                check_code(c, kind).map_err(|source| ParamsError::Code { field, source })?;
            }
        }
        Ok(())
    }
}

impl ParamsV3 {
    /// The params of Cocoon's reference run (`params(null, null, null)` in
    /// `../shared/testdata/ton/reference/flow.js`; no code refs): price 1000 nano per token,
    /// worker fee 400, cached tokens at 0.1, close delays 1 h (proxy) and 1 day (client), 1 TON
    /// minimum stakes. The golden vectors, the local chain's scenarios and the CLI's defaults
    /// are built on them.
    pub fn reference() -> Self {
        ParamsV3 {
            params_version: 1,
            unique_id: 12345,
            is_test: true,
            price_per_token: Coins::from_nano(1000),
            worker_fee_per_token: Coins::from_nano(400),
            multipliers: Multipliers {
                prompt: 10000,
                cached: 1000,
                completion: 10000,
                reasoning: 10000,
            },
            proxy_delay_before_close: 3600,
            client_delay_before_close: 86400,
            min_proxy_stake: Coins::from_nano(Coins::TON),
            min_client_stake: Coins::from_nano(Coins::TON),
            proxy_code: None,
            worker_code: None,
            client_code: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> ParamsV3 {
        ParamsV3::reference()
    }

    #[test]
    fn roundtrip_with_and_without_code() {
        let p = sample();
        let c = p.to_cell().unwrap();
        assert_eq!(ParamsV3::from_cell(&c).unwrap(), p);
        let pp = p.for_proxy(ContractKind::Worker.code(), ContractKind::Client.code());
        let back = ParamsV3::from_cell(&pp.to_cell().unwrap()).unwrap();
        assert_eq!(back, pp);
        back.check_code().unwrap();
        assert_eq!(back.without_code(), p);
        let swapped = p.for_proxy(ContractKind::Client.code(), ContractKind::Worker.code());
        assert!(matches!(
            swapped.check_code(),
            Err(ParamsError::Code {
                field: "worker_code",
                ..
            })
        ));
    }

    #[test]
    fn wrong_version_and_truncation() {
        let mut b = CellBuilder::new();
        b.store_uint(2, 8).unwrap();
        assert_eq!(
            ParamsV3::from_cell(&b.build().unwrap()),
            Err(ParamsError::Version { got: 2 })
        );
        b = CellBuilder::new();
        b.store_uint(3, 8).unwrap().store_uint(1, 16).unwrap();
        assert!(matches!(
            ParamsV3::from_cell(&b.build().unwrap()),
            Err(ParamsError::Field {
                field: "params_version",
                ..
            })
        ));
    }
}
