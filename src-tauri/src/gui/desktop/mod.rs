//! The desktop app's core, free of Tauri: it owns the mesh connections (one [`Supervisor`] per
//! joined mesh, as a human peer on the `desktop` channel), the embedded local broker, the
//! device-login flow and the notification policy. Commands call its methods; what changes goes
//! out as [`Output`]s on one channel, which the shell turns into window events, tray updates
//! and native notifications.
//!
//! Secrets stay here: the device token and member keys are read from the keystore when a call
//! needs them and never appear in an [`Output`] or a command result.
//!
//! [`Desktop`] is one struct; its methods live by area, each file an `impl Desktop` block:
//! - this file — the struct, opening, starting and shutting down, outputs, settings, links;
//! - `connections` — one supervisor per joined mesh: connect, disconnect, peer lists;
//! - `sign_in` — device login, login tokens, "just this computer", sign-out, the account API;
//! - `meshes` — create, join, leave, invite, members, blocking and moderation;
//! - `messages` — conversations and sending;
//! - `devices` — the account's devices and approving other devices' logins;
//! - `embedded_broker` — starting, stopping, configuring and moving the local broker
//!   ([`LocalBroker`](super::local_broker::LocalBroker) itself lives in `gui::local_broker`);
//! - `claude_integration` — registering Claude Code, and its sessions on this machine;
//! - `loops` — the background loops: link events, incoming messages, pending approvals, the
//!   token's expiry, local sessions, join storms, peer refresh.

mod claude_integration;
mod connections;
mod devices;
mod embedded_broker;
mod loops;
mod meshes;
mod messages;
mod scheduled;
mod sign_in;
mod workspace;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use broker_core::protocol::now_ms;
use serde::Serialize;
use tokio::sync::{Notify, mpsc};

use super::conversations::{Delivery, ThreadMessage};
use super::error::{CommandError, CommandResult, ErrorKind};
use super::local_broker::LocalBroker;
use super::notify::{Navigate, NotificationPolicy, Toast, View};
use super::settings::{self, DesktopSettings, MeshNotifications};
use super::state::{DesktopState, StatusView};
use crate::config::ConfigDir;
use crate::inbox::{Inbox, StoredMessage};
use crate::keystore::KeyStore;
use crate::mesh::{LinkEvent, PeerRow, Supervisor};

pub use claude_integration::ClaudeIntegration;
pub use embedded_broker::LocalBrokerChange;
pub use meshes::{InviteView, MembersView};
pub use sign_in::SignInView;
pub use workspace::{BoardMesh, RecallView};

/// The channel the app's sessions announce; the inbox records it to tell the person's mail apart.
pub const DESKTOP_CHANNEL: &str = "desktop";

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
    /// A mesh's shared state changed: the Board reads it again.
    #[serde(rename_all = "camelCase")]
    Board {
        mesh_id: String,
    },
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

/// The receiving ends of the core's channels, handed to [`Desktop::start`].
pub struct Channels {
    link_events: mpsc::UnboundedReceiver<LinkEvent>,
    incoming: mpsc::Receiver<StoredMessage>,
}

pub struct Desktop {
    config_dir: ConfigDir,
    keystore: Arc<dyn KeyStore>,
    inbox: Arc<Inbox>,
    /// Held while a sent message is recorded and shown, and while a receipt updates it: the
    /// window then hears of both in the order the inbox saw them (a receipt can overtake the
    /// send's own answer).
    sent_order: tokio::sync::Mutex<()>,
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
            sent_order: tokio::sync::Mutex::new(()),
            settings: Mutex::new(settings),
            state: Mutex::new(state),
            policy: Mutex::new(NotificationPolicy::default()),
            links: Mutex::new(HashMap::new()),
            local: tokio::sync::Mutex::new(None),
            sign_in: Mutex::new((None, None)),
            tasks: Mutex::new(Vec::new()),
            storm_started: Notify::new(),
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
        let tasks = self.spawn_loops(channels);
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

    pub(super) fn send(&self, output: Output) {
        let _ = self.out.send(output);
    }

    pub(super) fn emit_status(&self) {
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
            default_account_name: sign_in::default_account_name(),
        }
    }

    pub(super) fn save_settings(&self, change: impl FnOnce(&mut DesktopSettings)) -> CommandResult<DesktopSettings> {
        let mut settings = lock(&self.settings);
        change(&mut settings);
        settings::save(&self.config_dir, &settings)?;
        Ok(settings.clone())
    }

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
}
