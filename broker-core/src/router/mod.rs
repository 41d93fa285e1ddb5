//! Presence, target resolution and durable delivery.
//!
//! State is sharded by mesh: one [`MeshShard`] per mesh with live sessions, each behind a
//! `std::sync::Mutex` that is held only for short, synchronous sections (never across an
//! `.await`; store reads happen outside it on blocking threads). A send is resolved to one
//! `Delivery` per recipient member under the lock, committed by the store without the lock,
//! and routed into the recipients' [`MemberQueue`]s from the store's commit completion. A
//! session receives at most `delivery_window` unacknowledged pushes; its acknowledgements
//! remove entries from memory and, batched, from the store.
//!
//! Rooms, one concern each:
//! - `state` — the registry: members, sessions, departed keys, the [`SessionHandle`].
//! - `handshake` — `hello` checks and registration.
//! - `resolve` — target resolution and envelope checks (pure, unit-tested without a socket).
//! - `send` — a `send` from the checks to the store submission and its completion.
//! - `delivery` — member queues, pushes, acknowledgements, receipts, broker events.
//! - `departure` — a connection ending.
//! - `requests/` — one file per control request (`list_peers`, `resolve`, grants, audit, leave,
//!   the session's profile).
//! - `sweeps` — the periodic background work.
//! - `grants`, `limits`, `outbox`, `queue`, `rate_limit`, `status` — the data structures.
//!
//! What runs on the store's writer thread: the completions passed to `Store::submit` run there
//! right after their batch commits — the `send` completion (the sender's ack, then `route` into
//! the recipients' queues and the pushes it allows) and the counters of acknowledgement and
//! expiry batches. Routing there, in commit order, is what keeps each member queue's sequence
//! numbers in order (everything up to `loaded_upto` is in memory) and why a push never precedes
//! its commit; it is also why work added to those completions costs every message's latency.

mod breaker;
mod delivery;
mod departure;
#[cfg(test)]
mod fixture;
mod grants;
mod handshake;
pub mod limits;
mod outbox;
mod pairs;
mod queue;
mod rate_limit;
mod replicas;
mod requests;
mod resolve;
mod schedules;
mod send;
mod state;
mod status;
mod sweeps;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;
use tokio::time::Instant;

pub use grants::{GrantChange, Grants, validate_grants};
pub use handshake::Refusal;
pub use outbox::{Outbox, OutboxError, OutboxReceiver, close_code};
pub use queue::{Entry, Lane, LoadRequest, MemberQueue, WindowLimits};
pub use rate_limit::TokenBucket;
pub use requests::audit_record;
pub use state::{MeshShard, SessionHandle};
pub use status::StatusState;

use crate::config::BrokerConfig;
use crate::config::PairLimits;
use crate::metrics::Metrics;
use crate::names;
use crate::protocol::{self, ClientFrame, ErrorCode, ServerFrame};
use crate::store::{MemberRecord, PeerStateRecord, Store, StoreError};
use handshake::ReplayGuard;
use state::{MemberEntry, MeshState, Session};

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
    /// Other broker processes serve from the same store (it gives notices): see `replicas`.
    shared_store: bool,
    /// This process among the replicas, and its presence announcer (with a shared store).
    replica: String,
    announcer: Option<std::sync::mpsc::Sender<replicas::Presence>>,
    /// When each other replica was last heard from.
    replicas_heard: Mutex<HashMap<String, Instant>>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router").finish_non_exhaustive()
    }
}

fn frame_text(frame: &ServerFrame) -> String {
    serde_json::to_string(frame).expect("server frames serialize")
}

/// The broker setting holding a mesh's own pair limits (JSON; empty or absent: the defaults).
fn pair_limits_setting(mesh_id: &str) -> String {
    format!("pair_limits:{mesh_id}")
}

