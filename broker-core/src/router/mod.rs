//! Presence, target resolution and durable delivery.
//!
//! State is sharded by mesh: one [`MeshShard`] per mesh with live sessions, each behind a
//! `std::sync::Mutex` that is held only for short, synchronous sections (never across an
//! `.await`; store reads happen outside it on blocking threads). A send is resolved to one
//! [`Delivery`] per recipient member under the lock, committed by the store without the lock,
//! and routed into the recipients' [`MemberQueue`]s from the store's commit completion. A
//! session receives at most `delivery_window` unacknowledged pushes; its acknowledgements
//! remove entries from memory and, batched, from the store.

mod grants;
pub mod limits;
mod outbox;
mod queue;
mod rate_limit;
mod status;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::json;
use tokio::sync::Semaphore;
use tokio::time::Instant;

pub use grants::{Grants, validate_caps};
pub use outbox::{Outbox, OutboxError, close_code};
pub use queue::{Entry, Lane, LoadRequest, MemberQueue, WindowLimits};
pub use rate_limit::{RateLimit, TokenBucket};
pub use status::StatusState;

use crate::config::BrokerConfig;
use crate::crypto::{self, PublicKey};
use crate::metrics::Metrics;
use crate::protocol::{
    self, Ack, ClientFrame, Enc, ErrorCode, GroupMembership, Hello, HelloAck, KeyWrap, PeerInfo, PeerJoined, PeerLeft,
    PeerReturned, PeerType, PeersList, Priority, PushRef, Recipient, Resolved, SendRejection, ServerFrame, Stats,
    StatusSource, SystemEvent, Target, capability,
};
use crate::store::{
    AuditEvent, Delivery, Envelope, MemberRecord, MeshRecord, NewMessage, PeerStateRecord, QueuedEntry, Store,
    StoreError, WriteOp, WriteOutcome,
};

/// Capabilities this session negotiated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Caps {
    pub session_sig: bool,
    pub delivery_ack: bool,
    pub enc: bool,
    pub sealed_multicast: bool,
    pub delivery_receipt: bool,
}

impl Caps {
    fn negotiate(announced: &[String]) -> Caps {
        let has = |name: &str| announced.iter().any(|c| c == name);
        Caps {
            session_sig: has(capability::SESSION_SIG),
            delivery_ack: has(capability::DELIVERY_ACK),
            enc: has(capability::ENC),
            sealed_multicast: has(capability::SEALED_MULTICAST),
            delivery_receipt: has(capability::DELIVERY_RECEIPT),
        }
    }

    fn names(self) -> Vec<String> {
        let flags = [self.session_sig, self.delivery_ack, self.enc, self.sealed_multicast, self.delivery_receipt];
        capability::ALL.iter().zip(flags).filter(|(_, on)| *on).map(|(name, _)| (*name).to_owned()).collect()
    }
}

/// A refused `hello`: sent as an `error` frame, then the connection closes with 1008.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
}

impl Refusal {
    fn new(code: ErrorCode, message: impl Into<String>) -> Refusal {
        Refusal { code, message: message.into() }
    }
}

/// What a connection holds once its `hello` succeeded.
#[derive(Debug, Clone)]
pub struct SessionHandle {
    shard: Arc<MeshShard>,
    pub session_id: u64,
    pub member_id: String,
    pub caps: Caps,
}

impl SessionHandle {
    pub fn mesh_id(&self) -> &str {
        &self.shard.mesh_id
    }
}

/// One connected peer session.
#[derive(Debug)]
struct Session {
    id: u64,
    member_id: String,
    member_pubkey: String,
    /// The session key (the member key when the client has none): how peers address it.
    routing_key: String,
    session_sig: Option<String>,
    display_name: String,
    client_session_id: String,
    pid: Option<u32>,
    cwd: String,
    hostname: Option<String>,
    peer_type: Option<PeerType>,
    channel: Option<String>,
    model: Option<String>,
    groups: Vec<GroupMembership>,
    summary: Option<String>,
    /// This session's own counters, as last reported.
    stats: Stats,
    status: StatusState,
    connected_at_ms: u64,
    caps: Caps,
    outbox: Outbox,
    /// Pushes sent and not yet acknowledged.
    inflight: usize,
    /// Per lane: entries below this sequence number were already pushed or are not for us.
    scan_from: [u64; 2],
}

impl Session {
    fn in_group(&self, name: &str) -> bool {
        self.groups.iter().any(|g| group_matches(&g.name, name))
    }
}

/// `@parent` reaches members of `parent` and of its subgroups `parent/…`.
fn group_matches(member_group: &str, target: &str) -> bool {
    member_group == target || member_group.strip_prefix(target).is_some_and(|rest| rest.starts_with('/'))
}

#[derive(Debug)]
struct MemberEntry {
    record: MemberRecord,
    saved: Option<PeerStateRecord>,
    bucket: TokenBucket,
    /// Present while the member has at least one session.
    queue: Option<MemberQueue>,
    sessions: Vec<u64>,
}

/// A session that went away. Until its mail is released, mail for its key waits for it (it may
/// come back with the same key); afterwards its key still resolves, to its member, so a peer
/// that saw the key recently can still reach the member.
#[derive(Debug)]
struct Departed {
    member_id: String,
    at: Instant,
    released: bool,
}

/// How long a departed session's key keeps resolving to its member.
const RETIRED_KEY_MEMORY: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

#[derive(Debug)]
struct MeshState {
    mesh: MeshRecord,
    members: HashMap<String, MemberEntry>,
    /// Member key → member id.
    by_pubkey: HashMap<String, String>,
    sessions: HashMap<u64, Session>,
    /// Routing key → session id.
    by_routing_key: HashMap<String, u64>,
    departed: HashMap<String, Departed>,
    grants: Grants,
}

/// Everything the router keeps for one mesh.
#[derive(Debug)]
pub struct MeshShard {
    mesh_id: String,
    state: Mutex<MeshState>,
}

/// Signatures of accepted hellos, kept for twice the skew window, so a captured hello cannot be
/// replayed while its timestamp is still acceptable.
#[derive(Debug, Default)]
struct ReplayGuard {
    seen: HashSet<String>,
    expiry: VecDeque<(Instant, String)>,
}

impl ReplayGuard {
    fn first_sighting(&mut self, signature: &str, now: Instant, keep_for: std::time::Duration) -> bool {
        while let Some((expires, _)) = self.expiry.front() {
            if *expires > now {
                break;
            }
            if let Some((_, old)) = self.expiry.pop_front() {
                self.seen.remove(&old);
            }
        }
        if !self.seen.insert(signature.to_owned()) {
            return false;
        }
        self.expiry.push_back((now + keep_for, signature.to_owned()));
        true
    }
}

/// Outcome of resolving a target for one sender.
enum Resolution {
    Deliveries(Vec<Delivery>),
    Rejected(SendRejection, String),
    /// A 64-hex key this broker has not seen yet: look it up in the store, then retry.
    UnknownKey(String),
}

pub struct Router {
    /// This router, for work it spawns from synchronous code (store loads started under a lock).
    me: std::sync::Weak<Router>,
    config: Arc<BrokerConfig>,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    runtime: tokio::runtime::Handle,
    meshes: Mutex<HashMap<String, Arc<MeshShard>>>,
    replay: Mutex<ReplayGuard>,
    /// Bounds messages accepted but not yet committed; a sender waits for a permit.
    uncommitted: Arc<Semaphore>,
    next_session_id: AtomicU64,
    directory_version: AtomicI64,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router").finish_non_exhaustive()
    }
}

fn frame_text(frame: &ServerFrame) -> String {
    serde_json::to_string(frame).expect("server frames serialize")
}

fn rejection_text(reason: SendRejection, detail: &str) -> String {
    format!("{}: {detail}", reason.code())
}

