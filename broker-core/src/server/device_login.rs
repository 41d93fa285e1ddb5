//! Device login (RFC 8628 shape) and the account's devices.
//!
//! A device that is not signed in asks for a code, shows the user code and polls. A person
//! approves it from a device that is signed in, after seeing which device asks; nothing is
//! approved automatically. The token is minted when the approved device polls, handed out once,
//! and only its hash is kept.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio::time::Instant;

use super::auth::{Authenticated, ClientAddress, PrivateChannel, new_token, rate_limit_key, token_hash};
use super::confirm::Confirmation;
use super::{ApiError, Broker};
use crate::config::RateLimit;
use crate::crypto::PublicKey;
use crate::membership;
use crate::protocol::account::{
    AccountInfo, DEVICE_CODE_GRANT, DeviceCodeRequest, DeviceCodeResponse, DeviceDecision, DeviceView, Endorsement,
    LoginTokenResponse, PendingDevice, SignupRequest, TokenError, TokenRequest, TokenResponse, format_user_code,
    new_user_code, normalize_user_code, token_error,
};
use crate::protocol::{self, iso8601_ms};
use crate::router::TokenBucket;
use crate::store::{
    AccountRecord, DeviceCodeRecord, DeviceCodeStatus, DeviceInfo, DeviceRecord, EndorsementRecord, NewDeviceCode,
    PollOutcome, StoreError,
};

/// Endorsements one approval may carry: one per mesh the approving device is in.
const MAX_ENDORSEMENTS: usize = 256;

/// Token buckets of device-login attempts (wrong user codes per client address and per account,
/// logins started per address): brute force on the
/// 25-billion code space costs the attacker time, not the user.
#[derive(Debug, Default)]
pub struct AttemptLimiter {
    buckets: Mutex<HashMap<String, TokenBucket>>,
}

impl AttemptLimiter {
    /// Whether `key` may try another code now (a wrong code spends a token).
    fn allows(&self, key: &str, limit: RateLimit) -> bool {
        has_token(&self.buckets.lock().expect("limiter lock"), key, limit, Instant::now())
    }

    fn spend(&self, key: &str, limit: RateLimit) {
        let mut buckets = self.buckets.lock().expect("limiter lock");
        spend_locked(&mut buckets, key, limit, Instant::now());
    }

    /// Takes a token from each of `budgets` if every one has a token, else from none: one
    /// request counts against several keys (a code and an address, an account and a mesh).
    pub(super) fn take_all(&self, budgets: &[(String, RateLimit)]) -> bool {
        let mut buckets = self.buckets.lock().expect("limiter lock");
        let now = Instant::now();
        let allowed = budgets.iter().all(|(key, limit)| has_token(&buckets, key, *limit, now));
        if allowed {
            for (key, limit) in budgets {
                spend_locked(&mut buckets, key, *limit, now);
            }
        }
        allowed
    }
}

fn has_token(buckets: &HashMap<String, TokenBucket>, key: &str, limit: RateLimit, now: Instant) -> bool {
    buckets.get(key).is_none_or(|bucket| {
        let mut probe = *bucket;
        probe.try_take(limit, now)
    })
}

fn spend_locked(buckets: &mut HashMap<String, TokenBucket>, key: &str, limit: RateLimit, now: Instant) {
    if buckets.len() > 100_000 {
        // Forget only buckets that have refilled: they no longer limit anyone.
        buckets.retain(|_, bucket| bucket.retry_after_full(limit, now) > std::time::Duration::ZERO);
    }
    buckets.entry(key.to_owned()).or_insert_with(|| TokenBucket::full(limit, now)).try_take(limit, now);
}

/// Parses a form-encoded body (as RFC 8628 clients send) or a JSON one.
fn form_or_json<T: DeserializeOwned>(headers: &HeaderMap, body: &Bytes) -> Result<T, String> {
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if is_form { serde_urlencoded_like(body) } else { serde_json::from_slice(body).map_err(|e| e.to_string()) }
}

/// Form bodies through serde_json: the flat `a=b&c=d` pairs become a JSON object of strings.
fn serde_urlencoded_like<T: DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    let text = std::str::from_utf8(body).map_err(|_| "the form body is not UTF-8".to_owned())?;
    let mut object = serde_json::Map::new();
    for pair in text.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        object.insert(percent_decode(key)?, serde_json::Value::String(percent_decode(value)?));
    }
    serde_json::from_value(serde_json::Value::Object(object)).map_err(|e| e.to_string())
}

fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = text.get(index + 1..index + 3).ok_or("a truncated %-escape in the form")?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| "a bad %-escape in the form")?);
                index += 2;
            }
            byte => out.push(byte),
        }
        index += 1;
    }
    String::from_utf8(out).map_err(|_| "the form is not UTF-8".to_owned())
}

/// What a device says about itself, cleaned; refused when its confirmation key is not a usable
/// ed25519 public key.
pub(super) fn device_info(request: &DeviceCodeRequest, ip: IpAddr) -> Result<DeviceInfo, String> {
    let clean = |text: &str, fallback: &str| {
        let text: String = text.chars().filter(|c| !c.is_control()).take(128).collect();
        if text.trim().is_empty() { fallback.to_owned() } else { text.trim().to_owned() }
    };
    let confirm_key = request.confirm_key.as_deref().map(str::trim).filter(|k| !k.is_empty());
    if let Some(key) = confirm_key
        && !PublicKey::is_valid_hex(key)
    {
        return Err("confirm_key must be an ed25519 public key in hex (64 characters)".to_owned());
    }
    Ok(DeviceInfo {
        hostname: clean(&request.hostname, "unknown host"),
        platform: clean(&request.platform, "unknown"),
        arch: clean(&request.arch, "unknown"),
        app_version: clean(&request.app_version, "unknown"),
        ip: ip.to_string(),
        confirm_key: confirm_key.map(str::to_ascii_lowercase),
    })
}

pub(super) async fn request_code(
    State(broker): State<Broker>,
    _: PrivateChannel,
    ClientAddress(ip): ClientAddress,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<DeviceCodeResponse>, ApiError> {
    let budget = (format!("code-request:{}", rate_limit_key(ip)), broker.config().device_code_request_limit);
    if !broker.inner.attempts.take_all(&[budget]) {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_requests",
            "too many sign-ins started from this address; wait a minute",
        ));
    }
    let request: DeviceCodeRequest = if body.is_empty() {
        DeviceCodeRequest::default()
    } else {
        form_or_json(&headers, &body).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "malformed", e))?
    };
    let info = device_info(&request, ip).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "malformed", e))?;
    let config = broker.config();
    let (ttl, interval) = (config.device_code_ttl, config.device_poll_interval);
    let now = protocol::now_ms();
    let mut attempt = 0;
    let (device_code, user_code) = loop {
        let device_code = new_token().replacen("cmt_", "cmd_", 1);
        let code = NewDeviceCode {
            device_code_hash: token_hash(&device_code),
            user_code: new_user_code(),
            info: info.clone(),
            account_hint: request.account.as_ref().map(|a| a.trim().to_owned()).filter(|a| !a.is_empty()),
            created_at: now,
            expires_at: now + ttl.as_millis() as u64,
            interval_ms: interval.as_millis() as u64,
        };
        let user_code = code.user_code.clone();
        match broker.blocking(move |store| store.create_device_code(&code)).await {
            Ok(()) => break (device_code, user_code),
            Err(StoreError::Conflict(_)) if attempt < 3 => attempt += 1,
            Err(error) => return Err(error.into()),
        }
    };
    let shown = format_user_code(&user_code);
    tracing::info!(hostname = %info.hostname, ip = %info.ip, "device login requested");
    Ok(Json(DeviceCodeResponse {
        device_code,
        verification_uri: format!("{}/device", broker.public_url()),
        verification_uri_complete: format!("{}/device?code={shown}", broker.public_url()),
        verification_uri_app: format!("claudemesh://device?code={shown}"),
        user_code: shown,
        expires_in: ttl.as_secs(),
        interval: interval.as_secs(),
    }))
}

/// How often one device code, and one client address, may poll the token endpoint: twice the
/// polling interval for a code, and twenty devices signing in at once for an address (a
/// household or an office behind one address).
fn poll_limits(interval: std::time::Duration) -> (RateLimit, RateLimit) {
    let per_minute = u32::try_from(60_000 / interval.as_millis().max(1)).unwrap_or(u32::MAX).max(1);
    let per_code = RateLimit { burst: 3, per_minute: per_minute.saturating_mul(2) };
    let per_address = RateLimit { burst: 20, per_minute: per_minute.saturating_mul(20) };
    (per_code, per_address)
}

