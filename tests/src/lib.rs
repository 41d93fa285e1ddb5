//! Harness for the end-to-end tests and the latency measurement: real processes only.
//!
//! - [`Broker`] — a `claudemesh-broker serve` process on a free loopback port with a temporary
//!   data directory, bootstrapped with its operator commands (`mesh create`, `invite create`).
//! - [`Device`] — a temporary `CLAUDEMESH_CONFIG_DIR` with the file keystore, joined with
//!   `claudemesh join`.
//! - [`Bridge`] — a `claudemesh mcp` process driven over stdio by a JSON-RPC client that matches
//!   replies by id and collects notifications with the instant each line was read.
//!
//! - [`netns::Namespace`] — another machine on this host (a network namespace), where a
//!   [`Broker`], a [`Device`] or the desktop app can run.
//! - [`desktop::DesktopApp`] — the desktop app driven through WebDriver (`tauri-driver`), and
//!   [`desktop::NotificationMonitor`], its native notifications seen on D-Bus.
//! - [`claude_code::ClaudeCode`] — the real Claude Code (`claude`) with its own home, talking to
//!   [`claude_code::MessagesApi`], a scripted stand-in of the Messages API.
//!
//! Binaries are found next to the running executable (`target/<profile>/`); [`ensure_built`]
//! builds them first with the same profile, so the tests also run from `cargo nextest run -p
//! claudemesh-e2e` alone.

pub mod claude_code;
pub mod desktop;
pub mod netns;
pub mod telegram;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::{mpsc, oneshot};

pub use netns::Namespace;

/// How long a test waits for something that should happen.
pub const WAIT: Duration = Duration::from_secs(15);

/// `target/<profile>/` of the running executable.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test>, or target/<profile>/examples/<example>
    exe.parent().and_then(Path::parent).expect("exe lives in target/<profile>/<kind>/").to_owned()
}

/// Builds `claudemesh` and `claudemesh-broker` with the profile of the running executable (a
/// no-op when they are fresh). Once per process.
pub fn ensure_built() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let profile_dir = profile_dir();
        let profile = profile_dir.file_name().and_then(|n| n.to_str()).unwrap_or("debug").to_owned();
        let target_dir = profile_dir.parent().expect("target dir").to_owned();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut command = std::process::Command::new(cargo);
        command.args(["build", "--quiet", "-p", "claudemesh", "-p", "broker-core", "--bins"]);
        match profile.as_str() {
            "debug" => {}
            "release" => {
                command.arg("--release");
            }
            other => {
                command.args(["--profile", other]);
            }
        }
        command.env("CARGO_TARGET_DIR", &target_dir).current_dir(workspace_root());
        // The test runner describes this test package in CARGO_MANIFEST_DIR and friends; build
        // scripts that watch those (ring's does) would otherwise rebuild for every runner.
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            let describes_this_package =
                ["CARGO_MANIFEST_", "CARGO_PKG_", "CARGO_CRATE_", "CARGO_BIN_", "CARGO_PRIMARY_"]
                    .iter()
                    .any(|prefix| name.starts_with(prefix));
            if describes_this_package || name == "CARGO_TARGET_TMPDIR" {
                command.env_remove(name.as_ref());
            }
        }
        let status = command.status().expect("cargo runs");
        assert!(status.success(), "building the binaries failed");
    });
}

/// The repository's root directory.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_owned()
}

pub fn claudemesh_bin() -> PathBuf {
    ensure_built();
    profile_dir().join("claudemesh")
}

pub fn broker_bin() -> PathBuf {
    ensure_built();
    profile_dir().join("claudemesh-broker")
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("binds").local_addr().expect("addr").port()
}

/// A real broker process.
pub struct Broker {
    pub data: tempfile::TempDir,
    pub port: u16,
    /// The base URL peers are told (`--public-url`).
    url: String,
    listen: SocketAddr,
    /// The machine it runs on, when not this one.
    namespace: Option<Namespace>,
    /// More `serve` options (`--allow-insecure-http`, …).
    serve_args: Vec<String>,
    /// Its stderr, when kept (in a namespace its device-login lines are at `info`; a broker
    /// started with [`Broker::start_logged`] logs everything down to `debug`).
    log: Option<(tempfile::NamedTempFile, &'static str)>,
    child: Option<Child>,
}

impl Broker {
    /// A broker on a free port of this machine's loopback; warnings go to the test's stderr.
    pub async fn start() -> Result<Broker> {
        Broker::start_with(&[]).await
    }

