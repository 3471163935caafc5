//! `install` and `uninstall`, step by step (see [`Step`]): each step is
//! written to the state file before it acts, failures of a restart or of
//! the wait for CRI are retried with backoff (forever with `--wait`, the
//! DaemonSet's mode, else `--attempts` times), and SIGTERM either lets the
//! running command finish or stops at a recorded step that the next run
//! resumes.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use tokio::sync::watch;
use wasmpod_runtimeclass::kube::ApiServer;
use wasmpod_runtimeclass::node::{self, on_host, State, Step, Target};
use wasmpod_runtimeclass::restart::{self, Mode};
use wasmpod_runtimeclass::{cri, HANDLER, SHIM_BINARY};

use crate::{say, target, NodeArgs};

#[derive(Args, Clone)]
pub struct RestartArgs {
    /// `auto`: restart the systemd unit that runs the containerd serving
    /// the socket; `none`: leave it (the node is labelled once CRI lists
    /// the handler).
    #[arg(long, default_value = "auto")]
    pub restart: String,
    /// Run this shell command (in the namespaces and cgroups of the
    /// containerd serving the socket) instead of systemctl.
    #[arg(long)]
    pub restart_command: Option<String>,
    /// How long to wait for CRI to (stop) listing the handler after a
    /// restart before the attempt counts as failed.
    #[arg(long, default_value_t = 120)]
    pub handler_timeout: u64,
    /// Without --wait: attempts (restart, then wait for CRI) before giving
    /// up with the step recorded. With --wait: retried until it works.
    #[arg(long, default_value_t = 3)]
    pub attempts: u32,
}

#[derive(Args, Clone)]
pub struct ApiArgs {
    /// This node's name (default `$NODE_NAME`, from the downward API in a
    /// pod); no labelling without it.
    #[arg(long)]
    pub node_name: Option<String>,
    /// The readiness label: on while CRI lists the handler.
    #[arg(long, default_value = "wasmpod.io/ready")]
    pub label: String,
    /// The step label: the node's step, on from the first change to the
    /// node until its uninstall is done.
    #[arg(long, default_value = "wasmpod.io/step")]
    pub step_label: String,
    /// API server URL (default: in-cluster).
    #[arg(long)]
    pub api_server: Option<String>,
    /// Bearer token file (default: the service account's).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// CA bundle (default: the service account's).
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
}

#[derive(Args)]
pub struct Install {
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
    /// Config version for a missing or empty config (default, or 0: from
    /// the version of the containerd serving the socket, else 2).
    #[arg(long)]
    config_version: Option<i64>,
    /// Retry until done, then keep running until SIGTERM (a DaemonSet pod).
    #[arg(long)]
    wait: bool,
}

#[derive(Args)]
pub struct Uninstall {
    #[command(flatten)]
    node: NodeArgs,
    #[command(flatten)]
    restart: RestartArgs,
    #[command(flatten)]
    api: ApiArgs,
    /// Retry until done, then keep running until SIGTERM.
    #[arg(long)]
    wait: bool,
}

/// SIGTERM or SIGINT seen.
struct Term(watch::Receiver<bool>);

impl Term {
    fn new() -> Result<Term> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
        let (tx, rx) = watch::channel(false);
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            let _ = tx.send(true);
        });
        Ok(Term(rx))
    }

    fn is_set(&self) -> bool {
        *self.0.borrow()
    }

    /// Sleeps `d`; `true` when a signal ended it.
    async fn sleep(&mut self, d: Duration) -> bool {
        if self.is_set() {
            return true;
        }
        tokio::select! {
            _ = tokio::time::sleep(d) => self.is_set(),
            _ = self.0.changed() => true,
        }
    }

    async fn wait(&mut self) {
        while !self.is_set() {
            if self.0.changed().await.is_err() {
                return;
            }
        }
    }
}

/// The node's labels, when the installer knows its node.
struct Labels {
    api: ApiServer,
    node: String,
    ready: String,
    step: String,
}

