//! The scenarios and what they share: the harness (broker, meshes, sampler), connecting peers,
//! waiting for deliveries, and turning observations into a [`Report`].

mod burst;
mod connections;
mod fanout;
mod interactive;
mod recall;
mod schedules;
mod state;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use broker_core::client::Backoff;
use broker_core::testing::postgres::PostgresServer;
use indicatif::ProgressBar;

use crate::broker::{self, BrokerProcess, LaunchOptions, ProcReading, ProcSampler, ProcSummary};
use crate::measure::{LatencyHistogram, Ledger, now_us, round3};
use crate::peer::{BenchPeer, Observations, PeerOptions};
use crate::report::{self, CpuPerDelivery, Report};
use crate::setup::{self, Identity};
use crate::{Args, Scenario, progress};

/// How long peers may take to connect, per thousand peers (and at least once).
const CONNECT_TIMEOUT_PER_THOUSAND: Duration = Duration::from_secs(60);
/// After the last expected delivery, how long to keep listening for late duplicates.
const SETTLE: Duration = Duration::from_millis(300);
/// How long a send may wait for its ack.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Rejects parameters that cannot make a meaningful run, before anything starts.
pub fn validate(args: &Args) -> Result<()> {
    let peers = peers(args);
    match args.scenario {
        Scenario::Connections => {
            if peers == 0 {
                bail!("--peers must be at least 1");
            }
            if args.per_mesh == 0 {
                bail!("--per-mesh must be at least 1");
            }
            if !(args.idle >= 0.0 && args.idle.is_finite()) {
                bail!("--idle must be a number of seconds ≥ 0");
            }
        }
        _ => {
            if peers < 2 {
                bail!("--peers must be at least 2: messages go from one peer to another");
            }
        }
    }
    if args.messages == Some(0) {
        bail!("--messages must be at least 1");
    }
    if args.inflight == 0 {
        bail!("--inflight must be at least 1");
    }
    if args.scenario == Scenario::Interactive {
        if !(args.rate > 0.0 && args.rate.is_finite()) {
            bail!("--rate must be a positive number of messages per second");
        }
        if !(args.duration > 0.0 && args.duration.is_finite()) && args.messages.is_none() {
            bail!("--duration must be a positive number of seconds");
        }
    }
    if args.scenario == Scenario::Restart {
        if !(args.kill_after > 0.0 && args.kill_after < 1.0) {
            bail!("--kill-after must be a fraction between 0 and 1 (exclusive), for example 0.3");
        }
        if args.url.is_some() {
            bail!(
                "the restart scenario kills and restarts the broker: it needs a broker this tool starts (drop --url)"
            );
        }
    }
    if args.scenario == Scenario::Fanout && args.senders == 0 {
        bail!("--senders must be at least 1");
    }
    if args.replicas == 0 {
        bail!("--replicas must be at least 1");
    }
    if args.replicas > 1 && !args.postgres && args.database_url.is_none() {
        bail!("--replicas {} share one database: add --postgres (or --database-url)", args.replicas);
    }
    if args.cross_replicas && args.replicas < 2 {
        bail!("--cross-replicas needs --replicas 2 or more");
    }
    if args.cross_replicas && !matches!(args.scenario, Scenario::Burst | Scenario::Interactive) {
        bail!("--cross-replicas applies to the burst and interactive scenarios");
    }
    if args.scenario == Scenario::Restart && args.replicas > 1 {
        bail!("the restart scenario restarts one broker: drop --replicas");
    }
    if args.connect_concurrency == 0 {
        bail!("--connect-concurrency must be at least 1");
    }
    if !(args.drain_timeout > 0.0 && args.drain_timeout.is_finite()) {
        bail!("--drain-timeout must be a positive number of seconds");
    }
    if args.reconnect_initial_ms == 0 || args.reconnect_max_ms < args.reconnect_initial_ms {
        bail!("--reconnect-initial-ms must be ≥ 1 and ≤ --reconnect-max-ms");
    }
    if args.sample_interval_ms == 0 {
        bail!("--sample-interval-ms must be at least 1");
    }
    Ok(())
}