    /// A broker on this machine with more `serve_args` (limits, for example).
    pub async fn start_with(serve_args: &[&str]) -> Result<Broker> {
        let port = free_port();
        let url = format!("http://127.0.0.1:{port}");
        Broker::spawn_new(None, SocketAddr::from((Ipv4Addr::LOCALHOST, port)), url, serve_args).await
    }

    /// A broker on this machine's loopback that logs everything down to `debug` into a file,
    /// for checks of what its log may hold ([`Broker::log`]).
    pub async fn start_logged() -> Result<Broker> {
        let port = free_port();
        let mut broker = Broker::new_unstarted(
            None,
            SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            format!("http://127.0.0.1:{port}"),
            &[],
        )?;
        broker.log = Some((tempfile::NamedTempFile::new()?, "debug"));
        broker.spawn().await?;
        Ok(broker)
    }

    /// A broker on another machine: inside `namespace`, listening on `listen`, telling peers
    /// `public_url`, with more `serve_args`. Its log is kept for [`Broker::log`].
    pub async fn start_in(
        namespace: &Namespace,
        listen: SocketAddr,
        public_url: &str,
        serve_args: &[&str],
    ) -> Result<Broker> {
        Broker::spawn_new(Some(namespace.clone()), listen, public_url.to_owned(), serve_args).await
    }

    async fn spawn_new(
        namespace: Option<Namespace>,
        listen: SocketAddr,
        url: String,
        serve_args: &[&str],
    ) -> Result<Broker> {
        let mut broker = Broker::new_unstarted(namespace, listen, url, serve_args)?;
        broker.spawn().await?;
        Ok(broker)
    }

    fn new_unstarted(
        namespace: Option<Namespace>,
        listen: SocketAddr,
        url: String,
        serve_args: &[&str],
    ) -> Result<Broker> {
        let log = match namespace {
            Some(_) => Some((tempfile::NamedTempFile::new()?, "warn,broker_core::server::device_login=info")),
            None => None,
        };
        let data = tempfile::tempdir()?;
        let serve_args = serve_args.iter().map(|arg| (*arg).to_owned()).collect();
        Ok(Broker { data, port: listen.port(), url, listen, namespace, serve_args, log, child: None })
    }

    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// What the broker wrote to stderr so far (a broker started with [`Broker::start_in`]).
    pub fn log(&self) -> Result<String> {
        let (log, _) = self.log.as_ref().context("only a broker in a namespace or started logged keeps its log")?;
        Ok(std::fs::read_to_string(log.path())?)
    }