impl Router {
    /// Must be called inside a tokio runtime (background work is spawned on it).
    pub fn new(config: Arc<BrokerConfig>, store: Arc<dyn Store>, metrics: Arc<Metrics>) -> Arc<Router> {
        let (version, depth) =
            crate::store::off_runtime(|| (store.directory_version().unwrap_or(0), store.queue_depth()));
        if let Ok(depth) = depth {
            metrics.queue_depth.store(depth, Ordering::Relaxed);
        }
        let notices = store.subscribe();
        let replica = crate::ids::new_id("rep");
        let announcer = notices.as_ref().map(|_| replicas::start_announcer(store.clone(), replica.clone()));
        let router = Arc::new_cyclic(|me| Router {
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
            shared_store: notices.is_some(),
            replica,
            announcer,
            replicas_heard: Mutex::new(HashMap::new()),
        });
        if let Some(notices) = notices {
            tokio::spawn(replicas::follow(Arc::downgrade(&router), notices));
        }
        router
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

    /// The shard of `mesh_id` if this process has it loaded (a mesh with sessions here, or that
    /// other replicas' sessions made it load).
    fn loaded_shard(&self, mesh_id: &str) -> Option<Arc<MeshShard>> {
        self.meshes.lock().expect("meshes lock").get(mesh_id).cloned()
    }

    /// The shard for `mesh_id`, loading the mesh's directory on first use.
    async fn shard(&self, mesh_id: &str) -> Result<Option<Arc<MeshShard>>, StoreError> {
        if let Some(shard) = self.loaded_shard(mesh_id) {
            return Ok(Some(shard));
        }
        let id = mesh_id.to_owned();
        let loaded = self
            .blocking(move |store| {
                let Some(mesh) = store.mesh(&id)?.filter(|m| m.id == id) else { return Ok(None) };
                let limits = store.setting(&pair_limits_setting(&id))?;
                Ok(Some((mesh, store.members(&id)?, store.peer_states(&id)?, store.grants(&id)?, limits)))
            })
            .await?;
        let Some((mesh, members, saved, grants, limits)) = loaded else { return Ok(None) };
        let limits = limits.and_then(|json| serde_json::from_str(&json).ok()).unwrap_or(self.config.pair_limits);
        let mut state = MeshState::new(mesh, Grants::from_records(grants), limits);
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
        state.member_names.entry(names::skeleton(&record.display_name)).or_insert_with(|| record.id.clone());
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

    /// Handles one frame of an established session: one arm per frame type, each handled in
    /// its own room (`send`, `delivery`, `requests/*`).
    pub async fn handle(self: &Arc<Self>, session: &SessionHandle, frame: ClientFrame) {
        match frame {
            ClientFrame::Hello(_) => {
                self.reply_error(session, ErrorCode::AlreadyHello, "this connection already said hello", None)
            }
            ClientFrame::Send(send) => self.send(session, send, None).await,
            ClientFrame::Schedule(schedule) => self.schedule(session, schedule).await,
            ClientFrame::ListScheduled(list) => self.list_scheduled(session, list).await,
            ClientFrame::CancelScheduled(cancel) => self.cancel_scheduled(session, cancel).await,
            ClientFrame::Delivered(delivered) => self.acknowledge(session, &delivered.message_ids),
            ClientFrame::SetStatus(set) => self.set_status(session, set),
            ClientFrame::SetSummary(set) => self.set_summary(session, set),
            ClientFrame::SetStats(set) => self.set_stats(session, set),
            ClientFrame::JoinGroup(join) => self.join_group(session, join),
            ClientFrame::LeaveGroup(leave) => self.leave_group(session, leave),
            ClientFrame::ListPeers(list) => self.list_peers(session, list),
            ClientFrame::ListMembers(list) => self.list_members(session, list),
            ClientFrame::MessageStatus(ask) => self.message_status(session, ask).await,
            ClientFrame::MarkRead(read) => self.mark_read(session, read),
            ClientFrame::MembershipLog(query) => self.membership_log(session, query).await,
            ClientFrame::MeshKeys(query) => self.mesh_keys(session, query).await,
            ClientFrame::NewEpoch(epoch) => self.new_epoch(session, epoch).await,
            ClientFrame::AddWraps(add) => self.add_wraps(session, add).await,
            ClientFrame::SetKeyHistory(set) => self.set_key_history(session, set).await,
            ClientFrame::StateSet(set) => self.state_set(session, set).await,
            ClientFrame::StateDelete(delete) => self.state_delete(session, delete).await,
            ClientFrame::StateGet(get) => self.state_get(session, get).await,
            ClientFrame::StateList(list) => self.state_list(session, list).await,
            ClientFrame::Remember(remember) => self.remember(session, remember).await,
            ClientFrame::Memories(query) => self.memories(session, query).await,
            ClientFrame::Forget(forget) => self.forget(session, forget).await,
            ClientFrame::Resolve(resolve) => self.resolve_for_client(session, resolve).await,
            ClientFrame::SetGrants(set) => self.set_grants(session, set).await,
            ClientFrame::GetGrants(get) => self.get_grants(session, get),
            ClientFrame::AuditQuery(query) => self.audit_query(session, query).await,
            ClientFrame::AuditVerify(verify) => self.audit_verify(session, verify).await,
            ClientFrame::LeaveMesh(leave) => self.leave_mesh(session, leave).await,
            ClientFrame::ReleasePair(release) => self.release_pair(session, release),
        }
    }

    /// Runs a change of what a session says about itself; when its `peers_list` entry changed,
    /// the other replicas and the sessions that follow peers hear it.
    fn with_session(&self, session: &SessionHandle, f: impl FnOnce(&Router, &mut MeshState, u64)) {
        let mut state = session.shard.state.lock().expect("mesh lock");
        let before = state.sessions.get(&session.session_id).map(state::peer_info);
        f(self, &mut state, session.session_id);
        let after = state.sessions.get(&session.session_id).map(state::peer_info);
        if before != after {
            self.profile_changed(&state, session.session_id);
        }
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

    fn send_to(&self, session: &Session, frame: String) {
        if session.outbox.send(frame) == Err(OutboxError::Full) {
            self.metrics.slow_consumers_total.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(session = session.id, "closing a slow consumer");
        }
    }

    fn shards(&self) -> Vec<Arc<MeshShard>> {
        self.meshes.lock().expect("meshes lock").values().cloned().collect()
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

    /// Members of `mesh_id` with at least one connected session (here or on another replica).
    pub fn online_members(&self, mesh_id: &str) -> HashSet<String> {
        self.loaded_shard(mesh_id)
            .map(|shard| {
                let state = shard.state.lock().expect("mesh lock");
                let remote = state.remote.values().map(|r| r.member_id.clone());
                state.sessions.values().map(|s| s.member_id.clone()).chain(remote).collect()
            })
            .unwrap_or_default()
    }

    /// Whether a live or recently departed session of `mesh_id` uses `key` as its routing key
    /// (the store learns a session key when its session ends: see `WriteOp::RecordSessionKey`).
    pub fn session_key_in_use(&self, mesh_id: &str, key: &str) -> bool {
        self.loaded_shard(mesh_id).is_some_and(|shard| {
            let state = shard.state.lock().expect("mesh lock");
            state.by_routing_key.contains_key(key) || state.departed.contains_key(key) || state.remote.contains_key(key)
        })
    }

    /// The pair breaker's limits in `mesh_id`.
    pub async fn pair_limits(&self, mesh_id: &str) -> Result<Option<PairLimits>, StoreError> {
        let shard = self.shard(mesh_id).await?;
        Ok(shard.map(|shard| shard.state.lock().expect("mesh lock").breaker.limits()))
    }

    /// Sets the pair breaker's limits for `mesh_id` (`None`: the broker's defaults again),
    /// durably and at once.
    pub async fn set_pair_limits(&self, mesh_id: &str, limits: Option<PairLimits>) -> Result<PairLimits, StoreError> {
        let stored = limits.map(|l| serde_json::to_string(&l).expect("limits serialize")).unwrap_or_default();
        let key = pair_limits_setting(mesh_id);
        self.blocking(move |store| store.set_setting(&key, &stored)).await?;
        let effective = limits.unwrap_or(self.config.pair_limits);
        if let Some(shard) = self.loaded_shard(mesh_id) {
            shard.state.lock().expect("mesh lock").breaker.set_limits(effective);
        }
        Ok(effective)
    }

    /// Sessions connected now, broker-wide.
    pub fn session_count(&self) -> usize {
        self.shards().iter().map(|s| s.state.lock().expect("mesh lock").sessions.len()).sum()
    }
}
