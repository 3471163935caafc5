//! `wasmpod-node`: puts wasmpod on a Kubernetes node and takes it off again.
//! The Helm chart's DaemonSet runs `install --wait` in a privileged pod with
//! the node's `/` at `/host` (`hostPID: true`); its pre-delete hooks run
//! `uninstall --wait` on every node and `wait-unlabeled` once.
//!
//! - `install`: copies the shim (checksum verified, atomically), registers
//!   the `wasmpod` handler in the distribution's containerd config (backup
//!   kept), restarts its service when the config changed, waits until CRI
//!   lists the handler, then labels the node (`wasmpod.io/ready=true`).
//! - `uninstall`: unlabels, restores the config (byte for byte when nothing
//!   else changed it), restarts, removes the shim.
//! - `status`: what is installed and whether CRI answers with the handler.
//! - `wait-unlabeled`: waits until no node carries the label.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use wasmpod_runtimeclass::kube::ApiServer;
use wasmpod_runtimeclass::node::{self, on_host, Distro, State, Target};
use wasmpod_runtimeclass::{config, cri, sys, HANDLER, SHIM_BINARY};

#[derive(Parser)]
#[command(
    name = "wasmpod-node",
    version,
    about = "Install wasmpod on a Kubernetes node"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the shim and register the handler with containerd.
    Install(Install),
    /// Undo what install did.
    Uninstall(Uninstall),
    /// Report what is installed; exit 1 unless the handler answers.
    Status(Status),
    /// Wait until no node carries the label (helm uninstall's hook).
    WaitUnlabeled(WaitUnlabeled),
}

#[derive(Args, Clone)]
struct NodeArgs {
    /// Where the node's `/` is mounted.
    #[arg(long, default_value = "/")]
    host_root: PathBuf,
    /// Distribution: auto, containerd, k3s, rke2, microk8s, k0s.
    #[arg(long, default_value = "auto")]
    distro: String,
    /// The containerd config to edit (host path; default: the distribution's).
    #[arg(long)]
    config: Option<PathBuf>,
    /// containerd's socket (host path; default: the distribution's).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Host directory of the shim binary.
    #[arg(long, default_value = "/usr/local/bin")]
    bin_dir: PathBuf,
    /// Where the installer records what it did (default: the host's
    /// /var/lib/wasmpod/node-state.json).
    #[arg(long)]
    state_file: Option<PathBuf>,
}

impl NodeArgs {
    fn state_file(&self) -> PathBuf {
        self.state_file
            .clone()
            .unwrap_or_else(|| on_host(&self.host_root, Path::new(node::STATE_FILE)))
    }
}

#[derive(Args, Clone)]
struct RestartArgs {
    /// `auto`: restart the distribution's service with systemctl in the
    /// node's mount namespace; `none`: leave it (the caller restarts).
    #[arg(long, default_value = "auto")]
    restart: String,
    /// Run this shell command (on the host) instead of systemctl.
    #[arg(long)]
    restart_command: Option<String>,
    /// How long to wait for CRI to list the handler after a restart.
    #[arg(long, default_value_t = 120)]
    handler_timeout: u64,
}

#[derive(Args, Clone)]
struct ApiArgs {
    /// This node's name (default `$NODE_NAME`, from the downward API in a
    /// pod); no labelling without it.
    #[arg(long)]
    node_name: Option<String>,
    /// The readiness label.
    #[arg(long, default_value = "wasmpod.io/ready")]
    label: String,
    /// API server URL (default: in-cluster).
    #[arg(long)]
    api_server: Option<String>,
    /// Bearer token file (default: the service account's).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// CA bundle (default: the service account's).
    #[arg(long)]
    ca_file: Option<PathBuf>,
}

#[derive(Args)]
struct Install {
    #[command(flatten)]
    node: NodeArgs,
    #[command(flatten)]
    restart: RestartArgs,
    #[command(flatten)]
    api: ApiArgs,
    /// The shim binary to install.
    #[arg(long, default_value = "/opt/wasmpod/containerd-shim-wasmpod-v1")]
    shim: PathBuf,
    /// Its expected sha256 (default: the `<shim>.sha256` file, when present).
    #[arg(long)]
    shim_sha256: Option<String>,
    /// Config version for a missing or empty config (default: from the
    /// host's containerd version, else 2).
    #[arg(long)]
    config_version: Option<i64>,
    /// After installing, keep running until SIGTERM (a DaemonSet pod).
    #[arg(long)]
    wait: bool,
}

#[derive(Args)]
struct Uninstall {
    #[command(flatten)]
    node: NodeArgs,
    #[command(flatten)]
    restart: RestartArgs,
    #[command(flatten)]
    api: ApiArgs,
    /// After uninstalling, keep running until SIGTERM.
    #[arg(long)]
    wait: bool,
}

#[derive(Args)]
struct Status {
    #[command(flatten)]
    node: NodeArgs,
    /// Print nothing; only the exit code tells.
    #[arg(long)]
    quiet: bool,
}

