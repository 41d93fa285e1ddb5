//! Sign-in by an emailed code against a real broker and a local SMTP sink: the code reaches the
//! account's address (text and HTML parts), the answer is the same for an address no account
//! has, a right code signs in one device of the account once (listed, revocable), wrong, spent
//! and expired codes are refused, and asking and trying are budgeted.

mod common;

use std::time::Duration;

use broker_core::config::{BrokerConfig, RateLimit};
use broker_core::email::Mailer;
use broker_core::store::Store;
use common::accounts::{confirm_key_of, confirmed_api, quick_polls};
use common::{TestBroker, WAIT, api};
use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedReceiver;

async fn broker_with_mail(config: BrokerConfig) -> (TestBroker, UnboundedReceiver<String>) {
    let (url, mails) = broker_core::testing::smtp_sink().await;
    let mailer = Mailer::new(&url, "claudemesh <noreply@example.test>").expect("mailer");
    (TestBroker::start_full(config, None, Some(mailer)).await, mails)
}

/// Asks for a code for `email`; the answer.
async fn ask(broker: &TestBroker, email: &str) -> (u16, Value) {
    api(broker.addr, "POST", "/v1/connect/email", None, Some(json!({"email": email}))).await
}

/// The code in the next mail, with the mail.
async fn next_code(mails: &mut UnboundedReceiver<String>) -> (String, String) {
    let mail = tokio::time::timeout(WAIT, mails.recv()).await.expect("a mail in time").expect("a mail");
    let code = mail
        .lines()
        .map(str::trim)
        .find(|line| line.len() == 6 && line.bytes().all(|b| b.is_ascii_digit()))
        .unwrap_or_else(|| panic!("no code in {mail}"))
        .to_owned();
    (code, mail)
}

async fn verify(broker: &TestBroker, email: &str, code: &str, device: &str) -> (u16, Value) {
    let body = json!({
        "email": email, "code": code, "deviceName": device, "platform": "telegram",
        "confirmKey": confirm_key_of(device).public_hex(),
    });
    api(broker.addr, "POST", "/v1/connect/verify", None, Some(body)).await
}

#[tokio::test]
async fn an_emailed_code_signs_in_one_device_of_the_account_once() {
    let (broker, mut mails) = broker_with_mail(quick_polls()).await;
    broker.store.create_account("alice", Some("alice@example.test"), protocol_now()).expect("account");

    // Any case of the address; the mail has both parts, and the code.
    let (status, asked) = ask(&broker, "Alice@Example.test").await;
    assert_eq!(status, 202, "{asked}");
    let (code, mail) = next_code(&mut mails).await;
    assert!(mail.contains("alice@example.test"), "{mail}");
    assert!(mail.contains("text/plain") && mail.contains("text/html"), "{mail}");

    // An address no account has gets the same answer, and no mail.
    let (status, unknown) = ask(&broker, "mallory@example.test").await;
    assert_eq!((status, &unknown), (202, &asked), "the answer says nothing of who has an account");
    assert!(tokio::time::timeout(Duration::from_millis(300), mails.recv()).await.is_err(), "no mail for mallory");

    let wrong = if code == "000000" { "111111" } else { "000000" };
    let (status, body) = verify(&broker, "alice@example.test", wrong, "phone").await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_code")), "{body}");
    let (status, token) = verify(&broker, "alice@example.test", &code, "phone").await;
    assert_eq!(status, 200, "{token}");
    assert_eq!(token["account"]["name"], "alice");
    let phone = token["access_token"].as_str().expect("token").to_owned();
    let (status, me) = api(broker.addr, "GET", "/v1/account", Some(&phone), None).await;
    assert_eq!((status, me["device"]["hostname"].as_str()), (200, Some("phone")), "{me}");
    let (status, again) = verify(&broker, "alice@example.test", &code, "phone-again").await;
    assert_eq!((status, again["error"].as_str()), (400, Some("invalid_code")), "once: {again}");

    // A second device the same way: listed among the account's devices, and revocable.
    ask(&broker, "alice@example.test").await;
    let (code, _) = next_code(&mut mails).await;
    let (_, chat) = verify(&broker, "alice@example.test", &code, "Telegram: alice").await;
    let chat_token = chat["access_token"].as_str().expect("token").to_owned();
    let chat_id = chat["device_id"].as_str().expect("device id").to_owned();
    let (_, devices) = api(broker.addr, "GET", "/v1/devices", Some(&phone), None).await;
    let listed = devices["devices"].as_array().expect("devices");
    assert!(listed.iter().any(|d| d["id"] == chat_id && d["hostname"] == "Telegram: alice"), "{devices}");
    let (status, _) = confirmed_api(&broker, "POST", &format!("/v1/devices/{chat_id}/revoke"), &phone, None).await;
    assert_eq!(status, 200);
    assert_eq!(api(broker.addr, "GET", "/v1/account", Some(&chat_token), None).await.0, 401);

    // The store keeps a hash of each code, never the digits.
    let conn = rusqlite::Connection::open(broker.dir.path().join("broker.db")).expect("db");
    let hashes: Vec<String> = conn
        .prepare("SELECT code_hash FROM email_codes")
        .and_then(|mut rows| rows.query_map([], |row| row.get(0))?.collect())
        .expect("codes");
    assert!(!hashes.is_empty() && hashes.iter().all(|h| h.len() == 64 && *h != code), "{hashes:?}");
}

