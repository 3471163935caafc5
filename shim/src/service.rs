//! The shim v2 task service: containerd's view of Wasm containers.
//!
//! Each container is one runner process. Its life:
//!
//! ```text
//! Create ──▶ Created ──Start──▶ Running ──exit──▶ Stopped ──Delete──▶ (gone)
//!               │                                   ▲
//!               └──────────────Delete (kills)───────┘
//! ```
//! Events go out in the order TaskCreate → TaskStart → TaskExit → TaskDelete;
//! a task deleted before it started gets TaskCreate → TaskDelete. Each event
//! is published while the container's lock is held, so a fast exit cannot
//! overtake its TaskStart.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use containerd_shim::api::{self, DeleteResponse};
use containerd_shim::asynchronous::ExitSignal;
use containerd_shim::protos::events::task as events;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::{MessageDyn, MessageField};
use containerd_shim::protos::shim_async::Task;
use containerd_shim::protos::topics;
use containerd_shim::protos::ttrpc::context::Context;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{TtrpcContext, TtrpcResult};
use log::{debug, info, warn};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::sync::{oneshot, watch, Mutex};

use crate::cache::CacheConfig;
use crate::cgroup::ContainerCgroup;
use crate::console::{Console, ConsoleSocket};
use crate::content::Containerd;
use crate::control::{RunRequest, WasmFile};
use crate::error::{Error, Result};
use crate::process::{Exit, ExitRouter, Runner};
use crate::runc::{ProcessIo, Runc};
use crate::stdio::{Keepalive, Stdio, StdioPaths};
use crate::{engine, rootfs, stdio, sys};
use wasmpod_oci::plan::NamespaceKind;

/// Annotation CRI puts on every container of a pod: containers sharing it
/// are served by one shim process.
pub const SANDBOX_ID_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";

/// Annotation CRI puts on the containers of a pod (`sandbox` for the pause
/// container, `container` for the others). Where it is present, a container
/// whose entry point is not WebAssembly runs through runc.
pub const CONTAINER_TYPE_ANNOTATION: &str = "io.kubernetes.cri.container-type";

/// Exit status of an exec process that failed to start.
const EXEC_START_FAILED: u32 = 126;

/// File in the bundle that records the runner's pid, for `delete` after a
/// shim crash.
pub const PID_FILE: &str = "init.pid";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Created,
    Running,
    Stopped,
}

struct Container {
    id: String,
    bundle: PathBuf,
    pid: i32,
    status: Status,
    stdio: StdioPaths,
    exit: watch::Sender<Option<Exit>>,
    runner: Option<Runner>,
    keepalive: Keepalive,
    rootfs: Option<PathBuf>,
    cgroup: Option<Arc<ContainerCgroup>>,
    /// The terminal of a Linux container created with `tty: true`.
    console: Option<Console>,
    /// The cgroup's OOM kill count last seen: a rise at an exit means the
    /// kernel's OOM killer ended a process of this container.
    oom_kills: u64,
    backend: Backend,
    execs: HashMap<String, ExecProcess>,
    /// Set by the `Delete` that removed it: a request that got hold of the
    /// container before that (a racing second `Delete`) finds it gone.
    deleted: bool,
}

/// A process added to a running container with `Exec` (`kubectl exec`).
struct ExecProcess {
    pid: i32,
    status: Status,
    stdio: StdioPaths,
    exit: watch::Sender<Option<Exit>>,
    keepalive: Keepalive,
    /// The exec's terminal (`exec -t` into a Linux container).
    console: Option<Console>,
    process: oci_spec::runtime::Process,
}

/// What runs a container's process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    /// A wasmpod runner (WebAssembly under wasmtime).
    Wasm,
    /// The node's runc (a pod's pause sandbox and Linux sidecars);
    /// `systemd` when the cgroups path uses the systemd notation.
    Runc { systemd: bool },
}

/// A freshly created container process and what it holds.
struct Launched {
    pid: i32,
    backend: Backend,
    runner: Option<Runner>,
    keepalive: Keepalive,
    rootfs: Option<PathBuf>,
    cgroup: Option<Arc<ContainerCgroup>>,
    console: Option<Console>,
    exit: oneshot::Receiver<Exit>,
}

impl Container {
    fn exited(&self) -> Option<Exit> {
        *self.exit.borrow()
    }

    fn precondition(&self, what: impl Into<String>) -> Error {
        Error::FailedPrecondition {
            id: self.id.clone(),
            what: what.into(),
        }
    }
}

struct Inner {
    namespace: String,
    /// containerd's address, for Wasm artifacts' layers.
    containerd: Containerd,
    publisher: RemotePublisher,
    shutdown: Arc<ExitSignal>,
    containers: StdMutex<HashMap<String, Arc<Mutex<Container>>>>,
    exits: ExitRouter,
    runc: Runc,
    cache: Option<CacheConfig>,
}

/// The task service containerd talks to over ttrpc.
#[derive(Clone)]
pub struct Service {
    inner: Arc<Inner>,
}

fn api_status(s: Status) -> api::Status {
    match s {
        Status::Created => api::Status::CREATED,
        Status::Running => api::Status::RUNNING,
        Status::Stopped => api::Status::STOPPED,
    }
}

