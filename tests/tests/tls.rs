//! A broker behind a TLS-terminating proxy, as it is deployed: `https://` API calls and `wss://`
//! mesh connections, with the proxy's certificate verified against `CLAUDEMESH_CA_FILE`.

use std::process::Output;
use std::sync::Arc;

use anyhow::Result;
use claudemesh_e2e::{Broker, Device};
use serde_json::Value;
use tokio_rustls::rustls;

/// A TLS proxy for `localhost` in front of the broker; returns its port and certificate (PEM).
async fn tls_proxy(broker_port: u16) -> Result<(u16, String)> {
    let issued = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])?;
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(issued.signing_key.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![issued.cert.der().clone()], key)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut client) = acceptor.accept(client).await else { return };
                let Ok(mut upstream) = tokio::net::TcpStream::connect(("127.0.0.1", broker_port)).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    });
    Ok((port, issued.cert.pem()))
}

fn run(device: &Device, ca_file: Option<&std::path::Path>, args: &[&str]) -> Output {
    let mut command = device.command();
    if let Some(path) = ca_file {
        command.env("CLAUDEMESH_CA_FILE", path);
    }
    command.args(args).output().expect("claudemesh runs")
}

fn json_of(output: &Output) -> Value {
    assert!(output.status.success(), "failed: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("one JSON object on stdout")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_behind_tls_is_reached_over_https_and_wss_with_its_certificate_checked() -> Result<()> {
    let broker = Broker::start().await?;
    let (proxy_port, pem) = tls_proxy(broker.port).await?;
    let certificates = tempfile::tempdir()?;
    let ca_file = certificates.path().join("broker.pem");
    std::fs::write(&ca_file, pem)?;
    let secure_url = format!("https://localhost:{proxy_port}");

    broker.operator(&["mesh", "create", "--name", "secure"])?;
    let invite = |url: &str| -> Result<String> {
        let made =
            broker.operator(&["invite", "create", "--mesh", "secure", "--max-uses", "2", "--public-url", url])?;
        Ok(made["link"].as_str().expect("link").to_owned())
    };
    let secure_link = invite(&secure_url)?;

    // Without the operator's certificate the proxy is not trusted: nothing is sent.
    let stranger = Device::new()?;
    let refused = run(&stranger, None, &["join", &secure_link, "--name", "stranger"]);
    assert_eq!(refused.status.code(), Some(4), "{}", String::from_utf8_lossy(&refused.stderr));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("certificate"), "says why");

    // With it, the join goes over https and the mesh connection over wss.
    let alice = Device::new()?;
    let joined = json_of(&run(&alice, Some(&ca_file), &["join", &secure_link, "--name", "alice", "--json"]));
    assert_eq!(joined["brokerUrl"], secure_url.as_str());
    let bob = Device::new()?;
    let bob_joined = json_of(&run(&bob, None, &["join", &invite(&broker.url())?, "--name", "bob", "--json"]));
    let bob_key = bob_joined["memberPubkey"].as_str().expect("key");

    // Bob is offline: the message waits for him at the broker.
    let sent = json_of(&run(&alice, Some(&ca_file), &["send", bob_key, "over tls", "--json"]));
    assert_eq!(sent["results"][0]["ok"], true, "{sent}");
    let inbox = json_of(&run(&bob, None, &["inbox", "--json"]));
    let texts: Vec<&str> =
        inbox["messages"].as_array().expect("messages").iter().filter_map(|m| m["text"].as_str()).collect();
    assert_eq!(texts, ["over tls"], "{inbox}");
    Ok(())
}
