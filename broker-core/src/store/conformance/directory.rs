//! Meshes, members, invites, grants and the directory version.

use serde_json::json;

use super::{
    NOW_MS, TestDatabase, add_member, assert_conflict, assert_invalid, assert_not_found, audit_log, audit_types,
    mesh_with_admin, new_member, pubkey, write,
};
use crate::protocol::{MAX_GRANTS, Role};
use crate::store::{
    AccountMesh, DeviceInfo, GrantRecord, InviteRecord, MemberRecord, MembershipAction, MeshRecord, NewMember, Store,
    WriteOp,
};

/// An invite to `mesh` issued by `issuer`, valid for an hour from `NOW_MS`.
fn invite(id: &str, mesh: &MeshRecord, issuer: &MemberRecord, role: Role, max_uses: u32) -> InviteRecord {
    InviteRecord {
        id: id.to_owned(),
        mesh_id: mesh.id.clone(),
        role,
        max_uses,
        used_count: 0,
        expires_at: NOW_MS / 1000 + 3600,
        issuer_member_id: issuer.id.clone(),
        created_at: NOW_MS,
        revoked_at: None,
        email: None,
    }
}

fn sorted(mut grants: Vec<GrantRecord>) -> Vec<GrantRecord> {
    grants.sort_by(|a, b| (&a.member_id, &a.peer_pubkey).cmp(&(&b.member_id, &b.peer_pubkey)));
    grants
}

fn grant(member: &MemberRecord, peer: &str, caps: &[&str]) -> GrantRecord {
    GrantRecord {
        member_id: member.id.clone(),
        peer_pubkey: peer.to_owned(),
        caps: caps.iter().map(|cap| (*cap).to_owned()).collect(),
    }
}

/// The creator becomes the mesh's only member, an admin; the mesh is found by id and by slug;
/// the creation is audited. A blank name or a malformed key creates nothing.
pub fn creating_a_mesh_makes_its_creator_admin<D: TestDatabase>(database: &D) {
    let store = database.open();
    let owner = store.create_account("owner", None, NOW_MS).expect("creates the account");
    let creator = NewMember { account_id: Some(owner.id.clone()), ..new_member(1, "Alice") };
    let (mesh, admin) = store.create_mesh("Team Alpha", "", Some(&owner.id), &creator, NOW_MS).expect("creates");

    assert_eq!((mesh.slug.as_str(), mesh.name.as_str()), ("team-alpha", "Team Alpha"));
    assert_eq!((mesh.created_at, mesh.archived_at), (NOW_MS, None));
    assert_eq!(mesh.owner_account_id.as_deref(), Some(owner.id.as_str()));
    let expected_admin = MemberRecord {
        id: admin.id.clone(),
        mesh_id: mesh.id.clone(),
        pubkey: pubkey(1),
        display_name: "Alice".into(),
        role: Role::Admin,
        created_at: NOW_MS,
        revoked_at: None,
        banned_at: None,
        account_id: Some(owner.id.clone()),
        device_id: None,
    };
    assert_eq!(admin, expected_admin);
    assert!(admin.is_active());

    assert_eq!(store.mesh(&mesh.id).expect("reads").as_ref(), Some(&mesh));
    assert_eq!(store.mesh("team-alpha").expect("reads").as_ref(), Some(&mesh));
    assert_eq!(store.mesh("no-such-mesh").expect("reads"), None);
    assert_eq!(store.meshes().expect("lists"), std::slice::from_ref(&mesh));
    assert_eq!(store.members(&mesh.id).expect("lists"), std::slice::from_ref(&admin));
    assert_eq!(store.member(&admin.id).expect("reads").as_ref(), Some(&admin));
    assert_eq!(store.member_by_pubkey(&mesh.id, &pubkey(1)).expect("reads").as_ref(), Some(&admin));
    assert_eq!(audit_types(&*store, &mesh.id), ["mesh_created", "member_joined"]);

    assert_invalid(store.create_mesh("   ", "", None, &new_member(2, "Bob"), NOW_MS));
    assert_invalid(store.create_mesh(
        "Beta",
        "",
        None,
        &NewMember { pubkey: "not-a-key".into(), ..new_member(2, "B") },
        NOW_MS,
    ));
    let uppercase = NewMember { pubkey: pubkey(0xab).to_uppercase(), ..new_member(2, "Bob") };
    assert_invalid(store.create_mesh("Beta", "", None, &uppercase, NOW_MS));
    assert_eq!(store.meshes().expect("lists").len(), 1, "refused meshes are not created");
}