/// A process's stdio: with a terminal, runc sends it over the returned
/// socket and the process gets it as its stdio (the FIFOs are the console's
/// to copy); otherwise the FIFOs themselves.
fn process_io(
    id: &str,
    paths: &StdioPaths,
) -> Result<(Option<ConsoleSocket>, crate::stdio::ChildStdio, Keepalive)> {
    if paths.terminal {
        let (stdio, keepalive) = Stdio::default().into_parts();
        Ok((Some(ConsoleSocket::new(id)?), stdio, keepalive))
    } else {
        let (stdio, keepalive) = Stdio::open(id, paths)?.into_parts();
        Ok((None, stdio, keepalive))
    }
}

/// Removes a container's cgroup off the async runtime (it may wait briefly
/// for the kernel to release the last process).
async fn remove_cgroup(cg: Arc<ContainerCgroup>) {
    let _ = tokio::task::spawn_blocking(move || cg.remove()).await;
}

/// A protobuf timestamp for `t`.
pub fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
        ..Default::default()
    }
}

impl Service {
    /// A service publishing events for `namespace`; `shutdown` is signalled
    /// when containerd shuts the shim down.
    pub fn new(
        containerd: Containerd,
        publisher: RemotePublisher,
        shutdown: Arc<ExitSignal>,
    ) -> Self {
        let namespace = containerd.namespace.clone();
        Service {
            inner: Arc::new(Inner {
                containerd,
                runc: Runc::new(&namespace),
                namespace,
                publisher,
                shutdown,
                containers: StdMutex::new(HashMap::new()),
                exits: ExitRouter::default(),
                cache: CacheConfig::from_env(),
            }),
        }
    }

    /// Where the reaper delivers process exits.
    pub fn exits(&self) -> &ExitRouter {
        &self.inner.exits
    }

