//! The background loops, started by [`Desktop::start`] and aborted on shutdown: link events
//! (connection states, presence, delivery receipts), incoming messages, device logins waiting
//! for approval, the sign-in's expiry, this machine's Claude Code sessions, and join storms.
//! Peer lists follow the broker's presence events (`peer_updated` included): nothing polls them.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use broker_core::protocol::SystemEvent;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Channels, Desktop, Output, UiEvent, blocking, lock};
use crate::gui::conversations;
use crate::gui::error::CommandError;
use crate::gui::notify::MeshLabel;
use crate::gui::state::TokenHealth;
use crate::inbox::{PersonMessage, StoredMessage};
use crate::mesh::{LinkEvent, LinkState};

/// How often device logins waiting for this account are fetched.
const PENDING_POLL_INTERVAL: Duration = Duration::from_secs(4);
/// How often the sign-in's expiry is checked.
const TOKEN_CHECK_INTERVAL: Duration = Duration::from_secs(600);
/// How often this machine's session files are looked at (a Claude Code session of this device
/// starting or ending sends no broker event to the device's own sessions).
const LOCAL_SESSIONS_INTERVAL: Duration = Duration::from_secs(1);

impl Desktop {
    /// Starts every background loop; the handles abort them.
    pub(super) fn spawn_loops(self: &Arc<Self>, channels: Channels) -> Vec<tokio::task::AbortHandle> {
        let Channels { link_events, incoming } = channels;
        vec![
            tokio::spawn(self.clone().link_event_loop(link_events)).abort_handle(),
            tokio::spawn(self.clone().incoming_loop(incoming)).abort_handle(),
            tokio::spawn(self.clone().pending_loop()).abort_handle(),
            tokio::spawn(self.clone().token_loop()).abort_handle(),
            tokio::spawn(self.clone().local_sessions_loop()).abort_handle(),
            tokio::spawn(self.clone().storm_loop()).abort_handle(),
        ]
    }

    async fn link_event_loop(self: Arc<Self>, mut events: mpsc::UnboundedReceiver<LinkEvent>) {
        while let Some(event) = events.recv().await {
            match event {
                LinkEvent::State { mesh_id, state } => {
                    let connected = state == LinkState::Connected;
                    if let Some(mesh) = lock(&self.state).meshes.get_mut(&mesh_id) {
                        mesh.link = state;
                    }
                    self.emit_status();
                    if connected {
                        self.refresh_peers(&mesh_id).await;
                    }
                }
                LinkEvent::Presence { mesh_id, event: SystemEvent::PeerUpdated(peer) } => {
                    self.peer_updated(&mesh_id, peer).await;
                }
                LinkEvent::Presence { mesh_id, event: SystemEvent::StateChanged(_) } => {
                    self.send(Output::Ui(UiEvent::Board { mesh_id }));
                }
                LinkEvent::Presence { mesh_id, event } => {
                    self.presence(&mesh_id, &event);
                    self.refresh_peers(&mesh_id).await;
                }
                LinkEvent::Delivered { message_id, .. } => {
                    let _order = self.sent_order.lock().await;
                    let inbox = self.inbox.clone();
                    let updated = blocking(move || Ok(inbox.mark_delivered(&message_id)?)).await;
                    if let Ok(Some(sent)) = updated {
                        self.send(Output::Ui(UiEvent::Delivery {
                            id: sent.id.clone(),
                            conversation: sent.conversation.clone(),
                            delivery: conversations::delivery_of(&sent),
                        }));
                    }
                }
            }
        }
    }

    /// Notifications for presence events.
    fn presence(&self, mesh_id: &str, event: &SystemEvent) {
        let Some((mesh_name, own_key)) =
            lock(&self.state).meshes.get(mesh_id).map(|m| (m.entry.name.clone(), m.entry.member_pubkey.clone()))
        else {
            return;
        };
        if let SystemEvent::PairHeld(hold) = event {
            let conversation = conversations::peer_key(mesh_id, hold.other_than(&own_key));
            let settings = lock(&self.settings).notifications.clone();
            let mesh = MeshLabel { id: mesh_id, name: &mesh_name };
            if let Some(toast) = lock(&self.policy).pair_held(&settings, mesh, &hold.detail, &conversation) {
                self.send(Output::Toast(toast));
            }
            return;
        }
        let Some((name, _, member_pubkey)) = event.peer() else { return };
        let own_member = member_pubkey == own_key;
        let mesh = MeshLabel { id: mesh_id, name: &mesh_name };
        let settings = lock(&self.settings).notifications.clone();
        let toast = match event {
            SystemEvent::PeerJoined(_) | SystemEvent::PeerReturned(_) => {
                let toast = lock(&self.policy).peer_joined(&settings, mesh, name, own_member, Instant::now());
                self.storm_started.notify_one();
                toast
            }
            SystemEvent::PeerLeft(_) => lock(&self.policy).peer_left(&settings, mesh, name, own_member),
            SystemEvent::PairHeld(_)
            | SystemEvent::PairReleased(_)
            | SystemEvent::PeerUpdated(_)
            | SystemEvent::StateChanged(_) => None,
        };
        if let Some(toast) = toast {
            self.send(Output::Toast(toast));
        }
    }

