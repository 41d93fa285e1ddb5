//! Account commands: `login`, `logout`, `devices`, `device approve|deny|token`, `create`,
//! `invite`, and the grant commands.

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::sync::Arc;
use std::time::Duration;

use broker_core::client::device_login::{LoginOutcome, PollResponse, run_device_login};
use broker_core::protocol::account::{CreateInviteResponse, DeviceView, PendingDevice};
use broker_core::protocol::{Role, grant_cap};
use serde_json::json;

use super::{CliResult, Exit, Failure, http_exit, mesh_failure, open_keystore, print_json};
use crate::account::{self, AccountError, InviteOptions};
use crate::config::display_name_or_default;
use crate::config::{AccountEntry, ConfigDir};
use crate::keystore::KeyStore;

/// Where `login` signs in when no `--broker` is given and this device was never signed in.
pub const BROKER_URL_ENV: &str = "CLAUDEMESH_BROKER_URL";
const DEFAULT_BROKER_URL: &str = "http://127.0.0.1:7900";

fn account_failure(error: AccountError) -> Failure {
    let exit = match &error {
        AccountError::Http(http) => http_exit(http),
        AccountError::NotSignedIn | AccountError::SignInInvalid(_) => Exit::Refused,
        AccountError::Refused { status: 404, .. } => Exit::NotFound,
        AccountError::Refused { status: 409, .. } => Exit::AlreadyExists,
        AccountError::Refused { .. } => Exit::Refused,
        AccountError::Invalid(_) => Exit::Usage,
        AccountError::BadAnswer(_) | AccountError::KeyStore(_) | AccountError::Config(_) => Exit::Failure,
    };
    Failure::new(exit, error.to_string())
}

async fn keystore(config_dir: &ConfigDir) -> Result<Arc<dyn KeyStore>, Failure> {
    let config_dir = config_dir.clone();
    tokio::task::spawn_blocking(move || {
        config_dir.ensure()?;
        open_keystore(&config_dir)
    })
    .await
    .map_err(|e| Failure::new(Exit::Failure, e.to_string()))?
}

async fn signed_in() -> Result<(ConfigDir, Arc<dyn KeyStore>, account::Api, AccountEntry), Failure> {
    let config_dir = ConfigDir::from_env()?;
    let keystore = keystore(&config_dir).await?;
    let (api, account) = account::api(&config_dir, &keystore).await.map_err(account_failure)?;
    Ok((config_dir, keystore, api, account))
}

/// A QR code for a terminal (two rows of modules per line).
pub fn terminal_qr(text: &str) -> Option<String> {
    let code = qrcode::QrCode::new(text.as_bytes()).ok()?;
    Some(
        code.render::<qrcode::render::unicode::Dense1x2>()
            .dark_color(qrcode::render::unicode::Dense1x2::Light)
            .light_color(qrcode::render::unicode::Dense1x2::Dark)
            .quiet_zone(true)
            .build(),
    )
}

/// Reads pasted lines on a thread (stdin has no cancellable async read); ends at EOF.
fn pasted_lines() -> tokio::sync::mpsc::Receiver<String> {
    let (lines, receiver) = tokio::sync::mpsc::channel(4);
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if lines.blocking_send(line.trim().to_owned()).is_err() {
                break;
            }
        }
    });
    receiver
}