    async fn spawn(&mut self) -> Result<()> {
        let mut command = match &self.namespace {
            Some(namespace) => namespace.async_command(broker_bin()),
            None => Command::new(broker_bin()),
        };
        command
            .arg("--data-dir")
            .arg(self.data.path())
            .args(["serve", "--listen", &self.listen.to_string(), "--public-url", &self.url])
            .args(&self.serve_args)
            // The latency run sends 1,000 messages back to back; the default limit is 60/min.
            .env("RATE_LIMIT_BURST", "100000")
            .env("RATE_LIMIT_PER_MINUTE", "6000000")
            // …between one pair of peers, which the pair breaker would hold (tests that need it
            // pass `--pair-burst` and the like to `Broker::start_with`).
            .env("PAIR_BURST", "100000")
            .env("PAIR_PER_MINUTE", "6000000")
            .env("PAIR_LOOP_TURNS", "100000")
            // Device logins poll every second instead of every 5 s: shorter tests, same flow.
            .env("DEVICE_POLL_INTERVAL_SECONDS", "1")
            .stdout(Stdio::null())
            .kill_on_drop(true);
        match &self.log {
            Some((log, filter)) => {
                command.env("RUST_LOG", filter).stderr(log.reopen().context("the broker's log file")?)
            }
            None => command.env("RUST_LOG", "warn").stderr(Stdio::inherit()),
        };
        let child = command.spawn().context("starting claudemesh-broker")?;
        self.child = Some(child);
        // Anything listening on 0.0.0.0 answers on loopback too, in its own namespace.
        let reach = match self.listen.ip() {
            ip if ip.is_unspecified() => SocketAddr::from((Ipv4Addr::LOCALHOST, self.port)),
            _ => self.listen,
        };
        let deadline = Instant::now() + WAIT;
        loop {
            let listening = match &self.namespace {
                Some(namespace) => namespace.connect(reach).await.is_ok(),
                None => tokio::net::TcpStream::connect(reach).await.is_ok(),
            };
            if listening {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the broker never listened on {}", self.listen);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `claudemesh-broker --data-dir …`, ready for an operator command's arguments.
    pub fn operator_command(&self) -> std::process::Command {
        let mut command = std::process::Command::new(broker_bin());
        command.arg("--data-dir").arg(self.data.path());
        command
    }

    /// `claudemesh-broker --data-dir … <args> --json`.
    pub fn operator(&self, args: &[&str]) -> Result<Value> {
        let output = self.operator_command().args(args).arg("--json").output()?;
        if !output.status.success() {
            bail!("{args:?}: {}", String::from_utf8_lossy(&output.stderr));
        }
        Ok(serde_json::from_slice(&output.stdout)?)
    }

    /// A mesh and an invite link good for `uses` devices.
    pub fn mesh_with_invite(&self, name: &str, uses: u32) -> Result<(Value, String)> {
        let mesh = self.operator(&["mesh", "create", "--name", name])?;
        let slug = mesh["slug"].as_str().ok_or_else(|| anyhow!("no slug"))?.to_owned();
        let invite = self.operator(&[
            "invite",
            "create",
            "--mesh",
            &slug,
            "--max-uses",
            &uses.to_string(),
            "--public-url",
            &self.url(),
        ])?;
        let link = invite["link"].as_str().ok_or_else(|| anyhow!("no link"))?.to_owned();
        Ok((mesh, link))
    }

    pub async fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().await?;
        }
        Ok(())
    }

    /// Starts the broker again on its data directory and port (after [`Broker::kill`]).
    pub async fn restart(&mut self) -> Result<()> {
        self.kill().await?;
        self.spawn().await
    }

    /// Everything the broker wrote to disk, for plaintext checks.
    pub fn stored_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::new();
        let mut dirs = vec![self.data.path().to_owned()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    dirs.push(path);
                } else if let Ok(content) = std::fs::read(&path) {
                    bytes.extend(content);
                }
            }
        }
        bytes
    }
}

/// A device: its own config directory with the file keystore.
pub struct Device {
    pub config: tempfile::TempDir,
    /// The machine it runs on, when not this one: its commands and bridges start there.
    namespace: Option<Namespace>,
    /// Set for everything it runs, after the config directory and keystore.
    extra_env: Vec<(String, String)>,
}

impl Device {
    pub fn new() -> Result<Device> {
        Ok(Device { config: tempfile::tempdir()?, namespace: None, extra_env: Vec::new() })
    }

    /// A device on another machine: everything it runs starts inside `namespace`.
    pub fn in_namespace(namespace: &Namespace) -> Result<Device> {
        Ok(Device { config: tempfile::tempdir()?, namespace: Some(namespace.clone()), extra_env: Vec::new() })
    }

    /// Sets `name=value` for every command and bridge of this device (`CLAUDEMESH_CA_FILE`, …).
    pub fn set_env(&mut self, name: &str, value: impl Into<String>) {
        self.extra_env.push((name.to_owned(), value.into()));
    }

    pub fn env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            ("CLAUDEMESH_CONFIG_DIR".into(), self.config.path().display().to_string()),
            ("CLAUDEMESH_KEYSTORE".into(), "file".into()),
        ];
        env.extend(self.extra_env.iter().cloned());
        env
    }

    /// A `claudemesh` command for this device.
    pub fn command(&self) -> std::process::Command {
        let mut command = match &self.namespace {
            Some(namespace) => namespace.command(claudemesh_bin()),
            None => std::process::Command::new(claudemesh_bin()),
        };
        command.envs(self.env()).env("HOME", self.config.path()).env_remove("CLAUDE_CONFIG_DIR");
        command
    }

    /// `claudemesh join <link> --name <name> --json`.
    pub fn join(&self, link: &str, name: &str) -> Result<Value> {
        let output = self.command().args(["join", link, "--name", name, "--json"]).output()?;
        if !output.status.success() {
            bail!("join failed: {}", String::from_utf8_lossy(&output.stderr));
        }
        Ok(serde_json::from_slice(&output.stdout)?)
    }

    /// Starts this device's MCP bridge and initializes it.
    pub async fn bridge(&self) -> Result<Bridge> {
        let mut command = match &self.namespace {
            Some(namespace) => namespace.async_command(claudemesh_bin()),
            None => Command::new(claudemesh_bin()),
        };
        command.arg("mcp").envs(self.env());
        let mut bridge = Bridge::spawn(command)?;
        bridge.initialize().await?;
        Ok(bridge)
    }
}

