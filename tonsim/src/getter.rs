//! Get-methods: run a contract's method off-chain against its current state (TVM getter rules:
//! 1,000,000 gas, the chain's `now`, no state change).

use tycho_types::cell::CellBuilder;
use tycho_vm::{RcStackValue, VmCaller, VmGetterArgs};

use crate::chain::Chain;
use crate::convert::from_tycho;
use crate::error::{cell_err, SimError};
use ton::address::Addr;
use ton::cell::Cell;

/// A value a get-method returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GetValue {
    /// `null`.
    Null,
    /// An integer, in decimal (TVM integers are 257-bit).
    Int(String),
    /// A cell.
    Cell(Cell),
    /// A slice, as the cell of its remaining bits and refs.
    Slice(Cell),
    /// A tuple.
    Tuple(Vec<GetValue>),
    /// A builder or a continuation (not converted).
    Other,
}

impl GetValue {
    /// The integer, if it fits `i128`.
    pub fn int(&self) -> Option<i128> {
        match self {
            GetValue::Int(s) => s.parse().ok(),
            _ => None,
        }
    }

    /// A slice holding exactly one standard address.
    pub fn addr(&self) -> Option<Addr> {
        match self {
            GetValue::Slice(c) => {
                let mut s = c.parse();
                let a = s.load_addr().ok()?;
                s.ensure_empty().ok()?;
                Some(a)
            }
            _ => None,
        }
    }
}

fn convert(v: &RcStackValue, depth: usize) -> Result<GetValue, SimError> {
    if let Some(i) = v.as_int() {
        return Ok(GetValue::Int(i.to_string()));
    }
    if let Some(c) = v.as_cell() {
        return Ok(GetValue::Cell(from_tycho(c)?));
    }
    if let Some(s) = v.as_cell_slice() {
        let mut b = CellBuilder::new();
        b.store_slice(s.apply()).map_err(cell_err("slice"))?;
        let c = b.build().map_err(cell_err("slice"))?;
        return Ok(GetValue::Slice(from_tycho(&c)?));
    }
    if let Some(t) = v.as_tuple() {
        if depth > 16 {
            return Ok(GetValue::Other);
        }
        return t
            .iter()
            .map(|x| convert(x, depth + 1))
            .collect::<Result<Vec<_>, _>>()
            .map(GetValue::Tuple);
    }
    if v.raw_ty() == 0 {
        return Ok(GetValue::Null);
    }
    Ok(GetValue::Other)
}

impl Chain {
    /// Runs get-method `method` (no arguments) on `addr`; returns the stack, bottom first.
    pub fn run_get_method(&self, addr: &Addr, method: &str) -> Result<Vec<GetValue>, SimError> {
        let account = self.raw_account(addr)?.ok_or(SimError::NoAccount(*addr))?;
        let caller = VmCaller {
            libraries: Default::default(),
            behaviour_modifiers: Default::default(),
            config: self.config_params(),
        };
        let mut args = VmGetterArgs::default();
        args.now = self.now();
        let out = caller
            .call_getter_ext(&account, method, Vec::new(), &args, None)
            .map_err(|e| SimError::Executor {
                dst: addr.to_string(),
                reason: e.to_string(),
            })?;
        if !out.success {
            return Err(SimError::GetMethod {
                addr: *addr,
                method: method.to_string(),
                exit_code: out.exit_code,
            });
        }
        out.stack.iter().map(|v| convert(v, 0)).collect()
    }
}
