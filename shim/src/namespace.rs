//! Putting a runner process into its container's namespaces, before it loads
//! anything: join the ones the spec gives a path for (a pod's network, IPC
//! and UTS namespaces, held by its sandbox), create the others. Runs while
//! the runner is still single-threaded, so every thread wasmtime starts later
//! inherits them.
//!
//! A PID namespace cannot be entered by a running process, only by its
//! children: [`in_pid_namespace`] starts the runner from a thread of
//! the shim that joined the pod's PID namespace for that one fork.

use std::fs::File;
use std::path::{Path, PathBuf};

use nix::sched::{setns, unshare, CloneFlags};
use wasmpod_oci::plan::{NamespaceKind, NamespacePlan};

use crate::sys;

/// Why the runner could not enter a namespace.
#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    /// Opening or joining an existing namespace failed.
    #[error("join {kind:?} namespace {path}: {source}")]
    Join {
        kind: NamespaceKind,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Starting a process inside an existing PID namespace failed (the
    /// namespace's init, the pod's sandbox, may have exited).
    #[error("start a process in PID namespace {path}: {source}")]
    Spawn {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Creating a new namespace failed.
    #[error("create {kind:?} namespace: {source}")]
    Create {
        kind: NamespaceKind,
        #[source]
        source: std::io::Error,
    },
}

fn flag(kind: NamespaceKind) -> CloneFlags {
    match kind {
        NamespaceKind::Network => CloneFlags::CLONE_NEWNET,
        NamespaceKind::Ipc => CloneFlags::CLONE_NEWIPC,
        NamespaceKind::Uts => CloneFlags::CLONE_NEWUTS,
        NamespaceKind::Pid => CloneFlags::CLONE_NEWPID,
    }
}

/// Enters every namespace of the plan, in order.
pub fn enter(namespaces: &[NamespacePlan]) -> Result<(), NamespaceError> {
    for ns in namespaces {
        match &ns.path {
            Some(path) => {
                let join = |source| NamespaceError::Join {
                    kind: ns.kind,
                    path: path.clone(),
                    source,
                };
                let file = File::open(path).map_err(join)?;
                setns(&file, flag(ns.kind)).map_err(|e| join(e.into()))?;
            }
            None => {
                let create = |source| NamespaceError::Create {
                    kind: ns.kind,
                    source,
                };
                unshare(flag(ns.kind)).map_err(|e| create(e.into()))?;
                if ns.kind == NamespaceKind::Network {
                    // As runc does: a new network namespace gets a working
                    // loopback, nothing else.
                    sys::loopback_up().map_err(create)?;
                }
            }
        }
    }
    Ok(())
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
) -> Result<R, NamespaceError> {
    let join = |source| NamespaceError::Join {
        kind: NamespaceKind::Pid,
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(join)?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                setns(&file, CloneFlags::CLONE_NEWPID).map_err(|e| join(e.into()))?;
                Ok(spawn())
            })
            .join()
            .unwrap_or_else(|_| {
                Err(NamespaceError::Spawn {
                    path: path.to_owned(),
                    source: std::io::Error::other("spawning thread panicked"),
                })
            })
    })
}