impl Labels {
    fn new(a: &ApiArgs) -> Result<Option<Labels>> {
        let node = a
            .node_name
            .clone()
            .or_else(|| std::env::var("NODE_NAME").ok().filter(|n| !n.is_empty()));
        let Some(node) = node else {
            say("no --node-name / NODE_NAME: not labelling");
            return Ok(None);
        };
        let api = ApiServer::discover(
            a.api_server.as_deref(),
            a.token_file.as_deref(),
            a.ca_file.as_deref(),
        )?;
        Ok(Some(Labels {
            api,
            node,
            ready: a.label.clone(),
            step: a.step_label.clone(),
        }))
    }

    /// One merge patch of the ready label (`Some(None)`: remove it) and the
    /// step label (`None`: remove it), retried while the API server says
    /// "later" or does not answer.
    async fn set(
        &self,
        ready: Option<Option<&str>>,
        step: Option<Step>,
        term: &mut Term,
    ) -> Result<()> {
        let mut labels = vec![(self.step.as_str(), step.map(Step::as_str))];
        if let Some(r) = ready {
            labels.push((self.ready.as_str(), r));
        }
        let mut delay = Duration::from_secs(1);
        for attempt in 1.. {
            match self.api.patch_labels(&self.node, &labels).await {
                Ok(()) => break,
                Err(e) if e.is_transient() && attempt < 6 => {
                    say(format!("{e}; retrying in {} s", delay.as_secs()));
                    if term.sleep(delay).await {
                        return Err(e).context("terminated while retrying");
                    }
                    delay *= 2;
                }
                Err(e) => return Err(e.into()),
            }
        }
        let shown: Vec<String> = labels
            .iter()
            .map(|(k, v)| match v {
                Some(v) => format!("{k}={v}"),
                None => format!("{k}-"),
            })
            .collect();
        say(format!("node {}: {}", self.node, shown.join(" ")));
        Ok(())
    }

    async fn step(labels: &Option<Labels>, step: Option<Step>, term: &mut Term) -> Result<()> {
        match labels {
            Some(l) => l.set(None, step, term).await,
            None => Ok(()),
        }
    }
}

/// The state, its file, and the retry bookkeeping of one run.
struct Progress {
    state: State,
    file: PathBuf,
    failures_this_run: u32,
    attempts: u32,
    wait: bool,
}

impl Progress {
    /// Records `step` (the failure count carries on: a restart that keeps
    /// failing alternates between two steps, and its backoff must grow).
    fn enter(&mut self, step: Step) -> Result<()> {
        self.state.step = step;
        node::write_state(&self.file, &self.state)?;
        say(format!("step {step}"));
        Ok(())
    }

    /// Records `step` as reached after the failures: the count restarts.
    fn succeed(&mut self, step: Step) -> Result<()> {
        self.state.failures = 0;
        self.state.last_error = None;
        self.enter(step)
    }

    /// Records a failed attempt and sleeps before the next one; `Err` when
    /// this run gives up (attempts spent, or terminated), with the step kept
    /// for the next run.
    async fn failed(&mut self, e: anyhow::Error, term: &mut Term) -> Result<()> {
        let step = self.state.step;
        if term.is_set() {
            bail!(
                "terminated at step {step} ({e:#}); {} records it: the next run resumes there",
                self.file.display()
            );
        }
        let msg = format!("{e:#}");
        self.state.failures += 1;
        self.state.last_error = Some(msg.clone());
        node::write_state(&self.file, &self.state)?;
        self.failures_this_run += 1;
        if !self.wait && self.failures_this_run >= self.attempts {
            bail!(
                "{msg}; the node stays at step {step} ({} recorded in {}): run again to resume",
                self.state.failures,
                self.file.display()
            );
        }
        // 2, 4, 8, 16, 32, then 60 s
        let delay = Duration::from_secs(
            (2u64 << self.state.failures.clamp(1, 6).saturating_sub(1)).min(60),
        );
        say(format!(
            "{msg} (failure {} at step {step}); retrying in {} s",
            self.state.failures,
            delay.as_secs()
        ));
        if term.sleep(delay).await {
            bail!(
                "terminated at step {step}; {} records it: the next run resumes there",
                self.file.display()
            );
        }
        Ok(())
    }
}

