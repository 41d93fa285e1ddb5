//! Meshes, members, invites and grants in Postgres. Every change appends its audit entry and
//! bumps the directory version in the same transaction. Where SQLite's one writer made a
//! check-then-insert atomic, changes to a mesh's members first take the mesh's scope lock
//! ([`super::lock_scope`], the one its audit chain takes), so that several broker processes on
//! one database cannot let two members take one name or one key.

use postgres::{GenericClient, Row};
use serde_json::json;

use super::{audit, codes, conflict_on_duplicate, lock_scope, membership};
use crate::membership::Admission;
use crate::protocol::Role;
use crate::store::codes::DbCode as _;
use crate::store::records::{INVITE_COLUMNS, MEMBER_COLUMNS, MESH_COLUMNS, check_name_free, event, new_member_record};
use crate::store::{
    AccountMesh, GrantChange, GrantRecord, InviteRecord, MemberRecord, MembershipAction, MeshRecord, NewMember,
    Redemption, StoreError, StoreResult, admission_change,
};

fn millis(row: &Row, index: usize) -> StoreResult<u64> {
    Ok(row.try_get::<_, i64>(index)? as u64)
}

fn optional_millis(row: &Row, index: usize) -> StoreResult<Option<u64>> {
    Ok(row.try_get::<_, Option<i64>>(index)?.map(|v| v as u64))
}

pub(super) fn mesh_from_row(row: &Row) -> StoreResult<MeshRecord> {
    Ok(MeshRecord {
        id: row.try_get(0)?,
        slug: row.try_get(1)?,
        name: row.try_get(2)?,
        created_at: millis(row, 3)?,
        archived_at: optional_millis(row, 4)?,
        owner_account_id: row.try_get(5)?,
    })
}

pub(super) fn member_from_row(row: &Row) -> StoreResult<MemberRecord> {
    Ok(MemberRecord {
        id: row.try_get(0)?,
        mesh_id: row.try_get(1)?,
        pubkey: row.try_get(2)?,
        display_name: row.try_get(3)?,
        role: codes::read(row, 4, "members.role")?,
        created_at: millis(row, 5)?,
        revoked_at: optional_millis(row, 6)?,
        banned_at: optional_millis(row, 7)?,
        account_id: row.try_get(8)?,
        device_id: row.try_get(9)?,
    })
}

fn invite_from_row(row: &Row) -> StoreResult<InviteRecord> {
    Ok(InviteRecord {
        id: row.try_get(0)?,
        mesh_id: row.try_get(1)?,
        role: codes::read(row, 2, "invites.role")?,
        max_uses: row.try_get::<_, i64>(3)? as u32,
        used_count: row.try_get::<_, i64>(4)? as u32,
        expires_at: millis(row, 5)?,
        issuer_member_id: row.try_get(6)?,
        created_at: millis(row, 7)?,
        revoked_at: optional_millis(row, 8)?,
        email: row.try_get(9)?,
    })
}

/// Records that meshes, members or grants changed, so running brokers reload their directory
/// (the other processes are told at commit; see `notices`).
pub(super) fn bump_directory_version(db: &mut impl GenericClient) -> StoreResult<()> {
    db.execute(
        "INSERT INTO settings (key, value) VALUES ('directory_version', '1')
         ON CONFLICT (key) DO UPDATE SET value = (settings.value::bigint + 1)::text",
        &[],
    )?;
    super::notices::notify(db, &["d".to_owned()])?;
    Ok(())
}

pub(super) fn mesh(db: &mut impl GenericClient, id_or_slug: &str) -> StoreResult<Option<MeshRecord>> {
    let row = db.query_opt(&format!("SELECT {MESH_COLUMNS} FROM meshes WHERE id = $1 OR slug = $1"), &[&id_or_slug])?;
    row.as_ref().map(mesh_from_row).transpose()
}

pub(super) fn meshes(db: &mut impl GenericClient) -> StoreResult<Vec<MeshRecord>> {
    let rows = db.query(&format!("SELECT {MESH_COLUMNS} FROM meshes ORDER BY created_at, id"), &[])?;
    rows.iter().map(mesh_from_row).collect()
}

fn require_mesh(db: &mut impl GenericClient, mesh_id: &str) -> StoreResult<MeshRecord> {
    mesh(db, mesh_id)?.filter(|m| m.id == mesh_id).ok_or_else(|| StoreError::NotFound(format!("mesh {mesh_id}")))
}

