//! The `claudemesh` commands. Thin: parse, call the library modules, print.
//!
//! Every command that takes `--json` prints exactly one JSON object on stdout (`watch --json`:
//! one per line) with `schemaVersion: 1`; the fields are documented in `docs/cli.md`. Errors go
//! to stderr and say what to do next; the exit code tells the kind of failure ([`Exit`]).

pub mod account;
pub mod workspace;

use std::sync::Arc;
use std::time::Duration;

use broker_core::protocol::{PeerType, Priority, Status};
use serde_json::json;
use tokio::sync::mpsc;

use crate::claude_code;
use crate::config::{ConfigDir, display_name_or_default};
use crate::inbox::{Inbox, StoredMessage};
use crate::keystore::KeyStore;
use crate::mesh::{BrokerFault, LinkState, MeshError, SessionOptions, Supervisor, WorkspaceFault};

/// The `--json` schema version.
pub const SCHEMA_VERSION: u32 = 1;
/// How long one-shot commands wait for their connections.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Exit codes (documented in `docs/cli.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    // 0 is success.
    Failure = 1,
    Usage = 2,
    NotFound = 3,
    Unreachable = 4,
    Refused = 5,
    AlreadyExists = 6,
}

/// A command failure: what to print and how to exit.
#[derive(Debug)]
pub struct Failure {
    pub exit: Exit,
    pub message: String,
}

impl Failure {
    pub fn new(exit: Exit, message: impl Into<String>) -> Failure {
        Failure { exit, message: message.into() }
    }
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(error: E) -> Failure {
        Failure::new(Exit::Failure, format!("{:#}", error.into()))
    }
}

pub type CliResult = Result<(), Failure>;

fn print_json(value: serde_json::Value) {
    let mut value = value;
    if let Some(object) = value.as_object_mut() {
        object.insert("schemaVersion".into(), json!(SCHEMA_VERSION));
    }
    println!("{value}");
}

fn http_exit(error: &crate::http::HttpError) -> Exit {
    match error {
        crate::http::HttpError::Unreachable { .. } | crate::http::HttpError::Interrupted { .. } => Exit::Unreachable,
        crate::http::HttpError::UnsupportedUrl(_) | crate::http::HttpError::InsecureBearer(_) => Exit::Usage,
        crate::http::HttpError::Tls(_) => Exit::Failure,
    }
}

/// The exit code of a failed mesh operation: the one place the CLI reads a [`MeshError`].
fn mesh_exit(error: &MeshError) -> Exit {
    match error {
        MeshError::UnknownMesh { .. }
        | MeshError::Resolve(_)
        | MeshError::UnknownMessage(_)
        | MeshError::UnknownSchedule(_) => Exit::NotFound,
        MeshError::BadRequest(_) => Exit::Usage,
        MeshError::NotConnected { state: LinkState::Failed(_), .. } => Exit::Refused,
        MeshError::NotConnected { .. } => Exit::Unreachable,
        MeshError::Broker { source, .. } | MeshError::NotSent(source) => match BrokerFault::of(source) {
            BrokerFault::Unreachable => Exit::Unreachable,
            BrokerFault::Refused => Exit::Refused,
            BrokerFault::Local => Exit::Failure,
        },
        MeshError::MemberKeyMismatch
        | MeshError::MemberKeyMissing { .. }
        | MeshError::KeyStore(_)
        | MeshError::Inbox(_)
        | MeshError::MemoryIndex(_) => Exit::Failure,
        MeshError::Workspace { source, .. } => match WorkspaceFault::of(source) {
            WorkspaceFault::Lost => Exit::AlreadyExists,
            WorkspaceFault::NotFound => Exit::NotFound,
            WorkspaceFault::Fault(BrokerFault::Unreachable) => Exit::Unreachable,
            WorkspaceFault::Fault(BrokerFault::Refused) => Exit::Refused,
            WorkspaceFault::Fault(BrokerFault::Local) => Exit::Failure,
        },
        MeshError::Each(errors) => errors.first().map_or(Exit::Failure, mesh_exit),
    }
}

fn mesh_failure(error: MeshError) -> Failure {
    Failure::new(mesh_exit(&error), error.to_string())
}

/// `name` names no joined mesh.
fn unknown_mesh(name: &str, config: &crate::config::Config) -> Failure {
    let joined = config.meshes.iter().map(|m| m.slug.clone()).collect();
    mesh_failure(MeshError::UnknownMesh { name: name.to_owned(), joined })
}

fn open_keystore(config_dir: &ConfigDir) -> Result<Arc<dyn KeyStore>, Failure> {
    Ok(Arc::from(crate::keystore::open(config_dir)?))
}

