//! The runner: the process that *is* a Wasm container.
//!
//! The shim starts its own binary in runner mode for every Wasm container
//! (see `process`), so each container is a real Linux process with its own
//! pid, signals and (later) cgroup, and a crash of one guest cannot touch the
//! shim or its neighbours. The runner is single-threaded until the guest
//! starts, which is what a later fork-based zygote needs too.

use std::io::BufReader;

use crate::control::{self, FailureKind, Reply, RunRequest};
use crate::sys;

pub mod cache;
pub mod engine;
pub mod http;
pub mod namespace;

/// Why a runner cannot get its workload ready.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error(transparent)]
    Namespace(namespace::NamespaceError),
    #[error(transparent)]
    Load(engine::LoadError),
}

impl RunnerError {
    /// Whose fault it is, for the code containerd sees.
    pub fn kind(&self) -> FailureKind {
        match self {
            RunnerError::Namespace(_) => FailureKind::Node,
            RunnerError::Load(e) => e.kind(),
        }
    }
}

/// Entry point of runner mode; returns the process exit code.
pub fn main() -> i32 {
    let control = match sys::spawn::take_control_socket() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("wasmpod runner: {e}");
            return 2;
        }
    };
    let mut reader = match control.try_clone() {
        Ok(s) => BufReader::new(s),
        Err(e) => {
            eprintln!("wasmpod runner: control socket: {e}");
            return 2;
        }
    };
    let mut writer = control;
    let req: RunRequest = match control::recv(&mut reader) {
        Ok(Some(r)) => r,
        Ok(None) => return 2,
        Err(e) => {
            eprintln!("wasmpod runner: bad request: {e}");
            return 2;
        }
    };
    let id = req.id;
    let mut spans = crate::spans::Spans::new();
    let prepared = namespace::enter(&sys::Linux, &req.plan.namespaces)
        .map_err(RunnerError::Namespace)
        .and_then(|()| {
            spans.mark("namespaces");
            engine::prepare(&req.plan, req.cache.as_ref(), req.wasm.as_ref())
                .map_err(RunnerError::Load)
        });
    let prepared = match prepared {
        Ok(p) => p,
        Err(e) => {
            let message = e.to_string();
            // The container's stderr is the CRI log: say it there as well.
            eprintln!("wasmpod: container {id}: {message}");
            let failed = Reply::Failed {
                kind: e.kind(),
                message,
            };
            let _ = control::send(&mut writer, &failed);
            return 1;
        }
    };
    let kind = match (prepared.kind, prepared.http) {
        (wasmpod_oci::wasm::WasmKind::Module, _) => "module".to_owned(),
        (wasmpod_oci::wasm::WasmKind::Component, None) => "component".to_owned(),
        (wasmpod_oci::wasm::WasmKind::Component, Some(alloc)) => {
            format!("wasi:http component ({alloc} allocator)")
        }
    };
    let ready = Reply::Ready {
        kind,
        entrypoint: prepared.entrypoint.clone(),
        cache: prepared.cache_outcome.into(),
        warnings: prepared.warnings.clone(),
        timings: {
            spans.extend("", prepared.spans.steps());
            spans.into_steps()
        },
    };
    if control::send(&mut writer, &ready).is_err() {
        return 2;
    }
    let mut line = String::new();
    match std::io::BufRead::read_line(&mut reader, &mut line) {
        Ok(n) if n > 0 && line.trim_end() == control::START => {}
        // The shim went away, or the task was deleted before it started.
        _ => return 0,
    }
    drop(reader);
    drop(writer);
    prepared.run(&id)
}
