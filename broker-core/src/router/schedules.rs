//! Scheduled and recurring messages: `schedule` (a `send` checked now and stored for later),
//! `list_scheduled`, `cancel_scheduled`, and the scheduler that queues each due occurrence.
//!
//! The content was sealed by the scheduling client for the recipients resolved when it was
//! scheduled; the broker keeps ciphertext and times. An occurrence is queued by an ordinary
//! queue write that also moves its schedule past it (`ScheduleFire`), so it is queued once
//! whatever crashes, and whichever replica gets there first; it arrives as from the scheduler,
//! with the message id `<schedule id>@<due time>` (`schedule::occurrence_id`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde_json::json;

use super::Router;
use super::send::refused_ack;
use super::state::{MeshState, SessionHandle, display_name_of};
use crate::protocol::{self, Ack, Enc, ErrorCode, ScheduleInfo, SendRejection, ServerFrame};
use crate::schedule::{MAX_AHEAD_MS, Recurrence, lateness, occurrence_id};
use crate::store::{
    AuditEvent, Delivery, Envelope, NewMessage, ScheduleFire, ScheduleRecord, StoreError, WriteOp, WriteOutcome,
};

/// Due schedules read at a time by the scheduler.
const FIRE_BATCH: usize = 512;
/// The scheduler looks again at the earliest this long after a pass: occurrences falling due
/// close together are queued together, rather than a pass (three reads) for each.
const MIN_WAKE_GAP: std::time::Duration = std::time::Duration::from_millis(10);

/// When a checked `schedule` fires: first at `first`, then at every occurrence of `cron`.
#[derive(Debug, Clone)]
pub(super) struct Later {
    first: u64,
    cron: Option<String>,
    tz: Option<String>,
}

impl Later {
    /// The times of a `schedule` frame, or why they do not work.
    fn of(frame: &protocol::ScheduleSend, now_ms: u64) -> Result<Later, String> {
        match (frame.at, frame.cron.as_deref().map(str::trim)) {
            (Some(at), None) => {
                if at > now_ms + MAX_AHEAD_MS {
                    return Err("`at` is more than a year ahead".to_owned());
                }
                // A time already past fires at once.
                Ok(Later { first: at, cron: None, tz: None })
            }
            (None, Some(cron)) => {
                let recurrence = Recurrence::parse(cron, frame.tz.as_deref())?;
                let first = recurrence.next_after(now_ms).ok_or_else(|| format!("cron {cron:?} never fires"))?;
                let tz = frame.tz.as_deref().map(str::trim).filter(|t| !t.is_empty()).map(str::to_owned);
                Ok(Later { first, cron: Some(cron.to_owned()), tz })
            }
            _ => Err("give exactly one of `at` (a time) and `cron` (a recurrence)".to_owned()),
        }
    }
}

impl Router {
    pub(super) async fn schedule(self: &Arc<Self>, session: &SessionHandle, frame: protocol::ScheduleSend) {
        match Later::of(&frame, protocol::now_ms()) {
            Ok(later) => self.send(session, frame.send, Some(later)).await,
            Err(problem) => {
                self.metrics.message_rejected(SendRejection::Malformed);
                let (id, req_id) = (frame.send.id, frame.send.req_id);
                let ack = refused_ack(session, id, req_id, SendRejection::Malformed, &problem);
                self.reply(session, ServerFrame::Ack(ack));
            }
        }
    }