fn token_error_response(status: StatusCode, error: &str, description: &str) -> Response {
    let body = TokenError { error: error.to_owned(), error_description: description.to_owned() };
    (status, [(header::CACHE_CONTROL, "no-store")], Json(body)).into_response()
}

pub(super) async fn poll_token(
    State(broker): State<Broker>,
    _: PrivateChannel,
    ClientAddress(ip): ClientAddress,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request: TokenRequest = match form_or_json(&headers, &body) {
        Ok(request) => request,
        Err(problem) => {
            return token_error_response(StatusCode::BAD_REQUEST, token_error::INVALID_REQUEST, &problem);
        }
    };
    if request.grant_type.as_deref().is_some_and(|g| g != DEVICE_CODE_GRANT) {
        return token_error_response(
            StatusCode::BAD_REQUEST,
            token_error::UNSUPPORTED_GRANT_TYPE,
            "only the device_code grant is supported",
        );
    }
    let code_hash = token_hash(&request.device_code);
    // Counted before any store work: guessing device codes must not reach the store's writer.
    let (per_code, per_address) = poll_limits(broker.config().device_poll_interval);
    let budgets = [(format!("poll-code:{code_hash}"), per_code), (format!("poll:{}", rate_limit_key(ip)), per_address)];
    if !broker.inner.attempts.take_all(&budgets) {
        return token_error_response(
            StatusCode::BAD_REQUEST,
            token_error::SLOW_DOWN,
            "polling too fast; wait 5 s longer between polls",
        );
    }
    let token = new_token();
    let token_hash_value = token_hash(&token);
    let ttl = broker.config().token_ttl;
    let now = protocol::now_ms();
    let expires_at = now + ttl.as_millis() as u64;
    let claimant = match device_info(&request.device, ip) {
        Ok(claimant) => claimant,
        Err(problem) => return token_error_response(StatusCode::BAD_REQUEST, token_error::INVALID_REQUEST, &problem),
    };
    let outcome = broker
        .blocking(move |store| store.poll_device_code(&code_hash, &token_hash_value, expires_at, &claimant, now))
        .await;
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(error) => return ApiError::from(error).into_response(),
    };
    let bad = StatusCode::BAD_REQUEST;
    match outcome {
        PollOutcome::Pending => {
            token_error_response(bad, token_error::AUTHORIZATION_PENDING, "waiting for someone to approve this device")
        }
        PollOutcome::SlowDown => {
            token_error_response(bad, token_error::SLOW_DOWN, "polling too fast; wait 5 s longer between polls")
        }
        PollOutcome::Denied => token_error_response(bad, token_error::ACCESS_DENIED, "the sign-in was denied"),
        PollOutcome::Expired => {
            token_error_response(bad, token_error::EXPIRED_TOKEN, "the code expired; start the sign-in again")
        }
        PollOutcome::Invalid => token_error_response(
            bad,
            token_error::INVALID_GRANT,
            "unknown device code, or its token was already handed out",
        ),
        PollOutcome::Issued { account, device } => {
            tracing::info!(account = %account.id, device = %device.id, "device signed in");
            issued_token(token, ttl.as_secs(), &account, &device)
        }
    }
}

/// A one-time token the caller's account can be signed in with on another device; it is
/// redeemed at the token endpoint like a device code (`device_code=<login token>`). Needs a
/// fresh confirmation.
pub(super) async fn login_token(
    State(broker): State<Broker>,
    _: PrivateChannel,
    auth: Authenticated,
    confirmation: Confirmation,
) -> Result<Json<LoginTokenResponse>, ApiError> {
    confirmation.require(&broker, &auth)?;
    let login_token = new_token().replacen("cmt_", "cml_", 1);
    let hash = token_hash(&login_token);
    let ttl = broker.config().device_code_ttl;
    let now = protocol::now_ms();
    let (account, device) = (auth.account.id.clone(), auth.device.id.clone());
    broker
        .blocking(move |store| store.create_login_token(&hash, &account, &device, now, now + ttl.as_millis() as u64))
        .await?;
    Ok(Json(LoginTokenResponse { login_token, expires_in: ttl.as_secs() }))
}

/// The answer that hands a newly signed-in device its token, never to be cached.
pub(super) fn issued_token(token: String, expires_in: u64, account: &AccountRecord, device: &DeviceRecord) -> Response {
    let body = token_response(token, expires_in, account, device);
    (StatusCode::OK, [(header::CACHE_CONTROL, "no-store")], Json(body)).into_response()
}

