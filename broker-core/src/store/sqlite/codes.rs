//! How enum values are written to SQLite columns and read back. These encodings belong to the
//! database, not to the wire: `protocol` may rename a variant's JSON spelling without touching
//! stored rows. A stored value no variant matches is an error naming the column
//! ([`StoreError::Unreadable`]), never a silent default.

use std::fmt::Debug;

use rusqlite::Row;
use rusqlite::types::{FromSql, ToSql};

use crate::protocol::{Enc, Priority, Role};
use crate::store::{DeviceCodeStatus, StoreError};

/// A value stored as a fixed code.
pub(super) trait DbCode: Sized {
    /// What the column holds when read back.
    type Stored: FromSql + Debug;

    fn to_db(self) -> impl ToSql;
    fn from_db(stored: &Self::Stored) -> Option<Self>;
}

/// The stored value that no variant matches, carried through rusqlite's conversion error and
/// turned into [`StoreError::Unreadable`] by `From<rusqlite::Error>`.
#[derive(Debug, thiserror::Error)]
#[error("column {column} holds {value}, which this broker cannot read")]
pub(super) struct UnknownCode {
    pub(super) column: &'static str,
    pub(super) value: String,
}

impl From<UnknownCode> for StoreError {
    fn from(unknown: UnknownCode) -> Self {
        StoreError::Unreadable { column: unknown.column, value: unknown.value }
    }
}

/// Reads column `index` of `row`, named `column` in the error, as a `T`.
pub(super) fn read<T: DbCode>(row: &Row<'_>, index: usize, column: &'static str) -> rusqlite::Result<T> {
    let stored: T::Stored = row.get(index)?;
    T::from_db(&stored).ok_or_else(|| {
        let data_type = row.get_ref(index).map(|value| value.data_type()).unwrap_or(rusqlite::types::Type::Null);
        rusqlite::Error::FromSqlConversionFailure(
            index,
            data_type,
            Box::new(UnknownCode { column, value: format!("{stored:?}") }),
        )
    })
}

/// Reads column `index` as JSON. Malformed JSON is an error with serde's reason as its source,
/// never an empty default (an empty grant would block a peer).
pub(super) fn read_json<T: serde::de::DeserializeOwned>(row: &Row<'_>, index: usize) -> rusqlite::Result<T> {
    let text: String = row.get(index)?;
    serde_json::from_str(&text)
        .map_err(|error| rusqlite::Error::FromSqlConversionFailure(index, rusqlite::types::Type::Text, Box::new(error)))
}

impl DbCode for Priority {
    type Stored = i64;

    fn to_db(self) -> impl ToSql {
        match self {
            Priority::Now => 0i64,
            Priority::Next => 1,
            Priority::Low => 2,
        }
    }

    fn from_db(stored: &i64) -> Option<Priority> {
        match stored {
            0 => Some(Priority::Now),
            1 => Some(Priority::Next),
            2 => Some(Priority::Low),
            _ => None,
        }
    }
}

impl DbCode for Enc {
    type Stored = String;

    fn to_db(self) -> impl ToSql {
        match self {
            Enc::Box => "box",
            Enc::Multi => "multi",
            Enc::System => "system",
        }
    }

    fn from_db(stored: &String) -> Option<Enc> {
        match stored.as_str() {
            "box" => Some(Enc::Box),
            "multi" => Some(Enc::Multi),
            "system" => Some(Enc::System),
            _ => None,
        }
    }
}

impl DbCode for Role {
    type Stored = String;

    fn to_db(self) -> impl ToSql {
        match self {
            Role::Admin => "admin",
            Role::Member => "member",
        }
    }

    fn from_db(stored: &String) -> Option<Role> {
        match stored.as_str() {
            "admin" => Some(Role::Admin),
            "member" => Some(Role::Member),
            _ => None,
        }
    }
}

impl DbCode for DeviceCodeStatus {
    type Stored = String;

    fn to_db(self) -> impl ToSql {
        match self {
            DeviceCodeStatus::Pending => "pending",
            DeviceCodeStatus::Approved => "approved",
            DeviceCodeStatus::Denied => "denied",
            DeviceCodeStatus::Consumed => "consumed",
        }
    }

    fn from_db(stored: &String) -> Option<DeviceCodeStatus> {
        match stored.as_str() {
            "pending" => Some(DeviceCodeStatus::Pending),
            "approved" => Some(DeviceCodeStatus::Approved),
            "denied" => Some(DeviceCodeStatus::Denied),
            "consumed" => Some(DeviceCodeStatus::Consumed),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes `value`'s code into a scratch column and reads it back.
    fn round_trip<T: DbCode>(conn: &rusqlite::Connection, value: T) -> T {
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
