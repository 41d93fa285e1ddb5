//! Claude Code status hooks: `claudemesh hook working|idle|dnd` and the bridge's end of it.
//!
//! Claude Code runs the hook command on `UserPromptSubmit` (working), `PreToolUse` (working
//! again, which refreshes the broker's 60 s working TTL during long turns), and `Stop`,
//! `StopFailure` (a turn that an API error ended) and `SessionEnd` (idle); see
//! [`crate::claude_code::HOOKS`].
//! The hook finds its session's bridge through the Claude Code pid both descend from (see
//! [`crate::proctree`]): the bridge listens on `<config>/run/claude-<pid>.sock` (owner-only), the
//! hook connects, writes one JSON line, and reads one line back. The bridge relays the status to
//! the broker as `set_status` with `source: hook`.
//!
//! The hook never holds Claude Code up: it uses no async runtime and opens no network
//! connection, everything has a deadline well inside 200 ms, and it always exits 0 — with no
//! bridge, a dead bridge, or a broker that is down, it just returns.

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use broker_core::protocol::Status;
use serde::{Deserialize, Serialize};

/// Everything the hook does must fit in this (Claude Code waits for it).
pub const HOOK_BUDGET: Duration = Duration::from_millis(150);

/// One hook report, as sent over the socket.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HookReport {
    pub status: Status,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HookReply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The socket a bridge keyed by `claude_pid` listens on.
pub fn socket_path(run_dir: &Path, claude_pid: u32) -> PathBuf {
    run_dir.join(format!("claude-{claude_pid}.sock"))
}

/// What happened, for `--verbose` and tests; the exit code is 0 either way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookOutcome {
    Relayed { claude_pid: u32 },
    NoBridge,
    Failed(String),
}

/// Runs the hook command: reports `status` to this session's bridge, within [`HOOK_BUDGET`].
pub fn report(run_dir: &Path, status: Status) -> HookOutcome {
    let deadline = Instant::now() + HOOK_BUDGET;
    drain_stdin();
    let mut last_error = None;
    for pid in crate::proctree::hook_keys(std::process::id()) {
        let path = socket_path(run_dir, pid);
        if !path.exists() {
            continue;
        }
        match send(&path, status, deadline) {
            Ok(()) => return HookOutcome::Relayed { claude_pid: pid },
            Err(error) => last_error = Some(format!("{}: {error}", path.display())),
        }
        if Instant::now() >= deadline {
            break;
        }
    }
    match last_error {
        Some(error) => HookOutcome::Failed(error),
        None => HookOutcome::NoBridge,
    }
}

#[cfg(unix)]
fn send(path: &Path, status: Status, deadline: Instant) -> std::io::Result<()> {
    use std::os::unix::net::UnixStream;
    let remaining = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::TimedOut, "hook time budget used up"))
    };
    let stream = UnixStream::connect(path)?;
    stream.set_write_timeout(Some(remaining()?))?;
    let mut line = serde_json::to_vec(&HookReport { status }).expect("hook report serializes");
    line.push(b'\n');
    (&stream).write_all(&line)?;
    stream.set_read_timeout(Some(remaining()?))?;
    let mut reply = String::new();
    BufReader::new(&stream).read_line(&mut reply)?;
    match serde_json::from_str::<HookReply>(&reply) {
        Ok(HookReply { ok: true, .. }) => Ok(()),
        Ok(HookReply { error, .. }) => Err(std::io::Error::other(error.unwrap_or_else(|| "refused".into()))),
        Err(_) => Err(std::io::Error::other("no reply from the bridge")),
    }
}

#[cfg(not(unix))]
fn send(_path: &Path, _status: Status, _deadline: Instant) -> std::io::Result<()> {
    Err(std::io::Error::other("hooks need unix sockets"))
}

/// Claude Code writes the hook's JSON input to stdin; read and discard it in the background so
/// the writer never sees a broken pipe, without ever waiting for it.
fn drain_stdin() {
    let _ = std::thread::Builder::new().name("hook-stdin".into()).spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
    });
}

