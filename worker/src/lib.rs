//! cocoon-worker: serves LLM inference inside a TDX guest to attested proxies.
//!
//! The worker dials its proxies (outbound only; its one listener is the optional status
//! port), proves itself with RA-TLS and verifies each proxy's evidence, then serves HTTP/2 with the proxy as the HTTP/2 client so that many
//! requests share one attested connection. Requests are validated here, inside the TEE
//! (field allowlist, max_tokens clamp), and token usage is counted by the engine.
//!
//! * [`config`]: the worker's TOML config, validated into [`config::WorkerConfig`].
//! * [`validate`]: the OpenAI body checks (pure).
//! * [`service`]: the HTTP/2 service the proxy talks to (registration, ping, completions).
//! * [`dial`]: the outbound RA-TLS connection loop per proxy, with certificate renewal.
//! * [`engine`]: the inference engines.
//! * [`gpu`]: GPU evidence from NVML ([`gpu::NvmlGpuSource`]), self-checked before it is offered.
//! * [`status`]: the optional status port (`/healthz`, `/readyz`).
//! * [`run`]: [`Worker`] assembles all of it and [`Worker::start`] runs it until shutdown
//!   ([`RunningWorker`]); `main` only loads the config, opens the TEE and maps errors to exit
//!   codes.

pub mod config;
pub mod dial;
pub mod e2e;
pub mod engine;
pub mod gpu;
pub mod payout;
pub mod run;
pub mod service;
pub mod status;
pub mod validate;

pub use run::{RunningWorker, StartError, Worker};
