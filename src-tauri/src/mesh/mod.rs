//! The mesh supervisor: one [`MeshClient`] per joined mesh, and what every front end (the MCP
//! bridge, the CLI, the desktop app) needs on top of it.
//!
//! - Receiving ([`receive`]): each inbound message is committed to the [`Inbox`] first,
//!   acknowledged to the broker second, and handed to the front end third (`incoming`).
//! - Sending: recipients are resolved by [`resolve`] against a short-lived cache of each mesh's
//!   peer list (refreshed once when a name is not found), then sealed and sent by the client.
//!   [`Supervisor::send`] (a name typed by a person or model) and [`Supervisor::send_resolved`]
//!   (a conversation's known target) end in the same place and give the same [`SendOutcome`].
//! - Errors: every operation fails with a [`MeshError`]; each front end maps it once.
//! - Session locks ([`link`]): each session holds an exclusive lock on `run/session-<key>.lock`
//!   for its lifetime, so another process sharing the inbox can tell whether a
//!   session-addressed message still belongs to a live session.

mod error;
mod link;
pub mod members;
mod receive;
pub mod resolve;
pub mod scheduled;
mod workspace;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use broker_core::client::{ClientConfig, MeshClient, SessionProfile};
use broker_core::crypto::Keypair;
use broker_core::protocol::{GroupMembership, PeerInfo, PeerType, Priority, Stats, Status, StatusSource, SystemEvent};
use serde::Serialize;
use tokio::sync::{mpsc, watch};

use crate::config::{ConfigDir, MeshEntry};
use crate::inbox::{Inbox, StoredMessage};
use crate::keystore::{KeyStore, KeyStoreError};
pub use error::{BrokerFault, MeshError, WorkspaceFault};
pub use link::MeshLink;
use link::{PeerCache, Presence};
use resolve::{MeshView, Resolution, ResolveError};
pub use scheduled::{Reminder, when_of};
pub use workspace::{MAX_RECALL, MemoryRow, StateRow};

/// How long a mesh's peer list is trusted for name resolution before it is fetched again.
pub const PEER_CACHE_TTL: Duration = Duration::from_secs(5);

/// What this process tells peers about its sessions.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// Overrides the display name chosen at join, for every mesh.
    pub display_name: Option<String>,
    pub peer_type: PeerType,
    pub channel: String,
    pub model: Option<String>,
    pub session_id: Option<String>,
}

/// Where a mesh connection stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkState {
    Connecting,
    Connected,
    /// Disconnected after having been connected; reconnecting.
    Reconnecting(String),
    /// Refused for good (revoked, bad key…); the client stopped.
    Failed(String),
}

/// What happened on a mesh connection, for a front end that shows it live (the desktop app).
#[derive(Debug, Clone)]
#[cfg_attr(not(feature = "gui"), allow(dead_code))]
pub enum LinkEvent {
    State {
        mesh_id: String,
        state: LinkState,
    },
    /// A broker event about a peer's presence.
    Presence {
        mesh_id: String,
        event: SystemEvent,
    },
    /// A recipient member stored a message this session sent.
    Delivered {
        message_id: String,
    },
}

/// One peer as `list_peers` and `claudemesh peers --json` show it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerRow {
    pub mesh: String,
    pub name: String,
    pub status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    pub groups: Vec<GroupMembership>,
    pub cwd: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// `local` when the peer runs on this machine, else `remote`.
    pub location: &'static str,
    /// Session key: the most precise address for this peer.
    pub pubkey: String,
    pub member_pubkey: String,
    /// Another session of this device's own member (same person, same keys).
    pub same_member: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_type: Option<PeerType>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub connected_at: String,
    /// What the session reported of itself (messages, tool calls, uptime, errors).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stats: Option<Stats>,
}

/// `message_status`: each recipient member's copy of a sent message.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageStatus {
    pub message_id: String,
    pub mesh: String,
    pub recipients: Vec<broker_core::protocol::RecipientStatus>,
}

