//! Service configs built as the services' own config file types, for every place a service
//! runs ([`Mode`]): a local process on the simulated platform (`launch --local`), a guest under
//! `launch --tee sim`, a guest on real TDX. Pure: values in, typed configs out.
//!
//! The types are `proxy::config::ConfigFile`, `worker::config::WorkerConfigFile` and
//! `client::config::ClientConfigFile` (with `ratls::config::PolicyConfig` and
//! `attestation::config::TeeConfig` sections): the schema is defined once, in each service, and
//! [`to_text`] serializes with `toml::to_string`, then parses the text back with the service's
//! own parser and refuses a config that does not read back as the same value. `launch --local`
//! ([`crate::local`]) and `cocoon-host config` (the CI harnesses' configs) both render here.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use attestation::config::TeeConfig;
use ratls::config::{ManifestPin, PolicyConfig};
use ratls::service_config::ServiceConfig;
use serde::Serialize;
use worker::config::ModelFile;

use crate::local::{PLATFORM_FILE, PROXY_REGISTERS_FILE, ROOT_FILE, WORKER_REGISTERS_FILE};

/// Where a service runs: its `[tee]` section and the roots its policy trusts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// A process on the host with the simulated platform (`launch --local`): the platform,
    /// registers and simulated root are files next to the config.
    Local,
    /// A guest under `launch --tee sim`: the platform cocoon-init copied from fw_cfg, RTMR3
    /// from cocoon-init's runtime log; peers are trusted under the simulated root
    /// (`sim-root.der`, on the config disk).
    SimVm,
    /// A guest on real TDX: Intel's root only.
    Tdx,
}

impl Mode {
    /// All modes (tests render every role in each).
    pub const ALL: [Mode; 3] = [Mode::Local, Mode::SimVm, Mode::Tdx];

    /// The `[tee]` section of a proxy or worker; `registers_file` is its registers file in
    /// [`Mode::Local`] (under `launch --tee sim` cocoon-init provides them).
    pub fn tee(self, registers_file: &str) -> TeeConfig {
        match self {
            Mode::Local => TeeConfig::Sim {
                platform_file: PLATFORM_FILE.into(),
                registers_file: registers_file.into(),
                runtime_log_file: None,
            },
            Mode::SimVm => TeeConfig::Sim {
                platform_file: protocol::guest::GUEST_SIM_PLATFORM_FILE.into(),
                registers_file: protocol::guest::GUEST_SIM_REGISTERS_FILE.into(),
                runtime_log_file: Some(protocol::guest::GUEST_RTMR3_LOG.into()),
            },
            Mode::Tdx => TeeConfig::Tdx {
                report_root: None,
                measurements_root: None,
                pccs: None,
            },
        }
    }

    /// The roots a policy trusts: the simulated root (a file next to the config), or Intel's.
    pub fn roots(self) -> Vec<String> {
        match self {
            Mode::Local | Mode::SimVm => vec![ROOT_FILE.into()],
            Mode::Tdx => PolicyConfig::default().roots,
        }
    }
}

/// What a verifier pins of its peer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pins {
    /// Image hashes (hex).
    pub images: Vec<String>,
    /// Accepted RTMR3 values (hex): the peer's runtime configuration.
    pub rtmr3: Vec<String>,
    /// Models a worker may register: name → SHA-256 (hex).
    pub models: BTreeMap<String, String>,
    /// A signed manifest to take images, RTMR3 values and models from.
    pub manifest: Option<ManifestPin>,
    /// Development only: no RTMR3 or model pin required.
    pub allow_any_config: bool,
}

impl Pins {
    /// The `[policy]` section of a service in `mode`.
    pub fn policy(&self, mode: Mode) -> PolicyConfig {
        PolicyConfig {
            roots: mode.roots(),
            images: self.images.clone(),
            manifest: self.manifest.clone(),
            rtmr3: self.rtmr3.clone(),
            models: self.models.clone(),
            allow_any_config: self.allow_any_config,
            ..PolicyConfig::default()
        }
    }
}

/// A proxy's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxySpec {
    pub name: String,
    pub worker_listen: SocketAddr,
    pub client_listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub max_prompt_tokens: u32,
    /// Development: the balance unknown accounts start with.
    pub default_balance_nano: Option<u64>,
    /// What the proxy pins of workers.
    pub workers: Pins,
}

/// A worker's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerSpec {
    pub name: String,
    /// Proxy worker-port addresses (`ip:port`).
    pub proxies: Vec<String>,
    pub capacity: u32,
    pub model: ModelFile,
    /// What the worker pins of proxies.
    pub proxy: Pins,
}

/// A client's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientSpec {
    pub listen: SocketAddr,
    /// The proxy's client port (`host:port`).
    pub proxy: String,
    pub account_key_file: PathBuf,
    /// What the client pins of the proxy.
    pub pins: Pins,
    /// What the client pins of the workers it seals requests to; `None`: encryption off.
    pub workers: Option<Pins>,
}

/// The proxy's config file.
pub fn proxy(mode: Mode, spec: &ProxySpec) -> proxy::config::ConfigFile {
    proxy::config::ConfigFile {
        accounts: proxy::config::AccountsFile {
            default_balance_nano: spec.default_balance_nano,
            balances: Default::default(),
        },
        ..proxy::config::ConfigFile::new(
            spec.name.clone(),
            [spec.worker_listen, spec.client_listen, spec.admin_listen],
            spec.max_prompt_tokens,
            mode.tee(PROXY_REGISTERS_FILE),
            spec.workers.policy(mode),
        )
    }
}

/// The worker's config file.
pub fn worker(mode: Mode, spec: &WorkerSpec) -> worker::config::WorkerConfigFile {
    worker::config::WorkerConfigFile::new(
        spec.name.clone(),
        spec.proxies.clone(),
        spec.capacity,
        mode.tee(WORKER_REGISTERS_FILE),
        spec.proxy.policy(mode),
        vec![spec.model.clone()],
    )
}

/// The client's config file (the client runs on the host; `mode` is where its proxy runs).
pub fn client(mode: Mode, spec: &ClientSpec) -> client::config::ClientConfigFile {
    client::config::ClientConfigFile {
        listen: spec.listen.to_string(),
        proxy: spec.proxy.clone(),
        account_key_file: spec.account_key_file.clone(),
        encryption: match spec.workers {
            Some(_) => client::config::Encryption::Required,
            None => client::config::Encryption::Off,
        },
        worker_policy: spec.workers.as_ref().map(|w| w.policy(mode)),
        ..client::config::ClientConfigFile::new(spec.pins.policy(mode))
    }
}

/// A config that could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("config toml: {0}")]
    Toml(#[from] toml::ser::Error),
    #[error("rendered config does not parse: {0}")]
    Parse(#[from] ratls::service_config::ConfigError),
    #[error("rendered config reads back as another value")]
    RoundTrip,
}

/// First line of every rendered config.
pub const HEADER: &str = "# generated by cocoon-host from the service's config type\n";

/// The config's text: [`HEADER`] and the value as TOML, checked to parse back (with the
/// service's own parser) as the same value.
pub fn to_text<T>(value: &T) -> Result<String, RenderError>
where
    T: Serialize + ServiceConfig + PartialEq,
{
    let text = format!("{HEADER}{}", toml::to_string(value)?);
    if T::parse(&text, Path::new("rendered.toml"))? != *value {
        return Err(RenderError::RoundTrip);
    }
    Ok(text)
}

#[cfg(test)]
mod tests;
