//! The `claudemesh-broker` binary on a real PostgreSQL server (`--database-url`): operator
//! commands on the database, readiness with the expected migration, messages that survive a
//! SIGKILL of the broker exactly once, a database restart the broker rides out without being
//! restarted, and a database that never holds a readable byte of a message.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use broker_core::client::{ClientConfig, ClientEvent, MeshClient};
use broker_core::crypto::Keypair;
use broker_core::protocol::Priority;
use broker_core::testing::postgres::PostgresServer;
use common::process::{BrokerProcess, free_port, operator, receive_all, send_until_cut_off, wait_ready};

const LAST_MIGRATION: &str = "0010_workspace";

/// A broker on the Postgres database `database_url`, or on the data directory's SQLite file,
/// with limits out of the way of a burst.
fn start_broker(data_dir: &Path, port: u16, log: &Path, database_url: Option<&str>) -> BrokerProcess {
    let mut env = vec![
        ("EXPECTED_MIGRATION", LAST_MIGRATION),
        ("RATE_LIMIT_BURST", "100000"),
        ("RATE_LIMIT_PER_MINUTE", "6000000"),
        ("PAIR_BURST", "100000"),
        ("PAIR_PER_MINUTE", "6000000"),
        ("PAIR_LOOP_TURNS", "100000"),
    ];
    env.extend(database_url.map(|url| ("DATABASE_URL", url)));
    BrokerProcess::start(data_dir, port, log, &env)
}