/// Peers (connections: sessions) of the run, with the scenario's default.
pub fn peers(args: &Args) -> u32 {
    args.peers.unwrap_or(match args.scenario {
        Scenario::Burst => 100,
        Scenario::Interactive => 20,
        Scenario::Fanout => 200,
        Scenario::Connections => 10_000,
        Scenario::Restart => 10,
        // One receiver and ten schedulers (a member has at most 1,000 pending by default).
        Scenario::Schedules => 11,
        Scenario::State => 100,
        // One remembers, one recalls.
        Scenario::Recall => 2,
    })
}

pub async fn run(args: &Args) -> Result<Report> {
    let limit = broker::raise_nofile_limit()?;
    let peers = peers(args);
    let (meshes, per_mesh) = match args.scenario {
        Scenario::Connections => (peers.div_ceil(args.per_mesh), args.per_mesh),
        _ => (1, peers),
    };
    // Each session holds a socket here and one in the broker (when it runs on this machine).
    let needed = u64::from(peers) + 64;
    if needed > limit {
        bail!("{peers} sessions need about {needed} open files, but RLIMIT_NOFILE allows {limit}: raise `ulimit -Hn`");
    }
    let harness = Harness::prepare(args, meshes as usize, per_mesh as usize).await?;
    match args.scenario {
        Scenario::Burst => burst::burst(args, harness).await,
        Scenario::Restart => burst::restart(args, harness).await,
        Scenario::Interactive => interactive::interactive(args, harness).await,
        Scenario::Fanout => fanout::fanout(args, harness).await,
        Scenario::Connections => connections::connections(args, harness).await,
        Scenario::Schedules => schedules::schedules(args, harness).await,
        Scenario::State => state::state(args, harness).await,
        Scenario::Recall => recall::recall(args, harness).await,
    }
}

/// The broker under test, the meshes created on it, and the sampler watching it.
pub struct Harness {
    pub addr: SocketAddr,
    /// The broker process, when this tool started it (declared before `_temp_dir`: it stops
    /// before its data directory is removed).
    pub broker: Option<BrokerProcess>,
    /// More replicas on the same database (`--replicas`), after `broker`.
    replicas: Vec<BrokerProcess>,
    /// Where peer `i` connects: `broker_urls[i % len]`.
    broker_urls: Vec<String>,
    pub targets: Targets,
    pub sampler: Arc<ProcSampler>,
    pub peer_options: PeerOptions,
    /// Members, mesh by mesh.
    pub meshes: Vec<Vec<Identity>>,
    pub setup_started: Instant,
    pub durability: Option<String>,
    /// The database server this tool started for the broker's store (`--postgres`).
    database: Option<PostgresServer>,
    _temp_dir: Option<tempfile::TempDir>,
}