/// `mesh_stats` for one mesh: each peer's self-reported counters and their sum.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshStats {
    pub mesh: String,
    pub peers: Vec<PeerStats>,
    /// The counters summed over `peers` (uptime too: session-seconds).
    pub total: Stats,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerStats {
    pub name: String,
    pub pubkey: String,
    pub status: Status,
    pub location: &'static str,
    /// Absent until the session first reported (within seconds of connecting).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stats: Option<Stats>,
}

/// The result of sending to one recipient.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SendOutcome {
    /// What was asked for.
    pub to: String,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mesh: Option<String>,
    /// Who it resolved to (a name, `@group` or `*`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recipient: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_spec: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// Members it was queued for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recipients: Option<u32>,
    /// What the sender should know ("bob is offline; …").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Why it was not sent; serialized as its text.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "as_text")]
    pub error: Option<MeshError>,
}

impl SendOutcome {
    fn failed(to: &str, error: MeshError) -> SendOutcome {
        SendOutcome {
            to: to.to_owned(),
            ok: false,
            mesh: None,
            recipient: None,
            target_spec: None,
            message_id: None,
            recipients: None,
            note: None,
            error: Some(error),
        }
    }
}

fn as_text<S: serde::Serializer>(error: &Option<MeshError>, serializer: S) -> Result<S::Ok, S::Error> {
    match error {
        Some(error) => serializer.collect_str(error),
        None => serializer.serialize_none(),
    }
}

/// `whoami` for one mesh.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Identity {
    pub mesh: String,
    pub mesh_id: String,
    pub mesh_name: String,
    pub broker_url: String,
    pub display_name: String,
    pub member_pubkey: String,
    pub session_pubkey: String,
    pub connection: String,
    pub status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    pub groups: Vec<GroupMembership>,
}

pub struct Supervisor {
    links: Vec<Arc<MeshLink>>,
    /// Meshes in the config that could not be started, with the reason.
    failed: Vec<(MeshEntry, MeshError)>,
    inbox: Arc<Inbox>,
    run_dir: PathBuf,
    hostname: String,
    log_pins: members::LogPins,
    /// This device's index of its meshes' memories, opened on first use.
    memory_index_path: PathBuf,
    memory_index: std::sync::OnceLock<Arc<broker_core::client::memory_index::MemoryIndex>>,
}

impl Supervisor {
    /// Loads each mesh's key and starts its client. Received messages are stored, acknowledged
    /// and then sent to `incoming`. Must run inside a tokio runtime.
    pub async fn start(
        config_dir: &ConfigDir,
        meshes: Vec<MeshEntry>,
        keystore: Arc<dyn KeyStore>,
        inbox: Arc<Inbox>,
        options: SessionOptions,
        incoming: mpsc::Sender<StoredMessage>,
    ) -> Supervisor {
        Supervisor::start_observed(config_dir, meshes, keystore, inbox, options, incoming, None).await
    }

