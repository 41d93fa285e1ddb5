//! The mesh client: one WebSocket session to one mesh, kept alive across broker restarts.
//!
//! [`MeshClient::start`] spawns a connection task and returns a cheap, clonable handle plus a
//! stream of [`ClientEvent`]s. The task says hello with a per-process session key proven by the
//! member key, reconnects with capped, jittered exponential backoff, buffers a bounded number of
//! frames while disconnected (a clear error when full, never a silent drop), opens and
//! verifies inbound messages, and drops duplicates by message id. Sealing happens here, in the
//! handle: direct messages are `crypto_box`ed to the recipient member's key, group and
//! broadcast messages use the multi-recipient envelope. The broker never sees plaintext.
//!
//! Delivery acknowledgements are the consumer's call: it acknowledges a message with
//! [`MeshClient::acknowledge`] once it stored it safely (or sets `auto_acknowledge`).

mod backoff;
mod connection;
mod dedup;
pub mod device_login;
mod keys;
#[cfg(feature = "memory-index")]
pub mod local_db;
#[cfg(feature = "memory-index")]
pub mod memory_index;
mod mesh_keys;
pub mod tls;
mod workspace;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

pub use backoff::Backoff;
pub use dedup::RecentIds;
pub use keys::{KeyRing, OpenError};
pub use mesh_keys::{MeshKeyError, MeshKeyStatus};
pub use workspace::{MemoryChange, MemoryItem, StateItem, WorkspaceError};

use crate::crypto::{CryptoError, Keypair};
use crate::protocol::{
    self, ClientFrame, Enc, ErrorCode, ErrorFrame, GroupMembership, HelloAck, PeerInfo, PeerType, Priority, Recipient,
    SendRejection, ServerFrame, Status, StatusSource, SystemEvent, Target,
};

/// What this session tells the mesh about itself.
#[derive(Debug, Clone, Default)]
pub struct SessionProfile {
    pub display_name: Option<String>,
    pub session_id: Option<String>,
    pub pid: Option<u32>,
    pub cwd: Option<String>,
    pub hostname: Option<String>,
    pub peer_type: Option<PeerType>,
    pub channel: Option<String>,
    pub model: Option<String>,
    pub groups: Vec<GroupMembership>,
}

/// A mesh's peer list as the broker sent it.
#[derive(Debug, Clone, Default)]
pub struct PeerListing {
    pub peers: Vec<PeerInfo>,
    /// Connected sessions the broker left out, to keep the reply within one frame and to keep
    /// one member's many sessions from crowding out the others.
    pub omitted: usize,
}

#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `ws://host:port/ws`, or the broker's `http(s)://` base URL; several replicas' URLs
    /// separated by commas are tried in turn (see [`broker_urls`]).
    pub broker_url: String,
    pub mesh_id: String,
    pub member_id: String,
    pub member_key: Keypair,
    /// Generated once per process and reused across reconnects.
    pub session_key: Keypair,
    pub profile: SessionProfile,
    pub backoff: Backoff,
    /// Frames buffered while disconnected.
    pub outbound_capacity: usize,
    /// How long a send waits for the broker's ack, and a request for its reply.
    pub request_timeout: Duration,
    pub hello_timeout: Duration,
    /// Acknowledge each message as soon as it is handed to the consumer.
    pub auto_acknowledge: bool,
    /// How often self-reported stats go to the broker when only the uptime changed (changed
    /// counters go within five seconds).
    pub stats_interval: Duration,
    /// Reconnect when nothing (not even a ping) came from the broker for this long.
    pub silence_timeout: Duration,
    /// Ask for `receipt` frames (`ClientEvent::Delivered`) for what this session sends. Off by
    /// default: a receipt is one more frame per recipient, and only a front end that shows
    /// delivery states reads them.
    pub delivery_receipts: bool,
    /// Ask for `peer_updated` events (`ClientEvent::System`) whenever another session of the
    /// mesh changes its status, summary, groups or stats. Off by default: only a front end that
    /// shows peers live reads them.
    pub peer_updates: bool,
    /// Ask for `state_changed` events whenever a shared-state entry of the mesh is written or
    /// removed ([`MeshClient::open_state`] reads them). Off by default.
    pub state_updates: bool,
    /// Ask the broker to keep each sent message's delivery status per recipient
    /// ([`MeshClient::message_status`]). Off by default: it costs the broker a row per
    /// recipient, which a front end that never asks need not pay.
    pub track_messages: bool,
}

