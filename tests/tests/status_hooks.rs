//! The status hook reaches the bridge of its own Claude Code session through the process tree:
//! a stand-in `claude` process starts a bridge and runs hooks through `sh -c`, like Claude
//! Code does. The hook's status reaches the broker (another peer sees it in `list_peers`, and
//! `next` messages wait while the session works), and the hook returns fast — with a bridge,
//! without one, and with the broker down.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use claudemesh_e2e::{Bridge, Broker, Device, WAIT, claudemesh_bin, peer_status, wait_until};
use serde_json::json;

/// What the hook's own work may take, on top of what starting the binary costs here and now.
const HOOK_LIMIT: Duration = Duration::from_millis(200);

/// How long starting `claudemesh` and letting it exit takes now (the slowest of three): a debug
/// binary on a machine busy with other tests takes longer to start than the hook takes to work,
/// so the hook is allowed that plus [`HOOK_LIMIT`].
fn hook_limit() -> Duration {
    let slowest_start = (0..3)
        .map(|_| {
            let start = Instant::now();
            let _ = std::process::Command::new(claudemesh_bin()).arg("--version").stdout(Stdio::null()).status();
            start.elapsed()
        })
        .max()
        .unwrap_or_default();
    slowest_start + HOOK_LIMIT
}

/// A shell script named `claude`: it starts the bridge with its own stdio (so the test drives
/// the bridge through it) and, for each `<n>.run` file that appears in `$HOOK_DIR`, runs the
/// hook through a shell with Claude Code's JSON on stdin and records how long it took.
const FAKE_CLAUDE: &str = r#"#!/bin/sh
# A background job of a non-interactive shell gets /dev/null as stdin unless told otherwise.
exec 3<&0
"$CLAUDEMESH" mcp <&3 3<&- &
exec 3<&-
while [ ! -e "$HOOK_DIR/stop" ]; do
  for job in "$HOOK_DIR"/*.run; do
    [ -e "$job" ] || continue
    status=$(cat "$job"); rm -f "$job"
    start=$(date +%s%N)
    echo '{"session_id":"s1","hook_event_name":"UserPromptSubmit","cwd":"/tmp"}' | sh -c "\"$CLAUDEMESH\" hook $status"
    code=$?
    end=$(date +%s%N)
    echo "$code $(( (end - start) / 1000 ))" > "$job.done"
  done
  sleep 0.02
done
"#;

struct FakeClaude {
    dir: tempfile::TempDir,
    bridge: Bridge,
    jobs: u32,
}

impl FakeClaude {
    async fn start(device: &Device) -> Result<FakeClaude> {
        let dir = tempfile::tempdir()?;
        let script = dir.path().join("claude");
        std::fs::write(&script, FAKE_CLAUDE)?;
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
        }
        let mut command = tokio::process::Command::new(&script);
        command.envs(device.env()).env("CLAUDEMESH", claudemesh_bin()).env("HOOK_DIR", dir.path());
        let mut bridge = Bridge::spawn(command)?;
        bridge.initialize().await?;
        Ok(FakeClaude { dir, bridge, jobs: 0 })
    }

    fn pid(&self) -> u32 {
        self.bridge.child.id().expect("running")
    }

    /// Runs `claudemesh hook <status>` inside the fake Claude Code; returns (exit code, time).
    async fn hook(&mut self, status: &str) -> Result<(i32, Duration)> {
        self.jobs += 1;
        let job = self.dir.path().join(format!("{}.run", self.jobs));
        std::fs::write(&job, status)?;
        let done = self.dir.path().join(format!("{}.run.done", self.jobs));
        wait_until("the hook to run", || {
            done.exists() && std::fs::read_to_string(&done).is_ok_and(|t| t.ends_with('\n'))
        })
        .await?;
        let text = std::fs::read_to_string(&done)?;
        let mut fields = text.split_whitespace();
        let code = fields.next().context("exit code")?.parse()?;
        let micros: u64 = fields.next().context("duration")?.parse()?;
        Ok((code, Duration::from_micros(micros)))
    }
}

impl Drop for FakeClaude {
    fn drop(&mut self) {
        let _ = std::fs::write(self.dir.path().join("stop"), "");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_reaches_its_own_sessions_bridge_and_returns_fast() -> Result<()> {
    let mut broker = Broker::start().await?;
    let (_, link) = broker.mesh_with_invite("hooks", 2)?;
    let (alice_dev, bob_dev) = (Device::new()?, Device::new()?);
    alice_dev.join(&link, "alice")?;
    bob_dev.join(&link, "bob")?;
    let mut alice = alice_dev.bridge().await?;
    let mut claude = FakeClaude::start(&bob_dev).await?;

    // The bridge keys its socket by the Claude Code process it descends from.
    let socket = bob_dev.config.path().join(format!("run/claude-{}.sock", claude.pid()));
    wait_until("the bridge's hook socket", || socket.exists()).await?;
    alice.call_until("list_peers", json!({}), |l| peer_status(l, "bob").as_deref() == Some("idle")).await?;

    // working: seen by the other peer; next-priority mail waits, now-priority mail does not.
    let (code, took) = claude.hook("working").await?;
    assert_eq!(code, 0);
    let limit = hook_limit();
    assert!(took < limit, "the hook took {took:?}, more than {limit:?}");
    alice.call_until("list_peers", json!({}), |l| peer_status(l, "bob").as_deref() == Some("working")).await?;
    alice.call("send_message", json!({"to": "bob", "message": "held while bob works", "priority": "next"})).await?;
    alice.call("send_message", json!({"to": "bob", "message": "urgent for bob", "priority": "now"})).await?;
    claude.bridge.channel_message("urgent for bob", WAIT).await.expect("now goes through");
    assert!(
        claude.bridge.channel_message("held while bob works", Duration::from_millis(700)).await.is_none(),
        "next waits while the session works"
    );

    // idle: the held message is released.
    let (code, took) = claude.hook("idle").await?;
    assert_eq!(code, 0);
    let limit = hook_limit();
    assert!(took < limit, "the hook took {took:?}, more than {limit:?}");
    claude.bridge.channel_message("held while bob works", WAIT).await.expect("released when idle");
    alice.call_until("list_peers", json!({}), |l| peer_status(l, "bob").as_deref() == Some("idle")).await?;

    // With the broker down the hook still returns at once, successfully.
    broker.kill().await?;
    let (code, took) = claude.hook("working").await?;
    assert_eq!(code, 0);
    let limit = hook_limit();
    assert!(took < limit, "the hook took {took:?} with the broker down, more than {limit:?}");
    drop(claude);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_bridge_the_hook_exits_zero_at_once() -> Result<()> {
    let device = Device::new()?;
    let claudemesh = claudemesh_bin();
    for config in [device.config.path().to_owned(), Path::new("/nonexistent/claudemesh").to_owned()] {
        let limit = hook_limit();
        let start = Instant::now();
        let mut child = std::process::Command::new(&claudemesh)
            .args(["hook", "working"])
            .env("CLAUDEMESH_CONFIG_DIR", &config)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()?;
        // Claude Code writes its JSON and keeps the pipe open; the hook must not wait for EOF.
        use std::io::Write as _;
        child.stdin.as_mut().expect("stdin").write_all(b"{\"hook_event_name\":\"Stop\"}")?;
        let status = child.wait()?;
        let took = start.elapsed();
        assert!(status.success());
        assert!(took < limit, "the hook took {took:?}, more than {limit:?}");
    }
    Ok(())
}