pub async fn login(
    broker: Option<String>,
    account_name: Option<String>,
    name: Option<String>,
    json_output: bool,
) -> CliResult {
    let config_dir = ConfigDir::from_env()?;
    let keystore = keystore(&config_dir).await?;
    let config = config_dir.load()?;
    let broker_url = broker
        .or_else(|| config.account.as_ref().map(|a| a.broker_url.clone()))
        .or_else(|| std::env::var(BROKER_URL_ENV).ok().filter(|u| !u.is_empty()))
        .unwrap_or_else(|| DEFAULT_BROKER_URL.to_owned());
    let broker_url = broker_url.trim_end_matches('/').to_owned();
    if let Some(existing) = &config.account
        && crate::keystore::device_token(&keystore).await?.is_some()
    {
        return Err(Failure::new(
            Exit::AlreadyExists,
            format!(
                "already signed in as {} on {}; run `claudemesh logout` first to sign in again",
                existing.account_name, existing.broker_url
            ),
        ));
    }
    let confirm_key = account::confirm_key(&keystore).await.map_err(account_failure)?;
    let code = account::request_device_code(&broker_url, account_name.as_deref(), &confirm_key)
        .await
        .map_err(account_failure)?;
    let mut err = std::io::stderr();
    let _ = writeln!(
        err,
        "To sign in this device ({}), approve it from a device that is already signed in:\n",
        account::this_hostname()
    );
    let _ = writeln!(err, "    {}\n", code.user_code);
    let _ = writeln!(err, "  on a signed-in machine:  claudemesh device approve {}", code.user_code);
    let _ = writeln!(err, "  or in the claudemesh app: Approve a device…  (or scan: {})", code.verification_uri_app);
    let _ = writeln!(err, "  first device of an account: the broker's operator runs");
    let _ = writeln!(err, "    claudemesh-broker device approve {} --account <name>", code.user_code);
    if let Some(qr) = terminal_qr(&code.verification_uri_app) {
        let _ = writeln!(err, "\n{qr}");
    }
    let _ = writeln!(
        err,
        "No one can approve from there? Paste a one-time login token (`claudemesh device token` on a signed-in device) and press Enter."
    );

    let interactive = std::io::stderr().is_terminal();
    let poller = account::HttpPoller { broker_url: broker_url.clone(), confirm_key: confirm_key.clone() };
    let mut pasted = pasted_lines();
    let mut stdin_open = true;
    let spinner = ["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"];
    let mut frame = 0;
    let outcome = {
        let polling = run_device_login(&code, &poller, |left| {
            if interactive {
                frame = (frame + 1) % spinner.len();
                let _ = write!(
                    std::io::stderr(),
                    "\r{} waiting for approval… {}:{:02} left ",
                    spinner[frame],
                    left.as_secs() / 60,
                    left.as_secs() % 60
                );
            }
        });
        tokio::pin!(polling);
        loop {
            tokio::select! {
                outcome = &mut polling => break outcome,
                line = pasted.recv(), if stdin_open => match line {
                    Some(token) if token.starts_with("cml_") => {
                        match account::poll_token(&broker_url, &token, &confirm_key).await {
                            Ok(PollResponse::Token(token)) => break LoginOutcome::SignedIn(token),
                            Ok(PollResponse::Error(error)) => {
                                let _ = writeln!(std::io::stderr(), "\nthat login token did not work ({}); waiting for approval", error.error);
                            }
                            Err(error) => {
                                let _ = writeln!(std::io::stderr(), "\ncould not redeem that token: {error}");
                            }
                        }
                    }
                    Some(other) if !other.is_empty() => {
                        let _ = writeln!(std::io::stderr(), "\nnot a login token (they start with cml_); still waiting");
                    }
                    Some(_) => {}
                    // Nothing more will be pasted: keep waiting for the approval alone.
                    None => stdin_open = false,
                },
            }
        }
    };
    if interactive {
        let _ = writeln!(std::io::stderr());
    }
    let token = match outcome {
        LoginOutcome::SignedIn(token) => token,
        LoginOutcome::Denied => {
            return Err(Failure::new(Exit::Refused, "the sign-in was denied on the approving device"));
        }
        LoginOutcome::Expired => {
            return Err(Failure::new(Exit::Refused, "nobody approved the code in time; run `claudemesh login` again"));
        }
        LoginOutcome::Failed(reason) => {
            return Err(Failure::new(Exit::Refused, format!("the sign-in failed: {reason}")));
        }
    };
    let display_name = display_name_or_default(name);
    let signed_in =
        account::finish_sign_in(&config_dir, &keystore, &broker_url, token, account_name.as_deref(), &display_name)
            .await
            .map_err(account_failure)?;
    let enrolled: Vec<&str> = signed_in.enrolled.iter().map(|m| m.slug.as_str()).collect();
    if json_output {
        print_json(json!({
            "brokerUrl": signed_in.account.broker_url, "accountId": signed_in.account.account_id,
            "account": signed_in.account.account_name, "deviceId": signed_in.account.device_id,
            "enrolled": enrolled,
            "enrolFailures": signed_in.enrol_failures.iter().map(|(m, e)| json!({"mesh": m, "error": e})).collect::<Vec<_>>(),
            "keystore": keystore.kind().as_str(),
        }));
    } else {
        println!("signed in as {} on {}", signed_in.account.account_name, signed_in.account.broker_url);
        if !enrolled.is_empty() {
            println!("enrolled this device into {} with new member keys", enrolled.join(", "));
        }
        for (mesh, error) in &signed_in.enrol_failures {
            println!("could not enrol into {mesh}: {error}");
        }
    }
    Ok(())
}

