//! The Debian packages of `scripts/package.sh`, as a person gets them: what they hold, and
//! installing, upgrading and removing them on this machine (as root; systemd is not PID 1 here,
//! so the maintainer scripts' path without it is the one exercised). The install test purges
//! what it installed, leaving the machine as it found it.
//!
//! `scripts/test.sh` builds the packages (version N, and N+1 for the upgrade) before the tests;
//! run alone, these tests build them into their own target directory first.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use claudemesh_e2e::{free_port, profile_dir, workspace_root};
use serde_json::Value;

const PACKAGES: [&str; 3] = ["claudemesh", "claudemesh-cli", "claudemesh-broker"];
const STATE_DIR: &str = "/var/lib/claudemesh-broker";
/// Libraries no headless binary may need.
const GUI_LIBRARIES: [&str; 8] = ["gtk", "gdk", "webkit", "javascriptcore", "ayatana", "cairo", "libsoup", "libx11"];

fn run(command: &mut Command) -> Result<Output> {
    let output = command.output().with_context(|| format!("running {command:?}"))?;
    ensure!(
        output.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(output)
}

fn stdout(command: &mut Command) -> Result<String> {
    Ok(String::from_utf8(run(command)?.stdout)?)
}

fn workspace_version() -> String {
    let manifest = std::fs::read_to_string(workspace_root().join("Cargo.toml")).expect("Cargo.toml");
    let line = manifest.lines().find(|l| l.starts_with("version = ")).expect("workspace version");
    line.trim_start_matches("version = ").trim_matches('"').to_owned()
}

/// The next version the upgrade test installs over the workspace's.
fn next_version() -> String {
    format!("{}+next", workspace_version())
}

/// The packages of one version: built by `scripts/test.sh`, or here when missing.
struct Built {
    dir: PathBuf,
    version: String,
}

impl Built {
    fn current() -> Result<Built> {
        Built::ensure(profile_dir().parent().expect("target").join("packages"), workspace_version())
    }

    fn next() -> Result<Built> {
        Built::ensure(profile_dir().parent().expect("target").join("packages/next"), next_version())
    }

    fn ensure(dir: PathBuf, version: String) -> Result<Built> {
        let built = Built { dir, version };
        let lock = built.dir.with_extension("lock");
        std::fs::create_dir_all(built.dir.parent().expect("parent"))?;
        // One build at a time (both tests may need them), in a target directory of its own so
        // the binaries other tests run are not replaced under them.
        let script = format!(
            "[ -e {deb} ] || CARGO_TARGET_DIR={target} bash scripts/package.sh --profile dev --version {version} --out {out}",
            deb = built.deb("claudemesh-broker").display(),
            target = profile_dir().parent().expect("target").join("packaging").display(),
            version = built.version,
            out = built.dir.display(),
        );
        run(Command::new("flock").arg(&lock).args(["sh", "-c", &script]).current_dir(workspace_root()))?;
        Ok(built)
    }

    fn deb(&self, package: &str) -> PathBuf {
        let arch = String::from_utf8(Command::new("dpkg").arg("--print-architecture").output().expect("dpkg").stdout)
            .expect("utf-8");
        self.dir.join(format!("{package}_{}_{}.deb", self.version, arch.trim()))
    }

    /// A field of the package's control file.
    fn field(&self, package: &str, field: &str) -> Result<String> {
        Ok(stdout(Command::new("dpkg-deb").arg("--field").arg(self.deb(package)).arg(field))?.trim().to_owned())
    }

    /// `mode path` of every entry.
    fn contents(&self, package: &str) -> Result<Vec<(String, String)>> {
        let listing = stdout(Command::new("dpkg-deb").arg("--contents").arg(self.deb(package)))?;
        Ok(listing
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                Some((fields.first()?.to_string(), fields.last()?.trim_start_matches('.').to_owned()))
            })
            .collect())
    }
}

fn mode_of(contents: &[(String, String)], path: &str) -> Option<String> {
    contents.iter().find(|(_, p)| p == path).map(|(mode, _)| mode.clone())
}

