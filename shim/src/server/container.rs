//! A container and its state machine: its init process, the processes
//! exec'd into it, its backend, rootfs mount and cgroup.
//!
//! ```text
//! Create ──▶ Created ──Start──▶ Running ──exit──▶ Stopped ──Delete──▶ (gone)
//!               │                                   ▲
//!               └──────────────Delete (kills)───────┘
//! ```
//! Every method here runs with the container's lock held, and publishes its
//! event before returning, so the order TaskCreate → TaskStart → TaskExit →
//! TaskDelete holds whatever the timing of the process.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use containerd_shim::api::{self, DeleteResponse};
use containerd_shim::protos::events::task as events;
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::protos::topics;
use log::{info, warn};
use nix::sys::signal::Signal;
use tokio::sync::{oneshot, watch};

use wasmpod_oci::plan::RunPlan;

use crate::bundle::PID_FILE;
use crate::error::{Error, RequestError, Result, StateError};
use crate::exit::Exit;
use crate::server::backend::{Backend, Target};
use crate::server::cgroup::ContainerCgroup;
use crate::server::env::Env;
use crate::server::options::RuntimeOptions;
use crate::server::process::{Process, Status};
use crate::server::rootfs;
use crate::server::stdio::StdioPaths;

/// Exit status of an exec process that failed to start, as a shell reports
/// a command it found but could not execute.
const EXEC_START_FAILED: u32 = 126;

/// A container of this shim.
#[derive(Debug)]
pub struct Container {
    pub id: String,
    pub bundle: PathBuf,
    pub init: Process,
    pub backend: Backend,
    /// What containerd's runtime options say (the cgroup driver).
    pub options: RuntimeOptions,
    /// Where the shim mounted the rootfs, when containerd sent mounts.
    rootfs: Option<PathBuf>,
    pub cgroup: Option<Arc<ContainerCgroup>>,
    /// The cgroup's OOM kill count last seen: a rise at an exit means the
    /// kernel's OOM killer ended a process of this container.
    oom_kills: u64,
    execs: HashMap<String, Exec>,
}

/// A process added with `Exec` (`kubectl exec`).
#[derive(Debug)]
struct Exec {
    process: Process,
    spec: oci_spec::runtime::Process,
}

impl Container {
    /// Creates the container for `req`: reads its spec, mounts the rootfs
    /// and launches its first process, which then waits for `Start`. On
    /// failure nothing is left mounted. Returns the container and a
    /// receiver of its first process's exit; publishes TaskCreate.
    pub async fn create(
        env: &Env,
        req: &api::CreateTaskRequest,
    ) -> Result<(Container, oneshot::Receiver<Exit>)> {
        let id = req.id.as_str();
        let bundle = PathBuf::from(&req.bundle);
        let spec = crate::bundle::load_spec(id, &bundle)?;
        let options = RuntimeOptions::parse(req.options.as_ref())
            .map_err(|e| Error::request(id, RequestError::Options(e)))?;
        let plan = RunPlan::from_spec_with(&spec, &bundle, options.plan()).map_err(|source| {
            Error::Plan {
                id: id.to_owned(),
                source,
            }
        })?;
        let mounted = rootfs::mount(id, &bundle, &req.rootfs).await?;
        let launched = match Backend::launch(
            env,
            req,
            &bundle,
            &spec,
            plan,
            options,
            mounted.as_deref(),
        )
        .await
        {
            Ok(l) => l,
            Err(e) => {
                if let Some(target) = &mounted {
                    if let Err(ue) = rootfs::unmount(id, target).await {
                        warn!("{ue}");
                    }
                }
                return Err(e);
            }
        };
        if let Err(e) = tokio::fs::write(bundle.join(PID_FILE), launched.pid.to_string()).await {
            warn!("container {id}: write {PID_FILE}: {e}");
        }
        let mut init = Process::new(StdioPaths::of_create(req));
        init.pid = launched.pid;
        init.keepalive = launched.keepalive;
        init.console = launched.console;
        let container = Container {
            id: id.to_owned(),
            bundle,
            init,
            backend: launched.backend,
            options,
            rootfs: mounted,
            oom_kills: launched.cgroup.as_ref().map_or(0, |cg| cg.oom_kills()),
            cgroup: launched.cgroup,
            execs: HashMap::new(),
        };
        let ev = events::TaskCreate {
            container_id: id.to_owned(),
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
            pid: container.pid(),
            ..Default::default()
        };
        env.events
            .publish(topics::TASK_CREATE_EVENT_TOPIC, Box::new(ev))
            .await;
        Ok((container, launched.exit))
    }

