//! `wasmpod-node`: puts wasmpod on a Kubernetes node and takes it off again.
//! The Helm chart's DaemonSet runs `install --wait` in a privileged pod with
//! the node's `/` at `/host` (`hostPID: true`); its pre-delete hooks run
//! `uninstall --wait` on every node and `wait-unlabeled` once.
//!
//! Each node goes through the steps of [`node::Step`], recorded in the
//! node's state file before each acts and mirrored in the node's step label
//! (`wasmpod.io/step`), so that a failed restart, a pod restart or a SIGTERM
//! resumes where it stopped:
//!
//! - `install`: step label on (before any host file changes), copies the
//!   shim (checksum verified, atomically), registers the `wasmpod` handler
//!   in containerd's config (backup kept), restarts the containerd serving
//!   the configured socket (retried with backoff until it works), waits
//!   until CRI on that socket lists the handler, and only then labels the
//!   node `wasmpod.io/ready=true`.
//! - `uninstall`: ready label off, restores the config (byte for byte when
//!   nothing else changed it), restarts containerd until CRI no longer lists
//!   the handler, removes the shim and the state, and removes the step label
//!   last: that is the "done" the waiter waits for.
//! - `status`: the step, the last failure, and whether CRI answers with the
//!   handler (the DaemonSet's readiness probe).
//! - `wait-unlabeled`: waits until no node carries either label.

mod flow;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::{Args, Parser, Subcommand};
use wasmpod_runtimeclass::kube::ApiServer;
use wasmpod_runtimeclass::node::{self, on_host, Distro, Target};
use wasmpod_runtimeclass::{config, cri, restart, sys, HANDLER, SHIM_BINARY};

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
    Install(flow::Install),
    /// Undo what install did.
    Uninstall(flow::Uninstall),
    /// Report the node's step; exit 1 unless the handler answers.
    Status(Status),
    /// Wait until no node carries the ready or the step label (helm
    /// uninstall's hook).
    WaitUnlabeled(WaitUnlabeled),
    /// Internal: join the namespaces (and cgroups) of PID, then exec ARGV.
    #[command(hide = true)]
    Enter(Enter),
}

#[derive(Args, Clone)]
pub struct NodeArgs {
    /// Where the node's `/` is mounted.
    #[arg(long, default_value = "/")]
    pub host_root: PathBuf,
    /// Distribution: auto, containerd, k3s, rke2, microk8s, k0s.
    #[arg(long, default_value = "auto")]
    pub distro: String,
    /// The containerd config to edit (host path; default: the distribution's).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// containerd's socket (host path; default: the distribution's). The
    /// containerd listening on it is the one restarted and asked for the
    /// handler.
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Host directory of the shim binary.
    #[arg(long, default_value = "/usr/local/bin")]
    pub bin_dir: PathBuf,
    /// Where the installer records what it did (default: the host's
    /// /var/lib/wasmpod/node-state.json).
    #[arg(long)]
    pub state_file: Option<PathBuf>,
}

impl NodeArgs {
    pub fn state_file(&self) -> PathBuf {
        self.state_file
            .clone()
            .unwrap_or_else(|| on_host(&self.host_root, Path::new(node::STATE_FILE)))
    }
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
    api: flow::ApiArgs,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
}

#[derive(Args)]
struct Enter {
    /// The process whose namespaces to join.
    #[arg(long)]
    pid: u32,
    /// Join its cgroups too.
    #[arg(long)]
    cgroups: bool,
    /// The program and its arguments.
    #[arg(last = true, required = true)]
    argv: Vec<String>,
}

