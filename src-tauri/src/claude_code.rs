//! Registration with Claude Code: the MCP bridge and the status hooks, put in and taken out by
//! `claudemesh install` / `uninstall` and by the desktop app's Settings.
//!
//! The MCP server goes in with `claude mcp add --scope user` when the `claude` command exists,
//! otherwise straight into the user-scope `mcpServers` of `~/.claude.json` (what that command
//! writes). The hooks go into the `hooks` of `~/.claude/settings.json`, and the tools that only
//! read or send messages into its `permissions.allow`, so that Claude Code does not ask the
//! person before each of them. `CLAUDE_CONFIG_DIR` relocates both files, as it does for Claude
//! Code. Other content of those files is kept; our hooks are recognised by their command and
//! replaced, never duplicated, and only the permission rules of [`APPROVED_TOOLS`] are ours.

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::{Value, json};

use crate::config::write_private_atomic;

/// The MCP server name (what `server:claudemesh` and the channel `source` refer to).
pub const MCP_NAME: &str = "claudemesh";

/// Hook events and the status each reports. A turn ends with `Stop`, or with `StopFailure`
/// instead when an API error ended it (Claude Code fires no `Stop` then). An interrupted turn
/// fires nothing; `SessionEnd` (`/clear`) settles it. When Claude Code exits, it stops the
/// bridge before `SessionEnd` runs: the session leaves the mesh instead.
pub const HOOKS: [(&str, &str); 5] = [
    ("UserPromptSubmit", "working"),
    ("PreToolUse", "working"),
    ("Stop", "idle"),
    ("StopFailure", "idle"),
    ("SessionEnd", "idle"),
];

/// The bridge's tools that install pre-approves: they read, or send a message the person asked
/// for (now or later). The others (`set_summary`, `set_status`, `join_group`, `leave_group`,
/// `cancel_scheduled`, `set_state`, `delete_state`, `remember`, `forget`) change what the mesh
/// sees or where messages go, and stay the person's choice.
pub const APPROVED_TOOLS: [&str; 12] = [
    "list_peers",
    "check_messages",
    "whoami",
    "send_message",
    "mesh_stats",
    "message_status",
    "schedule_reminder",
    "list_scheduled",
    "get_state",
    "list_state",
    "watch_state",
    "recall",
];

/// Claude Code's name for one of our tools in permission rules and `--allowedTools`.
pub fn tool_rule(tool: &str) -> String {
    format!("mcp__{MCP_NAME}__{tool}")
}

/// Where Claude Code keeps its user files.
#[derive(Debug, Clone)]
pub struct ClaudeFiles {
    /// User-scope MCP servers (`~/.claude.json`).
    pub mcp_config: PathBuf,
    /// User settings with hooks (`~/.claude/settings.json`).
    pub settings: PathBuf,
}

impl ClaudeFiles {
    pub fn from_env() -> anyhow::Result<ClaudeFiles> {
        if let Some(dir) = std::env::var_os("CLAUDE_CONFIG_DIR").filter(|d| !d.is_empty()) {
            let dir = PathBuf::from(dir);
            return Ok(ClaudeFiles { mcp_config: dir.join(".claude.json"), settings: dir.join("settings.json") });
        }
        let home = std::env::home_dir().ok_or_else(|| anyhow::anyhow!("cannot find the home directory"))?;
        Ok(ClaudeFiles { mcp_config: home.join(".claude.json"), settings: home.join(".claude/settings.json") })
    }
}

/// What install or uninstall did, for people and for `--json`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// `claude mcp` (ran the command) or `file` (edited the file).
    pub mcp_method: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mcp_command: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mcp_file: Option<String>,
    pub hooks_file: String,
    /// Hook events touched.
    pub hook_events: Vec<String>,
    /// Permission rules added to (install) or removed from (uninstall) `permissions.allow` of
    /// the settings file; rules that were already there are not counted as added.
    pub approved_tools: Vec<String>,
    pub actions: Vec<String>,
}

/// `'text'` for a POSIX shell (hooks run through one).
pub fn shell_quote(text: &str) -> String {
    if !text.is_empty() && text.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+=:@".contains(c)) {
        return text.to_owned();
    }
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// The hook command for `status`, carrying `CLAUDEMESH_CONFIG_DIR` when one is set.
pub fn hook_command(exe: &Path, config_dir_override: Option<&Path>, status: &str) -> String {
    let mut command = String::new();
    if let Some(dir) = config_dir_override {
        command.push_str(&format!("{}={} ", crate::config::CONFIG_DIR_ENV, shell_quote(&dir.display().to_string())));
    }
    command.push_str(&format!("{} hook {status}", shell_quote(&exe.display().to_string())));
    command
}

