//! Claude Code on this machine: whether this binary's MCP bridge and status hooks are
//! registered (registering goes through [`crate::claude_code`]), and which of its sessions are
//! connected to a mesh now.

use std::path::PathBuf;

use serde::Serialize;

use super::{Desktop, lock};
use crate::claude_code::{self, ClaudeFiles};
use crate::gui::error::{CommandError, CommandResult, ErrorKind};
use crate::mesh::PeerRow;

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClaudeIntegration {
    pub registered: bool,
    pub mcp_file: String,
    pub hooks_file: String,
    /// Claude Code sessions of this machine connected to a mesh now.
    pub sessions: Vec<PeerRow>,
    /// What the last register or unregister did.
    pub actions: Vec<String>,
}

impl Desktop {
    pub fn claude_integration(&self, actions: Vec<String>) -> CommandResult<ClaudeIntegration> {
        let files = ClaudeFiles::from_env().map_err(|e| CommandError::new(ErrorKind::Storage, e.to_string()))?;
        let registered = claude_code::is_registered(&files);
        let sessions = lock(&self.state)
            .meshes
            .values()
            .flat_map(|m| m.peers.iter())
            .filter(|p| p.location == "local" && p.channel.as_deref() == Some("claude-code"))
            .cloned()
            .collect();
        Ok(ClaudeIntegration {
            registered,
            mcp_file: files.mcp_config.display().to_string(),
            hooks_file: files.settings.display().to_string(),
            sessions,
            actions,
        })
    }

    /// Registers this binary's MCP bridge and status hooks with Claude Code (or takes them out).
    pub fn register_claude(&self, register: bool) -> CommandResult<ClaudeIntegration> {
        let files = ClaudeFiles::from_env().map_err(|e| CommandError::new(ErrorKind::Storage, e.to_string()))?;
        let report = if register {
            let exe = std::env::current_exe()
                .and_then(|e| e.canonicalize())
                .map_err(|e| CommandError::new(ErrorKind::Storage, e.to_string()))?;
            let override_dir =
                std::env::var_os(crate::config::CONFIG_DIR_ENV).filter(|d| !d.is_empty()).map(PathBuf::from);
            claude_code::install(&files, &exe, override_dir.as_deref())
        } else {
            claude_code::uninstall(&files)
        }
        .map_err(|e| CommandError::new(ErrorKind::Storage, format!("{e:#}")))?;
        self.claude_integration(report.actions)
    }
}