fn token_response(token: String, expires_in: u64, account: &AccountRecord, device: &DeviceRecord) -> TokenResponse {
    TokenResponse {
        access_token: token,
        token_type: "Bearer".to_owned(),
        expires_in,
        device_id: device.id.clone(),
        account: AccountInfo { id: account.id.clone(), name: account.name.clone(), email: account.email.clone() },
    }
}

fn pending_view(code: &DeviceCodeRecord) -> PendingDevice {
    PendingDevice {
        user_code: format_user_code(&code.user_code),
        hostname: code.info.hostname.clone(),
        platform: code.info.platform.clone(),
        arch: code.info.arch.clone(),
        app_version: code.info.app_version.clone(),
        ip: code.info.ip.clone(),
        requested_at: iso8601_ms(code.created_at),
        expires_at: iso8601_ms(code.expires_at),
        status: code.status.as_str().to_owned(),
        confirm_key: code.info.confirm_key.clone(),
    }
}

/// Finds a live code for an approver, counting the attempt against the code and wrong codes
/// against the caller's address and account.
async fn find_code_for_approver(
    broker: &Broker,
    auth: &Authenticated,
    ip: IpAddr,
    user_code: &str,
) -> Result<DeviceCodeRecord, ApiError> {
    let limit = broker.config().wrong_code_limit;
    let keys = [rate_limit_key(ip), format!("account:{}", auth.account.id)];
    let limiter = &broker.inner.attempts;
    if keys.iter().any(|key| !limiter.allows(key, limit)) {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_attempts",
            "too many wrong codes; wait a minute and check the code on the device",
        ));
    }
    let wrong = || {
        for key in &keys {
            limiter.spend(key, limit);
        }
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_code",
            "no device is waiting with that code; check it on the device",
        )
    };
    let Some(code) = normalize_user_code(user_code) else { return Err(wrong()) };
    let max = broker.config().device_code_attempts;
    let found = broker.blocking(move |store| store.count_device_code_attempt(&code, max)).await;
    let record = match found {
        Ok(record) => record,
        Err(StoreError::NotFound(_)) => return Err(wrong()),
        Err(error) => return Err(error.into()),
    };
    if protocol::now_ms() >= record.expires_at {
        return Err(ApiError::new(
            StatusCode::GONE,
            "expired",
            "that code expired; start the sign-in again on the device",
        ));
    }
    if record.attempts > max {
        return Err(ApiError::new(
            StatusCode::GONE,
            "too_many_attempts",
            "that code was tried too often and is no longer valid; start the sign-in again",
        ));
    }
    Ok(record)
}

/// Device logins waiting for approval that named this account, for signed-in devices to show
/// (and notify about). Listing them does not count as an attempt on any code.
pub(super) async fn list_pending(
    State(broker): State<Broker>,
    auth: Authenticated,
) -> Result<Json<serde_json::Value>, ApiError> {
    let account = auth.account.clone();
    let pending = broker.blocking(move |store| store.pending_device_codes(&account, protocol::now_ms())).await?;
    let views: Vec<PendingDevice> =
        pending.iter().map(|code| PendingDevice { user_code: String::new(), ..pending_view(code) }).collect();
    Ok(Json(json!({"pending": views})))
}

pub(super) async fn show_pending(
    State(broker): State<Broker>,
    auth: Authenticated,
    ClientAddress(ip): ClientAddress,
    Path(user_code): Path<String>,
) -> Result<Json<PendingDevice>, ApiError> {
    let record = find_code_for_approver(&broker, &auth, ip, &user_code).await?;
    Ok(Json(pending_view(&record)))
}

async fn decide(
    broker: Broker,
    auth: Authenticated,
    ip: IpAddr,
    decision: DeviceDecision,
    approve: bool,
) -> Result<Json<PendingDevice>, ApiError> {
    let record = find_code_for_approver(&broker, &auth, ip, &decision.user_code).await?;
    if record.status != DeviceCodeStatus::Pending {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "already_decided",
            format!("that sign-in is already {}", record.status.as_str()),
        ));
    }
    let endorsements =
        if approve { checked_endorsements(&broker, &auth, &record, decision.endorsements).await? } else { Vec::new() };
    let (code, account, device) = (record.user_code.clone(), auth.account.id.clone(), auth.device.id.clone());
    let decided = broker
        .blocking(move |store| store.decide_device_code(&code, approve, &account, Some(&device), protocol::now_ms()))
        .await
        .map_err(|error| match error {
            StoreError::Conflict(what) if what == "account_mismatch" => ApiError::new(
                StatusCode::FORBIDDEN,
                "account_mismatch",
                "that device asked to join another account; it cannot be approved for yours",
            ),
            other => other.into(),
        })?;
    if !endorsements.is_empty() {
        broker.blocking(move |store| store.add_endorsements(&endorsements)).await?;
    }
    tracing::info!(account = %auth.account.id, approved = approve, hostname = %decided.info.hostname, "device login decided");
    Ok(Json(pending_view(&decided)))
}

