//! Fresh confirmation for requests that could lock a person out or let someone in: revoking
//! another device, minting a login token, approving a device.
//!
//! A device registers a confirmation key (ed25519) when it signs in and keeps its private half
//! next to its token. Such a request must carry `Claudemesh-Confirmation: <ms>.<signature>`, the
//! key's signature over [`crypto::confirmation_bytes`] for exactly this method, path and device,
//! made within the last minute and never seen before. The bearer token alone (read from a log, a
//! proxy, a shell history, or sniffed where plain http was allowed) is not enough, and one
//! confirmation confirms one request. The clients ask the person before they sign (the CLI
//! without a terminal only with `--yes`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Mutex;
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{Method, StatusCode};

use super::auth::Authenticated;
use super::{ApiError, Broker};
use crate::crypto::{self, PublicKey};
use crate::protocol;
use crate::protocol::account::CONFIRMATION_HEADER;

/// How far a confirmation's time may be from the broker's clock, either way.
pub const CONFIRMATION_WINDOW: Duration = Duration::from_secs(60);

/// Confirmations already used, until they would be too old to be accepted anyway.
#[derive(Debug, Default)]
pub(super) struct UsedConfirmations {
    /// Signature → the time (ms) after which it is stale on its own.
    seen: Mutex<HashMap<String, u64>>,
}

impl UsedConfirmations {
    /// Records `signature`; false when it was used before.
    fn first_use(&self, signature: &str, stale_at: u64, now: u64) -> bool {
        let mut seen = self.seen.lock().expect("confirmations lock");
        seen.retain(|_, until| *until > now);
        seen.insert(signature.to_owned(), stale_at).is_none()
    }
}

fn refused(code: &'static str, message: &str) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, code, message)
}

/// What a request offers as its fresh confirmation: the method, the path and the header. A
/// handler checks it with [`Confirmation::require`] where it needs one.
pub(super) struct Confirmation {
    method: Method,
    path: String,
    header: Option<String>,
}

impl FromRequestParts<Broker> for Confirmation {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &Broker) -> Result<Self, Self::Rejection> {
        Ok(Confirmation {
            method: parts.method.clone(),
            path: parts.uri.path().to_owned(),
            header: parts.headers.get(CONFIRMATION_HEADER).and_then(|v| v.to_str().ok()).map(str::to_owned),
        })
    }
}

impl Confirmation {
    /// Checks that the request carries a fresh confirmation by the calling device's key.
    pub(super) fn require(&self, broker: &Broker, auth: &Authenticated) -> Result<(), ApiError> {
        let key = auth.device.info.confirm_key.as_deref().ok_or_else(|| {
            refused(
                "confirmation_required",
                "this needs a fresh confirmation by this device's key, and this device signed in without one; \
                 sign out and sign in again with a current claudemesh",
            )
        })?;
        let value = self.header.as_deref().ok_or_else(|| {
            refused(
                "confirmation_required",
                "this needs a fresh confirmation: send `Claudemesh-Confirmation: <ms>.<signature>` signed by this \
                 device's confirmation key (the claudemesh app and CLI do, after asking you)",
            )
        })?;
        let invalid = |why: &str| refused("confirmation_invalid", &format!("the confirmation was refused: {why}"));
        let (time, signature) = value.trim().split_once('.').ok_or_else(|| invalid("it is not `<ms>.<signature>`"))?;
        let timestamp: u64 = time.parse().map_err(|_| invalid("its time is not a number of milliseconds"))?;
        let now = protocol::now_ms();
        let window = CONFIRMATION_WINDOW.as_millis() as u64;
        if timestamp.abs_diff(now) > window {
            return Err(invalid("it is older than a minute (or this device's clock is off); confirm again"));
        }
        let bytes = crypto::confirmation_bytes(self.method.as_str(), &self.path, &auth.device.id, timestamp);
        let key = PublicKey::from_hex(key).map_err(|_| invalid("this device's confirmation key is unusable"))?;
        key.verify_hex(bytes.as_bytes(), signature)
            .map_err(|_| invalid("the signature does not match this request and this device's key"))?;
        if !broker.inner.confirmations.first_use(signature, timestamp + window, now) {
            return Err(invalid("it was used before; each confirmation confirms one request"));
        }
        Ok(())
    }
}
