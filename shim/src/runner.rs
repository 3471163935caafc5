//! The runner: the process that *is* a Wasm container.
//!
//! The shim starts its own binary in runner mode for every Wasm container
//! (see `process`), so each container is a real Linux process with its own
//! pid, signals and (later) cgroup, and a crash of one guest cannot touch the
//! shim or its neighbours. The runner is single-threaded until the guest
//! starts, which is what a later fork-based zygote needs too.

use std::io::BufReader;

use crate::control::{self, Reply, RunRequest};
use crate::{engine, namespace, sys};

/// First argument that selects runner mode in `main`.
pub const RUNNER_ARG: &str = "__wasmpod_runner";

/// Entry point of runner mode; returns the process exit code.
pub fn main() -> i32 {
    let control = match sys::take_control_socket() {
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
    let prepared = namespace::enter(&req.plan.namespaces)
        .map_err(|e| e.to_string())
        .and_then(|()| {
            spans.mark("namespaces");
            engine::prepare(&req.plan, req.cache.as_ref(), req.wasm.as_ref())
                .map_err(|e| e.to_string())
        });
    let prepared = match prepared {
        Ok(p) => p,
        Err(message) => {
            // The container's stderr is the CRI log: say it there as well.
            eprintln!("wasmpod: container {id}: {message}");
            let _ = control::send(&mut writer, &Reply::Failed { message });
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
