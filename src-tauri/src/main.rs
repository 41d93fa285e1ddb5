//! `claudemesh`: the CLI and the local MCP bridge that make Claude Code sessions mesh peers.
//!
//! The binary branches on its subcommand before anything else runs: `hook` (the Claude Code
//! status hook, which must return within 200 ms) touches neither an async runtime nor the
//! network; `mcp` and the other commands start a runtime. None of them needs a display. The
//! desktop tray app (feature `gui`, on by default) starts only when no subcommand is given, or
//! when the operating system hands over a `claudemesh://` link.
//!
//! Layout:
//! - `config` — the config directory and `config.json` (joined meshes; no secrets).
//! - `keystore` — member secret keys: OS keychain, owner-only files, or memory (tests).
//! - `inbox` — the SQLite inbox: everything received, de-duplicated by message id.
//! - `join` — invite check, member key generation, `POST /join`.
//! - `mesh` — the supervisor: one mesh client per joined mesh, the one send path, and
//!   `MeshError`, the error of every mesh operation; `mesh::resolve` turns names into broker
//!   targets.
//! - `proctree` — finding the Claude Code process a bridge or hook belongs to.
//! - `hook` — the status hook and the bridge's socket it talks to.
//! - `mcp` — the stdio MCP server (rmcp lives only here); its priority and status arguments are
//!   the CLI's too.
//! - `http` — the HTTP/1.1 JSON client for the broker's API. `account` and `join` build on it
//!   and on `keystore`; neither imports the other.
//! - `account` — signing in (device login), devices, approvals, creating meshes, signing invites.
//! - `claude_code` — registering the bridge and the status hooks with Claude Code (the CLI's
//!   `install`/`uninstall` and the desktop's Settings both use it).
//! - `joins` — join storms: many joins in one mesh told as one notice (desktop and Telegram).
//! - `telegram` — `claudemesh telegram`, the Telegram connector (teloxide's Bot API client).
//! - `cli` — the commands; `cli::account` holds the account commands.
//! - `gui` (feature `gui`) — the desktop tray app.

mod account;
mod claude_code;
mod cli;
mod config;
#[cfg(feature = "gui")]
mod gui;
mod hook;
mod http;
mod inbox;
mod join;
mod joins;
mod keystore;
mod mcp;
mod mesh;
mod proctree;
mod telegram;

use broker_core::args::{parse_duration, parse_role};
use clap::{Parser, Subcommand};

use cli::{Exit, Failure};
use mcp::{PriorityArg, StatusArg};