/// One `install` or `uninstall` at a time on a node (a restarting installer
/// pod and the uninstall hook's pod may overlap): an exclusive `flock` of
/// the state file's directory, held while the run changes the node and
/// released before `--wait` idles. SIGTERM ends the wait for it.
async fn lock_node(state_file: &Path, term: &mut Term) -> Result<Flock<std::fs::File>> {
    let dir = state_file.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let mut file = std::fs::File::open(dir).with_context(|| format!("open {}", dir.display()))?;
    let mut said = false;
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(lock),
            Err((f, Errno::EWOULDBLOCK)) => {
                if !said {
                    say(format!(
                        "another wasmpod-node run holds {}; waiting for it",
                        dir.display()
                    ));
                    said = true;
                }
                if term.sleep(Duration::from_secs(1)).await {
                    bail!("terminated while waiting for another run on this node");
                }
                file = f;
            }
            Err((_, e)) => bail!("lock {}: {e}", dir.display()),
        }
    }
}

/// The config version a missing or empty config gets: 3 for containerd 2.x.
/// Asked of the containerd serving the socket (CRI `Version`), which may be
/// anywhere on the node; else of the `containerd` binaries at the usual
/// places; else 2.
async fn host_config_version(host_root: &Path, t: &Target) -> i64 {
    if let Ok(v) = cri::runtime_version(&on_host(host_root, &t.socket)).await {
        return cri::config_version_for(&v);
    }
    for bin in ["usr/local/bin/containerd", "usr/bin/containerd"] {
        let path = host_root.join(bin);
        if let Ok(out) = std::process::Command::new(&path).arg("--version").output() {
            let text = String::from_utf8_lossy(&out.stdout);
            return cri::config_version_for(text.split_whitespace().nth(2).unwrap_or(""));
        }
    }
    2
}

pub async fn install(a: Install) -> Result<()> {
    let mut term = Term::new()?;
    let t = target(&a.node)?;
    let host = a.node.host_root.clone();
    let mode = Mode::from_flags(&a.restart.restart, a.restart.restart_command.as_deref())?;
    say(format!(
        "{:?} node: config {} ({:?}), socket {}",
        t.distro,
        t.config.display(),
        t.kind,
        t.socket.display()
    ));
    let labels = Labels::new(&a.api)?;
    let file = a.node.state_file();
    let lock = lock_node(&file, &mut term).await?;
    let saved = node::read_state(&file);
    // the node counts as touched (for the uninstall waiter) before anything
    // on it changes; a resumed install shows the step it resumes
    let first = saved.as_ref().map_or(Step::Installing, |s| s.step);
    Labels::step(&labels, Some(first), &mut term).await?;
    let state = saved.unwrap_or_default();
    let mut p = Progress {
        state,
        file,
        failures_this_run: 0,
        attempts: a.restart.attempts.max(1),
        wait: a.wait,
    };

    let want = match &a.shim_sha256 {
        Some(s) => Some(s.clone()),
        None => std::fs::read_to_string(format!("{}.sha256", a.shim.display()))
            .ok()
            .map(|s| s.split_whitespace().next().unwrap_or("").to_owned()),
    };
    let bin = a.node.bin_dir.join(SHIM_BINARY);
    let (sum, copied) = node::install_binary(&a.shim, &on_host(&host, &bin), want.as_deref())
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
    p.state.binary = bin;
    p.state.binary_sha256 = sum;
    let p_file = p.file.clone();
    let version = match a.config_version {
        Some(v) if v > 0 => v,
        _ => host_config_version(&host, &t).await,
    };
    let change = node::register(&host, &t, version, &mut p.state, &mut |s| {
        let mut s = s.clone();
        s.step = Step::Installing;
        node::write_state(&p_file, &s)
    })?;
    p.state.step = Step::Installing;
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
    let socket = on_host(&host, &t.socket);
    let serving = cri::has_handler(&socket, HANDLER).await == Ok(true);
    let pending = change.changed || p.state.step.restart_pending() || !serving;
    let next = if pending && mode != Mode::None {
        Step::RestartPending
    } else {
        Step::WaitingForCri
    };
    p.enter(next)?;
    match &labels {
        // a node whose containerd does not serve the handler now is not
        // ready, whatever it was before
        Some(l) if !serving => l.set(Some(None), Some(next), &mut term).await?,
        _ => Labels::step(&labels, Some(next), &mut term).await?,
    }

    let timeout = Duration::from_secs(a.restart.handler_timeout);
    if mode == Mode::None && !serving {
        say(format!(
            "--restart none: restart containerd to load the handler; waiting for CRI on {} to list it",
            t.socket.display()
        ));
    }
    loop {
        if p.state.step == Step::RestartPending {
            if let Err(e) = run_restart(&mode, &t, &host).await {
                p.failed(e, &mut term).await?;
                continue;
            }
            p.enter(Step::WaitingForCri)?;
            Labels::step(&labels, Some(Step::WaitingForCri), &mut term).await?;
        }
        match wait_for_cri(&t, &host, true, timeout, &mut term).await {
            Ok(()) => break,
            Err(e) => {
                // a SIGTERM during the wait is not a failed restart
                if mode != Mode::None && !term.is_set() {
                    p.enter(Step::RestartPending)?;
                }
                p.failed(e, &mut term).await?;
            }
        }
    }
    p.succeed(Step::Ready)?;
    if let Some(l) = &labels {
        l.set(Some(Some("true")), Some(Step::Ready), &mut term)
            .await?;
    }
    drop(lock);
    stay(a.wait, "installed", &mut term).await;
    Ok(())
}