#[derive(Args)]
struct WaitUnlabeled {
    #[command(flatten)]
    api: ApiArgs,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
}

fn main() -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wasmpod-node: async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match Cli::parse().command {
            Cmd::Install(a) => install(a).await,
            Cmd::Uninstall(a) => uninstall(a).await,
            Cmd::Status(a) => status(a).await,
            Cmd::WaitUnlabeled(a) => wait_unlabeled(a).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wasmpod-node: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn target(a: &NodeArgs) -> Result<Target> {
    let distro = match a.distro.as_str() {
        "auto" => None,
        d => Some(d.parse::<Distro>().map_err(anyhow::Error::msg)?),
    };
    let mut t = node::target(&a.host_root, distro);
    if let Some(c) = &a.config {
        t.config = c.clone();
        if t.kind != node::ConfigKind::DropIn {
            t.kind = if c.extension().is_some_and(|e| e == "tmpl") {
                t.kind.clone()
            } else {
                node::ConfigKind::Toml
            };
        }
    }
    if let Some(s) = &a.socket {
        t.socket = s.clone();
    }
    Ok(t)
}

fn say(msg: impl AsRef<str>) {
    println!("wasmpod-node: {}", msg.as_ref());
}

/// The host containerd's config version for new configs: 3 for containerd 2.x.
fn host_config_version(host_root: &Path) -> i64 {
    for bin in ["usr/local/bin/containerd", "usr/bin/containerd"] {
        let path = host_root.join(bin);
        if let Ok(out) = Command::new(&path).arg("--version").output() {
            let text = String::from_utf8_lossy(&out.stdout);
            let version = text.split_whitespace().nth(2).unwrap_or("");
            if version.trim_start_matches('v').starts_with("2.") {
                return 3;
            }
            return 2;
        }
    }
    2
}

async fn install(a: Install) -> Result<()> {
    let t = target(&a.node)?;
    let host = &a.node.host_root;
    say(format!(
        "{:?} node: config {} ({:?})",
        t.distro,
        t.config.display(),
        t.kind
    ));

    let want = match &a.shim_sha256 {
        Some(s) => Some(s.clone()),
        None => std::fs::read_to_string(format!("{}.sha256", a.shim.display()))
            .ok()
            .map(|s| s.split_whitespace().next().unwrap_or("").to_owned()),
    };
    let bin = a.node.bin_dir.join(SHIM_BINARY);
    let (sum, copied) = node::install_binary(&a.shim, &on_host(host, &bin), want.as_deref())
        .with_context(|| format!("install {}", bin.display()))?;
    say(format!(
        "{} {} (sha256 {sum})",
        bin.display(),
        if copied {
            "installed"
        } else {
            "already up to date"
        }
    ));

    let state_file = a.node.state_file();
    let mut state = node::read_state(&state_file).unwrap_or_default();
    state.binary = bin.clone();
    state.binary_sha256 = sum;
    let version = a
        .config_version
        .unwrap_or_else(|| host_config_version(host));
    let change = node::register(host, &t, version, &mut state)?;
    node::write_state(&state_file, &state)?;
    say(format!(
        "handler {HANDLER} {} in {} (config version {}, SystemdCgroup {})",
        if change.changed {
            "registered"
        } else {
            "already registered"
        },
        t.config.display(),
        change.version,
        change.systemd_cgroup
    ));
    if change.changed {
        restart(&a.restart, &t, host)?;
    }
    wait_for_handler(&t, host, &a.restart).await?;
    label(&a.api, Some("true")).await?;
    stay(a.wait, "installed").await;
    Ok(())
}

async fn uninstall(a: Uninstall) -> Result<()> {
    let t = target(&a.node)?;
    let host = &a.node.host_root;
    label(&a.api, None).await?;
    let state_file = a.node.state_file();
    let state: Option<State> = node::read_state(&state_file);
    let changed = node::unregister(host, &t, state.as_ref())?;
    say(format!(
        "handler {HANDLER} {} from {}",
        if changed {
            "removed"
        } else {
            "was not registered"
        },
        state.as_ref().map_or(&t.config, |s| &s.config).display()
    ));
    if changed {
        restart(&a.restart, &t, host)?;
    }
    let bin = state
        .as_ref()
        .filter(|s| !s.binary.as_os_str().is_empty())
        .map_or_else(|| a.node.bin_dir.join(SHIM_BINARY), |s| s.binary.clone());
    let host_bin = on_host(host, &bin);
    if host_bin.exists() {
        std::fs::remove_file(&host_bin).with_context(|| format!("remove {}", bin.display()))?;
        say(format!("{} removed", bin.display()));
    }
    node::remove_state(&state_file);
    stay(a.wait, "uninstalled").await;
    Ok(())
}

async fn status(a: Status) -> Result<()> {
    let t = target(&a.node)?;
    let host = &a.node.host_root;
    let bin = on_host(host, &a.node.bin_dir.join(SHIM_BINARY));
    let config = std::fs::read_to_string(on_host(host, &t.config)).unwrap_or_default();
    let registered = config::is_installed(&config);
    let answers = cri::has_handler(&on_host(host, &t.socket), HANDLER).await;
    if !a.quiet {
        say(format!("distribution {:?}", t.distro));
        say(format!(
            "shim {}: {}",
            bin.display(),
            if bin.exists() { "present" } else { "missing" }
        ));
        say(format!(
            "config {}: handler {}",
            t.config.display(),
            if registered {
                "registered"
            } else {
                "not registered"
            }
        ));
        say(format!(
            "CRI {}: {}",
            t.socket.display(),
            match &answers {
                Ok(true) => "lists the wasmpod handler".to_owned(),
                Ok(false) => "does not list the wasmpod handler (restart containerd?)".to_owned(),
                Err(e) => e.clone(),
            }
        ));
    }
    if bin.exists() && registered && answers == Ok(true) {
        Ok(())
    } else {
        bail!("not ready")
    }
}

async fn wait_unlabeled(a: WaitUnlabeled) -> Result<()> {
    let api = ApiServer::discover(
        a.api.api_server.as_deref(),
        a.api.token_file.as_deref(),
        a.api.ca_file.as_deref(),
    )?;
    let deadline = Instant::now() + Duration::from_secs(a.timeout);
    loop {
        let nodes = api.nodes_with_label(&a.api.label).await?;
        if nodes.is_empty() {
            say(format!("no node has {}", a.api.label));
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "nodes still labelled {} after {} s: {}",
                a.api.label,
                a.timeout,
                nodes.join(", ")
            );
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

fn restart(r: &RestartArgs, t: &Target, host: &Path) -> Result<()> {
    if let Some(cmd) = &r.restart_command {
        say(format!("restarting: {cmd}"));
        let mut c = Command::new("/bin/sh");
        c.args(["-c", cmd]);
        if host != Path::new("/") {
            sys::in_host_mount_namespace(&mut c).context("enter the node's mount namespace")?;
        }
        let st = c.status().with_context(|| format!("run {cmd}"))?;
        if !st.success() {
            bail!("restart command {cmd:?} failed: {st}");
        }
        return Ok(());
    }
    match r.restart.as_str() {
        "none" => {
            say("not restarting (--restart none): restart containerd to load the handler");
            Ok(())
        }
        "auto" => {
            let unit_dirs = [
                "etc/systemd/system",
                "lib/systemd/system",
                "usr/lib/systemd/system",
                "run/systemd/system",
            ];
            let service = t
                .services
                .iter()
                .find(|s| unit_dirs.iter().any(|d| host.join(d).join(format!("{s}.service")).exists()))
                .with_context(|| format!("none of the services {:?} has a systemd unit on this node; use --restart-command", t.services))?;
            say(format!("restarting {service}"));
            let mut c = Command::new("systemctl");
            c.args(["restart", service]).env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            );
            if host != Path::new("/") {
                sys::in_host_mount_namespace(&mut c).context("enter the node's mount namespace")?;
            }
            let st = c.status().context("run systemctl")?;
            if !st.success() {
                bail!("systemctl restart {service} failed: {st}");
            }
            Ok(())
        }
        other => bail!("--restart {other:?}: expected auto or none"),
    }
}

async fn wait_for_handler(t: &Target, host: &Path, r: &RestartArgs) -> Result<()> {
    if r.restart == "none" && r.restart_command.is_none() {
        return Ok(());
    }
    let socket = on_host(host, &t.socket);
    let deadline = Instant::now() + Duration::from_secs(r.handler_timeout);
    loop {
        match cri::has_handler(&socket, HANDLER).await {
            Ok(true) => {
                say(format!(
                    "CRI on {} lists the {HANDLER} handler",
                    t.socket.display()
                ));
                return Ok(());
            }
            result if Instant::now() > deadline => {
                bail!(
                    "CRI on {} does not list the {HANDLER} handler after {} s: {:?}",
                    t.socket.display(),
                    r.handler_timeout,
                    result
                )
            }
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

async fn label(a: &ApiArgs, value: Option<&str>) -> Result<()> {
    let node = a
        .node_name
        .clone()
        .or_else(|| std::env::var("NODE_NAME").ok().filter(|n| !n.is_empty()));
    let Some(node) = &node else {
        say("no --node-name / NODE_NAME: not labelling");
        return Ok(());
    };
    let api = ApiServer::discover(
        a.api_server.as_deref(),
        a.token_file.as_deref(),
        a.ca_file.as_deref(),
    )?;
    api.label_node(node, &a.label, value).await?;
    say(match value {
        Some(v) => format!("node {node} labelled {}={v}", a.label),
        None => format!("label {} removed from node {node}", a.label),
    });
    Ok(())
}

/// With `--wait`, keeps the process (a DaemonSet pod) running until SIGTERM.
async fn stay(wait: bool, what: &str) {
    if wait {
        say(format!("{what}; waiting for SIGTERM"));
        wait_for_sigterm().await;
    }
}

async fn wait_for_sigterm() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
