//! `claudemesh-bench`: the load generator for the claudemesh broker.
//!
//! It starts a real `claudemesh-broker` process on a temporary data directory (or targets one
//! given by `--url`), creates meshes and members with the operator API, opens real WebSocket
//! sessions with the project's own mesh client, sends sealed messages and measures what arrives.
//! Layout:
//! - `broker` — the broker process (start, kill -9, restart), `/proc` sampling, HTTP probes.
//! - `setup` — meshes and members through the operator API.
//! - `peer` — benchmark peers: a `MeshClient` plus an application loop that checks and times.
//! - `payload` — the stamp (sender, sequence, send time) inside each sealed plaintext.
//! - `measure` — the clock, latency histograms, and the ledger of every message.
//! - `scenarios` — burst, interactive, fanout, connections, restart.
//! - `report` — the JSON object and the summary table.

mod broker;
mod measure;
mod payload;
mod peer;
mod progress;
mod report;
mod scenarios;
mod setup;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::{Parser, ValueEnum};

/// Exit code when the run finished but acknowledged messages were lost or duplicated.
const EXIT_DELIVERY_VIOLATED: u8 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// N peers each send M direct messages to random peers, as fast as the broker accepts them
    /// (default 100 × 1,000).
    Burst,
    /// Peers each send a few messages per second to random peers (default 20 peers, 5/s, 30 s).
    Interactive,
    /// Broadcasts (`*`) in one mesh, one after the other (default 200 peers, 200 broadcasts).
    Fanout,
    /// Many concurrent sessions across meshes: a hello storm, then idle (default 10,000
    /// sessions, 100 per mesh).
    Connections,
    /// A burst during which the broker is killed with SIGKILL and restarted on the same port and
    /// data directory (default 10 peers × 2,000 messages, killed at 30% acknowledged).
    Restart,
    /// Scheduled messages: many pending at once (default 10,000 by 10 peers to one), falling
    /// due evenly over --duration seconds; broker memory while pending, and lateness (e2e).
    Schedules,
    /// Shared-state writes in one mesh, each timed until every other session opened the change
    /// (default 100 peers, 500 writes by 10 writers taking turns).
    State,
    /// The mesh's memory: one peer remembers --messages memories (default 10,000), another
    /// syncs them into its own index and recalls 1,000 times (sync check + FTS5 search).
    Recall,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Burst => "burst",
            Scenario::Interactive => "interactive",
            Scenario::Fanout => "fanout",
            Scenario::Connections => "connections",
            Scenario::Restart => "restart",
            Scenario::Schedules => "schedules",
            Scenario::State => "state",
            Scenario::Recall => "recall",
        }
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "claudemesh-bench",
    version,
    about = "Load generator for the claudemesh broker: real broker, real WebSockets, real crypto.",
    long_about = "Load generator for the claudemesh broker.\n\n\
        It starts `claudemesh-broker` (found next to this executable, or --broker-bin) on a temporary \
        data directory with its rate limits raised, creates meshes and members with the operator API, \
        connects peers with the project's mesh client, sends sealed messages whose plaintext carries \
        the send time and a sequence number, and reports end-to-end and ack latency percentiles, \
        throughput, delivered fraction, duplicates, losses, and the broker's memory, descriptors and \
        CPU time sampled from /proc.\n\n\
        With --url it targets a broker that is already running on this machine; meshes and members go \
        into that broker's data directory (--data-dir). Start it with raised RATE_LIMIT_BURST, \
        RATE_LIMIT_PER_MINUTE, PAIR_BURST, PAIR_PER_MINUTE and PAIR_LOOP_TURNS, or sends are refused with rate_limit \
        or held.",
    after_help = "Examples:\n  \
        claudemesh-bench burst --json\n  \
        claudemesh-bench burst --peers 10 --messages 100\n  \
        claudemesh-bench interactive --duration 10\n  \
        claudemesh-bench fanout --peers 200 --messages 100\n  \
        claudemesh-bench connections --peers 10000\n  \
        claudemesh-bench restart --peers 10 --messages 2000 --kill-after 0.3\n  \
        claudemesh-bench schedules --messages 10000 --duration 10\n  \
        claudemesh-bench state --peers 100 --messages 500\n  \
        claudemesh-bench recall --messages 10000\n  \
        claudemesh-bench burst --postgres --replicas 2 --cross-replicas\n  \
        claudemesh-bench burst --url http://127.0.0.1:7900 --data-dir /var/lib/claudemesh-broker\n\n\
        Exit codes: 0 the run kept every delivery guarantee; 1 the run could not be made; 2 bad usage; \
        3 acknowledged messages were lost or arrived twice (the report is still printed)."
)]
pub struct Args {
    /// What to measure.
    #[arg(value_enum)]
    pub scenario: Scenario,
    /// Peer sessions (connections: total sessions). Default: burst 100, interactive 20, fanout 200,
    /// connections 10000, restart 10.
    #[arg(long)]
    pub peers: Option<u32>,
    /// Messages per peer (burst, restart, interactive), broadcasts in all (fanout), or scheduled
    /// messages in all (schedules). Default: burst 1000, restart 2000, fanout 200, schedules
    /// 10000; interactive: rate × duration.
    #[arg(long)]
    pub messages: Option<u32>,
    /// interactive: seconds of sending (ignored when --messages is given); schedules: the seconds
    /// over which the scheduled messages fall due.
    #[arg(long, default_value_t = 30.0)]
    pub duration: f64,
    /// interactive: messages per second per peer.
    #[arg(long, default_value_t = 5.0)]
    pub rate: f64,
    /// burst, restart: sends each peer keeps in flight (waiting for their ack) at once. Past a
    /// few per peer throughput no longer grows, only the queueing part of latency does.
    #[arg(long, default_value_t = 8)]
    pub inflight: u32,
    /// Plaintext size of each message in bytes (the stamp, padded).
    #[arg(long, default_value_t = 64)]
    pub payload_bytes: usize,
    /// connections: sessions per mesh. A started broker allows at least this many (and at least
    /// every peer of the other scenarios, which use one mesh); its default is 100.
    #[arg(long, default_value_t = 100)]
    pub per_mesh: u32,
    /// connections: seconds to stay connected and idle after the storm.
    #[arg(long, default_value_t = 5.0)]
    pub idle: f64,
    /// Sessions handshaking at once at most while peers connect (it shapes the connections
    /// scenario's hello storm).
    #[arg(long, default_value_t = 512)]
    pub connect_concurrency: u32,
    /// restart: the broker is killed once this fraction of all messages was acknowledged.
    #[arg(long, default_value_t = 0.3)]
    pub kill_after: f64,
    /// fanout: peers that take turns broadcasting (each first sends one unmeasured warm-up).
    #[arg(long, default_value_t = 10)]
    pub senders: u32,
    /// Target a running broker at this URL (http://HOST:PORT) instead of starting one. Meshes
    /// and members are created in its data directory (--data-dir), which must be on this machine.
    #[arg(long)]
    pub url: Option<String>,
    /// The broker's data directory: where meshes and members are created. With --url: the
    /// running broker's (default: CLAUDEMESH_DATA_DIR, else claudemesh-broker's default
    /// ~/.local/share/claudemesh-broker); otherwise where the started broker keeps its data
    /// (default: a temporary directory).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Keep the broker's store in this PostgreSQL database (with --url: the running broker's);
    /// meshes and members are created there.
    #[arg(long, conflicts_with = "postgres")]
    pub database_url: Option<String>,
    /// Start a throwaway PostgreSQL server (Debian's binaries, as the tests do) for the started
    /// broker's store, and report the database's CPU per delivery. It syncs its commits to disk
    /// with `--durability full` (the default), and not with `normal`.
    #[arg(long, conflicts_with = "url")]
    pub postgres: bool,
    /// Start this many broker processes (replicas) on the one database (needs --postgres or
    /// --database-url); peers are spread over them in turn. The broker CPU reported is theirs
    /// together; memory and descriptors are the first replica's.
    #[arg(long, default_value_t = 1, conflicts_with = "url")]
    pub replicas: u32,
    /// burst, interactive: every message goes to a peer connected to another replica than its
    /// sender's (needs --replicas 2 or more).
    #[arg(long)]
    pub cross_replicas: bool,
    /// With --url: the broker's pid, to sample its memory, descriptors and CPU time.
    #[arg(long, requires = "url")]
    pub broker_pid: Option<u32>,
    /// The `claudemesh-broker` executable (default: next to this one).
    #[arg(long)]
    pub broker_bin: Option<PathBuf>,
    /// Durability of the started broker: `full` (fsync per commit) or `normal`.
    #[arg(long, default_value = "full", value_parser = ["full", "normal"])]
    pub durability: String,
    /// Seconds to wait for outstanding deliveries once all sends are settled.
    #[arg(long, default_value_t = 60.0)]
    pub drain_timeout: f64,
    /// How often the broker's /proc is sampled, in milliseconds.
    #[arg(long, default_value_t = 100)]
    pub sample_interval_ms: u64,
    /// First reconnect delay ceiling of the peers, in milliseconds (the client's default).
    #[arg(long, default_value_t = 500)]
    pub reconnect_initial_ms: u64,
    /// Largest reconnect delay of the peers, in milliseconds (the client's default).
    #[arg(long, default_value_t = 30_000)]
    pub reconnect_max_ms: u64,
    /// Print one JSON object on stdout (the summary table goes to stderr).
    #[arg(long)]
    pub json: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<ExitCode> {
    scenarios::validate(&args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    let report = runtime.block_on(scenarios::run(&args))?;
    if args.json {
        println!("{}", serde_json::to_string(&report).context("encoding the report")?);
        eprint!("{}", report.table());
    } else {
        print!("{}", report.table());
    }
    let violations = report.delivery_violations();
    if violations.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    for violation in violations {
        eprintln!("delivery guarantee violated: {violation}");
    }
    Ok(ExitCode::from(EXIT_DELIVERY_VIOLATED))
}
