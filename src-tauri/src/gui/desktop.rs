//! The desktop app's core, free of Tauri: it owns the mesh connections (one [`Supervisor`] per
//! joined mesh, as a human peer on the `desktop` channel), the embedded local broker, the
//! device-login flow and the notification policy. Commands call its methods; what changes goes
//! out as [`Output`]s on one channel, which the shell turns into window events, tray updates
//! and native notifications.
//!
//! Secrets stay here: the device token and member keys are read from the keystore when a call
//! needs them and never appear in an [`Output`] or a command result.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use broker_core::client::device_login::{LoginOutcome, PollResponse, run_device_login};
use broker_core::protocol::account::{DeviceView, PendingDevice};
use broker_core::protocol::{PeerType, Priority, Role, SystemEvent, now_ms};
use serde::Serialize;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use zeroize::Zeroizing;

use super::conversations::{self, ConversationSummary, Delivery, ThreadMessage};
use super::error::{CommandError, CommandResult, ErrorKind};
use super::local_broker::LocalBroker;
use super::notify::{MeshLabel, Navigate, NotificationPolicy, Toast, View};
use super::settings::{self, DesktopSettings, MeshNotifications};
use super::state::{DesktopState, LocalBrokerView, MeshStatus, StatusView, TokenHealth};
use crate::account::{self, Api, InviteOptions, Moderation};
use crate::claude_code::{self, ClaudeFiles};
use crate::config::{ConfigDir, MeshEntry};
use crate::inbox::{Inbox, PersonMessage, SentMessage, StoredMessage};
use crate::keystore::KeyStore;
use crate::mesh::resolve::Resolution;
use crate::mesh::{LinkEvent, LinkState, MeshLink, PeerRow, SessionOptions, Supervisor};

/// The channel the app's sessions announce; the inbox records it to tell the person's mail apart.
pub const DESKTOP_CHANNEL: &str = "desktop";
/// How often device logins waiting for this account are fetched.
pub const PENDING_POLL_INTERVAL: Duration = Duration::from_secs(4);
/// How often the sign-in's expiry is checked.
const TOKEN_CHECK_INTERVAL: Duration = Duration::from_secs(600);
/// How often this machine's session files are looked at (a Claude Code session of this device
/// starting or ending sends no broker event to the device's own sessions).
const LOCAL_SESSIONS_INTERVAL: Duration = Duration::from_secs(1);
/// How often the peer lists are fetched while the window shows (status, summary and group
/// changes of peers send no broker event).
const PEER_REFRESH_INTERVAL: Duration = Duration::from_secs(3);
/// Messages of history a person's view reads.
const HISTORY_LIMIT: usize = 2000;

/// What the core tells the shell.
#[derive(Debug, Clone)]
pub enum Output {
    Ui(UiEvent),
    Toast(Toast),
}

/// The one event type the window receives (event name [`super::UI_EVENT`]).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum UiEvent {
    Status(StatusView),
    #[serde(rename_all = "camelCase")]
    Peers {
        mesh_id: String,
        peers: Vec<PeerRow>,
    },
    Message(ThreadMessage),
    #[serde(rename_all = "camelCase")]
    Delivery {
        id: String,
        conversation: String,
        delivery: Delivery,
    },
    SignIn(SignInView),
    Navigate(Navigate),
}

/// Where a device login of this app stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SignInPhase {
    Waiting,
    Approved,
    Denied,
    Expired,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SignInView {
    pub phase: SignInPhase,
    pub broker_url: String,
    pub user_code: String,
    pub verification_uri: String,
    pub verification_uri_complete: String,
    /// The QR code of the complete verification URI, as an SVG document.
    pub qr_svg: String,
    /// Unix milliseconds.
    pub expires_at: u64,
    pub message: Option<String>,
}

/// Everything the window needs when it (re)loads.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    pub status: StatusView,
    pub peers: BTreeMap<String, Vec<PeerRow>>,
    pub sign_in: Option<SignInView>,
    pub settings: DesktopSettings,
    pub default_display_name: String,
    pub default_account_name: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InviteView {
    pub link: String,
    /// The same invite for the desktop app (`claudemesh://join/…`).
    pub app_link: String,
    pub qr_svg: String,
    pub expires_at: String,
    pub max_uses: u32,
    pub role: Role,
    pub emailed: bool,
    pub email_error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberRow {
    pub id: Option<String>,
    pub pubkey: String,
    pub display_name: String,
    pub role: Option<Role>,
    pub joined_at: Option<String>,
    pub online: bool,
    pub banned: bool,
    /// Held by this account (this device or another of its devices).
    pub mine: bool,
    /// This member's grants block that one (`[]`).
    pub blocked: bool,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MembersView {
    pub members: Vec<MemberRow>,
    /// This device may kick and ban (an admin, with the account on the mesh's broker).
    pub can_moderate: bool,
    /// Why the list shows only who is online.
    pub note: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClaudeIntegration {
    pub registered: bool,
    pub mcp_file: String,
    pub hooks_file: String,
    /// Claude Code sessions of this machine connected to a mesh now.
    pub sessions: Vec<PeerRow>,
    /// What the last register or unregister did.
    pub actions: Vec<String>,
}

/// Local-broker settings as the person edits them.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LocalBrokerChange {
    pub enabled: bool,
    pub port: u16,
    pub data_dir: Option<String>,
    pub share_on_lan: bool,
}

/// The receiving ends of the core's channels, handed to [`Desktop::start`].
pub struct Channels {
    link_events: mpsc::UnboundedReceiver<LinkEvent>,
    incoming: mpsc::Receiver<StoredMessage>,
}

pub struct Desktop {
    config_dir: ConfigDir,
    keystore: Arc<dyn KeyStore>,
    inbox: Arc<Inbox>,
    settings: Mutex<DesktopSettings>,
    state: Mutex<DesktopState>,
    policy: Mutex<NotificationPolicy>,
    /// One supervisor per joined mesh, by mesh id. Held only to clone an `Arc` out.
    links: Mutex<HashMap<String, Arc<Supervisor>>>,
    /// The embedded broker while it runs. A tokio mutex: starting and stopping await.
    local: tokio::sync::Mutex<Option<LocalBroker>>,
    /// The device login in progress, and what the window shows of it.
    sign_in: Mutex<(Option<tokio::task::AbortHandle>, Option<SignInView>)>,
    /// Background loops, aborted on shutdown.
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
    /// Wakes the join-storm flusher when a storm starts.
    storm_started: Notify,
    /// The window is on screen (set by the shell): peer lists are then kept fresh by polling.
    window_visible: std::sync::atomic::AtomicBool,
    /// Outputs go to the shell (which holds the app handle).
    out: mpsc::UnboundedSender<Output>,
    /// Cloned into every supervisor; read by the link-event loop.
    link_events: mpsc::UnboundedSender<LinkEvent>,
    /// Cloned into every supervisor; read by the incoming-message loop.
    incoming: mpsc::Sender<StoredMessage>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these short locks leaves plain data; keep going with it.
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, CommandError> + Send + 'static,
) -> Result<T, CommandError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| CommandError::new(ErrorKind::Storage, e.to_string()))?
}

