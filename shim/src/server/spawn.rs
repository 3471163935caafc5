//! Starting a runner process for a container and driving its control channel,
//! and routing process exits (reaped by the shim library's SIGCHLD handler) to
//! whoever waits for them.

use std::collections::HashMap;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::Path;
use std::process::{Command, Stdio as ProcessStdio};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::oneshot;

use crate::cgroup::ContainerCgroup;
use crate::control::{self, Reply, RunRequest};
use crate::error::{Error, Result};
use crate::runner::RUNNER_ARG;
use crate::sys;

/// How long a runner may take to load and link its Wasm before `Create`
/// gives up (compiling a very large module takes a while on a small node).
pub const PREPARE_TIMEOUT: Duration = Duration::from_secs(300);

/// A process exit as the shim reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// Exit code, or 128 + signal number when killed by a signal.
    pub code: u32,
    /// When the shim learned of it.
    pub at: SystemTime,
}

/// Routes exit codes from the reaper to the task waiting for that pid. An exit
/// may arrive before anyone watches the pid (a runner that dies at once), so
/// unclaimed exits are kept, a bounded number of them.
#[derive(Default)]
pub struct ExitRouter {
    inner: Mutex<Routes>,
}

#[derive(Default)]
struct Routes {
    waiting: HashMap<i32, oneshot::Sender<Exit>>,
    early: HashMap<i32, Exit>,
    /// Pids whose coming exit nobody wants (a runner killed or failed while
    /// starting): dropped on arrival, so it can never reach a later process
    /// that reuses the pid.
    discard: std::collections::HashSet<i32>,
}

const MAX_EARLY_EXITS: usize = 4096;

impl ExitRouter {
    /// Returns a receiver for the exit of `pid`.
    pub fn watch(&self, pid: i32) -> oneshot::Receiver<Exit> {
        let (tx, rx) = oneshot::channel();
        let mut routes = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match routes.early.remove(&pid) {
            Some(exit) => {
                let _ = tx.send(exit);
            }
            None => {
                routes.waiting.insert(pid, tx);
            }
        }
        rx
    }

    /// Stops watching `pid`, which has exited or is about to (it was killed),
    /// after [`watch`](Self::watch): an exit not delivered yet is dropped when
    /// it arrives instead of being kept for the next process with that pid.
    pub fn forget(&self, pid: i32) {
        let mut routes = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        routes.early.remove(&pid);
        if routes.waiting.remove(&pid).is_some() {
            if routes.discard.len() >= MAX_EARLY_EXITS {
                routes.discard.clear();
            }
            routes.discard.insert(pid);
        }
    }

    /// Delivers the exit of `pid` (called for every child the shim reaps).
    pub fn deliver(&self, pid: i32, code: i32) {
        let exit = Exit {
            code: u32::try_from(code).unwrap_or(255),
            at: SystemTime::now(),
        };
        let mut routes = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if routes.discard.remove(&pid) {
            return;
        }
        match routes.waiting.remove(&pid) {
            Some(tx) => {
                let _ = tx.send(exit);
            }
            None => {
                if routes.early.len() >= MAX_EARLY_EXITS {
                    routes.early.clear();
                }
                routes.early.insert(pid, exit);
            }
        }
    }
}

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

impl Runner {
    /// Starts the runner for `request` with the given stdio, waits until it
    /// has loaded and linked the Wasm, and returns it ready to start. The
    /// returned receiver yields the runner's exit.
    pub async fn spawn(
        request: &RunRequest,
        bundle: &Path,
        stdio: crate::stdio::ChildStdio,
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
        // moving itself there on v1 (see `sys::Placement`). Only when that
        // cannot be done is it moved after the exec, below.
        enum Target {
            V2(std::fs::File),
            V1(Vec<std::fs::File>),
        }
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
                match sys::spawn_in_cgroup(
                    &program,
                    [&files[0], &files[1], &files[2]],
                    &theirs,
                    placement,
                ) {
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
                                what: format!("join: {source}"),
                            });
                        }
                        return Err(runner_err("spawn", source));
                    }
                }
            }
            let [stdin, stdout, stderr] = files
                .iter()
                .map(|f| f.try_clone().map(ProcessStdio::from))
                .collect::<std::io::Result<Vec<_>>>()
                .map_err(|e| runner_err("spawn", e))?
                .try_into()
                .map_err(|_| runner_err("spawn", std::io::Error::other("stdio")))?;
            let mut cmd = Command::new(&exe);
            cmd.arg(RUNNER_ARG)
                .arg(id)
                .env_clear()
                .current_dir(bundle)
                .stdin(stdin)
                .stdout(stdout)
                .stderr(stderr);
            sys::pass_control_socket(&mut cmd, &theirs);
            let child = cmd.spawn().map_err(|e| runner_err("spawn", e))?;
            let pid = i32::try_from(child.id())
                .map_err(|_| runner_err("pid", std::io::Error::other("pid out of range")))?;
            // The shim library's SIGCHLD handler reaps the runner; never
            // wait on `child` here.
            drop(child);
            Ok((pid, false))
        };
        let (pid, born_in_cgroup) = match &request.plan.pid_namespace {
            Some(ns) => {
                crate::namespace::in_pid_namespace(ns, launch).map_err(|e| Error::Workload {
                    id: id.to_owned(),
                    message: e.to_string(),
                })??
            }
            None => launch()?,
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
            let mut line = serde_json::to_vec(request)
                .map_err(|e| runner_err("encode request", std::io::Error::other(e)))?;
            line.push(b'\n');
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
            match serde_json::from_str::<Reply>(&reply) {
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
                Ok(Reply::Failed { message }) => Err(Error::Workload {
                    id: id.to_owned(),
                    message,
                }),
                Err(e) => Err(runner_err("read reply", std::io::Error::other(e))),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn exits_before_and_after_watch() {
        let r = ExitRouter::default();
        r.deliver(10, 3);
        assert_eq!(r.watch(10).await.unwrap().code, 3);
        let rx = r.watch(11);
        r.deliver(11, 137);
        assert_eq!(rx.await.unwrap().code, 137);
        r.deliver(12, 1);
        r.forget(12);
        let rx = r.watch(12);
        r.deliver(12, 2);
        assert_eq!(rx.await.unwrap().code, 2);
        // watched, then killed and forgotten before its exit arrives: that
        // exit is dropped, and the pid's next process gets its own
        drop(r.watch(13));
        r.forget(13);
        r.deliver(13, 137);
        let rx = r.watch(13);
        r.deliver(13, 0);
        assert_eq!(rx.await.unwrap().code, 0);
        // forgotten after its exit was delivered: nothing is dropped later
        let rx = r.watch(14);
        r.deliver(14, 1);
        assert_eq!(rx.await.unwrap().code, 1);
        r.forget(14);
        let rx = r.watch(14);
        r.deliver(14, 3);
        assert_eq!(rx.await.unwrap().code, 3);
    }
}
