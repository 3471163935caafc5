//! The runner: the process that *is* a Wasm container.
//!
//! The shim starts its own binary in runner mode for every Wasm container
//! (see `server/runner.rs`), so each container is a real Linux process with
//! its own pid, signals, cgroup and namespaces, and a crash of one guest
//! cannot touch the shim or its neighbours.
//!
//! What it does, in order (this function is the whole story):
//! 1. read its [`RunRequest`] from the control socket (fd 3);
//! 2. [`sandbox::before_load`]: `oomScoreAdj`, the namespaces, the mount
//!    namespace set up below the rootfs (or the container's joined);
//! 3. read the entry point as the spec's user and compile it or map it
//!    from the node's module cache, as root ([`engine`]);
//! 4. [`sandbox::after_load`]: `pivot_root`, the read-only and masked
//!    paths, hostname, sysctls, `noNewPrivileges`, rlimits, the user and
//!    its capabilities, the LSM profile;
//! 5. build the guest's WASI context (its preopens opened by the user) and
//!    reply `ready`;
//! 6. on `start`: [`sandbox::before_guest`] (seccomp, last), then run.
//!
//! A pod's sandbox container, run natively ([`RunRequest::pod_sandbox`]),
//! takes steps 2 and 4 only, and then does what pause does: holds the pod's
//! namespaces, reaps the orphans of a shared PID namespace, and exits 0 on
//! SIGTERM or SIGINT.

use std::io::BufReader;

use crate::control::{self, FailureKind, Reply, RunRequest};
use crate::sys::{self, Linux};

pub mod cache;
pub mod engine;
pub mod http;
pub mod namespace;
pub mod sandbox;