    /// Stores a checked `schedule` with the recipients resolved for it, and acknowledges it.
    pub(super) async fn store_schedule(
        self: &Arc<Self>,
        session: &SessionHandle,
        send: protocol::Send,
        (enc, sender_member_pubkey, sender_pubkey, sender_session_sig): (Enc, String, String, Option<String>),
        later: Later,
        deliveries: Vec<Delivery>,
        uncovered: Vec<String>,
    ) {
        let record = ScheduleRecord {
            id: crate::ids::new_id("sch"),
            mesh_id: session.mesh_id().to_owned(),
            sender_member_id: session.member_id.clone(),
            sender_member_pubkey,
            sender_pubkey,
            sender_session_sig,
            target_spec: send.target_spec,
            priority: send.priority,
            enc,
            nonce: send.nonce,
            ciphertext: send.ciphertext,
            deliveries,
            cron: later.cron,
            tz: later.tz,
            next_fire_at: later.first,
            fired: 0,
            created_at: protocol::now_ms(),
        };
        let limit = self.config.max_schedules_per_member;
        let stored = record.clone();
        let refuse = |reason: SendRejection, detail: &str| {
            self.metrics.message_rejected(reason);
            let ack = refused_ack(session, send.id.clone(), send.req_id.clone(), reason, detail);
            self.reply(session, ServerFrame::Ack(ack));
        };
        match self.blocking(move |store| store.create_schedule(&stored, limit)).await {
            Ok(()) => {
                let info = {
                    let state = session.shard.state.lock().expect("mesh lock");
                    schedule_info(&state, &record)
                };
                let ack = Ack {
                    id: send.id,
                    queued: true,
                    recipients: Some(record.deliveries.len() as u32),
                    uncovered,
                    schedule: Some(info),
                    req_id: send.req_id,
                    ..Ack::default()
                };
                self.reply(session, ServerFrame::Ack(ack));
            }
            Err(StoreError::Conflict(code)) if code == "schedule_limit" => refuse(
                SendRejection::ScheduleLimit,
                &format!("you have {limit} scheduled messages in this mesh; cancel one first"),
            ),
            Err(error) => {
                tracing::error!(%error, "storing a schedule failed");
                refuse(
                    SendRejection::Unavailable,
                    "the broker could not store the schedule; nothing was scheduled, retry",
                );
            }
        }
    }

    pub(super) async fn list_scheduled(self: &Arc<Self>, session: &SessionHandle, list: protocol::ListScheduled) {
        let mesh_id = session.mesh_id().to_owned();
        // An admin sees every member's; anyone else their own.
        let sender = (!self.is_admin(session)).then(|| session.member_id.clone());
        match self.blocking(move |store| store.schedules(&mesh_id, sender.as_deref())).await {
            Ok(schedules) => {
                let state = session.shard.state.lock().expect("mesh lock");
                let schedules = schedules.iter().map(|s| schedule_info(&state, s)).collect();
                drop(state);
                let list = protocol::ScheduledList { schedules, req_id: list.req_id };
                self.reply(session, ServerFrame::ScheduledList(list));
            }
            Err(error) => {
                tracing::error!(%error, "listing schedules failed");
                self.reply_error(
                    session,
                    ErrorCode::Internal,
                    "the broker could not list schedules; retry",
                    list.req_id,
                );
            }
        }
    }

    pub(super) async fn cancel_scheduled(self: &Arc<Self>, session: &SessionHandle, cancel: protocol::CancelScheduled) {
        let (mesh_id, schedule_id) = (session.mesh_id().to_owned(), cancel.schedule_id.trim().to_owned());
        let admin = self.is_admin(session);
        let member_id = session.member_id.clone();
        let outcome = self
            .blocking(move |store| {
                let Some(schedule) = store.schedules(&mesh_id, None)?.into_iter().find(|s| s.id == schedule_id) else {
                    return Ok(Err(ErrorCode::NotFound));
                };
                if !admin && schedule.sender_member_id != member_id {
                    return Ok(Err(ErrorCode::Forbidden));
                }
                Ok(store
                    .cancel_schedule(&mesh_id, &schedule_id, Some(&member_id))?
                    .then_some(schedule_id)
                    .ok_or(ErrorCode::NotFound))
            })
            .await;
        match outcome {
            Ok(Ok(schedule_id)) => {
                let cancelled = protocol::ScheduleCancelled { schedule_id, req_id: cancel.req_id };
                self.reply(session, ServerFrame::ScheduleCancelled(cancelled));
            }
            Ok(Err(ErrorCode::Forbidden)) => self.reply_error(
                session,
                ErrorCode::Forbidden,
                "only whoever scheduled it, or an admin of the mesh, may cancel it",
                cancel.req_id,
            ),
            Ok(Err(_)) => self.reply_error(
                session,
                ErrorCode::NotFound,
                &format!("no scheduled message {:?} in this mesh (it may have fired already)", cancel.schedule_id),
                cancel.req_id,
            ),
            Err(error) => {
                tracing::error!(%error, "cancelling a schedule failed");
                self.reply_error(session, ErrorCode::Internal, "the broker could not cancel it; retry", cancel.req_id);
            }
        }
    }

