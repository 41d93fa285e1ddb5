//! The contract every [`Store`] keeps, as checks any implementation's tests run (feature
//! `store-conformance`).
//!
//! An implementation's test file describes its database with [`TestDatabase`] (a fresh, empty
//! database per check, and how to open stores on it) and expands
//! [`store_conformance_tests!`](crate::store_conformance_tests) with it: one `#[test]` per
//! check, named after the check, so a failure shows which promise broke.
//! `broker-core/tests/store_conformance.rs` does this for `SqliteStore`.
//!
//! The checks assert what the broker relies on: the trait's documented behaviour, the refusal
//! codes the HTTP layer maps (`invite_exhausted`, `account_mismatch`…), the audit chain's
//! hashes, and the concurrency promises (completions run once, in commit order; concurrent
//! control-plane calls, also from a second store on the same database, lose nothing and never
//! fork the audit chain). They run on real threads with real time limits, never on mocks.

mod accounts;
mod audit;
mod basics;
mod directory;
mod membership;
mod queue;
mod workspace;

pub use accounts::*;
pub use audit::*;
pub use basics::*;
pub use directory::*;
pub use membership::*;
pub use queue::*;
pub use workspace::*;

use std::sync::Arc;
use std::time::Duration;

use super::{
    AuditEntry, AuditEvent, MemberRecord, MeshRecord, NewMember, Store, StoreError, StoreResult, WriteOp, WriteOutcome,
};
use crate::protocol::Role;

/// One empty database for one check, and how to open stores on it.
pub trait TestDatabase {
    type Store: Store;

    /// Opens a store on this database. Called again, after the previous store was dropped (a
    /// restarted broker) or while it is still open (an operator command beside a running
    /// broker), the new store sees everything the other committed.
    fn open(&self) -> Arc<Self::Store>;

    /// Overwrites the stored payload of audit entry `id` behind the store's back, as someone
    /// with write access to the database could: the next `verify_audit` must notice.
    fn tamper_with_audit_payload(&self, id: i64, payload: &str);
}

/// Expands to one `#[test]` per conformance check, each on a database from `$database` (an
/// expression evaluated afresh for every test, yielding a [`TestDatabase`]).
///
/// ```text
/// mod sqlite {
///     broker_core::store_conformance_tests!(crate::SqliteDatabase::new(Durability::Full));
/// }
/// ```
#[macro_export]
macro_rules! store_conformance_tests {
    ($database:expr) => {
        $crate::store_conformance_tests!(@checks $database;
            store_answers_pings_and_lists_its_migrations,
            settings_round_trip_and_are_shared,
            commits_count_every_committed_write,
            enqueue_keeps_the_sealed_envelope_and_each_delivery,
            a_shared_body_outlives_each_acknowledgement,
            pending_entries_page_by_lane_and_sequence,
            acknowledge_removes_exactly_the_named_entries,
            receipts_follow_a_tracked_message_from_queue_to_read,
            schedules_fire_each_occurrence_once_and_are_cancelled,
            releasing_a_session_hands_its_entries_to_every_session,
            expiry_drops_only_entries_created_before_the_cutoff,
            an_enqueue_appends_its_audit_entries,
            sequence_numbers_stay_above_queued_entries_after_a_reopen,
            writes_submitted_before_a_flush_are_visible_after_it,
            concurrent_submits_complete_once_in_commit_order,
            each_entry_knows_the_newest_entry_before_it_in_its_lane,
            other_processes_hear_what_one_queued_changed_and_announced,
            peer_state_is_saved_per_member_and_replaced,
            creating_a_mesh_makes_its_creator_admin,
            slugs_are_unique_per_broker,
            meshes_are_renamed_and_archived,
            members_are_added_and_found,
            member_names_are_unique_and_keys_never_change_hands,
            membership_changes_kick_ban_unban_and_leave,
            the_membership_log_records_every_change_verifiably,
            a_mesh_without_a_genesis_keeps_no_log,
            concurrent_membership_changes_keep_one_chain,
            endorsements_are_kept_per_mesh_and_device_key,
            epochs_advance_by_compare_and_set_with_their_wraps,
            a_key_history_setting_goes_on_the_log_the_admin_saw,
            state_entries_are_written_by_compare_and_set_under_the_newest_epoch,
            state_entries_expire_and_count_against_their_writers_quota,
            memories_are_numbered_per_mesh_and_forgotten_for_everyone,
            two_processes_racing_for_one_state_version_never_both_win,
            account_meshes_list_active_memberships_with_the_highest_role,
            directory_version_moves_with_every_directory_change,
            invites_are_created_listed_and_revoked,
            redeeming_an_invite_follows_its_terms,
            concurrent_redemptions_never_exceed_max_uses,
            grants_are_set_reset_and_listed,
            grants_are_capped_per_member,
            accounts_are_found_by_id_or_name,
            devices_hold_tokens_until_revoked,
            a_device_code_is_approved_then_redeemed_once,
            device_codes_refuse_what_their_terms_forbid,
            a_login_token_is_redeemed_once_and_dies_with_its_maker_with_what_it_let_in_just_before,
            a_device_keeps_the_confirmation_key_of_whoever_redeems_its_code,
            an_emailed_code_signs_in_one_device_once,
            the_audit_chain_links_every_entry,
            audit_entries_page_and_filter_newest_first,
            verification_finds_a_tampered_entry,
            a_refused_change_leaves_no_trace,
            concurrent_control_plane_calls_lose_nothing_and_keep_one_chain,
        );
    };
    (@checks $database:expr; $($check:ident),* $(,)?) => {
        $(
            #[test]
            fn $check() {
                let database = $database;
                $crate::store::conformance::$check(&database);
            }
        )*
    };
}

