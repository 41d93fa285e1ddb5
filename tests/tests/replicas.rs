//! The scale-out topology end to end: PostgreSQL, two `claudemesh-broker serve` replicas on it,
//! and nginx in front with TLS and WebSocket upgrade, configured by `packaging/nginx/claudemesh.conf`
//! itself. Devices join through the one public address, their bridges message each other, and
//! when one replica is killed they carry on through the other.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use broker_core::testing::postgres::PostgresServer;
use claudemesh_e2e::{Device, WAIT, broker_bin, free_port, peer_names, workspace_root};
use serde_json::json;
use tokio::process::{Child, Command};

/// A certificate authority and a server certificate for `localhost` it signed, as PEM files.
fn certificates(dir: &Path) -> Result<()> {
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, "claudemesh replicas test CA");
    ca.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::DigitalSignature];
    let ca_key = rcgen::KeyPair::generate()?;
    std::fs::write(dir.join("ca.pem"), ca.self_signed(&ca_key)?.pem())?;
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let mut server = rcgen::CertificateParams::new(vec!["localhost".to_owned()])?;
    server.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let key = rcgen::KeyPair::generate()?;
    std::fs::write(dir.join("server.pem"), server.signed_by(&key, &issuer)?.pem())?;
    std::fs::write(dir.join("server.key"), key.serialize_pem())?;
    Ok(())
}

/// nginx with the packaged configuration, where only what it marks CHANGE is changed: the
/// name, the certificate, the replicas' addresses, and (to run unprivileged on a free port) the
/// listening address.
async fn start_nginx(dir: &Path, port: u16, replicas: &[u16]) -> Result<Child> {
    let packaged = std::fs::read_to_string(workspace_root().join("packaging/nginx/claudemesh.conf"))?;
    let mut upstreams = replicas.iter().map(|p| format!("server 127.0.0.1:{p} max_fails=1 fail_timeout=5s;"));
    let mut site = String::new();
    for line in packaged.lines() {
        let trimmed = line.trim();
        let replaced = if trimmed.starts_with("server 127.0.0.1:") {
            upstreams.next().unwrap_or_default()
        } else if trimmed == "listen 443 ssl;" {
            format!("listen 127.0.0.1:{port} ssl;")
        } else if trimmed == "listen [::]:443 ssl;" {
            String::new()
        } else if trimmed.starts_with("server_name ") {
            "server_name localhost;".to_owned()
        } else if trimmed.starts_with("ssl_certificate ") {
            format!("ssl_certificate {};", dir.join("server.pem").display())
        } else if trimmed.starts_with("ssl_certificate_key ") {
            format!("ssl_certificate_key {};", dir.join("server.key").display())
        } else {
            line.to_owned()
        };
        site.push_str(&replaced);
        site.push('\n');
    }
    std::fs::write(dir.join("claudemesh.conf"), site)?;
    let temp = dir.join("nginx-temp");
    std::fs::create_dir_all(&temp)?;
    std::fs::write(
        dir.join("nginx.conf"),
        format!(
            // One process, no master and workers: killed with the test, nothing of it outlives it.
            "daemon off;\nmaster_process off;\npid {pid};\nerror_log stderr warn;\nevents {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {temp}/body;\n  proxy_temp_path {temp}/proxy;\n  \
             fastcgi_temp_path {temp}/fastcgi;\n  uwsgi_temp_path {temp}/uwsgi;\n  scgi_temp_path {temp}/scgi;\n  \
             include {site};\n}}\n",
            pid = dir.join("nginx.pid").display(),
            temp = temp.display(),
            site = dir.join("claudemesh.conf").display(),
        ),
    )?;
    // Debian puts it in /usr/sbin, which is not on every user's PATH.
    let binary = if Path::new("/usr/sbin/nginx").exists() { "/usr/sbin/nginx" } else { "nginx" };
    let mut nginx = Command::new(binary)
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting nginx (scripts/install-deps.sh test installs it)")?;
    wait_listening(port, &mut nginx).await?;
    Ok(nginx)
}

