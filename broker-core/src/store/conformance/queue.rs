//! The message queue: enqueue, pending by lane, acknowledge, session release, expiry, saved peer
//! state, and the ordering promises of `submit`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde_json::json;

use super::{
    COMPLETION_TIMEOUT, NOW_MS, TestDatabase, add_member, audit_event, audit_log, mesh_with_admin, pubkey, write,
};
use crate::protocol::{Enc, GroupMembership, Priority, Stats, WrappedKey};
use crate::store::{
    Delivery, Envelope, MemberRecord, MeshRecord, NewMessage, PeerStateRecord, QueueSlot, QueuedEntry, ScheduleFire,
    ScheduleRecord, Store, StoreError, StoreNotice, StoreResult, WriteOp, WriteOutcome,
};

/// A sealed message from `sender`; `n` makes its ids and opaque bytes distinct.
fn envelope(n: u32, mesh: &MeshRecord, sender: &MemberRecord, priority: Priority, enc: Enc) -> Envelope {
    let (nonce, ciphertext) = match enc {
        Enc::System => (String::new(), String::new()),
        Enc::Box | Enc::Multi => (format!("nonce-{n}"), format!("ciphertext-{n}")),
    };
    Envelope {
        message_id: format!("msg-{n}"),
        mesh_id: mesh.id.clone(),
        sender_member_id: sender.id.clone(),
        sender_member_pubkey: sender.pubkey.clone(),
        sender_pubkey: pubkey(10_000 + n),
        sender_session_sig: Some(format!("{n:0128x}")),
        target_spec: "*".to_owned(),
        priority,
        enc,
        nonce,
        ciphertext,
        created_at: NOW_MS + u64::from(n),
        tracked: false,
    }
}

/// A mesh whose admin `alice` writes to `bob` and `carol`.
fn mesh_of_three<S: Store>(store: &S, name: &str) -> (MeshRecord, MemberRecord, MemberRecord, MemberRecord) {
    let (mesh, alice) = mesh_with_admin(store, name, 1, NOW_MS);
    let bob = add_member(store, &mesh, 2, NOW_MS + 1);
    let carol = add_member(store, &mesh, 3, NOW_MS + 2);
    (mesh, alice, bob, carol)
}

fn to(member: &MemberRecord) -> Delivery {
    Delivery { member_id: member.id.clone(), session_pubkey: None, exclude_session: None, key: None }
}

fn wrapped(member: &MemberRecord) -> Delivery {
    Delivery {
        key: Some(WrappedKey { nonce: format!("key-nonce-{}", member.id), ciphertext: format!("key-{}", member.id) }),
        ..to(member)
    }
}

fn message(envelope: Envelope, deliveries: Vec<Delivery>) -> NewMessage {
    NewMessage { envelope: Arc::new(envelope), deliveries, audit: Vec::new(), fire: None }
}

/// Enqueues and returns the assigned sequence numbers.
fn enqueue<S: Store>(store: &S, message: NewMessage) -> Vec<u64> {
    enqueue_slots(store, message).into_iter().map(|slot| slot.seq).collect()
}

/// Enqueues and returns where each delivery landed.
fn enqueue_slots<S: Store>(store: &S, message: NewMessage) -> Vec<QueueSlot> {
    let count = message.deliveries.len();
    match write(store, WriteOp::Enqueue(message)).expect("enqueues") {
        WriteOutcome::Enqueued(slots) => {
            assert_eq!(slots.len(), count, "one sequence number per delivery");
            slots
        }
        other => panic!("an enqueue reported {other:?}"),
    }
}

fn changed<S: Store>(store: &S, op: WriteOp) -> u64 {
    match write(store, op).expect("writes") {
        WriteOutcome::Changed(n) => n,
        other => panic!("expected Changed, got {other:?}"),
    }
}

/// Every entry of one lane for `member`, read in pages of `page`.
fn lane<S: Store>(store: &S, member: &MemberRecord, urgent: bool, page: usize) -> Vec<QueuedEntry> {
    let mut entries: Vec<QueuedEntry> = Vec::new();
    loop {
        let after = entries.last().map_or(0, |entry| entry.seq);
        let next = store.pending_for_member(&member.id, urgent, after, page).expect("reads pending");
        assert!(next.len() <= page, "a page holds at most {page} entries");
        if next.is_empty() {
            return entries;
        }
        entries.extend(next);
    }
}

fn seqs(entries: &[QueuedEntry]) -> Vec<u64> {
    entries.iter().map(|entry| entry.seq).collect()
}

#[track_caller]
fn assert_entry(entry: &QueuedEntry, seq: u64, envelope: &Envelope, delivery: &Delivery) {
    assert_eq!(entry.seq, seq);
    assert_eq!(*entry.envelope, *envelope);
    assert_eq!(entry.delivery, *delivery);
}

