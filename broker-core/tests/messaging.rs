//! Sending and durable delivery through a real broker: direct, group, broadcast, offline
//! recipients, re-delivery, priorities, and every refusal.

mod common;

use std::time::Duration;

use broker_core::client::ClientError;
use broker_core::config::BrokerConfig;
use broker_core::config::RateLimit;
use broker_core::protocol::{self, ClientFrame, Priority, Role, SendRejection, ServerFrame, Status, StatusSource};
use broker_core::store::{NewMember, Store};
use common::{Peer, RawSocket, TestBroker, signed_hello};

fn generous() -> BrokerConfig {
    BrokerConfig {
        rate_limit: RateLimit { burst: 10_000, per_minute: 600_000 },
        pair_limits: no_pair_breaker(),
        ..BrokerConfig::default()
    }
}

/// Pair limits no test that is about something else reaches.
fn no_pair_breaker() -> broker_core::config::PairLimits {
    broker_core::config::PairLimits { burst: 10_000, per_minute: 600_000, loop_turns: 10_000, loop_gap_seconds: 60 }
}

#[tokio::test]
async fn direct_message_by_member_key_and_by_session_key() {
    let broker = TestBroker::start_with(generous()).await;
    let (mesh, members) = broker.mesh("acme", &["alice", "bob"]);
    let alice = broker.connect(&mesh, &members[0], "alice").await;
    let mut bob = broker.connect(&mesh, &members[1], "bob").await;

    let receipt = alice.client.send(&members[1].key.public_hex(), b"hello bob", Priority::Next).await.expect("queued");
    assert_eq!(receipt.recipients, 1);
    let message = bob.message().await;
    assert_eq!(message.text().as_deref(), Some("hello bob"));
    assert_eq!(message.message_id, receipt.message_id);
    assert_eq!(message.sender_pubkey, alice.client.session_pubkey());
    assert_eq!(message.sender_member_pubkey.as_deref(), Some(members[0].key.public_hex().as_str()));
    assert!(message.verified, "the session binding verifies end to end");

    alice.client.send(&bob.client.session_pubkey(), b"to your session", Priority::Now).await.expect("queued");
    assert_eq!(bob.message().await.text().as_deref(), Some("to your session"));
}

#[tokio::test]
async fn the_sending_session_hears_a_receipt_once_each_recipient_stored_the_message() {
    let broker = TestBroker::start_with(generous()).await;
    let (mesh, members) = broker.mesh("acme", &["alice", "bob", "carol"]);
    let mut config = broker.client_config(&mesh, &members[0], "alice");
    config.delivery_receipts = true;
    let mut alice = Peer::connect(config).await;
    let mut bob = broker.connect(&mesh, &members[1], "bob").await;
    let mut carol = broker.connect(&mesh, &members[2], "carol").await;
    assert!(alice.hello_ack.capabilities.iter().any(|c| c == protocol::Capability::DeliveryReceipt.as_str()));
    assert!(!carol.hello_ack.capabilities.iter().any(|c| c == protocol::Capability::DeliveryReceipt.as_str()));

    // Direct: no receipt while bob has the push but has not acknowledged it.
    let sent = alice.client.send(&members[1].key.public_hex(), b"stored?", Priority::Now).await.expect("queued");
    let pushed = bob.message_unacknowledged().await;
    assert_eq!(pushed.message_id, sent.message_id);
    let early = tokio::time::timeout(Duration::from_millis(200), alice.receipt()).await;
    assert!(early.is_err(), "a receipt before the recipient acknowledged: {early:?}");
    bob.client.acknowledge(vec![pushed.message_id.clone()]).await.expect("ack");
    assert_eq!(alice.receipt().await, (sent.message_id.clone(), members[1].key.public_hex()));

    // Broadcast: one receipt per recipient member.
    let sent = alice.client.send("*", b"everyone", Priority::Now).await.expect("queued");
    assert_eq!(bob.message().await.message_id, sent.message_id);
    assert_eq!(carol.message().await.message_id, sent.message_id);
    let mut receipts = vec![alice.receipt().await, alice.receipt().await];
    receipts.sort();
    let mut expected =
        vec![(sent.message_id.clone(), members[1].key.public_hex()), (sent.message_id, members[2].key.public_hex())];
    expected.sort();
    assert_eq!(receipts, expected);

    // A session that did not ask for receipts gets none.
    let sent = carol.client.send(&members[1].key.public_hex(), b"no receipt", Priority::Now).await.expect("queued");
    assert_eq!(bob.message().await.message_id, sent.message_id);
    let none = tokio::time::timeout(Duration::from_millis(200), carol.receipt()).await;
    assert!(none.is_err(), "a receipt nobody asked for: {none:?}");
}

