//! What both stores build the same way: the column lists their queries read rows in, the audit
//! entries of control-plane changes, new member records, the rule for display names, the next
//! membership-log entry and epoch, and the JSON columns they read back. Only the SQL around them
//! differs (`sqlite/`, `postgres/`).

use serde::de::DeserializeOwned;
use serde_json::json;

use super::{AuditEvent, DeviceRecord, MemberRecord, NewMember, StoreError, StoreResult};
use crate::membership::{Change, LOG_START, LogEntry};
use crate::meshkey::EpochRecord;
use crate::names;
use crate::protocol::Role;

/// The entry that appends `change` to a mesh's log whose newest entry is `tail` (seq, hash).
/// A mesh keeps a log only from a genesis on: anything else for a mesh without one gets no
/// entry (`None`); a second genesis is a conflict.
pub(super) fn next_log_entry(
    tail: Option<(u64, String)>,
    change: Change,
    now_ms: u64,
) -> StoreResult<Option<LogEntry>> {
    let (seq, prev) = match (tail, &change) {
        (None, Change::Genesis { .. }) => (1, LOG_START.to_owned()),
        (None, _) => return Ok(None),
        (Some(_), Change::Genesis { .. }) => return Err(StoreError::Conflict("the mesh already has a genesis".into())),
        (Some((seq, hash)), _) => (seq + 1, hash),
    };
    Ok(Some(LogEntry::new(seq, now_ms, &prev, change)))
}

/// A key history setting goes on a log whose newest entry is the one its admin saw (`after`):
/// `Conflict("log_moved")` otherwise (read the log again and sign anew), `Invalid` for anything
/// but a `keyHistory` change. Returns the entry and its audit entry.
pub(super) fn key_history_entry(
    mesh_id: &str,
    tail: Option<(u64, String)>,
    change: &Change,
    actor: &str,
    now_ms: u64,
) -> StoreResult<(LogEntry, AuditEvent)> {
    let Change::KeyHistory { mode, after, by, .. } = change else {
        return Err(StoreError::Invalid("not a key history setting".into()));
    };
    let Some((seq, hash)) = tail else { return Err(StoreError::Invalid("the mesh keeps no membership log".into())) };
    if seq != *after {
        return Err(StoreError::Conflict("log_moved".into()));
    }
    let entry = LogEntry::new(seq + 1, now_ms, &hash, change.clone());
    let audit =
        event(mesh_id, "key_history_set", Some(actor), json!({"mode": mode.as_str(), "by": by, "seq": seq + 1}));
    Ok((entry, audit))
}

/// Epochs only go forward one at a time: `record` must follow the mesh's `newest` (0: none).
pub(super) fn check_next_epoch(newest: u64, record: &EpochRecord) -> StoreResult<()> {
    if record.epoch != newest + 1 {
        return Err(StoreError::Conflict("epoch_taken".into()));
    }
    Ok(())
}

/// The audit entry of a new epoch of the mesh's key (who made it, never the key).
pub(super) fn epoch_created(mesh_id: &str, record: &EpochRecord) -> AuditEvent {
    event(mesh_id, "epoch_created", None, json!({"epoch": record.epoch, "by": record.by}))
}

/// The columns of `state_entries`, in the order both stores read them.
pub(super) const STATE_COLUMNS: &str =
    "mesh_id, name, version, epoch, nonce, ciphertext, writer_member_id, writer_pubkey, updated_at, expires_at, size";
pub(super) const MEMORY_COLUMNS: &str =
    "mesh_id, id, seq, epoch, nonce, ciphertext, writer_member_id, writer_pubkey, created_at, forgotten_at, size";

/// What a member keeps in a mesh's workspace now.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct WorkspaceUsage {
    pub state_entries: u64,
    pub memories: u64,
    pub bytes: u64,
}

/// A write of `added` bytes (one more state entry or memory, as `adds_*` say) keeps the writer
/// within its quota; else `Conflict("quota_exceeded")`.
pub(super) fn check_quota(
    usage: WorkspaceUsage,
    quota: &super::WorkspaceQuota,
    adds_state: bool,
    adds_memory: bool,
    added: u64,
) -> StoreResult<()> {
    let over = (adds_state && usage.state_entries >= quota.state_entries)
        || (adds_memory && usage.memories >= quota.memories)
        || usage.bytes + added > quota.bytes;
    if over {
        return Err(StoreError::Conflict("quota_exceeded".into()));
    }
    Ok(())
}

/// A state write finds the live entry at the version it follows, under the newest epoch.
pub(super) fn check_state_write(
    live_version: u64,
    newest_epoch: u64,
    entry: &crate::protocol::StateEntry,
) -> StoreResult<()> {
    if entry.epoch != newest_epoch {
        return Err(StoreError::Conflict("stale_epoch".into()));
    }
    if entry.version != live_version + 1 {
        return Err(StoreError::Conflict("version_mismatch".into()));
    }
    Ok(())
}

/// The audit entry of a member writing over another member's state entry (never its content).
pub(super) fn state_overwritten(record: &super::StateRecord, previous_writer: &str) -> AuditEvent {
    event(
        &record.mesh_id,
        "state_overwritten",
        Some(&record.writer_member_id),
        json!({"name": record.entry.name, "version": record.entry.version, "previousWriter": previous_writer}),
    )
}

