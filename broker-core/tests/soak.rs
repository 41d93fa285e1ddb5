//! A wire-level soak against the real `claudemesh-broker` process: dozens of connections send
//! garbage before and after a valid hello (random and binary bytes, invalid UTF-8, deep nesting,
//! wrong types, oversize fields and frames, floods, raw TCP noise, silence) while two honest peers
//! keep exchanging messages. Afterwards the broker is still running, never panicked, accepts a new
//! honest session, delivered every honest message exactly once, and its resident memory stayed
//! under a bound that does not grow with the soak's length.
//!
//! `CLAUDEMESH_SOAK_SECS` sets how long the garbage flows (default 12 s); a long run is how a
//! slow leak shows (docs/fuzzing.md).

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use broker_core::client::{ClientConfig, ClientEvent};
use broker_core::crypto::Keypair;
use broker_core::operator::DATABASE_FILE;
use broker_core::protocol::{
    self, ClientFrame, ErrorCode, GrantMap, MAX_GRANTS, Priority, Role, ServerFrame, SetGrants,
};
use broker_core::store::{Durability, SqliteStore, Store};
use common::process::{BrokerProcess, free_port, wait_ready};
use common::{Peer, RawSocket, TestBroker, TestMember, WAIT, new_member, signed_hello};
use futures_util::{SinkExt as _, StreamExt as _};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

/// Connections that attack before any hello…
const STRANGERS: usize = 24;
/// …and connections that attack after a valid hello, spread over `MEMBER_ATTACKERS` members
/// (each member may hold 32 sessions).
const INSIDERS: usize = 24;
const MEMBER_ATTACKERS: usize = 4;
/// The broker's frame limit (`BrokerConfig::max_frame_bytes` for the default message size).
const MAX_FRAME: usize = 1024 * 1024;
/// Memory one connection can make the broker hold at once: tungstenite's read buffer and the
/// message it assembles (each up to a frame), the text handed to serde and what serde builds
/// from it (at most about a frame again), plus the write buffer and a full outbox of short
/// error frames (1024 × ~100 B). Four frames' worth covers it.
const PER_CONNECTION_BYTES: u64 = 4 * MAX_FRAME as u64;
/// Between two honest rounds (each peer sends one message a round): within the rate limit.
const HONEST_PAUSE: Duration = Duration::from_millis(100);
/// How long after the soak the attackers may take to finish (a stranger waits up to 3 s for its
/// close, an insider up to `WAIT` for its hello_ack).
const STUCK: Duration = Duration::from_secs(30);
/// Allocator slack: glibc keeps freed memory in per-thread arenas and returns it lazily.
const SLACK_BYTES: u64 = 64 * 1024 * 1024;

fn soak_duration() -> Duration {
    let seconds = std::env::var("CLAUDEMESH_SOAK_SECS")
        .ok()
        .map(|text| text.parse::<u64>().expect("CLAUDEMESH_SOAK_SECS is a number of seconds"))
        .unwrap_or(12);
    Duration::from_secs(seconds)
}

/// The broker's resident memory, from `/proc/<pid>/status`.
fn resident_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the broker's /proc status");
    let line = status.lines().find(|line| line.starts_with("VmRSS:")).expect("a VmRSS line");
    let kib: u64 = line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).expect("VmRSS in kB");
    kib * 1024
}

/// What the attackers did, to check that the soak really attacked.
#[derive(Default)]
struct Tally {
    connections: AtomicU64,
    frames: AtomicU64,
    hellos_accepted: AtomicU64,
    closed_by_broker: AtomicU64,
}