    /// [`Supervisor::start`], and connection states, broker events and delivery receipts go to
    /// `observer` as they happen.
    pub async fn start_observed(
        config_dir: &ConfigDir,
        meshes: Vec<MeshEntry>,
        keystore: Arc<dyn KeyStore>,
        inbox: Arc<Inbox>,
        options: SessionOptions,
        incoming: mpsc::Sender<StoredMessage>,
        observer: Option<mpsc::UnboundedSender<LinkEvent>>,
    ) -> Supervisor {
        let run_dir = config_dir.run_dir();
        let log_pins = members::LogPins::new(config_dir.root());
        let hostname = gethostname::gethostname().to_string_lossy().into_owned();
        let cwd = std::env::current_dir().map(|d| d.display().to_string()).unwrap_or_default();
        let mut links = Vec::new();
        let mut failed = Vec::new();
        for entry in meshes {
            let key = {
                let (store, account) = (keystore.clone(), entry.key_account());
                tokio::task::spawn_blocking(move || store.get(&account)).await
            };
            let key = match key {
                Ok(Ok(Some(seed))) => match Keypair::from_secret_hex(&seed) {
                    Ok(key) if key.public_hex() == entry.member_pubkey => key,
                    _ => {
                        failed.push((entry, MeshError::MemberKeyMismatch));
                        continue;
                    }
                },
                Ok(Ok(None)) => {
                    let missing =
                        MeshError::MemberKeyMissing { mesh: entry.slug.clone(), keystore: keystore.kind().as_str() };
                    failed.push((entry, missing));
                    continue;
                }
                Ok(Err(error)) => {
                    failed.push((entry, error.into()));
                    continue;
                }
                Err(error) => {
                    let error = KeyStoreError::Keychain(format!("keystore task failed: {error}"));
                    failed.push((entry, error.into()));
                    continue;
                }
            };
            let display_name = options.display_name.clone().unwrap_or_else(|| entry.display_name.clone());
            let mut config = ClientConfig::new(&entry.broker_url, &entry.mesh_id, &entry.member_id, key);
            config.profile = SessionProfile {
                display_name: Some(display_name.clone()),
                session_id: options.session_id.clone(),
                pid: Some(std::process::id()),
                cwd: Some(cwd.clone()),
                hostname: Some(hostname.clone()),
                peer_type: Some(options.peer_type),
                channel: Some(options.channel.clone()),
                model: options.model.clone(),
                groups: vec![],
            };
            // Only an observer (the desktop app) shows delivery states and peers live; every
            // front end's messages keep their status for `message_status`.
            config.delivery_receipts = observer.is_some();
            config.peer_updates = observer.is_some();
            // Every front end can follow shared state (`watch_state`); what reaches a person
            // or a model is filtered here by name.
            config.state_updates = true;
            config.track_messages = true;
            let session_lock = link::lock_session(&run_dir, &config.session_key.public_hex());
            let (client, events) = MeshClient::start(config);
            let (state, _) = watch::channel(LinkState::Connecting);
            let link = Arc::new(MeshLink {
                entry,
                client,
                state,
                presence: Mutex::new(Presence { display_name, ..Presence::default() }),
                peers: Mutex::new(PeerCache::default()),
                channel: options.channel.clone(),
                key_refresh: tokio::sync::Mutex::new(()),
                key_refresh_wanted: std::sync::atomic::AtomicBool::new(false),
                state_watch: Mutex::new(workspace::StateWatch::default()),
                _session_lock: session_lock,
            });
            tokio::spawn(receive::receive(
                link.clone(),
                events,
                inbox.clone(),
                incoming.clone(),
                observer.clone(),
                log_pins.clone(),
            ));
            links.push(link);
        }
        let memory_index_path = config_dir.root().join("memories.db");
        Supervisor {
            links,
            failed,
            inbox,
            run_dir,
            hostname,
            log_pins,
            memory_index_path,
            memory_index: std::sync::OnceLock::new(),
        }
    }

    pub fn links(&self) -> &[Arc<MeshLink>] {
        &self.links
    }

    pub fn failed(&self) -> &[(MeshEntry, MeshError)] {
        &self.failed
    }

    pub fn inbox(&self) -> &Arc<Inbox> {
        &self.inbox
    }

    /// Links whose slug, id or name matches `mesh` (all links when `None`).
    pub fn select(&self, mesh: Option<&str>) -> Result<Vec<Arc<MeshLink>>, MeshError> {
        let Some(mesh) = mesh.map(str::trim).filter(|m| !m.is_empty()) else { return Ok(self.links.clone()) };
        let found: Vec<_> = self
            .links
            .iter()
            .filter(|l| {
                l.entry.slug.eq_ignore_ascii_case(mesh)
                    || l.entry.mesh_id == mesh
                    || l.entry.name.eq_ignore_ascii_case(mesh)
            })
            .cloned()
            .collect();
        if found.is_empty() {
            let joined = self.links.iter().map(|l| l.entry.slug.clone()).collect();
            return Err(MeshError::UnknownMesh { name: mesh.to_owned(), joined });
        }
        Ok(found)
    }

