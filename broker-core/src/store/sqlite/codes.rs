//! Reading stored codes ([`crate::store::codes`]) and JSON columns from SQLite rows.

use rusqlite::Row;
use rusqlite::types::FromSql;

use crate::store::codes::{DbCode, decode};

/// Reads column `index` of `row`, named `column` in the error, as a `T`. An unknown code
/// travels through rusqlite's conversion error and becomes [`crate::store::StoreError::Unreadable`]
/// in `From<rusqlite::Error>`.
pub(super) fn read<T: DbCode>(row: &Row<'_>, index: usize, column: &'static str) -> rusqlite::Result<T>
where
    T::Stored: FromSql,
{
    let stored: T::Stored = row.get(index)?;
    decode::<T>(&stored, column).map_err(|unknown| {
        let data_type = row.get_ref(index).map(|value| value.data_type()).unwrap_or(rusqlite::types::Type::Null);
        rusqlite::Error::FromSqlConversionFailure(index, data_type, Box::new(unknown))
    })
}

/// Reads column `index` as JSON. Malformed JSON is an error with serde's reason as its source,
/// never an empty default (an empty grant would block a peer).
pub(super) fn read_json<T: serde::de::DeserializeOwned>(row: &Row<'_>, index: usize) -> rusqlite::Result<T> {
    let text: String = row.get(index)?;
    serde_json::from_str(&text)
        .map_err(|error| rusqlite::Error::FromSqlConversionFailure(index, rusqlite::types::Type::Text, Box::new(error)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Enc, Priority, Role};
    use crate::store::{DeviceCodeStatus, StoreError};

    /// Writes `value`'s code into a scratch column and reads it back.
    fn round_trip<T: DbCode>(conn: &rusqlite::Connection, value: T) -> T
    where
        T::Stored: FromSql,
        T::Code: rusqlite::ToSql,
    {
        conn.query_row("SELECT ?1", [value.to_db()], |row| read::<T>(row, 0, "scratch.value")).expect("reads back")
    }

    #[test]
    fn every_variant_reads_back_as_itself() {
        let conn = rusqlite::Connection::open_in_memory().expect("memory database");
        for priority in [Priority::Now, Priority::Next, Priority::Low] {
            assert_eq!(round_trip(&conn, priority), priority);
        }
        for enc in [Enc::Box, Enc::Multi, Enc::System] {
            assert_eq!(round_trip(&conn, enc), enc);
        }
        for role in [Role::Admin, Role::Member] {
            assert_eq!(round_trip(&conn, role), role);
        }
        for status in [
            DeviceCodeStatus::Pending,
            DeviceCodeStatus::Approved,
            DeviceCodeStatus::Denied,
            DeviceCodeStatus::Consumed,
        ] {
            assert_eq!(round_trip(&conn, status), status);
        }
    }

    #[test]
    fn an_unknown_code_is_an_error_naming_the_column_and_the_value() {
        let conn = rusqlite::Connection::open_in_memory().expect("memory database");
        let error: StoreError = conn
            .query_row("SELECT 7", [], |row| read::<Priority>(row, 0, "queue.priority"))
            .expect_err("7 is no priority")
            .into();
        assert!(
            matches!(&error, StoreError::Unreadable { column: "queue.priority", value } if value == "7"),
            "{error:?}"
        );
        let error: StoreError = conn
            .query_row("SELECT 'owner'", [], |row| read::<Role>(row, 0, "members.role"))
            .expect_err("owner is no role")
            .into();
        assert_eq!(error.to_string(), "column members.role holds \"owner\", which this broker cannot read");
    }
}
