//! The Telegram connector as a real process (`claudemesh telegram`) between a real broker (with
//! the local SMTP sink for its emailed codes), a stand-in Bot API server, and a mesh peer (a
//! `claudemesh mcp` bridge): signing a chat in by email code, a DM reaching the chat, answers
//! from the chat reaching the peer, join notices and mutes, Telegram going away (and the
//! connector with it) without losing or doubling a message, `/disconnect` revoking the device;
//! and wrong, expired and too many codes.

use std::time::Duration;

use anyhow::{Context as _, Result};
use claudemesh_e2e::telegram::{BotApi, Chat, text_of};
use claudemesh_e2e::{Bridge, Broker, Device, claudemesh_bin, message_texts, wait_until};
use serde_json::{Value, json};
use tokio::process::{Child, Command};
use tokio::sync::mpsc::UnboundedReceiver;

const TOKEN: &str = "123456:stand-in-token";
const WAIT: Duration = Duration::from_secs(20);
const ALICE: Chat = Chat { id: 7001, first_name: "Alice", group: None };

/// A broker that mails through the sink, with an account `alice` that has an email address.
async fn broker_with_mail(extra: &[&str]) -> Result<(Broker, UnboundedReceiver<String>)> {
    let (smtp, mails) = broker_core::testing::smtp_sink().await;
    let mut args = vec!["--smtp-url", smtp.as_str(), "--smtp-from", "claudemesh <noreply@example.test>"];
    args.extend_from_slice(extra);
    let broker = Broker::start_with(&args).await?;
    broker.operator(&["account", "create", "--name", "alice", "--email", "alice@example.test"])?;
    Ok((broker, mails))
}

/// The six digits of the next mail.
async fn next_code(mails: &mut UnboundedReceiver<String>) -> Result<String> {
    let mail = tokio::time::timeout(WAIT, mails.recv()).await.context("a mail in time")?.context("a mail")?;
    let code = mail.lines().map(str::trim).find(|l| l.len() == 6 && l.bytes().all(|b| b.is_ascii_digit()));
    Ok(code.with_context(|| format!("no code in {mail}"))?.to_owned())
}

/// `claudemesh telegram` for `broker` against the stand-in, keeping its state in `data`.
fn connector(device: &Device, broker: &Broker, api: &BotApi, data: &std::path::Path) -> Result<Child> {
    let child = Command::new(claudemesh_bin())
        .envs(device.env())
        .env("TELEGRAM_BOT_TOKEN", TOKEN)
        .args(["telegram", "--broker", &broker.url(), "--api-url", &api.url(), "--data-dir"])
        .arg(data)
        .kill_on_drop(true)
        .spawn()?;
    Ok(child)
}

/// The person types `text`; the connector's next message to the chat that contains `expect`.
async fn say(api: &BotApi, text: &str, expect: &str) -> Result<Value> {
    say_in(api, ALICE, text, expect).await
}

async fn say_in(api: &BotApi, chat: Chat, text: &str, expect: &str) -> Result<Value> {
    let before = api.sent_to(chat).len();
    api.type_text(chat, text);
    api.wait_sent(chat, before, WAIT, |sent| sent.contains(expect)).await
}

/// The person answers `message` (one the bot sent) with `text`; the connector's confirmation.
/// A person reads before answering: the connector records whom a message came from once
/// Telegram answered its send, which a test could otherwise outrun.
async fn reply(api: &BotApi, message: &Value, text: &str) -> Result<Value> {
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = api.sent_to(ALICE).len();
    api.reply(ALICE, message, text);
    api.wait_sent(ALICE, before, WAIT, |t| t.contains("Sent to bob")).await
}

/// How many messages to the chat end with `text`.
fn count_ending(api: &BotApi, text: &str) -> usize {
    api.sent_to(ALICE).iter().filter(|m| text_of(m).ends_with(text)).count()
}

