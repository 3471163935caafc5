//! A private containerd for one test, and `ctr` to drive it.
//!
//! Everything containerd writes lives under one temporary directory `T`:
//!
//! | path                       | what                                      |
//! |----------------------------|-------------------------------------------|
//! | `T/config.toml`            | the configuration (version 2; 3 for 2.x)  |
//! | `T/root`, `T/state`        | containerd's root and state directories  |
//! | `T/containerd.sock`        | gRPC socket (`.ttrpc` beside it)          |
//! | `T/containerd.log`         | containerd's stdout and stderr, debug level |
//! | `T/fifo`                   | `ctr`'s IO FIFOs (`--fifo-dir`)           |
//!
//! Shims still put their sockets in `/run/containerd/s` and runc its state in
//! `/run/containerd/runc`, as those paths are fixed; cgroups are global too.
//! Container ids must therefore be unique across harnesses running at the
//! same time (tests of one binary run in parallel): use
//! [`Containerd::unique_id`].

use std::collections::BTreeSet;
use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::leftovers;
use crate::process::{self, run_with_timeout};

mod config;
mod ctr;
mod teardown;

pub use config::{config_version, major_version};

/// Namespace that `ctr` uses unless [`ContainerdOptions::namespace`] says
/// otherwise.
pub const DEFAULT_NAMESPACE: &str = "wasmpod-e2e";

/// How long [`Containerd::assert_no_leftovers`] waits for asynchronous
/// cleanup before reporting what is left.
pub const LEFTOVER_GRACE: Duration = Duration::from_secs(5);

/// How long containerd gets to exit after SIGTERM before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// Output of one `ctr` invocation.
pub type CtrOutput = process::Output;

/// How to start a [`Containerd`].
#[derive(Debug, Clone)]
pub struct ContainerdOptions {
    /// The containerd binary (default `/usr/bin/containerd`).
    pub containerd_bin: PathBuf,
    /// The ctr binary (default `/usr/bin/ctr`).
    pub ctr_bin: PathBuf,
    /// Whether the CRI plugin is loaded (default `false`: it is listed in
    /// `disabled_plugins`).
    pub cri: bool,
    /// Whether the CRI config registers the `wasmpod` handler (default
    /// `true`; the node installer's test starts without it).
    pub cri_handler: bool,
    /// TOML appended verbatim to the generated config (after its `[debug]`
    /// table, so it should start with a table header). Do not set
    /// `disabled_plugins` here when `cri` is `false`: the key is already set.
    pub extra_config: String,
    /// Namespace for `ctr` (default [`DEFAULT_NAMESPACE`]).
    pub namespace: String,
    /// Default timeout of one `ctr` invocation (default 60 s).
    pub ctr_timeout: Duration,
    /// How long containerd may take to answer `ctr version` (default 20 s).
    pub start_timeout: Duration,
    /// The shim under test; `None` (the default) means [`crate::shim_path`]
    /// (`$WASMPOD_SHIM` or `<workspace>/target/release/...`).
    pub shim: Option<PathBuf>,
    /// Whether a missing shim is an error (default `true`). When `false`, the
    /// shim's directory is still put on containerd's `PATH` if it exists;
    /// for tests that only use runc.
    pub require_shim: bool,
    /// Extra environment for containerd, inherited by the shims it starts
    /// (e.g. `RUST_LOG`).
    pub env: Vec<(String, String)>,
    /// Run containerd, and everything it starts, on a cgroup v2 node
    /// (default `false`). On a v1 machine with a v2 hierarchy beside it
    /// (`/sys/fs/cgroup/unified`, the hybrid layout) containerd gets a
    /// private mount namespace in which that hierarchy is `/sys/fs/cgroup`;
    /// see [`cgroup2_mount`].
    pub cgroup2: bool,
    /// With `cri`: a pod network of a thousand addresses (a /22) rather
    /// than 253 (default `false`); for benches that run 1000 pods at once.
    pub wide_pod_network: bool,
}

