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

/// Implements [`DbCode`] for an enum from one table of variants and codes, so writing and
/// reading can never disagree. `$view` turns the stored value into something the codes match.
macro_rules! db_codes {
    ($type:ident as $stored:ty, |$value:ident| $view:expr, { $($variant:ident => $code:literal),+ $(,)? }) => {
        impl DbCode for $type {
            type Stored = $stored;

            fn to_db(self) -> impl ToSql {
                match self {
                    $($type::$variant => $code,)+
                }
            }

            fn from_db($value: &$stored) -> Option<$type> {
                match $view {
                    $($code => Some($type::$variant),)+
                    _ => None,
                }
            }
        }
    };
}

db_codes!(Priority as i64, |stored| *stored, { Now => 0, Next => 1, Low => 2 });
db_codes!(Enc as String, |stored| stored.as_str(), { Box => "box", Multi => "multi", System => "system" });
db_codes!(Role as String, |stored| stored.as_str(), { Admin => "admin", Member => "member" });
db_codes!(DeviceCodeStatus as String, |stored| stored.as_str(), {
    Pending => "pending",
    Approved => "approved",
    Denied => "denied",
    Consumed => "consumed",
});

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