pub async fn logout(json_output: bool) -> CliResult {
    let config_dir = ConfigDir::from_env()?;
    let keystore = keystore(&config_dir).await?;
    let out = account::sign_out(&config_dir, &keystore).await.map_err(account_failure)?;
    if json_output {
        print_json(
            json!({"account": out.account.account_name, "brokerUrl": out.account.broker_url, "forgotten": out.forgotten}),
        );
    } else {
        println!(
            "signed out of {} on {}; this device's token is revoked",
            out.account.account_name, out.account.broker_url
        );
        if !out.forgotten.is_empty() {
            println!("its member keys were revoked too; forgot {}", out.forgotten.join(", "));
        }
    }
    Ok(())
}

fn device_json(device: &DeviceView) -> serde_json::Value {
    serde_json::to_value(device).expect("devices serialize")
}

/// Whether to ask the person before a request the broker wants freshly confirmed (the request
/// is then signed with this device's confirmation key): on a terminal, unless `--yes`. Without a
/// terminal (a script, or a session a message could steer) only `--yes` goes ahead.
fn asks_first(yes: bool) -> Result<bool, Failure> {
    if yes {
        return Ok(false);
    }
    if !std::io::stdin().is_terminal() {
        return Err(Failure::new(
            Exit::Refused,
            "this needs your confirmation: run it on a terminal to be asked, or pass --yes; nothing changed",
        ));
    }
    Ok(true)
}

fn not_confirmed() -> Failure {
    Failure::new(Exit::Refused, "not confirmed; nothing changed (answer y, or pass --yes)")
}

/// Prints `question` with `[y/N]` on stderr; true when the answer on stdin is y or yes.
async fn ask_yes(question: &str) -> Result<bool, Failure> {
    eprint!("{question} [y/N] ");
    let _ = std::io::stderr().flush();
    let answer = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).map(|_| line)
    })
    .await
    .map_err(|e| Failure::new(Exit::Failure, e.to_string()))??;
    Ok(matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes"))
}

