//! The shim's error type and the one place that decides which ttrpc status
//! code containerd sees for each failure.
//!
//! Every variant names the container (or `container/exec`) and keeps its
//! cause as a typed `#[source]`; the messages travel verbatim to `ctr` and
//! kubelet. The rule for codes: what the request or the workload got wrong
//! is `INVALID_ARGUMENT`, what the container's state forbids is
//! `FAILED_PRECONDITION`, containerd being unreachable is `UNAVAILABLE`, and
//! every failure of the node itself (mounts, cgroups, processes, runc) is
//! `INTERNAL`.

use std::path::PathBuf;

use containerd_shim::protos::ttrpc::{self, Code};

use crate::control::FailureKind;
use crate::linux::console::ConsoleError;
use crate::linux::runc::RuncError;
use crate::server::cgroup::CgroupError;
use crate::server::content::{ArtifactError, ContainerdError};
use crate::server::rootfs::RootfsError;
use crate::server::NamespaceFileError;

/// Everything a task request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No container (or exec process) with that id in this shim.
    #[error("container {id}: not found")]
    NotFound { id: String },
    /// A container with that id already exists in this shim.
    #[error("container {id}: already exists")]
    AlreadyExists { id: String },
    /// The request is not allowed in the container's current state.
    #[error("container {id}: {state}")]
    State { id: String, state: StateError },
    /// The process has already exited (containerd treats this as done for Kill).
    #[error("container {id}: process already finished")]
    ProcessFinished { id: String },
    /// The bundle's `config.json` could not be read or parsed; `field`
    /// names where a value the spec refuses is, when that can be told.
    #[error("container {id}: invalid OCI spec {path}: {}", field.as_deref().map_or_else(|| source.to_string(), |f| format!("{f} ({source})")))]
    Spec {
        id: String,
        path: PathBuf,
        field: Option<String>,
        #[source]
        source: oci_spec::OciSpecError,
    },
    /// `linux.seccomp` cannot be compiled into a filter.
    #[error("container {id}: {source}")]
    Seccomp {
        id: String,
        #[source]
        source: crate::server::seccomp::SeccompError,
    },
    /// The spec cannot be run as a Wasm container.
    #[error("container {id}: invalid spec: {source}")]
    Plan {
        id: String,
        #[source]
        source: wasmpod_oci::plan::PlanError,
    },
    /// The request itself is malformed or asks for something unsupported.
    #[error("container {id}: {source}")]
    Request {
        id: String,
        #[source]
        source: RequestError,
    },
    /// Mounting or unmounting the root filesystem failed.
    #[error("container {id}: rootfs {path}: {source}")]
    Rootfs {
        id: String,
        path: PathBuf,
        #[source]
        source: RootfsError,
    },
    /// Opening one of the stdio FIFOs containerd handed over failed.
    #[error("container {id}: stdio {path}: {source}")]
    Stdio {
        id: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A terminal (`tty`) of a Linux container or exec failed.
    #[error("container {id}: terminal: {source}")]
    Console {
        id: String,
        #[source]
        source: ConsoleError,
    },
    /// Starting or talking to the runner process failed.
    #[error("container {id}: runner process: {what}: {source}")]
    Runner {
        id: String,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The runner could not prepare the workload; `kind` says whose fault
    /// (a bad workload or spec, or the node) and the message, from the
    /// runner, names the cause.
    #[error("container {id}: {message}")]
    Workload {
        id: String,
        kind: FailureKind,
        message: String,
    },
    /// Opening the namespaces an exec'd process joins, or entering the pod's
    /// PID namespace to start a runner, failed.
    #[error("container {id}: {source}")]
    Namespace {
        id: String,
        #[source]
        source: NamespaceFileError,
    },
    /// Sending a signal failed.
    #[error("container {id}: signal {signal} to pid {pid}: {source}")]
    Signal {
        id: String,
        pid: i32,
        signal: u32,
        #[source]
        source: nix::Error,
    },
    /// Creating, joining, reading or removing the container's cgroup failed.
    #[error("container {id}: cgroup {path}: {source}")]
    Cgroup {
        id: String,
        path: String,
        #[source]
        source: CgroupError,
    },
    /// A runc invocation for a pod's Linux container failed.
    #[error("container {id}: runc {op}: {source}")]
    Runc {
        id: String,
        op: &'static str,
        #[source]
        source: RuncError,
    },
    /// The container's image is a Wasm artifact the shim cannot run: no
    /// layer to choose, an ambiguous choice, or content that does not match.
    #[error("container {id}: image {image}: {source}")]
    Artifact {
        id: String,
        image: String,
        #[source]
        source: ArtifactError,
    },
    /// Talking to containerd (for a Wasm artifact's layers) failed.
    #[error("container {id}: containerd: {what}: {source}")]
    Containerd {
        id: String,
        what: String,
        #[source]
        source: ContainerdError,
    },
    /// Work handed to a blocking thread did not finish (it panicked, or the
    /// runtime is shutting down).
    #[error("container {id}: {what}: {source}")]
    Blocking {
        id: String,
        what: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
    /// A request this shim does not implement for Wasm containers.
    #[error("{0} is not supported by the wasmpod shim")]
    Unsupported(&'static str),
}

/// What the container's (or exec process's) state does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("already started")]
    AlreadyStarted,
    #[error("cannot start: process has exited")]
    Exited,
    #[error("cannot start: runner is gone")]
    RunnerGone,
    #[error("cannot delete a running task: kill it first")]
    Running,
    #[error("runner did not exit after SIGKILL")]
    StillRunning,
    #[error("cannot exec: the container is not running")]
    ExecNotRunning,
    #[error("cannot start exec: the container is not running")]
    ExecStartNotRunning,
    #[error("cannot start exec: the container's process has exited")]
    ExecInitGone,
    #[error("exec process already started")]
    ExecStarted,
    #[error("cannot delete a running exec process: kill it first")]
    ExecRunning,
    #[error("cannot update the resources of an exited task")]
    UpdateExited,
    #[error("no cgroup: the spec names no linux.cgroupsPath")]
    NoCgroup,
}

/// What is wrong with the request itself.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("invalid exec id")]
    ExecId,
    #[error("a terminal was requested, but a Wasm container has no terminal (run without -t / tty: false)")]
    Terminal,
    #[error("exec with a terminal into a Wasm container: a Wasm program has no terminal (run without -t / tty)")]
    ExecTerminal,
    #[error("exec process spec: {0}")]
    ExecSpec(#[source] serde_json::Error),
    #[error("invalid signal {0}")]
    Signal(u32),
    #[error("Update without resources")]
    NoResources,
    #[error("resources ({type_url}) are not OCI LinuxResources JSON: {source}")]
    Resources {
        type_url: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("runtime options: {0}")]
    Options(#[source] crate::server::options::OptionsError),
    #[error("the pod's user namespace needs idmapped mounts, which this node's runc cannot make ({why}); a user-namespaced pod's Linux containers need runc 1.2 or later (its Wasm containers do not)")]
    RuncWithoutIdmap { why: String },
    #[error("pod annotation wasmpod.io/pod-sandbox: {0:?}; expected native (the default) or runc")]
    PodSandboxMode(String),
}

impl Error {
    /// The ttrpc status code for this error.
    pub fn code(&self) -> Code {
        match self {
            Error::NotFound { .. } | Error::ProcessFinished { .. } => Code::NOT_FOUND,
            Error::AlreadyExists { .. } => Code::ALREADY_EXISTS,
            Error::State { .. } => Code::FAILED_PRECONDITION,
            Error::Spec { .. }
            | Error::Seccomp { .. }
            | Error::Plan { .. }
            | Error::Request { .. }
            | Error::Artifact { .. } => Code::INVALID_ARGUMENT,
            Error::Workload { kind, .. } => match kind {
                FailureKind::Workload | FailureKind::Spec => Code::INVALID_ARGUMENT,
                FailureKind::Node => Code::INTERNAL,
            },
            Error::Containerd { .. } => Code::UNAVAILABLE,
            Error::Unsupported(_) => Code::UNIMPLEMENTED,
            Error::Rootfs { .. }
            | Error::Stdio { .. }
            | Error::Console { .. }
            | Error::Runner { .. }
            | Error::Namespace { .. }
            | Error::Signal { .. }
            | Error::Cgroup { .. }
            | Error::Runc { .. }
            | Error::Blocking { .. } => Code::INTERNAL,
        }
    }

    /// A state error of container (or `container/exec`) `id`.
    pub fn state(id: impl Into<String>, state: StateError) -> Error {
        Error::State {
            id: id.into(),
            state,
        }
    }

    /// A malformed request for `id`.
    pub fn request(id: impl Into<String>, source: RequestError) -> Error {
        Error::Request {
            id: id.into(),
            source,
        }
    }
}

impl From<Error> for ttrpc::Error {
    fn from(e: Error) -> Self {
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), e.to_string()))
    }
}