impl Router {
    /// Must be called inside a tokio runtime (background work is spawned on it).
    pub fn new(config: Arc<BrokerConfig>, store: Arc<dyn Store>, metrics: Arc<Metrics>) -> Arc<Router> {
        let version = store.directory_version().unwrap_or(0);
        if let Ok(depth) = store.queue_depth() {
            metrics.queue_depth.store(depth, Ordering::Relaxed);
        }
        Arc::new_cyclic(|me| Router {
            me: me.clone(),
            uncommitted: Arc::new(Semaphore::new(config.max_uncommitted)),
            config,
            store,
            metrics,
            runtime: tokio::runtime::Handle::current(),
            meshes: Mutex::new(HashMap::new()),
            replay: Mutex::new(ReplayGuard::default()),
            next_session_id: AtomicU64::new(1),
            directory_version: AtomicI64::new(version),
        })
    }

    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(store.as_ref()))
            .await
            .map_err(|e| StoreError::Database(format!("store task failed: {e}")))?
    }

    /// The shard for `mesh_id`, loading the mesh's directory on first use.
    async fn shard(&self, mesh_id: &str) -> Result<Option<Arc<MeshShard>>, StoreError> {
        if let Some(shard) = self.meshes.lock().expect("meshes lock").get(mesh_id) {
            return Ok(Some(shard.clone()));
        }
        let id = mesh_id.to_owned();
        let loaded = self
            .blocking(move |store| {
                let Some(mesh) = store.mesh(&id)?.filter(|m| m.id == id) else { return Ok(None) };
                Ok(Some((mesh, store.members(&id)?, store.peer_states(&id)?, store.grants(&id)?)))
            })
            .await?;
        let Some((mesh, members, saved, grants)) = loaded else { return Ok(None) };
        let mut state = MeshState {
            mesh,
            members: HashMap::new(),
            by_pubkey: HashMap::new(),
            sessions: HashMap::new(),
            by_routing_key: HashMap::new(),
            departed: HashMap::new(),
            grants: Grants::from_records(grants),
        };
        let mut saved: HashMap<String, PeerStateRecord> = saved.into_iter().map(|s| (s.member_id.clone(), s)).collect();
        let now = Instant::now();
        for record in members {
            let entry_saved = saved.remove(&record.id);
            self.insert_member(&mut state, record, entry_saved, now);
        }
        let shard = Arc::new(MeshShard { mesh_id: mesh_id.to_owned(), state: Mutex::new(state) });
        let mut meshes = self.meshes.lock().expect("meshes lock");
        Ok(Some(meshes.entry(mesh_id.to_owned()).or_insert(shard).clone()))
    }

    fn insert_member(&self, state: &mut MeshState, record: MemberRecord, saved: Option<PeerStateRecord>, now: Instant) {
        state.by_pubkey.insert(record.pubkey.clone(), record.id.clone());
        state.members.insert(
            record.id.clone(),
            MemberEntry {
                record,
                saved,
                bucket: TokenBucket::full(self.config.rate_limit, now),
                queue: None,
                sessions: Vec::new(),
            },
        );
    }

    /// Adds a member found in the store after the shard was loaded (an operator command or a
    /// join in another process). Returns whether it is active.
    async fn learn_member(&self, shard: &Arc<MeshShard>, pubkey: &str) -> Result<bool, StoreError> {
        let (mesh_id, key) = (shard.mesh_id.clone(), pubkey.to_owned());
        let found = self.blocking(move |store| store.member_by_pubkey(&mesh_id, &key)).await?;
        let Some(record) = found else { return Ok(false) };
        let active = record.is_active();
        let mut state = shard.state.lock().expect("mesh lock");
        if !state.members.contains_key(&record.id) {
            self.insert_member(&mut state, record, None, Instant::now());
        }
        Ok(active)
    }

    // -----------------------------------------------------------------------------------------
    // Handshake
    // -----------------------------------------------------------------------------------------

    /// Checks a `hello` and registers the session. On success the `hello_ack` is already queued
    /// on `outbox` (before any push).
    pub async fn hello(self: &Arc<Self>, hello: Hello, outbox: Outbox) -> Result<SessionHandle, Refusal> {
        let started = Instant::now();
        let result = self.accept_hello(hello, outbox).await;
        match &result {
            Ok(_) => {
                self.metrics.hello_latency(started.elapsed());
                self.metrics.connections_total.fetch_add(1, Ordering::Relaxed);
                self.metrics.connections_active.fetch_add(1, Ordering::Relaxed);
            }
            Err(refusal) => {
                tracing::info!(code = refusal.code.as_str(), "hello refused");
                self.metrics.connection_rejected(refusal.code);
            }
        }
        result
    }

    async fn accept_hello(self: &Arc<Self>, hello: Hello, outbox: Outbox) -> Result<SessionHandle, Refusal> {
        // A session key equal to the member key is no session key.
        limits::check_hello(&hello).map_err(|problem| Refusal::new(ErrorCode::Malformed, problem))?;
        let session_key = hello.session_pubkey.clone().filter(|k| !k.is_empty() && *k != hello.pubkey);
        if let Some(key) = &session_key
            && !protocol::is_key_hex(key)
        {
            return Err(Refusal::new(ErrorCode::BadSessionPubkey, "sessionPubkey must be 64 lowercase hex characters"));
        }
        let shard = match self.shard(&hello.mesh_id).await {
            Ok(Some(shard)) => shard,
            Ok(None) => return Err(Refusal::new(ErrorCode::Unauthorized, "no such mesh")),
            Err(error) => {
                tracing::error!(%error, "loading a mesh failed");
                return Err(Refusal::new(ErrorCode::Internal, "the broker could not load the mesh; retry"));
            }
        };
        if self.at_capacity(&shard) {
            return Err(Refusal::new(ErrorCode::Capacity, "this mesh has reached its connection limit on this broker"));
        }
        let now_ms = protocol::now_ms();
        if now_ms.abs_diff(hello.timestamp) > self.config.hello_skew.as_millis() as u64 {
            return Err(Refusal::new(
                ErrorCode::TimestampSkew,
                format!(
                    "timestamp is more than {} s from broker time; check the clock",
                    self.config.hello_skew.as_secs()
                ),
            ));
        }
        let member_key = PublicKey::from_hex(&hello.pubkey)
            .map_err(|_| Refusal::new(ErrorCode::Malformed, "pubkey must be 64 lowercase hex characters"))?;
        if !protocol::is_signature_hex(&hello.signature) {
            return Err(Refusal::new(ErrorCode::Malformed, "signature must be 128 hex characters"));
        }
        let signed = crypto::hello_signed_bytes(&hello.mesh_id, &hello.member_id, &hello.pubkey, hello.timestamp);
        member_key
            .verify_hex(signed.as_bytes(), &hello.signature)
            .map_err(|_| Refusal::new(ErrorCode::BadSignature, "signature does not verify"))?;
        let caps = Caps::negotiate(&hello.capabilities);
        if let Some(key) = &session_key
            && caps.session_sig
        {
            let sig = hello.session_sig.as_deref().unwrap_or_default();
            crypto::verify_session_binding(&hello.mesh_id, &member_key, key, sig).map_err(|_| {
                Refusal::new(
                    ErrorCode::BadSessionPubkey,
                    "sessionSig is not the member's signature over this session key",
                )
            })?;
            let proof =
                crypto::session_proof_bytes(&hello.mesh_id, &hello.member_id, &hello.pubkey, key, hello.timestamp);
            PublicKey::from_hex(key)
                .and_then(|session| {
                    session.verify_hex(proof.as_bytes(), hello.session_proof.as_deref().unwrap_or_default())
                })
                .map_err(|_| {
                    Refusal::new(
                        ErrorCode::BadSessionPubkey,
                        "sessionProof is not the session key's signature over this hello",
                    )
                })?;
        }
        let first_sighting = self.replay.lock().expect("replay lock").first_sighting(
            &hello.signature,
            Instant::now(),
            self.config.hello_skew * 2,
        );
        if !first_sighting {
            return Err(Refusal::new(ErrorCode::Replay, "this signed hello was already used; sign a fresh one"));
        }
        let known = shard.state.lock().expect("mesh lock").by_pubkey.contains_key(&hello.pubkey);
        if !known {
            self.learn_member(&shard, &hello.pubkey).await.map_err(|error| {
                tracing::error!(%error, "member lookup failed");
                Refusal::new(ErrorCode::Internal, "the broker could not look up the member; retry")
            })?;
        }
        let handle = self.register(&shard, hello, session_key, caps, outbox)?;
        // Starts loading the member's backlog when this is its first session.
        self.pump_member(&mut shard.state.lock().expect("mesh lock"), &handle.member_id);
        Ok(handle)
    }

    fn at_capacity(&self, shard: &MeshShard) -> bool {
        shard.state.lock().expect("mesh lock").sessions.len() >= self.config.max_connections_per_mesh
    }

    fn register(
        &self,
        shard: &Arc<MeshShard>,
        hello: Hello,
        session_key: Option<String>,
        caps: Caps,
        outbox: Outbox,
    ) -> Result<SessionHandle, Refusal> {
        let mut guard = shard.state.lock().expect("mesh lock");
        let state = &mut *guard;
        if state.mesh.archived_at.is_some() {
            return Err(Refusal::new(ErrorCode::Unauthorized, "this mesh is archived"));
        }
        let unauthorized = || Refusal::new(ErrorCode::Unauthorized, "this key is not an active member of the mesh");
        let member_id = state.by_pubkey.get(&hello.pubkey).cloned().ok_or_else(unauthorized)?;
        let member = state.members.get(&member_id).ok_or_else(unauthorized)?;
        if !member.record.is_active() {
            return Err(unauthorized());
        }
        if member.record.id != hello.member_id {
            return Err(Refusal::new(ErrorCode::Unauthorized, "memberId does not match the member with this key"));
        }
        if state.sessions.len() >= self.config.max_connections_per_mesh {
            return Err(Refusal::new(ErrorCode::Capacity, "this mesh has reached its connection limit on this broker"));
        }
        let member_sessions = state.members.get(&member_id).map_or(0, |m| m.sessions.len());
        let replacing = session_key.as_ref().is_some_and(|k| state.by_routing_key.contains_key(k));
        if member_sessions >= self.config.max_sessions_per_member && !replacing {
            return Err(Refusal::new(
                ErrorCode::Capacity,
                format!("this member already has {member_sessions} sessions open in the mesh; close one first"),
            ));
        }
        if let Some(key) = &session_key {
            // A session key belongs to one member: another member may not take it over (and
            // with it the mail addressed to it).
            let live_owner = state.by_routing_key.get(key).and_then(|id| state.sessions.get(id)).map(|s| &s.member_id);
            let departed_owner = state.departed.get(key).map(|d| &d.member_id);
            let taken = state.by_pubkey.contains_key(key)
                || live_owner.is_some_and(|owner| *owner != member_id)
                || departed_owner.is_some_and(|owner| *owner != member_id);
            if taken {
                return Err(Refusal::new(ErrorCode::BadSessionPubkey, "that session key belongs to another member"));
            }
        }
        let routing_key = session_key.clone().unwrap_or_else(|| hello.pubkey.clone());
        // The same session key again means the same process reconnected before its old
        // connection timed out: the old one is stale.
        if let Some(old) = session_key.as_ref().and_then(|k| state.by_routing_key.get(k))
            && let Some(old) = state.sessions.get(old)
        {
            old.outbox.close(close_code::NORMAL, "replaced by a newer connection of this session");
        }
        state.departed.remove(&routing_key);

        let member = state.members.get_mut(&member_id).ok_or_else(unauthorized)?;
        let saved = member.saved.clone();
        let groups = match hello.groups {
            Some(groups) if !groups.is_empty() => groups,
            _ => saved.as_ref().map(|s| s.groups.clone()).unwrap_or_default(),
        };
        let display_name =
            hello.display_name.filter(|n| !n.trim().is_empty()).unwrap_or_else(|| member.record.display_name.clone());
        let now = Instant::now();
        let session = Session {
            id: self.next_session_id.fetch_add(1, Ordering::Relaxed),
            member_id: member_id.clone(),
            member_pubkey: hello.pubkey.clone(),
            routing_key: routing_key.clone(),
            session_sig: if caps.session_sig { hello.session_sig.clone() } else { None },
            display_name: display_name.clone(),
            client_session_id: hello.session_id.unwrap_or_default(),
            pid: hello.pid,
            cwd: hello.cwd.unwrap_or_default(),
            hostname: hello.hostname,
            peer_type: hello.peer_type,
            channel: hello.channel,
            model: hello.model,
            groups: groups.clone(),
            summary: saved.as_ref().and_then(|s| s.summary.clone()),
            stats: Stats::default(),
            status: StatusState::new(now),
            connected_at_ms: protocol::now_ms(),
            caps,
            outbox,
            inflight: 0,
            scan_from: [0, 0],
        };
        let returning = saved.is_some() && member.sessions.is_empty();
        member.sessions.push(session.id);
        if member.queue.is_none() {
            let generation = self.next_session_id.fetch_add(1, Ordering::Relaxed);
            let limits = WindowLimits { entries: self.config.member_window, bytes: self.config.member_window_bytes };
            member.queue = Some(MemberQueue::new_spilled(limits, generation));
        }

        let ack = HelloAck {
            presence_id: format!("pres_{}", session.id),
            member_display_name: display_name.clone(),
            mesh_slug: Some(state.mesh.slug.clone()),
            restored: saved.as_ref().map(|_| true),
            last_summary: saved.as_ref().and_then(|s| s.summary.clone()),
            last_seen_at: saved.as_ref().map(|s| protocol::iso8601_ms(s.last_seen_at)),
            restored_groups: saved.as_ref().map(|s| s.groups.clone()),
            restored_stats: saved.as_ref().map(|s| s.stats),
            protocol_version: hello.protocol_version.unwrap_or(1).min(protocol::PROTOCOL_VERSION),
            capabilities: caps.names(),
        };
        // Cannot fail: the outbox is new and empty.
        let _ = session.outbox.send(frame_text(&ServerFrame::HelloAck(ack)));

        let event = match (&saved, returning) {
            (Some(saved), true) => SystemEvent::PeerReturned(PeerReturned {
                name: display_name,
                pubkey: routing_key.clone(),
                member_pubkey: hello.pubkey,
                groups,
                last_seen_at: protocol::iso8601_ms(saved.last_seen_at),
                summary: saved.summary.clone(),
            }),
            _ => SystemEvent::PeerJoined(PeerJoined {
                name: display_name,
                pubkey: routing_key.clone(),
                member_pubkey: hello.pubkey,
                groups,
            }),
        };
        let handle = SessionHandle { shard: shard.clone(), session_id: session.id, member_id: member_id.clone(), caps };
        tracing::debug!(mesh = %state.mesh.id, member = %member_id, session = session.id, "session connected");
        state.by_routing_key.insert(routing_key, session.id);
        state.sessions.insert(session.id, session);
        self.broadcast_event(state, &member_id, &event);
        Ok(handle)
    }

    /// Sends a broker event to every session of the mesh except those of `except_member`.
    fn broadcast_event(&self, state: &MeshState, except_member: &str, event: &SystemEvent) {
        let data = event.data();
        let message_id = crate::ids::new_id("sys");
        let created_at = protocol::iso8601_ms(protocol::now_ms());
        let mut frames: [Option<String>; 2] = [None, None];
        for session in state.sessions.values().filter(|s| s.member_id != except_member) {
            let frame = frames[usize::from(session.caps.enc)].get_or_insert_with(|| {
                serde_json::to_string(&PushRef {
                    frame_type: PushRef::TYPE,
                    message_id: &message_id,
                    mesh_id: &state.mesh.id,
                    sender_pubkey: "system",
                    sender_member_pubkey: None,
                    sender_session_sig: None,
                    priority: Priority::Low,
                    nonce: "",
                    ciphertext: "",
                    created_at: &created_at,
                    subtype: Some(protocol::SYSTEM_SUBTYPE),
                    event: Some(event.name()),
                    event_data: Some(&data),
                    enc: session.caps.enc.then_some(Enc::System),
                    key: None,
                    target_spec: None,
                })
                .expect("push serializes")
            });
            self.send_to(session, frame.clone());
        }
    }

    fn send_to(&self, session: &Session, frame: String) {
        if session.outbox.send(frame) == Err(OutboxError::Full) {
            self.metrics.slow_consumers_total.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(session = session.id, "closing a slow consumer");
        }
    }

    // -----------------------------------------------------------------------------------------
    // Frames after the handshake
    // -----------------------------------------------------------------------------------------

    /// Handles one frame of an established session.
    pub async fn handle(self: &Arc<Self>, session: &SessionHandle, frame: ClientFrame) {
        match frame {
            ClientFrame::Hello(_) => {
                self.reply_error(session, ErrorCode::AlreadyHello, "this connection already said hello", None)
            }
            ClientFrame::Send(send) => self.send(session, send).await,
            ClientFrame::Delivered(delivered) => self.acknowledge(session, &delivered.message_ids),
            ClientFrame::SetStatus(set) => {
                let source = set.source.unwrap_or(StatusSource::Manual);
                self.with_session(session, |router, state, id| {
                    let fresh = router.config.status_fresh_window;
                    let changed = state
                        .sessions
                        .get_mut(&id)
                        .is_some_and(|s| s.status.report(set.status, source, Instant::now(), fresh));
                    if changed {
                        router.pump_member(state, &session.member_id);
                    }
                });
            }
            ClientFrame::SetSummary(set) => {
                if let Err(problem) = limits::check_summary(&set.summary) {
                    return self.reply_error(session, ErrorCode::Malformed, &problem, None);
                }
                self.with_session(session, |_, state, id| {
                    if let Some(s) = state.sessions.get_mut(&id) {
                        s.summary = Some(set.summary).filter(|v| !v.is_empty());
                    }
                })
            }
            ClientFrame::SetStats(set) => self.with_session(session, |_, state, id| {
                if let Some(s) = state.sessions.get_mut(&id) {
                    s.stats = set.stats;
                }
            }),
            ClientFrame::JoinGroup(join) => {
                let group = GroupMembership { name: join.name, role: join.role };
                if let Err(problem) = limits::check_group(&group) {
                    return self.reply_error(session, ErrorCode::Malformed, &problem, None);
                }
                let mut full = false;
                self.with_session(session, |_, state, id| {
                    if let Some(s) = state.sessions.get_mut(&id) {
                        let count = s.groups.len();
                        match s.groups.iter_mut().find(|g| g.name == group.name) {
                            Some(existing) => existing.role = group.role.clone(),
                            None if count >= limits::MAX_GROUPS => full = true,
                            None => s.groups.push(group.clone()),
                        }
                    }
                });
                if full {
                    let problem = format!("a session may be in at most {} groups", limits::MAX_GROUPS);
                    self.reply_error(session, ErrorCode::Malformed, &problem, None);
                }
            }
            ClientFrame::LeaveGroup(leave) => self.with_session(session, |_, state, id| {
                if let Some(s) = state.sessions.get_mut(&id) {
                    s.groups.retain(|g| g.name != leave.name);
                }
            }),
            ClientFrame::ListPeers(list) => {
                let frame = {
                    let state = session.shard.state.lock().expect("mesh lock");
                    let mut peers: Vec<&Session> = state.sessions.values().collect();
                    peers.sort_by_key(|s| (s.connected_at_ms, s.id));
                    ServerFrame::PeersList(PeersList {
                        peers: peers.into_iter().map(peer_info).collect(),
                        req_id: list.req_id,
                    })
                };
                self.reply(session, frame);
            }
            ClientFrame::Resolve(resolve) => self.resolve_for_client(session, resolve).await,
            ClientFrame::SetGrants(set) => self.set_grants(session, set).await,
            ClientFrame::GetGrants(get) => {
                let grants = session.shard.state.lock().expect("mesh lock").grants.of(&session.member_id);
                self.reply(session, ServerFrame::Grants(protocol::GrantsFrame { grants, req_id: get.req_id }));
            }
            ClientFrame::AuditQuery(query) => self.audit_query(session, query).await,
            ClientFrame::AuditVerify(verify) => self.audit_verify(session, verify).await,
            ClientFrame::LeaveMesh(leave) => self.leave_mesh(session, leave).await,
        }
    }

    /// The member leaves for good: its key is refused from now on, and all its sessions end.
    async fn leave_mesh(self: &Arc<Self>, session: &SessionHandle, leave: protocol::LeaveMesh) {
        let member_id = session.member_id.clone();
        let stored = self
            .blocking(move |store| {
                store.change_membership(
                    &member_id,
                    crate::store::MembershipAction::Leave,
                    Some(&member_id),
                    protocol::now_ms(),
                )
            })
            .await;
        match stored {
            Ok(member) => {
                // Gone for every sender before the member hears so; then its sessions close.
                if let Some(entry) = session.shard.state.lock().expect("mesh lock").members.get_mut(&member.id) {
                    entry.record = member.clone();
                }
                let left = protocol::Left { member_id: member.id, req_id: leave.req_id };
                self.reply(session, ServerFrame::Left(left));
                if let Err(error) = self.reload_directory().await {
                    tracing::error!(%error, "reloading the directory after a leave failed");
                }
            }
            Err(error) => {
                tracing::error!(%error, "storing a leave failed");
                self.reply_error(
                    session,
                    ErrorCode::Internal,
                    "the broker could not record the leave; retry",
                    leave.req_id,
                );
            }
        }
    }

    async fn set_grants(self: &Arc<Self>, session: &SessionHandle, set: protocol::SetGrants) {
        let mut changes = Vec::with_capacity(set.grants.len());
        for (peer, caps) in set.grants {
            if !protocol::is_key_hex(&peer) {
                return self.reply_error(
                    session,
                    ErrorCode::Malformed,
                    "grant keys must be 64-hex member keys",
                    set.req_id,
                );
            }
            if let Some(Err(problem)) = caps.as_deref().map(validate_caps) {
                return self.reply_error(session, ErrorCode::Malformed, &problem, set.req_id);
            }
            changes.push((peer, caps));
        }
        let member_id = session.member_id.clone();
        let stored = self.blocking(move |store| store.set_grants(&member_id, &changes, protocol::now_ms())).await;
        match stored {
            Ok(records) => {
                let grants = {
                    let mut state = session.shard.state.lock().expect("mesh lock");
                    state.grants.replace(&session.member_id, &records);
                    state.grants.of(&session.member_id)
                };
                self.reply(session, ServerFrame::Grants(protocol::GrantsFrame { grants, req_id: set.req_id }));
            }
            Err(error) => {
                tracing::error!(%error, "storing grants failed");
                self.reply_error(
                    session,
                    ErrorCode::Internal,
                    "the broker could not store the grants; retry",
                    set.req_id,
                );
            }
        }
    }

    fn is_admin(&self, session: &SessionHandle) -> bool {
        let state = session.shard.state.lock().expect("mesh lock");
        state
            .members
            .get(&session.member_id)
            .is_some_and(|m| m.record.role == protocol::Role::Admin && m.record.is_active())
    }

    async fn audit_query(self: &Arc<Self>, session: &SessionHandle, query: protocol::AuditQuery) {
        if !self.is_admin(session) {
            return self.reply_error(
                session,
                ErrorCode::Forbidden,
                "only admins of the mesh may read its audit log",
                query.req_id,
            );
        }
        let scope = session.mesh_id().to_owned();
        let (limit, offset, event_type) =
            (query.limit.unwrap_or(50).clamp(1, 500), query.offset.unwrap_or(0), query.event_type);
        match self.blocking(move |store| store.audit_entries(&scope, event_type.as_deref(), limit, offset)).await {
            Ok((entries, total)) => {
                let entries = entries.into_iter().map(audit_record).collect();
                self.reply(
                    session,
                    ServerFrame::AuditResult(protocol::AuditResult { entries, total, req_id: query.req_id }),
                );
            }
            Err(error) => {
                tracing::error!(%error, "reading the audit log failed");
                self.reply_error(
                    session,
                    ErrorCode::Internal,
                    "the broker could not read the audit log; retry",
                    query.req_id,
                );
            }
        }
    }

    async fn audit_verify(self: &Arc<Self>, session: &SessionHandle, verify: protocol::AuditVerify) {
        if !self.is_admin(session) {
            return self.reply_error(
                session,
                ErrorCode::Forbidden,
                "only admins of the mesh may verify its audit log",
                verify.req_id,
            );
        }
        let scope = session.mesh_id().to_owned();
        match self.blocking(move |store| store.verify_audit(&scope)).await {
            Ok(report) => self.reply(
                session,
                ServerFrame::AuditVerifyResult(protocol::AuditVerifyResult {
                    valid: report.valid,
                    entries: report.entries,
                    broken_at: report.broken_at,
                    req_id: verify.req_id,
                }),
            ),
            Err(error) => {
                tracing::error!(%error, "verifying the audit log failed");
                self.reply_error(
                    session,
                    ErrorCode::Internal,
                    "the broker could not verify the audit log; retry",
                    verify.req_id,
                );
            }
        }
    }

    fn with_session(&self, session: &SessionHandle, f: impl FnOnce(&Router, &mut MeshState, u64)) {
        let mut state = session.shard.state.lock().expect("mesh lock");
        f(self, &mut state, session.session_id);
    }

    fn reply(&self, session: &SessionHandle, frame: ServerFrame) {
        let state = session.shard.state.lock().expect("mesh lock");
        if let Some(s) = state.sessions.get(&session.session_id) {
            self.send_to(s, frame_text(&frame));
        }
    }

    fn reply_error(&self, session: &SessionHandle, code: ErrorCode, message: &str, req_id: Option<String>) {
        self.reply(
            session,
            ServerFrame::Error(protocol::ErrorFrame { code, message: message.to_owned(), id: None, req_id }),
        );
    }

    async fn resolve_for_client(self: &Arc<Self>, session: &SessionHandle, resolve: protocol::Resolve) {
        let answer = |recipients: Vec<Recipient>, error: Option<String>| {
            ServerFrame::Resolved(Resolved {
                target_spec: resolve.target_spec.clone(),
                recipients,
                error,
                req_id: resolve.req_id.clone(),
            })
        };
        let Some(target) = Target::parse(&resolve.target_spec) else {
            let detail = "targetSpec must be a 64-hex member or session key, @group or *";
            self.reply(session, answer(vec![], Some(rejection_text(SendRejection::UnknownRecipient, detail))));
            return;
        };
        let mut looked_up = false;
        loop {
            let outcome = {
                let state = session.shard.state.lock().expect("mesh lock");
                let Some(sender) = state.sessions.get(&session.session_id) else { return };
                match resolve_target(&state, sender, &target) {
                    Resolution::Deliveries(deliveries) => Ok(answer(
                        deliveries
                            .iter()
                            .filter_map(|d| state.members.get(&d.member_id))
                            .map(|m| Recipient {
                                member_pubkey: m.record.pubkey.clone(),
                                display_name: display_name_of(&state, m),
                            })
                            .collect(),
                        None,
                    )),
                    Resolution::Rejected(reason, detail) => Ok(answer(vec![], Some(rejection_text(reason, &detail)))),
                    Resolution::UnknownKey(key) => Err(key),
                }
            };
            match outcome {
                Ok(frame) => return self.reply(session, frame),
                Err(_) if looked_up => {
                    let detail = "no member or connected session of this mesh has that key";
                    return self
                        .reply(session, answer(vec![], Some(rejection_text(SendRejection::UnknownRecipient, detail))));
                }
                Err(key) => {
                    looked_up = true;
                    if let Err(error) = self.learn_member(&session.shard, &key).await {
                        tracing::error!(%error, "member lookup failed");
                    }
                }
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // Sending
    // -----------------------------------------------------------------------------------------

    async fn send(self: &Arc<Self>, session: &SessionHandle, send: protocol::Send) {
        let reject = |reason: SendRejection, detail: String| {
            self.metrics.message_rejected(reason);
            self.reply(
                session,
                ServerFrame::Ack(Ack {
                    id: send.id.clone(),
                    queued: false,
                    error: Some(rejection_text(reason, &detail)),
                    req_id: send.req_id.clone(),
                    ..Ack::default()
                }),
            );
        };
        let size = send.nonce.len() + send.ciphertext.len() + send.target_spec.len();
        if size > self.config.max_message_bytes {
            return reject(
                SendRejection::TooLarge,
                format!("payload too large: {size} bytes > MAX_MESSAGE_BYTES={}", self.config.max_message_bytes),
            );
        }
        let enc = send.enc.unwrap_or_default();
        if let Err(problem) = check_envelope(enc, &send.keys) {
            return reject(SendRejection::Malformed, problem.to_owned());
        }
        let Some(target) = Target::parse(&send.target_spec) else {
            return reject(
                SendRejection::UnknownRecipient,
                "targetSpec must be a 64-hex member or session key, @group or *".to_owned(),
            );
        };
        let mut charged = false;
        let mut looked_up = false;
        let (deliveries, uncovered, (sender_member_pubkey, sender_pubkey, sender_session_sig), dropped) = loop {
            let outcome = {
                let mut guard = session.shard.state.lock().expect("mesh lock");
                let state = &mut *guard;
                if !charged {
                    charged = true;
                    let limit = self.config.rate_limit;
                    if let Some(member) = state.members.get_mut(&session.member_id)
                        && !member.bucket.try_take(limit, Instant::now())
                    {
                        let wait = member.bucket.retry_after(limit);
                        drop(guard);
                        return reject(
                            SendRejection::RateLimit,
                            format!(
                                "max {} msg/min (burst {}) — slow down; next send possible in {} ms",
                                limit.per_minute,
                                limit.burst,
                                wait.as_millis()
                            ),
                        );
                    }
                }
                let Some(sender) = state.sessions.get(&session.session_id) else { return };
                let resolution = resolve_target(state, sender, &target);
                (resolution, (sender.member_pubkey.clone(), sender.routing_key.clone(), sender.session_sig.clone()))
            };
            match outcome {
                (Resolution::Deliveries(deliveries), sender_keys) => {
                    let cap = grant_cap_for(&target);
                    let (deliveries, dropped) = self.apply_grants(&session.shard, deliveries, &sender_keys.0, cap);
                    if deliveries.is_empty() && matches!(target, Target::Key(_)) {
                        let drops = message_audit(session, "", &send, 0, cap, &dropped).split_off(1);
                        self.store.submit(WriteOp::Audit(drops), None);
                        return reject(
                            SendRejection::Blocked,
                            "the recipient does not accept direct messages from you".into(),
                        );
                    }
                    let (deliveries, uncovered) = match cover_with_keys(deliveries, enc, &send.keys, &session.shard) {
                        Ok(covered) => covered,
                        Err((reason, detail)) => return reject(reason, detail),
                    };
                    break (deliveries, uncovered, sender_keys, dropped);
                }
                (Resolution::Rejected(reason, detail), _) => return reject(reason, detail),
                (Resolution::UnknownKey(key), _) => {
                    if looked_up {
                        return reject(
                            SendRejection::UnknownRecipient,
                            "no member or connected session of this mesh has that key".to_owned(),
                        );
                    }
                    looked_up = true;
                    match self.learn_member(&session.shard, &key).await {
                        Ok(_) => continue,
                        Err(error) => {
                            tracing::error!(%error, "member lookup failed");
                            return reject(
                                SendRejection::Unavailable,
                                "the broker could not look up the recipient; retry".to_owned(),
                            );
                        }
                    }
                }
            }
        };

        let message_id = crate::ids::new_id("msg");
        let audit = message_audit(session, &message_id, &send, deliveries.len(), grant_cap_for(&target), &dropped);
        if deliveries.is_empty() {
            // Every recipient's grants refused it: dropped silently, like each copy of a multicast.
            self.store.submit(WriteOp::Audit(audit), None);
            let ack = Ack {
                id: send.id,
                message_id,
                queued: true,
                recipients: Some(0),
                req_id: send.req_id,
                ..Ack::default()
            };
            return self.reply(session, ServerFrame::Ack(ack));
        }
        let Ok(permit) = self.uncommitted.clone().acquire_owned().await else { return };
        let envelope = Arc::new(Envelope {
            message_id,
            mesh_id: session.shard.mesh_id.clone(),
            sender_member_id: session.member_id.clone(),
            sender_member_pubkey,
            sender_pubkey,
            sender_session_sig,
            target_spec: send.target_spec,
            priority: send.priority,
            enc,
            nonce: send.nonce,
            ciphertext: send.ciphertext,
            created_at: protocol::now_ms(),
        });
        let router = self.clone();
        let handle = session.clone();
        let (ack_id, req_id) = (send.id, send.req_id);
        let routed = deliveries.clone();
        let routed_envelope = envelope.clone();
        self.store.submit(
            WriteOp::Enqueue(NewMessage { envelope, deliveries, audit }),
            Some(Box::new(move |result| {
                drop(permit);
                let error = match result {
                    Ok(WriteOutcome::Enqueued(seqs)) => {
                        tracing::debug!(
                            message = %routed_envelope.message_id,
                            mesh = %routed_envelope.mesh_id,
                            recipients = seqs.len(),
                            bytes = routed_envelope.ciphertext.len(),
                            "message queued"
                        );
                        router.metrics.message_routed(routed_envelope.priority);
                        router.metrics.queue_depth.fetch_add(seqs.len() as u64, Ordering::Relaxed);
                        let ack = Ack {
                            id: ack_id,
                            message_id: routed_envelope.message_id.clone(),
                            queued: true,
                            recipients: Some(seqs.len() as u32),
                            uncovered,
                            req_id,
                            ..Ack::default()
                        };
                        router.reply(&handle, ServerFrame::Ack(ack));
                        router.route(&handle.shard, &routed_envelope, routed.into_iter().zip(seqs));
                        return;
                    }
                    Ok(other) => StoreError::Database(format!("unexpected store outcome {other:?}")),
                    Err(error) => error,
                };
                tracing::error!(%error, "storing a message failed");
                router.metrics.message_rejected(SendRejection::Unavailable);
                router.reply(
                    &handle,
                    ServerFrame::Ack(Ack {
                        id: ack_id,
                        queued: false,
                        error: Some(rejection_text(
                            SendRejection::Unavailable,
                            "the broker could not store the message; nothing was sent, retry",
                        )),
                        req_id,
                        ..Ack::default()
                    }),
                );
            })),
        );
    }

    /// Drops the deliveries whose recipient's grants deny the sender `cap`; returns the kept ones
    /// and the member ids dropped (counted in metrics).
    fn apply_grants(
        &self,
        shard: &MeshShard,
        deliveries: Vec<Delivery>,
        sender_member_pubkey: &str,
        cap: &'static str,
    ) -> (Vec<Delivery>, Vec<String>) {
        let state = shard.state.lock().expect("mesh lock");
        let sender_member = state.by_pubkey.get(sender_member_pubkey);
        let (kept, dropped): (Vec<Delivery>, Vec<Delivery>) = deliveries.into_iter().partition(|d| {
            Some(&d.member_id) == sender_member || state.grants.allows(&d.member_id, sender_member_pubkey, cap)
        });
        for _ in &dropped {
            self.metrics.dropped_by_grant(cap);
        }
        (kept, dropped.into_iter().map(|d| d.member_id).collect())
    }

    /// Puts committed entries into their recipients' queues and pushes what may go out now.
    /// Runs on the store's writer thread, in commit order.
    fn route(
        self: &Arc<Self>,
        shard: &Arc<MeshShard>,
        envelope: &Arc<Envelope>,
        deliveries: impl Iterator<Item = (Delivery, u64)>,
    ) {
        let mut state = shard.state.lock().expect("mesh lock");
        for (delivery, seq) in deliveries {
            let Some(member) = state.members.get_mut(&delivery.member_id) else { continue };
            let Some(queue) = member.queue.as_mut() else { continue };
            let entry = Entry {
                envelope: envelope.clone(),
                session: delivery.session_pubkey,
                exclude: delivery.exclude_session,
                key: delivery.key,
                pushed_to: Vec::new(),
            };
            queue.offer(seq, entry);
            self.pump_member(&mut state, &delivery.member_id);
        }
    }

    /// Loads a page of a member's backlog from the store, then pushes from it.
    fn spawn_load(&self, mesh_id: String, member_id: String, request: LoadRequest) {
        let Some(router) = self.me.upgrade() else { return };
        self.runtime.spawn(async move {
            let id = member_id.clone();
            let urgent = request.lane == Lane::Urgent;
            let rows = router
                .blocking(move |store| store.pending_for_member(&id, urgent, request.after_seq, request.limit))
                .await;
            let rows: Option<Vec<QueuedEntry>> = match rows {
                Ok(rows) => Some(rows),
                Err(error) => {
                    tracing::error!(%error, "loading a member's queue failed; will retry");
                    None
                }
            };
            if rows.is_none() {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            let Some(shard) = router.meshes.lock().expect("meshes lock").get(&mesh_id).cloned() else { return };
            let mut state = shard.state.lock().expect("mesh lock");
            let Some(queue) = state.members.get_mut(&member_id).and_then(|m| m.queue.as_mut()) else { return };
            queue.finish_load(request, rows);
            // Pushes what arrived, and starts the next page (or the retry of a failed one).
            router.pump_member(&mut state, &member_id);
        });
    }

    /// Pushes whatever each session of `member_id` may receive now.
    fn pump_member(&self, state: &mut MeshState, member_id: &str) {
        let MeshState { members, sessions, mesh, by_routing_key, .. } = state;
        let Some(member) = members.get_mut(member_id) else { return };
        let Some(queue) = member.queue.as_mut() else { return };
        let mut delivered_on_write = Vec::new();
        for session_id in &member.sessions {
            let Some(session) = sessions.get_mut(session_id) else { continue };
            let lanes: &[Lane] = if Priority::Next.deliverable_to(session.status.status) {
                &[Lane::Urgent, Lane::Normal]
            } else {
                &[Lane::Urgent]
            };
            for lane in lanes {
                let index = lane.index();
                let start = session.scan_from[index];
                for (seq, entry) in queue.lane_mut(*lane).range_mut(start..) {
                    if session.inflight >= self.config.delivery_window || session.outbox.is_closing() {
                        break;
                    }
                    session.scan_from[index] = seq + 1;
                    if !entry.eligible_for(&session.routing_key) || entry.pushed_to.contains(&session.id) {
                        continue;
                    }
                    let frame = push_frame(&mesh.id, entry, session.caps);
                    self.send_to(session, frame);
                    entry.pushed_to.push(session.id);
                    session.inflight += 1;
                    if !session.caps.delivery_ack {
                        delivered_on_write.push(entry.envelope.message_id.clone());
                    }
                }
            }
        }
        if !delivered_on_write.is_empty() {
            let removed = remove_acknowledged(members, sessions, member_id, &delivered_on_write);
            let recipient = members.get(member_id).map(|m| m.record.pubkey.as_str()).unwrap_or_default();
            let seqs = self.send_receipts(sessions, by_routing_key, member_id, recipient, removed);
            self.persist_acknowledged(member_id, seqs);
        }
        // The window drained (or the member just came online): fetch what waits in the store.
        if let Some(queue) = members.get_mut(member_id).and_then(|m| m.queue.as_mut()) {
            for request in queue.start_loads() {
                self.spawn_load(mesh.id.clone(), member_id.to_owned(), request);
            }
        }
    }

    /// A client acknowledged pushes: drop them from its member's queue, then push more.
    fn acknowledge(&self, session: &SessionHandle, message_ids: &[String]) {
        let mut guard = session.shard.state.lock().expect("mesh lock");
        let state = &mut *guard;
        let removed = remove_acknowledged(&mut state.members, &mut state.sessions, &session.member_id, message_ids);
        if removed.is_empty() {
            return;
        }
        let recipient = state.members.get(&session.member_id).map(|m| m.record.pubkey.as_str()).unwrap_or_default();
        let seqs = self.send_receipts(&state.sessions, &state.by_routing_key, &session.member_id, recipient, removed);
        self.persist_acknowledged(&session.member_id, seqs);
        self.pump_member(state, &session.member_id);
    }

    /// Tells the session that sent each removed message (when it is connected and asked for
    /// receipts) that `member_id` stored it; a member's copies of its own messages get none.
    /// Returns the removed entries' sequence numbers.
    fn send_receipts(
        &self,
        sessions: &HashMap<u64, Session>,
        by_routing_key: &HashMap<String, u64>,
        member_id: &str,
        member_pubkey: &str,
        removed: Vec<(u64, Arc<Envelope>)>,
    ) -> Vec<u64> {
        // Formatted only when some sender asked for receipts (most sessions do not).
        let mut delivered_at: Option<String> = None;
        let mut seqs = Vec::with_capacity(removed.len());
        for (seq, envelope) in removed {
            seqs.push(seq);
            let sender = by_routing_key.get(&envelope.sender_pubkey).and_then(|id| sessions.get(id));
            if let Some(sender) = sender
                && sender.caps.delivery_receipt
                && envelope.sender_member_id != member_id
            {
                let delivered_at = delivered_at.get_or_insert_with(|| protocol::iso8601_ms(protocol::now_ms()));
                let receipt = ServerFrame::Receipt(protocol::Receipt {
                    message_id: envelope.message_id.clone(),
                    member_pubkey: member_pubkey.to_owned(),
                    delivered_at: delivered_at.clone(),
                });
                self.send_to(sender, frame_text(&receipt));
            }
        }
        seqs
    }

    fn persist_acknowledged(&self, member_id: &str, seqs: Vec<u64>) {
        if seqs.is_empty() {
            return;
        }
        let metrics = self.metrics.clone();
        self.store.submit(
            WriteOp::Acknowledge(seqs.into_iter().map(|seq| (member_id.to_owned(), seq)).collect()),
            Some(Box::new(move |result| {
                if let Ok(WriteOutcome::Changed(n)) = result {
                    metrics.messages_delivered_total.fetch_add(n, Ordering::Relaxed);
                    let _ = metrics
                        .queue_depth
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |d| Some(d.saturating_sub(n)));
                }
            })),
        );
    }

    // -----------------------------------------------------------------------------------------
    // Leaving
    // -----------------------------------------------------------------------------------------

    /// The connection ended. `clean` when the client closed it (it will not come back with this
    /// session key): its session-only mail goes to the member's other sessions at once.
    pub fn goodbye(self: &Arc<Self>, session: &SessionHandle, clean: bool) {
        let mut guard = session.shard.state.lock().expect("mesh lock");
        let state = &mut *guard;
        let Some(gone) = state.sessions.remove(&session.session_id) else { return };
        self.metrics.connections_active.fetch_sub(1, Ordering::Relaxed);
        tracing::debug!(mesh = %state.mesh.id, member = %gone.member_id, session = gone.id, clean, "session closed");
        if state.by_routing_key.get(&gone.routing_key) == Some(&gone.id) {
            state.by_routing_key.remove(&gone.routing_key);
        }
        let now_ms = protocol::now_ms();
        if let Some(member) = state.members.get_mut(&gone.member_id) {
            member.sessions.retain(|id| *id != gone.id);
            let previous = member.saved.as_ref().map(|s| s.stats).unwrap_or_default();
            let saved = PeerStateRecord {
                member_id: gone.member_id.clone(),
                groups: gone.groups.clone(),
                summary: gone.summary.clone(),
                display_name: Some(gone.display_name.clone()),
                stats: previous.plus(gone.stats),
                last_seen_at: now_ms,
            };
            member.saved = Some(saved.clone());
            self.store.submit(WriteOp::SavePeerState(saved), None);
            if member.sessions.is_empty() {
                member.queue = None;
            }
        }
        // A newer connection with the same session key replaced this one: nothing departed.
        let replaced = state.by_routing_key.contains_key(&gone.routing_key);
        let has_session_key = gone.routing_key != gone.member_pubkey;
        if has_session_key && !replaced {
            if clean {
                self.release_session(state, &gone.member_id, &gone.routing_key);
            }
            let departed = Departed { member_id: gone.member_id.clone(), at: Instant::now(), released: clean };
            state.departed.insert(gone.routing_key.clone(), departed);
        }
        let event = SystemEvent::PeerLeft(PeerLeft {
            name: gone.display_name,
            pubkey: gone.routing_key,
            member_pubkey: gone.member_pubkey,
        });
        self.broadcast_event(state, &gone.member_id, &event);
    }

    /// Session-only entries of `session_key` become deliverable to any session of the member.
    fn release_session(&self, state: &mut MeshState, member_id: &str, session_key: &str) {
        self.store.submit(
            WriteOp::ReleaseSession { member_id: member_id.to_owned(), session_pubkey: session_key.to_owned() },
            None,
        );
        let released = state
            .members
            .get_mut(member_id)
            .and_then(|m| m.queue.as_mut())
            .is_some_and(|q| q.release_session(session_key));
        if released {
            let sessions: Vec<u64> = state.members.get(member_id).map(|m| m.sessions.clone()).unwrap_or_default();
            for id in sessions {
                if let Some(s) = state.sessions.get_mut(&id) {
                    s.scan_from = [0, 0];
                }
            }
            self.pump_member(state, member_id);
        }
    }

    // -----------------------------------------------------------------------------------------
    // Background work
    // -----------------------------------------------------------------------------------------

    fn shards(&self) -> Vec<Arc<MeshShard>> {
        self.meshes.lock().expect("meshes lock").values().cloned().collect()
    }

    /// Decays stale `working` statuses and releases what they held.
    pub fn sweep_statuses(&self, now: Instant) {
        for shard in self.shards() {
            let mut state = shard.state.lock().expect("mesh lock");
            let decayed: Vec<String> = state
                .sessions
                .values_mut()
                .filter_map(|s| s.status.decay(now, self.config.status_ttl).then(|| s.member_id.clone()))
                .collect();
            for member_id in decayed {
                self.pump_member(&mut state, &member_id);
            }
        }
    }

    /// Releases the session-only mail of sessions gone longer than the rebind grace, and
    /// forgets keys retired for long.
    pub fn sweep_departed(&self, now: Instant) {
        for shard in self.shards() {
            let mut state = shard.state.lock().expect("mesh lock");
            let grace = self.config.session_rebind_grace;
            let due: Vec<(String, String)> = state
                .departed
                .iter()
                .filter(|(_, d)| !d.released && now.saturating_duration_since(d.at) >= grace)
                .map(|(key, d)| (key.clone(), d.member_id.clone()))
                .collect();
            for (key, member_id) in due {
                if let Some(departed) = state.departed.get_mut(&key) {
                    departed.released = true;
                }
                self.release_session(&mut state, &member_id, &key);
            }
            state.departed.retain(|_, d| now.saturating_duration_since(d.at) < RETIRED_KEY_MEMORY);
        }
    }

    /// Reloads loaded meshes' directories when another process changed them; closes sessions of
    /// members that are no longer active and of archived meshes.
    pub async fn refresh_directory(&self) -> Result<(), StoreError> {
        let version = self.blocking(|store| store.directory_version()).await?;
        if version == self.directory_version.load(Ordering::Relaxed) {
            return Ok(());
        }
        self.reload_directory().await?;
        // Only once applied: a failed reload is tried again at the next poll.
        self.directory_version.store(version, Ordering::Relaxed);
        Ok(())
    }

    /// Reloads every loaded mesh's directory and grants now (after a control-plane change made
    /// through this broker), closing the sessions of members that are no longer active.
    pub async fn reload_directory(&self) -> Result<(), StoreError> {
        for shard in self.shards() {
            let id = shard.mesh_id.clone();
            let loaded = self
                .blocking(move |store| Ok(store.mesh(&id)?.map(|mesh| (mesh, store.members(&id), store.grants(&id)))))
                .await?;
            let Some((mesh, members, grants)) = loaded else { continue };
            let (members, grants) = (members?, grants?);
            let mut state = shard.state.lock().expect("mesh lock");
            state.grants = Grants::from_records(grants);
            let now = Instant::now();
            for record in members {
                match state.members.get_mut(&record.id) {
                    Some(entry) => entry.record = record,
                    None => self.insert_member(&mut state, record, None, now),
                }
            }
            let archived = mesh.archived_at.is_some();
            state.mesh = mesh;
            for session in state.sessions.values() {
                let active = state.members.get(&session.member_id).is_some_and(|m| m.record.is_active());
                if archived || !active {
                    let error = protocol::ErrorFrame {
                        code: ErrorCode::Revoked,
                        message: if archived { "the mesh was archived" } else { "your membership was revoked" }
                            .to_owned(),
                        id: None,
                        req_id: None,
                    };
                    let _ = session.outbox.send(frame_text(&ServerFrame::Error(error)));
                    session.outbox.close(close_code::POLICY, "revoked");
                }
            }
        }
        Ok(())
    }

    /// Drops undelivered entries older than the message TTL.
    pub fn expire_old_messages(&self) {
        let cutoff = protocol::now_ms().saturating_sub(self.config.message_ttl.as_millis() as u64);
        let metrics = self.metrics.clone();
        self.store.submit(
            WriteOp::ExpireBefore(cutoff),
            Some(Box::new(move |result| {
                if let Ok(WriteOutcome::Changed(n)) = result {
                    if n > 0 {
                        tracing::info!(expired = n, "dropped undelivered messages past their TTL");
                    }
                    metrics.expired_total.fetch_add(n, Ordering::Relaxed);
                    let _ = metrics
                        .queue_depth
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |d| Some(d.saturating_sub(n)));
                }
            })),
        );
    }

    /// Runs the periodic sweeps until `shutdown` resolves.
    pub async fn run_background(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        let config = self.config.clone();
        let mut status = tokio::time::interval(
            (config.status_ttl / 4).clamp(std::time::Duration::from_millis(250), std::time::Duration::from_secs(5)),
        );
        let mut departed =
            tokio::time::interval((config.session_rebind_grace / 4).max(std::time::Duration::from_millis(250)));
        let mut directory = tokio::time::interval(config.directory_poll_interval);
        let mut expiry = tokio::time::interval(config.expiry_sweep_interval);
        for interval in [&mut status, &mut departed, &mut directory, &mut expiry] {
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = status.tick() => self.sweep_statuses(Instant::now()),
                _ = departed.tick() => self.sweep_departed(Instant::now()),
                _ = directory.tick() => {
                    let healthy = match self.refresh_directory().await {
                        Ok(()) => 1,
                        Err(error) => {
                            tracing::warn!(%error, "directory check failed");
                            0
                        }
                    };
                    self.metrics.db_healthy.store(healthy, Ordering::Relaxed);
                    self.metrics.store_batches_total.store(self.store.commits(), Ordering::Relaxed);
                }
                _ = expiry.tick() => self.expire_old_messages(),
            }
        }
    }

    /// Asks every session to close with 1001; their connections then say goodbye, which saves
    /// their state.
    pub fn close_all(&self, code: u16, reason: &str) {
        for shard in self.shards() {
            let state = shard.state.lock().expect("mesh lock");
            for session in state.sessions.values() {
                session.outbox.close(code, reason);
            }
        }
    }

    /// Members of `mesh_id` with at least one connected session.
    pub fn online_members(&self, mesh_id: &str) -> HashSet<String> {
        let shard = self.meshes.lock().expect("meshes lock").get(mesh_id).cloned();
        shard
            .map(|shard| {
                shard.state.lock().expect("mesh lock").sessions.values().map(|s| s.member_id.clone()).collect()
            })
            .unwrap_or_default()
    }

    /// Sessions connected now, broker-wide.
    pub fn session_count(&self) -> usize {
        self.shards().iter().map(|s| s.state.lock().expect("mesh lock").sessions.len()).sum()
    }
}

