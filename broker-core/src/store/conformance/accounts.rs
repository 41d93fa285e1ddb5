//! Accounts, devices and their tokens, device codes (RFC 8628) and login tokens.

use serde_json::json;

use super::{
    NOW_MS, TestDatabase, assert_conflict, assert_invalid, assert_not_found, audit_log, audit_types, new_member,
};
use crate::protocol::Role;
use crate::store::{
    AccountRecord, DeviceCodeRecord, DeviceCodeStatus, DeviceInfo, DeviceRecord, EmailCodeOutcome, NewDeviceCode,
    NewMember, PollOutcome, Store, StoreResult,
};

/// Lifetime of the tokens devices get in these checks.
const TOKEN_EXPIRES_AT: u64 = NOW_MS + 30 * 24 * 3600 * 1000;
/// Lifetime of device codes in these checks.
const CODE_TTL_MS: u64 = 600_000;
const INTERVAL_MS: u64 = 5_000;

fn device_info(hostname: &str) -> DeviceInfo {
    DeviceInfo {
        hostname: hostname.to_owned(),
        platform: "linux".into(),
        arch: "x86_64".into(),
        app_version: "1.2.3".into(),
        ip: "192.0.2.7".into(),
        confirm_key: None,
    }
}

fn with_confirm_key(hostname: &str, key: &str) -> DeviceInfo {
    DeviceInfo { confirm_key: Some(key.to_owned()), ..device_info(hostname) }
}

fn scope(account: &AccountRecord) -> String {
    format!("account:{}", account.id)
}

fn new_code(hash: &str, user_code: &str, hint: Option<&str>, created_at: u64) -> NewDeviceCode {
    NewDeviceCode {
        device_code_hash: hash.to_owned(),
        user_code: user_code.to_owned(),
        info: device_info(&format!("host-{user_code}")),
        account_hint: hint.map(str::to_owned),
        created_at,
        expires_at: created_at + CODE_TTL_MS,
        interval_ms: INTERVAL_MS,
    }
}

/// What `device_code` returns for a code just created from `code`.
fn pending(code: &NewDeviceCode) -> DeviceCodeRecord {
    DeviceCodeRecord {
        user_code: code.user_code.clone(),
        info: code.info.clone(),
        created_at: code.created_at,
        expires_at: code.expires_at,
        interval_ms: code.interval_ms,
        status: DeviceCodeStatus::Pending,
        account_id: None,
        attempts: 0,
    }
}

fn poll<S: Store>(store: &S, hash: &str, token_hash: &str, now_ms: u64) -> StoreResult<PollOutcome> {
    store.poll_device_code(hash, token_hash, TOKEN_EXPIRES_AT, &device_info("claimant"), now_ms)
}

fn issued(outcome: StoreResult<PollOutcome>) -> (AccountRecord, DeviceRecord) {
    match outcome {
        Ok(PollOutcome::Issued { account, device }) => (account, device),
        other => panic!("expected the token to be issued, got {other:?}"),
    }
}

/// Accounts are found by id and by name; names are unique and not blank; a blank email is no
/// email; creation is audited under `account:<id>`.
pub fn accounts_are_found_by_id_or_name<D: TestDatabase>(database: &D) {
    let store = database.open();
    let alice = store.create_account("alice", Some("alice@example.com"), NOW_MS).expect("creates");
    assert_eq!((alice.name.as_str(), alice.email.as_deref()), ("alice", Some("alice@example.com")));
    assert_eq!(alice.created_at, NOW_MS);
    assert_eq!(store.account(&alice.id).expect("reads").as_ref(), Some(&alice));
    assert_eq!(store.account("alice").expect("reads").as_ref(), Some(&alice));
    assert_eq!(store.account("nobody").expect("reads"), None);

    let bob = store.create_account("bob", Some("   "), NOW_MS + 1).expect("creates");
    assert_eq!(bob.email, None);
    assert_ne!(bob.id, alice.id);
    assert_conflict(store.create_account("alice", None, NOW_MS + 2), "an account named \"alice\" already exists");
    assert_invalid(store.create_account("  ", None, NOW_MS + 2));

    let created = audit_log(&*store, &scope(&alice)).pop().expect("an entry");
    assert_eq!((created.event_type.as_str(), &created.payload), ("account_created", &json!({"name": "alice"})));
}

