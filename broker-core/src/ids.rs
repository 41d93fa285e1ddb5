//! Random identifiers: a readable prefix and 80 random bits in lowercase base32.

const ALPHABET: &[u8; 32] = b"abcdefghijkmnpqrstuvwxyz23456789";

/// `prefix_` followed by 16 base32 characters (80 bits from the OS generator).
pub fn new_id(prefix: &str) -> String {
    let bytes = crate::crypto::random_bytes::<10>();
    let mut bits: u128 = 0;
    for byte in bytes {
        bits = (bits << 8) | u128::from(byte);
    }
    let mut id = String::with_capacity(prefix.len() + 17);
    id.push_str(prefix);
    id.push('_');
    for index in (0..16).rev() {
        id.push(ALPHABET[((bits >> (index * 5)) & 31) as usize] as char);
    }
    id
}

/// Whether `text` has the shape [`new_id`] gives with `prefix` (an id a client chose).
pub fn is_valid(prefix: &str, text: &str) -> bool {
    text.strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('_'))
        .is_some_and(|rest| rest.len() == 16 && rest.bytes().all(|b| ALPHABET.contains(&b)))
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_are_prefixed_and_distinct() {
        let a = super::new_id("msg");
        let b = super::new_id("msg");
        assert!(a.starts_with("msg_") && a.len() == 20, "{a}");
        assert_ne!(a, b);
        assert!(super::is_valid("msg", &a));
        for wrong in
            ["msg_", "mesh_abcdefghijkmnpqr", "msg_abcdefghijkmnpq1", "msg_abcdefghijkmnpqrs", "msg-abcdefghijkmnpqr"]
        {
            assert!(!super::is_valid("msg", wrong), "{wrong}");
        }
    }
}
