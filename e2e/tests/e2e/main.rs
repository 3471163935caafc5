//! wasmpod end-to-end tests: one binary, one private containerd per test.
//! Run with `make e2e` (root; builds the shim and the guest programs first).

mod artifacts;
mod cache;
mod cgroups;
mod common;
mod cri;
mod exec;
mod faults;
mod harness;
mod http;
mod installer;
mod network;
mod pod_sandbox;
mod pods;
mod sandbox;
mod security_context;
mod shim;
mod task_api;
mod userns;
