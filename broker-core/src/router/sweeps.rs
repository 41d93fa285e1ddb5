//! Background work: status decay, departed sessions' mail, directory changes made by other
//! processes, message expiry — and the loop that runs them.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::time::Instant;

use super::state::RETIRED_KEY_MEMORY;
use super::{Grants, Router, close_code, frame_text};
use crate::protocol::{self, ErrorCode, ServerFrame};
use crate::store::{StoreError, WriteOp, WriteOutcome};

/// Passes of the scheduler per tick while it finds occurrences due.
const CATCH_UP_PASSES: usize = 8;

impl Router {
    /// Decays stale `working` statuses and releases what they held.
    pub fn sweep_statuses(&self, now: Instant) {
        for shard in self.shards() {
            let mut state = shard.state.lock().expect("mesh lock");
            let decayed: Vec<(u64, String)> = state
                .sessions
                .values_mut()
                .filter_map(|s| s.status.decay(now, self.config.status_ttl).then(|| (s.id, s.member_id.clone())))
                .collect();
            for (session_id, member_id) in decayed {
                self.pump_member(&mut state, &member_id);
                self.profile_changed(&state, session_id);
            }
        }
    }

    /// Releases the session-only mail of sessions gone longer than the rebind grace, and
    /// forgets keys retired for long.
    pub fn sweep_departed(&self, now: Instant) {
        for shard in self.shards() {
            let mut state = shard.state.lock().expect("mesh lock");
            let grace = self.config.session_rebind_grace;
            let due: Vec<(String, String)> = state
                .departed
                .iter()
                .filter(|(_, d)| !d.released && now.saturating_duration_since(d.at) >= grace)
                .map(|(key, d)| (key.clone(), d.member_id.clone()))
                .collect();
            for (key, member_id) in due {
                if let Some(departed) = state.departed.get_mut(&key) {
                    departed.released = true;
                }
                self.release_session(&mut state, &member_id, &key);
            }
            state.departed.retain(|_, d| now.saturating_duration_since(d.at) < RETIRED_KEY_MEMORY);
        }
    }

    /// Reloads loaded meshes' directories when another process changed them; closes sessions of
    /// members that are no longer active and of archived meshes.
    pub async fn refresh_directory(&self) -> Result<(), StoreError> {
        let version = self.blocking(|store| store.directory_version()).await?;
        if version == self.directory_version.load(Ordering::Relaxed) {
            return Ok(());
        }
        self.reload_directory().await?;
        // Only once applied: a failed reload is tried again at the next poll.
        self.directory_version.store(version, Ordering::Relaxed);
        Ok(())
    }

    /// Reloads every loaded mesh's directory and grants now (after a control-plane change made
    /// through this broker), closing the sessions of members that are no longer active.
    pub async fn reload_directory(&self) -> Result<(), StoreError> {
        for shard in self.shards() {
            let id = shard.mesh_id.clone();
            let loaded = self
                .blocking(move |store| Ok(store.mesh(&id)?.map(|mesh| (mesh, store.members(&id), store.grants(&id)))))
                .await?;
            let Some((mesh, members, grants)) = loaded else { continue };
            let (members, grants) = (members?, grants?);
            let mut state = shard.state.lock().expect("mesh lock");
            state.grants = Grants::from_records(grants);
            let now = Instant::now();
            for record in members {
                match state.members.get_mut(&record.id) {
                    Some(entry) => entry.record = record,
                    None => self.insert_member(&mut state, record, None, now),
                }
            }
            let archived = mesh.archived_at.is_some();
            state.mesh = mesh;
            for session in state.sessions.values() {
                let active = state.members.get(&session.member_id).is_some_and(|m| m.record.is_active());
                if archived || (!active && !state.leaving.contains(&session.member_id)) {
                    let error = protocol::ErrorFrame {
                        code: ErrorCode::Revoked,
                        message: if archived { "the mesh was archived" } else { "your membership was revoked" }
                            .to_owned(),
                        id: None,
                        req_id: None,
                    };
                    let _ = session.outbox.send(frame_text(&ServerFrame::Error(error)));
                    session.outbox.close(close_code::POLICY, "revoked");
                }
            }
        }
        Ok(())
    }

    /// Drops undelivered entries older than the message TTL.
    pub fn expire_old_messages(&self) {
        let cutoff = protocol::now_ms().saturating_sub(self.config.message_ttl.as_millis() as u64);
        let metrics = self.metrics.clone();
        self.store.submit(
            WriteOp::ExpireBefore(cutoff),
            Some(Box::new(move |result| {
                if let Ok(WriteOutcome::Changed(n)) = result {
                    if n > 0 {
                        tracing::info!(expired = n, "dropped undelivered messages past their TTL");
                    }
                    metrics.expired_total.fetch_add(n, Ordering::Relaxed);
                    let _ = metrics
                        .queue_depth
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |d| Some(d.saturating_sub(n)));
                }
            })),
        );
    }

    /// Deletes shared-state entries past their expiry (readers stop seeing them at once; this
    /// frees their rows).
    async fn expire_state(&self) {
        match self.blocking(|store| store.expire_state(protocol::now_ms())).await {
            Ok(n) if n > 0 => tracing::info!(expired = n, "dropped shared-state entries past their expiry"),
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "dropping expired shared-state entries failed"),
        }
    }

    /// Runs the periodic sweeps until `shutdown` resolves.
    pub async fn run_background(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        let config = self.config.clone();
        let mut status = tokio::time::interval(
            (config.status_ttl / 4).clamp(std::time::Duration::from_millis(250), std::time::Duration::from_secs(5)),
        );
        let mut departed =
            tokio::time::interval((config.session_rebind_grace / 4).max(std::time::Duration::from_millis(250)));
        let mut directory = tokio::time::interval(config.directory_poll_interval);
        let mut expiry = tokio::time::interval(config.expiry_sweep_interval);
        let mut next_schedule = Instant::now() + config.schedule_poll_interval;
        for interval in [&mut status, &mut departed, &mut directory, &mut expiry] {
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = status.tick() => {
                    self.sweep_statuses(Instant::now());
                    self.sweep_silent_replicas(Instant::now());
                }
                _ = departed.tick() => self.sweep_departed(Instant::now()),
                _ = directory.tick() => {
                    let healthy = match self.refresh_directory().await {
                        Ok(()) => 1,
                        Err(error) => {
                            tracing::warn!(%error, "directory check failed");
                            0
                        }
                    };
                    self.metrics.db_healthy.store(healthy, Ordering::Relaxed);
                    self.metrics.store_batches_total.store(self.store.commits(), Ordering::Relaxed);
                }
                _ = expiry.tick() => {
                    self.expire_old_messages();
                    self.expire_state().await;
                }
                _ = tokio::time::sleep_until(next_schedule) => {
                    // Occurrences missed while the broker was down come one per schedule per
                    // pass: a few passes at once catch up without holding the other sweeps.
                    for _ in 0..CATCH_UP_PASSES {
                        if self.fire_due_schedules().await == 0 {
                            break;
                        }
                    }
                    next_schedule = self.next_schedule_wake().await;
                }
            }
        }
    }
}
