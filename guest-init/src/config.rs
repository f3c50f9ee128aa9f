//! What cocoon-init is told: the kernel command line (measured in RTMR2, chosen by the image)
//! and `init.toml` from the config archive (measured in RTMR3, chosen by the host).
//!
//! The role comes from the command line, so the host cannot make a worker image run anything
//! else; `init.toml` may only repeat it. Paths of the service binary are fixed per role.
//!
//! ```toml
//! role = "worker"                     # must equal cocoon.role= on the kernel command line
//! [network]                           # optional: no network without it
//! interface = "eth0"                  # default eth0
//! address = "10.0.2.15/24"
//! gateway = "10.0.2.2"                # optional
//! [model]                             # worker: the dm-verity protected model disk
//! file_name = "tiny.gguf"             # exposed as /run/cocoon/models/<file_name>
//! data_blocks = 12                    # 4096-byte blocks of the data device
//! root_hash = "<64 hex>"              # dm-verity root hash (sha256)
//! salt = "<hex>"
//! hash_start_block = 1                # default 1 (a veritysetup superblock precedes the tree)
//! verify_on_boot = true               # read the whole disk once before starting the service
//! [service]
//! args = ["--config", "/run/cocoon/config/service.toml"]
//! env = { RUST_LOG = "info" }
//! max_restarts = 5                    # default 5
//! ```

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::Deserialize;

/// Guest roles (worker, proxy) and the binary each one runs: the one definition, in `protocol`.
pub use protocol::Role;

/// Config errors; each names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("kernel command line has no cocoon.role=")]
    NoRole,
    #[error("kernel command line: unknown role {0:?}")]
    UnknownRole(String),
    #[error("init.toml: {0}")]
    Toml(String),
    #[error("init.toml: role {config:?} does not match the image's role {image:?}")]
    RoleMismatch { config: String, image: String },
    #[error("init.toml: {field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
}

/// Reads `cocoon.role=` from `/proc/cmdline` text.
pub fn role_from_cmdline(cmdline: &str) -> Result<Role, ConfigError> {
    let value = cmdline
        .split_ascii_whitespace()
        .filter_map(|w| w.strip_prefix("cocoon.role="))
        .next_back()
        .ok_or(ConfigError::NoRole)?;
    match Role::parse(value) {
        Some(role) if role.is_guest() => Ok(role),
        _ => Err(ConfigError::UnknownRole(value.chars().take(32).collect())),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    role: Role,
    network: Option<RawNetwork>,
    model: Option<RawModel>,
    #[serde(default)]
    service: RawService,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNetwork {
    #[serde(default = "default_interface")]
    interface: String,
    address: String,
    gateway: Option<Ipv4Addr>,
}

fn default_interface() -> String {
    "eth0".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    file_name: String,
    data_blocks: u64,
    root_hash: String,
    salt: String,
    #[serde(default = "one")]
    hash_start_block: u64,
    #[serde(default = "yes")]
    verify_on_boot: bool,
}

/// Variables the C library's dynamic loader or runtime read to load code or data from paths
/// they name: glibc ignores them in privileged programs (its "unsecure" list, plus every
/// `LD_*`). A dynamically linked service (the GPU worker on a root disk) would honour them, so
/// a host-written config could run a library it ships on the config disk inside the TD; the
/// RTMR3 pin would catch that config, and this refuses it in the guest as well.
fn loader_variable(key: &str) -> bool {
    const GLIBC: [&str; 13] = [
        "GCONV_PATH",
        "GETCONF_DIR",
        "GLIBC_TUNABLES",
        "HOSTALIASES",
        "LOCALDOMAIN",
        "LOCPATH",
        "MALLOC_TRACE",
        "NIS_PATH",
        "NLSPATH",
        "RESOLV_HOST_CONF",
        "RES_OPTIONS",
        "TMPDIR",
        "TZDIR",
    ];
    key.starts_with("LD_") || GLIBC.contains(&key)
}

fn one() -> u64 {
    1
}

fn yes() -> bool {
    true
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    max_restarts: Option<u32>,
}

/// Validated `init.toml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitConfig {
    pub role: Role,
    pub network: Option<Network>,
    pub model: Option<ModelDisk>,
    pub service: Service,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    pub interface: String,
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Option<Ipv4Addr>,
}

/// The dm-verity parameters of the model disk (4096-byte blocks, sha256).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelDisk {
    pub file_name: String,
    pub data_blocks: u64,
    pub root_hash: [u8; 32],
    pub salt: Vec<u8>,
    pub hash_start_block: u64,
    pub verify_on_boot: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub max_restarts: u32,
}

