//! Invite emails over SMTP (lettre), sent only when SMTP is configured.

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
        let text = format!(
            "{inviter} invites you to the claudemesh mesh \"{mesh}\".\n\n\
             Open this link with the claudemesh app, or run:\n\n    claudemesh join '{link}'\n\n\
             The invite is valid until {expires}.\n",
            inviter = invite.inviter,
            mesh = invite.mesh_name,
            link = invite.link,
            expires = invite.expires_at_iso,
        );
        let html = format!(
            "<!doctype html><html><body style=\"font-family:system-ui,sans-serif\">\
             <p>{inviter} invites you to the claudemesh mesh <b>{mesh}</b>.</p>\
             <p><a href=\"{link}\">Open the invite</a> with the claudemesh app, or run:</p>\
             <pre>claudemesh join '{link}'</pre>\
             <p style=\"color:#666\">Valid until {expires}.</p></body></html>",
            inviter = html_escape(invite.inviter),
            mesh = html_escape(invite.mesh_name),
            link = html_escape(invite.link),
            expires = html_escape(invite.expires_at_iso),
        );
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(format!("You are invited to {} on claudemesh", invite.mesh_name))
            .multipart(
                MultiPart::alternative()
                    .singlepart(SinglePart::builder().header(ContentType::TEXT_PLAIN).body(text))
                    .singlepart(SinglePart::builder().header(ContentType::TEXT_HTML).body(html)),
            )
            .map_err(|e| format!("cannot build the email: {e}"))?;
        self.transport.send(message).await.map(|_| ()).map_err(|e| format!("the SMTP server refused the email: {e}"))
    }
}

pub fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}
