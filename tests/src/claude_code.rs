//! The real Claude Code in the end-to-end tests: the `claude` binary of the npm package
//! `@anthropic-ai/claude-code`, run against [`MessagesApi`], a scripted stand-in of the Anthropic
//! Messages API on a free loopback port. No model and no network: each assistant message is a
//! [`Step`] the test wrote, and Claude Code does the rest for real — starts `claudemesh mcp`,
//! calls its tools, runs the hooks of its settings, asks for permissions.
//!
//! - [`claude_bin`] — where the binary is: `CLAUDEMESH_TEST_CLAUDE`, else the npm cache that
//!   `scripts/install-deps.sh test` fills.
//! - [`MessagesApi`] — answers `POST /v1/messages` with a streamed (SSE) assistant message: the
//!   steps scripted for the prompt of the conversation, chosen by how many `tool_result` blocks
//!   followed that prompt (Claude Code puts the results of one assistant message's tool calls
//!   into one user message, so counting user messages would not do). Records every request, so
//!   tests can read what the tools returned ([`MessagesApi::tool_results`]). A [`Gate`] holds a
//!   reply back, to look at the world in the middle of a turn.
//! - [`ClaudeCode`] — one device's Claude Code: a temporary HOME and `CLAUDE_CONFIG_DIR`, a
//!   `claude` on `PATH` (what `claudemesh install` looks for), the environment that points it at
//!   the stand-in; `claudemesh install`/`uninstall` and `claude mcp list` in it.
//! - [`ClaudeSession`] — `claude -p` with stream-json input and output: one process and one
//!   session for as many turns as the test sends, so the bridge lives between turns (and the
//!   status after a turn can be seen) the way it does in an interactive session.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio::sync::watch;

use crate::{Device, WAIT, claudemesh_bin};

/// Names a `claude` binary to use instead of the cached npm package.
pub const CLAUDE_ENV: &str = "CLAUDEMESH_TEST_CLAUDE";

/// How long one turn may take (starting the bridge, the hooks, every tool call).
pub const TURN_WAIT: Duration = Duration::from_secs(60);

/// The MCP server name `claudemesh install` registers.
const SERVER: &str = "claudemesh";

/// Claude Code's name for the claudemesh tool `tool` (in `tool_use` blocks, permission rules
/// and `--allowedTools`).
pub fn mcp_tool(tool: &str) -> String {
    format!("mcp__{SERVER}__{tool}")
}

/// The same tool when the bridge comes from the claudemesh plugin (`packaging/claude-plugin`):
/// Claude Code names a plugin's server `plugin:<plugin>:<server>`.
pub fn plugin_tool(tool: &str) -> String {
    format!("mcp__plugin_claudemesh_{SERVER}__{tool}")
}

/// The `claude` binary: `$CLAUDEMESH_TEST_CLAUDE`, else the one `scripts/install-deps.sh test`
/// installs under `${XDG_CACHE_HOME:-~/.cache}/claudemesh/claude-code`. Missing is an error
/// that says how to get it: these tests never pass without the real client.
pub fn claude_bin() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(CLAUDE_ENV).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        if !is_executable(&path) {
            bail!("{CLAUDE_ENV}={} is not an executable file", path.display());
        }
        return Ok(path);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::home_dir().map(|home| home.join(".cache")))
        .ok_or_else(|| anyhow!("no home directory to find the Claude Code cache in"))?;
    let cached = cache.join("claudemesh/claude-code/node_modules/.bin/claude");
    if !is_executable(&cached) {
        bail!(
            "these tests run the real Claude Code, which is not installed at {}: run `scripts/install-deps.sh test` \
             (it installs @anthropic-ai/claude-code from npm there), or set {CLAUDE_ENV} to a `claude` binary",
            cached.display()
        );
    }
    Ok(cached)
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    path.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// One assistant message of a script, optionally held back by a [`Gate`].
#[derive(Clone)]
pub struct Step {
    reply: Reply,
    gate: Option<Gate>,
}

#[derive(Clone)]
enum Reply {
    /// An assistant message: its content blocks, streamed.
    Message(Vec<Block>),
    /// An API error instead of a message (Claude Code does not retry a 400).
    Error { status: StatusCode, kind: String },
}