#[tokio::test]
async fn group_and_broadcast_reach_the_right_members_sealed() {
    let broker = TestBroker::start_with(generous()).await;
    let (mesh, members) = broker.mesh("acme", &["alice", "bob", "carol", "dave"]);
    let alice = broker.connect(&mesh, &members[0], "alice").await;
    let mut bob = broker.connect(&mesh, &members[1], "bob").await;
    let mut carol = broker.connect(&mesh, &members[2], "carol").await;
    let mut dave = broker.connect(&mesh, &members[3], "dave").await;
    bob.client.join_group("backend", Some("lead")).await.expect("join");
    carol.client.join_group("backend/db", None).await.expect("join");
    // Make sure the joins landed before resolving the group.
    bob.client.list_peers().await.expect("round trip");
    carol.client.list_peers().await.expect("round trip");

    let receipt = alice.client.send("@backend", b"deploy at 5", Priority::Next).await.expect("queued");
    assert_eq!(receipt.recipients, 2);
    assert_eq!(bob.message().await.text().as_deref(), Some("deploy at 5"));
    assert_eq!(carol.message().await.text().as_deref(), Some("deploy at 5"));
    dave.no_message_within(Duration::from_millis(300)).await;

    let receipt = alice.client.send("*", b"lunch?", Priority::Low).await.expect("queued");
    assert_eq!(receipt.recipients, 3);
    for peer in [&mut bob, &mut carol, &mut dave] {
        let message = peer.message().await;
        assert_eq!(message.text().as_deref(), Some("lunch?"));
        assert_eq!(message.target_spec.as_deref(), Some("*"));
    }
}

#[tokio::test]
async fn an_offline_member_gets_its_messages_when_it_connects() {
    let broker = TestBroker::start_with(generous()).await;
    let (mesh, members) = broker.mesh("acme", &["alice", "bob", "carol"]);
    let alice = broker.connect(&mesh, &members[0], "alice").await;
    // Bob has never connected; carol joined @ops in an earlier session.
    let carol = broker.connect(&mesh, &members[2], "carol").await;
    carol.client.join_group("ops", None).await.expect("join");
    carol.client.list_peers().await.expect("round trip");
    carol.client.shutdown().await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    for n in 0..5 {
        alice
            .client
            .send(&members[1].key.public_hex(), format!("dm {n}").as_bytes(), Priority::Next)
            .await
            .expect("queued");
    }
    alice.client.send("@ops", b"ops page", Priority::Now).await.expect("queued for offline group member");
    alice.client.send("*", b"everyone", Priority::Next).await.expect("queued");

    let mut bob = broker.connect(&mesh, &members[1], "bob").await;
    let mut texts = Vec::new();
    for _ in 0..6 {
        texts.push(bob.message().await.text().expect("opens"));
    }
    assert_eq!(texts, ["dm 0", "dm 1", "dm 2", "dm 3", "dm 4", "everyone"]);

    let mut carol = broker.connect(&mesh, &members[2], "carol").await;
    let mut carol_texts =
        vec![carol.message().await.text().expect("opens"), carol.message().await.text().expect("opens")];
    carol_texts.sort();
    assert_eq!(carol_texts, ["everyone", "ops page"]);
}

#[tokio::test]
async fn an_unacknowledged_push_comes_again_after_a_reconnect_and_is_deduplicated() {
    let broker = TestBroker::start_with(generous()).await;
    let (mesh, members) = broker.mesh("acme", &["alice", "bob"]);
    let alice = broker.connect(&mesh, &members[0], "alice").await;
    let bob_config = broker.client_config(&mesh, &members[1], "bob");

    let mut bob = common::Peer::connect(bob_config.clone()).await;
    let receipt =
        alice.client.send(&members[1].key.public_hex(), "важно".as_bytes(), Priority::Next).await.expect("queued");
    let first = bob.message_unacknowledged().await;
    assert_eq!(first.message_id, receipt.message_id);
    // Bob's process dies before it stores the message (no acknowledgement, no clean close).
    drop(bob);
    tokio::time::sleep(Duration::from_millis(100)).await;

    let mut bob = common::Peer::connect(bob_config).await;
    let again = bob.message().await;
    assert_eq!(again.message_id, first.message_id, "same id: a client de-duplicates it");
    assert_eq!(again.text().as_deref(), Some("важно"));
    bob.no_message_within(Duration::from_millis(300)).await;

    // Once acknowledged, it is gone from the broker's queue.
    tokio::time::sleep(Duration::from_millis(100)).await;
    broker_core::store::Store::flush(broker.store.as_ref()).expect("flush");
    assert_eq!(broker.store.queue_depth().expect("depth"), 0);
}