async fn wait_listening(port: u16, process: &mut Child) -> Result<()> {
    let deadline = Instant::now() + WAIT;
    while tokio::net::TcpStream::connect(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).await.is_err() {
        if let Some(status) = process.try_wait()? {
            bail!("exited before listening on {port}: {status}");
        }
        if Instant::now() > deadline {
            bail!("nothing listens on {port}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// A replica: `serve` on the database, behind the proxy on this machine.
async fn start_replica(data: &Path, database_url: &str, public_url: &str, port: u16) -> Result<Child> {
    let mut replica = Command::new(broker_bin())
        .arg("--data-dir")
        .arg(data)
        .arg("--database-url")
        .arg(database_url)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--public-url", public_url, "--trust-proxy"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    wait_listening(port, &mut replica).await?;
    Ok(replica)
}

fn operator(data: &Path, database_url: &str, args: &[&str]) -> Result<serde_json::Value> {
    let output = std::process::Command::new(broker_bin())
        .arg("--data-dir")
        .arg(data)
        .arg("--database-url")
        .arg(database_url)
        .args(args)
        .arg("--json")
        .output()?;
    if !output.status.success() {
        bail!("{args:?}: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(serde_json::from_slice(&output.stdout)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_use_two_replicas_behind_nginx_and_survive_losing_one() -> Result<()> {
    let database = PostgresServer::start();
    let database_url = database.create_database("claudemesh");
    let dir = tempfile::tempdir()?;
    certificates(dir.path())?;
    let (proxy_port, replica_ports) = (free_port(), [free_port(), free_port()]);
    let public_url = format!("https://localhost:{proxy_port}");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data)?;

    let mut replicas = Vec::new();
    for port in replica_ports {
        replicas.push(start_replica(&data, &database_url, &public_url, port).await?);
    }
    let _nginx = start_nginx(dir.path(), proxy_port, &replica_ports).await?;

    operator(&data, &database_url, &["mesh", "create", "--name", "team"])?;
    let invite = operator(&data, &database_url, &["invite", "create", "--mesh", "team", "--max-uses", "2"])?;
    let link = invite["link"].as_str().context("an invite link")?;
    assert!(link.contains(&format!("localhost:{proxy_port}")) || invite.to_string().contains(&public_url), "{invite}");

    let ca = dir.path().join("ca.pem").display().to_string();
    let (mut alice_dev, mut bob_dev) = (Device::new()?, Device::new()?);
    alice_dev.set_env("CLAUDEMESH_CA_FILE", &ca);
    bob_dev.set_env("CLAUDEMESH_CA_FILE", &ca);
    alice_dev.join(link, "alice")?;
    bob_dev.join(link, "bob")?;
    let mut alice = alice_dev.bridge().await?;
    let mut bob = bob_dev.bridge().await?;
    alice.call_until("list_peers", json!({}), |list| peer_names(list).contains(&"bob".to_owned())).await?;

    let hello = "through-nginx-to-bob";
    let sent = alice.call("send_message", json!({"to": "bob", "message": hello})).await?;
    assert_eq!(sent["results"][0]["ok"], true, "{sent}");
    assert!(bob.channel_message(hello, WAIT).await.is_some(), "bob is notified");

    // One replica dies: both bridges reconnect through nginx to the other, and messages flow.
    replicas[0].kill().await?;
    let after = "after-a-replica-died";
    let deadline = Instant::now() + Duration::from_secs(30);
    // Until alice's bridge is back (through nginx, on the survivor) and sees bob there.
    while let Err(error) = alice.call("send_message", json!({"to": "bob", "message": after})).await {
        if Instant::now() > deadline {
            bail!("alice could not send after a replica died: {error}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(bob.channel_message(after, Duration::from_secs(30)).await.is_some(), "bob gets it through the survivor");
    let reply = "bob-answers";
    bob.call_until("list_peers", json!({}), |list| peer_names(list).contains(&"alice".to_owned())).await?;
    let sent = bob.call("send_message", json!({"to": "alice", "message": reply})).await?;
    assert_eq!(sent["results"][0]["ok"], true, "{sent}");
    assert!(alice.channel_message(reply, WAIT).await.is_some(), "alice is notified");
    Ok(())
}
