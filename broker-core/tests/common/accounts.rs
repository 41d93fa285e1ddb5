//! Sign-in helpers shared by the account and device-login tests.

use std::time::Duration;

use broker_core::config::{BrokerConfig, RateLimit};
use broker_core::crypto::{self, Keypair};
use broker_core::invite::Invite;
use broker_core::protocol::account::CONFIRMATION_HEADER;
use broker_core::protocol::{self, Role};
use broker_core::store::Store;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{TestBroker, TestMember, api, api_with_headers};

/// Polls may come every 50 ms (the production interval is 5 s).
pub const POLL: Duration = Duration::from_millis(50);

pub fn quick_polls() -> BrokerConfig {
    BrokerConfig { device_poll_interval: POLL, ..BrokerConfig::default() }
}

pub fn generous() -> BrokerConfig {
    BrokerConfig { rate_limit: RateLimit { burst: 10_000, per_minute: 600_000 }, ..quick_polls() }
}

/// The confirmation key a test device signed in as `hostname` registers (one per hostname, so a
/// test finds it again from the device's description).
pub fn confirm_key_of(hostname: &str) -> Keypair {
    Keypair::from_seed(&Sha256::digest(hostname.as_bytes()).into())
}

/// Starts a device login as `hostname` with its confirmation key; returns (device_code, user_code).
pub async fn start_login(broker: &TestBroker, hostname: &str) -> (String, String) {
    let (status, body) = api(
        broker.addr,
        "POST",
        "/v1/device/code",
        None,
        Some(json!({
            "hostname": hostname, "platform": "linux", "arch": "x86_64", "app_version": "0.1.0",
            "confirm_key": confirm_key_of(hostname).public_hex(),
        })),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let user_code = body["user_code"].as_str().expect("user code").to_owned();
    assert!(body["verification_uri_complete"].as_str().expect("uri").ends_with(&format!("?code={user_code}")));
    assert_eq!(body["verification_uri_app"], format!("claudemesh://device?code={user_code}"));
    (body["device_code"].as_str().expect("device code").to_owned(), user_code)
}

/// Polls once, as the RFC's form-encoded request.
pub async fn poll(broker: &TestBroker, device_code: &str) -> (u16, Value) {
    let form = format!("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Adevice_code&device_code={device_code}");
    let (status, text) = super::http_with(
        broker.addr,
        "POST",
        "/v1/device/token",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        Some(&form),
    )
    .await;
    (status, serde_json::from_str(&text).expect("json"))
}

/// The first device of a new account: approved by the operator path, then its token.
pub async fn first_device(broker: &TestBroker, account: &str) -> String {
    let created = broker.store.create_account(account, None, protocol::now_ms()).expect("account");
    let (device_code, user_code) = start_login(broker, &format!("{account}-laptop")).await;
    let code = protocol::account::normalize_user_code(&user_code).expect("code");
    broker.store.decide_device_code(&code, true, &created.id, None, protocol::now_ms()).expect("approve");
    let (status, body) = poll(broker, &device_code).await;
    assert_eq!(status, 200, "{body}");
    body["access_token"].as_str().expect("token").to_owned()
}

/// A second device signed in by approving it from `approver_token`.
pub async fn approved_device(broker: &TestBroker, approver_token: &str, hostname: &str) -> String {
    let (device_code, user_code) = start_login(broker, hostname).await;
    let (status, body) = approve(broker, approver_token, &user_code).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = poll(broker, &device_code).await;
    assert_eq!(status, 200, "{body}");
    body["access_token"].as_str().expect("token").to_owned()
}

/// A fresh confirmation of `method path` by the device with `token`, signed with `key` (by
/// default the key it registered), made at `timestamp_ms` (by default now).
pub async fn confirmation(
    broker: &TestBroker,
    token: &str,
    method: &str,
    path: &str,
    key: Option<&Keypair>,
    timestamp_ms: Option<u64>,
) -> String {
    let (status, me) = api(broker.addr, "GET", "/v1/account", Some(token), None).await;
    assert_eq!(status, 200, "{me}");
    let device_id = me["device"]["id"].as_str().expect("device id");
    let own = confirm_key_of(me["device"]["hostname"].as_str().expect("hostname"));
    let at = timestamp_ms.unwrap_or_else(protocol::now_ms);
    crypto::confirmation_header(key.unwrap_or(&own), method, path, device_id, at)
}

/// `api` for a request that needs a fresh confirmation, confirmed by the calling device.
pub async fn confirmed_api(
    broker: &TestBroker,
    method: &str,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let header = confirmation(broker, token, method, path, None, None).await;
    api_with_headers(broker.addr, method, path, Some(token), &[(CONFIRMATION_HEADER, &header)], body).await
}

/// Approves the device login showing `user_code` from the device with `approver_token`.
pub async fn approve(broker: &TestBroker, approver_token: &str, user_code: &str) -> (u16, Value) {
    confirmed_api(broker, "POST", "/v1/device/approve", approver_token, Some(json!({"userCode": user_code}))).await
}

/// A mesh created over the API by the device with `token`; returns its id and the creator's
/// member key.
pub async fn create_mesh(broker: &TestBroker, token: &str, name: &str) -> (String, broker_core::crypto::Keypair) {
    let key = broker_core::crypto::Keypair::generate();
    let id = broker_core::ids::new_id("mesh");
    let genesis = key.sign_hex(broker_core::membership::genesis_bytes(&id, &key.public_hex()).as_bytes());
    let body = json!({"name": name, "pubkey": key.public_hex(), "id": id, "genesis": genesis});
    let (status, mesh) = api(broker.addr, "POST", "/v1/meshes", Some(token), Some(body)).await;
    assert_eq!(status, 201, "{mesh}");
    (mesh["id"].as_str().expect("id").to_owned(), key)
}

/// The member record of `key` in the mesh, with its key.
pub fn member(broker: &TestBroker, mesh_id: &str, key: &Keypair) -> TestMember {
    let record = broker.store.member_by_pubkey(mesh_id, &key.public_hex()).expect("reads").expect("exists");
    TestMember { key: key.clone(), record }
}

/// A member joined with an invite the creator signed (verified in the log).
pub async fn invited(broker: &TestBroker, mesh_id: &str, creator: &Keypair, name: &str) -> TestMember {
    let expires = protocol::now_ms() / 1000 + 600;
    let invite = Invite::sign(super::invite_terms(broker, mesh_id, Role::Member, 1, expires), creator);
    let alice = broker.store.member_by_pubkey(mesh_id, &creator.public_hex()).expect("reads").expect("creator");
    broker
        .store
        .create_invite(&broker_core::store::InviteRecord {
            id: invite.invite_id.clone(),
            mesh_id: mesh_id.to_owned(),
            role: Role::Member,
            max_uses: 1,
            used_count: 0,
            expires_at: invite.expires_at,
            issuer_member_id: alice.id,
            created_at: protocol::now_ms(),
            revoked_at: None,
            email: None,
        })
        .expect("registers the invite");
    let key = Keypair::generate();
    let body = json!({"invite": invite.to_token(), "pubkey": key.public_hex(), "proof": super::join_proof(&invite, &key), "displayName": name});
    let (status, joined) = api(broker.addr, "POST", "/join", None, Some(body)).await;
    assert_eq!(status, 200, "{joined}");
    member(broker, mesh_id, &key)
}