    /// The init process's pid, as containerd is told it.
    pub fn pid(&self) -> u32 {
        u32::try_from(self.init.pid).unwrap_or(0)
    }

    fn target<'a>(&'a self, id: &'a str) -> Target<'a> {
        Target {
            id,
            container: &self.id,
            bundle: &self.bundle,
            cgroup: self.cgroup.clone(),
            options: self.options,
        }
    }

    fn exec(&self, exec_id: &str) -> Result<&Exec> {
        self.execs.get(exec_id).ok_or_else(|| Error::NotFound {
            id: format!("{}/{exec_id}", self.id),
        })
    }

    /// `Start` of the init process; publishes TaskStart.
    pub async fn start(&mut self, env: &Env) -> Result<u32> {
        match self.init.status {
            Status::Created => {}
            Status::Running => return Err(Error::state(&self.id, StateError::AlreadyStarted)),
            Status::Stopped => return Err(Error::state(&self.id, StateError::Exited)),
        }
        let (id, bundle, cgroup) = (self.id.clone(), self.bundle.clone(), self.cgroup.clone());
        let t = Target {
            id: &id,
            container: &id,
            bundle: &bundle,
            cgroup,
            options: self.options,
        };
        self.backend.start(env, &t).await?;
        self.init.status = Status::Running;
        let ev = events::TaskStart {
            container_id: self.id.clone(),
            pid: self.pid(),
            ..Default::default()
        };
        env.events
            .publish(topics::TASK_START_EVENT_TOPIC, Box::new(ev))
            .await;
        Ok(self.pid())
    }

    /// Records the exit of the init process: it and its exec'd processes
    /// are over. Publishes TaskOOM when the kernel's OOM killer ended it,
    /// then TaskExit (only for a started task).
    pub async fn on_exit(&mut self, env: &Env, exit: Exit) {
        if let Some(console) = &self.init.console {
            console.drain().await;
        }
        self.check_oom(env).await;
        let was = self.init.status;
        if let Backend::Wasm(w) = &mut self.backend {
            w.runner = None;
        }
        // The container is over: so are the processes exec'd into it.
        for (exec_id, e) in &self.execs {
            if e.process.status == Status::Running {
                let full_id = format!("{}/{exec_id}", self.id);
                let t = self.target(&full_id);
                let pid = e.process.pid;
                let _ = self
                    .backend
                    .kill(env, &t, pid, Signal::SIGKILL, false)
                    .await;
            }
        }
        self.init.exit(exit);
        info!(
            "container {}: pid {} exited with {}",
            self.id, self.init.pid, exit.code
        );
        if was == Status::Running {
            let ev = events::TaskExit {
                container_id: self.id.clone(),
                id: self.id.clone(),
                pid: self.pid(),
                exit_status: exit.code,
                exited_at: MessageField::some(exit.timestamp()),
                ..Default::default()
            };
            env.events
                .publish(topics::TASK_EXIT_EVENT_TOPIC, Box::new(ev))
                .await;
        }
    }

    /// Publishes TaskOOM when the kernel's OOM killer has killed a process
    /// of the container since the last look (called at each of its
    /// processes' exits, before their TaskExit, so CRI reports the reason
    /// `OOMKilled`).
    async fn check_oom(&mut self, env: &Env) {
        let Some(cg) = &self.cgroup else {
            return;
        };
        let kills = cg.oom_kills();
        if kills <= self.oom_kills {
            return;
        }
        self.oom_kills = kills;
        warn!(
            "container {}: the kernel's OOM killer ended a process (cgroup OOM kills: {kills})",
            self.id
        );
        let ev = events::TaskOOM {
            container_id: self.id.clone(),
            ..Default::default()
        };
        env.events
            .publish(topics::TASK_OOM_EVENT_TOPIC, Box::new(ev))
            .await;
    }

