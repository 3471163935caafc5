//! A Wasm container: one runner process per container (and per exec'd
//! program), in the container's cgroup, created by the shim.

use std::path::Path;
use std::sync::Arc;

use containerd_shim::api;
use log::info;
use wasmpod_oci::plan::RunPlan;

use super::{process_io, ExecLaunched, Launched, Located, Target};
use crate::control::{RunRequest, WasmFile};
use crate::error::{Error, RequestError, Result, StateError};
use crate::server::cgroup::{Base, CgroupError, ContainerCgroup};
use crate::server::env::Env;
use crate::server::runner::Runner;
use crate::server::stdio::{self, StdioPaths};
use crate::server::{namespaces, rootfs};

/// A Wasm container's backend state.
#[derive(Debug)]
pub struct Wasm {
    /// The runner, loaded and waiting for `start` (taken by `Start`).
    pub runner: Option<Runner>,
}

impl Wasm {
    /// Tells the runner to run the guest.
    pub async fn start(&mut self, t: &Target<'_>) -> Result<()> {
        let runner = self
            .runner
            .take()
            .ok_or_else(|| Error::state(t.id, StateError::RunnerGone))?;
        runner.start(t.id).await
    }
}

/// Creates a Wasm container's runner: restricts the rootfs mount, fetches an
/// artifact's layer when the entry point is not in the rootfs, creates the
/// cgroup, and starts the runner, which loads the workload before this
/// returns. Undoes all of it on failure.
pub async fn launch(
    env: &Env,
    req: &api::CreateTaskRequest,
    bundle: &Path,
    spec: &oci_spec::runtime::Spec,
    mut plan: RunPlan,
    rootfs: Option<&Path>,
    located: Located,
) -> Result<Launched> {
    let id = req.id.as_str();
    let paths = StdioPaths::of_create(req);
    if paths.terminal || plan.terminal {
        return Err(Error::request(id, RequestError::Terminal));
    }
    // in a user namespace, the user must be one it maps
    plan.host_user().map_err(|source| Error::Plan {
        id: id.to_owned(),
        source,
    })?;
    let mut spans = crate::spans::Spans::new();
    plan.seccomp = seccomp(env, id, spec)?;
    if plan.seccomp.is_some() {
        spans.mark("seccomp");
    }
    // Not in the rootfs: the image may be a Wasm artifact whose layer
    // containerd stored but did not unpack.
    let mut fetched = None;
    if located == Located::Missing {
        let annotations = spec.annotations().clone().unwrap_or_default();
        let arg0 = plan.args.first().map(String::as_str);
        match env
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
    let mut cgroup = None;
    let result = async {
        let (_, child_stdio, keepalive) = process_io(id, &paths)?;
        if let Some(target) = rootfs {
            // in its own mount namespace the runner makes the root
            // read-only itself, once its mounts are made
            let readonly = plan.root.readonly && !plan.new_mount_namespace();
            rootfs::restrict(id, target, readonly).await?;
            spans.mark("nodev");
        }
        if let Some(path) = &plan.cgroup {
            let resources = spec.linux().as_ref().and_then(|l| l.resources().clone());
            let (cid, path, relative) = (id.to_owned(), path.clone(), plan.cgroup_relative);
            let cg = tokio::task::spawn_blocking(move || {
                let base = Base::of(relative).map_err(|e| Error::Cgroup {
                    id: cid.clone(),
                    path: path.clone(),
                    source: CgroupError::Base(e),
                })?;
                ContainerCgroup::create(&cid, &path, &base, resources.as_ref())
            })
            .await
            .map_err(|source| Error::Blocking {
                id: id.to_owned(),
                what: "cgroup task",
                source,
            })??;
            cgroup = Some(Arc::new(cg));
            spans.mark("cgroup");
        }
        let cgroup_path = plan.cgroup.clone();
        let request = RunRequest {
            id: id.to_owned(),
            plan,
            cache: env.cache.clone(),
            wasm: fetched.clone(),
            pod_sandbox: located == Located::PodSandbox,
        };
        let (runner, exit) = Runner::spawn(
            &request,
            bundle,
            child_stdio,
            &env.exits,
            cgroup.as_deref(),
        )
        .await?;
        spans.extend("runner ", &runner.timings);
        info!(
            "container {id}: runner pid {} loaded {} {} (module cache {}, cgroup {cgroup_path:?}); ms: {spans}",
            runner.pid, runner.kind, runner.entrypoint, runner.cache
        );
        Ok(Launched {
            pid: runner.pid,
            backend: super::Backend::Wasm(Wasm {
                runner: Some(runner),
            }),
            keepalive,
            console: None,
            cgroup: cgroup.clone(),
            exit,
        })
    }
    .await;
    // The runner has read the layer (or failed): its copy is not needed.
    if let Some(f) = fetched {
        if let Err(e) = tokio::fs::remove_file(&f.path).await {
            log::warn!("container {id}: remove {}: {e}", f.path.display());
        }
    }
    if result.is_err() {
        if let Some(cg) = cgroup {
            remove_cgroup(cg).await;
        }
    }
    result
}

/// Starts an exec'd Wasm program: another runner in the container's cgroup
/// and namespaces, with the container's rootfs and mounts and the exec's
/// process spec.
pub async fn exec(
    env: &Env,
    t: &Target<'_>,
    init_pid: i32,
    process: &oci_spec::runtime::Process,
    paths: &StdioPaths,
) -> Result<ExecLaunched> {
    if paths.terminal {
        return Err(Error::request(t.id, RequestError::ExecTerminal));
    }
    let mut spec = crate::bundle::load_spec(t.id, t.bundle)?;
    spec.set_process(Some(process.clone()));
    let mut plan =
        RunPlan::from_spec_with(&spec, t.bundle, t.options.plan()).map_err(|source| {
            Error::Plan {
                id: t.id.to_owned(),
                source,
            }
        })?;
    plan.host_user().map_err(|source| Error::Plan {
        id: t.id.to_owned(),
        source,
    })?;
    plan.seccomp = seccomp(env, t.id, &spec)?;
    let (_, child_stdio, keepalive) = process_io(t.id, paths)?;
    // The container's namespaces are its runner's: opened first and checked
    // after (see `namespaces::share_with`).
    let held = namespaces::share_with(init_pid, &mut plan).map_err(|source| Error::Namespace {
        id: t.id.to_owned(),
        source,
    })?;
    if !crate::control::is_runner(init_pid, t.container) {
        return Err(Error::state(t.id, StateError::ExecInitGone));
    }
    let request = RunRequest {
        id: t.id.to_owned(),
        plan,
        cache: env.cache.clone(),
        wasm: None,
        pod_sandbox: false,
    };
    let (runner, exit) = Runner::spawn(
        &request,
        t.bundle,
        child_stdio,
        &env.exits,
        t.cgroup.as_deref(),
    )
    .await?;
    // The runner is in the namespaces now.
    drop(held);
    let pid = runner.pid;
    runner.start(t.id).await?;
    Ok(ExecLaunched {
        pid,
        keepalive,
        console: None,
        exit,
    })
}

/// `linux.seccomp` compiled (once per profile and shim).
fn seccomp(
    env: &Env,
    id: &str,
    spec: &oci_spec::runtime::Spec,
) -> Result<Option<wasmpod_oci::plan::SeccompProgram>> {
    let Some(profile) = spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) else {
        return Ok(None);
    };
    env.seccomp
        .get(profile)
        .map(Some)
        .map_err(|source| Error::Seccomp {
            id: id.to_owned(),
            source,
        })
}

/// New limits for a Wasm container's cgroup. The runner's in-wasmtime
/// memory budget keeps the value it started with; the cgroup limit is what
/// a lowered limit enforces.
pub async fn update(t: &Target<'_>, resources: oci_spec::runtime::LinuxResources) -> Result<()> {
    let Some(cg) = &t.cgroup else {
        return Err(Error::state(t.id, StateError::NoCgroup));
    };
    let cg = cg.clone();
    tokio::task::spawn_blocking(move || cg.update(&resources))
        .await
        .map_err(|source| Error::Blocking {
            id: t.id.to_owned(),
            what: "update task",
            source,
        })?
}

/// Removes a container's cgroup off the event loop (it may wait briefly
/// for the kernel to release the last process).
pub async fn remove_cgroup(cg: Arc<ContainerCgroup>) {
    let _ = tokio::task::spawn_blocking(move || cg.remove()).await;
}
