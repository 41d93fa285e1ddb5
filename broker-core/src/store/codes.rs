//! How enum values are stored in database columns, for every store. These encodings belong to
//! the database, not to the wire: `protocol` may rename a variant's JSON spelling without
//! touching stored rows. A stored value no variant matches is an error naming the column
//! ([`StoreError::Unreadable`]), never a silent default; each store reads columns through its
//! own glue (`sqlite::codes`, `postgres::codes`).

use std::fmt::Debug;

use crate::protocol::{Enc, Priority, Role};
use crate::store::{DeviceCodeStatus, StoreError};

/// A value stored as a fixed code.
pub(crate) trait DbCode: Sized {
    /// What is written (an integer or a static string: every driver binds both).
    type Code: Copy;
    /// What the column holds when read back.
    type Stored: Debug;

    fn to_db(self) -> Self::Code;
    fn from_db(stored: &Self::Stored) -> Option<Self>;
}

/// The stored value that no variant matches.
#[derive(Debug, thiserror::Error)]
#[error("column {column} holds {value}, which this broker cannot read")]
pub(crate) struct UnknownCode {
    pub(crate) column: &'static str,
    pub(crate) value: String,
}

impl From<UnknownCode> for StoreError {
    fn from(unknown: UnknownCode) -> Self {
        StoreError::Unreadable { column: unknown.column, value: unknown.value }
    }
}

/// `stored` (read from `column`) as a `T`.
pub(crate) fn decode<T: DbCode>(stored: &T::Stored, column: &'static str) -> Result<T, UnknownCode> {
    T::from_db(stored).ok_or_else(|| UnknownCode { column, value: format!("{stored:?}") })
}

/// Implements [`DbCode`] for an enum from one table of variants and codes, so writing and
/// reading can never disagree. `$view` turns the stored value into something the codes match.
macro_rules! db_codes {
    ($type:ident as $code:ty, $stored:ty, |$value:ident| $view:expr, { $($variant:ident => $literal:literal),+ $(,)? }) => {
        impl DbCode for $type {
            type Code = $code;
            type Stored = $stored;

            fn to_db(self) -> $code {
                match self {
                    $($type::$variant => $literal,)+
                }
            }

            fn from_db($value: &$stored) -> Option<$type> {
                match $view {
                    $($literal => Some($type::$variant),)+
                    _ => None,
                }
            }
        }
    };
}

db_codes!(Priority as i64, i64, |stored| *stored, { Now => 0, Next => 1, Low => 2 });
db_codes!(Enc as &'static str, String, |stored| stored.as_str(), { Box => "box", Multi => "multi", System => "system" });
db_codes!(Role as &'static str, String, |stored| stored.as_str(), { Admin => "admin", Member => "member" });
db_codes!(DeviceCodeStatus as &'static str, String, |stored| stored.as_str(), {
    Pending => "pending",
    Approved => "approved",
    Denied => "denied",
    Consumed => "consumed",
});