    /// `Kill` of the init process (`all`: every process of a Linux
    /// container).
    pub async fn kill(&self, env: &Env, signal: u32, all: bool) -> Result<()> {
        if self.init.status == Status::Stopped {
            return Err(Error::ProcessFinished {
                id: self.id.clone(),
            });
        }
        let sig = parse_signal(&self.id, signal)?;
        let t = self.target(&self.id);
        self.backend.kill(env, &t, self.init.pid, sig, all).await
    }

    /// `Kill` of an exec'd process.
    pub async fn kill_exec(&self, env: &Env, exec_id: &str, signal: u32) -> Result<()> {
        let full_id = format!("{}/{exec_id}", self.id);
        let e = self.exec(exec_id)?;
        if e.process.status != Status::Running {
            return Err(Error::ProcessFinished { id: full_id });
        }
        let sig = parse_signal(&full_id, signal)?;
        let t = self.target(&full_id);
        self.backend.kill(env, &t, e.process.pid, sig, false).await
    }

    /// `Exec`: adds a process to the running container, to be started by
    /// `Start`; publishes TaskExecAdded.
    pub async fn add_exec(&mut self, env: &Env, req: &api::ExecProcessRequest) -> Result<()> {
        let full_id = format!("{}/{}", req.id, req.exec_id);
        if req.exec_id.is_empty() || req.exec_id.contains('/') || req.exec_id.starts_with('.') {
            return Err(Error::request(full_id, RequestError::ExecId));
        }
        if self.init.status != Status::Running {
            return Err(Error::state(&self.id, StateError::ExecNotRunning));
        }
        if self.execs.contains_key(&req.exec_id) {
            return Err(Error::AlreadyExists { id: full_id });
        }
        if req.terminal && self.backend.is_wasm() {
            return Err(Error::request(full_id, RequestError::ExecTerminal));
        }
        let value = req.spec.as_ref().map(|a| a.value.as_slice()).unwrap_or(&[]);
        let spec: oci_spec::runtime::Process = serde_json::from_slice(value)
            .map_err(|e| Error::request(&full_id, RequestError::ExecSpec(e)))?;
        self.execs.insert(
            req.exec_id.clone(),
            Exec {
                process: Process::new(StdioPaths::of_exec(req)),
                spec,
            },
        );
        let ev = events::TaskExecAdded {
            container_id: req.id.clone(),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        };
        env.events
            .publish(topics::TASK_EXEC_ADDED_EVENT_TOPIC, Box::new(ev))
            .await;
        Ok(())
    }

    /// `Start` of an exec'd process; publishes TaskExecStarted. A process
    /// that cannot be started is over at once (exit 126), so that `Wait`
    /// returns.
    pub async fn start_exec(
        &mut self,
        env: &Env,
        exec_id: &str,
    ) -> Result<(u32, oneshot::Receiver<Exit>)> {
        let full_id = format!("{}/{exec_id}", self.id);
        if self.init.status != Status::Running {
            return Err(Error::state(&self.id, StateError::ExecStartNotRunning));
        }
        let e = self.exec(exec_id)?;
        if e.process.status != Status::Created {
            return Err(Error::state(full_id, StateError::ExecStarted));
        }
        let (paths, spec) = (e.process.stdio.clone(), e.spec.clone());
        let t = self.target(&full_id);
        let launched = self
            .backend
            .exec(env, &t, exec_id, self.init.pid, &spec, &paths)
            .await;
        let Some(e) = self.execs.get_mut(exec_id) else {
            return Err(Error::NotFound { id: full_id });
        };
        let launched = match launched {
            Ok(l) => l,
            Err(err) => {
                e.process.exit(Exit::now(EXEC_START_FAILED));
                return Err(err);
            }
        };
        e.process.pid = launched.pid;
        e.process.status = Status::Running;
        e.process.keepalive = launched.keepalive;
        e.process.console = launched.console;
        let pid = u32::try_from(launched.pid).unwrap_or(0);
        info!("container {}: exec {exec_id} started, pid {pid}", self.id);
        let ev = events::TaskExecStarted {
            container_id: self.id.clone(),
            exec_id: exec_id.to_owned(),
            pid,
            ..Default::default()
        };
        env.events
            .publish(topics::TASK_EXEC_STARTED_EVENT_TOPIC, Box::new(ev))
            .await;
        Ok((pid, launched.exit))
    }

