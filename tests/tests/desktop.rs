//! The desktop app end to end: a real window (WebKitGTK through WebDriver), a real keychain
//! (gnome-keyring on the session bus), real notifications (seen on D-Bus), real brokers, CLIs
//! and MCP bridges. Run inside `scripts/desktop-session.sh` (as `scripts/test.sh` does).

use std::time::Duration;

use anyhow::{Context as _, Result};
use claudemesh_e2e::desktop::{DesktopApp, NotificationMonitor, TrayMenu};
use claudemesh_e2e::{Broker, Device, WAIT, peer_names};
use serde_json::json;

/// First run → "Just this computer" → a `claudemesh mcp` session of another device joins the
/// personal mesh → the Peers view lists it, live, and a `peer_joined` notification with its
/// name goes out on D-Bus.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_run_local_broker_then_a_bridge_joins_and_is_seen_and_notified() -> Result<()> {
    let app = DesktopApp::launch().await?;
    app.set_up_locally("alice").await?;
    // The personal mesh exists and the app's own session is connected to the embedded broker.
    app.open("meshes").await?;
    app.wait_text("[data-testid=mesh-row][data-slug=personal] [data-testid=mesh-name]", |t| t == "Personal").await?;
    let link = app.invite_link("personal", 1).await?;
    assert!(link.starts_with("http://127.0.0.1:"), "the local broker listens on loopback only: {link}");
    // Secrets went to the OS keychain (gnome-keyring here), not to owner-only files.
    assert!(!app.config_dir().join("keys").exists(), "the file keystore was not used");

    let laptop = Device::new()?;
    laptop.join(&link, "bob")?;
    app.open("peers").await?;
    let notifications = NotificationMonitor::start().await?;
    let mut bridge = laptop.bridge().await?;

    app.wait_present("[data-testid=peer-row][data-name=bob]").await?;
    let row = app.text("[data-testid=peer-row][data-name=bob]").await?;
    assert!(row.contains("this machine"), "a peer on this host has the this-machine badge: {row}");
    assert!(row.contains("AI session"), "{row}");
    let shown = notifications.wait_for("bob joined Personal").await?;
    assert!(shown.id.is_some_and(|id| id > 0), "the notification server showed it: {shown:?}");

    // The bridge sees the person at the app as a human peer on the desktop channel.
    let peers =
        bridge.call_until("list_peers", json!({}), |list| peer_names(list).contains(&"alice".to_owned())).await?;
    let alice = peers["peers"].as_array().context("peers")?.iter().find(|p| p["name"] == "alice").context("alice")?;
    assert_eq!(alice["peerType"], "human");
    assert_eq!(alice["channel"], "desktop");

    // What bob says about himself shows at once (the broker's peer_updated; nothing polls),
    // and so do the counters his bridge reports (every tool call counts; set_summary is one).
    bridge.call("set_summary", json!({"summary": "porting the parser"})).await?;
    app.wait_text("[data-testid=peer-row][data-name=bob] .peer-summary", |t| t == "porting the parser").await?;
    let tool_calls =
        |line: &str| line.split(" · ").find_map(|part| part.strip_suffix(" tool calls")?.parse::<u32>().ok());
    app.wait_text("[data-testid=peer-row][data-name=bob] [data-testid=peer-stats]", |t| {
        tool_calls(t).is_some_and(|n| n >= 2)
    })
    .await?;

    // Leaving is seen live too.
    bridge.call("whoami", json!({})).await?;
    bridge.kill().await?;
    app.wait_absent("[data-testid=peer-row][data-name=bob]").await?;
    notifications.stop().await;
    app.close().await
}

