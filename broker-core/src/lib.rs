//! broker-core: everything both ends of a claudemesh connection share, and the broker itself.
//!
//! The broker routes sealed envelopes between peer sessions of a mesh; it never holds a key that
//! could open them. Layout:
//! - `protocol` — wire frames and value types (serde only, no I/O).
//! - `crypto` — ed25519 identities, hello and session signatures, libsodium-compatible boxes,
//!   the multi-recipient envelope, the audit-chain hash (no I/O).
//! - `invite` — the signed invite token (no I/O).
//! - `ids` — random readable identifiers.
//! - `names` — when two display names are the same name, and which names are reserved.
//! - `args` — parsing of durations and roles typed on both command lines.
//! - `client` (feature `client`) — the mesh client: connect, hello, reconnect, seal/open, dedup.
//! - `store` (feature `server`) — the `Store` trait and its SQLite implementation.
//! - `router` (feature `server`) — presence, target resolution, durable per-recipient delivery.
//! - `config`, `metrics` (feature `server`) — the broker's limits and its Prometheus series.
//! - `email` (feature `server`) — invite emails over SMTP.
//! - `operator` (feature `server`) — operator commands on a data directory (meshes, members, invites).
//! - `backup` (feature `server`) — online backups of a data directory, and restoring one.
//! - `migrate` (feature `server`) — moving a data directory's SQLite store into Postgres.
//! - `server` (feature `server`) — HTTP + WebSocket endpoint: `serve(listener, broker, shutdown)`.
//! - `testing` (feature `test-support`) — stand-ins for third parties in tests (an SMTP sink).
//! - `version_line!` — a binary's `--version`: its version and the commit it was built from.

/// A binary's version line, `VERSION (commit COMMIT)`. Packages set `CLAUDEMESH_VERSION` and
/// `CLAUDEMESH_COMMIT` when they build (`scripts/package.sh`); a build from source shows the
/// crate's version. A macro, so the values are read when the binary itself compiles (and only
/// the binary recompiles when they change).
#[macro_export]
macro_rules! version_line {
    () => {{
        static LINE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
            let version = option_env!("CLAUDEMESH_VERSION").unwrap_or(env!("CARGO_PKG_VERSION"));
            let commit = option_env!("CLAUDEMESH_COMMIT").unwrap_or("unknown, built from source");
            format!("{version} (commit {commit})")
        });
        LINE.as_str()
    }};
}

pub mod args;
#[cfg(feature = "server")]
pub mod backup;
#[cfg(feature = "client")]
pub mod client;
#[cfg(feature = "server")]
pub mod config;
pub mod crypto;
#[cfg(feature = "server")]
pub mod email;
pub mod ids;
pub mod invite;
pub mod membership;
pub mod meshkey;
#[cfg(feature = "server")]
pub mod metrics;
#[cfg(feature = "server")]
pub mod migrate;
pub mod names;
#[cfg(feature = "server")]
pub mod operator;
pub mod protocol;
#[cfg(feature = "server")]
pub mod router;
pub mod schedule;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
pub mod store;
#[cfg(feature = "test-support")]
pub mod testing;
pub mod workspace;
