//! The broker's HTTP surface: the WebSocket endpoint, health, metrics and invite redemption,
//! all on one port. Errors become HTTP responses in exactly one place ([`ApiError`]).
//!
//! The listener is bound by the caller and handed in with a shutdown future
//! ([`serve`]), so tests bind port 0 and the binary binds its configured address.

pub mod auth;
mod confirm;
mod connect;
mod device_login;
/// Public for its request body, which `tests/fuzz.rs` decodes.
pub mod join;
mod meshes;
mod pair_limits;
mod ws;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Json;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::BrokerConfig;
use crate::email::Mailer;
use crate::metrics::Metrics;
use crate::router::{Router, close_code};
use crate::store::Store;

/// The crate version, reported by `/health`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// How long shutdown waits for sessions to close and save their state.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Everything a request handler needs. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Broker {
    inner: Arc<BrokerInner>,
}

#[derive(Debug)]
struct BrokerInner {
    router: Arc<Router>,
    started_at: std::time::Instant,
    /// The base URL peers use to reach this broker (put into invites).
    public_url: String,
    /// `/health/ready` reports 503 until this migration is applied (when set).
    expected_migration: Option<String>,
    /// Sends invite emails when SMTP is configured.
    mailer: Option<Mailer>,
    /// Device-login attempts (wrong user codes, started logins), per client address and account.
    attempts: device_login::AttemptLimiter,
    /// Fresh confirmations already used (each confirms one request).
    confirmations: confirm::UsedConfirmations,
}

impl Broker {
    /// Must be called inside a tokio runtime.
    pub fn new(
        config: BrokerConfig,
        store: Arc<dyn Store>,
        public_url: String,
        expected_migration: Option<String>,
        mailer: Option<Mailer>,
    ) -> Broker {
        let metrics = Arc::new(Metrics::default());
        metrics.db_healthy.store(1, Ordering::Relaxed);
        let router = Router::new(Arc::new(config), store, metrics);
        Broker {
            inner: Arc::new(BrokerInner {
                router,
                started_at: std::time::Instant::now(),
                public_url: public_url.trim_end_matches('/').to_owned(),
                expected_migration,
                mailer,
                attempts: device_login::AttemptLimiter::default(),
                confirmations: confirm::UsedConfirmations::default(),
            }),
        }
    }

    pub fn router(&self) -> &Arc<Router> {
        &self.inner.router
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        self.inner.router.store()
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        self.inner.router.metrics()
    }

    pub fn config(&self) -> &BrokerConfig {
        self.inner.router.config()
    }

    pub fn public_url(&self) -> &str {
        &self.inner.public_url
    }

    pub fn mailer(&self) -> Option<&Mailer> {
        self.inner.mailer.as_ref()
    }

    /// Runs `f` against the store on a blocking thread.
    pub async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Store) -> Result<T, crate::store::StoreError> + Send + 'static,
    ) -> Result<T, crate::store::StoreError> {
        let store = self.store().clone();
        tokio::task::spawn_blocking(move || f(store.as_ref()))
            .await
            .map_err(|e| crate::store::StoreError::Database(format!("store task failed: {e}")))?
    }
}

/// The axum application.
pub fn app(broker: Broker) -> axum::Router {
    let body_limit = broker.config().max_message_bytes;
    axum::Router::new()
        .route("/ws", get(ws::upgrade))
        .route("/v1/ws", get(ws::upgrade))
        .route("/health", get(health))
        .route("/health/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/join", post(join::redeem))
        .route("/v1/join", post(join::redeem))
        .route("/join/{token}", get(join::landing_page))
        .route("/device", get(device_login::verification_page))
        .route("/v1/device/code", post(device_login::request_code))
        .route("/v1/device/token", post(device_login::poll_token))
        .route("/v1/device/pending", get(device_login::list_pending))
        .route("/v1/device/requests/{user_code}", get(device_login::show_pending))
        .route("/v1/device/approve", post(device_login::approve))
        .route("/v1/device/deny", post(device_login::deny))
        .route("/v1/device/login-token", post(device_login::login_token))
        .route("/v1/signup", post(device_login::signup))
        .route("/v1/connect/email", post(connect::request_code))
        .route("/v1/connect/verify", post(connect::verify_code))
        .route("/v1/account", get(device_login::whoami))
        .route("/v1/logout", post(device_login::logout))
        .route("/v1/devices", get(device_login::list_devices))
        .route("/v1/devices/{device_id}/revoke", post(device_login::revoke_device))
        .route("/v1/meshes", get(meshes::list).post(meshes::create))
        .route("/v1/meshes/{mesh}", axum::routing::patch(meshes::rename))
        .route("/v1/meshes/{mesh}/archive", post(meshes::archive))
        .route("/v1/meshes/{mesh}/members", get(meshes::members))
        .route("/v1/meshes/{mesh}/members/{member}/{action}", post(meshes::moderate))
        .route("/v1/meshes/{mesh}/leave", post(meshes::leave))
        .route("/v1/meshes/{mesh}/enrol", post(meshes::enrol))
        .route("/v1/meshes/{mesh}/invites", get(meshes::list_invites).post(meshes::create_invite))
        .route("/v1/meshes/{mesh}/invites/{invite}/revoke", post(meshes::revoke_invite))
        .route("/v1/meshes/{mesh}/grants", get(meshes::get_grants).put(meshes::set_grants))
        .route("/v1/meshes/{mesh}/pair-limits", get(pair_limits::get).put(pair_limits::set))
        .route("/v1/meshes/{mesh}/audit", get(meshes::audit))
        .route("/v1/meshes/{mesh}/audit/verify", get(meshes::audit_verify))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(broker)
}

