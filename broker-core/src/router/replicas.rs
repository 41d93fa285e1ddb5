//! Several broker processes (replicas) on one database: what the others did reaches this one as
//! store notices (`StoreNotice`), and each is applied here — entries another replica queued for a
//! member connected here are offered to its queue like this replica's own commits (or, too large
//! to travel in a notice, read from the store) and pushed, directory changes take effect at
//! once (revocations cut sessions on every replica), and after a gap in the notices everything
//! held is read again.
//!
//! Presence is mesh-wide without a table: each replica announces its sessions ([`Presence`]:
//! connected with the event its mesh was told, profile changed, gone) through
//! `Store::announce`, in order, from one thread. The others keep them as `RemoteSession`s
//! (listed by `list_peers`, resolved as targets, counted as a member's sessions) and tell their
//! own sessions the same `peer_joined`/`peer_returned`/`peer_left`; a delivery receipt for a
//! sender connected elsewhere travels the same way to its replica. Presence is soft state: a
//! replica that starts, or missed notices, says `Hello` and every other replica announces its
//! sessions again; a replica not heard from for [`REPLICA_SILENCE`] (it announces at least
//! every [`HEARTBEAT`]) is taken for dead, and its sessions leave.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::state::{MeshState, RemoteSession, peer_info};
use super::{Entry, Lane, Router, frame_text};
use crate::protocol::{Capability, PeerInfo, PeerLeft, Receipt, ServerFrame, StateChanged, SystemEvent};
use crate::store::{MAX_ANNOUNCEMENT, Store, StoreNotice};

/// A replica announces something at least this often.
pub(super) const HEARTBEAT: Duration = Duration::from_secs(1);
/// A replica silent for this long is taken for dead: its sessions leave.
pub(super) const REPLICA_SILENCE: Duration = Duration::from_secs(5);

/// What a replica tells the others about its sessions.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(super) enum Presence {
    /// A session here connected (`event`: what its mesh was told), or its profile changed.
    Up {
        replica: String,
        mesh_id: String,
        member_id: String,
        connected_at_ms: u64,
        peer: PeerInfo,
        /// It asked for delivery receipts (older replicas do not say: none).
        #[serde(default)]
        wants_receipts: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        event: Option<SystemEvent>,
    },
    /// A session here ended.
    Down {
        replica: String,
        mesh_id: String,
        routing_key: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        event: Option<SystemEvent>,
    },
    /// A receipt for a session of the announcing replica's mesh, connected to another replica.
    Receipt { replica: String, mesh_id: String, to: String, receipt: Receipt },
    /// A shared-state entry of the mesh changed here: the others read it from the store (it may
    /// be too large to announce) and tell their sessions that follow shared state.
    State { replica: String, mesh_id: String, change: StateChanged, removed: bool },
    /// Nothing else to say for a while.
    Alive { replica: String },
    /// This replica (re)started listening: everyone, announce your sessions again.
    Hello { replica: String },
}

impl Presence {
    fn replica(&self) -> &str {
        match self {
            Presence::Up { replica, .. }
            | Presence::Down { replica, .. }
            | Presence::Receipt { replica, .. }
            | Presence::State { replica, .. }
            | Presence::Alive { replica }
            | Presence::Hello { replica } => replica,
        }
    }

    /// The announcement's text; a profile too large for one notification is shortened (its
    /// stats, then its summary and working directory, then its groups).
    fn encode(mut self) -> String {
        loop {
            let text = serde_json::to_string(&self).expect("presence serializes");
            let Presence::Up { peer, .. } = &mut self else { return text };
            if text.len() <= MAX_ANNOUNCEMENT {
                return text;
            }
            if peer.stats.take().is_some() {
                continue;
            }
            let shortened = [&mut peer.cwd].into_iter().chain(peer.summary.as_mut()).any(|field| {
                let cut = field.floor_char_boundary(field.len().min(256));
                let longer = field.len() > cut;
                field.truncate(cut);
                longer
            });
            if !shortened {
                peer.groups.truncate(peer.groups.len() / 2);
            }
        }
    }
}

/// The thread that announces this replica's presence in order, and its heartbeat.
pub(super) fn start_announcer(store: Arc<dyn Store>, replica: String) -> std::sync::mpsc::Sender<Presence> {
    let (sender, announcements) = std::sync::mpsc::channel::<Presence>();
    let started = std::thread::Builder::new().name("presence".into()).spawn(move || {
        loop {
            let presence = match announcements.recv_timeout(HEARTBEAT) {
                Ok(presence) => presence,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Presence::Alive { replica: replica.clone() },
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
            };
            if let Err(error) = store.announce(&presence.encode()) {
                tracing::warn!(%error, "announcing presence to the other replicas failed");
            }
        }
    });
    if let Err(error) = started {
        tracing::error!(%error, "cannot start the presence thread");
    }
    sender
}