fn json_of(output: std::process::Output) -> Value {
    assert!(output.status.success(), "failed: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("one JSON object on stdout")
}

/// alice's laptop (signed in, admin of `team`) and bob, a member of `team`.
async fn team(broker: &Broker) -> Result<(Device, Device)> {
    let (laptop, bob) = (Device::new()?, Device::new()?);
    let login = laptop.start_login(&broker.url(), None, "alice")?;
    broker.operator(&["device", "approve", &login.code, "--account", "alice"])?;
    login.finish()?;
    json_of(laptop.command().args(["create", "team", "--as", "alice", "--json"]).output()?);
    let invite = json_of(laptop.command().args(["invite", "--mesh", "team", "--max-uses", "1", "--json"]).output()?);
    bob.join(invite["link"].as_str().context("link")?, "bob")?;
    Ok((laptop, bob))
}

/// Waits until bob's bridge has received `text` (once).
async fn bob_receives(bob: &mut Bridge, text: &str) -> Result<()> {
    let inbox = bob.call_until("check_messages", json!({}), |r| message_texts(r).iter().any(|t| t == text)).await?;
    assert_eq!(message_texts(&inbox).iter().filter(|t| *t == text).count(), 1, "{inbox}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_signs_in_by_email_code_and_talks_with_the_mesh() -> Result<()> {
    let (broker, mut mails) = broker_with_mail(&[]).await?;
    let (laptop, bob_device) = team(&broker).await?;
    let api = BotApi::start(TOKEN).await?;
    let data = tempfile::tempdir()?;
    let runner = Device::new()?;
    let mut telegram = connector(&runner, &broker, &api, data.path())?;

    // /connect: the address, then the code from the mail.
    say(&api, "/help", "/connect").await?;
    say(&api, "/peers", "not connected").await?;
    say(&api, "/connect", "email address").await?;
    say(&api, "alice@example.test", "six digits").await?;
    let code = next_code(&mut mails).await?;
    let signed_in = say(&api, &code, "Signed in to the account alice").await?;
    assert!(text_of(&signed_in).contains("Meshes: team"), "{signed_in}");

    // The chat is a device of the account, with its own name.
    let devices = json_of(laptop.command().args(["devices", "--json"]).output()?);
    let chat_device =
        devices["devices"].as_array().context("devices")?.iter().find(|d| d["hostname"] == "Telegram: Alice");
    let chat_device_id = chat_device.with_context(|| format!("the chat's device is listed: {devices}"))?["id"].clone();
    let keys = std::fs::metadata(data.path().join("chats").join(ALICE.id.to_string()).join("keys"))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(keys.permissions().mode() & 0o777, 0o700, "the chat's keys are owner-only");
    }

    // bob comes online: a join notice; a reply to it greets him.
    let mut bob = bob_device.bridge().await?;
    let joined = api.wait_sent(ALICE, 0, WAIT, |t| t.contains("bob joined team")).await?;
    reply(&api, &joined, "welcome bob").await?;
    bob_receives(&mut bob, "welcome bob").await?;

    // bob's DM reaches the chat with sender and mesh; a reply goes back to bob, sealed.
    let peers = bob.call_until("list_peers", json!({}), |l| l.to_string().contains("Alice on Telegram")).await?;
    assert!(peers.to_string().contains("\"channel\":\"telegram\""), "{peers}");
    let sent = bob.call("send_message", json!({"to": "Alice on Telegram", "message": "build is green"})).await?;
    assert_eq!(sent["results"][0]["ok"], true, "{sent}");
    let dm = api.wait_sent(ALICE, 0, WAIT, |t| t == "bob → you · team\nbuild is green").await?;
    let sent = reply(&api, &dm, "thanks, merging").await?;
    assert_eq!(text_of(&sent), "Sent to bob · team.");
    bob_receives(&mut bob, "thanks, merging").await?;
    let stored = broker.stored_bytes();
    assert!(!stored.windows(15).any(|w| w == b"thanks, merging"), "the broker stores no plaintext");

    // A broadcast reaches the chat as one.
    bob.call("send_message", json!({"to": "*", "message": "standup in five"})).await?;
    api.wait_sent(ALICE, 0, WAIT, |t| t == "bob → everyone · team\nstandup in five").await?;

    // /send and /peers.
    say(&api, "/send bob deploy at five", "Sent to bob").await?;
    bob_receives(&mut bob, "deploy at five").await?;
    say(&api, "/peers", "bob · team").await?;
    say(&api, "/meshes", "team — team, as Alice on Telegram").await?;
    say(&api, "/send nobody hi", "Not sent to nobody").await?;

    // Telegram goes away for a while: the message waits, and arrives once when it is back.
    api.go_down();
    bob.call("send_message", json!({"to": "Alice on Telegram", "message": "while down"})).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    api.come_back().await?;
    api.wait_sent(ALICE, 0, WAIT, |t| t.ends_with("while down")).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(count_ending(&api, "while down"), 1, "once");

    // Telegram goes away, and the connector is killed while it is away: what bob sends
    // meanwhile reaches the chat once Telegram is back, each message once, in order.
    api.go_down();
    let away = ["away 1", "away 2", "away 3"];
    for text in away {
        let sent = bob.call("send_message", json!({"to": "Alice on Telegram", "message": text})).await?;
        assert_eq!(sent["results"][0]["ok"], true, "{sent}");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    telegram.kill().await?;
    api.come_back().await?;
    let mut telegram = connector(&runner, &broker, &api, data.path())?;
    api.wait_sent(ALICE, 0, WAIT, |t| t.ends_with("away 3")).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let texts: Vec<String> = api.sent_to(ALICE).iter().map(|m| text_of(m).to_owned()).collect();
    let positions: Vec<usize> = away
        .iter()
        .map(|a| {
            let hits: Vec<usize> = texts.iter().enumerate().filter(|(_, t)| t.ends_with(a)).map(|(i, _)| i).collect();
            assert_eq!(hits.len(), 1, "{a} reached the chat once: {texts:#?}");
            hits[0]
        })
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "in order: {texts:#?}");
    // The restarted connector still knows whom a reply goes to.
    reply(&api, &api.wait_sent(ALICE, 0, WAIT, |t| t.ends_with("away 1")).await?, "back now").await?;
    bob_receives(&mut bob, "back now").await?;

    // Muted: bob's return is not announced and his messages arrive silently.
    say(&api, "/mute team", "team is muted").await?;
    bob.close().await?;
    let mut bob = bob_device.bridge().await?;
    bob.call_until("list_peers", json!({}), |l| l.to_string().contains("Alice on Telegram")).await?;
    bob.call("send_message", json!({"to": "Alice on Telegram", "message": "quietly"})).await?;
    let quiet = api.wait_sent(ALICE, 0, WAIT, |t| t.ends_with("quietly")).await?;
    assert_eq!(quiet["disable_notification"], true, "{quiet}");
    // Past the quiet period of a join storm, no notice came either.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let joins = api.sent_to(ALICE).iter().filter(|m| text_of(m).contains("bob joined")).count();
    assert_eq!(joins, 1, "no join notice while muted");

    // /disconnect revokes the chat's device and forgets it here.
    say(&api, "/disconnect", "signed out and its device revoked").await?;
    let devices = json_of(laptop.command().args(["devices", "--json"]).output()?);
    let listed = devices["devices"].as_array().context("devices")?.iter().find(|d| d["id"] == chat_device_id).cloned();
    assert!(listed.is_none_or(|d| d["revoked"] == true), "revoked: {devices}");
    assert!(!data.path().join("chats").join(ALICE.id.to_string()).exists(), "the chat's keys are gone");
    say(&api, "/peers", "not connected").await?;
    wait_until("every update is confirmed", || api.unconfirmed() == 0).await?;
    assert_eq!(api.calls_of("getMe"), 2, "one getMe per start");

    // SIGTERM: it stops cleanly, in a moment.
    let pid = telegram.id().context("pid")?.to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status()?.success());
    let status = tokio::time::timeout(Duration::from_secs(10), telegram.wait()).await.context("stops in time")??;
    assert!(status.success(), "{status}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_expired_and_too_many_codes_are_refused_in_the_chat() -> Result<()> {
    let (broker, mut mails) = broker_with_mail(&["--email-code-ttl-seconds", "2"]).await?;
    let api = BotApi::start(TOKEN).await?;
    let data = tempfile::tempdir()?;
    let runner = Device::new()?;
    let _telegram = connector(&runner, &broker, &api, data.path())?;

    // A group is refused: anyone in it could type the code, or act as the person.
    let group = Chat { id: -5005, first_name: "Mallory", group: Some("team room") };
    say_in(&api, group, "/connect", "private chat with this bot only").await?;

    say(&api, "/connect", "email address").await?;
    say(&api, "not an address", "not an email address").await?;
    say(&api, "alice@example.test", "six digits").await?;
    let code = next_code(&mut mails).await?;
    say(&api, "12345", "Send the six digits").await?;
    let wrong = if code == "000000" { "111111" } else { "000000" };
    say(&api, wrong, "wrong or expired code").await?;
    // The right code, too late.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    say(&api, &code, "wrong or expired code").await?;

    // The connector allows a chat three codes in ten minutes.
    for _ in 0..2 {
        say(&api, "/connect", "email address").await?;
        say(&api, "alice@example.test", "six digits").await?;
    }
    say(&api, "/connect", "email address").await?;
    say(&api, "alice@example.test", "asked for codes too often").await?;
    say(&api, "/cancel", "cancelled").await?;
    // The broker allows an address three in a row, whichever chat asks.
    let other = Chat { id: 7002, first_name: "Alice", group: None };
    say_in(&api, other, "/connect", "email address").await?;
    say_in(&api, other, "alice@example.test", "too many sign-in codes").await?;
    assert!(!data.path().join("chats").join(ALICE.id.to_string()).join("config.json").exists(), "never signed in");
    Ok(())
}
