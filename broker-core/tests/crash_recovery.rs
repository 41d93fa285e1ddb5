//! End to end with real processes: the `claudemesh-broker` binary is killed with SIGKILL while
//! messages are queued; after a restart every acknowledged message reaches the application
//! exactly once, and the database never held any plaintext.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use broker_core::client::{ClientConfig, When};
use broker_core::crypto::Keypair;
use common::process::{BrokerProcess, free_port, operator, receive_all, send_until_cut_off, wait_ready};

/// A data directory holding the mesh `crash` with members alice and bob, and the port and log
/// file of the broker serving it.
struct Crash {
    data: tempfile::TempDir,
    mesh_id: String,
    /// Member id and key of alice, then bob.
    members: [(String, Keypair); 2],
    port: u16,
    _logs: tempfile::TempDir,
    log: std::path::PathBuf,
}

impl Crash {
    fn new() -> Crash {
        let data = tempfile::tempdir().expect("tempdir");
        let mesh = operator(data.path(), &["mesh", "create", "--name", "crash"]);
        let mesh_id = mesh["id"].as_str().expect("id").to_owned();
        let member = |name: &str| {
            let key = Keypair::generate();
            let added = operator(
                data.path(),
                &["member", "add", "--mesh", "crash", "--pubkey", &key.public_hex(), "--name", name],
            );
            assert_eq!(added["meshId"], mesh_id);
            (added["memberId"].as_str().expect("id").to_owned(), key)
        };
        let members = [member("alice"), member("bob")];
        let logs = tempfile::tempdir().expect("tempdir");
        let log = logs.path().join("broker.log");
        Crash { data, mesh_id, members, port: free_port(), _logs: logs, log }
    }

    async fn start_broker(&self) -> BrokerProcess {
        let broker = start_broker(self.data.path(), self.port, &self.log);
        wait_ready(self.port).await;
        broker
    }

    /// A session of alice (0) or bob (1) that reconnects quickly.
    async fn connect(&self, member: usize) -> common::Peer {
        let (id, key) = &self.members[member];
        let key = Keypair::from_secret_hex(&key.seed_hex()).expect("key");
        let url = format!("http://127.0.0.1:{}", self.port);
        let mut config = ClientConfig::new(&url, &self.mesh_id, id, key);
        config.backoff.initial = Duration::from_millis(50);
        config.backoff.max = Duration::from_millis(200);
        common::Peer::connect(config).await
    }

    fn key(&self, member: usize) -> String {
        self.members[member].1.public_hex()
    }
}

