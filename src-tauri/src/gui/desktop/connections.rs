//! One [`Supervisor`] per joined mesh: starting the app's session in it, ending it, and keeping
//! its peer list on screen.

use std::sync::Arc;

use broker_core::protocol::{PeerInfo, PeerType};

use super::{DESKTOP_CHANNEL, Desktop, Output, UiEvent, lock};
use crate::config::MeshEntry;
use crate::gui::error::{CommandError, CommandResult};
use crate::gui::state::MeshStatus;
use crate::mesh::{LinkState, MeshLink, PeerRow, SessionOptions, Supervisor};

impl Desktop {
    pub(super) fn own_member_keys(&self) -> Vec<String> {
        lock(&self.state).meshes.values().map(|m| m.entry.member_pubkey.clone()).collect()
    }

    pub(super) fn supervisor(&self, mesh_id: &str) -> CommandResult<Arc<Supervisor>> {
        lock(&self.links)
            .get(mesh_id)
            .cloned()
            .ok_or_else(|| CommandError::not_found("that mesh is not joined on this device"))
    }

    /// This app's session in one mesh (none when its member key could not be loaded).
    pub(super) fn session(&self, mesh_id: &str) -> CommandResult<Arc<MeshLink>> {
        let supervisor = self.supervisor(mesh_id)?;
        supervisor.links().first().cloned().ok_or_else(|| CommandError::not_found("no session"))
    }

    pub(super) fn mesh_entry(&self, mesh_id: &str) -> CommandResult<MeshEntry> {
        lock(&self.state)
            .meshes
            .get(mesh_id)
            .map(|m| m.entry.clone())
            .ok_or_else(|| CommandError::not_found("that mesh is not joined on this device"))
    }

    /// Starts the app's session in one mesh.
    pub(super) async fn connect(&self, entry: MeshEntry) {
        let mesh_id = entry.mesh_id.clone();
        let options = SessionOptions {
            display_name: None,
            peer_type: PeerType::Human,
            channel: DESKTOP_CHANNEL.into(),
            model: None,
            session_id: None,
        };
        let supervisor = Supervisor::start_observed(
            &self.config_dir,
            vec![entry.clone()],
            self.keystore.clone(),
            self.inbox.clone(),
            options,
            self.incoming.clone(),
            Some(self.link_events.clone()),
        )
        .await;
        let link = match supervisor.failed().first() {
            Some((_, reason)) => LinkState::Failed(reason.to_string()),
            None => LinkState::Connecting,
        };
        lock(&self.state).meshes.insert(mesh_id.clone(), MeshStatus { entry, link, peers: Vec::new() });
        if let Some(old) = lock(&self.links).insert(mesh_id, Arc::new(supervisor)) {
            tokio::spawn(async move { old.shutdown().await });
        }
        self.emit_status();
    }

    pub(super) async fn disconnect(&self, mesh_id: &str) {
        let supervisor = lock(&self.links).remove(mesh_id);
        if let Some(supervisor) = supervisor {
            supervisor.shutdown().await;
        }
        lock(&self.state).meshes.remove(mesh_id);
        self.send(Output::Ui(UiEvent::Peers { mesh_id: mesh_id.to_owned(), peers: Vec::new() }));
        self.emit_status();
    }

    /// Fetches one mesh's peer list and shows it.
    pub(super) async fn refresh_peers(&self, mesh_id: &str) {
        let Ok(supervisor) = self.supervisor(mesh_id) else { return };
        let peers = match supervisor.links().first() {
            Some(link) if link.state() == LinkState::Connected => {
                supervisor.list_peers(Some(mesh_id)).await.unwrap_or_default()
            }
            _ => Vec::new(),
        };
        let changed = {
            let mut state = lock(&self.state);
            match state.meshes.get_mut(mesh_id) {
                Some(mesh) => {
                    let changed = peers_differ(&mesh.peers, &peers);
                    mesh.peers = peers.clone();
                    changed
                }
                None => false,
            }
        };
        if changed {
            self.send(Output::Ui(UiEvent::Peers { mesh_id: mesh_id.to_owned(), peers }));
            self.emit_status();
        }
    }
}

impl Desktop {
    /// A peer changed its status, summary, groups or stats: its row is replaced in place (a row
    /// not listed yet means the list is behind, and it is fetched again).
    pub(super) async fn peer_updated(&self, mesh_id: &str, peer: PeerInfo) {
        let Ok(supervisor) = self.supervisor(mesh_id) else { return };
        let Some(link) = supervisor.links().first() else { return };
        if peer.pubkey == link.session_pubkey() {
            return;
        }
        let row = supervisor.peer_row(link, peer);
        let peers = {
            let mut state = lock(&self.state);
            let Some(mesh) = state.meshes.get_mut(mesh_id) else { return };
            match mesh.peers.iter_mut().find(|p| p.pubkey == row.pubkey) {
                Some(listed) => {
                    *listed = row;
                    Some(mesh.peers.clone())
                }
                None => None,
            }
        };
        match peers {
            Some(peers) => {
                self.send(Output::Ui(UiEvent::Peers { mesh_id: mesh_id.to_owned(), peers }));
                self.emit_status();
            }
            None => self.refresh_peers(mesh_id).await,
        }
    }
}

fn peers_differ(before: &[PeerRow], after: &[PeerRow]) -> bool {
    let view = |rows: &[PeerRow]| rows.iter().map(|p| serde_json::to_string(p).unwrap_or_default()).collect::<Vec<_>>();
    view(before) != view(after)
}
