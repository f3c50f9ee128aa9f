//! cocoon-init: PID 1 of the cocoon guest. See the library docs for the boot steps and
//! `exit::InitExit` for the documented exit codes.

use init::exit::{Failure, InitExit};
use init::service::{self, Outcome};
use init::status::Status;
use init::steps;

fn main() {
    match run() {
        Ok(()) => steps::power_off(InitExit::Stopped, "stopped"),
        Err(f) => steps::power_off(f.exit, &f.reason),
    }
}

fn run() -> Result<(), Failure> {
    // Before anything else: stop signals must queue for the supervisor, and Ctrl-Alt-Del from
    // the host must become SIGINT rather than an immediate reboot.
    let mut signals = service::block_signals()
        .map_err(|e| Failure::new(InitExit::Mount, format!("signal setup: {e}")))?;
    let _ = nix::sys::reboot::set_cad_enabled(false);

    Status::new("mount").emit();
    steps::mount_filesystems()?;
    let loaded = steps::load_modules()?;
    Status::new("modules").with("loaded", loaded).emit();
    let cmdline = steps::read_cmdline()?;
    let role = steps::read_role(&cmdline)?;
    if let Some(root) = steps::root_disk(&cmdline)? {
        let switched = steps::switch_root(&root)?;
        Status::new("root")
            .with("verified_bytes", switched.verified_bytes)
            .with("verify_ms", switched.verify_ms)
            .emit();
        // Modules the root disk lists (its /etc/cocoon/modules), e.g. drivers too large for
        // the initramfs.
        let more = steps::load_modules()?;
        Status::new("modules")
            .with("loaded", more)
            .with("from", "root disk")
            .emit();
    }
    let (kind, tee) = steps::open_tee()?;
    Status::new("tee")
        .with("kind", kind.name())
        .with("role", role.as_str())
        .emit();
    let config = steps::measure_and_read_config(&tee, role)?;
    steps::configure_network(config.network.as_ref())?;
    if let Some(model) = &config.model {
        let path = steps::setup_model(model)?;
        Status::new("model")
            .with("path", path.display().to_string())
            .emit();
    }
    drop(tee);
    match service::supervise(role, &config.service, &mut signals) {
        Outcome::Stopped => Ok(()),
        Outcome::Failed(f) => Err(f),
    }
}
