//! Driving the real desktop app: a small W3C WebDriver client against `tauri-driver` (which
//! runs WebKitWebDriver), each app in its own temporary HOME, XDG directories and config
//! directory; and a D-Bus monitor that sees the app's native notifications.
//!
//! These need a display and a D-Bus session with a keyring and a notification daemon:
//! `scripts/desktop-session.sh` provides them (`scripts/test.sh` runs the tests inside it).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

use crate::{Namespace, WAIT, claudemesh_bin, free_port};

/// The W3C WebDriver element reference key.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// One running desktop app, driven through WebDriver.
pub struct DesktopApp {
    /// HOME, XDG directories and the config directory live here.
    pub home: tempfile::TempDir,
    driver: Child,
    port: u16,
    session: String,
    /// The machine the app runs on, when not this one; its WebDriver port is there too.
    namespace: Option<Namespace>,
}

/// An element found on the page.
#[derive(Debug, Clone)]
pub struct Element(String);

impl DesktopApp {
    /// Starts `tauri-driver` with this app's environment and opens a WebDriver session, which
    /// launches the app.
    pub async fn launch() -> Result<DesktopApp> {
        DesktopApp::launch_in(tempfile::tempdir()?).await
    }

    /// Launches the app again in a `home` an earlier app used (its profile, keys, local broker).
    pub async fn launch_in(home: tempfile::TempDir) -> Result<DesktopApp> {
        DesktopApp::launch_with(home, None).await
    }

    /// Launches the app on another machine: inside `namespace` (the display and the session
    /// bus are reached through their socket files, which every namespace sees).
    pub async fn launch_on(namespace: &Namespace) -> Result<DesktopApp> {
        DesktopApp::launch_with(tempfile::tempdir()?, Some(namespace.clone())).await
    }

