//! The control plane against a real broker: device login, tokens, devices, meshes through the
//! API, invites (with email to a local SMTP sink), kick/ban, grants and the audit chain.

mod common;

use std::time::Duration;

use broker_core::client::{ClientConfig, ClientError, ClientEvent};
use broker_core::config::BrokerConfig;
use broker_core::config::RateLimit;
use broker_core::crypto::Keypair;
use broker_core::invite::{Invite, InviteTerms};
use broker_core::protocol::{self, ErrorCode, Priority, Role, SendRejection};
use broker_core::store::Store;
use common::{TestBroker, api};
use serde_json::{Value, json};

/// Polls may come every 50 ms (the production interval is 5 s).
const POLL: Duration = Duration::from_millis(50);

fn quick_polls() -> BrokerConfig {
    BrokerConfig { device_poll_interval: POLL, ..BrokerConfig::default() }
}

fn generous() -> BrokerConfig {
    BrokerConfig { rate_limit: RateLimit { burst: 10_000, per_minute: 600_000 }, ..quick_polls() }
}

/// Starts a device login as `hostname`; returns (device_code, user_code).
async fn start_login(broker: &TestBroker, hostname: &str) -> (String, String) {
    let (status, body) = api(
        broker.addr,
        "POST",
        "/v1/device/code",
        None,
        Some(json!({"hostname": hostname, "platform": "linux", "arch": "x86_64", "app_version": "0.1.0"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let user_code = body["user_code"].as_str().expect("user code").to_owned();
    assert!(body["verification_uri_complete"].as_str().expect("uri").ends_with(&format!("?code={user_code}")));
    assert_eq!(body["verification_uri_app"], format!("claudemesh://device?code={user_code}"));
    (body["device_code"].as_str().expect("device code").to_owned(), user_code)
}

/// Polls once, as the RFC's form-encoded request.
async fn poll(broker: &TestBroker, device_code: &str) -> (u16, Value) {
    let form = format!("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Adevice_code&device_code={device_code}");
    let (status, text) = common::http_with(
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
async fn first_device(broker: &TestBroker, account: &str) -> String {
    let created = broker.store.create_account(account, None, protocol::now_ms()).expect("account");
    let (device_code, user_code) = start_login(broker, &format!("{account}-laptop")).await;
    let code = protocol::account::normalize_user_code(&user_code).expect("code");
    broker.store.decide_device_code(&code, true, &created.id, None, protocol::now_ms()).expect("approve");
    let (status, body) = poll(broker, &device_code).await;
    assert_eq!(status, 200, "{body}");
    body["access_token"].as_str().expect("token").to_owned()
}

/// A second device signed in by approving it from `approver_token`.
async fn approved_device(broker: &TestBroker, approver_token: &str, hostname: &str) -> String {
    let (device_code, user_code) = start_login(broker, hostname).await;
    let (status, body) =
        api(broker.addr, "POST", "/v1/device/approve", Some(approver_token), Some(json!({"userCode": user_code})))
            .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = poll(broker, &device_code).await;
    assert_eq!(status, 200, "{body}");
    body["access_token"].as_str().expect("token").to_owned()
}

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

    let (status, _) =
        api(broker.addr, "POST", "/v1/device/approve", Some(&laptop), Some(json!({"userCode": loose}))).await;
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
    let (status, body) =
        api(broker.addr, "POST", "/v1/device/approve", Some(&laptop), Some(json!({"userCode": user_code}))).await;
    assert_eq!((status, body["error"].as_str()), (409, Some("already_decided")));

    // A code nobody approved in time expires, for the device and for approvers.
    let (device_code, late_code) = start_login(&broker, "slow").await;
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(poll(&broker, &device_code).await.1["error"], "expired_token");
    let (status, body) =
        api(broker.addr, "POST", "/v1/device/approve", Some(&laptop), Some(json!({"userCode": late_code}))).await;
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
    assert_eq!(api(broker.addr, "POST", &format!("/v1/devices/{revoked_id}/revoke"), Some(&alice), None).await.0, 200);

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
        api(broker.addr, "POST", &format!("/v1/devices/{server_id}/revoke"), Some(&laptop), None).await;
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
async fn meshes_through_the_api() {
    let broker = TestBroker::start_with(generous()).await;
    let alice = first_device(&broker, "alice").await;
    let bob = first_device(&broker, "bob").await;
    let alice_key = Keypair::generate();

    // A bad creator key is refused before anything is written.
    let (status, body) =
        api(broker.addr, "POST", "/v1/meshes", Some(&alice), Some(json!({"name": "acme", "pubkey": "nope"}))).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("pubkey_malformed")));
    assert!(broker.store.meshes().expect("meshes").is_empty());

    let create = |token: String, pubkey: String| async move {
        api(
            broker.addr,
            "POST",
            "/v1/meshes",
            Some(&token),
            Some(json!({"name": "Acme", "pubkey": pubkey, "displayName": "alice"})),
        )
        .await
    };
    let (status, first) = create(alice.clone(), alice_key.public_hex()).await;
    assert_eq!(status, 201, "{first}");
    assert_eq!(first["slug"], "acme");
    let (_, second) = create(bob.clone(), Keypair::generate().public_hex()).await;
    assert_eq!(second["slug"], "acme-2", "slugs are unique per broker");
    let mesh_id = first["id"].as_str().expect("id").to_owned();

    // Online counts follow live sessions.
    let member = common::TestMember {
        key: alice_key.clone(),
        record: broker.store.member_by_pubkey(&mesh_id, &alice_key.public_hex()).expect("read").expect("member"),
    };
    let _session = broker.connect(&mesh_id, &member, "alice").await;
    let (_, list) = api(broker.addr, "GET", "/v1/meshes", Some(&alice), None).await;
    let meshes = list["meshes"].as_array().expect("meshes");
    assert_eq!(meshes.len(), 1, "only alice's mesh: {list}");
    assert_eq!(meshes[0]["memberCount"], 1);
    assert_eq!(meshes[0]["onlineCount"], 1);
    assert_eq!(meshes[0]["role"], "admin");
    assert_eq!(meshes[0]["owner"], true);

    let (status, renamed) =
        api(broker.addr, "PATCH", &format!("/v1/meshes/{mesh_id}"), Some(&alice), Some(json!({"name": "Acme Inc"})))
            .await;
    assert_eq!((status, renamed["name"].as_str()), (200, Some("Acme Inc")));
    let (_, members) = api(broker.addr, "GET", &format!("/v1/meshes/{mesh_id}/members"), Some(&alice), None).await;
    assert_eq!(members["members"][0]["role"], "admin");
    assert_eq!(members["members"][0]["online"], true);

    assert_eq!(api(broker.addr, "POST", &format!("/v1/meshes/{mesh_id}/archive"), Some(&alice), None).await.0, 200);
    let (status, _) =
        api(broker.addr, "PATCH", &format!("/v1/meshes/{mesh_id}"), Some(&bob), Some(json!({"name": "x"}))).await;
    assert_eq!(status, 404, "bob is not in alice's mesh");
}

/// A device signs an invite with its admin member key and registers it with the broker.
fn signed_invite(broker: &TestBroker, mesh_id: &str, admin: &Keypair, role: Role, max_uses: u32) -> Invite {
    let mesh = broker.store.mesh(mesh_id).expect("read").expect("mesh");
    Invite::sign(
        InviteTerms {
            mesh_id: mesh.id,
            mesh_slug: mesh.slug,
            mesh_name: mesh.name,
            broker_url: broker.http_url(),
            invite_id: broker_core::ids::new_id("inv"),
            role,
            max_uses,
            expires_at: protocol::now_ms() / 1000 + 3600,
        },
        admin,
    )
}

/// A one-message SMTP server on 127.0.0.1 that hands the message it received to the test.
async fn smtp_sink() -> (String, tokio::sync::oneshot::Receiver<String>) {
    use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binds");
    let url = format!("smtp://{}", listener.local_addr().expect("addr"));
    let (done, message) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (socket, _) = listener.accept().await.expect("accepts");
        let (read, mut write) = socket.into_split();
        let mut lines = tokio::io::BufReader::new(read).lines();
        write.write_all(b"220 sink ESMTP\r\n").await.expect("greets");
        let mut data = String::new();
        let mut in_data = false;
        while let Ok(Some(line)) = lines.next_line().await {
            if in_data {
                if line == "." {
                    in_data = false;
                    write.write_all(b"250 queued\r\n").await.expect("writes");
                } else {
                    data.push_str(&line);
                    data.push('\n');
                }
                continue;
            }
            let verb = line.split(' ').next().unwrap_or_default().to_ascii_uppercase();
            let reply: &[u8] = match verb.as_str() {
                "EHLO" | "HELO" => b"250 sink\r\n",
                "DATA" => {
                    in_data = true;
                    b"354 go ahead\r\n"
                }
                "QUIT" => {
                    let _ = write.write_all(b"221 bye\r\n").await;
                    break;
                }
                _ => b"250 ok\r\n",
            };
            write.write_all(reply).await.expect("writes");
        }
        let _ = done.send(data);
    });
    (url, message)
}

#[tokio::test]
async fn invites_through_the_api_are_signed_on_the_device_and_emailed_when_possible() {
    let (smtp_url, mail) = smtp_sink().await;
    let mailer = broker_core::email::Mailer::new(&smtp_url, "claudemesh <noreply@example.test>").expect("mailer");
    let broker = TestBroker::start_full(generous(), None, Some(mailer)).await;
    let alice = first_device(&broker, "alice").await;
    let admin_key = Keypair::generate();
    let (_, mesh) = api(
        broker.addr,
        "POST",
        "/v1/meshes",
        Some(&alice),
        Some(json!({"name": "acme", "pubkey": admin_key.public_hex()})),
    )
    .await;
    let mesh_id = mesh["id"].as_str().expect("id").to_owned();

    let invite = signed_invite(&broker, &mesh_id, &admin_key, Role::Member, 2);
    let (status, created) = api(
        broker.addr,
        "POST",
        &format!("/v1/meshes/{mesh_id}/invites"),
        Some(&alice),
        Some(json!({"invite": invite.link(), "email": "carol@example.test"})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["emailed"], true, "{created}");
    let mail = tokio::time::timeout(common::WAIT, mail).await.expect("mail in time").expect("mail");
    assert!(mail.contains("carol@example.test"));
    assert!(mail.contains("text/plain") && mail.contains("text/html"), "an HTML and a text part");
    assert!(mail.contains(&invite.invite_id[..8]) || mail.contains("/join/"), "the link is in the mail");

    // Redeemable, and listed with its use count.
    let (status, joined) = api(
        broker.addr,
        "POST",
        "/join",
        None,
        Some(json!({"invite": invite.to_token(), "pubkey": Keypair::generate().public_hex(), "displayName": "carol"})),
    )
    .await;
    assert_eq!(status, 200, "{joined}");
    let (_, invites) = api(broker.addr, "GET", &format!("/v1/meshes/{mesh_id}/invites"), Some(&alice), None).await;
    assert_eq!(invites["invites"][0]["usedCount"], 1);

    // Revoked invites stop working.
    let (status, _) = api(
        broker.addr,
        "POST",
        &format!("/v1/meshes/{mesh_id}/invites/{}/revoke", invite.invite_id),
        Some(&alice),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (status, refused) = api(
        broker.addr,
        "POST",
        "/join",
        None,
        Some(json!({"invite": invite.to_token(), "pubkey": Keypair::generate().public_hex()})),
    )
    .await;
    assert_eq!((status, refused["error"].as_str()), (410, Some("invite_revoked")));

    // Signed by a key that is not one of the caller's admin members: refused.
    let stranger = signed_invite(&broker, &mesh_id, &Keypair::generate(), Role::Admin, 1);
    let (status, _) = api(
        broker.addr,
        "POST",
        &format!("/v1/meshes/{mesh_id}/invites"),
        Some(&alice),
        Some(json!({"invite": stranger.to_token()})),
    )
    .await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn without_smtp_the_api_says_the_invite_was_not_emailed() {
    let broker = TestBroker::start().await;
    let alice = first_device(&broker, "alice").await;
    let admin_key = Keypair::generate();
    let (_, mesh) = api(
        broker.addr,
        "POST",
        "/v1/meshes",
        Some(&alice),
        Some(json!({"name": "acme", "pubkey": admin_key.public_hex()})),
    )
    .await;
    let mesh_id = mesh["id"].as_str().expect("id").to_owned();
    let invite = signed_invite(&broker, &mesh_id, &admin_key, Role::Member, 1);
    let (status, created) = api(
        broker.addr,
        "POST",
        &format!("/v1/meshes/{mesh_id}/invites"),
        Some(&alice),
        Some(json!({"invite": invite.to_token(), "email": "carol@example.test"})),
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(created["emailed"], false);
    assert!(created["emailError"].as_str().expect("why").contains("SMTP"));
}

#[tokio::test]
async fn kick_ends_sessions_ban_refuses_hello_and_unban_restores() {
    let broker = TestBroker::start_with(generous()).await;
    let alice = first_device(&broker, "alice").await;
    let admin_key = Keypair::generate();
    let (_, mesh) = api(
        broker.addr,
        "POST",
        "/v1/meshes",
        Some(&alice),
        Some(json!({"name": "acme", "pubkey": admin_key.public_hex()})),
    )
    .await;
    let mesh_id = mesh["id"].as_str().expect("id").to_owned();
    let bob = broker.add_member(&mesh_id, "bob", Role::Member);
    let carol = broker.add_member(&mesh_id, "carol", Role::Member);

    let mut bob_session = broker.connect(&mesh_id, &bob, "bob").await;
    let path = |member: &str, action: &str| format!("/v1/meshes/{mesh_id}/members/{member}/{action}");
    let (status, body) = api(broker.addr, "POST", &path(&bob.record.id, "ban"), Some(&alice), None).await;
    assert_eq!(status, 200, "{body}");
    let refused = loop {
        match tokio::time::timeout(common::WAIT, bob_session.events.recv()).await.expect("in time").expect("events") {
            ClientEvent::Refused { code, .. } => break code,
            _ => continue,
        }
    };
    assert_eq!(refused, ErrorCode::Revoked);
    // Banned: hello refused.
    let mut socket = common::RawSocket::connect(&broker.ws_url()).await;
    socket.send_frame(&protocol::ClientFrame::Hello(common::signed_hello(&mesh_id, &bob, protocol::now_ms()))).await;
    assert!(matches!(socket.next().await, Ok(protocol::ServerFrame::Error(e)) if e.code == ErrorCode::Unauthorized));
    // Unbanned: the same key works again.
    assert_eq!(api(broker.addr, "POST", &path(&bob.record.id, "unban"), Some(&alice), None).await.0, 200);
    broker.connect(&mesh_id, &bob, "bob").await;

    let carol_session = broker.connect(&mesh_id, &carol, "carol").await;
    assert_eq!(api(broker.addr, "POST", &path(&carol.record.id, "kick"), Some(&alice), None).await.0, 200);
    let mut carol_session = carol_session;
    loop {
        match tokio::time::timeout(common::WAIT, carol_session.events.recv()).await.expect("in time").expect("events") {
            ClientEvent::Refused { code, .. } => {
                assert_eq!(code, ErrorCode::Revoked);
                break;
            }
            _ => continue,
        }
    }
    // Members cannot moderate.
    let carol_device = first_device(&broker, "carol-account").await;
    let (status, _) = api(broker.addr, "POST", &path(&bob.record.id, "kick"), Some(&carol_device), None).await;
    assert_eq!(status, 404, "carol's account has no member here");
}

#[tokio::test]
async fn grants_are_enforced_for_direct_group_and_broadcast_sends() {
    let broker = TestBroker::start_with(generous()).await;
    let (mesh, members) = broker.mesh("acme", &["alice", "bob", "carol"]);
    let alice = broker.connect(&mesh, &members[0], "alice").await;
    let mut bob = broker.connect(&mesh, &members[1], "bob").await;
    let mut carol = broker.connect(&mesh, &members[2], "carol").await;
    let alice_key = members[0].key.public_hex();
    let bob_key = members[1].key.public_hex();
    bob.client.join_group("team", None).await.expect("join");
    carol.client.join_group("team", None).await.expect("join");

    // Default: everything reaches bob.
    alice.client.send(&bob_key, b"hi", Priority::Now).await.expect("queued");
    assert_eq!(bob.message().await.text().as_deref(), Some("hi"));

    // Explicit: bob accepts only broadcasts from alice.
    let grants =
        bob.client.set_grants([(alice_key.clone(), Some(vec!["broadcast".to_owned()]))].into()).await.expect("grants");
    assert_eq!(grants.get(&alice_key), Some(&vec!["broadcast".to_owned()]));
    match alice.client.send(&bob_key, b"dm", Priority::Now).await {
        Err(ClientError::Rejected { reason, .. }) => assert_eq!(reason, Some(SendRejection::Blocked)),
        other => panic!("expected blocked, got {other:?}"),
    }
    alice.client.send("@team", b"team news", Priority::Now).await.expect("queued");
    assert_eq!(bob.message().await.text().as_deref(), Some("team news"));
    assert_eq!(carol.message().await.text().as_deref(), Some("team news"));

    // Blocked: broadcasts and group messages are dropped for bob only, silently.
    bob.client.set_grants([(alice_key.clone(), Some(vec![]))].into()).await.expect("grants");
    let receipt = alice.client.send("*", b"to all", Priority::Now).await.expect("queued");
    assert_eq!(receipt.recipients, 1, "only carol");
    assert_eq!(carol.message().await.text().as_deref(), Some("to all"));
    alice.client.send("@team", b"team again", Priority::Now).await.expect("queued");
    assert_eq!(carol.message().await.text().as_deref(), Some("team again"));
    bob.no_message_within(Duration::from_millis(300)).await;
    let metrics = broker.broker.metrics().render();
    assert!(metrics.contains("broker_messages_dropped_by_grant_total{cap=\"broadcast\"} 2"), "{metrics}");
    assert!(metrics.contains("broker_messages_dropped_by_grant_total{cap=\"dm\"} 1"), "{metrics}");

    // Reset: back to the defaults.
    let grants = bob.client.set_grants([(alice_key.clone(), None)].into()).await.expect("grants");
    assert!(grants.is_empty());
    alice.client.send(&bob_key, b"welcome back", Priority::Now).await.expect("queued");
    assert_eq!(bob.message().await.text().as_deref(), Some("welcome back"));

    // The drops are in the audit log, as metadata.
    let (entries, _) = broker.store.audit_entries(&mesh, Some("message_dropped"), 50, 0).expect("audit");
    assert_eq!(entries.len(), 3);
    assert!(entries.iter().all(|e| e.payload["recipient"] == members[1].record.id));
}

#[tokio::test]
async fn the_audit_chain_verifies_and_reports_an_edited_row() {
    let broker = TestBroker::start_with(generous()).await;
    let (mesh, members) = broker.mesh("acme", &["alice", "bob"]);
    let alice = broker.connect(&mesh, &members[0], "alice").await;
    let mut bob = broker.connect(&mesh, &members[1], "bob").await;
    alice.client.send(&members[1].key.public_hex(), b"metadata only", Priority::Now).await.expect("queued");
    bob.message().await;
    bob.client.set_grants([(members[0].key.public_hex(), Some(vec!["dm".to_owned()]))].into()).await.expect("grants");

    let result = alice.client.audit_verify().await.expect("admin may verify");
    assert!(result.valid, "{result:?}");
    let page = alice.client.audit_query(None, 100, 0).await.expect("admin may read");
    let kinds: Vec<&str> = page.entries.iter().map(|e| e.event_type.as_str()).collect();
    for kind in ["mesh_created", "member_joined", "message_sent", "grants_changed"] {
        assert!(kinds.contains(&kind), "{kind} missing from {kinds:?}");
    }
    let sent = page.entries.iter().find(|e| e.event_type == "message_sent").expect("message_sent");
    assert!(!sent.payload.to_string().contains("metadata only"), "never content");
    assert_eq!(alice.client.audit_query(Some("message_sent"), 10, 0).await.expect("filter").total, 1);
    // Members who are not admins may not read it.
    assert!(matches!(bob.client.audit_query(None, 10, 0).await, Err(ClientError::Rejected { .. })));

    // Editing any row breaks the chain exactly there.
    let victim = page.entries.iter().find(|e| e.event_type == "message_sent").expect("row").id;
    let conn = rusqlite::Connection::open(broker.dir.path().join("broker.db")).expect("db");
    conn.execute(
        "UPDATE audit_log SET payload = replace(payload, '\"priority\":\"now\"', '\"priority\":\"low\"') WHERE id = ?1",
        [victim],
    )
    .expect("tamper");
    let report = alice.client.audit_verify().await.expect("verify");
    assert!(!report.valid);
    assert_eq!(report.broken_at, Some(victim));
}

#[tokio::test]
async fn a_pasted_login_token_signs_in_another_device_once() {
    let broker = TestBroker::start_with(quick_polls()).await;
    let laptop = first_device(&broker, "alice").await;
    let (status, made) = api(broker.addr, "POST", "/v1/device/login-token", Some(&laptop), None).await;
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

#[tokio::test]
async fn approvals_a_revoked_device_gave_die_with_it() {
    let broker = TestBroker::start_with(quick_polls()).await;
    let laptop = first_device(&broker, "alice").await;
    let stolen = approved_device(&broker, &laptop, "stolen").await;
    let (_, made) = api(broker.addr, "POST", "/v1/device/login-token", Some(&stolen), None).await;
    let login_token = made["loginToken"].as_str().expect("token").to_owned();
    let (device_code, user_code) = start_login(&broker, "thief-box").await;
    let (status, _) =
        api(broker.addr, "POST", "/v1/device/approve", Some(&stolen), Some(json!({"userCode": user_code}))).await;
    assert_eq!(status, 200);

    let (_, me) = api(broker.addr, "GET", "/v1/account", Some(&stolen), None).await;
    let stolen_id = me["device"]["id"].as_str().expect("id").to_owned();
    assert_eq!(api(broker.addr, "POST", &format!("/v1/devices/{stolen_id}/revoke"), Some(&laptop), None).await.0, 200);

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
    let (status, refused) =
        api(broker.addr, "POST", "/v1/device/approve", Some(&bob), Some(json!({"userCode": code}))).await;
    assert_eq!((status, refused["error"].as_str()), (403, Some("account_mismatch")));
    assert_eq!(api(broker.addr, "GET", "/v1/device/pending", None, None).await.0, 401);

    // Once decided it is no longer pending.
    api(broker.addr, "POST", "/v1/device/approve", Some(&laptop), Some(json!({"userCode": code}))).await;
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
async fn only_the_owner_moderates_admins_and_nobody_moderates_the_owner() {
    let broker = TestBroker::start_with(generous()).await;
    let owner = first_device(&broker, "owner").await;
    let admin = first_device(&broker, "admin").await;
    let owner_key = Keypair::generate();
    let (_, mesh) = api(
        broker.addr,
        "POST",
        "/v1/meshes",
        Some(&owner),
        Some(json!({"name": "acme", "pubkey": owner_key.public_hex()})),
    )
    .await;
    let mesh_id = mesh["id"].as_str().expect("id").to_owned();
    let owner_member = mesh["memberId"].as_str().expect("member").to_owned();
    // The owner invites a second admin, who signs in from another account.
    let invite = signed_invite(&broker, &mesh_id, &owner_key, Role::Admin, 1);
    api(
        broker.addr,
        "POST",
        &format!("/v1/meshes/{mesh_id}/invites"),
        Some(&owner),
        Some(json!({"invite": invite.to_token()})),
    )
    .await;
    let (status, joined) = api(
        broker.addr,
        "POST",
        "/join",
        Some(&admin),
        Some(json!({"invite": invite.to_token(), "pubkey": Keypair::generate().public_hex(), "displayName": "admin"})),
    )
    .await;
    assert_eq!(status, 200, "{joined}");
    assert_eq!(joined["role"], "admin");
    let admin_member = joined["memberId"].as_str().expect("member").to_owned();

    let path = |member: &str, action: &str| format!("/v1/meshes/{mesh_id}/members/{member}/{action}");
    let (status, _) = api(broker.addr, "POST", &path(&owner_member, "ban"), Some(&admin), None).await;
    assert_eq!(status, 403, "an admin cannot ban the owner");
    let (status, _) = api(broker.addr, "POST", &path(&admin_member, "kick"), Some(&owner), None).await;
    assert_eq!(status, 200, "the owner can remove an admin");
}
