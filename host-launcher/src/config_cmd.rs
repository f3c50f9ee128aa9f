//! `cocoon-host config`: render one service config (proxy, worker, client) for a mode
//! ([`Mode`]: local process, simulated VM, TDX) from flags, or derive a variant of an existing
//! config by changing keys (`config edit`). Test harnesses and operators take their configs
//! from here instead of writing TOML: every file is built as the service's own config type
//! ([`crate::render`]) and read back with the service's own parser before it is written.
//!
//! ```text
//! cocoon-host config proxy  --mode sim-vm --name P --worker-listen A --client-listen A
//!                           --admin-listen A [--default-balance-nano N] PINS [--model-pin NAME=SHA256]
//! cocoon-host config worker --mode sim-vm --name W --proxy A [--capacity 4] --model NAME
//!                           [--engine mistralrs|stub] [--gguf PATH] [--max-completion-tokens N]
//!                           [--stub-tokens N] [--stub-tokens-per-second X] PINS
//! cocoon-host config client --mode sim-vm [--listen A] [--proxy HOST:PORT] PINS
//! cocoon-host config edit --role proxy|worker|client FILE [--set KEY=TOML] [--unset KEY]
//! PINS: [--image HEX]... [--rtmr3 HEX]... [--manifest FILE --publisher-key HEX...
//!       [--manifest-role ROLE]] [--allow-any-config]
//! ```
//! Every form writes to `--out FILE` (default: stdout). `edit` addresses keys by dotted path
//! (`policy.allow_any_config`, `models`); values are TOML (`true`, `5`, `"text"`,
//! `[{ name = "m", engine = "stub" }]`); the result must still be a config of that role, so a
//! misspelled key is refused.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ratls::config::ManifestPin;
use ratls::service_config::ServiceConfig;
use serde::Serialize;
use worker::config::ModelFile;

use crate::launch::EngineChoice;
use crate::render::{self, ClientSpec, Mode, Pins, ProxySpec, RenderError, WorkerSpec};

/// `cocoon-host config`.
#[derive(clap::Args, Debug)]
pub struct ConfigArgs {
    #[command(subcommand)]
    pub what: What,
    /// Write the config here (default: stdout).
    #[arg(long, value_name = "FILE", global = true)]
    pub out: Option<PathBuf>,
}

/// Which config.
#[derive(clap::Subcommand, Debug)]
pub enum What {
    /// A proxy's config.
    Proxy(ProxyArgs),
    /// A worker's config.
    Worker(WorkerArgs),
    /// A client's config (the client runs on the host; --mode is where its proxy runs).
    Client(ClientArgs),
    /// A variant of an existing config: change keys, keep the rest.
    Edit(EditArgs),
}

/// What a verifier pins of its peer.
#[derive(clap::Args, Debug, Clone)]
pub struct PinArgs {
    /// Where the service runs: `local` (a process on the simulated platform), `sim-vm` (a
    /// guest under `launch --tee sim`), `tdx` (a guest on real TDX).
    #[arg(long, value_enum)]
    pub mode: Mode,
    /// A peer image hash (hex) to accept.
    #[arg(long = "image", value_name = "HEX")]
    pub images: Vec<String>,
    /// A peer runtime configuration (RTMR3, hex) to accept.
    #[arg(long = "rtmr3", value_name = "HEX")]
    pub rtmr3: Vec<String>,
    /// A signed release manifest to take images, RTMR3 values and models from.
    #[arg(long, value_name = "FILE")]
    pub manifest: Option<PathBuf>,
    /// A publisher key (hex Ed25519) the manifest must be signed with.
    #[arg(long = "publisher-key", value_name = "HEX", requires = "manifest")]
    pub publisher_keys: Vec<String>,
    /// The manifest role whose entry is accepted (default: the peer's role).
    #[arg(long, value_name = "ROLE", requires = "manifest")]
    pub manifest_role: Option<String>,
    /// Development only: accept any peer configuration and model (no RTMR3 or model pin).
    #[arg(long)]
    pub allow_any_config: bool,
}

