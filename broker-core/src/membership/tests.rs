use super::*;
use crate::crypto::Keypair;
use crate::invite::InviteTerms;

const MESH: &str = "mesh_test";
const AT: u64 = 1_700_000_000_000;

/// Builds logs the way an honest broker appends them.
struct Log {
    entries: Vec<LogEntry>,
}

impl Log {
    fn new(creator: &Keypair) -> Log {
        let signature = creator.sign_hex(genesis_bytes(MESH, &creator.public_hex()).as_bytes());
        let mut log = Log { entries: Vec::new() };
        log.push(Change::Genesis { creator: creator.public_hex(), signature });
        log
    }

    fn push(&mut self, change: Change) {
        let prev = self.entries.last().map_or(LOG_START.to_owned(), |e| e.hash.clone());
        let seq = self.entries.len() as u64 + 1;
        self.entries.push(LogEntry::new(seq, AT + seq, &prev, change));
    }

    fn invite(&mut self, issuer: &Keypair, joiner: &Keypair, invite_id: &str, max_uses: u32) {
        let invite = invite_from(issuer, invite_id, max_uses);
        self.redeem(&invite, joiner);
    }

    fn redeem(&mut self, invite: &Invite, joiner: &Keypair) {
        let proof = joiner.sign_hex(crypto::join_proof_bytes(&invite.invite_id, MESH, &joiner.public_hex()).as_bytes());
        self.push(Change::Invited { member: joiner.public_hex(), role: invite.role, invite: invite.to_token(), proof });
    }

    fn admit(&mut self, admin: &Keypair, member: &Keypair, role: Role) {
        let after = self.entries.len() as u64;
        let signature = admin.sign_hex(admission_bytes(MESH, &member.public_hex(), role, after).as_bytes());
        self.push(Change::Admitted {
            member: member.public_hex(),
            role,
            via: AdmittedVia::Admin,
            by: Some(admin.public_hex()),
            after: Some(after),
            signature: Some(signature),
        });
    }

    fn remove(&mut self, member: &Keypair, reason: RemovalReason) {
        self.push(Change::Removed { member: member.public_hex(), reason });
    }

    fn verify(&self) -> Result<Roster, LogError> {
        verify(MESH, None, None, &self.entries)
    }
}

fn invite_from(issuer: &Keypair, invite_id: &str, max_uses: u32) -> Invite {
    Invite::sign(
        InviteTerms {
            mesh_id: MESH.into(),
            mesh_slug: "test".into(),
            mesh_name: "Test".into(),
            broker_url: "http://127.0.0.1:7900".into(),
            invite_id: invite_id.into(),
            role: Role::Member,
            max_uses,
            expires_at: AT / 1000 + 3600,
        },
        issuer,
    )
}

fn vouched(member: &Keypair, via: AdmittedVia) -> Change {
    Change::Admitted { member: member.public_hex(), role: Role::Member, via, by: None, after: None, signature: None }
}

#[test]
fn every_kind_of_admission_and_removal_makes_the_roster() {
    let (creator, alice, bob, carol, dave) =
        (Keypair::generate(), Keypair::generate(), Keypair::generate(), Keypair::generate(), Keypair::generate());
    let mut log = Log::new(&creator);
    log.invite(&creator, &alice, "inv_a", 1);
    log.admit(&creator, &bob, Role::Admin);
    log.invite(&bob, &carol, "inv_b", 1);
    log.push(vouched(&dave, AdmittedVia::Enrolment));
    log.remove(&alice, RemovalReason::Kick);

    let roster = log.verify().expect("the log verifies");
    assert_eq!(roster.creator, creator.public_hex());
    assert_eq!(roster.head, Head { seq: 6, hash: log.entries[5].hash.clone() });
    for (key, verified) in [(&creator, true), (&bob, true), (&carol, true), (&alice, false), (&dave, false)] {
        assert_eq!(roster.is_verified_member(&key.public_hex()), verified, "{}", key.public_hex());
    }
    let alice = &roster.members[&alice.public_hex()];
    assert_eq!((alice.active, alice.removed, alice.standing), (false, Some(RemovalReason::Kick), Standing::Verified));
    assert_eq!(roster.members[&dave.public_hex()].standing, Standing::Vouched);
    assert_eq!(roster.members[&bob.public_hex()].role, Role::Admin);
}