/// Result of the shim's own operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    /// One of every variant (and of every kind of runner failure), with the
    /// code containerd must see for it.
    fn table() -> Vec<(Error, Code)> {
        let id = || "c1".to_owned();
        let io = || std::io::Error::other("x");
        let json = || serde_json::from_str::<u8>("x").unwrap_err();
        let spec_err = oci_spec::runtime::Spec::load("/nonexistent/config.json").unwrap_err();
        let join = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(async {
                tokio::task::spawn(async { panic!("boom") })
                    .await
                    .unwrap_err()
            });
        vec![
            (Error::NotFound { id: id() }, Code::NOT_FOUND),
            (Error::ProcessFinished { id: id() }, Code::NOT_FOUND),
            (Error::AlreadyExists { id: id() }, Code::ALREADY_EXISTS),
            (
                Error::state(id(), StateError::Running),
                Code::FAILED_PRECONDITION,
            ),
            (
                Error::Spec {
                    id: id(),
                    path: "/b/config.json".into(),
                    field: None,
                    source: spec_err,
                },
                Code::INVALID_ARGUMENT,
            ),
            (
                Error::Seccomp {
                    id: id(),
                    source: crate::server::seccomp::SeccompError::Notify,
                },
                Code::INVALID_ARGUMENT,
            ),
            (
                Error::request(
                    id(),
                    RequestError::Options(crate::server::options::OptionsError::SystemdCgroup {
                        what: "ConfigBody".into(),
                    }),
                ),
                Code::INVALID_ARGUMENT,
            ),
            (
                Error::Plan {
                    id: id(),
                    source: wasmpod_oci::plan::PlanError::NoArgs,
                },
                Code::INVALID_ARGUMENT,
            ),
            (
                Error::request(id(), RequestError::ExecSpec(json())),
                Code::INVALID_ARGUMENT,
            ),
            (
                Error::Rootfs {
                    id: id(),
                    path: "/b/rootfs".into(),
                    source: RootfsError::CreateMountPoint(io()),
                },
                Code::INTERNAL,
            ),
            (
                Error::Stdio {
                    id: id(),
                    path: "/f".into(),
                    source: io(),
                },
                Code::INTERNAL,
            ),
            (
                Error::Console {
                    id: id(),
                    source: ConsoleError::Socket(io()),
                },
                Code::INTERNAL,
            ),
            (
                Error::Runner {
                    id: id(),
                    what: "spawn",
                    source: io(),
                },
                Code::INTERNAL,
            ),
            (
                Error::Workload {
                    id: id(),
                    kind: FailureKind::Workload,
                    message: "bad".into(),
                },
                Code::INVALID_ARGUMENT,
            ),
            (
                Error::Workload {
                    id: id(),
                    kind: FailureKind::Spec,
                    message: "bad".into(),
                },
                Code::INVALID_ARGUMENT,
            ),
            (
                Error::Workload {
                    id: id(),
                    kind: FailureKind::Node,
                    message: "join".into(),
                },
                Code::INTERNAL,
            ),
            (
                Error::Namespace {
                    id: id(),
                    source: NamespaceFileError {
                        path: "/proc/1/ns/net".into(),
                        source: io(),
                    },
                },
                Code::INTERNAL,
            ),
            (
                Error::Signal {
                    id: id(),
                    pid: 1,
                    signal: 9,
                    source: nix::Error::EPERM,
                },
                Code::INTERNAL,
            ),
            (
                Error::Cgroup {
                    id: id(),
                    path: "/c1".into(),
                    source: CgroupError::Missing,
                },
                Code::INTERNAL,
            ),
            (
                Error::Runc {
                    id: id(),
                    op: "create",
                    source: RuncError::Failed {
                        code: 1,
                        message: "x".into(),
                    },
                },
                Code::INTERNAL,
            ),
            (
                Error::Artifact {
                    id: id(),
                    image: "i".into(),
                    source: ArtifactError::NoTarget,
                },
                Code::INVALID_ARGUMENT,
            ),
            (
                Error::Containerd {
                    id: id(),
                    what: "connect".into(),
                    source: ContainerdError::TimedOut,
                },
                Code::UNAVAILABLE,
            ),
            (
                Error::Blocking {
                    id: id(),
                    what: "stats",
                    source: join,
                },
                Code::INTERNAL,
            ),
            (Error::Unsupported("Checkpoint"), Code::UNIMPLEMENTED),
        ]
    }

    #[test]
    fn every_variant_has_its_code_and_names_the_container() {
        let table = table();
        // every variant is in the table: `index` fails to compile when a
        // variant is added, and the count below fails until it has a row
        let index = |e: &Error| match e {
            Error::NotFound { .. } => 0,
            Error::AlreadyExists { .. } => 1,
            Error::State { .. } => 2,
            Error::ProcessFinished { .. } => 3,
            Error::Spec { .. } => 4,
            Error::Plan { .. } => 5,
            Error::Request { .. } => 6,
            Error::Rootfs { .. } => 7,
            Error::Stdio { .. } => 8,
            Error::Console { .. } => 9,
            Error::Runner { .. } => 10,
            Error::Workload { .. } => 11,
            Error::Namespace { .. } => 12,
            Error::Signal { .. } => 13,
            Error::Cgroup { .. } => 14,
            Error::Runc { .. } => 15,
            Error::Artifact { .. } => 16,
            Error::Containerd { .. } => 17,
            Error::Blocking { .. } => 18,
            Error::Unsupported(_) => 19,
            Error::Seccomp { .. } => 20,
        };
        let seen: std::collections::BTreeSet<_> = table.iter().map(|(e, _)| index(e)).collect();
        assert_eq!(seen.len(), 21, "a variant has no row: {seen:?}");
        for (err, code) in table {
            let msg = err.to_string();
            assert!(msg.contains("c1") || msg.contains("Checkpoint"), "{msg}");
            match ttrpc::Error::from(err) {
                ttrpc::Error::RpcStatus(s) => {
                    assert_eq!(s.code(), code, "{msg}");
                    assert_eq!(s.message(), msg);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}
