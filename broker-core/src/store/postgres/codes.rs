//! Reading stored codes ([`crate::store::codes`]) and JSON columns from Postgres rows.

use postgres::Row;
use postgres::types::FromSqlOwned;

use crate::store::codes::{DbCode, decode};
use crate::store::{StoreError, StoreResult};

/// Column `index` of `row`, named `column` in the error, as a `T`.
pub(super) fn read<T: DbCode>(row: &Row, index: usize, column: &'static str) -> StoreResult<T>
where
    T::Stored: FromSqlOwned,
{
    let stored: T::Stored = row.try_get(index)?;
    Ok(decode::<T>(&stored, column)?)
}

/// Column `index` (text) as JSON. Malformed JSON is an error, never an empty default (an empty
/// grant would block a peer).
pub(super) fn read_json<T: serde::de::DeserializeOwned>(
    row: &Row,
    index: usize,
    column: &'static str,
) -> StoreResult<T> {
    let text: String = row.try_get(index)?;
    serde_json::from_str(&text).map_err(|_| StoreError::Unreadable { column, value: text })
}