#[derive(Parser)]
#[command(
    name = "claudemesh",
    version = broker_core::version_line!(),
    about = "Connect Claude Code sessions on any machine into an end-to-end encrypted mesh",
    after_help = "Without a command, starts the desktop app (in builds that have it)."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Start the desktop app in the tray, without its window (what start at login uses).
    #[arg(long)]
    minimized: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Join a mesh with an invite link (checks the signature, makes a member key on this machine).
    Join {
        /// The invite link (`http(s)://…/join/<token>`, `claudemesh://join/<token>`) or token.
        link: String,
        /// The name peers see (default: user@host).
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// List joined meshes.
    Meshes {
        #[arg(long)]
        json: bool,
    },
    /// List who is online.
    Peers {
        /// Only this mesh (slug).
        #[arg(long)]
        mesh: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Where a message you sent stands for each recipient: queued, delivered (its claudemesh
    /// stored it), read (a session of it read it), or why not (expired, removed). MESSAGE_ID is
    /// what `claudemesh send` printed.
    MessageStatus {
        message_id: String,
        #[arg(long)]
        json: bool,
    },
    /// The members of your meshes, online or not, each with how its admission checks out in
    /// the mesh's signed membership log (verified here back to the mesh creator's key):
    /// verified, vouched (only the broker says so: an account's device enrolling, an unban),
    /// or missing (listed by the broker, never admitted). Exits 5 when the log does not verify.
    Members {
        /// Only this mesh (slug).
        #[arg(long)]
        mesh: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Set what members admitted from now on may read of what was written before they came
    /// (admins): `all` (the default), or `from-admission` (each admission starts a new mesh key
    /// epoch, and a newcomer gets only the keys made after it came). A signed entry of the
    /// mesh's membership log; `claudemesh members` shows the setting.
    KeyHistory {
        #[arg(value_enum)]
        mode: KeyHistoryArg,
        /// The mesh (slug), when several are joined.
        #[arg(long)]
        mesh: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Usage counters of the peers in your meshes, as each session reports them: messages in
    /// and out, tool calls, uptime, errors; per peer and summed per mesh.
    Stats {
        /// Only this mesh (slug).
        #[arg(long)]
        mesh: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Let messages between you and PEER flow again after the broker held them (it holds a
    /// pair when one sends the other far more direct messages than a session needs, or when the
    /// two answer each other in a loop; every session of both is told). PEER is a name or a key
    /// (prefix `mesh:` when several meshes are joined).
    Release {
        peer: String,
        #[arg(long)]
        json: bool,
    },
    /// Send a message: TARGET is a name, a key, @group or * (prefix `mesh:` when several meshes are joined).
    Send {
        target: String,
        message: String,
        #[arg(long, value_enum, default_value_t = PriorityArg::Next)]
        priority: PriorityArg,
        #[arg(long)]
        json: bool,
    },
    /// Schedule MESSAGE for later: to yourself, or to a peer with --to. Say when with exactly one
    /// of --at, --in and --cron. It is sealed now for the members it reaches now and arrives as
    /// a message from you; a --cron one recurs until cancelled (`claudemesh scheduled --cancel`).
    Remind {
        message: String,
        /// The recipient, as `send` takes it (name, key, @group, *); yourself when omitted.
        #[arg(long)]
        to: Option<String>,
        /// Once, at this RFC 3339 time (2026-12-01T09:00:00+01:00).
        #[arg(long, group = "when")]
        at: Option<String>,
        /// Once, after this long (30s, 10m, 2h, 1d).
        #[arg(long = "in", group = "when")]
        in_: Option<String>,
        /// Recurring: a five-field cron expression, such as "0 9 * * 1-5".
        #[arg(long, group = "when")]
        cron: Option<String>,
        /// The IANA time zone --cron is read in (default: this machine's).
        #[arg(long, requires = "cron")]
        tz: Option<String>,
        /// The mesh (slug), when several are joined and --to does not say.
        #[arg(long)]
        mesh: Option<String>,
        #[arg(long, value_enum, default_value_t = PriorityArg::Next)]
        priority: PriorityArg,
        #[arg(long)]
        json: bool,
    },
    /// The mesh's shared state: JSON values under names every member sees, end-to-end
    /// encrypted (the broker cannot read names or values). A compare-and-set that another
    /// writer won exits 6.
    #[command(subcommand)]
    State(StateCommand),
    /// Remember TEXT for the whole mesh (end-to-end encrypted), with --tag to find it by.
    Remember {
        text: String,
        /// A tag (repeatable).
        #[arg(long = "tag", value_name = "TAG")]
        tags: Vec<String>,
        /// The mesh (slug), when several are joined.
        #[arg(long)]
        mesh: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Search the mesh's memory for QUERY (any of its words, best matches first; "" for the
    /// newest). Searched on this device, so it works offline with what was synced.
    Recall {
        query: String,
        /// Only memories with this tag (repeatable: all of them).
        #[arg(long = "tag", value_name = "TAG")]
        tags: Vec<String>,
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..=100))]
        limit: u16,
        /// The mesh (slug), when several are joined.
        #[arg(long)]
        mesh: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Forget a memory for the whole mesh, by the id `remember` or `recall` showed.
    Forget {
        id: String,
        /// The mesh (slug), when several are joined.
        #[arg(long)]
        mesh: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// List your scheduled messages (every member's, as an admin), or cancel one.
    Scheduled {
        /// Cancel this schedule (its id, as listed).
        #[arg(long, value_name = "SCHEDULE_ID")]
        cancel: Option<String>,
        /// Only this mesh (slug).
        #[arg(long)]
        mesh: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Show unread messages (and mark them read); --all shows history.
    Inbox {
        #[arg(long)]
        all: bool,
        /// With --all: how many of the latest messages.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Stream incoming messages until Ctrl-C.
    Watch {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Show configuration, keystore, connections and running bridges.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Forget a mesh on this device (and delete its member key).
    Leave {
        mesh: String,
        #[arg(long)]
        json: bool,
    },
    /// Register the MCP bridge and the status hooks with Claude Code.
    Install {
        #[arg(long)]
        json: bool,
    },
    /// Remove what `install` registered.
    Uninstall {
        #[arg(long)]
        json: bool,
    },
    /// Bring meshes into Telegram: each chat that signs in with `/connect` (email, then the code
    /// the broker mails) becomes a device of that person's account; messages to them arrive in
    /// the chat, and they answer from there. Runs until stopped (SIGTERM or Ctrl-C).
    Telegram {
        /// The bot's token from @BotFather.
        #[arg(long, env = "TELEGRAM_BOT_TOKEN", hide_env_values = true)]
        bot_token: String,
        /// The broker the chats sign in to, like https://mesh.example.com.
        #[arg(long)]
        broker: String,
        /// Another Bot API server (your own, or a local stand-in), like http://127.0.0.1:8081.
        #[arg(long, env = "TELEGRAM_API_URL")]
        api_url: Option<String>,
        /// Where the connector keeps its state and each chat's keys and inbox (default:
        /// telegram/ in the claudemesh config directory).
        #[arg(long)]
        data_dir: Option<std::path::PathBuf>,
    },
    /// Report this Claude Code session's status to its bridge (run by Claude Code hooks; always exits 0).
    Hook {
        #[arg(value_enum)]
        status: StatusArg,
        /// Say on stderr what happened.
        #[arg(long)]
        verbose: bool,
    },
    /// Run the stdio MCP server for one Claude Code session (started by Claude Code).
    Mcp {
        /// The name peers see for this session (default: the name chosen at join).
        #[arg(long)]
        name: Option<String>,
    },
    /// Sign this device in to an account on a broker (device login: approve the code it shows
    /// from a signed-in device, or paste a one-time login token).
    Login {
        /// The broker's URL (default: the last one, $CLAUDEMESH_BROKER_URL, or http://127.0.0.1:7900).
        #[arg(long)]
        broker: Option<String>,
        /// The account to join: its signed-in devices then show (and notify about) this request.
        #[arg(long)]
        account: Option<String>,
        /// The name peers see for the meshes this device enrols into (default: user@host).
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Sign this device out: revokes its token and the member keys it holds.
    Logout {
        #[arg(long)]
        json: bool,
    },
    /// List the account's signed-in devices, or revoke one.
    Devices {
        /// Revoke this device (its token and member keys; its live sessions are closed at once).
        /// Revoking another device asks you first (on a terminal; elsewhere it needs --yes) and is
        /// signed with this device's confirmation key.
        #[arg(long, value_name = "ID")]
        revoke: Option<String>,
        /// Revoke without asking.
        #[arg(long, requires = "revoke")]
        yes: bool,
        #[arg(long)]
        json: bool,
    },
    /// Approve or deny another device's sign-in, or make a one-time login token.
    #[command(subcommand)]
    Device(DeviceCommand),
    /// Create a mesh on the account's broker (you become its admin).
    Create {
        name: String,
        /// The name peers see for you in it (default: user@host).
        #[arg(long = "as", value_name = "NAME")]
        display_name: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Sign an invite link to a mesh you administer (and email it when the broker can).
    Invite {
        /// The mesh (slug); optional when only one is joined.
        #[arg(long)]
        mesh: Option<String>,
        #[arg(long, default_value = "member", value_parser = parse_role)]
        role: broker_core::protocol::Role,
        #[arg(long, default_value_t = 1)]
        max_uses: u32,
        /// Lifetime: 90s, 30m, 12h, 7d.
        #[arg(long, default_value = "7d", value_parser = parse_duration)]
        expires_in: std::time::Duration,
        /// Email the link to this address.
        #[arg(long)]
        email: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Let PEER (a name online now, or a member key) do exactly CAPS to you: dm, broadcast, state, tools, files, all.
    Grant {
        peer: String,
        #[arg(required = true)]
        caps: Vec<String>,
        #[arg(long)]
        mesh: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Take CAPS away from PEER (`all` takes everything, like block).
    Revoke {
        peer: String,
        #[arg(required = true)]
        caps: Vec<String>,
        #[arg(long)]
        mesh: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Refuse everything from PEER: its direct messages are refused, its broadcasts dropped.
    Block {
        peer: String,
        #[arg(long)]
        mesh: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Give PEER the mesh defaults again.
    Unblock {
        peer: String,
        #[arg(long)]
        mesh: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// List your explicit grants.
    Grants {
        #[arg(long)]
        mesh: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

// The key history as `claudemesh key-history` takes it (no doc comments: clap would print them).
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum KeyHistoryArg {
    All,
    FromAdmission,
}

impl From<KeyHistoryArg> for broker_core::membership::KeyHistory {
    fn from(mode: KeyHistoryArg) -> Self {
        match mode {
            KeyHistoryArg::All => broker_core::membership::KeyHistory::All,
            KeyHistoryArg::FromAdmission => broker_core::membership::KeyHistory::FromAdmission,
        }
    }
}

#[derive(Subcommand)]
enum StateCommand {
    /// Show the entry NAME: its value, version, writer and time. Exits 3 when there is none.
    Get {
        name: String,
        /// The mesh (slug), when several are joined.
        #[arg(long)]
        mesh: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Write VALUE (JSON, or else taken as text) as NAME.
    Set {
        name: String,
        value: String,
        /// Only if the entry is at this version now (0: only if it does not exist): take a lock
        /// with `--expected-version 0`. Exits 6 when it is not.
        #[arg(long, value_name = "VERSION")]
        expected_version: Option<u64>,
        /// Expire the entry this long after the write (30s, 10m, 2h, 1d; at most 30d).
        #[arg(long, value_parser = broker_core::args::parse_duration)]
        ttl: Option<std::time::Duration>,
        /// The mesh (slug), when several are joined.
        #[arg(long)]
        mesh: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// List the entries (only those whose names start with PREFIX).
    List {
        prefix: Option<String>,
        /// The mesh (slug), when several are joined.
        #[arg(long)]
        mesh: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Delete the entry NAME (release a lock with the version you hold).
    Delete {
        name: String,
        /// Only if the entry is at this version now. Exits 6 when it is not.
        #[arg(long, value_name = "VERSION")]
        expected_version: Option<u64>,
        /// The mesh (slug), when several are joined.
        #[arg(long)]
        mesh: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Show the entries (under PREFIX), then every change to them as it happens, until Ctrl-C.
    Watch {
        prefix: Option<String>,
        /// The mesh (slug), when several are joined.
        #[arg(long)]
        mesh: Option<String>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum DeviceCommand {
    /// Approve the device showing CODE, after checking which device it is.
    Approve {
        code: String,
        /// Approve without asking (you checked the device some other way).
        #[arg(long)]
        yes: bool,
        #[arg(long)]
        json: bool,
    },
    /// Deny the device showing CODE.
    Deny {
        code: String,
        #[arg(long)]
        json: bool,
    },
    /// List device logins waiting for approval that named this account (`login --account`).
    Pending {
        #[arg(long)]
        json: bool,
    },
    /// Make a one-time login token to paste into `claudemesh login` on another device (asks
    /// you first on a terminal, elsewhere needs --yes; signed with this device's confirmation key).
    Token {
        /// Make it without asking.
        #[arg(long)]
        yes: bool,
        #[arg(long)]
        json: bool,
    },
}

fn main() -> std::process::ExitCode {
    #[cfg(feature = "gui")]
    let started = std::time::Instant::now();
    // `claudemesh claudemesh://…`: the operating system opening a link this app registered.
    #[cfg(feature = "gui")]
    if let Some(link) = std::env::args().nth(1).filter(|a| a.starts_with(gui::LINK_SCHEME)) {
        init_logging(false);
        return gui::run(gui::Launch { minimized: false, link: Some(link) }, started);
    }
    let cli = Cli::parse();
    let Some(command) = cli.command else {
        #[cfg(feature = "gui")]
        {
            init_logging(false);
            return gui::run(gui::Launch { minimized: cli.minimized, link: None }, started);
        }
        #[cfg(not(feature = "gui"))]
        {
            let _ = cli.minimized;
            eprintln!(
                "claudemesh: no command given; `claudemesh --help` lists them (the desktop app is not part of this build)"
            );
            return std::process::ExitCode::from(Exit::Usage as u8);
        }
    };
    // The hook path: no runtime, no logging set-up, no network; always success.
    if let Command::Hook { status, verbose } = command {
        cli::hook(status.into(), verbose);
        return std::process::ExitCode::SUCCESS;
    }
    init_logging(matches!(command, Command::Mcp { .. } | Command::Telegram { .. }));
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("claudemesh: cannot start: {error}");
            return std::process::ExitCode::from(Exit::Failure as u8);
        }
    };
    let result = runtime.block_on(run(command));
    // A pending stdin read (the MCP transport) cannot be cancelled; do not wait for it.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(Failure { exit, message }) => {
            eprintln!("claudemesh: {message}");
            std::process::ExitCode::from(exit as u8)
        }
    }
}

async fn run(command: Command) -> cli::CliResult {
    match command {
        Command::Join { link, name, json } => cli::join(&link, name, json).await,
        Command::Meshes { json } => cli::meshes(json),
        Command::Peers { mesh, json } => cli::peers(mesh, json).await,
        Command::Stats { mesh, json } => cli::stats(mesh, json).await,
        Command::Members { mesh, json } => cli::members(mesh, json).await,
        Command::KeyHistory { mode, mesh, json } => cli::key_history(mode.into(), mesh, json).await,
        Command::MessageStatus { message_id, json } => cli::message_status(message_id, json).await,
        Command::Release { peer, json } => cli::release(peer, json).await,
        Command::Send { target, message, priority, json } => cli::send(target, message, priority.into(), json).await,
        Command::Remind { message, to, at, in_, cron, tz, mesh, priority, json } => {
            let when = crate::mesh::when_of(
                at.as_deref(),
                in_.as_deref(),
                cron.as_deref(),
                tz.as_deref(),
                broker_core::protocol::now_ms(),
            );
            cli::remind(message, to, when, mesh, priority.into(), json).await
        }
        Command::Scheduled { cancel, mesh, json } => cli::scheduled(cancel, mesh, json).await,
        Command::State(command) => match command {
            StateCommand::Get { name, mesh, json } => cli::workspace::get(name, mesh, json).await,
            StateCommand::Set { name, value, expected_version, ttl, mesh, json } => {
                cli::workspace::set(name, value, expected_version, ttl, mesh, json).await
            }
            StateCommand::List { prefix, mesh, json } => cli::workspace::list(prefix, mesh, json).await,
            StateCommand::Delete { name, expected_version, mesh, json } => {
                cli::workspace::delete(name, expected_version, mesh, json).await
            }
            StateCommand::Watch { prefix, mesh, json } => cli::workspace::watch(prefix, mesh, json).await,
        },
        Command::Remember { text, tags, mesh, json } => cli::workspace::remember(text, tags, mesh, json).await,
        Command::Recall { query, tags, limit, mesh, json } => {
            cli::workspace::recall(query, tags, usize::from(limit), mesh, json).await
        }
        Command::Forget { id, mesh, json } => cli::workspace::forget(id, mesh, json).await,
        Command::Inbox { all, limit, json } => cli::inbox(all, limit, json).await,
        Command::Watch { json } => cli::watch(json).await,
        Command::Status { json } => cli::status(json).await,
        Command::Leave { mesh, json } => cli::leave(mesh, json).await,
        Command::Install { json } => cli::install(json),
        Command::Uninstall { json } => cli::uninstall(json),
        Command::Mcp { name } => Ok(mcp::run(mcp::McpOptions { display_name: name }).await?),
        Command::Hook { .. } => Ok(()),
        Command::Telegram { bot_token, broker, api_url, data_dir } => {
            let data_dir = match data_dir {
                Some(dir) => dir,
                None => telegram::default_data_dir()?,
            };
            let options =
                telegram::TelegramOptions { bot_token: bot_token.into(), broker_url: broker, api_url, data_dir };
            telegram::run(options).await
        }
        Command::Login { broker, account, name, json } => cli::account::login(broker, account, name, json).await,
        Command::Logout { json } => cli::account::logout(json).await,
        Command::Devices { revoke, yes, json } => cli::account::devices(revoke, yes, json).await,
        Command::Device(DeviceCommand::Approve { code, yes, json }) => {
            cli::account::decide(code, true, yes, json).await
        }
        Command::Device(DeviceCommand::Deny { code, json }) => cli::account::decide(code, false, true, json).await,
        Command::Device(DeviceCommand::Token { yes, json }) => cli::account::login_token(yes, json).await,
        Command::Device(DeviceCommand::Pending { json }) => cli::account::pending(json).await,
        Command::Create { name, display_name, json } => cli::account::create(name, display_name, json).await,
        Command::Invite { mesh, role, max_uses, expires_in, email, json } => {
            let args = cli::account::InviteArgs { mesh, role, max_uses, expires_in, email };
            cli::account::invite(args, json).await
        }
        Command::Grant { peer, caps, mesh, json } => {
            cli::account::grant(peer, cli::account::GrantChange::Grant(caps), mesh, json).await
        }
        Command::Revoke { peer, caps, mesh, json } => {
            cli::account::grant(peer, cli::account::GrantChange::Revoke(caps), mesh, json).await
        }
        Command::Block { peer, mesh, json } => {
            cli::account::grant(peer, cli::account::GrantChange::Block, mesh, json).await
        }
        Command::Unblock { peer, mesh, json } => {
            cli::account::grant(peer, cli::account::GrantChange::Unblock, mesh, json).await
        }
        Command::Grants { mesh, json } => cli::account::list_grants(mesh, json).await,
    }
}

/// Resolves on SIGTERM or Ctrl-C: how long-running commands (the MCP bridge, the Telegram
/// connector) are asked to stop.
pub(crate) async fn terminated() {
    #[cfg(unix)]
    {
        if let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// Logs go to stderr only (stdout is the MCP protocol or a command's output). `CLAUDEMESH_LOG`
/// takes an env-filter directive.
fn init_logging(bridge: bool) {
    let default = if bridge { "claudemesh=info,broker_core=warn" } else { "claudemesh=warn,broker_core=error" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("CLAUDEMESH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(false).try_init();
}