fn is_our_hook(entry: &Value) -> bool {
    entry.get("command").and_then(Value::as_str).is_some_and(|c| c.contains("claudemesh") && c.contains(" hook "))
}

fn read_json(path: &Path) -> anyhow::Result<Value> {
    match std::fs::read(path) {
        Ok(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => Ok(json!({})),
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| anyhow::anyhow!("{} is not valid JSON ({e}); fix it and run this again", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(json!({})),
        Err(e) => Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
    }
}

fn write_json(path: &Path, value: &Value) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", parent.display()))?;
    }
    let mut text = serde_json::to_vec_pretty(value).expect("json serializes");
    text.push(b'\n');
    write_private_atomic(path, &text)?;
    Ok(())
}

/// Removes our hooks from a settings document; returns the events it touched.
pub fn remove_hooks(settings: &mut Value) -> Vec<String> {
    let mut touched = Vec::new();
    let Some(hooks) = settings.get_mut("hooks").and_then(Value::as_object_mut) else { return touched };
    for (event, groups) in hooks.iter_mut() {
        let Some(groups) = groups.as_array_mut() else { continue };
        let before: usize = groups.iter().map(|g| g["hooks"].as_array().map_or(0, Vec::len)).sum();
        for group in groups.iter_mut() {
            if let Some(entries) = group.get_mut("hooks").and_then(Value::as_array_mut) {
                entries.retain(|e| !is_our_hook(e));
            }
        }
        groups.retain(|g| g.get("hooks").and_then(Value::as_array).is_none_or(|h| !h.is_empty()));
        let after: usize = groups.iter().map(|g| g["hooks"].as_array().map_or(0, Vec::len)).sum();
        if after != before {
            touched.push(event.clone());
        }
    }
    hooks.retain(|_, groups| groups.as_array().is_none_or(|g| !g.is_empty()));
    if hooks.is_empty()
        && let Some(object) = settings.as_object_mut()
    {
        object.remove("hooks");
    }
    touched
}

/// Adds our hooks (replacing earlier ones of ours).
pub fn add_hooks(settings: &mut Value, exe: &Path, config_dir_override: Option<&Path>) -> anyhow::Result<()> {
    remove_hooks(settings);
    let object = settings.as_object_mut().ok_or_else(|| anyhow::anyhow!("the settings file is not a JSON object"))?;
    let hooks = object.entry("hooks").or_insert_with(|| json!({}));
    let hooks =
        hooks.as_object_mut().ok_or_else(|| anyhow::anyhow!("`hooks` in the settings file is not an object"))?;
    for (event, status) in HOOKS {
        let mut group = json!({
            "hooks": [{ "type": "command", "command": hook_command(exe, config_dir_override, status), "timeout": 5 }]
        });
        if event == "PreToolUse" {
            group["matcher"] = json!("*");
        }
        let groups = hooks.entry(event).or_insert_with(|| json!([]));
        groups
            .as_array_mut()
            .ok_or_else(|| anyhow::anyhow!("`hooks.{event}` in the settings file is not a list"))?
            .push(group);
    }
    Ok(())
}

/// Adds the rules of [`APPROVED_TOOLS`] missing from `permissions.allow`; returns those added.
pub fn add_permissions(settings: &mut Value) -> anyhow::Result<Vec<String>> {
    let object = settings.as_object_mut().ok_or_else(|| anyhow::anyhow!("the settings file is not a JSON object"))?;
    let permissions = object.entry("permissions").or_insert_with(|| json!({}));
    let permissions = permissions
        .as_object_mut()
        .ok_or_else(|| anyhow::anyhow!("`permissions` in the settings file is not an object"))?;
    let allow = permissions
        .entry("allow")
        .or_insert_with(|| json!([]))
        .as_array_mut()
        .ok_or_else(|| anyhow::anyhow!("`permissions.allow` in the settings file is not a list"))?;
    let mut added = Vec::new();
    for rule in APPROVED_TOOLS.map(tool_rule) {
        if !allow.iter().any(|existing| existing.as_str() == Some(&rule)) {
            allow.push(json!(rule));
            added.push(rule);
        }
    }
    Ok(added)
}