/// An SVG QR code of `text` (for the sign-in URI and invites).
pub fn qr_svg(text: &str) -> String {
    match qrcode::QrCode::new(text.as_bytes()) {
        Ok(code) => code
            .render::<qrcode::render::svg::Color<'_>>()
            .min_dimensions(200, 200)
            .quiet_zone(true)
            .dark_color(qrcode::render::svg::Color("#111827"))
            .light_color(qrcode::render::svg::Color("#ffffff"))
            .build(),
        Err(_) => String::new(),
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.mmm]Z` → Unix milliseconds.
pub fn parse_iso8601_ms(text: &str) -> Option<u64> {
    let text = text.strip_suffix('Z')?;
    let (date, time) = text.split_once('T')?;
    let mut date = date.split('-').map(|p| p.parse::<i64>().ok());
    let (year, month, day) = (date.next()??, date.next()??, date.next()??);
    let (hms, millis) = time.split_once('.').unwrap_or((time, "0"));
    let mut hms = hms.split(':').map(|p| p.parse::<i64>().ok());
    let (hour, minute, second) = (hms.next()??, hms.next()??, hms.next()??);
    let millis: i64 = format!("{millis:0<3}").get(..3)?.parse().ok()?;
    // Howard Hinnant's days_from_civil.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let ms = ((days * 86_400 + hour * 3600 + minute * 60 + second) * 1000) + millis;
    u64::try_from(ms).ok()
}

/// `host:port` or `http://host:port/` → `http://host:port`.
fn normalize_broker_url(url: &str) -> CommandResult<String> {
    let url = url.trim().trim_end_matches('/');
    if url.is_empty() {
        return Err(CommandError::invalid("enter the broker's address, for example http://mesh.example.com:7900"));
    }
    if url.contains("://") { Ok(url.to_owned()) } else { Ok(format!("http://{url}")) }
}

impl Desktop {
    /// Opens the app's files (config, keystore, inbox, settings). Call [`Desktop::start`] next,
    /// inside the async runtime. The receiver gets every [`Output`].
    pub fn open(
        config_dir: ConfigDir,
        keystore: Arc<dyn KeyStore>,
    ) -> Result<(Arc<Desktop>, Channels, mpsc::UnboundedReceiver<Output>), CommandError> {
        config_dir.ensure()?;
        let inbox = Arc::new(Inbox::open(&config_dir.inbox_file())?);
        let settings = settings::load(&config_dir)?;
        let config = config_dir.load()?;
        let mut state = DesktopState::new();
        state.account = config.account;
        state.paused = settings.notifications.paused;
        state.local_broker.data_dir = settings.local_broker.data_dir(&config_dir).display().to_string();
        let (out, out_rx) = mpsc::unbounded_channel();
        let (link_events, link_rx) = mpsc::unbounded_channel();
        let (incoming, incoming_rx) = mpsc::channel(1024);
        let desktop = Arc::new(Desktop {
            config_dir,
            keystore,
            inbox,
            settings: Mutex::new(settings),
            state: Mutex::new(state),
            policy: Mutex::new(NotificationPolicy::default()),
            links: Mutex::new(HashMap::new()),
            local: tokio::sync::Mutex::new(None),
            sign_in: Mutex::new((None, None)),
            tasks: Mutex::new(Vec::new()),
            storm_started: Notify::new(),
            window_visible: std::sync::atomic::AtomicBool::new(true),
            out,
            link_events,
            incoming,
        });
        Ok((desktop, Channels { link_events: link_rx, incoming: incoming_rx }, out_rx))
    }

    /// Starts the local broker (when enabled), connects every joined mesh and the background
    /// loops. Must run inside the tokio runtime.
    pub async fn start(self: &Arc<Self>, channels: Channels) {
        let enabled = lock(&self.settings).local_broker.enabled;
        if enabled && let Err(error) = self.start_local_broker(false).await {
            tracing::warn!(%error, "the local broker did not start");
        }
        let meshes = self.config_dir.load().map(|c| c.meshes).unwrap_or_default();
        for entry in meshes {
            self.connect(entry).await;
        }
        self.recount_unread().await;
        let Channels { link_events, incoming } = channels;
        let tasks = vec![
            tokio::spawn(self.clone().link_event_loop(link_events)).abort_handle(),
            tokio::spawn(self.clone().incoming_loop(incoming)).abort_handle(),
            tokio::spawn(self.clone().pending_loop()).abort_handle(),
            tokio::spawn(self.clone().token_loop()).abort_handle(),
            tokio::spawn(self.clone().local_sessions_loop()).abort_handle(),
            tokio::spawn(self.clone().storm_loop()).abort_handle(),
            tokio::spawn(self.clone().peer_refresh_loop()).abort_handle(),
        ];
        lock(&self.tasks).extend(tasks);
        self.emit_status();
    }

    /// Ends everything cleanly: the sign-in, the background loops, every mesh session (a clean
    /// goodbye), then the local broker (which commits what it queued before it returns).
    pub async fn shutdown(&self) {
        if let Some(task) = lock(&self.sign_in).0.take() {
            task.abort();
        }
        for task in lock(&self.tasks).drain(..) {
            task.abort();
        }
        let links: Vec<Arc<Supervisor>> = lock(&self.links).drain().map(|(_, s)| s).collect();
        futures_util::future::join_all(links.iter().map(|s| s.shutdown())).await;
        if let Some(local) = self.local.lock().await.take() {
            local.stop().await;
        }
    }

    fn send(&self, output: Output) {
        let _ = self.out.send(output);
    }

    fn emit_status(&self) {
        let status = lock(&self.state).status(now_ms());
        let toast = {
            let settings = lock(&self.settings).notifications.clone();
            lock(&self.policy).token(&settings, status.state, &status.state_line)
        };
        if let Some(toast) = toast {
            self.send(Output::Toast(toast));
        }
        self.send(Output::Ui(UiEvent::Status(status)));
    }

    pub fn navigate(&self, view: View, param: Option<String>) {
        self.send(Output::Ui(UiEvent::Navigate(Navigate { view, param })));
    }

    pub fn status(&self) -> StatusView {
        lock(&self.state).status(now_ms())
    }

    pub fn snapshot(&self) -> Snapshot {
        let state = lock(&self.state);
        Snapshot {
            status: state.status(now_ms()),
            peers: state.meshes.iter().map(|(id, m)| (id.clone(), m.peers.clone())).collect(),
            sign_in: lock(&self.sign_in).1.clone(),
            settings: lock(&self.settings).clone(),
            default_display_name: crate::config::default_display_name(),
            default_account_name: default_account_name(),
        }
    }

    fn save_settings(&self, change: impl FnOnce(&mut DesktopSettings)) -> CommandResult<DesktopSettings> {
        let mut settings = lock(&self.settings);
        change(&mut settings);
        settings::save(&self.config_dir, &settings)?;
        Ok(settings.clone())
    }

    // -----------------------------------------------------------------------------------------
    // Mesh connections
    // -----------------------------------------------------------------------------------------

    fn own_member_keys(&self) -> Vec<String> {
        lock(&self.state).meshes.values().map(|m| m.entry.member_pubkey.clone()).collect()
    }

    fn supervisor(&self, mesh_id: &str) -> CommandResult<Arc<Supervisor>> {
        lock(&self.links)
            .get(mesh_id)
            .cloned()
            .ok_or_else(|| CommandError::not_found("that mesh is not joined on this device"))
    }

    /// This app's session in one mesh (none when its member key could not be loaded).
    fn session(&self, mesh_id: &str) -> CommandResult<Arc<MeshLink>> {
        let supervisor = self.supervisor(mesh_id)?;
        supervisor.links().first().cloned().ok_or_else(|| CommandError::not_found("no session"))
    }

    fn mesh_entry(&self, mesh_id: &str) -> CommandResult<MeshEntry> {
        lock(&self.state)
            .meshes
            .get(mesh_id)
            .map(|m| m.entry.clone())
            .ok_or_else(|| CommandError::not_found("that mesh is not joined on this device"))
    }

    /// Starts the app's session in one mesh.
    async fn connect(&self, entry: MeshEntry) {
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

    async fn disconnect(&self, mesh_id: &str) {
        let supervisor = lock(&self.links).remove(mesh_id);
        if let Some(supervisor) = supervisor {
            supervisor.shutdown().await;
        }
        lock(&self.state).meshes.remove(mesh_id);
        self.send(Output::Ui(UiEvent::Peers { mesh_id: mesh_id.to_owned(), peers: Vec::new() }));
        self.emit_status();
    }

    /// Fetches one mesh's peer list and shows it.
    async fn refresh_peers(&self, mesh_id: &str) {
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
                LinkEvent::Presence { mesh_id, event } => {
                    self.presence(&mesh_id, &event);
                    self.refresh_peers(&mesh_id).await;
                }
                LinkEvent::Delivered { message_id, .. } => {
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
        let (name, _, member_pubkey) = event.peer();
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
        };
        if let Some(toast) = toast {
            self.send(Output::Toast(toast));
        }
    }

    pub fn set_window_visible(&self, visible: bool) {
        self.window_visible.store(visible, std::sync::atomic::Ordering::Relaxed);
    }

    async fn peer_refresh_loop(self: Arc<Self>) {
        loop {
            tokio::time::sleep(PEER_REFRESH_INTERVAL).await;
            if !self.window_visible.load(std::sync::atomic::Ordering::Relaxed) {
                continue;
            }
            let meshes: Vec<String> = lock(&self.state).meshes.keys().cloned().collect();
            for mesh_id in meshes {
                self.refresh_peers(&mesh_id).await;
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

    async fn incoming_loop(self: Arc<Self>, mut incoming: mpsc::Receiver<StoredMessage>) {
        while let Some(message) = incoming.recv().await {
            let person = PersonMessage { message, seen: false };
            let thread_message = conversations::received(&person);
            let mesh_name = lock(&self.state).meshes.get(&person.message.mesh_id).map(|m| m.entry.name.clone());
            if let Some(mesh_name) = mesh_name {
                let settings = lock(&self.settings).notifications.clone();
                let mesh = MeshLabel { id: &person.message.mesh_id, name: &mesh_name };
                let text = person.message.text.as_deref().unwrap_or("(a message that could not be opened)");
                let toast = lock(&self.policy).message(
                    &settings,
                    mesh,
                    &person.message.from,
                    text,
                    &thread_message.conversation,
                );
                if let Some(toast) = toast {
                    self.send(Output::Toast(toast));
                }
            }
            self.send(Output::Ui(UiEvent::Message(thread_message)));
            self.recount_unread().await;
        }
    }

    async fn recount_unread(&self) {
        let (inbox, own) = (self.inbox.clone(), self.own_member_keys());
        let unread = blocking(move || Ok(inbox.person_history(&own, HISTORY_LIMIT)?))
            .await
            .map(|rows| rows.iter().filter(|m| !m.seen).count() as u64);
        if let Ok(unread) = unread {
            let changed = {
                let mut state = lock(&self.state);
                std::mem::replace(&mut state.unread, unread) != unread
            };
            if changed {
                self.emit_status();
            }
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

    // -----------------------------------------------------------------------------------------
    // Account: sign-in, local broker, polling
    // -----------------------------------------------------------------------------------------

    async fn api(&self) -> CommandResult<Api> {
        let (api, _) = account::api(&self.config_dir, &self.keystore).await?;
        Ok(api)
    }

    /// The account API when `mesh` lives on the account's broker.
    async fn api_for(&self, mesh: &MeshEntry) -> CommandResult<Option<Api>> {
        let api = self.api().await?;
        Ok(crate::http::same_broker(&api.broker_url, &mesh.broker_url).then_some(api))
    }

    /// Records that the broker refused this device's token.
    fn on_account_error(&self, error: &CommandError) {
        if error.kind == ErrorKind::SignInInvalid {
            let changed = {
                let mut state = lock(&self.state);
                std::mem::replace(&mut state.token, TokenHealth::Expired) != TokenHealth::Expired
            };
            if changed {
                self.emit_status();
            }
        }
    }

    async fn checked<T>(&self, result: CommandResult<T>) -> CommandResult<T> {
        if let Err(error) = &result {
            self.on_account_error(error);
        }
        result
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

    /// Learns this device's token expiry from its device list (401: expired or revoked).
    async fn check_token(&self) {
        if lock(&self.state).account.is_none() {
            return;
        }
        let devices = match self.api().await {
            Ok(api) => api.devices().await.map_err(CommandError::from),
            Err(error) => Err(error),
        };
        if let Ok(devices) = self.checked(devices).await
            && let Some(current) = devices.iter().find(|d| d.current)
            && let Some(expires_at_ms) = parse_iso8601_ms(&current.expires_at)
        {
            lock(&self.state).token = TokenHealth::Valid { expires_at_ms };
            self.emit_status();
        }
    }

    async fn start_local_broker(&self, first_run: bool) -> CommandResult<String> {
        let mut local = self.local.lock().await;
        if let Some(running) = local.as_ref() {
            return Ok(running.url());
        }
        let wanted = lock(&self.settings).local_broker.clone();
        let data_dir = wanted.data_dir(&self.config_dir);
        let started = LocalBroker::start(&data_dir, wanted.port, wanted.share_on_lan, first_run).await;
        let view = match &started {
            Ok(broker) => LocalBrokerView {
                running: true,
                port: Some(broker.port()),
                url: Some(broker.url()),
                lan_url: broker.lan_url(),
                data_dir: broker.data_dir().display().to_string(),
                error: None,
            },
            Err(error) => LocalBrokerView {
                running: false,
                port: Some(wanted.port),
                url: None,
                lan_url: None,
                data_dir: data_dir.display().to_string(),
                error: Some(error.to_string()),
            },
        };
        lock(&self.state).local_broker = view;
        self.emit_status();
        let broker = started.map_err(|e| CommandError::new(ErrorKind::LocalBroker, e.to_string()))?;
        if broker.port() != wanted.port {
            let port = broker.port();
            self.save_settings(|s| s.local_broker.port = port)?;
        }
        let url = broker.url();
        *local = Some(broker);
        Ok(url)
    }

    async fn stop_local_broker(&self) {
        let stopped = self.local.lock().await.take();
        if let Some(broker) = stopped {
            broker.stop().await;
        }
        let mut state = lock(&self.state);
        state.local_broker.running = false;
        state.local_broker.url = None;
        state.local_broker.lan_url = None;
        state.local_broker.error = None;
        drop(state);
        self.emit_status();
    }

    /// "Just this computer": start the embedded broker, make the person its owner, create a
    /// personal mesh. Returns the new status.
    pub async fn setup_local(
        &self,
        account_name: Option<String>,
        display_name: Option<String>,
    ) -> CommandResult<StatusView> {
        if lock(&self.state).account.is_some() {
            return Err(CommandError::invalid("this device is already signed in; sign out first"));
        }
        self.save_settings(|s| s.local_broker.enabled = true)?;
        let url = self.start_local_broker(true).await?;
        let account_name = account_name.filter(|n| !n.trim().is_empty()).unwrap_or_else(default_account_name);
        let display_name = crate::config::display_name_or_default(display_name);
        let token = {
            let local = self.local.lock().await;
            let broker = local.as_ref().ok_or_else(|| CommandError::new(ErrorKind::LocalBroker, "stopped"))?;
            broker
                .sign_in_owner(account_name.trim())
                .await
                .map_err(|e| CommandError::new(ErrorKind::LocalBroker, e.to_string()))?
        };
        let secret = Zeroizing::new(token.access_token.clone());
        let signed_in =
            account::finish_sign_in(&self.config_dir, &self.keystore, &url, token, None, &display_name).await?;
        self.after_sign_in(signed_in.account, signed_in.enrolled).await;
        let api = Api::new(&url, secret);
        if lock(&self.state).meshes.values().all(|m| !crate::http::same_broker(&m.entry.broker_url, &url)) {
            let entry = account::create_mesh(&self.config_dir, &self.keystore, &api, "Personal", &display_name).await?;
            self.connect(entry).await;
        }
        Ok(self.status())
    }

    async fn after_sign_in(&self, account: crate::config::AccountEntry, enrolled: Vec<MeshEntry>) {
        {
            let mut state = lock(&self.state);
            state.account = Some(account);
            state.awaiting_approval = false;
            state.token = TokenHealth::Unknown;
        }
        for entry in enrolled {
            self.connect(entry).await;
        }
        self.emit_status();
        self.check_token().await;
    }

    /// Starts a device login on `broker_url`; the returned view shows the code to approve.
    pub async fn start_sign_in(
        self: &Arc<Self>,
        broker_url: String,
        account_name: Option<String>,
        display_name: Option<String>,
    ) -> CommandResult<SignInView> {
        if lock(&self.state).account.is_some() {
            return Err(CommandError::invalid("this device is already signed in; sign out first"));
        }
        let broker_url = normalize_broker_url(&broker_url)?;
        let account_name = account_name.map(|a| a.trim().to_owned()).filter(|a| !a.is_empty());
        let code = account::request_device_code(&broker_url, account_name.as_deref()).await?;
        let view = SignInView {
            phase: SignInPhase::Waiting,
            broker_url: broker_url.clone(),
            user_code: code.user_code.clone(),
            verification_uri: code.verification_uri.clone(),
            verification_uri_complete: code.verification_uri_complete.clone(),
            qr_svg: qr_svg(&code.verification_uri_complete),
            expires_at: now_ms() + code.expires_in * 1000,
            message: None,
        };
        self.save_settings(|s| s.broker_url = Some(broker_url.clone()))?;
        lock(&self.state).awaiting_approval = true;
        self.emit_status();
        let desktop = self.clone();
        let shown = view.clone();
        let task = tokio::spawn(async move {
            let poller = account::HttpPoller { broker_url: broker_url.clone() };
            let outcome = run_device_login(&code, &poller, |_| {}).await;
            let (phase, message) = match outcome {
                LoginOutcome::SignedIn(token) => {
                    let name = crate::config::display_name_or_default(display_name);
                    let expected = account_name.as_deref();
                    match account::finish_sign_in(
                        &desktop.config_dir,
                        &desktop.keystore,
                        &broker_url,
                        token,
                        expected,
                        &name,
                    )
                    .await
                    {
                        Ok(signed_in) => {
                            desktop.after_sign_in(signed_in.account, signed_in.enrolled).await;
                            (SignInPhase::Approved, None)
                        }
                        Err(error) => (SignInPhase::Failed, Some(error.to_string())),
                    }
                }
                LoginOutcome::Denied => {
                    (SignInPhase::Denied, Some("the sign-in was denied on the approving device".into()))
                }
                LoginOutcome::Expired => (SignInPhase::Expired, Some("nobody approved the code in time".into())),
                LoginOutcome::Failed(reason) => (SignInPhase::Failed, Some(reason)),
            };
            desktop.finish_sign_in_view(phase, message);
        });
        *lock(&self.sign_in) = (Some(task.abort_handle()), Some(shown));
        Ok(view)
    }

    fn finish_sign_in_view(&self, phase: SignInPhase, message: Option<String>) {
        let view = {
            let mut sign_in = lock(&self.sign_in);
            sign_in.0 = None;
            sign_in.1.as_mut().map(|view| {
                view.phase = phase;
                view.message = message;
                view.clone()
            })
        };
        lock(&self.state).awaiting_approval = false;
        if let Some(view) = view {
            self.send(Output::Ui(UiEvent::SignIn(view)));
        }
        self.emit_status();
    }

    pub fn cancel_sign_in(&self) {
        let task = {
            let mut sign_in = lock(&self.sign_in);
            sign_in.1 = None;
            sign_in.0.take()
        };
        if let Some(task) = task {
            task.abort();
        }
        lock(&self.state).awaiting_approval = false;
        self.emit_status();
    }

    /// Signs in with a one-time login token made on a signed-in device.
    pub async fn sign_in_with_token(
        &self,
        broker_url: String,
        login_token: String,
        display_name: Option<String>,
    ) -> CommandResult<StatusView> {
        if lock(&self.state).account.is_some() {
            return Err(CommandError::invalid("this device is already signed in; sign out first"));
        }
        let broker_url = normalize_broker_url(&broker_url)?;
        let login_token = Zeroizing::new(login_token.trim().to_owned());
        if login_token.is_empty() {
            return Err(CommandError::invalid("paste the login token made on a signed-in device"));
        }
        let token = match account::poll_token(&broker_url, &login_token).await? {
            PollResponse::Token(token) => token,
            PollResponse::Error(error) => {
                return Err(CommandError::new(
                    ErrorKind::Refused,
                    format!("the broker refused the token ({}): {}", error.error, error.error_description),
                ));
            }
        };
        let name = crate::config::display_name_or_default(display_name);
        let signed_in =
            account::finish_sign_in(&self.config_dir, &self.keystore, &broker_url, token, None, &name).await?;
        self.save_settings(|s| s.broker_url = Some(broker_url.clone()))?;
        self.after_sign_in(signed_in.account, signed_in.enrolled).await;
        Ok(self.status())
    }

    pub async fn sign_out(&self) -> CommandResult<StatusView> {
        let out = account::sign_out(&self.config_dir, &self.keystore).await?;
        let forgotten: Vec<String> = {
            let state = lock(&self.state);
            state
                .meshes
                .values()
                .filter(|m| out.forgotten.contains(&m.entry.slug))
                .map(|m| m.entry.mesh_id.clone())
                .collect()
        };
        for mesh_id in forgotten {
            self.disconnect(&mesh_id).await;
        }
        {
            let mut state = lock(&self.state);
            state.account = None;
            state.token = TokenHealth::Unknown;
            state.pending.clear();
        }
        lock(&self.sign_in).1 = None;
        self.emit_status();
        Ok(self.status())
    }

    // -----------------------------------------------------------------------------------------
    // Meshes
    // -----------------------------------------------------------------------------------------

    pub async fn create_mesh(&self, name: String) -> CommandResult<StatusView> {
        let api = self.api().await;
        let api = self.checked(api).await?;
        let display_name = self.display_name_for_new_mesh();
        let created = account::create_mesh(&self.config_dir, &self.keystore, &api, name.trim(), &display_name).await;
        let entry = self.checked(created.map_err(CommandError::from)).await?;
        self.connect(entry).await;
        Ok(self.status())
    }

    fn display_name_for_new_mesh(&self) -> String {
        // The name this person already uses elsewhere, so peers recognise them.
        lock(&self.state)
            .meshes
            .values()
            .next()
            .map(|m| m.entry.display_name.clone())
            .unwrap_or_else(crate::config::default_display_name)
    }

    pub async fn create_invite(
        &self,
        mesh_id: &str,
        role: Role,
        max_uses: u32,
        expires_in_hours: u64,
        email: Option<String>,
    ) -> CommandResult<InviteView> {
        let mut entry = self.mesh_entry(mesh_id)?;
        let api = self.api_for(&entry).await?.ok_or_else(|| {
            CommandError::invalid(
                "invites are made with the account of the mesh's broker; this mesh is on another broker",
            )
        })?;
        // When the local broker is shared on the LAN, invites tell other machines its LAN address.
        if let Some(lan_url) = lock(&self.state).local_broker.lan_url.clone()
            && lock(&self.state)
                .local_broker
                .url
                .as_deref()
                .is_some_and(|u| crate::http::same_broker(u, &entry.broker_url))
        {
            entry.broker_url = lan_url;
        }
        let options = InviteOptions {
            role,
            max_uses: max_uses.max(1),
            expires_in: Duration::from_secs(expires_in_hours.clamp(1, 24 * 30) * 3600),
            email: email.map(|e| e.trim().to_owned()).filter(|e| !e.is_empty()),
        };
        let created = account::create_invite(&self.keystore, &api, &entry, &options).await;
        let created = self.checked(created.map_err(CommandError::from)).await?;
        let app_link = broker_core::invite::Invite::parse(&created.link)
            .map(|invite| format!("claudemesh://join/{}", invite.to_token()))
            .unwrap_or_else(|_| created.link.clone());
        Ok(InviteView {
            qr_svg: qr_svg(&created.link),
            link: created.link,
            app_link,
            expires_at: created.invite.expires_at,
            max_uses: created.invite.max_uses,
            role: created.invite.role,
            emailed: created.emailed,
            email_error: created.email_error,
        })
    }

    pub async fn join_mesh(&self, link: String, display_name: Option<String>) -> CommandResult<StatusView> {
        let name = display_name.filter(|n| !n.trim().is_empty()).unwrap_or_else(|| self.display_name_for_new_mesh());
        let joined = crate::join::join(&self.config_dir, self.keystore.clone(), link.trim(), name.trim()).await?;
        self.connect(joined.entry).await;
        Ok(self.status())
    }

    /// Leaves a mesh: at the broker when this device's member is linked to the account there,
    /// then here (the session ends, the member key is deleted).
    pub async fn leave_mesh(&self, mesh_id: &str) -> CommandResult<StatusView> {
        let entry = self.mesh_entry(mesh_id)?;
        if entry.device_linked
            && let Ok(Some(api)) = self.api_for(&entry).await
        {
            match api.leave_mesh(mesh_id).await {
                Ok(()) | Err(account::AccountError::Refused { status: 404, .. }) => {}
                Err(error) => return Err(error.into()),
            }
        }
        self.disconnect(mesh_id).await;
        let config_dir = self.config_dir.clone();
        let (keystore, key, id) = (self.keystore.clone(), entry.key_account(), entry.mesh_id.clone());
        blocking(move || {
            let mut config = config_dir.load()?;
            config.meshes.retain(|m| m.mesh_id != id);
            config_dir.save(&config)?;
            keystore.delete(&key)?;
            Ok(())
        })
        .await?;
        Ok(self.status())
    }

    /// Members with roles and this member's block list. On the account's broker the full list
    /// (and moderation for admins); elsewhere who is online.
    pub async fn members(&self, mesh_id: &str) -> CommandResult<MembersView> {
        let entry = self.mesh_entry(mesh_id)?;
        let grants = self.session(mesh_id)?.grants().await.unwrap_or_default();
        let blocked = |pubkey: &str| grants.get(pubkey).is_some_and(|caps| caps.is_empty());
        let api = match self.api_for(&entry).await {
            Ok(api) => api,
            Err(error) if error.kind == ErrorKind::NotSignedIn => None,
            Err(error) => return Err(error),
        };
        if let Some(api) = api {
            let members = api.members(mesh_id).await.map_err(CommandError::from);
            let members = self.checked(members).await?;
            return Ok(MembersView {
                members: members
                    .into_iter()
                    .filter(|m| m.active || m.banned)
                    .map(|m| MemberRow {
                        blocked: blocked(&m.pubkey),
                        id: Some(m.id),
                        pubkey: m.pubkey,
                        display_name: m.display_name,
                        role: Some(m.role),
                        joined_at: Some(m.joined_at),
                        online: m.online,
                        banned: m.banned,
                        mine: m.mine,
                    })
                    .collect(),
                can_moderate: entry.role == Role::Admin.as_str(),
                note: None,
            });
        }
        let peers = lock(&self.state).meshes.get(mesh_id).map(|m| m.peers.clone()).unwrap_or_default();
        let mut seen = HashSet::new();
        Ok(MembersView {
            members: peers
                .into_iter()
                .filter(|p| seen.insert(p.member_pubkey.clone()))
                .map(|p| MemberRow {
                    blocked: blocked(&p.member_pubkey),
                    id: None,
                    mine: p.same_member,
                    pubkey: p.member_pubkey,
                    display_name: p.name,
                    role: None,
                    joined_at: None,
                    online: true,
                    banned: false,
                })
                .collect(),
            can_moderate: false,
            note: Some(
                "This mesh is on a broker this device is not signed in to: only members online now are listed.".into(),
            ),
        })
    }

    /// Blocks a member (it may do nothing to this member) or gives it the mesh defaults again.
    pub async fn set_blocked(&self, mesh_id: &str, member_pubkey: &str, blocked: bool) -> CommandResult<()> {
        if !broker_core::protocol::is_key_hex(member_pubkey) {
            return Err(CommandError::invalid("not a member key"));
        }
        let caps = blocked.then(Vec::new);
        self.session(mesh_id)?.set_grants([(member_pubkey.to_owned(), caps)].into()).await?;
        Ok(())
    }

    pub async fn moderate(&self, mesh_id: &str, member_id: &str, action: Moderation) -> CommandResult<()> {
        let entry = self.mesh_entry(mesh_id)?;
        let api = self.api_for(&entry).await?.ok_or_else(|| CommandError::invalid("this mesh is on another broker"))?;
        let result = api.moderate(mesh_id, member_id, action).await.map_err(CommandError::from);
        self.checked(result).await
    }

    // -----------------------------------------------------------------------------------------
    // Messages
    // -----------------------------------------------------------------------------------------

    async fn history(&self) -> CommandResult<(Vec<PersonMessage>, Vec<SentMessage>)> {
        let (inbox, own) = (self.inbox.clone(), self.own_member_keys());
        blocking(move || Ok((inbox.person_history(&own, HISTORY_LIMIT)?, inbox.sent_history(HISTORY_LIMIT)?))).await
    }

    pub async fn conversations(&self) -> CommandResult<Vec<ConversationSummary>> {
        let (received, sent) = self.history().await?;
        Ok(conversations::summarize(&received, &sent))
    }

    /// One conversation's messages; marks the received ones seen.
    pub async fn conversation(&self, key: &str) -> CommandResult<Vec<ThreadMessage>> {
        let (received, sent) = self.history().await?;
        let thread = conversations::thread(key, &received, &sent);
        let unseen: Vec<String> = thread.iter().filter(|m| !m.seen).map(|m| m.id.clone()).collect();
        if !unseen.is_empty() {
            let inbox = self.inbox.clone();
            blocking(move || Ok(inbox.mark_seen(&unseen, now_ms())?)).await?;
            self.recount_unread().await;
        }
        Ok(thread)
    }

    /// Sends `text` as this person (`peerType: human`, `channel: desktop`) to a conversation's
    /// peer, group or mesh through the supervisor's send path, and records it with its delivery
    /// state (an unsent message keeps why).
    pub async fn send_message(&self, conversation: &str, label: &str, text: &str) -> CommandResult<ThreadMessage> {
        let text = text.trim();
        if text.is_empty() {
            return Err(CommandError::invalid("write something first"));
        }
        let (mesh_id, target) =
            conversations::target_of(conversation).ok_or_else(|| CommandError::invalid("not a conversation"))?;
        let entry = self.mesh_entry(&mesh_id)?;
        // A mesh whose member key could not be loaded has no session to send from.
        self.session(&mesh_id)?;
        let supervisor = self.supervisor(&mesh_id)?;
        let label = label.trim().to_owned();
        let sent_at = now_ms();
        let resolution = Resolution {
            mesh_id: mesh_id.clone(),
            slug: entry.slug.clone(),
            target_spec: target.clone(),
            label: label.clone(),
        };
        let outcome = supervisor.send_resolved(resolution, text, Priority::Next).await;
        let sent = SentMessage {
            id: outcome.message_id.unwrap_or_else(|| format!("unsent_{}", broker_core::ids::new_id("m"))),
            mesh_id,
            mesh_slug: entry.slug,
            target_spec: target,
            conversation: conversation.to_owned(),
            recipient_label: label,
            text: text.to_owned(),
            recipients: outcome.recipients.unwrap_or(0),
            delivered: 0,
            error: outcome.error.map(|e| e.to_string()),
            sent_at,
        };
        let (inbox, row) = (self.inbox.clone(), sent.clone());
        blocking(move || Ok(inbox.record_sent(&row)?)).await?;
        let message = conversations::sent(&sent);
        self.send(Output::Ui(UiEvent::Message(message.clone())));
        Ok(message)
    }

    // -----------------------------------------------------------------------------------------
    // Devices
    // -----------------------------------------------------------------------------------------

    pub async fn devices(&self) -> CommandResult<Vec<DeviceView>> {
        let api = self.api().await;
        let api = self.checked(api).await?;
        let devices = api.devices().await.map_err(CommandError::from);
        self.checked(devices).await
    }

    pub async fn revoke_device(&self, device_id: &str) -> CommandResult<Vec<DeviceView>> {
        let api = self.checked(self.api().await).await?;
        let revoked = api.revoke_device(device_id).await.map_err(CommandError::from);
        self.checked(revoked).await?;
        self.devices().await
    }

    pub async fn lookup_device(&self, user_code: &str) -> CommandResult<PendingDevice> {
        let api = self.checked(self.api().await).await?;
        let found = api.pending_device(user_code).await.map_err(CommandError::from);
        self.checked(found).await
    }

    pub async fn decide_device(&self, user_code: &str, approve: bool) -> CommandResult<PendingDevice> {
        let api = self.checked(self.api().await).await?;
        let pending = self.checked(api.pending_device(user_code).await.map_err(CommandError::from)).await?;
        if pending.status != "pending" {
            return Err(CommandError::invalid(format!("that sign-in is already {}", pending.status)));
        }
        let decided = api.decide_device(&pending.user_code, approve).await.map_err(CommandError::from);
        let decided = self.checked(decided).await?;
        let decided_id = crate::gui::notify::request_id(&decided);
        lock(&self.state).pending.retain(|p| crate::gui::notify::request_id(p) != decided_id);
        self.emit_status();
        Ok(decided)
    }

    // -----------------------------------------------------------------------------------------
    // Settings
    // -----------------------------------------------------------------------------------------

    pub fn settings(&self) -> DesktopSettings {
        lock(&self.settings).clone()
    }

    pub fn set_paused(&self, paused: bool) -> CommandResult<DesktopSettings> {
        let settings = self.save_settings(|s| s.notifications.paused = paused)?;
        lock(&self.state).paused = paused;
        self.emit_status();
        Ok(settings)
    }

    pub fn set_mesh_notifications(&self, mesh_id: &str, choice: MeshNotifications) -> CommandResult<DesktopSettings> {
        self.save_settings(|s| {
            s.notifications.meshes.insert(mesh_id.to_owned(), choice);
        })
    }

    pub fn set_start_at_login(&self, enabled: bool) -> CommandResult<DesktopSettings> {
        let exe = std::env::current_exe().map_err(|e| CommandError::new(ErrorKind::Storage, e.to_string()))?;
        super::autostart::set(enabled, &exe).map_err(|e| CommandError::new(ErrorKind::Storage, e))?;
        self.save_settings(|s| s.start_at_login = enabled)
    }

    /// Applies local-broker settings, restarting it when something it listens with changed.
    pub async fn configure_local_broker(&self, change: LocalBrokerChange) -> CommandResult<StatusView> {
        let before = lock(&self.settings).local_broker.clone();
        let data_dir = change.data_dir.map(|d| d.trim().to_owned()).filter(|d| !d.is_empty()).map(PathBuf::from);
        if change.port == 0 {
            return Err(CommandError::invalid("choose a port between 1 and 65535"));
        }
        let after = self.save_settings(|s| {
            s.local_broker.enabled = change.enabled;
            s.local_broker.port = change.port;
            s.local_broker.data_dir = data_dir;
            s.local_broker.share_on_lan = change.share_on_lan;
        })?;
        let after = after.local_broker;
        let running = self.local.lock().await.is_some();
        let listening_changed = before.port != after.port
            || before.share_on_lan != after.share_on_lan
            || before.data_dir(&self.config_dir) != after.data_dir(&self.config_dir);
        if running && (!after.enabled || listening_changed) {
            self.stop_local_broker().await;
        }
        if after.enabled {
            self.start_local_broker(false).await?;
        }
        if before.port != after.port {
            self.relocate_local_meshes(
                &super::local_broker::local_url(before.port),
                &super::local_broker::local_url(after.port),
            )
            .await?;
        }
        Ok(self.status())
    }

    /// The local broker moved to another port: the account and the meshes that pointed at the
    /// old address point at the new one, and their sessions reconnect there.
    async fn relocate_local_meshes(&self, old_url: &str, new_url: &str) -> CommandResult<()> {
        let config_dir = self.config_dir.clone();
        let (old, new) = (old_url.to_owned(), new_url.to_owned());
        let moved = blocking(move || {
            let mut config = config_dir.load()?;
            if let Some(account) = config.account.as_mut()
                && crate::http::same_broker(&account.broker_url, &old)
            {
                account.broker_url = new.clone();
            }
            let mut moved = Vec::new();
            for mesh in config.meshes.iter_mut().filter(|m| crate::http::same_broker(&m.broker_url, &old)) {
                mesh.broker_url = new.clone();
                moved.push(mesh.clone());
            }
            config_dir.save(&config)?;
            Ok((config.account, moved))
        })
        .await?;
        let (account, meshes) = moved;
        lock(&self.state).account = account;
        for entry in meshes {
            self.connect(entry).await;
        }
        self.emit_status();
        Ok(())
    }

    pub async fn local_broker_running(&self, run: bool) -> CommandResult<StatusView> {
        if run {
            self.start_local_broker(false).await?;
        } else {
            self.stop_local_broker().await;
        }
        Ok(self.status())
    }

    pub fn claude_integration(&self, actions: Vec<String>) -> CommandResult<ClaudeIntegration> {
        let files = ClaudeFiles::from_env().map_err(|e| CommandError::new(ErrorKind::Storage, e.to_string()))?;
        let registered = claude_code::is_registered(&files);
        let sessions = lock(&self.state)
            .meshes
            .values()
            .flat_map(|m| m.peers.iter())
            .filter(|p| p.location == "local" && p.channel.as_deref() == Some("claude-code"))
            .cloned()
            .collect();
        Ok(ClaudeIntegration {
            registered,
            mcp_file: files.mcp_config.display().to_string(),
            hooks_file: files.settings.display().to_string(),
            sessions,
            actions,
        })
    }

    /// Registers this binary's MCP bridge and status hooks with Claude Code (or takes them out).
    pub fn register_claude(&self, register: bool) -> CommandResult<ClaudeIntegration> {
        let files = ClaudeFiles::from_env().map_err(|e| CommandError::new(ErrorKind::Storage, e.to_string()))?;
        let report = if register {
            let exe = std::env::current_exe()
                .and_then(|e| e.canonicalize())
                .map_err(|e| CommandError::new(ErrorKind::Storage, e.to_string()))?;
            let override_dir =
                std::env::var_os(crate::config::CONFIG_DIR_ENV).filter(|d| !d.is_empty()).map(PathBuf::from);
            claude_code::install(&files, &exe, override_dir.as_deref())
        } else {
            claude_code::uninstall(&files)
        }
        .map_err(|e| CommandError::new(ErrorKind::Storage, format!("{e:#}")))?;
        self.claude_integration(report.actions)
    }

    /// Opens a `claudemesh://` link: an invite (the Meshes view, ready to join) or a device code
    /// (the Approve view, ready to decide).
    pub fn open_link(&self, url: &str) -> CommandResult<()> {
        match super::links::parse(url) {
            Some(super::links::Link::Join(link)) => self.navigate(View::Meshes, Some(format!("join:{link}"))),
            Some(super::links::Link::Device(code)) => self.navigate(View::Approve, Some(code)),
            None => return Err(CommandError::invalid("not a claudemesh:// link this app knows")),
        }
        Ok(())
    }
}

fn peers_differ(before: &[PeerRow], after: &[PeerRow]) -> bool {
    let view = |rows: &[PeerRow]| rows.iter().map(|p| serde_json::to_string(p).unwrap_or_default()).collect::<Vec<_>>();
    view(before) != view(after)
}

fn default_account_name() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("USERNAME"))
        .ok()
        .map(|u| u.trim().to_owned())
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "me".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_timestamps_parse_back_to_the_milliseconds_they_came_from() {
        for ms in [0, 1_700_000_000_123, 951_782_400_000, 4_102_444_799_999] {
            assert_eq!(parse_iso8601_ms(&broker_core::protocol::iso8601_ms(ms)), Some(ms));
        }
        assert_eq!(parse_iso8601_ms("2026-01-02T03:04:05Z"), parse_iso8601_ms("2026-01-02T03:04:05.000Z"));
        assert_eq!(parse_iso8601_ms("yesterday"), None);
    }

    #[test]
    fn broker_addresses_get_a_scheme_and_lose_a_trailing_slash() {
        assert_eq!(normalize_broker_url(" mesh.example.com:7900/ ").expect("ok"), "http://mesh.example.com:7900");
        assert_eq!(normalize_broker_url("http://10.0.0.2:7900").expect("ok"), "http://10.0.0.2:7900");
        assert!(normalize_broker_url("  ").is_err());
    }
}
