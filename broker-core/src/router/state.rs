//! The registry: what the router keeps per mesh (members, sessions, departed session keys,
//! grants) and the handle a connection holds. Plain data; the rooms beside this one act on it
//! under the mesh lock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::time::Instant;

use super::breaker::PairBreaker;
use super::{Grants, MemberQueue, Outbox, StatusState, TokenBucket};
use crate::config::PairLimits;
use crate::names;
use crate::protocol::{self, Capabilities, GroupMembership, PeerInfo, PeerType, Stats};
use crate::store::{MemberRecord, MeshRecord, PeerStateRecord};

/// One connected peer session.
#[derive(Debug)]
pub(super) struct Session {
    pub(super) id: u64,
    pub(super) member_id: String,
    pub(super) member_pubkey: String,
    /// The session key (the member key when the client has none): how peers address it.
    pub(super) routing_key: String,
    pub(super) session_sig: Option<String>,
    pub(super) display_name: String,
    /// `names::skeleton` of the display name.
    pub(super) name_skeleton: String,
    pub(super) client_session_id: String,
    pub(super) pid: Option<u32>,
    pub(super) cwd: String,
    pub(super) hostname: Option<String>,
    pub(super) peer_type: Option<PeerType>,
    pub(super) channel: Option<String>,
    pub(super) model: Option<String>,
    pub(super) groups: Vec<GroupMembership>,
    pub(super) summary: Option<String>,
    /// This session's own counters, as last reported.
    pub(super) stats: Stats,
    pub(super) status: StatusState,
    pub(super) connected_at_ms: u64,
    pub(super) caps: Capabilities,
    pub(super) outbox: Outbox,
    /// Pushes sent and not yet acknowledged.
    pub(super) inflight: usize,
    /// Per lane: entries below this sequence number were already pushed or are not for us.
    pub(super) scan_from: [u64; 2],
}

impl Session {
    pub(super) fn in_group(&self, name: &str) -> bool {
        self.groups.iter().any(|g| group_matches(&g.name, name))
    }
}

/// `@parent` reaches members of `parent` and of its subgroups `parent/…`.
pub(super) fn group_matches(member_group: &str, target: &str) -> bool {
    member_group == target || member_group.strip_prefix(target).is_some_and(|rest| rest.starts_with('/'))
}

#[derive(Debug)]
pub(super) struct MemberEntry {
    pub(super) record: MemberRecord,
    pub(super) saved: Option<PeerStateRecord>,
    pub(super) bucket: TokenBucket,
    /// Present while the member has at least one session.
    pub(super) queue: Option<MemberQueue>,
    pub(super) sessions: Vec<u64>,
}

/// A session that went away. Until its mail is released, mail for its key waits for it (it may
/// come back with the same key); afterwards its key still resolves, to its member, so a peer
/// that saw the key recently can still reach the member.
#[derive(Debug)]
pub(super) struct Departed {
    pub(super) member_id: String,
    pub(super) at: Instant,
    pub(super) released: bool,
}

/// A session connected to another broker process on the same database, as that process
/// announced it.
#[derive(Debug, Clone)]
pub(super) struct RemoteSession {
    pub(super) replica: String,
    pub(super) member_id: String,
    pub(super) connected_at_ms: u64,
    pub(super) info: PeerInfo,
    /// It asked for delivery receipts: they are forwarded to its replica.
    pub(super) wants_receipts: bool,
}

impl RemoteSession {
    pub(super) fn in_group(&self, name: &str) -> bool {
        self.info.groups.iter().any(|g| group_matches(&g.name, name))
    }
}

/// How long a departed session's key keeps resolving to its member.
pub(super) const RETIRED_KEY_MEMORY: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

#[derive(Debug)]
pub(super) struct MeshState {
    pub(super) mesh: MeshRecord,
    pub(super) members: HashMap<String, MemberEntry>,
    /// Member key → member id.
    pub(super) by_pubkey: HashMap<String, String>,
    pub(super) sessions: HashMap<u64, Session>,
    /// Routing key → session id.
    pub(super) by_routing_key: HashMap<String, u64>,
    pub(super) departed: HashMap<String, Departed>,
    /// Sessions connected to other replicas, by routing key (see `replicas`).
    pub(super) remote: HashMap<String, RemoteSession>,
    pub(super) grants: Grants,
    /// Name skeleton of each member's own name → member id.
    pub(super) member_names: HashMap<String, String>,
    /// Name skeleton of live sessions → the member whose sessions use it, and how many do.
    pub(super) session_names: HashMap<String, (String, usize)>,
    pub(super) breaker: PairBreaker,
    /// Members whose `leave_mesh` is being stored: their sessions stay open until they heard
    /// `left` (a directory reload in between must not cut them off first).
    pub(super) leaving: std::collections::HashSet<String>,
}