impl Harness {
    async fn prepare(args: &Args, meshes: usize, per_mesh: usize) -> Result<Harness> {
        let setup_started = Instant::now();
        let (data_dir, temp_dir) = match &args.data_dir {
            Some(dir) => (dir.clone(), None),
            None if args.url.is_some() => (running_broker_data_dir()?, None),
            None => {
                let temp = tempfile::Builder::new()
                    .prefix("claudemesh-bench-")
                    .tempdir()
                    .context("cannot create a temporary data directory")?;
                (temp.path().to_owned(), Some(temp))
            }
        };
        // `--durability full` asks the database to sync its commits too; `normal` lets it not.
        let durable = args.durability == "full";
        let database = args.postgres.then(|| {
            broker_core::store::off_runtime(if durable { PostgresServer::start_durable } else { PostgresServer::start })
        });
        let database_url = match &database {
            Some(server) => Some(server.create_database("bench")),
            None => args.database_url.clone(),
        };
        let prefix = format!("bench-{}-{}", args.scenario.name(), std::process::id());
        let (dir, url) = (data_dir.clone(), database_url.clone());
        let identities =
            tokio::task::spawn_blocking(move || setup::create_meshes(&dir, url.as_deref(), &prefix, meshes, per_mesh))
                .await
                .context("the mesh set-up thread failed")??;
        let (broker_url, addr, broker) = match &args.url {
            Some(url) => (url.clone(), broker::addr_of_url(url)?, None),
            None => {
                let options = LaunchOptions {
                    binary: broker_binary(args.broker_bin.as_ref())?,
                    data_dir,
                    durability: args.durability.clone(),
                    // One mesh holds every peer of the message scenarios (fanout: 200).
                    env: [("MAX_CONNECTIONS_PER_MESH".to_owned(), per_mesh.max(100).to_string())]
                        .into_iter()
                        .chain(database_url.map(|url| ("DATABASE_URL".to_owned(), url)))
                        .collect(),
                };
                let process = BrokerProcess::start(options).await?;
                let addr = process.addr();
                (format!("http://{addr}"), addr, Some(process))
            }
        };
        let mut replicas = Vec::new();
        let mut broker_urls = vec![broker_url.clone()];
        if let Some(first) = &broker {
            for _ in 1..args.replicas {
                let replica = BrokerProcess::start(first.options().clone()).await?;
                broker_urls.push(format!("http://{}", replica.addr()));
                replicas.push(replica);
            }
        }
        let pid = broker.as_ref().and_then(BrokerProcess::pid).or(args.broker_pid);
        let sampler = ProcSampler::start(pid, Duration::from_millis(args.sample_interval_ms));
        let peer_options = PeerOptions {
            broker_url,
            backoff: Backoff {
                initial: Duration::from_millis(args.reconnect_initial_ms),
                max: Duration::from_millis(args.reconnect_max_ms),
            },
            request_timeout: REQUEST_TIMEOUT,
        };
        let durability = broker.as_ref().map(|_| args.durability.clone());
        let targets = Targets { replicas: broker_urls.len(), cross: args.cross_replicas };
        Ok(Harness {
            addr,
            broker,
            replicas,
            broker_urls,
            targets,
            sampler,
            peer_options,
            meshes: identities,
            setup_started,
            durability,
            database,
            _temp_dir: temp_dir,
        })
    }

    /// Starts sessions for `identities` (at most `concurrency` handshaking at once) and waits
    /// until every one has connected.
    pub async fn connect_peers(
        &self,
        identities: &[&Identity],
        observations: &Arc<Observations>,
        concurrency: u32,
    ) -> Result<Vec<BenchPeer>> {
        let total = identities.len() as u64;
        let bar = progress::bar(total, "connecting");
        let timeout = CONNECT_TIMEOUT_PER_THOUSAND * (total.div_ceil(1000) as u32).max(1);
        let deadline = Instant::now() + timeout;
        let mut peers = Vec::with_capacity(identities.len());
        for (index, identity) in identities.iter().enumerate() {
            while peers.len() as u64 - observations.connected.load(Ordering::Relaxed) >= u64::from(concurrency) {
                if Instant::now() > deadline {
                    break;
                }
                bar.set_position(observations.connected.load(Ordering::Relaxed));
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let options = PeerOptions {
                broker_url: self.broker_urls[index % self.broker_urls.len()].clone(),
                ..self.peer_options.clone()
            };
            peers.push(BenchPeer::start(index as u32, identity, &options, observations));
        }
        let remaining = deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(1));
        crate::peer::wait_connected(observations, total, remaining, |n| bar.set_position(n)).await?;
        bar.finish_and_clear();
        Ok(peers)
    }

