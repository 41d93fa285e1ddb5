//! The broker under test: a `claudemesh-broker` process this tool starts (and may kill and
//! restart), or one that is already running. Also samples its memory, descriptors and CPU time
//! from `/proc` while the run goes on.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use broker_core::operator::Operator;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// How long a started broker may take to answer `/health/ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How often readiness is polled: it bounds the error of "time until ready".
const READY_POLL: Duration = Duration::from_millis(5);
/// How long a broker asked to stop may take before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Limits that would throttle the load generator itself; raised for brokers this tool starts.
const RATE_LIMIT_BURST: &str = "1000000000";
const RATE_LIMIT_PER_MINUTE: &str = "1000000000";

/// How to start a broker.
#[derive(Debug, Clone)]
pub struct LaunchOptions {
    pub binary: PathBuf,
    pub data_dir: PathBuf,
    /// `full` or `normal` (`--durability`).
    pub durability: String,
    /// Extra environment for the broker (for example `MAX_CONNECTIONS_PER_MESH`).
    pub env: Vec<(String, String)>,
}

/// A broker process this tool owns.
pub struct BrokerProcess {
    options: LaunchOptions,
    addr: SocketAddr,
    child: Option<Child>,
    log_path: PathBuf,
}

impl BrokerProcess {
    /// Starts the broker on a free loopback port and waits until it is ready.
    pub async fn start(options: LaunchOptions) -> Result<BrokerProcess> {
        let port = free_port()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        // Replicas share a data directory: each its own log.
        let log_path = options.data_dir.join(format!("broker-{port}.log"));
        let mut broker = BrokerProcess { options, addr, child: None, log_path };
        broker.spawn()?;
        broker.wait_ready().await?;
        Ok(broker)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn options(&self) -> &LaunchOptions {
        &self.options
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts the process again on the same port and data directory (after [`Self::kill`]).
    pub fn spawn(&mut self) -> Result<()> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .with_context(|| format!("cannot open the broker log {}", self.log_path.display()))?;
        let child = Command::new(&self.options.binary)
            .arg("--data-dir")
            .arg(&self.options.data_dir)
            .args(["serve", "--listen", &self.addr.to_string(), "--durability", &self.options.durability])
            .args(["--log-format", "text"])
            .env("RATE_LIMIT_BURST", RATE_LIMIT_BURST)
            .env("RATE_LIMIT_PER_MINUTE", RATE_LIMIT_PER_MINUTE)
            // A load generator is the flood the pair breaker exists to stop.
            .env("PAIR_BURST", RATE_LIMIT_BURST)
            .env("PAIR_PER_MINUTE", RATE_LIMIT_PER_MINUTE)
            .env("PAIR_LOOP_TURNS", RATE_LIMIT_BURST)
            .env("RUST_LOG", std::env::var("BENCH_BROKER_LOG").unwrap_or_else(|_| "warn".to_owned()))
            .envs(self.options.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start the broker {}", self.options.binary.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// Polls `/health/ready` until it answers 200; returns when it did.
    pub async fn wait_ready(&mut self) -> Result<Instant> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait().context("checking the broker process")?
            {
                bail!("the broker exited during start-up ({status}); its log:\n{}", self.log_tail());
            }
            if let Ok((200, _)) = http_get(self.addr, "/health/ready").await {
                return Ok(Instant::now());
            }
            if Instant::now() > deadline {
                bail!("the broker was not ready within {READY_TIMEOUT:?}; its log:\n{}", self.log_tail());
            }
            tokio::time::sleep(READY_POLL).await;
        }
    }

    /// `kill -9`: no goodbye, no flush.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().context("sending SIGKILL to the broker")?;
            child.wait().context("reaping the broker")?;
        }
        Ok(())
    }

    /// Asks the broker to shut down (SIGTERM), killing it if it takes too long.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let pid = rustix::process::Pid::from_raw(child.id() as i32);
        if let Some(pid) = pid
            && rustix::process::kill_process(pid, rustix::process::Signal::TERM).is_ok()
        {
            let deadline = Instant::now() + STOP_GRACE;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// The last lines of the broker's log (for error messages).
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A port the kernel just handed out, free again once the probe socket closes.
fn free_port() -> Result<u16> {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").context("cannot bind a loopback port")?;
    Ok(probe.local_addr().context("reading the probe's port")?.port())
}

/// `GET path` over plain HTTP/1.1; returns the status and body. Enough for health checks and
/// `/metrics`, without an HTTP client library.
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.context("sending the request")?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.context("reading the response")?;
    let response = String::from_utf8_lossy(&response);
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no HTTP status line from {addr}{path}"))?;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Ok((status, body))
}