impl PinArgs {
    fn pins(&self, peer: protocol::Role, models: BTreeMap<String, String>) -> Pins {
        Pins {
            images: self.images.clone(),
            rtmr3: self.rtmr3.clone(),
            models,
            manifest: self.manifest.as_ref().map(|file| ManifestPin {
                file: file.clone(),
                publisher_keys: self.publisher_keys.clone(),
                role: self
                    .manifest_role
                    .clone()
                    .unwrap_or_else(|| peer.as_str().to_string()),
                record: None,
                allow_rollback: false,
            }),
            allow_any_config: self.allow_any_config,
        }
    }
}

/// `config proxy`.
#[derive(clap::Args, Debug)]
pub struct ProxyArgs {
    #[command(flatten)]
    pub pins: PinArgs,
    #[arg(long)]
    pub name: String,
    /// Where workers dial in.
    #[arg(long, value_name = "ADDR")]
    pub worker_listen: SocketAddr,
    /// Where clients connect.
    #[arg(long, value_name = "ADDR")]
    pub client_listen: SocketAddr,
    /// /stats, /jsonstats, /metrics (loopback).
    #[arg(long, value_name = "ADDR")]
    pub admin_listen: SocketAddr,
    #[arg(long, default_value_t = crate::local::LOCAL_MAX_PROMPT_TOKENS)]
    pub max_prompt_tokens: u32,
    /// Development: the balance unknown accounts start with (nano-TON).
    #[arg(long, value_name = "NANO")]
    pub default_balance_nano: Option<u64>,
    /// A model a worker may register: NAME=SHA256 (hex).
    #[arg(long = "model-pin", value_name = "NAME=SHA256", value_parser = parse_model_pin)]
    pub model_pins: Vec<(String, String)>,
}

/// `config worker`.
#[derive(clap::Args, Debug)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub pins: PinArgs,
    #[arg(long)]
    pub name: String,
    /// A proxy's worker port (ip:port); repeat for several proxies.
    #[arg(long = "proxy", value_name = "ADDR", required = true)]
    pub proxies: Vec<SocketAddr>,
    /// Concurrent generations.
    #[arg(long, default_value_t = 4)]
    pub capacity: u32,
    /// The model's name.
    #[arg(long, value_name = "NAME")]
    pub model: String,
    #[arg(long, value_enum, default_value = "mistralrs")]
    pub engine: EngineChoice,
    /// The GGUF file (engine mistralrs, required there), as the worker sees it.
    #[arg(long, value_name = "PATH")]
    pub gguf: Option<PathBuf>,
    #[arg(long, value_name = "N")]
    pub max_completion_tokens: Option<u32>,
    /// Tokens per completion (engine stub).
    #[arg(long, value_name = "N")]
    pub stub_tokens: Option<u32>,
    /// Speed (engine stub; 0 = as fast as possible).
    #[arg(long, value_name = "X")]
    pub stub_tokens_per_second: Option<f64>,
}

/// `config client`.
#[derive(clap::Args, Debug)]
pub struct ClientArgs {
    #[command(flatten)]
    pub pins: PinArgs,
    /// The local OpenAI endpoint.
    #[arg(long, value_name = "ADDR", default_value = client::config::DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// The proxy's client port (host:port).
    #[arg(long, value_name = "HOST:PORT", default_value = client::config::DEFAULT_PROXY)]
    pub proxy: String,
    #[arg(long, value_name = "FILE", default_value = client::config::DEFAULT_KEY_FILE)]
    pub account_key_file: PathBuf,
    /// A worker image hash (hex) requests may be sealed to (end-to-end encryption).
    #[arg(long = "worker-image", value_name = "HEX")]
    pub worker_images: Vec<String>,
    /// A worker runtime configuration (RTMR3, hex) requests may be sealed to.
    #[arg(long = "worker-rtmr3", value_name = "HEX")]
    pub worker_rtmr3: Vec<String>,
    /// `required` (default): requests are sealed to workers, pinned by --worker-image and
    /// --worker-rtmr3 or by the manifest's worker entry; `off`: plaintext to the proxy.
    #[arg(long, value_enum, default_value = "required")]
    pub encryption: EncryptionArg,
}

/// `--encryption`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncryptionArg {
    Required,
    Off,
}

