//! Child processes of the local network: start, wait for the readiness line, keep the last
//! stderr lines for error messages, log everything to a file, stop with SIGTERM then SIGKILL.
//!
//! A child's stdout and stderr both go to its log file (`DIR/logs/<role>.log`); stdout is also
//! scanned for the readiness line (`cocoon-proxy: ready …`). Children run in their own process
//! groups, so a Ctrl-C on the terminal reaches only the launcher, which then stops them in order.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;

/// Stderr lines kept for error messages.
pub const TAIL_LINES: usize = 20;
/// Longest line kept from a child's output; the rest of a longer line is dropped (a child
/// that writes without newlines cannot grow the launcher's memory).
const MAX_LINE: usize = 64 * 1024;

/// How to run one child.
#[derive(Clone, Debug)]
pub struct Spec {
    pub role: &'static str,
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub cwd: PathBuf,
    pub log: PathBuf,
    /// Prefix of the stdout line that says the child is ready.
    pub ready_prefix: &'static str,
    pub ready_timeout: Duration,
    /// Also copy the child's output to our stderr, prefixed with its role.
    pub echo: bool,
}

/// Supervision errors; the exit and timeout cases carry the last stderr lines.
#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    #[error("cannot start {role} ({program}): {source}")]
    Spawn {
        role: &'static str,
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{role} exited ({status}) before it was ready{}", tail_text(tail, log))]
    Exited {
        role: &'static str,
        status: String,
        tail: Vec<String>,
        log: PathBuf,
    },
    #[error(
        "{role} not ready after {secs} s (no `{prefix}` line){}",
        tail_text(tail, log)
    )]
    Timeout {
        role: &'static str,
        secs: u64,
        prefix: &'static str,
        tail: Vec<String>,
        log: PathBuf,
    },
    #[error("{path}: {source}")]
    Log {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The last lines and the log path, for error messages.
pub fn tail_text(tail: &[String], log: &Path) -> String {
    let mut s = String::new();
    if tail.is_empty() {
        s.push_str("; it wrote nothing to stderr");
    } else {
        s.push_str("; last stderr lines:");
        for l in tail {
            s.push_str("\n    ");
            s.push_str(l);
        }
    }
    s.push_str(&format!("\n  (full log: {})", log.display()));
    s
}

type Tail = Arc<Mutex<VecDeque<String>>>;

/// A started, ready child.
#[derive(Debug)]
pub struct Running {
    pub role: &'static str,
    pub pid: Option<u32>,
    /// The readiness line.
    pub ready_line: String,
    pub log: PathBuf,
    child: Child,
    tail: Tail,
    stderr_task: Option<tokio::task::JoinHandle<()>>,
}

fn push_tail(tail: &Tail, line: &str) {
    let mut t = tail.lock().unwrap_or_else(|e| e.into_inner());
    if t.len() == TAIL_LINES {
        t.pop_front();
    }
    t.push_back(line.to_string());
}

fn copy_tail(tail: &Tail) -> Vec<String> {
    tail.lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .cloned()
        .collect()
}

type Log = Arc<Mutex<std::fs::File>>;

/// Reads `reader` line by line into the log (and the tail, and the readiness channel).
fn pump(
    role: &'static str,
    reader: impl AsyncRead + Unpin + Send + 'static,
    log: Log,
    tail: Option<Tail>,
    mut ready: Option<(&'static str, oneshot::Sender<String>)>,
    echo: bool,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut reader = BufReader::new(reader);
        let mut buf = Vec::new();
        loop {
            match crate::vm::run::next_line(&mut reader, &mut buf, MAX_LINE).await {
                Ok(true) => {}
                Ok(false) | Err(_) => return,
            }
            let line = String::from_utf8_lossy(&buf);
            let line = line.trim_end_matches(['\n', '\r']);
            {
                let mut f = log.lock().unwrap_or_else(|e| e.into_inner());
                let _ = writeln!(f, "{line}");
            }
            if echo {
                eprintln!("[{role}] {}", protocol::guest::status::terminal_safe(line));
            }
            if let Some(t) = &tail {
                push_tail(t, line);
            }
            if ready
                .as_ref()
                .is_some_and(|(prefix, _)| line.starts_with(prefix))
            {
                if let Some((_, tx)) = ready.take() {
                    let _ = tx.send(line.to_string());
                }
            }
        }
    })
}