/// `http://host:port[/…]` → the socket address, for health checks of a broker given by URL.
pub fn addr_of_url(url: &str) -> Result<SocketAddr> {
    let rest = url.trim().strip_prefix("http://").or_else(|| url.trim().strip_prefix("ws://")).with_context(|| {
        format!("--url {url:?}: expected http://HOST:PORT (TLS is not supported by the load generator)")
    })?;
    let host_port = rest.split('/').next().unwrap_or(rest);
    use std::net::ToSocketAddrs as _;
    host_port
        .to_socket_addrs()
        .with_context(|| format!("--url {url:?}: cannot resolve {host_port}"))?
        .next()
        .with_context(|| format!("--url {url:?}: {host_port} resolves to no address"))
}

/// Opens the operator API on a data directory (meshes and members are created there).
pub fn operator(data_dir: &Path, database_url: Option<&str>) -> Result<Operator> {
    Operator::open_with(data_dir, database_url)
        .with_context(|| format!("cannot open the broker's store (data directory {})", data_dir.display()))
}

/// One `/proc` reading of a process.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcReading {
    pub rss_bytes: u64,
    pub fds: u64,
    /// User + system CPU time.
    pub cpu: Duration,
    /// CPU time of the broker's store writer thread: the one part of the hot path that cannot
    /// spread over cores (every commit and its completions run there).
    pub writer_cpu: Duration,
}

/// Reads `/proc/<pid>`; `None` once the process is gone.
pub fn read_proc(pid: u32) -> Option<ProcReading> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kb| kb.parse().ok())?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map(|entries| entries.count() as u64).unwrap_or(0);
    Some(ProcReading {
        rss_bytes: rss_kb * 1024,
        fds,
        cpu: cpu_time(pid).unwrap_or_default(),
        writer_cpu: thread_cpu_time(pid, WRITER_THREAD).unwrap_or_default(),
    })
}

/// The name `SqliteStore` gives its writer thread.
const WRITER_THREAD: &str = "store-writer";

/// CPU time of the first thread of `pid` named `name`.
fn thread_cpu_time(pid: u32, name: &str) -> Option<Duration> {
    std::fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten().find_map(|task| {
        let comm = std::fs::read_to_string(task.path().join("comm")).ok()?;
        if comm.trim() != name {
            return None;
        }
        stat_cpu_time(&std::fs::read_to_string(task.path().join("stat")).ok()?)
    })
}

/// User + system CPU time of a process, from `/proc/<pid>/stat`.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    stat_cpu_time(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// CPU time of `root` and every live process below it, plus what its exited children used (a
/// database server: the postmaster and its backends).
pub fn process_tree_cpu(root: u32) -> Option<Duration> {
    let mut processes = std::collections::HashMap::new();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        let Some(fields) = stat_fields(&stat) else { continue };
        // ppid is field 4.
        let Some(ppid) = fields.get(1).and_then(|p| p.parse::<u32>().ok()) else { continue };
        let own = ticks_time(&fields, 11).unwrap_or_default();
        // cutime and cstime (fields 16, 17): what its exited, waited-for children used.
        let children = ticks_time(&fields, 13).unwrap_or_default();
        processes.insert(pid, (ppid, own, children));
    }
    let (_, own, children) = processes.get(&root)?;
    let mut total = *own + *children;
    let mut below = vec![root];
    while let Some(parent) = below.pop() {
        for (pid, (ppid, own, _)) in &processes {
            if *ppid == parent {
                total += *own;
                below.push(*pid);
            }
        }
    }
    Some(total)
}

/// The fields of a `/proc/…/stat` text from field 3 on: the command name (field 2) may hold
/// spaces, so they start after its closing parenthesis.
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    Some(stat[stat.rfind(')')? + 1..].split_whitespace().collect())
}

/// Two clock-tick counters of [`stat_fields`], from `first` on, summed as time.
fn ticks_time(fields: &[&str], first: usize) -> Option<Duration> {
    let ticks: u64 = fields.get(first)?.parse::<u64>().ok()? + fields.get(first + 1)?.parse::<u64>().ok()?;
    let per_second = rustix::param::clock_ticks_per_second().max(1);
    Some(Duration::from_secs_f64(ticks as f64 / per_second as f64))
}

/// User + system CPU time (utime and stime, fields 14 and 15) from the text of a `/proc/…/stat`.
fn stat_cpu_time(stat: &str) -> Option<Duration> {
    ticks_time(&stat_fields(stat)?, 11)
}

