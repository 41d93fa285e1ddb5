//! The broker, its peers and an attacker on different machines: each in its own network
//! namespace, cabled with veth pairs (`claudemesh_e2e::netns`). What loopback never shows:
//! plain http to another host, TLS with a private CA, the desktop's local broker seen from the
//! LAN, and an active man-in-the-middle on the path. Needs root (`ip netns`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context as _, Result, bail};
use base64::Engine as _;
use claudemesh_e2e::desktop::DesktopApp;
use claudemesh_e2e::{Broker, Device, Namespace};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::rustls;

/// The port brokers listen on inside their namespace (each namespace has all ports to itself).
const BROKER_PORT: u16 = 7900;

/// Two machines on one LAN segment: `first` at 10.1.0.1 and `second` at 10.1.0.2.
fn lan(first: &str, second: &str) -> Result<(Namespace, Ipv4Addr, Namespace, Ipv4Addr)> {
    let (a, b) = (Namespace::create(first)?, Namespace::create(second)?);
    let (a_address, b_address) = (Ipv4Addr::new(10, 1, 0, 1), Ipv4Addr::new(10, 1, 0, 2));
    a.link(a_address, &b, b_address, 24)?;
    Ok((a, a_address, b, b_address))
}

fn json_of(output: &Output) -> Value {
    assert!(output.status.success(), "failed: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("one JSON object on stdout")
}

fn run(device: &Device, args: &[&str]) -> Result<Output> {
    Ok(device.command().args(args).stdin(Stdio::null()).output()?)
}

fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

// ---------------------------------------------------------------------------------------------
// Signing in over plain http

/// A broker on `server` (10.1.0.1), started with `serve_args`, and a device on `laptop`.
async fn broker_across_the_lan(serve_args: &[&str]) -> Result<(Broker, Device, [Namespace; 2])> {
    let (server, server_address, laptop, _) = lan("server", "laptop")?;
    let listen = SocketAddr::from((server_address, BROKER_PORT));
    let broker = Broker::start_in(&server, listen, &format!("http://{listen}"), serve_args).await?;
    broker.operator(&["account", "create", "--name", "alice"])?;
    let device = Device::in_namespace(&laptop)?;
    Ok((broker, device, [server, laptop]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_refuses_to_sign_in_over_plain_http_to_another_machine_before_asking_for_a_code() -> Result<()> {
    let (broker, device, _machines) = broker_across_the_lan(&["--allow-insecure-http"]).await?;
    let refused = run(&device, &["login", "--broker", &broker.url(), "--name", "laptop", "--json"])?;
    assert_eq!(refused.status.code(), Some(2), "{}", stderr_of(&refused));
    let why = stderr_of(&refused);
    assert!(why.contains("plain http://") && why.contains("CLAUDEMESH_ALLOW_INSECURE_HTTP=1"), "{why}");
    assert!(!device.config.path().join("config.json").exists(), "nothing was saved");
    // The broker would have answered (it allows plain http): the client never asked.
    assert!(!broker.log()?.contains("device login requested"), "no device code was asked for");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_issues_no_sign_in_over_plain_http_to_another_machine_unless_its_operator_allows_it() -> Result<()> {
    // The person overrides the client's refusal; the broker still says no, before any work.
    let (broker, mut device, _machines) = broker_across_the_lan(&[]).await?;
    device.set_env("CLAUDEMESH_ALLOW_INSECURE_HTTP", "1");
    let refused = run(&device, &["login", "--broker", &broker.url(), "--name", "laptop", "--json"])?;
    assert_eq!(refused.status.code(), Some(5), "{}", stderr_of(&refused));
    assert!(stderr_of(&refused).contains("insecure_transport"), "{}", stderr_of(&refused));
    assert!(!broker.log()?.contains("device login requested"), "refused before any code was made");

    // Both ends allow plain http (a network both trust): the login goes through.
    let (broker, mut device, _machines) = broker_across_the_lan(&["--allow-insecure-http"]).await?;
    device.set_env("CLAUDEMESH_ALLOW_INSECURE_HTTP", "1");
    let login = device.start_login(&broker.url(), Some("alice"), "laptop")?;
    assert!(broker.log()?.contains("device login requested"), "the code request reached the broker");
    broker.operator(&["device", "approve", &login.code, "--account", "alice"])?;
    assert_eq!(login.finish()?["account"], "alice");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// TLS with a private CA

/// A certificate authority the test made; the operator hands its certificate to clients with
/// `CLAUDEMESH_CA_FILE`.
struct PrivateCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pem: String,
}

impl PrivateCa {
    fn new(name: &str) -> Result<PrivateCa> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::DigitalSignature];
        let key = rcgen::KeyPair::generate()?;
        let pem = params.self_signed(&key)?.pem();
        Ok(PrivateCa { issuer: rcgen::Issuer::new(params, key), pem })
    }

    /// A server certificate for `host`, as a TLS server configuration.
    fn server_config(&self, host: &str) -> Result<Arc<rustls::ServerConfig>> {
        let mut params = rcgen::CertificateParams::new(vec![host.to_owned()])?;
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let key = rcgen::KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], key)?;
        Ok(Arc::new(config))
    }
}

/// Accepts connections on `listen` inside `namespace` and hands each, with a connection to
/// `upstream` made there too, to `relay`.
async fn serve_relay<F, R>(namespace: &Namespace, listen: SocketAddr, upstream: SocketAddr, relay: F) -> Result<()>
where
    F: Fn(TcpStream, TcpStream) -> R + Send + Sync + 'static,
    R: Future<Output = ()> + Send + 'static,
{
    let listener = namespace.listen(listen).await?;
    let namespace = namespace.clone();
    tokio::spawn(async move {
        let relay = Arc::new(relay);
        while let Ok((client, _)) = listener.accept().await {
            let (namespace, relay) = (namespace.clone(), relay.clone());
            tokio::spawn(async move {
                if let Ok(upstream) = namespace.connect(upstream).await {
                    relay(client, upstream).await;
                }
            });
        }
    });
    Ok(())
}

/// A TLS-terminating reverse proxy in front of the broker, as it is deployed.
async fn tls_proxy(
    namespace: &Namespace,
    listen: SocketAddr,
    broker: SocketAddr,
    config: Arc<rustls::ServerConfig>,
) -> Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    serve_relay(namespace, listen, broker, move |client, mut upstream| {
        let acceptor = acceptor.clone();
        async move {
            let Ok(mut client) = acceptor.accept(client).await else { return };
            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_private_ca_works_and_a_wrong_certificate_is_refused() -> Result<()> {
    let (server, server_address, laptop, _) = lan("server", "laptop")?;
    laptop.resolve("broker.test", IpAddr::V4(server_address))?;
    // The broker listens on the server's loopback; only its TLS proxy faces the network.
    let broker_address = SocketAddr::from((Ipv4Addr::LOCALHOST, BROKER_PORT));
    let broker = Broker::start_in(&server, broker_address, "https://broker.test", &[]).await?;
    let ca = PrivateCa::new("claudemesh test CA")?;
    let impostor = PrivateCa::new("another CA")?;
    let proxied = [(443, ca.server_config("broker.test")?), (8443, impostor.server_config("broker.test")?)];
    let proxied = proxied.into_iter().chain([(9443, ca.server_config("other.test")?)]);
    for (port, config) in proxied {
        tls_proxy(&server, SocketAddr::from((server_address, port)), broker_address, config).await?;
    }
    let certificates = tempfile::tempdir()?;
    let ca_file = certificates.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.pem)?;

    broker.operator(&["mesh", "create", "--name", "secure"])?;
    let invite = |url: &str| -> Result<String> {
        let made =
            broker.operator(&["invite", "create", "--mesh", "secure", "--max-uses", "4", "--public-url", url])?;
        Ok(made["link"].as_str().context("link")?.to_owned())
    };
    let link = invite("https://broker.test")?;
    let trusting = |name: &str| -> Result<Device> {
        let mut device = Device::in_namespace(&laptop)?;
        device.set_env("CLAUDEMESH_CA_FILE", ca_file.display().to_string());
        let joined = json_of(&run(&device, &["join", &link, "--name", name, "--json"])?);
        assert_eq!(joined["brokerUrl"], "https://broker.test");
        Ok(device)
    };
    // Two devices of another machine join over https; a message waits for the offline one and
    // is fetched over wss.
    let (alice, bob) = (trusting("alice")?, trusting("bob")?);
    let bob_key = json_of(&run(&bob, &["meshes", "--json"])?)["meshes"][0]["memberPubkey"]
        .as_str()
        .context("bob's key")?
        .to_owned();
    let sent = json_of(&run(&alice, &["send", &bob_key, "over tls from another machine", "--json"])?);
    assert_eq!(sent["results"][0]["ok"], true, "{sent}");
    let inbox = json_of(&run(&bob, &["inbox", "--json"])?);
    assert_eq!(inbox["messages"][0]["text"], "over tls from another machine", "{inbox}");

    // A certificate of another CA, and one of the right CA for another name: refused, saying why.
    for (url, why) in
        [("https://broker.test:8443", "UnknownIssuer"), ("https://broker.test:9443", "not valid for name")]
    {
        let mut device = Device::in_namespace(&laptop)?;
        device.set_env("CLAUDEMESH_CA_FILE", ca_file.display().to_string());
        let refused = run(&device, &["join", &invite(url)?, "--name", "carol"])?;
        assert_eq!(refused.status.code(), Some(4), "{}", stderr_of(&refused));
        let said = stderr_of(&refused);
        assert!(said.contains("invalid peer certificate") && said.contains(why), "{url}: {said}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The desktop's local broker on the LAN

/// Whether a TCP connection from `namespace` to `address` is accepted.
async fn reachable(namespace: &Namespace, address: SocketAddr) -> bool {
    namespace.connect(address).await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_desktops_local_broker_is_unreachable_from_the_lan_until_sharing_is_turned_on() -> Result<()> {
    let (desktop, desktop_address, laptop, laptop_address) = lan("desktop", "laptop")?;
    // The desktop's LAN address is the one its default route leaves from.
    desktop.default_route(laptop_address)?;
    let app = DesktopApp::launch_on(&desktop).await?;
    app.set_up_locally("alice").await?;
    app.open("settings").await?;
    let state = app.wait_text("[data-testid=local-state]", |t| t.starts_with("running on http://127.0.0.1:")).await?;
    let port: u16 = state.rsplit(':').next().context("a port")?.trim().parse()?;
    assert!(reachable(&desktop, SocketAddr::from((Ipv4Addr::LOCALHOST, port))).await, "it runs");
    let from_the_lan = SocketAddr::from((desktop_address, port));
    assert!(!reachable(&laptop, from_the_lan).await, "the LAN cannot connect while sharing is off");
    let laptop_device = Device::in_namespace(&laptop)?;
    let local_link = app.invite_link("personal", 1).await?;
    assert!(local_link.starts_with(&format!("http://127.0.0.1:{port}/")), "{local_link}");
    let refused = run(&laptop_device, &["join", &local_link, "--name", "bob"])?;
    assert_eq!(refused.status.code(), Some(4), "a loopback link leads nowhere elsewhere: {}", stderr_of(&refused));

    // The person turns LAN sharing on in Settings.
    app.open("settings").await?;
    app.click("[data-testid=local-lan] + span").await?;
    app.click("[data-testid=local-save]").await?;
    let lan_url = format!("http://{desktop_address}:{port}");
    app.wait_text("[data-testid=local-broker]", |t| t.contains(&format!("Other machines join through {lan_url}")))
        .await?;
    assert!(reachable(&laptop, from_the_lan).await, "shared: the LAN connects");
    let link = app.invite_link("personal", 1).await?;
    assert!(link.starts_with(&format!("{lan_url}/join/")), "invites name the LAN address: {link}");
    laptop_device.join(&link, "bob")?;
    // The app's own session reconnects to the restarted broker with its backoff.
    let deadline = std::time::Instant::now() + claudemesh_e2e::WAIT;
    let peers = loop {
        let peers = json_of(&run(&laptop_device, &["peers", "--json"])?);
        if peers.to_string().contains("\"alice\"") || std::time::Instant::now() > deadline {
            break peers;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(peers.to_string().contains("\"alice\""), "the laptop's session sees the person at the desktop: {peers}");
    app.close().await
}

// ---------------------------------------------------------------------------------------------
// An active man-in-the-middle

/// What the attacker does to the traffic it relays.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Attack {
    /// Relays every byte unchanged.
    Nothing,
    /// Raises the role of the invite a `POST /join` redeems to admin, keeping its signature.
    EscalateInvite,
    /// Flips a bit of every sealed message's ciphertext on its way to the recipient.
    FlipCiphertext,
    /// Labels every message as sent by this member key, dropping the sender's binding signature.
    ClaimSender(String),
    /// Puts this session key into every hello (taking over the session's routing identity).
    SwapSessionKey(String),
    /// Removes this capability from every hello (`delivery_ack`: pushes count as delivered once
    /// written, so a dropped connection loses them).
    StripCapability(&'static str),
    /// Removes every capability from every hello, as if a reference client had signed it.
    DowngradeHello,
}

/// The attacker's state, shared by its connections: the attack, and how many times it altered
/// something (so a test knows the attack happened).
#[derive(Clone)]
struct Attacker {
    attack: Arc<Mutex<Attack>>,
    altered: Arc<AtomicUsize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Toward {
    Broker,
    Client,
}

impl Attacker {
    fn new() -> Attacker {
        Attacker { attack: Arc::new(Mutex::new(Attack::Nothing)), altered: Arc::default() }
    }

    fn set(&self, attack: Attack) {
        *self.attack.lock().expect("attack lock") = attack;
    }

    fn altered(&self) -> usize {
        self.altered.load(Ordering::SeqCst)
    }

    /// Relays connections from `listen` to the broker at `broker`, altering what the attack says.
    async fn serve(&self, namespace: &Namespace, listen: SocketAddr, broker: SocketAddr) -> Result<()> {
        let attacker = self.clone();
        serve_relay(namespace, listen, broker, move |client, upstream| attacker.clone().relay(client, upstream)).await
    }

    async fn relay(self, client: TcpStream, upstream: TcpStream) {
        let (client_read, client_write) = client.into_split();
        let (upstream_read, upstream_write) = upstream.into_split();
        let _ = tokio::join!(
            self.forward(BufReader::new(client_read), upstream_write, Toward::Broker),
            self.forward(BufReader::new(upstream_read), client_write, Toward::Client),
        );
    }

    /// One direction of a connection: an HTTP message head and body (the body altered when it
    /// is a `POST /join`), then WebSocket frames after an upgrade (text frames altered), or the
    /// rest unchanged. Ends by half-closing `to`, so the other side sees the end too.
    async fn forward(
        &self,
        mut from: BufReader<tokio::net::tcp::OwnedReadHalf>,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        toward: Toward,
    ) -> Result<()> {
        let result = async {
            let Some(head) = read_head(&mut from).await? else { return Ok(()) };
            let length = header(&head, "content-length").map(str::parse::<usize>).transpose()?.unwrap_or(0);
            let mut body = vec![0; length];
            from.read_exact(&mut body).await?;
            if toward == Toward::Broker && head.starts_with("POST /join ") {
                self.alter_join(&mut body)?;
            }
            to.write_all(with_content_length(&head, body.len()).as_bytes()).await?;
            to.write_all(&body).await?;
            let upgraded = header(&head, "upgrade").is_some_and(|u| u.eq_ignore_ascii_case("websocket"));
            if !upgraded {
                tokio::io::copy(&mut from, &mut to).await?;
                return Ok(());
            }
            while let Some(mut frame) = Frame::read(&mut from).await? {
                if frame.is_text() {
                    self.alter_frame(toward, &mut frame.payload)?;
                }
                to.write_all(&frame.encode()).await?;
            }
            Ok(())
        }
        .await;
        let _ = to.shutdown().await;
        result
    }

    fn alter_join(&self, body: &mut Vec<u8>) -> Result<()> {
        if *self.attack.lock().expect("attack lock") != Attack::EscalateInvite {
            return Ok(());
        }
        let mut request: Value = serde_json::from_slice(body)?;
        let token = request["invite"].as_str().context("an invite in the join")?;
        let base64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut invite: Value = serde_json::from_slice(&base64.decode(token)?)?;
        invite["role"] = "admin".into();
        request["invite"] = base64.encode(serde_json::to_vec(&invite)?).into();
        *body = serde_json::to_vec(&request)?;
        self.altered.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn alter_frame(&self, toward: Toward, payload: &mut Vec<u8>) -> Result<()> {
        let attack = self.attack.lock().expect("attack lock").clone();
        let mut frame: Value = serde_json::from_slice(payload)?;
        let is_message = toward == Toward::Client && frame["type"] == "push" && frame["subtype"] != "system";
        let is_hello = toward == Toward::Broker && frame["type"] == "hello";
        match attack {
            Attack::FlipCiphertext if is_message => {
                let base64 = base64::engine::general_purpose::STANDARD;
                let mut ciphertext = base64.decode(frame["ciphertext"].as_str().context("ciphertext")?)?;
                let last = ciphertext.last_mut().context("an empty ciphertext")?;
                *last ^= 0x01;
                frame["ciphertext"] = base64.encode(ciphertext).into();
            }
            Attack::ClaimSender(member) if is_message => {
                frame["senderMemberPubkey"] = member.into();
                frame.as_object_mut().context("a frame is an object")?.remove("senderSessionSig");
            }
            Attack::SwapSessionKey(key) if is_hello => frame["sessionPubkey"] = key.into(),
            Attack::StripCapability(name) if is_hello => {
                let capabilities = frame["capabilities"].as_array_mut().context("capabilities")?;
                let announced = capabilities.len();
                capabilities.retain(|capability| capability != name);
                if capabilities.len() == announced {
                    return Ok(());
                }
            }
            Attack::DowngradeHello if is_hello => {
                let hello = frame.as_object_mut().context("a frame is an object")?;
                hello.remove("capabilities");
                hello.remove("protocolVersion");
            }
            _ => return Ok(()),
        }
        *payload = serde_json::to_vec(&frame)?;
        self.altered.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// Reads an HTTP message head up to its blank line; `None` at a clean end of the stream.
async fn read_head(from: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> Result<Option<String>> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if from.read_line(&mut line).await? == 0 {
            return if head.is_empty() { Ok(None) } else { bail!("the stream ended inside an HTTP head") };
        }
        head.push_str(&line);
        if line == "\r\n" {
            return Ok(Some(head));
        }
        if head.len() > 64 * 1024 {
            bail!("an HTTP head over 64 KiB");
        }
    }
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

/// `head` with its `Content-Length` (when it has one) set to `length`.
fn with_content_length(head: &str, length: usize) -> String {
    head.split_inclusive("\r\n")
        .map(|line| match line.split_once(':') {
            Some((key, _)) if key.trim().eq_ignore_ascii_case("content-length") => format!("{key}: {length}\r\n"),
            _ => line.to_owned(),
        })
        .collect()
}

/// One WebSocket frame (RFC 6455 §5.2), its payload unmasked.
struct Frame {
    /// FIN, RSV and opcode.
    first: u8,
    mask: Option<[u8; 4]>,
    payload: Vec<u8>,
}

impl Frame {
    async fn read(from: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> Result<Option<Frame>> {
        let mut start = [0u8; 2];
        match from.read_exact(&mut start).await {
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(error) => return Err(error.into()),
        }
        let length = match start[1] & 0x7f {
            126 => u64::from(from.read_u16().await?),
            127 => from.read_u64().await?,
            short => u64::from(short),
        };
        let mask = if start[1] & 0x80 != 0 {
            let mut mask = [0u8; 4];
            from.read_exact(&mut mask).await?;
            Some(mask)
        } else {
            None
        };
        let mut payload = vec![0; usize::try_from(length)?];
        from.read_exact(&mut payload).await?;
        if let Some(mask) = mask {
            payload.iter_mut().enumerate().for_each(|(i, byte)| *byte ^= mask[i % 4]);
        }
        Ok(Some(Frame { first: start[0], mask, payload }))
    }

    /// A whole text message (FIN set, opcode 1): a protocol frame.
    fn is_text(&self) -> bool {
        self.first == 0x81
    }

    fn encode(&self) -> Vec<u8> {
        let mut bytes = vec![self.first];
        let masked = if self.mask.is_some() { 0x80 } else { 0 };
        match self.payload.len() {
            short @ 0..=125 => bytes.push(masked | u8::try_from(short).expect("under 126")),
            medium @ 126..=0xffff => {
                bytes.push(masked | 126);
                bytes.extend(u16::try_from(medium).expect("under 65536").to_be_bytes());
            }
            long => {
                bytes.push(masked | 127);
                bytes.extend((long as u64).to_be_bytes());
            }
        }
        match self.mask {
            Some(mask) => {
                bytes.extend(mask);
                bytes.extend(self.payload.iter().enumerate().map(|(i, byte)| byte ^ mask[i % 4]));
            }
            None => bytes.extend(&self.payload),
        }
        bytes
    }
}

/// The messages of a `claudemesh inbox --json`.
fn inbox_messages(device: &Device) -> Result<Vec<Value>> {
    let inbox = json_of(&run(device, &["inbox", "--json"])?);
    Ok(inbox["messages"].as_array().context("messages")?.clone())
}

/// A mesh on a broker in `server`, reached from `laptop` only through an attacker in between:
/// on the laptop's network the broker's name resolves to the attacker (a hostile DNS, or a
/// hostile Wi-Fi), which relays to the real broker. Without TLS — what the attacker can and
/// cannot do there is what docs/security.md claims for a network attacker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_man_in_the_middle_altering_joins_and_messages_is_detected() -> Result<()> {
    let (server, attacker_ns, laptop) =
        (Namespace::create("server")?, Namespace::create("attacker")?, Namespace::create("laptop")?);
    let (server_address, attacker_west) = (Ipv4Addr::new(10, 1, 0, 1), Ipv4Addr::new(10, 1, 0, 2));
    let (attacker_east, laptop_address) = (Ipv4Addr::new(10, 2, 0, 1), Ipv4Addr::new(10, 2, 0, 2));
    server.link(server_address, &attacker_ns, attacker_west, 24)?;
    attacker_ns.link(attacker_east, &laptop, laptop_address, 24)?;
    server.resolve("broker.test", IpAddr::V4(Ipv4Addr::LOCALHOST))?;
    laptop.resolve("broker.test", IpAddr::V4(attacker_east))?;
    let listen = SocketAddr::from((Ipv4Addr::UNSPECIFIED, BROKER_PORT));
    let broker = Broker::start_in(&server, listen, &format!("http://broker.test:{BROKER_PORT}"), &[]).await?;
    let attacker = Attacker::new();
    let (attacker_listen, real_broker) =
        (SocketAddr::from((attacker_east, BROKER_PORT)), SocketAddr::from((server_address, BROKER_PORT)));
    attacker.serve(&attacker_ns, attacker_listen, real_broker).await?;

    let (_, link) = broker.mesh_with_invite("team", 3)?;
    let (alice, carol) = (Device::in_namespace(&server)?, Device::in_namespace(&server)?);
    alice.join(&link, "alice")?;
    carol.join(&link, "carol")?;
    let bob = Device::in_namespace(&laptop)?;

    // An invite escalated to admin on its way to the broker: the signature no longer matches.
    attacker.set(Attack::EscalateInvite);
    let refused = run(&bob, &["join", &link, "--name", "bob"])?;
    assert_eq!(attacker.altered(), 1, "the attacker changed the join");
    assert_eq!(refused.status.code(), Some(5), "{}", stderr_of(&refused));
    assert!(stderr_of(&refused).contains("invite_bad_signature"), "{}", stderr_of(&refused));
    let members = broker.operator(&["member", "list", "--mesh", "team"])?;
    assert!(!members.to_string().contains("\"bob\""), "no member came of it: {members}");

    attacker.set(Attack::Nothing);
    let bob_key = bob.join(&link, "bob")?["memberPubkey"].as_str().context("bob's key")?.to_owned();
    json_of(&run(&alice, &["send", &bob_key, "through the attacker, untouched", "--json"])?);
    let untouched = inbox_messages(&bob)?;
    assert_eq!(untouched.len(), 1, "{untouched:?}");
    assert_eq!(untouched[0]["text"], "through the attacker, untouched");
    assert_eq!(untouched[0]["verified"], true);

    // A sealed message altered in flight does not open, and is not shown as a message.
    attacker.set(Attack::FlipCiphertext);
    json_of(&run(&alice, &["send", &bob_key, "altered on the way", "--json"])?);
    let altered = inbox_messages(&bob)?;
    assert!(attacker.altered() >= 2, "the attacker changed the push");
    assert_eq!(altered.len(), 1, "{altered:?}");
    assert!(altered[0].get("text").is_none(), "{altered:?}");
    assert!(altered[0]["error"].as_str().is_some_and(|e| !e.is_empty()), "{altered:?}");
    assert_eq!(altered[0]["verified"], false);

    // Carol's message relabelled as alice's: the sender's binding is gone, so it is unverified.
    let alice_key = json_of(&run(&alice, &["meshes", "--json"])?)["meshes"][0]["memberPubkey"]
        .as_str()
        .context("alice's key")?
        .to_owned();
    attacker.set(Attack::ClaimSender(alice_key.clone()));
    let before = attacker.altered();
    json_of(&run(&carol, &["send", &bob_key, "who sent this?", "--json"])?);
    let relabelled = inbox_messages(&bob)?;
    assert!(attacker.altered() > before, "the attacker changed the push");
    assert_eq!(relabelled.len(), 1, "{relabelled:?}");
    assert_eq!(relabelled[0]["fromMemberPubkey"], alice_key.as_str());
    assert_eq!(relabelled[0]["verified"], false, "{relabelled:?}");

    // Hello fields altered on the way to the broker: the hello signature covers the session key
    // and the capabilities, so each altered hello is refused and the session never starts.
    let attacker_session = broker_core::crypto::Keypair::generate().public_hex();
    let hello_attacks =
        [Attack::SwapSessionKey(attacker_session), Attack::StripCapability("delivery_ack"), Attack::DowngradeHello];
    for attack in hello_attacks {
        attacker.set(attack.clone());
        let before = attacker.altered();
        let refused = run(&bob, &["peers", "--json"])?;
        assert!(attacker.altered() > before, "{attack:?}: the attacker changed the hello");
        assert_eq!(refused.status.code(), Some(5), "{attack:?}: {}", stderr_of(&refused));
        assert!(stderr_of(&refused).contains("bad_signature"), "{attack:?}: {}", stderr_of(&refused));
    }
    Ok(())
}
