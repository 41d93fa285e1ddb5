//! Signing in against a real broker: device login (RFC 8628), tokens, devices, approvals and
//! revocation.

mod common;

use std::time::Duration;

use broker_core::client::{ClientConfig, ClientEvent};
use broker_core::config::BrokerConfig;
use broker_core::crypto::Keypair;
use broker_core::protocol::account::CONFIRMATION_HEADER;
use broker_core::protocol::{self, ErrorCode};
use broker_core::store::Store;
use common::accounts::{
    POLL, approve, approved_device, confirm_key_of, confirmation, confirmed_api, create_mesh, first_device, generous,
    poll, quick_polls, start_login,
};
use common::{TestBroker, api, api_with_headers};
use serde_json::json;

#[tokio::test]
async fn device_login_shows_the_device_and_hands_out_the_token_exactly_once() {
    let defaults = TestBroker::start().await;
    let (_, body) = api(defaults.addr, "POST", "/v1/device/code", None, None).await;
    assert_eq!((body["expires_in"].as_u64(), body["interval"].as_u64()), (Some(600), Some(5)), "RFC defaults: {body}");
    assert_eq!(body["user_code"].as_str().map(str::len), Some(9), "XXXX-XXXX");

    let broker = TestBroker::start_with(quick_polls()).await;
    let laptop = first_device(&broker, "alice").await;

    let (device_code, user_code) = start_login(&broker, "build-server").await;
    let (status, body) = poll(&broker, &device_code).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("authorization_pending")));

    // The approver sees which device asks before deciding; the code is accepted loosely.
    let loose = user_code.to_lowercase().replace('-', " ");
    let (status, pending) =
        api(broker.addr, "GET", &format!("/v1/device/requests/{}", loose.replace(' ', "%20")), Some(&laptop), None)
            .await;
    assert_eq!(status, 200, "{pending}");
    assert_eq!(pending["hostname"], "build-server");
    assert_eq!(pending["platform"], "linux");
    assert_eq!(pending["ip"], "127.0.0.1");
    assert_eq!(pending["status"], "pending");
    assert!(pending["requestedAt"].as_str().expect("time").ends_with('Z'));

    let (status, _) = approve(&broker, &laptop, &loose).await;
    assert_eq!(status, 200);
    tokio::time::sleep(POLL).await;
    let (status, token) = poll(&broker, &device_code).await;
    assert_eq!(status, 200, "{token}");
    assert_eq!(token["token_type"], "Bearer");
    assert_eq!(token["account"]["name"], "alice");
    let server_token = token["access_token"].as_str().expect("token");
    // Exactly once.
    tokio::time::sleep(POLL).await;
    let (status, again) = poll(&broker, &device_code).await;
    assert_eq!((status, again["error"].as_str()), (400, Some("invalid_grant")));

    let (status, me) = api(broker.addr, "GET", "/v1/account", Some(server_token), None).await;
    assert_eq!(status, 200);
    assert_eq!(me["device"]["hostname"], "build-server");
    let (status, devices) = api(broker.addr, "GET", "/v1/devices", Some(&laptop), None).await;
    assert_eq!(status, 200);
    assert_eq!(devices["devices"].as_array().expect("devices").len(), 2);
    assert!(
        devices["devices"]
            .as_array()
            .expect("devices")
            .iter()
            .any(|d| d["current"] == true && d["hostname"] == "alice-laptop")
    );
    // The token is stored only as a hash.
    let stored = std::fs::read(broker.dir.path().join("broker.db")).expect("db");
    assert!(!String::from_utf8_lossy(&stored).contains(server_token));
}

