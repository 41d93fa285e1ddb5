//! The mesh supervisor: one [`MeshClient`] per joined mesh, and what every front end (the MCP
//! bridge, the CLI, later the desktop app) needs on top of it.
//!
//! - Receiving: each inbound message is committed to the [`Inbox`] first, acknowledged to the
//!   broker second, and handed to the front end third (`incoming`). A message that could not be
//!   stored is not acknowledged, so the broker pushes it again after a reconnect.
//! - Sending: recipients are resolved by [`resolve`] against a short-lived cache of each mesh's
//!   peer list (refreshed once when a name is not found), then sealed and sent by the client.
//! - Session locks: each session holds an exclusive lock on `run/session-<key>.lock` for its
//!   lifetime, so another process sharing the inbox can tell whether a session-addressed
//!   message still belongs to a live session.

pub mod resolve;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use broker_core::client::{ClientConfig, ClientError, ClientEvent, InboundMessage, MeshClient, SessionProfile};
use broker_core::crypto::Keypair;
use broker_core::protocol::{GroupMembership, PeerInfo, PeerType, Priority, Status, StatusSource, SystemEvent};
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::config::{ConfigDir, MeshEntry};
use crate::inbox::{Inbox, MessageKind, StoredMessage};
use crate::keystore::KeyStore;
use resolve::{MeshView, PeerView, Resolution, ResolveError};

/// How long a mesh's peer list is trusted for name resolution before it is fetched again.
pub const PEER_CACHE_TTL: Duration = Duration::from_secs(5);
/// Unknown senders trigger at most one peer-list refresh per mesh this often.
const NAME_REFRESH_INTERVAL: Duration = Duration::from_secs(2);

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

/// What this session last asked the broker to show, for `whoami`.
#[derive(Debug, Clone, Default)]
struct Presence {
    display_name: String,
    status: Status,
    summary: Option<String>,
    groups: Vec<GroupMembership>,
}

#[derive(Debug, Default)]
struct PeerCache {
    fetched: Option<(Instant, Vec<PeerInfo>)>,
    last_name_refresh: Option<Instant>,
}

/// One joined mesh and its live session.
pub struct MeshLink {
    pub entry: MeshEntry,
    pub client: MeshClient,
    /// Written by the link's event task, read by anyone waiting for the connection.
    state: watch::Sender<LinkState>,
    presence: Mutex<Presence>,
    peers: Mutex<PeerCache>,
    /// The channel this session announced (`claude-code`, `cli`, `desktop`), recorded with each
    /// message it stores.
    channel: String,
    /// Held for the session's lifetime (see the module docs); released when the link drops.
    _session_lock: Option<std::fs::File>,
}

impl MeshLink {
    pub fn state(&self) -> LinkState {
        self.state.borrow().clone()
    }

    pub fn session_pubkey(&self) -> String {
        self.client.session_pubkey()
    }

    /// The mesh's peer list, from the cache when younger than `max_age`.
    pub async fn peers(&self, max_age: Duration) -> Result<Vec<PeerInfo>, ClientError> {
        if let Some((at, peers)) = &self.peers.lock().expect("peer cache lock").fetched
            && at.elapsed() <= max_age
        {
            return Ok(peers.clone());
        }
        let peers = self.client.list_peers().await?;
        self.peers.lock().expect("peer cache lock").fetched = Some((Instant::now(), peers.clone()));
        Ok(peers)
    }

    fn invalidate_peers(&self) {
        self.peers.lock().expect("peer cache lock").fetched = None;
    }

    fn cached_name(&self, pubkey: &str) -> Option<String> {
        let cache = self.peers.lock().expect("peer cache lock");
        let (_, peers) = cache.fetched.as_ref()?;
        peers
            .iter()
            .find(|p| p.pubkey == pubkey)
            .or_else(|| peers.iter().find(|p| p.member_pubkey == pubkey))
            .map(|p| p.display_name.clone())
    }