/// An audit entry as the wire shows it.
pub fn audit_record(entry: crate::store::AuditEntry) -> protocol::AuditRecord {
    protocol::AuditRecord {
        id: entry.id,
        event_type: entry.event_type,
        actor: entry.actor,
        payload: entry.payload,
        prev_hash: entry.prev_hash,
        hash: entry.hash,
        created_at: entry.created_at,
    }
}

/// The grant capability a send to `target` needs from each recipient.
fn grant_cap_for(target: &Target<'_>) -> &'static str {
    match target {
        Target::Key(_) => protocol::grant_cap::DM,
        Target::Group(_) | Target::Broadcast => protocol::grant_cap::BROADCAST,
    }
}

/// The metadata-only audit entries of one send: who sent what kind of message to whom, how big,
/// and which recipients' grants dropped it. Never content.
fn message_audit(
    session: &SessionHandle,
    message_id: &str,
    send: &protocol::Send,
    recipients: usize,
    cap: &str,
    dropped: &[String],
) -> Vec<AuditEvent> {
    let event = |event_type: &str, payload: serde_json::Value| AuditEvent {
        scope: session.mesh_id().to_owned(),
        event_type: event_type.to_owned(),
        actor: Some(session.member_id.clone()),
        payload,
    };
    let mut events = vec![event(
        "message_sent",
        json!({"messageId": message_id, "target": send.target_spec, "priority": send.priority,
               "bytes": send.ciphertext.len(), "recipients": recipients}),
    )];
    events.extend(
        dropped
            .iter()
            .map(|member| event("message_dropped", json!({"messageId": message_id, "recipient": member, "cap": cap}))),
    );
    events
}

/// Shape checks on `enc` and `keys` that need no state.
fn check_envelope(enc: Enc, keys: &[KeyWrap]) -> Result<(), &'static str> {
    match enc {
        Enc::System => Err("clients cannot send system envelopes"),
        Enc::Box if !keys.is_empty() => Err("keys are only allowed with enc \"multi\""),
        Enc::Multi if keys.is_empty() => Err("enc \"multi\" needs one key per recipient in keys"),
        Enc::Multi
            if keys.iter().any(|k| !protocol::is_key_hex(&k.to) || k.nonce.len() > 64 || k.ciphertext.len() > 128) =>
        {
            Err("each key needs a 64-hex `to`, a base64 nonce and a base64 wrapped key")
        }
        _ => Ok(()),
    }
}

