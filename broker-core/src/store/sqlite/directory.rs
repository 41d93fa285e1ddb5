//! Meshes, members, invites and grants in SQLite. Every change appends its audit entry and
//! bumps the directory version in the same transaction.

use rusqlite::{Connection, OptionalExtension, Row, params};
use serde_json::json;

use super::codes;
use super::{audit, conflict_on_duplicate, membership};
use crate::membership::Admission;
use crate::protocol::Role;
use crate::store::codes::DbCode as _;
use crate::store::records::{INVITE_COLUMNS, MEMBER_COLUMNS, MESH_COLUMNS, check_name_free, event, new_member_record};
use crate::store::{
    AccountMesh, GrantChange, GrantRecord, InviteRecord, MemberRecord, MembershipAction, MeshRecord, NewMember,
    Redemption, StoreError, StoreResult, admission_change,
};

pub(super) fn mesh_from_row(row: &Row<'_>) -> rusqlite::Result<MeshRecord> {
    Ok(MeshRecord {
        id: row.get(0)?,
        slug: row.get(1)?,
        name: row.get(2)?,
        created_at: row.get::<_, i64>(3)? as u64,
        archived_at: row.get::<_, Option<i64>>(4)?.map(|v| v as u64),
        owner_account_id: row.get(5)?,
    })
}

pub(super) fn member_from_row(row: &Row<'_>) -> rusqlite::Result<MemberRecord> {
    Ok(MemberRecord {
        id: row.get(0)?,
        mesh_id: row.get(1)?,
        pubkey: row.get(2)?,
        display_name: row.get(3)?,
        role: codes::read(row, 4, "members.role")?,
        created_at: row.get::<_, i64>(5)? as u64,
        revoked_at: row.get::<_, Option<i64>>(6)?.map(|v| v as u64),
        banned_at: row.get::<_, Option<i64>>(7)?.map(|v| v as u64),
        account_id: row.get(8)?,
        device_id: row.get(9)?,
    })
}

fn invite_from_row(row: &Row<'_>) -> rusqlite::Result<InviteRecord> {
    Ok(InviteRecord {
        id: row.get(0)?,
        mesh_id: row.get(1)?,
        role: codes::read(row, 2, "invites.role")?,
        max_uses: row.get::<_, i64>(3)? as u32,
        used_count: row.get::<_, i64>(4)? as u32,
        expires_at: row.get::<_, i64>(5)? as u64,
        issuer_member_id: row.get(6)?,
        created_at: row.get::<_, i64>(7)? as u64,
        revoked_at: row.get::<_, Option<i64>>(8)?.map(|v| v as u64),
        email: row.get(9)?,
    })
}

/// Records that meshes, members or grants changed, so running brokers reload their directory.
pub(super) fn bump_directory_version(conn: &Connection) -> StoreResult<()> {
    conn.execute(
        "INSERT INTO settings (key, value) VALUES ('directory_version', '1')
         ON CONFLICT (key) DO UPDATE SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT)",
        [],
    )?;
    Ok(())
}

pub(super) fn mesh(conn: &Connection, id_or_slug: &str) -> rusqlite::Result<Option<MeshRecord>> {
    conn.query_row(
        &format!("SELECT {MESH_COLUMNS} FROM meshes WHERE id = ?1 OR slug = ?1"),
        [id_or_slug],
        mesh_from_row,
    )
    .optional()
}

fn require_mesh(conn: &Connection, mesh_id: &str) -> StoreResult<MeshRecord> {
    mesh(conn, mesh_id)?.filter(|m| m.id == mesh_id).ok_or_else(|| StoreError::NotFound(format!("mesh {mesh_id}")))
}

pub(super) fn member(conn: &Connection, member_id: &str) -> rusqlite::Result<Option<MemberRecord>> {
    conn.query_row(&format!("SELECT {MEMBER_COLUMNS} FROM members WHERE id = ?1"), [member_id], member_from_row)
        .optional()
}