/// A device's token finds it and its account until the device is revoked; use moves its
/// last-seen time and pushes (never pulls) its expiry; revoking it revokes every member key it
/// holds, and only those.
pub fn devices_hold_tokens_until_revoked<D: TestDatabase>(database: &D) {
    let store = database.open();
    let alice = store.create_account("alice", None, NOW_MS).expect("creates");
    let laptop =
        store.create_device(&alice.id, &device_info("laptop"), "hash-laptop", NOW_MS + 1_000, NOW_MS).expect("adds");
    assert_eq!(
        laptop,
        DeviceRecord {
            id: laptop.id.clone(),
            account_id: alice.id.clone(),
            info: device_info("laptop"),
            created_at: NOW_MS,
            last_seen_at: NOW_MS,
            expires_at: NOW_MS + 1_000,
            revoked_at: None,
        }
    );
    assert_eq!(store.device_by_token("hash-laptop").expect("reads"), Some((laptop.clone(), alice.clone())));
    assert_eq!(store.device_by_token("hash-unknown").expect("reads"), None);
    assert_not_found(store.create_device("acct_unknown", &device_info("x"), "hash-x", NOW_MS, NOW_MS));

    store.touch_device(&laptop.id, NOW_MS + 10, NOW_MS + 5_000).expect("touches");
    store.touch_device(&laptop.id, NOW_MS + 20, NOW_MS + 2_000).expect("touches");
    let touched = DeviceRecord { last_seen_at: NOW_MS + 20, expires_at: NOW_MS + 5_000, ..laptop.clone() };
    let desktop = store
        .create_device(&alice.id, &device_info("desktop"), "hash-desktop", NOW_MS + 1_000, NOW_MS + 30)
        .expect("adds");
    assert_eq!(store.devices(&alice.id).expect("lists"), [touched.clone(), desktop.clone()]);

    let on = |device: &DeviceRecord, n: u32| NewMember {
        account_id: Some(alice.id.clone()),
        device_id: Some(device.id.clone()),
        ..new_member(n, "alice")
    };
    let (first_mesh, on_laptop) = store.create_mesh("first", "", None, &on(&laptop, 1), NOW_MS + 40).expect("creates");
    let (second_mesh, _) = store.create_mesh("second", "", None, &on(&desktop, 2), NOW_MS + 41).expect("creates");
    let also_on_laptop =
        store.add_member(&second_mesh.id, &on(&laptop, 3), Role::Member, None, NOW_MS + 42).expect("adds");
    let on_desktop = store.add_member(&first_mesh.id, &on(&desktop, 4), Role::Member, None, NOW_MS + 43).expect("adds");

    let mut revoked = store.revoke_device(&laptop.id, Some(&desktop.id), NOW_MS + 50).expect("revokes");
    revoked.sort_by_key(|member| member.created_at);
    let mut expected = vec![on_laptop, also_on_laptop];
    for member in &mut expected {
        member.revoked_at = Some(NOW_MS + 50);
    }
    assert_eq!(revoked, expected);
    for member in &expected {
        assert_eq!(store.member(&member.id).expect("reads").as_ref(), Some(member));
    }
    assert_eq!(store.member(&on_desktop.id).expect("reads"), Some(on_desktop), "another device's key stays");
    assert_eq!(store.device_by_token("hash-laptop").expect("reads"), None);
    assert_eq!(store.device_by_token("hash-desktop").expect("reads"), Some((desktop.clone(), alice.clone())));
    let listed = store.devices(&alice.id).expect("lists");
    assert_eq!(listed[0], DeviceRecord { revoked_at: Some(NOW_MS + 50), ..touched });
    assert!(store.revoke_device(&laptop.id, None, NOW_MS + 60).expect("revoking twice is harmless").is_empty());
    assert_not_found(store.revoke_device("dev_unknown", None, NOW_MS));

    let account_log = audit_log(&*store, &scope(&alice));
    let revocation = account_log.iter().find(|entry| entry.event_type == "device_revoked").expect("audited");
    assert_eq!(revocation.actor.as_deref(), Some(desktop.id.as_str()));
    assert_eq!(revocation.payload["deviceId"], json!(laptop.id));
    for mesh in [&first_mesh, &second_mesh] {
        assert!(audit_types(&*store, &mesh.id).contains(&"member_device_revoked".to_owned()), "{}", mesh.slug);
    }
}