fn invalid(field: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        message: message.into(),
    }
}

impl InitConfig {
    /// Parses and validates `init.toml` for an image of role `image_role`.
    pub fn parse(text: &str, image_role: Role) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Toml(e.to_string()))?;
        if raw.role != image_role {
            return Err(ConfigError::RoleMismatch {
                config: raw.role.as_str().into(),
                image: image_role.as_str().into(),
            });
        }
        let network = raw.network.map(validate_network).transpose()?;
        let model = raw.model.map(validate_model).transpose()?;
        if model.is_some() && image_role != Role::Worker {
            return Err(invalid("model", "only a worker has a model disk"));
        }
        if raw.service.args.len() > 64 || raw.service.args.iter().any(|a| a.contains('\0')) {
            return Err(invalid("service.args", "at most 64 arguments without NUL"));
        }
        for (k, v) in &raw.service.env {
            let ok_key = !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !ok_key || v.contains('\0') {
                return Err(invalid("service.env", format!("bad variable {k:?}")));
            }
            if loader_variable(k) {
                return Err(invalid(
                    "service.env",
                    format!(
                        "{k} is refused: it steers the dynamic loader or the C library \
                         (code or data from outside the measured image)"
                    ),
                ));
            }
        }
        Ok(Self {
            role: raw.role,
            network,
            model,
            service: Service {
                args: raw.service.args,
                env: raw.service.env,
                max_restarts: raw.service.max_restarts.unwrap_or(5).min(1000),
            },
        })
    }
}

fn validate_network(raw: RawNetwork) -> Result<Network, ConfigError> {
    if raw.interface.is_empty()
        || raw.interface.len() > 15
        || !raw
            .interface
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
    {
        return Err(invalid("network.interface", "not an interface name"));
    }
    let (addr, prefix) = raw
        .address
        .split_once('/')
        .ok_or_else(|| invalid("network.address", "expected a.b.c.d/len"))?;
    let address: Ipv4Addr = addr.parse().map_err(|_| {
        invalid(
            "network.address",
            format!("{addr:?} is not an IPv4 address"),
        )
    })?;
    let prefix_len: u8 = prefix
        .parse()
        .ok()
        .filter(|p| (1..=32).contains(p))
        .ok_or_else(|| invalid("network.address", "prefix length must be 1..=32"))?;
    Ok(Network {
        interface: raw.interface,
        address,
        prefix_len,
        gateway: raw.gateway,
    })
}

fn validate_model(raw: RawModel) -> Result<ModelDisk, ConfigError> {
    let flat = !raw.file_name.is_empty()
        && raw.file_name.len() <= 128
        && !raw.file_name.starts_with('.')
        && raw
            .file_name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if !flat {
        return Err(invalid("model.file_name", "must be a flat file name"));
    }
    if raw.data_blocks == 0 || raw.data_blocks > (1 << 40) {
        return Err(invalid("model.data_blocks", "out of range"));
    }
    let root_hash = measurements::parse_hex_array::<32>(&raw.root_hash, "model.root_hash")
        .map_err(|e| invalid("model.root_hash", e.to_string()))?;
    let salt = hex::decode(&raw.salt)
        .ok()
        .filter(|s| s.len() <= 256)
        .ok_or_else(|| invalid("model.salt", "hex, at most 256 bytes"))?;
    if raw.hash_start_block > 1 << 40 {
        return Err(invalid("model.hash_start_block", "out of range"));
    }
    Ok(ModelDisk {
        file_name: raw.file_name,
        data_blocks: raw.data_blocks,
        root_hash,
        salt,
        hash_start_block: raw.hash_start_block,
        verify_on_boot: raw.verify_on_boot,
    })
}