/// Sign in to a separate broker with a device login approved from a CLI device; then approve
/// another CLI device's login from the app's Approve view: that CLI receives its token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_login_approved_from_a_cli_then_the_app_approves_a_cli() -> Result<()> {
    let broker = Broker::start().await?;
    broker.operator(&["account", "create", "--name", "alice"])?;
    let laptop = Device::new()?;
    let login = laptop.start_login(&broker.url(), None, "alice-laptop")?;
    broker.operator(&["device", "approve", &login.code, "--account", "alice"])?;
    login.finish()?;

    let app = DesktopApp::launch().await?;
    app.click("[data-testid=choice-remote]").await?;
    app.click("[data-testid=welcome-continue]").await?;
    app.fill("[data-testid=signin-broker]", &broker.url()).await?;
    app.fill("[data-testid=signin-account]", "alice").await?;
    app.click("[data-testid=signin-start]").await?;
    let code = app.wait_text("[data-testid=signin-user-code]", claudemesh_e2e::is_user_code).await?;
    assert_eq!(app.attribute("[data-testid=signin-phase]", "data-phase").await?.as_deref(), Some("waiting"));
    // The QR code of the complete verification URI is drawn.
    assert!(app.count(".qr svg").await? == 1);

    // The laptop sees the request (it named the account), without its code, and approves it
    // with the code the app shows.
    let pending = laptop.command().args(["device", "pending", "--json"]).output()?;
    let pending: serde_json::Value = serde_json::from_slice(&pending.stdout)?;
    let listed = pending["pending"].as_array().map(Vec::len).unwrap_or_default();
    assert_eq!(listed, 1, "the request is listed for the account: {pending}");
    assert!(!pending.to_string().contains(&code), "the listing never shows the code: {pending}");
    let approved = laptop.command().args(["device", "approve", &code, "--yes", "--json"]).output()?;
    assert!(approved.status.success(), "{}", String::from_utf8_lossy(&approved.stderr));
    app.wait_text("[data-testid=state-line]", |t| t.starts_with("Connected as alice")).await?;

    // Now the app approves a new CLI device that names the account.
    let notifications = NotificationMonitor::start().await?;
    let server = Device::new()?;
    let request = server.start_login(&broker.url(), Some("alice"), "build-server")?;
    // Polling the account's pending requests makes a notification for this user.
    notifications.wait_for("wants to sign in to your account").await?;
    // The link a web page could open: it fills the code in and waits for the person.
    app.open_link(&format!("claudemesh://device?code={}", request.code)).await?;
    app.wait_present("[data-testid=approve-from-link]").await?;
    let filled = app.execute("return document.querySelector('[data-testid=approve-code]').value", json!([])).await?;
    assert_eq!(filled, json!(request.code), "the link fills the code in");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.count("[data-testid=approve-request]").await?, 0, "nothing is looked up without a click");
    app.click("[data-testid=approve-lookup]").await?;
    let card = app.text("[data-testid=approve-request]").await?;
    assert!(card.contains(std::env::consts::OS) && card.contains("127.0.0.1"), "the device is shown first: {card}");
    app.click("[data-testid=approve-yes]").await?;
    app.wait_text("[data-testid=approve-result]", |t| t.starts_with("Approved")).await?;
    let signed_in = tokio::task::spawn_blocking(move || request.finish()).await??;
    assert_eq!(signed_in["account"], "alice", "the CLI received its token: {signed_in}");
    notifications.stop().await;
    app.close().await
}

/// Create a mesh, copy its invite, a CLI device joins with it, and the person at the app and
/// the CLI's MCP bridge message each other; sent messages show their delivery state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_created_mesh_invites_a_cli_and_messages_flow_both_ways_with_delivery_states() -> Result<()> {
    let (app, laptop, mut bob) = app_with_a_session_of_bob().await?;
    app.open("peers").await?;
    app.click("[data-testid=peer-row][data-name=bob] [data-testid=peer-message]").await?;
    app.wait_text("[data-testid=thread-title]", |t| t == "bob").await?;
    app.fill("[data-testid=composer]", "hello from the app").await?;
    app.click("[data-testid=send]").await?;

    // Bob's Claude Code session gets it, and the app shows it delivered.
    let pushed = bob.channel_message("hello from the app", WAIT).await.context("bob's session gets the message")?;
    assert_eq!(pushed.params["meta"]["from_name"], "alice");
    app.wait_present("[data-testid=message][data-direction=out] [data-testid=delivery][data-state=delivered]").await?;

    // Bob answers by name; the reply shows in the same conversation.
    let sent = bob.call("send_message", json!({"to": "alice", "message": "hello back from bob"})).await?;
    assert_eq!(sent["results"][0]["ok"], true, "{sent}");
    app.wait_text("[data-testid=message][data-direction=in] [data-testid=message-text]", |t| {
        t == "hello back from bob"
    })
    .await?;

    // A message to a member that is offline stays queued (and says so), then is delivered when
    // it comes back.
    bob.close().await?;
    app.wait_absent("[data-testid=peer-row][data-name=bob]").await.ok();
    app.fill("[data-testid=composer]", "are you there?").await?;
    app.click("[data-testid=send]").await?;
    app.wait_present("[data-testid=delivery][data-state=queued]").await?;
    let mut bob = laptop.bridge().await?;
    bob.channel_message("are you there?", WAIT).await.context("bob gets it when back")?;
    app.wait_absent("[data-testid=delivery][data-state=queued]").await?;

    // The app checks the mesh's signed membership log: alice made the mesh, bob came with an
    // invite alice signed and his own proof; both are verified.
    app.open("meshes").await?;
    app.click("[data-testid=mesh-row][data-slug=acme] [data-testid=members-open]").await?;
    for name in ["alice", "bob"] {
        let selector = format!("[data-testid=member-row][data-name={name}] [data-testid=member-admission]");
        app.wait_text(&selector, |t| t == "verified").await?;
    }
    app.close().await
}