/// What was enqueued comes back field for field: single-recipient, multi-recipient (one body,
/// a key per recipient) and system messages alike.
pub fn enqueue_keeps_the_sealed_envelope_and_each_delivery<D: TestDatabase>(database: &D) {
    let store = database.open();
    let (mesh, alice, bob, carol) = mesh_of_three(&*store, "queue");

    let direct = envelope(1, &mesh, &alice, Priority::Next, Enc::Box);
    let to_session = Delivery { session_pubkey: Some(pubkey(20)), ..to(&bob) };
    let direct_seq = enqueue(&*store, message(direct.clone(), vec![to_session.clone()]))[0];

    let group = Envelope { sender_session_sig: None, ..envelope(2, &mesh, &alice, Priority::Now, Enc::Multi) };
    let for_bob = Delivery { exclude_session: Some(pubkey(21)), ..wrapped(&bob) };
    let for_carol = wrapped(&carol);
    let group_seqs = enqueue(&*store, message(group.clone(), vec![for_bob.clone(), for_carol.clone()]));
    assert!(direct_seq < group_seqs[0] && group_seqs[0] < group_seqs[1], "{direct_seq} then {group_seqs:?}");

    let system = envelope(3, &mesh, &alice, Priority::Low, Enc::System);
    let system_seq = enqueue(&*store, message(system.clone(), vec![to(&carol)]))[0];

    let bob_normal = store.pending_for_member(&bob.id, false, 0, 10).expect("reads");
    assert_eq!(bob_normal.len(), 1);
    assert_entry(&bob_normal[0], direct_seq, &direct, &to_session);
    let bob_urgent = store.pending_for_member(&bob.id, true, 0, 10).expect("reads");
    assert_eq!(bob_urgent.len(), 1);
    assert_entry(&bob_urgent[0], group_seqs[0], &group, &for_bob);

    let carol_urgent = store.pending_for_member(&carol.id, true, 0, 10).expect("reads");
    assert_eq!(carol_urgent.len(), 1);
    assert_entry(&carol_urgent[0], group_seqs[1], &group, &for_carol);
    let carol_normal = store.pending_for_member(&carol.id, false, 0, 10).expect("reads");
    assert_eq!(carol_normal.len(), 1);
    assert_entry(&carol_normal[0], system_seq, &system, &to(&carol));

    assert!(store.pending_for_member(&alice.id, false, 0, 10).expect("reads").is_empty(), "nothing for the sender");
    assert_eq!(store.queue_depth().expect("counts"), 4);
}

/// A multi-recipient body stays readable for every recipient that has not acknowledged yet.
pub fn a_shared_body_outlives_each_acknowledgement<D: TestDatabase>(database: &D) {
    let store = database.open();
    let (mesh, alice) = mesh_with_admin(&*store, "bodies", 1, NOW_MS);
    let recipients: Vec<MemberRecord> = (2..5).map(|n| add_member(&*store, &mesh, n, NOW_MS + u64::from(n))).collect();
    let group = envelope(1, &mesh, &alice, Priority::Next, Enc::Multi);
    let seqs = enqueue(&*store, message(group.clone(), recipients.iter().map(wrapped).collect()));

    for (index, (member, seq)) in recipients.iter().zip(&seqs).enumerate() {
        for (later, later_seq) in recipients.iter().zip(&seqs).skip(index) {
            let pending = store.pending_for_member(&later.id, false, 0, 10).expect("reads");
            assert_eq!(pending.len(), 1, "{} still has its copy", later.id);
            assert_entry(&pending[0], *later_seq, &group, &wrapped(later));
        }
        assert_eq!(changed(&*store, WriteOp::Acknowledge(vec![(member.id.clone(), *seq)])), 1);
    }
    assert_eq!(store.queue_depth().expect("counts"), 0);
}

/// `urgent` selects the `now` lane, otherwise `next` and `low`; `after_seq` and `limit` page
/// through a lane in order, each entry once; other members' entries never show.
pub fn pending_entries_page_by_lane_and_sequence<D: TestDatabase>(database: &D) {
    let store = database.open();
    let (mesh, alice, bob, carol) = mesh_of_three(&*store, "lanes");
    let priorities = [Priority::Now, Priority::Next, Priority::Low];

    let mut urgent = Vec::new();
    let mut normal = Vec::new();
    for n in 0..12u32 {
        let priority = priorities[n as usize % 3];
        let seq = enqueue(&*store, message(envelope(n, &mesh, &alice, priority, Enc::Box), vec![to(&bob)]))[0];
        if priority == Priority::Now {
            urgent.push(seq)
        } else {
            normal.push(seq)
        }
        enqueue(&*store, message(envelope(100 + n, &mesh, &alice, priority, Enc::Box), vec![to(&carol)]));
    }

    assert_eq!(seqs(&store.pending_for_member(&bob.id, true, 0, 100).expect("reads")), urgent);
    assert_eq!(seqs(&store.pending_for_member(&bob.id, false, 0, 100).expect("reads")), normal);
    for page in [1, 2, 3, 7] {
        assert_eq!(seqs(&lane(&*store, &bob, true, page)), urgent, "urgent lane in pages of {page}");
        assert_eq!(seqs(&lane(&*store, &bob, false, page)), normal, "normal lane in pages of {page}");
    }
    let after_third = store.pending_for_member(&bob.id, false, normal[2], 100).expect("reads");
    assert_eq!(seqs(&after_third), normal[3..]);
    let first_two = store.pending_for_member(&bob.id, false, 0, 2).expect("reads");
    assert_eq!(seqs(&first_two), normal[..2]);
    let past_the_end = store.pending_for_member(&bob.id, false, normal[normal.len() - 1], 100).expect("reads");
    assert!(past_the_end.is_empty());
    assert!(lane(&*store, &bob, true, 5).iter().all(|entry| entry.envelope.priority == Priority::Now));
    assert!(lane(&*store, &bob, false, 5).iter().all(|entry| entry.envelope.priority != Priority::Now));
    assert!(lane(&*store, &bob, false, 5).iter().all(|entry| entry.delivery.member_id == bob.id));
}

