//! Documented exit codes of cocoon-init (house style rule 8).
//!
//! PID 1 cannot exit (the kernel panics), so "exit" means: print
//! `COCOON-INIT {"stage":"exit","code":N,"reason":…}` on the console, stop the service, sync
//! and power off. The host launcher reports the code. Codes are stable; add, never renumber.

/// Why cocoon-init stopped the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum InitExit {
    /// Clean stop requested (SIGTERM/SIGINT, e.g. Ctrl-Alt-Del from the host).
    Stopped = 0,
    /// Mounting /proc, /sys, /dev, /run or configfs failed.
    Mount = 10,
    /// A kernel module listed in the image failed to load.
    Modules = 11,
    /// Kernel command line unusable (no or unknown `cocoon.role=`).
    Cmdline = 12,
    /// No TEE: neither the TDX guest device nor a simulated platform from the launcher.
    Tee = 13,
    /// The config disk is missing or unreadable.
    ConfigDisk = 14,
    /// Measuring the config (RTMR3 extension or event log) failed.
    Measure = 15,
    /// The config archive or init.toml is malformed or inconsistent with the image.
    Config = 16,
    /// Network configuration failed.
    Network = 17,
    /// The model disk or its hash tree is missing, or dm-verity setup failed.
    ModelDisk = 19,
    /// The model disk does not match its measured root hash (verity read error).
    ModelTampered = 20,
    /// The root disk named on the command line (`cocoon.root=`) is missing or malformed, or
    /// mapping it through dm-verity, mounting it or switching to it failed.
    RootDisk = 21,
    /// The root disk does not match the root hash on the measured command line.
    RootTampered = 22,
    /// The service binary could not be started.
    ServiceSpawn = 30,
    /// The service kept failing: restart limit reached.
    ServiceFailed = 31,
}

impl InitExit {
    pub fn code(self) -> u8 {
        self as u8
    }
}

/// A failed boot step: exit code plus a reason naming the path or value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub exit: InitExit,
    pub reason: String,
}

impl Failure {
    pub fn new(exit: InitExit, reason: impl Into<String>) -> Self {
        Self {
            exit,
            reason: reason.into(),
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (exit {})", self.reason, self.exit.code())
    }
}

/// `result.step(InitExit::X, "what")?` turns any error into a [`Failure`].
pub trait StepExt<T> {
    fn step(self, exit: InitExit, what: &str) -> Result<T, Failure>;
}

impl<T, E: std::fmt::Display> StepExt<T> for Result<T, E> {
    fn step(self, exit: InitExit, what: &str) -> Result<T, Failure> {
        self.map_err(|e| Failure::new(exit, format!("{what}: {e}")))
    }
}