pub async fn uninstall(a: Uninstall) -> Result<()> {
    let mut term = Term::new()?;
    let t = target(&a.node)?;
    let host = a.node.host_root.clone();
    let mode = Mode::from_flags(&a.restart.restart, a.restart.restart_command.as_deref())?;
    let labels = Labels::new(&a.api)?;
    let file = a.node.state_file();
    let lock = lock_node(&file, &mut term).await?;
    let saved = node::read_state(&file);
    // the ready label comes off before the handler does: no new Wasm pod
    // is scheduled here from now on
    let resume = saved
        .as_ref()
        .is_some_and(|s| s.step == Step::UninstallRestartPending);
    let first = if resume {
        Step::UninstallRestartPending
    } else {
        Step::Uninstalling
    };
    if let Some(l) = &labels {
        l.set(Some(None), Some(first), &mut term).await?;
    }
    let mut p = Progress {
        state: saved.clone().unwrap_or_default(),
        file,
        failures_this_run: 0,
        attempts: a.restart.attempts.max(1),
        wait: a.wait,
    };
    let mut untouched = false;
    if !resume {
        p.succeed(Step::Uninstalling)?;
        let changed = node::unregister(&host, &t, saved.as_ref())?;
        // no state and no handler in the config: nothing of the installer's
        // is on this node, and containerd need not be asked or restarted
        untouched = saved.is_none() && !changed;
        say(format!(
            "handler {HANDLER} {} {}",
            if changed {
                "removed from"
            } else {
                "was not registered in"
            },
            saved.as_ref().map_or(&t.config, |s| &s.config).display()
        ));
        p.enter(Step::UninstallRestartPending)?;
        Labels::step(&labels, Some(Step::UninstallRestartPending), &mut term).await?;
    }

    // done when the containerd on the socket no longer serves the handler:
    // only then may its shim go
    let timeout = Duration::from_secs(a.restart.handler_timeout);
    let socket = on_host(&host, &t.socket);
    loop {
        let answer = cri::has_handler(&socket, HANDLER).await;
        if answer == Ok(false) {
            say(format!(
                "CRI on {} does not list the {HANDLER} handler",
                t.socket.display()
            ));
            break;
        }
        if let (true, Err(e)) = (untouched, &answer) {
            say(format!(
                "nothing to undo on this node (CRI on {}: {e})",
                t.socket.display()
            ));
            break;
        }
        if mode == Mode::None {
            say(format!(
                "--restart none: restart containerd to unload the handler; waiting for CRI on {} to stop listing it",
                t.socket.display()
            ));
        } else if let Err(e) = run_restart(&mode, &t, &host).await {
            p.failed(e, &mut term).await?;
            continue;
        }
        match wait_for_cri(&t, &host, false, timeout, &mut term).await {
            Ok(()) => break,
            Err(e) => p.failed(e, &mut term).await?,
        }
    }
    let bin = saved
        .as_ref()
        .filter(|s| !s.binary.as_os_str().is_empty())
        .map_or_else(|| a.node.bin_dir.join(SHIM_BINARY), |s| s.binary.clone());
    let host_bin = on_host(&host, &bin);
    if host_bin.exists() {
        std::fs::remove_file(&host_bin).with_context(|| format!("remove {}", bin.display()))?;
        say(format!("{} removed", bin.display()));
    }
    node::remove_state(&p.file);
    // the waiter's "done": the step label goes last
    if let Some(l) = &labels {
        l.set(Some(None), None, &mut term).await?;
    }
    say("uninstalled");
    drop(lock);
    stay(a.wait, "uninstalled", &mut term).await;
    Ok(())
}