    /// Builds the report from what the run observed.
    pub fn report(&self, scenario: Scenario, mut params: serde_json::Value, run: Measured) -> Report {
        if self.broker_urls.len() > 1 {
            params["replicas"] = self.broker_urls.len().into();
            params["cross_replicas"] = self.targets.cross.into();
        }
        let summary: Option<ProcSummary> = self.sampler.known().then(|| self.sampler.finish());
        let since_start = |total: Duration, at_start: Duration| round3(total.saturating_sub(at_start).as_secs_f64());
        // With replicas: all of them together (the sampler watches the first one).
        let broker_cpu = match run.replicas_cpu {
            Some(cpu) => Some(round3(cpu.as_secs_f64())),
            None => summary.map(|s| since_start(s.cpu, run.broker_at_start.cpu)),
        };
        let database_cpu = run.database_cpu.map(|cpu| round3(cpu.as_secs_f64()));
        let writer_cpu = summary.map(|s| since_start(s.writer_cpu, run.broker_at_start.writer_cpu));
        let totals = run.observations.ledger.totals();
        // Measured first-time deliveries (fanout's warm-up broadcasts are not among them).
        let e2e = run.observations.e2e.percentiles();
        let delivered_fraction = if totals.sent == 0 { 1.0 } else { totals.delivered as f64 / totals.sent as f64 };
        Report {
            scenario: scenario.name(),
            params,
            broker: if self.broker.is_some() { "started" } else { "url" },
            durability: self.durability.clone(),
            totals,
            delivered_fraction,
            throughput_msgs_per_s: if run.wall.is_zero() {
                0.0
            } else {
                round3(e2e.count as f64 / run.wall.as_secs_f64())
            },
            e2e_ms: e2e,
            ack_ms: run.ack.percentiles(),
            broker_rss_max_mb: summary.map(|s| report::mb(s.rss_max_bytes)),
            broker_rss_end_mb: summary.map(|s| report::mb(s.rss_last_bytes)),
            broker_fds_max: summary.map(|s| s.fds_max),
            broker_cpu_s: broker_cpu,
            broker_writer_cpu_s: writer_cpu,
            cpu_us_per_delivery: CpuPerDelivery {
                broker: broker_cpu.and_then(|cpu| per_delivery(cpu, e2e.count)),
                broker_writer: writer_cpu.and_then(|cpu| per_delivery(cpu, e2e.count)),
                database: database_cpu.and_then(|cpu| per_delivery(cpu, e2e.count)),
                bench: per_delivery(run.bench_cpu.as_secs_f64(), e2e.count),
            },
            bench_cpu_s: round3(run.bench_cpu.as_secs_f64()),
            database_cpu_s: database_cpu,
            wall_s: round3(run.wall.as_secs_f64()),
            setup_s: round3(run.setup.as_secs_f64()),
            disconnects: run.observations.disconnects.load(Ordering::Relaxed),
            errors: run.observations.errors(),
            fanout: None,
            connections: None,
            schedules: None,
            state: None,
            recall: None,
            restart: None,
        }
    }
}

/// The measured phase of a run.
pub struct Measured {
    pub observations: Arc<Observations>,
    pub ack: Arc<LatencyHistogram>,
    pub wall: Duration,
    pub setup: Duration,
    pub bench_cpu: Duration,
    /// The broker's reading when the phase began (set-up and connecting are not counted).
    pub broker_at_start: ProcReading,
    /// The database server's CPU time during the phase (`--postgres`).
    pub database_cpu: Option<Duration>,
    /// Every replica's CPU time during the phase (`--replicas` above 1).
    pub replicas_cpu: Option<Duration>,
}

/// `cpu_s` per delivery, in µs.
fn per_delivery(cpu_s: f64, deliveries: u64) -> Option<f64> {
    (deliveries > 0).then(|| round3(cpu_s * 1e6 / deliveries as f64))
}

/// Marks the start of a measured phase.
pub struct Phase {
    pub started_us: u64,
    started: Instant,
    bench_cpu: Duration,
    broker: ProcReading,
    database_cpu: Option<Duration>,
    replicas_cpu: Option<Duration>,
}

impl Harness {
    /// The CPU time the database server this tool started has used so far.
    fn database_cpu(&self) -> Option<Duration> {
        broker::process_tree_cpu(self.database.as_ref()?.pid()?)
    }

    /// The CPU time of every replica so far, when there are several.
    fn replicas_cpu(&self) -> Option<Duration> {
        if self.replicas.is_empty() {
            return None;
        }
        let all = self.broker.iter().chain(&self.replicas);
        all.map(|replica| replica.pid().and_then(broker::cpu_time)).sum()
    }
}

/// Who a message goes to: a random other peer, and with `--cross-replicas` one connected to
/// another replica than the sender (peer `i` is on replica `i % replicas`).
#[derive(Debug, Clone, Copy)]
pub struct Targets {
    replicas: usize,
    cross: bool,
}

impl Targets {
    pub fn pick(self, sender: usize, peers: usize) -> usize {
        loop {
            let target = random_other(sender, peers);
            if !self.cross || target % self.replicas != sender % self.replicas {
                return target;
            }
        }
    }
}