#[tokio::test]
async fn send_refusals_are_honest() {
    // The member's own limit is under test here, not the pair breaker's.
    let config = BrokerConfig { max_message_bytes: 1024, pair_limits: no_pair_breaker(), ..BrokerConfig::default() };
    let broker = TestBroker::start_with(config).await;
    let (mesh, members) = broker.mesh("acme", &["alice", "bob"]);
    let alice = broker.connect(&mesh, &members[0], "alice").await;

    let refused = |result: Result<_, ClientError>| match result {
        Err(ClientError::Rejected { reason, message }) => (reason, message),
        other => panic!("expected a refusal, got {other:?}"),
    };

    // Unknown key.
    let (reason, _) = refused(alice.client.send(&"ab".repeat(32), b"x", Priority::Next).await);
    assert_eq!(reason, Some(SendRejection::UnknownRecipient));
    // Yourself, with no other session.
    let (reason, message) = refused(alice.client.send(&members[0].key.public_hex(), b"x", Priority::Next).await);
    assert_eq!(reason, Some(SendRejection::NoRecipient), "{message}");
    // Too large: refused before anything is queued.
    let (reason, message) =
        refused(alice.client.send(&members[1].key.public_hex(), &[b'x'; 2000], Priority::Next).await);
    assert_eq!(reason, Some(SendRejection::TooLarge));
    assert!(message.starts_with("too_large:"), "{message}");
    // An empty group.
    let (reason, message) = refused(alice.client.send("@nobody", b"x", Priority::Next).await);
    assert_eq!(reason, Some(SendRejection::NoRecipient), "{message}");
    assert_eq!(broker.store.queue_depth().expect("depth"), 0);

    // Rate limit: the burst is 10. Of the refusals above only the send to yourself reached the
    // rate limiter: the unknown key and the empty group were refused when the client resolved
    // them, and the size check comes first.
    let bob = members[1].key.public_hex();
    let mut limited = None;
    for n in 0..10 {
        if let Err(error) = alice.client.send(&bob, b"spam", Priority::Next).await {
            limited = Some((n, error));
            break;
        }
    }
    let (n, error) = limited.expect("rate limited within the burst");
    assert_eq!(n, 9, "1 token was spent on a refused send");
    let (reason, message) = refused(Err(error));
    assert_eq!(reason, Some(SendRejection::RateLimit));
    assert!(message.contains("60 msg/min"), "{message}");

    // Reconnecting does not reset the bucket (it is per member).
    alice.client.shutdown().await;
    let alice = broker.connect(&mesh, &members[0], "alice-again").await;
    let (reason, _) = refused(alice.client.send(&bob, b"again", Priority::Next).await);
    assert_eq!(reason, Some(SendRejection::RateLimit));
}

#[tokio::test]
async fn malformed_sends_get_a_malformed_ack() {
    let broker = TestBroker::start().await;
    let (mesh, members) = broker.mesh("acme", &["alice", "bob"]);
    let mut socket = RawSocket::connect(&broker.ws_url()).await;
    socket.send_frame(&ClientFrame::Hello(signed_hello(&mesh, &members[0], protocol::now_ms()))).await;
    assert!(matches!(socket.next().await, Ok(ServerFrame::HelloAck(_))));
    let send = protocol::Send {
        id: Some("1".into()),
        target_spec: "*".into(),
        enc: Some(protocol::Enc::Multi),
        ..protocol::Send::default()
    };
    socket.send_frame(&ClientFrame::Send(send)).await;
    loop {
        match socket.next().await {
            Ok(ServerFrame::Ack(ack)) => {
                assert!(!ack.queued);
                assert!(ack.error.expect("error").starts_with("malformed:"));
                break;
            }
            Ok(_) => continue,
            Err(code) => panic!("closed {code:?}"),
        }
    }
}