/// Why a runner cannot get its workload ready.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error(transparent)]
    Sandbox(#[from] sandbox::SandboxError),
    #[error(transparent)]
    Load(#[from] engine::LoadError),
}

impl RunnerError {
    /// Whose fault it is, for the code containerd sees.
    pub fn kind(&self) -> FailureKind {
        match self {
            RunnerError::Sandbox(e) => e.kind(),
            RunnerError::Load(e) => e.kind(),
        }
    }
}

/// Entry point of runner mode; returns the process exit code.
pub fn main() -> i32 {
    // pid 1 of the container's own PID namespace: signals from the shim
    // must still end it as they end any process
    if std::process::id() == 1 {
        if let Err(e) = sys::sandbox::exit_on_terminating_signals() {
            eprintln!("wasmpod runner: signal handlers: {e}");
            return 2;
        }
    }
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
    let id = req.id.clone();
    let mut spans = crate::spans::Spans::new();
    if req.pod_sandbox {
        return pod_sandbox(&req, spans, reader, writer);
    }
    let prepared = match prepare(&req, &mut spans) {
        Ok(p) => p,
        // the container's stderr is the CRI log: said there as well
        Err(e) => return fail(&id, e, &mut writer),
    };
    let (prepared, info) = prepared;
    let kind = match (info.kind, info.http) {
        (wasmpod_oci::wasm::WasmKind::Module, _) => "module".to_owned(),
        (wasmpod_oci::wasm::WasmKind::Component, None) => "component".to_owned(),
        (wasmpod_oci::wasm::WasmKind::Component, Some(alloc)) => {
            format!("wasi:http component ({alloc} allocator)")
        }
    };
    let ready = Reply::Ready {
        kind,
        entrypoint: info.entrypoint.clone(),
        cache: info.cache_outcome.into(),
        warnings: info.warnings.clone(),
        timings: spans.into_steps(),
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
    // What the sandbox read (the node's mount table, thousands of lines on
    // a busy node) is freed but still held by the allocator: hand it back
    // before the guest runs for the container's life, and before seccomp,
    // which may not allow the calls that takes.
    sys::mem::release_free_heap();
    if let Err(e) = sandbox::before_guest(&Linux, &req.plan) {
        eprintln!("wasmpod: container {id}: {e}");
        return 1;
    }
    prepared.run(&id)
}

/// Says why the runner cannot get ready, on the container's stderr (the CRI
/// log) and to the shim; the runner's exit code.
fn fail(id: &str, e: RunnerError, writer: &mut std::os::unix::net::UnixStream) -> i32 {
    let message = e.to_string();
    eprintln!("wasmpod: container {id}: {message}");
    let failed = Reply::Failed {
        kind: e.kind(),
        message,
    };
    let _ = control::send(writer, &failed);
    1
}

/// A native pod sandbox: its signals, the namespaces and the sandbox of the
/// spec (steps 2 and 4) and seccomp, all before `ready`, so that a failure
/// reaches the shim (containerd gives a sandbox no stdio to say it on); on
/// `start`, pause's wait.
fn pod_sandbox(
    req: &RunRequest,
    mut spans: crate::spans::Spans,
    mut reader: BufReader<std::os::unix::net::UnixStream>,
    mut writer: std::os::unix::net::UnixStream,
) -> i32 {
    let sys = &Linux;
    let plan = &req.plan;
    let set = match sys::sandbox::pod_sandbox_signals() {
        Ok(s) => s,
        Err(e) => {
            let e = sandbox::SandboxError::Signals(e);
            return fail(&req.id, e.into(), &mut writer);
        }
    };
    let made = sandbox::before_load(sys, plan).and_then(|entered| {
        spans.mark("namespaces");
        let guest = sandbox::after_load(sys, plan, entered)?;
        // the node's mount table the sandbox read, back to the kernel
        // (before seccomp, which may not allow it)
        crate::sys::mem::release_free_heap();
        // seccomp last, as for a guest: what follows (the reply, the start
        // line, the wait) is in any profile that lets pause run
        sandbox::before_guest(sys, plan)?;
        Ok(guest)
    });
    let _guest = match made {
        Ok(g) => g,
        Err(e) => return fail(&req.id, e.into(), &mut writer),
    };
    spans.mark("sandbox");
    let ready = Reply::Ready {
        kind: "pod sandbox".into(),
        entrypoint: "(native)".into(),
        cache: "none".into(),
        warnings: vec![],
        timings: spans.into_steps(),
    };
    if control::send(&mut writer, &ready).is_err() {
        return 2;
    }
    let mut line = String::new();
    match std::io::BufRead::read_line(&mut reader, &mut line) {
        Ok(n) if n > 0 && line.trim_end() == control::START => {}
        _ => return 0,
    }
    drop(reader);
    drop(writer);
    match sys::sandbox::pod_sandbox_wait(&set) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("wasmpod: pod sandbox {}: wait: {e}", req.id);
            1
        }
    }
}

/// Steps 2–5: everything that can fail on a bad workload or spec, before
/// `ready`.
fn prepare(
    req: &RunRequest,
    spans: &mut crate::spans::Spans,
) -> Result<(engine::Prepared, engine::LoadInfo), RunnerError> {
    let sys = &Linux;
    let plan = &req.plan;
    let entered = sandbox::before_load(sys, plan)?;
    spans.mark("namespaces");
    let (entrypoint, bytes) = match &req.wasm {
        Some(layer) => engine::read_layer(layer)?,
        None => {
            // inside the root, permissions are the user's, as for an exec
            let root = engine::open_root(entered.load_root(plan))?;
            sandbox::process::as_user(sys, plan, || engine::read_entrypoint(&root, plan))??
        }
    };
    spans.mark("read");
    let loaded = engine::load(plan, req.cache.as_ref(), entrypoint, bytes)?;
    spans.extend_nested("", loaded.info.spans.steps());
    let guest = sandbox::after_load(sys, plan, entered)?;
    spans.mark("sandbox");
    let prepared = loaded.with_guest(plan, guest)?;
    spans.mark("context");
    Ok(prepared)
}