fn no_meshes() -> Failure {
    Failure::new(Exit::NotFound, "no meshes joined yet; join one with `claudemesh join <invite link>`")
}

/// Connects this command's sessions (a person at a terminal) to the selected meshes.
async fn connect(
    config_dir: &ConfigDir,
    mesh: Option<&str>,
) -> Result<(Supervisor, mpsc::Receiver<StoredMessage>), Failure> {
    let config = config_dir.load()?;
    if config.meshes.is_empty() {
        return Err(no_meshes());
    }
    let meshes = match mesh {
        Some(name) => vec![config.find(name).cloned().ok_or_else(|| unknown_mesh(name, &config))?],
        None => config.meshes,
    };
    let (keystore, inbox) = {
        let config_dir = config_dir.clone();
        tokio::task::spawn_blocking(move || -> Result<_, Failure> {
            config_dir.ensure()?;
            Ok((open_keystore(&config_dir)?, Arc::new(Inbox::open(&config_dir.inbox_file())?)))
        })
        .await
        .map_err(|e| Failure::new(Exit::Failure, e.to_string()))??
    };
    let (incoming_tx, incoming_rx) = mpsc::channel(1024);
    let options = SessionOptions {
        display_name: None,
        peer_type: PeerType::Human,
        channel: "cli".into(),
        model: None,
        session_id: None,
    };
    let supervisor = Supervisor::start(config_dir, meshes, keystore, inbox, options, incoming_tx).await;
    supervisor.wait_connected(CONNECT_TIMEOUT).await;
    Ok((supervisor, incoming_rx))
}

/// Fails when no selected mesh connected, with the reasons; the exit code is the first that
/// is not "unreachable" (a refusal or a local failure says more than a silent broker).
fn require_connected(supervisor: &Supervisor) -> CliResult {
    if supervisor.links().iter().any(|l| l.state() == LinkState::Connected) {
        return Ok(());
    }
    let mut reasons = Vec::new();
    let mut exits = Vec::new();
    for (mesh, error) in supervisor.failed() {
        reasons.push(format!("{}: {error}", mesh.slug));
        exits.push(mesh_exit(error));
    }
    for link in supervisor.links() {
        let Err(error) = link.require_connected() else { continue };
        exits.push(mesh_exit(&error));
        reasons.push(match link.state() {
            LinkState::Failed(reason) => format!("{}: refused by the broker ({reason})", link.entry.slug),
            state => format!(
                "{}: cannot reach the broker at {} ({}); check that it is running and reachable",
                link.entry.slug,
                link.entry.broker_url,
                match state {
                    LinkState::Reconnecting(r) => r,
                    _ => "no answer".into(),
                }
            ),
        });
    }
    let exit = exits.into_iter().find(|e| *e != Exit::Unreachable).unwrap_or(Exit::Unreachable);
    Err(Failure::new(exit, reasons.join("\n")))
}

pub async fn join(link: &str, name: Option<String>, json_output: bool) -> CliResult {
    let config_dir = ConfigDir::from_env()?;
    let keystore = {
        let config_dir = config_dir.clone();
        tokio::task::spawn_blocking(move || open_keystore(&config_dir))
            .await
            .map_err(|e| Failure::new(Exit::Failure, e.to_string()))??
    };
    let display_name = display_name_or_default(name);
    let joined = crate::join::join(&config_dir, keystore.clone(), link, display_name.trim()).await.map_err(|e| {
        use crate::join::JoinError::*;
        let exit = match &e {
            BadInvite(_) | Expired | Refused { .. } => Exit::Refused,
            AlreadyJoined { .. } => Exit::AlreadyExists,
            Http(error) | Interrupted(error) => http_exit(error),
            KeyStore(_) | Config(_) => Exit::Failure,
        };
        Failure::new(exit, e.to_string())
    })?;
    let entry = &joined.entry;
    if json_output {
        print_json(json!({
            "mesh": entry.slug, "meshId": entry.mesh_id, "meshName": entry.name, "brokerUrl": entry.broker_url,
            "memberId": entry.member_id, "memberPubkey": entry.member_pubkey, "displayName": entry.display_name,
            "role": entry.role, "alreadyMember": joined.already_member, "keystore": keystore.kind().as_str(),
        }));
    } else {
        println!(
            "joined {} ({}) as {} ({}); member key kept in the {} keystore",
            entry.name,
            entry.slug,
            entry.display_name,
            entry.role,
            keystore.kind().as_str()
        );
        println!(
            "next: `claudemesh install` to make your Claude Code sessions peers, `claudemesh peers` to see who is online"
        );
    }
    Ok(())
}

