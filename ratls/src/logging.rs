//! Log setup shared by every cocoon binary (proxy, worker, client, host launcher): `tracing`
//! events formatted to stderr, filtered by `RUST_LOG` or else the binary's default level.
//! Stdout stays free for the readiness lines that supervisors read.

/// Installs the process-wide subscriber: stderr, `RUST_LOG` if set and valid, else
/// `default_filter` (e.g. `"info"`). A second call leaves the first subscriber in place.
pub fn init_tracing(default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .try_init();
}
