//! Running QEMU: start it in its own process group, copy the guest console (QEMU's stdout)
//! and QEMU's stderr to our stderr (prefixed `[guest]` / `[qemu]`, control characters written
//! out as escapes: [`status::terminal_safe`]) and as they came to the console log,
//! follow `cocoon-init` status lines ([`protocol::guest::status`]), pass on SIGINT/SIGTERM, enforce the
//! ready timeout, and classify how it ended ([`Ended`]).
//!
//! Stopping escalates, one step per signal received or per grace period elapsed:
//! 1. Ctrl-Alt-Del through QMP ([`super::qmp`]): cocoon-init stops the service and powers off
//!    (skipped when QMP does not answer, and on a ready timeout);
//! 2. after [`GUEST_STOP_GRACE`]: SIGTERM to QEMU (it exits at once, the guest is not asked);
//! 3. after [`STOP_GRACE`]: SIGKILL.
//!
//! A guest power-off and a guest panic both end QEMU with status 0 (`-no-reboot`), so the
//! guest's `exit` status line is what tells them apart.

use std::collections::VecDeque;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::qemu::QemuCommand;
use protocol::guest::status::{self, Stage, Status, StatusError};

/// QEMU stderr lines kept for error messages.
pub const TAIL_LINES: usize = 20;
/// Time the guest gets to power off after Ctrl-Alt-Del (the worker drains requests for up to
/// 30 s) before QEMU gets SIGTERM.
pub const GUEST_STOP_GRACE: Duration = Duration::from_secs(60);
/// Time QEMU gets to exit after SIGTERM before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(30);
/// Time QMP gets to answer.
pub const QMP_TIMEOUT: Duration = Duration::from_secs(5);

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// The guest printed `exit` with code 0 and QEMU exited.
    PoweredOff,
    /// The guest printed `exit` with a non-zero code.
    GuestFailed { code: i64, reason: Option<String> },
    /// We were asked to stop (`signal`) and QEMU exited (the guest reported no failure).
    Stopped { signal: &'static str },
    /// QEMU ended without a guest `exit` line (QEMU error, kernel panic, crash).
    Died {
        status: String,
        last_stage: Option<String>,
        tail: Vec<String>,
    },
    /// No `ready` line in time; QEMU was stopped.
    NotReady {
        secs: u64,
        last_stage: Option<String>,
    },
}

/// How to run.
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub command: QemuCommand,
    pub console_log: PathBuf,
    pub ready_timeout: Duration,
    /// QEMU's QMP socket (`-qmp unix:…`).
    pub qmp: PathBuf,
}

/// How far stopping has gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Stop {
    Running,
    CtrlAltDel,
    Term,
    Kill,
}

/// Failures before QEMU runs.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Log {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("signals: {0}")]
    Signals(std::io::Error),
}

type Shared<T> = Arc<Mutex<T>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Longest console line kept; the rest of a longer line is dropped.
const MAX_CONSOLE_LINE: usize = status::MAX_LINE + 1024;

/// The next line of `reader` into `buf` (at most `max` bytes kept, the newline included);
/// `false` at the end of the stream.
pub(crate) async fn next_line(
    reader: &mut (impl AsyncBufRead + Unpin),
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<bool> {
    buf.clear();
    loop {
        let avail = reader.fill_buf().await?;
        if avail.is_empty() {
            return Ok(!buf.is_empty());
        }
        let (len, done) = match avail.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (avail.len(), false),
        };
        let room = max.saturating_sub(buf.len());
        buf.extend_from_slice(&avail[..len.min(room)]);
        reader.consume(len);
        if done {
            return Ok(true);
        }
    }
}

/// Reads lines (bounded, see [`MAX_CONSOLE_LINE`]) and hands them to `each`.
async fn lines(reader: impl AsyncRead + Unpin, mut each: impl FnMut(&str)) {
    let mut reader = BufReader::new(reader);
    let mut buf = Vec::new();
    while let Ok(true) = next_line(&mut reader, &mut buf, MAX_CONSOLE_LINE).await {
        let line = String::from_utf8_lossy(&buf);
        each(line.trim_end_matches(['\n', '\r']));
    }
}

/// SIGINT and SIGTERM.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
        })
    }

    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "INT",
            _ = self.term.recv() => "TERM",
        }
    }
}

