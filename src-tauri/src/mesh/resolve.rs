//! Turning what a person or model typed as a recipient into a broker `targetSpec`. Pure.
//!
//! Forms: `*` (everyone else in the mesh), `@group`, a 64-hex member or session key, or a
//! display name. Any of them may be prefixed with `mesh-slug:` to pick the mesh when several are
//! joined. Display names match case-insensitively: an exact match first, then a unique partial
//! (substring) match; otherwise the error lists the candidates. Several sessions of one member
//! that match resolve to the member key (the broker reaches each of its sessions); one matching
//! session resolves to its session key. A member with no session online matches by the name it
//! last used and resolves to its member key (the broker queues for it): `Resolution::offline`.

use std::fmt;

/// A peer session as resolution sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerView {
    pub display_name: String,
    /// Session key (or member key when the session has none).
    pub pubkey: String,
    pub member_pubkey: String,
}

/// One joined mesh and who is in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshView {
    pub mesh_id: String,
    pub slug: String,
    /// This session's own key, never a recipient.
    pub own_session: String,
    pub peers: Vec<PeerView>,
    /// Members with no session online (filled only when a name was not found among `peers`);
    /// each `pubkey` is the member key.
    pub offline: Vec<PeerView>,
}

/// Where one recipient goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    pub mesh_id: String,
    pub slug: String,
    pub target_spec: String,
    /// What to call the recipient in replies (`alice`, `@dev`, `*`).
    pub label: String,
    /// A member with no session online: the message waits in its queue.
    pub offline: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResolveError {
    NoMeshes,
    UnknownMesh {
        prefix: String,
        meshes: Vec<String>,
    },
    /// Several meshes could be meant; `choices` are fully qualified targets.
    AmbiguousMesh {
        target: String,
        choices: Vec<String>,
    },
    NotFound {
        target: String,
        known: Vec<String>,
    },
    Ambiguous {
        target: String,
        candidates: Vec<String>,
    },
    Empty,
    /// A group or `*` where one peer is needed.
    NotAPeer {
        target: String,
    },
}

impl fmt::Display for ResolveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResolveError::NoMeshes => write!(f, "no meshes joined; run `claudemesh join <invite link>` first"),
            ResolveError::UnknownMesh { prefix, meshes } => {
                write!(f, "no joined mesh is called {prefix:?}; joined meshes: {}", meshes.join(", "))
            }
            ResolveError::AmbiguousMesh { target, choices } => {
                write!(f, "{target:?} could mean several meshes; say which: {}", choices.join(", "))
            }
            ResolveError::NotFound { target, known } if known.is_empty() => {
                write!(f, "no peer matches {target:?} and no other peer is online; check list_peers later")
            }
            ResolveError::NotFound { target, known } => {
                write!(f, "no peer matches {target:?}; online peers: {}", known.join(", "))
            }
            ResolveError::Ambiguous { target, candidates } => {
                write!(f, "{target:?} matches several peers; use one of: {}", candidates.join(", "))
            }
            ResolveError::Empty => write!(f, "no recipient given"),
            ResolveError::NotAPeer { target } => write!(f, "{target:?} is not one peer; name a peer or give its key"),
        }
    }
}

impl std::error::Error for ResolveError {}