    /// The one link a request about `what` is for: `mesh`, or the only mesh joined.
    pub fn single(&self, mesh: Option<&str>, what: &str) -> Result<Arc<MeshLink>, MeshError> {
        let mut links = self.select(mesh)?;
        if links.len() == 1 {
            return Ok(links.remove(0));
        }
        let choices = links.iter().map(|l| l.entry.slug.clone()).collect();
        Err(ResolveError::AmbiguousMesh { target: what.to_owned(), choices }.into())
    }

    /// Waits until every link has made its first connection attempt (connected, failed, or
    /// reconnecting after a failure), at most `timeout`: an unreachable broker is reported at
    /// once rather than after the timeout.
    pub async fn wait_connected(&self, timeout: Duration) {
        let waits = self.links.iter().map(|link| {
            let mut state = link.state.subscribe();
            async move {
                let _ = state
                    .wait_for(|s| match s {
                        LinkState::Connected | LinkState::Failed(_) | LinkState::Reconnecting(_) => true,
                        LinkState::Connecting => false,
                    })
                    .await;
            }
        });
        let _ = tokio::time::timeout(timeout, futures_util::future::join_all(waits)).await;
    }

    /// Peers of the selected meshes (this session excluded).
    pub async fn list_peers(&self, mesh: Option<&str>) -> Result<Vec<PeerRow>, MeshError> {
        let mut rows = Vec::new();
        let mut errors = Vec::new();
        for link in self.select(mesh)? {
            if let Err(error) = link.require_connected() {
                errors.push(error);
                continue;
            }
            match link.peers(Duration::ZERO).await {
                Ok(peers) => {
                    let own = link.session_pubkey();
                    for peer in peers.into_iter().filter(|p| p.pubkey != own) {
                        rows.push(self.peer_row(&link, peer));
                    }
                }
                Err(error) => errors.push(link.broker_error(error)),
            }
        }
        if rows.is_empty() && !errors.is_empty() {
            return Err(MeshError::each(errors));
        }
        Ok(rows)
    }

    /// Releases messages the broker held between this member and `peer` (a name, a member or
    /// session key, with `mesh:` when several meshes are joined). Returns the resolved peer and
    /// whether anything was held. For a person's command only: never offered to a model.
    pub async fn release_pair(&self, peer: &str) -> Result<(Resolution, bool), MeshError> {
        let views = self.views(Duration::ZERO).await;
        let resolution = resolve::resolve(peer, &views)?;
        let released = self.release_resolved(&resolution).await?;
        Ok((resolution, released))
    }

    /// [`Supervisor::release_pair`] for a peer resolved before (a conversation of the desktop
    /// app knows its mesh and member key).
    pub async fn release_resolved(&self, resolution: &Resolution) -> Result<bool, MeshError> {
        let not_a_peer = || MeshError::Resolve(ResolveError::NotAPeer { target: resolution.label.clone() });
        if !broker_core::protocol::is_key_hex(&resolution.target_spec) {
            return Err(not_a_peer());
        }
        let link = self.links.iter().find(|l| l.entry.mesh_id == resolution.mesh_id).ok_or_else(not_a_peer)?;
        link.require_connected()?;
        link.client.release_pair(&resolution.target_spec).await.map_err(|e| link.broker_error(e))
    }

    /// Sessions the brokers left out of the last peer lists of the selected meshes (a list is
    /// capped to one frame, and one member's sessions cannot crowd out the others').
    pub fn peers_left_out(&self, mesh: Option<&str>) -> usize {
        self.select(mesh).map_or(0, |links| links.iter().map(|l| l.peers_left_out()).sum())
    }

