//! Presence through a real broker: events, saved state, peer lists.

mod common;

use std::time::Duration;

use broker_core::config::BrokerConfig;
use broker_core::protocol::{ClientFrame, PeerType, Priority, ServerFrame, Stats, Status, StatusSource};
use common::{RawSocket, TestBroker, signed_hello};

#[tokio::test]
async fn join_and_leave_events_skip_the_members_own_sessions() {
    let broker = TestBroker::start().await;
    let (mesh, members) = broker.mesh("acme", &["alice", "bob"]);
    let mut alice = broker.connect(&mesh, &members[0], "alice").await;
    // Alice's second session is not announced to her first one…
    let mut alice_second = broker.connect(&mesh, &members[0], "alice-2").await;
    // …but bob's is, to both.
    let bob = broker.connect(&mesh, &members[1], "bob").await;
    let joined = alice.system_event("peer_joined").await;
    assert_eq!(joined["name"], "bob", "the first join alice hears of is bob's");
    assert_eq!(joined["pubkey"], bob.client.session_pubkey());
    assert_eq!(joined["memberPubkey"], members[1].key.public_hex());
    assert_eq!(alice_second.system_event("peer_joined").await["name"], "bob");

    bob.client.shutdown().await;
    assert_eq!(alice.system_event("peer_left").await["name"], "bob");
    assert_eq!(alice_second.system_event("peer_left").await["name"], "bob");

    // Alice's second session leaving is not announced to her first one.
    alice_second.client.shutdown().await;
    let events = alice.system_events_within(Duration::from_millis(300)).await;
    assert!(events.is_empty(), "own session events leaked: {events:?}");
}

#[tokio::test]
async fn a_returning_member_gets_its_state_back_and_others_see_peer_returned() {
    let broker = TestBroker::start().await;
    let (mesh, members) = broker.mesh("acme", &["alice", "bob"]);
    let mut alice = broker.connect(&mesh, &members[0], "alice").await;

    let bob = broker.connect(&mesh, &members[1], "bob").await;
    assert_eq!(bob.hello_ack.restored, None, "first session: nothing to restore");
    bob.client.set_summary("refactoring the parser").await.expect("summary");
    bob.client.join_group("backend", Some("lead")).await.expect("join");
    bob.client.list_peers().await.expect("round trip");
    bob.client.shutdown().await;
    alice.system_event("peer_left").await;

    let mut config = broker.client_config(&mesh, &members[1], "bob");
    config.profile.groups.clear();
    let bob = common::Peer::connect(config).await;
    let ack = &bob.hello_ack;
    assert_eq!(ack.restored, Some(true));
    assert_eq!(ack.last_summary.as_deref(), Some("refactoring the parser"));
    assert!(ack.last_seen_at.is_some());
    let groups = ack.restored_groups.clone().expect("groups");
    assert_eq!(groups[0].name, "backend");
    assert_eq!(groups[0].role.as_deref(), Some("lead"));

    let returned = alice.system_event("peer_returned").await;
    assert_eq!(returned["name"], "bob");
    assert_eq!(returned["summary"], "refactoring the parser");
    assert!(returned["lastSeenAt"].is_string());

    // Restored groups are live: a group message reaches bob.
    let mut bob = bob;
    alice.client.send("@backend", b"ping", Priority::Now).await.expect("queued");
    assert_eq!(bob.message().await.text().as_deref(), Some("ping"));
}