/// One restart of the containerd serving the target's socket, through the
/// `enter` helper (a fresh single-threaded process of this binary). A
/// SIGTERM meanwhile does not stop it: the command finishes, and the caller
/// sees the signal at its next wait.
async fn run_restart(mode: &Mode, t: &Target, host: &Path) -> Result<()> {
    let Some(plan) = restart::plan(mode, t, host)? else {
        return Ok(());
    };
    let whose = if plan.serving {
        format!(
            "containerd pid {} (serving {})",
            plan.pid,
            t.socket.display()
        )
    } else {
        format!("the node's PID 1 (nothing serves {})", t.socket.display())
    };
    say(format!(
        "restarting containerd: {} in the namespaces{} of {whose}",
        plan.what,
        if plan.join_cgroups {
            " and cgroups"
        } else {
            ""
        }
    ));
    let exe = std::env::current_exe().context("this program's path")?;
    let mut c = tokio::process::Command::new(exe);
    c.arg("enter").arg("--pid").arg(plan.pid.to_string());
    if plan.join_cgroups {
        c.arg("--cgroups");
    }
    c.arg("--").args(&plan.argv).stdin(Stdio::null());
    let st = c
        .status()
        .await
        .with_context(|| format!("run {}", plan.what))?;
    if !st.success() {
        bail!("{} failed: {st}", plan.what);
    }
    Ok(())
}

/// Waits until CRI on the target's socket lists the handler (`listed`) or
/// answers without it (`!listed`), for `timeout`.
async fn wait_for_cri(
    t: &Target,
    host: &Path,
    listed: bool,
    timeout: Duration,
    term: &mut Term,
) -> Result<()> {
    let socket = on_host(host, &t.socket);
    let deadline = Instant::now() + timeout;
    loop {
        let answer = cri::has_handler(&socket, HANDLER).await;
        if answer == Ok(listed) {
            say(format!(
                "CRI on {} {} the {HANDLER} handler",
                t.socket.display(),
                if listed { "lists" } else { "no longer lists" }
            ));
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "CRI on {} {} the {HANDLER} handler after {} s ({})",
                t.socket.display(),
                if listed {
                    "does not list"
                } else {
                    "still lists"
                },
                timeout.as_secs(),
                match answer {
                    Ok(_) => "it answers".to_owned(),
                    Err(e) => e,
                }
            );
        }
        if term.sleep(Duration::from_millis(500)).await {
            bail!("terminated while waiting for CRI on {}", t.socket.display());
        }
    }
}

/// With `--wait`, keeps the process (a DaemonSet pod) running until SIGTERM.
async fn stay(wait: bool, what: &str, term: &mut Term) {
    if wait {
        say(format!("{what}; waiting for SIGTERM"));
        term.wait().await;
    }
}
