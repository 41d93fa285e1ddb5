//! What a chat types, and what the connector writes back: pure, so every command and every
//! rendering is unit-tested without Telegram or a broker. Texts are plain (no parse mode), so
//! nothing a peer writes can turn into markup.

use crate::inbox::{MessageKind, StoredMessage};
use crate::mesh::PeerRow;

/// One line typed in a chat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input<'a> {
    Help,
    Connect,
    Cancel,
    Disconnect,
    Meshes,
    Peers(Option<&'a str>),
    Mute(&'a str),
    Unmute(&'a str),
    Send {
        to: &'a str,
        text: &'a str,
    },
    /// A command used without what it needs: its usage line.
    Usage(&'static str),
    Unknown(&'a str),
    /// Anything that is not a command: an email address, a code, or an answer to a message.
    Text(&'a str),
}

impl<'a> Input<'a> {
    pub fn parse(text: &'a str) -> Input<'a> {
        let text = text.trim();
        let Some(command_line) = text.strip_prefix('/') else { return Input::Text(text) };
        let (command, rest) = command_line.split_once(char::is_whitespace).unwrap_or((command_line, ""));
        // In groups Telegram appends the bot's name: `/peers@claudemesh_bot`.
        let command = command.split_once('@').map_or(command, |(name, _)| name);
        let rest = rest.trim();
        let argument = Some(rest).filter(|r| !r.is_empty());
        match command.to_ascii_lowercase().as_str() {
            "start" | "help" => Input::Help,
            "connect" => Input::Connect,
            "cancel" => Input::Cancel,
            "disconnect" => Input::Disconnect,
            "meshes" => Input::Meshes,
            "peers" => Input::Peers(argument),
            "mute" => argument.map_or(Input::Usage("/mute MESH"), Input::Mute),
            "unmute" => argument.map_or(Input::Usage("/unmute MESH"), Input::Unmute),
            "send" => match rest.split_once(char::is_whitespace) {
                Some((to, text)) if !text.trim().is_empty() => Input::Send { to, text: text.trim() },
                _ => Input::Usage("/send NAME text"),
            },
            _ => Input::Unknown(command_line.split_whitespace().next().unwrap_or_default()),
        }
    }
}

pub const HELP: &str = "\
claudemesh brings your meshes to this chat: messages to you arrive here, and you answer from here.

/connect — sign this chat in with the email address of your claudemesh account
/meshes — the meshes this chat is in
/peers [MESH] — who is online
/send NAME text — message a peer (NAME as in /peers; @group or * work too)
/mute MESH — no join notices from MESH, and its messages arrive silently
/unmute MESH — undo /mute
/disconnect — sign this chat out (its device is revoked)
/help — this text

Reply to a message to answer its sender.";

/// Whether `text` looks like the six digits of an emailed code.
pub fn is_code(text: &str) -> bool {
    let text = text.trim();
    text.len() == 6 && text.bytes().all(|b| b.is_ascii_digit())
}

/// A received message as the chat shows it: who wrote it, to whom, in which mesh, then the text.
pub fn message(message: &StoredMessage) -> String {
    let to = match message.kind {
        MessageKind::Direct => "you".to_owned(),
        MessageKind::Group => message.target.clone().unwrap_or_else(|| "a group".into()),
        MessageKind::Broadcast | MessageKind::State => "everyone".to_owned(),
        MessageKind::Notice => return format!("claudemesh · {}\n{}", message.mesh_slug, body(message)),
    };
    let unverified = if message.verified { "" } else { " (sender not verified)" };
    format!("{} → {to} · {}{unverified}\n{}", message.from, message.mesh_slug, body(message))
}

fn body(message: &StoredMessage) -> String {
    match (&message.text, &message.error) {
        (Some(text), _) => text.clone(),
        (None, Some(error)) => format!("(this message could not be opened: {error})"),
        (None, None) => "(empty message)".to_owned(),
    }
}

/// The answer to `/peers`.
pub fn peers(rows: &[PeerRow], left_out: usize) -> String {
    if rows.is_empty() {
        return "Nobody else is online.".to_owned();
    }
    let mut lines: Vec<String> = rows
        .iter()
        .map(|peer| {
            let mut line = format!("{} · {} ({})", peer.name, peer.mesh, peer.status.as_str());
            if let Some(summary) = &peer.summary {
                line.push_str(" — ");
                line.push_str(summary);
            }
            if peer.same_member {
                line.push_str(" [you, elsewhere]");
            }
            line
        })
        .collect();
    if left_out > 0 {
        lines.push(format!("…and {left_out} more sessions"));
    }
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use broker_core::protocol::Status;

    #[test]
    fn commands_parse_with_their_arguments_and_the_bots_name() {
        assert_eq!(Input::parse("/connect"), Input::Connect);
        assert_eq!(Input::parse("  /Peers@claudemesh_bot team "), Input::Peers(Some("team")));
        assert_eq!(Input::parse("/peers"), Input::Peers(None));
        assert_eq!(Input::parse("/send alice  hello there "), Input::Send { to: "alice", text: "hello there" });
        assert_eq!(Input::parse("/send alice"), Input::Usage("/send NAME text"));
        assert_eq!(Input::parse("/mute"), Input::Usage("/mute MESH"));
        assert_eq!(Input::parse("/mute team"), Input::Mute("team"));
        assert_eq!(Input::parse("/start"), Input::Help);
        assert_eq!(Input::parse("/frobnicate now"), Input::Unknown("frobnicate"));
        assert_eq!(Input::parse(" alice@example.test "), Input::Text("alice@example.test"));
    }

    #[test]
    fn codes_are_six_digits() {
        assert!(is_code(" 012345 "));
        assert!(!is_code("12345"));
        assert!(!is_code("12345a"));
    }

    fn received(kind: MessageKind, target: Option<&str>) -> StoredMessage {
        StoredMessage {
            id: "m1".into(),
            mesh_id: "mesh_1".into(),
            mesh_slug: "team".into(),
            from: "alice".into(),
            from_pubkey: "aa".repeat(32),
            from_member_pubkey: Some("bb".repeat(32)),
            verified: true,
            priority: "next".into(),
            target: target.map(str::to_owned),
            kind,
            text: Some("build is green".into()),
            error: None,
            sent_at: "2026-01-01T00:00:00.000Z".into(),
            received_at: 1,
            receiving_session: "s".into(),
            read: false,
        }
    }

    #[test]
    fn a_message_names_its_sender_recipients_and_mesh() {
        assert_eq!(message(&received(MessageKind::Direct, None)), "alice → you · team\nbuild is green");
        assert_eq!(message(&received(MessageKind::Group, Some("@dev"))), "alice → @dev · team\nbuild is green");
        assert_eq!(message(&received(MessageKind::Broadcast, Some("*"))), "alice → everyone · team\nbuild is green");
        let mut sealed_wrong = received(MessageKind::Direct, None);
        sealed_wrong.verified = false;
        sealed_wrong.text = None;
        sealed_wrong.error = Some("wrong key".into());
        assert_eq!(
            message(&sealed_wrong),
            "alice → you · team (sender not verified)\n(this message could not be opened: wrong key)"
        );
    }

    #[test]
    fn the_peer_list_shows_status_summary_and_what_was_left_out() {
        let row = PeerRow {
            mesh: "team".into(),
            name: "bob".into(),
            status: Status::Working,
            summary: Some("fixing CI".into()),
            groups: vec![],
            cwd: "/src".into(),
            host: None,
            location: "remote",
            pubkey: "cc".repeat(32),
            member_pubkey: "dd".repeat(32),
            same_member: false,
            peer_type: None,
            channel: None,
            model: None,
            connected_at: String::new(),
            stats: None,
        };
        assert_eq!(peers(&[row], 2), "bob · team (working) — fixing CI\n…and 2 more sessions");
        assert_eq!(peers(&[], 0), "Nobody else is online.");
    }
}
