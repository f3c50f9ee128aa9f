//! [`SimTdx`]: the guest's view of a simulated TD, implementing [`crate::TeeDevice`].
//!
//! The launcher computes MRTD and RTMR0-2 from the artifacts it boots (as an auditor would)
//! and hands them, with the platform, to the guest; from then on the guest extends RTMR 2 and
//! 3 here exactly as it would through the Linux TDX interface, and quotes carry the live
//! values.
//!
//! Trust boundary: the registers are whatever the caller says they are; the simulation is a
//! development aid, never evidence about real hardware.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use measurements::registers::extend_sha384;
use measurements::{Sha384, TdRegisters};

use super::SimPlatform;
use crate::{TeeDevice, TeeError};

/// One RTMR extension recorded by [`SimTdx`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimRtmrEvent {
    /// RTMR index (2 or 3).
    pub index: u8,
    /// The SHA-384 digest extended into the register.
    pub digest: Sha384,
    /// The event description the caller passed along.
    pub event: Vec<u8>,
}

#[derive(Debug)]
struct State {
    registers: TdRegisters,
    events: Vec<SimRtmrEvent>,
}

/// A simulated TD on a [`SimPlatform`]. Thread-safe; clones of the `Arc` share the platform.
#[derive(Debug)]
pub struct SimTdx {
    platform: Arc<SimPlatform>,
    state: Mutex<State>,
}

impl SimTdx {
    /// A TD whose registers start at `initial` (MRTD, RTMR0-2, attributes, XFAM and owner/config
    /// IDs as the launcher computed them; RTMR3 normally zero).
    pub fn new(platform: Arc<SimPlatform>, initial: TdRegisters) -> Self {
        Self {
            platform,
            state: Mutex::new(State {
                registers: initial,
                events: Vec::new(),
            }),
        }
    }

    /// The platform this TD runs on.
    pub fn platform(&self) -> &Arc<SimPlatform> {
        &self.platform
    }

    /// The RTMR extensions made so far, oldest first.
    pub fn events(&self) -> Vec<SimRtmrEvent> {
        self.lock().events.clone()
    }

    /// No code path panics while holding the lock, but a poisoned lock would still hold
    /// consistent state (registers are updated in one assignment), so it is recovered.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl TeeDevice for SimTdx {
    fn quote(&self, report_data: &[u8; 64]) -> Result<Vec<u8>, TeeError> {
        let registers = self.lock().registers;
        self.platform
            .quote(&registers, report_data)
            .map_err(|e| TeeError::Quote(e.to_string()))
    }

    fn extend_rtmr(&self, index: u8, digest: &Sha384, event: &[u8]) -> Result<(), TeeError> {
        if !(2..=3).contains(&index) {
            return Err(TeeError::RtmrIndex(index));
        }
        let slot = usize::from(index);
        let mut state = self.lock();
        let register = state.registers.rtmr[slot];
        state.registers.rtmr[slot] = extend_sha384(&register, digest);
        state.events.push(SimRtmrEvent {
            index,
            digest: *digest,
            event: event.to_vec(),
        });
        Ok(())
    }

    fn registers(&self) -> Result<TdRegisters, TeeError> {
        Ok(self.lock().registers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device() -> SimTdx {
        let platform = Arc::new(SimPlatform::from_seed([3u8; 32]).unwrap());
        SimTdx::new(platform, super::super::default_registers())
    }

    #[test]
    fn extends_only_rtmr2_and_rtmr3() {
        let tdx = device();
        for index in [0u8, 1, 4, 255] {
            assert!(matches!(
                tdx.extend_rtmr(index, &[1; 48], b"x"),
                Err(TeeError::RtmrIndex(i)) if i == index
            ));
        }
        tdx.extend_rtmr(2, &[1; 48], b"two").unwrap();
        tdx.extend_rtmr(3, &[2; 48], b"three").unwrap();
        let regs = tdx.registers().unwrap();
        assert_eq!(regs.rtmr[2], extend_sha384(&[0; 48], &[1; 48]));
        assert_eq!(regs.rtmr[3], extend_sha384(&[0; 48], &[2; 48]));
        assert_eq!(regs.rtmr[0], [0; 48]);
        let events = tdx.events();
        assert_eq!(events.len(), 2);
        assert_eq!(events[1].index, 3);
        assert_eq!(events[1].event, b"three");
    }

    #[test]
    fn is_usable_from_many_threads() {
        let tdx = Arc::new(device());
        let handles: Vec<_> = (0..4u8)
            .map(|i| {
                let tdx = Arc::clone(&tdx);
                std::thread::spawn(move || tdx.extend_rtmr(3, &[i; 48], &[i]).unwrap())
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(tdx.events().len(), 4);
        // Replaying the recorded order reproduces the register.
        let replayed = tdx
            .events()
            .iter()
            .fold([0u8; 48], |acc, e| extend_sha384(&acc, &e.digest));
        assert_eq!(tdx.registers().unwrap().rtmr[3], replayed);
    }
}
