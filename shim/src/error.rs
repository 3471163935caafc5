//! The shim's error type and the one place that decides which ttrpc status
//! code containerd sees for each failure.

use std::path::PathBuf;

use containerd_shim::protos::ttrpc::{self, Code};

/// Everything a task request can fail with. Messages name the container and
/// the path or cause, because they travel verbatim to `ctr` and kubelet.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No container (or exec process) with that id in this shim.
    #[error("container {id}: not found")]
    NotFound { id: String },
    /// A container with that id already exists in this shim.
    #[error("container {id}: already exists")]
    AlreadyExists { id: String },
    /// The request is not allowed in the container's current state.
    #[error("container {id}: {what}")]
    FailedPrecondition { id: String, what: String },
    /// The process has already exited (containerd treats this as done for Kill).
    #[error("container {id}: process already finished")]
    ProcessFinished { id: String },
    /// The bundle's `config.json` could not be read or parsed.
    #[error("container {id}: invalid OCI spec {path}: {source}")]
    Spec {
        id: String,
        path: PathBuf,
        #[source]
        source: oci_spec::OciSpecError,
    },
    /// The spec cannot be run as a Wasm container.
    #[error("container {id}: invalid spec: {source}")]
    Plan {
        id: String,
        #[source]
        source: wasmpod_oci::plan::PlanError,
    },
    /// The request itself is malformed or asks for something unsupported.
    #[error("container {id}: {what}")]
    InvalidArgument { id: String, what: String },
    /// Mounting or unmounting the root filesystem failed.
    #[error("container {id}: rootfs {path}: {message}")]
    Rootfs {
        id: String,
        path: PathBuf,
        message: String,
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
    #[error("container {id}: terminal: {what}")]
    Console { id: String, what: String },
    /// Starting or talking to the runner process failed.
    #[error("container {id}: runner process: {what}: {source}")]
    Runner {
        id: String,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The runner refused the workload (bad Wasm, missing entry point, ...).
    /// The message comes from the runner and already names the cause.
    #[error("container {id}: {message}")]
    Workload { id: String, message: String },
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
    #[error("container {id}: cgroup {path}: {what}")]
    Cgroup {
        id: String,
        path: String,
        what: String,
    },
    /// A runc invocation for a pod's Linux container failed.
    #[error("container {id}: runc {op}: {message}")]
    Runc {
        id: String,
        op: &'static str,
        message: String,
    },
    /// The container's image is a Wasm artifact the shim cannot run: no
    /// layer to choose, an ambiguous choice, or content that does not match.
    #[error("container {id}: image {image}: {reason}")]
    Artifact {
        id: String,
        image: String,
        reason: String,
    },
    /// Talking to containerd (for a Wasm artifact's layers) failed.
    #[error("container {id}: containerd: {what}: {message}")]
    Containerd {
        id: String,
        what: String,
        message: String,
    },
    /// A request this shim does not implement for Wasm containers.
    #[error("{0} is not supported by the wasmpod shim")]
    Unsupported(&'static str),
}

impl Error {
    /// The ttrpc status code for this error.
    pub fn code(&self) -> Code {
        match self {
            Error::NotFound { .. } | Error::ProcessFinished { .. } => Code::NOT_FOUND,
            Error::AlreadyExists { .. } => Code::ALREADY_EXISTS,
            Error::FailedPrecondition { .. } => Code::FAILED_PRECONDITION,
            Error::Spec { .. }
            | Error::Plan { .. }
            | Error::InvalidArgument { .. }
            | Error::Workload { .. }
            | Error::Artifact { .. } => Code::INVALID_ARGUMENT,
            Error::Containerd { .. } => Code::UNAVAILABLE,
            Error::Unsupported(_) => Code::UNIMPLEMENTED,
            Error::Rootfs { .. }
            | Error::Stdio { .. }
            | Error::Runner { .. }
            | Error::Signal { .. }
            | Error::Cgroup { .. }
            | Error::Runc { .. }
            | Error::Console { .. } => Code::INTERNAL,
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

    #[test]
    fn codes_table() {
        let id = || "c1".to_owned();
        let io = || std::io::Error::other("x");
        let table: Vec<(Error, Code)> = vec![
            (Error::NotFound { id: id() }, Code::NOT_FOUND),
            (Error::ProcessFinished { id: id() }, Code::NOT_FOUND),
            (Error::AlreadyExists { id: id() }, Code::ALREADY_EXISTS),
            (
                Error::FailedPrecondition {
                    id: id(),
                    what: "x".into(),
                },
                Code::FAILED_PRECONDITION,
            ),
            (
                Error::Plan {
                    id: id(),
                    source: wasmpod_oci::plan::PlanError::NoArgs,
                },
                Code::INVALID_ARGUMENT,
            ),
            (
                Error::Workload {
                    id: id(),
                    message: "bad".into(),
                },
                Code::INVALID_ARGUMENT,
            ),
            (
                Error::InvalidArgument {
                    id: id(),
                    what: "x".into(),
                },
                Code::INVALID_ARGUMENT,
            ),
            (Error::Unsupported("Checkpoint"), Code::UNIMPLEMENTED),
            (
                Error::Runner {
                    id: id(),
                    what: "spawn",
                    source: io(),
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
        ];
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
