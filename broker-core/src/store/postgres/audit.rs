//! The audit chain in Postgres: append inside the caller's transaction, query, verify.
//!
//! Appends take the scope's transaction-scoped advisory lock ([`super::lock_scope`]) before
//! reading its tail, and hold it until the transaction ends, so two writers — brokers sharing
//! the database, an operator command — can never both extend the same tail: the chain cannot
//! fork. The tail is read by a statement after the lock's own, so at READ COMMITTED it sees
//! every entry committed before the lock was granted (a REPEATABLE READ snapshot could predate
//! them).

use std::collections::{BTreeSet, HashMap, HashSet};

use postgres::fallible_iterator::FallibleIterator as _;
use postgres::{GenericClient, Row};

use super::lock_scope;
use crate::crypto::{AUDIT_GENESIS, audit_hash, canonical_json};
use crate::protocol::iso8601_ms;
use crate::store::{AuditEntry, AuditEvent, AuditVerification, StoreResult};

/// The audit scopes one transaction holds: the ones it locked (until it ends), and the latest
/// hash of each it appended to, so that within a transaction (a writer batch) no scope is locked
/// twice and appends after a scope's first read no row. A writer batch defers its rows
/// ([`Scopes::deferred`]) and inserts them at once ([`Scopes::flush`]).
#[derive(Debug, Default)]
pub(super) struct Scopes {
    locked: HashSet<String>,
    tails: HashMap<String, String>,
    /// Rows appended but not inserted yet, in chain order; `None`: inserted as appended.
    deferred: Option<Vec<AuditRow>>,
}

#[derive(Debug)]
struct AuditRow {
    scope: String,
    event_type: String,
    actor: Option<String>,
    payload: String,
    prev_hash: String,
    hash: String,
    created_at: String,
}

impl Scopes {
    /// Locks the scopes this transaction does not hold yet, in sorted order: two transactions
    /// wanting the same scopes then wait for each other instead of deadlocking.
    pub(super) fn lock<'a>(
        &mut self,
        db: &mut impl GenericClient,
        scopes: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), postgres::Error> {
        let wanted: BTreeSet<&str> = scopes.into_iter().filter(|scope| !self.locked.contains(*scope)).collect();
        for scope in wanted {
            lock_scope(db, scope)?;
            self.locked.insert(scope.to_owned());
        }
        Ok(())
    }

    /// Scopes whose appended rows wait for [`Scopes::flush`].
    pub(super) fn deferred() -> Scopes {
        Scopes { deferred: Some(Vec::new()), ..Scopes::default() }
    }

    /// Inserts the deferred rows in one statement, in the order they were appended (their ids
    /// follow that order, which is the chain's).
    pub(super) fn flush(&mut self, db: &mut impl GenericClient) -> Result<(), postgres::Error> {
        let Some(rows) = self.deferred.as_mut().filter(|rows| !rows.is_empty()) else { return Ok(()) };
        let column = |f: fn(&AuditRow) -> &str| rows.iter().map(f).collect::<Vec<&str>>();
        let actors: Vec<Option<&str>> = rows.iter().map(|row| row.actor.as_deref()).collect();
        db.execute(
            "INSERT INTO audit_log (mesh_id, event_type, actor, payload, prev_hash, hash, created_at)
             SELECT t.mesh_id, t.event_type, t.actor, t.payload, t.prev_hash, t.hash, t.created_at
             FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[])
                  WITH ORDINALITY AS t(mesh_id, event_type, actor, payload, prev_hash, hash, created_at, n)
             ORDER BY t.n",
            &[
                &column(|row| &row.scope),
                &column(|row| &row.event_type),
                &actors,
                &column(|row| &row.payload),
                &column(|row| &row.prev_hash),
                &column(|row| &row.hash),
                &column(|row| &row.created_at),
            ],
        )?;
        rows.clear();
        Ok(())
    }
}