#[tokio::test]
async fn polling_too_fast_slows_down_and_denied_or_expired_codes_end() {
    let config = BrokerConfig { device_code_ttl: Duration::from_millis(800), ..quick_polls() };
    let broker = TestBroker::start_with(config).await;
    let laptop = first_device(&broker, "alice").await;

    let (device_code, user_code) = start_login(&broker, "eager").await;
    assert_eq!(poll(&broker, &device_code).await.1["error"], "authorization_pending");
    assert_eq!(poll(&broker, &device_code).await.1["error"], "slow_down");

    let (status, body) =
        api(broker.addr, "POST", "/v1/device/deny", Some(&laptop), Some(json!({"userCode": user_code}))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "denied");
    // Still inside the (grown) interval: slow_down; the outcome itself is access_denied.
    let stored =
        broker.store.device_code(&protocol::account::normalize_user_code(&user_code).expect("code")).expect("read");
    assert_eq!(stored.expect("code").interval_ms, POLL.as_millis() as u64 + 5_000, "slow_down added 5 s");
    // A decided code cannot be decided again.
    let (status, body) = approve(&broker, &laptop, &user_code).await;
    assert_eq!((status, body["error"].as_str()), (409, Some("already_decided")));

    // A code nobody approved in time expires, for the device and for approvers.
    let (device_code, late_code) = start_login(&broker, "slow").await;
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(poll(&broker, &device_code).await.1["error"], "expired_token");
    let (status, body) = approve(&broker, &laptop, &late_code).await;
    assert_eq!((status, body["error"].as_str()), (410, Some("expired")));
}

#[tokio::test]
async fn a_denied_device_gets_access_denied() {
    let broker = TestBroker::start_with(quick_polls()).await;
    let laptop = first_device(&broker, "alice").await;
    let (device_code, user_code) = start_login(&broker, "suspicious").await;
    api(broker.addr, "POST", "/v1/device/deny", Some(&laptop), Some(json!({"userCode": user_code}))).await;
    assert_eq!(poll(&broker, &device_code).await.1["error"], "access_denied");
}

#[tokio::test]
async fn guessing_codes_is_rate_limited_and_each_code_allows_few_attempts() {
    let broker = TestBroker::start_with(quick_polls()).await;
    let laptop = first_device(&broker, "alice").await;

    // A real code can be looked at only a few times, then it is dead.
    let (_, user_code) = start_login(&broker, "target").await;
    let mut statuses = Vec::new();
    for _ in 0..7 {
        statuses
            .push(api(broker.addr, "GET", &format!("/v1/device/requests/{user_code}"), Some(&laptop), None).await.0);
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 410, 410]);

    // Wrong codes spend a budget per address and per account.
    let mut limited_after = None;
    for n in 0..20 {
        let (status, _) = api(broker.addr, "GET", "/v1/device/requests/BBBB-BBBB", Some(&laptop), None).await;
        if status == 429 {
            limited_after = Some(n);
            break;
        }
        assert_eq!(status, 404);
    }
    assert_eq!(limited_after, Some(10), "the 11th wrong code in a row is refused");
    // Even a right code is refused while the budget is spent.
    let (_, fresh) = start_login(&broker, "another").await;
    let (status, _) = api(broker.addr, "GET", &format!("/v1/device/requests/{fresh}"), Some(&laptop), None).await;
    assert_eq!(status, 429);
}