/// A Claude Code session floods the person at the app: the broker holds it, the app notifies
/// the person and shows why in the conversation, and the person's click releases the pair.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_a_session_is_held_and_the_person_releases_it_from_the_app() -> Result<()> {
    let (app, _laptop, mut bob) = app_with_a_session_of_bob().await?;
    bob.call_until("list_peers", json!({}), |list| peer_names(list).contains(&"alice".to_owned())).await?;
    let notifications = NotificationMonitor::start().await?;

    // The default budget lets 8 direct messages through at once (the member's own limit would
    // allow 10), then holds the pair.
    let flood = json!({"to": "alice", "message": "ping", "priority": "now"});
    let mut held = None;
    for n in 0..10 {
        if let Err(refused) = bob.call("send_message", flood.clone()).await {
            held = Some((n, refused.to_string()));
            break;
        }
    }
    let (n, refused) = held.context("the flood was never held")?;
    assert_eq!(n, 8, "held after the budget of 8: {refused}");
    assert!(refused.contains("held"), "{refused}");
    notifications.wait_for("Messages held in acme").await?;

    app.open("messages").await?;
    app.wait_present("[data-testid=conversation][data-title=bob]").await?;
    app.click("[data-testid=conversation][data-title=bob]").await?;
    app.wait_present("[data-testid=message].notice [data-testid=release-pair]").await?;
    app.click("[data-testid=release-pair]").await?;
    app.wait_text("[data-testid=toast]", |t| t.contains("flow again")).await?;
    let sent = bob.call("send_message", flood).await?;
    assert_eq!(sent["results"][0]["ok"], true, "flows again: {sent}");
    notifications.stop().await;
    app.close().await
}

/// Revoking a device from the app cuts that device's live connection at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_device_from_the_app_cuts_its_live_connection() -> Result<()> {
    let app = DesktopApp::launch().await?;
    app.set_up_locally("alice").await?;
    let local_url = local_broker_url(&app).await?;

    // A second device of the same account signs in (approved from the app) and enrols.
    let laptop = Device::new()?;
    let login = laptop.start_login(&local_url, Some(&whoami()), "alice-laptop")?;
    app.open("approve").await?;
    app.fill("[data-testid=approve-code]", &login.code).await?;
    app.click("[data-testid=approve-lookup]").await?;
    app.click("[data-testid=approve-yes]").await?;
    let signed_in = tokio::task::spawn_blocking(move || login.finish()).await??;
    assert_eq!(signed_in["enrolled"], json!(["personal"]), "{signed_in}");
    let mut bridge = laptop.bridge().await?;
    bridge.call_until("whoami", json!({}), |who| who["sessions"][0]["connection"] == "connected").await?;
    app.open("peers").await?;
    app.wait_present("[data-testid=peer-row][data-name=alice-laptop]").await?;

    app.open("devices").await?;
    app.wait_present("[data-testid=device-row]:not(:first-child)").await?;
    app.click("[data-testid=device-row]:not(:first-child) [data-testid=device-revoke]").await?;
    app.click("[data-testid=device-revoke-confirm]").await?;

    // The bridge's session was closed by the broker, and the app no longer lists it.
    let who = bridge
        .call_until("whoami", json!({}), |who| {
            who["sessions"][0]["connection"].as_str().is_some_and(|c| c.contains("revoked"))
        })
        .await?;
    assert!(who["sessions"][0]["connection"].as_str().is_some_and(|c| c.starts_with("failed")), "{who}");
    app.open("peers").await?;
    app.wait_absent("[data-testid=peer-row][data-name=alice-laptop]").await?;
    app.close().await
}