#[tokio::test]
async fn priorities_wait_for_idle_and_now_does_not() {
    let config = BrokerConfig { status_ttl: Duration::from_millis(600), ..generous() };
    let broker = TestBroker::start_with(config).await;
    let (mesh, members) = broker.mesh("acme", &["alice", "bob"]);
    let alice = broker.connect(&mesh, &members[0], "alice").await;
    let mut bob = broker.connect(&mesh, &members[1], "bob").await;
    let bob_key = members[1].key.public_hex();

    bob.client.set_status(Status::Working, StatusSource::Hook).await.expect("status");
    bob.client.list_peers().await.expect("round trip");
    alice.client.send(&bob_key, b"next", Priority::Next).await.expect("queued");
    alice.client.send(&bob_key, b"low", Priority::Low).await.expect("queued");
    alice.client.send(&bob_key, b"now", Priority::Now).await.expect("queued");
    assert_eq!(bob.message().await.text().as_deref(), Some("now"), "now bypasses working");
    bob.no_message_within(Duration::from_millis(200)).await;

    // The hook says the turn ended: held messages are released in order.
    bob.client.set_status(Status::Idle, StatusSource::Hook).await.expect("status");
    assert_eq!(bob.message().await.text().as_deref(), Some("next"));
    assert_eq!(bob.message().await.text().as_deref(), Some("low"));

    // DND holds next too, and a hook cannot clear it.
    bob.client.set_status(Status::Dnd, StatusSource::Manual).await.expect("status");
    bob.client.list_peers().await.expect("round trip");
    alice.client.send(&bob_key, b"later", Priority::Next).await.expect("queued");
    bob.client.set_status(Status::Idle, StatusSource::Hook).await.expect("status");
    bob.no_message_within(Duration::from_millis(300)).await;
    bob.client.set_status(Status::Idle, StatusSource::Manual).await.expect("status");
    assert_eq!(bob.message().await.text().as_deref(), Some("later"));

    // Working decays to idle after the TTL, releasing what it held.
    bob.client.set_status(Status::Working, StatusSource::Hook).await.expect("status");
    bob.client.list_peers().await.expect("round trip");
    alice.client.send(&bob_key, b"after the ttl", Priority::Next).await.expect("queued");
    let started = tokio::time::Instant::now();
    assert_eq!(bob.message().await.text().as_deref(), Some("after the ttl"));
    assert!(started.elapsed() >= Duration::from_millis(300), "held until the TTL decayed");
}

#[tokio::test]
async fn a_members_other_sessions_reach_each_other_and_get_its_broadcasts() {
    let broker = TestBroker::start_with(generous()).await;
    let (mesh, members) = broker.mesh("acme", &["alice", "bob"]);
    // Two Claude Code sessions of the same member on one machine.
    let mut front = broker.connect(&mesh, &members[0], "alice-frontend").await;
    let mut back = broker.connect(&mesh, &members[0], "alice-backend").await;
    let mut bob = broker.connect(&mesh, &members[1], "bob").await;

    front.client.send(&back.client.session_pubkey(), b"sibling dm", Priority::Next).await.expect("queued");
    assert_eq!(back.message().await.text().as_deref(), Some("sibling dm"));

    front.client.send("*", b"to all", Priority::Next).await.expect("queued");
    assert_eq!(back.message().await.text().as_deref(), Some("to all"));
    assert_eq!(bob.message().await.text().as_deref(), Some("to all"));
    front.no_message_within(Duration::from_millis(300)).await;

    // Your own session key is refused, not delivered to yourself.
    match front.client.send(&front.client.session_pubkey(), b"me", Priority::Next).await {
        Err(ClientError::Rejected { reason, .. }) => assert_eq!(reason, Some(SendRejection::NoRecipient)),
        other => panic!("expected no_recipient, got {other:?}"),
    }
}

#[tokio::test]
async fn a_session_that_says_goodbye_hands_its_mail_to_the_members_next_session() {
    let broker = TestBroker::start_with(generous()).await;
    let (mesh, members) = broker.mesh("acme", &["alice", "bob"]);
    let alice = broker.connect(&mesh, &members[0], "alice").await;
    let bob = broker.connect(&mesh, &members[1], "bob").await;
    let bob_session = bob.client.session_pubkey();
    // Bob's bridge restarts: the old process closes cleanly…
    bob.client.shutdown().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    // …while alice still addresses the session key she saw.
    alice.client.send(&bob_session, b"for the old session", Priority::Next).await.expect("queued");

    let mut bob = broker.connect(&mesh, &members[1], "bob").await;
    assert_eq!(bob.message().await.text().as_deref(), Some("for the old session"));
}