    /// The display name behind a sender key: from the cache, else after one (throttled)
    /// refresh of the peer list or a lookup of its member, else `peer-<first 8 hex>`.
    async fn name_of(&self, sender: &str, sender_member: Option<&str>) -> String {
        let lookup =
            |link: &MeshLink| link.cached_name(sender).or_else(|| sender_member.and_then(|m| link.cached_name(m)));
        if let Some(name) = lookup(self) {
            return name;
        }
        let refresh = {
            let mut cache = self.peers.lock().expect("peer cache lock");
            let due = cache.last_name_refresh.is_none_or(|at| at.elapsed() >= NAME_REFRESH_INTERVAL);
            if due {
                cache.last_name_refresh = Some(Instant::now());
            }
            due
        };
        if refresh {
            if self.peers(Duration::ZERO).await.is_ok()
                && let Some(name) = lookup(self)
            {
                return name;
            }
            // A sender that already went offline (a one-shot CLI send): the broker still knows
            // its member's name.
            if let Some(member) = sender_member
                && let Ok(recipients) = self.client.resolve(member).await
                && let [one] = recipients.as_slice()
            {
                return one.display_name.clone();
            }
        }
        format!("peer-{}", sender.get(..8).unwrap_or(sender))
    }

    fn view(&self, peers: Vec<PeerInfo>) -> MeshView {
        MeshView {
            mesh_id: self.entry.mesh_id.clone(),
            slug: self.entry.slug.clone(),
            own_session: self.session_pubkey(),
            peers: peers
                .into_iter()
                .map(|p| PeerView { display_name: p.display_name, pubkey: p.pubkey, member_pubkey: p.member_pubkey })
                .collect(),
        }
    }
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
}

