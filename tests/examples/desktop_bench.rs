//! Measures the desktop app (results and method in `docs/benchmarks.md`, "Desktop app"):
//!
//! 1. Cold start to tray icon: a fresh profile each run; from spawning the process to its
//!    `tray ready` log line (written right after the tray icon was created).
//! 2. Idle CPU and memory with 3 meshes and 50 peers online: the app (window open on Peers)
//!    in three meshes of a real `claudemesh-broker`, 50 peer sessions connected; CPU time
//!    and memory of the app process and its WebKit processes over a quiet minute.
//! 3. A peer joining, to the Peers view and to the notification: a new peer session connects;
//!    the time until its row is in the page (a MutationObserver in the window records it) and
//!    until the `Notify` call passes the session bus (dbus-monitor's timestamp).
//!
//! Run inside a desktop session, with the profile to measure:
//! `bash scripts/desktop-session.sh cargo run --release -p claudemesh-e2e --example desktop_bench`

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, bail};
use broker_core::client::{ClientConfig, ClientEvent, MeshClient, SessionProfile};
use broker_core::crypto::Keypair;
use broker_core::protocol::PeerType;
use claudemesh_e2e::desktop::{DesktopApp, NotificationMonitor, app_env};
use claudemesh_e2e::{Broker, claudemesh_bin};
use serde_json::json;
use tokio::io::AsyncBufReadExt as _;

const COLD_STARTS: usize = 5;
const PEERS: usize = 50;
const IDLE_WINDOW: Duration = Duration::from_secs(60);
const JOINS: usize = 10;

fn now_ms() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64() * 1000.0).unwrap_or(0.0)
}

fn summary(name: &str, mut values: Vec<f64>, unit: &str) {
    values.sort_by(f64::total_cmp);
    let median = values[values.len() / 2];
    println!(
        "{name}: median {median:.0} {unit}, min {:.0}, max {:.0} ({} runs)",
        values[0],
        values[values.len() - 1],
        values.len()
    );
}

async fn cold_start() -> Result<f64> {
    let home = tempfile::tempdir()?;
    let started = Instant::now();
    let mut child = tokio::process::Command::new(claudemesh_bin())
        .envs(app_env(home.path())?)
        .arg("--minimized")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = tokio::io::BufReader::new(child.stderr.take().context("stderr")?).lines();
    let elapsed = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await? {
            if line.contains("tray ready") {
                return Ok::<_, anyhow::Error>(started.elapsed());
            }
        }
        bail!("the app ended without a tray")
    })
    .await??;
    child.kill().await?;
    Ok(elapsed.as_secs_f64() * 1000.0)
}

/// The app process (found by its config directory) and its WebKit helpers.
fn app_processes(config_dir: &Path) -> Vec<u32> {
    let marker = format!("CLAUDEMESH_CONFIG_DIR={}", config_dir.display());
    let mut app = None;
    let mut parents: HashMap<u32, u32> = HashMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            && let Some(ppid) = stat.rsplit(')').next().and_then(|rest| rest.split_whitespace().nth(1))
            && let Ok(ppid) = ppid.parse()
        {
            parents.insert(pid, ppid);
        }
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        if exe.ends_with("claudemesh") && String::from_utf8_lossy(&environ).split('\0').any(|v| v == marker) {
            app = Some(pid);
        }
    }
    let Some(app) = app else { return Vec::new() };
    let mut family = vec![app];
    let mut changed = true;
    while changed {
        changed = false;
        for (pid, ppid) in &parents {
            if family.contains(ppid) && !family.contains(pid) {
                family.push(*pid);
                changed = true;
            }
        }
    }
    family
}

/// utime + stime in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or_default().split_whitespace().collect();
    fields.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + fields.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

/// Each thread's name and CPU ticks.
fn thread_ticks(pid: u32) -> HashMap<u32, (String, u64)> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let tid: u32 = entry.file_name().to_string_lossy().parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
            let name = stat.split_once('(')?.1.rsplit_once(')')?.0.to_owned();
            let fields: Vec<&str> = stat.rsplit(')').next()?.split_whitespace().collect();
            let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
            Some((tid, (name, ticks)))
        })
        .collect()
}

/// (RSS, PSS) in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |name: &str| {
        rollup
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("Rss:"), field("Pss:"))
}

fn process_name(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim().to_owned()
}

struct MeshInfo {
    id: String,
    slug: String,
}

/// A peer session of its own member, connected; resolves once the broker said hello.
async fn connect_peer(broker: &Broker, mesh: &MeshInfo, name: &str) -> Result<(MeshClient, f64)> {
    let key = Keypair::generate();
    let added =
        broker.operator(&["member", "add", "--mesh", &mesh.slug, "--pubkey", &key.public_hex(), "--name", name])?;
    let member_id = added["memberId"].as_str().context("member id")?.to_owned();
    let mut config = ClientConfig::new(&broker.url(), &mesh.id, &member_id, key);
    config.auto_acknowledge = true;
    config.profile = SessionProfile {
        display_name: Some(name.to_owned()),
        hostname: Some("bench-host".into()),
        cwd: Some(format!("/srv/work/{name}")),
        peer_type: Some(PeerType::Ai),
        channel: Some("claude-code".into()),
        model: Some("claude-sonnet".into()),
        ..SessionProfile::default()
    };
    let (client, mut events) = MeshClient::start(config);
    loop {
        match tokio::time::timeout(Duration::from_secs(15), events.recv()).await?.context("events")? {
            ClientEvent::Connected(_) => break,
            ClientEvent::Refused { message, .. } => bail!("{name} refused: {message}"),
            _ => {}
        }
    }
    let joined_at = now_ms();
    tokio::spawn(async move { while events.recv().await.is_some() {} });
    Ok((client, joined_at))
}