#[tokio::test]
async fn a_new_member_added_by_another_process_is_reachable_at_once() {
    let broker = TestBroker::start_with(generous()).await;
    let (mesh, members) = broker.mesh("acme", &["alice"]);
    let alice = broker.connect(&mesh, &members[0], "alice").await;
    // Added after the mesh was loaded (as an operator command would).
    let carol = broker.add_member(&mesh, "carol", Role::Member);
    alice.client.send(&carol.key.public_hex(), b"welcome", Priority::Next).await.expect("queued");
    let mut carol = broker.connect(&mesh, &carol, "carol").await;
    assert_eq!(carol.message().await.text().as_deref(), Some("welcome"));
}

#[tokio::test]
async fn a_member_that_leaves_is_refused_afterwards() {
    let broker = TestBroker::start_with(generous()).await;
    let (mesh, members) = broker.mesh("acme", &["alice", "bob"]);
    let alice = broker.connect(&mesh, &members[0], "alice").await;
    let bob = broker.connect(&mesh, &members[1], "bob").await;
    let member_id = bob.client.leave_mesh().await.expect("leaves");
    assert_eq!(member_id, members[1].record.id);
    match alice.client.send(&members[1].key.public_hex(), b"still there?", Priority::Next).await {
        Err(ClientError::Rejected { reason, .. }) => assert_eq!(reason, Some(SendRejection::UnknownRecipient)),
        other => panic!("expected unknown_recipient, got {other:?}"),
    }
    let mut socket = RawSocket::connect(&broker.ws_url()).await;
    socket.send_frame(&ClientFrame::Hello(signed_hello(&mesh, &members[1], protocol::now_ms()))).await;
    match socket.next().await {
        Ok(ServerFrame::Error(e)) => assert_eq!(e.code, protocol::ErrorCode::Unauthorized, "{}", e.message),
        other => panic!("expected unauthorized, got {other:?}"),
    }
    let (entries, _) =
        broker_core::store::Store::audit_entries(broker.store.as_ref(), &mesh, Some("member_left"), 10, 0)
            .expect("audit");
    assert_eq!(entries.len(), 1);
}

#[tokio::test]
async fn a_full_window_of_held_messages_never_holds_back_now() {
    let config = BrokerConfig { member_window: 4, ..generous() };
    let broker = TestBroker::start_with(config).await;
    let (mesh, members) = broker.mesh("acme", &["alice", "bob"]);
    let alice = broker.connect(&mesh, &members[0], "alice").await;
    let mut bob = broker.connect(&mesh, &members[1], "bob").await;
    let bob_key = members[1].key.public_hex();
    bob.client.set_status(Status::Working, StatusSource::Hook).await.expect("status");
    bob.client.list_peers().await.expect("round trip");
    for n in 0..10 {
        alice.client.send(&bob_key, format!("held {n}").as_bytes(), Priority::Next).await.expect("queued");
    }
    alice.client.send(&bob_key, b"urgent", Priority::Now).await.expect("queued");
    assert_eq!(bob.message().await.text().as_deref(), Some("urgent"), "now goes out while next waits");
    bob.client.set_status(Status::Idle, StatusSource::Hook).await.expect("status");
    for n in 0..10 {
        assert_eq!(bob.message().await.text(), Some(format!("held {n}")), "in order, paged from the store");
    }
}