/// Slugs come from the hint (or the name) and get `-2`, `-3`… on clashes; meshes list in
/// creation order.
pub fn slugs_are_unique_per_broker<D: TestDatabase>(database: &D) {
    let store = database.open();
    let created: Vec<MeshRecord> = [("Team Alpha", ""), ("Team Alpha", ""), ("Another", "Team Alpha"), ("Ops", "ops!")]
        .iter()
        .zip(1u32..)
        .map(|((name, hint), n)| {
            store.create_mesh(name, hint, None, &new_member(n, "admin"), NOW_MS + u64::from(n)).expect("creates").0
        })
        .collect();
    let slugs: Vec<&str> = created.iter().map(|mesh| mesh.slug.as_str()).collect();
    assert_eq!(slugs, ["team-alpha", "team-alpha-2", "team-alpha-3", "ops"]);
    assert_eq!(store.meshes().expect("lists"), created);
    assert_eq!(store.mesh("team-alpha-2").expect("reads").map(|mesh| mesh.id), Some(created[1].id.clone()));
}

/// Renaming changes the name (audited with both names); archiving sets the time once; unknown
/// meshes and blank names are refused.
pub fn meshes_are_renamed_and_archived<D: TestDatabase>(database: &D) {
    let store = database.open();
    let (mesh, admin) = mesh_with_admin(&*store, "Old name", 1, NOW_MS);

    let renamed = store.rename_mesh(&mesh.id, "New name", Some(&admin.id)).expect("renames");
    assert_eq!(renamed, MeshRecord { name: "New name".into(), ..mesh.clone() });
    assert_eq!(store.mesh(&mesh.id).expect("reads"), Some(renamed.clone()));
    let last = audit_log(&*store, &mesh.id).pop().expect("an entry");
    assert_eq!((last.event_type.as_str(), last.actor.as_deref()), ("mesh_renamed", Some(admin.id.as_str())));
    assert_eq!(last.payload, json!({"from": "Old name", "to": "New name"}));
    assert_invalid(store.rename_mesh(&mesh.id, "  ", None));
    assert_not_found(store.rename_mesh("mesh_unknown", "Name", None));

    let archived = store.archive_mesh(&mesh.id, Some(&admin.id), NOW_MS + 5).expect("archives");
    assert_eq!(archived, MeshRecord { archived_at: Some(NOW_MS + 5), ..renamed });
    let again = store.archive_mesh(&mesh.id, Some(&admin.id), NOW_MS + 9).expect("archiving twice is harmless");
    assert_eq!(again.archived_at, Some(NOW_MS + 5), "the first archive time stays");
    let archives = audit_types(&*store, &mesh.id).iter().filter(|event| *event == "mesh_archived").count();
    assert_eq!(archives, 1);
    assert_eq!(store.mesh(&mesh.id).expect("reads"), Some(archived));
    assert_not_found(store.archive_mesh("mesh_unknown", None, NOW_MS));
}