pub(super) fn member(db: &mut impl GenericClient, member_id: &str) -> StoreResult<Option<MemberRecord>> {
    let row = db.query_opt(&format!("SELECT {MEMBER_COLUMNS} FROM members WHERE id = $1"), &[&member_id])?;
    row.as_ref().map(member_from_row).transpose()
}

pub(super) fn member_by_pubkey(
    db: &mut impl GenericClient,
    mesh_id: &str,
    pubkey: &str,
) -> StoreResult<Option<MemberRecord>> {
    let row = db.query_opt(
        &format!("SELECT {MEMBER_COLUMNS} FROM members WHERE mesh_id = $1 AND pubkey = $2"),
        &[&mesh_id, &pubkey],
    )?;
    row.as_ref().map(member_from_row).transpose()
}

pub(super) fn members(db: &mut impl GenericClient, mesh_id: &str) -> StoreResult<Vec<MemberRecord>> {
    let rows = db.query(
        &format!("SELECT {MEMBER_COLUMNS} FROM members WHERE mesh_id = $1 ORDER BY created_at, id"),
        &[&mesh_id],
    )?;
    rows.iter().map(member_from_row).collect()
}

pub(super) fn key_owner(db: &mut impl GenericClient, mesh_id: &str, pubkey: &str) -> StoreResult<Option<String>> {
    let row =
        db.query_opt("SELECT member_id FROM mesh_keys WHERE mesh_id = $1 AND pubkey = $2", &[&mesh_id, &pubkey])?;
    Ok(row.map(|row| row.try_get(0)).transpose()?)
}

/// Each current member's name and account, for [`check_name_free`].
fn current_names(db: &mut impl GenericClient, mesh_id: &str) -> StoreResult<Vec<(String, Option<String>)>> {
    let rows = db
        .query("SELECT display_name, account_id FROM members WHERE mesh_id = $1 AND revoked_at IS NULL", &[&mesh_id])?;
    Ok(rows.iter().map(|row| Ok((row.try_get(0)?, row.try_get(1)?))).collect::<Result<_, postgres::Error>>()?)
}

/// Inserts a member; the caller holds the mesh's scope lock.
fn insert_member(
    db: &mut impl GenericClient,
    member: &MemberRecord,
    actor: Option<&str>,
    how: &str,
    admission: Option<&Admission>,
    now_ms: u64,
) -> StoreResult<()> {
    if key_owner(db, &member.mesh_id, &member.pubkey)?.is_some_and(|owner| owner != member.id) {
        return Err(StoreError::Conflict("key_taken".into()));
    }
    check_name_free(member, current_names(db, &member.mesh_id)?)?;
    db.execute(
        "INSERT INTO mesh_keys (mesh_id, pubkey, member_id, kind, first_seen_at) VALUES ($1, $2, $3, 'member', $4)",
        &[&member.mesh_id, &member.pubkey, &member.id, &(member.created_at as i64)],
    )?;
    db.execute(
        &format!("INSERT INTO members ({MEMBER_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, NULL, NULL, $7, $8)"),
        &[
            &member.id,
            &member.mesh_id,
            &member.pubkey,
            &member.display_name,
            &member.role.to_db(),
            &(member.created_at as i64),
            &member.account_id,
            &member.device_id,
        ],
    )?;
    audit::append(
        db,
        &event(
            &member.mesh_id,
            "member_joined",
            actor.or(Some(&member.id)),
            json!({"memberId": member.id, "name": member.display_name, "pubkey": member.pubkey, "role": member.role, "via": how}),
        ),
        now_ms,
    )?;
    if let Some(change) = admission_change(member, how, admission) {
        membership::append(db, &member.mesh_id, change, now_ms)?;
    }
    bump_directory_version(db)
}

/// Slugs are handed out under one lock, so two processes creating "team" at once get `team`
/// and `team-2`.
const SLUG_LOCK: &str = "claudemesh:mesh-slugs";