/// An entry's `after` is 0 or the newest entry of its member's lane before it, still queued or
/// acknowledged: never a later one, never one of another lane or member.
pub fn each_entry_knows_the_newest_entry_before_it_in_its_lane<D: TestDatabase>(database: &D) {
    let store = database.open();
    let (mesh, alice, bob, carol) = mesh_of_three(&*store, "after");
    let send = |n: u32, priority: Priority, to_whom: Vec<Delivery>| {
        enqueue_slots(&*store, message(envelope(n, &mesh, &alice, priority, Enc::Multi), to_whom))
    };
    let first = send(1, Priority::Next, vec![to(&bob), to(&carol)]);
    let urgent = send(2, Priority::Now, vec![to(&bob)]);
    let second = send(3, Priority::Low, vec![to(&bob)]);
    assert_eq!(changed(&*store, WriteOp::Acknowledge(vec![(bob.id.clone(), second[0].seq)])), 1);
    let third = send(4, Priority::Next, vec![to(&bob)]);
    let urgent_again = send(5, Priority::Now, vec![to(&bob), to(&carol)]);

    let one_of = |slot: QueueSlot, allowed: &[u64], what: &str| {
        assert!(slot.after < slot.seq, "{what}: after {} is below its own {}", slot.after, slot.seq);
        assert!(slot.after == 0 || allowed.contains(&slot.after), "{what}: after {} not in {allowed:?}", slot.after);
    };
    one_of(first[0], &[], "bob's first");
    one_of(first[1], &[], "carol's first");
    one_of(urgent[0], &[], "bob's first urgent entry, after only normal ones");
    one_of(second[0], &[first[0].seq], "bob's second");
    one_of(third[0], &[first[0].seq, second[0].seq], "bob's third, after an acknowledged one");
    one_of(urgent_again[0], &[urgent[0].seq], "bob's second urgent entry");
    one_of(urgent_again[1], &[], "carol's first urgent entry");
}

/// With several processes on one database (a store whose `subscribe` gives notices), each hears
/// what another queued (each entry whole, or its member, lane and sequence number), released,
/// changed in the directory and announced, and never its own notices. A store that one process owns has none
/// to give.
pub fn other_processes_hear_what_one_queued_changed_and_announced<D: TestDatabase>(database: &D) {
    let (one, two) = (database.open(), database.open());
    let Some(mut heard) = two.subscribe() else {
        assert!(one.subscribe().is_none(), "either every store on a database has notices, or none");
        one.announce("nobody listens").expect("announcing to nobody is no error");
        return;
    };
    // The subscription listens some time after the call, and says so with `Resync`.
    let ready = std::time::Instant::now() + COMPLETION_TIMEOUT;
    let first = loop {
        if let Ok(notice) = heard.try_recv() {
            break notice;
        }
        assert!(std::time::Instant::now() < ready, "the subscription never started");
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    assert_eq!(first, StoreNotice::Resync, "a subscription starts with a resync");
    loop {
        one.announce("ready").expect("announces");
        std::thread::sleep(std::time::Duration::from_millis(50));
        if let Ok(notice) = heard.try_recv() {
            assert_eq!(notice, StoreNotice::Announcement("ready".into()));
            break;
        }
        assert!(std::time::Instant::now() < ready, "the subscription never heard an announcement");
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    while let Ok(notice) = heard.try_recv() {
        assert_eq!(notice, StoreNotice::Announcement("ready".into()));
    }

    // The next notice other than a directory change (after the first, those are the test's
    // own set-up, told once per change).
    let mut next = |what: &str, skip_directory: bool| -> StoreNotice {
        let deadline = std::time::Instant::now() + COMPLETION_TIMEOUT;
        loop {
            match heard.try_recv() {
                Ok(StoreNotice::Directory) if skip_directory => {}
                Ok(notice) => return notice,
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(5))
                }
                Err(error) => panic!("no notice of {what}: {error}"),
            }
        }
    };
    two.announce("my own").expect("announces");
    let (mesh, alice, bob, carol) = mesh_of_three(&*one, "notices");
    assert_eq!(next("the mesh's creation", false), StoreNotice::Directory, "its own announcement is not news");
    let sent = message(envelope(1, &mesh, &alice, Priority::Now, Enc::Multi), vec![wrapped(&bob), wrapped(&carol)]);
    let slots = enqueue_slots(&*one, sent.clone());
    // Each entry whole, or (too large to carry) its member's lane and number.
    for (delivery, slot) in sent.deliveries.iter().zip(&slots) {
        match next("a queued entry", true) {
            StoreNotice::Entry { slot: heard, entry } => {
                assert_eq!(heard, *slot);
                assert_eq!((entry.seq, &entry.envelope, &entry.delivery), (slot.seq, &sent.envelope, delivery));
            }
            StoreNotice::Queued { mesh_id, member_id, urgent, seq } => {
                assert_eq!((mesh_id, &member_id, urgent, seq), (mesh.id.clone(), &delivery.member_id, true, slot.seq));
            }
            other => panic!("expected a queued entry, heard {other:?}"),
        }
    }

    let session = pubkey(77);
    enqueue(
        &*one,
        message(
            envelope(2, &mesh, &alice, Priority::Next, Enc::Box),
            vec![Delivery { session_pubkey: Some(session.clone()), ..to(&bob) }],
        ),
    );
    let heard = next("a session's entry", true);
    assert!(
        matches!(&heard, StoreNotice::Entry { entry, .. } if entry.delivery.session_pubkey.as_ref() == Some(&session))
            || matches!(&heard, StoreNotice::Queued { urgent: false, .. }),
        "{heard:?}"
    );
    let release =
        WriteOp::ReleaseSession { mesh_id: mesh.id.clone(), member_id: bob.id.clone(), session_pubkey: session };
    assert_eq!(changed(&*one, release), 1);
    assert_eq!(next("a release", true), StoreNotice::Released { mesh_id: mesh.id.clone(), member_id: bob.id.clone() });
    one.announce("{\"hello\": \"there\"}").expect("announces");
    assert_eq!(next("an announcement", true), StoreNotice::Announcement("{\"hello\": \"there\"}".into()));
}

