//! `list_members`: every active member of the mesh, online (on any replica) or not, within one
//! frame. A sender that names a member with no session still reaches its queue.

use crate::protocol::{self, MemberInfo, MembersList, ServerFrame};
use crate::router::Router;
use crate::router::state::{MeshState, SessionHandle, display_name_of};

/// Room in a frame for everything but the members (type, request id, count).
const FRAME_OVERHEAD: usize = 1024;

impl Router {
    pub(in crate::router) fn list_members(&self, session: &SessionHandle, list: protocol::ListMembers) {
        let budget = self.config.max_frame_bytes.saturating_sub(FRAME_OVERHEAD);
        let (members, omitted) = {
            let state = session.shard.state.lock().expect("mesh lock");
            members_within(&state, budget)
        };
        let omitted = Some(omitted).filter(|n| *n > 0);
        self.reply(session, ServerFrame::MembersList(MembersList { members, omitted, req_id: list.req_id }));
    }
}

/// The active members in name order, as many as `budget` bytes hold, and how many were left out.
fn members_within(state: &MeshState, budget: usize) -> (Vec<MemberInfo>, usize) {
    let mut all: Vec<MemberInfo> = state
        .members
        .values()
        .filter(|m| m.record.is_active())
        .map(|member| MemberInfo {
            pubkey: member.record.pubkey.clone(),
            display_name: display_name_of(state, member),
            role: member.record.role,
            online: !member.sessions.is_empty() || state.remote_sessions_of(&member.record.id).next().is_some(),
        })
        .collect();
    all.sort_by(|a, b| a.display_name.cmp(&b.display_name).then_with(|| a.pubkey.cmp(&b.pubkey)));
    let mut spent = 0;
    let fits = all
        .iter()
        .take_while(|m| {
            spent += serde_json::to_string(m).map_or(usize::MAX / 2, |text| text.len() + 1);
            spent <= budget
        })
        .count();
    let omitted = all.len() - fits;
    all.truncate(fits);
    (all, omitted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::fixture;

    #[test]
    fn members_are_listed_by_name_online_or_not_and_cut_to_the_frame() {
        let mut mesh = fixture::Mesh::new();
        for name in ["carol", "alice", "bob", "dave"] {
            mesh.member(name);
        }
        mesh.member("dave").record.revoked_at = Some(1);
        mesh.session("bob", &fixture::key("b1"), &[]);
        let (members, omitted) = members_within(&mesh.state, usize::MAX);
        let listed: Vec<(&str, bool)> = members.iter().map(|m| (m.display_name.as_str(), m.online)).collect();
        assert_eq!(listed, [("alice", false), ("bob", true), ("carol", false)], "dave was removed");
        assert_eq!(omitted, 0);
        let one = serde_json::to_string(&members[0]).expect("serializes").len() + 1;
        let (members, omitted) = members_within(&mesh.state, one * 2 + 1);
        assert_eq!((members.len(), omitted), (2, 1));
    }
}
