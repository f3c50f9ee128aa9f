//! The contract between the host launcher (`cocoon-host`) and the guest's PID 1
//! (`cocoon-init`): names both sides must agree on, kept in one place.
//!
//! * Disks are found by their virtio serial, never by order.
//! * Under `--tee sim` the launcher hands the simulated platform to the guest through QEMU
//!   fw_cfg; the guest reads `/sys/firmware/qemu_fw_cfg/by_name/<name>/raw`.
//! * PID 1 reports boot stages on the serial console as `COCOON-INIT {json}` lines with a
//!   `"stage"` field ([`status`] parses them).

pub mod status;

/// Serial of the config disk (a flat ustar archive, measured into RTMR3 before use).
pub const CONFIG_DISK_SERIAL: &str = "cocoon-config";
/// Serial of the model data disk.
pub const MODEL_DISK_SERIAL: &str = "cocoon-model";
/// Serial of the model's dm-verity hash tree disk.
pub const VERITY_DISK_SERIAL: &str = "cocoon-verity";
/// Serial of the root disk of an image built with `cocoon-image build --root-disk`: an EROFS
/// filesystem, then (from the block after it) its dm-verity hash device.
pub const ROOT_DISK_SERIAL: &str = "cocoon-root";
/// The root disk's file in an image directory (next to `vmlinuz`, listed in `manifest.json`).
pub const ROOT_DISK_FILE: &str = "root.img";
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

/// The kernel command-line word that names the root disk: `cocoon.root=<data blocks>:<root
/// hash>:<salt>` (hex, `-` for no salt). The command line is measured (RTMR2), so the root
/// hash is part of the image's measurement like the initramfs.
pub const ROOT_CMDLINE_KEY: &str = "cocoon.root=";

/// The dm-verity parameters of a root disk: `data_blocks` blocks of 4 KiB filesystem, then the
/// hash device (a veritysetup superblock block, then the tree), SHA-256, one salt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootDisk {
    pub data_blocks: u64,
    pub root_hash: [u8; 32],
    pub salt: Vec<u8>,
}

/// Why a `cocoon.root=` word is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RootDiskError {
    #[error("the command line names the root disk {0} times")]
    Repeated(usize),
    #[error("cocoon.root={value:?}: {why}")]
    Malformed { value: String, why: &'static str },
}

/// Largest salt (dm-verity's limit).
pub const ROOT_MAX_SALT: usize = 256;

impl RootDisk {
    /// Block where the hash tree starts (after the data and the hash device's superblock).
    pub fn hash_start_block(&self) -> u64 {
        self.data_blocks + 1
    }

    /// Size of the mapped filesystem in 512-byte sectors.
    pub fn sectors(&self) -> u64 {
        self.data_blocks * 8
    }

    /// The command-line word.
    pub fn cmdline_word(&self) -> String {
        let salt = if self.salt.is_empty() {
            "-".to_string()
        } else {
            hex::encode(&self.salt)
        };
        format!(
            "{ROOT_CMDLINE_KEY}{}:{}:{salt}",
            self.data_blocks,
            hex::encode(self.root_hash)
        )
    }

    /// The root disk a command line names, if any. At most one `cocoon.root=` word.
    pub fn from_cmdline(cmdline: &str) -> Result<Option<Self>, RootDiskError> {
        let words: Vec<&str> = cmdline
            .split_ascii_whitespace()
            .filter_map(|w| w.strip_prefix(ROOT_CMDLINE_KEY))
            .collect();
        match words[..] {
            [] => Ok(None),
            [value] => Self::parse(value).map(Some),
            _ => Err(RootDiskError::Repeated(words.len())),
        }
    }

    fn parse(value: &str) -> Result<Self, RootDiskError> {
        let bad = |why| RootDiskError::Malformed {
            value: value.chars().take(200).collect(),
            why,
        };
        let mut parts = value.split(':');
        let (Some(blocks), Some(root), Some(salt), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("expected <data blocks>:<root hash>:<salt>"));
        };
        let data_blocks: u64 = blocks
            .parse()
            .ok()
            .filter(|&b| b > 0 && b < (1 << 40))
            .ok_or_else(|| bad("data blocks: a number from 1 to 2^40"))?;
        let mut root_hash = [0u8; 32];
        hex::decode_to_slice(root, &mut root_hash).map_err(|_| bad("root hash: 64 hex digits"))?;
        let salt = if salt == "-" {
            Vec::new()
        } else {
            hex::decode(salt)
                .ok()
                .filter(|s| !s.is_empty() && s.len() <= ROOT_MAX_SALT)
                .ok_or_else(|| bad("salt: `-` or 1 to 256 bytes of hex"))?
        };
        Ok(Self {
            data_blocks,
            root_hash,
            salt,
        })
    }

    /// The device-mapper `verity` table parameters with the disk `dev` (`major:minor`) as
    /// both data and hash device.
    pub fn verity_params(&self, dev: &str) -> String {
        verity_params(
            dev,
            dev,
            self.data_blocks,
            self.hash_start_block(),
            &self.root_hash,
            &self.salt,
        )
    }
}

/// Device-mapper `verity` target parameters (format version 1, 4 KiB blocks, SHA-256).
pub fn verity_params(
    data: &str,
    hash: &str,
    data_blocks: u64,
    hash_start_block: u64,
    root_hash: &[u8; 32],
    salt: &[u8],
) -> String {
    let salt = if salt.is_empty() {
        "-".to_string()
    } else {
        hex::encode(salt)
    };
    format!(
        "1 {data} {hash} 4096 4096 {data_blocks} {hash_start_block} sha256 {} {salt}",
        hex::encode(root_hash)
    )
}

#[cfg(test)]
mod root_disk_tests {
    use super::*;

    #[test]
    fn round_trips_through_the_command_line() {
        let r = RootDisk {
            data_blocks: 1234,
            root_hash: [0xab; 32],
            salt: vec![1, 2, 3],
        };
        let line = format!(
            "console=ttyS0 quiet {} cocoon.role=worker",
            r.cmdline_word()
        );
        assert_eq!(RootDisk::from_cmdline(&line), Ok(Some(r.clone())));
        assert_eq!(
            r.verity_params("253:0"),
            format!(
                "1 253:0 253:0 4096 4096 1234 1235 sha256 {} 010203",
                "ab".repeat(32)
            )
        );
        let unsalted = RootDisk { salt: vec![], ..r };
        assert!(unsalted.cmdline_word().ends_with(":-"));
        assert_eq!(
            RootDisk::from_cmdline(&unsalted.cmdline_word()),
            Ok(Some(unsalted))
        );
        assert_eq!(RootDisk::from_cmdline("cocoon.role=worker"), Ok(None));
    }

    #[test]
    fn refuses_what_it_cannot_use() {
        let h = "ab".repeat(32);
        for v in [
            String::new(),
            format!("0:{h}:-"),
            format!("x:{h}:-"),
            format!("5:{}:-", "ab".repeat(31)),
            format!("5:{h}"),
            format!("5:{h}:-:7"),
            format!("5:{h}:zz"),
            format!("5:{h}:"),
            format!("5:{h}:{}", "00".repeat(257)),
        ] {
            assert!(
                matches!(
                    RootDisk::from_cmdline(&format!("cocoon.root={v}")),
                    Err(RootDiskError::Malformed { .. })
                ),
                "{v}"
            );
        }
        let w = format!("cocoon.root=5:{h}:-");
        assert_eq!(
            RootDisk::from_cmdline(&format!("{w} {w}")),
            Err(RootDiskError::Repeated(2))
        );
    }
}

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