/// Appends `event` to its scope, whose lock this transaction holds.
fn append_locked(db: &mut impl GenericClient, event: &AuditEvent, now_ms: u64, scopes: &mut Scopes) -> StoreResult<()> {
    let prev = match scopes.tails.get(&event.scope) {
        Some(hash) => hash.clone(),
        None => db
            .query_opt("SELECT hash FROM audit_log WHERE mesh_id = $1 ORDER BY id DESC LIMIT 1", &[&event.scope])?
            .map(|row| row.try_get::<_, String>(0))
            .transpose()?
            .unwrap_or_else(|| AUDIT_GENESIS.to_owned()),
    };
    let created_at = iso8601_ms(now_ms);
    let hash = audit_hash(&prev, &event.scope, &event.event_type, event.actor.as_deref(), &event.payload, &created_at);
    scopes.tails.insert(event.scope.clone(), hash.clone());
    let row = AuditRow {
        scope: event.scope.clone(),
        event_type: event.event_type.clone(),
        actor: event.actor.clone(),
        payload: canonical_json(&event.payload),
        prev_hash: prev,
        hash,
        created_at,
    };
    match &mut scopes.deferred {
        Some(rows) => rows.push(row),
        None => {
            db.execute(
                "INSERT INTO audit_log (mesh_id, event_type, actor, payload, prev_hash, hash, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[&row.scope, &row.event_type, &row.actor, &row.payload, &row.prev_hash, &row.hash, &row.created_at],
            )?;
        }
    }
    Ok(())
}

pub(super) fn append(db: &mut impl GenericClient, event: &AuditEvent, now_ms: u64) -> StoreResult<()> {
    append_all(db, std::slice::from_ref(event), now_ms)
}

/// Appends `events` in the given order, their scopes locked first.
pub(super) fn append_all(db: &mut impl GenericClient, events: &[AuditEvent], now_ms: u64) -> StoreResult<()> {
    append_all_with(db, events, now_ms, &mut Scopes::default())
}

/// [`append_all`] in a transaction that keeps `scopes` across its appends.
pub(super) fn append_all_with(
    db: &mut impl GenericClient,
    events: &[AuditEvent],
    now_ms: u64,
    scopes: &mut Scopes,
) -> StoreResult<()> {
    scopes.lock(db, events.iter().map(|event| event.scope.as_str()))?;
    for event in events {
        append_locked(db, event, now_ms, scopes)?;
    }
    Ok(())
}

fn entry_from_row(row: &Row) -> StoreResult<AuditEntry> {
    let payload: String = row.try_get(4)?;
    Ok(AuditEntry {
        id: row.try_get(0)?,
        scope: row.try_get(1)?,
        event_type: row.try_get(2)?,
        actor: row.try_get(3)?,
        payload: serde_json::from_str(&payload).unwrap_or(serde_json::Value::String(payload)),
        prev_hash: row.try_get(5)?,
        hash: row.try_get(6)?,
        created_at: row.try_get(7)?,
    })
}

const COLUMNS: &str = "id, mesh_id, event_type, actor, payload, prev_hash, hash, created_at";

pub(super) fn entries(
    db: &mut impl GenericClient,
    scope: &str,
    event_type: Option<&str>,
    limit: u32,
    offset: u32,
) -> StoreResult<(Vec<AuditEntry>, u64)> {
    // `$2::text`: a parameter only tested for NULL has no type of its own.
    let total: i64 = db
        .query_one(
            "SELECT COUNT(*) FROM audit_log WHERE mesh_id = $1 AND ($2::text IS NULL OR event_type = $2)",
            &[&scope, &event_type],
        )?
        .try_get(0)?;
    let rows = db.query(
        &format!(
            "SELECT {COLUMNS} FROM audit_log WHERE mesh_id = $1 AND ($2::text IS NULL OR event_type = $2)
             ORDER BY id DESC LIMIT $3 OFFSET $4"
        ),
        &[&scope, &event_type, &i64::from(limit), &i64::from(offset)],
    )?;
    let entries = rows.iter().map(entry_from_row).collect::<StoreResult<Vec<_>>>()?;
    Ok((entries, total as u64))
}

/// Walks the chain in order, streaming it; the first entry whose link or hash does not check
/// out is reported.
pub(super) fn verify(db: &mut impl GenericClient, scope: &str) -> StoreResult<AuditVerification> {
    let mut rows = db.query_raw(&format!("SELECT {COLUMNS} FROM audit_log WHERE mesh_id = $1 ORDER BY id"), [scope])?;
    let mut expected_prev = AUDIT_GENESIS.to_owned();
    let mut count = 0u64;
    while let Some(row) = rows.next()? {
        count += 1;
        let id: i64 = row.try_get(0)?;
        let stored_payload: String = row.try_get(4)?;
        let entry = entry_from_row(&row)?;
        let recomputed = entry.recomputed_hash();
        let payload_intact = serde_json::from_str::<serde_json::Value>(&stored_payload).is_ok();
        if entry.prev_hash != expected_prev || entry.hash != recomputed || !payload_intact {
            return Ok(AuditVerification { valid: false, entries: count, broken_at: Some(id) });
        }
        expected_prev = entry.hash;
    }
    Ok(AuditVerification { valid: true, entries: count, broken_at: None })
}