/// How long a check waits for a completion before calling the store stuck.
const COMPLETION_TIMEOUT: Duration = Duration::from_secs(30);

/// The time checks pretend it is (milliseconds since the epoch), so stored times are exact.
const NOW_MS: u64 = 1_750_000_000_000;

/// A valid member key (64 lowercase hex characters), distinct for each `n`.
fn pubkey(n: u32) -> String {
    format!("{n:064x}")
}

fn new_member(n: u32, name: &str) -> NewMember {
    NewMember { pubkey: pubkey(n), display_name: name.to_owned(), ..NewMember::default() }
}

/// A mesh created at `now_ms` by an admin with key `pubkey(n)`.
fn mesh_with_admin<S: Store>(store: &S, name: &str, n: u32, now_ms: u64) -> (MeshRecord, MemberRecord) {
    store.create_mesh(name, "", None, &new_member(n, "admin"), now_ms).expect("creates the mesh")
}

fn add_member<S: Store>(store: &S, mesh: &MeshRecord, n: u32, now_ms: u64) -> MemberRecord {
    store.add_member(&mesh.id, &new_member(n, &format!("member {n}")), Role::Member, None, now_ms).expect("adds")
}

/// Submits `op` and waits for its completion.
fn write<S: Store>(store: &S, op: WriteOp) -> StoreResult<WriteOutcome> {
    let (sender, outcome) = std::sync::mpsc::channel();
    store.submit(
        op,
        Some(Box::new(move |result| {
            let _ = sender.send(result);
        })),
    );
    outcome.recv_timeout(COMPLETION_TIMEOUT).expect("the completion runs")
}

fn audit_event(scope: &str, event_type: &str, actor: Option<&str>, payload: serde_json::Value) -> AuditEvent {
    AuditEvent { scope: scope.to_owned(), event_type: event_type.to_owned(), actor: actor.map(str::to_owned), payload }
}

/// Every audit entry of `scope`, oldest first.
fn audit_log<S: Store>(store: &S, scope: &str) -> Vec<AuditEntry> {
    let (mut entries, total) = store.audit_entries(scope, None, u32::MAX, 0).expect("reads the audit log");
    assert_eq!(entries.len() as u64, total, "one page holds the whole log of {scope}");
    entries.reverse();
    entries
}

/// The event types of `scope`'s audit log, oldest first.
fn audit_types<S: Store>(store: &S, scope: &str) -> Vec<String> {
    audit_log(store, scope).into_iter().map(|entry| entry.event_type).collect()
}

#[track_caller]
fn assert_conflict<T: std::fmt::Debug>(result: StoreResult<T>, code: &str) {
    match result {
        Err(StoreError::Conflict(what)) if what == code => {}
        other => panic!("expected Conflict({code:?}), got {other:?}"),
    }
}

#[track_caller]
fn assert_not_found<T: std::fmt::Debug>(result: StoreResult<T>) {
    assert!(matches!(result, Err(StoreError::NotFound(_))), "expected NotFound, got {result:?}");
}

#[track_caller]
fn assert_invalid<T: std::fmt::Debug>(result: StoreResult<T>) {
    assert!(matches!(result, Err(StoreError::Invalid(_))), "expected Invalid, got {result:?}");
}
