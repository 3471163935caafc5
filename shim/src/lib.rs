//! `containerd-shim-wasmpod-v1`: a containerd shim v2 that runs WebAssembly
//! containers under wasmtime.
//!
//! containerd starts one shim process per pod (or per container outside
//! Kubernetes) and talks to it over ttrpc ([`server`]). For every Wasm
//! container the shim starts a *runner* ([`runner`]): its own binary in a
//! second mode, one Linux process per container, which loads the Wasm during
//! `Create` and runs it on `Start`. The split keeps containers real processes
//! (pids, signals, cgroups, crash isolation) while the shim stays small.
//!
//! Modules, by the process they run in:
//! - [`actions`]: the one-shot `start`, `delete` and `-info` runs of the binary;
//! - [`server`]: the shim server (task API, containers, events, exits, stdio,
//!   rootfs, cgroups, runtime options, seccomp programs, artifact layers from
//!   containerd);
//! - [`runner`]: the runner process (the container's OCI sandbox, wasmtime
//!   and WASI, HTTP components, the module cache);
//! - [`linux`]: a pod's Linux containers through runc, and their terminals;
//! - shared by both sides: [`control`] (the shim ↔ runner protocol),
//!   [`error`] (the one mapping to ttrpc codes), [`spans`] (timing of `Create`);
//! - [`sys`]: the OS boundary, every raw syscall and `unsafe` block.
#![deny(unsafe_code)]

pub mod actions;
pub mod bundle;
pub mod control;
pub mod error;
pub mod exit;
pub mod linux;
pub mod runner;
pub mod server;
pub mod spans;
pub mod sys;

/// The runtime name containerd knows this shim by.
pub const RUNTIME_ID: &str = "io.containerd.wasmpod.v1";