/// Serves `listener` until `shutdown` resolves, then closes every session with 1001, waits
/// (up to a few seconds) for them to save their state, and commits everything queued.
pub async fn serve(
    listener: TcpListener,
    broker: Broker,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let stopping = CancellationToken::new();
    let background = tokio::spawn(broker.router().clone().run_background(stopping.clone().cancelled_owned()));
    let router = broker.router().clone();
    let stop = stopping.clone();
    let graceful = async move {
        shutdown.await;
        stop.cancel();
        router.close_all(close_code::GOING_AWAY, "shutting down");
    };
    // Frames are small and latency matters: no Nagle delay (it holds a push back until the
    // peer's delayed ACK, up to 40 ms).
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::warn!(%error, "cannot set TCP_NODELAY");
        }
    });
    let service = app(broker.clone()).into_make_service_with_connect_info::<std::net::SocketAddr>();
    let served = axum::serve(listener, service).with_graceful_shutdown(graceful).await;
    stopping.cancel();
    let _ = background.await;
    let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
    while broker.router().session_count() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if let Err(error) = broker.blocking(|store| store.flush()).await {
        tracing::error!(%error, "final commit failed");
    }
    served
}

/// An API error: a status, a stable machine-readable code and a sentence for people.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

/// The refusal of a key that is or was another member's (member or session key) in the mesh.
pub(crate) const KEY_TAKEN: &str = "key_taken";
const KEY_TAKEN_MESSAGE: &str =
    "that key is or was another member's key in this mesh; generate a new key (claudemesh does this for you)";

impl ApiError {
    /// Refuses a key a session of the mesh uses now.
    pub(crate) fn key_taken() -> ApiError {
        ApiError::new(StatusCode::CONFLICT, KEY_TAKEN, KEY_TAKEN_MESSAGE)
    }

    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into() }
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(error: crate::store::StoreError) -> Self {
        use crate::store::StoreError;
        match error {
            StoreError::NotFound(what) => ApiError::new(StatusCode::NOT_FOUND, "not_found", what),
            StoreError::Conflict(what) if what == KEY_TAKEN => ApiError::key_taken(),
            StoreError::Conflict(what) if what == "name_taken" => ApiError::new(
                StatusCode::CONFLICT,
                "name_taken",
                "another member of the mesh already has that display name (or one that reads the same); choose another",
            ),
            StoreError::Invalid(what) if what == "name_reserved" => ApiError::new(
                StatusCode::BAD_REQUEST,
                "name_reserved",
                "that display name is reserved (it reads as user, assistant, system, claude or the like); choose another",
            ),
            StoreError::Conflict(what) => ApiError::new(StatusCode::CONFLICT, "conflict", what),
            StoreError::Invalid(what) => ApiError::new(StatusCode::BAD_REQUEST, "invalid", what),
            StoreError::Sqlite(_)
            | StoreError::Postgres(_)
            | StoreError::Batch(_)
            | StoreError::Migration { .. }
            | StoreError::Io { .. }
            | StoreError::Unreadable { .. }
            | StoreError::Database(_) => {
                tracing::error!(%error, "database error");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the broker's database is unavailable; retry",
                )
            }
            StoreError::Closed => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "the broker is shutting down")
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({"ok": false, "error": self.code, "message": self.message}))).into_response()
    }
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

/// Liveness: 200 whenever the process serves HTTP, with the database state for information.
async fn health(State(broker): State<Broker>) -> Json<serde_json::Value> {
    let db = match tokio::time::timeout(Duration::from_secs(2), broker.blocking(|store| store.ping())).await {
        Ok(Ok(())) => "up",
        _ => "down",
    };
    Json(json!({
        "status": "ok",
        "db": db,
        "version": VERSION,
        "uptime": broker.inner.started_at.elapsed().as_secs(),
    }))
}

/// Readiness: 503 unless the database answers and the expected migration is applied.
async fn ready(State(broker): State<Broker>) -> Response {
    let checked = tokio::time::timeout(
        Duration::from_secs(2),
        broker.blocking(|store| {
            store.ping()?;
            // A round trip through the writer thread: ready means writes are accepted too.
            store.flush()?;
            store.applied_migrations()
        }),
    )
    .await;
    let migrations = match checked {
        Ok(Ok(migrations)) => migrations,
        Ok(Err(error)) => {
            tracing::warn!(%error, "readiness check failed");
            return (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "not_ready", "reason": "db_down"})))
                .into_response();
        }
        Err(_) => {
            return (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "not_ready", "reason": "db_timeout"})))
                .into_response();
        }
    };
    if let Some(expected) = &broker.inner.expected_migration
        && !migrations.iter().any(|m| m == expected)
    {
        return (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"status": "not_ready", "reason": "migration_missing", "expected": expected, "applied": migrations})),
            )
                .into_response();
    }
    Json(json!({"status": "ready", "migration": migrations.last()})).into_response()
}

async fn metrics(State(broker): State<Broker>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], broker.metrics().render()).into_response()
}