/// Applies notices until the router is gone or the store stops giving them.
pub(super) async fn follow(router: Weak<Router>, mut notices: mpsc::UnboundedReceiver<StoreNotice>) {
    while let Some(notice) = notices.recv().await {
        let Some(router) = router.upgrade() else { return };
        router.apply_notice(notice).await;
    }
}

impl Router {
    async fn apply_notice(self: &Arc<Self>, notice: StoreNotice) {
        match notice {
            StoreNotice::Entry { slot, entry } => {
                let Some(shard) = self.loaded_shard(&entry.envelope.mesh_id) else { return };
                let mut guard = shard.state.lock().expect("mesh lock");
                let state = &mut *guard;
                let member_id = entry.delivery.member_id.clone();
                let keep = self.holds(&state.by_routing_key, &state.departed, entry.delivery.session_pubkey.as_deref());
                let Some(queue) = state.members.get_mut(&member_id).and_then(|m| m.queue.as_mut()) else { return };
                let (_, entry) = Entry::from_queued(entry);
                queue.offer(slot, entry, keep);
                // Pushes it, or (the lane spilled, or a gap before it) starts reading the store.
                self.pump_member(state, &member_id);
            }
            StoreNotice::Queued { mesh_id, member_id, urgent, seq } => {
                let Some(shard) = self.loaded_shard(&mesh_id) else { return };
                let mut state = shard.state.lock().expect("mesh lock");
                let lane = if urgent { Lane::Urgent } else { Lane::Normal };
                let woken = state
                    .members
                    .get_mut(&member_id)
                    .and_then(|m| m.queue.as_mut())
                    .is_some_and(|queue| queue.wake(lane, seq));
                if woken {
                    self.pump_member(&mut state, &member_id);
                }
            }
            StoreNotice::Released { mesh_id, member_id } => {
                if let Some(shard) = self.loaded_shard(&mesh_id) {
                    self.reload_queue(&mut shard.state.lock().expect("mesh lock"), &member_id);
                }
            }
            StoreNotice::Directory => self.directory_changed().await,
            StoreNotice::Announcement(text) => match serde_json::from_str::<Presence>(&text) {
                Ok(presence) => self.apply_presence(presence).await,
                // A kind a newer replica announces: not for this version.
                Err(error) => tracing::debug!(%error, "ignoring an announcement this version does not know"),
            },
            StoreNotice::Resync => {
                tracing::info!("reading every connected member's queue again after a gap in other replicas' notices");
                for shard in self.shards() {
                    let mut state = shard.state.lock().expect("mesh lock");
                    let members: Vec<String> =
                        state.members.iter().filter(|(_, m)| m.queue.is_some()).map(|(id, _)| id.clone()).collect();
                    for member_id in members {
                        self.reload_queue(&mut state, &member_id);
                    }
                }
                self.directory_changed().await;
                // Also sent when this replica starts listening: everyone's sessions, please.
                self.announce(Presence::Hello { replica: self.replica.clone() });
            }
        }
    }

    async fn apply_presence(&self, presence: Presence) {
        let replica = presence.replica().to_owned();
        self.replicas_heard.lock().expect("replicas lock").insert(replica.clone(), Instant::now());
        match presence {
            Presence::Up { replica, mesh_id, member_id, connected_at_ms, peer, wants_receipts, event } => {
                let shard = match self.shard(&mesh_id).await {
                    Ok(Some(shard)) => shard,
                    Ok(None) => return,
                    Err(error) => {
                        return tracing::warn!(%error, "loading a mesh for a session on another replica failed");
                    }
                };
                let mut state = shard.state.lock().expect("mesh lock");
                let key = peer.pubkey.clone();
                let session = RemoteSession {
                    replica,
                    member_id: member_id.clone(),
                    connected_at_ms,
                    info: peer.clone(),
                    wants_receipts,
                };
                let before = state.remote.insert(key, session).map(|r| r.info);
                match event {
                    Some(event) => self.broadcast_event(&state, &member_id, &event),
                    None if before.is_some_and(|before| before != peer) => self.push_peer_updated(&state, peer, None),
                    None => {}
                }
            }
            Presence::Down { replica, mesh_id, routing_key, event } => {
                let Some(shard) = self.loaded_shard(&mesh_id) else { return };
                let mut state = shard.state.lock().expect("mesh lock");
                let gone = state.remote.remove(&routing_key).filter(|r| r.replica == replica);
                if let (Some(gone), Some(event)) = (gone, event)
                    && !state.by_routing_key.contains_key(&routing_key)
                {
                    self.broadcast_event(&state, &gone.member_id, &event);
                }
            }
            Presence::Receipt { mesh_id, to, receipt, .. } => {
                let Some(shard) = self.loaded_shard(&mesh_id) else { return };
                let state = shard.state.lock().expect("mesh lock");
                let sender = state.by_routing_key.get(&to).and_then(|id| state.sessions.get(id));
                if let Some(sender) = sender.filter(|s| s.caps.has(Capability::DeliveryReceipt)) {
                    self.send_to(sender, frame_text(&ServerFrame::Receipt(receipt)));
                }
            }
            Presence::State { mesh_id, change, removed, .. } => self.apply_state_change(mesh_id, change, removed).await,
            Presence::Alive { .. } => {}
            Presence::Hello { .. } => {
                for shard in self.shards() {
                    let state = shard.state.lock().expect("mesh lock");
                    for id in state.sessions.keys() {
                        self.announce_session(&state, *id, None);
                    }
                }
            }
        }
    }

