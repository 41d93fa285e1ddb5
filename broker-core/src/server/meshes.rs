//! Meshes through the account API: create, list, rename, archive, members, kick/ban/leave,
//! enrolment of a new device, invites, grants and the audit log.
//!
//! Every route needs a device token. A mesh the caller's account has no active member in does
//! not exist as far as the caller can tell (404); admin-only routes answer 403 to members.

use std::collections::{BTreeMap, HashMap};

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::auth::Authenticated;
use super::{ApiError, Broker};
use crate::crypto::PublicKey;
use crate::email::InviteEmail;
use crate::invite::Invite;
use crate::membership::{self, Admission};
use crate::protocol::account::{
    CreateInviteRequest, CreateInviteResponse, CreateMeshRequest, CreateMeshResponse, EnrolRequest, EnrolResponse,
    GrantsRequest, InviteView, MemberView, MeshView, RenameMeshRequest,
};
use crate::protocol::{self, Role, iso8601_ms};
use crate::router::{audit_record, validate_grants};

const PUBKEY_MALFORMED: &str =
    "pubkey must be an ed25519 public key (64 lowercase hex characters, a canonical point not of small order)";
use crate::store::{InviteRecord, MemberRecord, MembershipAction, MeshRecord, NewMember, StoreError};

/// What the caller's account is in one mesh.
pub(super) struct MeshAccess {
    pub(super) mesh: MeshRecord,
    members: Vec<MemberRecord>,
    /// The account's active members (one per signed-in device that enrolled).
    mine: Vec<MemberRecord>,
    /// The member whose key this device holds.
    device_member: Option<MemberRecord>,
    pub(super) admin: bool,
    owner: bool,
}

fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such mesh among your account's meshes")
}

pub(super) fn forbidden(what: &str) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", format!("only {what} may do that"))
}

pub(super) async fn access(broker: &Broker, auth: &Authenticated, mesh: &str) -> Result<MeshAccess, ApiError> {
    let key = mesh.to_owned();
    let found = broker
        .blocking(move |store| {
            let Some(mesh) = store.mesh(&key)? else { return Ok(None) };
            let members = store.members(&mesh.id)?;
            Ok(Some((mesh, members)))
        })
        .await?;
    let (mesh, members) = found.ok_or_else(not_found)?;
    let mine: Vec<MemberRecord> = members
        .iter()
        .filter(|m| m.account_id.as_deref() == Some(auth.account.id.as_str()) && m.is_active())
        .cloned()
        .collect();
    if mine.is_empty() {
        return Err(not_found());
    }
    Ok(MeshAccess {
        admin: mine.iter().any(|m| m.role == Role::Admin),
        owner: mesh.owner_account_id.as_deref() == Some(auth.account.id.as_str()),
        device_member: mine.iter().find(|m| m.device_id.as_deref() == Some(auth.device.id.as_str())).cloned(),
        mesh,
        members,
        mine,
    })
}

pub(super) fn actor(access: &MeshAccess) -> Option<String> {
    access.device_member.as_ref().or(access.mine.first()).map(|m| m.id.clone())
}

pub(super) async fn list(
    State(broker): State<Broker>,
    auth: Authenticated,
) -> Result<Json<serde_json::Value>, ApiError> {
    let account = auth.account.id.clone();
    let meshes = broker.blocking(move |store| store.account_meshes(&account)).await?;
    let views: Vec<MeshView> = meshes
        .into_iter()
        .map(|m| MeshView {
            online_count: broker.router().online_members(&m.mesh.id).len() as u64,
            owner: m.mesh.owner_account_id.as_deref() == Some(auth.account.id.as_str()),
            id: m.mesh.id,
            slug: m.mesh.slug,
            name: m.mesh.name,
            role: m.role,
            member_count: m.member_count,
            archived: m.mesh.archived_at.is_some(),
        })
        .collect();
    Ok(Json(json!({"meshes": views})))
}