fn quick(mut config: ClientConfig) -> ClientConfig {
    config.backoff.initial = Duration::from_millis(50);
    config.backoff.max = Duration::from_millis(200);
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_on_postgres_keeps_messages_across_its_own_crash_and_a_database_restart() {
    let mut database = PostgresServer::start();
    let url = database.create_database("claudemesh");
    let data = tempfile::tempdir().expect("tempdir");
    let on_db = |args: &[&str]| {
        let mut all = vec!["--database-url", url.as_str()];
        all.extend_from_slice(args);
        operator(data.path(), &all)
    };
    let mesh = on_db(&["mesh", "create", "--name", "pg"]);
    let mesh_id = mesh["id"].as_str().expect("id").to_owned();
    let (alice_key, bob_key) = (Keypair::generate(), Keypair::generate());
    let alice = on_db(&["member", "add", "--mesh", "pg", "--pubkey", &alice_key.public_hex(), "--name", "alice"]);
    let bob = on_db(&["member", "add", "--mesh", "pg", "--pubkey", &bob_key.public_hex(), "--name", "bob"]);
    let listed = on_db(&["mesh", "list"]);
    assert_eq!(listed["meshes"][0]["slug"], "pg", "the operator reads the database: {listed}");
    assert!(!data.path().join("broker.db").exists(), "no SQLite file beside a Postgres store");

    let port = free_port();
    let broker_url = format!("http://127.0.0.1:{port}");
    let logs = tempfile::tempdir().expect("tempdir");
    let log = logs.path().join("broker.log");
    let mut broker = start_broker(data.path(), port, &log, Some(&url));
    wait_ready(port).await;

    let alice_id = alice["memberId"].as_str().expect("id").to_owned();
    let bob_id = bob["memberId"].as_str().expect("id").to_owned();
    let alice_seed = alice_key.seed_hex();
    let alice = common::Peer::connect(quick(ClientConfig::new(&broker_url, &mesh_id, &alice_id, alice_key))).await;
    let (bob_seed, bob_pubkey) = (bob_key.seed_hex(), bob_key.public_hex());

    // Bob is offline: everything queues in Postgres. The broker is killed mid-way.
    let sender = send_until_cut_off(alice.client.clone(), bob_pubkey.clone(), 300);
    tokio::time::sleep(Duration::from_millis(300)).await;
    broker.kill();
    let outcomes = sender.await.expect("sender");
    let acknowledged: HashMap<String, String> = outcomes
        .iter()
        .filter_map(|(text, outcome)| outcome.as_ref().ok().map(|receipt| (receipt.message_id.clone(), text.clone())))
        .collect();
    assert!(acknowledged.len() >= 10, "the broker acknowledged messages before the kill ({})", acknowledged.len());

    let _broker = start_broker(data.path(), port, &log, Some(&url));
    wait_ready(port).await;
    let bob_key = Keypair::from_secret_hex(&bob_seed).expect("bob's key");
    let mut bob = common::Peer::connect(quick(ClientConfig::new(&broker_url, &mesh_id, &bob_id, bob_key))).await;
    let (ids, texts) = receive_all(&mut bob, &acknowledged).await;
    for id in acknowledged.keys() {
        assert_eq!(ids.get(id), Some(&1), "acknowledged message {id} arrived exactly once");
    }
    assert!(texts.values().all(|n| *n == 1), "no text arrived twice");

    // The database goes down under the running broker: not ready, then ready again without a
    // restart of the broker, and messages flow.
    database.kill();
    let addr = format!("127.0.0.1:{port}").parse().expect("addr");
    let mut down = (0, String::new());
    for _ in 0..100 {
        down = common::http(addr, "GET", "/health/ready", None).await;
        if down.0 == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(down.0, 503, "not ready while the database is down: {}", down.1);
    assert!(down.1.contains("db_"), "{}", down.1);
    // A new session is refused with a clear reason, not accepted with nowhere to keep what it
    // sends (once the broker's own check noticed).
    for _ in 0..100 {
        if common::http(addr, "GET", "/metrics", None).await.1.contains("broker_db_healthy 0") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let alice_again = Keypair::from_secret_hex(&alice_seed).expect("alice's key");
    let (probe, mut probe_events) =
        MeshClient::start(quick(ClientConfig::new(&broker_url, &mesh_id, &alice_id, alice_again)));
    loop {
        match tokio::time::timeout(Duration::from_secs(10), probe_events.recv()).await.expect("an answer in time") {
            Some(ClientEvent::Refused { code, message, fatal }) => {
                assert_eq!(code, broker_core::protocol::ErrorCode::Internal);
                assert!(message.contains("cannot reach its database") && !fatal, "{message}");
                break;
            }
            Some(ClientEvent::Connected(_)) => panic!("a session was accepted while the database is down"),
            Some(_) => continue,
            None => panic!("the probe stopped"),
        }
    }
    probe.shutdown().await;
    database.start_again();
    wait_ready(port).await;
    let after = "secret-payload-after-restart";
    let receipt = loop {
        match alice.client.send(&bob_pubkey, after.as_bytes(), Priority::Now).await {
            Ok(receipt) => break receipt,
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    let (ids, _) = receive_all(&mut bob, &HashMap::from([(receipt.message_id.clone(), after.to_owned())])).await;
    assert_eq!(ids.get(&receipt.message_id), Some(&1), "delivered once after the database came back");

    // Nothing in the database is a readable message.
    let tables = database.query("claudemesh", "SELECT tablename FROM pg_tables WHERE schemaname = 'public'");
    let mut stored = String::new();
    for table in &tables {
        stored.extend(database.query("claudemesh", &format!("SELECT t::text FROM {table} t")));
    }
    assert!(stored.contains(&mesh_id), "sanity: the tables were read ({tables:?})");
    assert!(!stored.contains("secret-payload"), "no plaintext in the database");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_node_broker_moves_into_postgres_whole() {
    // A SQLite broker with a mesh, an account, an invite and messages queued for an offline member.
    let data = tempfile::tempdir().expect("tempdir");
    operator(data.path(), &["mesh", "create", "--name", "moving"]);
    let (alice_key, bob_key) = (Keypair::generate(), Keypair::generate());
    let alice = operator(
        data.path(),
        &["member", "add", "--mesh", "moving", "--pubkey", &alice_key.public_hex(), "--name", "alice"],
    );
    let bob = operator(
        data.path(),
        &["member", "add", "--mesh", "moving", "--pubkey", &bob_key.public_hex(), "--name", "bob"],
    );
    operator(data.path(), &["account", "create", "--name", "carol", "--email", "carol@example.test"]);
    operator(
        data.path(),
        &["invite", "create", "--mesh", "moving", "--max-uses", "2", "--public-url", "http://127.0.0.1:1"],
    );
    let mesh_id = alice["meshId"].as_str().expect("mesh").to_owned();
    let (alice_id, bob_id) =
        (alice["memberId"].as_str().expect("id").to_owned(), bob["memberId"].as_str().expect("id").to_owned());
    let port = free_port();
    let broker_url = format!("http://127.0.0.1:{port}");
    let logs = tempfile::tempdir().expect("tempdir");
    let log = logs.path().join("broker.log");
    let mut sqlite_broker = start_broker(data.path(), port, &log, None);
    wait_ready(port).await;
    let (alice_seed, bob_pubkey) = (alice_key.seed_hex(), bob_key.public_hex());
    let alice = common::Peer::connect(quick(ClientConfig::new(&broker_url, &mesh_id, &alice_id, alice_key))).await;
    let mut queued = HashMap::new();
    for n in 0..20 {
        let text = format!("queued-before-the-move-{n:02}");
        let receipt = alice.client.send(&bob_pubkey, text.as_bytes(), Priority::Next).await.expect("queued");
        queued.insert(receipt.message_id, text);
    }
    alice.client.shutdown().await;
    sqlite_broker.kill();

    // Into Postgres, whole.
    let database = PostgresServer::start();
    let url = database.create_database("moved");
    let moved = operator(data.path(), &["migrate", "--to", &url]);
    let rows = |table: &str| {
        moved["tables"].as_array().expect("tables").iter().find(|t| t["table"] == table).map(|t| t["rows"].clone())
    };
    assert_eq!(rows("queue"), Some(20.into()), "{moved}");
    assert_eq!(rows("members"), Some(3.into()), "operator, alice and bob: {moved}");
    assert_eq!(rows("accounts"), Some(1.into()), "{moved}");
    assert_eq!(rows("invites"), Some(1.into()), "{moved}");
    assert!(rows("audit_log").and_then(|r| r.as_u64()).is_some_and(|n| n >= 5), "{moved}");
    assert!(moved["auditScopes"].as_u64().is_some_and(|n| n >= 2), "the mesh's and the account's chains: {moved}");

    // A second move into the same database is refused, and leaves it as it was.
    let again = std::process::Command::new(common::process::BROKER)
        .arg("--data-dir")
        .arg(data.path())
        .args(["migrate", "--to", &url])
        .output()
        .expect("runs");
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("not empty"), "{}", String::from_utf8_lossy(&again.stderr));

    // Served from Postgres: bob gets every queued message once, and later ones follow them.
    let _broker = start_broker(data.path(), port, &log, Some(&url));
    wait_ready(port).await;
    let mut bob = common::Peer::connect(quick(ClientConfig::new(&broker_url, &mesh_id, &bob_id, bob_key))).await;
    let (ids, _) = receive_all(&mut bob, &queued).await;
    for id in queued.keys() {
        assert_eq!(ids.get(id), Some(&1), "queued message {id} arrived once after the move");
    }
    assert_eq!(ids.len(), queued.len(), "nothing else arrived");
    let alice_key = Keypair::from_secret_hex(&alice_seed).expect("alice's key");
    let alice = common::Peer::connect(quick(ClientConfig::new(&broker_url, &mesh_id, &alice_id, alice_key))).await;
    let after = alice.client.send(&bob_pubkey, b"after-the-move", Priority::Next).await.expect("sent");
    let (ids, texts) =
        receive_all(&mut bob, &HashMap::from([(after.message_id.clone(), "after-the-move".to_owned())])).await;
    assert_eq!(ids.get(&after.message_id), Some(&1));
    assert_eq!(texts.get("after-the-move"), Some(&1));
    let listed = operator(data.path(), &["--database-url", &url, "member", "list", "--mesh", "moving"]);
    assert!(listed.to_string().contains("\"bob\""), "the operator reads the moved members: {listed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_store_is_backed_up_while_serving_and_restores_into_either_store() {
    let database = PostgresServer::start();
    let url = database.create_database("live");
    let data = tempfile::tempdir().expect("tempdir");
    let on = |url: &str, args: &[&str]| {
        let mut all = vec!["--database-url", url];
        all.extend_from_slice(args);
        operator(data.path(), &all)
    };
    on(&url, &["mesh", "create", "--name", "kept"]);
    let (alice_key, bob_key) = (Keypair::generate(), Keypair::generate());
    let bob_pubkey = bob_key.public_hex();
    let alice = on(&url, &["member", "add", "--mesh", "kept", "--pubkey", &alice_key.public_hex(), "--name", "alice"]);
    let bob = on(&url, &["member", "add", "--mesh", "kept", "--pubkey", &bob_pubkey, "--name", "bob"]);
    let mesh_id = alice["meshId"].as_str().expect("mesh").to_owned();
    let (alice_id, bob_id) = (alice["memberId"].as_str().expect("id"), bob["memberId"].as_str().expect("id"));
    let port = free_port();
    let logs = tempfile::tempdir().expect("tempdir");
    let log = logs.path().join("broker.log");
    let _live = start_broker(data.path(), port, &log, Some(&url));
    wait_ready(port).await;
    let alice = common::Peer::connect(quick(ClientConfig::new(
        &format!("http://127.0.0.1:{port}"),
        &mesh_id,
        alice_id,
        alice_key,
    )))
    .await;
    let mut queued = HashMap::new();
    for n in 0..15 {
        let text = format!("kept-in-the-backup-{n:02}");
        let receipt = alice.client.send(&bob_pubkey, text.as_bytes(), Priority::Next).await.expect("queued");
        queued.insert(receipt.message_id, text);
    }

    // A backup while the broker serves: a portable directory.
    let backups = tempfile::tempdir().expect("tempdir");
    let backup = backups.path().join("b1");
    let made = on(&url, &["backup", "--to", backup.to_str().expect("utf-8")]);
    assert_eq!(made["manifest"]["queuedDeliveries"], 15, "{made}");
    assert_eq!(made["manifest"]["members"], 3, "{made}");

    // Into an empty Postgres database (once: a database with rows is refused) ...
    let restored_url = database.create_database("restored");
    let restored = on(&restored_url, &["restore", "--from", backup.to_str().expect("utf-8")]);
    assert_eq!(restored["manifest"]["queuedDeliveries"], 15, "{restored}");
    let again = std::process::Command::new(common::process::BROKER)
        .args(["--data-dir"])
        .arg(data.path())
        .args(["--database-url", &restored_url, "restore", "--from", backup.to_str().expect("utf-8")])
        .output()
        .expect("runs");
    assert!(!again.status.success() && String::from_utf8_lossy(&again.stderr).contains("not empty"));

    // ... and into a data directory's SQLite store.
    let sqlite_dir = tempfile::tempdir().expect("tempdir");
    operator(sqlite_dir.path(), &["restore", "--from", backup.to_str().expect("utf-8")]);
    let members = operator(sqlite_dir.path(), &["member", "list", "--mesh", "kept"]);
    assert!(members.to_string().contains("\"bob\""), "{members}");

    // A broker on the restored database delivers every queued message once.
    let restored_port = free_port();
    let _restored = start_broker(data.path(), restored_port, &log, Some(&restored_url));
    wait_ready(restored_port).await;
    let mut bob = common::Peer::connect(quick(ClientConfig::new(
        &format!("http://127.0.0.1:{restored_port}"),
        &mesh_id,
        bob_id,
        bob_key,
    )))
    .await;
    let (ids, _) = receive_all(&mut bob, &queued).await;
    for id in queued.keys() {
        assert_eq!(ids.get(id), Some(&1), "{id} arrived once from the restored database");
    }
}
