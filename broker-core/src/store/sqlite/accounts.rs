//! Accounts, signed-in devices and device logins in SQLite.

use rusqlite::{Connection, OptionalExtension, Row, params};
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

fn account_from_row(row: &Row<'_>) -> rusqlite::Result<AccountRecord> {
    Ok(AccountRecord {
        id: row.get(0)?,
        name: row.get(1)?,
        email: row.get(2)?,
        created_at: row.get::<_, i64>(3)? as u64,
    })
}

fn device_from_row(row: &Row<'_>) -> rusqlite::Result<DeviceRecord> {
    Ok(DeviceRecord {
        id: row.get(0)?,
        account_id: row.get(1)?,
        info: DeviceInfo {
            hostname: row.get(2)?,
            platform: row.get(3)?,
            arch: row.get(4)?,
            app_version: row.get(5)?,
            ip: row.get(6)?,
            confirm_key: row.get(11)?,
        },
        created_at: row.get::<_, i64>(7)? as u64,
        last_seen_at: row.get::<_, i64>(8)? as u64,
        expires_at: row.get::<_, i64>(9)? as u64,
        revoked_at: row.get::<_, Option<i64>>(10)?.map(|v| v as u64),
    })
}

fn code_from_row(row: &Row<'_>) -> rusqlite::Result<DeviceCodeRecord> {
    Ok(DeviceCodeRecord {
        user_code: row.get(0)?,
        info: DeviceInfo {
            hostname: row.get(1)?,
            platform: row.get(2)?,
            arch: row.get(3)?,
            app_version: row.get(4)?,
            ip: row.get(5)?,
            confirm_key: row.get(12)?,
        },
        created_at: row.get::<_, i64>(6)? as u64,
        expires_at: row.get::<_, i64>(7)? as u64,
        interval_ms: row.get::<_, i64>(8)? as u64,
        status: codes::read(row, 9, "device_codes.status")?,
        account_id: row.get(10)?,
        attempts: row.get::<_, i64>(11)? as u32,
    })
}

pub(super) fn create_account(
    conn: &Connection,
    name: &str,
    email: Option<&str>,
    now_ms: u64,
) -> StoreResult<AccountRecord> {
    let name = name.trim();
    if name.is_empty() {
        return Err(StoreError::Invalid("the account name is empty".into()));
    }
    if account(conn, name)?.is_some() {
        return Err(StoreError::Conflict(format!("an account named {name:?} already exists")));
    }
    let record = AccountRecord {
        id: crate::ids::new_id("acct"),
        name: name.to_owned(),
        email: email.map(str::to_owned).filter(|e| !e.trim().is_empty()),
        created_at: now_ms,
    };
    conn.execute(
        &format!("INSERT INTO accounts ({ACCOUNT_COLUMNS}) VALUES (?1, ?2, ?3, ?4)"),
        params![record.id, record.name, record.email, now_ms as i64],
    )?;
    audit::append(conn, &account_event(&record.id, "account_created", None, json!({"name": record.name})), now_ms)?;
    Ok(record)
}

pub(super) fn account(conn: &Connection, id_or_name: &str) -> rusqlite::Result<Option<AccountRecord>> {
    conn.query_row(
        &format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id = ?1 OR name = ?1"),
        [id_or_name],
        account_from_row,
    )
    .optional()
}

fn insert_device(
    conn: &Connection,
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
    conn.execute(
        "INSERT INTO devices (id, account_id, token_hash, hostname, platform, arch, app_version, ip, created_at,
                                  last_seen_at, expires_at, approved_by, confirm_key)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9, ?10, ?11, ?12)",
        params![
            device.id,
            account_id,
            token_hash,
            info.hostname,
            info.platform,
            info.arch,
            info.app_version,
            info.ip,
            now_ms as i64,
            expires_at as i64,
            approved_by,
            info.confirm_key
        ],
    )?;
    Ok(device)
}

pub(super) fn create_device(
    conn: &Connection,
    account_id: &str,
    info: &DeviceInfo,
    token_hash: &str,
    expires_at: u64,
    now_ms: u64,
) -> StoreResult<DeviceRecord> {
    account(conn, account_id)?
        .filter(|a| a.id == account_id)
        .ok_or_else(|| StoreError::NotFound(format!("account {account_id}")))?;
    let device = insert_device(conn, account_id, info, token_hash, expires_at, None, now_ms)?;
    audit::append(conn, &device_added(&device, None), now_ms)?;
    Ok(device)
}