pub fn meshes(json_output: bool) -> CliResult {
    let config_dir = ConfigDir::from_env()?;
    let config = config_dir.load()?;
    if json_output {
        let rows: Vec<_> = config
            .meshes
            .iter()
            .map(|m| {
                json!({"mesh": m.slug, "meshId": m.mesh_id, "name": m.name, "brokerUrl": m.broker_url,
                       "displayName": m.display_name, "role": m.role, "memberPubkey": m.member_pubkey,
                       "joinedAt": broker_core::protocol::iso8601_ms(m.joined_at)})
            })
            .collect();
        print_json(json!({ "meshes": rows }));
    } else if config.meshes.is_empty() {
        println!("no meshes joined yet; join one with `claudemesh join <invite link>`");
    } else {
        for m in &config.meshes {
            println!("{}\t{}\tas {} ({})\t{}", m.slug, m.name, m.display_name, m.role, m.broker_url);
        }
    }
    Ok(())
}

pub async fn peers(mesh: Option<String>, json_output: bool) -> CliResult {
    let config_dir = ConfigDir::from_env()?;
    let (supervisor, _incoming) = connect(&config_dir, mesh.as_deref()).await?;
    let result = async {
        require_connected(&supervisor)?;
        supervisor.list_peers(mesh.as_deref()).await.map_err(mesh_failure)
    }
    .await;
    let left_out = supervisor.peers_left_out(mesh.as_deref());
    supervisor.shutdown().await;
    let rows = result?;
    if json_output {
        print_json(json!({ "peers": rows, "omitted": left_out }));
    } else if rows.is_empty() {
        println!("nobody else is online");
    } else {
        for p in &rows {
            let groups: Vec<_> = p.groups.iter().map(|g| format!("@{}", g.name)).collect();
            println!(
                "{}:{}\t{}\t{}\t{}:{}\t{}\t{}",
                p.mesh,
                p.name,
                p.status.as_str(),
                p.location,
                p.host.as_deref().unwrap_or("?"),
                p.cwd,
                groups.join(","),
                p.summary.as_deref().unwrap_or("")
            );
        }
    }
    if left_out > 0 && !json_output {
        println!("… and {left_out} more session(s) the broker left out of its list");
    }
    Ok(())
}

pub async fn stats(mesh: Option<String>, json_output: bool) -> CliResult {
    let config_dir = ConfigDir::from_env()?;
    let (supervisor, _incoming) = connect(&config_dir, mesh.as_deref()).await?;
    let result = async {
        require_connected(&supervisor)?;
        supervisor.stats(mesh.as_deref()).await.map_err(mesh_failure)
    }
    .await;
    supervisor.shutdown().await;
    let meshes = result?;
    if json_output {
        print_json(json!({ "meshes": meshes }));
        return Ok(());
    }
    for mesh in &meshes {
        println!("{}: {} peer(s) online", mesh.mesh, mesh.peers.len());
        println!(
            "  {:<24} {:>8} {:>8} {:>10} {:>8} {:>7}",
            "peer", "msgs in", "msgs out", "tool calls", "uptime", "errors"
        );
        let line = |name: &str, s: &broker_core::protocol::Stats| {
            let uptime = uptime_text(s.uptime);
            println!(
                "  {name:<24} {:>8} {:>8} {:>10} {uptime:>8} {:>7}",
                s.messages_in, s.messages_out, s.tool_calls, s.errors
            );
        };
        for peer in &mesh.peers {
            match &peer.stats {
                Some(stats) => line(&peer.name, stats),
                None => println!("  {:<24} (nothing reported yet)", peer.name),
            }
        }
        line("total", &mesh.total);
    }
    Ok(())
}