/// An added member is found by id and by key; a key joins a mesh at most once, any number of
/// meshes; the account and device it lives on are kept.
pub fn members_are_added_and_found<D: TestDatabase>(database: &D) {
    let store = database.open();
    let (mesh, admin) = mesh_with_admin(&*store, "members", 1, NOW_MS);
    let (other, _) = mesh_with_admin(&*store, "other", 9, NOW_MS + 1);
    let account = store.create_account("bob", None, NOW_MS).expect("creates the account");
    let device = store
        .create_device(&account.id, &DeviceInfo::default(), "token-hash-bob", NOW_MS + 60_000, NOW_MS)
        .expect("creates the device");
    let joining = NewMember {
        pubkey: pubkey(2),
        display_name: "Bob".into(),
        account_id: Some(account.id.clone()),
        device_id: Some(device.id.clone()),
        admission: None,
    };

    let bob = store.add_member(&mesh.id, &joining, Role::Member, Some(&admin.id), NOW_MS + 2).expect("adds");
    assert_eq!(
        bob,
        MemberRecord {
            id: bob.id.clone(),
            mesh_id: mesh.id.clone(),
            pubkey: pubkey(2),
            display_name: "Bob".into(),
            role: Role::Member,
            created_at: NOW_MS + 2,
            revoked_at: None,
            banned_at: None,
            account_id: Some(account.id.clone()),
            device_id: Some(device.id.clone()),
        }
    );
    assert_eq!(store.members(&mesh.id).expect("lists"), [admin.clone(), bob.clone()]);
    assert_eq!(store.member(&bob.id).expect("reads").as_ref(), Some(&bob));
    assert_eq!(store.member_by_pubkey(&mesh.id, &pubkey(2)).expect("reads").as_ref(), Some(&bob));
    assert_eq!(store.member_by_pubkey(&other.id, &pubkey(2)).expect("reads"), None);
    assert_eq!(store.member("mem_unknown").expect("reads"), None);
    let joined = audit_log(&*store, &mesh.id).pop().expect("an entry");
    assert_eq!((joined.event_type.as_str(), joined.actor.as_deref()), ("member_joined", Some(admin.id.as_str())));

    assert!(matches!(
        store.add_member(&mesh.id, &joining, Role::Admin, None, NOW_MS + 3),
        Err(crate::store::StoreError::Conflict(_))
    ));
    let elsewhere = store.add_member(&other.id, &joining, Role::Admin, None, NOW_MS + 3).expect("another mesh");
    assert_eq!((elsewhere.role, elsewhere.mesh_id.as_str()), (Role::Admin, other.id.as_str()));
    assert_not_found(store.add_member("mesh_unknown", &new_member(3, "Carol"), Role::Member, None, NOW_MS));
    assert_invalid(store.add_member(
        &mesh.id,
        &NewMember { pubkey: "abc".into(), ..new_member(3, "C") },
        Role::Member,
        None,
        NOW_MS,
    ));
    assert_eq!(store.members(&mesh.id).expect("lists").len(), 2);
}

/// Display names are unique per mesh among members, compared as the same name however spelled
/// (case, look-alikes, separators), except between members of one account; reserved names are
/// refused; a key that was any member's is never another's.
pub fn member_names_are_unique_and_keys_never_change_hands<D: TestDatabase>(database: &D) {
    let store = database.open();
    let (mesh, admin) = mesh_with_admin(&*store, "names", 1, NOW_MS);
    let (other, _) = mesh_with_admin(&*store, "other", 9, NOW_MS);
    add_member(&*store, &mesh, 2, NOW_MS);
    let taken = |n: u32, name: &str| store.add_member(&mesh.id, &new_member(n, name), Role::Member, None, NOW_MS);
    assert_conflict(taken(3, "Member-2"), "name_taken");
    assert_conflict(taken(3, "MEMBER 2"), "name_taken");
    assert_invalid(taken(3, "Assistant"));
    assert_invalid(taken(3, "user"));
    // Another mesh has its own names.
    store.add_member(&other.id, &new_member(3, "member 2"), Role::Member, None, NOW_MS).expect("another mesh");

    // One person's devices may share a name.
    let account = store.create_account("carol", None, NOW_MS).expect("account");
    let device = |n: u32| NewMember { account_id: Some(account.id.clone()), ..new_member(n, "carol") };
    store.add_member(&mesh.id, &device(4), Role::Member, None, NOW_MS).expect("first device");
    store.add_member(&mesh.id, &device(5), Role::Member, None, NOW_MS).expect("second device");

    // A removed member's key stays its own; a session key once used is its member's.
    let leaver = add_member(&*store, &mesh, 6, NOW_MS);
    store.change_membership(&leaver.id, MembershipAction::Leave, None, NOW_MS).expect("leaves");
    assert!(matches!(taken(6, "someone new"), Err(crate::store::StoreError::Conflict(_))));
    write(
        &*store,
        WriteOp::RecordSessionKey {
            mesh_id: mesh.id.clone(),
            member_id: admin.id.clone(),
            pubkey: pubkey(7),
            at_ms: NOW_MS,
        },
    )
    .expect("records");
    assert_eq!(store.key_owner(&mesh.id, &pubkey(7)).expect("reads"), Some(admin.id.clone()));
    assert_eq!(store.key_owner(&other.id, &pubkey(7)).expect("reads"), None);
    assert_conflict(taken(7, "someone else"), "key_taken");
}