pub(super) fn device_by_token(
    conn: &Connection,
    token_hash: &str,
) -> rusqlite::Result<Option<(DeviceRecord, AccountRecord)>> {
    let device = conn
        .prepare_cached(&format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE token_hash = ?1 AND revoked_at IS NULL"))?
        .query_row([token_hash], device_from_row)
        .optional()?;
    let Some(device) = device else { return Ok(None) };
    Ok(account(conn, &device.account_id)?.map(|account| (device, account)))
}

pub(super) fn touch_device(conn: &Connection, device_id: &str, now_ms: u64, expires_at: u64) -> StoreResult<()> {
    conn.execute(
        "UPDATE devices SET last_seen_at = ?2, expires_at = MAX(expires_at, ?3) WHERE id = ?1 AND revoked_at IS NULL",
        params![device_id, now_ms as i64, expires_at as i64],
    )?;
    Ok(())
}

pub(super) fn devices(conn: &Connection, account_id: &str) -> rusqlite::Result<Vec<DeviceRecord>> {
    let mut stmt =
        conn.prepare(&format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE account_id = ?1 ORDER BY created_at"))?;

    stmt.query_map([account_id], device_from_row)?.collect()
}

pub(super) fn revoke_device(
    conn: &Connection,
    device_id: &str,
    actor: Option<&str>,
    now_ms: u64,
) -> StoreResult<Vec<MemberRecord>> {
    let device = conn
        .query_row(&format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE id = ?1"), [device_id], device_from_row)
        .optional()?
        .ok_or_else(|| StoreError::NotFound(format!("device {device_id}")))?;
    conn.execute(
        "UPDATE devices SET revoked_at = COALESCE(revoked_at, ?2) WHERE id = ?1",
        params![device_id, now_ms as i64],
    )?;
    // Approvals this device gave that nobody has collected yet (login tokens, approved codes)
    // die with it: a stolen device must not leave a way back in.
    conn.execute(
        "UPDATE device_codes SET status = 'denied' WHERE decided_by = ?1 AND status = 'approved'",
        [device_id],
    )?;
    let mut stmt =
        conn.prepare(&format!("SELECT {MEMBER_COLUMNS} FROM members WHERE device_id = ?1 AND revoked_at IS NULL"))?;
    let mut members: Vec<MemberRecord> = stmt.query_map([device_id], member_from_row)?.collect::<Result<_, _>>()?;
    conn.execute(
        "UPDATE members SET revoked_at = ?2 WHERE device_id = ?1 AND revoked_at IS NULL",
        params![device_id, now_ms as i64],
    )?;
    for member in &mut members {
        member.revoked_at = Some(now_ms);
        audit::append(
            conn,
            &AuditEvent {
                scope: member.mesh_id.clone(),
                event_type: "member_device_revoked".to_owned(),
                actor: None,
                payload: json!({"memberId": member.id, "name": member.display_name}),
            },
            now_ms,
        )?;
        let removal = Change::Removed { member: member.pubkey.clone(), reason: RemovalReason::Revoked };
        super::membership::append(conn, &member.mesh_id, removal, now_ms)?;
    }
    audit::append(
        conn,
        &account_event(
            &device.account_id,
            "device_revoked",
            actor,
            json!({"deviceId": device_id, "hostname": device.info.hostname}),
        ),
        now_ms,
    )?;
    // Devices this one let in shortly before (a thief's accomplices signed in just in time) go
    // with it, each audited with the reason.
    let since = now_ms.saturating_sub(APPROVAL_RECALL_WINDOW.as_millis() as u64);
    let let_in: Vec<String> = conn
        .prepare("SELECT id FROM devices WHERE approved_by = ?1 AND created_at >= ?2 AND revoked_at IS NULL")?
        .query_map(params![device_id, since as i64], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    for child in let_in {
        let mut child_members = revoke_device(conn, &child, Some(device_id), now_ms)?;
        audit::append(
            conn,
            &account_event(
                &device.account_id,
                "device_revoked_with_approver",
                Some(device_id),
                json!({"deviceId": child, "approvedBy": device_id}),
            ),
            now_ms,
        )?;
        members.append(&mut child_members);
    }
    if !members.is_empty() {
        bump_directory_version(conn)?;
    }
    Ok(members)
}

pub(super) fn create_device_code(conn: &Connection, code: &NewDeviceCode) -> StoreResult<()> {
    // Expired codes are only kept until the next login starts.
    conn.execute("DELETE FROM device_codes WHERE expires_at < ?1", [code.created_at as i64])?;
    conn.execute(
        "INSERT INTO device_codes (device_code_hash, user_code, hostname, platform, arch, app_version, ip, created_at,
                                   expires_at, interval_ms, status, account_hint, confirm_key)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 'pending', ?11, ?12)",
        params![
            code.device_code_hash,
            code.user_code,
            code.info.hostname,
            code.info.platform,
            code.info.arch,
            code.info.app_version,
            code.info.ip,
            code.created_at as i64,
            code.expires_at as i64,
            code.interval_ms as i64,
            code.account_hint,
            code.info.confirm_key
        ],
    )
    .map_err(conflict_on_duplicate("user code collision"))?;
    Ok(())
}

pub(super) fn device_code(conn: &Connection, user_code: &str) -> rusqlite::Result<Option<DeviceCodeRecord>> {
    conn.query_row(&format!("SELECT {CODE_COLUMNS} FROM device_codes WHERE user_code = ?1"), [user_code], code_from_row)
        .optional()
}

pub(super) fn pending_device_codes(
    conn: &Connection,
    account: &AccountRecord,
    now_ms: u64,
) -> rusqlite::Result<Vec<DeviceCodeRecord>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {CODE_COLUMNS} FROM device_codes
         WHERE account_hint IN (?1, ?2) AND status = 'pending' AND kind = 'device_code' AND expires_at > ?3
         ORDER BY created_at"
    ))?;
    stmt.query_map(params![account.id, account.name, now_ms as i64], code_from_row)?.collect()
}