/// `config edit`.
#[derive(clap::Args, Debug)]
pub struct EditArgs {
    /// The service whose config FILE is.
    #[arg(long, value_enum)]
    pub role: EditRole,
    /// The config to derive from.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Set a key (dotted path) to a TOML value.
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_set)]
    pub set: Vec<(String, toml::Value)>,
    /// Remove a key (dotted path).
    #[arg(long = "unset", value_name = "KEY")]
    pub unset: Vec<String>,
}

/// The roles `config edit` knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum EditRole {
    Proxy,
    Worker,
    Client,
}

fn parse_model_pin(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(n, h)| (n.to_string(), h.to_string()))
        .ok_or_else(|| format!("{s:?}: expected NAME=SHA256"))
}

fn parse_set(s: &str) -> Result<(String, toml::Value), String> {
    let (key, value) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected KEY=VALUE"))?;
    let doc: toml::Table = format!("v = {value}")
        .parse()
        .map_err(|e: toml::de::Error| format!("{key}: {value:?} is not a TOML value: {e}"))?;
    let v = doc
        .get("v")
        .cloned()
        .ok_or_else(|| format!("{key}: no value"))?;
    Ok((key.to_string(), v))
}

/// A `config` failure.
#[derive(Debug, thiserror::Error)]
pub enum ConfigCmdError {
    #[error(transparent)]
    Render(#[from] RenderError),
    #[error(transparent)]
    Config(#[from] ratls::service_config::ConfigError),
    #[error("{0} is required here")]
    Missing(&'static str),
    #[error("{0}: no such key")]
    NoKey(String),
    #[error("{0}: not a table")]
    NotATable(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The config's text.
pub fn render_text(what: &What) -> Result<String, ConfigCmdError> {
    Ok(match what {
        What::Proxy(a) => {
            let models = a.model_pins.iter().cloned().collect();
            let spec = ProxySpec {
                name: a.name.clone(),
                worker_listen: a.worker_listen,
                client_listen: a.client_listen,
                admin_listen: a.admin_listen,
                max_prompt_tokens: a.max_prompt_tokens,
                default_balance_nano: a.default_balance_nano,
                workers: a.pins.pins(protocol::Role::Worker, models),
            };
            render::to_text(&render::proxy(a.pins.mode, &spec))?
        }
        What::Worker(a) => {
            let model = match (a.engine, &a.gguf) {
                (EngineChoice::Mistralrs, None) => {
                    return Err(ConfigCmdError::Missing("--gguf (engine mistralrs)"))
                }
                (EngineChoice::Mistralrs, Some(gguf)) => ModelFile::Mistralrs {
                    name: a.model.clone(),
                    gguf: gguf.clone(),
                    max_completion_tokens: a.max_completion_tokens,
                    max_context: None,
                },
                (EngineChoice::Stub, _) => ModelFile::Stub {
                    name: a.model.clone(),
                    max_completion_tokens: a.max_completion_tokens,
                    max_context: None,
                    tokens: a.stub_tokens,
                    tokens_per_second: a.stub_tokens_per_second,
                },
            };
            let spec = WorkerSpec {
                name: a.name.clone(),
                proxies: a.proxies.iter().map(ToString::to_string).collect(),
                capacity: a.capacity,
                model,
                proxy: a.pins.pins(protocol::Role::Proxy, BTreeMap::new()),
            };
            render::to_text(&render::worker(a.pins.mode, &spec))?
        }
        What::Client(a) => {
            let workers = match a.encryption {
                EncryptionArg::Off => None,
                EncryptionArg::Required if !a.worker_images.is_empty() => Some(Pins {
                    images: a.worker_images.clone(),
                    rtmr3: a.worker_rtmr3.clone(),
                    ..Pins::default()
                }),
                EncryptionArg::Required => match &a.pins.manifest {
                    Some(_) => Some(Pins {
                        manifest: a
                            .pins
                            .pins(protocol::Role::Worker, BTreeMap::new())
                            .manifest
                            .map(|m| ManifestPin {
                                role: protocol::Role::Worker.as_str().to_string(),
                                ..m
                            }),
                        ..Pins::default()
                    }),
                    None => {
                        return Err(ConfigCmdError::Missing(
                            "--worker-image (workers to seal requests to), a --manifest, or --encryption off",
                        ))
                    }
                },
            };
            let spec = ClientSpec {
                listen: a.listen,
                proxy: a.proxy.clone(),
                account_key_file: a.account_key_file.clone(),
                pins: a.pins.pins(protocol::Role::Proxy, BTreeMap::new()),
                workers,
            };
            render::to_text(&render::client(a.pins.mode, &spec))?
        }
        What::Edit(a) => {
            let text = std::fs::read_to_string(&a.file).map_err(|source| ConfigCmdError::Io {
                path: a.file.clone(),
                source,
            })?;
            match a.role {
                EditRole::Proxy => edit::<proxy::config::ConfigFile>(&text, &a.file, a)?,
                EditRole::Worker => edit::<worker::config::WorkerConfigFile>(&text, &a.file, a)?,
                EditRole::Client => edit::<client::config::ClientConfigFile>(&text, &a.file, a)?,
            }
        }
    })
}

/// Parses `text` as `T`, applies the edits to its TOML tree, and renders the result as `T`
/// (so it must still be a `T`: unknown keys and wrong types are refused).
fn edit<T>(text: &str, path: &Path, a: &EditArgs) -> Result<String, ConfigCmdError>
where
    T: Serialize + ServiceConfig + PartialEq,
{
    let value: T = T::parse(text, path)?;
    let mut tree = toml::Table::try_from(&value).map_err(RenderError::from)?;
    for key in &a.unset {
        let (table, last) = parent(&mut tree, key)?;
        table
            .remove(last)
            .ok_or_else(|| ConfigCmdError::NoKey(key.clone()))?;
    }
    for (key, v) in &a.set {
        let (table, last) = parent(&mut tree, key)?;
        table.insert(last.to_string(), v.clone());
    }
    let edited = toml::to_string(&tree).map_err(RenderError::from)?;
    let value: T = T::parse(&edited, path)?;
    Ok(render::to_text(&value)?)
}

/// The table holding the last component of the dotted `key`, and that component.
fn parent<'a, 'k>(
    tree: &'a mut toml::Table,
    key: &'k str,
) -> Result<(&'a mut toml::Table, &'k str), ConfigCmdError> {
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop().unwrap_or(key);
    let mut table = tree;
    for p in parts {
        table = table
            .get_mut(p)
            .ok_or_else(|| ConfigCmdError::NoKey(key.to_string()))?
            .as_table_mut()
            .ok_or_else(|| ConfigCmdError::NotATable(key.to_string()))?;
    }
    Ok((table, last))
}

/// Renders and writes (`out`) or prints the config.
pub fn run(args: &ConfigArgs) -> Result<(), ConfigCmdError> {
    let text = render_text(&args.what)?;
    match &args.out {
        Some(path) => std::fs::write(path, text).map_err(|source| ConfigCmdError::Io {
            path: path.clone(),
            source,
        }),
        None => {
            print!("{text}");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        args: ConfigArgs,
    }

    fn text(argv: &[&str]) -> Result<String, String> {
        let cli = Cli::try_parse_from(std::iter::once("config").chain(argv.iter().copied()))
            .map_err(|e| e.to_string())?;
        render_text(&cli.args.what).map_err(|e| e.to_string())
    }

    #[test]
    fn flags_render_typed_configs() {
        let img = "ab".repeat(32);
        let w = text(&[
            "worker",
            "--mode",
            "sim-vm",
            "--name",
            "vm-worker",
            "--proxy",
            "10.0.2.2:19101",
            "--image",
            &img,
            "--model",
            "tiny",
            "--gguf",
            "/run/cocoon/models/tiny.gguf",
            "--max-completion-tokens",
            "64",
        ])
        .unwrap();
        let t: toml::Table = w.parse().unwrap();
        assert_eq!(t["proxies"][0].as_str(), Some("10.0.2.2:19101"));
        assert_eq!(
            t["models"][0]["max_completion_tokens"].as_integer(),
            Some(64)
        );
        assert_eq!(t["policy"]["images"][0].as_str(), Some(img.as_str()));
        let e = text(&[
            "worker",
            "--mode",
            "sim-vm",
            "--name",
            "w",
            "--proxy",
            "1.2.3.4:5",
            "--model",
            "m",
        ])
        .unwrap_err();
        assert!(e.contains("--gguf"), "{e}");
        let p = text(&[
            "proxy",
            "--mode",
            "local",
            "--name",
            "p",
            "--worker-listen",
            "127.0.0.1:0",
            "--client-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--image",
            &img,
            "--allow-any-config",
        ])
        .unwrap();
        let t: toml::Table = p.parse().unwrap();
        assert_eq!(t["policy"]["allow_any_config"].as_bool(), Some(true));
        let c = text(&[
            "client",
            "--mode",
            "sim-vm",
            "--manifest",
            "manifest.json",
            "--publisher-key",
            &img,
        ])
        .unwrap();
        let t: toml::Table = c.parse().unwrap();
        assert_eq!(t["policy"]["manifest"]["role"].as_str(), Some("proxy"));
        assert_eq!(t["listen"].as_str(), Some(client::config::DEFAULT_LISTEN));
    }

    #[test]
    fn edit_changes_keys_and_refuses_what_the_type_refuses() {
        let dir = std::env::temp_dir().join(format!("cocoon-config-edit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("w.toml");
        let img = "ab".repeat(32);
        let w = text(&[
            "worker",
            "--mode",
            "local",
            "--name",
            "w",
            "--proxy",
            "127.0.0.1:9",
            "--image",
            &img,
            "--model",
            "m",
            "--engine",
            "stub",
        ])
        .unwrap();
        std::fs::write(&file, &w).unwrap();
        let f = file.to_str().unwrap();
        let edited = text(&["edit", "--role", "worker", f, "--set", "capacity=5"]).unwrap();
        assert_eq!(edited, w.replace("capacity = 4", "capacity = 5"));
        let upstream = text(&[
            "edit",
            "--role",
            "worker",
            f,
            "--set",
            "models=[{ name = \"m\", engine = \"upstream\", url = \"http://127.0.0.1:1\", \
             upstream_model = \"x\", model_hash = \"00\", max_completion_tokens = 64, \
             max_context = 4096 }]",
        ])
        .unwrap();
        assert!(upstream.contains("engine = \"upstream\""), "{upstream}");
        let e = text(&["edit", "--role", "worker", f, "--set", "capacityy=5"]).unwrap_err();
        assert!(e.contains("capacityy"), "{e}");
        let e = text(&["edit", "--role", "worker", f, "--unset", "policy.rtmr3"]).unwrap_err();
        assert_eq!(e, "policy.rtmr3: no such key");
        let e = text(&["edit", "--role", "worker", f, "--unset", "name"]).unwrap_err();
        assert!(e.contains("name"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A real TD's collateral source is added to a rendered config with `edit` (the operator
    /// knows where the host's PCCS is); the result is a valid `[tee.pccs]`.
    #[test]
    fn edit_adds_a_pccs_to_a_tdx_config() {
        let dir = std::env::temp_dir().join(format!("cocoon-config-pccs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("w.toml");
        let img = "ab".repeat(32);
        let w = text(&[
            "worker",
            "--mode",
            "tdx",
            "--name",
            "w",
            "--proxy",
            "10.0.2.2:9",
            "--image",
            &img,
            "--model",
            "m",
            "--gguf",
            "/models/m.gguf",
        ])
        .unwrap();
        std::fs::write(&file, &w).unwrap();
        let f = file.to_str().unwrap();
        let edited = text(&[
            "edit",
            "--role",
            "worker",
            f,
            "--set",
            "tee.pccs={ url = \"https://10.0.2.2:8081\", ca_file = \"pccs-ca.pem\" }",
        ])
        .unwrap();
        let parsed = worker::config::WorkerConfigFile::parse(&edited, &file).unwrap();
        match parsed.tee {
            attestation::config::TeeConfig::Tdx { pccs: Some(p), .. } => {
                assert_eq!(p.url, "https://10.0.2.2:8081");
                assert_eq!(
                    p.refresh_secs,
                    attestation::PccsConfig::DEFAULT_REFRESH_SECS
                );
            }
            other => panic!("{other:?}"),
        }
        let e = text(&[
            "edit",
            "--role",
            "worker",
            f,
            "--set",
            "tee.pccs={ uri = \"x\" }",
        ])
        .unwrap_err();
        assert!(e.contains("uri"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