pub(super) fn member_by_pubkey(
    conn: &Connection,
    mesh_id: &str,
    pubkey: &str,
) -> rusqlite::Result<Option<MemberRecord>> {
    conn.query_row(
        &format!("SELECT {MEMBER_COLUMNS} FROM members WHERE mesh_id = ?1 AND pubkey = ?2"),
        [mesh_id, pubkey],
        member_from_row,
    )
    .optional()
}

pub(super) fn members(conn: &Connection, mesh_id: &str) -> rusqlite::Result<Vec<MemberRecord>> {
    let mut stmt =
        conn.prepare(&format!("SELECT {MEMBER_COLUMNS} FROM members WHERE mesh_id = ?1 ORDER BY created_at, id"))?;

    stmt.query_map([mesh_id], member_from_row)?.collect()
}

pub(super) fn key_owner(conn: &Connection, mesh_id: &str, pubkey: &str) -> rusqlite::Result<Option<String>> {
    conn.query_row("SELECT member_id FROM mesh_keys WHERE mesh_id = ?1 AND pubkey = ?2", [mesh_id, pubkey], |row| {
        row.get(0)
    })
    .optional()
}

/// Each current member's name and account, for [`check_name_free`].
fn current_names(conn: &Connection, mesh_id: &str) -> rusqlite::Result<Vec<(String, Option<String>)>> {
    let mut stmt =
        conn.prepare_cached("SELECT display_name, account_id FROM members WHERE mesh_id = ?1 AND revoked_at IS NULL")?;
    stmt.query_map([mesh_id], |row| Ok((row.get(0)?, row.get(1)?)))?.collect()
}

fn insert_member(
    conn: &Connection,
    member: &MemberRecord,
    actor: Option<&str>,
    how: &str,
    admission: Option<&Admission>,
    now_ms: u64,
) -> StoreResult<()> {
    if key_owner(conn, &member.mesh_id, &member.pubkey)?.is_some_and(|owner| owner != member.id) {
        return Err(StoreError::Conflict("key_taken".into()));
    }
    check_name_free(member, current_names(conn, &member.mesh_id)?)?;
    conn.execute(
        "INSERT INTO mesh_keys (mesh_id, pubkey, member_id, kind, first_seen_at) VALUES (?1, ?2, ?3, 'member', ?4)",
        params![member.mesh_id, member.pubkey, member.id, member.created_at as i64],
    )?;
    conn.execute(
        &format!("INSERT INTO members ({MEMBER_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, NULL, NULL, ?7, ?8)"),
        params![
            member.id,
            member.mesh_id,
            member.pubkey,
            member.display_name,
            member.role.to_db(),
            member.created_at as i64,
            member.account_id,
            member.device_id
        ],
    )?;
    audit::append(
        conn,
        &event(
            &member.mesh_id,
            "member_joined",
            actor.or(Some(&member.id)),
            json!({"memberId": member.id, "name": member.display_name, "pubkey": member.pubkey, "role": member.role, "via": how}),
        ),
        now_ms,
    )?;
    if let Some(change) = admission_change(member, how, admission) {
        membership::append(conn, &member.mesh_id, change, now_ms)?;
    }
    bump_directory_version(conn)
}

pub(super) fn create_mesh(
    conn: &Connection,
    name: &str,
    base_slug: &str,
    owner_account_id: Option<&str>,
    creator: &NewMember,
    now_ms: u64,
) -> StoreResult<(MeshRecord, MemberRecord)> {
    let mut slug = base_slug.to_owned();
    let mut suffix = 2;
    while conn
        .query_row("SELECT EXISTS (SELECT 1 FROM meshes WHERE slug = ?1)", [&slug], |row| row.get::<_, bool>(0))?
    {
        slug = format!("{base_slug}-{suffix}");
        suffix += 1;
    }
    // A creator that signs the genesis chose the mesh id it signed.
    let id = match &creator.admission {
        Some(Admission::Genesis { mesh_id, .. }) => mesh_id.clone(),
        _ => crate::ids::new_id("mesh"),
    };
    if mesh(conn, &id)?.is_some_and(|m| m.id == id) {
        return Err(StoreError::Conflict("a mesh with this id already exists".into()));
    }
    let mesh = MeshRecord {
        id,
        slug,
        name: name.to_owned(),
        created_at: now_ms,
        archived_at: None,
        owner_account_id: owner_account_id.map(str::to_owned),
    };
    conn.execute(
        "INSERT INTO meshes (id, slug, name, created_at, owner_account_id) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![mesh.id, mesh.slug, mesh.name, now_ms as i64, mesh.owner_account_id],
    )?;
    let admin = new_member_record(&mesh.id, creator, Role::Admin, now_ms);
    audit::append(
        conn,
        &event(&mesh.id, "mesh_created", Some(&admin.id), json!({"name": mesh.name, "slug": mesh.slug})),
        now_ms,
    )?;
    insert_member(conn, &admin, Some(&admin.id), "create", creator.admission.as_ref(), now_ms)?;
    Ok((mesh, admin))
}

