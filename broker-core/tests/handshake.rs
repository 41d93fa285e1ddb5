//! Hello refusals, each with its code and close 1008, against a real broker.

mod common;

use broker_core::crypto::{self, Keypair};
use broker_core::protocol::{self, ClientFrame, ErrorCode, ServerFrame};
use common::{RawSocket, TestBroker, signed_hello};

/// Sends `hello` on a fresh socket and expects refusal `code` followed by close 1008.
async fn check_refused(broker: &TestBroker, hello: protocol::Hello, code: ErrorCode) {
    let mut socket = RawSocket::connect(&broker.ws_url()).await;
    socket.send_frame(&ClientFrame::Hello(hello)).await;
    match socket.next().await {
        Ok(ServerFrame::Error(error)) => assert_eq!(error.code, code, "{}", error.message),
        other => panic!("expected error {code:?}, got {other:?}"),
    }
    assert_eq!(socket.next().await.err(), Some(Some(1008)), "closed with 1008 after {code:?}");
}

async fn check_accepted(broker: &TestBroker, hello: protocol::Hello) -> RawSocket {
    let mut socket = RawSocket::connect(&broker.ws_url()).await;
    socket.send_frame(&ClientFrame::Hello(hello)).await;
    match socket.next().await {
        Ok(ServerFrame::HelloAck(ack)) => {
            assert_eq!(ack.capabilities, vec!["session_sig".to_owned(), "hello_v2".to_owned()]);
            socket
        }
        other => panic!("expected hello_ack, got {other:?}"),
    }
}

#[tokio::test]
async fn a_valid_hello_is_accepted() {
    let broker = TestBroker::start().await;
    let (mesh, members) = broker.mesh("acme", &["alice"]);
    check_accepted(&broker, signed_hello(&mesh, &members[0], protocol::now_ms())).await;
}

#[tokio::test]
async fn signature_and_timestamp_refusals() {
    let broker = TestBroker::start().await;
    let (mesh, members) = broker.mesh("acme", &["alice", "bob"]);
    let alice = &members[0];
    let now = protocol::now_ms();

    let mut wrong_key = signed_hello(&mesh, alice, now);
    wrong_key.sign(&members[1].key);
    check_refused(&broker, wrong_key, ErrorCode::BadSignature).await;

    check_refused(&broker, signed_hello(&mesh, alice, now - 61_000), ErrorCode::TimestampSkew).await;
    check_refused(&broker, signed_hello(&mesh, alice, now + 61_000), ErrorCode::TimestampSkew).await;

    // Tampering with any signed field breaks the signature.
    let mut tampered_time = signed_hello(&mesh, alice, now);
    tampered_time.timestamp += 1;
    check_refused(&broker, tampered_time, ErrorCode::BadSignature).await;
    let mut tampered_member = signed_hello(&mesh, alice, now);
    tampered_member.member_id = members[1].record.id.clone();
    check_refused(&broker, tampered_member, ErrorCode::BadSignature).await;

    let mut bad_hex = signed_hello(&mesh, alice, now);
    bad_hex.pubkey = "zz".repeat(32);
    check_refused(&broker, bad_hex, ErrorCode::Malformed).await;
    let mut short_signature = signed_hello(&mesh, alice, now);
    short_signature.signature.truncate(100);
    check_refused(&broker, short_signature, ErrorCode::Malformed).await;
    let mut bad_session = signed_hello(&mesh, alice, now);
    bad_session.session_pubkey = Some("ABC".into());
    check_refused(&broker, bad_session, ErrorCode::BadSessionPubkey).await;
}

#[tokio::test]
async fn a_replayed_hello_is_refused() {
    let broker = TestBroker::start().await;
    let (mesh, members) = broker.mesh("acme", &["alice"]);
    let hello = signed_hello(&mesh, &members[0], protocol::now_ms());
    let _first = check_accepted(&broker, hello.clone()).await;
    check_refused(&broker, hello, ErrorCode::Replay).await;
}