fn is_key(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Resolves one recipient.
pub fn resolve(target: &str, meshes: &[MeshView]) -> Result<Resolution, ResolveError> {
    let target = target.trim();
    if target.is_empty() {
        return Err(ResolveError::Empty);
    }
    if meshes.is_empty() {
        return Err(ResolveError::NoMeshes);
    }
    // `slug:rest` narrows to one mesh, when `slug` names a joined mesh.
    let (scope, rest): (Vec<&MeshView>, &str) = match target.split_once(':') {
        Some((prefix, rest)) if !rest.is_empty() => {
            match meshes.iter().find(|m| m.slug.eq_ignore_ascii_case(prefix) || m.mesh_id == prefix) {
                Some(mesh) => (vec![mesh], rest.trim()),
                None if !meshes.iter().any(|m| m.peers.iter().any(|p| p.display_name.contains(':'))) => {
                    return Err(ResolveError::UnknownMesh {
                        prefix: prefix.to_owned(),
                        meshes: meshes.iter().map(|m| m.slug.clone()).collect(),
                    });
                }
                None => (meshes.iter().collect(), target),
            }
        }
        _ => (meshes.iter().collect(), target),
    };

    if rest == "*" || rest == "@all" || rest.starts_with('@') {
        let spec = if rest == "@all" { "*" } else { rest };
        return only_mesh(&scope, rest).map(|mesh| Resolution {
            mesh_id: mesh.mesh_id.clone(),
            slug: mesh.slug.clone(),
            target_spec: spec.to_owned(),
            label: spec.to_owned(),
            offline: false,
        });
    }

    if is_key(rest) {
        let holders: Vec<&MeshView> = scope
            .iter()
            .copied()
            .filter(|m| m.peers.iter().any(|p| p.pubkey == rest || p.member_pubkey == rest))
            .collect();
        let mesh = match holders.as_slice() {
            [one] => *one,
            // An offline member's key: the broker knows whether it is a member.
            [] => only_mesh(&scope, rest)?,
            several => only_mesh(several, rest)?,
        };
        let label = mesh
            .peers
            .iter()
            .find(|p| p.pubkey == rest || p.member_pubkey == rest)
            .map(|p| p.display_name.clone())
            .unwrap_or_else(|| format!("peer-{}", &rest[..8]));
        return Ok(Resolution {
            mesh_id: mesh.mesh_id.clone(),
            slug: mesh.slug.clone(),
            target_spec: rest.to_owned(),
            label,
            offline: false,
        });
    }

    let wanted = rest.to_lowercase();
    let others = |mesh: &'_ MeshView| {
        let own = mesh.own_session.clone();
        mesh.peers.clone().into_iter().filter(move |p| p.pubkey != own)
    };
    let candidates = |mesh: &'_ MeshView| others(mesh).chain(mesh.offline.clone());
    let matching = |exact: bool| -> Vec<(&MeshView, PeerView)> {
        scope
            .iter()
            .flat_map(|mesh| candidates(mesh).map(move |p| (*mesh, p)))
            .filter(|(_, p)| {
                let name = p.display_name.to_lowercase();
                if exact { name == wanted } else { name.contains(&wanted) }
            })
            .collect()
    };
    let mut found = matching(true);
    if found.is_empty() {
        found = matching(false);
    }
    if found.is_empty() {
        let mut known: Vec<String> =
            scope.iter().flat_map(|mesh| others(mesh).map(|p| qualified(mesh, &p, meshes.len()))).collect();
        known.sort();
        known.dedup();
        return Err(ResolveError::NotFound { target: target.to_owned(), known });
    }
    // Group the matches by (mesh, member): one member is one recipient.
    let mut members: Vec<(&MeshView, &str, Vec<&PeerView>)> = Vec::new();
    for (mesh, peer) in &found {
        match members.iter_mut().find(|(m, member, _)| m.mesh_id == mesh.mesh_id && *member == peer.member_pubkey) {
            Some((_, _, sessions)) => sessions.push(peer),
            None => members.push((mesh, &peer.member_pubkey, vec![peer])),
        }
    }
    match members.as_slice() {
        [(mesh, member, sessions)] => {
            let spec = match sessions.as_slice() {
                [one] => one.pubkey.clone(),
                _ => (*member).to_owned(),
            };
            Ok(Resolution {
                mesh_id: mesh.mesh_id.clone(),
                slug: mesh.slug.clone(),
                target_spec: spec,
                label: sessions[0].display_name.clone(),
                offline: mesh.offline.iter().any(|m| m.member_pubkey == *member),
            })
        }
        _ => {
            let mut candidates: Vec<String> = found
                .iter()
                .map(|(mesh, p)| format!("{} (key {})", qualified(mesh, p, meshes.len()), p.pubkey))
                .collect();
            candidates.sort();
            Err(ResolveError::Ambiguous { target: target.to_owned(), candidates })
        }
    }
}

/// `name`, or `slug:name` when several meshes are joined.
fn qualified(mesh: &MeshView, peer: &PeerView, mesh_count: usize) -> String {
    if mesh_count > 1 { format!("{}:{}", mesh.slug, peer.display_name) } else { peer.display_name.clone() }
}

fn only_mesh<'a>(scope: &[&'a MeshView], rest: &str) -> Result<&'a MeshView, ResolveError> {
    match scope {
        [one] => Ok(one),
        several => Err(ResolveError::AmbiguousMesh {
            target: rest.to_owned(),
            choices: several.iter().map(|m| format!("{}:{rest}", m.slug)).collect(),
        }),
    }
}