#[derive(Clone)]
enum Block {
    /// A `tool_use` block: the tool's name as Claude Code knows it, and its input.
    ToolUse {
        name: String,
        input: Value,
    },
    Text(String),
}

impl Step {
    /// One call of the claudemesh tool `tool`.
    pub fn call(tool: &str, input: Value) -> Step {
        Step::calls([(tool, input)])
    }

    /// One call of a tool by the name Claude Code knows it by ([`plugin_tool`]).
    pub fn call_named(name: &str, input: Value) -> Step {
        Step { reply: Reply::Message(vec![Block::ToolUse { name: name.to_owned(), input }]), gate: None }
    }

    /// Several claudemesh tool calls in one assistant message.
    pub fn calls<'a>(calls: impl IntoIterator<Item = (&'a str, Value)>) -> Step {
        let blocks = calls.into_iter().map(|(tool, input)| Block::ToolUse { name: mcp_tool(tool), input }).collect();
        Step { reply: Reply::Message(blocks), gate: None }
    }

    /// A final answer: the turn ends.
    pub fn text(text: &str) -> Step {
        Step { reply: Reply::Message(vec![Block::Text(text.to_owned())]), gate: None }
    }

    /// An API error that ends the turn, `400 invalid_request_error` (not retried).
    pub fn api_error() -> Step {
        Step {
            reply: Reply::Error { status: StatusCode::BAD_REQUEST, kind: "invalid_request_error".into() },
            gate: None,
        }
    }

    /// Holds this reply until `gate` is opened.
    pub fn after(mut self, gate: &Gate) -> Step {
        self.gate = Some(gate.clone());
        self
    }

    fn tool_calls(&self) -> usize {
        match &self.reply {
            Reply::Message(blocks) => blocks.iter().filter(|b| matches!(b, Block::ToolUse { .. })).count(),
            Reply::Error { .. } => 0,
        }
    }
}

/// Holds a scripted reply back: the stand-in marks the gate reached when the request for the
/// step arrives, and answers once the test opens it.
#[derive(Clone)]
pub struct Gate {
    reached: watch::Sender<bool>,
    opened: watch::Sender<bool>,
}

impl Default for Gate {
    fn default() -> Gate {
        Gate { reached: watch::Sender::new(false), opened: watch::Sender::new(false) }
    }
}

impl Gate {
    pub fn new() -> Gate {
        Gate::default()
    }

    /// Waits until Claude Code asked for the held step (the turn is in progress).
    pub async fn reached(&self) -> Result<()> {
        let mut reached = self.reached.subscribe();
        tokio::time::timeout(TURN_WAIT, reached.wait_for(|r| *r))
            .await
            .context("Claude Code never asked for the held step")?
            .map_err(|_| anyhow!("the gate was dropped"))?;
        Ok(())
    }

    pub fn open(&self) {
        self.opened.send_replace(true);
    }

    async fn pass(&self) {
        self.reached.send_replace(true);
        let _ = self.opened.subscribe().wait_for(|o| *o).await;
    }
}

/// A tool's result as Claude Code sent it back to the model.
#[derive(Debug, Clone)]
pub struct ToolResult {
    /// The tool's name as Claude Code knows it (`mcp__claudemesh__send_message`).
    pub tool: String,
    pub text: String,
    pub is_error: bool,
}

impl ToolResult {
    /// The text parsed as JSON (claudemesh tools answer JSON).
    pub fn json(&self) -> Result<Value> {
        serde_json::from_str(&self.text).with_context(|| format!("{} returned non-JSON text: {}", self.tool, self.text))
    }
}

#[derive(Default)]
struct ApiState {
    /// Steps per prompt; a conversation is matched by the last user text containing a prompt.
    scripts: Mutex<Vec<(String, Vec<Step>)>>,
    /// Every `POST /v1/messages` body, in arrival order.
    requests: Mutex<Vec<Value>>,
    /// Numbers the message and tool-use ids this stand-in hands out.
    next_id: AtomicU64,
}

/// The scripted stand-in of the Messages API (see the module documentation).
pub struct MessagesApi {
    pub port: u16,
    state: Arc<ApiState>,
    server: tokio::task::JoinHandle<()>,
}

