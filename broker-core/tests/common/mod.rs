//! A real broker on 127.0.0.1:0 with a temporary data directory, and helpers to drive it.
#![allow(dead_code)]

pub mod accounts;
pub mod process;

use std::sync::Arc;
use std::time::Duration;

use broker_core::client::{ClientConfig, ClientEvent, InboundMessage, MeshClient, SessionProfile};
use broker_core::config::BrokerConfig;
use broker_core::crypto::{self, Keypair};
use broker_core::protocol::{self, ClientFrame, Hello, Role, ServerFrame};
use broker_core::server::{self, Broker};
use broker_core::store::{Durability, MemberRecord, NewMember, SqliteStore, Store};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

pub const WAIT: Duration = Duration::from_secs(10);

pub struct TestBroker {
    pub dir: tempfile::TempDir,
    pub store: Arc<SqliteStore>,
    pub broker: Broker,
    pub addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    served: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

pub struct TestMember {
    pub key: Keypair,
    pub record: MemberRecord,
}

impl TestBroker {
    pub async fn start() -> TestBroker {
        TestBroker::start_with(BrokerConfig::default()).await
    }

    pub async fn start_with(config: BrokerConfig) -> TestBroker {
        TestBroker::start_expecting(config, None).await
    }

    /// With `EXPECTED_MIGRATION` set to `expected_migration`.
    pub async fn start_expecting(config: BrokerConfig, expected_migration: Option<&str>) -> TestBroker {
        TestBroker::start_full(config, expected_migration, None).await
    }

    /// With every option: `EXPECTED_MIGRATION` and an SMTP mailer.
    pub async fn start_full(
        config: BrokerConfig,
        expected_migration: Option<&str>,
        mailer: Option<broker_core::email::Mailer>,
    ) -> TestBroker {
        let dir = tempfile::tempdir().expect("tempdir");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binds");
        TestBroker::serve(dir, listener, config, expected_migration, mailer)
    }

    fn serve(
        dir: tempfile::TempDir,
        listener: tokio::net::TcpListener,
        config: BrokerConfig,
        expected_migration: Option<&str>,
        mailer: Option<broker_core::email::Mailer>,
    ) -> TestBroker {
        let store = SqliteStore::open(&dir.path().join("broker.db"), Durability::Normal).expect("store opens");
        let addr = listener.local_addr().expect("local addr");
        let broker =
            Broker::new(config, store.clone(), format!("http://{addr}"), expected_migration.map(str::to_owned), mailer);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn(server::serve(listener, broker.clone(), async {
            let _ = stopped.await;
        }));
        TestBroker { dir, store, broker, addr, stop: Some(stop), served: Some(served) }
    }

    /// Stops this broker and serves the same data directory on the same address again.
    pub async fn restart(self, config: BrokerConfig) -> TestBroker {
        let mut old = self;
        old.stop().await;
        let listener = tokio::net::TcpListener::bind(old.addr).await.expect("rebinds the same port");
        let dir = std::mem::replace(&mut old.dir, tempfile::tempdir().expect("tempdir"));
        TestBroker::serve(dir, listener, config, None, None)
    }

    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Stops serving (sessions closed with 1001, state saved).
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(served) = self.served.take() {
            served.await.expect("serve task").expect("serve ok");
        }
    }

    /// A mesh with `names.len()` members, each with a fresh key.
    pub fn mesh(&self, name: &str, names: &[&str]) -> (String, Vec<TestMember>) {
        let creator = Keypair::generate();
        let (mesh, admin) =
            self.store.create_mesh(name, "", None, &new_member(&creator, names[0]), protocol::now_ms()).expect("mesh");
        let mut members = vec![TestMember { key: creator, record: admin }];
        for member_name in &names[1..] {
            members.push(self.add_member(&mesh.id, member_name, Role::Member));
        }
        (mesh.id, members)
    }

    pub fn add_member(&self, mesh_id: &str, name: &str, role: Role) -> TestMember {
        let key = Keypair::generate();
        let record =
            self.store.add_member(mesh_id, &new_member(&key, name), role, None, protocol::now_ms()).expect("member");
        TestMember { key, record }
    }

    pub fn client_config(&self, mesh_id: &str, member: &TestMember, display_name: &str) -> ClientConfig {
        let mut config = ClientConfig::new(&self.http_url(), mesh_id, &member.record.id, member.key.clone());
        config.profile = SessionProfile {
            display_name: Some(display_name.to_owned()),
            session_id: Some(format!("session-{display_name}")),
            pid: Some(std::process::id()),
            cwd: Some("/work/project".to_owned()),
            hostname: Some("testhost".to_owned()),
            peer_type: Some(protocol::PeerType::Ai),
            channel: Some("claude-code".to_owned()),
            model: Some("test-model".to_owned()),
            groups: vec![],
        };
        config.backoff.initial = Duration::from_millis(50);
        config.backoff.max = Duration::from_millis(200);
        config
    }

