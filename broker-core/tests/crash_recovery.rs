//! End to end with real processes: the `claudemesh-broker` binary is killed with SIGKILL while
//! messages are queued; after a restart every acknowledged message reaches the application
//! exactly once, and the database never held any plaintext.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use broker_core::client::{ClientConfig, ClientError};
use broker_core::crypto::Keypair;
use broker_core::protocol::Priority;
use serde_json::Value;

const BROKER: &str = env!("CARGO_BIN_EXE_claudemesh-broker");

fn operator(data_dir: &Path, args: &[&str]) -> Value {
    let output = Command::new(BROKER).arg("--data-dir").arg(data_dir).args(args).arg("--json").output().expect("runs");
    assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("json output")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("binds").local_addr().expect("addr").port()
}

fn start_broker(data_dir: &Path, port: u16) -> Child {
    Command::new(BROKER)
        .arg("--data-dir")
        .arg(data_dir)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .env("RATE_LIMIT_BURST", "100000")
        .env("RATE_LIMIT_PER_MINUTE", "6000000")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("broker starts")
}

async fn wait_ready(port: u16) {
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_ok()
            && common::http(addr, "GET", "/health/ready", None).await.0 == 200
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("broker never became ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_sigkill_exactly_once_and_the_database_holds_no_plaintext() {
    let data = tempfile::tempdir().expect("tempdir");
    let mesh = operator(data.path(), &["mesh", "create", "--name", "crash"]);
    let mesh_id = mesh["id"].as_str().expect("id").to_owned();
    let (alice_key, bob_key) = (Keypair::generate(), Keypair::generate());
    let alice = operator(
        data.path(),
        &["member", "add", "--mesh", "crash", "--pubkey", &alice_key.public_hex(), "--name", "alice"],
    );
    let bob = operator(
        data.path(),
        &["member", "add", "--mesh", "crash", "--pubkey", &bob_key.public_hex(), "--name", "bob"],
    );
    assert_eq!(alice["meshId"], mesh_id);

    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut broker = start_broker(data.path(), port);
    wait_ready(port).await;

    let mut alice_config = ClientConfig::new(&url, &mesh_id, alice["memberId"].as_str().expect("id"), alice_key);
    alice_config.backoff.initial = Duration::from_millis(50);
    alice_config.backoff.max = Duration::from_millis(200);
    let alice = common::Peer::connect(alice_config).await;

    // Bob is offline: everything queues. Send in the background and kill the broker mid-way.
    let bob_hex = bob_key.public_hex();
    let sender = {
        let client = alice.client.clone();
        tokio::spawn(async move {
            let mut outcomes = Vec::new();
            for n in 0..400 {
                let text = format!("secret-payload-{n:04}");
                let outcome = client.send(&bob_hex, text.as_bytes(), Priority::Next).await;
                let stop = matches!(outcome, Err(ClientError::ConnectionLost) | Err(ClientError::QueueFull(_)));
                outcomes.push((text, outcome));
                if stop && n > 0 {
                    break;
                }
            }
            outcomes
        })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    broker.kill().expect("SIGKILL");
    broker.wait().expect("reaped");
    let outcomes = sender.await.expect("sender");
    let acknowledged: HashMap<String, String> = outcomes
        .iter()
        .filter_map(|(text, outcome)| outcome.as_ref().ok().map(|receipt| (receipt.message_id.clone(), text.clone())))
        .collect();
    assert!(acknowledged.len() >= 10, "the broker acknowledged messages before the kill ({})", acknowledged.len());

    let mut broker = start_broker(data.path(), port);
    wait_ready(port).await;
    let mut bob_config = ClientConfig::new(&url, &mesh_id, bob["memberId"].as_str().expect("id"), bob_key);
    bob_config.backoff.initial = Duration::from_millis(50);
    let mut bob = common::Peer::connect(bob_config).await;

    // Every acknowledged message must arrive. So may the send the kill cut off (the broker can
    // commit it and die before its ack leaves): it is not counted as acknowledged, and it comes
    // last. Wait for the acknowledged ones, then listen a little longer for anything else.
    let mut received: HashMap<String, (String, usize)> = HashMap::new();
    fn record(received: &mut HashMap<String, (String, usize)>, message: broker_core::client::InboundMessage) {
        let text = message.text().expect("opens");
        received.entry(message.message_id).or_insert((text, 0)).1 += 1;
    }
    while !acknowledged.keys().all(|id| received.contains_key(id)) {
        record(&mut received, bob.message().await);
    }
    while let Ok(message) = tokio::time::timeout(Duration::from_millis(300), bob.message()).await {
        record(&mut received, message);
    }
    let cut_off: Vec<&str> = outcomes.iter().filter(|(_, o)| o.is_err()).map(|(text, _)| text.as_str()).collect();
    for (id, (text, count)) in &received {
        assert_eq!(*count, 1, "message {id} ({text}) arrived exactly once");
        match acknowledged.get(id) {
            Some(expected) => assert_eq!(text, expected),
            None => {
                assert!(cut_off.contains(&text.as_str()), "{text} arrived but was neither acknowledged nor cut off")
            }
        }
    }

    // The stored state never contained the plaintext (queue rows hold sealed boxes only).
    broker.kill().expect("SIGKILL");
    broker.wait().expect("reaped");
    let mut stored = Vec::new();
    for entry in std::fs::read_dir(data.path()).expect("data dir") {
        let path = entry.expect("entry").path();
        if path.is_file() {
            stored.extend(std::fs::read(&path).expect("reads"));
        }
    }
    let stored = String::from_utf8_lossy(&stored);
    assert!(stored.contains(&mesh_id), "sanity: the database was read");
    for (text, _) in &outcomes {
        assert!(!stored.contains(text.as_str()), "plaintext {text} found in the broker's files");
    }
    assert!(!stored.contains("secret-payload"), "no plaintext fragment in the broker's files");
}
