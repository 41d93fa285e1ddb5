//! Accounts, signed-in devices and device logins in Postgres.
//!
//! Several brokers may share the database, so a call that reads a row and then changes it
//! either locks the row as it reads it (`FOR UPDATE`) or changes it in one statement: two
//! polls of one approved code, or two guesses at one emailed code, run one after the other.

use postgres::{GenericClient, Row};
use serde_json::json;

use super::codes;
use super::directory::{bump_directory_version, member_from_row};
use super::{audit, conflict_on_duplicate};
use crate::membership::{Change, RemovalReason};
use crate::store::codes::DbCode as _;
use crate::store::records::{
    ACCOUNT_COLUMNS, CODE_COLUMNS, DEVICE_COLUMNS, MEMBER_COLUMNS, SLOW_DOWN_STEP_MS, account_event, device_added,
};
use crate::store::{
    APPROVAL_RECALL_WINDOW, AccountRecord, AuditEvent, DeviceCodeRecord, DeviceCodeStatus, DeviceInfo, DeviceRecord,
    EmailCodeOutcome, MemberRecord, NewDeviceCode, PollOutcome, StoreError, StoreResult,
};

fn account_from_row(row: &Row) -> StoreResult<AccountRecord> {
    Ok(AccountRecord {
        id: row.try_get(0)?,
        name: row.try_get(1)?,
        email: row.try_get(2)?,
        created_at: row.try_get::<_, i64>(3)? as u64,
    })
}

fn device_from_row(row: &Row) -> StoreResult<DeviceRecord> {
    Ok(DeviceRecord {
        id: row.try_get(0)?,
        account_id: row.try_get(1)?,
        info: DeviceInfo {
            hostname: row.try_get(2)?,
            platform: row.try_get(3)?,
            arch: row.try_get(4)?,
            app_version: row.try_get(5)?,
            ip: row.try_get(6)?,
            confirm_key: row.try_get(11)?,
        },
        created_at: row.try_get::<_, i64>(7)? as u64,
        last_seen_at: row.try_get::<_, i64>(8)? as u64,
        expires_at: row.try_get::<_, i64>(9)? as u64,
        revoked_at: row.try_get::<_, Option<i64>>(10)?.map(|v| v as u64),
    })
}

fn code_from_row(row: &Row) -> StoreResult<DeviceCodeRecord> {
    Ok(DeviceCodeRecord {
        user_code: row.try_get(0)?,
        info: DeviceInfo {
            hostname: row.try_get(1)?,
            platform: row.try_get(2)?,
            arch: row.try_get(3)?,
            app_version: row.try_get(4)?,
            ip: row.try_get(5)?,
            confirm_key: row.try_get(12)?,
        },
        created_at: row.try_get::<_, i64>(6)? as u64,
        expires_at: row.try_get::<_, i64>(7)? as u64,
        interval_ms: row.try_get::<_, i64>(8)? as u64,
        status: codes::read(row, 9, "device_codes.status")?,
        account_id: row.try_get(10)?,
        attempts: row.try_get::<_, i64>(11)? as u32,
    })
}

pub(super) fn create_account(
    db: &mut impl GenericClient,
    name: &str,
    email: Option<&str>,
    now_ms: u64,
) -> StoreResult<AccountRecord> {
    let name = name.trim();
    if name.is_empty() {
        return Err(StoreError::Invalid("the account name is empty".into()));
    }
    let taken = || StoreError::Conflict(format!("an account named {name:?} already exists"));
    if account(db, name)?.is_some() {
        return Err(taken());
    }
    let record = AccountRecord {
        id: crate::ids::new_id("acct"),
        name: name.to_owned(),
        email: email.map(str::to_owned).filter(|e| !e.trim().is_empty()),
        created_at: now_ms,
    };
    // The same name created concurrently and committed first: the insert waits for it, then
    // does nothing.
    let inserted = db.execute(
        &format!("INSERT INTO accounts ({ACCOUNT_COLUMNS}) VALUES ($1, $2, $3, $4) ON CONFLICT (name) DO NOTHING"),
        &[&record.id, &record.name, &record.email, &(now_ms as i64)],
    )?;
    if inserted == 0 {
        return Err(taken());
    }
    audit::append(db, &account_event(&record.id, "account_created", None, json!({"name": record.name})), now_ms)?;
    Ok(record)
}