    /// Queues every occurrence due now (one per schedule: an occurrence missed while the broker
    /// was down is queued late, the next one on the following pass); returns how many were
    /// queued, after their commits.
    pub async fn fire_due_schedules(self: &Arc<Self>) -> usize {
        let now = protocol::now_ms();
        let found = self
            .blocking(move |store| {
                let due = store.due_schedules(now, FIRE_BATCH)?;
                // Who is still a member of each mesh, as the store says now.
                let mut active: HashMap<String, HashSet<String>> = HashMap::new();
                for schedule in &due {
                    if !active.contains_key(&schedule.mesh_id) {
                        let members = store.members(&schedule.mesh_id)?;
                        let ids = members.into_iter().filter(|m| m.is_active()).map(|m| m.id).collect();
                        active.insert(schedule.mesh_id.clone(), ids);
                    }
                }
                Ok((due, active))
            })
            .await;
        let (due, active) = match found {
            Ok(found) => found,
            Err(error) => {
                tracing::warn!(%error, "looking for due schedules failed");
                return 0;
            }
        };
        let mut committed = Vec::with_capacity(due.len());
        for mut schedule in due {
            let members = &active[&schedule.mesh_id];
            // A member who left or was removed sends nothing more: its schedules end.
            if !members.contains(&schedule.sender_member_id) {
                let (mesh_id, id) = (schedule.mesh_id.clone(), schedule.id.clone());
                if let Err(error) = self.blocking(move |store| store.cancel_schedule(&mesh_id, &id, None)).await {
                    tracing::warn!(%error, "ending the schedule of a removed member failed");
                }
                continue;
            }
            // Nor does anyone receive after leaving.
            schedule.deliveries.retain(|d| members.contains(&d.member_id));
            let (done, waiting) = tokio::sync::oneshot::channel();
            self.fire(schedule, now, done);
            committed.push(waiting);
        }
        let mut fired = 0;
        for waiting in committed {
            fired += usize::from(waiting.await.unwrap_or(false));
        }
        fired
    }

    /// When the scheduler should look again: at the next occurrence if one falls due within the
    /// poll interval, else after it (schedules made meanwhile, here or on another replica, are
    /// found by then).
    pub(super) async fn next_schedule_wake(&self) -> tokio::time::Instant {
        let poll = self.config.schedule_poll_interval;
        let now = protocol::now_ms();
        let horizon = now + poll.as_millis() as u64;
        let soonest = self.blocking(move |store| store.due_schedules(horizon, 1)).await;
        let wait = match soonest.ok().as_deref() {
            Some([next, ..]) => std::time::Duration::from_millis(next.next_fire_at.saturating_sub(now)),
            _ => poll,
        };
        tokio::time::Instant::now() + wait.max(MIN_WAKE_GAP)
    }

