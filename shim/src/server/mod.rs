//! The shim server: what runs after `start` forked it, until containerd
//! shuts it down. It listens on the socket `start` chose, serves the task API
//! ([`task`]) over the registry of its containers ([`tasks`], [`container`],
//! [`process`]), reaps children and routes their exits ([`exits`]).
//!
//! A container's processes are run by a backend ([`backend`]): a Wasm runner
//! ([`runner`] is the shim's side of it) or runc. The rest is what a
//! container holds: its stdio FIFOs ([`stdio`]), rootfs mount ([`rootfs`]),
//! cgroup ([`cgroup`]), an artifact's layer from containerd's content store
//! ([`content`]), and the namespaces the shim starts runners in
//! ([`namespaces`]). Events go out through [`events`].

use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use containerd_shim::asynchronous::ExitSignal;
use containerd_shim::protos::shim_async::{create_task, Task};
use containerd_shim::protos::ttrpc::r#async::transport::Listener;
use containerd_shim::protos::ttrpc::r#async::Server;
use containerd_shim::Flags;
use log::{debug, info, warn};
use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};

pub mod backend;
pub mod cgroup;
pub mod container;
pub mod content;
pub mod env;
pub mod events;
pub mod exits;
pub mod namespaces;
pub mod options;
pub mod process;
pub mod rootfs;
pub mod runner;
pub mod seccomp;
pub mod stdio;
pub mod task;
pub mod tasks;

pub use namespaces::NamespaceFileError;

use crate::server::content::Containerd;
use crate::server::env::Env;
use crate::server::exits::ExitRouter;
use crate::server::task::TaskService;
use crate::server::tasks::Tasks;
use crate::sys::fork as sys;

/// The ttrpc service names of the task API. The v2 and v3 APIs are the same
/// messages under two names: containerd 1.6/1.7 call v2, 2.x may call v3.
const TASK_V3: &str = "containerd.task.v3.Task";
const TASK_V2: &str = "containerd.task.v2.Task";

/// Runs the shim server: one thread serves the whole pod, since ttrpc
/// requests are short and the shim's memory is paid once per pod.
pub fn run(flags: &Flags) -> anyhow::Result<()> {
    crate::sys::mem::use_one_arena();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?
        .block_on(serve(flags))
}

/// Serves the task API on `flags.socket` until shut down.
pub async fn serve(flags: &Flags) -> anyhow::Result<()> {
    if flags.socket.is_empty() {
        bail!("no -socket given: the shim server is started by containerd through `start`");
    }
    // Orphaned grandchildren of runners come back to the shim to be reaped.
    nix::sys::prctl::set_child_subreaper(true).context("set child subreaper")?;
    containerd_shim::logger::init(flags.debug, "info", &flags.namespace, &flags.id)
        .context("open the shim log")?;

    let path = flags
        .socket
        .strip_prefix("unix://")
        .unwrap_or(&flags.socket);
    let Some(listener) = bind(path).await? else {
        // Another server of the same group won the race and serves there.
        sys::signal_server_started();
        return Ok(());
    };
    // Listening: `start` may hand the address to containerd now. Its first
    // request waits in the socket's backlog while the rest is set up.
    sys::signal_server_started();

    let ttrpc_address = std::env::var("TTRPC_ADDRESS").context("TTRPC_ADDRESS is not set")?;
    let events = events::Remote::connect(&ttrpc_address, &flags.namespace)
        .await
        .with_context(|| format!("connect to containerd at {ttrpc_address}"))?;
    let shutdown = Arc::new(ExitSignal::default());
    let containerd = Containerd {
        address: flags.address.clone(),
        namespace: flags.namespace.clone(),
    };
    let events = Box::new(events);
    let tasks = Tasks::new(Env::new(containerd, events), shutdown.clone());
    let reaper = tokio::spawn(reap(tasks.clone()));

    let task: Arc<dyn Task + Send + Sync> = Arc::new(TaskService(tasks));
    let mut services = create_task(task.clone());
    let v2 = create_task(task)
        .remove(TASK_V3)
        .context("generated task service has an unexpected name")?;
    services.insert(TASK_V2.to_owned(), v2);
    let listener = Listener::try_from(listener).context("ttrpc listener")?;
    let mut server = Server::new()
        .add_listener(listener)
        .register_service(services);
    server.start().await.context("start ttrpc server")?;
    info!("serving {} on {path}", flags.id);

    shutdown.wait().await;
    info!("shutting down");
    reaper.abort();
    if let Err(e) = server.shutdown().await {
        warn!("ttrpc shutdown: {e}");
    }
    let _ = std::fs::remove_file(path);
    Ok(())
}

/// Binds the shim socket. `None` when a live server already owns it.
async fn bind(path: &str) -> anyhow::Result<Option<UnixListener>> {
    if let Some(parent) = Path::new(path).parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))?;
    }
    match UnixListener::bind(path) {
        Ok(l) => Ok(Some(l)),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            if tokio::net::UnixStream::connect(path).await.is_ok() {
                return Ok(None);
            }
            // A stale socket from a shim that died: take it over.
            std::fs::remove_file(path).with_context(|| format!("remove stale socket {path}"))?;
            Ok(Some(
                UnixListener::bind(path).with_context(|| format!("bind {path}"))?,
            ))
        }
        Err(e) => Err(e).with_context(|| format!("bind {path}")),
    }
}

/// Reaps every child on SIGCHLD and hands exit codes to the exit router.
async fn reap(tasks: Arc<Tasks>) {
    let mut sigchld = match signal(SignalKind::child()) {
        Ok(s) => s,
        Err(e) => {
            warn!("cannot watch SIGCHLD: {e}");
            return;
        }
    };
    // SIGTERM/SIGINT to the shim itself are ignored: containerd ends a shim
    // through Shutdown, and killing it here would orphan running containers.
    let mut sigterm = signal(SignalKind::terminate()).ok();
    let mut sigint = signal(SignalKind::interrupt()).ok();
    loop {
        tokio::select! {
            _ = sigchld.recv() => reap_all(&tasks.env().exits),
            Some(_) = async { sigterm.as_mut()?.recv().await } => debug!("ignoring SIGTERM"),
            Some(_) = async { sigint.as_mut()?.recv().await } => debug!("ignoring SIGINT"),
        }
    }
}

fn reap_all(exits: &ExitRouter) {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => exits.deliver(pid.as_raw(), code),
            Ok(WaitStatus::Signaled(pid, sig, _)) => exits.deliver(pid.as_raw(), 128 + sig as i32),
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
            Ok(_) => {}
            Err(Errno::EINTR) => {}
            Err(e) => {
                warn!("waitpid: {e}");
                return;
            }
        }
    }
}
