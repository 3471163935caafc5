//! A pod's Linux container (the pause sandbox, a sidecar), run through the
//! node's runc from the same bundle (see [`crate::linux::runc`]).

use std::path::Path;
use std::sync::Arc;

use containerd_shim::api;
use nix::sys::signal::Signal;
use wasmpod_oci::plan::{CgroupDriver, RunPlan};

use super::{process_io, ExecLaunched, Launched, Target};
use crate::error::Result;
use crate::linux::runc::ProcessIo;
use crate::server::cgroup::{Base, ContainerCgroup};
use crate::server::env::Env;
use crate::server::options::RuntimeOptions;
use crate::server::stdio::StdioPaths;

/// A Linux container's backend state.
#[derive(Debug)]
pub struct Linux {
    /// Whether runc manages its cgroups through systemd.
    pub systemd: bool,
}

/// `runc create` for the container, with a terminal when it asks for one.
pub async fn launch(
    env: &Env,
    req: &api::CreateTaskRequest,
    bundle: &Path,
    plan: &RunPlan,
    options: RuntimeOptions,
) -> Result<Launched> {
    let id = req.id.as_str();
    let paths = StdioPaths::of_create(req);
    // the runtime option, as runc's shim reads it (never the path's shape)
    let systemd = options.cgroup_driver == CgroupDriver::Systemd;
    // an old runc ignores a mount's id mappings: refuse, as containerd's
    // runc shim does, rather than give the container unmapped files
    if plan.mounts.iter().any(|m| m.idmap.is_some()) {
        env.runc.idmap_mounts(&env.exits).await.map_err(|why| {
            crate::error::Error::request(id, crate::error::RequestError::RuncWithoutIdmap { why })
        })?;
    }
    let (console_socket, child_stdio, keepalive) = process_io(id, &paths)?;
    let socket_path = console_socket.as_ref().map(|c| c.path());
    let io = ProcessIo {
        stdio: child_stdio.into_process(),
        console_socket: socket_path.as_deref(),
    };
    let pid = env.runc.create(id, bundle, io, &env.exits, systemd).await?;
    let mut console = None;
    if let Some(socket) = console_socket {
        match socket.into_console(id, &paths) {
            Ok(c) => console = Some(c),
            Err(e) => {
                let _ = env.runc.delete(id, bundle, &env.exits).await;
                return Err(e);
            }
        }
    }
    log::debug!("container {id}: runc container pid {pid}");
    // runc owns this cgroup; the shim only reads it.
    let cgroup = plan.cgroup.as_ref().and_then(|path| {
        let base = Base::of(plan.cgroup_relative).ok()?;
        ContainerCgroup::open(id, path, &base).ok().map(Arc::new)
    });
    Ok(Launched {
        pid,
        backend: super::Backend::Linux(Linux { systemd }),
        keepalive,
        console,
        cgroup,
        exit: env.exits.watch(pid),
    })
}

impl Linux {
    /// `runc start`.
    pub async fn start(&self, env: &Env, t: &Target<'_>) -> Result<()> {
        env.runc.start(t.container, t.bundle, &env.exits).await
    }

    /// `runc exec`, with a terminal when asked.
    pub async fn exec(
        &self,
        env: &Env,
        t: &Target<'_>,
        exec_id: &str,
        process: &oci_spec::runtime::Process,
        paths: &StdioPaths,
    ) -> Result<ExecLaunched> {
        let (console_socket, child_stdio, keepalive) = process_io(t.id, paths)?;
        let socket_path = console_socket.as_ref().map(|c| c.path());
        let io = ProcessIo {
            stdio: child_stdio.into_process(),
            console_socket: socket_path.as_deref(),
        };
        let pid = env
            .runc
            .exec(t.container, exec_id, t.bundle, process, io, &env.exits)
            .await?;
        let exit = env.exits.watch(pid);
        let mut console = None;
        if let Some(socket) = console_socket {
            match socket.into_console(t.id, paths) {
                Ok(c) => console = Some(c),
                Err(e) => {
                    let _ =
                        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
                    return Err(e);
                }
            }
        }
        Ok(ExecLaunched {
            pid,
            keepalive,
            console,
            exit,
        })
    }

    /// `runc kill --all`.
    pub async fn kill_all(&self, env: &Env, t: &Target<'_>, signal: Signal) -> Result<()> {
        env.runc
            .kill_all(t.container, t.bundle, signal as u32, &env.exits)
            .await
    }

    /// `runc update`.
    pub async fn update(&self, env: &Env, t: &Target<'_>, raw: &[u8]) -> Result<()> {
        env.runc
            .update(t.container, t.bundle, raw, self.systemd, &env.exits)
            .await
    }

    /// `runc delete --force`.
    pub async fn delete(&self, env: &Env, t: &Target<'_>) -> Result<()> {
        env.runc.delete(t.container, t.bundle, &env.exits).await
    }
}
