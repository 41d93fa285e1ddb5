//! The audit chain's canonical JSON and entry hash.

use serde_json::Value;
use sha2::{Digest, Sha256};

/// The `prev_hash` of a mesh's first audit entry.
pub const AUDIT_GENESIS: &str = "genesis";

/// Canonical JSON: object keys sorted recursively (by UTF-16 code units, as JavaScript sorts),
/// no whitespace, arrays in order, non-ASCII kept as UTF-8.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.encode_utf16().cmp(b.0.encode_utf16()));
            out.push('{');
            for (index, (key, item)) in entries.into_iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(item, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// `sha256_hex(`[`audit_hashed_text`]`)`.
pub fn audit_hash(
    prev_hash: &str,
    mesh_id: &str,
    event_type: &str,
    actor: Option<&str>,
    payload: &Value,
    created_at_iso: &str,
) -> String {
    let text = audit_hashed_text(prev_hash, mesh_id, event_type, actor, payload, created_at_iso);
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// `prev_hash|mesh_id|event_type|actor_or_null|canonical_json(payload)|created_at`, the
/// reference's text. It tells entries apart only while the first four fields and the time hold
/// no `|` and an actor is never the word `null`: the broker writes ids, fixed event names and
/// ISO times there (`tests/fuzz.rs` checks the text can be read back into its fields).
pub fn audit_hashed_text(
    prev_hash: &str,
    mesh_id: &str,
    event_type: &str,
    actor: Option<&str>,
    payload: &Value,
    created_at_iso: &str,
) -> String {
    format!(
        "{prev_hash}|{mesh_id}|{event_type}|{}|{}|{created_at_iso}",
        actor.unwrap_or("null"),
        canonical_json(payload)
    )
}