#[test]
fn a_member_the_broker_invents_is_never_verified() {
    let (creator, member, intruder) = (Keypair::generate(), Keypair::generate(), Keypair::generate());
    let mut base = Log::new(&creator);
    base.invite(&creator, &member, "inv_a", 1);

    // Admitted on the broker's word alone: shown as vouched, never verified.
    let mut log = Log { entries: base.entries.clone() };
    log.push(vouched(&intruder, AdmittedVia::Enrolment));
    assert!(!log.verify().expect("the log verifies").is_verified_member(&intruder.public_hex()));

    // A signature by a plain member, or by a key of the broker's own, admits nobody.
    for signer in [&member, &intruder] {
        let mut log = Log { entries: base.entries.clone() };
        log.admit(signer, &intruder, Role::Member);
        assert!(matches!(log.verify(), Err(LogError::Invalid { seq: 3, .. })), "signed by {}", signer.public_hex());
    }
    // Nor does an invite a non-admin signed, or one whose proof another key made.
    let mut log = Log { entries: base.entries.clone() };
    log.invite(&member, &intruder, "inv_b", 1);
    assert!(matches!(log.verify(), Err(LogError::Invalid { seq: 3, .. })));
    let mut log = Log { entries: base.entries.clone() };
    let invite = invite_from(&creator, "inv_c", 1);
    let proof = member.sign_hex(crypto::join_proof_bytes("inv_c", MESH, &intruder.public_hex()).as_bytes());
    log.push(Change::Invited { member: intruder.public_hex(), role: Role::Member, invite: invite.to_token(), proof });
    assert!(matches!(log.verify(), Err(LogError::Invalid { seq: 3, .. })));
    // A signed admission with a field missing is refused, not read as vouched.
    let mut log = Log { entries: base.entries.clone() };
    log.push(Change::Admitted {
        member: intruder.public_hex(),
        role: Role::Admin,
        via: AdmittedVia::Admin,
        by: Some(creator.public_hex()),
        after: None,
        signature: None,
    });
    assert!(matches!(log.verify(), Err(LogError::Invalid { seq: 3, .. })));
}

#[test]
fn statements_admit_once_and_never_undo_a_later_removal() {
    let (creator, member, other) = (Keypair::generate(), Keypair::generate(), Keypair::generate());
    let mut log = Log::new(&creator);
    log.admit(&creator, &member, Role::Member);
    let admission = log.entries[1].change.clone();
    log.remove(&member, RemovalReason::Ban);
    assert!(log.verify().is_ok());

    // The broker replays the admission an admin signed before the ban.
    let mut replayed = Log { entries: log.entries.clone() };
    replayed.push(admission);
    assert!(matches!(replayed.verify(), Err(LogError::Invalid { seq: 4, .. })));
    // An admin admitting it again after the ban is fine.
    let mut readmitted = Log { entries: log.entries.clone() };
    readmitted.admit(&creator, &member, Role::Member);
    assert!(readmitted.verify().expect("the log verifies").is_verified_member(&member.public_hex()));

    // A single-use invite redeemed twice, and a key that left coming back through an invite.
    let mut log = Log::new(&creator);
    let invite = invite_from(&creator, "inv_once", 1);
    log.redeem(&invite, &member);
    log.redeem(&invite, &other);
    assert!(matches!(log.verify(), Err(LogError::Invalid { seq: 3, .. })));
    let mut log = Log::new(&creator);
    log.invite(&creator, &member, "inv_1", 1);
    log.remove(&member, RemovalReason::Leave);
    log.invite(&creator, &member, "inv_2", 1);
    assert!(matches!(log.verify(), Err(LogError::Invalid { seq: 4, .. })));
}