#[tokio::test]
async fn peers_list_shows_every_session_with_its_metadata() {
    let broker = TestBroker::start().await;
    let (mesh, members) = broker.mesh("acme", &["alice", "bob"]);
    let alice = broker.connect(&mesh, &members[0], "alice").await;
    let bob = broker.connect(&mesh, &members[1], "bob").await;
    bob.client.set_summary("writing tests").await.expect("summary");
    bob.client.set_status(Status::Working, StatusSource::Manual).await.expect("status");
    bob.client.join_group("qa", None).await.expect("join");
    bob.client.list_peers().await.expect("round trip");

    let peers = alice.client.list_peers().await.expect("peers").peers;
    assert_eq!(peers.len(), 2);
    assert_eq!(peers[0].display_name, "alice", "ordered by connection time");
    let bob_info = peers.iter().find(|p| p.display_name == "bob").expect("bob listed");
    assert_eq!(bob_info.pubkey, bob.client.session_pubkey());
    assert_eq!(bob_info.member_pubkey, members[1].key.public_hex());
    assert!(bob_info.session_sig.is_some(), "session binding shown for peers to verify");
    assert_eq!(bob_info.status, Status::Working);
    assert_eq!(bob_info.summary.as_deref(), Some("writing tests"));
    assert_eq!(bob_info.groups[0].name, "qa");
    assert_eq!(bob_info.cwd, "/work/project");
    assert_eq!(bob_info.hostname.as_deref(), Some("testhost"));
    assert_eq!(bob_info.pid, Some(std::process::id()));
    assert_eq!(bob_info.peer_type, Some(PeerType::Ai));
    assert_eq!(bob_info.channel.as_deref(), Some("claude-code"));
    assert_eq!(bob_info.model.as_deref(), Some("test-model"));
    assert_eq!(bob_info.session_id, "session-bob");
    assert!(bob_info.connected_at.ends_with('Z'));
}