/// With `enc: "multi"`, keeps only the recipients whose key wrap the sender supplied.
fn cover_with_keys(
    deliveries: Vec<Delivery>,
    enc: Enc,
    keys: &[KeyWrap],
    shard: &MeshShard,
) -> Result<(Vec<Delivery>, Vec<String>), (SendRejection, String)> {
    if enc != Enc::Multi {
        return Ok((deliveries, Vec::new()));
    }
    let state = shard.state.lock().expect("mesh lock");
    let wraps: HashMap<&str, &KeyWrap> = keys.iter().map(|k| (k.to.as_str(), k)).collect();
    let mut covered = Vec::with_capacity(deliveries.len());
    let mut uncovered = Vec::new();
    for mut delivery in deliveries {
        let Some(pubkey) = state.members.get(&delivery.member_id).map(|m| m.record.pubkey.clone()) else { continue };
        match wraps.get(pubkey.as_str()) {
            Some(wrap) => {
                delivery.key =
                    Some(protocol::WrappedKey { nonce: wrap.nonce.clone(), ciphertext: wrap.ciphertext.clone() });
                covered.push(delivery);
            }
            None => uncovered.push(pubkey),
        }
    }
    if covered.is_empty() {
        return Err((
            SendRejection::NoRecipient,
            format!(
                "no recipient of the target is covered by keys; resolve the target again (uncovered: {})",
                uncovered.join(",")
            ),
        ));
    }
    Ok((covered, uncovered))
}

