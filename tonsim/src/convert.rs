//! Interop with the `ton` crate: cells cross as BOC bytes, addresses as (workchain, hash).

use tycho_types::boc::Boc;
use tycho_types::cell::{Cell as TCell, HashBytes};
use tycho_types::models::{IntAddr, StdAddr};

use crate::error::SimError;
use ton::address::Addr;
use ton::cell::Cell;

/// `ton` cell → tycho-types cell (through a BOC, so both sides' hashes must agree).
pub fn to_tycho(cell: &Cell) -> Result<TCell, SimError> {
    let bytes = ton::boc::encode(cell);
    let out = Boc::decode(&bytes).map_err(|e| SimError::Convert {
        what: "ton -> tycho",
        reason: e.to_string(),
    })?;
    if out.repr_hash().0 != cell.hash() {
        return Err(SimError::Convert {
            what: "ton -> tycho",
            reason: "representation hash differs".into(),
        });
    }
    Ok(out)
}

/// tycho-types cell → `ton` cell.
pub fn from_tycho(cell: &TCell) -> Result<Cell, SimError> {
    let bytes = Boc::encode(cell.as_ref());
    let out = ton::boc::decode(&bytes).map_err(|e| SimError::Convert {
        what: "tycho -> ton",
        reason: e.to_string(),
    })?;
    if out.hash() != cell.repr_hash().0 {
        return Err(SimError::Convert {
            what: "tycho -> ton",
            reason: "representation hash differs".into(),
        });
    }
    Ok(out)
}

/// `ton` address → tycho `StdAddr`.
pub fn to_std(addr: &Addr) -> StdAddr {
    StdAddr::new(addr.workchain, HashBytes(addr.hash))
}

/// tycho `StdAddr` → `ton` address.
pub fn from_std(addr: &StdAddr) -> Addr {
    Addr {
        workchain: addr.workchain,
        hash: addr.address.0,
    }
}

/// tycho `IntAddr` → `ton` address (`None` for `addr_var`, which Cocoon never uses).
pub fn from_int(addr: &IntAddr) -> Option<Addr> {
    match addr {
        IntAddr::Std(a) => Some(from_std(a)),
        IntAddr::Var(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ton::cell::CellBuilder;

    #[test]
    fn round_trip_keeps_hash() {
        let mut inner = CellBuilder::new();
        inner.store_uint(0xdead_beef, 32).unwrap();
        let mut b = CellBuilder::new();
        b.store_uint(5, 3).unwrap();
        b.store_ref(inner.build().unwrap()).unwrap();
        let c = b.build().unwrap();
        let t = to_tycho(&c).unwrap();
        assert_eq!(t.repr_hash().0, c.hash());
        assert_eq!(from_tycho(&t).unwrap(), c);
    }

    #[test]
    fn addresses_round_trip() {
        let a = Addr {
            workchain: -1,
            hash: [7; 32],
        };
        assert_eq!(from_std(&to_std(&a)), a);
        assert_eq!(from_int(&IntAddr::Std(to_std(&a))), Some(a));
    }
}