#[tokio::test]
async fn the_hello_signature_covers_the_session_key_and_the_capabilities() {
    let broker = TestBroker::start().await;
    let (mesh, members) = broker.mesh("acme", &["alice", "mallory"]);
    let (alice, mallory) = (&members[0], &members[1]);

    // Someone on the path swaps in a session key of their own, with its own valid delegation
    // and proof from a member they control: the signature no longer verifies.
    let mut swapped = signed_hello(&mesh, alice, protocol::now_ms());
    let theirs = signed_hello(&mesh, mallory, swapped.timestamp);
    swapped.session_pubkey = theirs.session_pubkey;
    check_refused(&broker, swapped, ErrorCode::BadSignature).await;

    // Or strips a capability (here the one that makes the session key proven).
    let mut stripped = signed_hello(&mesh, alice, protocol::now_ms());
    stripped.capabilities.retain(|c| c != protocol::Capability::SessionSig.as_str());
    check_refused(&broker, stripped, ErrorCode::BadSignature).await;

    // Or strips `hello_v2` itself, so that the v1 bytes (which cover neither) would do.
    let mut downgraded = signed_hello(&mesh, alice, protocol::now_ms());
    downgraded.capabilities.retain(|c| c != protocol::Capability::HelloV2.as_str());
    downgraded.signature = crypto::sign_hello(&alice.key, &mesh, &alice.record.id, downgraded.timestamp);
    check_refused(&broker, downgraded, ErrorCode::BadSignature).await;

    // A client announcing nothing signs the reference v1 bytes and is accepted.
    let mut reference = without_session(signed_hello(&mesh, alice, protocol::now_ms()));
    reference.capabilities.clear();
    reference.signature = crypto::sign_hello(&alice.key, &mesh, &alice.record.id, reference.timestamp);
    let mut socket = RawSocket::connect(&broker.ws_url()).await;
    socket.send_frame(&ClientFrame::Hello(reference)).await;
    assert!(matches!(socket.next().await, Ok(ServerFrame::HelloAck(_))));
}

/// The hello without a session key, for cases about the member itself.
fn without_session(mut hello: protocol::Hello) -> protocol::Hello {
    hello.session_pubkey = None;
    hello.session_sig = None;
    hello.session_proof = None;
    hello
}

#[tokio::test]
async fn membership_refusals() {
    let broker = TestBroker::start().await;
    let (mesh, members) = broker.mesh("acme", &["alice", "bob"]);
    let now = protocol::now_ms();

    // A key that is not a member.
    let stranger = common::TestMember { key: Keypair::generate(), record: members[0].record.clone() };
    let mut hello = without_session(signed_hello(&mesh, &stranger, now));
    hello.sign(&stranger.key);
    check_refused(&broker, hello, ErrorCode::Unauthorized).await;

    // memberId must be the id of the member found by pubkey.
    let alice = &members[0];
    let mut mismatched = without_session(signed_hello(&mesh, alice, now));
    mismatched.member_id = members[1].record.id.clone();
    mismatched.sign(&alice.key);
    check_refused(&broker, mismatched, ErrorCode::Unauthorized).await;

    // An unknown mesh.
    let mut elsewhere = without_session(signed_hello("mesh_nope", alice, now));
    elsewhere.sign(&alice.key);
    check_refused(&broker, elsewhere, ErrorCode::Unauthorized).await;
}

#[tokio::test]
async fn an_announced_session_key_must_be_proven() {
    let broker = TestBroker::start().await;
    let (mesh, members) = broker.mesh("acme", &["alice", "bob"]);
    let alice = &members[0];

    let mut unproven = signed_hello(&mesh, alice, protocol::now_ms());
    unproven.session_sig = None;
    check_refused(&broker, unproven, ErrorCode::BadSessionPubkey).await;

    // Signed by another member: not a delegation from alice.
    let mut forged = signed_hello(&mesh, alice, protocol::now_ms());
    let session = forged.session_pubkey.clone().expect("session key");
    forged.session_sig = Some(crypto::sign_session_binding(&members[1].key, &mesh, &session));
    check_refused(&broker, forged, ErrorCode::BadSessionPubkey).await;

    // A reference client that does not announce the capability keeps the reference behaviour.
    let mut reference = signed_hello(&mesh, alice, protocol::now_ms());
    reference.session_sig = None;
    reference.capabilities.clear();
    reference.sign(&alice.key);
    let mut socket = RawSocket::connect(&broker.ws_url()).await;
    socket.send_frame(&ClientFrame::Hello(reference)).await;
    assert!(matches!(socket.next().await, Ok(ServerFrame::HelloAck(_))));
}

#[tokio::test]
async fn frames_before_hello_get_no_hello_and_garbage_is_malformed() {
    let broker = TestBroker::start().await;
    let (mesh, members) = broker.mesh("acme", &["alice"]);
    let mut socket = RawSocket::connect(&broker.ws_url()).await;
    socket.send_frame(&ClientFrame::ListPeers(protocol::ListPeers::default())).await;
    match socket.next().await {
        Ok(ServerFrame::Error(error)) => assert_eq!(error.code, ErrorCode::NoHello),
        other => panic!("expected no_hello, got {other:?}"),
    }
    // The connection stays usable for a proper hello.
    socket.send_frame(&ClientFrame::Hello(signed_hello(&mesh, &members[0], protocol::now_ms()))).await;
    assert!(matches!(socket.next().await, Ok(ServerFrame::HelloAck(_))));

    let mut garbage = RawSocket::connect(&broker.ws_url()).await;
    garbage.send_text("{not json").await;
    match garbage.next().await {
        Ok(ServerFrame::Error(error)) => assert_eq!(error.code, ErrorCode::Malformed),
        other => panic!("expected malformed, got {other:?}"),
    }
    assert_eq!(garbage.next().await.err(), Some(Some(1008)));
}

