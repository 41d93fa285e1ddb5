//! The `claudemesh-broker` binary as a real process: operator commands, and `serve` on a free port.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use broker_core::client::ClientEvent;
use serde_json::Value;

pub const BROKER: &str = env!("CARGO_BIN_EXE_claudemesh-broker");

/// Runs an operator command with `--json` and returns its output.
pub fn operator(data_dir: &Path, args: &[&str]) -> Value {
    let output = Command::new(BROKER).arg("--data-dir").arg(data_dir).args(args).arg("--json").output().expect("runs");
    assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("json output")
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("binds").local_addr().expect("addr").port()
}

/// A broker process, killed when dropped so a failing test leaves nothing running.
pub struct BrokerProcess(Child);

impl BrokerProcess {
    /// `serve`s `data_dir` on 127.0.0.1:`port` with `env` set, its stderr appended to `log`.
    pub fn start(data_dir: &Path, port: u16, log: &Path, env: &[(&str, &str)]) -> BrokerProcess {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("log file");
        let child = Command::new(BROKER)
            .arg("--data-dir")
            .arg(data_dir)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("broker starts");
        BrokerProcess(child)
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Whether the process is still running (it has not exited or crashed).
    pub fn is_running(&mut self) -> bool {
        self.0.try_wait().expect("process status").is_none()
    }

    pub fn kill(&mut self) {
        self.0.kill().expect("SIGKILL");
        self.0.wait().expect("reaped");
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until the broker on `port` answers `/health/ready` with 200.
pub async fn wait_ready(port: u16) {
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_ok()
            && super::http(addr, "GET", "/health/ready", None).await.0 == 200
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("broker never became ready");
}

/// What one send of [`send_until_cut_off`] came to: its text, and the broker's answer.
pub type SendOutcome = (String, Result<broker_core::client::SendReceipt, broker_core::client::ClientError>);

/// Sends `secret-payload-NNNN` texts to `to` one after the other, up to `count`, in the
/// background, until the broker is cut off (the connection lost or the outbound buffer full).
pub fn send_until_cut_off(
    client: broker_core::client::MeshClient,
    to: String,
    count: usize,
) -> tokio::task::JoinHandle<Vec<SendOutcome>> {
    use broker_core::client::ClientError;
    tokio::spawn(async move {
        let mut outcomes = Vec::new();
        for n in 0..count {
            let text = format!("secret-payload-{n:04}");
            let outcome = client.send(&to, text.as_bytes(), broker_core::protocol::Priority::Next).await;
            let stop = matches!(outcome, Err(ClientError::ConnectionLost) | Err(ClientError::QueueFull(_)));
            outcomes.push((text, outcome));
            if stop && n > 0 {
                break;
            }
        }
        outcomes
    })
}

/// Receives and acknowledges until every id in `expected` arrived (or 20 s passed) and a quiet
/// moment followed, checking that each expected id opens to its text; how often each message id
/// and each text arrived.
pub async fn receive_all(
    bob: &mut super::Peer,
    expected: &HashMap<String, String>,
) -> (HashMap<String, usize>, HashMap<String, usize>) {
    let (mut ids, mut texts) = (HashMap::new(), HashMap::new());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let done = expected.keys().all(|id| ids.contains_key(id));
        let wait = if done {
            Duration::from_millis(300)
        } else {
            deadline.saturating_duration_since(tokio::time::Instant::now())
        };
        let Ok(Some(event)) = tokio::time::timeout(wait, bob.events.recv()).await else { break };
        let ClientEvent::Message(message) = event else { continue };
        bob.client.acknowledge(vec![message.message_id.clone()]).await.expect("ack");
        let text = message.text().expect("opens");
        if let Some(sent) = expected.get(&message.message_id) {
            assert_eq!(&text, sent, "message {} opens to what was sent", message.message_id);
        }
        *ids.entry(message.message_id.clone()).or_insert(0) += 1;
        *texts.entry(text).or_insert(0) += 1;
    }
    (ids, texts)
}