    /// A connected client; waits for its hello_ack.
    pub async fn connect(&self, mesh_id: &str, member: &TestMember, display_name: &str) -> Peer {
        Peer::connect(self.client_config(mesh_id, member, display_name)).await
    }
}

pub fn new_member(key: &Keypair, name: &str) -> NewMember {
    NewMember { pubkey: key.public_hex(), display_name: name.to_owned(), ..NewMember::default() }
}

/// A client with its event stream, and helpers to wait for what tests expect.
pub struct Peer {
    pub client: MeshClient,
    pub events: mpsc::Receiver<ClientEvent>,
    pub hello_ack: protocol::HelloAck,
}

impl Peer {
    pub async fn connect(config: ClientConfig) -> Peer {
        let (client, mut events) = MeshClient::start(config);
        let hello_ack = loop {
            match tokio::time::timeout(WAIT, events.recv()).await.expect("connects in time").expect("event stream") {
                ClientEvent::Connected(ack) => break ack,
                ClientEvent::Refused { code, message, .. } => panic!("refused: {code:?} {message}"),
                _ => continue,
            }
        };
        Peer { client, events, hello_ack }
    }

    /// The next inbound message (skipping other events), acknowledged.
    pub async fn message(&mut self) -> InboundMessage {
        let message = self.message_unacknowledged().await;
        self.client.acknowledge(vec![message.message_id.clone()]).await.expect("ack");
        message
    }

    pub async fn message_unacknowledged(&mut self) -> InboundMessage {
        loop {
            match tokio::time::timeout(WAIT, self.events.recv())
                .await
                .expect("a message in time")
                .expect("event stream")
            {
                ClientEvent::Message(message) => return message,
                _ => continue,
            }
        }
    }

    /// Asserts no message arrives within `window`.
    pub async fn no_message_within(&mut self, window: Duration) {
        let deadline = tokio::time::Instant::now() + window;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Err(_) => return,
                Ok(Some(ClientEvent::Message(message))) => panic!("unexpected message {:?}", message.text()),
                Ok(Some(_)) => continue,
                Ok(None) => return,
            }
        }
    }

    /// The data of the next system event named `event`, as the wire shows it.
    pub async fn system_event(&mut self, event: &str) -> serde_json::Value {
        loop {
            match tokio::time::timeout(WAIT, self.events.recv()).await.expect("an event in time").expect("event stream")
            {
                ClientEvent::System { event: got, .. } if got.name() == event => return got.data(),
                _ => continue,
            }
        }
    }

    /// The next delivery receipt: (message id, recipient member key).
    pub async fn receipt(&mut self) -> (String, String) {
        loop {
            match tokio::time::timeout(WAIT, self.events.recv())
                .await
                .expect("a receipt in time")
                .expect("event stream")
            {
                ClientEvent::Delivered { message_id, member_pubkey, .. } => return (message_id, member_pubkey),
                _ => continue,
            }
        }
    }

    /// All system event names seen within `window`.
    pub async fn system_events_within(&mut self, window: Duration) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + window;
        let mut names = Vec::new();
        while let Ok(Some(event)) = tokio::time::timeout_at(deadline, self.events.recv()).await {
            if let ClientEvent::System { event, .. } = event {
                names.push(event.name().to_owned());
            }
        }
        names
    }
}

/// A raw WebSocket, for handshake tests that need exact frames.
pub struct RawSocket {
    socket: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
}

impl RawSocket {
    pub async fn connect(url: &str) -> RawSocket {
        let (socket, _) = tokio_tungstenite::connect_async(url).await.expect("ws connects");
        RawSocket { socket }
    }

    pub async fn send_text(&mut self, text: &str) {
        self.socket.send(Message::text(text.to_owned())).await.expect("sends");
    }

    pub async fn send_frame(&mut self, frame: &ClientFrame) {
        self.send_text(&serde_json::to_string(frame).expect("serializes")).await;
    }

    /// Sends `frame`; false once the connection is gone.
    pub async fn try_send_frame(&mut self, frame: &ClientFrame) -> bool {
        let text = serde_json::to_string(frame).expect("serializes");
        self.socket.send(Message::text(text)).await.is_ok()
    }

    /// The next server frame, or None once closed; also returns the close code when closed.
    pub async fn next(&mut self) -> Result<ServerFrame, Option<u16>> {
        loop {
            match tokio::time::timeout(WAIT, self.socket.next()).await.expect("a frame in time") {
                Some(Ok(Message::Text(text))) => return Ok(serde_json::from_str(&text).expect("valid server frame")),
                Some(Ok(Message::Close(frame))) => return Err(frame.map(|f| u16::from(f.code))),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Err(None),
            }
        }
    }
}

