//! Running and supervising the role service: restart with backoff, give up after a limit,
//! reap every zombie (PID 1 inherits orphans), stop cleanly on SIGTERM/SIGINT.

use std::io::{BufRead, BufReader, Read};
use std::os::fd::AsFd;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::config::{Role, Service};
use crate::exit::{Failure, InitExit};
use crate::status::Status;

/// A service that ran at least this long before exiting resets the failure count.
pub const HEALTHY_RUN: Duration = Duration::from_secs(60);
/// Longest wait between restarts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long a stopping service gets between SIGTERM and SIGKILL: longer than the services'
/// default drain (`shutdown_drain_secs` = 30 s, then a few seconds for the error events that
/// end the remaining streams), shorter than the 60 s after which `cocoon-host` stops QEMU.
pub const STOP_GRACE: Duration = Duration::from_secs(45);

/// Restart policy: 1 s, 2 s, 4 s … capped at [`MAX_BACKOFF`]; after `max_restarts`
/// consecutive failures, give up.
#[derive(Debug, Clone)]
pub struct Backoff {
    failures: u32,
    max_restarts: u32,
}

impl Backoff {
    pub fn new(max_restarts: u32) -> Self {
        Self {
            failures: 0,
            max_restarts,
        }
    }

    /// The service exited after running `ran_for`: the delay before restarting it, or `None`
    /// to give up.
    pub fn on_exit(&mut self, ran_for: Duration) -> Option<Duration> {
        if ran_for >= HEALTHY_RUN {
            self.failures = 0;
        }
        if self.failures >= self.max_restarts {
            return None;
        }
        self.failures += 1;
        let secs = 1u64 << (self.failures - 1).min(16);
        Some(Duration::from_secs(secs).min(MAX_BACKOFF))
    }
}

/// Why the supervisor returned.
#[derive(Debug)]
pub enum Outcome {
    Stopped,
    Failed(Failure),
}

struct Running {
    pid: Pid,
    started: Instant,
}

/// Runs the service until a stop signal (→ [`Outcome::Stopped`]) or the restart limit.
/// `signals` must already be blocked in this thread (see [`block_signals`]).
pub fn supervise(role: Role, service: &Service, signals: &mut SignalFd) -> Outcome {
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let mut backoff = Backoff::new(service.max_restarts);
    let mut running: Option<Running> = None;
    let mut restart_at = Some(Instant::now());
    let mut stopping: Option<Instant> = None;
    let mut restarts = 0u32;
    loop {
        if stopping.is_none() {
            if let Some(at) = restart_at.filter(|at| *at <= Instant::now()) {
                let _ = at;
                restart_at = None;
                match spawn(role, service, ready_tx.clone()) {
                    Ok(pid) => {
                        Status::new("service")
                            .with("binary", role.binary())
                            .with("pid", pid.as_raw())
                            .with("restarts", restarts)
                            .emit();
                        running = Some(Running {
                            pid,
                            started: Instant::now(),
                        });
                    }
                    Err(e) => {
                        return Outcome::Failed(Failure::new(
                            InitExit::ServiceSpawn,
                            format!("cannot start {}: {e}", role.binary()),
                        ))
                    }
                }
            }
        }
        if ready_rx.try_recv().is_ok() {
            Status::new("ready")
                .with("role", role.as_str())
                .with("restarts", restarts)
                .emit();
        }
        if let (Some(since), Some(r)) = (stopping, &running) {
            if since.elapsed() >= STOP_GRACE {
                let _ = kill(r.pid, Signal::SIGKILL);
            }
        }
        if stopping.is_some() && running.is_none() {
            return Outcome::Stopped;
        }

        let mut fds = [PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
        let _ = poll(&mut fds, PollTimeout::from(200u16));
        while let Ok(Some(info)) = signals.read_signal() {
            let sig = Signal::try_from(info.ssi_signo as i32).ok();
            if matches!(sig, Some(Signal::SIGTERM) | Some(Signal::SIGINT)) && stopping.is_none() {
                Status::new("stopping")
                    .with("signal", sig.map(|s| s.as_str()).unwrap_or("?"))
                    .emit();
                stopping = Some(Instant::now());
                if let Some(r) = &running {
                    let _ = kill(r.pid, Signal::SIGTERM);
                }
            }
        }
        // Reap everything: the service and any orphan that was re-parented to PID 1.
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(status) => {
                    let Some(pid) = status.pid() else { break };
                    let Some(r) = running.as_ref().filter(|r| r.pid == pid) else {
                        continue;
                    };
                    let ran_for = r.started.elapsed();
                    running = None;
                    Status::new("service-exit")
                        .with("status", describe(&status))
                        .with("ran_ms", ran_for.as_millis() as u64)
                        .emit();
                    if stopping.is_none() {
                        match backoff.on_exit(ran_for) {
                            Some(delay) => {
                                restarts += 1;
                                Status::new("restart")
                                    .with("in_ms", delay.as_millis() as u64)
                                    .emit();
                                restart_at = Some(Instant::now() + delay);
                            }
                            None => {
                                return Outcome::Failed(Failure::new(
                                    InitExit::ServiceFailed,
                                    format!(
                                        "{} failed {} times in a row ({})",
                                        role.binary(),
                                        service.max_restarts + 1,
                                        describe(&status)
                                    ),
                                ))
                            }
                        }
                    }
                }
            }
        }
    }
}

