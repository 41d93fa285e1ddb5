//! Scheduled and recurring messages through a real broker: sealed when scheduled, queued when
//! due (to peers, or to oneself), listed and cancelled by their scheduler only, limited per
//! member.

mod common;

use std::time::Duration;

use broker_core::client::{ClientError, When};
use broker_core::config::BrokerConfig;
use broker_core::protocol::{self, Priority, SendRejection};
use broker_core::schedule::occurrence_of;
use common::TestBroker;

fn config() -> BrokerConfig {
    BrokerConfig {
        schedule_poll_interval: Duration::from_millis(50),
        max_schedules_per_member: 3,
        ..BrokerConfig::default()
    }
}

#[tokio::test]
async fn a_scheduled_message_arrives_once_when_due_as_from_its_scheduler() {
    let broker = TestBroker::start_with(config()).await;
    let (mesh, members) = broker.mesh("acme", &["alice", "bob"]);
    let mut alice = broker.connect(&mesh, &members[0], "alice").await;
    let mut bob = broker.connect(&mesh, &members[1], "bob").await;
    let due = protocol::now_ms() + 700;
    let bob_key = members[1].key.public_hex();
    let scheduled = alice.client.schedule(&bob_key, b"stand-up in 5", Priority::Now, When::At(due)).await.expect("ok");
    assert_eq!(scheduled.recipients, 1);
    assert_eq!(scheduled.next_fire_at, protocol::iso8601_ms(due));
    assert_eq!(scheduled.sender_name, "alice");
    let listed = alice.client.list_scheduled().await.expect("lists");
    assert_eq!(listed, std::slice::from_ref(&scheduled));
    assert!(bob.client.list_scheduled().await.expect("lists").is_empty(), "a member sees its own only");

    let arrived = bob.message().await;
    assert!(protocol::now_ms() >= due, "not before its time");
    assert_eq!(arrived.text().as_deref(), Some("stand-up in 5"));
    assert_eq!(arrived.sender_member_pubkey, Some(members[0].key.public_hex()), "as from the scheduler");
    assert_eq!(occurrence_of(&arrived.message_id), Some((scheduled.schedule_id.as_str(), due)));
    bob.no_message_within(Duration::from_millis(400)).await;
    assert!(alice.client.list_scheduled().await.expect("lists").is_empty(), "a one-time message ends");

    // A reminder to oneself reaches the scheduling session too.
    let own_key = members[0].key.public_hex();
    let due = protocol::now_ms() + 200;
    alice.client.schedule(&own_key, b"check the deploy", Priority::Now, When::At(due)).await.expect("ok");
    assert_eq!(alice.message().await.text().as_deref(), Some("check the deploy"));
}

#[tokio::test]
async fn only_the_scheduler_or_an_admin_cancels_and_each_member_has_a_limit() {
    let broker = TestBroker::start_with(config()).await;
    let (mesh, members) = broker.mesh("acme", &["alice", "bob", "carol"]);
    // `mesh` makes its first member an admin.
    let admin = broker.connect(&mesh, &members[0], "alice").await;
    let bob = broker.connect(&mesh, &members[1], "bob").await;
    let mut carol = broker.connect(&mesh, &members[2], "carol").await;
    let later = When::At(protocol::now_ms() + 60_000);
    let carol_key = members[2].key.public_hex();
    let mut ids = Vec::new();
    for n in 0..3 {
        let text = format!("reminder {n}");
        let scheduled = bob.client.schedule(&carol_key, text.as_bytes(), Priority::Next, later.clone()).await;
        ids.push(scheduled.expect("within the limit").schedule_id);
    }
    let refused = bob.client.schedule(&carol_key, b"one too many", Priority::Next, later.clone()).await;
    assert!(
        matches!(refused, Err(ClientError::Rejected { reason: Some(SendRejection::ScheduleLimit), .. })),
        "{refused:?}"
    );

    let error = carol.client.cancel_scheduled(&ids[0]).await.expect_err("not hers");
    assert!(error.to_string().contains("only whoever scheduled it"), "{error}");
    assert!(bob.client.cancel_scheduled(&ids[0]).await.expect("his own"), "cancelled");
    assert!(!bob.client.cancel_scheduled(&ids[0]).await.expect("answers"), "gone: the broker says not_found");
    assert_eq!(admin.client.list_scheduled().await.expect("an admin sees all").len(), 2);
    assert!(admin.client.cancel_scheduled(&ids[1]).await.expect("an admin may"), "cancelled");
    let left: Vec<String> =
        bob.client.list_scheduled().await.expect("lists").into_iter().map(|s| s.schedule_id).collect();
    assert_eq!(left, [ids[2].clone()]);
    bob.client.schedule(&carol_key, b"room again", Priority::Next, later).await.expect("under the limit again");

    // Cron and times are checked when scheduled.
    let bad =
        bob.client.schedule(&carol_key, b"x", Priority::Next, When::Cron { expression: "0 9 * *".into(), tz: None });
    let error = bad.await.expect_err("four fields");
    assert!(error.to_string().contains("five"), "{error}");
    let zone = When::Cron { expression: "0 9 * * 1-5".into(), tz: Some("Moon/Base".into()) };
    assert!(bob.client.schedule(&carol_key, b"x", Priority::Next, zone).await.is_err());
    carol.no_message_within(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn a_member_who_leaves_or_is_removed_sends_and_receives_no_more_scheduled_messages() {
    use broker_core::store::{MembershipAction, Store as _};
    let broker = TestBroker::start_with(config()).await;
    let (mesh, members) = broker.mesh("acme", &["alice", "bob", "carol"]);
    let mut alice = broker.connect(&mesh, &members[0], "alice").await;
    let bob = broker.connect(&mesh, &members[1], "bob").await;
    let carol = broker.connect(&mesh, &members[2], "carol").await;
    let due = When::At(protocol::now_ms() + 500);
    bob.client.schedule("*", b"from bob to everyone", Priority::Now, due.clone()).await.expect("ok");
    let to_both = alice.client.schedule("*", b"from alice", Priority::Now, due).await.expect("ok");
    assert_eq!(to_both.recipients, 2);

    // Carol leaves; an admin kicks bob. Nothing scheduled reaches or comes from either.
    carol.client.leave_mesh().await.expect("leaves");
    let (bob_id, admin_id) = (members[1].record.id.clone(), members[0].record.id.clone());
    let store = broker.store.clone();
    tokio::task::spawn_blocking(move || {
        store.change_membership(&bob_id, MembershipAction::Kick, Some(&admin_id), protocol::now_ms())
    })
    .await
    .expect("task")
    .expect("kicks bob");
    alice.no_message_within(Duration::from_millis(1_200)).await;
    assert!(alice.client.list_scheduled().await.expect("an admin lists all").is_empty(), "both ended");
    let store = broker.store.clone();
    let mesh_id = mesh.clone();
    let (cancelled, _) =
        tokio::task::spawn_blocking(move || store.audit_entries(&mesh_id, Some("schedule_cancelled"), 10, 0))
            .await
            .expect("task")
            .expect("audit");
    assert_eq!(cancelled.len(), 1, "bob's schedule ended by the broker: {cancelled:?}");
    assert_eq!(cancelled[0].actor, None);
}