/// The whole RFC 8628 path: a pending code is listed to the account it names, polled (too fast
/// means slow down, with a longer interval), counted, approved once, and redeemed once for a
/// device holding the new token.
pub fn a_device_code_is_approved_then_redeemed_once<D: TestDatabase>(database: &D) {
    let store = database.open();
    let alice = store.create_account("alice", None, NOW_MS).expect("creates");
    let bob = store.create_account("bob", None, NOW_MS).expect("creates");
    let approver = store
        .create_device(&alice.id, &device_info("approver"), "hash-approver", TOKEN_EXPIRES_AT, NOW_MS)
        .expect("adds");

    let by_name = new_code("code-1", "ABCD-EFGH", Some("alice"), NOW_MS);
    let by_id = new_code("code-2", "IJKL-MNOP", Some(&alice.id), NOW_MS + 1);
    let unnamed = new_code("code-3", "QRST-UVWX", None, NOW_MS + 2);
    for code in [&by_name, &by_id, &unnamed] {
        store.create_device_code(code).expect("creates");
    }
    assert_eq!(store.device_code("ABCD-EFGH").expect("reads"), Some(pending(&by_name)));
    assert_eq!(store.device_code("ZZZZ-ZZZZ").expect("reads"), None);
    assert_eq!(store.pending_device_codes(&alice, NOW_MS + 3).expect("lists"), [pending(&by_name), pending(&by_id)]);
    assert!(store.pending_device_codes(&bob, NOW_MS + 3).expect("lists").is_empty());
    assert!(store.pending_device_codes(&alice, NOW_MS + CODE_TTL_MS + 1).expect("lists").is_empty(), "expired");

    assert_eq!(poll(&*store, "code-1", "token-1", NOW_MS + 10).expect("polls"), PollOutcome::Pending);
    assert_eq!(poll(&*store, "code-1", "token-1", NOW_MS + 11).expect("polls"), PollOutcome::SlowDown);
    let slowed = store.device_code("ABCD-EFGH").expect("reads").expect("exists").interval_ms;
    assert!(slowed > INTERVAL_MS, "slowing down lengthens the interval ({slowed} ms)");
    let mut now = NOW_MS + 11 + slowed;
    assert_eq!(poll(&*store, "code-1", "token-1", now).expect("polls"), PollOutcome::Pending);

    let counted = store.count_device_code_attempt("ABCD-EFGH", 5).expect("counts");
    assert_eq!((counted.attempts, counted.status), (1, DeviceCodeStatus::Pending));
    let approved =
        store.decide_device_code("ABCD-EFGH", true, &alice.id, Some(&approver.id), now + 1).expect("approves");
    assert_eq!(
        approved,
        DeviceCodeRecord {
            status: DeviceCodeStatus::Approved,
            account_id: Some(alice.id.clone()),
            attempts: 1,
            interval_ms: slowed,
            ..pending(&by_name)
        }
    );
    assert!(matches!(
        store.decide_device_code("ABCD-EFGH", false, &alice.id, None, now + 2),
        Err(crate::store::StoreError::Conflict(_))
    ));
    assert_eq!(store.pending_device_codes(&alice, now + 2).expect("lists"), [pending(&by_id)]);

    now += slowed;
    let (account, device) = issued(poll(&*store, "code-1", "token-1", now));
    assert_eq!(account, alice);
    assert_eq!(
        (device.account_id.as_str(), &device.info),
        (alice.id.as_str(), &by_name.info),
        "the requester's device"
    );
    assert_eq!((device.expires_at, device.revoked_at), (TOKEN_EXPIRES_AT, None));
    assert_eq!(store.device_by_token("token-1").expect("reads"), Some((device.clone(), alice.clone())));
    assert!(store.devices(&alice.id).expect("lists").contains(&device));
    assert_eq!(
        store.device_code("ABCD-EFGH").expect("reads").map(|code| code.status),
        Some(DeviceCodeStatus::Consumed)
    );
    assert_eq!(poll(&*store, "code-1", "token-again", now + slowed).expect("polls"), PollOutcome::Invalid);
    assert_eq!(store.device_by_token("token-again").expect("reads"), None);
    assert_eq!(poll(&*store, "code-unknown", "token-x", now).expect("polls"), PollOutcome::Invalid);

    let log = audit_log(&*store, &scope(&alice));
    let approval = log.iter().find(|entry| entry.event_type == "device_approved").expect("audited");
    assert_eq!(approval.actor.as_deref(), Some(approver.id.as_str()));
    let added: Vec<&serde_json::Value> =
        log.iter().filter(|entry| entry.event_type == "device_added").map(|entry| &entry.payload["deviceId"]).collect();
    assert_eq!(added, [&json!(approver.id), &json!(device.id)]);
}

