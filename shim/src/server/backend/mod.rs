//! What runs a container's processes: a wasmpod runner ([`wasm`]), or the
//! node's runc for a pod's Linux containers ([`linux`]). Each variant owns
//! its launch, start, exec, kill, update and delete; the container code
//! calls them without knowing which it has.
//!
//! The rule: where CRI marks a container as part of a pod and its entry point
//! is not WebAssembly (the pause sandbox, a busybox or proxy sidecar), runc
//! runs it; everything else is Wasm (and a non-Wasm entry point outside a
//! pod is the runner's error to report).

use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use containerd_shim::api;
use nix::sys::signal::Signal;
use tokio::sync::oneshot;
use wasmpod_oci::plan::RunPlan;
use wasmpod_oci::wasm::classify;

use crate::bundle::CONTAINER_TYPE_ANNOTATION;
use crate::error::Result;
use crate::exit::Exit;
use crate::linux::console::{Console, ConsoleSocket};
use crate::server::cgroup::ContainerCgroup;
use crate::server::env::Env;
use crate::server::options::RuntimeOptions;
use crate::server::stdio::{ChildStdio, Keepalive, Stdio, StdioPaths};

#[cfg(test)]
pub mod fake;
pub mod linux;
pub mod wasm;

/// What runs a container.
#[derive(Debug)]
pub enum Backend {
    /// A wasmpod runner: WebAssembly under wasmtime.
    Wasm(wasm::Wasm),
    /// The node's runc: a pod's pause sandbox and Linux sidecars.
    Linux(linux::Linux),
    /// A test double: processes that exist only as pids (see [`fake`]).
    #[cfg(test)]
    Fake(fake::Fake),
}

/// A container's first process, created and waiting for `Start`.
pub struct Launched {
    pub pid: i32,
    pub backend: Backend,
    pub keepalive: Keepalive,
    pub console: Option<Console>,
    /// The container's cgroup: the shim's own (Wasm) or runc's (only read).
    pub cgroup: Option<Arc<ContainerCgroup>>,
    /// Yields the process's exit.
    pub exit: oneshot::Receiver<Exit>,
}

/// An exec'd process, running.
pub struct ExecLaunched {
    pub pid: i32,
    pub keepalive: Keepalive,
    pub console: Option<Console>,
    pub exit: oneshot::Receiver<Exit>,
}

/// What a request about one of a container's processes needs to know.
pub struct Target<'a> {
    /// `container` or `container/exec`, for messages.
    pub id: &'a str,
    /// The container's id.
    pub container: &'a str,
    pub bundle: &'a Path,
    pub cgroup: Option<Arc<ContainerCgroup>>,
    /// The container's runtime options.
    pub options: RuntimeOptions,
}

impl Backend {
    /// Creates the container's process for `req`: chooses the backend from
    /// the spec and its entry point, and starts what it needs (the rootfs is
    /// already mounted).
    pub async fn launch(
        env: &Env,
        req: &api::CreateTaskRequest,
        bundle: &Path,
        spec: &oci_spec::runtime::Spec,
        plan: RunPlan,
        options: RuntimeOptions,
        rootfs: Option<&Path>,
    ) -> Result<Launched> {
        #[cfg(test)]
        if let Some(world) = &env.fake {
            return world.launch(env, req);
        }
        let container_type = spec
            .annotations()
            .as_ref()
            .and_then(|a| a.get(CONTAINER_TYPE_ANNOTATION))
            .map(String::as_str);
        if container_type == Some("sandbox")
            && native_sandbox(&req.id, spec)?
            && !runc_holds_userns_pods(env, &plan).await
        {
            return wasm::launch(env, req, bundle, spec, plan, rootfs, Located::PodSandbox).await;
        }
        let in_pod = container_type.is_some();
        let located = locate(&plan);
        if in_pod && located == Located::Other {
            linux::launch(env, req, bundle, &plan, options).await
        } else {
            wasm::launch(env, req, bundle, spec, plan, rootfs, located).await
        }
    }

    /// `Start`: runs the created process.
    pub async fn start(&mut self, env: &Env, t: &Target<'_>) -> Result<()> {
        match self {
            Backend::Wasm(w) => w.start(t).await,
            Backend::Linux(l) => l.start(env, t).await,
            #[cfg(test)]
            Backend::Fake(f) => f.start(t),
        }
    }

