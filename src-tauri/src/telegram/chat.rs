//! A connected chat at work: one [`Supervisor`] over the chat's meshes, and two tasks.
//!
//! - The forwarder sends what the chat's inbox holds unread to Telegram, oldest first, and marks
//!   each message read only once Telegram accepted it. The mesh session acknowledges a message
//!   to the broker once it is in that inbox (on disk, owner-only), so a Telegram outage or a
//!   restart of the connector loses nothing and hands nothing on twice: the inbox is the queue.
//! - The presence task turns peer joins into notices (a storm of joins in one mesh is one
//!   notice and then one summary, as on the desktop), and tells the chat when a mesh refused
//!   its session for good (its device revoked, its member removed).

use std::sync::Arc;
use std::time::Duration;

use broker_core::protocol::SystemEvent;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;

use super::state::ReplyTo;
use super::{Connector, Delivered, Delivery, text};
use crate::config::MeshEntry;
use crate::inbox::{Inbox, StoredMessage};
use crate::joins::JoinStorms;
use crate::mesh::{LinkEvent, LinkState, SessionOptions, Supervisor};

/// Messages read from the inbox per round.
const FORWARD_BATCH: usize = 16;

/// How long a stopping chat waits for its forwarder to finish the message at hand.
const STOP_GRACE: Duration = Duration::from_secs(5);

pub(super) struct LiveChat {
    pub supervisor: Arc<Supervisor>,
    stop: watch::Sender<bool>,
    forwarder: JoinHandle<()>,
    tasks: Vec<JoinHandle<()>>,
}

/// A notice for the chat (not a mesh message): a join, a refused session.
struct Notice {
    text: String,
    /// A reply to the notice goes to this peer (the one who joined).
    reply_to: Option<ReplyTo>,
}

impl LiveChat {
    pub async fn start(connector: &Arc<Connector>, chat_id: i64) -> Result<LiveChat, String> {
        let config_dir = connector.chat_dir(chat_id);
        let config = config_dir.load().map_err(|e| e.to_string())?;
        let keystore = super::open_keystore(&config_dir).await.map_err(|e| e.to_string())?;
        let inbox_file = config_dir.inbox_file();
        let inbox = Arc::new(crate::inbox::blocking(move || Inbox::open(&inbox_file)).await?);
        let options = SessionOptions {
            display_name: None,
            peer_type: broker_core::protocol::PeerType::Human,
            channel: "telegram".to_owned(),
            model: None,
            session_id: None,
        };
        let (incoming, incoming_rx) = mpsc::channel(64);
        let (observer, observer_rx) = mpsc::unbounded_channel();
        let meshes = config.meshes.clone();
        let supervisor = Supervisor::start_observed(
            &config_dir,
            config.meshes,
            keystore,
            inbox.clone(),
            options,
            incoming,
            Some(observer),
        )
        .await;
        for (entry, error) in supervisor.failed() {
            tracing::error!(chat = chat_id, mesh = %entry.slug, %error, "a mesh of the chat could not start");
        }
        let (notices, notices_rx) = mpsc::unbounded_channel();
        let (stop, stopping) = watch::channel(false);
        let wake = Arc::new(Notify::new());
        let forwarder = Forwarder { connector: connector.clone(), chat_id, inbox, wake: wake.clone(), stopping };
        let tasks = vec![
            tokio::spawn(wake_on_arrival(incoming_rx, wake)),
            tokio::spawn(presence(connector.clone(), chat_id, meshes, observer_rx, notices)),
        ];
        let forwarder = tokio::spawn(forwarder.run(notices_rx));
        Ok(LiveChat { supervisor: Arc::new(supervisor), stop, forwarder, tasks })
    }

    /// Ends the chat: the forwarder finishes the message at hand (a few seconds at most), then
    /// the sessions close cleanly (the broker hears goodbye).
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let mut forwarder = self.forwarder;
        if tokio::time::timeout(STOP_GRACE, &mut forwarder).await.is_err() {
            forwarder.abort();
        }
        for task in &self.tasks {
            task.abort();
        }
        self.supervisor.shutdown().await;
    }
}

/// The sessions hand each stored message over on a bounded channel; this drains it at once,
/// so a slow Telegram never holds up their receiving (and acknowledging), and wakes the
/// forwarder, which reads the inbox itself.
async fn wake_on_arrival(mut incoming: mpsc::Receiver<StoredMessage>, wake: Arc<Notify>) {
    while incoming.recv().await.is_some() {
        wake.notify_one();
    }
}

/// Who a reply to a forwarded message goes to: the sender's member (every session of it).
fn reply_target(message: &StoredMessage) -> ReplyTo {
    ReplyTo {
        mesh_id: message.mesh_id.clone(),
        slug: message.mesh_slug.clone(),
        name: message.from.clone(),
        target_spec: message.from_member_pubkey.clone().unwrap_or_else(|| message.from_pubkey.clone()),
    }
}

/// Inbox → Telegram, until the chat stops.
struct Forwarder {
    connector: Arc<Connector>,
    chat_id: i64,
    inbox: Arc<Inbox>,
    wake: Arc<Notify>,
    stopping: watch::Receiver<bool>,
}