/// A correctly signed hello for `member`, with a proven session key.
///
/// The hello signature covers no random part, so two hellos of one member in the same
/// millisecond would be the same signature and the second a replay: a timestamp within a second
/// of the previous one is moved past it. Timestamps far off (the skew tests) stay as given.
pub fn signed_hello(mesh_id: &str, member: &TestMember, timestamp: u64) -> Hello {
    signed_hello_with_session(mesh_id, member, timestamp, &Keypair::generate())
}

/// The terms of a fresh invite to `mesh_id` on this broker.
pub fn invite_terms(
    broker: &TestBroker,
    mesh_id: &str,
    role: broker_core::protocol::Role,
    max_uses: u32,
    expires_at: u64,
) -> broker_core::invite::InviteTerms {
    let mesh = broker.store.mesh(mesh_id).expect("read").expect("mesh");
    broker_core::invite::InviteTerms {
        mesh_id: mesh.id,
        mesh_slug: mesh.slug,
        mesh_name: mesh.name,
        broker_url: broker.http_url(),
        invite_id: broker_core::ids::new_id("inv"),
        role,
        max_uses,
        expires_at,
    }
}

/// `POST /join`'s `proof`: `key` proves it is held by the joiner.
pub fn join_proof(invite: &broker_core::invite::Invite, key: &Keypair) -> String {
    key.sign_hex(crypto::join_proof_bytes(&invite.invite_id, &invite.mesh_id, &key.public_hex()).as_bytes())
}

/// A `POST /join` body for a fresh key, with its proof.
pub fn join_body(invite: &broker_core::invite::Invite, display_name: Option<&str>) -> serde_json::Value {
    let key = Keypair::generate();
    let mut body =
        serde_json::json!({"invite": invite.to_token(), "pubkey": key.public_hex(), "proof": join_proof(invite, &key)});
    if let Some(name) = display_name {
        body["displayName"] = name.into();
    }
    body
}

/// [`signed_hello`] with a session key the caller holds.
pub fn signed_hello_with_session(mesh_id: &str, member: &TestMember, timestamp: u64, session: &Keypair) -> Hello {
    static LAST: std::sync::Mutex<u64> = std::sync::Mutex::new(0);
    let timestamp = {
        let mut last = LAST.lock().expect("timestamp lock");
        let timestamp = if timestamp <= *last && *last - timestamp < 1000 { *last + 1 } else { timestamp };
        *last = timestamp.max(*last);
        timestamp
    };
    let mut hello = Hello {
        mesh_id: mesh_id.to_owned(),
        member_id: member.record.id.clone(),
        pubkey: member.key.public_hex(),
        session_pubkey: Some(session.public_hex()),
        session_sig: Some(crypto::sign_session_binding(&member.key, mesh_id, &session.public_hex())),
        session_proof: Some(
            session.sign_hex(
                crypto::session_proof_bytes(
                    mesh_id,
                    &member.record.id,
                    &member.key.public_hex(),
                    &session.public_hex(),
                    timestamp,
                )
                .as_bytes(),
            ),
        ),
        display_name: Some("raw".into()),
        capabilities: vec![
            protocol::Capability::SessionSig.as_str().into(),
            protocol::Capability::HelloV2.as_str().into(),
        ],
        timestamp,
        ..Hello::default()
    };
    hello.sign(&member.key);
    hello
}

/// Fetches `path` over plain HTTP/1.1 (no client library needed for these few checks).
pub async fn http(addr: std::net::SocketAddr, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    http_with(addr, method, path, &[("Content-Type", "application/json")], body).await
}

/// A JSON API call with an optional bearer token; the body parsed as JSON (Null when empty).
pub async fn api(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    api_with_headers(addr, method, path, token, &[], body).await
}

/// [`api`] with more headers.
pub async fn api_with_headers(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    extra: &[(&str, &str)],
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(bearer) = &bearer {
        headers.push(("Authorization", bearer.as_str()));
    }
    headers.extend_from_slice(extra);
    let body = body.map(|b| b.to_string());
    let (status, text) = http_with(addr, method, path, &headers, body.as_deref()).await;
    (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::Null))
}

pub async fn http_with(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> (u16, String) {
    http_bytes(addr, method, path, headers, body.unwrap_or("").as_bytes()).await
}

/// A request whose body is any bytes (not necessarily UTF-8).
pub async fn http_bytes(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connects");
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{extra}Content-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(&[head.as_bytes(), body].concat()).await.expect("writes");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.expect("reads");
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status line");
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    // Chunked bodies: keep the JSON/text payload lines only.
    let body = if response.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(&body) } else { body };
    (status, body)
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else { break };
        if size == 0 {
            break;
        }
        out.push_str(&tail[..size.min(tail.len())]);
        rest = tail.get(size + 2..).unwrap_or("");
    }
    out
}
