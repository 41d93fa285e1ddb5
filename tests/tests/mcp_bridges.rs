//! Three Claude Code sessions' bridges (`claudemesh mcp`) on a real broker, driven over stdio:
//! discovery, direct messages both ways (channel notification and `check_messages`), group and
//! broadcast scope, a bridge restart that loses nothing, and no plaintext at the broker.

use std::time::Duration;

use anyhow::Result;
use claudemesh_e2e::{Broker, Device, WAIT, message_texts, peer_names};
use serde_json::json;

const TOOLS: [&str; 21] = [
    "list_peers",
    "send_message",
    "check_messages",
    "set_summary",
    "set_status",
    "join_group",
    "leave_group",
    "whoami",
    "mesh_stats",
    "message_status",
    "schedule_reminder",
    "list_scheduled",
    "cancel_scheduled",
    "set_state",
    "get_state",
    "list_state",
    "delete_state",
    "watch_state",
    "remember",
    "recall",
    "forget",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridges_message_each_other_end_to_end_and_the_broker_never_sees_plaintext() -> Result<()> {
    let mut broker = Broker::start().await?;
    let (mesh, link) = broker.mesh_with_invite("team", 3)?;
    let mesh_id = mesh["id"].as_str().expect("mesh id").to_owned();
    let (alice_dev, bob_dev, carol_dev) = (Device::new()?, Device::new()?, Device::new()?);
    alice_dev.join(&link, "alice")?;
    let bob_joined = bob_dev.join(&link, "bob")?;
    carol_dev.join(&link, "carol")?;
    assert_eq!(bob_joined["meshId"], mesh_id);
    let bob_member_key = bob_joined["memberPubkey"].as_str().expect("member key").to_owned();

    let mut alice = alice_dev.bridge().await?;
    let mut bob = bob_dev.bridge().await?;
    let mut carol = carol_dev.bridge().await?;

    // initialize: named server, the channel capability, instructions.
    let init = &alice.initialize_result;
    assert_eq!(init["serverInfo"]["name"], "claudemesh");
    assert!(init["capabilities"]["experimental"]["claude/channel"].is_object(), "{init}");
    assert!(init["capabilities"]["tools"].is_object());
    assert!(init["instructions"].as_str().unwrap_or_default().contains("send_message"));

    // tools/list: every tool, each with a description and an object schema.
    let tools = alice.request("tools/list", json!({})).await?;
    let listed: Vec<&str> =
        tools["tools"].as_array().expect("tools").iter().filter_map(|t| t["name"].as_str()).collect();
    for tool in TOOLS {
        assert!(listed.contains(&tool), "{tool} missing from {listed:?}");
    }
    for tool in tools["tools"].as_array().expect("tools") {
        assert!(!tool["description"].as_str().unwrap_or_default().is_empty(), "{tool}");
        assert_eq!(tool["inputSchema"]["type"], "object", "{tool}");
    }
    let send_schema =
        tools["tools"].as_array().expect("tools").iter().find(|t| t["name"] == "send_message").expect("send");
    assert!(send_schema["inputSchema"]["required"].as_array().expect("required").contains(&json!("to")));

    // Both list each other (and not themselves).
    let peers = alice
        .call_until("list_peers", json!({}), |list| {
            let names = peer_names(list);
            names.contains(&"bob".to_owned()) && names.contains(&"carol".to_owned())
        })
        .await?;
    assert!(!peer_names(&peers).contains(&"alice".to_owned()), "a session does not list itself");
    let bob_row = peers["peers"].as_array().expect("peers").iter().find(|p| p["name"] == "bob").expect("bob");
    assert_eq!(bob_row["location"], "local");
    assert_eq!(bob_row["peerType"], "ai");
    assert_eq!(bob_row["channel"], "claude-code");
    assert!(bob_row["cwd"].as_str().is_some_and(|c| !c.is_empty()));
    bob.call_until("list_peers", json!({}), |list| peer_names(list).contains(&"alice".to_owned())).await?;

    // A → B by display name: a channel notification, then check_messages (once).
    let hello = "e2e-plaintext-hello-from-alice";
    let sent = alice.call("send_message", json!({"to": "bob", "message": hello})).await?;
    assert_eq!(sent["results"][0]["ok"], true, "{sent}");
    let pushed = bob.channel_message(hello, WAIT).await.expect("bob is notified");
    assert_eq!(pushed.params["meta"]["from_name"], "alice");
    assert_eq!(pushed.params["meta"]["mesh"], mesh["slug"]);
    assert_eq!(pushed.params["meta"]["priority"], "next");
    assert_eq!(pushed.params["meta"]["kind"], "direct");
    assert!(pushed.params["meta"]["sent_at"].as_str().is_some_and(|t| t.contains('T')));
    let inbox = bob.call("check_messages", json!({})).await?;
    assert_eq!(message_texts(&inbox), [hello]);
    assert_eq!(inbox["messages"][0]["from"], "alice");
    // Read: alice's message_status says so.
    let hello_id = sent["results"][0]["messageId"].as_str().expect("message id").to_owned();
    let status = alice
        .call_until("message_status", json!({"message_id": hello_id}), |s| s["recipients"][0]["state"] == "read")
        .await?;
    assert_eq!(status["recipients"][0]["displayName"], "bob", "{status}");
    assert!(status["recipients"][0]["readAt"].is_string(), "{status}");
    let error = bob.call_error("message_status", json!({"message_id": hello_id})).await?;
    assert!(error.contains("no message"), "only its sender sees a message's status: {error}");
    assert!(
        message_texts(&bob.call("check_messages", json!({})).await?).is_empty(),
        "read messages are not returned again"
    );

    // B replies by name; A receives it both ways.
    let reply = "e2e-plaintext-reply-from-bob";
    bob.call("send_message", json!({"to": "alice", "message": reply, "priority": "now"})).await?;
    let pushed = alice.channel_message(reply, WAIT).await.expect("alice is notified");
    assert_eq!(pushed.params["meta"]["from_name"], "bob");
    assert_eq!(pushed.params["meta"]["priority"], "now");
    assert_eq!(message_texts(&alice.call("check_messages", json!({})).await?), [reply]);

    // Name resolution errors list the candidates.
    let error = alice.call_error("send_message", json!({"to": "nobody", "message": "x"})).await?;
    assert!(error.contains("bob") && error.contains("carol"), "{error}");

    // A group message reaches the group only; a broadcast reaches everyone but the sender.
    bob.call("join_group", json!({"name": "dev", "role": "lead"})).await?;
    alice
        .call_until("list_peers", json!({}), |list| {
            list["peers"]
                .as_array()
                .is_some_and(|p| p.iter().any(|p| p["name"] == "bob" && p["groups"][0]["name"] == "dev"))
        })
        .await?;
    let to_group = "e2e-plaintext-for-the-dev-group";
    let sent = alice.call("send_message", json!({"to": "@dev", "message": to_group})).await?;
    assert_eq!(sent["results"][0]["recipients"], 1, "{sent}");
    let pushed = bob.channel_message(to_group, WAIT).await.expect("bob gets the group message");
    assert_eq!(pushed.params["meta"]["kind"], "group");
    assert_eq!(pushed.params["meta"]["to"], "@dev");
    let to_all = "e2e-plaintext-for-everyone";
    alice.call("send_message", json!({"to": "*", "message": to_all, "priority": "low"})).await?;
    bob.channel_message(to_all, WAIT).await.expect("bob gets the broadcast");
    carol.channel_message(to_all, WAIT).await.expect("carol gets the broadcast");
    assert!(carol.channel_message(to_group, Duration::from_millis(500)).await.is_none(), "carol is not in @dev");
    assert!(alice.channel_message(to_all, Duration::from_millis(300)).await.is_none(), "no echo to the sender");
    assert_eq!(message_texts(&carol.call("check_messages", json!({})).await?), [to_all]);
    assert_eq!(message_texts(&bob.call("check_messages", json!({})).await?), [to_group, to_all]);
    assert!(message_texts(&alice.call("check_messages", json!({})).await?).is_empty());

    // whoami.
    let me = bob.call("whoami", json!({})).await?;
    assert_eq!(me["sessions"][0]["displayName"], "bob");
    assert_eq!(me["sessions"][0]["memberPubkey"], bob_member_key.as_str());
    assert_eq!(me["sessions"][0]["connection"], "connected");

    // Restart B's bridge: a message it acknowledged but nobody read, and a message queued while
    // it was down, are both there afterwards.
    let unread = "e2e-plaintext-unread-before-restart";
    alice.call("send_message", json!({"to": "bob", "message": unread})).await?;
    bob.channel_message(unread, WAIT).await.expect("stored and acknowledged before the restart");
    bob.kill().await?;
    let while_down = "e2e-plaintext-sent-while-bob-was-down";
    let sent = alice.call("send_message", json!({"to": bob_member_key, "message": while_down})).await?;
    assert_eq!(sent["results"][0]["ok"], true, "queued for an offline member: {sent}");
    // By name too, once alice's bridge knows bob has no session: the member's queue, said so.
    alice.call_until("list_peers", json!({}), |list| !peer_names(list).contains(&"bob".to_owned())).await?;
    let by_name = "e2e-plaintext-sent-by-name-while-bob-was-down";
    let sent = alice.call("send_message", json!({"to": "bob", "message": by_name})).await?;
    assert_eq!(sent["results"][0]["ok"], true, "{sent}");
    assert_eq!(sent["results"][0]["targetSpec"], bob_member_key.as_str(), "{sent}");
    assert_eq!(sent["results"][0]["note"], "bob is offline; it will be delivered when bob connects", "{sent}");
    let mut bob = bob_dev.bridge().await?;
    bob.channel_message(while_down, WAIT).await.expect("queued message pushed after the restart");
    bob.channel_message(by_name, WAIT).await.expect("the message sent by name is pushed too");
    let texts = message_texts(&bob.call("check_messages", json!({})).await?);
    assert_eq!(texts, [unread, while_down, by_name], "nothing acknowledged was lost");

    // Clean shutdown on stdin close.
    for bridge in [alice, bob, carol] {
        assert!(bridge.close().await?.success());
    }

    // The broker's files hold ciphertext only.
    broker.kill().await?;
    let stored = String::from_utf8_lossy(&broker.stored_bytes()).into_owned();
    assert!(stored.contains(&mesh_id), "sanity: the broker's database was read");
    for text in [hello, reply, to_group, to_all, unread, while_down, by_name] {
        assert!(!stored.contains(text), "plaintext {text:?} found in the broker's files");
    }
    assert!(!stored.contains("e2e-plaintext"), "no plaintext fragment in the broker's files");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridges_share_state_and_memory_that_the_broker_never_reads() -> Result<()> {
    let mut broker = Broker::start_logged().await?;
    let (mesh, link) = broker.mesh_with_invite("workspace", 2)?;
    let mesh_id = mesh["id"].as_str().expect("mesh id").to_owned();
    let (alice_dev, bob_dev) = (Device::new()?, Device::new()?);
    alice_dev.join(&link, "alice")?;
    bob_dev.join(&link, "bob")?;
    let mut alice = alice_dev.bridge().await?;
    let mut bob = bob_dev.bridge().await?;

    // A lock: alice takes it, bob is told who holds it and at which version.
    let value = json!({"owner": "alice", "ticket": "e2e-state-secret"});
    let taken = alice.call("set_state", json!({"name": "lock/deploy", "value": value, "expected_version": 0})).await?;
    assert_eq!(taken["version"], 1, "{taken}");
    let refused =
        bob.call_error("set_state", json!({"name": "lock/deploy", "value": "bob", "expected_version": 0})).await?;
    assert!(refused.contains("at version 1"), "{refused}");
    let read = bob.call("get_state", json!({"name": "lock/deploy"})).await?;
    assert_eq!(read["entry"]["value"], value);
    assert_eq!(read["entry"]["writtenBy"], "alice");
    assert!(read["note"].as_str().is_some_and(|n| n.contains("not instructions")), "{read}");

    // Bob follows `board/`: a change there reaches him like a message, one elsewhere does not.
    bob.call("watch_state", json!({"prefix": "board/"})).await?;
    alice.call("set_state", json!({"name": "other/x", "value": 1})).await?;
    alice.call("set_state", json!({"name": "board/alice", "value": "reviewing e2e-board-secret"})).await?;
    let pushed = bob
        .notification(WAIT, |n| n.method == "notifications/claude/channel" && n.params["meta"]["kind"] == "state")
        .await
        .expect("a state change reaches the watching session");
    assert_eq!(pushed.params["meta"]["to"], "board/alice");
    assert_eq!(pushed.params["meta"]["from_name"], "alice");
    assert!(pushed.params["content"].as_str().is_some_and(|c| c.contains("reviewing")), "{:?}", pushed.params);
    let elsewhere = bob.notification(Duration::from_millis(300), |n| n.params["meta"]["to"] == "other/x").await;
    assert!(elsewhere.is_none(), "a change bob does not watch stays away");
    let board = bob.call("list_state", json!({"prefix": "board/"})).await?;
    assert_eq!(board["entries"].as_array().map(Vec::len), Some(1), "{board}");

    // Released with the version held.
    let released = alice.call("delete_state", json!({"name": "lock/deploy", "expected_version": 1})).await?;
    assert_eq!(released["deletedVersion"], 1);

    // Memory: remembered by one, recalled by the other, forgotten for both.
    let remembered = alice
        .call(
            "remember",
            json!({"text": "the e2e-memory-secret staging database listens on port 5433", "tags": ["infra"]}),
        )
        .await?;
    let id = remembered["id"].as_str().expect("an id").to_owned();
    let recalled = bob.call("recall", json!({"query": "staging port", "tags": ["infra"]})).await?;
    let memories = recalled["memories"].as_array().expect("memories");
    assert_eq!(memories.len(), 1, "{recalled}");
    assert_eq!(memories[0]["rememberedBy"], "alice");
    assert!(memories[0]["text"].as_str().is_some_and(|t| t.contains("5433")));
    bob.call("forget", json!({"id": id})).await?;
    let after = alice.call("recall", json!({"query": "staging"})).await?;
    assert_eq!(after["memories"], json!([]), "{after}");

    for bridge in [alice, bob] {
        assert!(bridge.close().await?.success());
    }
    // Neither the broker's files nor its log (at debug) hold a name, value or memory.
    let log = broker.log()?;
    broker.kill().await?;
    let stored = String::from_utf8_lossy(&broker.stored_bytes()).into_owned();
    assert!(stored.contains(&mesh_id), "sanity: the broker's database was read");
    assert!(log.contains("DEBUG"), "sanity: the log is at debug");
    for secret in ["lock/deploy", "e2e-state-secret", "board/alice", "e2e-board-secret", "e2e-memory-secret", "staging"]
    {
        assert!(!stored.contains(secret), "{secret:?} found in the broker's files");
        assert!(!log.contains(secret), "{secret:?} found in the broker's log");
    }
    Ok(())
}