#[tokio::test]
async fn wrong_spent_and_expired_codes_are_refused_and_asking_is_budgeted() {
    let config = BrokerConfig {
        email_code_ttl: Duration::from_millis(600),
        email_code_limit_per_email: RateLimit { burst: 3, per_minute: 1 },
        ..quick_polls()
    };
    let (broker, mut mails) = broker_with_mail(config).await;
    broker.store.create_account("bob", Some("bob@example.test"), protocol_now()).expect("account");

    // Five wrong tries spend the code: the right one no longer works.
    ask(&broker, "bob@example.test").await;
    let (code, _) = next_code(&mut mails).await;
    let wrong = if code == "000000" { "111111" } else { "000000" };
    for _ in 0..5 {
        assert_eq!(verify(&broker, "bob@example.test", wrong, "laptop").await.1["error"], "invalid_code");
    }
    let (status, body) = verify(&broker, "bob@example.test", &code, "laptop").await;
    assert_eq!((status, body["error"].as_str()), (400, Some("too_many_attempts")), "{body}");

    // A code past its time is refused.
    ask(&broker, "bob@example.test").await;
    let (code, _) = next_code(&mut mails).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(verify(&broker, "bob@example.test", &code, "laptop").await.1["error"], "invalid_code");

    // Three codes a minute per address, whether or not an account has it.
    assert_eq!(ask(&broker, "bob@example.test").await.0, 202, "the third");
    let (status, body) = ask(&broker, "bob@example.test").await;
    assert_eq!((status, body["error"].as_str()), (429, Some("too_many_requests")), "{body}");
    for _ in 0..3 {
        assert_eq!(ask(&broker, "nobody@example.test").await.0, 202);
    }
    assert_eq!(ask(&broker, "nobody@example.test").await.0, 429);

    // Malformed input is refused plainly.
    assert_eq!(ask(&broker, "not an address").await.1["error"], "invalid_email");
    assert_eq!(verify(&broker, "bob@example.test", "12ab56", "laptop").await.1["error"], "invalid_code");
    let (status, body) = api(
        broker.addr,
        "POST",
        "/v1/connect/verify",
        None,
        Some(json!({"email": "bob@example.test", "code": "123456", "deviceName": " "})),
    )
    .await;
    assert_eq!((status, body["error"].as_str()), (400, Some("malformed")), "{body}");
}

#[tokio::test]
async fn a_broker_that_sends_no_email_says_so() {
    let broker = TestBroker::start_with(quick_polls()).await;
    let (status, body) = ask(&broker, "alice@example.test").await;
    assert_eq!((status, body["error"].as_str()), (503, Some("email_unavailable")), "{body}");
}

fn protocol_now() -> u64 {
    broker_core::protocol::now_ms()
}
