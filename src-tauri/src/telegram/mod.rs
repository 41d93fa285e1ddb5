//! `claudemesh telegram`: a person's meshes in Telegram. The connector is a peer like any other:
//! each Telegram chat that completes `/connect` (an email address, then the six digits the broker
//! mails to it) becomes its own signed-in device of that person's account, with its own config
//! directory, keystore and inbox under `<data-dir>/chats/<chat id>/`, and one mesh session per
//! mesh of the account (a `human` peer on channel `telegram`). The broker stays routing-only:
//! the connector opens what its chats receive, as the person's laptop would.
//!
//! - `text` — commands typed in a chat and the texts written back (pure).
//! - `state` — `telegram.json`: the update offset, each chat's stage, mutes and reply targets.
//! - `chat` — a connected chat at work: its `Supervisor`, the forwarder (inbox → Telegram,
//!   marked read only once Telegram accepted a message) and the presence notices.
//!
//! Updates are read by long polling (`getUpdates`), one at a time; the offset moves past an
//! update only once it was handled, and a stop request (SIGTERM) waits for the update at hand,
//! so a restart neither loses nor repeats a command. Only private chats are served: in a group,
//! anyone could type the code or act as the person.

mod chat;
mod state;
mod text;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use broker_core::client::Backoff;
use broker_core::protocol::Priority;
use teloxide_core::Bot;
use teloxide_core::errors::{ApiError, RequestError};
use teloxide_core::payloads::{GetUpdatesSetters as _, SendMessageSetters as _};
use teloxide_core::prelude::{Request as _, Requester as _};
use teloxide_core::types::{AllowedUpdate, ChatId, Message, MessageId, ReplyParameters, UpdateKind};
use tokio::sync::watch;
use tokio::time::Instant;
use zeroize::Zeroizing;

use crate::account::{self, AccountError};
use crate::cli::{Exit, Failure};
use crate::config::ConfigDir;
use crate::keystore::{self, KeyStore};
use crate::mesh::Supervisor;
use crate::mesh::resolve::Resolution;
use chat::LiveChat;
use state::{ConnectorState, ReplyTo, Stage};
use text::Input;

/// How long one `getUpdates` waits for an update.
const POLL_TIMEOUT_S: u32 = 25;
/// Retries while Telegram cannot be reached: quick at first, then every 10 s.
const TELEGRAM_BACKOFF: Backoff = Backoff { initial: Duration::from_millis(250), max: Duration::from_secs(10) };
/// Telegram takes texts of up to 4096 UTF-16 code units; this leaves room for the note that a
/// text was cut.
const MAX_TEXT_UNITS: usize = 4000;
/// The connector's own budget for emailed codes, per chat.
const CODE_REQUESTS_PER_WINDOW: usize = 3;
const CODE_REQUEST_WINDOW: Duration = Duration::from_secs(600);

pub struct TelegramOptions {
    pub bot_token: Zeroizing<String>,
    pub broker_url: String,
    /// Another Bot API server (a local one, or a test's stand-in).
    pub api_url: Option<String>,
    pub data_dir: PathBuf,
}

