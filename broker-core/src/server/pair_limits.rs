//! `GET`/`PUT /v1/meshes/{mesh}/pair-limits`: the pair breaker's limits for one mesh (see
//! `router::breaker`). Members read them; admins set them, or reset them to the broker's
//! defaults with `null`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::json;

use super::auth::Authenticated;
use super::meshes::{access, actor, forbidden};
use super::{ApiError, Broker};
use crate::config::PairLimits;
use crate::store::{AuditEvent, WriteOp};

pub(super) async fn get(
    State(broker): State<Broker>,
    auth: Authenticated,
    Path(mesh): Path<String>,
) -> Result<Json<PairLimits>, ApiError> {
    let access = access(&broker, &auth, &mesh).await?;
    let limits = broker.router().pair_limits(&access.mesh.id).await?;
    Ok(Json(limits.unwrap_or(broker.config().pair_limits)))
}

pub(super) async fn set(
    State(broker): State<Broker>,
    auth: Authenticated,
    Path(mesh): Path<String>,
    Json(limits): Json<Option<PairLimits>>,
) -> Result<Json<PairLimits>, ApiError> {
    let access = access(&broker, &auth, &mesh).await?;
    if !access.admin {
        return Err(forbidden("admins of the mesh"));
    }
    if let Some(limits) = &limits {
        limits.validate().map_err(|problem| ApiError::new(StatusCode::BAD_REQUEST, "invalid", problem))?;
    }
    let effective = broker.router().set_pair_limits(&access.mesh.id, limits).await?;
    let changed = AuditEvent {
        scope: access.mesh.id.clone(),
        event_type: "pair_limits_changed".to_owned(),
        actor: actor(&access),
        payload: json!({"limits": limits, "effective": effective}),
    };
    broker.router().store().submit(WriteOp::Audit(vec![changed]), None);
    Ok(Json(effective))
}