pub async fn devices(revoke: Option<String>, yes: bool, json_output: bool) -> CliResult {
    let (_, _, api, account) = signed_in().await?;
    if let Some(id) = revoke {
        if id != account.device_id && asks_first(yes)? {
            let devices = api.devices().await.map_err(account_failure)?;
            let device = devices.iter().find(|d| d.id == id).ok_or_else(|| {
                Failure::new(Exit::NotFound, format!("no device {id} in this account; `claudemesh devices` lists them"))
            })?;
            let question = format!(
                "Revoke {} ({} {}, last seen from {})? Its sign-in and member keys stop working now.",
                device.hostname, device.platform, device.arch, device.ip
            );
            if !ask_yes(&question).await? {
                return Err(not_confirmed());
            }
        }
        api.revoke_device(&id).await.map_err(account_failure)?;
        if json_output {
            print_json(json!({"revoked": id}));
        } else {
            println!(
                "revoked device {id}: its sign-in and member keys no longer work, and its live sessions were closed"
            );
        }
        return Ok(());
    }
    let devices = api.devices().await.map_err(account_failure)?;
    if json_output {
        print_json(json!({"devices": devices.iter().map(device_json).collect::<Vec<_>>()}));
        return Ok(());
    }
    for device in &devices {
        println!(
            "{}{}  {} ({} {}), from {}, last seen {}{}",
            if device.current { "* " } else { "  " },
            device.id,
            device.hostname,
            device.platform,
            device.arch,
            device.ip,
            device.last_seen_at,
            if device.revoked { "  [revoked]" } else { "" }
        );
    }
    Ok(())
}

fn describe(pending: &PendingDevice) -> String {
    format!(
        "{} ({} {}, claudemesh {}) asked from {} at {}; code {}",
        pending.hostname,
        pending.platform,
        pending.arch,
        pending.app_version,
        pending.ip,
        pending.requested_at,
        pending.user_code
    )
}

/// Shows which device asks, asks for confirmation (unless `yes`), then approves or denies.
pub async fn decide(code: String, approve: bool, yes: bool, json_output: bool) -> CliResult {
    let (config_dir, keystore, api, _) = signed_in().await?;
    let pending = api.pending_device(&code).await.map_err(account_failure)?;
    if pending.status != "pending" {
        return Err(Failure::new(Exit::AlreadyExists, format!("that sign-in is already {}", pending.status)));
    }
    if approve && !yes {
        eprintln!("{}", describe(&pending));
        if !ask_yes("Approve this device? It will act for your account.").await? {
            return Err(Failure::new(Exit::Refused, "not approved (answer y to approve, or pass --yes)"));
        }
    }
    let endorsements = if approve {
        account::endorsements(&config_dir, &keystore, &api.broker_url, &pending).await.map_err(account_failure)?
    } else {
        Vec::new()
    };
    let decided = api.decide_device(&pending.user_code, approve, &endorsements).await.map_err(account_failure)?;
    if json_output {
        print_json(serde_json::to_value(&decided).expect("serializes"));
    } else {
        println!("{} {}", if approve { "approved" } else { "denied" }, describe(&decided));
    }
    Ok(())
}

pub async fn pending(json_output: bool) -> CliResult {
    let (_, _, api, _) = signed_in().await?;
    let pending = api.pending_devices().await.map_err(account_failure)?;
    if json_output {
        print_json(json!({"pending": pending}));
    } else if pending.is_empty() {
        println!("no device is waiting for approval (devices that name the account with `login --account` show here)");
    } else {
        for request in &pending {
            println!("{}", describe(request));
        }
        println!("approve one with `claudemesh device approve CODE`");
    }
    Ok(())
}

pub async fn login_token(yes: bool, json_output: bool) -> CliResult {
    let (_, _, api, account) = signed_in().await?;
    let question = format!(
        "Make a one-time login token? Whoever pastes it within 10 minutes is signed in to {}.",
        account.account_name
    );
    if asks_first(yes)? && !ask_yes(&question).await? {
        return Err(not_confirmed());
    }
    let made = api.login_token().await.map_err(account_failure)?;
    if json_output {
        print_json(json!({"loginToken": made.login_token, "expiresIn": made.expires_in}));
    } else {
        println!("{}", made.login_token);
        eprintln!(
            "paste this into `claudemesh login` on the other device within {} minutes; it works once",
            made.expires_in / 60
        );
    }
    Ok(())
}

