//! Putting a runner process into its container's namespaces, before it loads
//! anything: join the ones the spec gives a path for (a pod's network, IPC
//! and UTS namespaces, held by its sandbox), create the others. Runs while
//! the runner is still single-threaded, so every thread wasmtime starts later
//! inherits them.
//!
//! A PID namespace cannot be entered by a running process, only by its
//! children: the shim starts the runner inside one
//! (`crate::server::namespaces`).

use std::fs::File;
use std::os::fd::AsFd;
use std::path::PathBuf;

use nix::sched::CloneFlags;
use wasmpod_oci::plan::{NamespaceKind, NamespacePlan};

use crate::sys::Sys;

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

/// The `clone(2)` flag of a namespace kind.
pub fn flag(kind: NamespaceKind) -> CloneFlags {
    match kind {
        NamespaceKind::Network => CloneFlags::CLONE_NEWNET,
        NamespaceKind::Ipc => CloneFlags::CLONE_NEWIPC,
        NamespaceKind::Uts => CloneFlags::CLONE_NEWUTS,
        NamespaceKind::Pid => CloneFlags::CLONE_NEWPID,
        NamespaceKind::Mount => CloneFlags::CLONE_NEWNS,
    }
}

/// Enters every namespace of the plan, in order.
pub fn enter(sys: &dyn Sys, namespaces: &[NamespacePlan]) -> Result<(), NamespaceError> {
    for ns in namespaces {
        match &ns.path {
            Some(path) => {
                let join = |source| NamespaceError::Join {
                    kind: ns.kind,
                    path: path.clone(),
                    source,
                };
                let file = File::open(path).map_err(join)?;
                sys.setns(file.as_fd(), flag(ns.kind)).map_err(join)?;
            }
            None => {
                let create = |source| NamespaceError::Create {
                    kind: ns.kind,
                    source,
                };
                sys.unshare(flag(ns.kind)).map_err(create)?;
                if ns.kind == NamespaceKind::Network {
                    // As runc does: a new network namespace gets a working
                    // loopback, nothing else.
                    sys.loopback_up().map_err(create)?;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::recording::{Call, Recording};

    fn ns(kind: NamespaceKind, path: Option<&std::path::Path>) -> NamespacePlan {
        NamespacePlan {
            kind,
            path: path.map(|p| p.to_owned()),
        }
    }

    #[test]
    fn joins_by_path_creates_the_rest_and_brings_up_a_new_loopback() {
        let dir = tempfile::tempdir().unwrap();
        let net = dir.path().join("net");
        std::fs::write(&net, b"").unwrap();
        let sys = Recording::default();
        let plan = [
            ns(NamespaceKind::Network, Some(&net)),
            ns(NamespaceKind::Ipc, None),
            ns(NamespaceKind::Uts, None),
        ];
        enter(&sys, &plan).unwrap();
        assert_eq!(
            sys.calls(),
            [
                Call::Setns(CloneFlags::CLONE_NEWNET, net.clone()),
                Call::Unshare(CloneFlags::CLONE_NEWIPC),
                Call::Unshare(CloneFlags::CLONE_NEWUTS),
            ]
        );
        // a new network namespace: loopback up right after it
        let sys = Recording::default();
        enter(&sys, &[ns(NamespaceKind::Network, None)]).unwrap();
        assert_eq!(
            sys.calls(),
            [Call::Unshare(CloneFlags::CLONE_NEWNET), Call::LoopbackUp]
        );
    }

    #[test]
    fn failures_name_the_namespace_and_stop_there() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("gone");
        let sys = Recording::default();
        let err = enter(&sys, &[ns(NamespaceKind::Network, Some(&missing))]).unwrap_err();
        assert!(
            err.to_string().contains("Network") && err.to_string().contains("gone"),
            "{err}"
        );
        assert!(sys.calls().is_empty());

        let sys = Recording::default();
        sys.fail(|c| matches!(c, Call::Unshare(_)), nix::errno::Errno::EPERM);
        let plan = [ns(NamespaceKind::Ipc, None), ns(NamespaceKind::Uts, None)];
        let err = enter(&sys, &plan).unwrap_err();
        assert!(
            matches!(
                err,
                NamespaceError::Create {
                    kind: NamespaceKind::Ipc,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(sys.calls(), [Call::Unshare(CloneFlags::CLONE_NEWIPC)]);
    }
}
