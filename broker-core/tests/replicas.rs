//! Two `claudemesh-broker serve` processes on one PostgreSQL database: messages between
//! sessions on different replicas, a replica killed with SIGKILL in the middle of a burst (its
//! clients move to the other; nothing acknowledged is lost, nothing arrives twice), a member
//! that leaves through one replica cut off on the other at once, mesh-wide presence and limits,
//! one audit chain under concurrent writers, device sign-in across replicas, and a replica
//! beside a newer version's schema.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use broker_core::client::{ClientConfig, ClientEvent};
use broker_core::crypto::Keypair;
use broker_core::protocol::{self, ErrorCode, Priority};
use broker_core::testing::postgres::PostgresServer;
use common::process::{BrokerProcess, free_port, operator, receive_all, send_until_cut_off, wait_ready};

/// A replica: a broker process serving `database_url` on its own port.
struct Replica {
    port: u16,
    process: BrokerProcess,
}

impl Replica {
    fn start(data_dir: &Path, database_url: &str, log: &Path) -> Replica {
        Replica::start_with(data_dir, database_url, log, &[])
    }

    fn start_with(data_dir: &Path, database_url: &str, log: &Path, more: &[(&str, &str)]) -> Replica {
        let port = free_port();
        let mut env = vec![
            ("DATABASE_URL", database_url),
            ("RATE_LIMIT_BURST", "100000"),
            ("RATE_LIMIT_PER_MINUTE", "6000000"),
            ("PAIR_BURST", "100000"),
            ("PAIR_PER_MINUTE", "6000000"),
            ("PAIR_LOOP_TURNS", "100000"),
        ];
        env.extend_from_slice(more);
        Replica { port, process: BrokerProcess::start(data_dir, port, log, &env) }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// A mesh with members on the database; their ids and keys by name.
fn mesh(data_dir: &Path, url: &str, names: &[&str]) -> (String, HashMap<String, (String, Keypair)>) {
    let on_db = |args: &[&str]| {
        let mut all = vec!["--database-url", url];
        all.extend_from_slice(args);
        operator(data_dir, &all)
    };
    let mesh_id = on_db(&["mesh", "create", "--name", "replicated"])["id"].as_str().expect("id").to_owned();
    let members = names
        .iter()
        .map(|name| {
            let key = Keypair::generate();
            let added =
                on_db(&["member", "add", "--mesh", "replicated", "--pubkey", &key.public_hex(), "--name", name]);
            (name.to_string(), (added["memberId"].as_str().expect("member id").to_owned(), key))
        })
        .collect();
    (mesh_id, members)
}

/// A database with a mesh of `names`, and two replicas serving it (with `env` set).
struct Cluster {
    /// Runs as long as the cluster lives.
    _database: PostgresServer,
    url: String,
    data: tempfile::TempDir,
    mesh_id: String,
    members: HashMap<String, (String, Keypair)>,
    one: Replica,
    two: Replica,
}

impl Cluster {
    async fn start(names: &[&str], env: &[(&str, &str)]) -> Cluster {
        let database = PostgresServer::start();
        let url = database.create_database("claudemesh");
        let data = tempfile::tempdir().expect("tempdir");
        let (mesh_id, members) = mesh(data.path(), &url, names);
        let log = data.path().join("replicas.log");
        let one = Replica::start_with(data.path(), &url, &log, env);
        let two = Replica::start_with(data.path(), &url, &log, env);
        wait_ready(one.port).await;
        wait_ready(two.port).await;
        Cluster { _database: database, url, data, mesh_id, members, one, two }
    }

    /// A session of member `name` at `broker_url` (one replica's, or several comma-separated).
    async fn connect(&self, broker_url: &str, name: &str) -> common::Peer {
        common::Peer::connect(config(broker_url, &self.mesh_id, &self.members[name])).await
    }

    fn key(&self, name: &str) -> String {
        self.members[name].1.public_hex()
    }

    /// A new admin member of the mesh: its id and key.
    fn add_admin(&self) -> (String, Keypair) {
        let key = Keypair::generate();
        let pubkey = key.public_hex();
        let args = ["member", "add", "--mesh", "replicated", "--pubkey", &pubkey, "--name", "admin", "--role", "admin"];
        let added = operator(self.data.path(), &[&["--database-url", &self.url][..], &args[..]].concat());
        (added["memberId"].as_str().expect("member id").to_owned(), key)
    }
}

fn config(broker_url: &str, mesh_id: &str, member: &(String, Keypair)) -> ClientConfig {
    let key = Keypair::from_secret_hex(&member.1.seed_hex()).expect("key");
    let mut config = ClientConfig::new(broker_url, mesh_id, &member.0, key);
    config.backoff.initial = Duration::from_millis(50);
    config.backoff.max = Duration::from_millis(200);
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_cross_replicas_and_survive_the_loss_of_one() {
    let mut cluster = Cluster::start(&["alice", "bob"], &[]).await;
    let mut alice = cluster.connect(&cluster.one.url(), "alice").await;
    // Bob knows both replicas and starts on the second.
    let mut bob = cluster.connect(&format!("{},{}", cluster.two.url(), cluster.one.url()), "bob").await;
    let (alice_key, bob_key) = (cluster.key("alice"), cluster.key("bob"));

    // One message each way, from one replica to the other, without waiting for a poll.
    let started = Instant::now();
    alice.client.send(&bob_key, b"hello bob", Priority::Now).await.expect("queued");
    let message = bob.message().await;
    let crossed = started.elapsed();
    assert_eq!(message.text().expect("opens"), "hello bob");
    assert!(crossed < Duration::from_millis(500), "a message crossed replicas in {crossed:?}");
    bob.client.send(&alice_key, b"hello alice", Priority::Next).await.expect("queued");
    assert_eq!(alice.message().await.text().expect("opens"), "hello alice");
    // Too large to travel inside a notification: announced by its number, read from the store.
    let large = "x".repeat(6_000);
    alice.client.send(&bob_key, large.as_bytes(), Priority::Next).await.expect("queued");
    assert_eq!(bob.message().await.text().expect("opens"), large);

    // A burst from alice (on the first replica) to bob (on the second), which is killed midway:
    // bob moves to the first replica and gets every acknowledged message once.
    let sender = send_until_cut_off(alice.client.clone(), bob_key.clone(), 400);
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.two.process.kill();
    let outcomes = sender.await.expect("sender");
    let acknowledged: HashMap<String, String> = outcomes
        .iter()
        .filter_map(|(text, outcome)| outcome.as_ref().ok().map(|receipt| (receipt.message_id.clone(), text.clone())))
        .collect();
    assert_eq!(acknowledged.len(), 400, "alice's replica kept acknowledging: {} of 400", acknowledged.len());
    let (arrived, texts) = receive_all(&mut bob, &acknowledged).await;
    assert!(texts.values().all(|n| *n == 1), "no text arrived twice");
    let missing = acknowledged.keys().filter(|id| !arrived.contains_key(*id)).count();
    assert_eq!(missing, 0, "every acknowledged message reached bob");
    let twice: Vec<_> = arrived.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "nothing reached bob's application twice: {twice:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_leaves_through_one_replica_is_cut_off_on_the_other() {
    let cluster = Cluster::start(&["alice", "bob"], &[]).await;
    let leaving = cluster.connect(&cluster.one.url(), "bob").await;
    let mut elsewhere = cluster.connect(&cluster.two.url(), "bob").await;
    let started = Instant::now();
    leaving.client.leave_mesh().await.expect("left");
    let cut = loop {
        match tokio::time::timeout(Duration::from_secs(10), elsewhere.events.recv()).await {
            Ok(Some(ClientEvent::Refused { code, .. })) => break code,
            Ok(Some(_)) => continue,
            other => panic!("the other replica never cut bob's session: {other:?}"),
        }
    };
    assert_eq!(cut, ErrorCode::Revoked);
    assert!(started.elapsed() < Duration::from_secs(3), "cut after {:?}", started.elapsed());

    // Alice, on the other replica, can no longer reach bob.
    let alice = cluster.connect(&cluster.two.url(), "alice").await;
    let refused = alice.client.send(&cluster.key("bob"), b"still there?", Priority::Now).await;
    assert!(refused.is_err(), "a send to a member that left is refused: {refused:?}");
}

/// Waits until `peer`'s listing, by display name, satisfies `wanted` (presence travels
/// asynchronously between replicas).
async fn listing_until(peer: &common::Peer, wanted: impl Fn(&[String]) -> bool) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut names: Vec<String> =
            peer.client.list_peers().await.expect("lists").peers.into_iter().map(|p| p.display_name).collect();
        names.sort();
        if wanted(&names) || Instant::now() > deadline {
            return names;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_mesh_wide() {
    let mut cluster = Cluster::start(&["alice", "bob", "carol"], &[]).await;
    let mut alice = cluster.connect(&cluster.one.url(), "alice").await;
    let mut bob = cluster.connect(&cluster.two.url(), "bob").await;
    let joined = alice.system_event("peer_joined").await;
    assert_eq!(joined["name"], "bob", "alice hears of bob joining on the other replica: {joined}");
    assert_eq!(listing_until(&alice, |n| n.len() == 2).await, ["alice", "bob"], "alice lists bob");
    assert_eq!(listing_until(&bob, |n| n.len() == 2).await, ["alice", "bob"], "bob lists alice");

    // A message to bob's session key (what a bridge sends to a listed peer), and to a group he
    // joined on his replica.
    let bob_session = bob.client.session_pubkey();
    alice.client.send(&bob_session, b"to your session", Priority::Now).await.expect("queued");
    assert_eq!(bob.message().await.text().expect("opens"), "to your session");
    bob.client.join_group("reviewers", None).await.expect("joins");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match alice.client.send("@reviewers", b"review please", Priority::Now).await {
            Ok(_) => break,
            // Not yet known on alice's replica.
            Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(error) => panic!("the group never reached alice's replica: {error}"),
        }
    }
    assert_eq!(bob.message().await.text().expect("opens"), "review please");

    // Bob leaves: alice hears it. Carol's replica dies: alice hears that carol left too.
    bob.client.shutdown().await;
    let left = alice.system_event("peer_left").await;
    assert_eq!(left["name"], "bob");
    let _carol = cluster.connect(&cluster.two.url(), "carol").await;
    assert_eq!(alice.system_event("peer_joined").await["name"], "carol");
    cluster.two.process.kill();
    let started = Instant::now();
    let left = alice.system_event("peer_left").await;
    assert_eq!(left["name"], "carol", "the sessions of a dead replica leave");
    assert!(started.elapsed() < Duration::from_secs(15), "after {:?}", started.elapsed());
    assert_eq!(listing_until(&alice, |n| n.len() == 1).await, ["alice"]);
}

/// A rolling upgrade leaves replicas of two versions on one database for a while. The rules that
/// make it work are checked here with what a newer version may add: a migration this version
/// does not know (it keeps serving and still starts, ready for the migration it expects),
/// notice lines and announcements of kinds it does not know (skipped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_keeps_serving_beside_a_newer_version() {
    let database = PostgresServer::start();
    let url = database.create_database("claudemesh");
    let data = tempfile::tempdir().expect("tempdir");
    let (mesh_id, members) = mesh(data.path(), &url, &["alice", "bob"]);
    let log = data.path().join("replicas.log");
    let old = Replica::start(data.path(), &url, &log);
    wait_ready(old.port).await;
    let mut alice = common::Peer::connect(config(&old.url(), &mesh_id, &members["alice"])).await;

    // What a newer version's first replica does on its way up: an additive migration, and news
    // in shapes this version has never seen.
    database.query(
        "claudemesh",
        "CREATE TABLE from_a_newer_version (id BIGINT PRIMARY KEY);
         INSERT INTO schema_migrations (name, applied_at) VALUES ('9999_from_a_newer_version', 0);
         SELECT pg_notify('claudemesh', E'brk_newer\\nz\\tsomething new\\nd');
         SELECT pg_notify('claudemesh', E'brk_newer\\na\\t{\"kind\": \"something_new\", \"replica\": \"rep_newer\"}');",
    );
    let beside = Replica::start(data.path(), &url, &log);
    wait_ready(beside.port).await;
    let ready =
        common::http(format!("127.0.0.1:{}", beside.port).parse().expect("addr"), "GET", "/health/ready", None).await;
    assert_eq!(ready.0, 200, "ready beside a schema one migration ahead: {}", ready.1);

    let mut bob = common::Peer::connect(config(&beside.url(), &mesh_id, &members["bob"])).await;
    alice.client.send(&members["bob"].1.public_hex(), b"across versions", Priority::Now).await.expect("queued");
    assert_eq!(bob.message().await.text().expect("opens"), "across versions");
    bob.client.send(&members["alice"].1.public_hex(), b"and back", Priority::Now).await.expect("queued");
    assert_eq!(alice.message().await.text().expect("opens"), "and back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mesh_connection_limit_counts_every_replica() {
    let cluster = Cluster::start(&["alice", "bob", "carol"], &[("MAX_CONNECTIONS_PER_MESH", "2")]).await;
    let alice = cluster.connect(&cluster.one.url(), "alice").await;
    let _bob = cluster.connect(&cluster.two.url(), "bob").await;
    // Once the first replica heard of bob, the mesh is full there too.
    assert_eq!(listing_until(&alice, |n| n.len() == 2).await, ["alice", "bob"]);
    let carol_config = config(&cluster.one.url(), &cluster.mesh_id, &cluster.members["carol"]);
    let (carol, mut events) = broker_core::client::MeshClient::start(carol_config);
    let refused = loop {
        match tokio::time::timeout(Duration::from_secs(10), events.recv()).await.expect("an answer in time") {
            Some(ClientEvent::Refused { code, message, .. }) => break (code, message),
            Some(ClientEvent::Connected(_)) => panic!("a third session was let into a mesh limited to two"),
            Some(_) => continue,
            None => panic!("the client stopped"),
        }
    };
    assert_eq!(refused.0, ErrorCode::Capacity, "{}", refused.1);
    carol.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_chain_never_forks_when_both_replicas_write_at_once() {
    let cluster = Cluster::start(&["alice", "bob"], &[]).await;
    let admin = cluster.add_admin();
    let alice = cluster.connect(&cluster.one.url(), "alice").await;
    let bob = cluster.connect(&cluster.two.url(), "bob").await;

    // Both replicas append `message_sent` entries to the mesh's one chain at the same time.
    let to_bob = send_until_cut_off(alice.client.clone(), cluster.key("bob"), 300);
    let to_alice = send_until_cut_off(bob.client.clone(), cluster.key("alice"), 300);
    for sender in [to_bob, to_alice] {
        let outcomes = sender.await.expect("sender");
        assert!(outcomes.iter().all(|(_, outcome)| outcome.is_ok()), "every send was queued");
    }
    for replica in [&cluster.one, &cluster.two] {
        let admin = common::Peer::connect(config(&replica.url(), &cluster.mesh_id, &admin)).await;
        let verified = admin.client.audit_verify().await.expect("verifies");
        assert!(verified.valid, "the chain verifies from either replica: {verified:?}");
        admin.client.shutdown().await;
        assert!(verified.entries >= 600, "every message is in it: {verified:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_signs_in_whichever_replica_each_request_reaches() {
    let cluster = Cluster::start(&["alice"], &[]).await;
    let on_db = |args: &[&str]| {
        let mut all = vec!["--database-url", cluster.url.as_str()];
        all.extend_from_slice(args);
        operator(cluster.data.path(), &all)
    };
    on_db(&["account", "create", "--name", "alice"]);
    let addr = |replica: &Replica| format!("127.0.0.1:{}", replica.port).parse().expect("addr");
    let (one, two) = (addr(&cluster.one), addr(&cluster.two));

    // The device asks the first replica; the operator approves in the database; the device
    // polls the second; its token works on the first.
    let request = serde_json::json!({"hostname": "laptop", "platform": "linux", "arch": "x86_64", "app_version": "0.1.0",
                                     "confirm_key": Keypair::generate().public_hex()});
    let (status, code) = common::api(one, "POST", "/v1/device/code", None, Some(request)).await;
    assert_eq!(status, 200, "{code}");
    on_db(&["device", "approve", code["user_code"].as_str().expect("user code"), "--account", "alice"]);
    let form = format!(
        "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Adevice_code&device_code={}",
        code["device_code"].as_str().expect("device code")
    );
    let form_type = [("Content-Type", "application/x-www-form-urlencoded")];
    let (status, token) = common::http_with(two, "POST", "/v1/device/token", &form_type, Some(&form)).await;
    assert_eq!(status, 200, "{token}");
    let token: serde_json::Value = serde_json::from_str(&token).expect("json");
    let token = token["access_token"].as_str().expect("a token");
    let (status, account) = common::api(one, "GET", "/v1/account", Some(token), None).await;
    assert_eq!((status, &account["account"]["name"]), (200, &serde_json::json!("alice")), "{account}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_hears_the_receipt_of_a_recipient_on_another_replica() {
    let cluster = Cluster::start(&["alice", "bob"], &[]).await;
    let mut alice_config = config(&cluster.one.url(), &cluster.mesh_id, &cluster.members["alice"]);
    alice_config.delivery_receipts = true;
    let mut alice = common::Peer::connect(alice_config).await;
    let mut bob = cluster.connect(&cluster.two.url(), "bob").await;
    // Once alice's replica announced her, with her wish for receipts.
    listing_until(&bob, |n| n.len() == 2).await;
    let sent = alice.client.send(&cluster.key("bob"), b"tell me when", Priority::Now).await.expect("queued");
    assert_eq!(bob.message().await.text().expect("opens"), "tell me when");
    assert_eq!(alice.receipt().await, (sent.message_id, cluster.key("bob")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_hears_profile_changes_made_on_another_replica() {
    let cluster = Cluster::start(&["alice", "bob"], &[]).await;
    let mut follower = config(&cluster.one.url(), &cluster.mesh_id, &cluster.members["alice"]);
    follower.peer_updates = true;
    let mut alice = common::Peer::connect(follower).await;
    let bob = cluster.connect(&cluster.two.url(), "bob").await;
    assert_eq!(alice.system_event("peer_joined").await["name"], "bob");
    bob.client.set_summary("on replica two").await.expect("summary");
    let updated = alice.system_event("peer_updated").await;
    assert_eq!(updated["displayName"], "bob");
    assert_eq!(updated["summary"], "on replica two");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_change_on_one_replica_reaches_followers_on_the_other() {
    let cluster = Cluster::start(&["alice", "bob"], &[]).await;
    let mut follower = config(&cluster.two.url(), &cluster.mesh_id, &cluster.members["bob"]);
    follower.state_updates = true;
    let mut bob = common::Peer::connect(follower).await;
    let alice = cluster.connect(&cluster.one.url(), "alice").await;
    // The operator admitted both: the first to refresh makes the key, the other opens it.
    alice.client.refresh_mesh_keys(None, None).await.expect("alice's keys");
    bob.client.refresh_mesh_keys(None, None).await.expect("bob's keys");

    let written = alice.client.set_state("board/alice", serde_json::json!("reviewing"), None, None).await;
    let written = written.expect("writes");
    let event: protocol::StateChanged =
        serde_json::from_value(bob.system_event("state_changed").await).expect("a state change");
    assert_eq!(bob.client.open_state(&event.entry.expect("the entry read from the store")).expect("opens"), written);
    assert_eq!(alice.client.delete_state("board/alice", None).await.expect("deletes"), 1);
    let removed: protocol::StateChanged =
        serde_json::from_value(bob.system_event("state_changed").await).expect("a state change");
    assert_eq!((removed.version, removed.entry), (1, None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_replicas_watch_the_schedules_and_each_occurrence_is_queued_once() {
    let cluster = Cluster::start(&["alice", "bob"], &[]).await;
    let admin = cluster.add_admin();
    let alice = cluster.connect(&cluster.one.url(), "alice").await;
    let mut bob = cluster.connect(&cluster.two.url(), "bob").await;
    let start = broker_core::protocol::now_ms() + 500;
    let mut expected = HashMap::new();
    for n in 0..20u64 {
        let (text, due) = (format!("scheduled {n}"), start + n * 50);
        let when = broker_core::client::When::At(due);
        let scheduled = alice.client.schedule(&cluster.key("bob"), text.as_bytes(), Priority::Now, when).await;
        let id = scheduled.expect("scheduled").schedule_id;
        expected.insert(broker_core::schedule::occurrence_id(&id, due), text);
    }
    let (received, _) = receive_all(&mut bob, &expected).await;
    assert_eq!(received.len(), expected.len(), "every occurrence reached bob on the other replica");
    assert!(received.values().all(|n| *n == 1), "{received:?}");
    // Both replicas polled the same schedules: one queued each occurrence, the other found it
    // moved on (one audit entry per occurrence, written only with the queue entry).
    let admin = common::Peer::connect(config(&cluster.two.url(), &cluster.mesh_id, &admin)).await;
    let audited = admin.client.audit_query(Some("scheduled_message_queued"), 100, 0).await.expect("reads");
    assert_eq!(audited.total, 20);
}