/// Each `(path, mode)` is in `package` with that mode.
fn holds(built: &Built, package: &str, files: &[(&str, &str)]) -> Result<()> {
    let contents = built.contents(package)?;
    for (path, mode) in files {
        ensure!(mode_of(&contents, path).as_deref() == Some(mode), "{package}: {path} {mode}: {contents:?}");
    }
    Ok(())
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

#[test]
fn the_packages_hold_what_they_should_and_nothing_of_the_build() -> Result<()> {
    let built = Built::current()?;
    let version = &built.version;

    for package in PACKAGES {
        let description = built.field(package, "Description")?;
        ensure!(description.lines().count() > 3 && !description.contains("(none)"), "{package}: {description}");
        ensure!(&built.field(package, "Version")? == version, "{package} carries the version");
        let copyright = format!("/usr/share/doc/{package}/copyright");
        ensure!(mode_of(&built.contents(package)?, &copyright).is_some(), "{package} has {copyright}");
    }

    // The desktop app: the binary, its desktop entry with the URL scheme, icons, a man page; it
    // and the CLI carry the Claude Code plugin.
    holds(
        &built,
        "claudemesh",
        &[
            ("/usr/bin/claudemesh", "-rwxr-xr-x"),
            ("/usr/share/applications/claudemesh.desktop", "-rw-r--r--"),
            ("/usr/share/icons/hicolor/128x128/apps/claudemesh.png", "-rw-r--r--"),
            ("/usr/share/man/man1/claudemesh.1.gz", "-rw-r--r--"),
        ],
    )?;
    let plugin = [
        "/usr/share/claudemesh/claude-plugin/.claude-plugin/marketplace.json",
        "/usr/share/claudemesh/claude-plugin/.claude-plugin/plugin.json",
        "/usr/share/claudemesh/claude-plugin/hooks/hooks.json",
    ]
    .map(|path| (path, "-rw-r--r--"));
    for package in ["claudemesh", "claudemesh-cli"] {
        holds(&built, package, &plugin)?;
    }
    let depends = built.field("claudemesh", "Depends")?;
    ensure!(depends.contains("libwebkit2gtk-4.1-0") && depends.contains("libayatana-appindicator3-1"), "{depends}");
    ensure!(built.field("claudemesh", "Conflicts")? == "claudemesh-cli", "the desktop app replaces the CLI");

    // The headless CLI: no GUI library, and it gives way to the desktop app.
    let depends = built.field("claudemesh-cli", "Depends")?;
    ensure!(!GUI_LIBRARIES.iter().any(|lib| depends.contains(lib)), "the CLI pulls in a GUI library: {depends}");
    ensure!(built.field("claudemesh-cli", "Conflicts")? == "claudemesh", "{depends}");

    // The broker: the service, its settings (a conffile only root and the service read), the
    // operator commands on the PATH.
    holds(
        &built,
        "claudemesh-broker",
        &[
            ("/usr/bin/claudemesh-broker", "-rwxr-xr-x"),
            ("/usr/lib/claudemesh-broker/claudemesh-broker", "-rwxr-xr-x"),
            ("/lib/systemd/system/claudemesh-broker.service", "-rw-r--r--"),
            ("/etc/claudemesh-broker/broker.env", "-rw-r-----"),
            ("/usr/share/man/man1/claudemesh-broker.1.gz", "-rw-r--r--"),
        ],
    )?;
    let control = tempfile::tempdir()?;
    run(Command::new("dpkg-deb").arg("--control").arg(built.deb("claudemesh-broker")).arg(control.path()))?;
    let conffiles = std::fs::read_to_string(control.path().join("conffiles"))?;
    ensure!(conffiles.trim() == "/etc/claudemesh-broker/broker.env", "{conffiles}");
    for script in ["postinst", "prerm", "postrm"] {
        run(Command::new("sh").arg("-n").arg(control.path().join(script)))?;
    }

    // Shipped binaries are stripped, and the man pages hold nothing of the build machine.
    let unpacked = tempfile::tempdir()?;
    for package in PACKAGES {
        let root = unpacked.path().join(package);
        run(Command::new("dpkg-deb").arg("-x").arg(built.deb(package)).arg(&root))?;
        let sections = stdout(Command::new("readelf").arg("-SW").arg(root.join(match package {
            "claudemesh-broker" => "usr/lib/claudemesh-broker/claudemesh-broker",
            _ => "usr/bin/claudemesh",
        })))?;
        // (`.debug_gdb_scripts` is not debug information: it names pretty-printers and stays.)
        let unstripped = [".debug_info", ".debug_line", ".debug_str", ".symtab"];
        ensure!(!unstripped.iter().any(|s| sections.contains(s)), "{package} is not stripped: {sections}");
        let size = std::fs::metadata(built.deb(package))?.len();
        let limit = if package == "claudemesh" { 20 << 20 } else { 10 << 20 };
        ensure!(size < limit, "{package}: {size} bytes, over {limit}");
        eprintln!("{package}: {:.1} MiB", size as f64 / f64::from(1 << 20));
    }
    let broker_root = unpacked.path().join("claudemesh-broker");
    let man = stdout(Command::new("zcat").arg(broker_root.join("usr/share/man/man1/claudemesh-broker.1.gz")))?;
    ensure!(man.contains("CLAUDEMESH_DATA_DIR=/var/lib/claudemesh-broker") && !man.contains("/root"), "{man}");

    // The unit is sandboxed: systemd rates its exposure OK or better.
    let unit = broker_root.join("lib/systemd/system/claudemesh-broker.service");
    let security =
        stdout(Command::new("systemd-analyze").args(["security", "--offline=true", "--no-pager"]).arg(&unit))?;
    let exposure: f64 = security
        .lines()
        .find_map(|line| line.split("claudemesh-broker.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .context("an exposure level")?
        .parse()?;
    ensure!(exposure <= 2.0, "exposure {exposure}: {security}");
    Ok(())
}

/// Purges the packages and what the test made, however the test ends.
struct Cleanup {
    home: tempfile::TempDir,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").arg("--purge").args(PACKAGES).output();
        let _ = std::fs::remove_dir_all(self.home.path());
    }
}

fn dpkg_install(deb: &Path) -> Result<String> {
    let output = run(Command::new("dpkg").args(["--install", "--force-confold"]).arg(deb))?;
    Ok(format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr)))
}