#[tokio::test]
async fn a_client_without_delivery_acks_gets_a_backlog_larger_than_the_window() {
    let config = BrokerConfig { member_window: 4, ..generous() };
    let broker = TestBroker::start_with(config).await;
    let (mesh, members) = broker.mesh("acme", &["alice", "bob"]);
    let alice = broker.connect(&mesh, &members[0], "alice").await;
    for n in 0..10 {
        alice
            .client
            .send(&members[1].key.public_hex(), format!("backlog {n}").as_bytes(), Priority::Next)
            .await
            .expect("queued");
    }
    // A reference client: no capabilities, so no `delivered` frames.
    let mut hello = signed_hello(&mesh, &members[1], protocol::now_ms());
    hello.capabilities.clear();
    hello.session_sig = None;
    hello.session_proof = None;
    hello.sign(&members[1].key);
    let mut socket = RawSocket::connect(&broker.ws_url()).await;
    socket.send_frame(&ClientFrame::Hello(hello)).await;
    let mut pushes = 0;
    while pushes < 10 {
        match socket.next().await {
            Ok(ServerFrame::Push(push)) if push.subtype.is_none() => pushes += 1,
            Ok(_) => {}
            Err(code) => panic!("closed {code:?} after {pushes} pushes"),
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(broker_core::store::Store::queue_depth(broker.store.as_ref()).expect("depth"), 0, "delivered on write");
}

#[tokio::test]
async fn a_member_with_an_unusable_key_is_skipped_and_the_rest_get_the_broadcast() {
    let broker = TestBroker::start_with(generous()).await;
    let (mesh, members) = broker.mesh("acme", &["alice", "bob"]);
    // A member stored before keys were checked at the door: the identity point, which no box
    // can be sealed to.
    let weak = format!("01{}", "00".repeat(31));
    let legacy = NewMember { pubkey: weak.clone(), display_name: "legacy".into(), ..NewMember::default() };
    broker.store.add_member(&mesh, &legacy, Role::Member, None, protocol::now_ms()).expect("stored");
    let alice = broker.connect(&mesh, &members[0], "alice").await;
    let mut bob = broker.connect(&mesh, &members[1], "bob").await;

    let receipt = alice.client.send("*", b"hello everyone", Priority::Now).await.expect("the others get it");
    assert_eq!(receipt.recipients, 1);
    assert_eq!(receipt.unusable, [weak]);
    assert!(receipt.uncovered.is_empty(), "{:?}", receipt.uncovered);
    assert_eq!(bob.message().await.text().as_deref(), Some("hello everyone"));
}

#[tokio::test]
async fn a_flood_to_one_peer_is_held_until_a_person_releases_it() {
    let limits = broker_core::config::PairLimits { burst: 3, per_minute: 1, loop_turns: 1000, loop_gap_seconds: 60 };
    let config = BrokerConfig { pair_limits: limits, ..generous() };
    let broker = TestBroker::start_with(config).await;
    let (mesh, members) = broker.mesh("acme", &["alice", "bob", "carol"]);
    let mut alice = broker.connect(&mesh, &members[0], "alice").await;
    let mut bob = broker.connect(&mesh, &members[1], "bob").await;
    let carol = broker.connect(&mesh, &members[2], "carol").await;
    let bob_key = members[1].key.public_hex();

    for n in 0..3 {
        alice.client.send(&bob_key, format!("note {n}").as_bytes(), Priority::Now).await.expect("within the budget");
    }
    match alice.client.send(&bob_key, b"one too many", Priority::Now).await {
        Err(ClientError::Rejected { reason: Some(SendRejection::Held), message }) => {
            assert!(message.contains("claudemesh release"), "says how to release: {message}")
        }
        other => panic!("expected held, got {other:?}"),
    }
    // Both members hear why; the sender's other targets and the other direction still flow.
    let held = bob.system_event("pair_held").await;
    assert_eq!(
        (held["fromName"].as_str(), held["toName"].as_str(), held["reason"].as_str()),
        (Some("alice"), Some("bob"), Some("budget"))
    );
    assert_eq!(alice.system_event("pair_held").await["reason"], "budget");
    alice.client.send(&members[2].key.public_hex(), b"hi carol", Priority::Now).await.expect("other pairs flow");
    bob.client.send(&members[0].key.public_hex(), b"hi alice", Priority::Now).await.expect("the other direction flows");
    // Held until released, however long it waits.
    assert!(matches!(
        alice.client.send(&bob_key, b"still?", Priority::Now).await,
        Err(ClientError::Rejected { reason: Some(SendRejection::Held), .. })
    ));

    assert!(alice.client.release_pair(&bob_key).await.expect("released"));
    assert_eq!(bob.system_event("pair_released").await["fromName"], "alice");
    alice.client.send(&bob_key, b"back to normal", Priority::Now).await.expect("flows again");
    assert!(!carol.client.release_pair(&bob_key).await.expect("answers"), "nothing held between carol and bob");
}

#[tokio::test]
async fn two_sessions_answering_each_other_in_a_loop_are_held_both_ways() {
    let limits = broker_core::config::PairLimits { burst: 1000, per_minute: 1000, loop_turns: 6, loop_gap_seconds: 60 };
    let config = BrokerConfig { pair_limits: limits, ..generous() };
    let broker = TestBroker::start_with(config).await;
    let (mesh, members) = broker.mesh("acme", &["alice", "bob"]);
    let alice = broker.connect(&mesh, &members[0], "alice").await;
    let mut bob = broker.connect(&mesh, &members[1], "bob").await;
    let (alice_key, bob_key) = (members[0].key.public_hex(), members[1].key.public_hex());
    let mut refused = None;
    for turn in 0..20 {
        let (from, to) = if turn % 2 == 0 { (&alice, &bob_key) } else { (&bob, &alice_key) };
        if let Err(error) = from.client.send(to, b"thanks! anything else?", Priority::Now).await {
            refused = Some((turn, error));
            break;
        }
    }
    let Some((turn, ClientError::Rejected { reason: Some(SendRejection::Held), message })) = refused else {
        panic!("the loop was never held: {refused:?}")
    };
    assert_eq!(turn, 6, "held on the sixth answer back");
    assert!(message.contains("loop"), "{message}");
    assert_eq!(bob.system_event("pair_held").await["reason"], "loop");
    for (from, to) in [(&alice, &bob_key), (&bob, &alice_key)] {
        assert!(matches!(
            from.client.send(to, b"?", Priority::Now).await,
            Err(ClientError::Rejected { reason: Some(SendRejection::Held), .. })
        ));
    }
}

/// Polls `message_status` until `done` accepts it.
async fn status_until(
    peer: &Peer,
    message_id: &str,
    done: impl Fn(&[protocol::RecipientStatus]) -> bool,
) -> Vec<protocol::RecipientStatus> {
    let deadline = tokio::time::Instant::now() + common::WAIT;
    loop {
        let status = peer.client.message_status(message_id).await.expect("status");
        if done(&status) {
            return status;
        }
        assert!(tokio::time::Instant::now() < deadline, "the status never got there: {status:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_tracked_message_shows_each_recipient_queued_delivered_and_read_to_its_sender_only() {
    use protocol::DeliveryState::{Delivered, Queued, Read};
    let broker = TestBroker::start().await;
    let (mesh, members) = broker.mesh("acme", &["alice", "bob", "carol"]);
    let mut config = broker.client_config(&mesh, &members[0], "alice");
    config.track_messages = true;
    let alice = Peer::connect(config).await;
    let mut carol = broker.connect(&mesh, &members[2], "carol").await;

    // Bob is offline: his copy waits; carol's client stores hers.
    let sent = alice.client.send("*", b"release at five", Priority::Now).await.expect("queued");
    carol.message().await;
    let status = status_until(&alice, &sent.message_id, |s| s.iter().any(|r| r.state == Delivered)).await;
    let state_of = |status: &[protocol::RecipientStatus], name: &str| {
        status.iter().find(|r| r.display_name == name).map(|r| r.state)
    };
    assert_eq!(status.len(), 2, "one per recipient member: {status:?}");
    assert_eq!(state_of(&status, "bob"), Some(Queued));
    assert_eq!(state_of(&status, "carol"), Some(Delivered));
    let carol_row = status.iter().find(|r| r.display_name == "carol").expect("carol");
    assert_eq!(carol_row.member_pubkey, members[2].key.public_hex());
    assert!(carol_row.delivered_at.is_some() && carol_row.read_at.is_none());

    carol.client.mark_read(vec![sent.message_id.clone()]).await.expect("marks read");
    let status = status_until(&alice, &sent.message_id, |s| state_of(s, "carol") == Some(Read)).await;
    assert!(status.iter().any(|r| r.display_name == "carol" && r.read_at.is_some()));

    // Bob connects and stores it.
    let mut bob = broker.connect(&mesh, &members[1], "bob").await;
    bob.message().await;
    status_until(&alice, &sent.message_id, |s| state_of(s, "bob") == Some(Delivered)).await;

    // Nobody else sees alice's receipts, and an untracked message has none.
    assert!(carol.client.message_status(&sent.message_id).await.expect("answers").is_empty());
    let untracked = carol.client.send(&members[0].key.public_hex(), b"ok", Priority::Now).await.expect("queued");
    assert!(carol.client.message_status(&untracked.message_id).await.expect("answers").is_empty());
    let too_many = vec!["m".to_owned(); protocol::MAX_MARK_READ + 1];
    carol.client.mark_read(too_many).await.expect("sent in chunks the broker accepts");
    assert!(carol.client.list_peers().await.is_ok(), "the connection is fine");
}