/// Resolves several recipients, dropping those that resolve to the same mesh and target.
pub fn resolve_all(targets: &[String], meshes: &[MeshView]) -> Vec<(String, Result<Resolution, ResolveError>)> {
    let mut seen: Vec<(String, String)> = Vec::new();
    let mut out = Vec::new();
    for target in targets {
        let result = resolve(target, meshes);
        if let Ok(r) = &result {
            let key = (r.mesh_id.clone(), r.target_spec.clone());
            if seen.contains(&key) {
                continue;
            }
            seen.push(key);
        }
        out.push((target.clone(), result));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(c: char) -> String {
        c.to_string().repeat(64)
    }

    fn peer(name: &str, session: char, member: char) -> PeerView {
        PeerView { display_name: name.into(), pubkey: key(session), member_pubkey: key(member) }
    }

    fn mesh(slug: &str, own: char, peers: Vec<PeerView>) -> MeshView {
        MeshView { mesh_id: format!("mesh_{slug}"), slug: slug.into(), own_session: key(own), peers, offline: vec![] }
    }

    /// One mesh: me (session 0), alice (1), alicia (2), bob with two sessions (3, 4), and
    /// two different members both called "dup" (5, 6).
    fn acme() -> Vec<MeshView> {
        vec![mesh(
            "acme",
            '0',
            vec![
                peer("me", '0', 'a'),
                peer("alice", '1', 'b'),
                peer("Alicia", '2', 'c'),
                peer("bob", '3', 'd'),
                peer("bob", '4', 'd'),
                peer("dup", '5', 'e'),
                peer("dup", '6', 'f'),
            ],
        )]
    }

    fn check(target: &str, meshes: &[MeshView], expected: Result<&str, &str>) {
        let result = resolve(target, meshes);
        match (result, expected) {
            (Ok(r), Ok(spec)) => assert_eq!(r.target_spec, spec, "{target}"),
            (Err(e), Err(fragment)) => {
                assert!(e.to_string().contains(fragment), "{target}: {e} should mention {fragment:?}")
            }
            (got, want) => panic!("{target}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn exact_name_beats_partial_and_is_case_insensitive() {
        check("alice", &acme(), Ok(&key('1')));
        check("ALICE", &acme(), Ok(&key('1')));
        check("alicia", &acme(), Ok(&key('2')));
    }

    #[test]
    fn a_unique_partial_match_resolves_and_an_ambiguous_one_lists_candidates() {
        check("lici", &acme(), Ok(&key('2')));
        let error = resolve("ali", &acme()).expect_err("ambiguous");
        let ResolveError::Ambiguous { candidates, .. } = &error else { panic!("{error:?}") };
        assert_eq!(candidates.len(), 2);
        assert!(
            candidates.iter().any(|c| c.starts_with("alice")) && candidates.iter().any(|c| c.starts_with("Alicia"))
        );
    }

    #[test]
    fn several_sessions_of_one_member_resolve_to_the_member_but_two_members_are_ambiguous() {
        check("bob", &acme(), Ok(&key('d')));
        check("dup", &acme(), Err("matches several peers"));
    }

    #[test]
    fn unknown_names_list_who_is_online_and_never_the_caller_itself() {
        let error = resolve("carol", &acme()).expect_err("not found");
        let ResolveError::NotFound { known, .. } = &error else { panic!("{error:?}") };
        assert!(known.contains(&"alice".to_owned()) && !known.contains(&"me".to_owned()), "{known:?}");
        check("me", &acme(), Err("no peer matches"));
    }

    #[test]
    fn an_offline_member_is_found_by_name_after_every_online_exact_match() {
        let mut meshes = acme();
        meshes[0].offline = vec![peer("carol", 'g', 'g'), peer("alfred", 'h', 'h'), peer("Bobby", 'i', 'i')];
        let carol = resolve("carol", &meshes).expect("an offline member resolves");
        assert_eq!(
            (carol.target_spec.as_str(), carol.label.as_str(), carol.offline),
            (key('g').as_str(), "carol", true)
        );
        let alice = resolve("alice", &meshes).expect("online");
        assert!(!alice.offline, "{alice:?}");
        // "bob" is an exact online match; "bobb" only the offline Bobby's partial one.
        check("bob", &meshes, Ok(&key('d')));
        check("bobb", &meshes, Ok(&key('i')));
        // A partial match online and offline alike is ambiguous and lists both.
        let error = resolve("alf", &meshes).map(|r| r.target_spec);
        assert_eq!(error, Ok(key('h')), "only alfred contains alf");
        check("al", &meshes, Err("matches several peers"));
        check("zed", &meshes, Err("no peer matches"));
    }

    #[test]
    fn keys_groups_and_broadcast_pass_through() {
        check(&key('1'), &acme(), Ok(&key('1')));
        check(&key('b'), &acme(), Ok(&key('b')));
        check(&key('9'), &acme(), Ok(&key('9')));
        check("@dev", &acme(), Ok("@dev"));
        check("*", &acme(), Ok("*"));
        check("@all", &acme(), Ok("*"));
    }

    #[test]
    fn several_meshes_need_a_prefix_for_broadcasts_and_colliding_names() {
        let meshes = vec![
            mesh("acme", '0', vec![peer("alice", '1', 'b'), peer("carol", '7', 'g')]),
            mesh("beta", '8', vec![peer("alice", '9', 'h')]),
        ];
        check("*", &meshes, Err("acme:*"));
        check("beta:*", &meshes, Ok("*"));
        check("alice", &meshes, Err("acme:alice"));
        check("beta:alice", &meshes, Ok(&key('9')));
        check("carol", &meshes, Ok(&key('7')));
        check("gamma:alice", &meshes, Err("no joined mesh is called"));
        check(&key('9'), &meshes, Ok(&key('9')));
        let r = resolve(&key('9'), &meshes).expect("resolves");
        assert_eq!(r.slug, "beta", "a key is found in the mesh that has it");
    }

    #[test]
    fn no_meshes_and_empty_targets_say_what_to_do() {
        check("alice", &[], Err("claudemesh join"));
        check("  ", &acme(), Err("no recipient"));
    }

    #[test]
    fn lists_drop_duplicates_after_resolution() {
        let targets = vec!["alice".to_owned(), "ALICE".to_owned(), key('1'), "bob".to_owned()];
        let resolved = resolve_all(&targets, &acme());
        let specs: Vec<String> =
            resolved.iter().map(|(_, r)| r.as_ref().expect("resolves").target_spec.clone()).collect();
        assert_eq!(specs, [key('1'), key('d')]);
    }
}