    /// A peer as front ends show it.
    pub fn peer_row(&self, link: &MeshLink, peer: PeerInfo) -> PeerRow {
        let local = peer.hostname.as_deref() == Some(self.hostname.as_str());
        PeerRow {
            mesh: link.entry.slug.clone(),
            same_member: peer.member_pubkey == link.entry.member_pubkey,
            name: peer.display_name,
            status: peer.status,
            summary: peer.summary.filter(|s| !s.is_empty()),
            groups: peer.groups,
            cwd: peer.cwd,
            host: peer.hostname,
            location: if local { "local" } else { "remote" },
            pubkey: peer.pubkey,
            member_pubkey: peer.member_pubkey,
            peer_type: peer.peer_type,
            channel: peer.channel,
            model: peer.model,
            connected_at: peer.connected_at,
            stats: peer.stats,
        }
    }

    /// The peers' self-reported counters, per peer and summed, for each selected mesh.
    pub async fn stats(&self, mesh: Option<&str>) -> Result<Vec<MeshStats>, MeshError> {
        let rows = self.list_peers(mesh).await?;
        let mut meshes: Vec<MeshStats> = Vec::new();
        for link in self.select(mesh)? {
            let peers: Vec<PeerStats> = rows
                .iter()
                .filter(|row| row.mesh == link.entry.slug)
                .map(|row| PeerStats {
                    name: row.name.clone(),
                    pubkey: row.pubkey.clone(),
                    status: row.status,
                    location: row.location,
                    stats: row.stats,
                })
                .collect();
            let total = peers.iter().filter_map(|p| p.stats).fold(Stats::default(), Stats::plus);
            meshes.push(MeshStats { mesh: link.entry.slug.clone(), peers, total });
        }
        Ok(meshes)
    }