pub async fn members(mesh: Option<String>, json_output: bool) -> CliResult {
    use crate::mesh::members::{Admission, KeysView, LogStatus};
    let config_dir = ConfigDir::from_env()?;
    let (supervisor, _incoming) = connect(&config_dir, mesh.as_deref()).await?;
    let result = async {
        require_connected(&supervisor)?;
        supervisor.members(mesh.as_deref()).await.map_err(mesh_failure)
    }
    .await;
    supervisor.shutdown().await;
    let meshes = result?;
    if json_output {
        print_json(json!({ "meshes": meshes }));
    } else {
        for mesh in &meshes {
            let log = match &mesh.log {
                LogStatus::Verified { entries, .. } => format!("membership log verified ({entries} entries)"),
                LogStatus::Absent => "no membership log (the mesh predates it): admissions cannot be checked".into(),
                LogStatus::Failed { error } => format!("MEMBERSHIP LOG DOES NOT VERIFY: {error}"),
            };
            let keys = match &mesh.keys {
                KeysView::Held { epoch } => format!("mesh key: epoch {epoch}, held"),
                KeysView::Waiting { epoch } => {
                    format!("mesh key: epoch {epoch}, waiting for a member online to pass it on")
                }
                KeysView::Unavailable { reason } => format!("no mesh key: {reason}"),
            };
            println!("{}: {} member(s); {log}; {keys}", mesh.mesh, mesh.members.len());
            if let Some(history) = mesh.key_history {
                println!("  key history: {}", key_history_text(history));
            }
            for member in &mesh.members {
                let admission = match member.admission {
                    Admission::Verified => "verified",
                    Admission::Vouched => "vouched by the broker only",
                    Admission::Missing => "NOT ADMITTED in the log",
                    Admission::Unknown => "-",
                };
                let me = if member.me { " (you)" } else { "" };
                let online = if member.online { "online" } else { "offline" };
                println!(
                    "  {:<24} {:<6} {online:<7} {admission}  {}{me}",
                    member.name,
                    member.role.as_str(),
                    &member.pubkey[..16]
                );
            }
        }
    }
    if let Some(failed) = meshes.iter().find(|m| matches!(m.log, LogStatus::Failed { .. })) {
        return Err(Failure::new(
            Exit::Refused,
            format!(
                "the membership log of {} does not verify: the broker may have added, hidden or rewritten members; \
                 do not trust its member list until this is explained",
                failed.mesh
            ),
        ));
    }
    Ok(())
}

pub async fn remind(
    message: String,
    to: Option<String>,
    when: Result<broker_core::client::When, String>,
    mesh: Option<String>,
    priority: Priority,
    json_output: bool,
) -> CliResult {
    let when = when.map_err(|problem| Failure::new(Exit::Usage, problem))?;
    let config_dir = ConfigDir::from_env()?;
    let (supervisor, _incoming) = connect(&config_dir, None).await?;
    let reminder = crate::mesh::Reminder { to, mesh, text: message, priority, when };
    let result = async {
        require_connected(&supervisor)?;
        supervisor.schedule(reminder).await.map_err(mesh_failure)
    }
    .await;
    supervisor.shutdown().await;
    let scheduled = result?;
    if json_output {
        print_json(json!(scheduled));
    } else {
        let recurs = scheduled
            .info
            .cron
            .as_ref()
            .map(|cron| format!(", then at every \"{cron}\" ({})", scheduled.info.tz.as_deref().unwrap_or("UTC")));
        println!(
            "scheduled {} for {} in {}: first at {}{}",
            scheduled.info.schedule_id,
            scheduled.to,
            scheduled.mesh,
            scheduled.info.next_fire_at,
            recurs.unwrap_or_default()
        );
    }
    Ok(())
}

pub async fn scheduled(cancel: Option<String>, mesh: Option<String>, json_output: bool) -> CliResult {
    let config_dir = ConfigDir::from_env()?;
    let (supervisor, _incoming) = connect(&config_dir, mesh.as_deref()).await?;
    let result = async {
        require_connected(&supervisor)?;
        match &cancel {
            Some(id) => supervisor.cancel_scheduled(id.trim()).await.map(|mesh| (Some(mesh), Vec::new())),
            None => supervisor.scheduled(mesh.as_deref()).await.map(|rows| (None, rows)),
        }
        .map_err(mesh_failure)
    }
    .await;
    supervisor.shutdown().await;
    let (cancelled_in, rows) = result?;
    match (cancel, json_output) {
        (Some(id), true) => print_json(json!({ "cancelled": id, "mesh": cancelled_in })),
        (Some(id), false) => println!("cancelled {id} in {}", cancelled_in.unwrap_or_default()),
        (None, true) => print_json(json!({ "scheduled": rows })),
        (None, false) if rows.is_empty() => println!("nothing scheduled"),
        (None, false) => {
            for row in &rows {
                let recurs = row.info.cron.as_ref().map(|cron| format!(" every \"{cron}\"")).unwrap_or_default();
                println!(
                    "{}\t{}:{}\tnext {}{}\tfired {}",
                    row.info.schedule_id, row.mesh, row.to, row.info.next_fire_at, recurs, row.info.fired
                );
            }
        }
    }
    Ok(())
}

fn key_history_text(history: broker_core::membership::KeyHistory) -> &'static str {
    match history {
        broker_core::membership::KeyHistory::All => "all (members admitted later read what was written before)",
        broker_core::membership::KeyHistory::FromAdmission => {
            "from admission (members admitted later read only what is written after they came)"
        }
    }
}

