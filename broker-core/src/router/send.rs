//! `send`: size, envelope shape, rate limit, resolution and grants under the mesh lock, then
//! the store commits the queue entries and the completion acknowledges the sender and routes.
//! A `schedule` passes the same checks and is stored for later instead (`schedules`).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde_json::json;
use tokio::time::Instant;

use super::Router;
use super::resolve::{Resolution, check_envelope, cover_with_keys, grant_cap_for, resolve_target};
use super::schedules::Later;
use super::state::{MeshShard, SessionHandle};
use crate::protocol::{self, Ack, Capability, SendRejection, ServerFrame, Target};
use crate::store::{AuditEvent, Delivery, Envelope, NewMessage, StoreError, WriteOp, WriteOutcome};

impl Router {
    /// Checks and queues a message now, or, with `later`, stores it as a schedule.
    pub(super) async fn send(self: &Arc<Self>, session: &SessionHandle, send: protocol::Send, later: Option<Later>) {
        let reject = |reason: SendRejection, detail: String| {
            self.metrics.message_rejected(reason);
            let ack = refused_ack(session, send.id.clone(), send.req_id.clone(), reason, &detail);
            self.reply(session, ServerFrame::Ack(ack));
        };
        let size = send.nonce.len() + send.ciphertext.len() + send.target_spec.len();
        if size > self.config.max_message_bytes {
            return reject(
                SendRejection::TooLarge,
                format!("payload too large: {size} bytes > MAX_MESSAGE_BYTES={}", self.config.max_message_bytes),
            );
        }
        let enc = send.enc.unwrap_or_default();
        if let Err(problem) = check_envelope(enc, &send.keys) {
            return reject(SendRejection::Malformed, problem.to_owned());
        }
        let Some(target) = Target::parse(&send.target_spec) else {
            return reject(
                SendRejection::UnknownRecipient,
                "targetSpec must be a 64-hex member or session key, @group or *".to_owned(),
            );
        };
        let mut charged = false;
        let mut looked_up = false;
        let (deliveries, uncovered, (sender_member_pubkey, sender_pubkey, sender_session_sig), dropped) = loop {
            let outcome = {
                let mut guard = session.shard.state.lock().expect("mesh lock");
                let state = &mut *guard;
                if !charged {
                    charged = true;
                    let limit = self.config.rate_limit;
                    if let Some(member) = state.members.get_mut(&session.member_id)
                        && !member.bucket.try_take(limit, Instant::now())
                    {
                        let wait = member.bucket.retry_after(limit);
                        drop(guard);
                        return reject(
                            SendRejection::RateLimit,
                            format!(
                                "max {} msg/min (burst {}) — slow down; next send possible in {} ms",
                                limit.per_minute,
                                limit.burst,
                                wait.as_millis()
                            ),
                        );
                    }
                }
                let Some(sender) = state.sessions.get(&session.session_id) else { return };
                let resolution = match target {
                    // A reminder to oneself reaches every session of the member, this one too.
                    Target::Key(key) if later.is_some() && key == sender.member_pubkey => {
                        Resolution::Deliveries(vec![Delivery {
                            member_id: sender.member_id.clone(),
                            session_pubkey: None,
                            exclude_session: None,
                            key: None,
                        }])
                    }
                    _ => resolve_target(state, sender, &target),
                };
                (resolution, (sender.member_pubkey.clone(), sender.routing_key.clone(), sender.session_sig.clone()))
            };
            match outcome {
                (Resolution::Deliveries(deliveries), sender_keys) => {
                    let cap = grant_cap_for(&target);
                    let (deliveries, dropped) = self.apply_grants(&session.shard, deliveries, &sender_keys.0, cap);
                    if deliveries.is_empty() && matches!(target, Target::Key(_)) {
                        let drops = message_audit(session, "", &send, 0, cap, &dropped).split_off(1);
                        self.store.submit(WriteOp::Audit(drops), None);
                        return reject(
                            SendRejection::Blocked,
                            "the recipient does not accept direct messages from you".into(),
                        );
                    }
                    // A direct message to another member counts toward their pair's budget.
                    if let (Target::Key(_), [only]) = (&target, deliveries.as_slice())
                        && only.member_id != session.member_id
                        && let Err(detail) = self.check_pair(session, &only.member_id)
                    {
                        return reject(SendRejection::Held, detail);
                    }
                    let (deliveries, uncovered) = match cover_with_keys(
                        deliveries,
                        enc,
                        &send.keys,
                        &session.shard.state.lock().expect("mesh lock"),
                    ) {
                        Ok(covered) => covered,
                        Err((reason, detail)) => return reject(reason, detail),
                    };
                    break (deliveries, uncovered, sender_keys, dropped);
                }
                (Resolution::Rejected(reason, detail), _) => return reject(reason, detail),
                (Resolution::UnknownKey(key), _) => {
                    if looked_up {
                        return reject(
                            SendRejection::UnknownRecipient,
                            "no member or connected session of this mesh has that key".to_owned(),
                        );
                    }
                    looked_up = true;
                    match self.learn_member(&session.shard, &key).await {
                        Ok(_) => continue,
                        Err(error) => {
                            tracing::error!(%error, "member lookup failed");
                            return reject(
                                SendRejection::Unavailable,
                                "the broker could not look up the recipient; retry".to_owned(),
                            );
                        }
                    }
                }
            }
        };

        if let Some(later) = later {
            if deliveries.is_empty() {
                return reject(SendRejection::Blocked, "no recipient accepts messages from you".into());
            }
            let sealed = (enc, sender_member_pubkey, sender_pubkey, sender_session_sig);
            return self.store_schedule(session, send, sealed, later, deliveries, uncovered).await;
        }
        let message_id = crate::ids::new_id("msg");
        let audit = message_audit(session, &message_id, &send, deliveries.len(), grant_cap_for(&target), &dropped);
        if deliveries.is_empty() {
            // Every recipient's grants refused it: dropped silently, like each copy of a multicast.
            self.store.submit(WriteOp::Audit(audit), None);
            let ack = Ack {
                id: send.id,
                message_id,
                queued: true,
                recipients: Some(0),
                req_id: send.req_id,
                ..Ack::default()
            };
            return self.reply(session, ServerFrame::Ack(ack));
        }
        let Ok(permit) = self.uncommitted.clone().acquire_owned().await else { return };
        let envelope = Arc::new(Envelope {
            message_id,
            mesh_id: session.shard.mesh_id.clone(),
            sender_member_id: session.member_id.clone(),
            sender_member_pubkey,
            sender_pubkey,
            sender_session_sig,
            target_spec: send.target_spec,
            priority: send.priority,
            enc,
            nonce: send.nonce,
            ciphertext: send.ciphertext,
            created_at: protocol::now_ms(),
            tracked: send.track,
        });
        let router = self.clone();
        let handle = session.clone();
        let (ack_id, req_id) = (send.id, send.req_id);
        let routed = deliveries.clone();
        let routed_envelope = envelope.clone();
        self.store.submit(
            WriteOp::Enqueue(NewMessage { envelope, deliveries, audit, fire: None }),
            Some(Box::new(move |result| {
                drop(permit);
                let error = match result {
                    Ok(WriteOutcome::Enqueued(slots)) => {
                        tracing::debug!(
                            message = %routed_envelope.message_id,
                            mesh = %routed_envelope.mesh_id,
                            recipients = slots.len(),
                            bytes = routed_envelope.ciphertext.len(),
                            "message queued"
                        );
                        router.metrics.message_routed(routed_envelope.priority);
                        router.metrics.queue_depth.fetch_add(slots.len() as u64, Ordering::Relaxed);
                        let ack = Ack {
                            id: ack_id,
                            message_id: routed_envelope.message_id.clone(),
                            queued: true,
                            recipients: Some(slots.len() as u32),
                            uncovered,
                            req_id,
                            ..Ack::default()
                        };
                        router.reply(&handle, ServerFrame::Ack(ack));
                        router.route(&handle.shard, &routed_envelope, routed.into_iter().zip(slots));
                        return;
                    }
                    Ok(other) => StoreError::Database(format!("unexpected store outcome {other:?}")),
                    Err(error) => error,
                };
                tracing::error!(%error, "storing a message failed");
                router.metrics.message_rejected(SendRejection::Unavailable);
                let detail = "the broker could not store the message; nothing was sent, retry";
                let ack = refused_ack(&handle, ack_id, req_id, SendRejection::Unavailable, detail);
                router.reply(&handle, ServerFrame::Ack(ack));
            })),
        );
    }