/// An acknowledgement removes the named `(member, seq)` entries and nothing else; the outcome
/// counts what was removed.
pub fn acknowledge_removes_exactly_the_named_entries<D: TestDatabase>(database: &D) {
    let store = database.open();
    let (mesh, alice, bob, carol) = mesh_of_three(&*store, "acks");
    let bob_seqs: Vec<u64> = (0..3)
        .map(|n| enqueue(&*store, message(envelope(n, &mesh, &alice, Priority::Next, Enc::Box), vec![to(&bob)]))[0])
        .collect();
    let carol_seq =
        enqueue(&*store, message(envelope(9, &mesh, &alice, Priority::Next, Enc::Box), vec![to(&carol)]))[0];

    let removed = changed(
        &*store,
        WriteOp::Acknowledge(vec![
            (bob.id.clone(), bob_seqs[0]),
            (bob.id.clone(), bob_seqs[2]),
            // Another member's sequence number under bob's id, and a number never assigned.
            (bob.id.clone(), carol_seq),
            (carol.id.clone(), bob_seqs[1]),
            (bob.id.clone(), carol_seq + 1000),
        ]),
    );
    assert_eq!(removed, 2);
    assert_eq!(seqs(&lane(&*store, &bob, false, 10)), [bob_seqs[1]]);
    assert_eq!(seqs(&lane(&*store, &carol, false, 10)), [carol_seq]);
    assert_eq!(changed(&*store, WriteOp::Acknowledge(vec![(bob.id.clone(), bob_seqs[0])])), 0, "already gone");
    assert_eq!(changed(&*store, WriteOp::Acknowledge(Vec::new())), 0);
    assert_eq!(store.queue_depth().expect("counts"), 2);
}

/// A tracked message has a receipt per recipient, stamped at its acknowledgement and when it is
/// read; only its sender sees them; an untracked message has none; expiry takes them too.
pub fn receipts_follow_a_tracked_message_from_queue_to_read<D: TestDatabase>(database: &D) {
    let store = database.open();
    let (mesh, alice, bob, carol) = mesh_of_three(&*store, "receipts");
    let tracked = Envelope { tracked: true, ..envelope(1, &mesh, &alice, Priority::Next, Enc::Multi) };
    let seqs = enqueue(&*store, message(tracked.clone(), vec![wrapped(&bob), wrapped(&carol)]));
    // Loaded back, the entry says it is tracked; an untracked one has no receipts at all.
    assert!(lane(&*store, &bob, false, 10)[0].envelope.tracked);
    let untracked = envelope(2, &mesh, &alice, Priority::Next, Enc::Box);
    let untracked_seq = enqueue(&*store, message(untracked.clone(), vec![to(&bob)]))[0];
    let receipts = |sender: &MemberRecord, message_id: &str| {
        store.receipts(&mesh.id, &sender.id, message_id).expect("reads receipts")
    };
    assert!(receipts(&alice, &untracked.message_id).is_empty());

    let queued = receipts(&alice, &tracked.message_id);
    let members: Vec<&str> = queued.iter().map(|r| r.member_id.as_str()).collect();
    let mut expected = vec![bob.id.as_str(), carol.id.as_str()];
    expected.sort();
    assert_eq!(members, expected, "one receipt per recipient, by member id");
    assert!(queued.iter().all(|r| r.queued && r.delivered_at.is_none() && r.read_at.is_none()), "{queued:?}");
    assert_eq!(queued[0].queued_at, tracked.created_at);
    assert!(receipts(&bob, &tracked.message_id).is_empty(), "only the sender reads them");

    // Bob's client stores it; then one of his sessions reads it. Carol reads hers without an
    // acknowledgement first (reading implies delivery).
    let acked = vec![(bob.id.clone(), seqs[0]), (bob.id.clone(), untracked_seq)];
    assert_eq!(changed(&*store, WriteOp::Acknowledge(acked)), 2);
    let after_ack = receipts(&alice, &tracked.message_id);
    let bob_receipt = after_ack.iter().find(|r| r.member_id == bob.id).expect("bob's receipt");
    assert!(!bob_receipt.queued && bob_receipt.delivered_at.is_some() && bob_receipt.read_at.is_none());
    let read = |member: &MemberRecord, at_ms: u64| WriteOp::MarkRead {
        mesh_id: mesh.id.clone(),
        member_id: member.id.clone(),
        message_ids: vec![tracked.message_id.clone(), untracked.message_id.clone(), "msg-unknown".to_owned()],
        at_ms,
    };
    assert_eq!(changed(&*store, read(&bob, NOW_MS + 5)), 1, "only the tracked message has a receipt");
    assert_eq!(changed(&*store, read(&carol, NOW_MS + 6)), 1);
    assert_eq!(changed(&*store, read(&bob, NOW_MS + 9)), 0, "read once");
    let after_read = receipts(&alice, &tracked.message_id);
    let by_member = |member: &MemberRecord| after_read.iter().find(|r| r.member_id == member.id).expect("receipt");
    assert_eq!(by_member(&bob).read_at, Some(NOW_MS + 5));
    assert_eq!(by_member(&bob).delivered_at, bob_receipt.delivered_at, "the first delivery time stays");
    assert_eq!((by_member(&carol).delivered_at, by_member(&carol).read_at), (Some(NOW_MS + 6), Some(NOW_MS + 6)));
    assert!(by_member(&carol).queued, "carol's client never acknowledged: the entry is still queued");

    changed(&*store, WriteOp::ExpireBefore(tracked.created_at + 1));
    assert!(receipts(&alice, &tracked.message_id).is_empty(), "receipts expire with the queue");
}

