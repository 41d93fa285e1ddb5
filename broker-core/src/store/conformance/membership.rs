//! The membership log: appended with every change of a mesh's members, in the same
//! transaction, and readable in pages that verify back to the creator's key.

use super::{NOW_MS, TestDatabase, assert_conflict};
use crate::crypto::{self, Keypair};
use crate::invite::{Invite, InviteTerms};
use crate::membership::{self, Admission, Change, LogEntry, RemovalReason, Roster, Standing};
use crate::protocol::Role;
use crate::store::{DeviceInfo, InviteRecord, MembershipAction, NewMember, Store};

fn key(n: u8) -> Keypair {
    Keypair::from_seed(&[n; 32])
}

fn member(key: &Keypair, name: &str, admission: Option<Admission>) -> NewMember {
    NewMember { pubkey: key.public_hex(), display_name: name.to_owned(), admission, ..NewMember::default() }
}

/// A new mesh id and `creator`'s genesis for it.
fn genesis_by(creator: &Keypair) -> (String, Admission) {
    let mesh_id = crate::ids::new_id("mesh");
    let signature = creator.sign_hex(membership::genesis_bytes(&mesh_id, &creator.public_hex()).as_bytes());
    (mesh_id.clone(), Admission::Genesis { mesh_id, signature })
}

fn whole_log<S: Store>(store: &S, mesh_id: &str) -> Vec<LogEntry> {
    store.membership_log(mesh_id, 0, 1000).expect("reads the log")
}

fn verified<S: Store>(store: &S, mesh_id: &str) -> Roster {
    membership::verify(mesh_id, None, None, &whole_log(store, mesh_id)).expect("the log verifies")
}

pub fn the_membership_log_records_every_change_verifiably<D: TestDatabase>(database: &D) {
    let store = database.open();
    let creator = key(1);
    let (mesh_id, genesis) = genesis_by(&creator);
    let (mesh, admin) =
        store.create_mesh("logged", "", None, &member(&creator, "creator", Some(genesis)), NOW_MS).expect("creates");
    assert_eq!(mesh.id, mesh_id, "the creator chose the id it signed");

    // Joined with an invite and the joiner's proof.
    let (joiner, admitted, enrolled) = (key(2), key(3), key(4));
    let terms = InviteTerms {
        mesh_id: mesh.id.clone(),
        mesh_slug: mesh.slug.clone(),
        mesh_name: mesh.name.clone(),
        broker_url: "http://127.0.0.1:7900".into(),
        invite_id: "inv-logged".into(),
        role: Role::Member,
        max_uses: 1,
        expires_at: NOW_MS / 1000 + 3600,
    };
    let invite = Invite::sign(terms, &creator);
    store
        .create_invite(&InviteRecord {
            id: invite.invite_id.clone(),
            mesh_id: mesh.id.clone(),
            role: Role::Member,
            max_uses: 1,
            used_count: 0,
            expires_at: invite.expires_at,
            issuer_member_id: admin.id.clone(),
            created_at: NOW_MS,
            revoked_at: None,
            email: None,
        })
        .expect("creates the invite");
    let proof = joiner.sign_hex(crypto::join_proof_bytes(&invite.invite_id, &mesh.id, &joiner.public_hex()).as_bytes());
    let joined = Admission::Invite { token: invite.to_token(), proof };
    let joined = store.redeem_invite(&invite.invite_id, &member(&joiner, "joiner", Some(joined)), NOW_MS + 1);
    let joined = joined.expect("redeems").member;

    // Admitted by the creator's signature, and enrolled on the broker's word.
    let after = whole_log(&*store, &mesh.id).len() as u64;
    let signature =
        creator.sign_hex(membership::admission_bytes(&mesh.id, &admitted.public_hex(), Role::Admin, after).as_bytes());
    let by_admin = Admission::Admin { by: creator.public_hex(), after, signature };
    store
        .add_member(&mesh.id, &member(&admitted, "admitted", Some(by_admin)), Role::Admin, None, NOW_MS + 2)
        .expect("adds");
    let account = store.create_account("dora", None, NOW_MS).expect("creates the account");
    let device = store.create_device(&account.id, &DeviceInfo::default(), "hash-dora", NOW_MS + 60_000, NOW_MS);
    let device = device.expect("creates the device");
    let on_device = NewMember { device_id: Some(device.id.clone()), ..member(&enrolled, "enrolled", None) };
    store.add_member(&mesh.id, &on_device, Role::Member, None, NOW_MS + 3).expect("enrols");

    // A refused change writes nothing.
    let before = whole_log(&*store, &mesh.id);
    assert_conflict(
        store.add_member(&mesh.id, &member(&key(9), "joiner", None), Role::Member, None, NOW_MS),
        "name_taken",
    );
    assert_eq!(whole_log(&*store, &mesh.id), before);

    let roster = verified(&*store, &mesh.id);
    for (key, standing) in [
        (&creator, Standing::Verified),
        (&joiner, Standing::Verified),
        (&admitted, Standing::Verified),
        (&enrolled, Standing::Vouched),
    ] {
        assert_eq!(roster.members[&key.public_hex()].standing, standing);
    }
    assert_eq!(roster.members[&admitted.public_hex()].role, Role::Admin);

    // Removals: ban (and unban, vouched), leave, a revoked device.
    store.change_membership(&joined.id, MembershipAction::Ban, None, NOW_MS + 4).expect("bans");
    store.change_membership(&joined.id, MembershipAction::Ban, None, NOW_MS + 5).expect("bans again: no entry");
    store.change_membership(&joined.id, MembershipAction::Unban, None, NOW_MS + 6).expect("unbans");
    let admitted_member = store.member_by_pubkey(&mesh.id, &admitted.public_hex()).expect("reads").expect("exists");
    store.change_membership(&admitted_member.id, MembershipAction::Leave, None, NOW_MS + 7).expect("leaves");
    store.revoke_device(&device.id, None, NOW_MS + 8).expect("revokes");

    let log = whole_log(&*store, &mesh.id);
    let removals: Vec<(String, RemovalReason)> = log
        .iter()
        .filter_map(|entry| match &entry.change {
            Change::Removed { member, reason } => Some((member.clone(), *reason)),
            _ => None,
        })
        .collect();
    assert_eq!(
        removals,
        [
            (joiner.public_hex(), RemovalReason::Ban),
            (admitted.public_hex(), RemovalReason::Leave),
            (enrolled.public_hex(), RemovalReason::Revoked),
        ]
    );
    let roster = verified(&*store, &mesh.id);
    let joiner = &roster.members[&joiner.public_hex()];
    assert_eq!((joiner.active, joiner.standing), (true, Standing::Vouched), "an unban is the broker's word");
    assert!(!roster.members[&admitted.public_hex()].active);
    assert!(!roster.members[&enrolled.public_hex()].active);
    assert_eq!(roster.head.seq, log.len() as u64);

    // Pages, and a second store on the same database sees the same log.
    let page = store.membership_log(&mesh.id, 2, 2).expect("pages");
    assert_eq!(page, log[2..4]);
    assert_eq!(whole_log(&*database.open(), &mesh.id), log);
}