#[tokio::test]
async fn account_routes_refuse_missing_wrong_expired_revoked_and_foreign_tokens() {
    let config = BrokerConfig { token_ttl: Duration::from_secs(3600), ..generous() };
    let broker = TestBroker::start_with(config).await;
    let alice = first_device(&broker, "alice").await;
    let bob = first_device(&broker, "bob").await;
    let key = Keypair::generate();
    let (status, mesh) = api(
        broker.addr,
        "POST",
        "/v1/meshes",
        Some(&alice),
        Some(json!({"name": "secret", "pubkey": key.public_hex()})),
    )
    .await;
    assert_eq!(status, 201, "{mesh}");
    let mesh_id = mesh["id"].as_str().expect("id");

    let expired = approved_device(&broker, &alice, "old").await;
    let conn = rusqlite::Connection::open(broker.dir.path().join("broker.db")).expect("db");
    let hash = broker_core::server::auth::token_hash(&expired);
    conn.execute("UPDATE devices SET expires_at = 1 WHERE token_hash = ?1", [&hash]).expect("expire");
    let revoked = approved_device(&broker, &alice, "stolen").await;
    let (status, me) = api(broker.addr, "GET", "/v1/account", Some(&revoked), None).await;
    assert_eq!(status, 200);
    let revoked_id = me["device"]["id"].as_str().expect("id").to_owned();
    assert_eq!(confirmed_api(&broker, "POST", &format!("/v1/devices/{revoked_id}/revoke"), &alice, None).await.0, 200);

    let routes = [
        ("GET", "/v1/account".to_owned(), None),
        ("GET", "/v1/devices".to_owned(), None),
        ("POST", "/v1/logout".to_owned(), None),
        ("GET", "/v1/meshes".to_owned(), None),
        ("POST", "/v1/meshes".to_owned(), Some(json!({"name": "x", "pubkey": key.public_hex()}))),
        ("PATCH", format!("/v1/meshes/{mesh_id}"), Some(json!({"name": "renamed"}))),
        ("POST", format!("/v1/meshes/{mesh_id}/archive"), None),
        ("GET", format!("/v1/meshes/{mesh_id}/members"), None),
        ("POST", format!("/v1/meshes/{mesh_id}/leave"), None),
        ("POST", format!("/v1/meshes/{mesh_id}/enrol"), Some(json!({"pubkey": Keypair::generate().public_hex()}))),
        ("GET", format!("/v1/meshes/{mesh_id}/invites"), None),
        ("GET", format!("/v1/meshes/{mesh_id}/grants"), None),
        ("PUT", format!("/v1/meshes/{mesh_id}/grants"), Some(json!({"grants": {}}))),
        ("GET", format!("/v1/meshes/{mesh_id}/audit"), None),
        ("GET", format!("/v1/meshes/{mesh_id}/audit/verify"), None),
        ("POST", "/v1/device/approve".to_owned(), Some(json!({"userCode": "BCDF-GHJK"}))),
        ("GET", "/v1/device/requests/BCDF-GHJK".to_owned(), None),
    ];
    for (method, path, body) in &routes {
        for (label, token) in [
            ("missing", None),
            ("wrong", Some("cmt_not-a-token")),
            ("expired", Some(expired.as_str())),
            ("revoked", Some(revoked.as_str())),
        ] {
            let (status, answer) = api(broker.addr, method, path, token, body.clone()).await;
            assert_eq!(status, 401, "{method} {path} with a {label} token: {answer}");
        }
        // Another account's valid token sees nothing of alice's mesh.
        if path.contains(mesh_id) {
            let (status, _) = api(broker.addr, method, path, Some(&bob), body.clone()).await;
            assert_eq!(status, 404, "{method} {path} with another account's token");
        }
    }
    // Unauthenticated, the mesh stayed as it was.
    assert_eq!(broker.store.mesh(mesh_id).expect("read").expect("mesh").name, "secret");
}

#[tokio::test]
async fn revoking_a_device_cuts_its_live_session_at_once() {
    let broker = TestBroker::start_with(generous()).await;
    let laptop = first_device(&broker, "alice").await;
    let laptop_key = Keypair::generate();
    let (_, mesh) = api(
        broker.addr,
        "POST",
        "/v1/meshes",
        Some(&laptop),
        Some(json!({"name": "acme", "pubkey": laptop_key.public_hex()})),
    )
    .await;
    let mesh_id = mesh["id"].as_str().expect("id").to_owned();

    // A second device enrols its own member key (no invite needed) and connects.
    let server = approved_device(&broker, &laptop, "server").await;
    let server_key = Keypair::generate();
    let (status, enrolled) = api(
        broker.addr,
        "POST",
        &format!("/v1/meshes/{mesh_id}/enrol"),
        Some(&server),
        Some(json!({"pubkey": server_key.public_hex(), "displayName": "server"})),
    )
    .await;
    assert_eq!(status, 200, "{enrolled}");
    assert_eq!(enrolled["role"], "admin", "the account's role in the mesh");
    let member_id = enrolled["memberId"].as_str().expect("id").to_owned();
    let mut config = ClientConfig::new(&broker.http_url(), &mesh_id, &member_id, server_key.clone());
    config.backoff.initial = Duration::from_millis(20);
    let mut session = common::Peer::connect(config).await;

    let (_, me) = api(broker.addr, "GET", "/v1/account", Some(&server), None).await;
    let server_id = me["device"]["id"].as_str().expect("id").to_owned();
    let started = tokio::time::Instant::now();
    let (status, body) =
        confirmed_api(&broker, "POST", &format!("/v1/devices/{server_id}/revoke"), &laptop, None).await;
    assert_eq!(status, 200, "{body}");
    loop {
        match tokio::time::timeout(common::WAIT, session.events.recv()).await.expect("cut in time").expect("events") {
            ClientEvent::Refused { code, fatal, .. } => {
                assert_eq!(code, ErrorCode::Revoked);
                assert!(fatal);
                break;
            }
            _ => continue,
        }
    }
    assert!(started.elapsed() < Duration::from_millis(900), "cut at once, not at the next poll");
    assert_eq!(api(broker.addr, "GET", "/v1/account", Some(&server), None).await.0, 401);
    // Its next hello is refused too.
    let (client, mut events) =
        broker_core::client::MeshClient::start(ClientConfig::new(&broker.http_url(), &mesh_id, &member_id, server_key));
    loop {
        match tokio::time::timeout(common::WAIT, events.recv()).await.expect("refused in time").expect("events") {
            ClientEvent::Refused { code, .. } => {
                assert_eq!(code, ErrorCode::Unauthorized);
                break;
            }
            ClientEvent::Connected(_) => panic!("a revoked device's member key connected"),
            _ => continue,
        }
    }
    drop(client);
}