/// Starts `spec` and waits until it prints its readiness line, exits, or times out.
pub async fn start(spec: &Spec) -> Result<Running, SuperviseError> {
    let file = std::fs::File::create(&spec.log).map_err(|source| SuperviseError::Log {
        path: spec.log.clone(),
        source,
    })?;
    let log: Log = Arc::new(Mutex::new(file));
    let mut cmd = std::process::Command::new(&spec.program);
    cmd.args(&spec.args)
        .current_dir(&spec.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Plain log files (tracing-subscriber honours NO_COLOR).
        .env("NO_COLOR", "1")
        .process_group(0);
    let mut cmd = Command::from(cmd);
    cmd.kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|source| SuperviseError::Spawn {
        role: spec.role,
        program: spec.program.clone(),
        source,
    })?;
    let tail: Tail = Arc::new(Mutex::new(VecDeque::new()));
    let (tx, rx) = oneshot::channel();
    if let Some(out) = child.stdout.take() {
        pump(
            spec.role,
            out,
            log.clone(),
            None,
            Some((spec.ready_prefix, tx)),
            spec.echo,
        );
    }
    let stderr_task = child
        .stderr
        .take()
        .map(|err| pump(spec.role, err, log, Some(tail.clone()), None, spec.echo));
    let mut running = Running {
        role: spec.role,
        pid: child.id(),
        ready_line: String::new(),
        log: spec.log.clone(),
        child,
        tail,
        stderr_task,
    };
    tokio::select! {
        line = rx => match line {
            Ok(line) => {
                running.ready_line = line;
                Ok(running)
            }
            // stdout closed without the line: report how the child ends.
            Err(_) => {
                let status = tokio::time::timeout(spec.ready_timeout, running.child.wait()).await;
                let status = match status {
                    Ok(Ok(s)) => s.to_string(),
                    _ => "stdout closed".into(),
                };
                Err(running.exited(status).await)
            }
        },
        status = running.child.wait() => {
            let status = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
            Err(running.exited(status).await)
        }
        () = tokio::time::sleep(spec.ready_timeout) => {
            running.kill().await;
            Err(SuperviseError::Timeout {
                role: spec.role,
                secs: spec.ready_timeout.as_secs(),
                prefix: spec.ready_prefix,
                tail: running.tail_lines().await,
                log: spec.log.clone(),
            })
        }
    }
}

impl Running {
    /// The last stderr lines (after letting the reader catch up briefly).
    pub async fn tail_lines(&mut self) -> Vec<String> {
        if let Some(t) = self.stderr_task.take() {
            let _ = tokio::time::timeout(Duration::from_millis(500), t).await;
        }
        copy_tail(&self.tail)
    }

    async fn exited(&mut self, status: String) -> SuperviseError {
        SuperviseError::Exited {
            role: self.role,
            status,
            tail: self.tail_lines().await,
            log: self.log.clone(),
        }
    }

    /// Waits for the child to exit.
    pub async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        self.child.wait().await
    }

    /// Whether it has exited (without waiting).
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Sends SIGTERM (through `kill`, which needs no unsafe code here).
    pub fn terminate(&self) {
        if let Some(pid) = self.pid {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }

    /// SIGKILL and reap.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// SIGTERM, then SIGKILL after `grace`. Returns the exit status if it exited by itself.
    pub async fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        if let Some(s) = self.try_status() {
            return Some(s);
        }
        self.terminate();
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(Ok(s)) => Some(s),
            _ => {
                self.kill().await;
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(dir: &Path, script: &str, timeout_ms: u64) -> Spec {
        Spec {
            role: "test",
            program: "sh".into(),
            args: vec!["-c".into(), script.into()],
            cwd: dir.to_path_buf(),
            log: dir.join("test.log"),
            ready_prefix: "test: ready",
            ready_timeout: Duration::from_millis(timeout_ms),
            echo: false,
        }
    }

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("cocoon-host-sup-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[tokio::test]
    async fn ready_then_stop() {
        let d = dir("ready");
        let mut r = start(&spec(
            &d,
            "echo hello >&2; echo 'test: ready (x)'; exec sleep 30",
            5000,
        ))
        .await
        .unwrap();
        assert_eq!(r.ready_line, "test: ready (x)");
        let status = r.stop(Duration::from_secs(5)).await.unwrap();
        assert!(!status.success());
        let log = std::fs::read_to_string(d.join("test.log")).unwrap();
        assert!(
            log.contains("hello") && log.contains("test: ready"),
            "{log}"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[tokio::test]
    async fn early_exit_reports_status_and_stderr_tail() {
        let d = dir("exit");
        let e = start(&spec(
            &d,
            "for i in $(seq 1 30); do echo line$i >&2; done; exit 7",
            5000,
        ))
        .await
        .unwrap_err();
        let text = e.to_string();
        match e {
            SuperviseError::Exited { status, tail, .. } => {
                assert!(status.contains('7'), "{status}");
                assert_eq!(tail.len(), TAIL_LINES);
                assert_eq!(tail.last().unwrap(), "line30");
            }
            other => panic!("{other}"),
        }
        assert!(
            text.contains("line30") && text.contains("full log"),
            "{text}"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[tokio::test]
    async fn timeout_names_the_missing_line() {
        let d = dir("timeout");
        let e = start(&spec(&d, "echo waiting >&2; exec sleep 30", 300))
            .await
            .unwrap_err();
        assert!(matches!(e, SuperviseError::Timeout { .. }));
        let text = e.to_string();
        assert!(
            text.contains("test: ready") && text.contains("waiting"),
            "{text}"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }
}
