//! One app per config directory. The running app listens on `run/desktop.sock`; starting
//! `claudemesh` again (from the launcher, or the OS opening a `claudemesh://` link) connects
//! there, asks it to show its window or open the link, and ends.

use std::path::Path;
use std::sync::Arc;

use tauri::{AppHandle, Runtime};

use super::desktop::Desktop;

#[cfg(unix)]
type Listener = std::os::unix::net::UnixListener;
#[cfg(not(unix))]
type Listener = ();

pub enum Claim {
    /// This process is the app; serve the listener.
    Primary(Listener),
    /// Another process is the app and got the request.
    Forwarded,
}

#[cfg(unix)]
pub fn claim(run_dir: &Path, link: Option<&str>) -> Result<Claim, String> {
    use std::io::Write as _;
    let path = run_dir.join("desktop.sock");
    if let Ok(mut stream) = std::os::unix::net::UnixStream::connect(&path) {
        let request = match link {
            Some(link) => format!("open {link}\n"),
            None => "show\n".to_owned(),
        };
        if stream.write_all(request.as_bytes()).is_ok() {
            return Ok(Claim::Forwarded);
        }
    }
    crate::config::ConfigDir::ensure_private_dir(run_dir).map_err(|e| e.to_string())?;
    // Nobody answered: whatever is there is left from an app that ended.
    let _ = std::fs::remove_file(&path);
    let listener = std::os::unix::net::UnixListener::bind(&path)
        .map_err(|e| format!("cannot listen on {}: {e}", path.display()))?;
    Ok(Claim::Primary(listener))
}

#[cfg(not(unix))]
pub fn claim(_run_dir: &Path, _link: Option<&str>) -> Result<Claim, String> {
    Ok(Claim::Primary(()))
}

/// Answers later starts: `show` brings the window up, `open <link>` opens a link.
#[cfg(unix)]
pub async fn serve<R: Runtime>(listener: Listener, app: AppHandle<R>, desktop: Arc<Desktop>) {
    use tokio::io::AsyncBufReadExt as _;
    let listener = match listener.set_nonblocking(true).and_then(|()| tokio::net::UnixListener::from_std(listener)) {
        Ok(listener) => listener,
        Err(error) => {
            tracing::warn!(%error, "the single-instance socket does not work; later starts open a second app");
            return;
        }
    };
    while let Ok((stream, _)) = listener.accept().await {
        let mut lines = tokio::io::BufReader::new(stream).lines();
        if let Ok(Some(line)) = lines.next_line().await {
            match line.strip_prefix("open ") {
                Some(link) => {
                    if let Err(error) = desktop.open_link(link) {
                        tracing::warn!(%error, "could not open a link");
                    }
                }
                None => super::show_window(&app),
            }
        }
    }
}

#[cfg(not(unix))]
pub async fn serve<R: Runtime>(_listener: Listener, _app: AppHandle<R>, _desktop: Arc<Desktop>) {}