    /// Counts one tool call of this session (the MCP bridge's), reported in its stats.
    pub fn count_tool_call(&self) {
        for link in &self.links {
            link.client.stats().tool_calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    async fn views(&self, max_age: Duration) -> Vec<MeshView> {
        let mut views = Vec::new();
        for link in &self.links {
            let peers = if link.state() == LinkState::Connected {
                link.peers(max_age).await.unwrap_or_default()
            } else {
                Vec::new()
            };
            views.push(link.view(peers));
        }
        views
    }

    /// Fills each connected mesh's view with its members that have no session online.
    async fn add_offline_members(&self, views: &mut [MeshView]) {
        for (view, link) in views.iter_mut().zip(&self.links) {
            if link.state() != LinkState::Connected {
                continue;
            }
            let Ok(members) = link.client.list_members().await else { continue };
            let online: HashSet<&str> = view.peers.iter().map(|p| p.member_pubkey.as_str()).collect();
            let offline = members
                .into_iter()
                .filter(|m| !m.online && !online.contains(m.pubkey.as_str()))
                .map(|m| resolve::PeerView {
                    display_name: m.display_name,
                    pubkey: m.pubkey.clone(),
                    member_pubkey: m.pubkey,
                })
                .collect();
            view.offline = offline;
        }
    }

    /// Resolves and sends `text` to each of `targets`; one outcome per distinct recipient.
    pub async fn send(&self, targets: &[String], text: &str, priority: Priority) -> Vec<SendOutcome> {
        let mut outcomes = Vec::new();
        for (to, resolution) in self.resolve_targets(targets).await {
            outcomes.push(match resolution {
                Ok(resolution) => self.send_to(&to, resolution, text, priority).await,
                Err(error) => SendOutcome::failed(&to, error.into()),
            });
        }
        outcomes
    }

    /// Each of `targets` resolved against the peer lists (fetched again when a name is not
    /// found in the cached ones), then, for a name still not found, the offline members.
    async fn resolve_targets(&self, targets: &[String]) -> Vec<(String, Result<Resolution, ResolveError>)> {
        let mut views = self.views(PEER_CACHE_TTL).await;
        let mut resolved = resolve::resolve_all(targets, &views);
        // A name that was not found (or is ambiguous) may just be news the cache has not seen.
        if resolved
            .iter()
            .any(|(_, r)| matches!(r, Err(ResolveError::NotFound { .. } | ResolveError::Ambiguous { .. })))
        {
            views = self.views(Duration::ZERO).await;
            resolved = resolve::resolve_all(targets, &views);
        }
        // A name no session goes by may be a member that is offline: the broker queues for it.
        if resolved.iter().any(|(_, r)| matches!(r, Err(ResolveError::NotFound { .. }))) {
            self.add_offline_members(&mut views).await;
            resolved = resolve::resolve_all(targets, &views);
        }
        resolved
    }

    /// Sends `text` to a recipient resolved before (a conversation of the desktop app knows its
    /// mesh and target spec): the same sealing, outcome and advice as [`Supervisor::send`].
    #[cfg_attr(not(feature = "gui"), allow(dead_code))]
    pub async fn send_resolved(&self, resolution: Resolution, text: &str, priority: Priority) -> SendOutcome {
        let to = resolution.label.clone();
        self.send_to(&to, resolution, text, priority).await
    }

    async fn send_to(&self, to: &str, resolution: Resolution, text: &str, priority: Priority) -> SendOutcome {
        let sent = match self.link_of(&resolution) {
            Ok(link) => {
                link.client.send(&resolution.target_spec, text.as_bytes(), priority).await.map_err(MeshError::NotSent)
            }
            Err(error) => Err(error),
        };
        let (message_id, recipients, error) = match sent {
            Ok(receipt) => (Some(receipt.message_id), Some(receipt.recipients), None),
            Err(error) => (None, None, Some(error)),
        };
        let note = (resolution.offline && error.is_none())
            .then(|| format!("{0} is offline; it will be delivered when {0} connects", resolution.label));
        SendOutcome {
            to: to.to_owned(),
            ok: error.is_none(),
            note,
            mesh: Some(resolution.slug),
            recipient: Some(resolution.label),
            target_spec: Some(resolution.target_spec),
            message_id,
            recipients,
            error,
        }
    }

    /// The link of the mesh a resolution is in.
    fn link_of(&self, resolution: &Resolution) -> Result<&Arc<MeshLink>, MeshError> {
        self.links.iter().find(|l| l.entry.mesh_id == resolution.mesh_id).ok_or_else(|| MeshError::UnknownMesh {
            name: resolution.slug.clone(),
            joined: self.links.iter().map(|l| l.entry.slug.clone()).collect(),
        })
    }

    /// Sets the status on the selected meshes.
    pub async fn set_status(
        &self,
        mesh: Option<&str>,
        status: Status,
        source: StatusSource,
    ) -> Result<usize, MeshError> {
        let links = self.select(mesh)?;
        for link in &links {
            link.presence.lock().expect("presence lock").status = status;
            link.client.set_status(status, source).await.map_err(|e| link.broker_error(e))?;
        }
        Ok(links.len())
    }

    pub async fn set_summary(&self, mesh: Option<&str>, summary: &str) -> Result<usize, MeshError> {
        let links = self.select(mesh)?;
        for link in &links {
            link.presence.lock().expect("presence lock").summary = Some(summary.to_owned()).filter(|s| !s.is_empty());
            link.client.set_summary(summary).await.map_err(|e| link.broker_error(e))?;
        }
        Ok(links.len())
    }

    pub async fn join_group(&self, mesh: Option<&str>, name: &str, role: Option<&str>) -> Result<usize, MeshError> {
        let links = self.select(mesh)?;
        for link in &links {
            {
                let mut presence = link.presence.lock().expect("presence lock");
                presence.groups.retain(|g| g.name != name);
                presence.groups.push(GroupMembership { name: name.to_owned(), role: role.map(str::to_owned) });
            }
            link.client.join_group(name, role).await.map_err(|e| link.broker_error(e))?;
            link.invalidate_peers();
        }
        Ok(links.len())
    }

    pub async fn leave_group(&self, mesh: Option<&str>, name: &str) -> Result<usize, MeshError> {
        let links = self.select(mesh)?;
        for link in &links {
            link.presence.lock().expect("presence lock").groups.retain(|g| g.name != name);
            link.client.leave_group(name).await.map_err(|e| link.broker_error(e))?;
            link.invalidate_peers();
        }
        Ok(links.len())
    }

    pub fn identities(&self) -> Vec<Identity> {
        self.links
            .iter()
            .map(|link| {
                let presence = link.presence.lock().expect("presence lock").clone();
                Identity {
                    mesh: link.entry.slug.clone(),
                    mesh_id: link.entry.mesh_id.clone(),
                    mesh_name: link.entry.name.clone(),
                    broker_url: link.entry.broker_url.clone(),
                    display_name: presence.display_name,
                    member_pubkey: link.entry.member_pubkey.clone(),
                    session_pubkey: link.session_pubkey(),
                    connection: error::describe(&link.state()),
                    status: presence.status,
                    summary: presence.summary,
                    groups: presence.groups,
                }
            })
            .collect()
    }

    /// Unread messages this session may read, marked read.
    pub async fn take_unread(&self) -> Result<Vec<StoredMessage>, MeshError> {
        let mine: HashSet<String> = self.links.iter().map(|l| l.session_pubkey()).collect();
        let (inbox, run_dir) = (self.inbox.clone(), self.run_dir.clone());
        let taken = tokio::task::spawn_blocking(move || {
            inbox.take_unread(|m| link::visible_to(m, &mine, &run_dir), broker_core::protocol::now_ms())
        })
        .await
        .unwrap_or_else(|e| Err(crate::inbox::InboxError::Open { path: "inbox".into(), message: e.to_string() }));
        let taken = taken?;
        self.tell_read(&taken).await;
        Ok(taken)
    }

    /// Tells the senders (through their `message_status`) that these messages were read. Best
    /// effort: a status that could not be sent only stays at "delivered".
    pub async fn tell_read(&self, messages: &[StoredMessage]) {
        for link in &self.links {
            let ids: Vec<String> = messages
                .iter()
                .filter(|m| m.mesh_id == link.entry.mesh_id && m.kind != crate::inbox::MessageKind::Notice)
                .map(|m| m.id.clone())
                .collect();
            if !ids.is_empty()
                && let Err(error) = link.client.mark_read(ids).await
            {
                tracing::debug!(mesh = %link.entry.slug, %error, "could not tell the senders what was read");
            }
        }
    }

    /// Where each recipient's copy of a message this member sent stands: the first joined mesh
    /// that knows the message answers (the broker shows a message's status to its sender only).
    pub async fn message_status(&self, message_id: &str) -> Result<MessageStatus, MeshError> {
        let mut errors = Vec::new();
        for link in &self.links {
            if let Err(error) = link.require_connected() {
                errors.push(error);
                continue;
            }
            match link.client.message_status(message_id).await {
                Ok(recipients) if recipients.is_empty() => {}
                Ok(recipients) => {
                    return Ok(MessageStatus {
                        message_id: message_id.to_owned(),
                        mesh: link.entry.slug.clone(),
                        recipients,
                    });
                }
                Err(error) => errors.push(link.broker_error(error)),
            }
        }
        if !errors.is_empty() && errors.len() == self.links.len() {
            return Err(MeshError::each(errors));
        }
        Err(MeshError::UnknownMessage(message_id.to_owned()))
    }

    /// Closes every session cleanly (the broker hands session-addressed mail to the member's
    /// other sessions at once).
    pub async fn shutdown(&self) {
        futures_util::future::join_all(self.links.iter().map(|l| l.client.shutdown())).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_carry_their_error_as_the_text_front_ends_print() {
        let unknown = ResolveError::NotFound { target: "bob".into(), known: vec!["alice".into()] };
        let outcome = SendOutcome::failed("bob", unknown.into());
        assert_eq!(
            serde_json::to_value(&outcome).expect("serializes"),
            serde_json::json!({"to": "bob", "ok": false, "error": "no peer matches \"bob\"; online peers: alice"})
        );
        assert!(matches!(outcome.error, Some(MeshError::Resolve(_))), "the type stays for the exit code");
    }
}