/// Runs the connector until SIGTERM or Ctrl-C.
pub async fn run(options: TelegramOptions) -> Result<(), Failure> {
    let broker_url = options.broker_url.trim().trim_end_matches('/').to_owned();
    if !(broker_url.starts_with("http://") || broker_url.starts_with("https://")) {
        return Err(Failure::new(
            Exit::Usage,
            format!("--broker must be an http:// or https:// URL, not {broker_url:?}"),
        ));
    }
    ConfigDir::ensure_private_dir(&options.data_dir)?;
    ConfigDir::ensure_private_dir(&options.data_dir.join("chats"))?;
    // teloxide's default client gives up after 17 s; a long poll must outlive its own timeout.
    let client = teloxide_core::net::default_reqwest_settings()
        .timeout(Duration::from_secs(u64::from(POLL_TIMEOUT_S) + 10))
        .build()
        .map_err(|e| Failure::new(Exit::Failure, format!("cannot set up the HTTP client: {e}")))?;
    let mut bot = Bot::with_client(options.bot_token.as_str(), client);
    if let Some(api_url) = &options.api_url {
        let url = url::Url::parse(api_url)
            .map_err(|e| Failure::new(Exit::Usage, format!("--api-url {api_url:?} is not a URL: {e}")))?;
        bot = bot.set_api_url(url);
    }
    let me = loop {
        match bot.get_me().await {
            Ok(me) => break me,
            Err(RequestError::Api(error)) => {
                return Err(Failure::new(Exit::Refused, format!("Telegram refused the bot token: {error}")));
            }
            Err(error) => {
                tracing::warn!(%error, "Telegram cannot be reached; trying again");
                tokio::select! {
                    _ = tokio::time::sleep(TELEGRAM_BACKOFF.max) => {}
                    _ = crate::terminated() => return Ok(()),
                }
            }
        }
    };
    let state = ConnectorState::load(&options.data_dir)?;
    eprintln!(
        "claudemesh telegram: @{} serves {} chat(s) with {broker_url}; data in {}",
        me.username(),
        state.chats.values().filter(|c| c.stage == Stage::Connected).count(),
        options.data_dir.display()
    );
    let (stop, stopping) = watch::channel(false);
    let connector = Arc::new(Connector {
        bot,
        broker_url,
        data_dir: options.data_dir,
        state: Mutex::new(state),
        state_file: Mutex::new(()),
        live: tokio::sync::Mutex::new(HashMap::new()),
        code_requests: Mutex::new(HashMap::new()),
        stopping,
    });
    connector.resume_chats().await;
    let polling = tokio::spawn(connector.clone().poll_updates());
    crate::terminated().await;
    // The update being handled, and each chat's message being forwarded, are finished first.
    let _ = stop.send(true);
    let _ = polling.await;
    connector.stop_all().await;
    Ok(())
}

pub(crate) struct Connector {
    bot: Bot,
    broker_url: String,
    data_dir: PathBuf,
    state: Mutex<ConnectorState>,
    /// Held while `telegram.json` is written, so writes land in the order of their changes.
    state_file: Mutex<()>,
    /// Connected chats at work, by chat id.
    live: tokio::sync::Mutex<HashMap<i64, LiveChat>>,
    /// When each chat last asked for emailed codes (the connector's own budget, before the
    /// broker's: every chat asks from this one address).
    code_requests: Mutex<HashMap<i64, Vec<Instant>>>,
    /// Turns true when the connector is asked to stop.
    stopping: watch::Receiver<bool>,
}

/// What became of a text for a chat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivered {
    Sent(MessageId),
    /// Telegram refused it for good (the bot was blocked, the chat is gone).
    Refused,
    /// The connector is stopping and Telegram had not taken it yet.
    Stopped,
}

/// How a text goes to a chat.
#[derive(Debug, Clone, Copy, Default)]
struct Delivery {
    /// Without a sound (a muted mesh).
    silent: bool,
    reply_to: Option<MessageId>,
}

impl Connector {
    fn chat_dir(&self, chat_id: i64) -> ConfigDir {
        ConfigDir::at(self.data_dir.join("chats").join(chat_id.to_string()))
    }

    /// Changes the state and writes it down (off the runtime's own work: the write syncs to
    /// disk; `is_muted` and the like only wait for the change itself).
    fn update_state<T>(&self, change: impl FnOnce(&mut ConnectorState) -> T) -> T {
        let _writing = self.state_file.lock().expect("state file lock");
        let (result, json) = {
            let mut state = self.state.lock().expect("state lock");
            let result = change(&mut state);
            (result, state.to_json())
        };
        if let Err(error) = tokio::task::block_in_place(|| state::save_json(&self.data_dir, &json)) {
            tracing::error!(%error, "could not save the connector state");
        }
        result
    }

    fn is_stopping(&self) -> bool {
        *self.stopping.borrow()
    }

