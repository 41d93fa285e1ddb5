//! Creates the meshes and members a scenario needs, with the operator API on the broker's data
//! directory (the same code `claudemesh-broker mesh create` / `member add` run).

use anyhow::{Context as _, Result, anyhow};
use broker_core::crypto::Keypair;
use broker_core::protocol::Role;

use crate::broker;

/// One member a peer session will connect as.
#[derive(Debug, Clone)]
pub struct Identity {
    pub mesh_id: String,
    pub member_id: String,
    pub key: Keypair,
    pub name: String,
}

/// Threads adding members at once: the store's writer commits what they submit together, so
/// thousands of members cost a few commits instead of one fsync each.
const ADD_THREADS: usize = 32;

/// Creates `meshes` meshes named `<prefix>-<n>` with `members_per_mesh` fresh members each.
/// Returns the members mesh by mesh.
pub fn create_meshes(
    data_dir: &std::path::Path,
    database_url: Option<&str>,
    prefix: &str,
    meshes: usize,
    members_per_mesh: usize,
) -> Result<Vec<Vec<Identity>>> {
    let operator = broker::operator(data_dir, database_url)?;
    let mut mesh_ids = Vec::with_capacity(meshes);
    for n in 0..meshes {
        let created = operator
            .create_mesh(&format!("{prefix}-{n}"), None)
            .with_context(|| format!("creating mesh {prefix}-{n}"))?;
        mesh_ids.push(created.mesh.id);
    }
    let wanted: Vec<(usize, usize)> =
        (0..meshes).flat_map(|mesh| (0..members_per_mesh).map(move |member| (mesh, member))).collect();
    let chunk = wanted.len().div_ceil(ADD_THREADS).max(1);
    let added: Vec<Result<Vec<(usize, Identity)>>> = std::thread::scope(|scope| {
        let workers: Vec<_> = wanted
            .chunks(chunk)
            .map(|slice| {
                let (operator, mesh_ids) = (&operator, &mesh_ids);
                scope.spawn(move || {
                    slice
                        .iter()
                        .map(|&(mesh, member)| {
                            let key = Keypair::generate();
                            let name = format!("peer-{mesh}-{member}");
                            let (_, record) = operator
                                .add_member(&mesh_ids[mesh], &key.public_hex(), &name, Role::Member)
                                .with_context(|| format!("adding member {name}"))?;
                            Ok((mesh, Identity { mesh_id: mesh_ids[mesh].clone(), member_id: record.id, key, name }))
                        })
                        .collect::<Result<Vec<_>>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or_else(|_| Err(anyhow!("a member-adding thread panicked"))))
            .collect()
    });
    let mut by_mesh: Vec<Vec<Identity>> = (0..meshes).map(|_| Vec::with_capacity(members_per_mesh)).collect();
    for batch in added {
        for (mesh, identity) in batch? {
            by_mesh[mesh].push(identity);
        }
    }
    Ok(by_mesh)
}