/// Approval for an account the code did not name, a decision or poll after expiry, too many
/// attempts, denial, unknown and duplicate user codes: each refused as the login routes expect.
pub fn device_codes_refuse_what_their_terms_forbid<D: TestDatabase>(database: &D) {
    let store = database.open();
    let alice = store.create_account("alice", None, NOW_MS).expect("creates");
    let mallory = store.create_account("mallory", None, NOW_MS).expect("creates");

    store.create_device_code(&new_code("code-1", "AAAA-AAAA", Some("alice"), NOW_MS)).expect("creates");
    assert_conflict(store.decide_device_code("AAAA-AAAA", true, &mallory.id, None, NOW_MS + 1), "account_mismatch");
    assert_eq!(store.device_code("AAAA-AAAA").expect("reads").map(|c| c.status), Some(DeviceCodeStatus::Pending));
    let denied = store.decide_device_code("AAAA-AAAA", false, &alice.id, None, NOW_MS + 2).expect("denies");
    assert_eq!(denied.status, DeviceCodeStatus::Denied);
    assert_eq!(poll(&*store, "code-1", "token-1", NOW_MS + 3).expect("polls"), PollOutcome::Denied);
    assert!(audit_types(&*store, &scope(&alice)).contains(&"device_denied".to_owned()));

    store.create_device_code(&new_code("code-2", "BBBB-BBBB", None, NOW_MS)).expect("creates");
    assert_conflict(store.decide_device_code("BBBB-BBBB", true, &alice.id, None, NOW_MS + CODE_TTL_MS), "expired");
    assert_eq!(poll(&*store, "code-2", "token-2", NOW_MS + CODE_TTL_MS).expect("polls"), PollOutcome::Expired);

    store.create_device_code(&new_code("code-3", "CCCC-CCCC", None, NOW_MS)).expect("creates");
    for attempt in 1..=2 {
        let counted = store.count_device_code_attempt("CCCC-CCCC", 2).expect("counts");
        assert_eq!((counted.attempts, counted.status), (attempt, DeviceCodeStatus::Pending));
    }
    let locked = store.count_device_code_attempt("CCCC-CCCC", 2).expect("counts");
    assert_eq!((locked.attempts, locked.status), (3, DeviceCodeStatus::Denied), "denied for good past the maximum");
    assert!(matches!(
        store.decide_device_code("CCCC-CCCC", true, &alice.id, None, NOW_MS + 1),
        Err(crate::store::StoreError::Conflict(_))
    ));
    assert_eq!(poll(&*store, "code-3", "token-3", NOW_MS + 1).expect("polls"), PollOutcome::Denied);

    assert_not_found(store.count_device_code_attempt("ZZZZ-ZZZZ", 5));
    assert_not_found(store.decide_device_code("ZZZZ-ZZZZ", true, &alice.id, None, NOW_MS));
    assert_conflict(
        store.create_device_code(&new_code("code-4", "CCCC-CCCC", None, NOW_MS + 1)),
        "user code collision",
    );
    assert_eq!(store.device_code("CCCC-CCCC").expect("reads").map(|c| c.status), Some(DeviceCodeStatus::Denied));
}

