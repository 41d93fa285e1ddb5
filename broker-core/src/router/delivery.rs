//! Delivery: committed entries into the recipients' member queues, pushes within each
//! session's window and the recipient's status gating, acknowledgements, receipts, backlog
//! loads from the store, and broker events.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::state::{Departed, MemberEntry, MeshShard, MeshState, RemoteSession, Session, SessionHandle, peer_info};
use super::{Entry, Lane, LoadRequest, MemberQueue, Router, WindowLimits, frame_text};
use crate::protocol::{self, Capabilities, Capability, Enc, PeerInfo, Priority, PushRef, ServerFrame, SystemEvent};
use crate::store::{Delivery, Envelope, QueueSlot, QueuedEntry, WriteOp, WriteOutcome};

impl Router {
    /// Sends a broker event to every session of the mesh except those of `except_member`.
    pub(super) fn broadcast_event(&self, state: &MeshState, except_member: &str, event: &SystemEvent) {
        self.push_event(state, event, |session| session.member_id != except_member);
    }

    /// A session's profile (status, summary, groups, stats) changed: the other replicas and
    /// every other session here that follows peers (`peer_updates`) hear it.
    pub(super) fn profile_changed(&self, state: &MeshState, session_id: u64) {
        let Some(session) = state.sessions.get(&session_id) else { return };
        self.announce_session(state, session_id, None);
        self.push_peer_updated(state, peer_info(session), Some(session_id));
    }

    /// `peer_updated` to the sessions that asked for it, but `except`.
    pub(super) fn push_peer_updated(&self, state: &MeshState, peer: PeerInfo, except: Option<u64>) {
        let event = SystemEvent::PeerUpdated(peer);
        self.push_event(state, &event, |s| s.caps.has(Capability::PeerUpdates) && Some(s.id) != except);
    }

    /// Pushes a broker event to the sessions `to` picks.
    pub(super) fn push_event(&self, state: &MeshState, event: &SystemEvent, to: impl Fn(&Session) -> bool) {
        let data = event.data();
        let message_id = crate::ids::new_id("sys");
        let created_at = protocol::iso8601_ms(protocol::now_ms());
        let mut frames: [Option<String>; 2] = [None, None];
        for session in state.sessions.values().filter(|s| to(s)) {
            let frame = frames[usize::from(session.caps.has(Capability::Enc))].get_or_insert_with(|| {
                serde_json::to_string(&PushRef {
                    frame_type: PushRef::TYPE,
                    message_id: &message_id,
                    mesh_id: &state.mesh.id,
                    sender_pubkey: "system",
                    sender_member_pubkey: None,
                    sender_session_sig: None,
                    priority: Priority::Low,
                    nonce: "",
                    ciphertext: "",
                    created_at: &created_at,
                    subtype: Some(protocol::SYSTEM_SUBTYPE),
                    event: Some(event.name()),
                    event_data: Some(&data),
                    enc: session.caps.has(Capability::Enc).then_some(Enc::System),
                    key: None,
                    target_spec: None,
                })
                .expect("push serializes")
            });
            self.send_to(session, frame.clone());
        }
    }

    /// Puts committed entries into their recipients' queues and pushes what may go out now.
    /// Runs on the store's writer thread, in commit order.
    pub(super) fn route(
        self: &Arc<Self>,
        shard: &Arc<MeshShard>,
        envelope: &Arc<Envelope>,
        deliveries: impl Iterator<Item = (Delivery, QueueSlot)>,
    ) {
        let mut guard = shard.state.lock().expect("mesh lock");
        let state = &mut *guard;
        for (delivery, slot) in deliveries {
            let keep = self.holds(&state.by_routing_key, &state.departed, delivery.session_pubkey.as_deref());
            let Some(member) = state.members.get_mut(&delivery.member_id) else { continue };
            let Some(queue) = member.queue.as_mut() else { continue };
            let entry = Entry {
                envelope: envelope.clone(),
                session: delivery.session_pubkey,
                exclude: delivery.exclude_session,
                key: delivery.key,
                pushed_to: Vec::new(),
            };
            queue.offer(slot, entry, keep);
            self.pump_member(state, &delivery.member_id);
        }
    }