fn owner(path: &str) -> Result<String> {
    stdout(Command::new("stat").args(["-c", "%U:%G %a"]).arg(path)).map(|s| s.trim().to_owned())
}

/// `claudemesh-broker … --json` as root (the packaged command runs it as the service's user).
fn operator(args: &[&str]) -> Result<Value> {
    let out =
        stdout(Command::new("/usr/bin/claudemesh-broker").args(args).arg("--json").env_remove("CLAUDEMESH_DATA_DIR"))?;
    Ok(serde_json::from_str(&out)?)
}

fn wait_healthy(port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            use std::io::{Read as _, Write as _};
            stream.write_all(b"GET /health HTTP/1.0\r\n\r\n")?;
            let mut answer = String::new();
            stream.read_to_string(&mut answer)?;
            if answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200") {
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("the packaged broker never answered /health on {port}")
}

#[test]
fn installing_upgrading_and_removing_keep_a_persons_data() -> Result<()> {
    ensure!(
        running_as_root(),
        "this test installs packages with dpkg and must run as root (CI does; so does scripts/test.sh as root)"
    );
    let (current, next) = (Built::current()?, Built::next()?);
    for package in PACKAGES {
        ensure!(
            !installed(package),
            "{package} is installed on this machine; this test installs and purges the packages, so it runs \
             only where they are not (dpkg --purge {})",
            PACKAGES.join(" ")
        );
    }
    ensure!(!Path::new(STATE_DIR).exists(), "{STATE_DIR} exists: a broker's state this test must not touch");
    let cleanup = Cleanup { home: tempfile::tempdir()? };
    let config_dir = cleanup.home.path().join(".claudemesh");

    // The headless CLI: its version and commit, and no GUI library linked.
    dpkg_install(&current.deb("claudemesh-cli"))?;
    let shown = stdout(Command::new("/usr/bin/claudemesh").arg("--version"))?;
    ensure!(shown.contains(&current.version) && built_from_a_commit(&shown), "{shown}");
    let linked = stdout(Command::new("ldd").arg("/usr/bin/claudemesh"))?;
    ensure!(!GUI_LIBRARIES.iter().any(|lib| linked.contains(lib)), "{linked}");

    // The desktop app takes the CLI's place.
    dpkg_install(&current.deb("claudemesh"))?;
    ensure!(installed("claudemesh") && !installed("claudemesh-cli"), "the desktop package replaced the CLI");
    let shown = stdout(Command::new("/usr/bin/claudemesh").arg("--version"))?;
    ensure!(shown.contains(&current.version), "{shown}");

    // The broker: without systemd running, the service is left alone and the scripts say so.
    let said = dpkg_install(&current.deb("claudemesh-broker"))?;
    if !Path::new("/run/systemd/system").exists() {
        ensure!(said.contains("systemd is not running here"), "{said}");
    }
    ensure!(owner(STATE_DIR)? == "claudemesh-broker:claudemesh-broker 700", "{}", owner(STATE_DIR)?);
    ensure!(owner("/etc/claudemesh-broker/broker.env")? == "root:claudemesh-broker 640");
    let shown = stdout(Command::new("/usr/bin/claudemesh-broker").arg("--version"))?;
    ensure!(shown.contains(&current.version) && built_from_a_commit(&shown), "{shown}");
    run(Command::new("systemd-analyze").args(["verify", "/lib/systemd/system/claudemesh-broker.service"]))?;

    // Operator commands work on the packaged state by default, as the service's user.
    let mesh = operator(&["mesh", "create", "--name", "Packaged Team"])?;
    let slug = mesh["slug"].as_str().context("slug")?.to_owned();
    ensure!(owner(&format!("{STATE_DIR}/broker.db"))?.starts_with("claudemesh-broker:"), "the service's file");

    // The packaged broker serves that state, and the packaged CLI joins a mesh on it: a person's
    // data directory now exists.
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut serving = Command::new("/usr/bin/claudemesh-broker")
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--public-url", &url])
        .env_remove("CLAUDEMESH_DATA_DIR")
        .spawn()?;
    let joined = (|| -> Result<()> {
        wait_healthy(port)?;
        let invite = operator(&["invite", "create", "--mesh", &slug])?;
        let link = invite["link"].as_str().context("link")?;
        run(Command::new("/usr/bin/claudemesh")
            .args(["join", link, "--name", "packaged", "--json"])
            .env("HOME", cleanup.home.path())
            .env("CLAUDEMESH_CONFIG_DIR", &config_dir)
            .env("CLAUDEMESH_KEYSTORE", "file"))?;
        Ok(())
    })();
    // The packaged command runs the broker under runuser, which hands a SIGTERM on to it.
    run(Command::new("kill").arg(serving.id().to_string()))?;
    serving.wait()?;
    joined?;
    ensure!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "the broker stopped");
    ensure!(config_dir.join("config.json").exists(), "the person's config was written");

    // A backup as docs/packages.md says to make one: into a directory the service's user owns.
    // (The service's user must be able to reach it: the test's home is made traversable.)
    std::fs::set_permissions(cleanup.home.path(), std::os::unix::fs::PermissionsExt::from_mode(0o711))?;
    let backups = cleanup.home.path().join("backups");
    run(Command::new("install")
        .args(["-d", "-o", "claudemesh-broker", "-g", "claudemesh-broker", "-m", "0700"])
        .arg(&backups))?;
    let target = backups.join("nightly");
    let made = operator(&["backup", "--to", target.to_str().context("utf-8")?])?;
    ensure!(made["manifest"]["meshes"] == 1, "{made}");
    ensure!(owner(&format!("{}/broker.db", target.display()))?.starts_with("claudemesh-broker:"), "the service's file");

    // An upgrade keeps the state and the operator's settings.
    let settings = "/etc/claudemesh-broker/broker.env";
    let edited = format!("{}CLAUDEMESH_LOG_FORMAT=text\n", std::fs::read_to_string(settings)?);
    std::fs::write(settings, &edited)?;
    dpkg_install(&next.deb("claudemesh-broker"))?;
    let shown = stdout(Command::new("/usr/bin/claudemesh-broker").arg("--version"))?;
    ensure!(shown.contains(&next.version), "upgraded: {shown}");
    let meshes = operator(&["mesh", "list"])?;
    ensure!(meshes.to_string().contains(&slug), "the mesh survived the upgrade: {meshes}");
    ensure!(std::fs::read_to_string(settings)? == edited, "the operator's settings survived the upgrade");

    // Removing keeps everyone's data; only purging deletes the broker's, and says so.
    let removed = run(Command::new("dpkg").args(["--remove", "claudemesh", "claudemesh-broker"]))?;
    ensure!(!installed("claudemesh") && !installed("claudemesh-broker"));
    ensure!(Path::new(&format!("{STATE_DIR}/broker.db")).exists(), "removal kept the broker's database");
    ensure!(String::from_utf8_lossy(&removed.stderr).contains("kept /var/lib/claudemesh-broker"));
    ensure!(config_dir.join("config.json").exists(), "removal kept the person's data");
    let purged = run(Command::new("dpkg").args(["--purge", "claudemesh-broker"]))?;
    ensure!(String::from_utf8_lossy(&purged.stderr).contains("purge deletes"), "purge says what it deletes");
    ensure!(!Path::new(STATE_DIR).exists() && !Path::new("/etc/claudemesh-broker").exists(), "purge deleted the state");
    let user = Command::new("getent").args(["passwd", "claudemesh-broker"]).output()?;
    ensure!(!user.status.success(), "purge removed the service's user");
    drop(cleanup);
    for package in PACKAGES {
        ensure!(!installed(package), "{package} left behind");
    }
    Ok(())
}

/// `--version` names the commit the package was built from (12 hex digits).
fn built_from_a_commit(version_line: &str) -> bool {
    version_line
        .split("(commit ")
        .nth(1)
        .is_some_and(|rest| rest.len() >= 12 && rest[..12].chars().all(|c| c.is_ascii_hexdigit()))
}

fn running_as_root() -> bool {
    stdout(Command::new("id").arg("-u")).is_ok_and(|uid| uid.trim() == "0")
}
