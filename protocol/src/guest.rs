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
/// Where the guest's service finds what cocoon-init prepared (the paths a guest service config
/// names; `cocoon-host config --mode sim-vm|tdx` renders them).
pub const GUEST_RUN_DIR: &str = "/run/cocoon";
/// The RTMR3 event log cocoon-init writes (JSON, `measurements::runtime_log`).
pub const GUEST_RTMR3_LOG: &str = "/run/cocoon/rtmr3-log.json";
/// The files of the config disk.
pub const GUEST_CONFIG_DIR: &str = "/run/cocoon/config";
/// The simulated platform (`--tee sim`), copied from fw_cfg.
pub const GUEST_SIM_DIR: &str = "/run/cocoon/sim";
/// The simulated platform seed in the guest.
pub const GUEST_SIM_PLATFORM_FILE: &str = "/run/cocoon/sim/platform.json";
/// The simulated registers in the guest.
pub const GUEST_SIM_REGISTERS_FILE: &str = "/run/cocoon/sim/registers.json";
/// Models on the dm-verity disk are exposed here as `<file_name>`.
pub const GUEST_MODELS_DIR: &str = "/run/cocoon/models";
/// The service's config file on the config disk (what `init.toml` passes as `--config`).
pub const GUEST_SERVICE_CONFIG: &str = "service.toml";

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

#[cfg(test)]
mod guest_path_tests {
    use super::*;

    #[test]
    fn guest_paths_are_under_the_run_dir() {
        for p in [
            GUEST_RTMR3_LOG,
            GUEST_CONFIG_DIR,
            GUEST_SIM_DIR,
            GUEST_MODELS_DIR,
        ] {
            assert!(p.starts_with(GUEST_RUN_DIR), "{p}");
        }
        for p in [GUEST_SIM_PLATFORM_FILE, GUEST_SIM_REGISTERS_FILE] {
            assert!(p.starts_with(GUEST_SIM_DIR), "{p}");
        }
    }
}
