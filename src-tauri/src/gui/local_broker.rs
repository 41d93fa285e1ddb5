//! The embedded local broker: broker-core's `serve` in this process, on 127.0.0.1 (or every
//! interface when the person shares it on the LAN), with its SQLite store in a data directory.
//!
//! It is what "Just this computer" runs: the person at the machine becomes the owner of an
//! account on it without any code ([`LocalBroker::sign_in_owner`]), exactly as a device that
//! signed in through a device login would hold a token.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use broker_core::config::BrokerConfig;
use broker_core::operator::DATABASE_FILE;
use broker_core::protocol::account::{AccountInfo, TokenResponse};
use broker_core::server::{Broker, serve};
use broker_core::store::{DeviceInfo, Durability, SqliteStore, Store};
use tokio_util::sync::CancellationToken;

/// How long the owner's token lives. The token is renewed by use; the local broker is this
/// person's own, so it outlives any sensible pause.
const OWNER_TOKEN_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum LocalBrokerError {
    #[error("port {port} is already in use; choose another port for the local broker in Settings")]
    PortInUse { port: u16 },
    #[error("cannot listen on {address}: {source}")]
    Listen { address: SocketAddr, source: std::io::Error },
    #[error("the local broker's data directory {path} cannot be used: {message}")]
    Store { path: PathBuf, message: String },
    #[error("the local broker could not sign you in: {0}")]
    SignIn(String),
}