    /// Records the exit of an exec'd process; publishes TaskExit.
    pub async fn on_exec_exit(&mut self, env: &Env, exec_id: &str, exit: Exit) {
        if let Some(console) = self
            .execs
            .get(exec_id)
            .and_then(|e| e.process.console.as_ref())
        {
            console.drain().await;
        }
        self.check_oom(env).await;
        let Some(e) = self.execs.get_mut(exec_id) else {
            return;
        };
        e.process.exit(exit);
        info!(
            "container {}: exec {exec_id} pid {} exited with {}",
            self.id, e.process.pid, exit.code
        );
        let ev = events::TaskExit {
            container_id: self.id.clone(),
            id: exec_id.to_owned(),
            pid: u32::try_from(e.process.pid).unwrap_or(0),
            exit_status: exit.code,
            exited_at: MessageField::some(exit.timestamp()),
            ..Default::default()
        };
        env.events
            .publish(topics::TASK_EXIT_EVENT_TOPIC, Box::new(ev))
            .await;
    }

    /// `Delete` of an exec'd process that has exited.
    pub fn delete_exec(&mut self, env: &Env, exec_id: &str) -> Result<DeleteResponse> {
        let e = self.exec(exec_id)?;
        if e.process.status == Status::Running {
            return Err(Error::state(
                format!("{}/{exec_id}", self.id),
                StateError::ExecRunning,
            ));
        }
        let exit = e.process.exited();
        let pid = e.process.pid;
        self.execs.remove(exec_id);
        env.exits.forget(pid);
        Ok(DeleteResponse {
            pid: u32::try_from(pid).unwrap_or(0),
            exit_status: exit.map_or(0, |x| x.code),
            exited_at: MessageField::from_option(exit.map(|x| x.timestamp())),
            ..Default::default()
        })
    }

    /// The first step of `Delete`: a task still running is refused; one
    /// that never started is killed. Returns a receiver of its exit.
    pub async fn begin_delete(&mut self, env: &Env) -> Result<watch::Receiver<Option<Exit>>> {
        match self.init.status {
            Status::Running => return Err(Error::state(&self.id, StateError::Running)),
            Status::Created => {
                // Never started: the runner waits for `start`; end it.
                let t = self.target(&self.id);
                let _ = self
                    .backend
                    .kill(env, &t, self.init.pid, Signal::SIGKILL, false)
                    .await;
                if let Backend::Wasm(w) = &mut self.backend {
                    w.runner = None;
                }
            }
            Status::Stopped => {}
        }
        Ok(self.init.subscribe())
    }

    /// The last step of `Delete`, once the init process has exited: removes
    /// what the container holds (runc's state, the rootfs mount, the
    /// cgroup, the pid file) and publishes TaskDelete.
    pub async fn finish_delete(&mut self, env: &Env, exit: Exit) -> Result<DeleteResponse> {
        let (id, bundle, cgroup) = (self.id.clone(), self.bundle.clone(), self.cgroup.clone());
        let t = Target {
            id: &id,
            container: &id,
            bundle: &bundle,
            cgroup,
            options: self.options,
        };
        self.backend.delete(env, &t).await?;
        if let Some(target) = self.rootfs.take() {
            rootfs::unmount(&self.id, &target).await?;
        }
        if let Some(cg) = self.cgroup.take() {
            if self.backend.is_wasm() {
                crate::server::backend::wasm::remove_cgroup(cg).await;
            }
        }
        let _ = tokio::fs::remove_file(self.bundle.join(PID_FILE)).await;
        self.init.keepalive = Default::default();
        env.exits.forget(self.init.pid);
        let ev = events::TaskDelete {
            container_id: self.id.clone(),
            id: self.id.clone(),
            pid: self.pid(),
            exit_status: exit.code,
            exited_at: MessageField::some(exit.timestamp()),
            ..Default::default()
        };
        env.events
            .publish(topics::TASK_DELETE_EVENT_TOPIC, Box::new(ev))
            .await;
        Ok(DeleteResponse {
            pid: self.pid(),
            exit_status: exit.code,
            exited_at: MessageField::some(exit.timestamp()),
            ..Default::default()
        })
    }