pub(super) fn account(db: &mut impl GenericClient, id_or_name: &str) -> StoreResult<Option<AccountRecord>> {
    db.query_opt(&format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id = $1 OR name = $1"), &[&id_or_name])?
        .map(|row| account_from_row(&row))
        .transpose()
}

fn insert_device(
    db: &mut impl GenericClient,
    account_id: &str,
    info: &DeviceInfo,
    token_hash: &str,
    expires_at: u64,
    approved_by: Option<&str>,
    now_ms: u64,
) -> StoreResult<DeviceRecord> {
    let device = DeviceRecord {
        id: crate::ids::new_id("dev"),
        account_id: account_id.to_owned(),
        info: info.clone(),
        created_at: now_ms,
        last_seen_at: now_ms,
        expires_at,
        revoked_at: None,
    };
    db.execute(
        "INSERT INTO devices (id, account_id, token_hash, hostname, platform, arch, app_version, ip, created_at,
                              last_seen_at, expires_at, approved_by, confirm_key)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9, $10, $11, $12)",
        &[
            &device.id,
            &account_id,
            &token_hash,
            &info.hostname,
            &info.platform,
            &info.arch,
            &info.app_version,
            &info.ip,
            &(now_ms as i64),
            &(expires_at as i64),
            &approved_by,
            &info.confirm_key,
        ],
    )?;
    Ok(device)
}

pub(super) fn create_device(
    db: &mut impl GenericClient,
    account_id: &str,
    info: &DeviceInfo,
    token_hash: &str,
    expires_at: u64,
    now_ms: u64,
) -> StoreResult<DeviceRecord> {
    account(db, account_id)?
        .filter(|a| a.id == account_id)
        .ok_or_else(|| StoreError::NotFound(format!("account {account_id}")))?;
    let device = insert_device(db, account_id, info, token_hash, expires_at, None, now_ms)?;
    audit::append(db, &device_added(&device, None), now_ms)?;
    Ok(device)
}

pub(super) fn device_by_token(
    db: &mut impl GenericClient,
    token_hash: &str,
) -> StoreResult<Option<(DeviceRecord, AccountRecord)>> {
    let device = db
        .query_opt(
            &format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE token_hash = $1 AND revoked_at IS NULL"),
            &[&token_hash],
        )?
        .map(|row| device_from_row(&row))
        .transpose()?;
    let Some(device) = device else { return Ok(None) };
    Ok(account(db, &device.account_id)?.map(|account| (device, account)))
}

pub(super) fn touch_device(
    db: &mut impl GenericClient,
    device_id: &str,
    now_ms: u64,
    expires_at: u64,
) -> StoreResult<()> {
    db.execute(
        "UPDATE devices SET last_seen_at = $2, expires_at = GREATEST(expires_at, $3)
         WHERE id = $1 AND revoked_at IS NULL",
        &[&device_id, &(now_ms as i64), &(expires_at as i64)],
    )?;
    Ok(())
}

pub(super) fn devices(db: &mut impl GenericClient, account_id: &str) -> StoreResult<Vec<DeviceRecord>> {
    db.query(
        &format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE account_id = $1 ORDER BY created_at"),
        &[&account_id],
    )?
    .iter()
    .map(device_from_row)
    .collect()
}