/// `PATH` of commands run on the host.
const HOST_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = match cli.command {
        // before any runtime thread exists: setns(CLONE_NEWNS) needs a
        // single-threaded process
        Cmd::Enter(e) => return enter(&e),
        other => other,
    };
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
        match command {
            Cmd::Install(a) => flow::install(a).await,
            Cmd::Uninstall(a) => flow::uninstall(a).await,
            Cmd::Status(a) => status(a).await,
            Cmd::WaitUnlabeled(a) => wait_unlabeled(a).await,
            Cmd::Enter(_) => unreachable!("handled above"),
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

/// The restart's helper process: joins the target's namespaces and cgroups,
/// then becomes the restart command. Exit 125 when it cannot.
fn enter(e: &Enter) -> ExitCode {
    let fail = |what: &str, err: &dyn std::fmt::Display| {
        eprintln!("wasmpod-node: {what} of pid {}: {err}", e.pid);
        ExitCode::from(125)
    };
    if let Err(err) = sys::join_namespaces(e.pid) {
        return fail("join the namespaces", &err);
    }
    if e.cgroups {
        if let Err(err) = sys::join_cgroups(e.pid) {
            return fail("join the cgroups", &err);
        }
    }
    let err = Command::new(&e.argv[0])
        .args(&e.argv[1..])
        .env("PATH", HOST_PATH)
        .exec();
    eprintln!("wasmpod-node: exec {}: {err}", e.argv[0]);
    ExitCode::from(127)
}

pub fn target(a: &NodeArgs) -> Result<Target> {
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

pub fn say(msg: impl AsRef<str>) {
    println!("wasmpod-node: {}", msg.as_ref());
}

async fn status(a: Status) -> Result<()> {
    let t = target(&a.node)?;
    let host = &a.node.host_root;
    let bin = on_host(host, &a.node.bin_dir.join(SHIM_BINARY));
    let config = std::fs::read_to_string(on_host(host, &t.config)).unwrap_or_default();
    let registered = config::is_installed(&config);
    let socket = on_host(host, &t.socket);
    let answers = cri::has_handler(&socket, HANDLER).await;
    let state = node::read_state(&a.node.state_file());
    if !a.quiet {
        say(format!("distribution {:?}", t.distro));
        match &state {
            Some(s) => {
                say(format!("step {}", s.step));
                if let Some(e) = &s.last_error {
                    say(format!("last failure ({} so far): {e}", s.failures));
                }
            }
            None => say("step: none (no state file; not installed)"),
        }
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
        let served_by = match sys::socket_listener_pid(&socket) {
            Ok(Some(0)) => " (served from another PID namespace)".to_owned(),
            Ok(Some(pid)) => {
                let unit = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                    .ok()
                    .and_then(|c| restart::systemd_unit(&c));
                match unit {
                    Some(u) => format!(" (containerd pid {pid}, systemd unit {u})"),
                    None => format!(" (containerd pid {pid}, no systemd unit)"),
                }
            }
            _ => String::new(),
        };
        say(format!(
            "CRI {}{served_by}: {}",
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
        bail!(
            "not ready{}",
            state.map_or(String::new(), |s| format!(" (step {})", s.step))
        )
    }
}

async fn wait_unlabeled(a: WaitUnlabeled) -> Result<()> {
    let api = ApiServer::discover(
        a.api.api_server.as_deref(),
        a.api.token_file.as_deref(),
        a.api.ca_file.as_deref(),
    )?;
    let deadline = Instant::now() + Duration::from_secs(a.timeout);
    let mut last = String::new();
    loop {
        // every node the installer touched has the step label until its
        // uninstall is done; the ready label alone marks nodes set up by
        // an installer older than the step label
        let listed = async {
            let mut nodes = api.nodes_labelled(&a.api.step_label).await?;
            for (name, _) in api.nodes_labelled(&a.api.label).await? {
                if !nodes.iter().any(|(n, _)| *n == name) {
                    nodes.push((name, "ready".into()));
                }
            }
            Ok::<_, wasmpod_runtimeclass::kube::KubeError>(nodes)
        }
        .await;
        let now = match listed {
            Ok(nodes) if nodes.is_empty() => {
                say(format!(
                    "no node has {} or {}: every node is uninstalled",
                    a.api.step_label, a.api.label
                ));
                return Ok(());
            }
            Ok(nodes) => nodes
                .iter()
                .map(|(n, s)| format!("{n} ({s})"))
                .collect::<Vec<_>>()
                .join(", "),
            // retried: one failed call must not fail `helm uninstall`
            Err(e) => format!("{e} (retrying)"),
        };
        if now != last {
            say(format!("waiting for: {now}"));
            last = now;
        }
        if Instant::now() > deadline {
            bail!(
                "not every node is uninstalled after {} s: {last}",
                a.timeout
            );
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