/// Removes the rules of [`APPROVED_TOOLS`] from `permissions.allow` (other rules, including
/// other claudemesh tools the person allowed, stay); returns those removed.
pub fn remove_permissions(settings: &mut Value) -> Vec<String> {
    let ours = APPROVED_TOOLS.map(tool_rule);
    let Some(permissions) = settings.get_mut("permissions").and_then(Value::as_object_mut) else { return Vec::new() };
    let Some(allow) = permissions.get_mut("allow").and_then(Value::as_array_mut) else { return Vec::new() };
    let mut removed = Vec::new();
    allow.retain(|rule| match rule.as_str().filter(|r| ours.iter().any(|o| o == r)) {
        Some(rule) => {
            removed.push(rule.to_owned());
            false
        }
        None => true,
    });
    if allow.is_empty() {
        permissions.remove("allow");
    }
    if permissions.is_empty()
        && let Some(object) = settings.as_object_mut()
    {
        object.remove("permissions");
    }
    removed
}

/// The `claude` command on `PATH`, if any.
pub fn find_claude() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join("claude")).find(|candidate| {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            candidate.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        }
        #[cfg(not(unix))]
        candidate.is_file()
    })
}

fn run_claude(claude: &Path, args: &[String]) -> anyhow::Result<std::process::Output> {
    std::process::Command::new(claude)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run {}: {e}", claude.display()))
}

/// Whether this machine's Claude Code has our MCP server and hooks: the hooks in the settings
/// file, and the server in the user MCP config (or, when `claude` manages it, in `claude mcp
/// list`'s source file, the same `~/.claude.json`). Shown by the desktop app's Settings.
#[cfg(feature = "gui")]
pub fn is_registered(files: &ClaudeFiles) -> bool {
    let hooks = read_json(&files.settings).is_ok_and(|settings| {
        settings["hooks"].as_object().is_some_and(|events| {
            events
                .values()
                .flat_map(|groups| groups.as_array().into_iter().flatten())
                .any(|group| group["hooks"].as_array().is_some_and(|entries| entries.iter().any(is_our_hook)))
        })
    });
    let server = read_json(&files.mcp_config).is_ok_and(|config| config["mcpServers"][MCP_NAME].is_object());
    hooks && server
}

pub fn install(files: &ClaudeFiles, exe: &Path, config_dir_override: Option<&Path>) -> anyhow::Result<Report> {
    let mut actions = Vec::new();
    let env_args: Vec<String> = config_dir_override
        .map(|dir| vec!["-e".to_owned(), format!("{}={}", crate::config::CONFIG_DIR_ENV, dir.display())])
        .unwrap_or_default();
    let (mcp_method, mcp_command, mcp_file) = match find_claude() {
        Some(claude) => {
            // `add` refuses an existing name: remove ours first (absent is fine).
            let remove: Vec<String> = ["mcp", "remove", "--scope", "user", MCP_NAME].map(str::to_owned).to_vec();
            let _ = run_claude(&claude, &remove);
            // The name goes before `-e`: `-e` takes any number of values and would swallow it.
            let mut add: Vec<String> = ["mcp", "add", "--scope", "user", MCP_NAME].map(str::to_owned).to_vec();
            add.extend(env_args);
            add.extend(["--".to_owned(), exe.display().to_string(), "mcp".to_owned()]);
            let output = run_claude(&claude, &add)?;
            let shown =
                format!("{} {}", claude.display(), add.iter().map(|a| shell_quote(a)).collect::<Vec<_>>().join(" "));
            if !output.status.success() {
                anyhow::bail!("`{shown}` failed: {}", String::from_utf8_lossy(&output.stderr).trim());
            }
            actions.push(format!("registered the MCP server: ran {shown}"));
            ("claude mcp", Some(shown), None)
        }
        None => {
            let mut config = read_json(&files.mcp_config)?;
            let object = config
                .as_object_mut()
                .ok_or_else(|| anyhow::anyhow!("{} is not a JSON object", files.mcp_config.display()))?;
            let servers = object.entry("mcpServers").or_insert_with(|| json!({}));
            let env: serde_json::Map<String, Value> = config_dir_override
                .map(|d| {
                    [(crate::config::CONFIG_DIR_ENV.to_owned(), json!(d.display().to_string()))].into_iter().collect()
                })
                .unwrap_or_default();
            servers
                .as_object_mut()
                .ok_or_else(|| anyhow::anyhow!("`mcpServers` in {} is not an object", files.mcp_config.display()))?
                .insert(
                    MCP_NAME.to_owned(),
                    json!({ "type": "stdio", "command": exe.display().to_string(), "args": ["mcp"], "env": env }),
                );
            write_json(&files.mcp_config, &config)?;
            actions.push(format!(
                "registered the MCP server: wrote mcpServers.{MCP_NAME} = {{command: {}, args: [mcp]}} to {} (no `claude` command on PATH)",
                exe.display(),
                files.mcp_config.display()
            ));
            ("file", None, Some(files.mcp_config.display().to_string()))
        }
    };

    let mut settings = read_json(&files.settings)?;
    add_hooks(&mut settings, exe, config_dir_override)?;
    let approved_tools = add_permissions(&mut settings)?;
    write_json(&files.settings, &settings)?;
    for (event, status) in HOOKS {
        actions.push(format!(
            "added hook {event} → `{}` to {}",
            hook_command(exe, config_dir_override, status),
            files.settings.display()
        ));
    }
    actions.push(if approved_tools.is_empty() {
        format!("the claudemesh tools that read or send messages were already allowed in {}", files.settings.display())
    } else {
        format!(
            "allowed without asking, in permissions.allow of {}: {} (other claudemesh tools still ask)",
            files.settings.display(),
            approved_tools.join(", ")
        )
    });
    Ok(Report {
        mcp_method,
        mcp_command,
        mcp_file,
        hooks_file: files.settings.display().to_string(),
        hook_events: HOOKS.iter().map(|(e, _)| (*e).to_owned()).collect(),
        approved_tools,
        actions,
    })
}