/// Where this machine has a cgroup v2 hierarchy, and whether it is the one
/// at `/sys/fs/cgroup` (a v2 node) rather than beside a v1 layout.
pub fn cgroup2_mount() -> Option<(PathBuf, bool)> {
    let mounts = fs::read_to_string("/proc/self/mounts").ok()?;
    let v2: Vec<PathBuf> = mounts
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.len() > 2 && f[2] == "cgroup2")
        .map(|f| PathBuf::from(f[1]))
        .collect();
    let root = Path::new(crate::leftovers::CGROUP_ROOT);
    if v2.iter().any(|p| p == root) {
        return Some((root.to_path_buf(), true));
    }
    v2.into_iter().next().map(|p| (p, false))
}

/// The directory of the containerd under test: `$WASMPOD_E2E_CONTAINERD_DIR`
/// (e.g. trixie's 1.7 from `e2e/containerd-debian/fetch 1.7`), else `/usr/bin`.
pub fn containerd_dir() -> PathBuf {
    match std::env::var_os("WASMPOD_E2E_CONTAINERD_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from("/usr/bin"),
    }
}

impl Default for ContainerdOptions {
    fn default() -> Self {
        let dir = containerd_dir();
        ContainerdOptions {
            containerd_bin: dir.join("containerd"),
            ctr_bin: dir.join("ctr"),
            cri: false,
            cri_handler: true,
            extra_config: String::new(),
            namespace: DEFAULT_NAMESPACE.to_string(),
            ctr_timeout: Duration::from_secs(60),
            start_timeout: Duration::from_secs(20),
            shim: None,
            require_shim: true,
            env: Vec::new(),
            cgroup2: false,
            wide_pod_network: false,
        }
    }
}

/// A running private containerd. Dropping it stops containerd, kills what it
/// launched, unmounts what is left under its directory and removes it.
#[derive(Debug)]
pub struct Containerd {
    opts: ContainerdOptions,
    dir: PathBuf,
    shim: Option<PathBuf>,
    child: Option<Child>,
    shim_sockets_before: BTreeSet<PathBuf>,
    ids: Mutex<BTreeSet<String>>,
    /// The CNI network of the CRI plugin (with `cri` on).
    cni: Option<crate::cri::CniNetwork>,
    /// Network namespaces of the pods run through CRI.
    netns: Mutex<BTreeSet<PathBuf>>,
    shut_down: bool,
}

/// Quotes `s` as a TOML basic string.
fn toml_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\u{:04X}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

static UNIQUE: AtomicU64 = AtomicU64::new(0);

fn env_flag(name: &str) -> bool {
    std::env::var(name)
        .map(|v| !v.is_empty() && v != "0")
        .unwrap_or(false)
}

