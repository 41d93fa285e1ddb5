//! Size limits on what a session tells the mesh about itself: every peer receives it in
//! `peers_list` and events, so one member must not be able to bloat it for everyone.
//!
//! Limits count bytes of the JSON encoding, the form every peer receives, after control
//! characters are stripped (JSON writes each as six bytes, and none belongs in a name or path).

use crate::protocol::{GroupMembership, Hello};

/// Display names, group names and group roles.
pub const MAX_NAME_BYTES: usize = 128;
pub const MAX_SUMMARY_BYTES: usize = 2048;
/// Groups one session may be in.
pub const MAX_GROUPS: usize = 32;
/// cwd, hostname, channel, model, session id.
pub const MAX_FIELD_BYTES: usize = 1024;

/// Removes control characters and the invisible bidirectional-text controls that can make a
/// name display as another.
pub fn strip_controls(value: &mut String) {
    let unwanted = |c: char| {
        c.is_control() || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if value.chars().any(unwanted) {
        value.retain(|c| !unwanted(c));
    }
}

/// Bytes of `value` inside a JSON string, once control characters are gone.
fn encoded_len(value: &str) -> usize {
    value.len() + value.chars().filter(|c| matches!(c, '"' | '\\')).count()
}

fn clean(what: &str, value: &mut String, max: usize) -> Result<(), String> {
    strip_controls(value);
    if encoded_len(value) > max {
        return Err(format!("{what} is longer than {max} bytes"));
    }
    Ok(())
}

pub fn clean_group(group: &mut GroupMembership) -> Result<(), String> {
    clean("a group name", &mut group.name, MAX_NAME_BYTES)?;
    if group.name.trim().is_empty() {
        return Err("a group needs a name".to_owned());
    }
    match &mut group.role {
        Some(role) => clean("a group role", role, MAX_NAME_BYTES),
        None => Ok(()),
    }
}

pub fn clean_summary(summary: &mut String) -> Result<(), String> {
    clean("the summary", summary, MAX_SUMMARY_BYTES)
}

/// Strips control characters from the metadata fields of a `hello` and checks their sizes.
pub fn clean_hello(hello: &mut Hello) -> Result<(), String> {
    if let Some(name) = &mut hello.display_name {
        clean("displayName", name, MAX_NAME_BYTES)?;
    }
    for (what, value) in [
        ("cwd", &mut hello.cwd),
        ("hostname", &mut hello.hostname),
        ("channel", &mut hello.channel),
        ("model", &mut hello.model),
        ("sessionId", &mut hello.session_id),
    ] {
        if let Some(value) = value {
            clean(what, value, MAX_FIELD_BYTES)?;
        }
    }
    let groups = hello.groups.as_deref_mut().unwrap_or_default();
    if groups.len() > MAX_GROUPS {
        return Err(format!("more than {MAX_GROUPS} groups"));
    }
    groups.iter_mut().try_for_each(clean_group)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_metadata_is_refused() {
        let mut fine = Hello { display_name: Some("alice".into()), cwd: Some("/work".into()), ..Hello::default() };
        assert!(clean_hello(&mut fine).is_ok());
        let mut long_name = Hello { display_name: Some("x".repeat(129)), ..Hello::default() };
        assert!(clean_hello(&mut long_name).is_err());
        let mut many_groups = Hello {
            groups: Some((0..33).map(|n| GroupMembership { name: format!("g{n}"), role: None }).collect()),
            ..Hello::default()
        };
        assert!(clean_hello(&mut many_groups).is_err());
        assert!(clean_group(&mut GroupMembership { name: " ".into(), role: None }).is_err());
        assert!(clean_summary(&mut "s".repeat(2048)).is_ok());
        assert!(clean_summary(&mut "s".repeat(2049)).is_err());
    }

    #[test]
    fn limits_count_encoded_bytes_not_characters() {
        // 64 characters, but 3 bytes each in UTF-8.
        assert!(clean_summary(&mut "€".repeat(682)).is_ok());
        assert!(clean_summary(&mut "€".repeat(683)).is_err());
        // A quote takes two bytes in JSON.
        assert!(clean("a name", &mut "\"".repeat(64), MAX_NAME_BYTES).is_ok());
        assert!(clean("a name", &mut "\"".repeat(65), MAX_NAME_BYTES).is_err());
    }

    #[test]
    fn control_characters_are_stripped_before_counting() {
        let mut hello = Hello {
            display_name: Some(format!("bob\u{202e}{}\n", "\u{1}".repeat(500))),
            cwd: Some("/work\r\n/evil".into()),
            ..Hello::default()
        };
        assert!(clean_hello(&mut hello).is_ok());
        assert_eq!(hello.display_name.as_deref(), Some("bob"));
        assert_eq!(hello.cwd.as_deref(), Some("/work/evil"));
    }
}
