//! Wire frames of the claudemesh WebSocket protocol, and the small value types they carry.
//!
//! This module is the only place that knows field names. It has no I/O and no async:
//! frames are plain serde types. Core frames keep the reference protocol's shapes
//! (camelCase, `type` discriminator); our additions are optional fields and frames that a
//! peer only sees after announcing the matching capability in `hello`.

pub mod account;
mod client_frames;
mod events;
mod server_frames;
mod time;
mod values;
mod workspace;

pub use client_frames::*;
pub use events::*;
pub use server_frames::*;
pub use time::{iso8601_ms, now_ms};
pub use values::*;
pub use workspace::*;

/// Highest protocol version this implementation speaks. The reference protocol is version 1.
pub const PROTOCOL_VERSION: u32 = 2;

/// What a `targetSpec` names, by its form alone (the broker then resolves keys to members or
/// sessions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target<'a> {
    /// `*` or `@all`: every other member of the mesh.
    Broadcast,
    /// `@name`: members whose sessions joined that group.
    Group(&'a str),
    /// 64 lowercase hex: a member key or a session key.
    Key(&'a str),
}

impl<'a> Target<'a> {
    pub fn parse(spec: &'a str) -> Option<Target<'a>> {
        if spec == "*" || spec == "@all" {
            return Some(Target::Broadcast);
        }
        if let Some(name) = spec.strip_prefix('@') {
            return (!name.is_empty()).then_some(Target::Group(name));
        }
        is_key_hex(spec).then_some(Target::Key(spec))
    }
}

/// True for a 64-char lowercase hex string, the encoding of ed25519 public keys.
pub fn is_key_hex(value: &str) -> bool {
    value.len() == 64 && value.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// True for a 128-char lowercase hex string, the encoding of signatures. One spelling only, so
/// a signature seen once is recognised again (the hello replay guard compares strings).
pub fn is_signature_hex(value: &str) -> bool {
    value.len() == 128 && value.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_forms() {
        let key = "a".repeat(64);
        assert_eq!(Target::parse("*"), Some(Target::Broadcast));
        assert_eq!(Target::parse("@all"), Some(Target::Broadcast));
        assert_eq!(Target::parse("@backend"), Some(Target::Group("backend")));
        assert_eq!(Target::parse(&key), Some(Target::Key(&key)));
        assert_eq!(Target::parse("@"), None);
        assert_eq!(Target::parse(&"A".repeat(64)), None);
        assert_eq!(Target::parse("alice"), None);
    }
}
