//! Bearer tokens: minting, hashing, and the extractor every account route uses.
//!
//! A token is 32 random bytes (`cmt_` + base64url). The broker stores only its SHA-256; a token
//! works while its device is not revoked and it has not expired, and each use (at most hourly)
//! pushes the expiry out again.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::StatusCode;
use axum::http::request::Parts;
use base64::Engine as _;
use sha2::{Digest, Sha256};

use super::{ApiError, Broker};
use crate::protocol;
use crate::store::{AccountRecord, DeviceRecord};

/// Uses closer together than this do not rewrite the device's expiry.
const RENEW_EVERY: Duration = Duration::from_secs(3600);

pub fn new_token() -> String {
    let bytes = crate::crypto::random_bytes::<32>();
    format!("cmt_{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A request made with a valid device token.
#[derive(Debug, Clone)]
pub struct Authenticated {
    pub device: DeviceRecord,
    pub account: AccountRecord,
}

fn unauthorized(code: &'static str, message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, code, message)
}

impl FromRequestParts<Broker> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, broker: &Broker) -> Result<Self, Self::Rejection> {
        let header = authorization(&parts.headers).ok_or_else(|| {
            unauthorized("token_missing", "send `Authorization: Bearer <token>`; sign in with `claudemesh login`")
        })?;
        authenticate(broker, header).await
    }
}

/// The `Authorization` header, if the request has one.
pub fn authorization(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok())
}

/// Checks an `Authorization: Bearer …` header value.
pub async fn authenticate(broker: &Broker, header: &str) -> Result<Authenticated, ApiError> {
    {
        let token = header
            .strip_prefix("Bearer ")
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| unauthorized("token_missing", "the Authorization header must be `Bearer <token>`"))?;
        let hash = token_hash(token);
        let found = broker.blocking(move |store| store.device_by_token(&hash)).await?;
        let (device, account) =
            found.ok_or_else(|| unauthorized("token_invalid", "this token is unknown or revoked; sign in again"))?;
        let now = protocol::now_ms();
        if now >= device.expires_at {
            return Err(unauthorized("token_expired", "this device's sign-in expired; run `claudemesh login` again"));
        }
        if now.saturating_sub(device.last_seen_at) >= RENEW_EVERY.as_millis() as u64 {
            let expires_at = now + broker.config().token_ttl.as_millis() as u64;
            let id = device.id.clone();
            broker.blocking(move |store| store.touch_device(&id, now, expires_at)).await?;
        }
        Ok(Authenticated { device, account })
    }
}

/// The client's address: the socket's, or the last `X-Forwarded-For` hop behind a trusted proxy.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddress(pub IpAddr);

/// The bucket an address's requests count against: an IPv4 address, or the /64 network of an
/// IPv6 address (one host is normally given a whole /64, so per-address buckets would let it
/// rotate through 2^64 of them). An IPv4-mapped IPv6 address counts as its IPv4 address.
pub fn rate_limit_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("ip:{v4}"),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => format!("ip:{v4}"),
            None => {
                let network = u128::from(v6) & !((1u128 << 64) - 1);
                format!("ip:{}/64", std::net::Ipv6Addr::from(network))
            }
        },
    }
}

/// The address the connection came from, and whether it is a proxy the operator trusts.
fn peer(parts: &Parts, broker: &Broker) -> (IpAddr, bool) {
    let socket = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|info| info.0.ip());
    let ip = socket.unwrap_or(IpAddr::from([0, 0, 0, 0])).to_canonical();
    let trusted = broker.config().trusted_proxies.iter().any(|net| net.contains(&ip));
    (ip, trusted)
}

/// The rightmost value of a comma-separated forwarding header: the one the trusted proxy
/// appended (the ones before it are whatever the client sent).
fn last_hop<'a>(parts: &'a Parts, header: &str) -> Option<&'a str> {
    parts.headers.get(header).and_then(|v| v.to_str().ok()).and_then(|v| v.rsplit(',').next()).map(str::trim)
}

impl FromRequestParts<Broker> for ClientAddress {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, broker: &Broker) -> Result<Self, Self::Rejection> {
        let (ip, from_proxy) = peer(parts, broker);
        let forwarded =
            from_proxy.then(|| last_hop(parts, "x-forwarded-for")).flatten().and_then(|v| v.parse::<IpAddr>().ok());
        Ok(ClientAddress(forwarded.map_or(ip, |f| f.to_canonical())))
    }
}

/// A request over which a sign-in credential may travel: https (as a trusted proxy reports
/// with `X-Forwarded-Proto`), this machine, or any request when the operator allows plain http.
/// Rejects the rest before any work, so no token ever crosses a network in clear.
#[derive(Debug, Clone, Copy)]
pub struct PrivateChannel;

impl FromRequestParts<Broker> for PrivateChannel {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, broker: &Broker) -> Result<Self, Self::Rejection> {
        let (ip, from_proxy) = peer(parts, broker);
        let https = from_proxy && last_hop(parts, "x-forwarded-proto").is_some_and(|p| p.eq_ignore_ascii_case("https"));
        // Through a proxy, "this machine" means the client the proxy serves, not the proxy.
        let client = if from_proxy { ClientAddress::from_request_parts(parts, broker).await?.0 } else { ip };
        if https || client.is_loopback() || broker.config().allow_insecure_http {
            return Ok(PrivateChannel);
        }
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "insecure_transport",
            "this broker issues sign-in tokens only over https or to its own machine; put it behind a TLS \
             proxy (listed with --trusted-proxy), or start it with --allow-insecure-http on a network you trust",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_addresses_share_a_bucket_per_64_and_mapped_ipv4_is_ipv4() {
        let ip = |text: &str| text.parse::<IpAddr>().expect("an address");
        assert_eq!(rate_limit_key(ip("2001:db8:1:2:aaaa::1")), rate_limit_key(ip("2001:db8:1:2:ffff::9")));
        assert_ne!(rate_limit_key(ip("2001:db8:1:2::1")), rate_limit_key(ip("2001:db8:1:3::1")));
        assert_eq!(rate_limit_key(ip("2001:db8:1:2::1")), "ip:2001:db8:1:2::/64");
        assert_eq!(rate_limit_key(ip("::ffff:192.0.2.7")), rate_limit_key(ip("192.0.2.7")));
        assert_ne!(rate_limit_key(ip("192.0.2.7")), rate_limit_key(ip("192.0.2.8")));
    }
}
