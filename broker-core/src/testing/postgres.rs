//! A real PostgreSQL server for one test: Debian's `postgresql` binaries (installed by
//! `scripts/install-deps.sh test`), a data directory of its own in the temporary directory, run
//! as the unprivileged `postgres` user when the test runs as root, on a free loopback port.
//!
//! `initdb` runs once per machine (and Postgres version) into a template directory that each
//! test copies, so a test pays only for starting a server (a fraction of a second). The server
//! is stopped and its directory removed when the [`PostgresServer`] is dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// How long a server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(30);

pub struct PostgresServer {
    root: PathBuf,
    port: u16,
    bin: PathBuf,
    owner: Option<(u32, u32)>,
    /// Commits reach the disk (fsync) before they are acknowledged.
    durable: bool,
    child: Option<Child>,
}

impl PostgresServer {
    /// Starts a server with an empty cluster, for a test: commits are not synced to disk (a
    /// test's database need not survive a power loss). Panics, saying how to install Postgres,
    /// when its binaries are missing.
    pub fn start() -> PostgresServer {
        PostgresServer::start_with(false)
    }

    /// A server with Postgres's own settings (fsync, synchronous commits, 128 MB of shared
    /// buffers): for measurements.
    pub fn start_durable() -> PostgresServer {
        PostgresServer::start_with(true)
    }