impl Forwarder {
    async fn run(mut self, mut notices: mpsc::UnboundedReceiver<Notice>) {
        while !*self.stopping.borrow() {
            let unread = {
                let inbox = self.inbox.clone();
                crate::inbox::blocking(move || inbox.oldest_unread(FORWARD_BATCH)).await
            };
            match unread {
                Ok(messages) if !messages.is_empty() => {
                    for message in messages {
                        if *self.stopping.borrow() || !self.forward(&message).await {
                            return;
                        }
                    }
                    continue;
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::error!(chat = self.chat_id, %error, "could not read the inbox; trying again");
                    tokio::time::sleep(super::TELEGRAM_BACKOFF.max).await;
                    continue;
                }
            }
            // Nothing unread: wait for a message (it is in the inbox by then) or a notice.
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = self.stopping.changed() => {}
                notice = notices.recv() => {
                    let Some(notice) = notice else { return };
                    let delivered = self.connector.deliver(self.chat_id, &notice.text, Delivery::default()).await;
                    if let (Delivered::Sent(sent), Some(to)) = (delivered, notice.reply_to) {
                        self.connector.remember_reply(self.chat_id, sent, to);
                    }
                }
            }
        }
    }

    /// Sends one message and marks it read once Telegram took it (or refused it for good).
    /// False when the connector stopped first: the message stays unread for the next start.
    async fn forward(&self, message: &StoredMessage) -> bool {
        let silent = self.connector.is_muted(self.chat_id, &message.mesh_id);
        let delivery = Delivery { silent, reply_to: None };
        match self.connector.deliver(self.chat_id, &text::message(message), delivery).await {
            Delivered::Sent(sent) => self.connector.remember_reply(self.chat_id, sent, reply_target(message)),
            Delivered::Refused => {}
            Delivered::Stopped => return false,
        }
        // Until it is marked, the next round would send it again: keep trying.
        loop {
            let (inbox, id, now) = (self.inbox.clone(), message.id.clone(), broker_core::protocol::now_ms());
            match crate::inbox::blocking(move || inbox.mark_read(&id, now)).await {
                Ok(()) => return true,
                Err(error) => {
                    tracing::error!(chat = self.chat_id, %error, "could not mark a forwarded message read; retrying");
                    tokio::time::sleep(super::TELEGRAM_BACKOFF.max).await;
                }
            }
        }
    }
}

/// Presence events → notices, until the chat stops.
async fn presence(
    connector: Arc<Connector>,
    chat_id: i64,
    meshes: Vec<MeshEntry>,
    mut events: mpsc::UnboundedReceiver<LinkEvent>,
    notices: mpsc::UnboundedSender<Notice>,
) {
    let mut storms = JoinStorms::default();
    let mesh = |mesh_id: &str| meshes.iter().find(|m| m.mesh_id == mesh_id);
    loop {
        let storm_end = storms.next_end();
        let event = tokio::select! {
            event = events.recv() => match event {
                Some(event) => event,
                None => return,
            },
            _ = async { tokio::time::sleep_until(storm_end.expect("guarded")).await }, if storm_end.is_some() => {
                for storm in storms.end(tokio::time::Instant::now()) {
                    // The first join was told when it happened; the rest are summed up.
                    let Some(later) = storm.after_first() else { continue };
                    if connector.is_muted(chat_id, &storm.mesh_id) {
                        continue;
                    }
                    let text = format!("{} more joined {}: {}", later.names.len(), later.mesh_name, later.names_line());
                    let _ = notices.send(Notice { text, reply_to: None });
                }
                continue;
            }
        };
        match event {
            LinkEvent::Presence {
                mesh_id,
                event: event @ (SystemEvent::PeerJoined(_) | SystemEvent::PeerReturned(_)),
            } => {
                let (Some(entry), Some((name, _, member_pubkey))) = (mesh(&mesh_id), event.peer()) else { continue };
                if member_pubkey == entry.member_pubkey || connector.is_muted(chat_id, &mesh_id) {
                    continue;
                }
                if storms.join(&mesh_id, &entry.slug, name, tokio::time::Instant::now()) {
                    let reply_to = ReplyTo {
                        mesh_id: mesh_id.clone(),
                        slug: entry.slug.clone(),
                        name: name.to_owned(),
                        target_spec: member_pubkey.to_owned(),
                    };
                    let text = format!("{name} joined {} (reply to say hello)", entry.slug);
                    let _ = notices.send(Notice { text, reply_to: Some(reply_to) });
                }
            }
            LinkEvent::State { mesh_id, state: LinkState::Failed(reason) } => {
                let slug = mesh(&mesh_id).map_or(mesh_id.as_str(), |m| m.slug.as_str());
                let text = format!(
                    "{slug}: the broker refused this chat's session ({reason}). /disconnect, then /connect, signs it in again."
                );
                let _ = notices.send(Notice { text, reply_to: None });
            }
            _ => {}
        }
    }
}