pub(super) async fn create(
    State(broker): State<Broker>,
    auth: Authenticated,
    Json(request): Json<CreateMeshRequest>,
) -> Result<Response, ApiError> {
    // Validated before anything is written: no mesh without its admin.
    if !PublicKey::is_valid_hex(&request.pubkey) {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "pubkey_malformed", PUBKEY_MALFORMED));
    }
    if request.name.trim().is_empty() {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid", "the mesh needs a name"));
    }
    let admission = genesis(&request)?;
    let creator = NewMember {
        pubkey: request.pubkey,
        display_name: request
            .display_name
            .filter(|n| !n.trim().is_empty())
            .unwrap_or_else(|| auth.account.name.clone()),
        account_id: Some(auth.account.id.clone()),
        device_id: Some(auth.device.id.clone()),
        admission,
    };
    let (name, slug, owner) = (request.name, request.slug.unwrap_or_default(), auth.account.id.clone());
    let (mesh, member) = broker
        .blocking(move |store| store.create_mesh(&name, &slug, Some(&owner), &creator, protocol::now_ms()))
        .await?;
    let body = CreateMeshResponse { id: mesh.id, slug: mesh.slug, name: mesh.name, member_id: member.id };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// The creator's signed genesis of the mesh's membership log, when the request carries one:
/// the client chose the mesh id and signed it with the creator key.
fn genesis(request: &CreateMeshRequest) -> Result<Option<Admission>, ApiError> {
    let Some(signature) = &request.genesis else { return Ok(None) };
    let invalid = |why: &str| ApiError::new(StatusCode::BAD_REQUEST, "genesis_invalid", why.to_owned());
    let mesh_id = request.id.clone().ok_or_else(|| invalid("a genesis needs the mesh id it signs (id)"))?;
    if !crate::ids::is_valid("mesh", &mesh_id) {
        return Err(invalid("id must be mesh_ and 16 base32 characters"));
    }
    let bytes = membership::genesis_bytes(&mesh_id, &request.pubkey);
    crate::crypto::verify_signed(&request.pubkey, bytes.as_bytes(), signature).map_err(|_| {
        invalid("genesis must be the creator key's signature over claudemesh-membership/v1|genesis|<id>|<pubkey>")
    })?;
    Ok(Some(Admission::Genesis { mesh_id, signature: signature.clone() }))
}

pub(super) async fn rename(
    State(broker): State<Broker>,
    auth: Authenticated,
    Path(mesh): Path<String>,
    Json(request): Json<RenameMeshRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let access = access(&broker, &auth, &mesh).await?;
    if !access.admin {
        return Err(forbidden("admins of the mesh"));
    }
    let (id, actor) = (access.mesh.id.clone(), actor(&access));
    let mesh = broker.blocking(move |store| store.rename_mesh(&id, &request.name, actor.as_deref())).await?;
    broker.router().reload_directory().await?;
    Ok(Json(json!({"id": mesh.id, "slug": mesh.slug, "name": mesh.name})))
}

pub(super) async fn archive(
    State(broker): State<Broker>,
    auth: Authenticated,
    Path(mesh): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let access = access(&broker, &auth, &mesh).await?;
    if !access.owner {
        return Err(forbidden("the mesh's owner"));
    }
    let (id, actor) = (access.mesh.id.clone(), actor(&access));
    let mesh = broker.blocking(move |store| store.archive_mesh(&id, actor.as_deref(), protocol::now_ms())).await?;
    broker.router().reload_directory().await?;
    Ok(Json(json!({"id": mesh.id, "archived": true})))
}

pub(super) async fn members(
    State(broker): State<Broker>,
    auth: Authenticated,
    Path(mesh): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let access = access(&broker, &auth, &mesh).await?;
    let online = broker.router().online_members(&access.mesh.id);
    let views: Vec<MemberView> = access
        .members
        .iter()
        .map(|m| MemberView {
            id: m.id.clone(),
            pubkey: m.pubkey.clone(),
            display_name: m.display_name.clone(),
            role: m.role,
            joined_at: iso8601_ms(m.created_at),
            active: m.revoked_at.is_none(),
            banned: m.banned_at.is_some(),
            online: online.contains(&m.id),
            mine: m.account_id.as_deref() == Some(auth.account.id.as_str()),
        })
        .collect();
    Ok(Json(json!({"meshId": access.mesh.id, "members": views})))
}