impl ModelDisk {
    /// Sectors (512 bytes) of the data device.
    pub fn sectors(&self) -> u64 {
        self.data_blocks * 8
    }

    /// The dm-verity target parameters for `data` and `hash` devices (`major:minor`).
    pub fn verity_params(&self, data: &str, hash: &str) -> String {
        protocol::guest::verity_params(
            data,
            hash,
            self.data_blocks,
            self.hash_start_block,
            &self.root_hash,
            &self.salt,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
role = "worker"
[network]
address = "10.0.2.15/24"
gateway = "10.0.2.2"
[model]
file_name = "tiny.gguf"
data_blocks = 12
root_hash = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
salt = "abcd"
[service]
args = ["--config", "/run/cocoon/config/service.toml"]
env = { RUST_LOG = "info" }
"#;

    #[test]
    fn parses_full_config() {
        let c = InitConfig::parse(FULL, Role::Worker).unwrap();
        let n = c.network.unwrap();
        assert_eq!(n.interface, "eth0");
        assert_eq!(n.prefix_len, 24);
        let m = c.model.unwrap();
        assert_eq!(m.sectors(), 96);
        assert_eq!(
            m.verity_params("254:0", "254:16"),
            "1 254:0 254:16 4096 4096 12 1 sha256 \
             00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff abcd"
        );
        assert_eq!(c.service.max_restarts, 5);
    }

    #[test]
    fn role_comes_from_the_image() {
        assert_eq!(
            role_from_cmdline("console=ttyS0 cocoon.role=proxy quiet").unwrap(),
            Role::Proxy
        );
        assert_eq!(role_from_cmdline("quiet"), Err(ConfigError::NoRole));
        assert!(matches!(
            role_from_cmdline("cocoon.role=shell"),
            Err(ConfigError::UnknownRole(_))
        ));
        assert!(matches!(
            InitConfig::parse(FULL, Role::Proxy),
            Err(ConfigError::RoleMismatch { .. })
        ));
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (FULL.replace("10.0.2.15/24", "10.0.2.15"), "network.address"),
            (FULL.replace("tiny.gguf", "../x"), "model.file_name"),
            (
                FULL.replace("salt = \"abcd\"", "salt = \"xyz\""),
                "model.salt",
            ),
            (FULL.replace("RUST_LOG", "A-B"), "service.env"),
        ];
        for (text, field) in cases {
            let err = InitConfig::parse(&text, Role::Worker).unwrap_err();
            assert!(err.to_string().contains(field), "{err}");
        }
        let err = InitConfig::parse(&format!("{FULL}\nshell = true\n"), Role::Worker).unwrap_err();
        assert!(err.to_string().contains("shell"), "{err}");
    }

    #[test]
    fn loader_variables_are_refused() {
        for key in [
            "LD_PRELOAD",
            "LD_LIBRARY_PATH",
            "LD_AUDIT",
            "GLIBC_TUNABLES",
            "GCONV_PATH",
        ] {
            let text = FULL.replace("RUST_LOG", key);
            let err = InitConfig::parse(&text, Role::Worker)
                .unwrap_err()
                .to_string();
            assert!(err.contains("service.env") && err.contains(key), "{err}");
            assert!(err.contains("dynamic loader"), "{err}");
        }
        // Look-alikes that steer nothing are fine.
        for key in ["LDX", "OLD_PRELOAD", "RUST_BACKTRACE"] {
            let text = FULL.replace("RUST_LOG", key);
            assert!(InitConfig::parse(&text, Role::Worker).is_ok(), "{key}");
        }
    }
}