pub async fn key_history(
    mode: broker_core::membership::KeyHistory,
    mesh: Option<String>,
    json_output: bool,
) -> CliResult {
    let config_dir = ConfigDir::from_env()?;
    let (supervisor, _incoming) = connect(&config_dir, mesh.as_deref()).await?;
    let result = async {
        require_connected(&supervisor)?;
        supervisor.set_key_history(mesh.as_deref(), mode).await.map_err(mesh_failure)
    }
    .await;
    supervisor.shutdown().await;
    let slug = result?;
    if json_output {
        print_json(json!({ "mesh": slug, "keyHistory": mode }));
    } else {
        println!("{slug}: key history {}", key_history_text(mode));
    }
    Ok(())
}

pub async fn message_status(message_id: String, json_output: bool) -> CliResult {
    let config_dir = ConfigDir::from_env()?;
    let (supervisor, _incoming) = connect(&config_dir, None).await?;
    let result = async {
        require_connected(&supervisor)?;
        supervisor.message_status(message_id.trim()).await.map_err(mesh_failure)
    }
    .await;
    supervisor.shutdown().await;
    let status = result?;
    if json_output {
        print_json(json!(status));
        return Ok(());
    }
    println!("message {} in {}:", status.message_id, status.mesh);
    for recipient in &status.recipients {
        let when = recipient.read_at.as_ref().or(recipient.delivered_at.as_ref()).unwrap_or(&recipient.queued_at);
        let state = serde_json::to_value(recipient.state).ok().and_then(|v| v.as_str().map(str::to_owned));
        println!("  {:<24} {:<10} {when}", recipient.display_name, state.unwrap_or_default());
    }
    Ok(())
}

/// `45s`, `12m`, `3h05m`, `2d04h`: the two largest units.
fn uptime_text(seconds: u64) -> String {
    let (days, hours, minutes) = (seconds / 86_400, seconds / 3600 % 24, seconds / 60 % 60);
    match () {
        _ if days > 0 => format!("{days}d{hours:02}h"),
        _ if hours > 0 => format!("{hours}h{minutes:02}m"),
        _ if minutes > 0 => format!("{minutes}m"),
        _ => format!("{seconds}s"),
    }
}

pub async fn release(peer: String, json_output: bool) -> CliResult {
    let config_dir = ConfigDir::from_env()?;
    let (supervisor, _incoming) = connect(&config_dir, None).await?;
    let result = async {
        require_connected(&supervisor)?;
        supervisor.release_pair(&peer).await.map_err(mesh_failure)
    }
    .await;
    supervisor.shutdown().await;
    let (resolution, released) = result?;
    if json_output {
        print_json(json!({ "mesh": resolution.slug, "peer": resolution.label, "released": released }));
    } else if released {
        println!("{}: messages between you and {} flow again", resolution.slug, resolution.label);
    } else {
        println!("{}: nothing was held between you and {}", resolution.slug, resolution.label);
    }
    Ok(())
}

pub async fn send(target: String, message: String, priority: Priority, json_output: bool) -> CliResult {
    let config_dir = ConfigDir::from_env()?;
    let (supervisor, _incoming) = connect(&config_dir, None).await?;
    if let Err(failure) = require_connected(&supervisor) {
        supervisor.shutdown().await;
        return Err(failure);
    }
    let outcomes = supervisor.send(std::slice::from_ref(&target), &message, priority).await;
    supervisor.shutdown().await;
    if json_output {
        print_json(json!({ "results": outcomes }));
    }
    match outcomes.iter().find(|o| !o.ok) {
        None => {
            if !json_output {
                for o in &outcomes {
                    println!(
                        "sent to {} in {} (message {}, {} recipient(s))",
                        o.recipient.as_deref().unwrap_or(&o.to),
                        o.mesh.as_deref().unwrap_or("?"),
                        o.message_id.as_deref().unwrap_or("?"),
                        o.recipients.unwrap_or(0)
                    );
                    if let Some(note) = &o.note {
                        println!("{note}");
                    }
                }
            }
            Ok(())
        }
        Some(failed) => {
            let (exit, error) = match &failed.error {
                Some(error) => (mesh_exit(error), error.to_string()),
                None => (Exit::Failure, "not sent".to_owned()),
            };
            Err(Failure::new(exit, format!("not sent to {}: {error}", failed.to)))
        }
    }
}

fn print_message(m: &StoredMessage) {
    use crate::inbox::MessageKind;
    let group = match m.kind {
        MessageKind::Direct | MessageKind::Notice | MessageKind::State => String::new(),
        MessageKind::Group | MessageKind::Broadcast => format!(" to {}", m.target.as_deref().unwrap_or("?")),
    };
    // A sender not proven end to end is only a claim; a notice comes from claudemesh itself.
    let unverified = if m.verified || m.kind == MessageKind::Notice { "" } else { " (unverified)" };
    let body = m.text.clone().unwrap_or_else(|| format!("[could not open: {}]", m.error.as_deref().unwrap_or("?")));
    println!("[{}] {} {}{unverified}{} ({}): {}", m.sent_at, m.mesh_slug, m.from, group, m.priority, body);
}

