//! A mesh state built by hand, for unit tests of the router's pure parts.

use tokio::time::Instant;

use crate::config::RateLimit;
use crate::protocol::{Capabilities, GroupMembership, Role, Stats};
use crate::router::state::{MemberEntry, MeshState, Session};
use crate::router::{Grants, Outbox, StatusState, TokenBucket};
use crate::store::{MemberRecord, MeshRecord};

/// A mesh state built by hand: members `m-<name>` with key `<name>` repeated to 64 hex chars.
pub(crate) struct Mesh {
    pub(crate) state: MeshState,
    next_session: u64,
}

pub(crate) fn key(name: &str) -> String {
    name.repeat(64 / name.len())
}

impl Mesh {
    pub(crate) fn new() -> Mesh {
        let mesh = MeshRecord {
            id: "mesh".into(),
            slug: "acme".into(),
            name: "Acme".into(),
            created_at: 0,
            archived_at: None,
            owner_account_id: None,
        };
        let state = MeshState::new(mesh, Grants::default());
        Mesh { state, next_session: 1 }
    }

    pub(crate) fn member(&mut self, name: &str) -> &mut MemberEntry {
        let record = MemberRecord {
            id: format!("m-{name}"),
            mesh_id: "mesh".into(),
            pubkey: key(name),
            display_name: name.into(),
            role: Role::Member,
            created_at: 0,
            revoked_at: None,
            banned_at: None,
            account_id: None,
            device_id: None,
        };
        self.state.by_pubkey.insert(record.pubkey.clone(), record.id.clone());
        let entry = MemberEntry {
            saved: None,
            bucket: TokenBucket::full(RateLimit { burst: 1, per_minute: 1 }, Instant::now()),
            queue: None,
            sessions: Vec::new(),
            record,
        };
        let id = entry.record.id.clone();
        self.state.members.entry(id).or_insert(entry)
    }

    /// A session of member `name` with routing key `session_key`, in `groups`.
    pub(crate) fn session(&mut self, name: &str, session_key: &str, groups: &[&str]) -> u64 {
        let id = self.next_session;
        self.next_session += 1;
        let member_id = format!("m-{name}");
        let (outbox, _frames) = Outbox::new(1, 1024);
        let session = Session {
            id,
            member_id: member_id.clone(),
            member_pubkey: key(name),
            routing_key: session_key.to_owned(),
            session_sig: None,
            display_name: name.into(),
            name_skeleton: crate::names::skeleton(name),
            client_session_id: String::new(),
            pid: None,
            cwd: String::new(),
            hostname: None,
            peer_type: None,
            channel: None,
            model: None,
            groups: groups.iter().map(|g| GroupMembership { name: (*g).into(), role: None }).collect(),
            summary: None,
            stats: Stats::default(),
            status: StatusState::new(Instant::now()),
            connected_at_ms: 0,
            caps: Capabilities::default(),
            outbox,
            inflight: 0,
            scan_from: [0, 0],
        };
        self.state.members.get_mut(&member_id).expect("member first").sessions.push(id);
        self.state.by_routing_key.insert(session_key.to_owned(), id);
        self.state.sessions.insert(id, session);
        id
    }
}