pub(super) fn state_deleted(mesh_id: &str, name: &str, version: u64, writer: &str, actor: &str) -> AuditEvent {
    event(mesh_id, "state_deleted", Some(actor), json!({"name": name, "version": version, "writer": writer}))
}

pub(super) fn memory_forgotten(mesh_id: &str, id: &str, writer: &str, actor: &str) -> AuditEvent {
    event(mesh_id, "memory_forgotten", Some(actor), json!({"memoryId": id, "writer": writer}))
}

/// JSON a store wrote into `column`, read back; `Unreadable` when it no longer parses.
pub(super) fn stored_json<T: DeserializeOwned>(column: &'static str, text: String) -> StoreResult<T> {
    serde_json::from_str(&text).map_err(|_| StoreError::Unreadable { column, value: text })
}

/// A value as a JSON column keeps it.
pub(super) fn json_text<T: serde::Serialize>(value: &T) -> StoreResult<String> {
    serde_json::to_string(value).map_err(|e| StoreError::Invalid(e.to_string()))
}

pub(super) const MESH_COLUMNS: &str = "id, slug, name, created_at, archived_at, owner_account_id";
pub(super) const MEMBER_COLUMNS: &str =
    "id, mesh_id, pubkey, display_name, role, created_at, revoked_at, banned_at, account_id, device_id";
pub(super) const INVITE_COLUMNS: &str =
    "id, mesh_id, role, max_uses, used_count, expires_at, issuer_member_id, created_at, revoked_at, email";
pub(super) const ACCOUNT_COLUMNS: &str = "id, name, email, created_at";
pub(super) const DEVICE_COLUMNS: &str = "id, account_id, hostname, platform, arch, app_version, ip, created_at, \
                                          last_seen_at, expires_at, revoked_at, confirm_key";
pub(super) const CODE_COLUMNS: &str = "user_code, hostname, platform, arch, app_version, ip, created_at, expires_at, \
                                        interval_ms, status, account_id, attempts, confirm_key";

pub(super) const SCHEDULE_COLUMNS: &str = "id, mesh_id, sender_member_id, sender_member_pubkey, sender_pubkey, \
                                            sender_session_sig, target_spec, priority, enc, nonce, ciphertext, \
                                            deliveries, cron, tz, next_fire_at, fired, created_at";

/// The audit entry of a new schedule: who scheduled what kind of message to whom, when. Never
/// content.
pub(super) fn schedule_created(schedule: &super::ScheduleRecord) -> AuditEvent {
    event(
        &schedule.mesh_id,
        "schedule_created",
        Some(&schedule.sender_member_id),
        json!({"scheduleId": schedule.id, "target": schedule.target_spec, "nextFireAt": schedule.next_fire_at,
               "cron": schedule.cron, "tz": schedule.tz, "recipients": schedule.deliveries.len(),
               "bytes": schedule.ciphertext.len()}),
    )
}

/// RFC 8628: a `slow_down` adds this to the polling interval for all later polls.
pub(super) const SLOW_DOWN_STEP_MS: u64 = 5_000;

pub(super) fn event(scope: &str, event_type: &str, actor: Option<&str>, payload: serde_json::Value) -> AuditEvent {
    AuditEvent { scope: scope.to_owned(), event_type: event_type.to_owned(), actor: actor.map(str::to_owned), payload }
}

/// The audit scope of an account's events.
pub(super) fn account_scope(account_id: &str) -> String {
    format!("account:{account_id}")
}

pub(super) fn account_event(
    account_id: &str,
    event_type: &str,
    actor: Option<&str>,
    payload: serde_json::Value,
) -> AuditEvent {
    event(&account_scope(account_id), event_type, actor, payload)
}

/// The audit entry of a device signed in, and how (`via`: a device code, a login token, an
/// emailed code; none for one signed in directly).
pub(super) fn device_added(device: &DeviceRecord, via: Option<&str>) -> AuditEvent {
    let mut payload = json!({
        "deviceId": device.id, "hostname": device.info.hostname, "platform": device.info.platform, "ip": device.info.ip,
    });
    if let Some(via) = via {
        payload["via"] = json!(via);
    }
    account_event(&device.account_id, "device_added", None, payload)
}

pub(super) fn new_member_record(mesh_id: &str, member: &NewMember, role: Role, now_ms: u64) -> MemberRecord {
    MemberRecord {
        id: crate::ids::new_id("mem"),
        mesh_id: mesh_id.to_owned(),
        pubkey: member.pubkey.clone(),
        display_name: member.display_name.trim().to_owned(),
        role,
        created_at: now_ms,
        revoked_at: None,
        banned_at: None,
        account_id: member.account_id.clone(),
        device_id: member.device_id.clone(),
    }
}

/// A member's display name is not reserved and, among the mesh's current members (`others`:
/// each one's name and account), is nobody else's: only other members of the same account (the
/// same person's devices) may share it.
pub(super) fn check_name_free(
    member: &MemberRecord,
    others: impl IntoIterator<Item = (String, Option<String>)>,
) -> StoreResult<()> {
    if names::is_reserved(&member.display_name) {
        return Err(StoreError::Invalid("name_reserved".into()));
    }
    let wanted = names::skeleton(&member.display_name);
    for (name, account) in others {
        let same_person = account.is_some() && account == member.account_id;
        if !same_person && names::skeleton(&name) == wanted {
            return Err(StoreError::Conflict("name_taken".into()));
        }
    }
    Ok(())
}