pub fn a_mesh_without_a_genesis_keeps_no_log<D: TestDatabase>(database: &D) {
    let store = database.open();
    let (mesh, admin) =
        store.create_mesh("unlogged", "", None, &member(&key(1), "admin", None), NOW_MS).expect("creates");
    store.add_member(&mesh.id, &member(&key(2), "member", None), Role::Member, None, NOW_MS + 1).expect("adds");
    store.change_membership(&admin.id, MembershipAction::Leave, None, NOW_MS + 2).expect("leaves");
    assert!(whole_log(&*store, &mesh.id).is_empty());

    // A genesis for an id already taken is refused.
    let creator = key(3);
    let signature = creator.sign_hex(membership::genesis_bytes(&mesh.id, &creator.public_hex()).as_bytes());
    let genesis = Admission::Genesis { mesh_id: mesh.id.clone(), signature };
    let taken = store.create_mesh("again", "", None, &member(&creator, "creator", Some(genesis)), NOW_MS + 3);
    assert!(matches!(taken, Err(crate::store::StoreError::Conflict(_))), "{taken:?}");
}

pub fn concurrent_membership_changes_keep_one_chain<D: TestDatabase>(database: &D) {
    let store = database.open();
    let creator = key(1);
    let (mesh_id, genesis) = genesis_by(&creator);
    store.create_mesh("busy", "", None, &member(&creator, "creator", Some(genesis)), NOW_MS).expect("creates");

    // Two stores on one database (two broker processes) enrol members at once.
    let threads: Vec<_> = (0..2u8)
        .map(|process| {
            let (store, mesh_id) = (database.open(), mesh_id.clone());
            std::thread::spawn(move || {
                for n in 0..10u8 {
                    let key = key(10 + process * 20 + n);
                    let name = format!("p{process}-{n}");
                    store
                        .add_member(&mesh_id, &member(&key, &name, None), Role::Member, None, NOW_MS + 1)
                        .expect("adds");
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("the thread finishes");
    }
    let roster = verified(&*store, &mesh_id);
    assert_eq!((roster.members.len(), roster.head.seq), (21, 21));
}

pub fn endorsements_are_kept_per_mesh_and_device_key<D: TestDatabase>(database: &D) {
    let store = database.open();
    let record = |mesh: &str, device: &str, signature: &str| crate::store::EndorsementRecord {
        mesh_id: mesh.to_owned(),
        device_key: device.to_owned(),
        sponsor: key(1).public_hex(),
        signature: signature.to_owned(),
        created_at: NOW_MS,
    };
    store.add_endorsements(&[record("mesh_a", "device-1", "s1"), record("mesh_b", "device-1", "s2")]).expect("keeps");
    assert_eq!(store.endorsement("mesh_a", "device-1").expect("reads"), Some(record("mesh_a", "device-1", "s1")));
    assert_eq!(store.endorsement("mesh_b", "device-1").expect("reads"), Some(record("mesh_b", "device-1", "s2")));
    assert_eq!(store.endorsement("mesh_a", "device-2").expect("reads"), None);
    store.add_endorsements(&[record("mesh_a", "device-1", "s3")]).expect("replaces");
    assert_eq!(store.endorsement("mesh_a", "device-1").expect("reads"), Some(record("mesh_a", "device-1", "s3")));
}

pub fn epochs_advance_by_compare_and_set_with_their_wraps<D: TestDatabase>(database: &D) {
    use crate::meshkey::{EpochRecord, Wrap, new_key};
    let store = database.open();
    let (creator, other) = (key(1), key(2));
    let (mesh, _) = store.create_mesh("keys", "", None, &member(&creator, "creator", None), NOW_MS).expect("creates");
    let head = membership::Head { seq: 1, hash: "h".into() };
    let epoch = |n: u64| EpochRecord::sign(&mesh.id, n, &new_key(), &head, &creator);
    let wraps = |n: u64| {
        let key = new_key();
        [Wrap::seal(n, &key, &creator, &creator.public()), Wrap::seal(n, &key, &creator, &other.public())]
    };

    assert_eq!(store.mesh_epochs(&mesh.id).expect("reads"), []);
    assert_conflict(store.create_epoch(&mesh.id, &epoch(2), &[], NOW_MS), "epoch_taken");
    let first = epoch(1);
    store.create_epoch(&mesh.id, &first, &wraps(1), NOW_MS).expect("the first epoch");
    assert_conflict(store.create_epoch(&mesh.id, &epoch(1), &wraps(1), NOW_MS), "epoch_taken");
    assert_eq!(store.wrapped(&mesh.id, 1).expect("reads").len(), 2);

    // Two processes race for epoch 2: exactly one wins.
    let racers: Vec<_> = (0..2)
        .map(|_| {
            let (store, mesh_id, record) = (database.open(), mesh.id.clone(), epoch(2));
            std::thread::spawn(move || store.create_epoch(&mesh_id, &record, &[], NOW_MS + 1))
        })
        .collect();
    let results: Vec<_> = racers.into_iter().map(|t| t.join().expect("the thread finishes")).collect();
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1, "{results:?}");
    assert_eq!(store.mesh_epochs(&mesh.id).expect("reads").len(), 2);
    assert_eq!(store.mesh_epochs(&mesh.id).expect("reads")[0], first);

    // Wraps added later; a recipient's first wrap of an epoch is kept.
    let late = wraps(2);
    store.add_wraps(&mesh.id, &late, NOW_MS + 2).expect("adds");
    store.add_wraps(&mesh.id, &wraps(2), NOW_MS + 3).expect("adds again");
    let mine = store.wraps_for(&mesh.id, &other.public_hex()).expect("reads");
    assert_eq!(mine.iter().map(|w| w.epoch).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(mine[1], late[1]);
    let audited = super::audit_types(&*store, &mesh.id).iter().filter(|t| *t == "epoch_created").count();
    assert_eq!(audited, 2);
}

pub fn a_key_history_setting_goes_on_the_log_the_admin_saw<D: TestDatabase>(database: &D) {
    use crate::membership::KeyHistory;
    let store = database.open();
    let creator = key(1);
    let (_, genesis) = genesis_by(&creator);
    let (mesh, _) =
        store.create_mesh("history", "", None, &member(&creator, "creator", Some(genesis)), NOW_MS).expect("creates");
    let setting = |after: u64| {
        let signature =
            creator.sign_hex(membership::key_history_bytes(&mesh.id, KeyHistory::FromAdmission, after).as_bytes());
        Change::KeyHistory { mode: KeyHistory::FromAdmission, by: creator.public_hex(), after, signature }
    };
    assert_conflict(store.append_key_history(&mesh.id, &setting(0), "actor", NOW_MS), "log_moved");
    let entry = store.append_key_history(&mesh.id, &setting(1), "actor", NOW_MS).expect("appends");
    assert_eq!(entry.seq, 2);
    assert_eq!(verified(&*store, &mesh.id).key_history, KeyHistory::FromAdmission);
    assert!(super::audit_types(&*store, &mesh.id).contains(&"key_history_set".to_owned()));
    let removal = Change::Removed { member: creator.public_hex(), reason: RemovalReason::Leave };
    assert!(matches!(
        store.append_key_history(&mesh.id, &removal, "actor", NOW_MS),
        Err(crate::store::StoreError::Invalid(_))
    ));
}