    fn container(&self, id: &str) -> Result<Arc<Mutex<Container>>> {
        self.inner
            .containers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| Error::NotFound { id: id.to_owned() })
    }

    async fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        if let Err(e) = self
            .inner
            .publisher
            .publish(Context::default(), topic, &self.inner.namespace, event)
            .await
        {
            warn!("publish {topic}: {e}");
        }
    }

    /// Publishes TaskOOM when the kernel's OOM killer has killed a process
    /// of `c` since the last look (called at each of its processes' exits,
    /// before their TaskExit, so CRI reports the reason `OOMKilled`).
    async fn check_oom(&self, c: &mut Container) {
        let Some(cg) = &c.cgroup else {
            return;
        };
        let kills = cg.oom_kills();
        if kills <= c.oom_kills {
            return;
        }
        c.oom_kills = kills;
        warn!(
            "container {}: the kernel's OOM killer ended a process (cgroup OOM kills: {kills})",
            c.id
        );
        let ev = events::TaskOOM {
            container_id: c.id.clone(),
            ..Default::default()
        };
        self.publish(topics::TASK_OOM_EVENT_TOPIC, Box::new(ev))
            .await;
    }

    /// Records the exit of a container's runner and tells containerd.
    async fn on_exit(&self, container: Arc<Mutex<Container>>, exit: Exit) {
        let mut c = container.lock().await;
        if let Some(console) = &c.console {
            console.drain().await;
        }
        self.check_oom(&mut c).await;
        let was = c.status;
        c.status = Status::Stopped;
        c.runner = None;
        // The process is gone: let readers of its output see end-of-file.
        c.keepalive = Keepalive::default();
        // The container is over: so are the processes exec'd into it.
        for e in c.execs.values().filter(|e| e.status == Status::Running) {
            let _ = nix::sys::signal::kill(Pid::from_raw(e.pid), Signal::SIGKILL);
        }
        c.exit.send_replace(Some(exit));
        info!(
            "container {}: pid {} exited with {}",
            c.id, c.pid, exit.code
        );
        if was == Status::Running {
            let ev = events::TaskExit {
                container_id: c.id.clone(),
                id: c.id.clone(),
                pid: c.pid as u32,
                exit_status: exit.code,
                exited_at: MessageField::some(timestamp(exit.at)),
                ..Default::default()
            };
            self.publish(topics::TASK_EXIT_EVENT_TOPIC, Box::new(ev))
                .await;
        }
    }

    async fn do_create(&self, req: api::CreateTaskRequest) -> Result<api::CreateTaskResponse> {
        let id = req.id.clone();
        let bundle = PathBuf::from(&req.bundle);
        let placeholder = {
            let mut map = self
                .inner
                .containers
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if map.contains_key(&id) {
                return Err(Error::AlreadyExists { id });
            }
            // Reserve the id while creating; removed again on failure.
            let (exit, _) = watch::channel(None);
            let c = Arc::new(Mutex::new(Container {
                id: id.clone(),
                bundle: bundle.clone(),
                pid: 0,
                status: Status::Created,
                stdio: StdioPaths::default(),
                exit,
                runner: None,
                keepalive: Keepalive::default(),
                rootfs: None,
                cgroup: None,
                console: None,
                oom_kills: 0,
                backend: Backend::Wasm,
                execs: HashMap::new(),
                deleted: false,
            }));
            map.insert(id.clone(), c.clone());
            c
        };
        // Hold the lock for the whole creation so nothing sees half a container.
        let mut guard = placeholder.lock().await;
        match self.launch(&req, &bundle).await {
            Ok(launched) => {
                let pid = launched.pid;
                let exit_rx = launched.exit;
                guard.oom_kills = launched.cgroup.as_ref().map_or(0, |cg| cg.oom_kills());
                guard.cgroup = launched.cgroup;
                guard.console = launched.console;
                guard.pid = pid;
                guard.backend = launched.backend;
                guard.runner = launched.runner;
                guard.keepalive = launched.keepalive;
                guard.rootfs = launched.rootfs;
                guard.stdio = StdioPaths {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    terminal: req.terminal,
                };
                let ev = events::TaskCreate {
                    container_id: id.clone(),
                    bundle: req.bundle.clone(),
                    rootfs: req.rootfs.clone(),
                    io: MessageField::some(events::TaskIO {
                        stdin: req.stdin.clone(),
                        stdout: req.stdout.clone(),
                        stderr: req.stderr.clone(),
                        terminal: req.terminal,
                        ..Default::default()
                    }),
                    checkpoint: req.checkpoint.clone(),
                    pid: pid as u32,
                    ..Default::default()
                };
                self.publish(topics::TASK_CREATE_EVENT_TOPIC, Box::new(ev))
                    .await;
                drop(guard);
                let service = self.clone();
                let container = placeholder.clone();
                tokio::spawn(async move {
                    if let Ok(exit) = exit_rx.await {
                        service.on_exit(container, exit).await;
                    }
                });
                Ok(api::CreateTaskResponse {
                    pid: pid as u32,
                    ..Default::default()
                })
            }
            Err(e) => {
                drop(guard);
                self.inner
                    .containers
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&id);
                Err(e)
            }
        }
    }

    /// Mounts the rootfs, opens stdio and starts the container's process (a
    /// Wasm runner, or runc for a pod's Linux containers); on failure undoes
    /// whatever it did.
    async fn launch(&self, req: &api::CreateTaskRequest, bundle: &Path) -> Result<Launched> {
        let id = req.id.as_str();
        let spec_path = bundle.join("config.json");
        let spec = oci_spec::runtime::Spec::load(&spec_path).map_err(|source| Error::Spec {
            id: id.to_owned(),
            path: spec_path,
            source,
        })?;
        let plan =
            wasmpod_oci::plan::RunPlan::from_spec(&spec, bundle).map_err(|source| Error::Plan {
                id: id.to_owned(),
                source,
            })?;
        let mut spans = crate::spans::Spans::new();
        let mounted = rootfs::mount(id, bundle, &req.rootfs).await?;
        spans.mark("mount");
        let mut cgroup = None;
        let mut fetched: Option<WasmFile> = None;
        let result = async {
            let in_pod = spec
                .annotations()
                .as_ref()
                .is_some_and(|a| a.contains_key(CONTAINER_TYPE_ANNOTATION));
            let located = engine::locate(&plan);
            let backend = if in_pod && located == engine::Located::Other {
                let systemd = spec
                    .linux()
                    .as_ref()
                    .and_then(|l| l.cgroups_path().as_ref())
                    .is_some_and(|p| p.to_string_lossy().split(':').count() == 3);
                Backend::Runc { systemd }
            } else {
                Backend::Wasm
            };
            let paths = StdioPaths {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
            };
            if (paths.terminal || plan.terminal) && backend == Backend::Wasm {
                return Err(Error::InvalidArgument {
                    id: id.to_owned(),
                    what: "a terminal was requested, but a Wasm container has no terminal (run without -t / tty: false)".into(),
                });
            }
            // Not in the rootfs: the image may be a Wasm artifact whose
            // layer containerd stored but did not unpack.
            if backend == Backend::Wasm && located == engine::Located::Missing {
                let annotations = spec.annotations().clone().unwrap_or_default();
                let arg0 = plan.args.first().map(String::as_str);
                match self
                    .inner
                    .containerd
                    .fetch_wasm_layer(id, &annotations, arg0, bundle)
                    .await
                {
                    Ok(Some(f)) => {
                        info!("container {id}: running {}", f.name);
                        fetched = Some(WasmFile {
                            path: f.path,
                            name: f.name,
                        });
                    }
                    Ok(None) => {}
                    Err(e) => {
                        stdio::report(&paths, &e.to_string());
                        return Err(e);
                    }
                }
            }
            let (console_socket, child_stdio, keepalive) = process_io(id, &paths)?;
            let mut console = None;
            let (pid, runner, exit) = match backend {
                Backend::Wasm => {
                    if let Some(target) = mounted.clone() {
                        let readonly = plan.root.readonly;
                        tokio::task::spawn_blocking(move || {
                            sys::restrict_rootfs_mount(&target, readonly)
                                .map_err(|e| (target, e))
                        })
                        .await
                        .map_err(|e| Error::InvalidArgument {
                            id: id.to_owned(),
                            what: format!("rootfs task: {e}"),
                        })?
                        .map_err(|(path, e)| Error::Rootfs {
                            id: id.to_owned(),
                            path,
                            message: format!("remount nodev: {e}"),
                        })?;
                        spans.mark("nodev");
                    }
                    if let Some(path) = &plan.cgroup {
                        let resources = spec.linux().as_ref().and_then(|l| l.resources().clone());
                        let (cid, path) = (id.to_owned(), path.clone());
                        let cg = tokio::task::spawn_blocking(move || {
                            ContainerCgroup::create(&cid, &path, resources.as_ref())
                        })
                        .await
                        .map_err(|e| Error::InvalidArgument {
                            id: id.to_owned(),
                            what: format!("cgroup task: {e}"),
                        })??;
                        cgroup = Some(Arc::new(cg));
                        spans.mark("cgroup");
                    }
                    let cgroup_path = plan.cgroup.clone();
                    let request = RunRequest {
                        id: id.to_owned(),
                        plan,
                        cache: self.inner.cache.clone(),
                        wasm: fetched.clone(),
                    };
                    let (runner, exit) = Runner::spawn(
                        &request,
                        bundle,
                        child_stdio,
                        &self.inner.exits,
                        cgroup.as_deref(),
                    )
                    .await?;
                    spans.extend("runner ", &runner.timings);
                    info!(
                        "container {id}: runner pid {} loaded {} {} (module cache {}, cgroup {cgroup_path:?}); ms: {spans}",
                        runner.pid, runner.kind, runner.entrypoint, runner.cache
                    );
                    (runner.pid, Some(runner), exit)
                }
                Backend::Runc { systemd } => {
                    let pid = self
                        .inner
                        .runc
                        .create(
                            id,
                            bundle,
                            ProcessIo {
                                stdio: child_stdio.into_process(),
                                console_socket: console_socket.as_ref().map(|c| c.path()).as_deref(),
                            },
                            &self.inner.exits,
                            systemd,
                        )
                        .await?;
                    if let Some(socket) = console_socket {
                        match socket.into_console(id, &paths) {
                            Ok(c) => console = Some(c),
                            Err(e) => {
                                let _ = self.inner.runc.delete(id, bundle, &self.inner.exits).await;
                                return Err(e);
                            }
                        }
                    }
                    debug!("container {id}: runc container pid {pid}");
                    if let Some(path) = &plan.cgroup {
                        // runc owns this cgroup; the shim only reads it.
                        cgroup = ContainerCgroup::open(id, path).ok().map(Arc::new);
                    }
                    (pid, None, self.inner.exits.watch(pid))
                }
            };
            if let Err(e) = tokio::fs::write(bundle.join(PID_FILE), pid.to_string()).await {
                warn!("container {id}: write {PID_FILE}: {e}");
            }
            Ok(Launched {
                pid,
                backend,
                runner,
                keepalive,
                rootfs: mounted.clone(),
                cgroup: cgroup.clone(),
                console,
                exit,
            })
        }
        .await;
        // The runner has read the layer (or failed): its copy is not needed.
        if let Some(f) = fetched {
            if let Err(e) = tokio::fs::remove_file(&f.path).await {
                warn!("container {id}: remove {}: {e}", f.path.display());
            }
        }
        if result.is_err() {
            if let Some(target) = &mounted {
                if let Err(ue) = rootfs::unmount(id, target).await {
                    warn!("{ue}");
                }
            }
            if let Some(cg) = cgroup {
                remove_cgroup(cg).await;
            }
        }
        result
    }

    async fn do_exec(&self, req: api::ExecProcessRequest) -> Result<()> {
        let full_id = format!("{}/{}", req.id, req.exec_id);
        if req.exec_id.is_empty() || req.exec_id.contains('/') || req.exec_id.starts_with('.') {
            return Err(Error::InvalidArgument {
                id: full_id,
                what: "invalid exec id".into(),
            });
        }
        let container = self.container(&req.id)?;
        let mut c = container.lock().await;
        if c.status != Status::Running {
            return Err(c.precondition("cannot exec: the container is not running"));
        }
        if c.execs.contains_key(&req.exec_id) {
            return Err(Error::AlreadyExists { id: full_id });
        }
        if req.terminal && c.backend == Backend::Wasm {
            return Err(Error::InvalidArgument {
                id: full_id,
                what: "exec with a terminal into a Wasm container: a Wasm program has no terminal (run without -t / tty)".into(),
            });
        }
        let value = req
            .spec
            .as_ref()
            .map(|a| a.value.clone())
            .unwrap_or_default();
        let process: oci_spec::runtime::Process =
            serde_json::from_slice(&value).map_err(|e| Error::InvalidArgument {
                id: full_id.clone(),
                what: format!("exec process spec: {e}"),
            })?;
        let (exit, _) = watch::channel(None);
        c.execs.insert(
            req.exec_id.clone(),
            ExecProcess {
                pid: 0,
                status: Status::Created,
                stdio: StdioPaths {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    terminal: req.terminal,
                },
                exit,
                keepalive: Keepalive::default(),
                console: None,
                process,
            },
        );
        let ev = events::TaskExecAdded {
            container_id: req.id.clone(),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        };
        self.publish(topics::TASK_EXEC_ADDED_EVENT_TOPIC, Box::new(ev))
            .await;
        Ok(())
    }

    /// Starts an exec'd process: for a Wasm container, another runner in the
    /// container's cgroup and namespaces with the container's rootfs and
    /// mounts; for a pod's Linux container, `runc exec`.
    async fn start_exec(&self, req: api::StartRequest) -> Result<api::StartResponse> {
        let full_id = format!("{}/{}", req.id, req.exec_id);
        let container = self.container(&req.id)?;
        let mut c = container.lock().await;
        let (init_pid, backend, bundle, cgroup) =
            (c.pid, c.backend, c.bundle.clone(), c.cgroup.clone());
        if c.status != Status::Running {
            return Err(c.precondition("cannot start exec: the container is not running"));
        }
        let e = c.execs.get(&req.exec_id).ok_or_else(|| Error::NotFound {
            id: full_id.clone(),
        })?;
        if e.status != Status::Created {
            return Err(Error::FailedPrecondition {
                id: full_id,
                what: "exec process already started".into(),
            });
        }
        let (paths, process) = (e.stdio.clone(), e.process.clone());
        let launched = async {
            let (console_socket, child_stdio, keepalive) = process_io(&full_id, &paths)?;
            let mut console = None;
            let (pid, exit_rx) = match backend {
                Backend::Wasm => {
                    let spec_path = bundle.join("config.json");
                    let mut spec = oci_spec::runtime::Spec::load(&spec_path).map_err(|source| {
                        Error::Spec {
                            id: full_id.clone(),
                            path: spec_path,
                            source,
                        }
                    })?;
                    spec.set_process(Some(process));
                    let mut plan = wasmpod_oci::plan::RunPlan::from_spec(&spec, &bundle).map_err(
                        |source| Error::Plan {
                            id: full_id.clone(),
                            source,
                        },
                    )?;
                    // The container's namespaces are its runner's. Opened
                    // first and checked after: if the runner is still the
                    // process at that pid once the files are open, they are
                    // its namespaces (a reused pid would fail the check), and
                    // the exec'd runner joins them through the shim's fds.
                    let mut held = Vec::new();
                    let kinds = plan
                        .namespaces
                        .iter()
                        .map(|ns| ns.kind)
                        .chain(plan.pid_namespace.as_ref().map(|_| NamespaceKind::Pid))
                        .collect::<Vec<_>>();
                    for kind in kinds {
                        let name = match kind {
                            NamespaceKind::Network => "net",
                            NamespaceKind::Ipc => "ipc",
                            NamespaceKind::Uts => "uts",
                            NamespaceKind::Pid => "pid",
                        };
                        let path = format!("/proc/{init_pid}/ns/{name}");
                        let file = std::fs::File::open(&path).map_err(|e| Error::Workload {
                            id: full_id.clone(),
                            message: format!("open the container's namespace {path}: {e}"),
                        })?;
                        let fd_path: PathBuf = format!(
                            "/proc/{}/fd/{}",
                            std::process::id(),
                            std::os::fd::AsRawFd::as_raw_fd(&file)
                        )
                        .into();
                        if kind == NamespaceKind::Pid {
                            plan.pid_namespace = Some(fd_path);
                        } else if let Some(ns) =
                            plan.namespaces.iter_mut().find(|ns| ns.kind == kind)
                        {
                            ns.path = Some(fd_path);
                        }
                        held.push(file);
                    }
                    if !crate::is_runner(init_pid, &req.id) {
                        return Err(c.precondition(
                            "cannot start exec: the container's process has exited",
                        ));
                    }
                    let request = RunRequest {
                        id: full_id.clone(),
                        plan,
                        cache: self.inner.cache.clone(),
                        wasm: None,
                    };
                    let (runner, exit) = Runner::spawn(
                        &request,
                        &bundle,
                        child_stdio,
                        &self.inner.exits,
                        cgroup.as_deref(),
                    )
                    .await?;
                    // The runner is in the namespaces now.
                    drop(held);
                    let pid = runner.pid;
                    runner.start(&full_id).await?;
                    (pid, exit)
                }
                Backend::Runc { .. } => {
                    let pid = self
                        .inner
                        .runc
                        .exec(
                            &req.id,
                            &req.exec_id,
                            &bundle,
                            &process,
                            ProcessIo {
                                stdio: child_stdio.into_process(),
                                console_socket: console_socket
                                    .as_ref()
                                    .map(|c| c.path())
                                    .as_deref(),
                            },
                            &self.inner.exits,
                        )
                        .await?;
                    let exit = self.inner.exits.watch(pid);
                    if let Some(socket) = console_socket {
                        match socket.into_console(&full_id, &paths) {
                            Ok(c) => console = Some(c),
                            Err(e) => {
                                let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
                                return Err(e);
                            }
                        }
                    }
                    (pid, exit)
                }
            };
            Ok::<_, Error>((pid, exit_rx, keepalive, console))
        }
        .await;
        let (pid, exit_rx, keepalive, console) = match launched {
            Ok(l) => l,
            Err(err) => {
                // It will never run: it is over, so that Wait (containerd
                // waits for it before deleting it) returns. 126, as a shell
                // reports a command it found but could not execute.
                if let Some(e) = c.execs.get_mut(&req.exec_id) {
                    e.status = Status::Stopped;
                    e.exit.send_replace(Some(Exit {
                        code: EXEC_START_FAILED,
                        at: SystemTime::now(),
                    }));
                }
                return Err(err);
            }
        };
        if let Some(e) = c.execs.get_mut(&req.exec_id) {
            e.pid = pid;
            e.status = Status::Running;
            e.keepalive = keepalive;
            e.console = console;
        }
        info!(
            "container {}: exec {} started, pid {pid}",
            req.id, req.exec_id
        );
        let ev = events::TaskExecStarted {
            container_id: req.id.clone(),
            exec_id: req.exec_id.clone(),
            pid: pid as u32,
            ..Default::default()
        };
        self.publish(topics::TASK_EXEC_STARTED_EVENT_TOPIC, Box::new(ev))
            .await;
        drop(c);
        let service = self.clone();
        let exec_id = req.exec_id.clone();
        tokio::spawn(async move {
            if let Ok(exit) = exit_rx.await {
                service.on_exec_exit(container, &exec_id, exit).await;
            }
        });
        Ok(api::StartResponse {
            pid: pid as u32,
            ..Default::default()
        })
    }

    async fn on_exec_exit(&self, container: Arc<Mutex<Container>>, exec_id: &str, exit: Exit) {
        let mut c = container.lock().await;
        if let Some(console) = c.execs.get(exec_id).and_then(|e| e.console.as_ref()) {
            console.drain().await;
        }
        self.check_oom(&mut c).await;
        let id = c.id.clone();
        let Some(e) = c.execs.get_mut(exec_id) else {
            return;
        };
        e.status = Status::Stopped;
        e.keepalive = Keepalive::default();
        e.exit.send_replace(Some(exit));
        info!(
            "container {id}: exec {exec_id} pid {} exited with {}",
            e.pid, exit.code
        );
        let ev = events::TaskExit {
            container_id: id,
            id: exec_id.to_owned(),
            pid: e.pid as u32,
            exit_status: exit.code,
            exited_at: MessageField::some(timestamp(exit.at)),
            ..Default::default()
        };
        self.publish(topics::TASK_EXIT_EVENT_TOPIC, Box::new(ev))
            .await;
    }

    /// Runs `f` on an exec process of a container, or `NotFound`.
    async fn with_exec<T>(
        &self,
        id: &str,
        exec_id: &str,
        f: impl FnOnce(&str, &mut ExecProcess) -> Result<T>,
    ) -> Result<T> {
        let container = self.container(id)?;
        let mut c = container.lock().await;
        let full_id = format!("{id}/{exec_id}");
        let e = c.execs.get_mut(exec_id).ok_or_else(|| Error::NotFound {
            id: full_id.clone(),
        })?;
        f(&full_id, e)
    }

    async fn do_start(&self, req: api::StartRequest) -> Result<api::StartResponse> {
        if !req.exec_id.is_empty() {
            return self.start_exec(req).await;
        }
        let container = self.container(&req.id)?;
        let mut c = container.lock().await;
        match c.status {
            Status::Created => {}
            Status::Running => return Err(c.precondition("already started")),
            Status::Stopped => return Err(c.precondition("cannot start: process has exited")),
        }
        match c.backend {
            Backend::Wasm => {
                let runner = c
                    .runner
                    .take()
                    .ok_or_else(|| c.precondition("cannot start: runner is gone"))?;
                runner.start(&c.id).await?;
            }
            Backend::Runc { .. } => {
                self.inner
                    .runc
                    .start(&c.id, &c.bundle, &self.inner.exits)
                    .await?;
            }
        }
        c.status = Status::Running;
        let ev = events::TaskStart {
            container_id: c.id.clone(),
            pid: c.pid as u32,
            ..Default::default()
        };
        self.publish(topics::TASK_START_EVENT_TOPIC, Box::new(ev))
            .await;
        Ok(api::StartResponse {
            pid: c.pid as u32,
            ..Default::default()
        })
    }

    async fn do_kill(&self, req: api::KillRequest) -> Result<()> {
        if !req.exec_id.is_empty() {
            let signal = req.signal;
            return self
                .with_exec(&req.id, &req.exec_id, |full_id, e| {
                    if e.status != Status::Running {
                        return Err(Error::ProcessFinished {
                            id: full_id.to_owned(),
                        });
                    }
                    let sig =
                        Signal::try_from(signal as i32).map_err(|_| Error::InvalidArgument {
                            id: full_id.to_owned(),
                            what: format!("invalid signal {signal}"),
                        })?;
                    nix::sys::signal::kill(Pid::from_raw(e.pid), sig).map_err(|source| {
                        Error::Signal {
                            id: full_id.to_owned(),
                            pid: e.pid,
                            signal,
                            source,
                        }
                    })
                })
                .await;
        }
        let container = self.container(&req.id)?;
        let c = container.lock().await;
        if c.status == Status::Stopped {
            return Err(Error::ProcessFinished { id: c.id.clone() });
        }
        let signal = Signal::try_from(req.signal as i32).map_err(|_| Error::InvalidArgument {
            id: c.id.clone(),
            what: format!("invalid signal {}", req.signal),
        })?;
        if req.all && matches!(c.backend, Backend::Runc { .. }) {
            return self
                .inner
                .runc
                .kill_all(&c.id, &c.bundle, req.signal, &self.inner.exits)
                .await;
        }
        // A Wasm container is one process, so `all` signals the same one.
        nix::sys::signal::kill(Pid::from_raw(c.pid), signal).map_err(|source| Error::Signal {
            id: c.id.clone(),
            pid: c.pid,
            signal: req.signal,
            source,
        })
    }

    async fn do_delete(&self, req: api::DeleteRequest) -> Result<DeleteResponse> {
        if !req.exec_id.is_empty() {
            let container = self.container(&req.id)?;
            let mut c = container.lock().await;
            let full_id = format!("{}/{}", req.id, req.exec_id);
            let e = c.execs.get(&req.exec_id).ok_or_else(|| Error::NotFound {
                id: full_id.clone(),
            })?;
            if e.status == Status::Running {
                return Err(Error::FailedPrecondition {
                    id: full_id,
                    what: "cannot delete a running exec process: kill it first".into(),
                });
            }
            let exit = *e.exit.borrow();
            let pid = e.pid;
            c.execs.remove(&req.exec_id);
            self.inner.exits.forget(pid);
            return Ok(DeleteResponse {
                pid: pid as u32,
                exit_status: exit.map_or(0, |x| x.code),
                exited_at: MessageField::from_option(exit.map(|x| timestamp(x.at))),
                ..Default::default()
            });
        }
        let container = self.container(&req.id)?;
        let mut c = container.lock().await;
        if c.deleted {
            return Err(Error::NotFound { id: req.id });
        }
        match c.status {
            Status::Running => {
                return Err(c.precondition("cannot delete a running task: kill it first"))
            }
            Status::Created => {
                // Never started: the runner waits for `start`; end it.
                let _ = nix::sys::signal::kill(Pid::from_raw(c.pid), Signal::SIGKILL);
                c.runner = None;
            }
            Status::Stopped => {}
        }
        let mut exit_rx = c.exit.subscribe();
        let exit = match c.exited() {
            Some(e) => e,
            None => {
                // on_exit needs the lock: release it while waiting.
                drop(c);
                let exited = matches!(
                    tokio::time::timeout(
                        Duration::from_secs(10),
                        exit_rx.wait_for(|e| e.is_some()),
                    )
                    .await,
                    Ok(Ok(_))
                );
                c = container.lock().await;
                if c.deleted {
                    return Err(Error::NotFound { id: req.id });
                }
                match exited {
                    true => c.exited().unwrap_or(Exit {
                        code: 137,
                        at: SystemTime::now(),
                    }),
                    false => {
                        return Err(c.precondition("runner did not exit after SIGKILL"));
                    }
                }
            }
        };
        if matches!(c.backend, Backend::Runc { .. }) {
            self.inner
                .runc
                .delete(&c.id, &c.bundle, &self.inner.exits)
                .await?;
        }
        if let Some(target) = c.rootfs.take() {
            rootfs::unmount(&c.id, &target).await?;
        }
        if let Some(cg) = c.cgroup.take() {
            remove_cgroup(cg).await;
        }
        let _ = tokio::fs::remove_file(c.bundle.join(PID_FILE)).await;
        c.keepalive = Keepalive::default();
        c.deleted = true;
        self.inner
            .containers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&c.id);
        self.inner.exits.forget(c.pid);
        let ev = events::TaskDelete {
            container_id: c.id.clone(),
            id: c.id.clone(),
            pid: c.pid as u32,
            exit_status: exit.code,
            exited_at: MessageField::some(timestamp(exit.at)),
            ..Default::default()
        };
        self.publish(topics::TASK_DELETE_EVENT_TOPIC, Box::new(ev))
            .await;
        Ok(DeleteResponse {
            pid: c.pid as u32,
            exit_status: exit.code,
            exited_at: MessageField::some(timestamp(exit.at)),
            ..Default::default()
        })
    }

    /// New limits for a created or running task (CRI
    /// UpdateContainerResources): runc updates a Linux container; a Wasm
    /// container's cgroup is updated in place. The runner's in-wasmtime
    /// memory budget keeps the value it started with; the cgroup limit is
    /// what a lowered limit enforces.
    async fn do_update(&self, req: api::UpdateTaskRequest) -> Result<()> {
        let container = self.container(&req.id)?;
        let c = container.lock().await;
        if c.deleted || c.status == Status::Stopped {
            return Err(c.precondition("cannot update the resources of an exited task"));
        }
        let Some(any) = req.resources.as_ref() else {
            return Err(Error::InvalidArgument {
                id: req.id,
                what: "Update without resources".into(),
            });
        };
        let resources: oci_spec::runtime::LinuxResources = serde_json::from_slice(&any.value)
            .map_err(|e| Error::InvalidArgument {
                id: req.id.clone(),
                what: format!(
                    "resources ({}) are not OCI LinuxResources JSON: {e}",
                    any.type_url
                ),
            })?;
        match c.backend {
            Backend::Runc { systemd } => {
                self.inner
                    .runc
                    .update(&c.id, &c.bundle, &any.value, systemd, &self.inner.exits)
                    .await
            }
            Backend::Wasm => {
                let Some(cg) = c.cgroup.clone() else {
                    return Err(c.precondition("no cgroup: the spec names no linux.cgroupsPath"));
                };
                drop(c);
                tokio::task::spawn_blocking(move || cg.update(&resources))
                    .await
                    .map_err(|e| Error::InvalidArgument {
                        id: req.id.clone(),
                        what: format!("update task: {e}"),
                    })?
            }
        }
    }

    async fn do_state(&self, req: api::StateRequest) -> Result<api::StateResponse> {
        if !req.exec_id.is_empty() {
            let (id, exec_id) = (req.id.clone(), req.exec_id.clone());
            let bundle = self.container(&id)?.lock().await.bundle.clone();
            return self
                .with_exec(&id, &exec_id, |_, e| {
                    let exit = *e.exit.borrow();
                    Ok(api::StateResponse {
                        id: id.clone(),
                        exec_id: exec_id.clone(),
                        bundle: bundle.to_string_lossy().into_owned(),
                        pid: e.pid as u32,
                        status: api_status(e.status).into(),
                        stdin: e.stdio.stdin.clone(),
                        stdout: e.stdio.stdout.clone(),
                        stderr: e.stdio.stderr.clone(),
                        exit_status: exit.map_or(0, |x| x.code),
                        exited_at: MessageField::from_option(exit.map(|x| timestamp(x.at))),
                        ..Default::default()
                    })
                })
                .await;
        }
        let container = self.container(&req.id)?;
        let c = container.lock().await;
        let status = api_status(c.status);
        let mut resp = api::StateResponse {
            id: c.id.clone(),
            bundle: c.bundle.to_string_lossy().into_owned(),
            pid: c.pid as u32,
            status: status.into(),
            stdin: c.stdio.stdin.clone(),
            stdout: c.stdio.stdout.clone(),
            stderr: c.stdio.stderr.clone(),
            terminal: false,
            ..Default::default()
        };
        if let Some(exit) = c.exited() {
            resp.exit_status = exit.code;
            resp.exited_at = MessageField::some(timestamp(exit.at));
        }
        Ok(resp)
    }

    async fn do_wait(&self, req: api::WaitRequest) -> Result<api::WaitResponse> {
        let mut rx = if req.exec_id.is_empty() {
            let container = self.container(&req.id)?;
            let c = container.lock().await;
            c.exit.subscribe()
        } else {
            self.with_exec(&req.id, &req.exec_id, |_, e| Ok(e.exit.subscribe()))
                .await?
        };
        let exit = rx
            .wait_for(|e| e.is_some())
            .await
            .map_err(|_| Error::NotFound { id: req.id.clone() })?
            .unwrap_or(Exit {
                code: 255,
                at: SystemTime::now(),
            });
        Ok(api::WaitResponse {
            exit_status: exit.code,
            exited_at: MessageField::some(timestamp(exit.at)),
            ..Default::default()
        })
    }
}

