//! A connection ending: the session's state is saved, its session-only mail waits for it (or
//! goes to the member's other sessions at once after a clean goodbye), and `peer_left` goes out.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::time::Instant;

use super::Router;
use super::state::{Departed, SessionHandle};
use crate::protocol::{self, PeerLeft, SystemEvent};
use crate::store::{PeerStateRecord, WriteOp};

impl Router {
    /// The connection ended. `clean` when the client closed it (it will not come back with this
    /// session key): its session-only mail goes to the member's other sessions at once.
    pub fn goodbye(self: &Arc<Self>, session: &SessionHandle, clean: bool) {
        let mut guard = session.shard.state.lock().expect("mesh lock");
        let state = &mut *guard;
        let Some(gone) = state.sessions.remove(&session.session_id) else { return };
        state.release_session_name(&gone.name_skeleton);
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
            // Recorded when the session ends, not at hello (a hello storm must not become a
            // write storm): while it lives, `Router::session_key_in_use` answers for it.
            let record = WriteOp::RecordSessionKey {
                mesh_id: state.mesh.id.clone(),
                member_id: gone.member_id.clone(),
                pubkey: gone.routing_key.clone(),
                at_ms: gone.connected_at_ms,
            };
            self.store.submit(record, None);
            if clean {
                self.release_session(state, &gone.member_id, &gone.routing_key);
            }
            let departed = Departed { member_id: gone.member_id.clone(), at: Instant::now(), released: clean };
            state.departed.insert(gone.routing_key.clone(), departed);
        }
        let routing_key = gone.routing_key.clone();
        let event = SystemEvent::PeerLeft(PeerLeft {
            name: gone.display_name,
            pubkey: gone.routing_key,
            member_pubkey: gone.member_pubkey,
        });
        self.broadcast_event(state, &gone.member_id, &event);
        if !replaced {
            self.announce_gone(&state.mesh.id, &routing_key, event);
        }
    }
}
