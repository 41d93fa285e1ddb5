//! The `claudemesh` commands as a person (or a script) uses them: `--json` shapes, exit codes,
//! and `install`/`uninstall` against a temporary home without a `claude` command.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Output, Stdio};

use anyhow::{Result, bail};
use claudemesh_e2e::{Broker, Device};
use serde_json::Value;

fn run(mut command: Command, args: &[&str]) -> Output {
    command.args(args).output().expect("claudemesh runs")
}

fn json_of(output: &Output) -> Value {
    assert!(output.status.success(), "failed: {}", String::from_utf8_lossy(&output.stderr));
    let value: Value = serde_json::from_slice(&output.stdout).expect("one JSON object on stdout");
    assert_eq!(value["schemaVersion"], 1, "{value}");
    value
}

fn code(output: &Output) -> i32 {
    output.status.code().expect("exit code")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_print_documented_json_and_exit_codes() -> Result<()> {
    let mut broker = Broker::start().await?;
    let (mesh, link) = broker.mesh_with_invite("cli", 2)?;
    let (alice, bob) = (Device::new()?, Device::new()?);

    // Nothing joined yet.
    assert_eq!(json_of(&run(alice.command(), &["meshes", "--json"]))["meshes"], Value::Array(vec![]));
    let none = run(alice.command(), &["peers"]);
    assert_eq!(code(&none), 3);
    assert!(String::from_utf8_lossy(&none.stderr).contains("claudemesh join"), "says what to do next");

    // Joining: a forged link is refused before any request; joining twice is "already exists".
    let forged = run(alice.command(), &["join", "http://127.0.0.1:1/join/not-a-token", "--name", "alice"]);
    assert_eq!(code(&forged), 5);
    let joined = json_of(&run(alice.command(), &["join", &link, "--name", "alice", "--json"]));
    assert_eq!(joined["mesh"], mesh["slug"]);
    assert_eq!(joined["keystore"], "file");
    assert_eq!(joined["role"], "member");
    assert_eq!(code(&run(alice.command(), &["join", &link, "--name", "alice"])), 6);
    bob.join(&link, "bob")?;
    let config = std::fs::read_to_string(alice.config.path().join("config.json"))?;
    let key_files: Vec<_> = std::fs::read_dir(alice.config.path().join("keys"))?.collect();
    assert_eq!(key_files.len(), 1, "the member key is in the file keystore");
    let seed = std::fs::read_to_string(key_files[0].as_ref().expect("entry").path())?;
    assert!(!config.contains(seed.trim()), "no secret in config.json");

    // bob watches; alice finds him and sends.
    let mut watch = bob.command().args(["watch", "--json"]).stdout(Stdio::piped()).stderr(Stdio::null()).spawn()?;
    let mut lines = BufReader::new(watch.stdout.take().expect("stdout")).lines();
    let mut peers = Value::Null;
    for _ in 0..100 {
        peers = json_of(&run(alice.command(), &["peers", "--json"]));
        if peers["peers"].as_array().is_some_and(|p| p.iter().any(|p| p["name"] == "bob")) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let bob_row = peers["peers"].as_array().and_then(|p| p.iter().find(|p| p["name"] == "bob").cloned());
    let Some(bob_row) = bob_row else { bail!("bob never showed up: {peers}") };
    assert_eq!(bob_row["peerType"], "human");
    assert_eq!(bob_row["location"], "local");
    let sent = json_of(&run(alice.command(), &["send", "bob", "hello from the cli", "--priority", "now", "--json"]));
    assert_eq!(sent["results"][0]["ok"], true, "{sent}");
    let line = tokio::task::spawn_blocking(move || lines.next()).await?.expect("a line")?;
    let received: Value = serde_json::from_str(&line)?;
    assert_eq!(received["text"], "hello from the cli");
    assert_eq!(received["from"], "alice");
    assert_eq!(received["priority"], "now");
    assert_eq!(received["schemaVersion"], 1);
    watch.kill()?;
    watch.wait()?;
    let history = json_of(&run(bob.command(), &["inbox", "--all", "--json"]));
    assert_eq!(history["messages"][0]["text"], "hello from the cli");

    // An unknown name lists who is online.
    let unknown = run(alice.command(), &["send", "nobody", "x"]);
    assert_eq!(code(&unknown), 3);

    // status.
    let status = json_of(&run(alice.command(), &["status", "--json"]));
    assert_eq!(status["keystore"], "file");
    assert_eq!(status["meshes"][0]["connection"], "connected");

    // The broker down: exit 4 with advice.
    broker.kill().await?;
    let down = run(alice.command(), &["peers"]);
    assert_eq!(code(&down), 4, "{}", String::from_utf8_lossy(&down.stderr));
    assert!(String::from_utf8_lossy(&down.stderr).contains("cannot reach the broker"));

    // leave removes the mesh and its key, and says the broker could not be told.
    let left = json_of(&run(alice.command(), &["leave", mesh["slug"].as_str().expect("slug"), "--json"]));
    assert_eq!(left["keyRemoved"], true);
    assert_eq!(left["leftAtBroker"], false);
    assert_eq!(std::fs::read_dir(alice.config.path().join("keys"))?.count(), 0);
    Ok(())
}

#[test]
fn install_writes_claude_code_files_and_uninstall_reverses_it() -> Result<()> {
    let device = Device::new()?;
    let home = device.config.path();
    std::fs::create_dir_all(home.join(".claude"))?;
    std::fs::write(home.join(".claude.json"), r#"{"numStartups": 3, "mcpServers": {"other": {"command": "x"}}}"#)?;
    let no_claude_path = "/usr/bin:/bin";

    let mut command = device.command();
    command.env("PATH", no_claude_path);
    let report = json_of(&run(command, &["install", "--json"]));
    assert_eq!(report["mcpMethod"], "file");
    let claude_json: Value = serde_json::from_str(&std::fs::read_to_string(home.join(".claude.json"))?)?;
    assert_eq!(claude_json["numStartups"], 3, "other content kept");
    assert_eq!(claude_json["mcpServers"]["other"]["command"], "x");
    assert_eq!(claude_json["mcpServers"]["claudemesh"]["args"][0], "mcp");
    assert_eq!(
        claude_json["mcpServers"]["claudemesh"]["env"]["CLAUDEMESH_CONFIG_DIR"],
        home.display().to_string(),
        "the bridge uses the same config directory"
    );
    let settings: Value = serde_json::from_str(&std::fs::read_to_string(home.join(".claude/settings.json"))?)?;
    for (event, status) in [
        ("UserPromptSubmit", "working"),
        ("PreToolUse", "working"),
        ("Stop", "idle"),
        ("StopFailure", "idle"),
        ("SessionEnd", "idle"),
    ] {
        let command = settings["hooks"][event][0]["hooks"][0]["command"].as_str().unwrap_or_default();
        assert!(command.ends_with(&format!("hook {status}")), "{event}: {command}");
        assert!(command.starts_with("CLAUDEMESH_CONFIG_DIR="), "{command}");
    }

    let mut command = device.command();
    command.env("PATH", no_claude_path);
    let report = json_of(&run(command, &["uninstall", "--json"]));
    assert_eq!(report["hookEvents"].as_array().map(Vec::len), Some(5));
    assert_eq!(report["approvedTools"].as_array().map(Vec::len), Some(12), "{report}");
    let claude_json: Value = serde_json::from_str(&std::fs::read_to_string(home.join(".claude.json"))?)?;
    assert!(claude_json["mcpServers"].get("claudemesh").is_none());
    assert_eq!(claude_json["mcpServers"]["other"]["command"], "x");
    let settings: Value = serde_json::from_str(&std::fs::read_to_string(home.join(".claude/settings.json"))?)?;
    assert!(settings.get("hooks").is_none(), "{settings}");
    assert!(settings.get("permissions").is_none(), "{settings}");
    Ok(())
}

/// A relay in front of the broker whose first connection loses the broker's answer: the request
/// arrives and is acted on, the caller hears nothing. Later connections pass through.
async fn answer_losing_relay(broker_port: u16) -> Result<u16> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        let mut first = true;
        while let Ok((mut client, _)) = listener.accept().await {
            let Ok(mut upstream) = tokio::net::TcpStream::connect(("127.0.0.1", broker_port)).await else { return };
            if !std::mem::take(&mut first) {
                tokio::spawn(async move {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                });
                continue;
            }
            tokio::spawn(async move {
                use tokio::io::AsyncReadExt as _;
                let (mut client_read, _client_write) = client.split();
                let (mut upstream_read, mut upstream_write) = upstream.split();
                let forward = tokio::io::copy(&mut client_read, &mut upstream_write);
                let mut answer = [0u8; 1];
                // Forward the request until the broker starts answering, then hang up on the client.
                tokio::select! {
                    _ = forward => {}
                    _ = upstream_read.read_exact(&mut answer) => {}
                }
            });
        }
    });
    Ok(port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_whose_answer_was_lost_finishes_on_retry_with_the_same_key() -> Result<()> {
    let broker = Broker::start().await?;
    broker.operator(&["mesh", "create", "--name", "relayed"])?;
    let relay = answer_losing_relay(broker.port).await?;
    let invite = broker.operator(&[
        "invite",
        "create",
        "--mesh",
        "relayed",
        "--max-uses",
        "1",
        "--public-url",
        &format!("http://127.0.0.1:{relay}"),
    ])?;
    let link = invite["link"].as_str().expect("link");
    let device = Device::new()?;

    let lost = run(device.command(), &["join", link, "--name", "alice"]);
    assert_eq!(code(&lost), 4, "unreachable: {}", String::from_utf8_lossy(&lost.stderr));
    let stderr = String::from_utf8_lossy(&lost.stderr);
    assert!(stderr.contains("run the same command again"), "{stderr}");

    // The single-use invite was used by the lost request; the retry presents the same key.
    let joined = json_of(&run(device.command(), &["join", link, "--name", "alice", "--json"]));
    assert_eq!(joined["alreadyMember"], true, "{joined}");
    let members = broker.operator(&["member", "list", "--mesh", "relayed"])?;
    let alices: Vec<&Value> =
        members["members"].as_array().expect("members").iter().filter(|m| m["displayName"] == "alice").collect();
    assert_eq!(alices.len(), 1, "one member, not two: {alices:?}");
    assert_eq!(alices[0]["pubkey"], joined["memberPubkey"]);

    let keys: Vec<String> = std::fs::read_dir(device.config.path().join("keys"))?
        .map(|entry| entry.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<std::io::Result<_>>()?;
    assert_eq!(keys.len(), 1, "only the member key is left, not the join's: {keys:?}");
    assert!(keys[0].starts_with("member_"), "{keys:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_state_and_memory_from_the_command_line() -> Result<()> {
    let mut broker = Broker::start().await?;
    let (_, link) = broker.mesh_with_invite("workspace", 2)?;
    let (alice, bob) = (Device::new()?, Device::new()?);
    alice.join(&link, "alice")?;
    bob.join(&link, "bob")?;

    // A lock taken with --expected-version 0; the second taker exits 6 and is told the version.
    let taken = json_of(&run(
        alice.command(),
        &["state", "set", "lock/deploy", r#"{"owner":"alice"}"#, "--expected-version", "0", "--json"],
    ));
    assert_eq!(
        (taken["entry"]["version"].clone(), taken["entry"]["value"]["owner"].clone()),
        (1.into(), "alice".into())
    );
    let lost = run(bob.command(), &["state", "set", "lock/deploy", "bob", "--expected-version", "0"]);
    assert_eq!(code(&lost), 6, "{}", String::from_utf8_lossy(&lost.stderr));
    assert!(String::from_utf8_lossy(&lost.stderr).contains("at version 1"));

    // bob follows `board/` while alice writes there.
    let mut watch = bob
        .command()
        .args(["state", "watch", "board/", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut lines = BufReader::new(watch.stdout.take().expect("stdout")).lines();
    let shown = json_of(&run(bob.command(), &["state", "get", "lock/deploy", "--json"]));
    assert_eq!(shown["entry"]["writtenBy"], "alice");
    // Text that is not JSON is kept as text; a ttl is shown.
    let board =
        json_of(&run(alice.command(), &["state", "set", "board/alice", "reviewing #42", "--ttl", "1h", "--json"]));
    assert_eq!(board["entry"]["value"], "reviewing #42");
    assert!(board["entry"]["expiresAt"].is_string());
    let change = tokio::task::spawn_blocking(move || {
        lines.find_map(|line| {
            let line: Value = serde_json::from_str(&line.ok()?).ok()?;
            line.get("change").is_some().then_some(line)
        })
    })
    .await?
    .expect("a change line");
    assert_eq!(change["name"], "board/alice");
    assert!(change["change"].as_str().is_some_and(|c| c.contains("reviewing #42")), "{change}");
    watch.kill()?;
    watch.wait()?;

    let listed = json_of(&run(bob.command(), &["state", "list", "lock/", "--json"]));
    assert_eq!(listed["entries"].as_array().map(Vec::len), Some(1), "{listed}");
    assert_eq!(code(&run(bob.command(), &["state", "delete", "lock/deploy", "--expected-version", "7"])), 6);
    let deleted =
        json_of(&run(alice.command(), &["state", "delete", "lock/deploy", "--expected-version", "1", "--json"]));
    assert_eq!(deleted["deletedVersion"], 1);
    assert_eq!(code(&run(bob.command(), &["state", "get", "lock/deploy"])), 3);
    assert_eq!(code(&run(bob.command(), &["state", "set", "", "x"])), 2, "an empty name is a usage error");

    // Memory.
    let remembered = json_of(&run(
        alice.command(),
        &["remember", "the staging database listens on 5433", "--tag", "infra", "--json"],
    ));
    let id = remembered["memory"]["id"].as_str().expect("an id").to_owned();
    let recalled = json_of(&run(bob.command(), &["recall", "staging", "--tag", "infra", "--json"]));
    assert_eq!(recalled["memories"][0]["id"], id.as_str(), "{recalled}");
    assert_eq!(recalled["memories"][0]["rememberedBy"], "alice");
    json_of(&run(bob.command(), &["forget", &id, "--json"]));
    assert_eq!(code(&run(bob.command(), &["forget", &id])), 3, "forgotten already");
    let after = json_of(&run(alice.command(), &["recall", "staging", "--json"]));
    assert_eq!(after["memories"], Value::Array(vec![]));

    // Recall works offline, from what this device synced.
    json_of(&run(alice.command(), &["remember", "the release train leaves on Tuesdays", "--json"]));
    json_of(&run(bob.command(), &["recall", "release", "--json"]));
    broker.kill().await?;
    let offline = json_of(&run(bob.command(), &["recall", "release", "--json"]));
    assert!(offline["offline"].is_string(), "{offline}");
    assert_eq!(offline["memories"][0]["text"], "the release train leaves on Tuesdays", "{offline}");
    Ok(())
}
