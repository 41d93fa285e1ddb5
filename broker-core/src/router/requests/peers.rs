//! `list_peers`: every connected session of the mesh, oldest first.

use crate::protocol::{self, PeersList, ServerFrame};
use crate::router::Router;
use crate::router::state::{Session, SessionHandle, peer_info};

impl Router {
    pub(in crate::router) fn list_peers(&self, session: &SessionHandle, list: protocol::ListPeers) {
        let frame = {
            let state = session.shard.state.lock().expect("mesh lock");
            let mut peers: Vec<&Session> = state.sessions.values().collect();
            peers.sort_by_key(|s| (s.connected_at_ms, s.id));
            ServerFrame::PeersList(PeersList { peers: peers.into_iter().map(peer_info).collect(), req_id: list.req_id })
        };
        self.reply(session, frame);
    }
}