impl ClientConfig {
    pub fn new(broker_url: &str, mesh_id: &str, member_id: &str, member_key: Keypair) -> ClientConfig {
        ClientConfig {
            broker_url: broker_url.to_owned(),
            mesh_id: mesh_id.to_owned(),
            member_id: member_id.to_owned(),
            member_key,
            session_key: Keypair::generate(),
            profile: SessionProfile::default(),
            backoff: Backoff::default(),
            outbound_capacity: 100,
            request_timeout: Duration::from_secs(10),
            hello_timeout: Duration::from_secs(10),
            auto_acknowledge: false,
            stats_interval: Duration::from_secs(60),
            silence_timeout: Duration::from_secs(90),
            delivery_receipts: false,
            peer_updates: false,
            state_updates: false,
            track_messages: false,
        }
    }
}

/// `http(s)://host[:port][/]` → `ws(s)://host[:port]/ws`; a `ws(s)://` URL is kept as is.
/// The WebSocket URLs of `broker_url`: one, or several replicas of one broker separated by
/// commas (`wss://a.example,wss://b.example`), tried in turn. Never empty.
pub fn broker_urls(broker_url: &str) -> Vec<String> {
    let urls: Vec<String> =
        broker_url.split(',').map(str::trim).filter(|url| !url.is_empty()).map(websocket_url).collect();
    if urls.is_empty() { vec![websocket_url(broker_url)] } else { urls }
}

pub fn websocket_url(broker_url: &str) -> String {
    let url = broker_url.trim().trim_end_matches('/');
    if url.starts_with("ws://") || url.starts_with("wss://") {
        return url.to_owned();
    }
    let rest = url
        .strip_prefix("https://")
        .map(|r| ("wss://", r))
        .or_else(|| url.strip_prefix("http://").map(|r| ("ws://", r)));
    match rest {
        Some((scheme, host)) => format!("{scheme}{host}/ws"),
        None => format!("ws://{url}/ws"),
    }
}

/// A message received from a peer, opened.
#[derive(Debug, Clone)]
pub struct InboundMessage {
    pub message_id: String,
    pub mesh_id: String,
    /// The sender's session key (or member key).
    pub sender_pubkey: String,
    pub sender_member_pubkey: Option<String>,
    /// The sender's member identity was checked end to end (its signature over the session key).
    pub verified: bool,
    pub priority: Priority,
    /// What the sender addressed: a key, `@group` or `*`.
    pub target_spec: Option<String>,
    pub created_at: String,
    pub body: Result<Vec<u8>, OpenError>,
}

impl InboundMessage {
    /// The body as text, when it opened.
    pub fn text(&self) -> Option<String> {
        self.body.as_ref().ok().map(|b| String::from_utf8_lossy(b).into_owned())
    }
}

#[derive(Debug, Clone)]
pub enum ClientEvent {
    Connected(HelloAck),
    Disconnected {
        reason: String,
    },
    /// The broker refused the hello or ended the membership. Fatal codes stop the client.
    Refused {
        code: ErrorCode,
        message: String,
        fatal: bool,
    },
    Message(InboundMessage),
    /// A broker event this client understands (`peer_joined`, `peer_left`, `peer_returned`,
    /// `pair_held`, `pair_released`).
    System {
        event: SystemEvent,
        created_at: String,
    },
    /// An `error` frame about one of our requests.
    Error(ErrorFrame),
    /// A recipient member's client stored a message this session sent (`receipt`).
    Delivered {
        message_id: String,
        member_pubkey: String,
        delivered_at: String,
    },
}