    async fn launch_with(home: tempfile::TempDir, namespace: Option<Namespace>) -> Result<DesktopApp> {
        let app = claudemesh_bin();
        let (port, native_port) = (free_port(), free_port());
        let mut command = match &namespace {
            Some(namespace) => namespace.async_command(tauri_driver()?),
            None => Command::new(tauri_driver()?),
        };
        command
            .args(["--port", &port.to_string(), "--native-port", &native_port.to_string()])
            .envs(app_env(home.path())?)
            .env_remove("CLAUDE_CONFIG_DIR")
            .env_remove("CLAUDEMESH_KEYSTORE")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let driver = command.spawn().context("starting tauri-driver")?;
        let mut desktop = DesktopApp { home, driver, port, session: String::new(), namespace };
        let deadline = Instant::now() + WAIT;
        while desktop.http("GET", "/status", None).await.is_err() {
            if Instant::now() > deadline {
                bail!("tauri-driver never answered on port {port}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "wry",
            "tauri:options": {"application": app.display().to_string()},
        }}});
        let created = desktop.http("POST", "/session", Some(capabilities)).await?;
        desktop.session =
            created["value"]["sessionId"].as_str().ok_or_else(|| anyhow!("no session id in {created}"))?.to_owned();
        desktop.find("[data-testid=content] > *").await.context("the window shows a view")?;
        Ok(desktop)
    }

    /// The app's config directory (`CLAUDEMESH_CONFIG_DIR`).
    pub fn config_dir(&self) -> PathBuf {
        self.home.path().join("claudemesh")
    }

    /// Runs `claudemesh ARGS --json` as the person at this app (its config directory and
    /// keychain) and returns what it printed.
    pub async fn cli(&self, args: &[&str]) -> Result<Value> {
        let output = Command::new(claudemesh_bin())
            .envs(app_env(self.home.path())?)
            .args(args)
            .arg("--json")
            .stdin(Stdio::null())
            .output()
            .await?;
        if !output.status.success() {
            bail!("claudemesh {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
        }
        serde_json::from_slice(&output.stdout)
            .with_context(|| format!("claudemesh {args:?} printed: {}", String::from_utf8_lossy(&output.stdout)))
    }

    async fn http(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        let driver = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let stream = match &self.namespace {
            Some(namespace) => namespace.connect(driver).await?,
            None => tokio::net::TcpStream::connect(driver).await?,
        };
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let payload = body.map(|b| b.to_string()).unwrap_or_default();
        let request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, format!("127.0.0.1:{}", self.port))
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(payload)))?;
        let response = tokio::time::timeout(Duration::from_secs(60), sender.send_request(request))
            .await
            .context("WebDriver did not answer in time")??;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("{method} {path}: {status} {value}");
        }
        Ok(value)
    }

    async fn command(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        let value = self.http(method, &format!("/session/{}{path}", self.session), body).await?;
        Ok(value["value"].clone())
    }

    async fn try_find(&self, css: &str) -> Result<Element> {
        let found = self.command("POST", "/element", Some(json!({"using": "css selector", "value": css}))).await?;
        found[ELEMENT_KEY]
            .as_str()
            .map(|id| Element(id.to_owned()))
            .ok_or_else(|| anyhow!("no element reference in {found}"))
    }

    /// The first element matching `css`, waiting for it to appear.
    pub async fn find(&self, css: &str) -> Result<Element> {
        let deadline = Instant::now() + WAIT;
        loop {
            match self.try_find(css).await {
                Ok(element) => return Ok(element),
                Err(error) if Instant::now() > deadline => return Err(error.context(format!("no element {css}"))),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// How many elements match `css` now. WebKitWebDriver answers "stale element reference" when
    /// the page re-renders during the query: asked again, briefly.
    pub async fn count(&self, css: &str) -> Result<usize> {
        let mut attempts = 0;
        loop {
            let query = Some(json!({"using": "css selector", "value": css}));
            match self.command("POST", "/elements", query).await {
                Ok(found) => return Ok(found.as_array().map_or(0, Vec::len)),
                Err(error) if attempts < 20 && error.to_string().contains("stale element") => {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Clicks the element matching `css` (retrying while the page is re-rendered).
    pub async fn click(&self, css: &str) -> Result<()> {
        let deadline = Instant::now() + WAIT;
        loop {
            let attempt = async {
                let element = self.try_find(css).await?;
                self.command("POST", &format!("/element/{}/click", element.0), Some(json!({}))).await
            };
            match attempt.await {
                Ok(_) => return Ok(()),
                Err(error) if Instant::now() > deadline => return Err(error.context(format!("cannot click {css}"))),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Replaces the value of the input matching `css` with `text`.
    pub async fn fill(&self, css: &str, text: &str) -> Result<()> {
        let element = self.find(css).await?;
        self.command("POST", &format!("/element/{}/clear", element.0), Some(json!({}))).await?;
        self.command("POST", &format!("/element/{}/value", element.0), Some(json!({"text": text}))).await?;
        Ok(())
    }

    /// Sets a `<select>` (or any input) value and tells the page it changed.
    pub async fn select(&self, css: &str, value: &str) -> Result<()> {
        self.find(css).await?;
        self.execute(
            "const e = document.querySelector(arguments[0]); e.value = arguments[1]; e.dispatchEvent(new Event('change'));",
            json!([css, value]),
        )
        .await?;
        Ok(())
    }

    pub async fn text(&self, css: &str) -> Result<String> {
        let element = self.find(css).await?;
        let text = self.command("GET", &format!("/element/{}/text", element.0), None).await?;
        Ok(text.as_str().unwrap_or_default().to_owned())
    }

    pub async fn attribute(&self, css: &str, name: &str) -> Result<Option<String>> {
        let element = self.find(css).await?;
        let value = self.command("GET", &format!("/element/{}/attribute/{name}", element.0), None).await?;
        Ok(value.as_str().map(str::to_owned))
    }

    /// Waits until the text of `css` satisfies `accept`; returns it.
    pub async fn wait_text(&self, css: &str, accept: impl Fn(&str) -> bool) -> Result<String> {
        let deadline = Instant::now() + WAIT;
        let mut last = String::new();
        loop {
            if let Ok(text) = self.try_text(css).await {
                if accept(&text) {
                    return Ok(text);
                }
                last = text;
            }
            if Instant::now() > deadline {
                let page = self.page_text().await;
                bail!("{css} never showed what was expected; last text: {last:?}; the page shows: {page}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn try_text(&self, css: &str) -> Result<String> {
        let element = self.try_find(css).await?;
        let text = self.command("GET", &format!("/element/{}/text", element.0), None).await?;
        Ok(text.as_str().unwrap_or_default().to_owned())
    }

    /// What the page shows, for failure messages.
    pub async fn page_text(&self) -> String {
        self.execute("return document.body.innerText", json!([]))
            .await
            .map(|v| v.as_str().unwrap_or_default().chars().take(2000).collect())
            .unwrap_or_default()
    }

    /// Waits until `css` matches at least one element.
    pub async fn wait_present(&self, css: &str) -> Result<()> {
        self.find(css).await.map(|_| ())
    }

    /// Waits until `css` matches nothing.
    pub async fn wait_absent(&self, css: &str) -> Result<()> {
        let deadline = Instant::now() + WAIT;
        while self.count(css).await? > 0 {
            if Instant::now() > deadline {
                bail!("{css} is still there");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    pub async fn execute(&self, script: &str, args: Value) -> Result<Value> {
        self.command("POST", "/execute/sync", Some(json!({"script": script, "args": args}))).await
    }

    /// Closes the window as a person would (the app stays in the tray), and waits until the
    /// driver no longer sees it. The close comes a moment after the script returned: closing
    /// within it (or right after) races the driver reading its result from a page that is gone
    /// ("Could not parse script result").
    pub async fn close_window(&self) -> Result<()> {
        let close = "setTimeout(() => window.__TAURI__.window.getCurrentWindow().close(), 250)";
        self.execute(close, json!([])).await?;
        let deadline = Instant::now() + WAIT;
        loop {
            match self.command("GET", "/window/handles", None).await {
                Ok(Value::Array(handles)) if !handles.is_empty() => {}
                _ => return Ok(()),
            }
            if Instant::now() > deadline {
                bail!("the window is still open");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Opens a view from the sidebar.
    pub async fn open(&self, view: &str) -> Result<()> {
        self.click(&format!("[data-testid=nav-{view}]")).await?;
        self.wait_present(&format!("[data-testid=view-{view}]")).await
    }

    /// A PNG of the window's content.
    pub async fn screenshot(&self) -> Result<Vec<u8>> {
        use base64::Engine as _;
        let data = self.command("GET", "/screenshot", None).await?;
        Ok(base64::engine::general_purpose::STANDARD.decode(data.as_str().unwrap_or_default())?)
    }

    /// The app's process id (found by its config directory).
    pub fn pid(&self) -> Option<u32> {
        let marker = format!("CLAUDEMESH_CONFIG_DIR={}", self.config_dir().display());
        std::fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
            let pid: u32 = entry.file_name().to_string_lossy().parse().ok()?;
            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
            let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
            (exe.file_name().is_some_and(|n| n == "claudemesh")
                && String::from_utf8_lossy(&environ).split('\0').any(|v| v == marker))
            .then_some(pid)
        })
    }

    /// Ends the driver after the app ended by itself (Quit), keeping the profile.
    pub async fn into_home(mut self) -> tempfile::TempDir {
        if let Some(pid) = self.driver.id() {
            let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status().await;
        }
        if tokio::time::timeout(Duration::from_secs(5), self.driver.wait()).await.is_err() {
            let _ = self.driver.kill().await;
        }
        let placeholder = tempfile::tempdir().expect("tempdir");
        std::mem::replace(&mut self.home, placeholder)
    }

    /// Ends the session (which closes the app) and the driver, letting the driver stop
    /// WebKitWebDriver first (SIGTERM), so no process outlives the test.
    pub async fn close(mut self) -> Result<()> {
        let _ = self.http("DELETE", &format!("/session/{}", self.session), None).await;
        if let Some(pid) = self.driver.id() {
            let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status().await;
        }
        if tokio::time::timeout(Duration::from_secs(5), self.driver.wait()).await.is_err() {
            let _ = self.driver.kill().await;
        }
        Ok(())
    }

    /// "Just this computer" on the first-run screen, as `name`; waits until connected.
    pub async fn set_up_locally(&self, name: &str) -> Result<()> {
        self.wait_present("[data-testid=view-welcome]").await?;
        self.click("[data-testid=choice-local]").await?;
        self.fill("[data-testid=welcome-display-name]", name).await?;
        self.click("[data-testid=welcome-continue]").await?;
        self.wait_text("[data-testid=state-line]", |t| t.starts_with("Connected as")).await?;
        Ok(())
    }

    /// Opens a `claudemesh://` link the way the desktop does: a second `claudemesh` process
    /// with the link as its only argument, which hands it to this running app and exits.
    pub async fn open_link(&self, url: &str) -> Result<()> {
        let status = Command::new(claudemesh_bin())
            .arg(url)
            .envs(app_env(self.home.path())?)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .status()
            .await
            .context("running claudemesh with a link")?;
        if !status.success() {
            bail!("claudemesh {url} exited with {status}");
        }
        Ok(())
    }

    /// Joins a mesh with an invite link (from the first-run screen, or the Meshes view).
    pub async fn open_join(&self, link: &str) -> Result<()> {
        if self.count("[data-testid=view-welcome]").await? > 0 {
            self.click("[data-testid=welcome-join]").await?;
        } else {
            self.open("meshes").await?;
            self.click("[data-testid=join-open]").await?;
        }
        self.fill("[data-testid=join-link]", link).await?;
        self.click("[data-testid=join-submit]").await?;
        self.wait_absent("[data-testid=join-dialog]").await
    }

    /// Creates a mesh in the Meshes view; waits until its row (slug `name`: give a lowercase
    /// name that is its own slug) shows the name.
    pub async fn create_mesh(&self, name: &str) -> Result<()> {
        self.open("meshes").await?;
        self.click("[data-testid=create-open]").await?;
        self.fill("[data-testid=create-name]", name).await?;
        self.click("[data-testid=create-submit]").await?;
        self.wait_text(&format!("[data-testid=mesh-row][data-slug={name}] [data-testid=mesh-name]"), |t| t == name)
            .await?;
        Ok(())
    }

    /// Creates an invite to the mesh named `mesh` in the Meshes view and returns its link.
    pub async fn invite_link(&self, mesh: &str, uses: u32) -> Result<String> {
        self.open("meshes").await?;
        self.click(&format!("[data-testid=mesh-row][data-slug={mesh}] [data-testid=invite-open]")).await?;
        self.fill("[data-testid=invite-uses]", &uses.to_string()).await?;
        self.click("[data-testid=invite-create]").await?;
        let link = self.wait_text("[data-testid=invite-link]", |t| t.contains("/join/")).await?;
        self.execute("document.querySelector('.overlay')?.remove()", json!([])).await?;
        Ok(link)
    }
}

impl Drop for DesktopApp {
    fn drop(&mut self) {
        let _ = self.driver.start_kill();
    }
}

fn tauri_driver() -> Result<PathBuf> {
    let candidates = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).map(|dir| dir.join("tauri-driver")).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(std::env::home_dir().map(|home| home.join(".cargo/bin/tauri-driver")));
    for candidate in candidates {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!("tauri-driver is not installed (scripts/install-deps.sh test installs it)")
}

/// The environment of an app living in `home`: its own HOME, XDG directories and config
/// directory, and logs that say when the tray is ready.
pub fn app_env(home: &Path) -> Result<Vec<(String, String)>> {
    let dir = |name: &str| -> Result<String> {
        let path = home.join(name);
        std::fs::create_dir_all(&path)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))?;
        }
        Ok(path.display().to_string())
    };
    Ok(vec![
        ("HOME".into(), home.display().to_string()),
        ("XDG_CONFIG_HOME".into(), dir(".config")?),
        ("XDG_DATA_HOME".into(), dir(".local/share")?),
        ("XDG_CACHE_HOME".into(), dir(".cache")?),
        ("XDG_RUNTIME_DIR".into(), dir("runtime")?),
        ("CLAUDEMESH_CONFIG_DIR".into(), home.join("claudemesh").display().to_string()),
        ("CLAUDEMESH_LOG".into(), "claudemesh=info,broker_core=warn".into()),
        // The temporary HOME goes away under a WebKit process still writing its shader cache.
        ("MESA_SHADER_CACHE_DISABLE".into(), "true".into()),
    ])
}

/// One `Notify` call seen on the session bus, with what the notification server answered.
#[derive(Debug, Clone)]
pub struct SeenNotification {
    pub summary: String,
    pub body: String,
    /// Seconds since the epoch when the call passed the bus.
    pub at: f64,
    /// The id the server returned (a shown notification has one).
    pub id: Option<u32>,
}

/// `dbus-monitor` watching `org.freedesktop.Notifications` calls and their replies.
pub struct NotificationMonitor {
    child: Child,
    seen: Arc<Mutex<Vec<SeenNotification>>>,
}

impl NotificationMonitor {
    pub async fn start() -> Result<NotificationMonitor> {
        let mut child = Command::new("dbus-monitor")
            .args([
                "--session",
                "type='method_call',interface='org.freedesktop.Notifications',member='Notify'",
                "type='method_return'",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting dbus-monitor")?;
        let stdout = child.stdout.take().context("stdout")?;
        let seen: Arc<Mutex<Vec<SeenNotification>>> = Arc::default();
        tokio::spawn(read_monitor(stdout, seen.clone()));
        // dbus-monitor is listening once it printed its own NameAcquired signal; give it the
        // moment it needs by asking the bus a question through it.
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok(NotificationMonitor { child, seen })
    }

    /// Waits for a shown notification whose summary or body contains `text`.
    pub async fn wait_for(&self, text: &str) -> Result<SeenNotification> {
        let deadline = Instant::now() + WAIT;
        loop {
            let found = self
                .seen
                .lock()
                .expect("monitor lock")
                .iter()
                .find(|n| n.summary.contains(text) || n.body.contains(text))
                .cloned();
            match found {
                Some(notification) if notification.id.is_some_and(|id| id > 0) => return Ok(notification),
                _ if Instant::now() > deadline => {
                    let all = self.seen.lock().expect("monitor lock").clone();
                    bail!("no shown notification mentions {text:?}; seen: {all:?}");
                }
                _ => tokio::time::sleep(Duration::from_millis(25)).await,
            }
        }
    }

    pub fn all(&self) -> Vec<SeenNotification> {
        self.seen.lock().expect("monitor lock").clone()
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// Parses dbus-monitor's text: a `method call … serial=N … member=Notify` block carries the
/// app name, replaces id, icon, summary and body strings; its `method return … reply_serial=N`
/// carries the notification id.
async fn read_monitor(stdout: tokio::process::ChildStdout, seen: Arc<Mutex<Vec<SeenNotification>>>) {
    let mut lines = BufReader::new(stdout).lines();
    // serial → index into `seen`, for calls whose reply has not come yet.
    let mut waiting: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    enum Block {
        None,
        Call { serial: String, at: f64, strings: Vec<String> },
        Return { reply_serial: String },
    }
    let mut block = Block::None;
    let field = |line: &str, name: &str| -> Option<String> {
        line.split_whitespace().find_map(|part| part.strip_prefix(&format!("{name}=")).map(str::to_owned))
    };
    let finish = |block: Block, waiting: &mut std::collections::HashMap<String, usize>| {
        if let Block::Call { serial, at, strings } = block
            && strings.len() >= 4
        {
            let mut seen = seen.lock().expect("monitor lock");
            seen.push(SeenNotification { summary: strings[2].clone(), body: strings[3].clone(), at, id: None });
            waiting.insert(serial, seen.len() - 1);
        }
    };
    while let Ok(Some(line)) = lines.next_line().await {
        let trimmed = line.trim_start();
        if line.starts_with("method call") && line.contains("member=Notify") {
            finish(std::mem::replace(&mut block, Block::None), &mut waiting);
            block = Block::Call {
                serial: field(&line, "serial").unwrap_or_default(),
                at: field(&line, "time").and_then(|t| t.parse().ok()).unwrap_or(0.0),
                strings: Vec::new(),
            };
        } else if line.starts_with("method return") {
            finish(std::mem::replace(&mut block, Block::None), &mut waiting);
            block = Block::Return { reply_serial: field(&line, "reply_serial").unwrap_or_default() };
        } else if !line.starts_with(' ') {
            finish(std::mem::replace(&mut block, Block::None), &mut waiting);
        } else {
            match &mut block {
                // Only the top-level strings: app name, icon, summary, body (the replaces id is
                // a uint32; actions and hints come after, nested deeper).
                Block::Call { strings, .. } if line.starts_with("   string ") => {
                    strings.push(unquote(trimmed.trim_start_matches("string ")));
                }
                Block::Return { reply_serial } if trimmed.starts_with("uint32 ") => {
                    if let Some(index) = waiting.remove(reply_serial.as_str())
                        && let Ok(id) = trimmed.trim_start_matches("uint32 ").parse()
                    {
                        seen.lock().expect("monitor lock")[index].id = Some(id);
                    }
                }
                _ => {}
            }
        }
    }
}

fn unquote(text: &str) -> String {
    text.trim().trim_matches('"').to_owned()
}

/// The app's tray menu as exported on the session bus (StatusNotifierItem + dbusmenu), driven
/// with `gdbus` as a panel would.
pub struct TrayMenu {
    bus_name: String,
    path: String,
}

const DBUSMENU_PATH_PREFIX: &str = "/org/ayatana/NotificationItem/";

async fn gdbus(args: &[&str]) -> Result<String> {
    let output = Command::new("gdbus").arg("call").arg("--session").args(args).output().await?;
    if !output.status.success() {
        bail!("gdbus {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

impl TrayMenu {
    /// Finds the menu the process `pid` exports.
    pub async fn of(pid: u32) -> Result<TrayMenu> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(menu) = TrayMenu::try_find(pid).await? {
                return Ok(menu);
            }
            if Instant::now() > deadline {
                bail!("process {pid} exports no tray menu");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn try_find(pid: u32) -> Result<Option<TrayMenu>> {
        let names = gdbus(&[
            "--dest",
            "org.freedesktop.DBus",
            "--object-path",
            "/org/freedesktop/DBus",
            "--method",
            "org.freedesktop.DBus.ListNames",
        ])
        .await?;
        for name in names.split('\'').filter(|n| n.starts_with(":1.")) {
            let owner = gdbus(&[
                "--dest",
                "org.freedesktop.DBus",
                "--object-path",
                "/org/freedesktop/DBus",
                "--method",
                "org.freedesktop.DBus.GetConnectionUnixProcessID",
                name,
            ])
            .await
            .unwrap_or_default();
            if !owner.contains(&format!("uint32 {pid},")) {
                continue;
            }
            // The app holds other bus connections (keychain, notifications) that may not be
            // dispatching: without a short timeout each costs D-Bus's default 25 s.
            let Ok(nodes) = gdbus(&[
                "--timeout",
                "1",
                "--dest",
                name,
                "--object-path",
                "/org/ayatana/NotificationItem",
                "--method",
                "org.freedesktop.DBus.Introspectable.Introspect",
            ])
            .await
            else {
                continue;
            };
            if let Some(item) = nodes.split("<node name=\"").nth(1).and_then(|rest| rest.split('"').next()) {
                return Ok(Some(TrayMenu {
                    bus_name: name.to_owned(),
                    path: format!("{DBUSMENU_PATH_PREFIX}{item}/Menu"),
                }));
            }
        }
        Ok(None)
    }

    /// The menu's items: (id, label).
    pub async fn items(&self) -> Result<Vec<(u32, String)>> {
        let layout = gdbus(&[
            "--dest",
            &self.bus_name,
            "--object-path",
            &self.path,
            "--method",
            "com.canonical.dbusmenu.GetLayout",
            // `--`: "-1" is an argument, not an option.
            "--",
            "0",
            "-1",
            "[]",
        ])
        .await?;
        // `(7, {'label': <'Quit claudemesh'>, …}, [])`, nested in the root's children.
        let mut items = Vec::new();
        for chunk in layout.split("<(").skip(1) {
            let Some((id, rest)) = chunk.split_once(',') else { continue };
            let Ok(id) = id.trim().parse() else { continue };
            if let Some(label) = rest.split("'label': <'").nth(1).and_then(|l| l.split("'>").next()) {
                items.push((id, label.to_owned()));
            }
        }
        Ok(items)
    }

    /// Clicks the item labelled `label`.
    pub async fn click(&self, label: &str) -> Result<()> {
        let items = self.items().await?;
        let (id, _) =
            items.iter().find(|(_, l)| l == label).ok_or_else(|| anyhow!("no tray item {label:?} in {items:?}"))?;
        gdbus(&[
            "--dest",
            &self.bus_name,
            "--object-path",
            &self.path,
            "--method",
            "com.canonical.dbusmenu.Event",
            &id.to_string(),
            "clicked",
            "<''>",
            "0",
        ])
        .await?;
        Ok(())
    }
}
