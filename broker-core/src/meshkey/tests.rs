use super::*;
use crate::membership::{self, AdmittedVia, Change, LOG_START, LogEntry, RemovalReason};
use crate::protocol::Role;

const MESH: &str = "mesh_keys";

/// A log: the creator's genesis, then `admin` admitted by the creator and a vouched `other`.
fn log(creator: &Keypair, admin: &Keypair, other: &Keypair) -> Vec<LogEntry> {
    let mut entries: Vec<LogEntry> = Vec::new();
    let mut push = |change: Change| {
        let prev = entries.last().map_or(LOG_START.to_owned(), |e| e.hash.clone());
        entries.push(LogEntry::new(entries.len() as u64 + 1, 1_000, &prev, change));
    };
    let signature = creator.sign_hex(membership::genesis_bytes(MESH, &creator.public_hex()).as_bytes());
    push(Change::Genesis { creator: creator.public_hex(), signature });
    let signature = creator.sign_hex(membership::admission_bytes(MESH, &admin.public_hex(), Role::Admin, 1).as_bytes());
    push(Change::Admitted {
        member: admin.public_hex(),
        role: Role::Admin,
        via: AdmittedVia::Admin,
        by: Some(creator.public_hex()),
        after: Some(1),
        signature: Some(signature),
    });
    push(Change::Admitted {
        member: other.public_hex(),
        role: Role::Member,
        via: AdmittedVia::Enrolment,
        by: None,
        after: None,
        signature: None,
    });
    entries
}

fn verified(entries: &[LogEntry]) -> Verifier {
    let mut verifier = Verifier::new(MESH, None);
    verifier.extend(entries).expect("the log verifies");
    verifier
}

fn head(entries: &[LogEntry]) -> Head {
    let last = entries.last().expect("a log");
    Head { seq: last.seq, hash: last.hash.clone() }
}

#[test]
fn a_wrap_opens_only_for_its_recipient_to_the_committed_key() {
    let (creator, admin, other) = (Keypair::generate(), Keypair::generate(), Keypair::generate());
    let entries = log(&creator, &admin, &other);
    let roster = membership::verify(MESH, None, None, &entries).expect("verifies");
    let key = new_key();
    let record = EpochRecord::sign(MESH, 1, &key, &head(&entries), &creator);
    verify_records(MESH, std::slice::from_ref(&record), &verified(&entries)).expect("the record verifies");

    let wrap = Wrap::seal(1, &key, &creator, &admin.public());
    assert_eq!(accept(MESH, &wrap, &record, &roster, &admin), Ok(key));
    assert!(wrap.open(&other).is_err(), "another member cannot open it");

    // A key the broker made and wrapped from a key of its own, or from a member it only vouches
    // for, is refused; so is a genuine wrap of another key than the record's.
    let forged = new_key();
    for wrapper in [&Keypair::generate(), &other] {
        let wrap = Wrap::seal(1, &forged, wrapper, &admin.public());
        assert!(accept(MESH, &wrap, &record, &roster, &admin).is_err());
    }
    let wrong = Wrap::seal(1, &forged, &creator, &admin.public());
    assert!(accept(MESH, &wrong, &record, &roster, &admin).is_err());
}

#[test]
fn records_are_consecutive_signed_by_verified_members_at_a_head_the_log_holds() {
    let (creator, admin, other) = (Keypair::generate(), Keypair::generate(), Keypair::generate());
    let entries = log(&creator, &admin, &other);
    let first = EpochRecord::sign(MESH, 1, &new_key(), &head(&entries[..1]), &creator);
    let second = EpochRecord::sign(MESH, 2, &new_key(), &head(&entries), &admin);
    let log = verified(&entries);
    assert_eq!(verify_records(MESH, &[first.clone(), second.clone()], &log), Ok(()));

    let refused = |records: &[EpochRecord]| verify_records(MESH, records, &log).is_err();
    assert!(refused(std::slice::from_ref(&second)), "numbering starts at 1");
    // The admin was not yet a member at the genesis.
    assert!(refused(&[EpochRecord::sign(MESH, 1, &new_key(), &head(&entries[..1]), &admin)]));
    assert!(refused(&[EpochRecord::sign(MESH, 1, &new_key(), &head(&entries), &other)]), "a vouched member");
    let mut forged = first.clone();
    forged.commitment = commitment(MESH, 1, &new_key());
    assert!(refused(&[forged]), "the signature covers the commitment");
    let mut elsewhere = first;
    elsewhere.log_hash = "0".repeat(64);
    elsewhere.signature = creator.sign_hex(elsewhere.signed_bytes(MESH).as_bytes());
    assert!(refused(&[elsewhere]), "a head the log does not hold");
}

#[test]
fn a_removal_after_the_record_outdates_its_key() {
    let (creator, admin, other) = (Keypair::generate(), Keypair::generate(), Keypair::generate());
    let mut entries = log(&creator, &admin, &other);
    let record = EpochRecord::sign(MESH, 1, &new_key(), &head(&entries), &creator);
    assert!(!outdated(&record, &verified(&entries)));
    let prev = entries.last().expect("a log").hash.clone();
    entries.push(LogEntry::new(
        4,
        2_000,
        &prev,
        Change::Removed { member: admin.public_hex(), reason: RemovalReason::Kick },
    ));
    let log = verified(&entries);
    assert!(outdated(&record, &log));
    // The admin can make no valid record for the log after its removal.
    let late = EpochRecord::sign(MESH, 1, &new_key(), &head(&entries), &admin);
    assert!(verify_records(MESH, &[late], &log).is_err());
    assert!(log.was_verified_member(&admin.public_hex(), 3));
    assert!(!log.was_verified_member(&admin.public_hex(), 4));
}
