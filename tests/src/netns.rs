//! Other machines on one host: Linux network namespaces (`ip netns`) joined by veth pairs.
//!
//! A [`Namespace`] is a machine with its own interfaces, addresses, routes, ports and
//! `/etc/hosts`; it starts with only `lo` (up) and is deleted when the last handle to it is
//! dropped, so a failing test leaves nothing behind. [`Namespace::link`] cables two of them with
//! addresses the test chooses, [`Namespace::command`] starts a program inside one (`ip netns exec`,
//! the environment passes through), and [`Namespace::connect`] / [`Namespace::listen`] give the
//! test's own code sockets that live there (a proxy or an attacker written in the test).
//!
//! Names are unique per process and call (`cm<pid>x<n><role>`), since namespaces are global to
//! the host. Addresses need not be: every interface a test creates lives inside its own
//! namespaces (both ends of a veth pair are created there), so two tests using 10.1.0.0/24 at
//! once never see each other. Creating namespaces needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN).

use std::ffi::OsStr;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsFd as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};

/// How long [`Namespace::connect`] waits for a TCP handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A network namespace: one "machine". Clones are handles to the same namespace; the last one
/// dropped deletes it (and its `/etc/netns/<name>` directory).
#[derive(Clone)]
pub struct Namespace {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    /// What the test calls this machine; interfaces leading here are named after it.
    role: String,
    /// Host names this machine resolves, written to `/etc/netns/<name>/hosts`, which `ip netns
    /// exec` mounts over `/etc/hosts` for the programs it starts.
    hosts: Mutex<Vec<(String, IpAddr)>>,
}

impl Namespace {
    /// Creates a namespace for `role` (a short word: it is part of the name) with `lo` up.
    pub fn create(role: &str) -> Result<Namespace> {
        static CREATED: AtomicU32 = AtomicU32::new(0);
        let name = format!("cm{}x{}{role}", std::process::id(), CREATED.fetch_add(1, Ordering::Relaxed));
        ip(["netns", "add", &name]).context("creating a network namespace needs root (ip netns add)")?;
        let namespace = Namespace { inner: Arc::new(Inner { name, role: role.to_owned(), hosts: Mutex::default() }) };
        ip(["-n", namespace.name(), "link", "set", "lo", "up"])?;
        Ok(namespace)
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// A veth pair between this namespace and `other`, with `address` here and `other_address`
    /// there, both in `/prefix`. The interfaces are named after the namespace they lead to.
    pub fn link(&self, address: Ipv4Addr, other: &Namespace, other_address: Ipv4Addr, prefix: u8) -> Result<()> {
        let (here, there) = (interface_to(other), interface_to(self));
        ip([
            "link",
            "add",
            &here,
            "netns",
            self.name(),
            "type",
            "veth",
            "peer",
            "name",
            &there,
            "netns",
            other.name(),
        ])?;
        for (namespace, interface, address) in [(self, &here, address), (other, &there, other_address)] {
            ip(["-n", namespace.name(), "addr", "add", &format!("{address}/{prefix}"), "dev", interface])?;
            ip(["-n", namespace.name(), "link", "set", interface, "up"])?;
        }
        Ok(())
    }

    /// Sends everything this namespace has no better route for to `gateway`, as a machine on a
    /// LAN does (and what the desktop app reads its LAN address from).
    pub fn default_route(&self, gateway: Ipv4Addr) -> Result<()> {
        ip(["-n", self.name(), "route", "add", "default", "via", &gateway.to_string()])
    }

    /// Makes `host` resolve to `address` for programs started with [`Namespace::command`].
    pub fn resolve(&self, host: &str, address: IpAddr) -> Result<()> {
        let mut hosts = self.inner.hosts.lock().expect("hosts lock");
        hosts.push((host.to_owned(), address));
        let mut file = String::from("127.0.0.1 localhost\n::1 localhost\n");
        for (host, address) in hosts.iter() {
            file.push_str(&format!("{address} {host}\n"));
        }
        std::fs::create_dir_all(self.inner.etc())?;
        std::fs::write(self.inner.etc().join("hosts"), file)?;
        Ok(())
    }

    /// `program` run inside this namespace (`ip netns exec <name> program`, which execs it: the
    /// child's pid is the program's own).
    pub fn command(&self, program: impl AsRef<OsStr>) -> std::process::Command {
        let mut command = std::process::Command::new("ip");
        command.args(["netns", "exec", self.name()]).arg(program);
        command
    }

    /// [`Namespace::command`] for tokio.
    pub fn async_command(&self, program: impl AsRef<OsStr>) -> tokio::process::Command {
        tokio::process::Command::from(self.command(program))
    }

    /// A TCP connection made from inside this namespace.
    pub async fn connect(&self, address: SocketAddr) -> io::Result<tokio::net::TcpStream> {
        let stream = self
            .inside(move || {
                let stream = std::net::TcpStream::connect_timeout(&address, CONNECT_TIMEOUT)?;
                stream.set_nonblocking(true)?;
                Ok(stream)
            })
            .await?;
        tokio::net::TcpStream::from_std(stream)
    }

    /// A TCP listener bound inside this namespace.
    pub async fn listen(&self, address: SocketAddr) -> io::Result<tokio::net::TcpListener> {
        let listener = self
            .inside(move || {
                let listener = std::net::TcpListener::bind(address)?;
                listener.set_nonblocking(true)?;
                Ok(listener)
            })
            .await?;
        tokio::net::TcpListener::from_std(listener)
    }

    /// Runs `make` on a new thread that entered this namespace. A socket belongs to the
    /// namespace it was created in, whichever thread uses it later. The thread is never reused
    /// (a pooled one would run unrelated work, such as name lookups, in the wrong namespace).
    async fn inside<T: Send + 'static>(&self, make: impl FnOnce() -> io::Result<T> + Send + 'static) -> io::Result<T> {
        let namespace = std::fs::File::open(self.inner.path())?;
        let (made, result) = tokio::sync::oneshot::channel();
        std::thread::Builder::new().name(format!("netns {}", self.name())).spawn(move || {
            let entered = rustix::thread::move_into_link_name_space(
                namespace.as_fd(),
                Some(rustix::thread::LinkNameSpaceType::Network),
            );
            let _ = made.send(entered.map_err(io::Error::from).and_then(|()| make()));
        })?;
        result.await.map_err(|_| io::Error::other("the namespace thread ended without an answer"))?
    }
}

impl Inner {
    fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    fn etc(&self) -> PathBuf {
        PathBuf::from("/etc/netns").join(&self.name)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Processes still inside keep the namespace alive until they end; the name goes now.
        if let Err(error) = ip(["netns", "delete", &self.name]) {
            eprintln!("leaving network namespace {} behind: {error:#}", self.name);
        }
        let _ = std::fs::remove_dir_all(self.etc());
    }
}

/// The name of the interface that leads to `namespace` (at most 15 bytes, as Linux wants).
fn interface_to(namespace: &Namespace) -> String {
    format!("to-{}", namespace.inner.role).chars().take(15).collect()
}

fn ip<const N: usize>(args: [&str; N]) -> Result<()> {
    let output = std::process::Command::new("ip").args(args).output().context("running ip (iproute2)")?;
    if !output.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(())
}
