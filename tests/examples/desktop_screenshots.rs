//! Screenshots of every view of the desktop app, for `docs/screenshots/`.
//!
//! Sets up a believable workspace — the app on its local broker with two meshes, Claude Code
//! sessions of two other devices (MCP bridges with summaries, statuses and groups), a few
//! messages, a device waiting for approval — then saves one PNG per view.
//!
//! Run inside a desktop session:
//! `bash scripts/desktop-session.sh cargo run -p claudemesh-e2e --example desktop_screenshots`

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use claudemesh_e2e::desktop::DesktopApp;
use claudemesh_e2e::{Broker, Device, WAIT};
use serde_json::json;

fn out_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/screenshots")
}

async fn save(app: &DesktopApp, name: &str) -> Result<()> {
    // Let fonts and the last events settle; no passing toast in the picture.
    app.wait_absent("[data-testid=toast]").await?;
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    let png = app.screenshot().await?;
    let path = out_dir().join(format!("{name}.png"));
    std::fs::write(&path, png).with_context(|| format!("writing {}", path.display()))?;
    println!("saved {}", path.display());
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    std::fs::create_dir_all(out_dir())?;

    // The sign-in view, against a team broker.
    let broker = Broker::start().await?;
    let other = DesktopApp::launch().await?;
    save(&other, "welcome").await?;
    other.click("[data-testid=choice-remote]").await?;
    other.click("[data-testid=welcome-continue]").await?;
    other.fill("[data-testid=signin-broker]", &broker.url()).await?;
    other.fill("[data-testid=signin-account]", "alice").await?;
    other.click("[data-testid=signin-start]").await?;
    other.wait_text("[data-testid=signin-user-code]", claudemesh_e2e::is_user_code).await?;
    save(&other, "sign-in").await?;
    other.close().await?;

    // The app on its own broker, with a team mesh next to the personal one.
    let app = DesktopApp::launch().await?;
    app.set_up_locally("alice").await?;
    app.create_mesh("acme").await?;
    let personal = app.invite_link("personal", 3).await?;
    let acme = app.invite_link("acme", 3).await?;

    // Claude Code sessions of two more devices, and a colleague.
    let (laptop, server, colleague) = (Device::new()?, Device::new()?, Device::new()?);
    laptop.join(&personal, "api-refactor")?;
    server.join(&personal, "test-runner")?;
    colleague.join(&acme, "bob")?;
    let mut api = laptop.bridge().await?;
    let mut runner = server.bridge().await?;
    let mut bob = colleague.bridge().await?;
    api.call("set_summary", json!({"summary": "Moving the billing API to the new router"})).await?;
    api.call("join_group", json!({"name": "backend", "role": "lead"})).await?;
    runner.call("set_status", json!({"status": "working"})).await?;
    runner.call("set_summary", json!({"summary": "Watching the test suite; will report failures"})).await?;
    runner.call("join_group", json!({"name": "backend"})).await?;
    bob.call("set_summary", json!({"summary": "Reviewing the release notes"})).await?;

    app.open("peers").await?;
    app.wait_present("[data-testid=peer-row][data-name=test-runner]").await?;
    app.wait_present("[data-testid=peer-row][data-name=bob]").await?;
    app.wait_text("[data-testid=peer-row][data-name=api-refactor]", |t| t.contains("billing")).await?;
    app.wait_text("[data-testid=peer-row][data-name=test-runner]", |t| t.contains("working")).await?;
    // The counters each session reports (within seconds of a change).
    app.wait_text("[data-testid=peer-row][data-name=api-refactor]", |t| t.contains("2 tool calls")).await?;
    save(&app, "peers").await?;

    // A conversation with one session, delivered both ways.
    app.click("[data-testid=peer-row][data-name=api-refactor] [data-testid=peer-message]").await?;
    app.fill("[data-testid=composer]", "How far along is the router move?").await?;
    app.click("[data-testid=send]").await?;
    api.channel_message("How far along is the router move?", WAIT).await.context("delivered")?;
    api.call(
        "send_message",
        json!({"to": "alice", "message": "Handlers are ported; 3 of 41 tests still fail on auth middleware. ETA 20 min."}),
    )
    .await?;
    app.wait_text("[data-testid=message][data-direction=in] [data-testid=message-text]", |t| t.contains("ETA")).await?;
    app.fill("[data-testid=composer]", "Great — ping test-runner when it is green.").await?;
    app.click("[data-testid=send]").await?;
    app.wait_present("[data-testid=message]:last-child [data-testid=delivery][data-state=delivered]").await?;
    runner.call("send_message", json!({"to": "*", "message": "Suite finished: 412 passed, 3 failed (auth)."})).await?;
    save(&app, "messages").await?;

    // A weekday reminder of the person's own, and a message to bob for later.
    app.cli(&[
        "remind",
        "Stand-up in 5 minutes",
        "--mesh",
        "personal",
        "--cron",
        "55 8 * * 1-5",
        "--tz",
        "Europe/Berlin",
    ])
    .await?;
    app.cli(&["remind", "Release notes are due today", "--to", "bob", "--mesh", "acme", "--in", "3h"]).await?;
    app.open("scheduled").await?;
    app.wait_present("[data-testid=scheduled-row]:nth-child(2)").await?;
    save(&app, "scheduled").await?;

    // The shared workspace: a lock, who does what, and what the meshes remember.
    let lock =
        json!({"name": "lock/deploy", "value": {"owner": "api-refactor", "until": "17:00"}, "expected_version": 0});
    api.call("set_state", lock).await?;
    runner.call("set_state", json!({"name": "board/test-runner", "value": "Running the suite on main"})).await?;
    api.call("set_state", json!({"name": "board/api-refactor", "value": "Billing API: routes moved, tests next"}))
        .await?;
    bob.call("set_state", json!({"name": "release/next", "value": {"version": "2.4.0", "date": "2026-12-03"}})).await?;
    app.open("board").await?;
    app.wait_present("[data-testid=board-entry][data-name='release/next']").await?;
    app.wait_present("[data-testid=board-entry][data-name='lock/deploy']").await?;
    save(&app, "board").await?;
    let memories = [
        (&mut api, "The staging database listens on port 5433; its credentials are in the team vault.", "infra"),
        (&mut runner, "The auth tests fail when TZ is not UTC: run them with TZ=UTC.", "gotcha"),
        (&mut bob, "Release notes go in docs/releases, one file per version.", "process"),
    ];
    for (session, text, tag) in memories {
        session.call("remember", json!({"text": text, "tags": [tag]})).await?;
    }
    app.open("memory").await?;
    app.wait_present("[data-testid=memory-row]:nth-child(3)").await?;
    save(&app, "memory").await?;

    app.open("meshes").await?;
    save(&app, "meshes").await?;
    app.click("[data-testid=mesh-row][data-slug=acme] [data-testid=invite-open]").await?;
    app.click("[data-testid=invite-create]").await?;
    app.wait_present("[data-testid=invite-link]").await?;
    save(&app, "invite").await?;
    app.execute("document.querySelector('.overlay')?.remove()", json!([])).await?;
    app.click("[data-testid=mesh-row][data-slug=personal] [data-testid=members-open]").await?;
    app.wait_present("[data-testid=member-row]").await?;
    save(&app, "members").await?;
    app.execute("document.querySelector('.overlay')?.remove()", json!([])).await?;

    // A second device of the account, signed in, and a third one waiting for approval.
    let local_url = {
        app.open("settings").await?;
        let state = app.wait_text("[data-testid=local-state]", |t| t.starts_with("running on")).await?;
        state.trim_start_matches("running on ").trim().to_owned()
    };
    let account = std::env::var("USER").ok().filter(|u| !u.is_empty()).unwrap_or_else(|| "me".into());
    let workstation = Device::new()?;
    let login = workstation.start_login(&local_url, Some(&account), "workstation")?;
    app.open("approve").await?;
    app.fill("[data-testid=approve-code]", &login.code).await?;
    app.click("[data-testid=approve-lookup]").await?;
    app.click("[data-testid=approve-yes]").await?;
    tokio::task::spawn_blocking(move || login.finish()).await??;
    app.open("devices").await?;
    app.wait_present("[data-testid=device-row]:nth-child(2)").await?;
    save(&app, "devices").await?;

    let waiting = Device::new()?;
    let pending = waiting.start_login(&local_url, Some(&account), "ci-runner")?;
    app.open("approve").await?;
    app.fill("[data-testid=approve-code]", &pending.code).await?;
    app.click("[data-testid=approve-lookup]").await?;
    app.wait_present("[data-testid=approve-yes]").await?;
    save(&app, "approve").await?;

    app.open("settings").await?;
    app.click("[data-testid=claude-register]").await?;
    app.wait_text("[data-testid=claude-state]", |t| t == "registered").await?;
    app.execute("document.querySelector('[data-testid=content]').scrollTop = 0", json!([])).await?;
    save(&app, "settings").await?;
    app.execute("document.querySelector('[data-testid=content]').scrollTop = 100000", json!([])).await?;
    save(&app, "settings-claude-code").await?;

    for bridge in [api, runner, bob] {
        bridge.close().await?;
    }
    let mut pending = pending;
    pending.child.kill()?;
    app.close().await
}
