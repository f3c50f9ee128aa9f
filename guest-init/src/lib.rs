//! cocoon-init: PID 1 of the cocoon guest appliance.
//!
//! Boot, in order (each a step function in [`steps`], each failure a documented
//! [`exit::InitExit`] code on the console):
//! 1. mount /proc, /sys, devtmpfs on /dev, tmpfs on /run, configfs;
//! 2. load the kernel modules the image lists (`/etc/cocoon/modules`, `finit_module`, compressed
//!    modules decompressed by the kernel);
//! 3. read the role from the measured kernel command line (`cocoon.role=`); if it names a root
//!    disk (`cocoon.root=`), map that disk through dm-verity under the named root hash, check it
//!    whole, mount it (EROFS, read-only), switch to it and load the modules it lists;
//! 4. open the TEE: TDX (configfs-tsm) or the simulated platform the launcher passes via fw_cfg,
//!    both behind `attestation::TeeDevice`;
//! 5. read the config disk (serial `cocoon-config`), extend SHA-256 of its bytes into RTMR3 and
//!    the RTMR3 event log (`/run/cocoon/rtmr3-log.json`), *then* parse it ([`archive`],
//!    [`config`]);
//! 6. configure the network from the config (no kernel `ip=`);
//! 7. worker: map the model disk through dm-verity with the measured root hash ([`dm`]) and
//!    refuse to start on a mismatch;
//! 8. start the role service and supervise it ([`service`]): restart with backoff, give up after
//!    a limit, reap zombies, stop on SIGTERM/SIGINT (Ctrl-Alt-Del from the host arrives as
//!    SIGINT), sync and power off.
//!
//! Trust boundary: everything on the disks and in fw_cfg comes from the host. The config is
//! measured before use; the model is covered by dm-verity under a measured root hash; the
//! simulated platform is only ever trusted by verifiers whose policy names the simulated root.
//! Status lines ([`status`]) never carry prompts, completions or keys.

pub mod archive;
pub mod config;
pub mod disks;
pub mod dm;
pub mod exit;
pub mod service;
pub mod status;
pub mod steps;
pub mod sys;