    /// `Update` (CRI UpdateContainerResources): new limits for a created
    /// or running task.
    pub async fn update(&self, env: &Env, req: &api::UpdateTaskRequest) -> Result<()> {
        if self.init.status == Status::Stopped {
            return Err(Error::state(&self.id, StateError::UpdateExited));
        }
        let Some(any) = req.resources.as_ref() else {
            return Err(Error::request(&self.id, RequestError::NoResources));
        };
        let resources: oci_spec::runtime::LinuxResources = serde_json::from_slice(&any.value)
            .map_err(|source| {
                let e = RequestError::Resources {
                    type_url: any.type_url.clone(),
                    source,
                };
                Error::request(&self.id, e)
            })?;
        let t = self.target(&self.id);
        self.backend.update(env, &t, &any.value, resources).await
    }

    /// `State` of the init process or of an exec'd one.
    pub fn state(&self, exec_id: &str) -> Result<api::StateResponse> {
        let process = if exec_id.is_empty() {
            &self.init
        } else {
            &self.exec(exec_id)?.process
        };
        let mut resp = process.state();
        resp.id = self.id.clone();
        resp.exec_id = exec_id.to_owned();
        resp.bundle = path_string(&self.bundle);
        Ok(resp)
    }

    /// A receiver of the exit of the init process or of an exec'd one.
    pub fn subscribe(&self, exec_id: &str) -> Result<watch::Receiver<Option<Exit>>> {
        if exec_id.is_empty() {
            Ok(self.init.subscribe())
        } else {
            Ok(self.exec(exec_id)?.process.subscribe())
        }
    }

    /// `Pids`: the init pid, listed until `Delete` whether it has exited or
    /// not (as `State` reports it: containerd 1.7, reloading tasks after a
    /// restart, takes a task with no pids for a leaked shim and deletes it,
    /// which would lose the exit of a task that ended while containerd was
    /// down), and the running exec'd processes.
    pub fn pids(&self) -> Vec<u32> {
        std::iter::once(self.pid())
            .chain(
                self.execs
                    .values()
                    .filter(|e| e.process.status == Status::Running)
                    .map(|e| u32::try_from(e.process.pid).unwrap_or(0)),
            )
            .collect()
    }

    /// `ResizePty` of the init process or of an exec'd one; without a
    /// terminal there is nothing to resize, as with runc.
    pub fn resize(&self, exec_id: &str, width: u32, height: u32) -> Result<()> {
        let console = if exec_id.is_empty() {
            self.init.console.as_ref()
        } else {
            self.exec(exec_id)?.process.console.as_ref()
        };
        match console {
            Some(console) => console.resize(width, height),
            None => Ok(()),
        }
    }

    /// `CloseIO` with stdin.
    pub fn close_stdin(&mut self, exec_id: &str) {
        if exec_id.is_empty() {
            self.init.close_stdin();
        } else if let Some(e) = self.execs.get_mut(exec_id) {
            e.process.close_stdin();
        }
    }
}

fn parse_signal(id: &str, signal: u32) -> Result<Signal> {
    i32::try_from(signal)
        .ok()
        .and_then(|s| Signal::try_from(s).ok())
        .ok_or_else(|| Error::request(id, RequestError::Signal(signal)))
}

fn path_string(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}
