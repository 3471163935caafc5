//! Putting a runner process into its container's namespaces, before it loads
//! anything: join the ones the spec gives a path for (a pod's network, IPC
//! and UTS namespaces, held by its sandbox), create the others. Runs while
//! the runner is still single-threaded, so every thread wasmtime starts later
//! inherits them.

use std::fs::File;
use std::path::PathBuf;

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