impl MeshState {
    /// A mesh with no member loaded and no session yet.
    pub(super) fn new(mesh: MeshRecord, grants: Grants, pair_limits: PairLimits) -> MeshState {
        MeshState {
            mesh,
            members: HashMap::new(),
            by_pubkey: HashMap::new(),
            sessions: HashMap::new(),
            by_routing_key: HashMap::new(),
            departed: HashMap::new(),
            remote: HashMap::new(),
            grants,
            member_names: HashMap::new(),
            session_names: HashMap::new(),
            breaker: PairBreaker::new(pair_limits),
            leaving: std::collections::HashSet::new(),
        }
    }

    /// The name a new session of `member_id` shows: the one it asked for, unless that is empty,
    /// reserved, or reads as another member's name or another member's live session's name
    /// (peers and models must not mistake one member for another); then its member's own
    /// name, which the directory keeps unique.
    pub(super) fn session_name(&self, member_id: &str, wanted: Option<String>, member_name: &str) -> String {
        let Some(wanted) = wanted.filter(|n| !n.trim().is_empty()) else { return member_name.to_owned() };
        if names::is_reserved(&wanted) {
            return member_name.to_owned();
        }
        let skeleton = names::skeleton(&wanted);
        let member_elsewhere = self.member_names.get(&skeleton).is_some_and(|owner| owner != member_id);
        let session_elsewhere = self.session_names.get(&skeleton).is_some_and(|(owner, _)| owner != member_id);
        if member_elsewhere || session_elsewhere { member_name.to_owned() } else { wanted }
    }

    /// Sessions on other replicas that are not also connected here (a session that moved here
    /// may still be announced by the replica it left, until that one notices).
    pub(super) fn remote_elsewhere(&self) -> impl Iterator<Item = &RemoteSession> {
        self.remote.iter().filter(|(key, _)| !self.by_routing_key.contains_key(*key)).map(|(_, r)| r)
    }

    /// Sessions connected to the mesh, here and on other replicas.
    pub(super) fn session_count(&self) -> usize {
        self.sessions.len() + self.remote_elsewhere().count()
    }

    /// Sessions of `member_id` on other replicas (not also connected here).
    pub(super) fn remote_sessions_of<'a>(&'a self, member_id: &'a str) -> impl Iterator<Item = &'a RemoteSession> {
        self.remote_elsewhere().filter(move |r| r.member_id == member_id)
    }

    pub(super) fn hold_session_name(&mut self, member_id: &str, skeleton: &str) {
        self.session_names.entry(skeleton.to_owned()).or_insert_with(|| (member_id.to_owned(), 0)).1 += 1;
    }

    pub(super) fn release_session_name(&mut self, skeleton: &str) {
        if let Some((_, count)) = self.session_names.get_mut(skeleton) {
            *count -= 1;
            if *count == 0 {
                self.session_names.remove(skeleton);
            }
        }
    }
}

/// Everything the router keeps for one mesh.
#[derive(Debug)]
pub struct MeshShard {
    pub(super) mesh_id: String,
    pub(super) state: Mutex<MeshState>,
}

/// What a connection holds once its `hello` succeeded.
#[derive(Debug, Clone)]
pub struct SessionHandle {
    pub(super) shard: Arc<MeshShard>,
    pub session_id: u64,
    pub member_id: String,
    pub caps: Capabilities,
}

impl SessionHandle {
    pub fn mesh_id(&self) -> &str {
        &self.shard.mesh_id
    }
}

pub(super) fn display_name_of(state: &MeshState, member: &MemberEntry) -> String {
    member
        .sessions
        .first()
        .and_then(|id| state.sessions.get(id))
        .map(|s| s.display_name.clone())
        .or_else(|| member.saved.as_ref().and_then(|s| s.display_name.clone()))
        .unwrap_or_else(|| member.record.display_name.clone())
}

pub(super) fn peer_info(session: &Session) -> PeerInfo {
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