    /// Whether this process holds an entry for `session` (`None`: for any session of its
    /// member). With other processes on the store, an entry for one session is held where that
    /// session is connected, or where it left from while its mail waits for it.
    pub(super) fn holds(
        &self,
        by_routing_key: &HashMap<String, u64>,
        departed: &HashMap<String, Departed>,
        session: Option<&str>,
    ) -> bool {
        !self.shared_store
            || session
                .is_none_or(|key| by_routing_key.contains_key(key) || departed.get(key).is_some_and(|d| !d.released))
    }

    /// Forgets what this process holds of `member_id`'s queue and reads it again from the store:
    /// entries held elsewhere may have become this process's (a session arrived, or another
    /// process released a departed session's mail), or notices were missed. Entries pushed
    /// before are pushed again; clients drop what they already have.
    pub(super) fn reload_queue(&self, state: &mut MeshState, member_id: &str) {
        let Some(member) = state.members.get_mut(member_id) else { return };
        if member.queue.is_none() {
            return;
        }
        member.queue = Some(self.new_queue());
        for id in &member.sessions {
            if let Some(session) = state.sessions.get_mut(id) {
                session.inflight = 0;
                session.scan_from = [0, 0];
            }
        }
        self.pump_member(state, member_id);
    }

    /// An empty queue for a member that came online: everything may be in the store.
    pub(super) fn new_queue(&self) -> MemberQueue {
        let generation = self.next_session_id.fetch_add(1, Ordering::Relaxed);
        let limits = WindowLimits { entries: self.config.member_window, bytes: self.config.member_window_bytes };
        MemberQueue::new_spilled(limits, generation)
    }

