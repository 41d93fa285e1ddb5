//! `claudemesh://` links the app opens: `claudemesh://join/<invite token>` and
//! `claudemesh://device?code=XXXX-XXXX`. Registered as the `x-scheme-handler/claudemesh` of the
//! `.desktop` file (`packaging/linux/claudemesh.desktop`); the operating system starts
//! `claudemesh <link>`, which hands the link to the running app.

use broker_core::protocol::account::{format_user_code, normalize_user_code};

pub const SCHEME: &str = "claudemesh://";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Link {
    /// An invite link, kept whole for the join code (which checks its signature).
    Join(String),
    /// A device-login user code, formatted `XXXX-XXXX`.
    Device(String),
}

pub fn parse(url: &str) -> Option<Link> {
    let rest = url.trim().strip_prefix(SCHEME)?;
    if let Some(token) = rest.strip_prefix("join/") {
        return (!token.trim_matches('/').is_empty()).then(|| Link::Join(url.trim().to_owned()));
    }
    let query = rest.strip_prefix("device")?.trim_start_matches('/').strip_prefix('?')?;
    let code = query.split('&').find_map(|pair| pair.strip_prefix("code="))?;
    normalize_user_code(code).map(|code| Link::Device(format_user_code(&code)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_and_device_links_are_recognised_and_nothing_else() {
        assert_eq!(parse("claudemesh://join/abc.def"), Some(Link::Join("claudemesh://join/abc.def".into())));
        assert_eq!(parse("claudemesh://device?code=bcdf-ghjk"), Some(Link::Device("BCDF-GHJK".into())));
        assert_eq!(parse("claudemesh://device/?code=BCDFGHJK&x=1"), Some(Link::Device("BCDF-GHJK".into())));
        assert_eq!(parse("claudemesh://device?code=AEIO-UUUU"), None, "not a user code");
        assert_eq!(parse("claudemesh://join/"), None);
        assert_eq!(parse("https://example.com/join/abc"), None);
        assert_eq!(parse("claudemesh://elsewhere"), None);
    }
}