/// The tray menu, driven over D-Bus as a panel would: it says where things stand, and Quit
/// ends the app cleanly — its local broker commits what it queued, so a message waiting for an
/// offline member is there when the app starts again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quit_from_the_tray_ends_the_app_and_loses_nothing_queued() -> Result<()> {
    let app = DesktopApp::launch().await?;
    app.set_up_locally("alice").await?;
    let link = app.invite_link("personal", 1).await?;
    let laptop = Device::new()?;
    laptop.join(&link, "bob")?;
    let bob = laptop.bridge().await?;
    app.open("peers").await?;
    app.click("[data-testid=peer-row][data-name=bob] [data-testid=peer-message]").await?;
    bob.close().await?;
    app.fill("[data-testid=composer]", "waiting for you while you are away").await?;
    app.click("[data-testid=send]").await?;
    app.wait_present("[data-testid=delivery][data-state=queued]").await?;

    let pid = app.pid().context("the app's process")?;
    let tray = TrayMenu::of(pid).await?;
    let labels: Vec<String> = tray.items().await?.into_iter().map(|(_, label)| label).collect();
    let state_line = format!("Connected as {} · 1 mesh", whoami());
    assert_eq!(labels.first(), Some(&state_line), "{labels:?}");
    assert!(labels.iter().any(|l| l.starts_with("Personal — ")), "{labels:?}");
    for entry in ["Approve a device…", "Open claudemesh", "Pause notifications", "Quit claudemesh"] {
        assert!(labels.iter().any(|l| l == entry), "{entry} missing from {labels:?}");
    }
    // Closing the window leaves the app in the tray: its menu still answers, Open brings a
    // window back (with the state kept in the app, not in the page).
    app.close_window().await?;
    let tray = TrayMenu::of(pid).await?;
    tray.click("Open claudemesh").await?;
    assert!(tray.items().await?.iter().any(|(_, l)| l == "Quit claudemesh"));
    tray.click("Quit claudemesh").await?;
    claudemesh_e2e::wait_until("the app to exit", || !std::path::Path::new(&format!("/proc/{pid}")).exists()).await?;

    // Started again on the same profile, its broker still holds the message for bob.
    let app = DesktopApp::launch_in(app.into_home().await).await?;
    app.wait_text("[data-testid=state-line]", |t| t.starts_with("Connected as")).await?;
    let mut bob = laptop.bridge().await?;
    bob.channel_message("waiting for you while you are away", WAIT).await.context("queued message survived")?;
    app.close().await
}

/// A reminder a peer's session scheduled for the person notifies when it fires; the person's
/// own recurring reminder (made with the CLI) is listed in Scheduled and cancelled there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reminders_notify_when_they_fire_and_the_scheduled_view_cancels_them() -> Result<()> {
    let (app, _laptop, mut bob) = app_with_a_session_of_bob().await?;
    let notifications = NotificationMonitor::start().await?;
    let reminder = json!({"to": "alice", "message": "time to review #42", "in": "1s"});
    let scheduled = bob.call("schedule_reminder", reminder).await?;
    assert_eq!(scheduled["to"], "alice", "{scheduled}");
    let shown = notifications.wait_for("Reminder from bob in acme").await?;
    assert_eq!(shown.body, "time to review #42");

    let own = app
        .cli(&["remind", "water the plants", "--mesh", "acme", "--cron", "0 9 * * *", "--tz", "Europe/Berlin"])
        .await?;
    let id = own["scheduleId"].as_str().context("a schedule id")?.to_owned();
    app.open("scheduled").await?;
    let row = format!("[data-testid=scheduled-row][data-id={id}]");
    app.wait_text(&format!("{row} [data-testid=scheduled-when]"), |t| t.contains("every 0 9 * * * (Europe/Berlin)"))
        .await?;
    app.click(&format!("{row} [data-testid=scheduled-cancel]")).await?;
    app.click("[data-testid=scheduled-cancel-confirm]").await?;
    app.wait_absent(&row).await?;
    let left = app.cli(&["scheduled"]).await?;
    assert_eq!(left["scheduled"], json!([]), "cancelled at the broker: {left}");
    notifications.stop().await;
    app.close().await
}