#[tokio::test]
async fn the_per_mesh_connection_cap_refuses_with_capacity() {
    let config = broker_core::config::BrokerConfig { max_connections_per_mesh: 2, ..Default::default() };
    let broker = TestBroker::start_with(config).await;
    let (mesh, members) = broker.mesh("acme", &["alice"]);
    let _one = check_accepted(&broker, signed_hello(&mesh, &members[0], protocol::now_ms())).await;
    let _two = check_accepted(&broker, signed_hello(&mesh, &members[0], protocol::now_ms())).await;
    check_refused(&broker, signed_hello(&mesh, &members[0], protocol::now_ms()), ErrorCode::Capacity).await;
    let metrics = broker.broker.metrics().render();
    assert!(metrics.contains("broker_connections_rejected_total{reason=\"capacity\"} 1"), "{metrics}");
}

#[tokio::test]
async fn a_session_key_belongs_to_one_member_and_must_be_held() {
    let broker = TestBroker::start().await;
    let (mesh, members) = broker.mesh("acme", &["alice", "mallory"]);
    let (alice, mallory) = (&members[0], &members[1]);

    // Without the session key's own signature the hello is refused.
    let mut unproven = signed_hello(&mesh, alice, protocol::now_ms());
    unproven.session_proof = None;
    check_refused(&broker, unproven, ErrorCode::BadSessionPubkey).await;

    // Alice is connected with her session key.
    let alice_hello = signed_hello(&mesh, alice, protocol::now_ms());
    let alice_session = alice_hello.session_pubkey.clone().expect("session key");
    let _alice = check_accepted(&broker, alice_hello).await;

    // Mallory claims it with her own member signature (and no proof, as a reference client
    // would): refused, and Alice stays connected.
    let now = protocol::now_ms();
    let mut stolen = signed_hello(&mesh, mallory, now);
    stolen.session_pubkey = Some(alice_session.clone());
    stolen.session_sig = None;
    stolen.session_proof = None;
    stolen.capabilities.clear();
    stolen.sign(&mallory.key);
    check_refused(&broker, stolen, ErrorCode::BadSessionPubkey).await;

    // Nor may a session key be another member's key.
    // (A later timestamp: the refused hello above used up its signature.)
    let mut borrowed = signed_hello(&mesh, mallory, now + 1);
    borrowed.session_pubkey = Some(alice.key.public_hex());
    borrowed.session_sig = None;
    borrowed.session_proof = None;
    borrowed.capabilities.clear();
    borrowed.sign(&mallory.key);
    check_refused(&broker, borrowed, ErrorCode::BadSessionPubkey).await;

    let peers = broker.broker.router().online_members(&mesh);
    assert!(peers.contains(&alice.record.id), "alice was not kicked off");
}

#[tokio::test]
async fn signatures_have_one_spelling_so_a_replay_cannot_change_case() {
    let broker = TestBroker::start().await;
    let (mesh, members) = broker.mesh("acme", &["alice"]);
    let hello = signed_hello(&mesh, &members[0], protocol::now_ms());
    let _first = check_accepted(&broker, hello.clone()).await;
    let mut shouted = hello;
    shouted.signature = shouted.signature.to_uppercase();
    check_refused(&broker, shouted, ErrorCode::Malformed).await;
}

#[tokio::test]
async fn weak_keys_are_refused() {
    // The identity point: every signature would verify against it.
    let mut identity = "00".repeat(32);
    identity.replace_range(0..2, "01");
    assert!(broker_core::crypto::PublicKey::from_hex(&identity).is_err());

    // Nor may a session present it, or a point of order 2, as its session key.
    let broker = TestBroker::start().await;
    let (mesh, members) = broker.mesh("acme", &["alice"]);
    for weak in [identity, format!("ec{}7f", "ff".repeat(30))] {
        let mut hello = signed_hello(&mesh, &members[0], protocol::now_ms());
        hello.session_pubkey = Some(weak);
        check_refused(&broker, hello, ErrorCode::BadSessionPubkey).await;
    }
}