fn describe(status: &WaitStatus) -> String {
    match status {
        WaitStatus::Exited(_, code) => format!("exit {code}"),
        WaitStatus::Signaled(_, sig, _) => format!("signal {}", sig.as_str()),
        other => format!("{other:?}"),
    }
}

fn spawn(role: Role, service: &Service, ready: mpsc::Sender<()>) -> std::io::Result<Pid> {
    let mut cmd = Command::new(role.binary());
    crate::sys::unblock_signals_in_child(&mut cmd);
    let mut child = cmd
        .args(&service.args)
        .env_clear()
        .env("HOME", "/run/cocoon")
        .env("PATH", "/bin")
        .envs(&service.env)
        .current_dir("/run/cocoon")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let pid = Pid::from_raw(child.id() as i32);
    if let Some(out) = child.stdout.take() {
        let prefix = role.ready_prefix();
        std::thread::spawn(move || copy_lines(out, Some((prefix, ready))));
    }
    if let Some(err) = child.stderr.take() {
        std::thread::spawn(move || copy_lines(err, None));
    }
    // The child is reaped by waitpid(-1) in `supervise`; dropping `Child` does not wait.
    Ok(pid)
}

/// Copies a service stream to the console line by line, signalling readiness once.
fn copy_lines(stream: impl Read, mut ready: Option<(&'static str, mpsc::Sender<()>)>) {
    let reader = BufReader::new(stream);
    for line in reader.split(b'\n') {
        let Ok(line) = line else { return };
        let text = String::from_utf8_lossy(&line);
        println!("{text}");
        if let Some((prefix, tx)) = &ready {
            if text.starts_with(prefix) {
                let _ = tx.send(());
                ready = None;
            }
        }
    }
}

/// Blocks SIGCHLD, SIGTERM and SIGINT in the calling thread (and threads it spawns later)
/// and returns a non-blocking signalfd for them. The service gets an empty mask again
/// ([`crate::sys::unblock_signals_in_child`]).
pub fn block_signals() -> nix::Result<SignalFd> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGCHLD);
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.thread_block()?;
    SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_and_gives_up() {
        let mut b = Backoff::new(7);
        let quick = Duration::from_secs(1);
        let delays: Vec<_> = (0..7)
            .map(|_| b.on_exit(quick).unwrap().as_secs())
            .collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(b.on_exit(quick), None);
    }

    #[test]
    fn healthy_run_resets_the_count() {
        let mut b = Backoff::new(2);
        assert!(b.on_exit(Duration::ZERO).is_some());
        assert!(b.on_exit(Duration::ZERO).is_some());
        assert_eq!(b.on_exit(Duration::ZERO), None);
        assert_eq!(b.on_exit(HEALTHY_RUN), Some(Duration::from_secs(1)));
    }

    #[test]
    fn services_start_with_an_empty_signal_mask() {
        // This thread blocks the stop signals, as PID 1 does; the child must not inherit that.
        let _fd = block_signals().unwrap();
        let mut cmd = Command::new("grep");
        cmd.args(["SigBlk", "/proc/self/status"]);
        crate::sys::unblock_signals_in_child(&mut cmd);
        let out = cmd.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(text.trim(), "SigBlk:\t0000000000000000", "{text}");
        let inherited = Command::new("grep")
            .args(["SigBlk", "/proc/self/status"])
            .output()
            .unwrap();
        assert_ne!(
            String::from_utf8_lossy(&inherited.stdout).trim(),
            "SigBlk:\t0000000000000000",
            "without the reset the mask is inherited (this is what the reset is for)"
        );
    }

    #[test]
    fn zero_restarts_gives_up_at_once() {
        assert_eq!(Backoff::new(0).on_exit(Duration::ZERO), None);
    }
}