pub async fn create(name: String, display_name: Option<String>, json_output: bool) -> CliResult {
    let (config_dir, keystore, api, _) = signed_in().await?;
    let display_name = display_name_or_default(display_name);
    let entry =
        account::create_mesh(&config_dir, &keystore, &api, &name, &display_name).await.map_err(account_failure)?;
    if json_output {
        print_json(
            json!({"mesh": entry.slug, "meshId": entry.mesh_id, "meshName": entry.name, "memberId": entry.member_id,
                          "role": entry.role}),
        );
    } else {
        println!(
            "created {} ({}); you are its admin. Invite people with `claudemesh invite --mesh {}`",
            entry.name, entry.slug, entry.slug
        );
    }
    Ok(())
}

pub struct InviteArgs {
    pub mesh: Option<String>,
    pub role: Role,
    pub max_uses: u32,
    pub expires_in: Duration,
    pub email: Option<String>,
}

pub async fn invite(args: InviteArgs, json_output: bool) -> CliResult {
    let (config_dir, keystore, api, _) = signed_in().await?;
    let config = config_dir.load()?;
    let mesh = match &args.mesh {
        Some(name) => config.find(name).cloned(),
        None if config.meshes.len() == 1 => config.meshes.first().cloned(),
        None => None,
    }
    .ok_or_else(|| {
        let known: Vec<_> = config.meshes.iter().map(|m| m.slug.clone()).collect();
        Failure::new(Exit::Usage, format!("say which mesh with --mesh; joined meshes: {}", known.join(", ")))
    })?;
    let options =
        InviteOptions { role: args.role, max_uses: args.max_uses, expires_in: args.expires_in, email: args.email };
    let created: CreateInviteResponse =
        account::create_invite(&keystore, &api, &mesh, &options).await.map_err(account_failure)?;
    if json_output {
        print_json(json!({"link": created.link, "code": created.invite.id, "expiresAt": created.invite.expires_at,
                          "role": created.invite.role, "maxUses": created.invite.max_uses, "emailed": created.emailed,
                          "emailError": created.email_error}));
    } else {
        println!("{}", created.link);
        if let Some(qr) = terminal_qr(&created.link) {
            eprintln!("{qr}");
        }
        eprintln!(
            "valid until {}, {} use(s), role {}{}",
            created.invite.expires_at,
            created.invite.max_uses,
            created.invite.role.as_str(),
            match (&options.email, created.emailed, &created.email_error) {
                (Some(to), true, _) => format!("; emailed to {to}"),
                (Some(_), false, Some(why)) => format!("; not emailed: {why}"),
                _ => String::new(),
            }
        );
    }
    Ok(())
}

/// The grant commands: what they do to a peer's entry.
pub enum GrantChange {
    /// Exactly these capabilities.
    Grant(Vec<String>),
    /// Everything it had (the defaults when no entry) minus these.
    Revoke(Vec<String>),
    Block,
    Unblock,
}

/// The capabilities a member has by default.
const DEFAULT_CAPS: [&str; 5] =
    [grant_cap::DM, grant_cap::BROADCAST, grant_cap::STATE, grant_cap::TOOLS, grant_cap::FILES];