/// A login token is approved from the start, describes the device that pastes it, works once,
/// stays out of the pending list, and dies unused when the device that made it is revoked.
pub fn a_login_token_is_redeemed_once_and_dies_with_its_maker_with_what_it_let_in_just_before<D: TestDatabase>(
    database: &D,
) {
    let store = database.open();
    let alice = store.create_account("alice", None, NOW_MS).expect("creates");
    let maker =
        store.create_device(&alice.id, &device_info("maker"), "hash-maker", TOKEN_EXPIRES_AT, NOW_MS).expect("adds");

    store.create_login_token("login-1", &alice.id, &maker.id, NOW_MS, NOW_MS + CODE_TTL_MS).expect("creates");
    store.create_login_token("login-2", &alice.id, &maker.id, NOW_MS, NOW_MS + CODE_TTL_MS).expect("creates");
    assert!(store.pending_device_codes(&alice, NOW_MS + 1).expect("lists").is_empty());

    let claimant = device_info("pasted-on");
    let outcome = store.poll_device_code("login-1", "token-1", TOKEN_EXPIRES_AT, &claimant, NOW_MS + 1);
    let (account, device) = issued(outcome);
    assert_eq!((account, &device.info), (alice.clone(), &claimant));
    assert_eq!(store.device_by_token("token-1").expect("reads"), Some((device, alice.clone())));
    let again = store.poll_device_code("login-1", "token-1b", TOKEN_EXPIRES_AT, &claimant, NOW_MS + 2);
    assert_eq!(again.expect("polls"), PollOutcome::Invalid);

    store.revoke_device(&maker.id, None, NOW_MS + 3).expect("revokes the maker");
    let orphan = store.poll_device_code("login-2", "token-2", TOKEN_EXPIRES_AT, &claimant, NOW_MS + 4);
    assert_eq!(orphan.expect("polls"), PollOutcome::Denied);
    assert_eq!(store.device_by_token("token-2").expect("reads"), None);
    // The device the maker let in just before goes with it, and the audit log says why.
    assert_eq!(store.device_by_token("token-1").expect("reads"), None);
    let recalled: Vec<_> = audit_log(&*store, &scope(&alice))
        .into_iter()
        .filter(|entry| entry.event_type == "device_revoked_with_approver")
        .map(|entry| (entry.actor, entry.payload["approvedBy"].clone()))
        .collect();
    assert_eq!(recalled, [(Some(maker.id.clone()), serde_json::json!(maker.id))]);

    let made = audit_log(&*store, &scope(&alice))
        .into_iter()
        .filter(|entry| entry.event_type == "login_token_created")
        .map(|entry| entry.actor)
        .collect::<Vec<_>>();
    assert_eq!(made, [Some(maker.id.clone()), Some(maker.id.clone())]);

    // One let in long before stays: its approver's later loss says nothing about it.
    let old_maker =
        store.create_device(&alice.id, &device_info("old"), "hash-old", TOKEN_EXPIRES_AT, NOW_MS).expect("adds");
    store.create_login_token("login-3", &alice.id, &old_maker.id, NOW_MS, NOW_MS + CODE_TTL_MS).expect("creates");
    issued(store.poll_device_code("login-3", "token-3", TOKEN_EXPIRES_AT, &claimant, NOW_MS + 5));
    let much_later = NOW_MS + 5 + crate::store::APPROVAL_RECALL_WINDOW.as_millis() as u64 + 1;
    store.revoke_device(&old_maker.id, None, much_later).expect("revokes");
    assert!(store.device_by_token("token-3").expect("reads").is_some());
}