#[test]
fn an_edited_moved_or_cut_log_is_detected() {
    let (creator, member, other) = (Keypair::generate(), Keypair::generate(), Keypair::generate());
    let mut log = Log::new(&creator);
    log.invite(&creator, &member, "inv_a", 1);
    log.remove(&member, RemovalReason::Kick);
    log.invite(&creator, &other, "inv_b", 1);
    let roster = log.verify().expect("the log verifies");

    // An edited change, with or without the chain recomputed from there.
    let mut edited = log.entries.clone();
    edited[2].change = Change::Removed { member: other.public_hex(), reason: RemovalReason::Kick };
    assert!(matches!(verify(MESH, None, None, &edited), Err(LogError::Invalid { seq: 3, .. })));
    // A removal hidden by rewriting the chain without it: a client that saw the head knows.
    let mut hidden = Log::new(&creator);
    hidden.entries = log.entries[..2].to_vec();
    hidden.invite(&creator, &other, "inv_b", 1);
    assert!(
        hidden.verify().expect("the log verifies").is_verified_member(&member.public_hex()),
        "alone, it reads as a valid log"
    );
    assert_eq!(verify(MESH, None, Some(&roster.head), &hidden.entries), Err(LogError::Rewritten { seq: 4 }));
    // A cut tail.
    assert_eq!(verify(MESH, None, Some(&roster.head), &log.entries[..3]), Err(LogError::Rewritten { seq: 4 }));
    // Swapped entries.
    let mut swapped = log.entries.clone();
    swapped.swap(2, 3);
    assert!(matches!(verify(MESH, None, None, &swapped), Err(LogError::Invalid { seq: 3, .. })));
    // The same log grown further still verifies against the old head.
    let mut grown = Log { entries: log.entries.clone() };
    grown.remove(&other, RemovalReason::Leave);
    assert!(verify(MESH, Some(&creator.public_hex()), Some(&roster.head), &grown.entries).is_ok());
}

#[test]
fn the_creator_is_pinned_and_its_genesis_signed_for_this_mesh() {
    let (creator, impostor) = (Keypair::generate(), Keypair::generate());
    let log = Log::new(&impostor);
    assert_eq!(
        verify(MESH, Some(&creator.public_hex()), None, &log.entries),
        Err(LogError::CreatorChanged { pinned: creator.public_hex(), found: impostor.public_hex() })
    );
    assert!(matches!(verify("mesh_other", None, None, &log.entries), Err(LogError::Invalid { seq: 1, .. })));
    assert_eq!(verify(MESH, None, None, &[]), Err(LogError::Absent));

    // A log that does not start with a genesis.
    let mut headless = Log::new(&creator);
    headless.entries.clear();
    headless.push(vouched(&impostor, AdmittedVia::Enrolment));
    assert!(matches!(headless.verify(), Err(LogError::Invalid { seq: 1, .. })));
}

#[test]
fn entries_travel_as_camel_case_json() {
    let creator = Keypair::generate();
    let log = Log::new(&creator);
    let json = serde_json::to_value(&log.entries[0]).expect("serializes");
    assert_eq!(json["change"]["kind"], "genesis");
    assert_eq!(json["prev"], LOG_START);
    let removal = serde_json::to_value(Change::Removed { member: "k".into(), reason: RemovalReason::Revoked })
        .expect("serializes");
    assert_eq!(removal, serde_json::json!({"kind": "removed", "member": "k", "reason": "revoked"}));
    let back: LogEntry = serde_json::from_value(json).expect("parses");
    assert_eq!(back, log.entries[0]);
}

fn endorsed(sponsor: &Keypair, device: &Keypair, member: &Keypair, role: Role) -> Change {
    Change::Endorsed {
        member: member.public_hex(),
        role,
        sponsor: sponsor.public_hex(),
        endorsement: sponsor.sign_hex(endorsement_bytes(MESH, &device.public_hex()).as_bytes()),
        device: device.public_hex(),
        binding: device.sign_hex(device_key_bytes(MESH, &member.public_hex()).as_bytes()),
    }
}

#[test]
fn a_device_a_member_endorsed_is_verified_within_the_sponsors_role() {
    let (creator, alice, device, key) =
        (Keypair::generate(), Keypair::generate(), Keypair::generate(), Keypair::generate());
    let mut base = Log::new(&creator);
    base.invite(&creator, &alice, "inv_a", 1);

    let mut log = Log { entries: base.entries.clone() };
    log.push(endorsed(&alice, &device, &key, Role::Member));
    assert!(log.verify().expect("the log verifies").is_verified_member(&key.public_hex()));
    // The same binding again is a replay.
    let replay = log.entries[2].change.clone();
    log.remove(&key, RemovalReason::Revoked);
    log.push(replay);
    assert!(matches!(log.verify(), Err(LogError::Invalid { seq: 5, .. })));

    // A member cannot make its device an admin; an admin can.
    let mut log = Log { entries: base.entries.clone() };
    log.push(endorsed(&alice, &device, &key, Role::Admin));
    assert!(matches!(log.verify(), Err(LogError::Invalid { seq: 3, .. })));
    let mut log = Log { entries: base.entries.clone() };
    log.push(endorsed(&creator, &device, &key, Role::Admin));
    assert!(log.verify().expect("the log verifies").is_verified_member(&key.public_hex()));

    // A sponsor the broker invented, an endorsement of another device, a binding by another key.
    let intruder = Keypair::generate();
    let mut log = Log { entries: base.entries.clone() };
    log.push(vouched(&intruder, AdmittedVia::Enrolment));
    log.push(endorsed(&intruder, &device, &key, Role::Member));
    assert!(matches!(log.verify(), Err(LogError::Invalid { seq: 4, .. })));
    let mut swapped = endorsed(&alice, &device, &key, Role::Member);
    if let Change::Endorsed { device: shown, .. } = &mut swapped {
        *shown = intruder.public_hex();
    }
    let mut log = Log { entries: base.entries.clone() };
    log.push(swapped);
    assert!(matches!(log.verify(), Err(LogError::Invalid { seq: 3, .. })));
}

