//! `claudemesh-broker`: serve the routing broker, and operator commands on its data directory.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result};
use broker_core::args::{parse_duration, parse_role};
use broker_core::config::{BrokerConfig, PairLimits, RateLimit};
use broker_core::email::Mailer;
use broker_core::operator::{self, Operator, OperatorError};
use broker_core::protocol::account::format_user_code;
use broker_core::protocol::{self, Role};
use broker_core::server::{self, Broker};
use broker_core::store::Durability;
use clap::{Args, Parser, Subcommand};
use serde_json::json;

#[derive(Parser)]
#[command(
    name = "claudemesh-broker",
    version = broker_core::version_line!(),
    about = "The claudemesh routing broker: carries sealed messages between peer sessions of a mesh.",
    long_about = "The claudemesh routing broker carries end-to-end sealed messages between the peer sessions of a \
                  mesh. It never holds a key that could open them.\n\n\
                  Start it with `serve`. The operator commands (`mesh`, `member`, `invite`, `backup`) work on the same \
                  data directory, whether or not a broker is serving it; a running broker sees their effect within a \
                  second. `restore` needs the broker stopped."
)]
struct Cli {
    /// Directory holding the database and the operator's keys.
    #[arg(long, global = true, env = "CLAUDEMESH_DATA_DIR", default_value_os_t = default_data_dir())]
    data_dir: PathBuf,
    /// Keep the mesh in this PostgreSQL database instead of the data directory's SQLite file
    /// (`postgres://user:password@host:5432/claudemesh`); any number of brokers may serve one
    /// database. The operator's keys stay in the data directory.
    #[arg(long, global = true, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve WebSocket peers and the HTTP API on one port.
    Serve(ServeArgs),
    /// Create and list meshes.
    #[command(subcommand)]
    Mesh(MeshCommand),
    /// Add and list members of a mesh.
    #[command(subcommand)]
    Member(MemberCommand),
    /// Issue signed invite links.
    #[command(subcommand)]
    Invite(InviteCommand),
    /// Create accounts (the first device of an account is approved with `device approve`).
    #[command(subcommand)]
    Account(AccountCommand),
    /// Approve a device's sign-in from the broker host.
    #[command(subcommand)]
    Device(DeviceCommand),
    /// Copy the store (the data directory's, or the --database-url database) and the operator
    /// keys into a new directory, consistently, while brokers serve: every message acknowledged
    /// before the copy began is in it. The copy restores into either kind of store.
    Backup {
        /// The new (or empty) directory to write the backup into.
        #[arg(long, value_name = "DIR")]
        to: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Move a stopped broker's SQLite store (the data directory's) into an empty PostgreSQL
    /// database, whole: meshes, members, accounts, devices, queued messages, the audit log. Then
    /// serve with --database-url; the operator's keys stay in the data directory.
    Migrate {
        /// The data directory whose store to move (default: --data-dir).
        #[arg(long, value_name = "DATA_DIR")]
        from: Option<PathBuf>,
        /// The empty database to move it into, like postgres://user:password@host/claudemesh.
        #[arg(long, value_name = "DATABASE_URL")]
        to: String,
        #[arg(long)]
        json: bool,
    },
    /// Make the data directory hold a backup (the broker stopped; the database the backup
    /// replaces is kept next to it as broker.db.replaced-<time>), or with --database-url an
    /// empty Postgres database.
    Restore {
        /// A directory written by `backup`.
        #[arg(long, value_name = "DIR")]
        from: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum AccountCommand {
    /// Create an account.
    Create {
        #[arg(long)]
        name: String,
        #[arg(long)]
        email: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum DeviceCommand {
    /// Approve the device login showing USER_CODE (as `XXXX-XXXX`) for an account. Check the
    /// device with the person first: this gives it full access to the account.
    Approve {
        /// The code the device shows (any case, dash optional).
        user_code: String,
        /// Account name or id.
        #[arg(long)]
        account: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "CLAUDEMESH_LISTEN", default_value = "127.0.0.1:7900")]
    listen: SocketAddr,
    /// Base URL peers use to reach this broker (goes into invites). Default: http://LISTEN.
    #[arg(long, env = "CLAUDEMESH_PUBLIC_URL")]
    public_url: Option<String>,
    /// What a commit guarantees: `full` survives power loss, `normal` survives a process crash.
    #[arg(long, env = "CLAUDEMESH_DURABILITY", default_value = "full")]
    durability: Durability,
    /// Largest nonce + ciphertext + targetSpec of one message, in bytes.
    #[arg(long, env = "MAX_MESSAGE_BYTES", default_value_t = BrokerConfig::default().max_message_bytes)]
    max_message_bytes: usize,
    /// Sessions per mesh on this broker.
    #[arg(long, env = "MAX_CONNECTIONS_PER_MESH", default_value_t = BrokerConfig::default().max_connections_per_mesh)]
    max_connections_per_mesh: usize,
    /// Sends a member may make at once.
    #[arg(long, env = "RATE_LIMIT_BURST", default_value_t = BrokerConfig::default().rate_limit.burst)]
    rate_limit_burst: u32,
    /// Sustained sends per member per minute.
    #[arg(long, env = "RATE_LIMIT_PER_MINUTE", default_value_t = BrokerConfig::default().rate_limit.per_minute)]
    rate_limit_per_minute: u32,
    /// Direct messages one member may send another member in a burst before the pair breaker
    /// holds them (a mesh's admins may set their own: `PUT /v1/meshes/{mesh}/pair-limits`).
    #[arg(
        long,
        env = "PAIR_BURST",
        default_value_t = BrokerConfig::default().pair_limits.burst,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pair_burst: u32,
    /// Direct messages per minute one member may send another after the burst.
    #[arg(
        long,
        env = "PAIR_PER_MINUTE",
        default_value_t = BrokerConfig::default().pair_limits.per_minute,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pair_per_minute: u32,
    /// Quick answers back and forth between two members that count as a reply loop.
    #[arg(
        long,
        env = "PAIR_LOOP_TURNS",
        default_value_t = BrokerConfig::default().pair_limits.loop_turns,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pair_loop_turns: u32,
    /// Seconds within which an answer counts as quick for loop detection.
    #[arg(
        long,
        env = "PAIR_LOOP_GAP_SECONDS",
        default_value_t = BrokerConfig::default().pair_limits.loop_gap_seconds,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pair_loop_gap_seconds: u32,
    /// Seconds after which a `working` status without news decays to `idle`.
    #[arg(long, env = "STATUS_TTL_SECONDS", default_value_t = BrokerConfig::default().status_ttl.as_secs())]
    status_ttl_seconds: u64,
    /// Seconds an undelivered message waits for its recipient before it is dropped.
    #[arg(long, env = "MESSAGE_TTL_SECONDS", default_value_t = BrokerConfig::default().message_ttl.as_secs())]
    message_ttl_seconds: u64,
    /// Scheduled messages one member may have pending in a mesh (`schedule_limit` beyond).
    #[arg(long, env = "MAX_SCHEDULES_PER_MEMBER", default_value_t = BrokerConfig::default().max_schedules_per_member)]
    max_schedules_per_member: u64,
    /// Live shared-state entries one member may keep in a mesh (`quota_exceeded` beyond).
    #[arg(long, env = "MAX_STATE_ENTRIES_PER_MEMBER", default_value_t = BrokerConfig::default().max_state_entries_per_member)]
    max_state_entries_per_member: u64,
    /// Memories one member may keep in a mesh (`quota_exceeded` beyond).
    #[arg(long, env = "MAX_MEMORIES_PER_MEMBER", default_value_t = BrokerConfig::default().max_memories_per_member)]
    max_memories_per_member: u64,
    /// Bytes of sealed state entries and memories one member may keep in a mesh.
    #[arg(long, env = "MAX_WORKSPACE_BYTES_PER_MEMBER", default_value_t = BrokerConfig::default().max_workspace_bytes_per_member)]
    max_workspace_bytes_per_member: u64,
    /// `/health/ready` answers 503 until this migration is applied.
    #[arg(long, env = "EXPECTED_MIGRATION")]
    expected_migration: Option<String>,
    /// Log format on stderr.
    #[arg(long, env = "CLAUDEMESH_LOG_FORMAT", default_value = "json", value_parser = ["json", "text"])]
    log_format: String,
    /// Seconds a device's sign-in lasts without use (each use renews it).
    #[arg(long, env = "TOKEN_TTL_SECONDS", default_value_t = BrokerConfig::default().token_ttl.as_secs())]
    token_ttl_seconds: u64,
    /// Seconds a signing-in device waits between polls of `/v1/device/token` (RFC 8628's
    /// `interval`; polling faster earns `slow_down`).
    #[arg(
        long,
        env = "DEVICE_POLL_INTERVAL_SECONDS",
        default_value_t = BrokerConfig::default().device_poll_interval.as_secs(),
        value_parser = clap::value_parser!(u64).range(1..=60)
    )]
    device_poll_interval_seconds: u64,
    /// Seconds a sign-in code sent by email (`POST /v1/connect/email`) stays valid.
    #[arg(
        long,
        env = "EMAIL_CODE_TTL_SECONDS",
        default_value_t = BrokerConfig::default().email_code_ttl.as_secs(),
        value_parser = clap::value_parser!(u64).range(1..=86_400)
    )]
    email_code_ttl_seconds: u64,
    /// Let anyone create an account with `POST /v1/signup`.
    #[arg(long, env = "CLAUDEMESH_OPEN_SIGNUP")]
    open_signup: bool,
    /// Believe `X-Forwarded-For` and `X-Forwarded-Proto` from a reverse proxy on this machine
    /// (127.0.0.0/8, ::1): the same as `--trusted-proxy 127.0.0.0/8,::1`.
    #[arg(long, env = "CLAUDEMESH_TRUST_PROXY")]
    trust_proxy: bool,
    /// Addresses or networks (`10.0.0.5`, `10.0.0.0/24`; repeat or separate with commas) of
    /// reverse proxies whose `X-Forwarded-For` and `X-Forwarded-Proto` are believed. A TLS proxy
    /// must be listed for device sign-in through it to work from other hosts.
    #[arg(long = "trusted-proxy", env = "CLAUDEMESH_TRUSTED_PROXIES", value_delimiter = ',', value_parser = parse_network)]
    trusted_proxies: Vec<ipnet::IpNet>,
    /// Issue sign-in tokens over plain http to other hosts (only on a network you trust).
    /// Without it they go only over https, via a trusted proxy, or to this machine.
    #[arg(long, env = "CLAUDEMESH_ALLOW_INSECURE_HTTP")]
    allow_insecure_http: bool,
    /// SMTP server for invite emails, like `smtp://user:pass@mail.example.com:587?tls=required`.
    #[arg(long, env = "SMTP_URL", requires = "smtp_from")]
    smtp_url: Option<String>,
    /// Sender of invite emails, like `claudemesh <noreply@example.com>`.
    #[arg(long, env = "SMTP_FROM")]
    smtp_from: Option<String>,
}