/// The endorsements an approval carries, each by an active member of the approver's account
/// over the confirmation key the device showed; refused whole when one does not check out.
async fn checked_endorsements(
    broker: &Broker,
    auth: &Authenticated,
    code: &DeviceCodeRecord,
    endorsements: Vec<Endorsement>,
) -> Result<Vec<EndorsementRecord>, ApiError> {
    if endorsements.is_empty() {
        return Ok(Vec::new());
    }
    let invalid = |why: String| ApiError::new(StatusCode::BAD_REQUEST, "endorsement_invalid", why);
    let device_key = code
        .info
        .confirm_key
        .clone()
        .ok_or_else(|| invalid("the device showed no confirmation key to endorse".into()))?;
    if endorsements.len() > MAX_ENDORSEMENTS {
        return Err(invalid(format!("at most {MAX_ENDORSEMENTS} endorsements")));
    }
    let mut records = Vec::new();
    for endorsement in endorsements {
        let bytes = membership::endorsement_bytes(&endorsement.mesh_id, &device_key);
        let signed =
            crate::crypto::verify_signed(&endorsement.sponsor, bytes.as_bytes(), &endorsement.signature).is_ok();
        if !signed {
            return Err(invalid(format!("the endorsement for mesh {} does not verify", endorsement.mesh_id)));
        }
        let (mesh_id, sponsor) = (endorsement.mesh_id.clone(), endorsement.sponsor.clone());
        let member = broker.blocking(move |store| store.member_by_pubkey(&mesh_id, &sponsor)).await?;
        if !member.is_some_and(|m| m.is_active() && m.account_id.as_deref() == Some(auth.account.id.as_str())) {
            return Err(invalid(format!(
                "the sponsor is not a member of your account in mesh {}",
                endorsement.mesh_id
            )));
        }
        records.push(EndorsementRecord {
            mesh_id: endorsement.mesh_id,
            device_key: device_key.clone(),
            sponsor: endorsement.sponsor,
            signature: endorsement.signature,
            created_at: protocol::now_ms(),
        });
    }
    Ok(records)
}

/// Approving lets a device in: it needs a fresh confirmation (denying does not).
pub(super) async fn approve(
    State(broker): State<Broker>,
    auth: Authenticated,
    ClientAddress(ip): ClientAddress,
    confirmation: Confirmation,
    Json(decision): Json<DeviceDecision>,
) -> Result<Json<PendingDevice>, ApiError> {
    confirmation.require(&broker, &auth)?;
    decide(broker, auth, ip, decision, true).await
}

pub(super) async fn deny(
    State(broker): State<Broker>,
    auth: Authenticated,
    ClientAddress(ip): ClientAddress,
    Json(decision): Json<DeviceDecision>,
) -> Result<Json<PendingDevice>, ApiError> {
    decide(broker, auth, ip, decision, false).await
}

fn device_view(device: &DeviceRecord, current_id: &str) -> DeviceView {
    DeviceView {
        id: device.id.clone(),
        hostname: device.info.hostname.clone(),
        platform: device.info.platform.clone(),
        arch: device.info.arch.clone(),
        app_version: device.info.app_version.clone(),
        ip: device.info.ip.clone(),
        created_at: iso8601_ms(device.created_at),
        last_seen_at: iso8601_ms(device.last_seen_at),
        expires_at: iso8601_ms(device.expires_at),
        revoked: device.revoked_at.is_some(),
        current: device.id == current_id,
    }
}

/// The caller's account and device, and the broker's public URL (what invites must name).
pub(super) async fn whoami(State(broker): State<Broker>, auth: Authenticated) -> Json<serde_json::Value> {
    Json(json!({
        "account": AccountInfo { id: auth.account.id.clone(), name: auth.account.name.clone(), email: auth.account.email.clone() },
        "device": device_view(&auth.device, &auth.device.id),
        "brokerUrl": broker.public_url(),
    }))
}