/// Releasing a session clears the session restriction of that member's entries for it, and
/// only those.
pub fn releasing_a_session_hands_its_entries_to_every_session<D: TestDatabase>(database: &D) {
    let store = database.open();
    let (mesh, alice, bob, carol) = mesh_of_three(&*store, "sessions");
    let (leaving, staying) = (pubkey(30), pubkey(31));
    let for_session = |n: u32, member: &MemberRecord, session: &str| -> (Delivery, u64) {
        let delivery = Delivery { session_pubkey: Some(session.to_owned()), ..to(member) };
        let seq =
            enqueue(&*store, message(envelope(n, &mesh, &alice, Priority::Next, Enc::Box), vec![delivery.clone()]))[0];
        (delivery, seq)
    };
    let (_, bob_leaving) = for_session(1, &bob, &leaving);
    let (_, bob_staying) = for_session(2, &bob, &staying);
    let (_, carol_same_key) = for_session(3, &carol, &leaving);
    let bob_any = enqueue(&*store, message(envelope(4, &mesh, &alice, Priority::Next, Enc::Box), vec![to(&bob)]))[0];

    let release = |member: &MemberRecord| WriteOp::ReleaseSession {
        mesh_id: mesh.id.clone(),
        member_id: member.id.clone(),
        session_pubkey: leaving.clone(),
    };
    assert_eq!(changed(&*store, release(&bob)), 1);
    let sessions: BTreeMap<u64, Option<String>> =
        lane(&*store, &bob, false, 10).into_iter().map(|entry| (entry.seq, entry.delivery.session_pubkey)).collect();
    assert_eq!(sessions, BTreeMap::from([(bob_leaving, None), (bob_staying, Some(staying.clone())), (bob_any, None)]));
    let carol_entries = lane(&*store, &carol, false, 10);
    assert_eq!(carol_entries.len(), 1);
    assert_eq!(carol_entries[0].seq, carol_same_key);
    assert_eq!(carol_entries[0].delivery.session_pubkey.as_deref(), Some(leaving.as_str()), "another member's");
    assert_eq!(changed(&*store, release(&bob)), 0, "nothing left to release");
}

/// Expiry drops the entries created strictly before the cutoff, whole multi-recipient messages
/// included, and leaves later ones readable.
pub fn expiry_drops_only_entries_created_before_the_cutoff<D: TestDatabase>(database: &D) {
    let store = database.open();
    let (mesh, alice, bob, carol) = mesh_of_three(&*store, "expiry");
    let at =
        |n: u32, enc: Enc, created_at: u64| Envelope { created_at, ..envelope(n, &mesh, &alice, Priority::Next, enc) };

    enqueue(&*store, message(at(1, Enc::Box, NOW_MS - 3_000), vec![to(&bob)]));
    enqueue(&*store, message(at(2, Enc::Multi, NOW_MS - 2_000), vec![wrapped(&bob), wrapped(&carol)]));
    let boundary = at(3, Enc::Multi, NOW_MS - 1_000);
    let kept = enqueue(&*store, message(boundary.clone(), vec![wrapped(&bob), wrapped(&carol)]));
    let recent = at(4, Enc::Box, NOW_MS);
    let recent_seq = enqueue(&*store, message(recent.clone(), vec![to(&carol)]))[0];

    assert_eq!(changed(&*store, WriteOp::ExpireBefore(NOW_MS - 1_000)), 3);
    assert_eq!(store.queue_depth().expect("counts"), 3);
    let bob_entries = lane(&*store, &bob, false, 10);
    assert_eq!(bob_entries.len(), 1);
    assert_entry(&bob_entries[0], kept[0], &boundary, &wrapped(&bob));
    let carol_entries = lane(&*store, &carol, false, 10);
    assert_eq!(carol_entries.len(), 2);
    assert_entry(&carol_entries[0], kept[1], &boundary, &wrapped(&carol));
    assert_entry(&carol_entries[1], recent_seq, &recent, &to(&carol));
    assert_eq!(changed(&*store, WriteOp::ExpireBefore(NOW_MS - 1_000)), 0, "a second sweep finds nothing");
}

