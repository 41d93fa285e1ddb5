//! Sign-in by a code sent by email: `POST /v1/connect/email` mails six digits to an address
//! that belongs to an account, `POST /v1/connect/verify` trades them for the token of a new
//! device of that account (a connector such as a Telegram bot, or a person without another
//! signed-in device). The first answer never says whether the address has an account; codes
//! live ten minutes, allow five tries, and are stored only as hashes; both routes are budgeted
//! per client address (and per email address) before any store work.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::auth::{ClientAddress, PrivateChannel, new_token, rate_limit_key, token_hash};
use super::device_login::{device_info, issued_token};
use super::{ApiError, Broker};
use crate::email::SignInCodeEmail;
use crate::protocol::{
    self,
    account::{DeviceCodeRequest, EmailCodeRequest, EmailCodeVerify},
};
use crate::store::EmailCodeOutcome;

/// The stored form of a code: bound to its address, never the digits themselves.
fn code_hash(email: &str, code: &str) -> String {
    hex::encode(Sha256::digest(format!("claudemesh-email-code/v1|{email}|{code}").as_bytes()))
}

/// The address in the form codes are kept under, if it looks like one (ASCII letters folded, as
/// the store compares addresses).
fn normalized_email(email: &str) -> Result<String, ApiError> {
    let email = email.trim().to_ascii_lowercase();
    let plausible = email.len() <= 254
        && !email.chars().any(char::is_control)
        && email.split_once('@').is_some_and(|(local, domain)| !local.is_empty() && domain.contains('.'));
    if plausible {
        Ok(email)
    } else {
        Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_email", "that is not an email address"))
    }
}

/// "10 minutes", or seconds for a code that lives less than two minutes.
fn valid_for(ttl: std::time::Duration) -> String {
    match ttl.as_secs() {
        secs if secs >= 120 => format!("{} minutes", secs / 60),
        secs => format!("{} seconds", secs.max(1)),
    }
}

fn too_many() -> ApiError {
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_requests",
        "too many sign-in codes asked for or tried; wait a minute",
    )
}

pub(super) async fn request_code(
    State(broker): State<Broker>,
    ClientAddress(ip): ClientAddress,
    Json(request): Json<EmailCodeRequest>,
) -> Result<Response, ApiError> {
    let Some(mailer) = broker.mailer().cloned() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "email_unavailable",
            "this broker sends no email (its operator configured no SMTP server); sign in with a device code",
        ));
    };
    let email = normalized_email(&request.email)?;
    let config = broker.config();
    let budgets = [
        (format!("email-code-ip:{}", rate_limit_key(ip)), config.email_code_limit_per_address),
        (format!("email-code:{email}"), config.email_code_limit_per_email),
    ];
    if !broker.inner.attempts.take_all(&budgets) {
        return Err(too_many());
    }
    let code = format!("{:06}", u32::from_le_bytes(crate::crypto::random_bytes::<4>()) % 1_000_000);
    let ttl = config.email_code_ttl;
    let now = protocol::now_ms();
    let (address, hash) = (email.clone(), code_hash(&email, &code));
    let account = broker
        .blocking(move |store| store.create_email_code(&address, &hash, now, now + ttl.as_millis() as u64))
        .await?;
    let lifetime = valid_for(ttl);
    if let Some(account) = account {
        // Sent after answering, so the answer takes as long whether or not the address is known.
        let lifetime = lifetime.clone();
        tokio::spawn(async move {
            let message = SignInCodeEmail { to: &email, account: &account.name, code: &code, valid_for: &lifetime };
            if let Err(error) = mailer.send_sign_in_code(&message).await {
                tracing::warn!(account = %account.id, %error, "the sign-in code email was not sent");
            }
        });
    }
    let answer = json!({
        "ok": true,
        "message": format!(
            "if an account on this broker has that address, a sign-in code is on its way; it works for {lifetime}"
        ),
    });
    Ok((StatusCode::ACCEPTED, Json(answer)).into_response())
}

pub(super) async fn verify_code(
    State(broker): State<Broker>,
    _: PrivateChannel,
    ClientAddress(ip): ClientAddress,
    Json(request): Json<EmailCodeVerify>,
) -> Result<Response, ApiError> {
    let config = broker.config();
    if !broker
        .inner
        .attempts
        .take_all(&[(format!("email-verify:{}", rate_limit_key(ip)), config.email_code_verify_limit)])
    {
        return Err(too_many());
    }
    let email = normalized_email(&request.email)?;
    let code = request.code.trim();
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_code", "the code is the six digits in the email"));
    }
    if request.device_name.trim().is_empty() {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "malformed", "deviceName names the device being signed in"));
    }
    let described = DeviceCodeRequest {
        hostname: request.device_name.clone(),
        platform: request.platform.clone(),
        arch: request.arch.clone(),
        app_version: request.app_version.clone(),
        account: None,
        confirm_key: request.confirm_key.clone(),
    };
    let device = device_info(&described, ip).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "malformed", e))?;
    let token = new_token();
    let ttl = config.token_ttl;
    let (hash, stored_token, attempts) = (code_hash(&email, code), token_hash(&token), config.email_code_attempts);
    let now = protocol::now_ms();
    let outcome = broker
        .blocking(move |store| {
            store.redeem_email_code(&email, &hash, attempts, &device, &stored_token, now + ttl.as_millis() as u64, now)
        })
        .await?;
    match outcome {
        EmailCodeOutcome::Issued { account, device } => {
            tracing::info!(account = %account.id, device = %device.id, "device signed in with an emailed code");
            Ok(issued_token(token, ttl.as_secs(), &account, &device))
        }
        EmailCodeOutcome::Refused => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_code",
            "wrong or expired code; check the newest email, or ask for a new code",
        )),
        EmailCodeOutcome::Exhausted => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "too_many_attempts",
            "that code was tried too often and no longer works; ask for a new one",
        )),
    }
}