/// Which members (and sessions) `target` reaches from `sender`. Pure over the mesh state.
fn resolve_target(state: &MeshState, sender: &Session, target: &Target<'_>) -> Resolution {
    let own_siblings =
        || state.members.get(&sender.member_id).is_some_and(|m| m.sessions.iter().any(|id| *id != sender.id));
    let own_copy = || Delivery {
        member_id: sender.member_id.clone(),
        session_pubkey: None,
        exclude_session: Some(sender.routing_key.clone()),
        key: None,
    };
    let member_copy = |member_id: &str| Delivery {
        member_id: member_id.to_owned(),
        session_pubkey: None,
        exclude_session: None,
        key: None,
    };
    match target {
        Target::Key(key) => {
            if *key == sender.member_pubkey {
                if own_siblings() {
                    return Resolution::Deliveries(vec![own_copy()]);
                }
                return Resolution::Rejected(
                    SendRejection::NoRecipient,
                    "that is your own member key and you have no other session online".to_owned(),
                );
            }
            if *key == sender.routing_key {
                return Resolution::Rejected(SendRejection::NoRecipient, "that is your own session key".to_owned());
            }
            if let Some(member_id) = state.by_pubkey.get(*key) {
                let active = state.members.get(member_id).is_some_and(|m| m.record.is_active());
                if !active {
                    return Resolution::Rejected(
                        SendRejection::UnknownRecipient,
                        "that member is no longer in the mesh".to_owned(),
                    );
                }
                return Resolution::Deliveries(vec![member_copy(member_id)]);
            }
            // A live session, or one that left: its mail waits for it until released, then goes
            // to its member.
            let live = state
                .by_routing_key
                .get(*key)
                .and_then(|id| state.sessions.get(id))
                .map(|s| (s.member_id.clone(), false));
            let session_member = live.or_else(|| state.departed.get(*key).map(|d| (d.member_id.clone(), d.released)));
            match session_member {
                Some((member_id, released)) => Resolution::Deliveries(vec![Delivery {
                    member_id,
                    session_pubkey: (!released).then(|| (*key).to_owned()),
                    exclude_session: None,
                    key: None,
                }]),
                None => Resolution::UnknownKey((*key).to_owned()),
            }
        }
        Target::Group(name) => {
            let mut deliveries = Vec::new();
            for (member_id, member) in &state.members {
                if !member.record.is_active() {
                    continue;
                }
                if *member_id == sender.member_id {
                    let sibling_in_group = member
                        .sessions
                        .iter()
                        .filter(|id| **id != sender.id)
                        .any(|id| state.sessions.get(id).is_some_and(|s| s.in_group(name)));
                    if sibling_in_group {
                        deliveries.push(own_copy());
                    }
                    continue;
                }
                let in_group = if member.sessions.is_empty() {
                    member.saved.as_ref().is_some_and(|s| s.groups.iter().any(|g| group_matches(&g.name, name)))
                } else {
                    member.sessions.iter().any(|id| state.sessions.get(id).is_some_and(|s| s.in_group(name)))
                };
                if in_group {
                    deliveries.push(member_copy(member_id));
                }
            }
            if deliveries.is_empty() {
                return Resolution::Rejected(SendRejection::NoRecipient, format!("nobody else is in @{name}"));
            }
            Resolution::Deliveries(deliveries)
        }
        Target::Broadcast => {
            let mut deliveries: Vec<Delivery> = state
                .members
                .iter()
                .filter(|(id, m)| **id != sender.member_id && m.record.is_active())
                .map(|(id, _)| member_copy(id))
                .collect();
            if own_siblings() {
                deliveries.push(own_copy());
            }
            if deliveries.is_empty() {
                return Resolution::Rejected(SendRejection::NoRecipient, "nobody else is in this mesh".to_owned());
            }
            Resolution::Deliveries(deliveries)
        }
    }
}

