//! Size limits on what a session tells the mesh about itself: every peer receives it in
//! `peers_list` and events, so one member must not be able to bloat it for everyone.

use crate::protocol::{GroupMembership, Hello};

/// Display names, group names and group roles.
pub const MAX_NAME_CHARS: usize = 64;
pub const MAX_SUMMARY_CHARS: usize = 1024;
/// Groups one session may be in.
pub const MAX_GROUPS: usize = 32;
/// cwd, hostname, channel, model, session id.
pub const MAX_FIELD_CHARS: usize = 1024;

fn check_len(what: &str, value: &str, max: usize) -> Result<(), String> {
    if value.chars().count() > max {
        return Err(format!("{what} is longer than {max} characters"));
    }
    Ok(())
}

pub fn check_group(group: &GroupMembership) -> Result<(), String> {
    if group.name.trim().is_empty() {
        return Err("a group needs a name".to_owned());
    }
    check_len("a group name", &group.name, MAX_NAME_CHARS)?;
    check_len("a group role", group.role.as_deref().unwrap_or_default(), MAX_NAME_CHARS)
}

pub fn check_summary(summary: &str) -> Result<(), String> {
    check_len("the summary", summary, MAX_SUMMARY_CHARS)
}

/// The metadata fields of a `hello`.
pub fn check_hello(hello: &Hello) -> Result<(), String> {
    check_len("displayName", hello.display_name.as_deref().unwrap_or_default(), MAX_NAME_CHARS)?;
    for (what, value) in [
        ("cwd", &hello.cwd),
        ("hostname", &hello.hostname),
        ("channel", &hello.channel),
        ("model", &hello.model),
        ("sessionId", &hello.session_id),
    ] {
        check_len(what, value.as_deref().unwrap_or_default(), MAX_FIELD_CHARS)?;
    }
    let groups = hello.groups.as_deref().unwrap_or_default();
    if groups.len() > MAX_GROUPS {
        return Err(format!("more than {MAX_GROUPS} groups"));
    }
    groups.iter().try_for_each(check_group)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_metadata_is_refused() {
        let fine = Hello { display_name: Some("alice".into()), cwd: Some("/work".into()), ..Hello::default() };
        assert!(check_hello(&fine).is_ok());
        let long_name = Hello { display_name: Some("x".repeat(65)), ..Hello::default() };
        assert!(check_hello(&long_name).is_err());
        let many_groups = Hello {
            groups: Some((0..33).map(|n| GroupMembership { name: format!("g{n}"), role: None }).collect()),
            ..Hello::default()
        };
        assert!(check_hello(&many_groups).is_err());
        assert!(check_group(&GroupMembership { name: " ".into(), role: None }).is_err());
        assert!(check_summary(&"s".repeat(1024)).is_ok());
        assert!(check_summary(&"s".repeat(1025)).is_err());
    }
}