pub(super) async fn list_devices(
    State(broker): State<Broker>,
    auth: Authenticated,
) -> Result<Json<serde_json::Value>, ApiError> {
    let account = auth.account.id.clone();
    let devices = broker.blocking(move |store| store.devices(&account)).await?;
    let views: Vec<DeviceView> = devices.iter().map(|d| device_view(d, &auth.device.id)).collect();
    Ok(Json(json!({"devices": views})))
}

/// Revokes a device of the caller's account: its token stops working and its live sessions end
/// now. Revoking another device than the caller needs a fresh confirmation.
pub(super) async fn revoke_device(
    State(broker): State<Broker>,
    auth: Authenticated,
    Path(device_id): Path<String>,
    confirmation: Confirmation,
) -> Result<Json<serde_json::Value>, ApiError> {
    if device_id != auth.device.id {
        confirmation.require(&broker, &auth)?;
    }
    let account = auth.account.id.clone();
    let id = device_id.clone();
    let owned = broker.blocking(move |store| Ok(store.devices(&account)?.into_iter().any(|d| d.id == id))).await?;
    if !owned {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such device in your account"));
    }
    revoke(&broker, &device_id, &auth.device.id).await
}

async fn revoke(broker: &Broker, device_id: &str, actor_device: &str) -> Result<Json<serde_json::Value>, ApiError> {
    let (id, actor) = (device_id.to_owned(), actor_device.to_owned());
    let members = broker.blocking(move |store| store.revoke_device(&id, Some(&actor), protocol::now_ms())).await?;
    // End the device's live sessions at once rather than at the next directory poll.
    broker.router().reload_directory().await?;
    tracing::info!(device = %device_id, members = members.len(), "device revoked");
    Ok(Json(json!({"ok": true, "revokedMembers": members.len()})))
}

/// Signs this device out: its token is revoked (and its member keys with it).
pub(super) async fn logout(
    State(broker): State<Broker>,
    auth: Authenticated,
) -> Result<Json<serde_json::Value>, ApiError> {
    revoke(&broker, &auth.device.id, &auth.device.id).await
}

pub(super) async fn signup(
    State(broker): State<Broker>,
    _: PrivateChannel,
    ClientAddress(ip): ClientAddress,
    Json(request): Json<SignupRequest>,
) -> Result<Response, ApiError> {
    if !broker.config().open_signup {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "signup_closed",
            "this broker does not allow open sign-up; ask its operator for an account",
        ));
    }
    let info = device_info(&request.device, ip).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "malformed", e))?;
    let token = new_token();
    let hash = token_hash(&token);
    let ttl = broker.config().token_ttl;
    let (name, email) = (request.name.clone(), request.email.clone());
    let (account, device) = broker
        .blocking(move |store| {
            let now = protocol::now_ms();
            let account = store.create_account(&name, email.as_deref(), now)?;
            let device = store.create_device(&account.id, &info, &hash, now + ttl.as_millis() as u64, now)?;
            Ok((account, device))
        })
        .await?;
    Ok((StatusCode::CREATED, Json(token_response(token, ttl.as_secs(), &account, &device))).into_response())
}

/// What a person who opens the verification URI in a browser sees.
pub(super) async fn verification_page(
    axum::extract::Query(query): axum::extract::Query<HashMap<String, String>>,
) -> Html<String> {
    let code = query.get("code").and_then(|c| normalize_user_code(c)).map(|c| format_user_code(&c));
    let code_line = code
        .as_deref()
        .map(|c| format!("<p>The code is <b style=\"font-size:1.6em;letter-spacing:.1em\">{c}</b>.</p>"))
        .unwrap_or_default();
    let command = code.as_deref().unwrap_or("XXXX-XXXX");
    Html(format!(
        "<!doctype html><meta charset=utf-8><title>Approve a device — claudemesh</title>\
         <body style=\"font-family:system-ui;max-width:40em;margin:3em auto\">\
         <h1>Approve a device</h1>{code_line}\
         <p>On a device that is already signed in, open the claudemesh app and choose \
         <b>Approve a device…</b>, or run:</p><pre>claudemesh device approve {command}</pre>\
         <p>Check the device name and address it shows before you approve.</p></body>"
    ))
}