impl MessagesApi {
    pub async fn start() -> Result<MessagesApi> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let state = Arc::new(ApiState::default());
        let server = tokio::spawn(serve(listener, state.clone()));
        Ok(MessagesApi { port, state, server })
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Scripts the conversation that starts with `prompt`: the assistant messages it gets, in
    /// order. After the last step a request for more is answered with an API error that says so.
    pub fn script(&self, prompt: &str, steps: Vec<Step>) {
        self.state.scripts.lock().expect("scripts lock").push((prompt.to_owned(), steps));
    }

    /// Every request body received so far.
    pub fn requests(&self) -> Vec<Value> {
        self.state.requests.lock().expect("requests lock").clone()
    }

    /// Every tool result Claude Code sent back so far, once each, in order.
    pub fn tool_results(&self) -> Vec<ToolResult> {
        let requests = self.requests();
        let mut names = HashMap::new();
        let mut seen = HashSet::new();
        let mut results = Vec::new();
        for message in requests.iter().flat_map(|r| r["messages"].as_array().into_iter().flatten()) {
            for block in content_blocks(message) {
                match block["type"].as_str() {
                    Some("tool_use") => {
                        names.insert(block["id"].to_string(), block["name"].as_str().unwrap_or_default().to_owned());
                    }
                    Some("tool_result") if seen.insert(block["tool_use_id"].to_string()) => {
                        results.push(ToolResult {
                            tool: names.get(&block["tool_use_id"].to_string()).cloned().unwrap_or_default(),
                            text: result_text(&block["content"]),
                            is_error: block["is_error"] == json!(true),
                        });
                    }
                    _ => {}
                }
            }
        }
        results
    }

    /// The results of the claudemesh tool `tool`, in order.
    pub fn results_of(&self, tool: &str) -> Vec<ToolResult> {
        let name = mcp_tool(tool);
        self.tool_results().into_iter().filter(|r| r.tool == name).collect()
    }
}