    /// Tells the other replicas about a session here (connected, or its profile changed).
    pub(super) fn announce_session(&self, state: &MeshState, session_id: u64, event: Option<SystemEvent>) {
        let Some(session) = state.sessions.get(&session_id) else { return };
        self.announce(Presence::Up {
            replica: self.replica.clone(),
            mesh_id: state.mesh.id.clone(),
            member_id: session.member_id.clone(),
            connected_at_ms: session.connected_at_ms,
            peer: peer_info(session),
            wants_receipts: session.caps.has(Capability::DeliveryReceipt),
            event,
        });
    }

    /// Hands a receipt to the replica where its sender is connected.
    pub(super) fn forward_receipt(&self, mesh_id: &str, to: &str, receipt: Receipt) {
        self.announce(Presence::Receipt {
            replica: self.replica.clone(),
            mesh_id: mesh_id.to_owned(),
            to: to.to_owned(),
            receipt,
        });
    }

    /// Tells the other replicas that a shared-state entry changed (without the entry itself).
    pub(super) fn announce_state(&self, mesh_id: &str, change: &StateChanged) {
        self.announce(Presence::State {
            replica: self.replica.clone(),
            mesh_id: mesh_id.to_owned(),
            change: StateChanged { entry: None, ..change.clone() },
            removed: change.entry.is_none(),
        });
    }

    /// Another replica stored (or removed) a state entry: the sessions here that follow shared
    /// state hear it, with the entry as the store has it.
    async fn apply_state_change(&self, mesh_id: String, mut change: StateChanged, removed: bool) {
        let Some(shard) = self.loaded_shard(&mesh_id) else { return };
        if !removed {
            let (mesh, name) = (mesh_id.clone(), change.name.clone());
            match self.blocking(move |store| store.state_entries(&mesh, &[name], crate::protocol::now_ms())).await {
                // A newer version has its own announcement; a removed one is not pushed as written.
                Ok(found) => match found.into_iter().find(|r| r.entry.version == change.version) {
                    Some(record) => change.entry = Some(record.entry),
                    None => return,
                },
                Err(error) => return tracing::warn!(%error, "reading a state entry another replica wrote failed"),
            }
        }
        self.push_state_changed(&shard.state.lock().expect("mesh lock"), change, None);
    }

    /// Tells the other replicas that a session here ended.
    pub(super) fn announce_gone(&self, mesh_id: &str, routing_key: &str, event: SystemEvent) {
        self.announce(Presence::Down {
            replica: self.replica.clone(),
            mesh_id: mesh_id.to_owned(),
            routing_key: routing_key.to_owned(),
            event: Some(event),
        });
    }

    fn announce(&self, presence: Presence) {
        if let Some(announcer) = &self.announcer {
            // The thread is gone only when the router is.
            let _ = announcer.send(presence);
        }
    }

    /// Sessions of replicas silent for longer than [`REPLICA_SILENCE`] leave.
    pub fn sweep_silent_replicas(&self, now: Instant) {
        let silent: Vec<String> = {
            let mut heard = self.replicas_heard.lock().expect("replicas lock");
            let silent: Vec<String> = heard
                .iter()
                .filter(|(_, at)| now.saturating_duration_since(**at) >= REPLICA_SILENCE)
                .map(|(replica, _)| replica.clone())
                .collect();
            heard.retain(|replica, _| !silent.contains(replica));
            silent
        };
        if silent.is_empty() {
            return;
        }
        tracing::warn!(replicas = ?silent, "other replicas went silent; their sessions leave");
        for shard in self.shards() {
            let mut state = shard.state.lock().expect("mesh lock");
            let gone: HashMap<String, RemoteSession> =
                state.remote.extract_if(|_, r| silent.contains(&r.replica)).collect();
            for (key, session) in gone {
                // The session came here since: it did not leave.
                if state.by_routing_key.contains_key(&key) {
                    continue;
                }
                let event = SystemEvent::PeerLeft(PeerLeft {
                    name: session.info.display_name,
                    pubkey: key,
                    member_pubkey: session.info.member_pubkey,
                });
                self.broadcast_event(&state, &session.member_id, &event);
            }
        }
    }

    /// Another process changed the directory: apply it now rather than at the next poll.
    async fn directory_changed(&self) {
        if let Err(error) = self.refresh_directory().await {
            tracing::warn!(%error, "reloading the directory after another replica changed it failed");
        }
    }
}
