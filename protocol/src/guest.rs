//! The contract between the host launcher (`cocoon-host`) and the guest's PID 1
//! (`cocoon-init`): names both sides must agree on, kept in one place.
//!
//! * Disks are found by their virtio serial, never by order.
//! * Under `--tee sim` the launcher hands the simulated platform to the guest through QEMU
//!   fw_cfg; the guest reads `/sys/firmware/qemu_fw_cfg/by_name/<name>/raw`.
//! * PID 1 reports boot stages on the serial console as `COCOON-INIT {json}` lines with a
//!   `"stage"` field.

/// Serial of the config disk (a flat ustar archive, measured into RTMR3 before use).
pub const CONFIG_DISK_SERIAL: &str = "cocoon-config";
/// Serial of the model data disk.
pub const MODEL_DISK_SERIAL: &str = "cocoon-model";
/// Serial of the model's dm-verity hash tree disk.
pub const VERITY_DISK_SERIAL: &str = "cocoon-verity";
/// fw_cfg name of the simulated platform seed (`SimPlatformSeed` JSON).
pub const FW_CFG_SIM_PLATFORM: &str = "opt/cocoon/sim-platform";
/// fw_cfg name of the simulated registers (`TdRegisters` JSON).
pub const FW_CFG_SIM_REGISTERS: &str = "opt/cocoon/sim-registers";
/// Most files the config archive may hold (the launcher refuses more; PID 1 refuses more).
pub const CONFIG_MAX_FILES: usize = 32;
/// Largest file in the config archive.
pub const CONFIG_MAX_FILE_SIZE: u64 = 1 << 20;
/// Largest config disk PID 1 reads (and measures) at all.
pub const CONFIG_MAX_DISK: u64 = 16 << 20;

/// Prefix of every PID 1 status line on the console.
pub const STATUS_PREFIX: &str = "COCOON-INIT ";

/// The line each service prints on stdout once it serves (followed by details: addresses,
/// models, the URL). Launchers, cocoon-init and test harnesses wait for these prefixes.
pub const PROXY_READY: &str = "cocoon-proxy: ready";
/// See [`PROXY_READY`].
pub const WORKER_READY: &str = "cocoon-worker: ready";
/// See [`PROXY_READY`]; the client's line ends with its OpenAI base URL after this prefix.
pub const CLIENT_READY: &str = "cocoon-client: ready ";
/// What `cocoon-host` prints once everything it started is ready.
pub const HOST_READY: &str = "cocoon-host: ready";