/// The metadata-only audit entries of an enqueue are written with it.
pub fn an_enqueue_appends_its_audit_entries<D: TestDatabase>(database: &D) {
    let store = database.open();
    let (mesh, alice) = mesh_with_admin(&*store, "audited", 1, NOW_MS);
    let bob = add_member(&*store, &mesh, 2, NOW_MS + 1);
    let before = audit_log(&*store, &mesh.id).len();
    let payload = json!({"messageId": "msg-1", "recipients": 1, "bytes": 42});
    let mut sent = message(envelope(1, &mesh, &alice, Priority::Next, Enc::Box), vec![to(&bob)]);
    sent.audit = vec![audit_event(&mesh.id, "message_sent", Some(&alice.id), payload.clone())];
    enqueue(&*store, sent);

    let log = audit_log(&*store, &mesh.id);
    assert_eq!(log.len(), before + 1);
    let entry = &log[before];
    assert_eq!((entry.event_type.as_str(), entry.actor.as_deref()), ("message_sent", Some(alice.id.as_str())));
    assert_eq!(entry.payload, payload);
    assert!(store.verify_audit(&mesh.id).expect("verifies").valid);
}

/// A reopened store numbers new entries above every entry still queued, so paging by
/// `after_seq` stays in order across a restart.
pub fn sequence_numbers_stay_above_queued_entries_after_a_reopen<D: TestDatabase>(database: &D) {
    let store = database.open();
    let (mesh, alice, bob, carol) = mesh_of_three(&*store, "restart");
    let mut before: Vec<u64> = (0..3)
        .map(|n| enqueue(&*store, message(envelope(n, &mesh, &alice, Priority::Next, Enc::Box), vec![to(&bob)]))[0])
        .collect();
    before.extend(enqueue(
        &*store,
        message(envelope(3, &mesh, &alice, Priority::Next, Enc::Multi), vec![wrapped(&bob), wrapped(&carol)]),
    ));
    drop(store);

    let store = database.open();
    let after = enqueue(&*store, message(envelope(4, &mesh, &alice, Priority::Next, Enc::Box), vec![to(&bob)]))[0];
    let highest = before.iter().copied().max().expect("entries");
    assert!(after > highest, "new entry {after} above queued {before:?}");
    let bob_seqs = seqs(&lane(&*store, &bob, false, 2));
    assert_eq!(bob_seqs, [before[0], before[1], before[2], before[3], after]);
    assert_eq!(store.queue_depth().expect("counts"), 6);
}

/// Writes submitted without a completion are committed and readable once `flush` returns.
pub fn writes_submitted_before_a_flush_are_visible_after_it<D: TestDatabase>(database: &D) {
    let store = database.open();
    let (mesh, alice) = mesh_with_admin(&*store, "flush", 1, NOW_MS);
    let bob = add_member(&*store, &mesh, 2, NOW_MS + 1);
    for n in 0..40 {
        store.submit(
            WriteOp::Enqueue(message(envelope(n, &mesh, &alice, Priority::Next, Enc::Box), vec![to(&bob)])),
            None,
        );
    }
    let peer = PeerStateRecord { member_id: bob.id.clone(), last_seen_at: NOW_MS, ..PeerStateRecord::default() };
    store.submit(WriteOp::SavePeerState(peer.clone()), None);
    store.flush().expect("flushes");

    assert_eq!(store.queue_depth().expect("counts"), 40);
    let entries = lane(&*store, &bob, false, 16);
    let ids: Vec<String> = entries.iter().map(|entry| entry.envelope.message_id.clone()).collect();
    assert_eq!(ids, (0..40).map(|n| format!("msg-{n}")).collect::<Vec<_>>(), "in submission order");
    assert_eq!(store.peer_states(&mesh.id).expect("reads"), [peer]);
}

/// Several threads submit at once: every completion runs exactly once, sequence numbers are
/// unique and increase in the order completions run (commit order) and in each thread's
/// submission order, and every entry lands in its recipient's queue.
pub fn concurrent_submits_complete_once_in_commit_order<D: TestDatabase>(database: &D) {
    const THREADS: u32 = 8;
    const MESSAGES: u32 = 120;
    let store = database.open();
    let (mesh, alice) = mesh_with_admin(&*store, "busy", 1, NOW_MS);
    let members: Vec<MemberRecord> = (2..6).map(|n| add_member(&*store, &mesh, n, NOW_MS + u64::from(n))).collect();

    let (sender, completions) = std::sync::mpsc::channel::<(u32, u32, StoreResult<WriteOutcome>)>();
    std::thread::scope(|scope| {
        for thread in 0..THREADS {
            let (store, sender, mesh, alice, members) = (&store, sender.clone(), &mesh, &alice, &members);
            scope.spawn(move || {
                for index in 0..MESSAGES {
                    let n = thread * MESSAGES + index;
                    let op = if index % 10 == 9 {
                        WriteOp::Audit(vec![audit_event(&mesh.id, "custom", None, json!({ "n": n }))])
                    } else if index % 5 == 4 {
                        let deliveries = vec![wrapped(&members[0]), wrapped(&members[1 + n as usize % 3])];
                        WriteOp::Enqueue(message(envelope(n, mesh, alice, Priority::Next, Enc::Multi), deliveries))
                    } else {
                        let recipient = &members[n as usize % members.len()];
                        WriteOp::Enqueue(message(
                            envelope(n, mesh, alice, Priority::Next, Enc::Box),
                            vec![to(recipient)],
                        ))
                    };
                    let sender = sender.clone();
                    store.submit(
                        op,
                        Some(Box::new(move |outcome| {
                            let _ = sender.send((thread, index, outcome));
                        })),
                    );
                }
            });
        }
    });
    drop(sender);

    let total = (THREADS * MESSAGES) as usize;
    let mut ran = Vec::with_capacity(total);
    while ran.len() < total {
        let (thread, index, outcome) = completions.recv_timeout(COMPLETION_TIMEOUT).expect("every completion runs");
        ran.push((thread, index, outcome.expect("the write commits")));
    }
    store.flush().expect("flushes");
    assert!(completions.try_recv().is_err(), "no completion runs twice");
    let distinct: BTreeSet<(u32, u32)> = ran.iter().map(|(thread, index, _)| (*thread, *index)).collect();
    assert_eq!(distinct.len(), total, "each write completed once");

    let in_commit_order: Vec<u64> = ran
        .iter()
        .flat_map(|(_, _, outcome)| match outcome {
            WriteOutcome::Enqueued(slots) => slots.iter().map(|slot| slot.seq).collect(),
            WriteOutcome::Changed(_) => Vec::new(),
        })
        .collect();
    assert!(in_commit_order.windows(2).all(|pair| pair[0] < pair[1]), "sequence numbers rise in commit order");
    for thread in 0..THREADS {
        let mut mine: Vec<(u32, u64)> = ran
            .iter()
            .filter(|(from, _, _)| *from == thread)
            .filter_map(|(_, index, outcome)| match outcome {
                WriteOutcome::Enqueued(slots) => Some((*index, slots[0].seq)),
                WriteOutcome::Changed(_) => None,
            })
            .collect();
        mine.sort_unstable();
        assert!(mine.windows(2).all(|pair| pair[0].1 < pair[1].1), "thread {thread}: in submission order");
    }

    let queued: usize = members.iter().map(|member| lane(&*store, member, false, 64).len()).sum();
    assert_eq!(queued, in_commit_order.len(), "every delivery is queued");
    assert_eq!(store.queue_depth().expect("counts"), in_commit_order.len() as u64);
    let audited = audit_log(&*store, &mesh.id).iter().filter(|entry| entry.event_type == "custom").count();
    assert_eq!(audited, (THREADS * MESSAGES / 10) as usize);
    assert!(store.verify_audit(&mesh.id).expect("verifies").valid);
}