pub async fn inbox(all: bool, limit: usize, json_output: bool) -> CliResult {
    let config_dir = ConfigDir::from_env()?;
    let config = config_dir.load()?;
    if config.meshes.is_empty() {
        return Err(no_meshes());
    }
    // Pick up what waits at the broker first (when it is reachable), then read the inbox.
    let (supervisor, mut incoming) = connect(&config_dir, None).await?;
    // Stored as they arrive; stop after 300 ms of quiet, 2 s at most.
    let fetch_deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    let quiet = || fetch_deadline.min(tokio::time::Instant::now() + Duration::from_millis(300));
    while let Ok(Some(_)) = tokio::time::timeout_at(quiet(), incoming.recv()).await {}
    let messages = if all {
        let inbox = supervisor.inbox().clone();
        tokio::task::spawn_blocking(move || inbox.history(limit))
            .await
            .map_err(|e| Failure::new(Exit::Failure, e.to_string()))??
    } else {
        supervisor.take_unread().await.map_err(mesh_failure)?
    };
    supervisor.shutdown().await;
    if json_output {
        print_json(json!({ "messages": messages }));
    } else if messages.is_empty() {
        println!(
            "{}",
            if all { "the inbox is empty" } else { "no unread messages (`claudemesh inbox --all` shows history)" }
        );
    } else {
        messages.iter().for_each(print_message);
    }
    Ok(())
}

pub async fn watch(json_output: bool) -> CliResult {
    let config_dir = ConfigDir::from_env()?;
    let (supervisor, mut incoming) = connect(&config_dir, None).await?;
    if let Err(failure) = require_connected(&supervisor) {
        supervisor.shutdown().await;
        return Err(failure);
    }
    if !json_output {
        eprintln!("watching {} mesh(es); Ctrl-C to stop", supervisor.links().len());
    }
    loop {
        tokio::select! {
            message = incoming.recv() => match message {
                Some(m) => {
                    if json_output {
                        let mut value = serde_json::to_value(&m).expect("messages serialize");
                        value["schemaVersion"] = json!(SCHEMA_VERSION);
                        println!("{value}");
                    } else {
                        print_message(&m);
                    }
                }
                None => break,
            },
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    supervisor.shutdown().await;
    Ok(())
}

pub async fn status(json_output: bool) -> CliResult {
    let config_dir = ConfigDir::from_env()?;
    let config = config_dir.load()?;
    let keystore_kind = {
        let config_dir = config_dir.clone();
        tokio::task::spawn_blocking(move || open_keystore(&config_dir).map(|k| k.kind().as_str()))
            .await
            .map_err(|e| Failure::new(Exit::Failure, e.to_string()))?
    };
    let bridges = running_bridges(&config_dir);
    let (mut meshes, mut unread) = (Vec::new(), None);
    if !config.meshes.is_empty() {
        let (supervisor, _incoming) = connect(&config_dir, None).await?;
        unread = supervisor.inbox().unread_count().ok();
        for link in supervisor.links() {
            let online = if link.state() == LinkState::Connected {
                link.peers(Duration::ZERO).await.ok().map(|p| p.len().saturating_sub(1))
            } else {
                None
            };
            meshes.push(json!({"mesh": link.entry.slug, "meshId": link.entry.mesh_id, "brokerUrl": link.entry.broker_url,
                "displayName": link.entry.display_name, "connection": describe_state(&link.state()), "peersOnline": online}));
        }
        for (entry, reason) in supervisor.failed() {
            meshes.push(json!({"mesh": entry.slug, "meshId": entry.mesh_id, "brokerUrl": entry.broker_url,
                "displayName": entry.display_name, "connection": format!("not started: {reason}"), "peersOnline": null}));
        }
        supervisor.shutdown().await;
    }
    let files = claude_code::ClaudeFiles::from_env().ok();
    let hooks_installed = files
        .as_ref()
        .and_then(|f| std::fs::read_to_string(&f.settings).ok())
        .is_some_and(|text| text.contains("claudemesh") && text.contains(" hook "));
    let report = json!({
        "version": env!("CARGO_PKG_VERSION"),
        "configDir": config_dir.root().display().to_string(),
        "keystore": keystore_kind.as_ref().map(|k| json!(k)).unwrap_or_else(|e| json!(format!("unavailable: {}", e.message))),
        "meshes": meshes,
        "unread": unread,
        "bridges": bridges,
        "hooksInstalled": hooks_installed,
    });
    if json_output {
        print_json(report);
    } else {
        println!("claudemesh {}", env!("CARGO_PKG_VERSION"));
        println!("config      {}", config_dir.root().display());
        println!("keystore    {}", report["keystore"].as_str().unwrap_or("?"));
        println!("hooks       {}", if hooks_installed { "installed" } else { "not installed (`claudemesh install`)" });
        println!("bridges     {} running (Claude Code sessions with claudemesh)", bridges.len());
        if let Some(unread) = unread {
            println!("unread      {unread}");
        }
        if meshes.is_empty() {
            println!("meshes      none; join one with `claudemesh join <invite link>`");
        }
        for m in &meshes {
            println!(
                "mesh        {} as {}: {}{}",
                m["mesh"].as_str().unwrap_or("?"),
                m["displayName"].as_str().unwrap_or("?"),
                m["connection"].as_str().unwrap_or("?"),
                m["peersOnline"].as_u64().map(|n| format!(", {n} other peer(s) online")).unwrap_or_default()
            );
        }
    }
    Ok(())
}

fn describe_state(state: &LinkState) -> String {
    match state {
        LinkState::Connecting => "unreachable (no answer within 5 s)".into(),
        LinkState::Connected => "connected".into(),
        LinkState::Reconnecting(reason) => format!("unreachable ({reason})"),
        LinkState::Failed(reason) => format!("refused ({reason})"),
    }
}

/// Claude Code pids whose bridge answers on its hook socket.
fn running_bridges(config_dir: &ConfigDir) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir(config_dir.run_dir()) else { return Vec::new() };
    let mut pids: Vec<u32> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let pid = name.strip_prefix("claude-")?.strip_suffix(".sock")?.parse().ok()?;
            #[cfg(unix)]
            let alive = std::os::unix::net::UnixStream::connect(e.path()).is_ok();
            #[cfg(not(unix))]
            let alive = false;
            alive.then_some(pid)
        })
        .collect();
    pids.sort_unstable();
    pids
}

