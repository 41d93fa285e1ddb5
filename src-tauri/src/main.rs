//! `claudemesh`: the CLI and the local MCP bridge that make Claude Code sessions mesh peers.
//!
//! The binary branches on its subcommand before anything else runs: `hook` (the Claude Code
//! status hook, which must return within 200 ms) touches neither an async runtime nor the
//! network; `mcp` and the other commands start a runtime. Nothing here needs a display; the
//! desktop app that later grows in this crate starts only when no subcommand is given.
//!
//! Layout:
//! - `config` — the config directory and `config.json` (joined meshes; no secrets).
//! - `keystore` — member secret keys: OS keychain, owner-only files, or memory (tests).
//! - `inbox` — the SQLite inbox: everything received, de-duplicated by message id.
//! - `join` — invite check, member key generation, `POST /join`.
//! - `mesh` — the supervisor: one mesh client per joined mesh; `mesh::resolve` turns names into
//!   broker targets.
//! - `proctree` — finding the Claude Code process a bridge or hook belongs to.
//! - `hook` — the status hook and the bridge's socket it talks to.
//! - `mcp` — the stdio MCP server (rmcp lives only here).
//! - `cli` — the commands; `cli::install` registers the bridge and hooks with Claude Code.

mod cli;
mod config;
mod hook;
mod inbox;
mod join;
mod keystore;
mod mcp;
mod mesh;
mod proctree;

use broker_core::protocol::{Priority, Status};
use clap::{Parser, Subcommand, ValueEnum};

use cli::{Exit, Failure};

#[derive(Parser)]
#[command(
    name = "claudemesh",
    version,
    about = "Connect Claude Code sessions on any machine into an end-to-end encrypted mesh"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
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
    /// Send a message: TARGET is a name, a key, @group or * (prefix `mesh:` when several meshes are joined).
    Send {
        target: String,
        message: String,
        #[arg(long, value_enum, default_value_t = PriorityArg::Next)]
        priority: PriorityArg,
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
}

#[derive(Clone, Copy, ValueEnum)]
enum PriorityArg {
    Now,
    Next,
    Low,
}

#[derive(Clone, Copy, ValueEnum)]
enum StatusArg {
    Working,
    Idle,
    Dnd,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let Some(command) = cli.command else {
        eprintln!(
            "claudemesh: no command given; `claudemesh --help` lists them (the desktop app is not part of this build)"
        );
        return std::process::ExitCode::from(Exit::Usage as u8);
    };
    // The hook path: no runtime, no logging set-up, no network; always success.
    if let Command::Hook { status, verbose } = command {
        let status = match status {
            StatusArg::Working => Status::Working,
            StatusArg::Idle => Status::Idle,
            StatusArg::Dnd => Status::Dnd,
        };
        cli::hook(status, verbose);
        return std::process::ExitCode::SUCCESS;
    }
    init_logging(matches!(command, Command::Mcp { .. }));
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
        Command::Send { target, message, priority, json } => {
            let priority = match priority {
                PriorityArg::Now => Priority::Now,
                PriorityArg::Next => Priority::Next,
                PriorityArg::Low => Priority::Low,
            };
            cli::send(target, message, priority, json).await
        }
        Command::Inbox { all, limit, json } => cli::inbox(all, limit, json).await,
        Command::Watch { json } => cli::watch(json).await,
        Command::Status { json } => cli::status(json).await,
        Command::Leave { mesh, json } => cli::leave(mesh, json).await,
        Command::Install { json } => cli::install(json),
        Command::Uninstall { json } => cli::uninstall(json),
        Command::Mcp { name } => Ok(mcp::run(mcp::McpOptions { display_name: name }).await?),
        Command::Hook { .. } => Ok(()),
    }
}

/// Logs go to stderr only (stdout is the MCP protocol or a command's output). `CLAUDEMESH_LOG`
/// takes an env-filter directive.
fn init_logging(bridge: bool) {
    let default = if bridge { "claudemesh=info,broker_core=warn" } else { "claudemesh=warn,broker_core=error" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("CLAUDEMESH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(false).try_init();
}