#[tokio::test]
async fn a_pasted_login_token_signs_in_another_device_once() {
    let broker = TestBroker::start_with(quick_polls()).await;
    let laptop = first_device(&broker, "alice").await;
    let (status, made) = confirmed_api(&broker, "POST", "/v1/device/login-token", &laptop, None).await;
    assert_eq!(status, 200, "{made}");
    let login_token = made["loginToken"].as_str().expect("token");
    assert!(login_token.starts_with("cml_"));
    assert_eq!(api(broker.addr, "POST", "/v1/device/login-token", None, None).await.0, 401, "needs a signed-in device");

    let redeem = json!({"device_code": login_token, "hostname": "ssh-box", "platform": "linux", "arch": "aarch64"});
    let (status, token) = api(broker.addr, "POST", "/v1/device/token", None, Some(redeem.clone())).await;
    assert_eq!(status, 200, "{token}");
    assert_eq!(token["account"]["name"], "alice");
    let (_, me) =
        api(broker.addr, "GET", "/v1/account", Some(token["access_token"].as_str().expect("token")), None).await;
    assert_eq!(me["device"]["hostname"], "ssh-box", "the device that pasted it, not a placeholder");
    tokio::time::sleep(POLL).await;
    let (status, again) = api(broker.addr, "POST", "/v1/device/token", None, Some(redeem)).await;
    assert_eq!((status, again["error"].as_str()), (400, Some("invalid_grant")), "one time only");
}