/// The bridge's end: a listener on the session's socket, removed when dropped.
#[cfg(unix)]
pub struct HookListener {
    path: PathBuf,
    listener: Option<tokio::net::UnixListener>,
}

#[cfg(unix)]
impl HookListener {
    /// Binds `<run_dir>/claude-<pid>.sock` owner-only, replacing a stale socket (or the one of
    /// an older bridge of the same session: the newest bridge gets the hooks).
    pub fn bind(run_dir: &Path, claude_pid: u32) -> std::io::Result<HookListener> {
        crate::config::ConfigDir::ensure_private_dir(run_dir).map_err(|e| std::io::Error::other(e.to_string()))?;
        let path = socket_path(run_dir, claude_pid);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let listener = tokio::net::UnixListener::bind(&path)?;
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        Ok(HookListener { path, listener: Some(listener) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves hook reports until the task is dropped; `relay` gets each status.
    pub async fn serve<F>(mut self, relay: F)
    where
        F: Fn(Status) + Send + Sync + 'static,
    {
        use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
        let Some(listener) = self.listener.take() else { return };
        let relay = std::sync::Arc::new(relay);
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let relay = relay.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut line = String::new();
                let mut reader = tokio::io::BufReader::new(read);
                let read = tokio::time::timeout(HOOK_BUDGET, reader.read_line(&mut line)).await;
                let reply = match read {
                    Ok(Ok(_)) => match serde_json::from_str::<HookReport>(&line) {
                        Ok(report) => {
                            relay(report.status);
                            HookReply { ok: true, error: None }
                        }
                        Err(e) => HookReply { ok: false, error: Some(format!("bad hook report: {e}")) },
                    },
                    _ => return,
                };
                let mut text = serde_json::to_vec(&reply).expect("hook reply serializes");
                text.push(b'\n');
                let _ = write.write_all(&text).await;
            });
        }
    }
}

#[cfg(unix)]
impl Drop for HookListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_report_reaches_the_listener_keyed_by_the_parent_pid_and_is_answered() {
        let dir = tempfile::tempdir().expect("tempdir");
        let run_dir = dir.path().join("run");
        // In a test there is no Claude Code: the hook's first candidate is its parent, which for
        // a direct call is... this test process's parent. Key the listener by it.
        let key = crate::proctree::hook_keys(std::process::id())[0];
        let listener = HookListener::bind(&run_dir, key).expect("binds");
        let path = listener.path().to_owned();
        {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(std::fs::metadata(&path).expect("metadata").permissions().mode() & 0o777, 0o600);
        }
        let (seen, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
        let server = tokio::spawn(listener.serve(move |status| {
            let _ = seen.send(status);
        }));
        let run = run_dir.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            let start = Instant::now();
            let outcome = report(&run, Status::Working);
            (outcome, start.elapsed())
        })
        .await
        .expect("joins");
        assert_eq!(outcome.0, HookOutcome::Relayed { claude_pid: key });
        assert!(outcome.1 < Duration::from_millis(200), "took {:?}", outcome.1);
        assert_eq!(seen_rx.recv().await, Some(Status::Working));
        server.abort();
        let _ = server.await;
        assert!(!path.exists(), "the socket is removed with the listener");
    }

    #[test]
    fn with_no_bridge_the_hook_returns_at_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let start = Instant::now();
        assert_eq!(report(&dir.path().join("run"), Status::Idle), HookOutcome::NoBridge);
        assert!(start.elapsed() < Duration::from_millis(200));
    }

    #[test]
    fn a_dead_socket_fails_fast() {
        let dir = tempfile::tempdir().expect("tempdir");
        let run_dir = dir.path().join("run");
        std::fs::create_dir_all(&run_dir).expect("mkdir");
        let key = crate::proctree::hook_keys(std::process::id())[0];
        // A socket file nobody listens on (a crashed bridge).
        drop(std::os::unix::net::UnixListener::bind(socket_path(&run_dir, key)).expect("binds"));
        let start = Instant::now();
        assert!(matches!(report(&run_dir, Status::Idle), HookOutcome::Failed(_)));
        assert!(start.elapsed() < Duration::from_millis(200));
    }
}