/// A `claudemesh login` in progress, and the user code it shows.
pub struct Login {
    pub child: std::process::Child,
    pub code: String,
}

impl Device {
    /// Starts `claudemesh login --json` (naming `account` when given) and reads the code it shows.
    pub fn start_login(&self, broker_url: &str, account: Option<&str>, name: &str) -> Result<Login> {
        use std::io::BufRead as _;
        let mut command = self.command();
        command.args(["login", "--broker", broker_url, "--name", name, "--json"]);
        if let Some(account) = account {
            command.args(["--account", account]);
        }
        let mut child = command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
        let stderr = child.stderr.take().context("stderr")?;
        let mut lines = std::io::BufReader::new(stderr).lines();
        let code = loop {
            let line = lines.next().context("login ended before showing a code")??;
            if is_user_code(line.trim()) {
                break line.trim().to_owned();
            }
        };
        // Keep draining stderr so the child never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Ok(Login { child, code })
    }
}

impl Login {
    /// Waits for the login to end; its `--json` output.
    pub fn finish(self) -> Result<Value> {
        let output = self.child.wait_with_output()?;
        if !output.status.success() {
            bail!("login failed with {:?}", output.status.code());
        }
        Ok(serde_json::from_slice(&output.stdout)?)
    }
}

/// `BCDF-GHJK`: 4 + 4 letters of the user-code alphabet.
pub fn is_user_code(text: &str) -> bool {
    let consonants = |part: &str| part.len() == 4 && part.bytes().all(|b| b"BCDFGHJKLMNPQRSTVWXZ".contains(&b));
    text.split_once('-').is_some_and(|(a, b)| consonants(a) && consonants(b))
}

/// A notification as read from a bridge's stdout.
#[derive(Debug, Clone)]
pub struct Notification {
    pub at: Instant,
    pub method: String,
    pub params: Value,
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

/// A JSON-RPC client over a child's stdio (the MCP stdio transport: one JSON object per line).
pub struct Bridge {
    pub child: Child,
    stdin: ChildStdin,
    pending: Pending,
    notifications: mpsc::UnboundedReceiver<Notification>,
    /// Notifications read but not yet claimed by a `notification` call.
    backlog: Vec<Notification>,
    next_id: AtomicU64,
    pub initialize_result: Value,
}

impl Bridge {
    /// Spawns `command` with piped stdin/stdout (stderr inherited) and starts reading replies.
    pub fn spawn(mut command: Command) -> Result<Bridge> {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting claudemesh mcp")?;
        let stdin = child.stdin.take().ok_or_else(|| anyhow!("no stdin"))?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let pending: Pending = Arc::default();
        let (notify, notifications) = mpsc::unbounded_channel();
        tokio::spawn(read_replies(stdout, pending.clone(), notify));
        Ok(Bridge {
            child,
            stdin,
            pending,
            notifications,
            backlog: Vec::new(),
            next_id: AtomicU64::new(1),
            initialize_result: Value::Null,
        })
    }

    async fn write(&mut self, message: &Value) -> Result<()> {
        let mut line = serde_json::to_vec(message)?;
        line.push(b'\n');
        self.stdin.write_all(&line).await?;
        self.stdin.flush().await?;
        Ok(())
    }

    /// Sends a request and waits for the reply with its id; returns `result` (or fails with
    /// the `error`).
    pub async fn request(&mut self, method: &str, params: Value) -> Result<Value> {
        let (_, reply) = self.request_started(method, params).await?;
        let reply = tokio::time::timeout(WAIT, reply).await.context("no reply in time")?.context("bridge ended")?;
        if let Some(error) = reply.get("error") {
            bail!("{method} failed: {error}");
        }
        Ok(reply["result"].clone())
    }