    fn start_with(durable: bool) -> PostgresServer {
        let bin = postgres_bin_dir();
        let owner = unprivileged_owner();
        static STARTED: AtomicU32 = AtomicU32::new(0);
        let root = std::env::temp_dir().join(format!(
            "claudemesh-pg-{}-{}",
            std::process::id(),
            STARTED.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).expect("creates the server's directory");
        let template = template(&bin, owner);
        run(Command::new("cp").arg("-a").arg(&template).arg(root.join("data")));
        chown(&root, owner);
        let port = free_port();
        let mut server = PostgresServer { root, port, bin, owner, durable, child: None };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(self.root.join("server.log")).expect("creates the server log");
        let mut command = Command::new(self.bin.join("postgres"));
        command
            .arg("-D")
            .arg(self.root.join("data"))
            .args(["-p", &self.port.to_string(), "-c", "listen_addresses=127.0.0.1"])
            .arg("-k")
            .arg(&self.root);
        // A test's server is small and need not survive a power loss (tests run many at once).
        if !self.durable {
            command.args(["-c", "shared_buffers=16MB", "-c", "max_connections=60"]);
            command.args(["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]);
        }
        command.stdin(Stdio::null()).stdout(log.try_clone().expect("log handle")).stderr(log);
        as_owner(&mut command, self.owner);
        self.child = Some(command.spawn().expect("starts postgres"));
        let deadline = Instant::now() + START_TIMEOUT;
        while self.connect("postgres").is_err() {
            if Instant::now() > deadline {
                panic!("postgres did not start in {START_TIMEOUT:?}; its log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The URL of database `name` on this server.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Creates an empty database; its URL.
    pub fn create_database(&self, name: &str) -> String {
        let statement = format!("CREATE DATABASE \"{name}\"");
        self.query("postgres", &statement);
        self.url(name)
    }

    /// Runs `sql` on database `name`; every row's first column as text. Usable from async
    /// tests too (the blocking client runs on a thread of its own).
    pub fn query(&self, name: &str, sql: &str) -> Vec<String> {
        let url = self.url(name);
        crate::store::off_runtime(move || {
            let mut client = postgres::Client::connect(&url, postgres::NoTls).expect("connects");
            let rows = client.simple_query(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
            let texts = rows.iter().filter_map(|message| match message {
                postgres::SimpleQueryMessage::Row(row) => Some(row.get(0).unwrap_or_default().to_owned()),
                _ => None,
            });
            texts.collect()
        })
    }

    fn connect(&self, name: &str) -> Result<(), postgres::Error> {
        let url = self.url(name);
        crate::store::off_runtime(move || postgres::Client::connect(&url, postgres::NoTls).map(drop))
    }

    /// Stops the server at once (as a crash or `kill -9` would), keeping its data.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again after [`PostgresServer::kill`], on the same port and data (recovering
    /// as after a crash).
    pub fn start_again(&mut self) {
        self.kill();
        self.spawn();
    }

    /// The postmaster's pid, while it runs (its backends are its children).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("server.log")).unwrap_or_default()
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Debian keeps the server binaries in `/usr/lib/postgresql/<version>/bin`; elsewhere they are
/// on the `PATH`.
fn postgres_bin_dir() -> PathBuf {
    let debian = std::fs::read_dir("/usr/lib/postgresql").into_iter().flatten().flatten().filter_map(|entry| {
        let version: u32 = entry.file_name().to_str()?.parse().ok()?;
        let bin = entry.path().join("bin");
        bin.join("initdb").exists().then_some((version, bin))
    });
    if let Some((_, bin)) = debian.max_by_key(|(version, _)| *version) {
        return bin;
    }
    let on_path = std::env::var_os("PATH").into_iter().flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>());
    for dir in on_path {
        if dir.join("initdb").exists() && dir.join("postgres").exists() {
            return dir;
        }
    }
    panic!("PostgreSQL is not installed (no initdb and postgres); `scripts/install-deps.sh test` installs it");
}

/// Postgres refuses to run as root: as root, the server runs as the `postgres` user.
fn unprivileged_owner() -> Option<(u32, u32)> {
    if rustix::process::geteuid().as_raw() != 0 {
        return None;
    }
    let id = |flag: &str| -> u32 {
        let output = Command::new("id").args([flag, "postgres"]).output().expect("runs id");
        assert!(output.status.success(), "no postgres user to run the server as; install the postgresql package");
        String::from_utf8_lossy(&output.stdout).trim().parse().expect("a numeric id")
    };
    Some((id("-u"), id("-g")))
}

fn as_owner(command: &mut Command, owner: Option<(u32, u32)>) {
    use std::os::unix::process::CommandExt as _;
    if let Some((uid, gid)) = owner {
        command.uid(uid).gid(gid);
    }
}

fn chown(path: &Path, owner: Option<(u32, u32)>) {
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("hands the directory to postgres");
    }
}

/// The cluster every test copies, made once: `initdb` into a scratch directory renamed into
/// place, so that tests starting together never see half of one.
fn template(bin: &Path, owner: Option<(u32, u32)>) -> PathBuf {
    // "initdb (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"
    let version = String::from_utf8_lossy(&run(Command::new(bin.join("initdb")).arg("--version")).stdout)
        .split_whitespace()
        .skip_while(|word| *word != "(PostgreSQL)")
        .nth(1)
        .unwrap_or("unknown")
        .to_owned();
    let uid = owner.map_or_else(|| rustix::process::geteuid().as_raw(), |(uid, _)| uid);
    let template = std::env::temp_dir().join(format!("claudemesh-pg-template-{version}-{uid}"));
    if template.join("PG_VERSION").exists() {
        return template;
    }
    let scratch = std::env::temp_dir().join(format!("claudemesh-pg-template-{}.tmp", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).expect("creates the template directory");
    chown(&scratch, owner);
    let mut initdb = Command::new(bin.join("initdb"));
    initdb.arg("-D").arg(&scratch).args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-locale", "--no-sync"]);
    as_owner(&mut initdb, owner);
    run(&mut initdb);
    // Another test may have won the race: its template is as good as ours.
    if std::fs::rename(&scratch, &template).is_err() {
        let _ = std::fs::remove_dir_all(&scratch);
    }
    template
}

fn run(command: &mut Command) -> std::process::Output {
    let output = command.output().unwrap_or_else(|e| panic!("{command:?} does not run: {e}"));
    assert!(output.status.success(), "{command:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    output
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("binds").local_addr().expect("addr").port()
}
