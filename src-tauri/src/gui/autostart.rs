//! Start at login: an XDG autostart entry (`$XDG_CONFIG_HOME/autostart/claudemesh.desktop`)
//! that starts the app in the tray. Other platforms are not supported yet.

use std::path::{Path, PathBuf};

fn entry_path() -> Option<PathBuf> {
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::home_dir().map(|home| home.join(".config")))?;
    Some(config.join("autostart").join("claudemesh.desktop"))
}

/// Writes or removes the autostart entry for `exe`.
pub fn set(enabled: bool, exe: &Path) -> Result<(), String> {
    if !cfg!(all(unix, not(target_os = "macos"))) {
        return Err("start at login is only supported on Linux desktops so far".into());
    }
    let path = entry_path().ok_or("cannot find the user's config directory")?;
    if !enabled {
        return match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!("cannot remove {}: {e}", path.display())),
        };
    }
    let entry = format!(
        "[Desktop Entry]\nType=Application\nName=claudemesh\nComment=Connect Claude Code sessions into a mesh\nExec={} --minimized\nIcon=claudemesh\nTerminal=false\nX-GNOME-Autostart-enabled=true\n",
        crate::claude_code::shell_quote(&exe.display().to_string())
    );
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    std::fs::write(&path, entry).map_err(|e| format!("cannot write {}: {e}", path.display()))
}
