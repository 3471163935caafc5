//! `containerd-shim-wasmpod-v1`: a containerd shim v2 that runs WebAssembly
//! containers under wasmtime.
//!
//! containerd starts one shim process per pod (or per container outside
//! Kubernetes) and talks to it over ttrpc ([`service`]). For every Wasm
//! container the shim starts a *runner* ([`runner`]): its own binary in a
//! second mode, one Linux process per container, which loads the Wasm during
//! `Create` and runs it on `Start`. The split keeps containers real processes
//! (pids, signals, cgroups, crash isolation) while the shim stays small.
//!
//! Modules: [`service`] (task API and container state), [`process`] (runner
//! lifecycle and exit routing), [`control`] (the shim ↔ runner protocol),
//! [`runc`] (a pod's Linux containers), [`console`] (their terminals),
//! [`engine`] (wasmtime and WASI), [`stdio`] (containerd's FIFOs), [`rootfs`]
//! (mounting the container filesystem), [`spans`] (timing of `Create`),
//! [`sys`] (every raw syscall), and
//! [`error`] (the one mapping to ttrpc codes).
#![deny(unsafe_code)]

pub mod actions;
pub mod cache;
pub mod cgroup;
pub mod console;
pub mod content;
pub mod control;
pub mod engine;
pub mod error;
pub mod http;
pub mod namespace;
pub mod process;
pub mod rootfs;
pub mod runc;
pub mod runner;
pub mod serve;
pub mod service;
pub mod spans;
pub mod stdio;
pub mod sys;

/// The runtime name containerd knows this shim by.
pub const RUNTIME_ID: &str = "io.containerd.wasmpod.v1";

/// Whether `pid` is a live runner process for container `id` (checked before
/// signalling a pid read from disk, which may have been reused).
pub fn is_runner(pid: i32, id: &str) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let mut args = cmdline.split(|b| *b == 0);
    let _exe = args.next();
    args.next() == Some(runner::RUNNER_ARG.as_bytes()) && args.next() == Some(id.as_bytes())
}
