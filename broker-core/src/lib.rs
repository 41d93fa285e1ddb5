//! broker-core: everything both ends of a claudemesh connection share, and the broker itself.
//!
//! The broker routes sealed envelopes between peer sessions of a mesh; it never holds a key that
//! could open them. Layout:
//! - `protocol` — wire frames and value types (serde only, no I/O).
//! - `crypto` — ed25519 identities, hello and session signatures, libsodium-compatible boxes,
//!   the multi-recipient envelope, the audit-chain hash (no I/O).
//! - `invite` — the signed invite token (no I/O).

pub mod crypto;
pub mod invite;
pub mod protocol;