/// Ban and unban toggle `banned_at`; kick and leave set `revoked_at`; each is audited with its
/// own event; unknown members are refused.
pub fn membership_changes_kick_ban_unban_and_leave<D: TestDatabase>(database: &D) {
    let store = database.open();
    let (mesh, admin) = mesh_with_admin(&*store, "moderation", 1, NOW_MS);
    let bob = add_member(&*store, &mesh, 2, NOW_MS + 1);
    let carol = add_member(&*store, &mesh, 3, NOW_MS + 2);
    let change = |member: &MemberRecord, action, at| {
        store.change_membership(&member.id, action, Some(&admin.id), at).expect("changes the membership")
    };

    let banned = change(&bob, MembershipAction::Ban, NOW_MS + 10);
    assert_eq!(banned, MemberRecord { banned_at: Some(NOW_MS + 10), ..bob.clone() });
    assert!(!banned.is_active());
    assert!(change(&bob, MembershipAction::Ban, NOW_MS + 11).banned_at.is_some(), "banning twice keeps the ban");
    let unbanned = change(&bob, MembershipAction::Unban, NOW_MS + 12);
    assert_eq!(unbanned, bob);
    assert!(unbanned.is_active());

    let kicked = change(&bob, MembershipAction::Kick, NOW_MS + 13);
    assert_eq!(kicked, MemberRecord { revoked_at: Some(NOW_MS + 13), ..bob.clone() });
    let left =
        store.change_membership(&carol.id, MembershipAction::Leave, Some(&carol.id), NOW_MS + 14).expect("leaves");
    assert_eq!(left, MemberRecord { revoked_at: Some(NOW_MS + 14), ..carol.clone() });
    assert_eq!(store.member(&carol.id).expect("reads"), Some(left));
    assert_eq!(store.members(&mesh.id).expect("lists").len(), 3, "removed members stay on record");

    let log = audit_log(&*store, &mesh.id);
    let changes: Vec<(&str, &serde_json::Value)> = log
        .iter()
        .filter(|entry| entry.event_type != "member_joined" && entry.event_type != "mesh_created")
        .map(|entry| (entry.event_type.as_str(), &entry.payload["memberId"]))
        .collect();
    let (bob_id, carol_id) = (json!(bob.id), json!(carol.id));
    assert_eq!(
        changes,
        [
            ("member_banned", &bob_id),
            ("member_banned", &bob_id),
            ("member_unbanned", &bob_id),
            ("member_kicked", &bob_id),
            ("member_left", &carol_id)
        ]
    );
    assert_not_found(store.change_membership("mem_unknown", MembershipAction::Kick, None, NOW_MS));
}