#[test]
fn a_verifier_takes_the_log_in_pieces_and_remembers_who_was_a_member_when() {
    let (creator, alice, bob) = (Keypair::generate(), Keypair::generate(), Keypair::generate());
    let mut log = Log::new(&creator);
    log.invite(&creator, &alice, "inv_a", 1);
    log.remove(&alice, RemovalReason::Leave);
    log.invite(&creator, &bob, "inv_b", 1);

    let mut verifier = Verifier::new(MESH, Some(&creator.public_hex()));
    verifier.extend(&log.entries[..2]).expect("the first half verifies");
    verifier.extend(&log.entries[2..]).expect("the rest continues it");
    assert_eq!(verifier.roster().expect("a roster"), &log.verify().expect("the log verifies"));
    assert_eq!(verifier.last_removal(), 3);
    assert!(verifier.was_verified_member(&alice.public_hex(), 2));
    assert!(!verifier.was_verified_member(&alice.public_hex(), 3));
    assert!(!verifier.was_verified_member(&bob.public_hex(), 3) && verifier.was_verified_member(&bob.public_hex(), 4));
    assert_eq!(verifier.hash_at(4), Some(log.entries[3].hash.as_str()));
    verifier.check_head(&Head { seq: 2, hash: log.entries[1].hash.clone() }).expect("holds what was seen");
    assert_eq!(verifier.check_head(&Head { seq: 9, hash: "x".into() }), Err(LogError::Rewritten { seq: 9 }));

    // Entries that do not continue where it stopped are refused.
    let mut verifier = Verifier::new(MESH, None);
    verifier.extend(&log.entries[..2]).expect("verifies");
    assert!(matches!(verifier.extend(&log.entries[3..]), Err(LogError::Invalid { seq: 3, .. })));
}

fn key_history(admin: &Keypair, mode: KeyHistory, after: u64) -> Change {
    let signature = admin.sign_hex(key_history_bytes(MESH, mode, after).as_bytes());
    Change::KeyHistory { mode, by: admin.public_hex(), after, signature }
}

#[test]
fn only_an_admins_signed_key_history_setting_counts_and_each_once() {
    let (creator, member) = (Keypair::generate(), Keypair::generate());
    let mut log = Log::new(&creator);
    log.admit(&creator, &member, Role::Member);
    assert_eq!(log.verify().expect("verifies").key_history, KeyHistory::All, "the default");
    log.push(key_history(&creator, KeyHistory::FromAdmission, 2));
    assert_eq!(log.verify().expect("verifies").key_history, KeyHistory::FromAdmission);
    let verifier = {
        let mut verifier = Verifier::new(MESH, None);
        verifier.extend(&log.entries).expect("verifies");
        verifier
    };
    assert_eq!((verifier.last_admission(), verifier.admitted_at(&member.public_hex())), (2, Some(2)));

    let refused = |change: Change| {
        let mut bad = Log { entries: log.entries.clone() };
        bad.push(change);
        bad.verify()
    };
    // By a member that is no admin, for a later position, with another mode than signed, twice.
    assert!(refused(key_history(&member, KeyHistory::All, 3)).is_err());
    assert!(refused(key_history(&creator, KeyHistory::All, 4)).is_err());
    let mut forged = key_history(&creator, KeyHistory::FromAdmission, 3);
    if let Change::KeyHistory { mode, .. } = &mut forged {
        *mode = KeyHistory::All;
    }
    assert!(refused(forged).is_err());
    assert!(refused(key_history(&creator, KeyHistory::FromAdmission, 2)).is_err(), "a replayed statement");
    let mut ok = Log { entries: log.entries.clone() };
    ok.push(key_history(&creator, KeyHistory::All, 2));
    assert_eq!(ok.verify().expect("a new statement").key_history, KeyHistory::All);
}
