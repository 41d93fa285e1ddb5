//! `list_peers`: the connected sessions of the mesh (on every replica), oldest first, within
//! one frame.
//!
//! One member may hold many sessions with large metadata; the listing takes sessions round by
//! round (every member's oldest first, then every member's second, …), at most
//! [`SESSIONS_LISTED_PER_MEMBER`] per member, until the frame's byte budget is spent, and says
//! how many it left out. The asking session is always listed.

use std::collections::HashMap;

use crate::protocol::{self, PeerInfo, PeersList, ServerFrame};
use crate::router::Router;
use crate::router::state::{MeshState, Session, SessionHandle, peer_info};

/// Sessions of one member a listing shows at most.
pub const SESSIONS_LISTED_PER_MEMBER: usize = 8;
/// Room in a frame for everything but the peers (type, request id, counts).
const FRAME_OVERHEAD: usize = 1024;

impl Router {
    pub(in crate::router) fn list_peers(&self, session: &SessionHandle, list: protocol::ListPeers) {
        let budget = self.config.max_frame_bytes.saturating_sub(FRAME_OVERHEAD);
        let (peers, omitted) = {
            let state = session.shard.state.lock().expect("mesh lock");
            fair_listing(&state, session.session_id, budget)
        };
        let omitted = Some(omitted).filter(|n| *n > 0);
        self.reply(session, ServerFrame::PeersList(PeersList { peers, omitted, req_id: list.req_id }));
    }
}

/// One session a listing may show, here or on another replica.
struct Listable<'a> {
    member_id: &'a str,
    /// Oldest first; ties by session id, remote sessions after local ones.
    order: (u64, u64),
    info: std::borrow::Cow<'a, PeerInfo>,
}

/// The listed peers (oldest first) and how many sessions were left out.
fn fair_listing(state: &MeshState, asking: u64, budget: usize) -> (Vec<PeerInfo>, usize) {
    let local = state.sessions.values().map(|s: &Session| Listable {
        member_id: &s.member_id,
        order: (s.connected_at_ms, s.id),
        info: std::borrow::Cow::Owned(peer_info(s)),
    });
    let remote = state.remote_elsewhere().map(|r| Listable {
        member_id: &r.member_id,
        order: (r.connected_at_ms, u64::MAX),
        info: std::borrow::Cow::Borrowed(&r.info),
    });
    let mut asker = None;
    let mut by_member: HashMap<&str, Vec<Listable>> = HashMap::new();
    for listable in local.chain(remote) {
        if listable.order.1 == asking {
            asker = Some(listable);
        } else {
            by_member.entry(listable.member_id).or_default().push(listable);
        }
    }
    let total = by_member.values().map(Vec::len).sum::<usize>() + usize::from(asker.is_some());
    let mut members: Vec<Vec<Listable>> = by_member.into_values().collect();
    for sessions in &mut members {
        sessions.sort_by_key(|s| s.order);
    }
    members.sort_by_key(|sessions| sessions[0].order);

    // The asker first, then round by round every member's next oldest session.
    let mut candidates: Vec<Listable> = asker.into_iter().collect();
    let mut rounds: Vec<std::vec::IntoIter<Listable>> = members.into_iter().map(Vec::into_iter).collect();
    for _ in 0..SESSIONS_LISTED_PER_MEMBER {
        candidates.extend(rounds.iter_mut().filter_map(Iterator::next));
    }
    let mut listed: Vec<Listable> = Vec::with_capacity(candidates.len());
    let mut spent = 0;
    for candidate in candidates {
        // The encoded size plus its separating comma.
        let size = serde_json::to_string(&*candidate.info).map_or(usize::MAX, |json| json.len() + 1);
        if spent + size > budget {
            break;
        }
        spent += size;
        listed.push(candidate);
    }
    let omitted = total - listed.len();
    listed.sort_by_key(|s| s.order);
    (listed.into_iter().map(|s| s.info.into_owned()).collect(), omitted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::fixture::Mesh;

    fn names(peers: &[PeerInfo]) -> Vec<String> {
        peers.iter().map(|p| p.display_name.clone()).collect()
    }

    #[test]
    fn one_member_with_many_sessions_does_not_crowd_out_the_others() {
        let mut mesh = Mesh::new();
        mesh.member("mallory");
        let first = mesh.session("mallory", &"a0".repeat(32), &[]);
        for n in 1..30 {
            mesh.session("mallory", &format!("{n:064x}"), &[]);
        }
        mesh.member("alice");
        mesh.session("alice", &"b0".repeat(32), &[]);
        mesh.member("bob");
        let bob = mesh.session("bob", &"c0".repeat(32), &[]);

        let (peers, omitted) = fair_listing(&mesh.state, bob, usize::MAX);
        let listed = names(&peers);
        assert_eq!(listed.iter().filter(|n| *n == "mallory").count(), SESSIONS_LISTED_PER_MEMBER);
        assert!(listed.contains(&"alice".to_owned()) && listed.contains(&"bob".to_owned()));
        assert_eq!(omitted, 30 - SESSIONS_LISTED_PER_MEMBER);

        // With room for three entries: the asker, then every member's oldest session.
        let one_entry = serde_json::to_string(&peer_info(&mesh.state.sessions[&first])).expect("json").len() + 1;
        let (peers, omitted) = fair_listing(&mesh.state, bob, 3 * one_entry);
        let mut listed = names(&peers);
        listed.sort();
        assert_eq!(listed, ["alice", "bob", "mallory"]);
        assert_eq!(omitted, 29);
    }

    #[test]
    fn a_listing_fits_its_byte_budget() {
        let mut mesh = Mesh::new();
        mesh.member("alice");
        let asking = mesh.session("alice", &"a0".repeat(32), &[]);
        for n in 0..20 {
            let name = format!("m{n}");
            mesh.member(&name);
            let id = mesh.session(&name, &format!("{:064x}", n + 1), &[]);
            mesh.state.sessions.get_mut(&id).expect("session").cwd = "/".repeat(1000);
        }
        let (peers, omitted) = fair_listing(&mesh.state, asking, 10_000);
        let encoded = serde_json::to_string(&peers).expect("json").len();
        assert!(encoded <= 10_000, "{encoded} bytes");
        assert_eq!(peers.len() + omitted, 21);
        assert!(omitted > 0 && names(&peers).contains(&"alice".to_owned()));
    }
}