    /// Drops the deliveries whose recipient's grants deny the sender `cap`; returns the kept ones
    /// and the member ids dropped (counted in metrics).
    pub(super) fn apply_grants(
        &self,
        shard: &MeshShard,
        deliveries: Vec<Delivery>,
        sender_member_pubkey: &str,
        cap: &'static str,
    ) -> (Vec<Delivery>, Vec<String>) {
        let state = shard.state.lock().expect("mesh lock");
        let sender_member = state.by_pubkey.get(sender_member_pubkey);
        let (kept, dropped): (Vec<Delivery>, Vec<Delivery>) = deliveries.into_iter().partition(|d| {
            Some(&d.member_id) == sender_member || state.grants.allows(&d.member_id, sender_member_pubkey, cap)
        });
        for _ in &dropped {
            self.metrics.dropped_by_grant(cap);
        }
        (kept, dropped.into_iter().map(|d| d.member_id).collect())
    }
}

/// The metadata-only audit entries of one send: who sent what kind of message to whom, how big,
/// and which recipients' grants dropped it. Never content.
fn message_audit(
    session: &SessionHandle,
    message_id: &str,
    send: &protocol::Send,
    recipients: usize,
    cap: &str,
    dropped: &[String],
) -> Vec<AuditEvent> {
    let event = |event_type: &str, payload: serde_json::Value| AuditEvent {
        scope: session.mesh_id().to_owned(),
        event_type: event_type.to_owned(),
        actor: Some(session.member_id.clone()),
        payload,
    };
    let mut events = vec![event(
        "message_sent",
        json!({"messageId": message_id, "target": send.target_spec, "priority": send.priority,
               "bytes": send.ciphertext.len(), "recipients": recipients}),
    )];
    events.extend(
        dropped
            .iter()
            .map(|member| event("message_dropped", json!({"messageId": message_id, "recipient": member, "cap": cap}))),
    );
    events
}

/// The ack of a refused send: the human text always, the typed code for sessions that
/// negotiated `refusal_code`.
pub(super) fn refused_ack(
    session: &SessionHandle,
    id: Option<String>,
    req_id: Option<String>,
    reason: SendRejection,
    detail: &str,
) -> Ack {
    Ack {
        id,
        queued: false,
        error: Some(reason.text(detail)),
        error_code: session.caps.has(Capability::RefusalCode).then_some(reason),
        req_id,
        ..Ack::default()
    }
}