    /// Queues the due occurrence of `schedule` and moves it on, in one write; `done` hears
    /// whether it was queued by this call.
    fn fire(self: &Arc<Self>, schedule: ScheduleRecord, now: u64, done: tokio::sync::oneshot::Sender<bool>) {
        let due_at = schedule.next_fire_at;
        let next = schedule.cron.as_deref().and_then(|cron| match Recurrence::parse(cron, schedule.tz.as_deref()) {
            Ok(recurrence) => recurrence.next_after(due_at),
            Err(error) => {
                tracing::warn!(schedule = %schedule.id, %error, "a stored cron no longer parses; it ends");
                None
            }
        });
        let late = lateness(due_at, now);
        let envelope = Arc::new(Envelope {
            message_id: occurrence_id(&schedule.id, due_at),
            mesh_id: schedule.mesh_id.clone(),
            sender_member_id: schedule.sender_member_id.clone(),
            sender_member_pubkey: schedule.sender_member_pubkey,
            sender_pubkey: schedule.sender_pubkey,
            sender_session_sig: schedule.sender_session_sig,
            target_spec: schedule.target_spec,
            priority: schedule.priority,
            enc: schedule.enc,
            nonce: schedule.nonce,
            ciphertext: schedule.ciphertext,
            created_at: now,
            tracked: false,
        });
        let audit = vec![AuditEvent {
            scope: schedule.mesh_id.clone(),
            event_type: "scheduled_message_queued".to_owned(),
            actor: Some(schedule.sender_member_id),
            payload: json!({"scheduleId": schedule.id, "messageId": envelope.message_id, "dueAt": due_at,
                            "lateMs": late, "recipients": schedule.deliveries.len()}),
        }];
        let fire = ScheduleFire { schedule_id: schedule.id, due_at, next };
        let deliveries = schedule.deliveries;
        let (router, routed, routed_envelope) = (self.clone(), deliveries.clone(), envelope.clone());
        self.store.submit(
            WriteOp::Enqueue(NewMessage { envelope, deliveries, audit, fire: Some(fire) }),
            Some(Box::new(move |result| {
                let queued = match result {
                    Ok(WriteOutcome::Enqueued(slots)) => {
                        router.metrics.schedules_fired_total.fetch_add(1, Ordering::Relaxed);
                        if late.is_some() {
                            router.metrics.schedules_late_total.fetch_add(1, Ordering::Relaxed);
                        }
                        router.metrics.message_routed(routed_envelope.priority);
                        router.metrics.queue_depth.fetch_add(slots.len() as u64, Ordering::Relaxed);
                        // Recipients connected here hear it now; the store tells other replicas.
                        if let Some(shard) = router.loaded_shard(&routed_envelope.mesh_id) {
                            router.route(&shard, &routed_envelope, routed.into_iter().zip(slots));
                        }
                        true
                    }
                    // Another replica queued this occurrence first, or it was cancelled.
                    Err(StoreError::Conflict(detail)) => {
                        tracing::debug!(%detail, "an occurrence was not queued here");
                        false
                    }
                    Ok(other) => {
                        tracing::error!(?other, "unexpected store outcome for a scheduled message");
                        false
                    }
                    Err(error) => {
                        tracing::error!(%error, "queueing a scheduled message failed; it is tried again");
                        false
                    }
                };
                let _ = done.send(queued);
            })),
        );
    }
}

/// What its scheduler (or an admin) sees of a schedule.
fn schedule_info(state: &MeshState, schedule: &ScheduleRecord) -> ScheduleInfo {
    let sender_name =
        state.members.get(&schedule.sender_member_id).map(|member| display_name_of(state, member)).unwrap_or_default();
    ScheduleInfo {
        schedule_id: schedule.id.clone(),
        target_spec: schedule.target_spec.clone(),
        priority: schedule.priority,
        next_fire_at: protocol::iso8601_ms(schedule.next_fire_at),
        cron: schedule.cron.clone(),
        tz: schedule.tz.clone(),
        fired: schedule.fired,
        recipients: schedule.deliveries.len() as u32,
        created_at: protocol::iso8601_ms(schedule.created_at),
        sender_member_pubkey: schedule.sender_member_pubkey.clone(),
        sender_name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(at: Option<u64>, cron: Option<&str>, tz: Option<&str>) -> protocol::ScheduleSend {
        protocol::ScheduleSend {
            send: protocol::Send::default(),
            at,
            cron: cron.map(str::to_owned),
            tz: tz.map(str::to_owned),
        }
    }

    #[test]
    fn a_schedule_has_one_time_or_one_recurrence_within_a_year() {
        let now = 1_790_000_000_000;
        let once = Later::of(&frame(Some(now + 60_000), None, None), now).expect("in a minute");
        assert_eq!((once.first, once.cron), (now + 60_000, None));
        assert_eq!(Later::of(&frame(Some(now - 5_000), None, None), now).expect("past: at once").first, now - 5_000);
        assert!(Later::of(&frame(Some(now + MAX_AHEAD_MS + 1), None, None), now).is_err());
        let hourly = Later::of(&frame(None, Some(" 0 * * * * "), Some("Asia/Tokyo")), now).expect("hourly");
        assert!(hourly.first > now && hourly.first <= now + 3_600_000, "{}", hourly.first);
        assert_eq!((hourly.cron.as_deref(), hourly.tz.as_deref()), (Some("0 * * * *"), Some("Asia/Tokyo")));
        assert!(Later::of(&frame(None, None, None), now).expect_err("neither").contains("exactly one"));
        assert!(Later::of(&frame(Some(now), Some("0 * * * *"), None), now).is_err(), "both");
        assert!(Later::of(&frame(None, Some("0 * * *"), None), now).expect_err("four fields").contains("five"));
        assert!(Later::of(&frame(None, Some("0 0 30 2 *"), None), now).expect_err("February 30th").contains("never"));
    }
}
