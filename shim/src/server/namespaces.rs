//! The namespaces the shim itself puts a runner into: a PID namespace
//! (which a running process cannot enter, so the runner is started inside
//! it): the pod's shared one, or a new one whose pid 1 the runner is; and,
//! for an exec'd Wasm process, the namespaces of the container's runner,
//! opened here and joined by the new runner.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use nix::sched::{setns, CloneFlags};
use wasmpod_oci::plan::{NamespaceKind, RunPlan};

/// A namespace file that could not be opened or joined.
#[derive(Debug, thiserror::Error)]
#[error("namespace {path}: {source}")]
pub struct NamespaceFileError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// Runs `spawn` (which starts a process) on a thread that has joined the
/// PID namespace at `path` (a pod's shared one, held by its sandbox), so the
/// process it starts is a member.
///
/// `setns(CLONE_NEWPID)` changes only where the calling thread's *children*
/// go, so it is done on a short-lived thread of its own, which starts the
/// runner and ends: no other thread of the shim, and no later fork (runc's,
/// for instance), is affected. The child is still the shim's child, so the
/// shim reaps it, and its pid is the one seen from the shim's namespace.
pub fn in_pid_namespace<R: Send>(
    path: &Path,
    spawn: impl FnOnce() -> R + Send,
) -> Result<R, NamespaceFileError> {
    let err = |source| NamespaceFileError {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(err)?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                setns(&file, CloneFlags::CLONE_NEWPID).map_err(|e| err(e.into()))?;
                Ok(spawn())
            })
            .join()
            .unwrap_or_else(|_| Err(err(std::io::Error::other("spawning thread panicked"))))
    })
}

/// Runs `spawn` on a thread that has unshared a new PID namespace, so the
/// process it starts is pid 1 of a namespace of its own (the spec's `pid`
/// namespace without a path), as runc starts a container's init. As with
/// [`in_pid_namespace`], no other thread of the shim is affected.
pub fn in_new_pid_namespace<R: Send>(
    spawn: impl FnOnce() -> R + Send,
) -> Result<R, NamespaceFileError> {
    let err = |source| NamespaceFileError {
        path: "(a new PID namespace)".into(),
        source,
    };
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                nix::sched::unshare(CloneFlags::CLONE_NEWPID).map_err(|e| err(e.into()))?;
                Ok(spawn())
            })
            .join()
            .unwrap_or_else(|_| Err(err(std::io::Error::other("spawning thread panicked"))))
    })
}

/// Points `plan`'s namespaces at those of the running process `pid` (the
/// container's runner), opened now: the returned files must stay open until
/// the new runner has joined them, through this process's `/proc/PID/fd`
/// paths. The caller checks after this that `pid` still is the runner, so a
/// reused pid cannot put an exec'd process in another process's namespaces.
pub fn share_with(pid: i32, plan: &mut RunPlan) -> Result<Vec<File>, NamespaceFileError> {
    let kinds = plan
        .namespaces
        .iter()
        .map(|ns| ns.kind)
        // the runner's own PID namespace, or the pod's it joined
        .chain(
            (plan.pid_namespace.is_some() || plan.new_pid_namespace).then_some(NamespaceKind::Pid),
        )
        .chain(plan.mount_namespace.as_ref().map(|_| NamespaceKind::Mount))
        .collect::<Vec<_>>();
    let mut held = Vec::with_capacity(kinds.len());
    for kind in kinds {
        let name = match kind {
            NamespaceKind::Network => "net",
            NamespaceKind::Ipc => "ipc",
            NamespaceKind::Uts => "uts",
            NamespaceKind::Pid => "pid",
            NamespaceKind::Mount => "mnt",
        };
        let path = PathBuf::from(format!("/proc/{pid}/ns/{name}"));
        let file = File::open(&path).map_err(|source| NamespaceFileError { path, source })?;
        let fd_path: PathBuf =
            format!("/proc/{}/fd/{}", std::process::id(), file.as_raw_fd()).into();
        if kind == NamespaceKind::Pid {
            plan.pid_namespace = Some(fd_path);
            plan.new_pid_namespace = false;
        } else if kind == NamespaceKind::Mount {
            plan.mount_namespace = Some(wasmpod_oci::plan::NamespacePlan {
                kind,
                path: Some(fd_path),
            });
        } else if let Some(ns) = plan.namespaces.iter_mut().find(|ns| ns.kind == kind) {
            ns.path = Some(fd_path);
        }
        held.push(file);
    }
    // the user namespace the runner entered last (the pod's, or its own)
    if let Some(userns) = plan.user_namespace.as_mut() {
        let path = PathBuf::from(format!("/proc/{pid}/ns/user"));
        let file = File::open(&path).map_err(|source| NamespaceFileError { path, source })?;
        userns.path = Some(format!("/proc/{}/fd/{}", std::process::id(), file.as_raw_fd()).into());
        held.push(file);
    }
    Ok(held)
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmpod_oci::plan::NamespacePlan;

    #[test]
    fn an_exec_shares_the_runners_namespaces_through_open_files() {
        // this process stands in for the container's runner
        let me = i32::try_from(std::process::id()).unwrap();
        let mut plan: RunPlan = serde_json::from_value(serde_json::json!({
            "args": ["/a.wasm"], "env": [], "cwd": "/",
            "root": {"path": "/r", "readonly": false}, "binds": [],
            "cgroup": null, "memory_limit": null, "terminal": false,
            "namespaces": [{"kind": "network", "path": null}, {"kind": "uts", "path": "/old"}],
            "pid_namespace": "/proc/1/ns/pid"
        }))
        .unwrap();
        let held = share_with(me, &mut plan).unwrap();
        assert_eq!(held.len(), 3);
        let mine = |name: &str| std::fs::read_link(format!("/proc/self/ns/{name}")).unwrap();
        for NamespacePlan { kind, path } in &plan.namespaces {
            let path = path.as_ref().unwrap();
            assert!(path.starts_with(format!("/proc/{me}/fd/")), "{path:?}");
            let name = if *kind == NamespaceKind::Network {
                "net"
            } else {
                "uts"
            };
            assert_eq!(std::fs::read_link(path).unwrap(), mine(name));
        }
        let pid = plan.pid_namespace.as_ref().unwrap();
        assert_eq!(std::fs::read_link(pid).unwrap(), mine("pid"));
        drop(held);
        // a process that is gone: the error names the file
        let err = share_with(i32::MAX, &mut plan).unwrap_err();
        assert!(
            err.to_string().contains(&format!("/proc/{}/ns/", i32::MAX)),
            "{err}"
        );
    }
}