pub(super) fn rename_mesh(
    conn: &Connection,
    mesh_id: &str,
    name: &str,
    actor: Option<&str>,
    now_ms: u64,
) -> StoreResult<MeshRecord> {
    let before = require_mesh(conn, mesh_id)?;
    conn.execute("UPDATE meshes SET name = ?2 WHERE id = ?1", [mesh_id, name])?;
    audit::append(conn, &event(mesh_id, "mesh_renamed", actor, json!({"from": before.name, "to": name})), now_ms)?;
    bump_directory_version(conn)?;
    require_mesh(conn, mesh_id)
}

pub(super) fn archive_mesh(
    conn: &Connection,
    mesh_id: &str,
    actor: Option<&str>,
    now_ms: u64,
) -> StoreResult<MeshRecord> {
    let mesh = require_mesh(conn, mesh_id)?;
    if mesh.archived_at.is_some() {
        return Ok(mesh);
    }
    conn.execute("UPDATE meshes SET archived_at = ?2 WHERE id = ?1", params![mesh_id, now_ms as i64])?;
    audit::append(conn, &event(mesh_id, "mesh_archived", actor, json!({})), now_ms)?;
    bump_directory_version(conn)?;
    require_mesh(conn, mesh_id)
}

pub(super) fn add_member(
    conn: &Connection,
    mesh_id: &str,
    member: &NewMember,
    role: Role,
    actor: Option<&str>,
    now_ms: u64,
) -> StoreResult<MemberRecord> {
    require_mesh(conn, mesh_id)?;
    if member_by_pubkey(conn, mesh_id, &member.pubkey)?.is_some() {
        return Err(StoreError::Conflict("a member with this public key is already in the mesh".into()));
    }
    let record = new_member_record(mesh_id, member, role, now_ms);
    insert_member(conn, &record, actor, "added", member.admission.as_ref(), now_ms)?;
    Ok(record)
}

pub(super) fn change_membership(
    conn: &Connection,
    member_id: &str,
    action: MembershipAction,
    actor: Option<&str>,
    now_ms: u64,
) -> StoreResult<MemberRecord> {
    let current = member(conn, member_id)?.ok_or_else(|| StoreError::NotFound(format!("member {member_id}")))?;
    let now = now_ms as i64;
    match action {
        MembershipAction::Kick | MembershipAction::Leave => conn
            .execute("UPDATE members SET revoked_at = COALESCE(revoked_at, ?2) WHERE id = ?1", params![member_id, now]),
        MembershipAction::Ban => conn
            .execute("UPDATE members SET banned_at = COALESCE(banned_at, ?2) WHERE id = ?1", params![member_id, now]),
        MembershipAction::Unban => conn.execute("UPDATE members SET banned_at = NULL WHERE id = ?1", [member_id]),
    }?;
    audit::append(
        conn,
        &event(&current.mesh_id, action.event(), actor, json!({"memberId": member_id, "name": current.display_name})),
        now_ms,
    )?;
    bump_directory_version(conn)?;
    let changed = member(conn, member_id)?.ok_or_else(|| StoreError::NotFound(format!("member {member_id}")))?;
    if let Some(change) = action.log_change(&current, &changed) {
        membership::append(conn, &current.mesh_id, change, now_ms)?;
    }
    Ok(changed)
}