fn require_code(conn: &Connection, user_code: &str) -> StoreResult<DeviceCodeRecord> {
    device_code(conn, user_code)?.ok_or_else(|| StoreError::NotFound("unknown user code".into()))
}

pub(super) fn count_device_code_attempt(conn: &Connection, user_code: &str, max: u32) -> StoreResult<DeviceCodeRecord> {
    conn.execute("UPDATE device_codes SET attempts = attempts + 1 WHERE user_code = ?1", [user_code])?;
    let code = require_code(conn, user_code)?;
    if code.attempts > max && code.status == DeviceCodeStatus::Pending {
        conn.execute("UPDATE device_codes SET status = 'denied' WHERE user_code = ?1", [user_code])?;
        return require_code(conn, user_code);
    }
    Ok(code)
}

pub(super) fn decide_device_code(
    conn: &Connection,
    user_code: &str,
    approve: bool,
    account_id: &str,
    decided_by: Option<&str>,
    now_ms: u64,
) -> StoreResult<DeviceCodeRecord> {
    let code = require_code(conn, user_code)?;
    if now_ms >= code.expires_at {
        return Err(StoreError::Conflict("expired".into()));
    }
    let hint: Option<String> =
        conn.query_row("SELECT account_hint FROM device_codes WHERE user_code = ?1", [user_code], |row| row.get(0))?;
    if let Some(hint) = hint
        && approve
    {
        let named = account(conn, &hint)?;
        if named.is_none_or(|named| named.id != account_id) {
            return Err(StoreError::Conflict("account_mismatch".into()));
        }
    }
    if code.status != DeviceCodeStatus::Pending {
        return Err(StoreError::Conflict(format!("already {}", code.status.as_str())));
    }
    let status = if approve { DeviceCodeStatus::Approved } else { DeviceCodeStatus::Denied };
    conn.execute(
        "UPDATE device_codes SET status = ?2, account_id = ?3, decided_by = ?4, decided_at = ?5 WHERE user_code = ?1",
        params![user_code, status.to_db(), account_id, decided_by, now_ms as i64],
    )?;
    audit::append(
        conn,
        &account_event(
            account_id,
            if approve { "device_approved" } else { "device_denied" },
            decided_by,
            json!({"hostname": code.info.hostname, "platform": code.info.platform, "ip": code.info.ip}),
        ),
        now_ms,
    )?;
    require_code(conn, user_code)
}

pub(super) fn create_login_token(
    conn: &Connection,
    token_hash: &str,
    account_id: &str,
    made_by: &str,
    now_ms: u64,
    expires_at: u64,
) -> StoreResult<()> {
    // Never shown: the login token itself is the secret. Unique like every user code. The
    // device that redeems it describes itself in the token poll.
    let user_code = format!("LT{}", crate::ids::new_id("t"));
    conn.execute(
        "INSERT INTO device_codes (device_code_hash, user_code, hostname, platform, arch, app_version, ip, created_at,
                                   expires_at, interval_ms, status, kind, account_id, decided_by, decided_at)
         VALUES (?1, ?2, '(pasted login token)', '', '', '', '', ?3, ?4, 0, 'approved', 'login_token', ?5, ?6, ?3)",
        params![token_hash, user_code, now_ms as i64, expires_at as i64, account_id, made_by],
    )?;
    audit::append(conn, &account_event(account_id, "login_token_created", Some(made_by), json!({})), now_ms)
}