pub fn uninstall(files: &ClaudeFiles) -> anyhow::Result<Report> {
    let mut actions = Vec::new();
    let (mcp_method, mcp_command, mcp_file) = match find_claude() {
        Some(claude) => {
            let remove: Vec<String> = ["mcp", "remove", "--scope", "user", MCP_NAME].map(str::to_owned).to_vec();
            let output = run_claude(&claude, &remove)?;
            let shown = format!("{} {}", claude.display(), remove.join(" "));
            actions.push(if output.status.success() {
                format!("removed the MCP server: ran {shown}")
            } else {
                format!(
                    "the MCP server was not registered ({shown}: {})",
                    String::from_utf8_lossy(&output.stderr).trim()
                )
            });
            ("claude mcp", Some(shown), None)
        }
        None => {
            let mut config = read_json(&files.mcp_config)?;
            let removed = config
                .get_mut("mcpServers")
                .and_then(Value::as_object_mut)
                .and_then(|servers| servers.remove(MCP_NAME))
                .is_some();
            if removed {
                write_json(&files.mcp_config, &config)?;
                actions.push(format!("removed mcpServers.{MCP_NAME} from {}", files.mcp_config.display()));
            } else {
                actions.push(format!("no mcpServers.{MCP_NAME} in {}", files.mcp_config.display()));
            }
            ("file", None, Some(files.mcp_config.display().to_string()))
        }
    };
    let mut settings = read_json(&files.settings)?;
    let touched = remove_hooks(&mut settings);
    let approved_tools = remove_permissions(&mut settings);
    if touched.is_empty() {
        actions.push(format!("no claudemesh hooks in {}", files.settings.display()));
    } else {
        actions.push(format!("removed claudemesh hooks ({}) from {}", touched.join(", "), files.settings.display()));
    }
    if approved_tools.is_empty() {
        actions.push(format!("no claudemesh permission rules in {}", files.settings.display()));
    } else {
        actions.push(format!(
            "removed from permissions.allow of {}: {}",
            files.settings.display(),
            approved_tools.join(", ")
        ));
    }
    if !touched.is_empty() || !approved_tools.is_empty() {
        write_json(&files.settings, &settings)?;
    }
    Ok(Report {
        mcp_method,
        mcp_command,
        mcp_file,
        hooks_file: files.settings.display().to_string(),
        hook_events: touched,
        approved_tools,
        actions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hooks_are_added_once_next_to_foreign_ones_and_removed_cleanly() {
        let exe = Path::new("/opt/claude mesh/claudemesh");
        let mut settings = json!({
            "model": "opus",
            "hooks": { "Stop": [{ "hooks": [{ "type": "command", "command": "notify-send done" }] }] }
        });
        add_hooks(&mut settings, exe, None).expect("adds");
        add_hooks(&mut settings, exe, None).expect("adds again");
        let stop = settings["hooks"]["Stop"].as_array().expect("list");
        assert_eq!(stop.len(), 2, "foreign hook kept, ours once: {stop:?}");
        assert_eq!(stop[1]["hooks"][0]["command"], "'/opt/claude mesh/claudemesh' hook idle");
        assert_eq!(settings["hooks"]["PreToolUse"][0]["matcher"], "*");
        assert_eq!(
            settings["hooks"]["UserPromptSubmit"][0]["hooks"][0]["command"],
            "'/opt/claude mesh/claudemesh' hook working"
        );

        assert_eq!(
            settings["hooks"]["StopFailure"][0]["hooks"][0]["command"],
            "'/opt/claude mesh/claudemesh' hook idle"
        );
        assert_eq!(
            settings["hooks"]["SessionEnd"][0]["hooks"][0]["command"],
            "'/opt/claude mesh/claudemesh' hook idle"
        );

        let touched = remove_hooks(&mut settings);
        assert_eq!(touched.len(), HOOKS.len());
        assert_eq!(
            settings,
            json!({
                "model": "opus",
                "hooks": { "Stop": [{ "hooks": [{ "type": "command", "command": "notify-send done" }] }] }
            })
        );
    }

    #[test]
    fn permissions_are_added_once_and_only_ours_are_taken_back() {
        let mut settings = json!({
            "permissions": {
                "allow": ["Bash(git status)", "mcp__claudemesh__join_group"],
                "deny": ["Read(./.env)"]
            }
        });
        let added = add_permissions(&mut settings).expect("adds");
        assert_eq!(
            added,
            [
                "mcp__claudemesh__list_peers",
                "mcp__claudemesh__check_messages",
                "mcp__claudemesh__whoami",
                "mcp__claudemesh__send_message",
                "mcp__claudemesh__mesh_stats",
                "mcp__claudemesh__message_status",
                "mcp__claudemesh__schedule_reminder",
                "mcp__claudemesh__list_scheduled",
                "mcp__claudemesh__get_state",
                "mcp__claudemesh__list_state",
                "mcp__claudemesh__watch_state",
                "mcp__claudemesh__recall"
            ]
        );
        assert!(add_permissions(&mut settings).expect("adds again").is_empty(), "nothing added twice");
        assert_eq!(settings["permissions"]["allow"].as_array().map(Vec::len), Some(14));

        assert_eq!(remove_permissions(&mut settings), added);
        assert_eq!(
            settings,
            json!({
                "permissions": {
                    "allow": ["Bash(git status)", "mcp__claudemesh__join_group"],
                    "deny": ["Read(./.env)"]
                }
            }),
            "the person's own rules stay, also for other claudemesh tools"
        );

        let mut only_ours = json!({"model": "opus"});
        add_permissions(&mut only_ours).expect("adds");
        remove_permissions(&mut only_ours);
        assert_eq!(only_ours, json!({"model": "opus"}), "no empty permissions object is left behind");
    }

    #[cfg(feature = "gui")]
    #[test]
    fn registration_is_seen_in_both_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files =
            ClaudeFiles { mcp_config: dir.path().join(".claude.json"), settings: dir.path().join("settings.json") };
        assert!(!is_registered(&files));
        let mut settings = json!({});
        add_hooks(&mut settings, Path::new("/usr/bin/claudemesh"), None).expect("adds");
        write_json(&files.settings, &settings).expect("writes");
        assert!(!is_registered(&files), "hooks alone are half a registration");
        write_json(&files.mcp_config, &json!({"mcpServers": {"claudemesh": {"command": "claudemesh"}}}))
            .expect("writes");
        assert!(is_registered(&files));
    }

    #[test]
    fn a_config_dir_override_travels_with_the_hook_command() {
        let command = hook_command(Path::new("/usr/bin/claudemesh"), Some(Path::new("/tmp/cm dir")), "working");
        assert_eq!(command, "CLAUDEMESH_CONFIG_DIR='/tmp/cm dir' /usr/bin/claudemesh hook working");
    }

    #[test]
    fn quoting_survives_single_quotes() {
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote("/plain/path"), "/plain/path");
    }
}
