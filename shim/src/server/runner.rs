//! The shim's side of a runner process: starting it (in its cgroup, in a
//! pod's PID namespace when shared), sending it the run request, and reading
//! its reply once it has loaded the workload or failed to.

use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::Path;
use std::process::{Command, Stdio as ProcessStdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::oneshot;

use crate::control::{self, Reply, RunRequest, RUNNER_ARG};
use crate::error::{Error, Result};
use crate::exit::Exit;
use crate::server::cgroup::{CgroupError, ContainerCgroup};
use crate::server::exits::ExitRouter;
use crate::server::stdio::ChildStdio;
use crate::sys::spawn as sys;

/// How long a runner may take to load and link its Wasm before `Create`
/// gives up (compiling a very large module takes a while on a small node).
pub const PREPARE_TIMEOUT: Duration = Duration::from_secs(300);

/// A runner process that has loaded its workload and waits for `start`.
#[derive(Debug)]
pub struct Runner {
    /// The container's pid, as containerd reports it.
    pub pid: i32,
    /// `module` or `component`.
    pub kind: String,
    /// The guest path of the entry point.
    pub entrypoint: String,
    /// What the module cache did (`hit`, `stored`, `compiled`).
    pub cache: String,
    /// Steps of starting the runner and of its loading, in milliseconds.
    pub timings: Vec<(String, f64)>,
    control: UnixStream,
}

/// Where a new runner goes into its cgroup (see [`sys::Placement`]).
enum Target {
    V2(std::fs::File),
    V1(Vec<std::fs::File>),
}

impl Runner {
    /// Starts the runner for `request` with the given stdio, waits until it
    /// has loaded and linked the Wasm, and returns it ready to start. The
    /// returned receiver yields the runner's exit.
    pub async fn spawn(
        request: &RunRequest,
        bundle: &Path,
        stdio: ChildStdio,
        exits: &ExitRouter,
        cgroup: Option<&ContainerCgroup>,
    ) -> Result<(Runner, oneshot::Receiver<Exit>)> {
        let id = request.id.as_str();
        let runner_err = |what, source| Error::Runner {
            id: id.to_owned(),
            what,
            source,
        };
        let mut spans = crate::spans::Spans::new();
        let exe = std::env::current_exe().map_err(|e| runner_err("locate shim binary", e))?;
        let (ours, theirs) = StdUnixStream::pair().map_err(|e| runner_err("socketpair", e))?;
        let files = stdio
            .into_files()
            .map_err(|e| runner_err("open /dev/null", e))?;
        // The runner is in its cgroup before it execs: born there on v2,
        // moving itself there on v1. Only when that cannot be done is it
        // moved after the exec, below.
        let target = cgroup.and_then(|cg| {
            let opened = match cg.v2_dir() {
                Some(dir) => std::fs::File::open(&dir)
                    .map(Target::V2)
                    .map_err(|e| format!("open {}: {e}", dir.display())),
                None => cg.v1_tasks()?.map(Target::V1).map_err(|e| e.to_string()),
            };
            opened
                .map_err(|e| log::debug!("container {id}: {e}; moving the runner instead"))
                .ok()
        });
        let launch = || -> Result<(i32, bool)> {
            if let Some(target) = &target {
                let placement = match target {
                    Target::V2(dir) => sys::Placement::Born(dir),
                    Target::V1(tasks) => sys::Placement::MovesItself(tasks),
                };
                let program = sys::Program::new(&exe, &[RUNNER_ARG, id], bundle)
                    .map_err(|e| runner_err("spawn", e))?;
                let stdio = [&files[0], &files[1], &files[2]];
                match sys::spawn_in_cgroup(&program, stdio, &theirs, placement) {
                    Ok(pid) => return Ok((pid, true)),
                    Err(sys::BirthError::Unsupported(e)) => {
                        log::debug!("container {id}: not born in its cgroup ({e}); moving it");
                    }
                    Err(sys::BirthError::Exec {
                        source, pid, step, ..
                    }) => {
                        // It exited (127); its exit must not linger for a
                        // later process with the same pid.
                        if let Some(pid) = pid {
                            drop(exits.watch(pid));
                            exits.forget(pid);
                        }
                        if step == sys::Step::JoinCgroup {
                            return Err(Error::Cgroup {
                                id: id.to_owned(),
                                path: cgroup.map(|c| c.path().to_owned()).unwrap_or_default(),
                                source: CgroupError::Join(source),
                            });
                        }
                        return Err(runner_err("spawn", source));
                    }
                }
            }
            spawn_then_move(&exe, id, bundle, &files, &theirs)
                .map(|pid| (pid, false))
                .map_err(|e| runner_err("spawn", e))
        };
        let ns_err = |source| Error::Namespace {
            id: id.to_owned(),
            source,
        };
        let plan = &request.plan;
        let (pid, born_in_cgroup) = match (&plan.pid_namespace, plan.new_pid_namespace) {
            (Some(ns), _) => {
                crate::server::namespaces::in_pid_namespace(ns, launch).map_err(ns_err)??
            }
            (None, true) => {
                crate::server::namespaces::in_new_pid_namespace(launch).map_err(ns_err)??
            }
            (None, false) => launch()?,
        };
        drop(files);
        drop(theirs);
        spans.mark(if born_in_cgroup {
            "exec into cgroup"
        } else {
            "exec"
        });
        let mut exit = exits.watch(pid);

        let result = async {
            // Join the cgroup before the runner reads its request: everything
            // it allocates from here on (engine, compiled code, the guest) is
            // charged to the container.
            if let Some(cg) = cgroup.filter(|_| !born_in_cgroup) {
                cg.add(pid)?;
                spans.mark("join cgroup");
            }
            ours.set_nonblocking(true)
                .map_err(|e| runner_err("control socket", e))?;
            let mut control =
                UnixStream::from_std(ours).map_err(|e| runner_err("control socket", e))?;
            let line = control::encode(request).map_err(|e| runner_err("encode request", e))?;
            control
                .write_all(&line)
                .await
                .map_err(|e| runner_err("send request", e))?;
            let mut reply = String::new();
            let read = tokio::time::timeout(PREPARE_TIMEOUT, async {
                BufReader::new(&mut control).read_line(&mut reply).await
            })
            .await
            .map_err(|_| {
                runner_err(
                    "load workload",
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out"),
                )
            })?
            .map_err(|e| runner_err("read reply", e))?;
            if read == 0 {
                let why = died_while_loading(&mut exit, cgroup).await;
                return Err(runner_err("load workload", std::io::Error::other(why)));
            }
            match control::decode::<Reply>(&reply) {
                Ok(Reply::Ready {
                    kind,
                    entrypoint,
                    cache,
                    warnings,
                    timings,
                }) => {
                    for w in warnings {
                        log::warn!("container {id}: {w}");
                    }
                    spans.mark("load");
                    spans.extend("  ", &timings);
                    Ok(Runner {
                        pid,
                        kind,
                        entrypoint,
                        cache,
                        timings: spans.into_steps(),
                        control,
                    })
                }
                Ok(Reply::Failed { kind, message }) => Err(Error::Workload {
                    id: id.to_owned(),
                    kind,
                    message,
                }),
                Err(e) => Err(runner_err("read reply", e)),
            }
        }
        .await;
        match result {
            Ok(runner) => Ok((runner, exit)),
            Err(e) => {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                exits.forget(pid);
                Err(e)
            }
        }
    }

    /// Tells the runner to run the guest.
    pub async fn start(mut self, id: &str) -> Result<()> {
        let line = format!("{}\n", control::START);
        self.control
            .write_all(line.as_bytes())
            .await
            .map_err(|source| Error::Runner {
                id: id.to_owned(),
                what: "start",
                source,
            })
    }
}

/// The way of a kernel that cannot start a child in its cgroup: an ordinary
/// spawn (the caller then moves it). The server's SIGCHLD handler reaps it;
/// nothing here waits on it.
fn spawn_then_move(
    exe: &Path,
    id: &str,
    bundle: &Path,
    files: &[std::fs::File; 3],
    control: &StdUnixStream,
) -> std::io::Result<i32> {
    let [stdin, stdout, stderr] =
        [&files[0], &files[1], &files[2]].map(|f| f.try_clone().map(ProcessStdio::from));
    let mut cmd = Command::new(exe);
    cmd.arg(RUNNER_ARG)
        .arg(id)
        .env_clear()
        .current_dir(bundle)
        .stdin(stdin?)
        .stdout(stdout?)
        .stderr(stderr?);
    sys::pass_control_socket(&mut cmd, control);
    let child = cmd.spawn()?;
    i32::try_from(child.id()).map_err(|_| std::io::Error::other("pid out of range"))
}

/// Why a runner closed its control socket before replying: its exit (a
/// signal, most often the kernel's OOM killer charging the module's bytes to
/// the container) and whether its cgroup saw an OOM kill.
async fn died_while_loading(
    exit: &mut oneshot::Receiver<Exit>,
    cgroup: Option<&ContainerCgroup>,
) -> String {
    let code = match tokio::time::timeout(Duration::from_secs(2), exit).await {
        Ok(Ok(e)) => Some(e.code),
        _ => None,
    };
    let oom = cgroup.is_some_and(|cg| cg.oom_kills() > 0);
    match (code, oom) {
        (_, true) => "runner was killed by the kernel's OOM killer while loading the Wasm: \
                      the container's memory limit is too small for this module"
            .to_owned(),
        (Some(c), false) if c > 128 => {
            format!(
                "runner was killed by signal {} while loading the Wasm",
                c - 128
            )
        }
        (Some(c), false) => format!("runner exited with code {c} before replying"),
        (None, false) => "runner closed its control socket before replying".to_owned(),
    }
}