    async fn incoming_loop(self: Arc<Self>, mut incoming: mpsc::Receiver<StoredMessage>) {
        while let Some(message) = incoming.recv().await {
            let person = PersonMessage { message, seen: false };
            let thread_message = conversations::received(&person);
            let mesh_name = lock(&self.state).meshes.get(&person.message.mesh_id).map(|m| m.entry.name.clone());
            // A notice's toast comes from its event (`presence`), whatever the message setting.
            let notice = person.message.kind == crate::inbox::MessageKind::Notice;
            if let Some(mesh_name) = mesh_name.filter(|_| !notice) {
                let settings = lock(&self.settings).notifications.clone();
                let mesh = MeshLabel { id: &person.message.mesh_id, name: &mesh_name };
                let text = person.message.text.as_deref().unwrap_or("(a message that could not be opened)");
                let conversation = &thread_message.conversation;
                let toast = if broker_core::schedule::occurrence_of(&person.message.id).is_some() {
                    let own = person.message.from_member_pubkey.as_ref().is_some_and(|member| {
                        lock(&self.state)
                            .meshes
                            .get(&person.message.mesh_id)
                            .is_some_and(|m| m.entry.member_pubkey == *member)
                    });
                    let from = (!own).then_some(person.message.from.as_str());
                    lock(&self.policy).reminder(&settings, mesh, from, text, conversation)
                } else {
                    lock(&self.policy).message(&settings, mesh, &person.message.from, text, conversation)
                };
                if let Some(toast) = toast {
                    self.send(Output::Toast(toast));
                }
            }
            self.send(Output::Ui(UiEvent::Message(thread_message)));
            self.recount_unread().await;
        }
    }

    async fn pending_loop(self: Arc<Self>) {
        loop {
            tokio::time::sleep(PENDING_POLL_INTERVAL).await;
            let signed_in = {
                let state = lock(&self.state);
                state.account.is_some() && state.token != TokenHealth::Expired
            };
            if !signed_in {
                continue;
            }
            let pending = match self.api().await {
                Ok(api) => api.pending_devices().await.map_err(CommandError::from),
                Err(error) => Err(error),
            };
            let pending = match self.checked(pending).await {
                Ok(pending) => pending.into_iter().filter(|p| p.status == "pending").collect::<Vec<_>>(),
                Err(_) => continue,
            };
            let settings = lock(&self.settings).notifications.clone();
            for toast in lock(&self.policy).pending_devices(&settings, &pending) {
                self.send(Output::Toast(toast));
            }
            let changed = {
                let mut state = lock(&self.state);
                let changed = state.pending != pending;
                state.pending = pending;
                changed
            };
            if changed {
                self.emit_status();
            }
        }
    }

    async fn token_loop(self: Arc<Self>) {
        loop {
            self.check_token().await;
            tokio::time::sleep(TOKEN_CHECK_INTERVAL).await;
        }
    }

    /// A Claude Code session of this device (same member) starting or ending is invisible to
    /// the broker's events here; its lock files in `run/` are not.
    async fn local_sessions_loop(self: Arc<Self>) {
        let run_dir = self.config_dir.run_dir();
        let mut last: HashSet<String> = HashSet::new();
        loop {
            tokio::time::sleep(LOCAL_SESSIONS_INTERVAL).await;
            let now: HashSet<String> = std::fs::read_dir(&run_dir)
                .map(|entries| {
                    entries.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect()
                })
                .unwrap_or_default();
            if now != last {
                last = now;
                let meshes: Vec<String> = lock(&self.state).meshes.keys().cloned().collect();
                for mesh_id in meshes {
                    self.refresh_peers(&mesh_id).await;
                }
            }
        }
    }

    async fn storm_loop(self: Arc<Self>) {
        loop {
            let next = lock(&self.policy).next_flush();
            match next {
                Some(at) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {}
                        _ = self.storm_started.notified() => continue,
                    }
                }
                None => {
                    self.storm_started.notified().await;
                    continue;
                }
            }
            let settings = lock(&self.settings).notifications.clone();
            let toasts = lock(&self.policy).flush(&settings, Instant::now());
            for toast in toasts {
                self.send(Output::Toast(toast));
            }
        }
    }
}