/// Kick, ban or unban another member (admins). Kick and ban end its live sessions at once.
pub(super) async fn moderate(
    State(broker): State<Broker>,
    auth: Authenticated,
    Path((mesh, member_id, action)): Path<(String, String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let action = match action.as_str() {
        "kick" => MembershipAction::Kick,
        "ban" => MembershipAction::Ban,
        "unban" => MembershipAction::Unban,
        _ => return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", "use kick, ban or unban")),
    };
    let access = access(&broker, &auth, &mesh).await?;
    if !access.admin {
        return Err(forbidden("admins of the mesh"));
    }
    let Some(target) = access.members.iter().find(|m| m.id == member_id) else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such member in this mesh"));
    };
    if access.mine.iter().any(|m| m.id == member_id) && action != MembershipAction::Unban {
        return Err(ApiError::new(StatusCode::CONFLICT, "own_member", "that is your own member; use leave"));
    }
    // Admins may moderate members; only the owner moderates admins and the owner is untouchable.
    let owners = access.mesh.owner_account_id.is_some() && target.account_id == access.mesh.owner_account_id;
    if !access.owner && (owners || target.role == Role::Admin) {
        return Err(forbidden("the mesh's owner (for admins and the owner's own members)"));
    }
    let actor = actor(&access);
    let member = broker
        .blocking(move |store| store.change_membership(&member_id, action, actor.as_deref(), protocol::now_ms()))
        .await?;
    broker.router().reload_directory().await?;
    Ok(Json(json!({"memberId": member.id, "active": member.is_active(), "banned": member.banned_at.is_some()})))
}

/// This device leaves the mesh: its member is removed and its sessions end.
pub(super) async fn leave(
    State(broker): State<Broker>,
    auth: Authenticated,
    Path(mesh): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let access = access(&broker, &auth, &mesh).await?;
    let member = access.device_member.clone().ok_or_else(|| {
        ApiError::new(StatusCode::NOT_FOUND, "not_enrolled", "this device holds no member key in that mesh")
    })?;
    let id = member.id.clone();
    broker
        .blocking(move |store| store.change_membership(&id, MembershipAction::Leave, Some(&id), protocol::now_ms()))
        .await?;
    broker.router().reload_directory().await?;
    Ok(Json(json!({"ok": true, "memberId": member.id})))
}