/// Starts the broker with debug logs appended to `log` (checked for secrets afterwards).
fn start_broker(data_dir: &Path, port: u16, log: &Path) -> BrokerProcess {
    BrokerProcess::start(
        data_dir,
        port,
        log,
        &[
            ("RATE_LIMIT_BURST", "100000"),
            ("RATE_LIMIT_PER_MINUTE", "6000000"),
            ("PAIR_BURST", "100000"),
            ("PAIR_PER_MINUTE", "6000000"),
            ("PAIR_LOOP_TURNS", "100000"),
            ("RUST_LOG", "debug"),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_sigkill_exactly_once_and_the_database_holds_no_plaintext() {
    let crash = Crash::new();
    let (data, mesh_id, log) = (&crash.data, &crash.mesh_id, &crash.log);
    let bob_seed = crash.members[1].1.seed_hex();
    let mut broker = crash.start_broker().await;
    let alice = crash.connect(0).await;

    // Bob is offline: everything queues. Send in the background and kill the broker mid-way.
    let sender = send_until_cut_off(alice.client.clone(), crash.key(1), 400);
    tokio::time::sleep(Duration::from_millis(150)).await;
    broker.kill();
    let outcomes = sender.await.expect("sender");
    let acknowledged: HashMap<String, String> = outcomes
        .iter()
        .filter_map(|(text, outcome)| outcome.as_ref().ok().map(|receipt| (receipt.message_id.clone(), text.clone())))
        .collect();
    assert!(acknowledged.len() >= 10, "the broker acknowledged messages before the kill ({})", acknowledged.len());

    let mut broker = crash.start_broker().await;
    let mut bob = crash.connect(1).await;

    // Every acknowledged message arrives exactly once. A send whose ack the kill cut off may or
    // may not have been committed: it may arrive too (once), but nothing else may.
    let unconfirmed: Vec<&String> = outcomes.iter().filter(|(_, o)| o.is_err()).map(|(text, _)| text).collect();
    let (received, texts) = receive_all(&mut bob, &acknowledged).await;
    for text in texts.keys() {
        let acknowledged_text = acknowledged.values().any(|sent| sent == text);
        assert!(acknowledged_text || unconfirmed.contains(&text), "{text} was never sent or was refused");
    }
    for id in acknowledged.keys() {
        assert_eq!(received.get(id), Some(&1), "acknowledged message {id} arrived exactly once");
    }
    assert!(texts.values().all(|n| *n == 1), "no text arrived twice: {texts:?}");

    // The stored state never contained the plaintext (queue rows hold sealed boxes only).
    broker.kill();
    let mut stored = Vec::new();
    for entry in std::fs::read_dir(data.path()).expect("data dir") {
        let path = entry.expect("entry").path();
        if path.is_file() {
            stored.extend(std::fs::read(&path).expect("reads"));
        }
    }
    let stored = String::from_utf8_lossy(&stored);
    assert!(stored.contains(mesh_id.as_str()), "sanity: the database was read");
    for (text, _) in &outcomes {
        assert!(!stored.contains(text.as_str()), "plaintext {text} found in the broker's files");
    }
    assert!(!stored.contains("secret-payload"), "no plaintext fragment in the broker's files");

    // The broker's logs, at debug level, are JSON lines without any message content or secret.
    let log = std::fs::read_to_string(log).expect("log");
    assert!(log.lines().count() > 2, "the broker logged");
    for line in log.lines() {
        let entry: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|_| panic!("not a JSON log line: {line}"));
        assert!(entry["level"].is_string() && entry["timestamp"].is_string(), "{line}");
    }
    assert!(!log.contains("secret-payload"), "no plaintext in the logs");
    let seed = bob_seed.as_str();
    assert!(!log.contains(seed), "no secret key in the logs");
}

/// Scheduled messages fall due every 100 ms for three seconds while the broker is killed with
/// SIGKILL three times (before, among and after fire times): each is queued exactly once (the
/// database, read directly, holds one entry per occurrence) and arrives once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_scheduled_message_is_queued_exactly_once_across_sigkill() {
    let crash = Crash::new();
    let mut broker = crash.start_broker().await;
    let alice = crash.connect(0).await;
    let start = broker_core::protocol::now_ms() + 1_000;
    let mut expected = HashMap::new();
    for n in 0..30u64 {
        let (text, due) = (format!("secret-reminder-{n}"), start + n * 100);
        let scheduled = alice
            .client
            .schedule(&crash.key(1), text.as_bytes(), broker_core::protocol::Priority::Now, When::At(due))
            .await
            .expect("scheduled");
        expected.insert(broker_core::schedule::occurrence_id(&scheduled.schedule_id, due), text);
    }

    // Killed just before the first occurrence, then among the middle ones, then near the end.
    for kill_at in [start - 200, start + 1_250, start + 2_300] {
        tokio::time::sleep(Duration::from_millis(kill_at.saturating_sub(broker_core::protocol::now_ms()))).await;
        broker.kill();
        tokio::time::sleep(Duration::from_millis(300)).await;
        broker = crash.start_broker().await;
    }
    tokio::time::sleep(Duration::from_millis((start + 3_500).saturating_sub(broker_core::protocol::now_ms()))).await;
    broker.kill();
    let db = rusqlite::Connection::open(crash.data.path().join("broker.db")).expect("opens the database");
    let left: i64 = db.query_row("SELECT COUNT(*) FROM schedules", [], |row| row.get(0)).expect("counts");
    assert_eq!(left, 0, "every one-time schedule fired and ended");
    let mut queued = db.prepare("SELECT message_id, COUNT(*) FROM queue GROUP BY message_id").expect("query");
    let counts: HashMap<String, i64> = queued
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .expect("reads")
        .collect::<Result<_, _>>()
        .expect("rows");
    assert_eq!(counts.len(), expected.len(), "one queue entry per occurrence: {counts:?}");
    for id in expected.keys() {
        assert_eq!(counts.get(id), Some(&1), "occurrence {id} queued exactly once");
    }
    drop(queued);
    drop(db);

    let _broker = crash.start_broker().await;
    let mut bob = crash.connect(1).await;
    let (received, _) = receive_all(&mut bob, &expected).await;
    assert_eq!(received.len(), expected.len());
    assert!(received.values().all(|n| *n == 1), "each arrived once: {received:?}");

    // What was scheduled was sealed: neither the database nor the debug logs hold its text.
    let mut stored = std::fs::read_to_string(&crash.log).expect("log").into_bytes();
    for entry in std::fs::read_dir(crash.data.path()).expect("data dir") {
        let path = entry.expect("entry").path();
        if path.is_file() {
            stored.extend(std::fs::read(&path).expect("reads"));
        }
    }
    let stored = String::from_utf8_lossy(&stored);
    assert!(stored.contains("schedule_created"), "sanity: the audit log was read");
    assert!(!stored.contains("secret-reminder"), "scheduled text found in the broker's files or logs");
}