pub(super) fn account_meshes(conn: &Connection, account_id: &str) -> rusqlite::Result<Vec<AccountMesh>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {}, MIN(CASE m.role WHEN 'admin' THEN 0 ELSE 1 END),
                (SELECT COUNT(*) FROM members c WHERE c.mesh_id = s.id AND c.revoked_at IS NULL AND c.banned_at IS NULL)
         FROM meshes s JOIN members m ON m.mesh_id = s.id
         WHERE m.account_id = ?1 AND m.revoked_at IS NULL AND m.banned_at IS NULL
         GROUP BY s.id ORDER BY s.created_at",
        MESH_COLUMNS.split(", ").map(|c| format!("s.{c}")).collect::<Vec<_>>().join(", ")
    ))?;

    stmt.query_map([account_id], |row| {
        Ok(AccountMesh {
            mesh: mesh_from_row(row)?,
            role: if row.get::<_, i64>(6)? == 0 { Role::Admin } else { Role::Member },
            member_count: row.get::<_, i64>(7)? as u64,
        })
    })?
    .collect()
}

pub(super) fn create_invite(conn: &Connection, invite: &InviteRecord, now_ms: u64) -> StoreResult<()> {
    require_mesh(conn, &invite.mesh_id)?;
    conn.execute(
        &format!("INSERT INTO invites ({INVITE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"),
        params![
            invite.id,
            invite.mesh_id,
            invite.role.to_db(),
            invite.max_uses as i64,
            invite.used_count as i64,
            invite.expires_at as i64,
            invite.issuer_member_id,
            invite.created_at as i64,
            invite.revoked_at.map(|v| v as i64),
            invite.email,
        ],
    )
    .map_err(conflict_on_duplicate("an invite with this id already exists"))?;
    audit::append(
        conn,
        &event(
            &invite.mesh_id,
            "invite_created",
            Some(&invite.issuer_member_id),
            json!({"inviteId": invite.id, "role": invite.role, "maxUses": invite.max_uses, "expiresAt": invite.expires_at,
                   "emailed": invite.email.is_some()}),
        ),
        now_ms,
    )
}

pub(super) fn invite(conn: &Connection, invite_id: &str) -> rusqlite::Result<Option<InviteRecord>> {
    conn.query_row(&format!("SELECT {INVITE_COLUMNS} FROM invites WHERE id = ?1"), [invite_id], invite_from_row)
        .optional()
}

pub(super) fn invites(conn: &Connection, mesh_id: &str) -> rusqlite::Result<Vec<InviteRecord>> {
    let mut stmt =
        conn.prepare(&format!("SELECT {INVITE_COLUMNS} FROM invites WHERE mesh_id = ?1 ORDER BY created_at DESC"))?;

    stmt.query_map([mesh_id], invite_from_row)?.collect()
}

pub(super) fn revoke_invite(
    conn: &Connection,
    invite_id: &str,
    actor: Option<&str>,
    now_ms: u64,
) -> StoreResult<InviteRecord> {
    let record = invite(conn, invite_id)?.ok_or_else(|| StoreError::NotFound(format!("invite {invite_id}")))?;
    conn.execute(
        "UPDATE invites SET revoked_at = COALESCE(revoked_at, ?2) WHERE id = ?1",
        params![invite_id, now_ms as i64],
    )?;
    audit::append(conn, &event(&record.mesh_id, "invite_revoked", actor, json!({"inviteId": invite_id})), now_ms)?;
    invite(conn, invite_id)?.ok_or_else(|| StoreError::NotFound(format!("invite {invite_id}")))
}