#[tokio::test]
async fn one_member_cannot_take_every_connection_of_a_mesh() {
    let config = broker_core::config::BrokerConfig { max_sessions_per_member: 2, ..Default::default() };
    let broker = TestBroker::start_with(config).await;
    let (mesh, members) = broker.mesh("acme", &["alice", "bob"]);
    let _one = check_accepted(&broker, signed_hello(&mesh, &members[0], protocol::now_ms())).await;
    let _two = check_accepted(&broker, signed_hello(&mesh, &members[0], protocol::now_ms())).await;
    check_refused(&broker, signed_hello(&mesh, &members[0], protocol::now_ms()), ErrorCode::Capacity).await;
    let _bob = check_accepted(&broker, signed_hello(&mesh, &members[1], protocol::now_ms())).await;

    let mut bloated = signed_hello(&mesh, &members[1], protocol::now_ms());
    bloated.display_name = Some("b".repeat(500));
    check_refused(&broker, bloated, ErrorCode::Malformed).await;
}

#[tokio::test]
async fn refusal_codes_go_only_to_sessions_that_negotiated_them() {
    let broker = TestBroker::start().await;
    let (mesh, members) = broker.mesh("acme", &["alice"]);
    // A reference client: the text, no code.
    let mut plain = check_accepted(&broker, signed_hello(&mesh, &members[0], protocol::now_ms())).await;
    send_to_empty_group(&mut plain).await;
    let Ok(ServerFrame::Ack(ack)) = plain.next().await else { panic!("an ack") };
    assert!(ack.error.as_deref().is_some_and(|e| e.starts_with("no_recipient:")), "{ack:?}");
    assert_eq!(ack.error_code, None);

    // A client that announced `refusal_code`: the same text, and the code.
    let mut hello = signed_hello(&mesh, &members[0], protocol::now_ms());
    hello.capabilities.push(protocol::Capability::RefusalCode.as_str().into());
    hello.sign(&members[0].key);
    let mut coded = RawSocket::connect(&broker.ws_url()).await;
    coded.send_frame(&ClientFrame::Hello(hello)).await;
    let Ok(ServerFrame::HelloAck(ack)) = coded.next().await else { panic!("a hello_ack") };
    assert!(ack.capabilities.iter().any(|c| c == "refusal_code"), "{:?}", ack.capabilities);
    send_to_empty_group(&mut coded).await;
    let ack = loop {
        match coded.next().await {
            Ok(ServerFrame::Ack(ack)) => break ack,
            Ok(_) => continue,
            Err(close) => panic!("closed: {close:?}"),
        }
    };
    assert!(ack.error.as_deref().is_some_and(|e| e.starts_with("no_recipient:")), "{ack:?}");
    assert_eq!(ack.error_code, Some(protocol::SendRejection::NoRecipient));
}

async fn send_to_empty_group(socket: &mut RawSocket) {
    let send = protocol::Send {
        id: Some("s1".into()),
        target_spec: "@nobody".into(),
        nonce: "bm9uY2U=".into(),
        ciphertext: "aGk=".into(),
        ..protocol::Send::default()
    };
    socket.send_frame(&ClientFrame::Send(send)).await;
}

/// Connects a session asking for `name`; returns the name the broker gave it.
async fn named_session(
    broker: &TestBroker,
    mesh: &str,
    member: &common::TestMember,
    name: &str,
) -> (RawSocket, String) {
    let mut hello = signed_hello(mesh, member, protocol::now_ms());
    hello.display_name = Some(name.to_owned());
    let mut socket = RawSocket::connect(&broker.ws_url()).await;
    socket.send_frame(&ClientFrame::Hello(hello)).await;
    match socket.next().await {
        Ok(ServerFrame::HelloAck(ack)) => (socket, ack.member_display_name),
        other => panic!("expected hello_ack, got {other:?}"),
    }
}

#[tokio::test]
async fn a_session_cannot_pass_for_another_member_or_for_the_user() {
    let broker = TestBroker::start().await;
    let (mesh, members) = broker.mesh("acme", &["alice", "mallory"]);
    let (alice, mallory) = (&members[0], &members[1]);

    // Another member's name, however spelled, and the names of a conversation's parties give
    // way to the member's own name.
    for pretending in ["alice", "ALICE", "al1ce", "\u{0430}lice", "user", "Assistant", "system", "Claude"] {
        let (_socket, name) = named_session(&broker, &mesh, mallory, pretending).await;
        assert_eq!(name, "mallory", "{pretending}");
    }
    // A name of its own is kept, and then belongs to that member's sessions.
    let (_frontend, name) = named_session(&broker, &mesh, mallory, "mallory-frontend").await;
    assert_eq!(name, "mallory-frontend");
    let (_second, name) = named_session(&broker, &mesh, mallory, "mallory-frontend").await;
    assert_eq!(name, "mallory-frontend", "two sessions of one member may share a name");
    let (_alice, name) = named_session(&broker, &mesh, alice, "Mallory_Frontend").await;
    assert_eq!(name, "alice");
}