/// A member's saved state reads back as saved, is replaced by the next save, and is listed
/// only under its own mesh; a state for an unknown member is not kept.
pub fn peer_state_is_saved_per_member_and_replaced<D: TestDatabase>(database: &D) {
    let store = database.open();
    let (mesh, alice) = mesh_with_admin(&*store, "state", 1, NOW_MS);
    let bob = add_member(&*store, &mesh, 2, NOW_MS + 1);
    let (other_mesh, _) = mesh_with_admin(&*store, "elsewhere", 3, NOW_MS + 2);

    let first = PeerStateRecord {
        member_id: alice.id.clone(),
        groups: vec![
            GroupMembership { name: "backend".into(), role: Some("lead".into()) },
            GroupMembership { name: "ops".into(), role: None },
        ],
        summary: Some("reviewing the store".into()),
        display_name: Some("alice@laptop".into()),
        stats: Stats { messages_in: 3, messages_out: 5, tool_calls: 8, errors: 1, uptime: 120 },
        last_seen_at: NOW_MS + 10,
    };
    store.submit(WriteOp::SavePeerState(first.clone()), None);
    store.flush().expect("flushes");
    assert_eq!(store.peer_states(&mesh.id).expect("reads"), std::slice::from_ref(&first));

    let replaced = PeerStateRecord {
        groups: Vec::new(),
        summary: None,
        display_name: None,
        stats: Stats { messages_in: 4, ..first.stats },
        last_seen_at: NOW_MS + 20,
        ..first.clone()
    };
    assert_eq!(changed(&*store, WriteOp::SavePeerState(replaced.clone())), 1);
    let for_bob = PeerStateRecord { member_id: bob.id.clone(), last_seen_at: NOW_MS + 30, ..first.clone() };
    assert_eq!(changed(&*store, WriteOp::SavePeerState(for_bob.clone())), 1);
    let unknown = PeerStateRecord { member_id: "mem_unknown".into(), ..first };
    assert_eq!(changed(&*store, WriteOp::SavePeerState(unknown)), 0, "nothing saved for an unknown member");

    let mut states = store.peer_states(&mesh.id).expect("reads");
    states.sort_by(|a, b| a.member_id.cmp(&b.member_id));
    let mut expected = vec![replaced, for_bob];
    expected.sort_by(|a, b| a.member_id.cmp(&b.member_id));
    assert_eq!(states, expected);
    assert!(store.peer_states(&other_mesh.id).expect("reads").is_empty());
}

/// A schedule of `sender` to `recipients`, first due at `next_fire_at`.
fn schedule(
    n: u32,
    mesh: &MeshRecord,
    sender: &MemberRecord,
    recipients: &[&MemberRecord],
    next_fire_at: u64,
    cron: Option<&str>,
) -> ScheduleRecord {
    let sealed = envelope(n, mesh, sender, Priority::Now, Enc::Multi);
    ScheduleRecord {
        id: format!("sched-{n}"),
        mesh_id: mesh.id.clone(),
        sender_member_id: sender.id.clone(),
        sender_member_pubkey: sender.pubkey.clone(),
        sender_pubkey: sealed.sender_pubkey,
        sender_session_sig: sealed.sender_session_sig,
        target_spec: "*".to_owned(),
        priority: Priority::Now,
        enc: Enc::Multi,
        nonce: sealed.nonce,
        ciphertext: sealed.ciphertext,
        deliveries: recipients.iter().map(|member| wrapped(member)).collect(),
        cron: cron.map(str::to_owned),
        tz: cron.map(|_| "Europe/Berlin".to_owned()),
        next_fire_at,
        fired: 0,
        created_at: NOW_MS,
    }
}