/// Its audit entries are appended, and the directory version bumped, only once every row has
/// changed: no scope lock is held while devices down the line are still being locked, so
/// revoking a device and one it let in at the same time cannot deadlock.
pub(super) fn revoke_device(
    db: &mut impl GenericClient,
    device_id: &str,
    actor: Option<&str>,
    now_ms: u64,
) -> StoreResult<Vec<MemberRecord>> {
    let mut events = Vec::new();
    let members = revoke_device_rows(db, device_id, actor, now_ms, &mut events)?;
    // The audit entries took the meshes' scope locks: the log appends below hold them.
    audit::append_all(db, &events, now_ms)?;
    for member in &members {
        let removal = Change::Removed { member: member.pubkey.clone(), reason: RemovalReason::Revoked };
        super::membership::append(db, &member.mesh_id, removal, now_ms)?;
    }
    if !members.is_empty() {
        bump_directory_version(db)?;
    }
    Ok(members)
}

/// Revokes the device and what it let in, adding their audit events to `events` in order.
fn revoke_device_rows(
    db: &mut impl GenericClient,
    device_id: &str,
    actor: Option<&str>,
    now_ms: u64,
    events: &mut Vec<AuditEvent>,
) -> StoreResult<Vec<MemberRecord>> {
    let device = db
        .query_opt(
            &format!(
                "UPDATE devices SET revoked_at = COALESCE(revoked_at, $2) WHERE id = $1 RETURNING {DEVICE_COLUMNS}"
            ),
            &[&device_id, &(now_ms as i64)],
        )?
        .ok_or_else(|| StoreError::NotFound(format!("device {device_id}")))?;
    let device = device_from_row(&device)?;
    // Approvals this device gave that nobody has collected yet (login tokens, approved codes)
    // die with it: a stolen device must not leave a way back in. A poll collecting one holds
    // its row (`FOR UPDATE`): this waits for it, and the query below sees the device it let in.
    db.execute(
        "UPDATE device_codes SET status = 'denied' WHERE decided_by = $1 AND status = 'approved'",
        &[&device_id],
    )?;
    let mut members = db
        .query(
            &format!(
                "UPDATE members SET revoked_at = $2 WHERE device_id = $1 AND revoked_at IS NULL
                 RETURNING {MEMBER_COLUMNS}"
            ),
            &[&device_id, &(now_ms as i64)],
        )?
        .iter()
        .map(member_from_row)
        .collect::<StoreResult<Vec<_>>>()?;
    events.extend(members.iter().map(|member| AuditEvent {
        scope: member.mesh_id.clone(),
        event_type: "member_device_revoked".to_owned(),
        actor: None,
        payload: json!({"memberId": member.id, "name": member.display_name}),
    }));
    events.push(account_event(
        &device.account_id,
        "device_revoked",
        actor,
        json!({"deviceId": device_id, "hostname": device.info.hostname}),
    ));
    // Devices this one let in shortly before (a thief's accomplices signed in just in time) go
    // with it, each audited with the reason.
    let since = now_ms.saturating_sub(APPROVAL_RECALL_WINDOW.as_millis() as u64);
    let let_in = db
        .query(
            "SELECT id FROM devices WHERE approved_by = $1 AND created_at >= $2 AND revoked_at IS NULL",
            &[&device_id, &(since as i64)],
        )?
        .iter()
        .map(|row| row.try_get::<_, String>(0))
        .collect::<Result<Vec<_>, _>>()?;
    for child in let_in {
        let mut child_members = revoke_device_rows(db, &child, Some(device_id), now_ms, events)?;
        events.push(account_event(
            &device.account_id,
            "device_revoked_with_approver",
            Some(device_id),
            json!({"deviceId": child, "approvedBy": device_id}),
        ));
        members.append(&mut child_members);
    }
    Ok(members)
}

pub(super) fn create_device_code(db: &mut impl GenericClient, code: &NewDeviceCode) -> StoreResult<()> {
    // Expired codes are only kept until the next login starts.
    db.execute("DELETE FROM device_codes WHERE expires_at < $1", &[&(code.created_at as i64)])?;
    db.execute(
        "INSERT INTO device_codes (device_code_hash, user_code, hostname, platform, arch, app_version, ip, created_at,
                                   expires_at, interval_ms, status, account_hint, confirm_key)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'pending', $11, $12)",
        &[
            &code.device_code_hash,
            &code.user_code,
            &code.info.hostname,
            &code.info.platform,
            &code.info.arch,
            &code.info.app_version,
            &code.info.ip,
            &(code.created_at as i64),
            &(code.expires_at as i64),
            &(code.interval_ms as i64),
            &code.account_hint,
            &code.info.confirm_key,
        ],
    )
    .map_err(conflict_on_duplicate("user code collision"))?;
    Ok(())
}