/// An account's meshes are those where it has an active member, with its highest role there
/// and the count of active members; kicked and banned memberships do not count.
pub fn account_meshes_list_active_memberships_with_the_highest_role<D: TestDatabase>(database: &D) {
    let store = database.open();
    let account = store.create_account("alice", None, NOW_MS).expect("creates the account");
    let mine = |n: u32| NewMember { account_id: Some(account.id.clone()), ..new_member(n, "alice") };

    let (admin_of, _) = store.create_mesh("admin of", "", None, &mine(1), NOW_MS + 1).expect("creates");
    store.add_member(&admin_of.id, &mine(2), Role::Member, None, NOW_MS + 2).expect("a second key");
    add_member(&*store, &admin_of, 3, NOW_MS + 3);
    let gone = add_member(&*store, &admin_of, 4, NOW_MS + 4);
    store.change_membership(&gone.id, MembershipAction::Kick, None, NOW_MS + 5).expect("kicks");

    let (member_of, _) = mesh_with_admin(&*store, "member of", 10, NOW_MS + 6);
    store.add_member(&member_of.id, &mine(11), Role::Member, None, NOW_MS + 7).expect("adds");

    let (kicked_from, _) = mesh_with_admin(&*store, "kicked from", 20, NOW_MS + 8);
    let kicked = store.add_member(&kicked_from.id, &mine(21), Role::Member, None, NOW_MS + 9).expect("adds");
    store.change_membership(&kicked.id, MembershipAction::Kick, None, NOW_MS + 10).expect("kicks");
    let (banned_from, _) = mesh_with_admin(&*store, "banned from", 30, NOW_MS + 11);
    let banned = store.add_member(&banned_from.id, &mine(31), Role::Admin, None, NOW_MS + 12).expect("adds");
    store.change_membership(&banned.id, MembershipAction::Ban, None, NOW_MS + 13).expect("bans");
    mesh_with_admin(&*store, "not mine", 40, NOW_MS + 14);

    let listed = store.account_meshes(&account.id).expect("lists");
    assert_eq!(
        listed,
        [
            AccountMesh { mesh: admin_of, role: Role::Admin, member_count: 3 },
            AccountMesh { mesh: member_of, role: Role::Member, member_count: 2 },
        ]
    );
    assert!(store.account_meshes("acct_unknown").expect("lists").is_empty());
}

/// Every change to meshes, members or grants moves the version, and another store on the same
/// database sees the new one.
pub fn directory_version_moves_with_every_directory_change<D: TestDatabase>(database: &D) {
    let store = database.open();
    let other = database.open();
    let mut seen = vec![store.directory_version().expect("reads")];
    let mut saw_change = |what: &str| {
        let version = store.directory_version().expect("reads");
        assert!(!seen.contains(&version), "{what} moved the version (seen {seen:?}, now {version})");
        assert_eq!(other.directory_version().expect("reads"), version, "{what}: the other store agrees");
        seen.push(version);
    };

    let account = store.create_account("owner", None, NOW_MS).expect("creates the account");
    let device = store.create_device(&account.id, &DeviceInfo::default(), "hash", NOW_MS + 1, NOW_MS).expect("device");
    let (mesh, admin) = mesh_with_admin(&*store, "versioned", 1, NOW_MS);
    saw_change("create_mesh");
    let on_device = NewMember { device_id: Some(device.id.clone()), ..new_member(2, "bob") };
    let bob = store.add_member(&mesh.id, &on_device, Role::Member, None, NOW_MS + 1).expect("adds");
    saw_change("add_member");
    store.set_grants(&bob.id, &[(admin.pubkey.clone(), Some(vec!["dm".into()]))], NOW_MS + 2).expect("grants");
    saw_change("set_grants");
    store.change_membership(&bob.id, MembershipAction::Ban, None, NOW_MS + 3).expect("bans");
    saw_change("change_membership");
    store.rename_mesh(&mesh.id, "renamed", None).expect("renames");
    saw_change("rename_mesh");
    store.revoke_device(&device.id, None, NOW_MS + 4).expect("revokes");
    saw_change("revoke_device");
    let redeemer = new_member(3, "carol");
    store.create_invite(&invite("inv-version", &mesh, &admin, Role::Member, 1)).expect("invites");
    store.redeem_invite("inv-version", &redeemer, NOW_MS + 5).expect("redeems");
    saw_change("redeem_invite");
    store.archive_mesh(&mesh.id, None, NOW_MS + 6).expect("archives");
    saw_change("archive_mesh");
}

