//! Finding the Claude Code process a bridge or a hook belongs to.
//!
//! Claude Code starts the bridge (`claudemesh mcp`) as a child, and runs hook commands as
//! children too, often through a shell (`sh -c "claudemesh hook working"`). Both therefore have
//! the same Claude Code process among their ancestors, and each side walks its parent chain to
//! find it. That pid keys the bridge's local socket, so a hook only ever reaches the bridge of
//! its own session — never one chosen by working directory, and never another session's (the
//! walk stops at the nearest Claude Code process, so a Claude Code started inside another
//! one's shell does not report to the outer session).

/// The longest parent chain walked (a loop guard; real chains are a handful deep).
const MAX_DEPTH: usize = 64;

/// A process's command name and parent, from `/proc/<pid>/stat` text.
pub fn parse_stat(stat: &str) -> Option<(String, u32)> {
    // `pid (comm) state ppid …`; comm may itself contain spaces and parentheses.
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_owned();
    let mut rest = stat.get(close + 1..)?.split_whitespace();
    let _state = rest.next()?;
    let ppid = rest.next()?.parse().ok()?;
    Some((comm, ppid))
}

/// Whether a process with this command name and argument vector is Claude Code: the native
/// `claude` binary, or the npm package run by node.
pub fn is_claude_code(comm: &str, argv: &[String]) -> bool {
    let base = |s: &str| s.rsplit('/').next().unwrap_or(s).to_owned();
    if comm == "claude" || argv.first().is_some_and(|a| base(a) == "claude") {
        return true;
    }
    let node = comm == "node" || comm.starts_with("node") || comm == "bun";
    node && argv
        .iter()
        .skip(1)
        .take(3)
        .any(|a| a.contains("@anthropic-ai/claude-code") || a.contains("claude-code/cli") || base(a) == "claude")
}

/// `(command name, parent pid, argv)` of a live process.
#[cfg(target_os = "linux")]
fn process(pid: u32) -> Option<(String, u32, Vec<String>)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (comm, ppid) = parse_stat(&stat)?;
    let argv = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| {
            raw.split(|b| *b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect()
        })
        .unwrap_or_default();
    Some((comm, ppid, argv))
}

/// Without `/proc` (macOS, BSD), ask `ps`.
#[cfg(not(target_os = "linux"))]
fn process(pid: u32) -> Option<(String, u32, Vec<String>)> {
    let output = std::process::Command::new("ps").args(["-o", "ppid=,comm=", "-p", &pid.to_string()]).output().ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text.lines().next()?.trim().to_owned();
    let (ppid, comm) = line.split_once(char::is_whitespace)?;
    let comm = comm.trim().to_owned();
    let base = comm.rsplit('/').next().unwrap_or(&comm).to_owned();
    Some((base, ppid.trim().parse().ok()?, vec![comm]))
}

pub fn parent_of(pid: u32) -> Option<u32> {
    process(pid).map(|(_, ppid, _)| ppid).filter(|p| *p > 0)
}

/// The nearest Claude Code process above `pid` (excluding `pid` itself).
pub fn claude_ancestor(pid: u32) -> Option<u32> {
    let mut current = parent_of(pid)?;
    for _ in 0..MAX_DEPTH {
        if current <= 1 {
            return None;
        }
        let (comm, ppid, argv) = process(current)?;
        if is_claude_code(&comm, &argv) {
            return Some(current);
        }
        current = ppid;
    }
    None
}

/// The pid a bridge keys its hook socket by: its Claude Code ancestor, or (started by some other
/// MCP host) its parent.
pub fn bridge_key(own_pid: u32) -> Option<u32> {
    claude_ancestor(own_pid).or_else(|| parent_of(own_pid))
}

/// The pids a hook tries, in order: its Claude Code ancestor when there is one; otherwise its
/// parent and grandparent (a host that runs hooks directly or through one shell).
pub fn hook_keys(own_pid: u32) -> Vec<u32> {
    if let Some(claude) = claude_ancestor(own_pid) {
        return vec![claude];
    }
    let mut keys = Vec::new();
    if let Some(parent) = parent_of(own_pid) {
        keys.push(parent);
        if let Some(grandparent) = parent_of(parent).filter(|p| *p > 1) {
            keys.push(grandparent);
        }
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse_even_with_odd_command_names() {
        assert_eq!(parse_stat("1234 (claude) S 1000 1234 1234 0 -1"), Some(("claude".into(), 1000)));
        assert_eq!(parse_stat("77 (my (weird) name) R 5 77 77"), Some(("my (weird) name".into(), 5)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn claude_code_is_recognised_native_or_under_node_but_claudemesh_is_not() {
        let argv = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(is_claude_code("claude", &argv(&["claude", "--resume"])));
        assert!(is_claude_code("MainThread", &argv(&["/home/u/.local/bin/claude"])));
        assert!(is_claude_code("node", &argv(&["node", "/usr/lib/node_modules/@anthropic-ai/claude-code/cli.js"])));
        assert!(!is_claude_code("claudemesh", &argv(&["claudemesh", "mcp"])));
        assert!(!is_claude_code("node", &argv(&["node", "server.js"])));
        assert!(!is_claude_code("bash", &argv(&["bash", "-c", "claude"])));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_has_a_parent_and_no_claude_ancestor_in_tests() {
        let me = std::process::id();
        assert!(parent_of(me).is_some());
        // Test runners are not Claude Code (unless someone runs the suite from inside one).
        if claude_ancestor(me).is_none() {
            assert_eq!(bridge_key(me), parent_of(me));
            assert_eq!(hook_keys(me).first().copied(), parent_of(me));
        }
    }
}