pub(super) fn device_code(db: &mut impl GenericClient, user_code: &str) -> StoreResult<Option<DeviceCodeRecord>> {
    db.query_opt(&format!("SELECT {CODE_COLUMNS} FROM device_codes WHERE user_code = $1"), &[&user_code])?
        .map(|row| code_from_row(&row))
        .transpose()
}

pub(super) fn pending_device_codes(
    db: &mut impl GenericClient,
    account: &AccountRecord,
    now_ms: u64,
) -> StoreResult<Vec<DeviceCodeRecord>> {
    db.query(
        &format!(
            "SELECT {CODE_COLUMNS} FROM device_codes
             WHERE account_hint IN ($1, $2) AND status = 'pending' AND kind = 'device_code' AND expires_at > $3
             ORDER BY created_at"
        ),
        &[&account.id, &account.name, &(now_ms as i64)],
    )?
    .iter()
    .map(code_from_row)
    .collect()
}

fn unknown_code() -> StoreError {
    StoreError::NotFound("unknown user code".into())
}

pub(super) fn count_device_code_attempt(
    db: &mut impl GenericClient,
    user_code: &str,
    max: u32,
) -> StoreResult<DeviceCodeRecord> {
    // Counted and, past the maximum, denied in one statement: concurrent attempts are counted
    // one after another, each seeing the count before it.
    let row = db
        .query_opt(
            &format!(
                "UPDATE device_codes SET attempts = attempts + 1,
                     status = CASE WHEN attempts + 1 > $2 AND status = 'pending' THEN 'denied' ELSE status END
                 WHERE user_code = $1
                 RETURNING {CODE_COLUMNS}"
            ),
            &[&user_code, &i64::from(max)],
        )?
        .ok_or_else(unknown_code)?;
    code_from_row(&row)
}

pub(super) fn decide_device_code(
    db: &mut impl GenericClient,
    user_code: &str,
    approve: bool,
    account_id: &str,
    decided_by: Option<&str>,
    now_ms: u64,
) -> StoreResult<DeviceCodeRecord> {
    // Locked until this decision commits: a concurrent one waits, then finds the code decided.
    let row = db
        .query_opt(
            &format!("SELECT {CODE_COLUMNS}, account_hint FROM device_codes WHERE user_code = $1 FOR UPDATE"),
            &[&user_code],
        )?
        .ok_or_else(unknown_code)?;
    let code = code_from_row(&row)?;
    if now_ms >= code.expires_at {
        return Err(StoreError::Conflict("expired".into()));
    }
    let hint: Option<String> = row.try_get(13)?;
    if let Some(hint) = hint
        && approve
    {
        let named = account(db, &hint)?;
        if named.is_none_or(|named| named.id != account_id) {
            return Err(StoreError::Conflict("account_mismatch".into()));
        }
    }
    if code.status != DeviceCodeStatus::Pending {
        return Err(StoreError::Conflict(format!("already {}", code.status.as_str())));
    }
    let status = if approve { DeviceCodeStatus::Approved } else { DeviceCodeStatus::Denied };
    let decided = db.query_one(
        &format!(
            "UPDATE device_codes SET status = $2, account_id = $3, decided_by = $4, decided_at = $5
             WHERE user_code = $1
             RETURNING {CODE_COLUMNS}"
        ),
        &[&user_code, &status.to_db(), &account_id, &decided_by, &(now_ms as i64)],
    )?;
    audit::append(
        db,
        &account_event(
            account_id,
            if approve { "device_approved" } else { "device_denied" },
            decided_by,
            json!({"hostname": code.info.hostname, "platform": code.info.platform, "ip": code.info.ip}),
        ),
        now_ms,
    )?;
    code_from_row(&decided)
}