/// Revoking another device and minting a login token need a fresh confirmation by the calling
/// device's key: its bearer token alone (read from a log, a proxy, a screen) is not enough.
#[tokio::test]
async fn revoking_another_device_or_minting_a_login_token_needs_a_fresh_confirmation() {
    let broker = TestBroker::start_with(quick_polls()).await;
    let laptop = first_device(&broker, "alice").await;
    let server = approved_device(&broker, &laptop, "server").await;
    let (_, me) = api(broker.addr, "GET", "/v1/account", Some(&server), None).await;
    let server_id = me["device"]["id"].as_str().expect("id").to_owned();
    let revoke_server = format!("/v1/devices/{server_id}/revoke");
    let send = |path: String, value: Option<String>| {
        let laptop = laptop.clone();
        async move {
            let extra: Vec<(&str, &str)> = value.iter().map(|v| (CONFIRMATION_HEADER, v.as_str())).collect();
            api_with_headers(broker.addr, "POST", &path, Some(&laptop), &extra, None).await
        }
    };
    let refused = |(status, body): (u16, serde_json::Value), code: &str| {
        assert_eq!((status, body["error"].as_str()), (403, Some(code)), "{body}");
    };

    // The token alone.
    refused(send(revoke_server.clone(), None).await, "confirmation_required");
    refused(send("/v1/device/login-token".into(), None).await, "confirmation_required");
    // Signed by another key, for another request, too old, or not a signature at all.
    let thief = broker_core::crypto::Keypair::generate();
    let forged = confirmation(&broker, &laptop, "POST", &revoke_server, Some(&thief), None).await;
    refused(send(revoke_server.clone(), Some(forged)).await, "confirmation_invalid");
    let for_a_token = confirmation(&broker, &laptop, "POST", "/v1/device/login-token", None, None).await;
    refused(send(revoke_server.clone(), Some(for_a_token.clone())).await, "confirmation_invalid");
    let stale_at = protocol::now_ms() - 61_000;
    let stale = confirmation(&broker, &laptop, "POST", &revoke_server, None, Some(stale_at)).await;
    refused(send(revoke_server.clone(), Some(stale)).await, "confirmation_invalid");
    let presigned = confirmation(&broker, &laptop, "POST", &revoke_server, None, Some(stale_at + 122_000)).await;
    refused(send(revoke_server.clone(), Some(presigned)).await, "confirmation_invalid");
    // The right key, signing as another device.
    let as_another = broker_core::crypto::confirmation_header(
        &confirm_key_of("alice-laptop"),
        "POST",
        &revoke_server,
        &server_id,
        protocol::now_ms(),
    );
    refused(send(revoke_server.clone(), Some(as_another)).await, "confirmation_invalid");
    refused(send(revoke_server.clone(), Some("yesterday".into())).await, "confirmation_invalid");
    assert_eq!(api(broker.addr, "GET", "/v1/account", Some(&server), None).await.0, 200, "nothing was revoked");

    // Letting a device in needs one too.
    let (_, user_code) = start_login(&broker, "intruder").await;
    let (status, body) =
        api(broker.addr, "POST", "/v1/device/approve", Some(&laptop), Some(json!({"userCode": user_code.clone()})))
            .await;
    assert_eq!((status, body["error"].as_str()), (403, Some("confirmation_required")), "{body}");
    assert_eq!(approve(&broker, &laptop, &user_code).await.0, 200);

    // A confirmation confirms one request, once.
    let (status, made) = send("/v1/device/login-token".into(), Some(for_a_token.clone())).await;
    assert_eq!(status, 200, "{made}");
    refused(send("/v1/device/login-token".into(), Some(for_a_token)).await, "confirmation_invalid");
    let confirmed = confirmation(&broker, &laptop, "POST", &revoke_server, None, None).await;
    assert_eq!(send(revoke_server.clone(), Some(confirmed)).await.0, 200);
    assert_eq!(api(broker.addr, "GET", "/v1/account", Some(&server), None).await.0, 401, "revoked");

    // A device signed in without a key (an older client) is told to sign in again; signing
    // itself out needs no confirmation.
    let (status, code) =
        api(broker.addr, "POST", "/v1/device/code", None, Some(json!({"hostname": "old-client"}))).await;
    assert_eq!(status, 200, "{code}");
    let user_code = code["user_code"].as_str().expect("user code");
    approve(&broker, &laptop, user_code).await;
    let (_, token) = poll(&broker, code["device_code"].as_str().expect("device code")).await;
    let old = token["access_token"].as_str().expect("token").to_owned();
    let old_id = token["device_id"].as_str().expect("device id").to_owned();
    let (status, body) = api(broker.addr, "POST", "/v1/device/login-token", Some(&old), None).await;
    assert_eq!((status, body["error"].as_str()), (403, Some("confirmation_required")), "{body}");
    assert!(body["message"].as_str().expect("message").contains("sign in again"), "{body}");
    let (status, body) = api(broker.addr, "POST", &format!("/v1/devices/{old_id}/revoke"), Some(&old), None).await;
    assert_eq!(status, 200, "{body}");

    // A key that is not an ed25519 public key is refused when the device names it.
    let (status, body) =
        api(broker.addr, "POST", "/v1/device/code", None, Some(json!({"hostname": "typo", "confirmKey": "not-a-key"})))
            .await;
    assert_eq!((status, body["error"].as_str()), (400, Some("malformed")), "{body}");
    let poll = json!({"device_code": "cmd_whatever", "confirm_key": "0".repeat(63)});
    let (status, body) = api(broker.addr, "POST", "/v1/device/token", None, Some(poll)).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_request")), "{body}");
}