/// The broker's answer to a send that it queued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendReceipt {
    pub message_id: String,
    /// Recipient members the message was queued for.
    pub recipients: u32,
    /// Members the target reached that the sealed copy did not cover (they joined meanwhile).
    pub uncovered: Vec<String>,
    /// Members the target reached whose key is no usable public key: skipped, they did not get
    /// the message (the others did).
    pub unusable: Vec<String>,
}

/// When a scheduled message is queued: once, or at every occurrence of a recurrence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum When {
    /// Milliseconds since the epoch.
    At(u64),
    /// Five-field cron, read in an IANA time zone (UTC when `None`).
    Cron { expression: String, tz: Option<String> },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    #[error("the outbound queue is full ({0} frames wait for the connection); retry once the broker is reachable")]
    QueueFull(usize),
    #[error("the connection dropped before the broker confirmed; the message may or may not have been queued")]
    ConnectionLost,
    #[error("{}", message)]
    Rejected { reason: Option<SendRejection>, message: String },
    #[error("no reply from the broker within {0:?}")]
    Timeout(Duration),
    #[error("bad target {0:?}: use a 64-hex key, @group or *")]
    BadTarget(String),
    #[error("no recipient: {0}")]
    NoRecipient(String),
    #[error("the client stopped: {0}")]
    Stopped(String),
    #[error("crypto: {0}")]
    Crypto(#[from] CryptoError),
    #[error("unexpected reply from the broker")]
    UnexpectedReply,
}

/// Counters reported to the broker with `set_stats`.
#[derive(Debug, Default)]
pub struct ClientStats {
    pub messages_in: AtomicU64,
    pub messages_out: AtomicU64,
    pub tool_calls: AtomicU64,
    pub errors: AtomicU64,
}

/// What the session wants the broker to know, re-applied after every reconnect.
#[derive(Debug, Clone, Default)]
struct DesiredState {
    status: Option<(Status, StatusSource)>,
    summary: Option<String>,
    groups: Vec<GroupMembership>,
}

/// How a reply to a frame is recognised.
#[derive(Debug, Clone)]
enum Correlation {
    /// `ack.id` of a send.
    Ack(String),
    /// `_reqId` of a request.
    Request(String),
}

enum Command {
    Frame { frame: ClientFrame, reply: Option<(Correlation, oneshot::Sender<Result<ServerFrame, ClientError>>)> },
    Acknowledge(Vec<String>),
    Shutdown(oneshot::Sender<()>),
}

struct Shared {
    commands: mpsc::Sender<Command>,
    keys: Arc<KeyRing>,
    desired: Arc<Mutex<DesiredState>>,
    stats: Arc<ClientStats>,
    /// Peer key (session or member) → member key, learnt from `resolve` and `peers_list`.
    member_of: Mutex<HashMap<String, String>>,
    next_correlation: AtomicU64,
    request_timeout: Duration,
    /// Every send asks the broker to keep its delivery status (`ClientConfig::track_messages`).
    track_messages: bool,
    /// The mesh's content keys this member opened or made (`mesh_keys`).
    epoch_keys: mesh_keys::EpochKeys,
}

/// Handle on one mesh session. Clones share the connection.
#[derive(Clone)]
pub struct MeshClient {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for MeshClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshClient").field("mesh_id", &self.shared.keys.mesh_id).finish_non_exhaustive()
    }
}

impl MeshClient {
    /// Starts connecting in the background. Must be called inside a tokio runtime.
    pub fn start(config: ClientConfig) -> (MeshClient, mpsc::Receiver<ClientEvent>) {
        let (commands, command_rx) = mpsc::channel(1024);
        let (events, event_rx) = mpsc::channel(4096);
        let keys =
            Arc::new(KeyRing::new(config.mesh_id.clone(), config.member_key.clone(), config.session_key.clone()));
        let desired =
            Arc::new(Mutex::new(DesiredState { groups: config.profile.groups.clone(), ..DesiredState::default() }));
        let stats = Arc::new(ClientStats::default());
        let shared = Arc::new(Shared {
            commands,
            keys: keys.clone(),
            desired: desired.clone(),
            stats: stats.clone(),
            member_of: Mutex::new(HashMap::new()),
            next_correlation: AtomicU64::new(1),
            request_timeout: config.request_timeout,
            track_messages: config.track_messages,
            epoch_keys: mesh_keys::EpochKeys::default(),
        });
        tokio::spawn(connection::run(config, keys, desired, stats, command_rx, events));
        (MeshClient { shared }, event_rx)
    }