pub(super) fn create_login_token(
    db: &mut impl GenericClient,
    token_hash: &str,
    account_id: &str,
    made_by: &str,
    now_ms: u64,
    expires_at: u64,
) -> StoreResult<()> {
    // Never shown: the login token itself is the secret. Unique like every user code. The
    // device that redeems it describes itself in the token poll.
    let user_code = format!("LT{}", crate::ids::new_id("t"));
    db.execute(
        "INSERT INTO device_codes (device_code_hash, user_code, hostname, platform, arch, app_version, ip, created_at,
                                   expires_at, interval_ms, status, kind, account_id, decided_by, decided_at)
         VALUES ($1, $2, '(pasted login token)', '', '', '', '', $3, $4, 0, 'approved', 'login_token', $5, $6, $3)",
        &[&token_hash, &user_code, &(now_ms as i64), &(expires_at as i64), &account_id, &made_by],
    )?;
    audit::append(db, &account_event(account_id, "login_token_created", Some(made_by), json!({})), now_ms)
}

pub(super) fn poll_device_code(
    db: &mut impl GenericClient,
    device_code_hash: &str,
    token_hash: &str,
    token_expires_at: u64,
    claimant: &DeviceInfo,
    now_ms: u64,
) -> StoreResult<PollOutcome> {
    // Locked until this poll commits: a concurrent poll waits, then finds the code consumed, so
    // one approval issues one token.
    let found = db.query_opt(
        &format!(
            "SELECT {CODE_COLUMNS}, last_poll_at, kind, decided_by FROM device_codes WHERE device_code_hash = $1
             FOR UPDATE"
        ),
        &[&device_code_hash],
    )?;
    let Some(row) = found else { return Ok(PollOutcome::Invalid) };
    let mut code = code_from_row(&row)?;
    let last_poll: Option<i64> = row.try_get(13)?;
    let kind: String = row.try_get(14)?;
    let decided_by: Option<String> = row.try_get(15)?;
    if kind == "login_token" {
        code.info = claimant.clone();
    } else if claimant.confirm_key.is_some() {
        // The device that redeems the code holds the token, so its key is the one that counts.
        code.info.confirm_key = claimant.confirm_key.clone();
    }
    if code.status == DeviceCodeStatus::Consumed {
        return Ok(PollOutcome::Invalid);
    }
    if now_ms >= code.expires_at {
        return Ok(PollOutcome::Expired);
    }
    let too_soon = last_poll.is_some_and(|at| now_ms < at as u64 + code.interval_ms);
    if too_soon {
        db.execute(
            "UPDATE device_codes SET interval_ms = interval_ms + $2, last_poll_at = $3 WHERE device_code_hash = $1",
            &[&device_code_hash, &(SLOW_DOWN_STEP_MS as i64), &(now_ms as i64)],
        )?;
        return Ok(PollOutcome::SlowDown);
    }
    db.execute(
        "UPDATE device_codes SET last_poll_at = $2 WHERE device_code_hash = $1",
        &[&device_code_hash, &(now_ms as i64)],
    )?;
    match code.status {
        DeviceCodeStatus::Pending => Ok(PollOutcome::Pending),
        DeviceCodeStatus::Denied => Ok(PollOutcome::Denied),
        DeviceCodeStatus::Consumed => Ok(PollOutcome::Invalid),
        DeviceCodeStatus::Approved => {
            let account_id = code.account_id.clone().ok_or_else(|| StoreError::Unreadable {
                column: "device_codes.account_id",
                value: "NULL for an approved code".into(),
            })?;
            let approved_by = decided_by.as_deref();
            let device = insert_device(db, &account_id, &code.info, token_hash, token_expires_at, approved_by, now_ms)?;
            db.execute(
                "UPDATE device_codes SET status = 'consumed' WHERE device_code_hash = $1",
                &[&device_code_hash],
            )?;
            audit::append(db, &device_added(&device, Some(&kind)), now_ms)?;
            let account = account(db, &account_id)?.ok_or_else(|| StoreError::NotFound("account".into()))?;
            Ok(PollOutcome::Issued { account, device })
        }
    }
}