/// A new device of the account registers its own member key (same role as the account has).
pub(super) async fn enrol(
    State(broker): State<Broker>,
    auth: Authenticated,
    Path(mesh): Path<String>,
    Json(request): Json<EnrolRequest>,
) -> Result<Json<EnrolResponse>, ApiError> {
    if !PublicKey::is_valid_hex(&request.pubkey) {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "pubkey_malformed", PUBKEY_MALFORMED));
    }
    let access = access(&broker, &auth, &mesh).await?;
    if access.mesh.archived_at.is_some() {
        return Err(ApiError::new(StatusCode::GONE, "mesh_archived", "the mesh was archived"));
    }
    if let Some(existing) = access.members.iter().find(|m| m.pubkey == request.pubkey) {
        if existing.account_id.as_deref() != Some(auth.account.id.as_str()) || !existing.is_active() {
            return Err(ApiError::new(StatusCode::CONFLICT, "conflict", "that key belongs to another member"));
        }
        return Ok(Json(EnrolResponse {
            mesh_id: access.mesh.id,
            member_id: existing.id.clone(),
            role: existing.role,
            already_member: true,
        }));
    }
    if broker.router().session_key_in_use(&access.mesh.id, &request.pubkey) {
        return Err(ApiError::key_taken());
    }
    // One member key per device, and a bounded number per account: an account cannot fill the
    // mesh with keys (and their sessions) of its own.
    if let Some(held) = &access.device_member {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "already_enrolled",
            format!("this device already holds member {} in this mesh; leave with it first", held.display_name),
        ));
    }
    let limit = broker.config().max_members_per_account;
    if access.mine.len() >= limit {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "enrolment_limit",
            format!(
                "this account already has {} member keys in this mesh (at most {limit}); leave the mesh on a device \
                 you no longer use, or revoke it",
                access.mine.len()
            ),
        ));
    }
    let (admission, sponsor_role) = endorsed_admission(&broker, &auth, &access, &request).await?;
    // An endorsed key takes its sponsor's role (what the log lets the sponsor give).
    let role = sponsor_role.unwrap_or(if access.admin { Role::Admin } else { Role::Member });
    let member = NewMember {
        pubkey: request.pubkey,
        display_name: request
            .display_name
            .filter(|n| !n.trim().is_empty())
            .unwrap_or_else(|| auth.device.info.hostname.clone()),
        account_id: Some(auth.account.id.clone()),
        device_id: Some(auth.device.id.clone()),
        admission,
    };
    let (mesh_id, actor) = (access.mesh.id.clone(), actor(&access));
    let record = broker
        .blocking(move |store| store.add_member(&mesh_id, &member, role, actor.as_deref(), protocol::now_ms()))
        .await?;
    Ok(Json(EnrolResponse { mesh_id: access.mesh.id, member_id: record.id, role, already_member: false }))
}

/// The admission of an enrolling key that a member of the account endorsed when it approved
/// this device (and the sponsor's role), when the request binds the key to the device's
/// confirmation key; otherwise none, and only the broker vouches that this key is the account's
/// new device.
async fn endorsed_admission(
    broker: &Broker,
    auth: &Authenticated,
    access: &MeshAccess,
    request: &EnrolRequest,
) -> Result<(Option<Admission>, Option<Role>), ApiError> {
    let mesh_id = access.mesh.id.as_str();
    let (Some(binding), Some(device)) = (&request.binding, auth.device.info.confirm_key.clone()) else {
        return Ok((None, None));
    };
    let bytes = membership::device_key_bytes(mesh_id, &request.pubkey);
    if crate::crypto::verify_signed(&device, bytes.as_bytes(), binding).is_err() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "binding_invalid",
            "binding must be this device's confirmation key's signature over \
             claudemesh-membership/v1|device-key|<meshId>|<pubkey>",
        ));
    }
    let (mesh, key) = (mesh_id.to_owned(), device.clone());
    let Some(endorsement) = broker.blocking(move |store| store.endorsement(&mesh, &key)).await? else {
        return Ok((None, None));
    };
    let Some(sponsor) = access.members.iter().find(|m| m.pubkey == endorsement.sponsor && m.is_active()) else {
        return Ok((None, None));
    };
    let sponsor_role = sponsor.role;
    let admission = Admission::Endorsed {
        sponsor: endorsement.sponsor,
        endorsement: endorsement.signature,
        device,
        binding: binding.clone(),
    };
    Ok((Some(admission), Some(sponsor_role)))
}

fn invite_view(record: &InviteRecord) -> InviteView {
    InviteView {
        id: record.id.clone(),
        role: record.role,
        max_uses: record.max_uses,
        used_count: record.used_count,
        expires_at: iso8601_ms(record.expires_at * 1000),
        created_at: iso8601_ms(record.created_at),
        revoked: record.revoked_at.is_some(),
        email: record.email.clone(),
    }
}