/// Removes acknowledged entries of `member_id`; frees the window of every session that had
/// them. Returns their sequence numbers and envelopes.
fn remove_acknowledged(
    members: &mut HashMap<String, MemberEntry>,
    sessions: &mut HashMap<u64, Session>,
    member_id: &str,
    message_ids: &[String],
) -> Vec<(u64, Arc<Envelope>)> {
    let Some(queue) = members.get_mut(member_id).and_then(|m| m.queue.as_mut()) else { return Vec::new() };
    let mut removed = Vec::new();
    for message_id in message_ids {
        if let Some((seq, entry)) = queue.remove(message_id) {
            for session_id in entry.pushed_to {
                if let Some(session) = sessions.get_mut(&session_id) {
                    session.inflight = session.inflight.saturating_sub(1);
                }
            }
            removed.push((seq, entry.envelope));
        }
    }
    removed
}

fn push_frame(mesh_id: &str, entry: &Entry, caps: Caps) -> String {
    let envelope = &entry.envelope;
    let created_at = protocol::iso8601_ms(envelope.created_at);
    serde_json::to_string(&PushRef {
        frame_type: PushRef::TYPE,
        message_id: &envelope.message_id,
        mesh_id,
        sender_pubkey: &envelope.sender_pubkey,
        sender_member_pubkey: Some(&envelope.sender_member_pubkey),
        sender_session_sig: envelope.sender_session_sig.as_deref(),
        priority: envelope.priority,
        nonce: &envelope.nonce,
        ciphertext: &envelope.ciphertext,
        created_at: &created_at,
        subtype: None,
        event: None,
        event_data: None,
        enc: caps.enc.then_some(envelope.enc),
        key: entry.key.as_ref(),
        target_spec: Some(&envelope.target_spec),
    })
    .expect("push serializes")
}