    /// Starts `process` in the running container whose first process is
    /// `init_pid`.
    pub async fn exec(
        &self,
        env: &Env,
        t: &Target<'_>,
        exec_id: &str,
        init_pid: i32,
        process: &oci_spec::runtime::Process,
        paths: &StdioPaths,
    ) -> Result<ExecLaunched> {
        match self {
            Backend::Wasm(_) => wasm::exec(env, t, init_pid, process, paths).await,
            Backend::Linux(l) => l.exec(env, t, exec_id, process, paths).await,
            #[cfg(test)]
            Backend::Fake(f) => f.exec(env),
        }
    }

    /// Sends `signal` to `pid`, one of the container's processes; with
    /// `all`, to every process of a Linux container (a Wasm container is
    /// one process).
    pub async fn kill(
        &self,
        env: &Env,
        t: &Target<'_>,
        pid: i32,
        signal: Signal,
        all: bool,
    ) -> Result<()> {
        match self {
            Backend::Linux(l) if all => l.kill_all(env, t, signal).await,
            #[cfg(test)]
            Backend::Fake(f) => f.kill(env, pid, signal),
            _ => {
                let to = nix::unistd::Pid::from_raw(pid);
                nix::sys::signal::kill(to, signal).map_err(|source| crate::error::Error::Signal {
                    id: t.id.to_owned(),
                    pid,
                    signal: signal as u32,
                    source,
                })
            }
        }
    }

    /// New limits (CRI UpdateContainerResources). `raw` is the request's
    /// OCI `LinuxResources` JSON, which `resources` was parsed from.
    pub async fn update(
        &self,
        env: &Env,
        t: &Target<'_>,
        raw: &[u8],
        resources: oci_spec::runtime::LinuxResources,
    ) -> Result<()> {
        match self {
            Backend::Wasm(_) => wasm::update(t, resources).await,
            Backend::Linux(l) => l.update(env, t, raw).await,
            #[cfg(test)]
            Backend::Fake(_) => Ok(()),
        }
    }

    /// Removes what the backend keeps for the container, whose processes
    /// have all exited.
    pub async fn delete(&mut self, env: &Env, t: &Target<'_>) -> Result<()> {
        match self {
            Backend::Wasm(w) => {
                w.runner = None;
                Ok(())
            }
            Backend::Linux(l) => l.delete(env, t).await,
            #[cfg(test)]
            Backend::Fake(_) => Ok(()),
        }
    }

    /// Whether this is a Wasm container.
    pub fn is_wasm(&self) -> bool {
        matches!(self, Backend::Wasm(_))
    }
}

/// A process's stdio: with a terminal, runc sends it over the returned
/// socket and the process gets it as its stdio (the FIFOs are the console's
/// to copy); otherwise the FIFOs themselves.
fn process_io(
    id: &str,
    paths: &StdioPaths,
) -> Result<(Option<ConsoleSocket>, ChildStdio, Keepalive)> {
    if paths.terminal {
        let (stdio, keepalive) = Stdio::default().into_parts();
        Ok((Some(ConsoleSocket::new(id)?), stdio, keepalive))
    } else {
        let (stdio, keepalive) = Stdio::open(id, paths)?.into_parts();
        Ok((None, stdio, keepalive))
    }
}

/// What the plan's entry point is inside the rootfs, as the shim sees it
/// before choosing a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Located {
    /// A WebAssembly binary (or something the runner will report on, such
    /// as an unreadable rootfs).
    Wasm,
    /// A regular file that is not WebAssembly (an ELF, a script).
    Other,
    /// No candidate path exists: the Wasm may be a layer of an artifact.
    Missing,
    /// Not looked for: a pod's sandbox container, which the shim runs
    /// natively (no pause binary, no runc).
    PodSandbox,
}

/// The pod annotation that chooses how a pod's sandbox runs: `native` (the
/// default: a runner holds the pod's namespaces, see `runner::pod_sandbox`)
/// or `runc` (the pause image's entry point under the node's runc).
pub const POD_SANDBOX_ANNOTATION: &str = "wasmpod.io/pod-sandbox";

/// Whether the sandbox container of `spec` runs natively; an unknown
/// value of [`POD_SANDBOX_ANNOTATION`] is an error.
pub fn native_sandbox(id: &str, spec: &oci_spec::runtime::Spec) -> Result<bool> {
    match spec
        .annotations()
        .as_ref()
        .and_then(|a| a.get(POD_SANDBOX_ANNOTATION))
        .map(String::as_str)
    {
        None | Some("native") => Ok(true),
        Some("runc") => Ok(false),
        Some(other) => Err(crate::error::Error::request(
            id,
            crate::error::RequestError::PodSandboxMode(other.to_owned()),
        )),
    }
}