pub async fn grant(peer: String, change: GrantChange, mesh: Option<String>, json_output: bool) -> CliResult {
    let config_dir = ConfigDir::from_env()?;
    let (supervisor, _incoming) = super::connect(&config_dir, mesh.as_deref()).await?;
    super::require_connected(&supervisor)?;
    let links = supervisor.select(mesh.as_deref()).map_err(mesh_failure)?;
    let [link] = links.as_slice() else {
        return Err(Failure::new(Exit::Usage, "grants are per mesh: say which one with --mesh"));
    };
    let member_key = peer_member_key(&supervisor, link.entry.slug.as_str(), &peer).await?;
    let current = link.grants().await.map_err(mesh_failure)?;
    let caps = match change {
        GrantChange::Grant(caps) => Some(caps),
        GrantChange::Revoke(caps) => {
            let had: Vec<String> = current
                .get(&member_key)
                .cloned()
                .unwrap_or_else(|| DEFAULT_CAPS.iter().map(|c| (*c).to_owned()).collect());
            let all = caps.iter().any(|c| c == grant_cap::ALL);
            Some(had.into_iter().filter(|c| !all && !caps.contains(c) && c != grant_cap::ALL).collect())
        }
        GrantChange::Block => Some(Vec::new()),
        GrantChange::Unblock => None,
    };
    let grants = link.set_grants([(member_key.clone(), caps)].into()).await.map_err(mesh_failure)?;
    supervisor.shutdown().await;
    let now = grants.get(&member_key);
    if json_output {
        print_json(json!({"mesh": link.entry.slug, "peer": peer, "memberPubkey": member_key, "caps": now,
                          "default": now.is_none()}));
    } else {
        match now {
            None => println!("{peer} in {}: back to the mesh defaults (everything allowed)", link.entry.slug),
            Some(caps) if caps.is_empty() => println!("{peer} in {}: blocked", link.entry.slug),
            Some(caps) => println!("{peer} in {}: may {}", link.entry.slug, caps.join(", ")),
        }
    }
    Ok(())
}

pub async fn list_grants(mesh: Option<String>, json_output: bool) -> CliResult {
    let config_dir = ConfigDir::from_env()?;
    let (supervisor, _incoming) = super::connect(&config_dir, mesh.as_deref()).await?;
    super::require_connected(&supervisor)?;
    let mut rows = Vec::new();
    for link in supervisor.select(mesh.as_deref()).map_err(mesh_failure)? {
        let grants = link.grants().await.map_err(mesh_failure)?;
        for (key, caps) in grants {
            rows.push((link.entry.slug.clone(), key, caps));
        }
    }
    supervisor.shutdown().await;
    if json_output {
        print_json(
            json!({"grants": rows.iter().map(|(m, k, c)| json!({"mesh": m, "memberPubkey": k, "caps": c})).collect::<Vec<_>>()}),
        );
    } else if rows.is_empty() {
        println!("no explicit grants: every member has the mesh defaults");
    } else {
        for (mesh, key, caps) in rows {
            println!(
                "{mesh}  {}…  {}",
                &key[..12],
                if caps.is_empty() { "blocked".to_owned() } else { caps.join(", ") }
            );
        }
    }
    Ok(())
}

/// The member key of `peer` (a 64-hex member or session key, or a display name online now).
async fn peer_member_key(supervisor: &crate::mesh::Supervisor, mesh: &str, peer: &str) -> Result<String, Failure> {
    let peers = supervisor.list_peers(Some(mesh)).await.map_err(mesh_failure)?;
    if broker_core::protocol::is_key_hex(peer) {
        return Ok(peers
            .iter()
            .find(|p| p.pubkey == peer)
            .map(|p| p.member_pubkey.clone())
            .unwrap_or_else(|| peer.to_owned()));
    }
    let exact: Vec<_> = peers.iter().filter(|p| p.name.eq_ignore_ascii_case(peer) && !p.same_member).collect();
    let matches = if exact.is_empty() {
        peers.iter().filter(|p| p.name.to_lowercase().contains(&peer.to_lowercase()) && !p.same_member).collect()
    } else {
        exact
    };
    let mut keys: Vec<&str> = matches.iter().map(|p| p.member_pubkey.as_str()).collect();
    keys.dedup();
    match keys.as_slice() {
        [one] => Ok((*one).to_owned()),
        [] => Err(Failure::new(
            Exit::NotFound,
            format!(
                "nobody called {peer:?} is online in {mesh}; use their member key, or one of: {}",
                peers.iter().filter(|p| !p.same_member).map(|p| p.name.as_str()).collect::<Vec<_>>().join(", ")
            ),
        )),
        _ => Err(Failure::new(
            Exit::Usage,
            format!(
                "{peer:?} matches several members: {}",
                matches.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", ")
            ),
        )),
    }
}