/// Registers an invite the device signed with one of its admin member keys, and emails it when
/// asked and possible. The broker never holds the signing key.
pub(super) async fn create_invite(
    State(broker): State<Broker>,
    auth: Authenticated,
    Path(mesh): Path<String>,
    Json(request): Json<CreateInviteRequest>,
) -> Result<Response, ApiError> {
    let access = access(&broker, &auth, &mesh).await?;
    let invite = Invite::parse(&request.invite)
        .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "invite_malformed", "that is not a claudemesh invite"))?;
    invite.verify(protocol::now_ms() / 1000).map_err(|e| {
        ApiError::new(StatusCode::BAD_REQUEST, "invite_invalid", format!("the invite does not check out: {e}"))
    })?;
    if invite.mesh_id != access.mesh.id {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "invite_mesh_mismatch", "the invite is for another mesh"));
    }
    // The link sends people to `brokerUrl`: it must be this broker as the world reaches it.
    if invite.broker_url.trim_end_matches('/') != broker.public_url() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invite_broker_mismatch",
            format!(
                "the invite names {} as its broker, but this broker's public URL is {}; sign it with that URL \
                 (GET /v1/account tells it as brokerUrl)",
                invite.broker_url,
                broker.public_url()
            ),
        ));
    }
    spend_invite_budget(&broker, &auth.account.id, &access.mesh.id)?;
    let issuer = access
        .mine
        .iter()
        .find(|m| m.pubkey == invite.issuer_pubkey && m.role == Role::Admin)
        .ok_or_else(|| forbidden("admins of the mesh, signing with their own member key,"))?;
    let email = request.email.map(|e| e.trim().to_owned()).filter(|e| !e.is_empty());
    let record = InviteRecord {
        id: invite.invite_id.clone(),
        mesh_id: access.mesh.id.clone(),
        role: invite.role,
        max_uses: invite.max_uses,
        used_count: 0,
        expires_at: invite.expires_at,
        issuer_member_id: issuer.id.clone(),
        created_at: protocol::now_ms(),
        revoked_at: None,
        email: email.clone(),
    };
    let stored = record.clone();
    broker.blocking(move |store| store.create_invite(&stored)).await?;
    let link = invite.link();
    let (emailed, email_error) = match (&email, broker.mailer()) {
        (None, _) => (false, None),
        (Some(_), None) => {
            (false, Some("this broker has no SMTP server configured; share the link yourself".to_owned()))
        }
        (Some(to), Some(mailer)) => {
            let expires = iso8601_ms(invite.expires_at * 1000);
            let message = InviteEmail {
                to,
                mesh_name: &access.mesh.name,
                inviter: &issuer.display_name,
                link: &link,
                expires_at_iso: &expires,
            };
            match mailer.send_invite(&message).await {
                Ok(()) => (true, None),
                Err(error) => {
                    tracing::warn!(%error, "invite email failed");
                    (false, Some(error))
                }
            }
        }
    };
    let body = CreateInviteResponse { invite: invite_view(&record), link, emailed, email_error };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// Invites an account, and a mesh, may create: each can send an email, so a stolen or careless
/// device must not turn the broker into a mail cannon.
fn spend_invite_budget(broker: &Broker, account_id: &str, mesh_id: &str) -> Result<(), ApiError> {
    let config = broker.config();
    let budgets = [
        (format!("invites-account:{account_id}"), config.invite_limit_per_account),
        (format!("invites-mesh:{mesh_id}"), config.invite_limit_per_mesh),
    ];
    if !broker.inner.attempts.take_all(&budgets) {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_invites",
            "too many invites created recently from this account or for this mesh; wait a few minutes",
        ));
    }
    Ok(())
}

pub(super) async fn list_invites(
    State(broker): State<Broker>,
    auth: Authenticated,
    Path(mesh): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let access = access(&broker, &auth, &mesh).await?;
    if !access.admin {
        return Err(forbidden("admins of the mesh"));
    }
    let id = access.mesh.id.clone();
    let invites = broker.blocking(move |store| store.invites(&id)).await?;
    Ok(Json(json!({"invites": invites.iter().map(invite_view).collect::<Vec<_>>()})))
}