    /// Waits until the connector is asked to stop.
    async fn stopped(&self) {
        let mut stopping = self.stopping.clone();
        let _ = stopping.wait_for(|stop| *stop).await;
    }

    /// Waits `wait` before a retry; false when the connector was asked to stop meanwhile.
    async fn pause(&self, wait: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(wait) => true,
            _ = self.stopped() => false,
        }
    }

    /// The running supervisor of a connected chat, or what to tell the chat.
    async fn supervisor(&self, chat_id: i64) -> Result<Arc<Supervisor>, String> {
        if let Some(live) = self.live.lock().await.get(&chat_id) {
            return Ok(live.supervisor.clone());
        }
        Err(if self.stage(chat_id) == Stage::Connected {
            "This chat's meshes are not running (see the connector's log); /disconnect, then /connect, starts over."
                .to_owned()
        } else {
            not_connected()
        })
    }

    /// The connector's own budget for emailed codes: a few per chat per ten minutes.
    fn may_ask_for_code(&self, chat_id: i64) -> bool {
        let now = Instant::now();
        let mut requests = self.code_requests.lock().expect("code requests lock");
        let asked = requests.entry(chat_id).or_default();
        asked.retain(|at| now.duration_since(*at) < CODE_REQUEST_WINDOW);
        asked.len() < CODE_REQUESTS_PER_WINDOW
    }

    fn asked_for_code(&self, chat_id: i64) {
        self.code_requests.lock().expect("code requests lock").entry(chat_id).or_default().push(Instant::now());
    }

    fn stage(&self, chat_id: i64) -> Stage {
        self.state.lock().expect("state lock").chats.get(&chat_id).map(|c| c.stage.clone()).unwrap_or_default()
    }

    fn set_stage(&self, chat_id: i64, stage: Stage) {
        self.update_state(|state| state.chat(chat_id).stage = stage);
    }

    fn is_muted(&self, chat_id: i64, mesh_id: &str) -> bool {
        self.state.lock().expect("state lock").chats.get(&chat_id).is_some_and(|c| c.muted.contains(mesh_id))
    }

    fn remember_reply(&self, chat_id: i64, message_id: MessageId, to: ReplyTo) {
        self.update_state(|state| state.chat(chat_id).remember_reply(message_id.0, to));
    }

    /// Starts every chat that was connected when the connector last stopped.
    async fn resume_chats(self: &Arc<Self>) {
        let connected: Vec<i64> = {
            let state = self.state.lock().expect("state lock");
            state.chats.iter().filter(|(_, c)| c.stage == Stage::Connected).map(|(id, _)| *id).collect()
        };
        for chat_id in connected {
            self.resume_chat(chat_id).await;
        }
    }

    async fn resume_chat(self: &Arc<Self>, chat_id: i64) {
        match LiveChat::start(self, chat_id).await {
            Ok(live) => {
                self.live.lock().await.insert(chat_id, live);
            }
            Err(error) => tracing::error!(chat = chat_id, %error, "could not start a chat"),
        }
    }

    /// Stops every chat: each finishes the message it is forwarding, then its sessions close.
    async fn stop_all(&self) {
        let chats: Vec<LiveChat> = self.live.lock().await.drain().map(|(_, live)| live).collect();
        futures_util::future::join_all(chats.into_iter().map(LiveChat::stop)).await;
    }

    /// Sends `text` to a chat, retrying for as long as Telegram cannot be reached (until the
    /// connector stops). A text Telegram refuses for good is not retried: it would hold up
    /// everything behind it.
    async fn deliver(&self, chat_id: i64, text: &str, delivery: Delivery) -> Delivered {
        let text = clipped(text);
        let mut failures = 0;
        loop {
            let mut request = self.bot.send_message(ChatId(chat_id), text.as_ref());
            if delivery.silent {
                request = request.disable_notification(true);
            }
            if let Some(reply_to) = delivery.reply_to {
                request = request.reply_parameters(ReplyParameters::new(reply_to).allow_sending_without_reply());
            }
            let wait = match request.send().await {
                Ok(sent) => return Delivered::Sent(sent.id),
                Err(RequestError::RetryAfter(wait)) => wait.duration(),
                Err(RequestError::Api(error)) => {
                    tracing::warn!(chat = chat_id, %error, "Telegram refused a message; skipping it");
                    return Delivered::Refused;
                }
                Err(RequestError::MigrateToChatId(new_id)) => {
                    tracing::warn!(chat = chat_id, new = new_id.0, "the chat moved; skipping the message");
                    return Delivered::Refused;
                }
                Err(error) => {
                    tracing::warn!(chat = chat_id, %error, "Telegram cannot be reached; the message waits");
                    failures += 1;
                    TELEGRAM_BACKOFF.ceiling(failures - 1)
                }
            };
            if !self.pause(wait).await {
                return Delivered::Stopped;
            }
        }
    }

    /// Long polling: each update is handled, then the offset moves past it; a stop request is
    /// honoured between updates.
    async fn poll_updates(self: Arc<Self>) {
        let mut failures = 0;
        while !self.is_stopping() {
            let offset = self.state.lock().expect("state lock").offset;
            let poll = self
                .bot
                .get_updates()
                .offset(offset)
                .timeout(POLL_TIMEOUT_S)
                .allowed_updates(vec![AllowedUpdate::Message])
                .send();
            let polled = tokio::select! {
                polled = poll => polled,
                _ = self.stopped() => return,
            };
            let wait = match polled {
                Ok(updates) => {
                    failures = 0;
                    for update in updates {
                        if self.is_stopping() {
                            return;
                        }
                        if let UpdateKind::Message(message) = update.kind {
                            self.handle(&message).await;
                        }
                        let next = i32::try_from(update.id.0).unwrap_or(i32::MAX).saturating_add(1);
                        self.update_state(|state| state.offset = state.offset.max(next));
                    }
                    continue;
                }
                Err(RequestError::RetryAfter(wait)) => wait.duration(),
                Err(RequestError::Api(ApiError::TerminatedByOtherGetUpdates)) => {
                    tracing::error!(
                        "another program reads this bot's updates (a second connector, or a webhook is set); waiting"
                    );
                    TELEGRAM_BACKOFF.max
                }
                Err(error) => {
                    tracing::warn!(%error, "could not get updates from Telegram; trying again");
                    failures += 1;
                    TELEGRAM_BACKOFF.ceiling(failures - 1)
                }
            };
            if !self.pause(wait).await {
                return;
            }
        }
    }

    /// One message typed in a chat: a command or a text, and the answer.
    async fn handle(self: &Arc<Self>, message: &Message) {
        let chat_id = message.chat.id.0;
        let Some(typed) = message.text() else { return };
        // In a group every member could type the code, `/send` or `/disconnect` as the person.
        let answer = if !message.chat.is_private() {
            "claudemesh works in a private chat with this bot only: in a group, anyone in it could act as you."
                .to_owned()
        } else {
            self.command(chat_id, message, typed).await
        };
        self.deliver(chat_id, &answer, Delivery { reply_to: Some(message.id), ..Delivery::default() }).await;
    }

    async fn command(self: &Arc<Self>, chat_id: i64, message: &Message, typed: &str) -> String {
        match Input::parse(typed) {
            Input::Help => text::HELP.to_owned(),
            Input::Connect => self.begin_connect(chat_id),
            Input::Cancel => {
                let stage = self.stage(chat_id);
                if matches!(stage, Stage::AwaitingEmail | Stage::AwaitingCode { .. }) {
                    self.set_stage(chat_id, Stage::SignedOut);
                    "Signing in was cancelled.".to_owned()
                } else {
                    "Nothing to cancel.".to_owned()
                }
            }
            Input::Disconnect => self.disconnect(chat_id).await,
            Input::Meshes => self.meshes(chat_id),
            Input::Peers(mesh) => self.peers(chat_id, mesh).await,
            Input::Mute(mesh) => self.mute(chat_id, mesh, true),
            Input::Unmute(mesh) => self.mute(chat_id, mesh, false),
            Input::Send { to, text } => self.send(chat_id, to, text).await,
            Input::Usage(usage) => format!("Usage: {usage}"),
            Input::Unknown(command) => format!("/{command} is not a command here; /help lists them."),
            Input::Text(typed) => self.text(chat_id, message, typed).await,
        }
    }

    fn begin_connect(&self, chat_id: i64) -> String {
        if self.stage(chat_id) == Stage::Connected {
            return "This chat is already connected; /disconnect first to sign in to another account.".to_owned();
        }
        self.set_stage(chat_id, Stage::AwaitingEmail);
        format!("Send the email address of your claudemesh account on {}.", self.broker_url)
    }

    /// A text that is not a command: what it means depends on where the chat stands.
    async fn text(self: &Arc<Self>, chat_id: i64, message: &Message, typed: &str) -> String {
        match self.stage(chat_id) {
            Stage::SignedOut => {
                "Type /connect to sign this chat in with your email address; /help lists commands.".into()
            }
            Stage::AwaitingEmail if !self.may_ask_for_code(chat_id) => {
                "This chat asked for codes too often; wait ten minutes, then send the address again.".into()
            }
            Stage::AwaitingEmail => match account::request_email_code(&self.broker_url, typed).await {
                Ok(said) => {
                    self.asked_for_code(chat_id);
                    self.set_stage(chat_id, Stage::AwaitingCode { email: typed.to_owned() });
                    format!("The broker says: {said}.\nSend the six digits here (or /cancel).")
                }
                Err(error) => format!("{}\nSend the address again, or /cancel.", explain(&error)),
            },
            Stage::AwaitingCode { email } if text::is_code(typed) => {
                self.finish_connect(chat_id, message, &email, typed).await
            }
            Stage::AwaitingCode { .. } => {
                "Send the six digits from the email, /connect for a new code, or /cancel.".into()
            }
            Stage::Connected => match message.reply_to_message() {
                Some(original) => self.answer(chat_id, original.id, typed).await,
                None => "Reply to a message to answer its sender, or /send NAME text.".into(),
            },
        }
    }

    /// The code was right: this chat becomes a device of the account, enrols into its meshes
    /// and starts receiving.
    async fn finish_connect(self: &Arc<Self>, chat_id: i64, message: &Message, email: &str, code: &str) -> String {
        let config_dir = self.chat_dir(chat_id);
        let signed_in = async {
            config_dir.ensure()?;
            let keystore = open_keystore(&config_dir).await?;
            let confirm_key = account::confirm_key(&keystore).await?;
            let device = broker_core::protocol::account::DeviceCodeRequest {
                hostname: device_name(message),
                platform: "telegram".to_owned(),
                ..account::this_device(&confirm_key)
            };
            let token = account::verify_email_code(&self.broker_url, email.trim(), code.trim(), device).await?;
            account::finish_sign_in(&config_dir, &keystore, &self.broker_url, token, None, &member_name(message)).await
        }
        .await;
        let signed_in = match signed_in {
            Ok(signed_in) => signed_in,
            Err(error) => return format!("{}.\nTry again, or /connect for a new code.", explain(&error)),
        };
        self.set_stage(chat_id, Stage::Connected);
        let mut answer = format!("Signed in to the account {} as a new device.", signed_in.account.account_name);
        match LiveChat::start(self, chat_id).await {
            Ok(live) => {
                let slugs: Vec<&str> = signed_in.enrolled.iter().map(|m| m.slug.as_str()).collect();
                if slugs.is_empty() {
                    answer.push_str("\nThe account has no meshes yet.");
                } else {
                    answer.push_str(&format!(
                        "\nMeshes: {}. Messages to you arrive here; reply to answer.",
                        slugs.join(", ")
                    ));
                }
                self.live.lock().await.insert(chat_id, live);
            }
            Err(error) => answer.push_str(&format!("\nBut its meshes could not start: {error}")),
        }
        for (slug, reason) in &signed_in.enrol_failures {
            answer.push_str(&format!("\nCould not enrol into {slug}: {reason}"));
        }
        answer
    }

    /// `/disconnect`: the chat's device is revoked at the broker, and everything of it here
    /// deleted.
    async fn disconnect(self: &Arc<Self>, chat_id: i64) -> String {
        if self.stage(chat_id) != Stage::Connected {
            self.set_stage(chat_id, Stage::SignedOut);
            return "This chat is not connected.".to_owned();
        }
        // The chat stops first, so the revocation it is about to cause is not news to it.
        let live = self.live.lock().await.remove(&chat_id);
        if let Some(live) = live {
            live.stop().await;
        }
        let config_dir = self.chat_dir(chat_id);
        let signed_out = async {
            let keystore = open_keystore(&config_dir).await?;
            account::sign_out(&config_dir, &keystore).await
        }
        .await;
        match signed_out {
            // Signed out elsewhere already: what is left is forgetting it here.
            Ok(_) | Err(AccountError::NotSignedIn) => {}
            Err(error) => {
                self.resume_chat(chat_id).await;
                return format!("Could not sign out: {}\nTry /disconnect again.", explain(&error));
            }
        }
        if let Err(error) = std::fs::remove_dir_all(config_dir.root()) {
            tracing::warn!(chat = chat_id, %error, "could not delete the chat's directory");
        }
        self.update_state(|state| state.chats.remove(&chat_id));
        "This chat is signed out and its device revoked. /connect signs it in again.".to_owned()
    }

    fn meshes(&self, chat_id: i64) -> String {
        let Some(config) = self.connected_config(chat_id) else { return not_connected() };
        if config.meshes.is_empty() {
            return "This chat is in no mesh yet.".to_owned();
        }
        config
            .meshes
            .iter()
            .map(|m| {
                let muted = if self.is_muted(chat_id, &m.mesh_id) { " (muted)" } else { "" };
                format!("{} — {}, as {}{muted}", m.slug, m.name, m.display_name)
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn connected_config(&self, chat_id: i64) -> Option<crate::config::Config> {
        if self.stage(chat_id) != Stage::Connected {
            return None;
        }
        self.chat_dir(chat_id).load().ok()
    }

    async fn peers(&self, chat_id: i64, mesh: Option<&str>) -> String {
        let supervisor = match self.supervisor(chat_id).await {
            Ok(supervisor) => supervisor,
            Err(answer) => return answer,
        };
        match supervisor.list_peers(mesh).await {
            Ok(rows) => text::peers(&rows, supervisor.peers_left_out(mesh)),
            Err(error) => error.to_string(),
        }
    }

    fn mute(&self, chat_id: i64, mesh: &str, mute: bool) -> String {
        let Some(config) = self.connected_config(chat_id) else { return not_connected() };
        let Some(entry) = config.find(mesh).cloned() else {
            let joined: Vec<&str> = config.meshes.iter().map(|m| m.slug.as_str()).collect();
            return format!("No mesh {mesh:?} here; this chat is in: {}", joined.join(", "));
        };
        self.update_state(|state| {
            let muted = &mut state.chat(chat_id).muted;
            if mute { muted.insert(entry.mesh_id.clone()) } else { muted.remove(&entry.mesh_id) }
        });
        if mute {
            format!("{} is muted: no join notices, and its messages arrive silently.", entry.slug)
        } else {
            format!("{} is no longer muted.", entry.slug)
        }
    }

    async fn send(&self, chat_id: i64, to: &str, typed: &str) -> String {
        let supervisor = match self.supervisor(chat_id).await {
            Ok(supervisor) => supervisor,
            Err(answer) => return answer,
        };
        let outcomes = supervisor.send(&[to.to_owned()], typed, Priority::Next).await;
        outcomes.iter().map(outcome_line).collect::<Vec<_>>().join("\n")
    }

    /// A reply in Telegram: to the peer the replied-to message came from.
    async fn answer(&self, chat_id: i64, original: MessageId, typed: &str) -> String {
        let to = self
            .state
            .lock()
            .expect("state lock")
            .chats
            .get(&chat_id)
            .and_then(|c| c.replies.get(&original.0).cloned());
        let Some(to) = to else {
            return "That message has no sender to answer; use /send NAME text.".to_owned();
        };
        let supervisor = match self.supervisor(chat_id).await {
            Ok(supervisor) => supervisor,
            Err(answer) => return answer,
        };
        let resolution = Resolution {
            mesh_id: to.mesh_id,
            slug: to.slug,
            target_spec: to.target_spec,
            label: to.name,
            offline: false,
        };
        outcome_line(&supervisor.send_resolved(resolution, typed, Priority::Next).await)
    }
}

fn outcome_line(outcome: &crate::mesh::SendOutcome) -> String {
    let to = outcome.recipient.as_deref().unwrap_or(&outcome.to);
    match (&outcome.error, &outcome.mesh) {
        (None, Some(mesh)) => format!("Sent to {to} · {mesh}."),
        (None, None) => format!("Sent to {to}."),
        (Some(error), _) => format!("Not sent to {to}: {error}"),
    }
}

fn not_connected() -> String {
    "This chat is not connected; /connect signs it in.".to_owned()
}

/// An account error as a chat should read it.
fn explain(error: &AccountError) -> String {
    match error {
        AccountError::Refused { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

async fn open_keystore(config_dir: &ConfigDir) -> Result<Arc<dyn KeyStore>, AccountError> {
    let config_dir = config_dir.clone();
    let store = keystore::blocking(move || keystore::open(&config_dir)).await?;
    Ok(Arc::from(store))
}

/// How the account's Devices list names this chat.
fn device_name(message: &Message) -> String {
    let chat = &message.chat;
    let name = match (chat.title(), chat.username()) {
        (Some(title), _) => title.to_owned(),
        (None, Some(username)) => format!("@{username}"),
        (None, None) => message.from.as_ref().map(|u| u.full_name()).unwrap_or_else(|| chat.id.to_string()),
    };
    format!("Telegram: {name}")
}

/// The name peers see for this chat's sessions.
fn member_name(message: &Message) -> String {
    let person = message.from.as_ref().map(|u| u.full_name()).filter(|n| !n.trim().is_empty());
    format!("{} on Telegram", person.unwrap_or_else(|| "someone".to_owned()))
}

/// Telegram's limit on one text (it counts UTF-16 code units), with what was cut said.
fn clipped(text: &str) -> std::borrow::Cow<'_, str> {
    if text.encode_utf16().count() <= MAX_TEXT_UNITS {
        return text.into();
    }
    let mut units = 0;
    let kept: String = text
        .chars()
        .take_while(|c| {
            units += c.len_utf16();
            units <= MAX_TEXT_UNITS
        })
        .collect();
    let cut = text.chars().count() - kept.chars().count();
    format!("{kept}\n… ({cut} more characters; read it in the claudemesh app)").into()
}

/// The directory the connector keeps its state in by default: `telegram/` in the claudemesh
/// config directory.
pub fn default_data_dir() -> Result<PathBuf, Failure> {
    Ok(ConfigDir::from_env()?.root().join("telegram"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_texts_are_clipped_to_what_telegram_takes_and_say_so() {
        assert_eq!(clipped("short"), "short");
        let long = "é".repeat(MAX_TEXT_UNITS + 10);
        let sent = clipped(&long);
        assert!(sent.starts_with(&"é".repeat(MAX_TEXT_UNITS)));
        assert!(sent.ends_with("(10 more characters; read it in the claudemesh app)"), "{sent}");
        // Telegram counts UTF-16 units: an emoji is two.
        let emoji = "🚀".repeat(MAX_TEXT_UNITS);
        let sent = clipped(&emoji);
        assert!(sent.encode_utf16().count() <= 4096, "{}", sent.encode_utf16().count());
        assert!(sent.ends_with(&format!("({} more characters; read it in the claudemesh app)", MAX_TEXT_UNITS / 2)));
    }
}
