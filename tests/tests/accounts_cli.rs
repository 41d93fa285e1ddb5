//! The account commands across real processes: device login approved by the operator (first
//! device) and by a signed-in CLI (second), a pasted one-time login token, enrolment into the
//! account's meshes, invites, grants, device revocation and logout.

use anyhow::{Context as _, Result};
use claudemesh_e2e::{Broker, Device};
use serde_json::Value;
use std::io::Write as _;
use std::process::{Output, Stdio};

fn json_of(output: &Output) -> Value {
    assert!(output.status.success(), "failed: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("one JSON object on stdout")
}

fn run(device: &Device, args: &[&str]) -> Output {
    device.command().args(args).output().expect("claudemesh runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_sign_in_with_approval_enrol_and_are_revoked() -> Result<()> {
    let broker = Broker::start().await?;
    broker.operator(&["account", "create", "--name", "alice"])?;
    let (laptop, server, ssh_box, carol) = (Device::new()?, Device::new()?, Device::new()?, Device::new()?);

    // The account's first device: approved by the operator on the broker host.
    let login = laptop.start_login(&broker.url(), None, "alice-laptop")?;
    let approved = broker.operator(&["device", "approve", &login.code, "--account", "alice"])?;
    assert_eq!(approved["status"], "approved");
    assert_eq!(approved["platform"], std::env::consts::OS);
    let signed_in = login.finish()?;
    assert_eq!(signed_in["account"], "alice");
    assert_eq!(signed_in["enrolled"], Value::Array(vec![]));

    // A mesh of the account, and an invite signed on this device.
    let created = json_of(&run(&laptop, &["create", "team", "--as", "alice", "--json"]));
    assert_eq!(created["role"], "admin");
    let invite = json_of(&run(&laptop, &["invite", "--mesh", "team", "--max-uses", "1", "--json"]));
    let link = invite["link"].as_str().context("link")?;
    assert_eq!(invite["emailed"], false);

    // A second device, approved from the laptop's CLI after it showed which device asks; it
    // enrols into the account's mesh with its own member key.
    let login = server.start_login(&broker.url(), None, "alice-server")?;
    let shown = run(&laptop, &["device", "approve", &login.code, "--yes", "--json"]);
    let shown = json_of(&shown);
    assert_eq!(shown["status"], "approved");
    assert!(shown["hostname"].as_str().is_some_and(|h| !h.is_empty()));
    let server_in = login.finish()?;
    assert_eq!(server_in["enrolled"], serde_json::json!(["team"]));
    let server_meshes = json_of(&run(&server, &["meshes", "--json"]));
    assert_eq!(server_meshes["meshes"][0]["mesh"], "team", "{server_meshes}");

    // A third device over SSH: nobody approves a code, a pasted one-time token signs it in.
    // Without a terminal to ask on, minting one takes --yes.
    let unasked = run(&laptop, &["device", "token", "--json"]);
    assert!(!unasked.status.success(), "minted without asking");
    assert!(String::from_utf8_lossy(&unasked.stderr).contains("needs your confirmation"));
    let mut login = ssh_box.start_login(&broker.url(), None, "alice-ssh")?;
    let token = json_of(&run(&laptop, &["device", "token", "--yes", "--json"]));
    let token = token["loginToken"].as_str().context("login token")?;
    writeln!(login.child.stdin.as_mut().context("stdin")?, "{token}")?;
    let ssh_in = login.finish()?;
    assert_eq!(ssh_in["account"], "alice");

    let devices = json_of(&run(&laptop, &["devices", "--json"]));
    let devices = devices["devices"].as_array().context("devices")?;
    assert_eq!(devices.len(), 3);
    let server_id = devices
        .iter()
        .find(|d| d["id"] == server_in["deviceId"])
        .and_then(|d| d["id"].as_str())
        .context("server listed")?
        .to_owned();

    // Someone else joins with the invite; alice blocks and unblocks her.
    let carol_joined = carol.join(link, "carol")?;
    let carol_key = carol_joined["memberPubkey"].as_str().context("key")?.to_owned();
    let alice_member = json_of(&run(&laptop, &["meshes", "--json"]));
    let alice_pubkey = alice_member["meshes"][0]["memberPubkey"].as_str().context("alice key")?.to_owned();
    let blocked = json_of(&run(&laptop, &["block", &carol_key, "--mesh", "team", "--json"]));
    assert_eq!(blocked["caps"], serde_json::json!([]));
    let refused = run(&carol, &["send", &alice_pubkey, "hello?"]);
    assert_eq!(refused.status.code(), Some(5), "{}", String::from_utf8_lossy(&refused.stderr));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("blocked"));
    let unblocked = json_of(&run(&laptop, &["unblock", &carol_key, "--mesh", "team", "--json"]));
    assert_eq!(unblocked["default"], true);
    let sent = run(&carol, &["send", &alice_pubkey, "hello again"]);
    assert!(sent.status.success(), "{}", String::from_utf8_lossy(&sent.stderr));

    // Carol leaves at the broker: her key is unknown there afterwards.
    let left = json_of(&run(&carol, &["leave", "team", "--json"]));
    assert_eq!(left["leftAtBroker"], true);
    let gone = run(&laptop, &["send", &carol_key, "are you there?"]);
    assert_eq!(gone.status.code(), Some(5), "{}", String::from_utf8_lossy(&gone.stderr));

    // Revoking the server device: its member key stops working at once.
    json_of(&run(&laptop, &["devices", "--revoke", &server_id, "--yes", "--json"]));
    let cut = run(&server, &["peers", "--mesh", "team"]);
    assert_eq!(cut.status.code(), Some(5), "{}", String::from_utf8_lossy(&cut.stderr));
    assert_eq!(run(&server, &["devices"]).status.code(), Some(5), "its token is refused too");

    // Logging out revokes the SSH box's own token.
    let out = json_of(&run(&ssh_box, &["logout", "--json"]));
    assert_eq!(out["account"], "alice");
    assert_eq!(run(&ssh_box, &["devices"]).status.code(), Some(5), "not signed in any more");
    let left = json_of(&run(&laptop, &["devices", "--json"]));
    let revoked = left["devices"].as_array().context("devices")?.iter().filter(|d| d["revoked"] == true).count();
    assert_eq!(revoked, 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_login_fails_and_wrong_codes_are_refused() -> Result<()> {
    let broker = Broker::start().await?;
    broker.operator(&["account", "create", "--name", "bob"])?;
    let (laptop, stranger) = (Device::new()?, Device::new()?);
    let login = laptop.start_login(&broker.url(), None, "bob")?;
    broker.operator(&["device", "approve", &login.code, "--account", "bob"])?;
    login.finish()?;

    let login = stranger.start_login(&broker.url(), None, "intruder")?;
    let denied = json_of(&run(&laptop, &["device", "deny", &login.code, "--json"]));
    assert_eq!(denied["status"], "denied");
    let output = login.child.wait_with_output()?;
    assert_eq!(output.status.code(), Some(5), "a denied sign-in fails");

    let wrong = run(&laptop, &["device", "approve", "BBBB-BBBB", "--yes"]);
    assert_eq!(wrong.status.code(), Some(3));
    let malformed = run(&laptop, &["device", "approve", "hello", "--yes"]);
    assert_eq!(malformed.status.code(), Some(2));
    // Without --yes, approving needs a "y" on stdin.
    let login = stranger.start_login(&broker.url(), None, "again")?;
    let mut approve = laptop
        .command()
        .args(["device", "approve", &login.code])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    writeln!(approve.stdin.as_mut().context("stdin")?, "n")?;
    let answered = approve.wait_with_output()?;
    assert_eq!(answered.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&answered.stderr).contains("Approve this device?"));
    let mut login = login;
    login.child.kill()?;
    Ok(())
}

/// Mesh `team` as `claudemesh members --json` shows it on a device.
struct TeamView {
    log: Value,
    /// (name, admission), by name.
    members: Vec<(String, String)>,
    keys: Value,
}

fn team_as_seen_by(device: &Device) -> Result<TeamView> {
    let members = json_of(&run(device, &["members", "--mesh", "team", "--json"]));
    let mesh = &members["meshes"][0];
    let rows = mesh["members"].as_array().context("members")?;
    let mut pairs: Vec<(String, String)> = rows
        .iter()
        .map(|m| {
            (m["name"].as_str().unwrap_or_default().to_owned(), m["admission"].as_str().unwrap_or_default().to_owned())
        })
        .collect();
    pairs.sort();
    Ok(TeamView { log: mesh["log"].clone(), members: pairs, keys: mesh["keys"].clone() })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_are_checked_against_the_signed_membership_log() -> Result<()> {
    let broker = Broker::start().await?;
    broker.operator(&["account", "create", "--name", "alice"])?;
    let (laptop, server, carol) = (Device::new()?, Device::new()?, Device::new()?);
    let login = laptop.start_login(&broker.url(), None, "alice-laptop")?;
    broker.operator(&["device", "approve", &login.code, "--account", "alice"])?;
    login.finish()?;
    json_of(&run(&laptop, &["create", "team", "--as", "alice", "--json"]));
    let invite = json_of(&run(&laptop, &["invite", "--mesh", "team", "--max-uses", "1", "--json"]));
    carol.join(invite["link"].as_str().context("link")?, "carol")?;
    let login = server.start_login(&broker.url(), None, "alice-server")?;
    json_of(&run(&laptop, &["device", "approve", &login.code, "--yes", "--json"]));
    login.finish()?;

    // Carol checks the log herself: the creator, she (an invite and her proof) and alice's second
    // device (endorsed by the laptop when it approved that device) are all signed for.
    // Alice's look makes the mesh's first content key, for every verified member.
    assert_eq!(team_as_seen_by(&laptop)?.keys, serde_json::json!({"state": "held", "epoch": 1}));
    let TeamView { log, members, keys } = team_as_seen_by(&carol)?;
    assert_eq!(keys, serde_json::json!({"state": "held", "epoch": 1}), "alice wrapped it for carol");
    assert_eq!(log["state"], "verified", "{log}");
    assert_eq!(log["entries"], 3);
    let of = |members: &[(String, String)], name: &str| {
        members.iter().find(|(n, _)| n == name).map(|(_, a)| a.clone()).unwrap_or_default()
    };
    assert_eq!((of(&members, "alice"), of(&members, "carol")), ("verified".into(), "verified".into()), "{members:?}");
    assert_eq!(members.len(), 3, "{members:?}");
    assert!(members.iter().all(|(_, a)| a == "verified"), "{members:?}");

    // The admin closes the history to members admitted later; carol, no admin, cannot.
    let refused = run(&carol, &["key-history", "all", "--mesh", "team"]);
    assert_eq!(refused.status.code(), Some(5), "{}", String::from_utf8_lossy(&refused.stderr));
    let set = json_of(&run(&laptop, &["key-history", "from-admission", "--mesh", "team", "--json"]));
    assert_eq!(set["keyHistory"], "from_admission", "{set}");
    let seen = json_of(&run(&carol, &["members", "--mesh", "team", "--json"]));
    assert_eq!(seen["meshes"][0]["keyHistory"], "from_admission", "carol reads it in the log: {seen}");

    // The broker's operator slips in a key of its own: listed, never verified.
    let mallory = broker_core::crypto::Keypair::generate().public_hex();
    broker
        .operator(&["member", "add", "--mesh", "team", "--pubkey", &mallory, "--name", "mallory", "--role", "admin"])?;
    let mut seen = Vec::new();
    for _ in 0..50 {
        seen = team_as_seen_by(&carol)?.members;
        if !of(&seen, "mallory").is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(of(&seen, "mallory"), "vouched", "{seen:?}");

    // Then it cuts the log's tail to hide that: carol saw it, and refuses the shorter log.
    let db = rusqlite::Connection::open(broker.data.path().join("broker.db"))?;
    let cut = db.execute("DELETE FROM membership_log WHERE seq = (SELECT MAX(seq) FROM membership_log)", [])?;
    assert_eq!(cut, 1);
    let refused = run(&carol, &["members", "--mesh", "team"]);
    assert_eq!(refused.status.code(), Some(5), "{}", String::from_utf8_lossy(&refused.stderr));
    assert!(String::from_utf8_lossy(&refused.stdout).contains("MEMBERSHIP LOG DOES NOT VERIFY"));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("does not verify"));
    Ok(())
}

/// The mesh's content keys move between real processes: a bridge that stays online makes the
/// first epoch, passes it on to a member who joins later, and starts a new epoch without a
/// member who leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_online_bridge_passes_the_mesh_key_on_and_renews_it_when_a_member_leaves() -> Result<()> {
    let broker = Broker::start().await?;
    let (_, link) = broker.mesh_with_invite("keys", 2)?;
    let (alice, carol) = (Device::new()?, Device::new()?);
    alice.join(&link, "alice")?;
    let _bridge = alice.bridge().await?;
    let db = rusqlite::Connection::open(broker.data.path().join("broker.db"))?;
    let epochs = |db: &rusqlite::Connection| -> Result<i64> {
        Ok(db.query_row("SELECT COUNT(*) FROM mesh_epochs", [], |row| row.get(0))?)
    };
    claudemesh_e2e::wait_until("the bridge makes epoch 1", || epochs(&db).is_ok_and(|n| n == 1)).await?;

    // Carol joins; nobody but alice's bridge is online to hand her the key.
    let joined = carol.join(&link, "carol")?;
    let carol_key = joined["memberPubkey"].as_str().context("key")?.to_owned();
    let mut keys = Value::Null;
    for _ in 0..50 {
        let members = json_of(&run(&carol, &["members", "--json"]));
        keys = members["meshes"][0]["keys"].clone();
        if keys["state"] == "held" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(keys, serde_json::json!({"state": "held", "epoch": 1}));

    // Carol leaves: the bridge starts epoch 2, which she has no wrap of.
    json_of(&run(&carol, &["leave", "keys", "--json"]));
    claudemesh_e2e::wait_until("the bridge makes epoch 2", || epochs(&db).is_ok_and(|n| n == 2)).await?;
    let carols: Vec<i64> = db
        .prepare("SELECT epoch FROM epoch_wraps WHERE recipient = ?1 ORDER BY epoch")?
        .query_map([&carol_key], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    assert_eq!(carols, [1]);
    Ok(())
}