impl Drop for MessagesApi {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn content_blocks(message: &Value) -> Vec<&Value> {
    match &message["content"] {
        Value::Array(blocks) => blocks.iter().collect(),
        _ => Vec::new(),
    }
}

/// A `tool_result`'s content: a string, or text blocks.
fn result_text(content: &Value) -> String {
    match content {
        Value::String(text) => text.clone(),
        Value::Array(blocks) => blocks.iter().filter_map(|b| b["text"].as_str()).collect::<Vec<_>>().join("\n"),
        _ => String::new(),
    }
}

/// The text of a user message (the prompt, and whatever Claude Code adds beside it).
fn user_text(message: &Value) -> String {
    match &message["content"] {
        Value::String(text) => text.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter(|b| b["type"] == "text")
            .filter_map(|b| b["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

async fn serve(listener: tokio::net::TcpListener, state: Arc<ApiState>) {
    while let Ok((stream, _)) = listener.accept().await {
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| answer(state.clone(), request));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(state: Arc<ApiState>, request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (method, path) = (request.method().clone(), request.uri().path().to_owned());
    let body = request.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let response = match (method, path.as_str()) {
        (Method::POST, "/v1/messages") => match serde_json::from_slice::<Value>(&body) {
            Ok(body) => messages(&state, body).await,
            Err(e) => error_response(StatusCode::BAD_REQUEST, "invalid_request_error", &format!("not JSON: {e}")),
        },
        (Method::POST, "/v1/messages/count_tokens") => json_response(StatusCode::OK, &json!({"input_tokens": 100})),
        // Claude Code's connectivity check.
        (Method::HEAD | Method::GET, "/") => Response::new(Full::new(Bytes::new())),
        _ => error_response(StatusCode::NOT_FOUND, "not_found_error", &format!("the stand-in has no {path}")),
    };
    Ok(response)
}

async fn messages(state: &ApiState, body: Value) -> Response<Full<Bytes>> {
    state.requests.lock().expect("requests lock").push(body.clone());
    let model = body["model"].as_str().unwrap_or("claude-stand-in").to_owned();
    let step = match scripted_step(state, &body) {
        Ok(step) => step,
        Err(reason) => {
            // A request of Claude Code's own that offers no tools (a title, a summary) gets a
            // plain answer; an unscripted conversation is an error the test's turn reports.
            if body["tools"].as_array().is_none_or(Vec::is_empty) {
                return sse_response(&model, &[Block::Text("ok".into())], &state.next_id);
            }
            return error_response(StatusCode::BAD_REQUEST, "invalid_request_error", &reason);
        }
    };
    if let Some(gate) = &step.gate {
        gate.pass().await;
    }
    match &step.reply {
        Reply::Message(blocks) => sse_response(&model, blocks, &state.next_id),
        Reply::Error { status, kind } => error_response(*status, kind, "scripted API error"),
    }
}

/// The step for this request: find the scripted prompt the conversation is at, count the tool
/// results since, and walk the steps' tool calls up to that count.
fn scripted_step(state: &ApiState, body: &Value) -> Result<Step, String> {
    let messages = body["messages"].as_array().ok_or("no messages")?;
    let scripts = state.scripts.lock().expect("scripts lock");
    let (start, steps) = messages
        .iter()
        .enumerate()
        .rev()
        .filter(|(_, m)| m["role"] == "user")
        .find_map(|(index, message)| {
            let text = user_text(message);
            scripts.iter().rev().find(|(prompt, _)| text.contains(prompt.as_str())).map(|(_, steps)| (index, steps))
        })
        .ok_or("the stand-in has no script for this conversation")?;
    let results =
        messages[start..].iter().flat_map(content_blocks).filter(|block| block["type"] == "tool_result").count();
    let mut answered = 0;
    for step in steps {
        if answered == results {
            return Ok(step.clone());
        }
        answered += step.tool_calls();
    }
    Err(format!("the script ended: {results} tool results came back and no step is left"))
}

fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("valid response")
}

fn error_response(status: StatusCode, kind: &str, message: &str) -> Response<Full<Bytes>> {
    json_response(status, &json!({"type": "error", "error": {"type": kind, "message": message}}))
}

/// A streamed assistant message, the events the Messages API sends with `stream: true`.
fn sse_response(model: &str, blocks: &[Block], next_id: &AtomicU64) -> Response<Full<Bytes>> {
    let mut events = vec![json!({"type": "message_start", "message": {
        "id": format!("msg_stand_in_{}", next_id.fetch_add(1, Ordering::Relaxed)),
        "type": "message", "role": "assistant", "model": model, "content": [],
        "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 100, "output_tokens": 1}
    }})];
    for (index, block) in blocks.iter().enumerate() {
        let (start, delta) = match block {
            Block::ToolUse { name, input } => (
                json!({"type": "tool_use", "id": format!("toolu_stand_in_{}", next_id.fetch_add(1, Ordering::Relaxed)),
                    "name": name, "input": {}}),
                json!({"type": "input_json_delta", "partial_json": input.to_string()}),
            ),
            Block::Text(text) => (json!({"type": "text", "text": ""}), json!({"type": "text_delta", "text": text})),
        };
        events.push(json!({"type": "content_block_start", "index": index, "content_block": start}));
        events.push(json!({"type": "content_block_delta", "index": index, "delta": delta}));
        events.push(json!({"type": "content_block_stop", "index": index}));
    }
    let calls_tools = blocks.iter().any(|b| matches!(b, Block::ToolUse { .. }));
    events.push(json!({"type": "message_delta",
        "delta": {"stop_reason": if calls_tools { "tool_use" } else { "end_turn" }, "stop_sequence": null},
        "usage": {"output_tokens": 10}}));
    events.push(json!({"type": "message_stop"}));
    let body: String = events
        .iter()
        .map(|event| format!("event: {}\ndata: {event}\n\n", event["type"].as_str().expect("typed event")))
        .collect();
    Response::builder()
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(Full::new(Bytes::from(body)))
        .expect("valid response")
}

/// One device's Claude Code (see the module documentation).
pub struct ClaudeCode {
    home: tempfile::TempDir,
    api_url: String,
    device_env: Vec<(String, String)>,
}

impl ClaudeCode {
    /// A fresh home for `device`'s Claude Code, talking to `api`.
    pub fn new(device: &Device, api: &MessagesApi) -> Result<ClaudeCode> {
        let claude = claude_bin()?;
        let home = tempfile::tempdir()?;
        for dir in ["bin", ".claude", "work"] {
            std::fs::create_dir_all(home.path().join(dir))?;
        }
        // Named `claude` whatever the binary is called: `claudemesh install` looks for that
        // name on PATH, and the bridge recognises its Claude Code process by it.
        std::os::unix::fs::symlink(&claude, home.path().join("bin/claude"))?;
        Ok(ClaudeCode { home, api_url: api.url(), device_env: device.env() })
    }

    /// `CLAUDE_CONFIG_DIR`: `.claude.json` (MCP servers) and `settings.json` live here.
    pub fn config_dir(&self) -> PathBuf {
        self.home.path().join(".claude")
    }

    /// The working directory of the sessions.
    pub fn work_dir(&self) -> PathBuf {
        self.home.path().join("work")
    }

    pub fn settings_path(&self) -> PathBuf {
        self.config_dir().join("settings.json")
    }

    /// The user settings file, `{}` when there is none.
    pub fn settings(&self) -> Result<Value> {
        match std::fs::read_to_string(self.settings_path()) {
            Ok(text) => Ok(serde_json::from_str(&text)?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(json!({})),
            Err(e) => Err(e.into()),
        }
    }

    pub fn write_settings(&self, settings: &Value) -> Result<()> {
        std::fs::write(self.settings_path(), serde_json::to_vec_pretty(settings)?)?;
        Ok(())
    }

    /// The environment of every process here: the temporary home, `claude` first on PATH, the
    /// stand-in API, and the device's claudemesh config. Whatever configures Claude Code in the
    /// environment of the test run itself (it may run inside a Claude Code session) is dropped.
    fn apply_env(&self, command: &mut tokio::process::Command) {
        for (name, _) in std::env::vars_os() {
            let text = name.to_string_lossy();
            if text.starts_with("ANTHROPIC_") || text.starts_with("CLAUDE") || text.starts_with("MCP_") {
                command.env_remove(&name);
            }
        }
        let mut path = OsString::from(self.home.path().join("bin"));
        if let Some(system) = std::env::var_os("PATH") {
            path.push(":");
            path.push(system);
        }
        command
            .env("PATH", path)
            .env("HOME", self.home.path())
            .env("CLAUDE_CONFIG_DIR", self.config_dir())
            .env("ANTHROPIC_BASE_URL", &self.api_url)
            .env("ANTHROPIC_API_KEY", "sk-ant-stand-in")
            .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
            .envs(self.device_env.iter().map(|(k, v)| (k, v)))
            .current_dir(self.work_dir());
    }

    fn claude(&self) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(self.home.path().join("bin/claude"));
        self.apply_env(&mut command);
        command.stdin(Stdio::null()).kill_on_drop(true);
        command
    }

    /// `claudemesh <args> --json` in this environment; its JSON output.
    pub async fn claudemesh(&self, args: &[&str]) -> Result<Value> {
        let mut command = tokio::process::Command::new(claudemesh_bin());
        self.apply_env(&mut command);
        let output = command.args(args).arg("--json").stdin(Stdio::null()).output().await?;
        if !output.status.success() {
            bail!("claudemesh {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
        }
        serde_json::from_slice(&output.stdout)
            .with_context(|| format!("claudemesh {args:?} printed: {}", String::from_utf8_lossy(&output.stdout)))
    }

    /// Installs the Claude Code plugin in `dir` (a marketplace of one plugin) with `claude plugin`,
    /// as a person would; `claudemesh` is on this Claude Code's PATH, as a package puts it.
    pub async fn install_plugin(&self, dir: &Path) -> Result<()> {
        std::os::unix::fs::symlink(claudemesh_bin(), self.home.path().join("bin/claudemesh"))?;
        let marketplace = dir.display().to_string();
        let steps = [
            vec!["plugin", "marketplace", "add", marketplace.as_str()],
            vec!["plugin", "install", "claudemesh@claudemesh", "--scope", "user"],
        ];
        for args in steps {
            let output = tokio::time::timeout(TURN_WAIT, self.claude().args(&args).output())
                .await
                .with_context(|| format!("`claude {args:?}` did not finish"))??;
            if !output.status.success() {
                bail!(
                    "`claude {args:?}` failed: {}{}",
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                );
            }
        }
        Ok(())
    }

    /// `claude mcp list` (it starts each stdio server and checks that it answers); its output.
    pub async fn mcp_list(&self) -> Result<String> {
        let output = tokio::time::timeout(TURN_WAIT, self.claude().args(["mcp", "list"]).output())
            .await
            .context("`claude mcp list` did not finish")??;
        if !output.status.success() {
            bail!("`claude mcp list` failed: {}", String::from_utf8_lossy(&output.stderr));
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Starts a session that may use the claudemesh tools `allowed_tools` without asking, on
    /// top of what the settings allow (`--allowedTools`); other tools are refused, as `claude -p`
    /// refuses whatever would need a person's answer.
    pub async fn session(&self, allowed_tools: &[&str]) -> Result<ClaudeSession> {
        let rules: Vec<String> = allowed_tools.iter().map(|t| mcp_tool(t)).collect();
        self.session_allowing(&rules).await
    }

    /// A session that may use the tools named `rules` (as Claude Code names them) without asking.
    pub async fn session_allowing(&self, rules: &[String]) -> Result<ClaudeSession> {
        let mut command = self.claude();
        command.args(["-p", "--input-format", "stream-json", "--output-format", "stream-json", "--verbose"]);
        if !rules.is_empty() {
            command.arg("--allowedTools").arg(rules.join(","));
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting claude")?;
        let stdin = child.stdin.take().context("stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("stdout")?).lines();
        Ok(ClaudeSession { child, stdin: Some(stdin), stdout, transcript: Vec::new() })
    }
}

/// A running `claude -p --input-format stream-json` session.
pub struct ClaudeSession {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Lines<BufReader<ChildStdout>>,
    /// Every line Claude Code printed, for failure messages.
    transcript: Vec<Value>,
}

impl ClaudeSession {
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Sends `prompt` as the person's next message and waits for the turn to end; its `result`
    /// message (`is_error` is true for a turn that ended in an API error or was interrupted).
    pub async fn turn(&mut self, prompt: &str) -> Result<Value> {
        self.send(prompt).await?;
        self.result().await
    }

    /// Sends `prompt` as the person's next message: the turn starts.
    pub async fn send(&mut self, prompt: &str) -> Result<()> {
        self.write(&json!({"type": "user", "message": {"role": "user", "content": prompt}})).await
    }

    /// Interrupts the turn in progress, what the person's Esc does.
    pub async fn interrupt(&mut self) -> Result<()> {
        let id = format!("interrupt-{}", self.transcript.len());
        self.write(&json!({"type": "control_request", "request_id": id, "request": {"subtype": "interrupt"}})).await
    }

    async fn write(&mut self, message: &Value) -> Result<()> {
        let stdin = self.stdin.as_mut().context("the session was ended")?;
        stdin.write_all(format!("{message}\n").as_bytes()).await?;
        stdin.flush().await?;
        Ok(())
    }

    /// Waits for the end of the turn in progress; its `result` message.
    pub async fn result(&mut self) -> Result<Value> {
        let deadline = tokio::time::Instant::now() + TURN_WAIT;
        loop {
            let line = match tokio::time::timeout_at(deadline, self.stdout.next_line()).await {
                Ok(Ok(Some(line))) => line,
                Ok(Ok(None)) => bail!("claude exited during the turn; it printed: {}", self.printed()),
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => bail!("the turn did not end in {TURN_WAIT:?}; claude printed: {}", self.printed()),
            };
            let Ok(event) = serde_json::from_str::<Value>(&line) else {
                self.transcript.push(Value::String(line));
                continue;
            };
            self.transcript.push(event.clone());
            if event["type"] == "result" {
                return Ok(event);
            }
        }
    }

    fn printed(&self) -> String {
        self.transcript.iter().map(Value::to_string).collect::<Vec<_>>().join("\n")
    }

    /// Closes the input (the session ends the way it does when the person quits) and waits.
    pub async fn end(mut self) -> Result<std::process::ExitStatus> {
        drop(self.stdin.take());
        while let Ok(Ok(Some(_))) = tokio::time::timeout(WAIT, self.stdout.next_line()).await {}
        Ok(tokio::time::timeout(WAIT, self.child.wait()).await.context("claude did not exit")??)
    }
}