/// Samples a broker's `/proc` in the background: peak memory and descriptors, CPU time summed
/// over every process it was (a restarted broker is a new process).
#[derive(Default)]
pub struct ProcSampler {
    /// The broker's current pid (0: none or unknown). Changed by the restart scenario.
    pid: AtomicU32,
    rss_max: AtomicU64,
    rss_last: AtomicU64,
    fds_max: AtomicU64,
    /// CPU microseconds of processes that already ended.
    cpu_done_us: AtomicU64,
    /// CPU microseconds of the current process at its last reading.
    cpu_current_us: AtomicU64,
    /// The same two for the store writer thread.
    writer_done_us: AtomicU64,
    writer_current_us: AtomicU64,
    stop: AtomicBool,
}

/// What the sampler saw.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcSummary {
    pub rss_max_bytes: u64,
    pub rss_last_bytes: u64,
    pub fds_max: u64,
    pub cpu: Duration,
    pub writer_cpu: Duration,
}

impl ProcSampler {
    /// Starts sampling `pid` every `interval`. With `None` (a broker given by `--url` without
    /// `--broker-pid`) it records nothing.
    pub fn start(pid: Option<u32>, interval: Duration) -> Arc<ProcSampler> {
        let sampler = Arc::new(ProcSampler::default());
        sampler.pid.store(pid.unwrap_or(0), Ordering::Relaxed);
        let background = sampler.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            while !background.stop.load(Ordering::Relaxed) {
                tick.tick().await;
                background.sample();
            }
        });
        sampler
    }

    /// Takes one reading now.
    pub fn sample(&self) -> Option<ProcReading> {
        let pid = self.pid.load(Ordering::Relaxed);
        if pid == 0 {
            return None;
        }
        let reading = read_proc(pid)?;
        self.rss_max.fetch_max(reading.rss_bytes, Ordering::Relaxed);
        self.rss_last.store(reading.rss_bytes, Ordering::Relaxed);
        self.fds_max.fetch_max(reading.fds, Ordering::Relaxed);
        self.cpu_current_us.store(reading.cpu.as_micros() as u64, Ordering::Relaxed);
        self.writer_current_us.store(reading.writer_cpu.as_micros() as u64, Ordering::Relaxed);
        Some(reading)
    }

    /// The broker is about to be killed: bank its CPU time. Then follow `new_pid`.
    pub fn switch_process(&self, new_pid: Option<u32>) {
        self.sample();
        let done = self.cpu_current_us.swap(0, Ordering::Relaxed);
        self.cpu_done_us.fetch_add(done, Ordering::Relaxed);
        let done = self.writer_current_us.swap(0, Ordering::Relaxed);
        self.writer_done_us.fetch_add(done, Ordering::Relaxed);
        self.pid.store(new_pid.unwrap_or(0), Ordering::Relaxed);
    }

    pub fn known(&self) -> bool {
        self.pid.load(Ordering::Relaxed) != 0
    }

    /// Stops sampling after one last reading.
    pub fn finish(&self) -> ProcSummary {
        self.sample();
        self.stop.store(true, Ordering::Relaxed);
        ProcSummary {
            rss_max_bytes: self.rss_max.load(Ordering::Relaxed),
            rss_last_bytes: self.rss_last.load(Ordering::Relaxed),
            fds_max: self.fds_max.load(Ordering::Relaxed),
            cpu: Duration::from_micros(
                self.cpu_done_us.load(Ordering::Relaxed) + self.cpu_current_us.load(Ordering::Relaxed),
            ),
            writer_cpu: Duration::from_micros(
                self.writer_done_us.load(Ordering::Relaxed) + self.writer_current_us.load(Ordering::Relaxed),
            ),
        }
    }
}

/// Raises this process's open-file limit to its hard limit; brokers it starts inherit it.
/// Returns the new soft limit.
pub fn raise_nofile_limit() -> Result<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        limit.current = limit.maximum;
        setrlimit(Resource::Nofile, limit).context("raising RLIMIT_NOFILE to its hard limit")?;
    }
    Ok(limit.current.unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_can_be_read_from_proc() {
        let reading = read_proc(std::process::id()).expect("our own /proc entry");
        assert!(reading.rss_bytes > 0);
        assert!(reading.fds >= 3);
    }

    #[test]
    fn urls_resolve_to_socket_addresses() {
        assert_eq!(addr_of_url("http://127.0.0.1:7900").expect("parses"), SocketAddr::from(([127, 0, 0, 1], 7900)));
        assert_eq!(addr_of_url("ws://127.0.0.1:7900/ws").expect("parses").port(), 7900);
        assert!(addr_of_url("https://example.com").is_err());
    }
}