/// An invite reads back as created; a mesh's invites list newest first; a reused id is a
/// conflict; revoking sets the time; all of it is audited.
pub fn invites_are_created_listed_and_revoked<D: TestDatabase>(database: &D) {
    let store = database.open();
    let (mesh, admin) = mesh_with_admin(&*store, "invites", 1, NOW_MS);
    let (other, other_admin) = mesh_with_admin(&*store, "other", 2, NOW_MS + 1);
    let first =
        InviteRecord { email: Some("bob@example.com".into()), ..invite("inv-1", &mesh, &admin, Role::Member, 3) };
    let second = InviteRecord { created_at: NOW_MS + 1, ..invite("inv-2", &mesh, &admin, Role::Admin, 1) };
    store.create_invite(&first).expect("creates");
    store.create_invite(&second).expect("creates");
    store.create_invite(&invite("inv-3", &other, &other_admin, Role::Member, 1)).expect("creates");

    assert_eq!(store.invite("inv-1").expect("reads"), Some(first.clone()));
    assert_eq!(store.invite("inv-unknown").expect("reads"), None);
    assert_eq!(store.invites(&mesh.id).expect("lists"), [second.clone(), first.clone()]);
    assert_conflict(store.create_invite(&second), "an invite with this id already exists");
    let elsewhere = InviteRecord { mesh_id: "mesh_unknown".into(), ..invite("inv-4", &mesh, &admin, Role::Member, 1) };
    assert_not_found(store.create_invite(&elsewhere));

    let revoked = store.revoke_invite("inv-1", Some(&admin.id), NOW_MS + 2).expect("revokes");
    assert_eq!(revoked, InviteRecord { revoked_at: Some(NOW_MS + 2), ..first });
    assert_eq!(store.invite("inv-1").expect("reads"), Some(revoked));
    assert_not_found(store.revoke_invite("inv-unknown", None, NOW_MS));

    let log = audit_log(&*store, &mesh.id);
    let created: Vec<&serde_json::Value> = log
        .iter()
        .filter(|entry| entry.event_type == "invite_created")
        .map(|entry| &entry.payload["inviteId"])
        .collect();
    assert_eq!(created, [&json!("inv-1"), &json!("inv-2")]);
    let last = log.last().expect("an entry");
    assert_eq!((last.event_type.as_str(), last.actor.as_deref()), ("invite_revoked", Some(admin.id.as_str())));
}

/// Redemption adds a member with the invite's role and counts a use; a key already in the mesh
/// gets its member back without using the invite; revoked, expired and used-up invites, unknown
/// ids and removed members are refused with the codes the join route maps.
pub fn redeeming_an_invite_follows_its_terms<D: TestDatabase>(database: &D) {
    let store = database.open();
    let (mesh, admin) = mesh_with_admin(&*store, "joining", 1, NOW_MS);
    store.create_invite(&invite("inv-admins", &mesh, &admin, Role::Admin, 2)).expect("creates");

    let first = store.redeem_invite("inv-admins", &new_member(10, "Dana"), NOW_MS + 1).expect("redeems");
    assert!(!first.already_member);
    assert_eq!((first.member.role, first.member.pubkey.as_str()), (Role::Admin, pubkey(10).as_str()));
    assert_eq!((first.member.mesh_id.as_str(), first.member.display_name.as_str()), (mesh.id.as_str(), "Dana"));
    assert_eq!(store.member(&first.member.id).expect("reads"), Some(first.member.clone()));
    let again = store.redeem_invite("inv-admins", &new_member(10, "Dana"), NOW_MS + 2).expect("redeems again");
    assert!(again.already_member);
    assert_eq!(again.member, first.member);
    assert_eq!(store.invite("inv-admins").expect("reads").map(|i| i.used_count), Some(1), "no use counted");

    store.redeem_invite("inv-admins", &new_member(11, "Eli"), NOW_MS + 3).expect("second use");
    assert_conflict(store.redeem_invite("inv-admins", &new_member(12, "Fay"), NOW_MS + 4), "invite_exhausted");
    assert_eq!(store.member_by_pubkey(&mesh.id, &pubkey(12)).expect("reads"), None);
    assert_eq!(store.invite("inv-admins").expect("reads").map(|i| i.used_count), Some(2));

    store.create_invite(&invite("inv-revoked", &mesh, &admin, Role::Member, 5)).expect("creates");
    store.revoke_invite("inv-revoked", None, NOW_MS + 5).expect("revokes");
    assert_conflict(store.redeem_invite("inv-revoked", &new_member(13, "Gus"), NOW_MS + 6), "invite_revoked");

    let expiring =
        InviteRecord { expires_at: NOW_MS / 1000 + 10, ..invite("inv-expiring", &mesh, &admin, Role::Member, 5) };
    store.create_invite(&expiring).expect("creates");
    assert_conflict(store.redeem_invite("inv-expiring", &new_member(14, "Hal"), NOW_MS + 10_000), "invite_expired");
    store.redeem_invite("inv-expiring", &new_member(14, "Hal"), NOW_MS + 9_999).expect("valid until its second");

    assert!(matches!(
        store.redeem_invite("inv-unknown", &new_member(15, "Ivy"), NOW_MS),
        Err(crate::store::StoreError::NotFound(what)) if what == "invite_not_found"
    ));
    store.create_invite(&invite("inv-open", &mesh, &admin, Role::Member, 5)).expect("creates");
    store.change_membership(&first.member.id, MembershipAction::Kick, None, NOW_MS + 11).expect("kicks");
    assert_conflict(store.redeem_invite("inv-open", &new_member(10, "Dana"), NOW_MS + 12), "member_revoked");
    assert_invalid(store.redeem_invite("inv-open", &NewMember { pubkey: "xyz".into(), ..new_member(16, "J") }, NOW_MS));

    let redeemed = audit_types(&*store, &mesh.id).iter().filter(|event| *event == "invite_redeemed").count();
    assert_eq!(redeemed, 3, "one per new member");
    assert_eq!(store.members(&mesh.id).expect("lists").len(), 4);
}