/// The result of sending to one recipient.
#[derive(Debug, Clone, Serialize)]
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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
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
    failed: Vec<(MeshEntry, String)>,
    inbox: Arc<Inbox>,
    run_dir: PathBuf,
    hostname: String,
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
                        failed.push((entry, "the stored member key does not match this membership; run `claudemesh leave` and join again".into()));
                        continue;
                    }
                },
                Ok(Ok(None)) => {
                    failed.push((
                        entry.clone(),
                        format!(
                            "no member key for mesh {} in the {} keystore; run `claudemesh leave {}` and join again",
                            entry.slug,
                            keystore.kind().as_str(),
                            entry.slug
                        ),
                    ));
                    continue;
                }
                Ok(Err(error)) => {
                    failed.push((entry, format!("keystore: {error}")));
                    continue;
                }
                Err(error) => {
                    failed.push((entry, format!("keystore task: {error}")));
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
            // Only an observer (the desktop app) shows delivery states.
            config.delivery_receipts = observer.is_some();
            let session_lock = lock_session(&run_dir, &config.session_key.public_hex());
            let (client, events) = MeshClient::start(config);
            let (state, _) = watch::channel(LinkState::Connecting);
            let link = Arc::new(MeshLink {
                entry,
                client,
                state,
                presence: Mutex::new(Presence { display_name, ..Presence::default() }),
                peers: Mutex::new(PeerCache::default()),
                channel: options.channel.clone(),
                _session_lock: session_lock,
            });
            tokio::spawn(receive(link.clone(), events, inbox.clone(), incoming.clone(), observer.clone()));
            links.push(link);
        }
        Supervisor { links, failed, inbox, run_dir, hostname }
    }

    pub fn links(&self) -> &[Arc<MeshLink>] {
        &self.links
    }

    pub fn failed(&self) -> &[(MeshEntry, String)] {
        &self.failed
    }

    pub fn inbox(&self) -> &Arc<Inbox> {
        &self.inbox
    }

    /// Links whose slug, id or name matches `mesh` (all links when `None`).
    pub fn select(&self, mesh: Option<&str>) -> Result<Vec<Arc<MeshLink>>, String> {
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
            let known: Vec<_> = self.links.iter().map(|l| l.entry.slug.clone()).collect();
            return Err(format!("no joined mesh is called {mesh:?}; joined meshes: {}", known.join(", ")));
        }
        Ok(found)
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
    pub async fn list_peers(&self, mesh: Option<&str>) -> Result<Vec<PeerRow>, String> {
        let mut rows = Vec::new();
        let mut errors = Vec::new();
        for link in self.select(mesh)? {
            if link.state() != LinkState::Connected {
                errors.push(format!("{}: not connected ({})", link.entry.slug, describe(&link.state())));
                continue;
            }
            match link.peers(Duration::ZERO).await {
                Ok(peers) => {
                    let own = link.session_pubkey();
                    for peer in peers.into_iter().filter(|p| p.pubkey != own) {
                        rows.push(self.row(&link, peer));
                    }
                }
                Err(error) => errors.push(format!("{}: {error}", link.entry.slug)),
            }
        }
        if rows.is_empty() && !errors.is_empty() {
            return Err(errors.join("; "));
        }
        Ok(rows)
    }

    fn row(&self, link: &MeshLink, peer: PeerInfo) -> PeerRow {
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

    /// Resolves and sends `text` to each of `targets`; one outcome per distinct recipient.
    pub async fn send(&self, targets: &[String], text: &str, priority: Priority) -> Vec<SendOutcome> {
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
        let mut outcomes = Vec::new();
        for (to, resolution) in resolved {
            outcomes.push(match resolution {
                Ok(resolution) => self.send_one(&to, resolution, text, priority).await,
                Err(error) => SendOutcome {
                    to,
                    ok: false,
                    mesh: None,
                    recipient: None,
                    target_spec: None,
                    message_id: None,
                    recipients: None,
                    error: Some(error.to_string()),
                },
            });
        }
        outcomes
    }

    async fn send_one(&self, to: &str, resolution: Resolution, text: &str, priority: Priority) -> SendOutcome {
        let mut outcome = SendOutcome {
            to: to.to_owned(),
            ok: false,
            mesh: Some(resolution.slug.clone()),
            recipient: Some(resolution.label.clone()),
            target_spec: Some(resolution.target_spec.clone()),
            message_id: None,
            recipients: None,
            error: None,
        };
        let Some(link) = self.links.iter().find(|l| l.entry.mesh_id == resolution.mesh_id) else {
            outcome.error = Some("internal: resolved to a mesh without a connection".into());
            return outcome;
        };
        match link.client.send(&resolution.target_spec, text.as_bytes(), priority).await {
            Ok(receipt) => {
                outcome.ok = true;
                outcome.message_id = Some(receipt.message_id);
                outcome.recipients = Some(receipt.recipients);
            }
            Err(error) => outcome.error = Some(send_error_advice(&error)),
        }
        outcome
    }

    /// Sets the status on the selected meshes.
    pub async fn set_status(&self, mesh: Option<&str>, status: Status, source: StatusSource) -> Result<usize, String> {
        let links = self.select(mesh)?;
        for link in &links {
            link.presence.lock().expect("presence lock").status = status;
            link.client.set_status(status, source).await.map_err(|e| format!("{}: {e}", link.entry.slug))?;
        }
        Ok(links.len())
    }

    pub async fn set_summary(&self, mesh: Option<&str>, summary: &str) -> Result<usize, String> {
        let links = self.select(mesh)?;
        for link in &links {
            link.presence.lock().expect("presence lock").summary = Some(summary.to_owned()).filter(|s| !s.is_empty());
            link.client.set_summary(summary).await.map_err(|e| format!("{}: {e}", link.entry.slug))?;
        }
        Ok(links.len())
    }

    pub async fn join_group(&self, mesh: Option<&str>, name: &str, role: Option<&str>) -> Result<usize, String> {
        let links = self.select(mesh)?;
        for link in &links {
            {
                let mut presence = link.presence.lock().expect("presence lock");
                presence.groups.retain(|g| g.name != name);
                presence.groups.push(GroupMembership { name: name.to_owned(), role: role.map(str::to_owned) });
            }
            link.client.join_group(name, role).await.map_err(|e| format!("{}: {e}", link.entry.slug))?;
            link.invalidate_peers();
        }
        Ok(links.len())
    }

    pub async fn leave_group(&self, mesh: Option<&str>, name: &str) -> Result<usize, String> {
        let links = self.select(mesh)?;
        for link in &links {
            link.presence.lock().expect("presence lock").groups.retain(|g| g.name != name);
            link.client.leave_group(name).await.map_err(|e| format!("{}: {e}", link.entry.slug))?;
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
                    connection: describe(&link.state()),
                    status: presence.status,
                    summary: presence.summary,
                    groups: presence.groups,
                }
            })
            .collect()
    }

    /// Unread messages this session may read, marked read.
    pub async fn take_unread(&self) -> Result<Vec<StoredMessage>, crate::inbox::InboxError> {
        let mine: HashSet<String> = self.links.iter().map(|l| l.session_pubkey()).collect();
        let (inbox, run_dir) = (self.inbox.clone(), self.run_dir.clone());
        tokio::task::spawn_blocking(move || {
            inbox.take_unread(|m| visible_to(m, &mine, &run_dir), broker_core::protocol::now_ms())
        })
        .await
        .unwrap_or_else(|e| Err(crate::inbox::InboxError::Open { path: "inbox".into(), message: e.to_string() }))
    }

    /// Closes every session cleanly (the broker hands session-addressed mail to the member's
    /// other sessions at once).
    pub async fn shutdown(&self) {
        futures_util::future::join_all(self.links.iter().map(|l| l.client.shutdown())).await;
    }
}