pub(super) fn create_mesh(
    db: &mut impl GenericClient,
    name: &str,
    base_slug: &str,
    owner_account_id: Option<&str>,
    creator: &NewMember,
    now_ms: u64,
) -> StoreResult<(MeshRecord, MemberRecord)> {
    lock_scope(db, SLUG_LOCK)?;
    let mut slug = base_slug.to_owned();
    let mut suffix = 2;
    while db.query_one("SELECT EXISTS (SELECT 1 FROM meshes WHERE slug = $1)", &[&slug])?.try_get::<_, bool>(0)? {
        slug = format!("{base_slug}-{suffix}");
        suffix += 1;
    }
    // A creator that signs the genesis chose the mesh id it signed.
    let id = match &creator.admission {
        Some(Admission::Genesis { mesh_id, .. }) => mesh_id.clone(),
        _ => crate::ids::new_id("mesh"),
    };
    if mesh(db, &id)?.is_some_and(|m| m.id == id) {
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
    db.execute(
        "INSERT INTO meshes (id, slug, name, created_at, owner_account_id) VALUES ($1, $2, $3, $4, $5)",
        &[&mesh.id, &mesh.slug, &mesh.name, &(now_ms as i64), &mesh.owner_account_id],
    )?;
    lock_scope(db, &mesh.id)?;
    let admin = new_member_record(&mesh.id, creator, Role::Admin, now_ms);
    audit::append(
        db,
        &event(&mesh.id, "mesh_created", Some(&admin.id), json!({"name": mesh.name, "slug": mesh.slug})),
        now_ms,
    )?;
    insert_member(db, &admin, Some(&admin.id), "create", creator.admission.as_ref(), now_ms)?;
    Ok((mesh, admin))
}

pub(super) fn rename_mesh(
    db: &mut impl GenericClient,
    mesh_id: &str,
    name: &str,
    actor: Option<&str>,
    now_ms: u64,
) -> StoreResult<MeshRecord> {
    lock_scope(db, mesh_id)?;
    let before = require_mesh(db, mesh_id)?;
    db.execute("UPDATE meshes SET name = $2 WHERE id = $1", &[&mesh_id, &name])?;
    audit::append(db, &event(mesh_id, "mesh_renamed", actor, json!({"from": before.name, "to": name})), now_ms)?;
    bump_directory_version(db)?;
    require_mesh(db, mesh_id)
}

pub(super) fn archive_mesh(
    db: &mut impl GenericClient,
    mesh_id: &str,
    actor: Option<&str>,
    now_ms: u64,
) -> StoreResult<MeshRecord> {
    lock_scope(db, mesh_id)?;
    let mesh = require_mesh(db, mesh_id)?;
    if mesh.archived_at.is_some() {
        return Ok(mesh);
    }
    db.execute("UPDATE meshes SET archived_at = $2 WHERE id = $1", &[&mesh_id, &(now_ms as i64)])?;
    audit::append(db, &event(mesh_id, "mesh_archived", actor, json!({})), now_ms)?;
    bump_directory_version(db)?;
    require_mesh(db, mesh_id)
}

pub(super) fn add_member(
    db: &mut impl GenericClient,
    mesh_id: &str,
    member: &NewMember,
    role: Role,
    actor: Option<&str>,
    now_ms: u64,
) -> StoreResult<MemberRecord> {
    require_mesh(db, mesh_id)?;
    lock_scope(db, mesh_id)?;
    if member_by_pubkey(db, mesh_id, &member.pubkey)?.is_some() {
        return Err(StoreError::Conflict("a member with this public key is already in the mesh".into()));
    }
    let record = new_member_record(mesh_id, member, role, now_ms);
    insert_member(db, &record, actor, "added", member.admission.as_ref(), now_ms)?;
    Ok(record)
}

pub(super) fn change_membership(
    db: &mut impl GenericClient,
    member_id: &str,
    action: MembershipAction,
    actor: Option<&str>,
    now_ms: u64,
) -> StoreResult<MemberRecord> {
    let current = member(db, member_id)?.ok_or_else(|| StoreError::NotFound(format!("member {member_id}")))?;
    let now = now_ms as i64;
    match action {
        MembershipAction::Kick | MembershipAction::Leave => {
            db.execute("UPDATE members SET revoked_at = COALESCE(revoked_at, $2) WHERE id = $1", &[&member_id, &now])
        }
        MembershipAction::Ban => {
            db.execute("UPDATE members SET banned_at = COALESCE(banned_at, $2) WHERE id = $1", &[&member_id, &now])
        }
        MembershipAction::Unban => db.execute("UPDATE members SET banned_at = NULL WHERE id = $1", &[&member_id]),
    }?;
    audit::append(
        db,
        &event(&current.mesh_id, action.event(), actor, json!({"memberId": member_id, "name": current.display_name})),
        now_ms,
    )?;
    bump_directory_version(db)?;
    let changed = member(db, member_id)?.ok_or_else(|| StoreError::NotFound(format!("member {member_id}")))?;
    if let Some(change) = action.log_change(&current, &changed) {
        membership::append(db, &current.mesh_id, change, now_ms)?;
    }
    Ok(changed)
}

pub(super) fn account_meshes(db: &mut impl GenericClient, account_id: &str) -> StoreResult<Vec<AccountMesh>> {
    let rows = db.query(
        &format!(
            "SELECT {}, MIN(CASE m.role WHEN 'admin' THEN 0 ELSE 1 END),
                (SELECT COUNT(*) FROM members c WHERE c.mesh_id = s.id AND c.revoked_at IS NULL AND c.banned_at IS NULL)
             FROM meshes s JOIN members m ON m.mesh_id = s.id
             WHERE m.account_id = $1 AND m.revoked_at IS NULL AND m.banned_at IS NULL
             GROUP BY s.id ORDER BY s.created_at",
            MESH_COLUMNS.split(", ").map(|c| format!("s.{c}")).collect::<Vec<_>>().join(", ")
        ),
        &[&account_id],
    )?;
    rows.iter()
        .map(|row| {
            Ok(AccountMesh {
                mesh: mesh_from_row(row)?,
                role: if row.try_get::<_, i32>(6)? == 0 { Role::Admin } else { Role::Member },
                member_count: row.try_get::<_, i64>(7)? as u64,
            })
        })
        .collect()
}

pub(super) fn create_invite(db: &mut impl GenericClient, invite: &InviteRecord, now_ms: u64) -> StoreResult<()> {
    require_mesh(db, &invite.mesh_id)?;
    db.execute(
        &format!("INSERT INTO invites ({INVITE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"),
        &[
            &invite.id,
            &invite.mesh_id,
            &invite.role.to_db(),
            &i64::from(invite.max_uses),
            &i64::from(invite.used_count),
            &(invite.expires_at as i64),
            &invite.issuer_member_id,
            &(invite.created_at as i64),
            &invite.revoked_at.map(|v| v as i64),
            &invite.email,
        ],
    )
    .map_err(conflict_on_duplicate("an invite with this id already exists"))?;
    audit::append(
        db,
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

pub(super) fn invite(db: &mut impl GenericClient, invite_id: &str) -> StoreResult<Option<InviteRecord>> {
    let row = db.query_opt(&format!("SELECT {INVITE_COLUMNS} FROM invites WHERE id = $1"), &[&invite_id])?;
    row.as_ref().map(invite_from_row).transpose()
}

pub(super) fn invites(db: &mut impl GenericClient, mesh_id: &str) -> StoreResult<Vec<InviteRecord>> {
    let rows = db.query(
        &format!("SELECT {INVITE_COLUMNS} FROM invites WHERE mesh_id = $1 ORDER BY created_at DESC, id"),
        &[&mesh_id],
    )?;
    rows.iter().map(invite_from_row).collect()
}

pub(super) fn revoke_invite(
    db: &mut impl GenericClient,
    invite_id: &str,
    actor: Option<&str>,
    now_ms: u64,
) -> StoreResult<InviteRecord> {
    let record = invite(db, invite_id)?.ok_or_else(|| StoreError::NotFound(format!("invite {invite_id}")))?;
    db.execute(
        "UPDATE invites SET revoked_at = COALESCE(revoked_at, $2) WHERE id = $1",
        &[&invite_id, &(now_ms as i64)],
    )?;
    audit::append(db, &event(&record.mesh_id, "invite_revoked", actor, json!({"inviteId": invite_id})), now_ms)?;
    invite(db, invite_id)?.ok_or_else(|| StoreError::NotFound(format!("invite {invite_id}")))
}

pub(super) fn redeem_invite(
    db: &mut impl GenericClient,
    invite_id: &str,
    member: &NewMember,
    now_ms: u64,
) -> StoreResult<Redemption> {
    let invite = invite(db, invite_id)?.ok_or_else(|| StoreError::NotFound("invite_not_found".into()))?;
    lock_scope(db, &invite.mesh_id)?;
    if let Some(existing) = member_by_pubkey(db, &invite.mesh_id, &member.pubkey)? {
        if existing.is_active() {
            return Ok(Redemption { member: existing, already_member: true });
        }
        return Err(StoreError::Conflict("member_revoked".into()));
    }
    // Read again under the lock: a revocation may have committed meanwhile.
    let invite = self::invite(db, invite_id)?.ok_or_else(|| StoreError::NotFound("invite_not_found".into()))?;
    if invite.revoked_at.is_some() {
        return Err(StoreError::Conflict("invite_revoked".into()));
    }
    if now_ms / 1000 >= invite.expires_at {
        return Err(StoreError::Conflict("invite_expired".into()));
    }
    let used = db.execute(
        "UPDATE invites SET used_count = used_count + 1 WHERE id = $1 AND used_count < max_uses",
        &[&invite_id],
    )?;
    if used == 0 {
        return Err(StoreError::Conflict("invite_exhausted".into()));
    }
    let record = new_member_record(&invite.mesh_id, member, invite.role, now_ms);
    insert_member(db, &record, Some(&record.id), "invite", member.admission.as_ref(), now_ms)?;
    db.execute(
        "INSERT INTO invite_redemptions (invite_id, member_id, redeemed_at) VALUES ($1, $2, $3)",
        &[&invite_id, &record.id, &(now_ms as i64)],
    )?;
    audit::append(
        db,
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

pub(super) fn grants(db: &mut impl GenericClient, mesh_id: &str) -> StoreResult<Vec<GrantRecord>> {
    let rows = db.query(
        "SELECT g.member_id, g.peer_pubkey, g.caps FROM grants g JOIN members m ON m.id = g.member_id WHERE m.mesh_id = $1",
        &[&mesh_id],
    )?;
    rows.iter()
        .map(|row| {
            Ok(GrantRecord {
                member_id: row.try_get(0)?,
                peer_pubkey: row.try_get(1)?,
                caps: codes::read_json(row, 2, "grants.caps")?,
            })
        })
        .collect()
}

pub(super) fn set_grants(
    db: &mut impl GenericClient,
    member_id: &str,
    changes: &[GrantChange],
    now_ms: u64,
) -> StoreResult<Vec<GrantRecord>> {
    let owner = member(db, member_id)?.ok_or_else(|| StoreError::NotFound(format!("member {member_id}")))?;
    lock_scope(db, &owner.mesh_id)?;
    for (peer, caps) in changes {
        crate::store::check_pubkey(peer)?;
        match caps {
            Some(caps) => {
                let caps = serde_json::to_string(caps).map_err(|e| StoreError::Invalid(e.to_string()))?;
                db.execute(
                    "INSERT INTO grants (member_id, peer_pubkey, caps, updated_at) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (member_id, peer_pubkey) DO UPDATE SET caps = excluded.caps, updated_at = excluded.updated_at",
                    &[&member_id, peer, &caps, &(now_ms as i64)],
                )?;
            }
            None => {
                db.execute("DELETE FROM grants WHERE member_id = $1 AND peer_pubkey = $2", &[&member_id, peer])?;
            }
        }
    }
    let held: i64 = db.query_one("SELECT COUNT(*) FROM grants WHERE member_id = $1", &[&member_id])?.try_get(0)?;
    if held as usize > crate::protocol::MAX_GRANTS {
        return Err(StoreError::Invalid(format!(
            "a member holds at most {} grants; reset some (null) first",
            crate::protocol::MAX_GRANTS
        )));
    }
    let payload: serde_json::Map<String, serde_json::Value> =
        changes.iter().map(|(peer, caps)| (peer.clone(), json!(caps))).collect();
    audit::append(db, &event(&owner.mesh_id, "grants_changed", Some(member_id), json!({"changes": payload})), now_ms)?;
    bump_directory_version(db)?;
    let rows =
        db.query("SELECT peer_pubkey, caps FROM grants WHERE member_id = $1 ORDER BY peer_pubkey", &[&member_id])?;
    rows.iter()
        .map(|row| {
            Ok(GrantRecord {
                member_id: member_id.to_owned(),
                peer_pubkey: row.try_get(0)?,
                caps: codes::read_json(row, 1, "grants.caps")?,
            })
        })
        .collect()
}