#[tokio::test]
async fn approvals_a_revoked_device_gave_die_with_it() {
    let broker = TestBroker::start_with(quick_polls()).await;
    let laptop = first_device(&broker, "alice").await;
    let stolen = approved_device(&broker, &laptop, "stolen").await;
    let (_, made) = confirmed_api(&broker, "POST", "/v1/device/login-token", &stolen, None).await;
    let login_token = made["loginToken"].as_str().expect("token").to_owned();
    let (device_code, user_code) = start_login(&broker, "thief-box").await;
    let (status, _) = approve(&broker, &stolen, &user_code).await;
    assert_eq!(status, 200);

    let (_, me) = api(broker.addr, "GET", "/v1/account", Some(&stolen), None).await;
    let stolen_id = me["device"]["id"].as_str().expect("id").to_owned();
    assert_eq!(confirmed_api(&broker, "POST", &format!("/v1/devices/{stolen_id}/revoke"), &laptop, None).await.0, 200);

    let redeem = json!({"device_code": login_token, "hostname": "thief-box-2"});
    let (status, body) = api(broker.addr, "POST", "/v1/device/token", None, Some(redeem)).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("access_denied")), "{body}");
    let (status, body) = poll(&broker, &device_code).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("access_denied")), "{body}");
}

#[tokio::test]
async fn devices_of_an_account_see_logins_that_named_it() {
    let broker = TestBroker::start_with(quick_polls()).await;
    let laptop = first_device(&broker, "alice").await;
    let bob = first_device(&broker, "bob").await;
    let (status, body) =
        api(broker.addr, "POST", "/v1/device/code", None, Some(json!({"hostname": "new-box", "account": "alice"})))
            .await;
    assert_eq!(status, 200);
    let code = body["user_code"].as_str().expect("code").to_owned();
    let _unnamed = start_login(&broker, "anonymous").await;

    let (status, pending) = api(broker.addr, "GET", "/v1/device/pending", Some(&laptop), None).await;
    assert_eq!(status, 200);
    let pending = pending["pending"].as_array().expect("pending").clone();
    assert_eq!(pending.len(), 1, "only the login that named alice: {pending:?}");
    assert!(pending[0].get("userCode").is_none(), "the approver types the code the device shows");
    assert_eq!(pending[0]["hostname"], "new-box");
    let (_, others) = api(broker.addr, "GET", "/v1/device/pending", Some(&bob), None).await;
    assert_eq!(others["pending"], json!([]), "bob sees nothing of alice's");
    // A login that named alice cannot be approved into bob's account.
    let (status, refused) = approve(&broker, &bob, &code).await;
    assert_eq!((status, refused["error"].as_str()), (403, Some("account_mismatch")));
    assert_eq!(api(broker.addr, "GET", "/v1/device/pending", None, None).await.0, 401);

    // Once decided it is no longer pending.
    approve(&broker, &laptop, &code).await;
    let (_, after) = api(broker.addr, "GET", "/v1/device/pending", Some(&laptop), None).await;
    assert_eq!(after["pending"], json!([]));
}