fn display_name_of(state: &MeshState, member: &MemberEntry) -> String {
    member
        .sessions
        .first()
        .and_then(|id| state.sessions.get(id))
        .map(|s| s.display_name.clone())
        .or_else(|| member.saved.as_ref().and_then(|s| s.display_name.clone()))
        .unwrap_or_else(|| member.record.display_name.clone())
}

fn peer_info(session: &Session) -> PeerInfo {
    PeerInfo {
        pubkey: session.routing_key.clone(),
        member_pubkey: session.member_pubkey.clone(),
        session_sig: session.session_sig.clone(),
        display_name: session.display_name.clone(),
        status: session.status.status,
        summary: session.summary.clone(),
        groups: session.groups.clone(),
        session_id: session.client_session_id.clone(),
        connected_at: protocol::iso8601_ms(session.connected_at_ms),
        cwd: session.cwd.clone(),
        hostname: session.hostname.clone(),
        pid: session.pid,
        peer_type: session.peer_type,
        channel: session.channel.clone(),
        model: session.model.clone(),
        stats: Some(session.stats),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_targets_reach_subgroups_only_at_a_slash() {
        assert!(group_matches("backend", "backend"));
        assert!(group_matches("backend/db", "backend"));
        assert!(!group_matches("backends", "backend"));
        assert!(!group_matches("backend", "backend/db"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_replayed_hello_is_refused_until_it_would_be_stale_anyway() {
        let mut guard = ReplayGuard::default();
        let keep = std::time::Duration::from_secs(120);
        assert!(guard.first_sighting("sig", Instant::now(), keep));
        assert!(!guard.first_sighting("sig", Instant::now(), keep));
        tokio::time::advance(keep).await;
        assert!(guard.first_sighting("sig", Instant::now(), keep));
    }

    #[test]
    fn envelope_shape_checks() {
        let wrap = KeyWrap { to: "a".repeat(64), nonce: "bm9uY2U=".into(), ciphertext: "a2V5".into() };
        assert!(check_envelope(Enc::Box, &[]).is_ok());
        assert!(check_envelope(Enc::Multi, std::slice::from_ref(&wrap)).is_ok());
        assert!(check_envelope(Enc::Box, std::slice::from_ref(&wrap)).is_err());
        assert!(check_envelope(Enc::Multi, &[]).is_err());
        assert!(check_envelope(Enc::System, &[]).is_err());
        let bad = KeyWrap { to: "nope".into(), ..wrap };
        assert!(check_envelope(Enc::Multi, &[bad]).is_err());
    }
}