impl Tally {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

// --- garbage ------------------------------------------------------------------------------------

fn random_bytes(rng: &mut StdRng, max: usize) -> Vec<u8> {
    let len = rng.gen_range(0..=max);
    (0..len).map(|_| rng.r#gen()).collect()
}

/// Bytes that are not UTF-8 (a lone continuation byte and an overlong encoding among them).
fn invalid_utf8(rng: &mut StdRng) -> Vec<u8> {
    let mut bytes = b"{\"type\":\"hello\",\"meshId\":\"".to_vec();
    bytes.extend(random_bytes(rng, 64));
    bytes.extend([0x80, 0xc0, 0xaf, 0xff]);
    bytes.extend(b"\"}");
    bytes
}

fn deep_nesting(rng: &mut StdRng) -> String {
    let depth = rng.gen_range(1..MAX_FRAME / 8);
    match rng.gen_range(0..3) {
        0 => "[".repeat(depth) + &"]".repeat(depth),
        1 => "{\"a\":".repeat(depth) + "0" + &"}".repeat(depth),
        _ => format!(r#"{{"type":"send","targetSpec":"*","nonce":{}"#, "[".repeat(depth)),
    }
}

/// A random JSON tree, any type anywhere.
fn random_json(rng: &mut StdRng, depth: u32) -> Value {
    match rng.gen_range(0..if depth == 0 { 5 } else { 7 }) {
        0 => Value::Null,
        1 => Value::Bool(rng.r#gen()),
        2 => json!(rng.r#gen::<i64>()),
        3 => json!(rng.r#gen::<f64>()),
        4 => Value::String(String::from_utf8_lossy(&random_bytes(rng, 32)).into_owned()),
        5 => Value::Array((0..rng.gen_range(0..6)).map(|_| random_json(rng, depth - 1)).collect()),
        _ => Value::Object(
            (0..rng.gen_range(0..6))
                .map(|_| {
                    let key = ["type", "meshId", "targetSpec", "grants", "summary", "name", "x"][rng.gen_range(0..7)];
                    (key.to_owned(), random_json(rng, depth - 1))
                })
                .collect(),
        ),
    }
}

fn random_key(rng: &mut StdRng) -> String {
    hex::encode(rng.r#gen::<[u8; 32]>())
}

/// A frame the broker understands, or nearly: one field of a valid frame changed to a wrong
/// type, a huge value, or removed; or a field blown up to just under the frame limit.
fn near_miss(rng: &mut StdRng, mesh_id: &str) -> String {
    let huge = || "x".repeat(MAX_FRAME - 4096);
    let mut frame = match rng.gen_range(0..12) {
        0 => {
            json!({"type": "send", "id": "1", "targetSpec": "*", "priority": "now", "nonce": "bm9uY2U=", "ciphertext": "aGk="})
        }
        1 => {
            json!({"type": "send", "targetSpec": "@soak", "enc": "multi", "nonce": "", "ciphertext": huge(), "keys": []})
        }
        2 => json!({"type": "set_summary", "summary": huge()}),
        3 => json!({"type": "join_group", "name": "soak", "role": "x".repeat(100_000)}),
        4 => json!({"type": "set_status", "status": "working", "source": "hook"}),
        5 => json!({"type": "resolve", "targetSpec": format!("@{}", "g".repeat(500_000)), "_reqId": "r"}),
        6 => json!({"type": "delivered", "messageIds": (0..20_000).map(|n| format!("msg_{n}")).collect::<Vec<_>>()}),
        // Around the most grants a member may hold (`MAX_GRANTS`), under it and over it.
        7 => {
            let count = rng.gen_range(1..=MAX_GRANTS + 64);
            json!({"type": "set_grants", "grants": (0..count).map(|_| (random_key(rng), json!(["dm"]))).collect::<serde_json::Map<_, _>>()})
        }
        8 => json!({"type": "audit_query", "limit": u32::MAX, "offset": u32::MAX, "eventType": "message_sent"}),
        9 => json!({"type": "set_stats", "stats": {"messagesIn": u64::MAX, "uptime": u64::MAX}}),
        10 => {
            json!({"type": "hello", "meshId": mesh_id, "memberId": "mem_x", "pubkey": random_key(rng), "timestamp": 0, "signature": ""})
        }
        _ => json!({"type": "list_peers", "_reqId": "r"}),
    };
    let object = frame.as_object_mut().expect("frames are objects");
    if rng.gen_bool(0.5) {
        let fields: Vec<String> = object.keys().filter(|k| *k != "type").cloned().collect();
        if !fields.is_empty() {
            let field = fields[rng.gen_range(0..fields.len())].clone();
            if rng.gen_bool(0.2) {
                object.remove(&field);
            } else {
                object.insert(field, random_json(rng, 3));
            }
        }
    }
    frame.to_string()
}

/// One garbage frame for a connection; `mesh_id` lets near misses name the right mesh.
fn garbage(rng: &mut StdRng, mesh_id: &str) -> Message {
    match rng.gen_range(0..10) {
        0 => Message::binary(random_bytes(rng, 4096)),
        1 => Message::Frame(Frame::message(invalid_utf8(rng), OpCode::Data(Data::Text), true)),
        2 => Message::text(deep_nesting(rng)),
        3 => Message::text(random_json(rng, 4).to_string()),
        4 => Message::text(String::from_utf8_lossy(&random_bytes(rng, 2048)).into_owned()),
        // Over the frame limit: the broker ends the connection.
        5 if rng.gen_bool(0.1) => Message::text("y".repeat(MAX_FRAME + 1)),
        _ => Message::text(near_miss(rng, mesh_id)),
    }
}

// --- attackers ------------------------------------------------------------------------------------

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Reads until the broker closes the connection (or `patience` runs out); true if it closed it.
async fn closed_by_broker(socket: &mut Socket, patience: Duration) -> bool {
    let deadline = Instant::now() + patience;
    loop {
        match tokio::time::timeout_at(deadline, socket.next()).await {
            Err(_) => return false,
            Ok(Some(Ok(Message::Close(_))) | Some(Err(_)) | None) => return true,
            Ok(Some(Ok(_))) => continue,
        }
    }
}

/// A connection that never says hello: garbage, floods, raw TCP noise or silence.
async fn stranger(addr: std::net::SocketAddr, mesh_id: String, seed: u64, until: Instant, tally: Arc<Tally>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let url = format!("ws://{addr}/ws");
    while Instant::now() < until {
        Tally::add(&tally.connections, 1);
        if rng.gen_bool(0.1) {
            // Not WebSocket at all.
            if let Ok(mut tcp) = tokio::net::TcpStream::connect(addr).await {
                let _ = tcp.write_all(&random_bytes(&mut rng, 8192)).await;
                let mut sink = Vec::new();
                let _ = tokio::time::timeout(Duration::from_secs(2), tcp.read_to_end(&mut sink)).await;
            }
            continue;
        }
        let Ok((mut socket, _)) = tokio_tungstenite::connect_async(url.as_str()).await else { continue };
        match rng.gen_range(0..4) {
            // A flood of frames that are not a hello, without reading a single answer.
            0 => {
                for _ in 0..2_000 {
                    let frame = json!({"type": "list_peers", "_reqId": "flood"}).to_string();
                    if socket.send(Message::text(frame)).await.is_err() {
                        break;
                    }
                    Tally::add(&tally.frames, 1);
                }
            }
            // Silence: the broker ends a connection without hello after its hello timeout.
            1 if rng.gen_bool(0.2) => {}
            _ => {
                for _ in 0..rng.gen_range(1..8) {
                    if socket.send(garbage(&mut rng, &mesh_id)).await.is_err() {
                        break;
                    }
                    Tally::add(&tally.frames, 1);
                }
            }
        }
        let patience = until.saturating_duration_since(Instant::now()).min(Duration::from_secs(3));
        if closed_by_broker(&mut socket, patience).await {
            Tally::add(&tally.closed_by_broker, 1);
        }
    }
}

/// A member's connection: a valid hello, then garbage; sometimes it reads the answers, sometimes
/// it lets them pile up until the broker drops it as a slow consumer.
async fn insider(url: String, mesh_id: String, member: Arc<TestMember>, seed: u64, until: Instant, tally: Arc<Tally>) {
    let mut rng = StdRng::seed_from_u64(seed);
    while Instant::now() < until {
        Tally::add(&tally.connections, 1);
        let Ok((mut socket, _)) = tokio_tungstenite::connect_async(url.as_str()).await else { continue };
        let hello = ClientFrame::Hello(signed_hello(&mesh_id, &member, protocol::now_ms()));
        if socket.send(Message::text(serde_json::to_string(&hello).expect("hello encodes"))).await.is_err() {
            continue;
        }
        let accepted = match tokio::time::timeout(WAIT, socket.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => text.contains("\"hello_ack\""),
            _ => false,
        };
        if !accepted {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        Tally::add(&tally.hellos_accepted, 1);
        let (mut sink, mut stream) = socket.split();
        let reader =
            rng.gen_bool(0.7).then(|| tokio::spawn(async move { while let Some(Ok(_)) = stream.next().await {} }));
        for _ in 0..rng.gen_range(10..300) {
            if Instant::now() >= until || sink.send(garbage(&mut rng, &mesh_id)).await.is_err() {
                break;
            }
            Tally::add(&tally.frames, 1);
        }
        let _ = sink.close().await;
        if let Some(reader) = reader {
            reader.abort();
        }
    }
}

// --- the honest peers --------------------------------------------------------------------------

fn config(url: &str, mesh_id: &str, member: &TestMember, name: &str) -> ClientConfig {
    let mut config = ClientConfig::new(url, mesh_id, &member.record.id, member.key.clone());
    config.profile.display_name = Some(name.to_owned());
    config.backoff.initial = Duration::from_millis(50);
    config.backoff.max = Duration::from_millis(200);
    config
}

/// The next message `from` sent, acknowledging everything (an insider's broadcast too).
async fn message_from(peer: &mut Peer, from: &TestMember) -> String {
    let from_key = from.key.public_hex();
    loop {
        let event = tokio::time::timeout(WAIT, peer.events.recv())
            .await
            .expect("an honest message within the wait, garbage or not")
            .expect("event stream");
        let ClientEvent::Message(message) = event else { continue };
        peer.client.acknowledge(vec![message.message_id.clone()]).await.expect("acknowledges");
        if message.sender_member_pubkey.as_deref() == Some(from_key.as_str()) {
            return message.text().expect("an honest message opens");
        }
    }
}

/// Sends `text` from `sender` to `recipient` and waits until it arrives.
async fn exchange(sender: &Peer, recipient: &mut Peer, from: &TestMember, to: &TestMember, text: &str) -> String {
    sender.client.send(&to.key.public_hex(), text.as_bytes(), Priority::Now).await.expect("the broker queues it");
    message_from(recipient, from).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_dozens_of_connections_leaves_the_broker_up_bounded_and_serving() {
    let data = tempfile::tempdir().expect("tempdir");
    let logs = tempfile::tempdir().expect("tempdir");
    let (mesh_id, alice, bob, carol, insiders) = {
        let store = SqliteStore::open(&data.path().join(DATABASE_FILE), Durability::Normal).expect("store");
        let now = protocol::now_ms();
        let alice_key = Keypair::generate();
        let (mesh, alice) = store.create_mesh("soak", "", None, &new_member(&alice_key, "alice"), now).expect("mesh");
        let add = |name: &str| {
            let key = Keypair::generate();
            let record = store.add_member(&mesh.id, &new_member(&key, name), Role::Member, None, now).expect("member");
            TestMember { key, record }
        };
        let (bob, carol) = (add("bob"), add("carol"));
        let insiders: Vec<Arc<TestMember>> =
            (0..MEMBER_ATTACKERS).map(|n| Arc::new(add(&format!("mallory-{n}")))).collect();
        (mesh.id, TestMember { key: alice_key, record: alice }, bob, carol, insiders)
    };

    let port = free_port();
    let log = logs.path().join("broker.log");
    let mut broker = BrokerProcess::start(
        data.path(),
        port,
        &log,
        // Room for the honest peers' pace (`HONEST_PAUSE`); insiders are held to the same limit.
        &[("RATE_LIMIT_BURST", "20"), ("RATE_LIMIT_PER_MINUTE", "1200"), ("RUST_LOG", "warn")],
    );
    wait_ready(port).await;
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let url = format!("http://{addr}");

    let mut alice_peer = Peer::connect(config(&url, &mesh_id, &alice, "alice")).await;
    let mut bob_peer = Peer::connect(config(&url, &mesh_id, &bob, "bob")).await;
    assert_eq!(exchange(&alice_peer, &mut bob_peer, &alice, &bob, "warm-up").await, "warm-up");
    let baseline = resident_bytes(broker.pid());

    let soak = soak_duration();
    let seed: u64 = std::env::var("CLAUDEMESH_SOAK_SEED")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().r#gen());
    eprintln!("soak: {soak:?} with seed {seed} (CLAUDEMESH_SOAK_SEED replays it)");
    let until = Instant::now() + soak;
    let tally = Arc::new(Tally::default());
    // The attackers run on their own threads: the honest peers' tasks never wait behind them in
    // this runtime's queue, only for the machine's CPU like any other process.
    let attack = {
        let (mesh_id, tally) = (mesh_id.clone(), tally.clone());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("the attackers' runtime");
            runtime.block_on(async move {
                let mut attackers = Vec::new();
                for n in 0..STRANGERS {
                    attackers.push(tokio::spawn(stranger(
                        addr,
                        mesh_id.clone(),
                        seed ^ n as u64,
                        until,
                        tally.clone(),
                    )));
                }
                for n in 0..INSIDERS {
                    let member = insiders[n % MEMBER_ATTACKERS].clone();
                    let url = format!("ws://{addr}/ws");
                    let seed = seed ^ (1 << 32) ^ n as u64;
                    attackers.push(tokio::spawn(insider(url, mesh_id.clone(), member, seed, until, tally.clone())));
                }
                for attacker in attackers {
                    attacker.await.expect("an attacker task");
                }
            });
        })
    };
    let pid = broker.pid();
    let sampler = tokio::spawn(async move {
        let mut peak = 0;
        while Instant::now() < until {
            peak = peak.max(resident_bytes(pid));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        peak
    });

    // The honest peers keep talking, both ways, through all of it.
    let mut seen = HashSet::new();
    let mut rounds = 0;
    let mut slowest = Duration::ZERO;
    while Instant::now() < until {
        let started = Instant::now();
        let to_bob = format!("alice to bob #{rounds}");
        assert_eq!(exchange(&alice_peer, &mut bob_peer, &alice, &bob, &to_bob).await, to_bob);
        let to_alice = format!("bob to alice #{rounds}");
        assert_eq!(exchange(&bob_peer, &mut alice_peer, &bob, &alice, &to_alice).await, to_alice);
        slowest = slowest.max(started.elapsed());
        assert!(seen.insert(to_bob) && seen.insert(to_alice), "each message arrives once");
        rounds += 1;
        tokio::time::sleep(HONEST_PAUSE).await;
    }
    // An attacker still busy long after the end is one whose writes the broker neither reads nor
    // refuses: a connection it holds without serving.
    tokio::time::timeout(STUCK, tokio::task::spawn_blocking(move || attack.join()))
        .await
        .expect("every attacker finished: the broker reads or drops every connection")
        .expect("joins")
        .expect("the attackers ran to the end");
    let peak = sampler.await.expect("the sampler").max(resident_bytes(pid));

    assert!(broker.is_running(), "the broker process survived");
    // A new honest session: carol joins now and hears from alice.
    let mut carol_peer = Peer::connect(config(&url, &mesh_id, &carol, "carol")).await;
    assert_eq!(exchange(&alice_peer, &mut carol_peer, &alice, &carol, "after the storm").await, "after the storm");

    let tally = Arc::into_inner(tally).expect("attackers are done");
    let (connections, frames) = (tally.connections.into_inner(), tally.frames.into_inner());
    let (hellos, closed) = (tally.hellos_accepted.into_inner(), tally.closed_by_broker.into_inner());
    let bound = baseline + (STRANGERS + INSIDERS) as u64 * PER_CONNECTION_BYTES + SLACK_BYTES;
    let mib = |bytes: u64| bytes / (1024 * 1024);
    eprintln!(
        "soak: {rounds} honest rounds (slowest {slowest:?}); {connections} attacking connections, {frames} garbage frames, {hellos} \
         insider sessions, {closed} closed by the broker; RSS {} MiB at rest, {} MiB at peak (bound {} MiB)",
        mib(baseline),
        mib(peak),
        mib(bound),
    );
    assert!(rounds >= 10, "honest peers kept talking ({rounds} rounds)");
    assert!(connections >= (STRANGERS + INSIDERS) as u64 && frames > 1_000, "the soak attacked");
    assert!(hellos >= INSIDERS as u64 && closed > 0, "insiders got in and strangers were turned away");
    assert!(peak <= bound, "peak RSS {} MiB over the bound {} MiB", mib(peak), mib(bound));
    let log = std::fs::read_to_string(&log).expect("the broker's log");
    assert!(!log.contains("panicked"), "the broker panicked:\n{log}");
}

/// Found by the soak: a member could store grants for any number of made-up keys, so the
/// broker's memory, its database and every `grants` reply grew without bound (the peak RSS went
/// past the soak's bound, and honest sends waited behind the grant writes).
#[tokio::test]
async fn a_members_grants_stay_bounded() {
    let broker = TestBroker::start().await;
    let (mesh_id, members) = broker.mesh("grants", &["alice"]);
    let mut socket = RawSocket::connect(&broker.ws_url()).await;
    socket.send_frame(&ClientFrame::Hello(signed_hello(&mesh_id, &members[0], protocol::now_ms()))).await;
    assert!(matches!(socket.next().await, Ok(ServerFrame::HelloAck(_))));
    let blocking = |keys: std::ops::Range<usize>, id: &str| {
        let grants: GrantMap = keys.map(|n| (format!("{n:064x}"), Some(vec![]))).collect();
        ClientFrame::SetGrants(SetGrants { grants, req_id: Some(id.to_owned()) })
    };
    let refused = |frame: Result<ServerFrame, Option<u16>>, id: &str| match frame {
        Ok(ServerFrame::Error(error)) => {
            assert_eq!((error.code, error.req_id.as_deref()), (ErrorCode::Malformed, Some(id)))
        }
        other => panic!("{id}: expected a refusal, got {other:?}"),
    };

    socket.send_frame(&blocking(0..MAX_GRANTS + 1, "too-many-at-once")).await;
    refused(socket.next().await, "too-many-at-once");
    socket.send_frame(&blocking(0..MAX_GRANTS, "full")).await;
    match socket.next().await {
        Ok(ServerFrame::Grants(grants)) => assert_eq!(grants.grants.len(), MAX_GRANTS),
        other => panic!("expected the grants, got {other:?}"),
    }
    socket.send_frame(&blocking(MAX_GRANTS..MAX_GRANTS + 1, "one-more")).await;
    refused(socket.next().await, "one-more");
    assert_eq!(broker.store.grants(&mesh_id).expect("lists").len(), MAX_GRANTS, "the refused change applied nothing");
}

/// Found by the soak, which hung: a session that stopped reading while the broker wrote to it was
/// closed in name only. Its outbox filled and its reader stopped, but the writer stayed blocked
/// on the full socket for as long as the TCP connection lived, holding the connection, its task
/// and its buffers, and the peer's own writes piled up in a socket nobody read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_stops_reading_is_disconnected() {
    let broker = TestBroker::start().await;
    let (mesh_id, members) = broker.mesh("stuck", &["alice"]);
    let grants: Vec<(String, Option<Vec<String>>)> =
        (0..MAX_GRANTS).map(|n| (format!("{n:064x}"), Some(vec![]))).collect();
    broker.store.set_grants(&members[0].record.id, &grants, protocol::now_ms()).expect("grants");
    let (mut socket, _) = tokio_tungstenite::connect_async(broker.ws_url()).await.expect("connects");
    let hello = ClientFrame::Hello(signed_hello(&mesh_id, &members[0], protocol::now_ms()));
    socket.send(Message::text(serde_json::to_string(&hello).expect("encodes"))).await.expect("sends");
    match tokio::time::timeout(WAIT, socket.next()).await {
        Ok(Some(Ok(Message::Text(text)))) => assert!(text.contains("\"hello_ack\""), "{text}"),
        other => panic!("expected the hello_ack, got {other:?}"),
    }

    // Every answer lists the 1024 grants (about 75 KB); none is ever read.
    let ask = Message::text(json!({"type": "get_grants"}).to_string());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(Instant::now() < deadline, "the broker kept a connection nobody reads");
        // A send that does not finish means the broker is not reading (yet); one that fails means
        // it dropped the connection.
        if let Ok(Err(_)) = tokio::time::timeout(Duration::from_millis(200), socket.send(ask.clone())).await {
            break;
        }
    }
}