/// Whether the sandbox of `plan`, a pod with a user namespace of its own
/// (`hostUsers: false`), goes to runc's pause: when the node's runc can run
/// that pod's Linux containers (it makes idmapped mounts, runc 1.2+). A runc
/// sidecar mounts `/dev/mqueue` and `/proc` in the pod's IPC and PID
/// namespaces from inside the pod's user namespace, which needs them owned
/// by it, as runc makes them; the native sandbox makes them as the node's
/// root, before it enters the user namespace (docs/security.md §2.2).
/// Where runc cannot, a user-namespaced pod holds only Wasm containers, and
/// its sandbox is native: such a pod needs no runc at all.
async fn runc_holds_userns_pods(env: &Env, plan: &RunPlan) -> bool {
    plan.user_namespace
        .as_ref()
        .is_some_and(|ns| ns.path.is_none())
        && env.runc.idmap_mounts(&env.exits).await.is_ok()
}

/// Finds the plan's entry point inside the rootfs and tells what it is.
pub fn locate(plan: &RunPlan) -> Located {
    let Ok(root) = File::open(&plan.root.path) else {
        return Located::Wasm;
    };
    for path in plan.entrypoint_candidates() {
        if let Ok(mut file) = crate::sys::fs::open_in_root(&root, &path) {
            if !file.metadata().is_ok_and(|m| m.is_file()) {
                continue;
            }
            let mut header = [0u8; 8];
            return match file.read_exact(&mut header) {
                Ok(()) if classify(&header).is_some() => Located::Wasm,
                _ => Located::Other,
            };
        }
    }
    Located::Missing
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(root: &Path, arg0: &str) -> RunPlan {
        let spec: oci_spec::runtime::Spec = serde_json::from_value(serde_json::json!({
            "ociVersion": "1.1.0",
            "process": {"args": [arg0], "cwd": "/", "user": {"uid": 0, "gid": 0},
                        "env": ["PATH=/bin:/sbin"]},
            "root": {"path": root}
        }))
        .unwrap();
        RunPlan::from_spec(&spec, Path::new("/b")).unwrap()
    }

    #[test]
    fn pod_sandbox_annotation_chooses_native_or_runc() {
        let spec = |value: Option<&str>| -> oci_spec::runtime::Spec {
            let mut annotations = serde_json::Map::new();
            annotations.insert(CONTAINER_TYPE_ANNOTATION.into(), "sandbox".into());
            if let Some(v) = value {
                annotations.insert(POD_SANDBOX_ANNOTATION.into(), v.into());
            }
            serde_json::from_value(serde_json::json!({
                "ociVersion": "1.1.0",
                "process": {"args": ["/pause"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
                "root": {"path": "rootfs"},
                "annotations": annotations,
            }))
            .unwrap()
        };
        assert!(native_sandbox("p", &spec(None)).unwrap());
        assert!(native_sandbox("p", &spec(Some("native"))).unwrap());
        assert!(!native_sandbox("p", &spec(Some("runc"))).unwrap());
        let err = native_sandbox("p", &spec(Some("kata")))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"kata\"") && err.contains("native (the default) or runc"),
            "{err}"
        );
    }

    #[test]
    fn locates_wasm_other_and_missing_entry_points() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join("bin")).unwrap();
        std::fs::write(root.join("app.wasm"), b"\0asm\x01\0\0\0").unwrap();
        std::fs::write(root.join("bin/sh"), b"\x7fELF\x02\x01\x01\0").unwrap();
        std::fs::create_dir(root.join("sbin")).unwrap();
        std::fs::create_dir(root.join("sbin/dir")).unwrap();
        std::os::unix::fs::symlink("/app.wasm", root.join("bin/link")).unwrap();
        assert_eq!(locate(&plan(root, "/app.wasm")), Located::Wasm);
        assert_eq!(locate(&plan(root, "sh")), Located::Other);
        // absolute links resolve inside the rootfs
        assert_eq!(locate(&plan(root, "link")), Located::Wasm);
        // a directory is skipped; nothing else is found
        assert_eq!(locate(&plan(root, "dir")), Located::Missing);
        assert_eq!(locate(&plan(root, "/nope.wasm")), Located::Missing);
        // an unreadable rootfs is the runner's to report
        assert_eq!(
            locate(&plan(&root.join("missing"), "/app.wasm")),
            Located::Wasm
        );
    }
}
