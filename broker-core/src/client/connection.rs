//! The connection task behind a [`super::MeshClient`].

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use rand::Rng as _;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::{
    ClientConfig, ClientError, ClientEvent, ClientStats, Command, Correlation, DesiredState, InboundMessage, KeyRing,
    RecentIds, broker_urls,
};
use crate::crypto;
use crate::protocol::{
    self, Capability, ClientFrame, ErrorCode, Hello, HelloAck, ServerFrame, Stats, Status, SystemEvent,
};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;
type Reply = oneshot::Sender<Result<ServerFrame, ClientError>>;

/// Message ids remembered for de-duplication.
const RECENT_IDS: usize = 16 * 1024;
/// How soon changed stats counters reach the broker (and peers that follow them).
const STATS_CHANGE_CHECK: Duration = Duration::from_secs(5);
/// A message handed to the consumer less than this long ago and not yet acknowledged is taken to
/// be in hand; after that, a re-push hands it over again (its first handling failed).
const STILL_HANDLING: Duration = Duration::from_secs(30);

/// Initial read buffer of the connection. tungstenite zero-fills the free part of it before
/// every socket read: with its 128 KiB default that is a 128 KiB memset per read, for frames of
/// a few hundred bytes. It grows when a frame needs more.
const READ_BUFFER_BYTES: usize = 8 * 1024;

/// Refusals that will not go away by retrying: stop instead of hammering the broker.
fn is_fatal(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::Unauthorized
            | ErrorCode::BadSignature
            | ErrorCode::Malformed
            | ErrorCode::BadSessionPubkey
            | ErrorCode::Revoked
    )
}

/// Why a session ended.
enum Ended {
    Shutdown,
    Lost(String),
    Refused(ErrorCode, String),
}

struct Task {
    config: ClientConfig,
    keys: Arc<KeyRing>,
    desired: Arc<Mutex<DesiredState>>,
    stats: Arc<ClientStats>,
    events: mpsc::Sender<ClientEvent>,
    /// Frames waiting for a connection, with their reply channels.
    outbound: VecDeque<(ClientFrame, Option<(Correlation, Reply)>)>,
    /// Replies awaited on the current connection, by correlation id.
    awaiting: HashMap<String, Reply>,
    seen: RecentIds,
    acknowledged: RecentIds,
    started: Instant,
    /// The broker's WebSocket URLs (`broker_url` may list several replicas, comma-separated),
    /// and the one to try next: a connection that could not be made moves to the next.
    urls: Vec<String>,
    next_url: usize,
}

