//! Receiving on one mesh session: connection states and broker events to the observer, and
//! each inbound message committed to the [`Inbox`] first, acknowledged to the broker second and
//! handed to the front end third. A message that could not be stored is not acknowledged, so
//! the broker pushes it again after a reconnect.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use broker_core::client::{ClientEvent, InboundMessage, MeshKeyError};
use broker_core::protocol::{StateChanged, SystemEvent};
use tokio::sync::mpsc;

use super::members::LogPins;
use super::{LinkEvent, LinkState, MeshLink};
use crate::inbox::{Inbox, MessageKind, StoredMessage};

/// The link's event loop: connection state, and received messages into the inbox.
pub(super) async fn receive(
    link: Arc<MeshLink>,
    mut events: mpsc::Receiver<ClientEvent>,
    inbox: Arc<Inbox>,
    incoming: mpsc::Sender<StoredMessage>,
    observer: Option<mpsc::UnboundedSender<LinkEvent>>,
    pins: LogPins,
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
                spawn_key_refresh(&link, &pins, false);
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
            ClientEvent::System { event, created_at } => {
                tracing::debug!(mesh = %link.entry.slug, event = event.name(), "mesh event");
                if let SystemEvent::StateChanged(change) = &event {
                    if let Some(stored) = state_change(&link, change, &created_at).await
                        && let Some(stored) = store_notice(&inbox, stored, &link.channel).await
                    {
                        let _ = incoming.send(stored).await;
                    }
                    observe(LinkEvent::Presence { mesh_id: mesh_id.clone(), event });
                    continue;
                }
                if let Some(notice) = notice(&link, &event, &created_at)
                    && let Some(stored) = store_notice(&inbox, notice, &link.channel).await
                {
                    let _ = incoming.send(stored).await;
                }
                link.invalidate_peers();
                // Someone arrived (it may need keys) or left (it may have been removed).
                if matches!(event, SystemEvent::PeerJoined(_) | SystemEvent::PeerReturned(_) | SystemEvent::PeerLeft(_))
                {
                    spawn_key_refresh(&link, &pins, true);
                }
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

/// Refreshes the mesh's keys in the background: what an online member's client owes the mesh
/// (`MeshClient::refresh_mesh_keys`). Requests that arrive while one waits to start are one
/// refresh; after a peer event it waits up to a second first, so that of the members online
/// only the first wraps for a newcomer (the others find it wrapped). A mesh without a log, or a
/// member only vouched for, has nothing to do.
fn spawn_key_refresh(link: &Arc<MeshLink>, pins: &LogPins, jitter: bool) {
    if link.key_refresh_wanted.swap(true, Ordering::SeqCst) {
        return;
    }
    let (link, pins) = (link.clone(), pins.clone());
    tokio::spawn(async move {
        if jitter {
            let [a, b] = broker_core::crypto::random_bytes::<2>();
            tokio::time::sleep(Duration::from_millis(u64::from(u16::from_le_bytes([a, b])) % 1000)).await;
        }
        // From here on, a change starts another refresh after this one.
        link.key_refresh_wanted.store(false, Ordering::SeqCst);
        match link.refresh_keys(&pins).await.keys {
            Ok(status) => tracing::debug!(mesh = %link.entry.slug, epoch = ?status.epoch, made = ?status.made,
                                          wrapped = status.wrapped_for.len(), "mesh keys refreshed"),
            Err(MeshKeyError::NoLog | MeshKeyError::NotVerified) => {}
            Err(error) => tracing::warn!(mesh = %link.entry.slug, %error, "could not refresh the mesh's keys"),
        }
    });
}

/// What this member's sessions (and the people and models behind them) are told when the broker
/// holds or releases messages between it and a peer: a message from claudemesh itself.
fn notice(link: &MeshLink, event: &SystemEvent, created_at: &str) -> Option<StoredMessage> {
    let (hold, text) = match event {
        SystemEvent::PairHeld(hold) => {
            (hold, format!("{}. A person releases it with `claudemesh release` or in the claudemesh app.", hold.detail))
        }
        SystemEvent::PairReleased(hold) => {
            (hold, format!("Messages between {} and {} flow again.", hold.from_name, hold.to_name))
        }
        _ => return None,
    };
    let peer = hold.other_than(&link.entry.member_pubkey);
    // One copy per session: each session's model is told.
    let session = link.session_pubkey();
    let id =
        format!("notice_{}_{}_{}_{session}_{created_at}", event.name(), hold.from_member_pubkey, hold.to_member_pubkey);
    Some(StoredMessage {
        id,
        mesh_id: link.entry.mesh_id.clone(),
        mesh_slug: link.entry.slug.clone(),
        from: "claudemesh".to_owned(),
        from_pubkey: "system".to_owned(),
        from_member_pubkey: None,
        verified: false,
        priority: "now".to_owned(),
        kind: MessageKind::Notice,
        target: Some(peer.to_owned()),
        text: Some(text),
        error: None,
        sent_at: created_at.to_owned(),
        received_at: broker_core::protocol::now_ms(),
        receiving_session: session,
        read: false,
    })
}

/// A change of a shared-state entry this session follows, as a message from whoever made it:
/// it reaches the model like messages do (peers' content, never instructions).
async fn state_change(link: &MeshLink, change: &StateChanged, created_at: &str) -> Option<StoredMessage> {
    let watched = link.watched_change(change)?;
    let from = link.name_of(&watched.by, Some(&watched.by)).await;
    let text = match &watched.value {
        Some(value) => format!("shared state {:?} is now {value} (version {})", watched.name, watched.version),
        None => format!("shared state {:?} was removed (it was at version {})", watched.name, watched.version),
    };
    let session = link.session_pubkey();
    Some(StoredMessage {
        id: format!("state_{}_{}_{}_{session}", change.name, change.version, u8::from(watched.value.is_none())),
        mesh_id: link.entry.mesh_id.clone(),
        mesh_slug: link.entry.slug.clone(),
        from,
        from_pubkey: watched.by.clone(),
        from_member_pubkey: Some(watched.by),
        verified: true,
        priority: "next".to_owned(),
        kind: MessageKind::State,
        target: Some(watched.name),
        text: Some(text),
        error: None,
        sent_at: created_at.to_owned(),
        received_at: broker_core::protocol::now_ms(),
        receiving_session: session,
        read: false,
    })
}

/// Stores a notice; returns it when it is new to this inbox or still unread.
async fn store_notice(inbox: &Arc<Inbox>, notice: StoredMessage, channel: &str) -> Option<StoredMessage> {
    match keep(inbox, &notice, channel).await {
        Ok(tell) => tell.then_some(notice),
        Err(error) => {
            tracing::error!(%error, "could not store a notice");
            None
        }
    }
}

/// Writes `row` to the inbox (a copy already there is kept); whether the front end should be
/// told: the row is new, or still unread.
async fn keep(inbox: &Arc<Inbox>, row: &StoredMessage, channel: &str) -> Result<bool, String> {
    let (inbox, row, channel) = (inbox.clone(), row.clone(), channel.to_owned());
    crate::inbox::blocking(move || {
        let new = inbox.insert(&row, &channel)?;
        Ok(new || inbox.get(&row.id)?.is_some_and(|m| !m.read))
    })
    .await
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
    match keep(inbox, &stored, &link.channel).await {
        Ok(tell) => {
            // Only now may the broker forget it.
            if let Err(error) = link.client.acknowledge(vec![message.message_id]).await {
                tracing::warn!(mesh = %link.entry.slug, %error, "could not acknowledge; the broker will push it again");
            }
            tell.then_some(stored)
        }
        Err(error) => {
            tracing::error!(mesh = %link.entry.slug, %error, "could not store a message; not acknowledging it");
            None
        }
    }
}