/// Last `n` lines of the file at `path` (a note when it cannot be read).
fn tail_of(path: &Path, n: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

/// Makes `/run/netns` a shared bind mount of itself once per test process,
/// before any test creates a network namespace. containerd's CNI code and
/// `ip netns add` both do this lazily when it is not a mount yet; done
/// while another test's pod namespace is already mounted there, it hides
/// that mount, and removing the pod later fails with EBUSY.
fn prepare_netns_dir() -> Result<()> {
    static DONE: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let mut done = DONE
        .lock()
        .map_err(|_| anyhow!("netns setup lock poisoned"))?;
    if *done {
        return Ok(());
    }
    let dir = Path::new("/run/netns");
    fs::create_dir_all(dir).context("create /run/netns")?;
    if leftovers::mount_options(dir)?.is_none() {
        use nix::mount::{mount, MsFlags};
        mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .context("bind-mount /run/netns on itself")?;
        mount(
            None::<&str>,
            dir,
            None::<&str>,
            MsFlags::MS_SHARED,
            None::<&str>,
        )
        .context("make /run/netns shared")?;
    }
    *done = true;
    Ok(())
}

impl Containerd {
    /// Starts a private containerd and waits until it answers `ctr version`.
    pub fn start(opts: ContainerdOptions) -> Result<Containerd> {
        if !nix::unistd::geteuid().is_root() {
            bail!("the wasmpod e2e harness must run as root (it starts containerd, mounts and cgroups)");
        }
        prepare_netns_dir()?;
        for (what, bin) in [("containerd", &opts.containerd_bin), ("ctr", &opts.ctr_bin)] {
            if !bin.is_file() {
                bail!(
                    "{what} binary not found at {} (install containerd, or set it in ContainerdOptions)",
                    bin.display()
                );
            }
        }
        let shim = match (&opts.shim, opts.require_shim) {
            (Some(p), true) if !p.is_file() => {
                bail!("shim under test not found at {}", p.display())
            }
            (Some(p), _) => Some(p.clone()),
            (None, true) => Some(crate::shim_path()?),
            (None, false) => crate::shim_path().ok(),
        };

        let base = match std::env::var_os("WASMPOD_E2E_TMP") {
            Some(b) if !b.is_empty() => PathBuf::from(b),
            _ => std::env::temp_dir(),
        };
        fs::create_dir_all(&base)
            .with_context(|| format!("failed to create {}", base.display()))?;
        let dir = tempfile::Builder::new()
            .prefix("wasmpod-e2e-")
            .tempdir_in(&base)
            .with_context(|| {
                format!(
                    "failed to create a temporary directory in {}",
                    base.display()
                )
            })?
            .keep();
        let dir = dir
            .canonicalize()
            .with_context(|| format!("failed to resolve {}", dir.display()))?;

        let mut cd = Containerd {
            opts,
            dir,
            shim,
            child: None,
            shim_sockets_before: leftovers::shim_socket_entries(),
            ids: Mutex::new(BTreeSet::new()),
            cni: None,
            netns: Mutex::new(BTreeSet::new()),
            shut_down: false,
        };
        // From here on, Drop cleans up whatever fails.
        if cd.opts.cri {
            cd.cni = Some(crate::cri::CniNetwork::claim(cd.opts.wide_pod_network)?);
        }
        cd.prepare()?;
        cd.spawn()?;
        if cd.opts.cri {
            cd.import_pause_image()?;
        }
        Ok(cd)
    }

    /// Creates the directories and the config file.
    fn prepare(&self) -> Result<()> {
        // sockaddr_un holds 108 bytes including the NUL; the ttrpc socket is
        // the longest path containerd listens on.
        let ttrpc = self.ttrpc_socket();
        if ttrpc.as_os_str().len() > 100 {
            bail!(
                "socket path {} is too long for a unix socket; set WASMPOD_E2E_TMP to a shorter directory",
                ttrpc.display()
            );
        }
        for d in [self.root(), self.state(), self.fifo_dir()] {
            fs::create_dir_all(&d).with_context(|| format!("failed to create {}", d.display()))?;
        }
        if let Some(net) = &self.cni {
            let conf_dir = self.cni_conf_dir();
            let ipam_dir = self.dir.join("cni").join("ipam");
            for d in [&conf_dir, &ipam_dir] {
                fs::create_dir_all(d)
                    .with_context(|| format!("failed to create {}", d.display()))?;
            }
            let path = conf_dir.join("10-wasmpod-e2e.conflist");
            fs::write(&path, net.conflist(&ipam_dir))
                .with_context(|| format!("failed to write {}", path.display()))?;
        }
        let config = self.config_toml()?;
        fs::write(self.config_path(), config)
            .with_context(|| format!("failed to write {}", self.config_path().display()))
    }

    /// `PATH` for containerd: the shim's directory first, then containerd's
    /// own (for its runc shim), then the test's
    /// own `PATH`, then the usual system directories (runc is in `/usr/sbin`).
    fn containerd_path_env(&self) -> std::ffi::OsString {
        let mut dirs: Vec<PathBuf> = Vec::new();
        if let Some(dir) = self.shim.as_deref().and_then(Path::parent) {
            dirs.push(dir.to_path_buf());
        }
        // its own runc shim (containerd-shim-runc-v2) comes with containerd
        if let Some(dir) = self.opts.containerd_bin.parent() {
            dirs.push(dir.to_path_buf());
        }
        if let Some(path) = std::env::var_os("PATH") {
            dirs.extend(std::env::split_paths(&path));
        }
        for d in [
            "/usr/local/sbin",
            "/usr/local/bin",
            "/usr/sbin",
            "/usr/bin",
            "/sbin",
            "/bin",
        ] {
            dirs.push(PathBuf::from(d));
        }
        let mut seen = BTreeSet::new();
        dirs.retain(|d| seen.insert(d.clone()));
        std::env::join_paths(dirs).unwrap_or_default()
    }

    /// Launches containerd with the config and waits for it to answer.
    fn spawn(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("containerd is already running (pid {:?})", self.pid());
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .with_context(|| format!("failed to open {}", self.log_path().display()))?;
        let log2 = log
            .try_clone()
            .context("failed to duplicate the containerd log file")?;
        let mut cmd = match (self.opts.cgroup2, cgroup2_mount()) {
            (true, None) => bail!("no cgroup v2 hierarchy on this machine"),
            (true, Some((mount, false))) => {
                // unshare and sh exec in place: the child's pid is containerd's
                let mut c = Command::new("unshare");
                c.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
                    .arg(format!(
                        "mount --bind {} {} && exec \"$0\" \"$@\"",
                        mount.display(),
                        crate::leftovers::CGROUP_ROOT
                    ))
                    .arg(&self.opts.containerd_bin);
                c
            }
            _ => Command::new(&self.opts.containerd_bin),
        };
        cmd.arg("--config")
            .arg(self.config_path())
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .env("PATH", self.containerd_path_env())
            .env_remove("NOTIFY_SOCKET")
            .env_remove("CONTAINERD_ADDRESS")
            .env_remove("CONTAINERD_NAMESPACE")
            // the shim's precompiled-module cache stays inside the test's dir
            .env("WASMPOD_CACHE_DIR", self.dir.join("wasmpod-cache"));
        for (k, v) in &self.opts.env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("failed to start {}", self.opts.containerd_bin.display()))?;
        self.child = Some(child);
        self.wait_ready()
    }

    /// Polls `ctr version` until it succeeds, containerd exits, or
    /// [`ContainerdOptions::start_timeout`] passes.
    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + self.opts.start_timeout;
        let mut last = String::from("no attempt made");
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait().context("failed to poll containerd")? {
                    self.child = None;
                    bail!(
                        "containerd exited during startup ({status}); last lines of {}:\n{}",
                        self.log_path().display(),
                        self.log_tail(40)
                    );
                }
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                bail!(
                    "containerd did not answer `ctr version` on {} within {:?} (last attempt: {last}); last lines of {}:\n{}",
                    self.socket().display(),
                    self.opts.start_timeout,
                    self.log_path().display(),
                    self.log_tail(40)
                );
            }
            if self.socket().exists() {
                let mut cmd = self.ctr_command(&["--connect-timeout", "1s", "version"]);
                match run_with_timeout(&mut cmd, None, remaining.min(Duration::from_secs(5))) {
                    Ok(out) if out.success() => return Ok(()),
                    Ok(out) => last = format!("{:?}: {}", out.status, out.stderr.trim()),
                    Err(e) => last = format!("{e:#}"),
                }
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// The CNI configuration directory (`T/cni/net.d`).
    pub fn cni_conf_dir(&self) -> PathBuf {
        self.dir.join("cni").join("net.d")
    }

    /// The pod network of the CRI plugin (with `cri` on).
    pub fn cni(&self) -> Option<&crate::cri::CniNetwork> {
        self.cni.as_ref()
    }

    /// A CRI client on this containerd (with `cri` on).
    pub fn cri(&self) -> Result<crate::cri::Cri> {
        if !self.opts.cri {
            bail!("this containerd runs without its CRI plugin (set ContainerdOptions::cri)");
        }
        crate::cri::Cri::connect(&self.socket())
    }

    /// `ctr -n k8s.io images import` of the image tar at `tar`, then waits
    /// until CRI lists `reference` (it learns of imports asynchronously).
    pub fn cri_import(&self, tar: &Path, reference: &str) -> Result<()> {
        let tar = tar.to_string_lossy();
        let args = ["images", "import", "--all-platforms", &tar];
        let mut cmd = self.ctr_command_in(crate::cri::CRI_NAMESPACE, &args);
        let out = run_with_timeout(&mut cmd, None, self.opts.ctr_timeout)?;
        if !out.success() {
            bail!(
                "ctr -n {} {args:?} failed (exit {:?}): {}",
                crate::cri::CRI_NAMESPACE,
                out.status,
                out.stderr.trim_end()
            );
        }
        let cri = self.cri()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cri.image_present(reference)? {
            if Instant::now() >= deadline {
                bail!("CRI does not list {reference} 10 s after its import");
            }
            thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Imports the locally built pause image, the `sandbox_image`.
    fn import_pause_image(&self) -> Result<()> {
        let tar = crate::images::pause_image(crate::cri::PAUSE_IMAGE)?;
        self.cri_import(&tar, crate::cri::PAUSE_IMAGE)
    }

    /// Notes a pod network namespace the leftovers check must see gone.
    pub fn track_netns(&self, path: &Path) {
        if let Ok(mut set) = self.netns.lock() {
            set.insert(path.to_path_buf());
        }
    }

    /// The gRPC socket (`T/containerd.sock`).
    pub fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    /// The ttrpc socket (`T/containerd.sock.ttrpc`).
    pub fn ttrpc_socket(&self) -> PathBuf {
        self.dir.join("containerd.sock.ttrpc")
    }

    /// containerd's root directory (`T/root`).
    pub fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    /// containerd's state directory (`T/state`).
    pub fn state(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// The harness' temporary directory `T`.
    pub fn tempdir(&self) -> &Path {
        &self.dir
    }

    /// Directory for `ctr`'s IO FIFOs (`T/fifo`).
    pub fn fifo_dir(&self) -> PathBuf {
        self.dir.join("fifo")
    }

    /// The generated config file (`T/config.toml`).
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("config.toml")
    }

    /// containerd's log (`T/containerd.log`).
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("containerd.log")
    }

    /// The last `n` lines of containerd's log.
    pub fn log_tail(&self, n: usize) -> String {
        tail_of(&self.log_path(), n)
    }

    /// The `ctr` namespace.
    pub fn namespace(&self) -> &str {
        &self.opts.namespace
    }

    /// The shim whose directory is on containerd's `PATH`, if any.
    pub fn shim(&self) -> Option<&Path> {
        self.shim.as_deref()
    }

    /// The options this containerd was started with.
    pub fn options(&self) -> &ContainerdOptions {
        &self.opts
    }

    /// Process id of containerd, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Notes a container id used by the test, so that
    /// [`assert_no_leftovers`](Self::assert_no_leftovers) checks its cgroups,
    /// shim socket and runc state. Ids passed to `ctr run` and `ctr
    /// containers create` are tracked automatically.
    pub fn track_container_id(&self, id: &str) {
        if let Ok(mut ids) = self.ids.lock() {
            ids.insert(id.to_string());
        }
    }

    /// The container ids tracked so far.
    pub fn tracked_ids(&self) -> Vec<String> {
        self.ids
            .lock()
            .map(|ids| ids.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// A container id unique among all harnesses on the host (`PREFIX-PID-N`),
    /// already tracked.
    pub fn unique_id(&self, prefix: &str) -> String {
        let n = UNIQUE.fetch_add(1, Ordering::Relaxed);
        let id = format!("{prefix}-{}-{n}", std::process::id());
        self.track_container_id(&id);
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_quoting() {
        assert_eq!(toml_str("/tmp/a\"b\\c"), "\"/tmp/a\\\"b\\\\c\"");
        assert_eq!(toml_str("x\ny"), "\"x\\u000Ay\"");
    }
}