pub async fn leave(mesh: String, json_output: bool) -> CliResult {
    let config_dir = ConfigDir::from_env()?;
    let config = config_dir.load()?;
    let entry = config.find(&mesh).cloned().ok_or_else(|| unknown_mesh(&mesh, &config))?;
    // Tell the broker first, so the member key is refused from now on.
    let at_broker = leave_at_broker(&config_dir, &entry.slug).await;
    let mut config = config_dir.load()?;
    config.meshes.retain(|m| m.mesh_id != entry.mesh_id);
    config_dir.save(&config)?;
    let account = entry.key_account();
    let removed_key = {
        let config_dir = config_dir.clone();
        tokio::task::spawn_blocking(move || open_keystore(&config_dir).and_then(|k| Ok(k.delete(&account)?)))
            .await
            .map_err(|e| Failure::new(Exit::Failure, e.to_string()))?
    };
    if json_output {
        print_json(json!({"left": entry.slug, "meshId": entry.mesh_id, "keyRemoved": removed_key.is_ok(),
                          "leftAtBroker": at_broker.is_ok()}));
    } else {
        println!(
            "left {} ({}); its member key was {}",
            entry.name,
            entry.slug,
            match &removed_key {
                Ok(()) => "deleted".to_owned(),
                Err(e) => format!("not deleted ({})", e.message),
            }
        );
        match at_broker {
            Ok(()) => println!("the broker removed the membership; running bridges lose it now"),
            Err(reason) => println!(
                "the broker could not be told ({reason}): the membership stays there until an admin removes it, but this device no longer has its key"
            ),
        }
    }
    Ok(())
}

/// Asks the broker to end this device's membership of `slug`.
async fn leave_at_broker(config_dir: &ConfigDir, slug: &str) -> Result<(), String> {
    let (supervisor, _incoming) = connect(config_dir, Some(slug)).await.map_err(|f| f.message)?;
    let result = async {
        for link in supervisor.select(Some(slug))? {
            link.leave_mesh().await?;
        }
        Ok::<_, MeshError>(())
    }
    .await;
    supervisor.shutdown().await;
    result.map_err(|e| e.to_string())
}

pub fn install(json_output: bool) -> CliResult {
    let files = claude_code::ClaudeFiles::from_env()?;
    let exe = std::env::current_exe()?.canonicalize()?;
    let override_dir =
        std::env::var_os(crate::config::CONFIG_DIR_ENV).filter(|d| !d.is_empty()).map(std::path::PathBuf::from);
    let report = claude_code::install(&files, &exe, override_dir.as_deref())?;
    if json_output {
        print_json(serde_json::to_value(&report).expect("report serializes"));
    } else {
        report.actions.iter().for_each(|a| println!("{a}"));
        println!(
            "restart Claude Code to load it. For peers' messages to appear in the conversation as they arrive, start it with:"
        );
        println!("  claude --dangerously-load-development-channels server:{}", claude_code::MCP_NAME);
        println!("(without that flag the model reads them with the check_messages tool)");
    }
    Ok(())
}