/// A running embedded broker. Dropping it without [`LocalBroker::stop`] still stops it (the
/// cancellation token is cancelled), but only `stop` waits for the final commit.
pub struct LocalBroker {
    port: u16,
    share_on_lan: bool,
    data_dir: PathBuf,
    store: Arc<SqliteStore>,
    /// Cancelled to shut `serve` down; `serve` then closes sessions and commits what is queued.
    stop: CancellationToken,
    /// The `serve` task; taken by [`LocalBroker::stop`] to wait for it.
    served: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl LocalBroker {
    /// Opens the store and starts serving on `port` (0: any free port). With
    /// `fall_back_to_free_port` (the very first start), a taken `port` means any free one.
    pub async fn start(
        data_dir: &Path,
        port: u16,
        share_on_lan: bool,
        fall_back_to_free_port: bool,
    ) -> Result<LocalBroker, LocalBrokerError> {
        let ip = if share_on_lan { IpAddr::V4(Ipv4Addr::UNSPECIFIED) } else { IpAddr::V4(Ipv4Addr::LOCALHOST) };
        let address = SocketAddr::new(ip, port);
        let listener = match tokio::net::TcpListener::bind(address).await {
            Ok(listener) => listener,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && fall_back_to_free_port => {
                let any = SocketAddr::new(ip, 0);
                tokio::net::TcpListener::bind(any)
                    .await
                    .map_err(|source| LocalBrokerError::Listen { address: any, source })?
            }
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => return Err(LocalBrokerError::PortInUse { port }),
            Err(source) => return Err(LocalBrokerError::Listen { address, source }),
        };
        let port = listener.local_addr().map_err(|source| LocalBrokerError::Listen { address, source })?.port();
        let store = {
            let dir = data_dir.to_owned();
            tokio::task::spawn_blocking(move || -> Result<Arc<SqliteStore>, LocalBrokerError> {
                let failed = |message: String| LocalBrokerError::Store { path: dir.clone(), message };
                crate::config::ConfigDir::ensure_private_dir(&dir).map_err(|e| failed(e.to_string()))?;
                SqliteStore::open(&dir.join(DATABASE_FILE), Durability::Full).map_err(|e| failed(e.to_string()))
            })
            .await
            .map_err(|e| LocalBrokerError::Store { path: data_dir.to_owned(), message: e.to_string() })??
        };
        let public_url = public_url(port, share_on_lan);
        let broker = Broker::new(BrokerConfig::default(), store.clone(), public_url, None, None);
        let stop = CancellationToken::new();
        let served = tokio::spawn(serve(listener, broker, stop.clone().cancelled_owned()));
        tracing::info!(port, share_on_lan, "local broker started");
        Ok(LocalBroker { port, share_on_lan, data_dir: data_dir.to_owned(), store, stop, served: Some(served) })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The URL this machine's own clients use.
    pub fn url(&self) -> String {
        local_url(self.port)
    }

    /// The URL other machines on the LAN use, when it is shared.
    pub fn lan_url(&self) -> Option<String> {
        self.share_on_lan.then(|| public_url(self.port, true))
    }

    /// Makes the person at this machine the owner of `account_name` on this broker (creating
    /// the account) and returns a token response as a device login would.
    pub async fn sign_in_owner(
        &self,
        account_name: &str,
        confirm_key: &broker_core::crypto::Keypair,
    ) -> Result<TokenResponse, LocalBrokerError> {
        let store = self.store.clone();
        let account_name = account_name.to_owned();
        let device = crate::account::this_device(confirm_key);
        tokio::task::spawn_blocking(move || {
            let info = DeviceInfo {
                hostname: device.hostname,
                platform: device.platform,
                arch: device.arch,
                app_version: device.app_version,
                ip: "127.0.0.1".into(),
                confirm_key: device.confirm_key,
            };
            let store: &dyn Store = store.as_ref();
            broker_core::operator::sign_in_locally(store, &account_name, &info, OWNER_TOKEN_TTL)
        })
        .await
        .map_err(|e| LocalBrokerError::SignIn(e.to_string()))?
        .map(|(account, device, token)| TokenResponse {
            access_token: token,
            token_type: "Bearer".into(),
            expires_in: OWNER_TOKEN_TTL.as_secs(),
            device_id: device.id,
            account: AccountInfo { id: account.id, name: account.name, email: account.email },
        })
        .map_err(|e| LocalBrokerError::SignIn(e.to_string()))
    }

    /// Stops serving: sessions are closed, and everything queued is committed before this returns.
    pub async fn stop(mut self) {
        self.stop.cancel();
        let Some(served) = self.served.take() else { return };
        match served.await {
            Ok(Ok(())) => tracing::info!("local broker stopped"),
            Ok(Err(error)) => tracing::warn!(%error, "local broker ended with an error"),
            Err(error) => tracing::warn!(%error, "local broker task failed"),
        }
    }
}

impl Drop for LocalBroker {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub fn local_url(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

/// The address peers are told to use: this machine's LAN address when shared, loopback otherwise.
fn public_url(port: u16, share_on_lan: bool) -> String {
    match share_on_lan.then(lan_address).flatten() {
        Some(ip) => format!("http://{ip}:{port}"),
        None => local_url(port),
    }
}

/// This machine's address on its LAN: the source address the kernel would pick for an outside
/// destination. A UDP `connect` only consults the routing table; no packet is sent.
fn lan_address() -> Option<IpAddr> {
    let socket = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).ok()?;
    socket.connect((Ipv4Addr::new(192, 0, 2, 1), 9)).ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_unspecified() && !ip.is_loopback()).then_some(ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn serves_on_loopback_signs_the_owner_in_and_refuses_a_taken_port() {
        let dir = tempfile::tempdir().expect("tempdir");
        let broker = LocalBroker::start(dir.path(), 0, false, false).await.expect("starts");
        assert!(broker.url().starts_with("http://127.0.0.1:"));
        assert_eq!(broker.lan_url(), None, "not shared unless asked");
        let (status, body) =
            crate::http::request(hyper::Method::GET, &broker.url(), "/health", None, None).await.expect("answers");
        assert_eq!(status, 200, "{body:?}");

        let confirm_key = broker_core::crypto::Keypair::generate();
        let token = broker.sign_in_owner("alice", &confirm_key).await.expect("signs in");
        assert_eq!(token.account.name, "alice");
        let api = crate::account::Api::new(&broker.url(), zeroize::Zeroizing::new(token.access_token));
        assert!(api.devices().await.expect("the token works").iter().any(|d| d.current));
        // The owner's device registered its confirmation key: minting a login token needs it.
        let unconfirmed = api.login_token().await;
        assert!(
            matches!(&unconfirmed, Err(crate::account::AccountError::Refused { code, .. }) if code == "confirmation_required"),
            "{unconfirmed:?}"
        );
        let confirmed = api.confirmed_by(&token.device_id, confirm_key);
        assert!(confirmed.login_token().await.expect("confirmed").login_token.starts_with("cml_"));

        let other = tempfile::tempdir().expect("tempdir");
        let taken = LocalBroker::start(other.path(), broker.port(), false, false).await;
        assert!(matches!(taken, Err(LocalBrokerError::PortInUse { .. })), "{:?}", taken.err());
        let fallback = LocalBroker::start(other.path(), broker.port(), false, true).await.expect("falls back");
        assert_ne!(fallback.port(), broker.port());
        fallback.stop().await;
        broker.stop().await;
    }
}