/// Many redemptions at once, through two stores on the same database, never use an invite more
/// often than allowed.
pub fn concurrent_redemptions_never_exceed_max_uses<D: TestDatabase>(database: &D) {
    let stores = [database.open(), database.open()];
    let (mesh, admin) = mesh_with_admin(&*stores[0], "rush", 1, NOW_MS);
    stores[0].create_invite(&invite("inv-rush", &mesh, &admin, Role::Member, 3)).expect("creates");

    let outcomes: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..12u32)
            .map(|n| {
                let store = &stores[n as usize % 2];
                scope.spawn(move || {
                    store.redeem_invite("inv-rush", &new_member(100 + n, &format!("rusher {n}")), NOW_MS + 1)
                })
            })
            .collect();
        handles.into_iter().map(|handle| handle.join().expect("redeems without panicking")).collect()
    });
    let joined = outcomes.iter().filter(|outcome| matches!(outcome, Ok(r) if !r.already_member)).count();
    let refused = outcomes
        .iter()
        .filter(
            |outcome| matches!(outcome, Err(crate::store::StoreError::Conflict(what)) if what == "invite_exhausted"),
        )
        .count();
    assert_eq!((joined, refused), (3, 9), "{outcomes:?}");
    assert_eq!(stores[1].invite("inv-rush").expect("reads").map(|i| i.used_count), Some(3));
    assert_eq!(stores[1].members(&mesh.id).expect("lists").len(), 4);
}