    /// Loads a page of a member's backlog from the store, then pushes from it.
    pub(super) fn spawn_load(&self, mesh_id: String, member_id: String, request: LoadRequest) {
        let Some(router) = self.me.upgrade() else { return };
        self.runtime.spawn(async move {
            let id = member_id.clone();
            let urgent = request.lane == Lane::Urgent;
            let rows = router
                .blocking(move |store| store.pending_for_member(&id, urgent, request.after_seq, request.limit))
                .await;
            let rows: Option<Vec<QueuedEntry>> = match rows {
                Ok(rows) => Some(rows),
                Err(error) => {
                    tracing::error!(%error, "loading a member's queue failed; will retry");
                    None
                }
            };
            if rows.is_none() {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            let Some(shard) = router.loaded_shard(&mesh_id) else { return };
            let mut guard = shard.state.lock().expect("mesh lock");
            let MeshState { members, by_routing_key, departed, .. } = &mut *guard;
            let Some(queue) = members.get_mut(&member_id).and_then(|m| m.queue.as_mut()) else { return };
            queue.finish_load(request, rows, |entry| router.holds(by_routing_key, departed, entry.session.as_deref()));
            // Pushes what arrived, and starts the next page (or the retry of a failed one).
            router.pump_member(&mut guard, &member_id);
        });
    }

    /// Pushes whatever each session of `member_id` may receive now.
    pub(super) fn pump_member(&self, state: &mut MeshState, member_id: &str) {
        let MeshState { members, sessions, mesh, by_routing_key, remote, .. } = state;
        let Some(member) = members.get_mut(member_id) else { return };
        let Some(queue) = member.queue.as_mut() else { return };
        let mut delivered_on_write = Vec::new();
        for session_id in &member.sessions {
            let Some(session) = sessions.get_mut(session_id) else { continue };
            let lanes: &[Lane] = if Priority::Next.deliverable_to(session.status.status) {
                &[Lane::Urgent, Lane::Normal]
            } else {
                &[Lane::Urgent]
            };
            for lane in lanes {
                let index = lane.index();
                let start = session.scan_from[index];
                for (seq, entry) in queue.lane_mut(*lane).range_mut(start..) {
                    if session.inflight >= self.config.delivery_window || session.outbox.is_closing() {
                        break;
                    }
                    session.scan_from[index] = seq + 1;
                    if !entry.eligible_for(&session.routing_key) || entry.pushed_to.contains(&session.id) {
                        continue;
                    }
                    let frame = push_frame(&mesh.id, entry, session.caps);
                    self.send_to(session, frame);
                    entry.pushed_to.push(session.id);
                    session.inflight += 1;
                    if !session.caps.has(Capability::DeliveryAck) {
                        delivered_on_write.push(entry.envelope.message_id.clone());
                    }
                }
            }
        }
        if !delivered_on_write.is_empty() {
            let removed = remove_acknowledged(members, sessions, member_id, &delivered_on_write);
            let recipient = members.get(member_id).map(|m| m.record.pubkey.as_str()).unwrap_or_default();
            let senders = Senders { mesh_id: &mesh.id, sessions, by_routing_key, remote };
            let seqs = self.send_receipts(&senders, member_id, recipient, removed);
            self.persist_acknowledged(member_id, seqs);
        }
        // The window drained (or the member just came online): fetch what waits in the store.
        if let Some(queue) = members.get_mut(member_id).and_then(|m| m.queue.as_mut()) {
            for request in queue.start_loads() {
                self.spawn_load(mesh.id.clone(), member_id.to_owned(), request);
            }
        }
    }

    /// A client acknowledged pushes: drop them from its member's queue, then push more.
    pub(super) fn acknowledge(&self, session: &SessionHandle, message_ids: &[String]) {
        let mut guard = session.shard.state.lock().expect("mesh lock");
        let state = &mut *guard;
        let removed = remove_acknowledged(&mut state.members, &mut state.sessions, &session.member_id, message_ids);
        if removed.is_empty() {
            return;
        }
        let recipient = state.members.get(&session.member_id).map(|m| m.record.pubkey.as_str()).unwrap_or_default();
        let senders = Senders {
            mesh_id: &state.mesh.id,
            sessions: &state.sessions,
            by_routing_key: &state.by_routing_key,
            remote: &state.remote,
        };
        let seqs = self.send_receipts(&senders, &session.member_id, recipient, removed);
        self.persist_acknowledged(&session.member_id, seqs);
        self.pump_member(state, &session.member_id);
    }

    /// Tells the session that sent each removed message (when it is connected, here or on
    /// another replica, and asked for receipts) that `member_id` stored it; a member's copies of
    /// its own messages get none. Returns the removed entries' sequence numbers.
    pub(super) fn send_receipts(
        &self,
        senders: &Senders<'_>,
        member_id: &str,
        member_pubkey: &str,
        removed: Vec<(u64, Arc<Envelope>)>,
    ) -> Vec<u64> {
        // Formatted only when some sender asked for receipts (most sessions do not).
        let mut delivered_at: Option<String> = None;
        let mut seqs = Vec::with_capacity(removed.len());
        for (seq, envelope) in removed {
            seqs.push(seq);
            if envelope.sender_member_id == member_id {
                continue;
            }
            let here = senders.by_routing_key.get(&envelope.sender_pubkey).and_then(|id| senders.sessions.get(id));
            let wants = match here {
                Some(sender) => sender.caps.has(Capability::DeliveryReceipt),
                None => senders.remote.get(&envelope.sender_pubkey).is_some_and(|r| r.wants_receipts),
            };
            if !wants {
                continue;
            }
            let delivered_at = delivered_at.get_or_insert_with(|| protocol::iso8601_ms(protocol::now_ms()));
            let receipt = protocol::Receipt {
                message_id: envelope.message_id.clone(),
                member_pubkey: member_pubkey.to_owned(),
                delivered_at: delivered_at.clone(),
            };
            match here {
                Some(sender) => self.send_to(sender, frame_text(&ServerFrame::Receipt(receipt))),
                None => self.forward_receipt(senders.mesh_id, &envelope.sender_pubkey, receipt),
            }
        }
        seqs
    }

    pub(super) fn persist_acknowledged(&self, member_id: &str, seqs: Vec<u64>) {
        if seqs.is_empty() {
            return;
        }
        let metrics = self.metrics.clone();
        self.store.submit(
            WriteOp::Acknowledge(seqs.into_iter().map(|seq| (member_id.to_owned(), seq)).collect()),
            Some(Box::new(move |result| {
                if let Ok(WriteOutcome::Changed(n)) = result {
                    metrics.messages_delivered_total.fetch_add(n, Ordering::Relaxed);
                    let _ = metrics
                        .queue_depth
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |d| Some(d.saturating_sub(n)));
                }
            })),
        );
    }