    pub fn member_pubkey(&self) -> String {
        self.shared.keys.member.public_hex()
    }

    pub fn session_pubkey(&self) -> String {
        self.shared.keys.session.public_hex()
    }

    pub fn mesh_id(&self) -> &str {
        &self.shared.keys.mesh_id
    }

    pub fn stats(&self) -> &ClientStats {
        &self.shared.stats
    }

    fn correlation_id(&self) -> String {
        format!("c{}", self.shared.next_correlation.fetch_add(1, Ordering::Relaxed))
    }

    async fn command(&self, command: Command) -> Result<(), ClientError> {
        self.shared.commands.send(command).await.map_err(|_| ClientError::Stopped("connection task ended".into()))
    }

    async fn exchange(&self, frame: ClientFrame, correlation: Correlation) -> Result<ServerFrame, ClientError> {
        let (reply, answer) = oneshot::channel();
        self.command(Command::Frame { frame, reply: Some((correlation, reply)) }).await?;
        let timeout = self.shared.request_timeout;
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(ClientError::Stopped("connection task ended".into())),
            Err(_) => Err(ClientError::Timeout(timeout)),
        }
    }

    async fn fire(&self, frame: ClientFrame) -> Result<(), ClientError> {
        self.command(Command::Frame { frame, reply: None }).await
    }

    /// Seals `plaintext` for `target_spec` (a 64-hex key, `@group` or `*`) and waits for the
    /// broker to confirm it was durably queued.
    pub async fn send(
        &self,
        target_spec: &str,
        plaintext: &[u8],
        priority: Priority,
    ) -> Result<SendReceipt, ClientError> {
        let (send, unusable) = self.seal(target_spec, plaintext, priority).await?;
        let id = send.id.clone().unwrap_or_default();
        let ack = self.acked(self.exchange(ClientFrame::Send(send), Correlation::Ack(id)).await?)?;
        self.shared.stats.messages_out.fetch_add(1, Ordering::Relaxed);
        // The broker lists the skipped members as uncovered too; say each once.
        let uncovered = ack.uncovered.into_iter().filter(|k| !unusable.contains(k)).collect();
        Ok(SendReceipt { message_id: ack.message_id, recipients: ack.recipients.unwrap_or(0), uncovered, unusable })
    }

    /// Seals `plaintext` for `target_spec` now, for the recipients it reaches now, and has the
    /// broker queue it `when` says (as from this member; its own member key reaches all its
    /// sessions, this one too). Returns the schedule as the broker stored it.
    pub async fn schedule(
        &self,
        target_spec: &str,
        plaintext: &[u8],
        priority: Priority,
        when: When,
    ) -> Result<protocol::ScheduleInfo, ClientError> {
        let (send, _) = self.seal(target_spec, plaintext, priority).await?;
        let id = send.id.clone().unwrap_or_default();
        let (at, cron, tz) = match when {
            When::At(at) => (Some(at), None, None),
            When::Cron { expression, tz } => (None, Some(expression), tz),
        };
        let frame = ClientFrame::Schedule(protocol::ScheduleSend { send, at, cron, tz });
        let ack = self.acked(self.exchange(frame, Correlation::Ack(id)).await?)?;
        ack.schedule.ok_or(ClientError::UnexpectedReply)
    }

    /// This member's scheduled messages (every member's, for an admin), soonest first.
    pub async fn list_scheduled(&self) -> Result<Vec<protocol::ScheduleInfo>, ClientError> {
        let req_id = self.correlation_id();
        let frame = ClientFrame::ListScheduled(protocol::ListScheduled { req_id: Some(req_id.clone()) });
        match self.exchange(frame, Correlation::Request(req_id)).await? {
            ServerFrame::ScheduledList(list) => Ok(list.schedules),
            ServerFrame::Error(error) => Err(ClientError::Rejected { reason: None, message: error.message }),
            _ => Err(ClientError::UnexpectedReply),
        }
    }

    /// Cancels a scheduled message (this member's, or any as an admin); `false` when the mesh has
    /// none by that id.
    pub async fn cancel_scheduled(&self, schedule_id: &str) -> Result<bool, ClientError> {
        let req_id = self.correlation_id();
        let frame = ClientFrame::CancelScheduled(protocol::CancelScheduled {
            schedule_id: schedule_id.to_owned(),
            req_id: Some(req_id.clone()),
        });
        match self.exchange(frame, Correlation::Request(req_id)).await? {
            ServerFrame::ScheduleCancelled(_) => Ok(true),
            ServerFrame::Error(error) if error.code == ErrorCode::NotFound => Ok(false),
            ServerFrame::Error(error) => Err(ClientError::Rejected { reason: None, message: error.message }),
            _ => Err(ClientError::UnexpectedReply),
        }
    }

    /// An `ack` that says queued, or the refusal it carries.
    fn acked(&self, frame: ServerFrame) -> Result<protocol::Ack, ClientError> {
        match frame {
            ServerFrame::Ack(ack) if ack.queued => Ok(ack),
            ServerFrame::Ack(ack) => {
                let message = ack.error.unwrap_or_else(|| "refused without a reason".to_owned());
                Err(ClientError::Rejected { reason: ack.error_code, message })
            }
            _ => Err(ClientError::UnexpectedReply),
        }
    }

    /// A `send` frame sealing `plaintext` for the members `target_spec` reaches now, and the
    /// members skipped for an unusable key.
    async fn seal(
        &self,
        target_spec: &str,
        plaintext: &[u8],
        priority: Priority,
    ) -> Result<(protocol::Send, Vec<String>), ClientError> {
        let target = Target::parse(target_spec).ok_or_else(|| ClientError::BadTarget(target_spec.to_owned()))?;
        let id = self.correlation_id();
        let mut send = protocol::Send {
            id: Some(id.clone()),
            target_spec: target_spec.to_owned(),
            priority,
            track: self.shared.track_messages,
            ..protocol::Send::default()
        };
        let mut unusable = Vec::new();
        match target {
            Target::Key(key) => {
                let member = self.member_key_for(key).await?;
                let (nonce, ciphertext) = self.shared.keys.seal_direct(&member, plaintext)?;
                send.enc = Some(Enc::Box);
                send.nonce = nonce;
                send.ciphertext = ciphertext;
            }
            Target::Group(_) | Target::Broadcast => {
                let recipients = self.resolve(target_spec).await?;
                if recipients.is_empty() {
                    return Err(ClientError::NoRecipient(format!("nobody {target_spec} reaches is in the mesh")));
                }
                let (sealed, skipped) =
                    self.shared.keys.seal_multi(recipients.iter().map(|r| r.member_pubkey.as_str()), plaintext);
                if sealed.keys.is_empty() {
                    return Err(ClientError::NoRecipient(format!(
                        "no member {target_spec} reaches has a usable key ({} skipped)",
                        skipped.len()
                    )));
                }
                unusable = skipped;
                send.enc = Some(Enc::Multi);
                send.nonce = sealed.nonce;
                send.ciphertext = sealed.ciphertext;
                send.keys = sealed.keys;
            }
        }
        Ok((send, unusable))
    }

    /// The member key to seal to for a key target: the member itself, or the member behind a
    /// session key (so any of its sessions can open the message).
    async fn member_key_for(&self, key: &str) -> Result<String, ClientError> {
        if key == self.shared.keys.member.public_hex() {
            return Ok(key.to_owned());
        }
        if let Some(member) = self.shared.member_of.lock().expect("member cache lock").get(key) {
            return Ok(member.clone());
        }
        let recipients = self.resolve(key).await?;
        match recipients.as_slice() {
            [one] => Ok(one.member_pubkey.clone()),
            _ => Err(ClientError::Rejected {
                reason: Some(SendRejection::UnknownRecipient),
                message: "unknown_recipient: no member or connected session of this mesh has that key".into(),
            }),
        }
    }

    /// Which members a target reaches (ours: `resolve`).
    pub async fn resolve(&self, target_spec: &str) -> Result<Vec<Recipient>, ClientError> {
        let req_id = self.correlation_id();
        let frame = ClientFrame::Resolve(protocol::Resolve {
            target_spec: target_spec.to_owned(),
            req_id: Some(req_id.clone()),
        });
        match self.exchange(frame, Correlation::Request(req_id)).await? {
            ServerFrame::Resolved(resolved) => {
                if let Some(message) = resolved.error {
                    return Err(ClientError::Rejected { reason: resolved.error_code, message });
                }
                if let Target::Key(key) = Target::parse(target_spec).unwrap_or(Target::Broadcast)
                    && let [one] = resolved.recipients.as_slice()
                {
                    self.remember_member(key, &one.member_pubkey);
                }
                Ok(resolved.recipients)
            }
            ServerFrame::Error(error) => Err(ClientError::Rejected { reason: None, message: error.message }),
            _ => Err(ClientError::UnexpectedReply),
        }
    }

    /// Pins `key` to `member` the first time it is learnt: a later, different claim (another
    /// member taking over a session key) does not move where messages to `key` are sealed.
    fn remember_member(&self, key: &str, member: &str) {
        let mut cache = self.shared.member_of.lock().expect("member cache lock");
        if cache.len() > 4096 {
            cache.clear();
        }
        match cache.get(key) {
            Some(pinned) if pinned != member => {
                tracing::warn!(key, "a peer key was claimed by another member; keeping the first binding");
            }
            _ => {
                cache.insert(key.to_owned(), member.to_owned());
            }
        }
    }

    /// The connected sessions of the mesh, this one included (the broker may leave some out:
    /// see [`PeerListing::omitted`]).
    pub async fn list_peers(&self) -> Result<PeerListing, ClientError> {
        let req_id = self.correlation_id();
        let frame = ClientFrame::ListPeers(protocol::ListPeers { req_id: Some(req_id.clone()) });
        match self.exchange(frame, Correlation::Request(req_id)).await? {
            ServerFrame::PeersList(list) => {
                for peer in &list.peers {
                    // Only bindings the member signed: a session key is sealed to for its member.
                    let bound = peer.pubkey == peer.member_pubkey
                        || peer.session_sig.as_deref().is_some_and(|sig| {
                            crate::crypto::PublicKey::from_hex(&peer.member_pubkey).is_ok_and(|member| {
                                crate::crypto::verify_session_binding(self.mesh_id(), &member, &peer.pubkey, sig)
                                    .is_ok()
                            })
                        });
                    if bound {
                        self.remember_member(&peer.pubkey, &peer.member_pubkey);
                    }
                }
                Ok(PeerListing { peers: list.peers, omitted: list.omitted.unwrap_or(0) })
            }
            _ => Err(ClientError::UnexpectedReply),
        }
    }

    /// Where each recipient's copy of a message this member sent with tracking stands (empty:
    /// not sent by this member with tracking, or older than the queue's TTL).
    pub async fn message_status(&self, message_id: &str) -> Result<Vec<protocol::RecipientStatus>, ClientError> {
        let req_id = self.correlation_id();
        let frame = ClientFrame::MessageStatus(protocol::MessageStatus {
            message_id: message_id.to_owned(),
            req_id: Some(req_id.clone()),
        });
        match self.exchange(frame, Correlation::Request(req_id)).await? {
            ServerFrame::MessageStatusResult(result) => Ok(result.recipients),
            ServerFrame::Error(error) => Err(ClientError::Rejected { reason: None, message: error.message }),
            _ => Err(ClientError::UnexpectedReply),
        }
    }

    /// Tells the senders of these messages (through their `message_status`) that this member
    /// read them.
    pub async fn mark_read(&self, message_ids: Vec<String>) -> Result<(), ClientError> {
        for chunk in message_ids.chunks(protocol::MAX_MARK_READ) {
            self.fire(ClientFrame::MarkRead(protocol::MarkRead { message_ids: chunk.to_vec() })).await?;
        }
        Ok(())
    }

    /// The mesh's membership log from entry `after + 1` to its end, page by page, unverified:
    /// check it with `membership::verify`.
    pub async fn membership_log(&self, after: u64) -> Result<Vec<crate::membership::LogEntry>, ClientError> {
        let mut entries: Vec<crate::membership::LogEntry> = Vec::new();
        loop {
            let req_id = self.correlation_id();
            let from = entries.last().map_or(after, |e| e.seq);
            let frame =
                ClientFrame::MembershipLog(protocol::MembershipLog { after: from, req_id: Some(req_id.clone()) });
            match self.exchange(frame, Correlation::Request(req_id)).await? {
                ServerFrame::MembershipLogPage(page) => {
                    let progressed = !page.entries.is_empty();
                    entries.extend(page.entries);
                    if !page.more || !progressed {
                        return Ok(entries);
                    }
                }
                _ => return Err(ClientError::UnexpectedReply),
            }
        }
    }

    /// Every active member of the mesh, online or not, in name order.
    pub async fn list_members(&self) -> Result<Vec<protocol::MemberInfo>, ClientError> {
        let req_id = self.correlation_id();
        let frame = ClientFrame::ListMembers(protocol::ListMembers { req_id: Some(req_id.clone()) });
        match self.exchange(frame, Correlation::Request(req_id)).await? {
            ServerFrame::MembersList(list) => Ok(list.members),
            _ => Err(ClientError::UnexpectedReply),
        }
    }

    /// Changes this member's grants (`None` resets a peer to the mesh defaults, `Some([])`
    /// blocks it); returns the member's explicit grants afterwards.
    pub async fn set_grants(&self, grants: protocol::GrantMap) -> Result<BTreeMap<String, Vec<String>>, ClientError> {
        let req_id = self.correlation_id();
        let frame = ClientFrame::SetGrants(protocol::SetGrants { grants, req_id: Some(req_id.clone()) });
        self.grants_reply(self.exchange(frame, Correlation::Request(req_id)).await?)
    }

    /// This member's explicit grants (peers absent here get the mesh defaults).
    pub async fn grants(&self) -> Result<BTreeMap<String, Vec<String>>, ClientError> {
        let req_id = self.correlation_id();
        let frame = ClientFrame::GetGrants(protocol::GetGrants { req_id: Some(req_id.clone()) });
        self.grants_reply(self.exchange(frame, Correlation::Request(req_id)).await?)
    }

    fn grants_reply(&self, frame: ServerFrame) -> Result<BTreeMap<String, Vec<String>>, ClientError> {
        match frame {
            ServerFrame::Grants(grants) => Ok(grants.grants),
            ServerFrame::Error(error) => Err(ClientError::Rejected { reason: None, message: error.message }),
            _ => Err(ClientError::UnexpectedReply),
        }
    }

    /// A page of the mesh's audit log, newest first (admins only).
    pub async fn audit_query(
        &self,
        event_type: Option<&str>,
        limit: u32,
        offset: u32,
    ) -> Result<protocol::AuditResult, ClientError> {
        let req_id = self.correlation_id();
        let frame = ClientFrame::AuditQuery(protocol::AuditQuery {
            limit: Some(limit),
            offset: Some(offset),
            event_type: event_type.map(str::to_owned),
            req_id: Some(req_id.clone()),
        });
        match self.exchange(frame, Correlation::Request(req_id)).await? {
            ServerFrame::AuditResult(result) => Ok(result),
            ServerFrame::Error(error) => Err(ClientError::Rejected { reason: None, message: error.message }),
            _ => Err(ClientError::UnexpectedReply),
        }
    }

    /// Walks the mesh's audit chain (admins only).
    pub async fn audit_verify(&self) -> Result<protocol::AuditVerifyResult, ClientError> {
        let req_id = self.correlation_id();
        let frame = ClientFrame::AuditVerify(protocol::AuditVerify { req_id: Some(req_id.clone()) });
        match self.exchange(frame, Correlation::Request(req_id)).await? {
            ServerFrame::AuditVerifyResult(result) => Ok(result),
            ServerFrame::Error(error) => Err(ClientError::Rejected { reason: None, message: error.message }),
            _ => Err(ClientError::UnexpectedReply),
        }
    }

    /// Leaves the mesh for good at the broker: this member key is refused from then on and the
    /// client stops.
    pub async fn leave_mesh(&self) -> Result<String, ClientError> {
        let req_id = self.correlation_id();
        let frame = ClientFrame::LeaveMesh(protocol::LeaveMesh { req_id: Some(req_id.clone()) });
        match self.exchange(frame, Correlation::Request(req_id)).await? {
            ServerFrame::Left(left) => Ok(left.member_id),
            ServerFrame::Error(error) => Err(ClientError::Rejected { reason: None, message: error.message }),
            _ => Err(ClientError::UnexpectedReply),
        }
    }

    /// Releases messages the broker held between this member and `peer` (a member or session
    /// key). Returns whether anything was held. Meant for a person's command, never for a model.
    pub async fn release_pair(&self, peer: &str) -> Result<bool, ClientError> {
        let req_id = self.correlation_id();
        let frame =
            ClientFrame::ReleasePair(protocol::ReleasePair { peer: peer.to_owned(), req_id: Some(req_id.clone()) });
        match self.exchange(frame, Correlation::Request(req_id)).await? {
            ServerFrame::Released(released) => Ok(released.released),
            ServerFrame::Error(error) => Err(ClientError::Rejected { reason: None, message: error.message }),
            _ => Err(ClientError::UnexpectedReply),
        }
    }

    /// Tells the broker these messages are safely stored; it stops re-sending them.
    pub async fn acknowledge(&self, message_ids: Vec<String>) -> Result<(), ClientError> {
        if message_ids.is_empty() {
            return Ok(());
        }
        self.command(Command::Acknowledge(message_ids)).await
    }

    pub async fn set_status(&self, status: Status, source: StatusSource) -> Result<(), ClientError> {
        self.shared.desired.lock().expect("desired lock").status = Some((status, source));
        self.fire(ClientFrame::SetStatus(protocol::SetStatus { status, source: Some(source) })).await
    }

    pub async fn set_summary(&self, summary: &str) -> Result<(), ClientError> {
        self.shared.desired.lock().expect("desired lock").summary = Some(summary.to_owned());
        self.fire(ClientFrame::SetSummary(protocol::SetSummary { summary: summary.to_owned() })).await
    }

    pub async fn join_group(&self, name: &str, role: Option<&str>) -> Result<(), ClientError> {
        {
            let mut desired = self.shared.desired.lock().expect("desired lock");
            desired.groups.retain(|g| g.name != name);
            desired.groups.push(GroupMembership { name: name.to_owned(), role: role.map(str::to_owned) });
        }
        self.fire(ClientFrame::JoinGroup(protocol::JoinGroup { name: name.to_owned(), role: role.map(str::to_owned) }))
            .await
    }

    pub async fn leave_group(&self, name: &str) -> Result<(), ClientError> {
        self.shared.desired.lock().expect("desired lock").groups.retain(|g| g.name != name);
        self.fire(ClientFrame::LeaveGroup(protocol::LeaveGroup { name: name.to_owned() })).await
    }

    /// Closes the connection cleanly (the broker hands this session's pending mail to the
    /// member's other sessions) and ends the connection task.
    pub async fn shutdown(&self) {
        let (done, wait) = oneshot::channel();
        if self.command(Command::Shutdown(done)).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(5), wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broker_url_may_list_several_replicas() {
        assert_eq!(broker_urls("https://mesh.example.com"), vec!["wss://mesh.example.com/ws"]);
        assert_eq!(
            broker_urls("https://a.example.com, http://10.0.0.2:7900/ ,"),
            vec!["wss://a.example.com/ws", "ws://10.0.0.2:7900/ws"]
        );
        assert_eq!(broker_urls(" , "), vec!["ws://,/ws"], "never empty: the text itself, to fail with a clear error");
    }
}