#[tokio::test]
async fn reported_stats_show_in_peers_list_and_accumulate_across_sessions() {
    let config = BrokerConfig::default();
    let broker = TestBroker::start_with(config).await;
    let (mesh, members) = broker.mesh("acme", &["alice", "bob"]);
    let alice = broker.connect(&mesh, &members[0], "alice").await;

    // A raw set_stats, as the client sends every minute.
    for expected_total in [7, 14] {
        let mut config = broker.client_config(&mesh, &members[1], "bob");
        config.stats_interval = Duration::from_millis(100);
        let bob = common::Peer::connect(config).await;
        if expected_total == 14 {
            assert_eq!(bob.hello_ack.restored_stats.map(|s| s.tool_calls), Some(7));
        }
        bob.client.stats().tool_calls.store(7, std::sync::atomic::Ordering::Relaxed);
        let deadline = tokio::time::Instant::now() + common::WAIT;
        loop {
            let peers = alice.client.list_peers().await.expect("peers").peers;
            let stats: Option<Stats> = peers.iter().find(|p| p.display_name == "bob").and_then(|p| p.stats);
            if stats.map(|s| s.tool_calls) == Some(7) {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "stats never showed up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bob.client.shutdown().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let bob = broker.connect(&mesh, &members[1], "bob").await;
    assert_eq!(bob.hello_ack.restored_stats.map(|s| s.tool_calls), Some(14));
}

#[tokio::test]
async fn mail_for_a_vanished_session_goes_to_its_member_after_the_grace() {
    let config = BrokerConfig { session_rebind_grace: Duration::from_millis(600), ..BrokerConfig::default() };
    let broker = TestBroker::start_with(config).await;
    let (mesh, members) = broker.mesh("acme", &["alice", "bob"]);
    let alice = broker.connect(&mesh, &members[0], "alice").await;
    // Bob's first process: its socket simply vanishes (killed: no close frame).
    let hello = common::signed_hello(&mesh, &members[1], broker_core::protocol::now_ms());
    let old_session = hello.session_pubkey.clone().expect("session key");
    let mut socket = common::RawSocket::connect(&broker.ws_url()).await;
    socket.send_frame(&ClientFrame::Hello(hello)).await;
    assert!(matches!(socket.next().await, Ok(ServerFrame::HelloAck(_))));
    drop(socket);
    tokio::time::sleep(Duration::from_millis(100)).await;
    alice.client.send(&old_session, b"are you there?", Priority::Next).await.expect("queued for the session");

    // A new process of bob's gets it once the old session's grace is over.
    let mut bob = broker.connect(&mesh, &members[1], "bob").await;
    let started = tokio::time::Instant::now();
    assert_eq!(bob.message().await.text().as_deref(), Some("are you there?"));
    assert!(started.elapsed() >= Duration::from_millis(200), "waited for the old session first");
}

#[tokio::test]
async fn shutdown_closes_sessions_with_1001_and_their_state_is_restored_after_restart() {
    let broker = TestBroker::start().await;
    let (mesh, members) = broker.mesh("acme", &["alice"]);
    let mut alice = broker.connect(&mesh, &members[0], "alice").await;
    alice.client.set_summary("halfway through the migration").await.expect("summary");
    alice.client.list_peers().await.expect("round trip");

    let broker = broker.restart(BrokerConfig::default()).await;
    let reason = loop {
        match tokio::time::timeout(common::WAIT, alice.events.recv()).await.expect("in time").expect("events") {
            broker_core::client::ClientEvent::Disconnected { reason } => break reason,
            _ => continue,
        }
    };
    assert!(reason.contains("1001"), "closed as going away: {reason}");
    // The client reconnects on its own and finds its state again.
    let ack = loop {
        match tokio::time::timeout(common::WAIT, alice.events.recv()).await.expect("in time").expect("events") {
            broker_core::client::ClientEvent::Connected(ack) => break ack,
            _ => continue,
        }
    };
    assert_eq!(ack.restored, Some(true));
    assert_eq!(ack.last_summary.as_deref(), Some("halfway through the migration"));
    drop(broker);
}

/// A member opening many sessions with the largest metadata allowed.
async fn bloated_sessions(
    broker: &TestBroker,
    mesh: &str,
    member: &common::TestMember,
    count: usize,
) -> Vec<RawSocket> {
    let mut sockets = Vec::new();
    for n in 0..count {
        let mut hello = signed_hello(mesh, member, broker_core::protocol::now_ms());
        hello.display_name = Some(format!("{n:0>128}"));
        hello.cwd = Some("/".repeat(1024));
        hello.hostname = Some("h".repeat(1024));
        hello.model = Some("m".repeat(1024));
        let mut socket = RawSocket::connect(&broker.ws_url()).await;
        socket.send_frame(&ClientFrame::Hello(hello)).await;
        assert!(matches!(socket.next().await, Ok(ServerFrame::HelloAck(_))));
        sockets.push(socket);
    }
    sockets
}

#[tokio::test]
async fn one_member_with_many_large_sessions_cannot_break_the_peer_list() {
    // A small frame limit stands for many more sessions of this size.
    let config = BrokerConfig { max_frame_bytes: 32 * 1024, ..BrokerConfig::default() };
    let broker = TestBroker::start_with(config).await;
    let (mesh, members) = broker.mesh("acme", &["alice", "bob", "mallory"]);
    let alice = broker.connect(&mesh, &members[0], "alice").await;
    let _bob = broker.connect(&mesh, &members[1], "bob").await;
    let _mallory = bloated_sessions(&broker, &mesh, &members[2], 20).await;

    let listing = alice.client.list_peers().await.expect("the list still arrives");
    let names: Vec<&str> = listing.peers.iter().map(|p| p.display_name.as_str()).collect();
    assert!(names.contains(&"alice") && names.contains(&"bob"), "{names:?}");
    assert!(listing.peers.len() < 22 && listing.peers.len() + listing.omitted == 22, "{names:?}");
    let encoded = serde_json::to_string(&listing.peers).expect("json").len();
    assert!(encoded < 32 * 1024, "{encoded} bytes");
}

#[tokio::test]
async fn a_client_that_asks_and_never_reads_is_closed_with_1013() {
    let config = BrokerConfig { outbox_bytes: 256 * 1024, ..BrokerConfig::default() };
    let broker = TestBroker::start_with(config).await;
    let (mesh, members) = broker.mesh("acme", &["alice", "mallory"]);
    let _sessions = bloated_sessions(&broker, &mesh, &members[1], 8).await;
    let alice = broker.connect(&mesh, &members[0], "alice").await;

    // Tens of megabytes of replies asked for, none read until the end.
    let mut greedy = RawSocket::connect(&broker.ws_url()).await;
    greedy.send_frame(&ClientFrame::Hello(signed_hello(&mesh, &members[1], broker_core::protocol::now_ms()))).await;
    for _ in 0..2000 {
        let list = ClientFrame::ListPeers(broker_core::protocol::ListPeers { req_id: None });
        if !greedy.try_send_frame(&list).await {
            break;
        }
    }
    let close = loop {
        match greedy.next().await {
            Ok(_) => continue,
            Err(close) => break close,
        }
    };
    assert_eq!(close, Some(1013));
    // Everyone else carries on.
    assert!(alice.client.list_peers().await.is_ok());
}

#[tokio::test]
async fn sessions_that_follow_peers_hear_every_profile_change_and_no_one_else_does() {
    let config = BrokerConfig { status_ttl: Duration::from_millis(400), ..BrokerConfig::default() };
    let broker = TestBroker::start_with(config).await;
    let (mesh, members) = broker.mesh("acme", &["alice", "bob", "carol"]);
    let mut follower = broker.client_config(&mesh, &members[0], "alice");
    follower.peer_updates = true;
    let mut alice = common::Peer::connect(follower).await;
    let mut carol = broker.connect(&mesh, &members[2], "carol").await;
    let mut bob_config = broker.client_config(&mesh, &members[1], "bob");
    bob_config.stats_interval = Duration::from_millis(100);
    let bob = common::Peer::connect(bob_config).await;
    alice.system_event("peer_joined").await;

    bob.client.set_summary("reviewing #42").await.expect("summary");
    let updated = alice.system_event("peer_updated").await;
    assert_eq!(updated["displayName"], "bob");
    assert_eq!(updated["pubkey"], bob.client.session_pubkey());
    assert_eq!(updated["summary"], "reviewing #42");

    bob.client.join_group("qa", Some("lead")).await.expect("join");
    assert_eq!(alice.system_event("peer_updated").await["groups"][0]["name"], "qa");

    // A status from a hook, then its decay after the status TTL: both are changes.
    bob.client.set_status(Status::Working, StatusSource::Hook).await.expect("status");
    assert_eq!(alice.system_event("peer_updated").await["status"], "working");
    assert_eq!(alice.system_event("peer_updated").await["status"], "idle", "the decay is a change too");

    bob.client.stats().tool_calls.store(3, std::sync::atomic::Ordering::Relaxed);
    loop {
        let updated = alice.system_event("peer_updated").await;
        if updated["stats"]["toolCalls"] == 3 {
            break;
        }
    }

    // The same summary again changes nothing.
    bob.client.set_summary("reviewing #42").await.expect("summary");
    bob.client.list_peers().await.expect("round trip");
    let events = alice.system_events_within(Duration::from_millis(300)).await;
    assert!(!events.iter().any(|e| e == "peer_updated"), "an unchanged profile was announced: {events:?}");
    // Carol did not ask: she hears none of it.
    let events = carol.system_events_within(Duration::from_millis(100)).await;
    assert!(!events.iter().any(|e| e == "peer_updated"), "carol was told without asking: {events:?}");
}

#[tokio::test]
async fn list_members_shows_every_active_member_and_who_is_online() {
    let broker = TestBroker::start().await;
    let (mesh, members) = broker.mesh("acme", &["alice", "bob", "carol"]);
    let alice = broker.connect(&mesh, &members[0], "alice").await;
    let bob = broker.connect(&mesh, &members[1], "bob").await;
    let listed = alice.client.list_members().await.expect("members");
    let seen: Vec<(&str, bool)> = listed.iter().map(|m| (m.display_name.as_str(), m.online)).collect();
    assert_eq!(seen, [("alice", true), ("bob", true), ("carol", false)]);
    assert_eq!(listed[2].pubkey, members[2].key.public_hex());

    bob.client.shutdown().await;
    let deadline = tokio::time::Instant::now() + common::WAIT;
    while alice.client.list_members().await.expect("members")[1].online {
        assert!(tokio::time::Instant::now() < deadline, "bob stayed online");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