#[async_trait]
impl Task for Service {
    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        info!("create container {} bundle {}", req.id, req.bundle);
        Ok(self.do_create(req).await.inspect_err(|e| warn!("{e}"))?)
    }

    async fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        info!("start container {}", req.id);
        Ok(self.do_start(req).await?)
    }

    async fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        Ok(self.do_state(req).await?)
    }

    async fn wait(
        &self,
        _ctx: &TtrpcContext,
        req: api::WaitRequest,
    ) -> TtrpcResult<api::WaitResponse> {
        Ok(self.do_wait(req).await?)
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        info!("kill container {} signal {}", req.id, req.signal);
        self.do_kill(req).await?;
        Ok(api::Empty::default())
    }

    async fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<DeleteResponse> {
        info!("delete container {}", req.id);
        Ok(self.do_delete(req).await?)
    }

    async fn pids(
        &self,
        _ctx: &TtrpcContext,
        req: api::PidsRequest,
    ) -> TtrpcResult<api::PidsResponse> {
        let container = self.container(&req.id)?;
        let c = container.lock().await;
        let mut resp = api::PidsResponse::default();
        // The init pid stays listed until Delete, exited or not, as State
        // reports it: containerd 1.7, reloading tasks after a restart, takes
        // a task with no pids for a leaked shim and deletes it, which would
        // lose the exit of a task that ended while containerd was down.
        if !c.deleted {
            resp.processes
                .push(containerd_shim::protos::types::task::ProcessInfo {
                    pid: c.pid as u32,
                    ..Default::default()
                });
        }
        for e in c.execs.values().filter(|e| e.status == Status::Running) {
            resp.processes
                .push(containerd_shim::protos::types::task::ProcessInfo {
                    pid: e.pid as u32,
                    ..Default::default()
                });
        }
        Ok(resp)
    }

    async fn update(
        &self,
        _ctx: &TtrpcContext,
        req: api::UpdateTaskRequest,
    ) -> TtrpcResult<api::Empty> {
        info!("update resources of container {}", req.id);
        self.do_update(req).await?;
        Ok(api::Empty::default())
    }

    async fn exec(
        &self,
        _ctx: &TtrpcContext,
        req: api::ExecProcessRequest,
    ) -> TtrpcResult<api::Empty> {
        info!("exec {} in container {}", req.exec_id, req.id);
        self.do_exec(req).await?;
        Ok(api::Empty::default())
    }

    async fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        let container = self.container(&req.id)?;
        let cgroup = container.lock().await.cgroup.clone();
        let Some(cgroup) = cgroup else {
            return Err(Error::FailedPrecondition {
                id: req.id,
                what: "no cgroup: the spec names no linux.cgroupsPath".into(),
            }
            .into());
        };
        let stats = tokio::task::spawn_blocking(move || cgroup.stats())
            .await
            .map_err(|e| Error::InvalidArgument {
                id: req.id.clone(),
                what: format!("stats task: {e}"),
            })??;
        Ok(api::StatsResponse {
            stats: MessageField::some(stats),
            ..Default::default()
        })
    }

    async fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> TtrpcResult<api::Empty> {
        let container = self.container(&req.id)?;
        let c = container.lock().await;
        let console = if req.exec_id.is_empty() {
            c.console.as_ref()
        } else {
            let e = c.execs.get(&req.exec_id).ok_or_else(|| Error::NotFound {
                id: format!("{}/{}", req.id, req.exec_id),
            })?;
            e.console.as_ref()
        };
        // Without a terminal there is nothing to resize, as with runc.
        if let Some(console) = console {
            console.resize(req.width, req.height)?;
        }
        Ok(api::Empty::default())
    }

    async fn close_io(
        &self,
        _ctx: &TtrpcContext,
        req: api::CloseIORequest,
    ) -> TtrpcResult<api::Empty> {
        let container = self.container(&req.id)?;
        let mut c = container.lock().await;
        if req.stdin {
            if req.exec_id.is_empty() {
                c.keepalive.close_stdin();
                if let Some(console) = &c.console {
                    console.close_stdin();
                }
            } else if let Some(e) = c.execs.get_mut(&req.exec_id) {
                e.keepalive.close_stdin();
                if let Some(console) = &e.console {
                    console.close_stdin();
                }
            }
        }
        Ok(api::Empty::default())
    }

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        let task_pid = match self.container(&req.id) {
            Ok(c) => c.lock().await.pid as u32,
            Err(_) => 0,
        };
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            ..Default::default()
        })
    }

    async fn shutdown(
        &self,
        _ctx: &TtrpcContext,
        _req: api::ShutdownRequest,
    ) -> TtrpcResult<api::Empty> {
        let empty = self
            .inner
            .containers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty();
        if empty {
            info!("no containers left: shutting down");
            self.inner.shutdown.signal();
        }
        Ok(api::Empty::default())
    }
}