pub(super) async fn run(
    config: ClientConfig,
    keys: Arc<KeyRing>,
    desired: Arc<Mutex<DesiredState>>,
    stats: Arc<ClientStats>,
    mut commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<ClientEvent>,
) {
    let urls = broker_urls(&config.broker_url);
    let mut task = Task {
        urls,
        next_url: 0,
        config,
        keys,
        desired,
        stats,
        events,
        outbound: VecDeque::new(),
        awaiting: HashMap::new(),
        seen: RecentIds::new(RECENT_IDS),
        acknowledged: RecentIds::new(RECENT_IDS),
        started: Instant::now(),
    };
    let mut attempt: u32 = 0;
    loop {
        let ended = match task.connect().await {
            Ok((socket, ack)) => {
                attempt = 0;
                task.emit(ClientEvent::Connected(ack)).await;
                task.session(socket, &mut commands).await
            }
            Err(ended) => {
                task.next_url = (task.next_url + 1) % task.urls.len();
                ended
            }
        };
        task.fail_awaiting();
        match ended {
            Ended::Shutdown => return,
            Ended::Refused(code, message) => {
                let fatal = is_fatal(code);
                task.emit(ClientEvent::Refused { code, message: message.clone(), fatal }).await;
                if fatal {
                    task.fail_outbound(ClientError::Stopped(format!("{}: {message}", code.as_str())));
                    return;
                }
                if code == ErrorCode::Replay {
                    continue;
                }
            }
            Ended::Lost(reason) => task.emit(ClientEvent::Disconnected { reason }).await,
        }
        // The backoff grows once per round over every URL: the next replica is tried soon.
        let round = attempt / task.urls.len() as u32;
        let delay = task.config.backoff.delay(round, rand::thread_rng().r#gen::<f64>());
        attempt = attempt.saturating_add(1);
        if task.wait(delay, &mut commands).await.is_err() {
            return;
        }
    }
}

impl Task {
    async fn emit(&self, event: ClientEvent) {
        // A consumer that dropped its receiver simply stops getting events.
        let _ = self.events.send(event).await;
    }

    fn fail_awaiting(&mut self) {
        for (_, reply) in self.awaiting.drain() {
            let _ = reply.send(Err(ClientError::ConnectionLost));
        }
    }

    fn fail_outbound(&mut self, error: ClientError) {
        for (_, reply) in self.outbound.drain(..) {
            if let Some((_, reply)) = reply {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }

    /// Queues a command while disconnected. Err when the task must end.
    fn buffer(&mut self, command: Command) -> Result<(), ()> {
        match command {
            Command::Frame { frame, reply } => {
                if self.outbound.len() >= self.config.outbound_capacity {
                    if let Some((_, reply)) = reply {
                        let _ = reply.send(Err(ClientError::QueueFull(self.outbound.len())));
                    }
                } else {
                    self.outbound.push_back((frame, reply));
                }
                Ok(())
            }
            // Unacknowledged pushes come again after the reconnect; remembering the ids lets
            // the de-duplication re-acknowledge them then instead of swallowing them.
            Command::Acknowledge(ids) => {
                for id in &ids {
                    self.acknowledged.insert(id);
                }
                Ok(())
            }
            Command::Shutdown(done) => {
                self.fail_outbound(ClientError::Stopped("shut down".into()));
                let _ = done.send(());
                Err(())
            }
        }
    }

    /// Sleeps `delay` while buffering commands.
    async fn wait(&mut self, delay: Duration, commands: &mut mpsc::Receiver<Command>) -> Result<(), ()> {
        let deadline = tokio::time::sleep(delay);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => return Ok(()),
                command = commands.recv() => match command {
                    Some(command) => self.buffer(command)?,
                    None => return Err(()),
                },
            }
        }
    }

    fn hello(&self) -> Hello {
        let config = &self.config;
        let timestamp = protocol::now_ms();
        let session = self.keys.session.public_hex();
        let profile = &config.profile;
        let mut hello = Hello {
            mesh_id: config.mesh_id.clone(),
            member_id: config.member_id.clone(),
            pubkey: self.keys.member.public_hex(),
            session_sig: Some(crypto::sign_session_binding(&self.keys.member, &config.mesh_id, &session)),
            session_proof: Some(
                self.keys.session.sign_hex(
                    crypto::session_proof_bytes(
                        &config.mesh_id,
                        &config.member_id,
                        &self.keys.member.public_hex(),
                        &session,
                        timestamp,
                    )
                    .as_bytes(),
                ),
            ),
            session_pubkey: Some(session),
            display_name: profile.display_name.clone(),
            session_id: profile.session_id.clone(),
            pid: profile.pid,
            cwd: profile.cwd.clone(),
            hostname: profile.hostname.clone(),
            peer_type: profile.peer_type,
            channel: profile.channel.clone(),
            model: profile.model.clone(),
            groups: Some(self.desired.lock().expect("desired lock").groups.clone()),
            protocol_version: Some(protocol::PROTOCOL_VERSION),
            capabilities: Capability::ALL
                .into_iter()
                .filter(|c| match c {
                    Capability::DeliveryReceipt => config.delivery_receipts,
                    Capability::PeerUpdates => config.peer_updates,
                    Capability::StateUpdates => config.state_updates,
                    _ => true,
                })
                .map(|c| c.as_str().to_owned())
                .collect(),
            timestamp,
            signature: String::new(),
        };
        hello.sign(&self.keys.member);
        hello
    }

    async fn connect(&mut self) -> Result<(Socket, HelloAck), Ended> {
        let url = self.urls[self.next_url].clone();
        let hello_timeout = self.config.hello_timeout;
        let connecting = async {
            // Frames are small and latency matters: no Nagle delay on the socket.
            let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER_BYTES);
            let connector = if url.starts_with("wss://") {
                let tls = super::tls::client_config().map_err(|e| Ended::Lost(e.to_string()))?;
                tokio_tungstenite::Connector::Rustls(tls)
            } else {
                tokio_tungstenite::Connector::Plain
            };
            let (mut socket, _) =
                tokio_tungstenite::connect_async_tls_with_config(url.as_str(), Some(config), true, Some(connector))
                    .await
                    .map_err(|e| Ended::Lost(format!("cannot connect to {url}: {e}")))?;
            let hello = serde_json::to_string(&ClientFrame::Hello(self.hello())).expect("hello serializes");
            socket.send(Message::text(hello)).await.map_err(|e| Ended::Lost(format!("hello not sent: {e}")))?;
            loop {
                match socket.next().await {
                    Some(Ok(Message::Text(text))) => match serde_json::from_str::<ServerFrame>(&text) {
                        Ok(ServerFrame::HelloAck(ack)) => return Ok((socket, ack)),
                        Ok(ServerFrame::Error(error)) => return Err(Ended::Refused(error.code, error.message)),
                        _ => continue,
                    },
                    Some(Ok(Message::Close(frame))) => {
                        return Err(Ended::Lost(format!(
                            "closed during hello: {}",
                            frame.map(|f| f.reason.to_string()).unwrap_or_default()
                        )));
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Err(Ended::Lost(format!("hello failed: {e}"))),
                    None => return Err(Ended::Lost("closed during hello".into())),
                }
            }
        };
        match tokio::time::timeout(hello_timeout, connecting).await {
            Ok(result) => result,
            Err(_) => Err(Ended::Lost(format!("no hello_ack within {hello_timeout:?}"))),
        }
    }

    /// Runs one connected session until it ends.
    async fn session(&mut self, mut socket: Socket, commands: &mut mpsc::Receiver<Command>) -> Ended {
        if let Err(ended) = self.restore(&mut socket).await {
            return ended;
        }
        // Counters that changed go out within STATS_CHANGE_CHECK; the uptime alone, every
        // `stats_interval`.
        let check = self.config.stats_interval.min(STATS_CHANGE_CHECK);
        let mut stats_tick = tokio::time::interval_at(Instant::now() + check, check);
        let mut reported: Option<(Stats, Instant)> = None;
        let mut last_heard = Instant::now();
        let mut silence_check = tokio::time::interval(self.config.silence_timeout / 3);
        loop {
            tokio::select! {
                command = commands.recv() => {
                    let Some(command) = command else { return self.close(&mut socket).await };
                    if let Some(ended) = self.handle_command(&mut socket, command).await {
                        return ended;
                    }
                }
                message = socket.next() => {
                    last_heard = Instant::now();
                    match message {
                        Some(Ok(Message::Text(text))) => {
                            if let Some(ended) = self.handle_frame(&mut socket, &text).await {
                                return ended;
                            }
                        }
                        Some(Ok(Message::Close(frame))) => {
                            let reason = frame.map(|f| format!("{} {}", u16::from(f.code), f.reason)).unwrap_or_default();
                            return Ended::Lost(format!("broker closed the connection ({reason})"));
                        }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => return Ended::Lost(e.to_string()),
                        None => return Ended::Lost("connection closed".into()),
                    }
                }
                _ = stats_tick.tick() => {
                    let stats = self.current_stats();
                    let due = reported.is_none_or(|(last, at)| {
                        Stats { uptime: 0, ..last } != Stats { uptime: 0, ..stats } || at.elapsed() >= self.config.stats_interval
                    });
                    if due {
                        if let Err(e) = self.write(&mut socket, &ClientFrame::SetStats(protocol::SetStats { stats })).await {
                            return e;
                        }
                        reported = Some((stats, Instant::now()));
                    }
                }
                _ = silence_check.tick() => {
                    if last_heard.elapsed() >= self.config.silence_timeout {
                        return Ended::Lost(format!("nothing from the broker for {:?}", self.config.silence_timeout));
                    }
                }
            }
        }
    }

    fn current_stats(&self) -> Stats {
        Stats {
            messages_in: self.stats.messages_in.load(Ordering::Relaxed),
            messages_out: self.stats.messages_out.load(Ordering::Relaxed),
            tool_calls: self.stats.tool_calls.load(Ordering::Relaxed),
            uptime: self.started.elapsed().as_secs(),
            errors: self.stats.errors.load(Ordering::Relaxed),
        }
    }

    /// Re-applies the session's state and flushes what was buffered while disconnected.
    async fn restore(&mut self, socket: &mut Socket) -> Result<(), Ended> {
        let desired = self.desired.lock().expect("desired lock").clone();
        if let Some(summary) = desired.summary {
            self.write(socket, &ClientFrame::SetSummary(protocol::SetSummary { summary })).await?;
        }
        if let Some((status, source)) = desired.status.filter(|(s, _)| *s != Status::Idle) {
            self.write(socket, &ClientFrame::SetStatus(protocol::SetStatus { status, source: Some(source) })).await?;
        }
        while let Some((frame, reply)) = self.outbound.pop_front() {
            self.write(socket, &frame).await?;
            if let Some((correlation, reply)) = reply {
                self.awaiting.insert(correlation_key(&correlation), reply);
            }
        }
        Ok(())
    }

    async fn write(&self, socket: &mut Socket, frame: &ClientFrame) -> Result<(), Ended> {
        let text = serde_json::to_string(frame).expect("client frames serialize");
        socket.send(Message::text(text)).await.map_err(|e| Ended::Lost(format!("write failed: {e}")))
    }

    async fn close(&self, socket: &mut Socket) -> Ended {
        let frame = CloseFrame { code: CloseCode::Normal, reason: "bye".into() };
        let _ = tokio::time::timeout(Duration::from_secs(2), socket.close(Some(frame))).await;
        Ended::Shutdown
    }

    async fn handle_command(&mut self, socket: &mut Socket, command: Command) -> Option<Ended> {
        match command {
            Command::Frame { frame, reply } => {
                if let Some((correlation, reply)) = reply {
                    self.awaiting.insert(correlation_key(&correlation), reply);
                }
                self.write(socket, &frame).await.err()
            }
            Command::Acknowledge(ids) => {
                for id in &ids {
                    self.acknowledged.insert(id);
                }
                self.write(socket, &ClientFrame::Delivered(protocol::Delivered { message_ids: ids })).await.err()
            }
            Command::Shutdown(done) => {
                let ended = self.close(socket).await;
                self.fail_outbound(ClientError::Stopped("shut down".into()));
                let _ = done.send(());
                Some(ended)
            }
        }
    }

    async fn handle_frame(&mut self, socket: &mut Socket, text: &str) -> Option<Ended> {
        let frame = match serde_json::from_str::<ServerFrame>(text) {
            Ok(frame) => frame,
            Err(error) => {
                tracing::warn!(%error, "ignoring a frame this client does not understand");
                return None;
            }
        };
        match frame {
            ServerFrame::Push(push) if push.subtype.as_deref() == Some(protocol::SYSTEM_SUBTYPE) => {
                let name = push.event.unwrap_or_default();
                match SystemEvent::parse(&name, push.event_data.unwrap_or_default()) {
                    Ok(event) => self.emit(ClientEvent::System { event, created_at: push.created_at }).await,
                    // A newer broker's event: nothing this client could act on.
                    Err(error) => tracing::debug!(event = %name, %error, "ignoring a system event"),
                }
            }
            ServerFrame::Push(push) => {
                // A re-push (after a reconnect) of something already handed over.
                if self.acknowledged.contains(&push.message_id) {
                    // The consumer stored it; the broker's new session just does not know yet.
                    let ack = ClientFrame::Delivered(protocol::Delivered { message_ids: vec![push.message_id] });
                    return self.write(socket, &ack).await.err();
                }
                if let Some(at) = self.seen.seen_at(&push.message_id)
                    && at.elapsed() < STILL_HANDLING
                {
                    // Handed over moments ago: the consumer is still on it.
                    return None;
                }
                // New, or handed over long ago and never acknowledged (the consumer could not
                // store it): hand it over (again).
                self.seen.insert(&push.message_id);
                self.stats.messages_in.fetch_add(1, Ordering::Relaxed);
                let body = self.keys.open(&push);
                if body.is_err() {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                }
                let (body, verified) = match body {
                    Ok((plaintext, verified)) => (Ok(plaintext), verified),
                    Err(error) => (Err(error), false),
                };
                let message_id = push.message_id.clone();
                self.emit(ClientEvent::Message(InboundMessage {
                    message_id: push.message_id,
                    mesh_id: push.mesh_id,
                    sender_pubkey: push.sender_pubkey,
                    sender_member_pubkey: push.sender_member_pubkey,
                    verified,
                    priority: push.priority,
                    target_spec: push.target_spec,
                    created_at: push.created_at,
                    body,
                }))
                .await;
                if self.config.auto_acknowledge {
                    self.acknowledged.insert(&message_id);
                    let ack = ClientFrame::Delivered(protocol::Delivered { message_ids: vec![message_id] });
                    return self.write(socket, &ack).await.err();
                }
            }
            ServerFrame::Ack(ref ack) => {
                let key = ack.id.clone().map(|id| correlation_key(&Correlation::Ack(id)));
                self.answer(key, frame);
            }
            ServerFrame::Error(error) => {
                if error.code == ErrorCode::Revoked {
                    return Some(Ended::Refused(error.code, error.message));
                }
                let key = error.req_id.clone().map(|id| correlation_key(&Correlation::Request(id)));
                match key.and_then(|k| self.awaiting.remove(&k)) {
                    Some(reply) => {
                        let _ = reply.send(Ok(ServerFrame::Error(error)));
                    }
                    None => self.emit(ClientEvent::Error(error)).await,
                }
            }
            ServerFrame::Receipt(receipt) => {
                self.emit(ClientEvent::Delivered {
                    message_id: receipt.message_id,
                    member_pubkey: receipt.member_pubkey,
                    delivered_at: receipt.delivered_at,
                })
                .await;
            }
            ServerFrame::HelloAck(_) => {}
            // Every other frame answers a request by its `_reqId`.
            reply => {
                let key = reply.req_id().map(|id| correlation_key(&Correlation::Request(id.to_owned())));
                self.answer(key, reply);
            }
        }
        None
    }

    fn answer(&mut self, key: Option<String>, frame: ServerFrame) {
        if let Some(reply) = key.and_then(|k| self.awaiting.remove(&k)) {
            let _ = reply.send(Ok(frame));
        }
    }
}

fn correlation_key(correlation: &Correlation) -> String {
    match correlation {
        Correlation::Ack(id) => format!("ack:{id}"),
        Correlation::Request(id) => format!("req:{id}"),
    }
}