/// Sends a signal through `kill` (no unsafe code in this crate).
fn send_signal(pid: Option<u32>, signal: &str) {
    if let Some(pid) = pid {
        let _ = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Runs QEMU until it exits. `on_ready` is called once, with the guest's `ready` line and
/// QEMU's pid.
pub async fn run(
    spec: &RunSpec,
    mut on_ready: impl FnMut(&Status, Option<u32>),
) -> Result<Ended, RunError> {
    let log_file = std::fs::File::create(&spec.console_log).map_err(|source| RunError::Log {
        path: spec.console_log.clone(),
        source,
    })?;
    let log: Shared<std::fs::File> = Arc::new(Mutex::new(log_file));
    let mut signals = Signals::new().map_err(RunError::Signals)?;

    let mut cmd = std::process::Command::new(&spec.command.program);
    cmd.args(&spec.command.args)
        .envs(spec.command.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // A Ctrl-C on the terminal reaches only the launcher, which forwards it.
        .process_group(0);
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|source| RunError::Spawn {
        program: spec.command.program.clone(),
        source,
    })?;
    let pid = child.id();

    let (tx, mut rx) = mpsc::unbounded_channel::<Result<Status, StatusError>>();
    let out_task = child.stdout.take().map(|out| {
        let log = log.clone();
        tokio::spawn(lines(out, move |line| {
            let _ = writeln!(lock(&log), "{line}");
            eprintln!("[guest] {}", status::terminal_safe(line));
            if let Some(s) = status::parse_line(line) {
                let _ = tx.send(s);
            }
        }))
    });
    let tail: Shared<VecDeque<String>> = Arc::new(Mutex::new(VecDeque::new()));
    let err_task = child.stderr.take().map(|err| {
        let (log, tail) = (log.clone(), tail.clone());
        tokio::spawn(lines(err, move |line| {
            let _ = writeln!(lock(&log), "[qemu] {line}");
            let shown = status::terminal_safe(line);
            eprintln!("[qemu] {shown}");
            let mut t = lock(&tail);
            if t.len() == TAIL_LINES {
                t.pop_front();
            }
            t.push_back(shown.into_owned());
        }))
    });

    let mut ready = false;
    let mut last_stage: Option<String> = None;
    let mut exit_line: Option<(i64, Option<String>)> = None;
    let mut requested: Option<&'static str> = None;
    let mut timed_out = false;
    let ready_deadline = Instant::now() + spec.ready_timeout;
    let mut stop = Stop::Running;
    let mut escalate_at: Option<Instant> = None;
    let mut rx_open = true;
    let mut handle = |s: Result<Status, StatusError>,
                      ready: &mut bool,
                      last_stage: &mut Option<String>,
                      exit_line: &mut Option<(i64, Option<String>)>| match s {
        Err(e) => eprintln!("cocoon-host: ignoring a malformed status line: {e}"),
        Ok(s) => {
            *last_stage = Some(s.stage.as_str().to_string());
            match s.stage {
                Stage::Ready if !*ready => {
                    *ready = true;
                    on_ready(&s, pid);
                }
                Stage::Exit => *exit_line = Some((s.code.unwrap_or(-1), s.reason.clone())),
                _ => {}
            }
        }
    };

    let status: std::io::Result<ExitStatus> = loop {
        let far = Instant::now() + Duration::from_secs(86_400 * 365);
        // What the next escalation step is, once due.
        let mut step_to: Option<Stop> = None;
        tokio::select! {
            s = child.wait() => break s,
            sig = signals.recv() => {
                requested.get_or_insert(sig);
                eprintln!("cocoon-host: SIG{sig}");
                step_to = Some(match stop {
                    Stop::Running => Stop::CtrlAltDel,
                    Stop::CtrlAltDel => Stop::Term,
                    Stop::Term | Stop::Kill => Stop::Kill,
                });
            }
            s = rx.recv(), if rx_open => match s {
                Some(s) => handle(s, &mut ready, &mut last_stage, &mut exit_line),
                None => rx_open = false,
            },
            () = tokio::time::sleep_until(ready_deadline), if !ready && !timed_out && stop == Stop::Running => {
                timed_out = true;
                eprintln!(
                    "cocoon-host: no ready line after {} s; stopping QEMU",
                    spec.ready_timeout.as_secs()
                );
                step_to = Some(Stop::Term);
            }
            () = tokio::time::sleep_until(escalate_at.unwrap_or(far)), if escalate_at.is_some() => {
                step_to = Some(if stop == Stop::CtrlAltDel { Stop::Term } else { Stop::Kill });
            }
        }
        let Some(mut next) = step_to else { continue };
        if next == Stop::CtrlAltDel {
            match super::qmp::ctrl_alt_delete(&spec.qmp, QMP_TIMEOUT).await {
                Ok(()) => eprintln!(
                    "cocoon-host: sent Ctrl-Alt-Del; the guest has {} s to power off (signal again to stop QEMU now)",
                    GUEST_STOP_GRACE.as_secs()
                ),
                Err(e) => {
                    eprintln!("cocoon-host: {e}; stopping QEMU instead");
                    next = Stop::Term;
                }
            }
        }
        match next {
            Stop::Running => {}
            Stop::CtrlAltDel => escalate_at = Some(Instant::now() + GUEST_STOP_GRACE),
            Stop::Term => {
                eprintln!("cocoon-host: SIGTERM to QEMU");
                send_signal(pid, "TERM");
                escalate_at = Some(Instant::now() + STOP_GRACE);
            }
            Stop::Kill => {
                eprintln!("cocoon-host: killing QEMU");
                let _ = child.start_kill();
                escalate_at = None;
            }
        }
        stop = next;
    };
    // The last console lines (often the exit line) may still be in flight.
    for t in [out_task, err_task].into_iter().flatten() {
        let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
    }
    while let Ok(s) = rx.try_recv() {
        handle(s, &mut ready, &mut last_stage, &mut exit_line);
    }
    let status = status
        .map(|s| s.to_string())
        .unwrap_or_else(|e| format!("wait failed: {e}"));
    Ok(if timed_out {
        Ended::NotReady {
            secs: spec.ready_timeout.as_secs(),
            last_stage,
        }
    } else {
        match (exit_line, requested) {
            (Some((code, reason)), _) if code != 0 => Ended::GuestFailed { code, reason },
            (_, Some(signal)) => Ended::Stopped { signal },
            (Some(_), None) => Ended::PoweredOff,
            (None, None) => Ended::Died {
                status,
                last_stage,
                tail: lock(&tail).iter().cloned().collect(),
            },
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_bounded_and_split() {
        let long = "x".repeat(100);
        let input = format!("a\r\n{long}\nb");
        let mut r = BufReader::with_capacity(7, input.as_bytes());
        let mut buf = Vec::new();
        let mut got = Vec::new();
        while next_line(&mut r, &mut buf, 10).await.unwrap() {
            got.push(String::from_utf8(buf.clone()).unwrap());
        }
        assert_eq!(got, ["a\r\n", "xxxxxxxxxx", "b"]);
    }
}
