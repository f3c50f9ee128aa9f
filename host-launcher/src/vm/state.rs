//! The state directory of a VM config:
//!
//! ```text
//! STATE_DIR/
//!   sim-platform.json        (--tee sim) the simulated platform (SimPlatformSeed JSON), created
//!                            once and kept: the guest's quotes chain to its root across restarts
//!   sim-root.der             (--tee sim) its root CA: what a client's policy `roots` names
//!   instance-N/
//!     config.tar             the config disk (rewritten on every launch)
//!     sim-registers.json     (--tee sim) the TdRegisters the simulated platform reports
//!     console.log            guest serial console and QEMU's stderr
//!     qmp.sock               QEMU's QMP socket (the launcher presses Ctrl-Alt-Del through it)
//!     instance.json          written when the guest is ready, removed when it stops
//! ```

use std::path::{Path, PathBuf};

use attestation::sim::{SimPlatform, SimPlatformSeed};
use measurements::TdRegisters;
use serde::Serialize;

use crate::local::{PLATFORM_FILE, ROOT_FILE};

/// The registers file of an instance.
pub const REGISTERS_FILE: &str = "sim-registers.json";
/// The config disk of an instance.
pub const CONFIG_DISK_FILE: &str = "config.tar";
/// The console log of an instance.
pub const CONSOLE_LOG: &str = "console.log";
/// Written when an instance is ready.
pub const INSTANCE_FILE: &str = "instance.json";
/// QEMU's QMP socket.
pub const QMP_SOCKET: &str = "qmp.sock";
/// Longest usable unix socket path (`sun_path` is 108 bytes with the NUL).
pub const MAX_SOCKET_PATH: usize = 107;

pub fn sim_platform_path(state_dir: &Path) -> PathBuf {
    state_dir.join(PLATFORM_FILE)
}

pub fn sim_root_path(state_dir: &Path) -> PathBuf {
    state_dir.join(ROOT_FILE)
}

pub fn sim_registers_path(instance_dir: &Path) -> PathBuf {
    instance_dir.join(REGISTERS_FILE)
}

pub fn config_disk_path(instance_dir: &Path) -> PathBuf {
    instance_dir.join(CONFIG_DISK_FILE)
}

pub fn console_log_path(instance_dir: &Path) -> PathBuf {
    instance_dir.join(CONSOLE_LOG)
}

pub fn instance_file_path(instance_dir: &Path) -> PathBuf {
    instance_dir.join(INSTANCE_FILE)
}

pub fn qmp_socket_path(instance_dir: &Path) -> PathBuf {
    instance_dir.join(QMP_SOCKET)
}

/// State directory failures (each names the path).
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: simulated platform: {reason}")]
    Platform { path: PathBuf, reason: String },
    #[error("{path}: json: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Creates `dir` (and parents).
pub fn mkdir(dir: &Path) -> Result<(), StateError> {
    std::fs::create_dir_all(dir).map_err(io(dir))
}

/// Writes `bytes` to `path` through a temporary file and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// The state dir's simulated platform: loaded if `sim-platform.json` exists, generated and
/// written otherwise; `sim-root.der` is (re)written from it. Returns the platform and whether
/// it was created now.
pub fn sim_platform(state_dir: &Path) -> Result<(SimPlatform, bool), StateError> {
    mkdir(state_dir)?;
    let path = sim_platform_path(state_dir);
    let perr = |reason: String| StateError::Platform {
        path: path.clone(),
        reason,
    };
    let (platform, created) = match std::fs::read_to_string(&path) {
        Ok(text) => {
            let seed = SimPlatformSeed::from_json(&text).map_err(|e| perr(e.to_string()))?;
            (
                SimPlatform::from_export(&seed).map_err(|e| perr(e.to_string()))?,
                false,
            )
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let p = SimPlatform::generate().map_err(|e| perr(e.to_string()))?;
            let json = p.export().to_json().map_err(|e| perr(e.to_string()))?;
            write_atomic(&path, json.as_bytes())?;
            (p, true)
        }
        Err(e) => return Err(io(&path)(e)),
    };
    write_atomic(&sim_root_path(state_dir), platform.root_ca_der())?;
    Ok((platform, created))
}

/// Writes the registers the simulated platform reports for an instance.
pub fn write_sim_registers(instance_dir: &Path, registers: &TdRegisters) -> Result<(), StateError> {
    let path = sim_registers_path(instance_dir);
    let json = serde_json::to_string_pretty(registers).map_err(|source| StateError::Json {
        path: path.clone(),
        source,
    })?;
    write_atomic(&path, json.as_bytes())
}

/// One forward in `instance.json`.
#[derive(Clone, Debug, Serialize)]
pub struct ForwardRecord {
    pub name: String,
    /// `ADDRESS:PORT` on the host.
    pub host: String,
    pub guest: u16,
}

/// `instance.json`: what scripts need once the guest is ready.
#[derive(Clone, Debug, Serialize)]
pub struct InstanceRecord {
    pub name: String,
    pub instance: u32,
    pub role: String,
    pub tee: String,
    pub qemu_pid: Option<u32>,
    /// vsock guest CID (TDX only).
    pub guest_cid: Option<u32>,
    pub forwards: Vec<ForwardRecord>,
    pub image_hash: String,
    pub config_sha256: String,
    pub console_log: String,
    /// The guest's `ready` status line.
    pub ready: serde_json::Value,
}

pub fn write_instance(instance_dir: &Path, record: &InstanceRecord) -> Result<(), StateError> {
    let path = instance_file_path(instance_dir);
    let json = serde_json::to_string_pretty(record).map_err(|source| StateError::Json {
        path: path.clone(),
        source,
    })?;
    write_atomic(&path, json.as_bytes())
}