/// CPU and memory of the app and its WebKit processes over [`IDLE_WINDOW`].
async fn idle(what: &str, config_dir: &Path) -> Result<()> {
    let pids = app_processes(config_dir);
    if pids.is_empty() {
        bail!("cannot find the app's process");
    }
    let ticks_per_second = 100.0; // USER_HZ on Linux
    let before: Vec<u64> = pids.iter().map(|p| cpu_ticks(*p)).collect();
    let threads_before = thread_ticks(pids[0]);
    tokio::time::sleep(IDLE_WINDOW).await;
    let after: Vec<u64> = pids.iter().map(|p| cpu_ticks(*p)).collect();
    let mut busy: Vec<(String, u64)> = thread_ticks(pids[0])
        .into_iter()
        .map(|(tid, (name, t))| {
            (format!("{name} ({tid})"), t.saturating_sub(threads_before.get(&tid).map_or(0, |b| b.1)))
        })
        .filter(|(_, t)| *t > 0)
        .collect();
    busy.sort_by_key(|(_, ticks)| std::cmp::Reverse(*ticks));
    println!("  busiest threads of the app process (ticks of 10 ms): {busy:?}");
    let ticks: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a.saturating_sub(*b)).collect();
    let seconds = IDLE_WINDOW.as_secs_f64();
    let percent = |t: u64| t as f64 / ticks_per_second / seconds * 100.0;
    println!(
        "idle CPU, {what}, over {seconds:.0} s: app process {:.2}%, app + WebKit processes {:.2}% (of one core)",
        percent(ticks[0]),
        percent(ticks.iter().sum())
    );
    let mut rss_total = 0;
    let mut pss_total = 0;
    for pid in &pids {
        let (rss, pss) = memory_kib(*pid);
        rss_total += rss;
        pss_total += pss;
        println!("  {pid} {}: RSS {} MiB, PSS {} MiB", process_name(*pid), rss / 1024, pss / 1024);
    }
    let (app_rss, app_pss) = memory_kib(pids[0]);
    println!(
        "memory, {what}: app process RSS {} MiB, PSS {} MiB; with its WebKit processes RSS {} MiB, PSS {} MiB",
        app_rss / 1024,
        app_pss / 1024,
        rss_total / 1024,
        pss_total / 1024
    );
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let profile = claudemesh_e2e::profile_dir();
    println!("binary: {}", claudemesh_bin().display());
    println!("profile: {}", profile.file_name().and_then(|n| n.to_str()).unwrap_or("?"));

    // 1. Cold start to tray icon.
    let mut starts = Vec::new();
    for _ in 0..COLD_STARTS {
        starts.push(cold_start().await?);
    }
    summary("cold start to tray icon", starts, "ms");

    // 2. Idle with 3 meshes and 50 peers online.
    let broker = Broker::start().await?;
    let mut meshes = Vec::new();
    let mut links = Vec::new();
    for name in ["acme", "infra", "research"] {
        let (mesh, link) = broker.mesh_with_invite(name, 2)?;
        meshes.push(MeshInfo {
            id: mesh["id"].as_str().context("id")?.to_owned(),
            slug: mesh["slug"].as_str().context("slug")?.to_owned(),
        });
        links.push(link);
    }
    let app = DesktopApp::launch().await?;
    for link in &links {
        app.open_join(link).await?;
    }
    app.wait_text("[data-testid=state-line]", |t| !t.contains("Connecting") && !t.contains("Reconnecting")).await?;
    let mut clients = Vec::new();
    for i in 0..PEERS {
        let mesh = &meshes[i % meshes.len()];
        clients.push(connect_peer(&broker, mesh, &format!("session-{i:02}")).await?.0);
    }
    app.open("peers").await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while app.count("[data-testid=peer-row]").await? < PEERS {
        if Instant::now() > deadline {
            bail!("the Peers view never showed {PEERS} peers");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("peers shown: {}", app.count("[data-testid=peer-row]").await?);
    // Settle, then measure a quiet minute.
    tokio::time::sleep(Duration::from_secs(5)).await;
    idle("window open on Peers", &app.config_dir()).await?;

    // 3. A peer joining: to the Peers view and to the notification.
    let notifications = NotificationMonitor::start().await?;
    app.execute(
        "window.__seen = {}; new MutationObserver(() => { for (const row of document.querySelectorAll('[data-testid=peer-row]')) { const n = row.dataset.name; if (!(n in window.__seen)) window.__seen[n] = Date.now(); } }).observe(document.body, {childList: true, subtree: true});",
        json!([]),
    )
    .await?;
    let mut to_view = Vec::new();
    let mut to_notification = Vec::new();
    for i in 0..JOINS {
        let name = format!("joiner-{i:02}");
        // Apart enough that each join is its own notification, not part of a storm.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let (client, joined_at) = connect_peer(&broker, &meshes[i % meshes.len()], &name).await?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let seen_at = loop {
            let seen = app.execute(&format!("return window.__seen['{name}'] ?? null"), json!([])).await?;
            if let Some(at) = seen.as_f64() {
                break at;
            }
            if Instant::now() > deadline {
                bail!("{name} never appeared in the Peers view");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let shown = notifications.wait_for(&format!("{name} joined")).await?;
        to_view.push(seen_at - joined_at);
        to_notification.push(shown.at * 1000.0 - joined_at);
        clients.push(client);
    }
    summary("peer joined → row in the Peers view", to_view, "ms");
    summary("peer joined → Notify on the session bus", to_notification, "ms");
    notifications.stop().await;

    // 2b. The usual idle state of a tray app: the window closed (the app in the tray).
    app.close_window().await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    idle("window closed, in the tray", &app.config_dir()).await?;
    for client in &clients {
        client.shutdown().await;
    }
    app.close().await
}