pub(super) fn create_email_code(
    db: &mut impl GenericClient,
    email: &str,
    code_hash: &str,
    now_ms: u64,
    expires_at: u64,
) -> StoreResult<Option<AccountRecord>> {
    // ASCII folding on both sides, as in SQLite: lower() under the C collation folds only ASCII
    // letters.
    let email = email.trim().to_ascii_lowercase();
    // The account's row stays locked until this commits, so codes asked for one address at once
    // are made one after another, each ending the one before.
    let account = db
        .query_opt(
            &format!(
                "SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE lower(email COLLATE \"C\") = $1
                 ORDER BY created_at LIMIT 1 FOR NO KEY UPDATE"
            ),
            &[&email],
        )?
        .map(|row| account_from_row(&row))
        .transpose()?;
    let Some(account) = account else { return Ok(None) };
    // One live code per address: asking again ends the one before.
    db.execute(
        "UPDATE email_codes SET ended_at = $2 WHERE email = $1 AND ended_at IS NULL",
        &[&email, &(now_ms as i64)],
    )?;
    db.execute("DELETE FROM email_codes WHERE expires_at < $1", &[&(now_ms as i64)])?;
    db.execute(
        "INSERT INTO email_codes (id, email, account_id, code_hash, created_at, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6)",
        &[&crate::ids::new_id("ec"), &email, &account.id, &code_hash, &(now_ms as i64), &(expires_at as i64)],
    )?;
    audit::append(db, &account_event(&account.id, "email_code_sent", None, json!({})), now_ms)?;
    Ok(Some(account))
}

#[allow(clippy::too_many_arguments)]
pub(super) fn redeem_email_code(
    db: &mut impl GenericClient,
    email: &str,
    code_hash: &str,
    max_attempts: u32,
    device: &DeviceInfo,
    token_hash: &str,
    token_expires_at: u64,
    now_ms: u64,
) -> StoreResult<EmailCodeOutcome> {
    // Folded as `create_email_code` stored it.
    let email = email.trim().to_ascii_lowercase();
    // Locked until this redemption commits: concurrent guesses are counted one after another,
    // and the right code signs in one device.
    let live = db.query_opt(
        "SELECT id, account_id, code_hash, attempts FROM email_codes
         WHERE email = $1 AND ended_at IS NULL AND expires_at > $2 ORDER BY created_at DESC LIMIT 1
         FOR UPDATE",
        &[&email, &(now_ms as i64)],
    )?;
    let Some(row) = live else { return Ok(EmailCodeOutcome::Refused) };
    let id: String = row.try_get(0)?;
    let account_id: String = row.try_get(1)?;
    let expected: String = row.try_get(2)?;
    let attempts: i64 = row.try_get(3)?;
    if attempts as u64 >= u64::from(max_attempts) {
        return Ok(EmailCodeOutcome::Exhausted);
    }
    if expected != code_hash {
        db.execute("UPDATE email_codes SET attempts = attempts + 1 WHERE id = $1", &[&id])?;
        audit::append(
            db,
            &account_event(&account_id, "email_code_refused", None, json!({"attempt": attempts + 1, "ip": device.ip})),
            now_ms,
        )?;
        return Ok(EmailCodeOutcome::Refused);
    }
    db.execute("UPDATE email_codes SET ended_at = $2 WHERE id = $1", &[&id, &(now_ms as i64)])?;
    let account = account(db, &account_id)?.ok_or_else(|| StoreError::NotFound(format!("account {account_id}")))?;
    let device = insert_device(db, &account_id, device, token_hash, token_expires_at, None, now_ms)?;
    audit::append(db, &device_added(&device, Some("email_code")), now_ms)?;
    Ok(EmailCodeOutcome::Issued { account, device })
}