pub(super) async fn revoke_invite(
    State(broker): State<Broker>,
    auth: Authenticated,
    Path((mesh, invite_id)): Path<(String, String)>,
) -> Result<Json<InviteView>, ApiError> {
    let access = access(&broker, &auth, &mesh).await?;
    if !access.admin {
        return Err(forbidden("admins of the mesh"));
    }
    let (mesh_id, id, actor) = (access.mesh.id.clone(), invite_id.clone(), actor(&access));
    let record = broker
        .blocking(move |store| {
            match store.invite(&id)? {
                Some(invite) if invite.mesh_id == mesh_id => {}
                _ => return Err(StoreError::NotFound("no such invite in this mesh".into())),
            }
            store.revoke_invite(&id, actor.as_deref(), protocol::now_ms())
        })
        .await?;
    Ok(Json(invite_view(&record)))
}

fn device_member(access: &MeshAccess) -> Result<&MemberRecord, ApiError> {
    access.device_member.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "not_enrolled",
            "this device holds no member key in that mesh; enrol it first",
        )
    })
}

pub(super) async fn get_grants(
    State(broker): State<Broker>,
    auth: Authenticated,
    Path(mesh): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let access = access(&broker, &auth, &mesh).await?;
    let member = device_member(&access)?.clone();
    let id = access.mesh.id.clone();
    let grants = broker.blocking(move |store| store.grants(&id)).await?;
    let own: BTreeMap<String, Vec<String>> =
        grants.into_iter().filter(|g| g.member_id == member.id).map(|g| (g.peer_pubkey, g.caps)).collect();
    Ok(Json(json!({"memberId": member.id, "grants": own})))
}

/// Changes this device's member's grants: `{grants: {peerKey: [caps] | [] | null}}`.
pub(super) async fn set_grants(
    State(broker): State<Broker>,
    auth: Authenticated,
    Path(mesh): Path<String>,
    Json(request): Json<GrantsRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let access = access(&broker, &auth, &mesh).await?;
    let member = device_member(&access)?.clone();
    let changes = validate_grants(request.grants)
        .map_err(|problem| ApiError::new(StatusCode::BAD_REQUEST, "invalid", problem))?;
    let id = member.id.clone();
    let records = broker.blocking(move |store| store.set_grants(&id, &changes, protocol::now_ms())).await?;
    broker.router().reload_directory().await?;
    let grants: BTreeMap<String, Vec<String>> = records.into_iter().map(|g| (g.peer_pubkey, g.caps)).collect();
    Ok(Json(json!({"memberId": member.id, "grants": grants})))
}

pub(super) async fn audit(
    State(broker): State<Broker>,
    auth: Authenticated,
    Path(mesh): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<protocol::AuditResult>, ApiError> {
    let access = access(&broker, &auth, &mesh).await?;
    if !access.admin {
        return Err(forbidden("admins of the mesh"));
    }
    let number = |key: &str, default: u32| -> Result<u32, ApiError> {
        query.get(key).map_or(Ok(default), |v| {
            v.parse().map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "invalid", format!("{key} must be a number")))
        })
    };
    let (limit, offset) = (number("limit", 50)?.clamp(1, 500), number("offset", 0)?);
    let (id, event_type) = (access.mesh.id.clone(), query.get("eventType").cloned());
    let (entries, total) =
        broker.blocking(move |store| store.audit_entries(&id, event_type.as_deref(), limit, offset)).await?;
    Ok(Json(protocol::AuditResult { entries: entries.into_iter().map(audit_record).collect(), total, req_id: None }))
}

pub(super) async fn audit_verify(
    State(broker): State<Broker>,
    auth: Authenticated,
    Path(mesh): Path<String>,
) -> Result<Json<protocol::AuditVerifyResult>, ApiError> {
    let access = access(&broker, &auth, &mesh).await?;
    if !access.admin {
        return Err(forbidden("admins of the mesh"));
    }
    let id = access.mesh.id.clone();
    let report = broker.blocking(move |store| store.verify_audit(&id)).await?;
    Ok(Json(protocol::AuditVerifyResult {
        valid: report.valid,
        entries: report.entries,
        broken_at: report.broken_at,
        req_id: None,
    }))
}