    /// Writes a request and returns the instant just before it was written, and the reply.
    pub async fn request_started(
        &mut self,
        method: &str,
        params: Value,
    ) -> Result<(Instant, oneshot::Receiver<Value>)> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().expect("pending lock").insert(id, tx);
        let started = Instant::now();
        self.write(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})).await?;
        Ok((started, rx))
    }

    /// `initialize` (announcing no special capabilities) and `notifications/initialized`.
    pub async fn initialize(&mut self) -> Result<()> {
        self.initialize_result = self
            .request(
                "initialize",
                json!({"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "e2e", "version": "0"}}),
            )
            .await?;
        self.write(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"})).await?;
        Ok(())
    }

    /// `tools/call`; returns the tool's text parsed as JSON, or fails when the tool reported an
    /// error (with its text).
    pub async fn call(&mut self, tool: &str, arguments: Value) -> Result<Value> {
        let result = self.request("tools/call", json!({"name": tool, "arguments": arguments})).await?;
        let text = result["content"][0]["text"].as_str().unwrap_or_default().to_owned();
        if result["isError"] == json!(true) {
            bail!("{tool} reported an error: {text}");
        }
        serde_json::from_str(&text).with_context(|| format!("{tool} returned non-JSON text: {text}"))
    }

    /// Calls `tool` every 50 ms until `accept` likes the result, for at most [`WAIT`].
    pub async fn call_until(&mut self, tool: &str, arguments: Value, accept: impl Fn(&Value) -> bool) -> Result<Value> {
        let deadline = Instant::now() + WAIT;
        loop {
            let result = self.call(tool, arguments.clone()).await?;
            if accept(&result) {
                return Ok(result);
            }
            if Instant::now() > deadline {
                bail!("{tool} never returned what was expected; last: {result}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `tools/call` that is expected to fail; returns the error text.
    pub async fn call_error(&mut self, tool: &str, arguments: Value) -> Result<String> {
        let result = self.request("tools/call", json!({"name": tool, "arguments": arguments})).await?;
        if result["isError"] != json!(true) {
            bail!("{tool} succeeded unexpectedly: {result}");
        }
        Ok(result["content"][0]["text"].as_str().unwrap_or_default().to_owned())
    }

    /// The next notification `matches` accepts (earlier ones are kept for later calls).
    pub async fn notification(
        &mut self,
        timeout: Duration,
        matches: impl Fn(&Notification) -> bool,
    ) -> Option<Notification> {
        if let Some(index) = self.backlog.iter().position(&matches) {
            return Some(self.backlog.remove(index));
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.notifications.recv()).await {
                Ok(Some(notification)) if matches(&notification) => return Some(notification),
                Ok(Some(notification)) => self.backlog.push(notification),
                _ => return None,
            }
        }
    }

    /// The channel notification whose content is `text`.
    pub async fn channel_message(&mut self, text: &str, timeout: Duration) -> Option<Notification> {
        self.notification(timeout, |n| n.method == "notifications/claude/channel" && n.params["content"] == text).await
    }

    /// Closes stdin (what the host does when the session ends) and waits for the exit.
    pub async fn close(mut self) -> Result<std::process::ExitStatus> {
        drop(self.stdin);
        Ok(tokio::time::timeout(WAIT, self.child.wait()).await.context("bridge did not exit")??)
    }

    pub async fn kill(mut self) -> Result<()> {
        self.child.kill().await?;
        Ok(())
    }
}

async fn read_replies(stdout: ChildStdout, pending: Pending, notify: mpsc::UnboundedSender<Notification>) {
    let mut lines = BufReader::new(stdout).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let at = Instant::now();
        let Ok(message) = serde_json::from_str::<Value>(&line) else {
            panic!("the bridge wrote a non-JSON line to stdout: {line:?}");
        };
        let id = message.get("id").and_then(Value::as_u64);
        match (message.get("method").and_then(Value::as_str), id) {
            (Some(method), None) => {
                let _ = notify.send(Notification { at, method: method.to_owned(), params: message["params"].clone() });
            }
            (Some(_), Some(_)) => {
                // A request from the server; these tests never expect one.
            }
            (None, Some(id)) => {
                if let Some(reply) = pending.lock().expect("pending lock").remove(&id) {
                    let _ = reply.send(message);
                }
            }
            (None, None) => {}
        }
    }
}

/// Waits until `check` holds, for at most [`WAIT`].
pub async fn wait_until(what: &str, check: impl Fn() -> bool) -> Result<()> {
    let deadline = Instant::now() + WAIT;
    while !check() {
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Names in a `list_peers` result.
pub fn peer_names(list: &Value) -> Vec<String> {
    list["peers"]
        .as_array()
        .map(|p| p.iter().filter_map(|p| p["name"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

/// The status of the peer named `name` in a `list_peers` result.
pub fn peer_status(list: &Value, name: &str) -> Option<String> {
    list["peers"].as_array()?.iter().find(|p| p["name"] == name).and_then(|p| p["status"].as_str().map(str::to_owned))
}

/// Texts in a `check_messages` result.
pub fn message_texts(result: &Value) -> Vec<String> {
    result["messages"]
        .as_array()
        .map(|m| m.iter().filter_map(|m| m["text"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}