/// A device keeps the confirmation key of whoever redeems its code: the token poll's key, else
/// the one the code request named; a login token takes the redeeming device's; a device created
/// directly keeps its own.
pub fn a_device_keeps_the_confirmation_key_of_whoever_redeems_its_code<D: TestDatabase>(database: &D) {
    let store = database.open();
    let alice = store.create_account("alice", None, NOW_MS).expect("creates");
    let (asked, redeemed) = ("a".repeat(64), "b".repeat(64));
    let first = store
        .create_device(&alice.id, &with_confirm_key("first", &asked), "hash-first", TOKEN_EXPIRES_AT, NOW_MS)
        .expect("adds");
    assert_eq!(first.info.confirm_key.as_deref(), Some(asked.as_str()));
    assert_eq!(store.device_by_token("hash-first").expect("reads").expect("found").0, first);

    for (hash, user_code, claimant, expected) in [
        ("code-1", "ABCD-EFGH", device_info("claimant"), &asked),
        ("code-2", "IJKL-MNOP", with_confirm_key("claimant", &redeemed), &redeemed),
    ] {
        let code = NewDeviceCode { info: with_confirm_key("asker", &asked), ..new_code(hash, user_code, None, NOW_MS) };
        store.create_device_code(&code).expect("creates");
        store.decide_device_code(user_code, true, &alice.id, Some(&first.id), NOW_MS + 1).expect("approves");
        let token = format!("token-{hash}");
        let (_, device) = issued(store.poll_device_code(hash, &token, TOKEN_EXPIRES_AT, &claimant, NOW_MS + 2));
        assert_eq!(device.info.confirm_key.as_deref(), Some(expected.as_str()), "{hash}");
        assert_eq!(store.device_by_token(&token).expect("reads").expect("found").0, device);
    }

    store.create_login_token("login-1", &alice.id, &first.id, NOW_MS, NOW_MS + CODE_TTL_MS).expect("creates");
    let pasted = with_confirm_key("pasted-on", &redeemed);
    let (_, device) = issued(store.poll_device_code("login-1", "token-login", TOKEN_EXPIRES_AT, &pasted, NOW_MS + 3));
    assert_eq!(device.info, pasted);
}

/// An emailed code belongs to the account with that address (case aside), replaces the code
/// before it, signs in one device once, and dies after its attempts or its time.
pub fn an_emailed_code_signs_in_one_device_once<D: TestDatabase>(database: &D) {
    let store = database.open();
    let alice = store.create_account("alice", Some("Alice@Example.test"), NOW_MS).expect("creates");
    let expires = NOW_MS + CODE_TTL_MS;
    assert_eq!(store.create_email_code("nobody@example.test", "h0", NOW_MS, expires).expect("asks"), None);
    assert_eq!(
        store.create_email_code("alice@example.test", "h1", NOW_MS, expires).expect("asks"),
        Some(alice.clone())
    );
    assert!(store.create_email_code("ALICE@example.test", "h2", NOW_MS + 1, expires).expect("asks").is_some());

    let phone = device_info("phone");
    let redeem = |hash: &str, token: &str, now: u64| {
        store.redeem_email_code("alice@example.test", hash, 3, &phone, token, TOKEN_EXPIRES_AT, now).expect("redeems")
    };
    assert_eq!(redeem("h1", "t1", NOW_MS + 2), EmailCodeOutcome::Refused, "the first code was replaced");
    match redeem("h2", "t2", NOW_MS + 3) {
        EmailCodeOutcome::Issued { account, device } => {
            assert_eq!((account, &device.info), (alice.clone(), &phone));
            assert_eq!(store.device_by_token("t2").expect("reads").map(|(d, _)| d), Some(device));
        }
        other => panic!("expected a device, got {other:?}"),
    }
    assert_eq!(redeem("h2", "t3", NOW_MS + 4), EmailCodeOutcome::Refused, "once");

    store.create_email_code("alice@example.test", "h4", NOW_MS + 5, NOW_MS + 100).expect("asks");
    for attempt in 0..3 {
        assert_eq!(redeem("wrong", "t", NOW_MS + 6 + attempt), EmailCodeOutcome::Refused);
    }
    assert_eq!(redeem("h4", "t4", NOW_MS + 10), EmailCodeOutcome::Exhausted, "its attempts are spent");
    store.create_email_code("alice@example.test", "h5", NOW_MS + 11, NOW_MS + 100).expect("asks");
    assert_eq!(redeem("h5", "t5", NOW_MS + 100), EmailCodeOutcome::Refused, "expired");
    assert_eq!(store.device_by_token("t4").expect("reads"), None);

    let events: Vec<String> = audit_log(&*store, &scope(&alice)).into_iter().map(|e| e.event_type).collect();
    assert_eq!(events.iter().filter(|e| *e == "email_code_sent").count(), 4, "{events:?}");
    assert_eq!(events.iter().filter(|e| *e == "email_code_refused").count(), 4, "{events:?}");
}
