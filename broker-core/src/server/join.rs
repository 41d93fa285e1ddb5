//! `POST /join`: redeem a signed invite with a freshly generated member key.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Html;
use serde::{Deserialize, Serialize};

use super::{ApiError, Broker};
use crate::crypto::{self, PublicKey};
use crate::invite::{Invite, InviteError};
use crate::membership::Admission;
use crate::protocol::{self, Role};
use crate::store::{NewMember, StoreError};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinRequest {
    /// The invite token, or a link containing it.
    #[serde(alias = "invite_token")]
    pub invite: String,
    /// The joining member's new ed25519 public key (64 hex).
    #[serde(alias = "peer_pubkey")]
    pub pubkey: String,
    #[serde(default, alias = "display_name")]
    pub display_name: String,
    /// The joining key's signature over `crypto::join_proof_bytes` (128 hex).
    #[serde(default)]
    pub proof: String,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct JoinResponse {
    pub ok: bool,
    pub mesh_id: String,
    pub mesh_slug: String,
    pub mesh_name: String,
    pub member_id: String,
    pub role: Role,
    pub already_member: bool,
}

fn refused(status: StatusCode, code: &'static str, message: &str) -> ApiError {
    ApiError::new(status, code, message)
}

/// Redeems an invite. With a device token, the new member is also linked to that device and
/// its account (so the account's other devices can enrol, and revoking the device removes it).
pub(super) async fn redeem(
    State(broker): State<Broker>,
    headers: axum::http::HeaderMap,
    body: Result<Json<JoinRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<JoinResponse>, ApiError> {
    let signed_in = match super::auth::authorization(&headers) {
        Some(header) => Some(super::auth::authenticate(&broker, header).await?),
        None => None,
    };
    let Json(request) = body.map_err(|e| {
        refused(StatusCode::BAD_REQUEST, "malformed", &format!("expected {{invite, pubkey, displayName}}: {e}"))
    })?;
    if !PublicKey::is_valid_hex(&request.pubkey) {
        return Err(refused(
            StatusCode::BAD_REQUEST,
            "pubkey_malformed",
            "pubkey must be an ed25519 public key (64 lowercase hex characters, a canonical point not of small order)",
        ));
    }
    let invite = Invite::parse(&request.invite)
        .map_err(|_| refused(StatusCode::BAD_REQUEST, "invite_malformed", "that is not a claudemesh invite"))?;
    invite.verify(protocol::now_ms() / 1000).map_err(|error| match error {
        InviteError::Expired => {
            refused(StatusCode::GONE, "invite_expired", "this invite has expired; ask for a new one")
        }
        InviteError::BadSignature => {
            refused(StatusCode::FORBIDDEN, "invite_bad_signature", "the invite's signature does not verify")
        }
        InviteError::Malformed | InviteError::UnsupportedVersion(_) => refused(
            StatusCode::BAD_REQUEST,
            "invite_malformed",
            "that is not a claudemesh invite this broker understands",
        ),
    })?;

    let proof = crypto::join_proof_bytes(&invite.invite_id, &invite.mesh_id, &request.pubkey);
    crypto::verify_signed(&request.pubkey, proof.as_bytes(), &request.proof).map_err(|_| {
        refused(
            StatusCode::BAD_REQUEST,
            "proof_invalid",
            "proof must be the joining key's signature over claudemesh-join/v1|<inviteId>|<meshId>|<pubkey>",
        )
    })?;
    if broker.router().session_key_in_use(&invite.mesh_id, &request.pubkey) {
        return Err(ApiError::key_taken());
    }

    let display_name = match request.display_name.trim() {
        "" => format!("peer-{}", &request.pubkey[..8]),
        name => name.chars().take(64).collect(),
    };
    let member = NewMember {
        pubkey: request.pubkey.clone(),
        display_name,
        account_id: signed_in.as_ref().map(|a| a.account.id.clone()),
        device_id: signed_in.as_ref().map(|a| a.device.id.clone()),
        // The membership log keeps what lets every member check this admission itself.
        admission: Some(Admission::Invite { token: invite.to_token(), proof: request.proof.clone() }),
    };
    let result = broker
        .blocking(move |store| {
            let record =
                store.invite(&invite.invite_id)?.ok_or_else(|| StoreError::NotFound("invite_not_found".into()))?;
            // The stored invite must be exactly the one that was signed: nothing in the token
            // (role, uses, expiry, mesh) can be swapped.
            if record.mesh_id != invite.mesh_id {
                return Err(StoreError::Conflict("invite_mesh_mismatch".into()));
            }
            if record.role != invite.role
                || record.max_uses != invite.max_uses
                || record.expires_at != invite.expires_at
            {
                return Err(StoreError::Conflict("invite_tampered".into()));
            }
            let issuer = store
                .members(&record.mesh_id)?
                .into_iter()
                .find(|m| m.id == record.issuer_member_id)
                .ok_or_else(|| StoreError::Conflict("invite_issuer_unknown".into()))?;
            if issuer.pubkey != invite.issuer_pubkey || issuer.role != Role::Admin || !issuer.is_active() {
                return Err(StoreError::Conflict("invite_issuer_not_admin".into()));
            }
            let mesh = store.mesh(&record.mesh_id)?.ok_or_else(|| StoreError::NotFound("mesh_not_found".into()))?;
            if mesh.archived_at.is_some() {
                return Err(StoreError::Conflict("mesh_archived".into()));
            }
            let redemption = store.redeem_invite(&record.id, &member, protocol::now_ms())?;
            Ok((mesh, redemption))
        })
        .await;
    let (mesh, redemption) = result.map_err(join_error)?;
    tracing::info!(mesh = %mesh.id, member = %redemption.member.id, already = redemption.already_member, "invite redeemed");
    Ok(Json(JoinResponse {
        ok: true,
        mesh_id: mesh.id,
        mesh_slug: mesh.slug,
        mesh_name: mesh.name,
        member_id: redemption.member.id,
        role: redemption.member.role,
        already_member: redemption.already_member,
    }))
}

/// Maps the store's refusal codes to the join API's.
fn join_error(error: StoreError) -> ApiError {
    let (status, code, message) = match &error {
        StoreError::NotFound(what) if what == "invite_not_found" => {
            (StatusCode::NOT_FOUND, "invite_not_found", "this broker does not know that invite")
        }
        StoreError::NotFound(_) => (StatusCode::NOT_FOUND, "mesh_not_found", "the invite's mesh no longer exists"),
        StoreError::Conflict(what) => match what.as_str() {
            "invite_revoked" => (StatusCode::GONE, "invite_revoked", "this invite was revoked"),
            "invite_expired" => (StatusCode::GONE, "invite_expired", "this invite has expired; ask for a new one"),
            "invite_exhausted" => {
                (StatusCode::GONE, "invite_exhausted", "this invite has been used up; ask for a new one")
            }
            "invite_mesh_mismatch" => {
                (StatusCode::FORBIDDEN, "invite_mesh_mismatch", "the invite does not belong to that mesh")
            }
            "invite_tampered" => {
                (StatusCode::FORBIDDEN, "invite_bad_signature", "the invite does not match what was issued")
            }
            "invite_issuer_unknown" | "invite_issuer_not_admin" => {
                (StatusCode::FORBIDDEN, "invite_issuer_not_admin", "the invite was not signed by an admin of the mesh")
            }
            "mesh_archived" => (StatusCode::GONE, "mesh_archived", "the mesh was archived"),
            super::KEY_TAKEN | "name_taken" => return ApiError::from(error),
            "member_revoked" => {
                (StatusCode::FORBIDDEN, "member_revoked", "this key was removed from the mesh; generate a new one")
            }
            _ => return ApiError::from(error),
        },
        _ => return ApiError::from(error),
    };
    ApiError::new(status, code, message)
}

/// What a person who opens an invite link in a browser sees.
pub(super) async fn landing_page(Path(token): Path<String>) -> Html<String> {
    let mesh = Invite::parse(&token).map(|i| i.mesh_name).unwrap_or_else(|_| "a mesh".to_owned());
    let mesh = crate::email::html_escape(&mesh);
    Html(format!(
        "<!doctype html><meta charset=utf-8><title>Join {mesh} on claudemesh</title>\
         <body style=\"font-family:system-ui;max-width:40em;margin:3em auto\">\
         <h1>You are invited to {mesh}</h1>\
         <p>Open this link with the claudemesh app, or copy this page's address and paste it into \
         the app's <i>Join by link</i> (or into <code>claudemesh join</code> on a server).</p></body>"
    ))
}