/// A message addressed to another live session's key is that session's; everything else
/// (member-, group- and broadcast-addressed mail, or mail of a session that is gone) may be read
/// by any session of this device.
fn visible_to(message: &StoredMessage, mine: &HashSet<String>, run_dir: &Path) -> bool {
    if mine.contains(&message.receiving_session) {
        return true;
    }
    if message.target.as_deref() != Some(message.receiving_session.as_str()) {
        return true;
    }
    !session_alive(run_dir, &message.receiving_session)
}

fn session_lock_path(run_dir: &Path, session_pubkey: &str) -> PathBuf {
    run_dir.join(format!("session-{}.lock", session_pubkey.get(..16).unwrap_or(session_pubkey)))
}

/// Takes the session's liveness lock (best effort: without it, a shared inbox just treats the
/// session as gone).
fn lock_session(run_dir: &Path, session_pubkey: &str) -> Option<std::fs::File> {
    ConfigDir::ensure_private_dir(run_dir).ok()?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(session_lock_path(run_dir, session_pubkey))
        .ok()?;
    file.try_lock().ok()?;
    Some(file)
}

fn session_alive(run_dir: &Path, session_pubkey: &str) -> bool {
    let path = session_lock_path(run_dir, session_pubkey);
    let Ok(file) = std::fs::OpenOptions::new().write(true).open(&path) else { return false };
    match file.try_lock() {
        Ok(()) => {
            // Nobody holds it: the session ended. Tidy up.
            let _ = std::fs::remove_file(&path);
            false
        }
        Err(_) => true,
    }
}

fn describe(state: &LinkState) -> String {
    match state {
        LinkState::Connecting => "connecting".into(),
        LinkState::Connected => "connected".into(),
        LinkState::Reconnecting(reason) => format!("reconnecting ({reason})"),
        LinkState::Failed(reason) => format!("failed: {reason}"),
    }
}

/// What a failed send means and what to do about it.
fn send_error_advice(error: &ClientError) -> String {
    match error {
        ClientError::QueueFull(_) | ClientError::ConnectionLost | ClientError::Timeout(_) => {
            format!("{error} (the broker may be unreachable; retry shortly)")
        }
        other => other.to_string(),
    }
}

/// The link's event loop: connection state, and received messages into the inbox.
async fn receive(
    link: Arc<MeshLink>,
    mut events: mpsc::Receiver<ClientEvent>,
    inbox: Arc<Inbox>,
    incoming: mpsc::Sender<StoredMessage>,
    observer: Option<mpsc::UnboundedSender<LinkEvent>>,
) {
    let mesh_id = link.entry.mesh_id.clone();
    let observe = |event: LinkEvent| {
        if let Some(observer) = &observer {
            let _ = observer.send(event);
        }
    };
    let set_state = |state: LinkState| {
        link.state.send_replace(state.clone());
        observe(LinkEvent::State { mesh_id: mesh_id.clone(), state });
    };
    while let Some(event) = events.recv().await {
        match event {
            ClientEvent::Connected(ack) => {
                tracing::info!(mesh = %link.entry.slug, name = %ack.member_display_name, "connected");
                link.presence.lock().expect("presence lock").display_name = ack.member_display_name;
                link.invalidate_peers();
                set_state(LinkState::Connected);
            }
            ClientEvent::Disconnected { reason } => {
                tracing::warn!(mesh = %link.entry.slug, %reason, "disconnected; reconnecting");
                set_state(LinkState::Reconnecting(reason));
            }
            ClientEvent::Refused { code, message, fatal } => {
                tracing::warn!(mesh = %link.entry.slug, code = code.as_str(), %message, fatal, "refused by the broker");
                if fatal {
                    set_state(LinkState::Failed(format!("{}: {message}", code.as_str())));
                }
            }
            ClientEvent::System { event, .. } => {
                tracing::debug!(mesh = %link.entry.slug, event = event.name(), "mesh event");
                link.invalidate_peers();
                observe(LinkEvent::Presence { mesh_id: mesh_id.clone(), event });
            }
            ClientEvent::Delivered { message_id, .. } => observe(LinkEvent::Delivered { message_id }),
            ClientEvent::Error(error) => {
                tracing::warn!(mesh = %link.entry.slug, code = error.code.as_str(), message = %error.message, "broker error");
            }
            ClientEvent::Message(message) => {
                if let Some(stored) = store(&link, &inbox, message).await {
                    let _ = incoming.send(stored).await;
                }
            }
        }
    }
}