    /// Session-only entries of `session_key` become deliverable to any session of the member.
    pub(super) fn release_session(&self, state: &mut MeshState, member_id: &str, session_key: &str) {
        self.store.submit(
            WriteOp::ReleaseSession {
                mesh_id: state.mesh.id.clone(),
                member_id: member_id.to_owned(),
                session_pubkey: session_key.to_owned(),
            },
            None,
        );
        let released = state
            .members
            .get_mut(member_id)
            .and_then(|m| m.queue.as_mut())
            .is_some_and(|q| q.release_session(session_key));
        if released {
            let sessions: Vec<u64> = state.members.get(member_id).map(|m| m.sessions.clone()).unwrap_or_default();
            for id in sessions {
                if let Some(s) = state.sessions.get_mut(&id) {
                    s.scan_from = [0, 0];
                }
            }
            self.pump_member(state, member_id);
        }
    }
}

/// Where the senders of acknowledged messages are: this replica's sessions, and the others'.
pub(super) struct Senders<'a> {
    pub(super) mesh_id: &'a str,
    pub(super) sessions: &'a HashMap<u64, Session>,
    pub(super) by_routing_key: &'a HashMap<String, u64>,
    pub(super) remote: &'a HashMap<String, RemoteSession>,
}

/// Removes acknowledged entries of `member_id`; frees the window of every session that had
/// them. Returns their sequence numbers and envelopes.
fn remove_acknowledged(
    members: &mut HashMap<String, MemberEntry>,
    sessions: &mut HashMap<u64, Session>,
    member_id: &str,
    message_ids: &[String],
) -> Vec<(u64, Arc<Envelope>)> {
    let Some(queue) = members.get_mut(member_id).and_then(|m| m.queue.as_mut()) else { return Vec::new() };
    let mut removed = Vec::new();
    for message_id in message_ids {
        if let Some((seq, entry)) = queue.remove(message_id) {
            for session_id in entry.pushed_to {
                if let Some(session) = sessions.get_mut(&session_id) {
                    session.inflight = session.inflight.saturating_sub(1);
                }
            }
            removed.push((seq, entry.envelope));
        }
    }
    removed
}

fn push_frame(mesh_id: &str, entry: &Entry, caps: Capabilities) -> String {
    let envelope = &entry.envelope;
    let created_at = protocol::iso8601_ms(envelope.created_at);
    serde_json::to_string(&PushRef {
        frame_type: PushRef::TYPE,
        message_id: &envelope.message_id,
        mesh_id,
        sender_pubkey: &envelope.sender_pubkey,
        sender_member_pubkey: Some(&envelope.sender_member_pubkey),
        sender_session_sig: envelope.sender_session_sig.as_deref(),
        priority: envelope.priority,
        nonce: &envelope.nonce,
        ciphertext: &envelope.ciphertext,
        created_at: &created_at,
        subtype: None,
        event: None,
        event_data: None,
        enc: caps.has(Capability::Enc).then_some(envelope.enc),
        key: entry.key.as_ref(),
        target_spec: Some(&envelope.target_spec),
    })
    .expect("push serializes")
}