#[derive(Subcommand)]
enum MeshCommand {
    /// Create a mesh, with an admin member for the operator (its key stays in the data directory).
    Create {
        #[arg(long)]
        name: String,
        /// Preferred slug (default: from the name); a suffix is added if it is taken.
        #[arg(long)]
        slug: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// List meshes.
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum MemberCommand {
    /// Add a member by public key.
    Add {
        /// Mesh id or slug.
        #[arg(long)]
        mesh: String,
        /// The member's ed25519 public key, 64 lowercase hex characters.
        #[arg(long)]
        pubkey: String,
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "member", value_parser = parse_role)]
        role: Role,
        #[arg(long)]
        json: bool,
    },
    /// List a mesh's members.
    List {
        #[arg(long)]
        mesh: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum InviteCommand {
    /// Sign an invite link with the operator's admin key.
    Create {
        #[arg(long)]
        mesh: String,
        /// Role the invite grants (taken only from what is signed).
        #[arg(long, default_value = "member", value_parser = parse_role)]
        role: Role,
        /// How many devices may redeem it.
        #[arg(long, default_value_t = 1)]
        max_uses: u32,
        /// Lifetime, like 90s, 30m, 12h or 7d.
        #[arg(long, default_value = "7d", value_parser = parse_duration)]
        expires_in: Duration,
        /// Broker URL to put in the link (default: the one `serve` recorded).
        #[arg(long, env = "CLAUDEMESH_PUBLIC_URL")]
        public_url: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

fn default_data_dir() -> PathBuf {
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("claudemesh-broker")
}

fn main() {
    if let Err(error) = run(Cli::parse()) {
        eprintln!("error: {error:#}");
        let code = match error.downcast_ref::<OperatorError>() {
            Some(OperatorError::Invalid(_)) => 2,
            Some(OperatorError::NotFound(_)) => 3,
            _ => 1,
        };
        std::process::exit(code);
    }
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if format == "json" {
        builder.json().flatten_event(true).with_current_span(false).init();
    } else {
        builder.init();
    }
}

fn run(cli: Cli) -> Result<()> {
    // The operator's view of the store the options name.
    let operator = || Operator::open_with(&cli.data_dir, cli.database_url.as_deref());
    match cli.command {
        Command::Serve(args) => serve(cli.data_dir, cli.database_url, args),
        Command::Mesh(command) => mesh_command(&operator()?, command),
        Command::Member(command) => member_command(&operator()?, command),
        Command::Invite(command) => invite_command(&operator()?, command),
        Command::Account(command) => account_command(&operator()?, command),
        Command::Device(command) => device_command(&operator()?, command),
        Command::Migrate { from, to, json } => migrate_command(from.as_deref().unwrap_or(&cli.data_dir), &to, json),
        Command::Backup { to, json } => backup_command(&cli.data_dir, cli.database_url.as_deref(), &to, json),
        Command::Restore { from, json } => restore_command(&cli.data_dir, cli.database_url.as_deref(), &from, json),
    }
}

fn serve(data_dir: PathBuf, database_url: Option<String>, args: ServeArgs) -> Result<()> {
    init_logging(&args.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    // Held while serving a data directory's SQLite store: a second broker, or a restore, on this
    // directory is refused. Brokers on one Postgres database share it on purpose.
    let _lock = match database_url {
        Some(_) => None,
        None => Some(broker_core::backup::lock_data_dir(&data_dir)?),
    };
    let store =
        operator::open_store(&data_dir, database_url.as_deref(), args.durability).with_context(
            || match &database_url {
                Some(_) => "opening the Postgres database of --database-url".to_owned(),
                None => format!("opening {}", data_dir.join(operator::DATABASE_FILE).display()),
            },
        )?;
    runtime.block_on(async move {
        let listener = bind(args.listen).with_context(|| format!("cannot listen on {}", args.listen))?;
        let local = listener.local_addr()?;
        let public_url = args.public_url.unwrap_or_else(|| format!("http://{local}"));
        broker_core::store::off_runtime(|| store.set_setting(operator::PUBLIC_URL_SETTING, &public_url))?;
        let config = BrokerConfig {
            max_message_bytes: args.max_message_bytes,
            max_frame_bytes: BrokerConfig::default().max_frame_bytes.max(args.max_message_bytes * 4),
            max_connections_per_mesh: args.max_connections_per_mesh,
            rate_limit: RateLimit { burst: args.rate_limit_burst, per_minute: args.rate_limit_per_minute },
            pair_limits: PairLimits {
                burst: args.pair_burst,
                per_minute: args.pair_per_minute,
                loop_turns: args.pair_loop_turns,
                loop_gap_seconds: args.pair_loop_gap_seconds,
            },
            status_ttl: Duration::from_secs(args.status_ttl_seconds),
            message_ttl: Duration::from_secs(args.message_ttl_seconds),
            max_schedules_per_member: args.max_schedules_per_member,
            max_state_entries_per_member: args.max_state_entries_per_member,
            max_memories_per_member: args.max_memories_per_member,
            max_workspace_bytes_per_member: args.max_workspace_bytes_per_member,
            token_ttl: Duration::from_secs(args.token_ttl_seconds),
            device_poll_interval: Duration::from_secs(args.device_poll_interval_seconds),
            email_code_ttl: Duration::from_secs(args.email_code_ttl_seconds),
            open_signup: args.open_signup,
            trusted_proxies: trusted_proxies(args.trust_proxy, args.trusted_proxies),
            allow_insecure_http: args.allow_insecure_http,
            ..BrokerConfig::default()
        };
        let mailer = match (&args.smtp_url, &args.smtp_from) {
            (Some(url), Some(from)) => Some(Mailer::new(url, from).map_err(anyhow::Error::msg)?),
            _ => None,
        };
        let broker = Broker::new(config, store.clone(), public_url.clone(), args.expected_migration, mailer);
        tracing::info!(listen = %local, public_url = %public_url, data_dir = %data_dir.display(), "broker listening");
        let ws_url = format!("{}/ws", public_url.replacen("http", "ws", 1));
        println!("claudemesh broker listening on {local}");
        println!("  peers connect to   {ws_url}");
        println!("  data directory     {}", data_dir.display());
        println!("  create a mesh      claudemesh-broker --data-dir {} mesh create --name demo", data_dir.display());
        println!("  invite someone     claudemesh-broker --data-dir {} invite create --mesh demo", data_dir.display());
        server::serve(listener, broker, shutdown_signal()).await.context("serving")?;
        tracing::info!("broker stopped");
        Ok(())
    })
}

/// Connections the kernel holds for `accept`. tokio's `TcpListener::bind` asks for 128: a hello
/// storm (thousands of sessions reconnecting after a restart) overflows that, and every dropped
/// SYN costs its client a 1 s retransmit. The kernel caps it at `net.core.somaxconn`.
const LISTEN_BACKLOG: u32 = 4096;

fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    // As `TcpListener::bind` does: a restarted broker can bind while old connections linger.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(_) => {
                let _ = interrupt.await;
                return;
            }
        };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}

fn print(json_output: bool, value: serde_json::Value, human: impl FnOnce() -> String) {
    if json_output {
        println!("{value}");
    } else {
        println!("{}", human());
    }
}

fn migrate_command(data_dir: &std::path::Path, url: &str, json_output: bool) -> Result<()> {
    let migrated = broker_core::migrate::sqlite_to_postgres(data_dir, url)?;
    let rows: u64 = migrated.tables.iter().map(|t| t.rows).sum();
    print(json_output, json!(migrated), || {
        format!(
            "moved {} into Postgres: {rows} rows in {} tables, the same in both; {} audit chains verified\n\
             serve it with: claudemesh-broker --data-dir {} --database-url <the URL> serve",
            data_dir.display(),
            migrated.tables.len(),
            migrated.audit_scopes,
            data_dir.display()
        )
    });
    Ok(())
}

fn backup_command(
    data_dir: &std::path::Path,
    database_url: Option<&str>,
    to: &std::path::Path,
    json_output: bool,
) -> Result<()> {
    let made = match database_url {
        Some(url) => broker_core::backup::backup_postgres(url, data_dir, to)?,
        None => broker_core::backup::backup(data_dir, to)?,
    };
    print(json_output, json!({"backup": to, "manifest": made}), || {
        format!(
            "backed up {} into {}: {} meshes, {} members, {} queued deliveries, {} operator keys",
            data_dir.display(),
            to.display(),
            made.meshes,
            made.members,
            made.queued_deliveries,
            made.operator_keys
        )
    });
    Ok(())
}

fn restore_command(
    data_dir: &std::path::Path,
    database_url: Option<&str>,
    from: &std::path::Path,
    json_output: bool,
) -> Result<()> {
    let restored = match database_url {
        Some(url) => broker_core::backup::restore_postgres(from, url, data_dir)?,
        None => broker_core::backup::restore(from, data_dir)?,
    };
    let made = &restored.manifest;
    print(
        json_output,
        json!({"dataDir": data_dir, "manifest": made, "replaced": restored.replaced, "keysCopied": restored.keys_copied}),
        || {
            let replaced = match &restored.replaced {
                Some(path) => format!("; the database it replaced is kept as {}", path.display()),
                None => String::new(),
            };
            let into = match database_url {
                Some(_) => "the Postgres database".to_owned(),
                None => data_dir.display().to_string(),
            };
            format!(
                "restored {into} from the backup of {} ({} meshes, {} members, {} queued deliveries){replaced}",
                made.created_at, made.meshes, made.members, made.queued_deliveries
            )
        },
    );
    Ok(())
}

fn mesh_command(operator: &Operator, command: MeshCommand) -> Result<()> {
    match command {
        MeshCommand::Create { name, slug, json } => {
            let created = operator.create_mesh(&name, slug.as_deref())?;
            let mesh = &created.mesh;
            print(
                json,
                json!({"id": mesh.id, "slug": mesh.slug, "name": mesh.name, "operatorMemberId": created.operator.id}),
                || {
                    format!(
                        "created mesh {} ({}); invite people with: invite create --mesh {}",
                        mesh.slug, mesh.id, mesh.slug
                    )
                },
            );
        }
        MeshCommand::List { json } => {
            let meshes = operator.store().meshes()?;
            let rows: Vec<_> = meshes
                .iter()
                .map(|m| {
                    json!({"id": m.id, "slug": m.slug, "name": m.name, "createdAt": protocol::iso8601_ms(m.created_at),
                           "archived": m.archived_at.is_some()})
                })
                .collect();
            print(json, json!({"meshes": rows}), || {
                meshes.iter().map(|m| format!("{}\t{}\t{}", m.slug, m.id, m.name)).collect::<Vec<_>>().join("\n")
            });
        }
    }
    Ok(())
}

fn member_command(operator: &Operator, command: MemberCommand) -> Result<()> {
    match command {
        MemberCommand::Add { mesh, pubkey, name, role, json } => {
            let (mesh, member) = operator.add_member(&mesh, &pubkey, &name, role)?;
            print(json, json!({"meshId": mesh.id, "memberId": member.id}), || {
                format!("added {} to {} as {} ({})", member.display_name, mesh.slug, member.role.as_str(), member.id)
            });
        }
        MemberCommand::List { mesh, json } => {
            let (mesh, members) = operator.members(&mesh)?;
            let rows: Vec<_> = members
                .iter()
                .map(|m| {
                    json!({"id": m.id, "pubkey": m.pubkey, "displayName": m.display_name, "role": m.role,
                           "createdAt": protocol::iso8601_ms(m.created_at), "active": m.is_active()})
                })
                .collect();
            print(json, json!({"meshId": mesh.id, "members": rows}), || {
                members
                    .iter()
                    .map(|m| format!("{}\t{}\t{}\t{}", m.display_name, m.role.as_str(), m.id, m.pubkey))
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
    }
    Ok(())
}

fn invite_command(operator: &Operator, command: InviteCommand) -> Result<()> {
    match command {
        InviteCommand::Create { mesh, role, max_uses, expires_in, public_url, json } => {
            let issued = operator.create_invite(&mesh, role, max_uses, expires_in, public_url.as_deref())?;
            let link = issued.invite.link();
            let expires_at = protocol::iso8601_ms(issued.invite.expires_at * 1000);
            print(
                json,
                json!({"link": link, "code": issued.invite.invite_id, "expiresAt": expires_at, "token": issued.invite.to_token(),
                       "role": role, "maxUses": max_uses}),
                || {
                    format!(
                        "{link}\n(valid until {expires_at}, {max_uses} use(s), role {}; join with: claudemesh join '<link>')",
                        role.as_str()
                    )
                },
            );
        }
    }
    Ok(())
}

fn account_command(operator: &Operator, command: AccountCommand) -> Result<()> {
    match command {
        AccountCommand::Create { name, email, json } => {
            let account = operator.create_account(&name, email.as_deref())?;
            print(json, json!({"id": account.id, "name": account.name, "email": account.email}), || {
                format!(
                    "created account {} ({}); sign a device in with `claudemesh login` and approve it with: device approve CODE --account {}",
                    account.name, account.id, account.name
                )
            });
        }
    }
    Ok(())
}

fn device_command(operator: &Operator, command: DeviceCommand) -> Result<()> {
    match command {
        DeviceCommand::Approve { user_code, account, json } => {
            let code = operator.approve_device(&user_code, &account)?;
            let shown = format_user_code(&code.user_code);
            print(
                json,
                json!({"userCode": shown, "status": code.status.as_str(), "hostname": code.info.hostname,
                       "platform": code.info.platform, "ip": code.info.ip}),
                || {
                    format!(
                        "approved {} ({} {}, from {}) for account {account}",
                        shown, code.info.hostname, code.info.platform, code.info.ip
                    )
                },
            );
        }
    }
    Ok(())
}

/// `10.0.0.5` (one address) or `10.0.0.0/24`.
fn parse_network(text: &str) -> Result<ipnet::IpNet, String> {
    let text = text.trim();
    text.parse::<ipnet::IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("`{text}` is not an address or a network like 10.0.0.0/24"))
}

/// The configured proxies, plus this machine's loopback networks with `--trust-proxy`.
fn trusted_proxies(trust_local_proxy: bool, mut proxies: Vec<ipnet::IpNet>) -> Vec<ipnet::IpNet> {
    if trust_local_proxy {
        proxies.extend(["127.0.0.0/8", "::1/128"].map(|net| net.parse::<ipnet::IpNet>().expect("a valid network")));
    }
    proxies
}