pub(super) fn redeem_invite(
    conn: &Connection,
    invite_id: &str,
    member: &NewMember,
    now_ms: u64,
) -> StoreResult<Redemption> {
    let invite = invite(conn, invite_id)?.ok_or_else(|| StoreError::NotFound("invite_not_found".into()))?;
    if let Some(existing) = member_by_pubkey(conn, &invite.mesh_id, &member.pubkey)? {
        if existing.is_active() {
            return Ok(Redemption { member: existing, already_member: true });
        }
        return Err(StoreError::Conflict("member_revoked".into()));
    }
    if invite.revoked_at.is_some() {
        return Err(StoreError::Conflict("invite_revoked".into()));
    }
    if now_ms / 1000 >= invite.expires_at {
        return Err(StoreError::Conflict("invite_expired".into()));
    }
    let used = conn.execute(
        "UPDATE invites SET used_count = used_count + 1 WHERE id = ?1 AND used_count < max_uses",
        [invite_id],
    )?;
    if used == 0 {
        return Err(StoreError::Conflict("invite_exhausted".into()));
    }
    let record = new_member_record(&invite.mesh_id, member, invite.role, now_ms);
    insert_member(conn, &record, Some(&record.id), "invite", member.admission.as_ref(), now_ms)?;
    conn.execute(
        "INSERT INTO invite_redemptions (invite_id, member_id, redeemed_at) VALUES (?1, ?2, ?3)",
        params![invite_id, record.id, now_ms as i64],
    )?;
    audit::append(
        conn,
        &event(
            &invite.mesh_id,
            "invite_redeemed",
            Some(&record.id),
            json!({"inviteId": invite_id, "memberId": record.id}),
        ),
        now_ms,
    )?;
    Ok(Redemption { member: record, already_member: false })
}

pub(super) fn grants(conn: &Connection, mesh_id: &str) -> rusqlite::Result<Vec<GrantRecord>> {
    let mut stmt = conn.prepare(
        "SELECT g.member_id, g.peer_pubkey, g.caps FROM grants g JOIN members m ON m.id = g.member_id WHERE m.mesh_id = ?1",
    )?;

    stmt.query_map([mesh_id], |row| {
        Ok(GrantRecord { member_id: row.get(0)?, peer_pubkey: row.get(1)?, caps: codes::read_json(row, 2)? })
    })?
    .collect()
}

pub(super) fn set_grants(
    conn: &Connection,
    member_id: &str,
    changes: &[GrantChange],
    now_ms: u64,
) -> StoreResult<Vec<GrantRecord>> {
    let owner = member(conn, member_id)?.ok_or_else(|| StoreError::NotFound(format!("member {member_id}")))?;
    for (peer, caps) in changes {
        crate::store::check_pubkey(peer)?;
        match caps {
            Some(caps) => {
                let caps = serde_json::to_string(caps).map_err(|e| StoreError::Invalid(e.to_string()))?;
                conn.execute(
                    "INSERT INTO grants (member_id, peer_pubkey, caps, updated_at) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (member_id, peer_pubkey) DO UPDATE SET caps = excluded.caps, updated_at = excluded.updated_at",
                    params![member_id, peer, caps, now_ms as i64],
                )?;
            }
            None => {
                conn.execute("DELETE FROM grants WHERE member_id = ?1 AND peer_pubkey = ?2", [member_id, peer])?;
            }
        }
    }
    let held: i64 =
        conn.query_row("SELECT COUNT(*) FROM grants WHERE member_id = ?1", [member_id], |row| row.get(0))?;
    if held as usize > crate::protocol::MAX_GRANTS {
        return Err(StoreError::Invalid(format!(
            "a member holds at most {} grants; reset some (null) first",
            crate::protocol::MAX_GRANTS
        )));
    }
    let payload: serde_json::Map<String, serde_json::Value> =
        changes.iter().map(|(peer, caps)| (peer.clone(), json!(caps))).collect();
    audit::append(
        conn,
        &event(&owner.mesh_id, "grants_changed", Some(member_id), json!({"changes": payload})),
        now_ms,
    )?;
    bump_directory_version(conn)?;
    let mut stmt = conn.prepare("SELECT peer_pubkey, caps FROM grants WHERE member_id = ?1 ORDER BY peer_pubkey")?;
    let rows = stmt
        .query_map([member_id], |row| {
            Ok(GrantRecord {
                member_id: member_id.to_owned(),
                peer_pubkey: row.get(0)?,
                caps: codes::read_json(row, 1)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}