impl Phase {
    pub fn start(harness: &Harness) -> Phase {
        let broker = harness.sampler.sample().unwrap_or_default();
        Phase {
            started_us: now_us(),
            started: Instant::now(),
            bench_cpu: broker::cpu_time(std::process::id()).unwrap_or_default(),
            broker,
            database_cpu: harness.database_cpu(),
            replicas_cpu: harness.replicas_cpu(),
        }
    }

    /// Ends the phase at `end_us` (for message scenarios: the last delivery).
    pub fn finish(
        self,
        harness: &Harness,
        observations: Arc<Observations>,
        ack: Arc<LatencyHistogram>,
        end_us: Option<u64>,
    ) -> Measured {
        let wall = match end_us {
            Some(end) if end > self.started_us => Duration::from_micros(end - self.started_us),
            Some(_) => Duration::ZERO,
            None => self.started.elapsed(),
        };
        Measured {
            observations,
            ack,
            wall,
            setup: self.started.duration_since(harness.setup_started),
            bench_cpu: broker::cpu_time(std::process::id()).unwrap_or_default().saturating_sub(self.bench_cpu),
            broker_at_start: self.broker,
            database_cpu: harness.database_cpu().zip(self.database_cpu).map(|(end, start)| end.saturating_sub(start)),
            replicas_cpu: harness.replicas_cpu().zip(self.replicas_cpu).map(|(end, start)| end.saturating_sub(start)),
        }
    }
}

/// Waits until the senders are done and every acknowledged copy arrived (or `timeout` passed
/// after the senders finished), showing delivered copies on `bar`. Then listens a little longer
/// for late duplicates.
pub async fn drain(ledger: &Ledger, senders: Vec<tokio::task::JoinHandle<()>>, timeout: Duration, bar: &ProgressBar) {
    let mut senders = senders;
    while !senders.is_empty() {
        senders.retain(|s| !s.is_finished());
        bar.set_position(ledger.first_deliveries());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deadline = Instant::now() + timeout;
    loop {
        bar.set_position(ledger.first_deliveries());
        let totals = ledger.totals();
        if totals.delivered >= totals.sent || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(SETTLE).await;
    bar.finish_and_clear();
}

/// Closes every session cleanly, all at once.
pub async fn shutdown_peers(peers: Vec<BenchPeer>) {
    let closing: Vec<_> = peers.into_iter().map(|peer| tokio::spawn(peer.shutdown())).collect();
    for close in closing {
        let _ = close.await;
    }
}

/// The data directory of a broker given by `--url` without `--data-dir`: where
/// `claudemesh-broker` keeps it by default. It must exist: creating a fresh database there would
/// put the run's members where the running broker never looks.
fn running_broker_data_dir() -> Result<PathBuf> {
    let dir = std::env::var_os("CLAUDEMESH_DATA_DIR").map(PathBuf::from).unwrap_or_else(|| {
        std::env::var_os("XDG_DATA_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".local/share")))
            .unwrap_or_else(|| PathBuf::from("."))
            .join("claudemesh-broker")
    });
    if !dir.join(broker_core::operator::DATABASE_FILE).is_file() {
        bail!(
            "no broker database in {}: pass --data-dir with the running broker's data directory \
             (the load generator creates its meshes and members there)",
            dir.display()
        );
    }
    Ok(dir)
}

/// `claudemesh-broker`: `--broker-bin`, or the one next to this executable.
fn broker_binary(explicit: Option<&PathBuf>) -> Result<PathBuf> {
    if let Some(path) = explicit {
        if !path.is_file() {
            bail!("--broker-bin {}: no such file", path.display());
        }
        return Ok(path.clone());
    }
    let me = std::env::current_exe().context("cannot locate this executable")?;
    let beside = me.with_file_name(format!("claudemesh-broker{}", std::env::consts::EXE_SUFFIX));
    if beside.is_file() {
        return Ok(beside);
    }
    bail!(
        "claudemesh-broker is not next to this executable ({}): build it (`cargo build --release -p broker-core`) \
         or pass --broker-bin PATH",
        beside.display()
    )
}

/// A uniformly random peer index other than `sender`.
fn random_other(sender: usize, peers: usize) -> usize {
    let pick = rand::Rng::gen_range(&mut rand::thread_rng(), 0..peers - 1);
    if pick >= sender { pick + 1 } else { pick }
}