/// Stores a message, then acknowledges it. Returns it when the front end should be told
/// (new, or still unread after a re-push).
async fn store(link: &MeshLink, inbox: &Arc<Inbox>, message: InboundMessage) -> Option<StoredMessage> {
    let from = link.name_of(&message.sender_pubkey, message.sender_member_pubkey.as_deref()).await;
    let (text, error) = match &message.body {
        Ok(_) => (message.text(), None),
        Err(error) => (None, Some(error.to_string())),
    };
    let stored = StoredMessage {
        id: message.message_id.clone(),
        mesh_id: link.entry.mesh_id.clone(),
        mesh_slug: link.entry.slug.clone(),
        from,
        from_pubkey: message.sender_pubkey.clone(),
        from_member_pubkey: message.sender_member_pubkey.clone(),
        verified: message.verified,
        priority: message.priority.as_str().to_owned(),
        kind: MessageKind::of_target(message.target_spec.as_deref()),
        target: message.target_spec.clone(),
        text,
        error,
        sent_at: message.created_at.clone(),
        received_at: broker_core::protocol::now_ms(),
        receiving_session: link.session_pubkey(),
        read: false,
    };
    let committed = {
        let (inbox, row, channel) = (inbox.clone(), stored.clone(), link.channel.clone());
        tokio::task::spawn_blocking(move || {
            let new = inbox.insert(&row, &channel)?;
            let unread = if new { true } else { inbox.get(&row.id)?.is_some_and(|m| !m.read) };
            Ok::<_, crate::inbox::InboxError>(unread)
        })
        .await
    };
    match committed {
        Ok(Ok(tell)) => {
            // Only now may the broker forget it.
            if let Err(error) = link.client.acknowledge(vec![message.message_id]).await {
                tracing::warn!(mesh = %link.entry.slug, %error, "could not acknowledge; the broker will push it again");
            }
            tell.then_some(stored)
        }
        Ok(Err(error)) => {
            tracing::error!(mesh = %link.entry.slug, %error, "could not store a message; not acknowledging it");
            None
        }
        Err(error) => {
            tracing::error!(mesh = %link.entry.slug, %error, "inbox task failed; not acknowledging");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(target: Option<&str>, receiving: &str) -> StoredMessage {
        StoredMessage {
            id: "m".into(),
            mesh_id: "mesh".into(),
            mesh_slug: "acme".into(),
            from: "alice".into(),
            from_pubkey: "a".repeat(64),
            from_member_pubkey: None,
            verified: true,
            priority: "next".into(),
            target: target.map(str::to_owned),
            kind: MessageKind::of_target(target),
            text: Some("hi".into()),
            error: None,
            sent_at: String::new(),
            received_at: 0,
            receiving_session: receiving.into(),
            read: false,
        }
    }

    #[test]
    fn session_addressed_mail_of_a_live_session_is_hidden_from_other_sessions_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let run = dir.path().join("run");
        let (live, gone, me) = ("1".repeat(64), "2".repeat(64), "3".repeat(64));
        let _lock = lock_session(&run, &live).expect("locks");
        let mine: HashSet<String> = [me.clone()].into();

        assert!(!visible_to(&message(Some(&live), &live), &mine, &run), "a live session's own mail");
        assert!(visible_to(&message(Some(&gone), &gone), &mine, &run), "a gone session's mail is anyone's");
        assert!(visible_to(&message(Some("@dev"), &live), &mine, &run), "group mail is the member's");
        assert!(visible_to(&message(Some(&me), &me), &mine, &run), "mine");
        assert!(session_alive(&run, &live));
        drop(_lock);
        assert!(!session_alive(&run, &live), "the lock is released with the session");
    }
}