/// The Board shows the mesh's shared state as bob's session writes it, live; Memory finds what
/// bob's session remembered, remembers something of the person's own (which bob's session then
/// recalls) and forgets it for the whole mesh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_board_follows_shared_state_live_and_memory_searches_adds_and_forgets() -> Result<()> {
    let (app, _laptop, mut bob) = app_with_a_session_of_bob().await?;
    let lock = json!({"name": "lock/deploy", "value": {"owner": "bob"}, "expected_version": 0});
    assert_eq!(bob.call("set_state", lock).await?["version"], 1);
    app.open("board").await?;
    let entry = "[data-testid=board-entry][data-name='lock/deploy']";
    app.wait_text(&format!("{entry} [data-testid=board-value]"), |t| t.contains(r#""owner":"bob""#)).await?;
    // Live: changes appear without a refresh.
    bob.call("set_state", json!({"name": "board/bob", "value": "reviewing #42"})).await?;
    let board_bob = "[data-testid=board-entry][data-name='board/bob'] [data-testid=board-value]";
    app.wait_text(board_bob, |t| t == "reviewing #42").await?;
    // (WebKit's driver reads this line, cut with an ellipsis when long, as empty: its content.)
    let writer = "[data-testid=board-entry][data-name='board/bob'] [data-testid=board-writer]";
    let writer = app.execute("return document.querySelector(arguments[0]).textContent", json!([writer])).await?;
    assert!(writer.as_str().is_some_and(|w| w.starts_with("by bob")), "{writer}");
    bob.call("delete_state", json!({"name": "lock/deploy", "expected_version": 1})).await?;
    app.wait_absent(entry).await?;

    let noted =
        bob.call("remember", json!({"text": "the staging database listens on port 5433", "tags": ["infra"]})).await?;
    let acme = noted["meshId"].as_str().context("the mesh's id")?.to_owned();
    app.open("memory").await?;
    app.fill("[data-testid=memory-query]", "staging").await?;
    app.click("[data-testid=memory-search]").await?;
    app.wait_text("[data-testid=memory-row-text]", |t| t.contains("5433")).await?;
    app.fill("[data-testid=memory-text]", "release trains leave on Tuesdays").await?;
    app.fill("[data-testid=memory-tags]", "process").await?;
    // The person has two meshes (their personal one and acme): this goes to acme.
    app.select("[data-testid=memory-mesh]", &acme).await?;
    app.click("[data-testid=memory-remember]").await?;
    let found = |r: &serde_json::Value| r["memories"].as_array().is_some_and(|m| !m.is_empty());
    let recalled = bob.call_until("recall", json!({"query": "release trains"}), found).await?;
    assert_eq!(recalled["memories"][0]["rememberedBy"], "alice", "{recalled}");
    assert_eq!(recalled["memories"][0]["tags"], json!(["process"]), "{recalled}");
    let id = recalled["memories"][0]["id"].as_str().context("an id")?.to_owned();

    app.fill("[data-testid=memory-query]", "Tuesdays").await?;
    app.click("[data-testid=memory-search]").await?;
    let row = format!("[data-testid=memory-row][data-id={id}]");
    app.wait_present(&row).await?;
    app.click(&format!("{row} [data-testid=memory-forget]")).await?;
    app.click("[data-testid=memory-forget-confirm]").await?;
    app.wait_absent(&row).await?;
    let after = bob.call("recall", json!({"query": "release trains"})).await?;
    assert_eq!(after["memories"], json!([]), "forgotten for the whole mesh: {after}");
    app.close().await
}

/// The app set up locally as alice with a mesh `acme`, and a CLI device that joined it as bob
/// with a Claude Code session's bridge.
async fn app_with_a_session_of_bob() -> Result<(DesktopApp, Device, claudemesh_e2e::Bridge)> {
    let app = DesktopApp::launch().await?;
    app.set_up_locally("alice").await?;
    app.create_mesh("acme").await?;
    let link = app.invite_link("acme", 1).await?;
    let laptop = Device::new()?;
    laptop.join(&link, "bob")?;
    let bob = laptop.bridge().await?;
    Ok((app, laptop, bob))
}

async fn local_broker_url(app: &DesktopApp) -> Result<String> {
    app.open("settings").await?;
    let state = app.wait_text("[data-testid=local-state]", |t| t.starts_with("running on")).await?;
    Ok(state.trim_start_matches("running on ").trim().to_owned())
}

fn whoami() -> String {
    std::env::var("USER").ok().filter(|u| !u.is_empty()).unwrap_or_else(|| "me".into())
}