/// Grants are set per peer, reset with `None`, blocked with `Some([])`, listed per mesh, and
/// audited; a change naming a malformed key applies nothing.
pub fn grants_are_set_reset_and_listed<D: TestDatabase>(database: &D) {
    let store = database.open();
    let (mesh, alice) = mesh_with_admin(&*store, "grants", 1, NOW_MS);
    let bob = add_member(&*store, &mesh, 2, NOW_MS + 1);
    let carol = add_member(&*store, &mesh, 3, NOW_MS + 2);
    let (other, _) = mesh_with_admin(&*store, "other", 4, NOW_MS + 3);
    let caps = |list: &[&str]| Some(list.iter().map(|cap| (*cap).to_owned()).collect::<Vec<_>>());

    let after = store
        .set_grants(
            &bob.id,
            &[(alice.pubkey.clone(), caps(&["dm", "read"])), (carol.pubkey.clone(), caps(&[]))],
            NOW_MS + 4,
        )
        .expect("sets");
    let expected = vec![grant(&bob, &alice.pubkey, &["dm", "read"]), grant(&bob, &carol.pubkey, &[])];
    assert_eq!(sorted(after), sorted(expected.clone()));
    assert_eq!(sorted(store.grants(&mesh.id).expect("lists")), sorted(expected));

    let after = store.set_grants(&bob.id, &[(alice.pubkey.clone(), None)], NOW_MS + 5).expect("resets");
    assert_eq!(after, [grant(&bob, &carol.pubkey, &[])]);
    let after = store.set_grants(&bob.id, &[(carol.pubkey.clone(), caps(&["dm"]))], NOW_MS + 6).expect("replaces");
    assert_eq!(after, [grant(&bob, &carol.pubkey, &["dm"])]);
    store.set_grants(&alice.id, &[(bob.pubkey.clone(), caps(&["all"]))], NOW_MS + 7).expect("sets");
    assert_eq!(
        sorted(store.grants(&mesh.id).expect("lists")),
        sorted(vec![grant(&bob, &carol.pubkey, &["dm"]), grant(&alice, &bob.pubkey, &["all"])])
    );
    assert!(store.grants(&other.id).expect("lists").is_empty());

    let before = audit_log(&*store, &mesh.id).len();
    assert_invalid(store.set_grants(
        &bob.id,
        &[(alice.pubkey.clone(), caps(&["dm"])), ("BAD".into(), caps(&[]))],
        NOW_MS + 8,
    ));
    assert_eq!(store.grants(&mesh.id).expect("lists").len(), 2, "nothing of the refused change applied");
    assert_eq!(audit_log(&*store, &mesh.id).len(), before);
    assert_not_found(store.set_grants("mem_unknown", &[(alice.pubkey.clone(), None)], NOW_MS));

    let log = audit_log(&*store, &mesh.id);
    let changes: Vec<(Option<&str>, &serde_json::Value)> = log
        .iter()
        .filter(|entry| entry.event_type == "grants_changed")
        .map(|entry| (entry.actor.as_deref(), &entry.payload["changes"]))
        .collect();
    assert_eq!(changes.len(), 4);
    assert_eq!(changes[0].0, Some(bob.id.as_str()));
    assert_eq!(changes[0].1, &json!({ alice.pubkey.clone(): ["dm", "read"], carol.pubkey.clone(): [] }));
    assert_eq!(changes[1].1, &json!({ alice.pubkey.clone(): null }));
}

/// A member holds at most `MAX_GRANTS` grants: a change that would go past it applies nothing,
/// while replacing or resetting grants it holds still works.
pub fn grants_are_capped_per_member<D: TestDatabase>(database: &D) {
    let store = database.open();
    let (mesh, alice) = mesh_with_admin(&*store, "capped", 1, NOW_MS);
    let blocked = |from: u32, to: u32| (from..to).map(|n| (pubkey(n), Some(vec![]))).collect::<Vec<_>>();
    let full = store.set_grants(&alice.id, &blocked(1_000, 1_000 + MAX_GRANTS as u32), NOW_MS + 1).expect("fills");
    assert_eq!(full.len(), MAX_GRANTS);
    let before = audit_log(&*store, &mesh.id).len();
    let one_more = 1_000 + MAX_GRANTS as u32;
    assert_invalid(store.set_grants(&alice.id, &blocked(one_more, one_more + 1), NOW_MS + 2));
    assert_eq!(store.grants(&mesh.id).expect("lists").len(), MAX_GRANTS, "nothing of the refused change applied");
    assert_eq!(audit_log(&*store, &mesh.id).len(), before);

    let replaced =
        store.set_grants(&alice.id, &[(pubkey(1_000), Some(vec!["dm".into()]))], NOW_MS + 3).expect("replaces");
    assert_eq!(replaced.len(), MAX_GRANTS);
    let swapped = store
        .set_grants(&alice.id, &[(pubkey(1_001), None), (pubkey(one_more), Some(vec![]))], NOW_MS + 4)
        .expect("a reset makes room");
    assert_eq!(swapped.len(), MAX_GRANTS);
}