pub(super) fn poll_device_code(
    conn: &Connection,
    device_code_hash: &str,
    token_hash: &str,
    token_expires_at: u64,
    claimant: &DeviceInfo,
    now_ms: u64,
) -> StoreResult<PollOutcome> {
    let found = conn
        .query_row(
            &format!(
                "SELECT {CODE_COLUMNS}, last_poll_at, kind, decided_by FROM device_codes WHERE device_code_hash = ?1"
            ),
            [device_code_hash],
            |row| {
                let extra =
                    (row.get::<_, Option<i64>>(13)?, row.get::<_, String>(14)?, row.get::<_, Option<String>>(15)?);
                Ok((code_from_row(row)?, extra))
            },
        )
        .optional()?;
    let Some((mut code, (last_poll, kind, decided_by))) = found else { return Ok(PollOutcome::Invalid) };
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
        conn.execute(
            "UPDATE device_codes SET interval_ms = interval_ms + ?2, last_poll_at = ?3 WHERE device_code_hash = ?1",
            params![device_code_hash, SLOW_DOWN_STEP_MS as i64, now_ms as i64],
        )?;
        return Ok(PollOutcome::SlowDown);
    }
    conn.execute(
        "UPDATE device_codes SET last_poll_at = ?2 WHERE device_code_hash = ?1",
        params![device_code_hash, now_ms as i64],
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
            let device =
                insert_device(conn, &account_id, &code.info, token_hash, token_expires_at, approved_by, now_ms)?;
            conn.execute(
                "UPDATE device_codes SET status = 'consumed' WHERE device_code_hash = ?1",
                [device_code_hash],
            )?;
            audit::append(conn, &device_added(&device, Some(&kind)), now_ms)?;
            let account = account(conn, &account_id)?.ok_or_else(|| StoreError::NotFound("account".into()))?;
            Ok(PollOutcome::Issued { account, device })
        }
    }
}

pub(super) fn create_email_code(
    conn: &Connection,
    email: &str,
    code_hash: &str,
    now_ms: u64,
    expires_at: u64,
) -> StoreResult<Option<AccountRecord>> {
    // ASCII folding on both sides: SQLite's lower() folds only ASCII letters.
    let email = email.trim().to_ascii_lowercase();
    let account = conn
        .query_row(
            &format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE lower(email) = ?1 ORDER BY created_at LIMIT 1"),
            [&email],
            account_from_row,
        )
        .optional()?;
    let Some(account) = account else { return Ok(None) };
    // One live code per address: asking again ends the one before.
    conn.execute(
        "UPDATE email_codes SET ended_at = ?2 WHERE email = ?1 AND ended_at IS NULL",
        params![email, now_ms as i64],
    )?;
    conn.execute("DELETE FROM email_codes WHERE expires_at < ?1", [now_ms as i64])?;
    conn.execute(
        "INSERT INTO email_codes (id, email, account_id, code_hash, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![crate::ids::new_id("ec"), email, account.id, code_hash, now_ms as i64, expires_at as i64],
    )?;
    audit::append(conn, &account_event(&account.id, "email_code_sent", None, json!({})), now_ms)?;
    Ok(Some(account))
}

#[allow(clippy::too_many_arguments)]
pub(super) fn redeem_email_code(
    conn: &Connection,
    email: &str,
    code_hash: &str,
    max_attempts: u32,
    device: &DeviceInfo,
    token_hash: &str,
    token_expires_at: u64,
    now_ms: u64,
) -> StoreResult<EmailCodeOutcome> {
    // ASCII folding on both sides: SQLite's lower() folds only ASCII letters.
    let email = email.trim().to_ascii_lowercase();
    let live = conn
        .query_row(
            "SELECT id, account_id, code_hash, attempts FROM email_codes
             WHERE email = ?1 AND ended_at IS NULL AND expires_at > ?2 ORDER BY created_at DESC LIMIT 1",
            params![email, now_ms as i64],
            |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, i64>(3)?,
                ))
            },
        )
        .optional()?;
    let Some((id, account_id, expected, attempts)) = live else { return Ok(EmailCodeOutcome::Refused) };
    if attempts as u64 >= u64::from(max_attempts) {
        return Ok(EmailCodeOutcome::Exhausted);
    }
    if expected != code_hash {
        conn.execute("UPDATE email_codes SET attempts = attempts + 1 WHERE id = ?1", [&id])?;
        audit::append(
            conn,
            &account_event(&account_id, "email_code_refused", None, json!({"attempt": attempts + 1, "ip": device.ip})),
            now_ms,
        )?;
        return Ok(EmailCodeOutcome::Refused);
    }
    conn.execute("UPDATE email_codes SET ended_at = ?2 WHERE id = ?1", params![id, now_ms as i64])?;
    let account = account(conn, &account_id)?.ok_or_else(|| StoreError::NotFound(format!("account {account_id}")))?;
    let device = insert_device(conn, &account_id, device, token_hash, token_expires_at, None, now_ms)?;
    audit::append(conn, &device_added(&device, Some("email_code")), now_ms)?;
    Ok(EmailCodeOutcome::Issued { account, device })
}