#[tokio::test]
async fn starting_logins_is_rate_limited_per_address() {
    let broker = TestBroker::start().await;
    let mut statuses = Vec::new();
    for _ in 0..22 {
        statuses.push(api(broker.addr, "POST", "/v1/device/code", None, None).await.0);
    }
    assert!(statuses[..20].iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(&statuses[20..], [429, 429]);
}

#[tokio::test]
async fn token_polls_are_limited_per_code_and_per_address_before_the_store() {
    // The production interval (5 s): a code may poll a few times at once, an address twenty
    // devices' worth.
    let broker = TestBroker::start_with(BrokerConfig::default()).await;
    let answers = |polls: Vec<(u16, serde_json::Value)>| -> Vec<String> {
        polls.into_iter().map(|(_, body)| body["error"].as_str().unwrap_or_default().to_owned()).collect()
    };

    // One unknown code polled in a tight loop: the store says invalid_grant at first, then the
    // limiter answers before the store is asked.
    let mut same = Vec::new();
    for _ in 0..6 {
        same.push(poll(&broker, "cmd_guess").await);
    }
    let same = answers(same);
    assert_eq!(same[..3], ["invalid_grant"; 3], "{same:?}");
    assert!(same[3..].iter().all(|e| e == "slow_down"), "{same:?}");

    // Fresh random codes from one address: twenty devices' worth, then slow_down for all.
    let mut many = Vec::new();
    for n in 0..40 {
        many.push(poll(&broker, &format!("cmd_guess_{n}")).await);
    }
    let many = answers(many);
    let refused = many.iter().filter(|e| *e == "slow_down").count();
    assert!(refused >= 10, "{refused} of 40 slowed down: {many:?}");
    assert!(many[..10].iter().all(|e| e == "invalid_grant"), "{many:?}");
    assert_eq!(many.last().map(String::as_str), Some("slow_down"), "{many:?}");
}

/// Starts a device login through a "proxy" (the test itself) that sends these forwarding
/// headers; returns the status and the address the broker recorded for the device.
async fn login_via(broker: &TestBroker, headers: &[(&str, &str)]) -> (u16, String) {
    let mut all = vec![("Content-Type", "application/json")];
    all.extend_from_slice(headers);
    let (status, text) =
        common::http_with(broker.addr, "POST", "/v1/device/code", &all, Some(r#"{"hostname":"box"}"#)).await;
    if status != 200 {
        let body: serde_json::Value = serde_json::from_str(&text).expect("json");
        return (status, body["error"].as_str().unwrap_or_default().to_owned());
    }
    let body: serde_json::Value = serde_json::from_str(&text).expect("json");
    let code = protocol::account::normalize_user_code(body["user_code"].as_str().expect("code")).expect("code");
    let record = broker.store.device_code(&code).expect("store").expect("recorded");
    (status, record.info.ip)
}

#[tokio::test]
async fn forwarding_headers_count_only_from_configured_proxies() {
    let remote = [("X-Forwarded-For", "203.0.113.9"), ("X-Forwarded-Proto", "https")];
    // Nobody is trusted by default: the headers are the client's own words.
    let broker = TestBroker::start().await;
    assert_eq!(login_via(&broker, &remote).await, (200, "127.0.0.1".to_owned()));

    // A listed proxy's are believed; plain http from another host gets no sign-in at all.
    let config = BrokerConfig { trusted_proxies: vec!["127.0.0.0/8".parse().expect("net")], ..BrokerConfig::default() };
    let broker = TestBroker::start_with(config).await;
    assert_eq!(login_via(&broker, &remote).await, (200, "203.0.113.9".to_owned()));
    let plain = [("X-Forwarded-For", "203.0.113.9"), ("X-Forwarded-Proto", "http")];
    assert_eq!(login_via(&broker, &plain).await, (403, "insecure_transport".to_owned()));
    // Only the hop the proxy appended counts, not what the client put before it.
    let spoofed = [("X-Forwarded-For", "127.0.0.1, 203.0.113.9")];
    assert_eq!(login_via(&broker, &spoofed).await, (403, "insecure_transport".to_owned()));

    // The operator may allow plain http on a network it trusts.
    let config = BrokerConfig {
        trusted_proxies: vec!["127.0.0.0/8".parse().expect("net")],
        allow_insecure_http: true,
        ..BrokerConfig::default()
    };
    let broker = TestBroker::start_with(config).await;
    assert_eq!(login_via(&broker, &plain).await, (200, "203.0.113.9".to_owned()));
}

#[tokio::test]
async fn enrolment_is_one_key_per_device_and_bounded_per_account() {
    let config = BrokerConfig { max_members_per_account: 2, ..generous() };
    let broker = TestBroker::start_with(config).await;
    let laptop = first_device(&broker, "alice").await;
    let (mesh_id, _) = create_mesh(&broker, &laptop, "acme").await;
    let path = format!("/v1/meshes/{mesh_id}/enrol");
    let enrol = |token: String| {
        let path = path.clone();
        let broker = &broker;
        async move {
            let body = json!({"pubkey": Keypair::generate().public_hex()});
            let (status, body) = api(broker.addr, "POST", &path, Some(&token), Some(body)).await;
            (status, body["error"].as_str().unwrap_or_default().to_owned())
        }
    };
    // The creating device already holds a key: a second one for it is refused.
    assert_eq!(enrol(laptop.clone()).await, (409, "already_enrolled".to_owned()));
    let server = approved_device(&broker, &laptop, "server").await;
    assert_eq!(enrol(server.clone()).await.0, 200);
    assert_eq!(enrol(server).await, (409, "already_enrolled".to_owned()));
    // The account holds two keys in the mesh now: a third device gets a clear refusal.
    let third = approved_device(&broker, &laptop, "third").await;
    assert_eq!(enrol(third).await, (409, "enrolment_limit".to_owned()));
}