/// The occurrence `due_at` of `schedule`, as the broker queues it.
fn occurrence(schedule: &ScheduleRecord, due_at: u64, next: Option<u64>) -> WriteOp {
    let envelope = Envelope {
        message_id: format!("{}-{due_at}", schedule.id),
        mesh_id: schedule.mesh_id.clone(),
        sender_member_id: schedule.sender_member_id.clone(),
        sender_member_pubkey: schedule.sender_member_pubkey.clone(),
        sender_pubkey: schedule.sender_pubkey.clone(),
        sender_session_sig: schedule.sender_session_sig.clone(),
        target_spec: schedule.target_spec.clone(),
        priority: schedule.priority,
        enc: schedule.enc,
        nonce: schedule.nonce.clone(),
        ciphertext: schedule.ciphertext.clone(),
        created_at: due_at,
        tracked: false,
    };
    WriteOp::Enqueue(NewMessage {
        envelope: Arc::new(envelope),
        deliveries: schedule.deliveries.clone(),
        audit: Vec::new(),
        fire: Some(ScheduleFire { schedule_id: schedule.id.clone(), due_at, next }),
    })
}

/// Schedules are stored whole, listed, limited per member, found when due, fired exactly once
/// per occurrence (queueing and moving on in one write), and cancelled, each audited.
pub fn schedules_fire_each_occurrence_once_and_are_cancelled<D: TestDatabase>(database: &D) {
    let store = database.open();
    let (mesh, alice, bob, carol) = mesh_of_three(&*store, "schedules");
    let once = schedule(1, &mesh, &alice, &[&bob, &carol], NOW_MS + 1_000, None);
    let weekly = schedule(2, &mesh, &alice, &[&bob], NOW_MS + 500, Some("0 9 * * 1"));
    store.create_schedule(&once, 2).expect("stores a schedule");
    store.create_schedule(&weekly, 2).expect("stores a recurring one");
    let third = schedule(3, &mesh, &alice, &[&bob], NOW_MS, None);
    assert!(
        matches!(store.create_schedule(&third, 2), Err(StoreError::Conflict(code)) if code == "schedule_limit"),
        "a member's third schedule is over a limit of two"
    );
    store.create_schedule(&schedule(4, &mesh, &bob, &[&alice], NOW_MS + 9_000, None), 2).expect("bob's own limit");
    let listed = store.schedules(&mesh.id, None).expect("lists");
    assert_eq!(listed.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(), ["sched-2", "sched-1", "sched-4"]);
    assert_eq!(listed[1], once, "stored whole, recipients and their keys included");
    let bobs = store.schedules(&mesh.id, Some(&bob.id)).expect("lists one member's");
    assert_eq!(bobs.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(), ["sched-4"]);

    let due = store.due_schedules(NOW_MS + 1_000, 10).expect("finds due ones");
    assert_eq!(due.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(), ["sched-2", "sched-1"], "soonest first");
    assert_eq!(store.due_schedules(NOW_MS + 1_000, 1).expect("limited").len(), 1);

    // The recurring one fires and moves on; firing the same occurrence again queues nothing.
    let next_week = NOW_MS + 7 * 86_400_000;
    let slots = enqueue_slots(
        &*store,
        match occurrence(&weekly, NOW_MS + 500, Some(next_week)) {
            WriteOp::Enqueue(message) => message,
            _ => unreachable!(),
        },
    );
    assert_eq!(slots.len(), 1);
    assert!(
        matches!(write(&*store, occurrence(&weekly, NOW_MS + 500, Some(next_week))), Err(StoreError::Conflict(_))),
        "an occurrence is queued once"
    );
    assert_eq!(lane(&*store, &bob, true, 10).len(), 1, "the refused second firing left nothing queued");
    let moved = store.schedules(&mesh.id, None).expect("lists").into_iter().find(|s| s.id == "sched-2").expect("kept");
    assert_eq!((moved.next_fire_at, moved.fired), (next_week, 1));

    // The one-shot fires once and is gone.
    enqueue(
        &*store,
        match occurrence(&once, NOW_MS + 1_000, None) {
            WriteOp::Enqueue(message) => message,
            _ => unreachable!(),
        },
    );
    assert!(matches!(write(&*store, occurrence(&once, NOW_MS + 1_000, None)), Err(StoreError::Conflict(_))));
    assert_eq!(lane(&*store, &carol, true, 10).len(), 1);
    assert!(store.schedules(&mesh.id, None).expect("lists").iter().all(|s| s.id != "sched-1"), "a one-shot ends");

    // Cancelled: gone, and a cancelled schedule cannot fire.
    assert!(store.cancel_schedule(&mesh.id, "sched-2", Some(&alice.id)).expect("cancels"));
    assert!(!store.cancel_schedule(&mesh.id, "sched-2", Some(&alice.id)).expect("answers"), "already gone");
    assert!(!store.cancel_schedule("another-mesh", "sched-4", None).expect("answers"), "only within its mesh");
    assert!(matches!(write(&*store, occurrence(&weekly, next_week, None)), Err(StoreError::Conflict(_))));
    let types: Vec<String> = audit_log(&*store, &mesh.id).into_iter().map(|e| e.event_type).collect();
    assert_eq!(types.iter().filter(|t| *t == "schedule_created").count(), 3, "{types:?}");
    assert_eq!(types.iter().filter(|t| *t == "schedule_cancelled").count(), 1, "{types:?}");
}