pub fn uninstall(json_output: bool) -> CliResult {
    let files = claude_code::ClaudeFiles::from_env()?;
    let report = claude_code::uninstall(&files)?;
    if json_output {
        print_json(serde_json::to_value(&report).expect("report serializes"));
    } else {
        report.actions.iter().for_each(|a| println!("{a}"));
    }
    Ok(())
}

/// `claudemesh hook <status>`: always succeeds (see [`crate::hook`]).
pub fn hook(status: Status, verbose: bool) {
    let Ok(config_dir) = ConfigDir::from_env() else { return };
    let outcome = crate::hook::report(&config_dir.run_dir(), status);
    if verbose {
        eprintln!("claudemesh hook {}: {outcome:?}", status.as_str());
    }
}

#[cfg(test)]
mod tests {
    use broker_core::client::ClientError;
    use broker_core::protocol::SendRejection;

    use super::*;
    use crate::mesh::resolve::ResolveError;

    fn not_connected(state: LinkState) -> MeshError {
        MeshError::NotConnected { mesh: "acme".into(), state }
    }

    fn broker(source: ClientError) -> MeshError {
        MeshError::Broker { mesh: "acme".into(), source }
    }

    #[test]
    fn uptimes_read_in_their_two_largest_units() {
        let cases = [(0, "0s"), (59, "59s"), (60, "1m"), (3599, "59m"), (3600, "1h00m"), (3 * 3600 + 300, "3h05m")];
        for (seconds, text) in cases.into_iter().chain([(2 * 86_400 + 4 * 3600 + 59, "2d04h")]) {
            assert_eq!(uptime_text(seconds), text, "{seconds} s");
        }
    }

    #[test]
    fn each_mesh_error_has_its_documented_exit_code() {
        let rejected = |reason| ClientError::Rejected { reason, message: "blocked: no".into() };
        let cases = [
            (MeshError::UnknownMesh { name: "beta".into(), joined: vec!["acme".into()] }, Exit::NotFound),
            (MeshError::Resolve(ResolveError::NotFound { target: "bob".into(), known: vec![] }), Exit::NotFound),
            (MeshError::Resolve(ResolveError::Ambiguous { target: "a".into(), candidates: vec![] }), Exit::NotFound),
            (not_connected(LinkState::Connecting), Exit::Unreachable),
            (not_connected(LinkState::Reconnecting("refused".into())), Exit::Unreachable),
            (not_connected(LinkState::Failed("revoked: gone".into())), Exit::Refused),
            (broker(ClientError::Timeout(Duration::from_secs(5))), Exit::Unreachable),
            (broker(ClientError::ConnectionLost), Exit::Unreachable),
            (broker(ClientError::QueueFull(64)), Exit::Unreachable),
            (broker(rejected(None)), Exit::Refused),
            (broker(ClientError::Stopped("revoked: gone".into())), Exit::Refused),
            (MeshError::NotSent(rejected(Some(SendRejection::Blocked))), Exit::Refused),
            (MeshError::NotSent(ClientError::NoRecipient("nobody @dev reaches is in the mesh".into())), Exit::Refused),
            (MeshError::NotSent(ClientError::ConnectionLost), Exit::Unreachable),
            (MeshError::NotSent(ClientError::Crypto(broker_core::crypto::CryptoError::MalformedKey)), Exit::Failure),
            (MeshError::UnknownMessage("msg_1".into()), Exit::NotFound),
            (MeshError::MemberKeyMismatch, Exit::Failure),
            (MeshError::MemberKeyMissing { mesh: "acme".into(), keystore: "file" }, Exit::Failure),
            (
                MeshError::Inbox(crate::inbox::InboxError::Open { path: "inbox".into(), message: "locked".into() }),
                Exit::Failure,
            ),
            (
                MeshError::Each(vec![
                    not_connected(LinkState::Failed("revoked".into())),
                    broker(ClientError::ConnectionLost),
                ]),
                Exit::Refused,
            ),
        ];
        for (error, exit) in cases {
            assert_eq!(mesh_exit(&error), exit, "{error}");
            let failure = mesh_failure(error);
            assert_eq!(failure.exit, exit);
            assert!(!failure.message.is_empty());
        }
    }

    #[test]
    fn an_unknown_mesh_names_the_joined_ones() {
        let failure =
            mesh_failure(MeshError::UnknownMesh { name: "beta".into(), joined: vec!["acme".into(), "gamma".into()] });
        assert_eq!(failure.message, "no joined mesh is called \"beta\"; joined meshes: acme, gamma");
    }
}
