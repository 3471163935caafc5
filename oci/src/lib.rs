//! `wasmpod-oci`: everything wasmpod knows about OCI formats, kept free of
//! syscalls so it can be unit-tested and fuzzed without root.
//!
//! - [`plan`] turns an OCI runtime spec (the bundle's `config.json` that
//!   containerd hands the shim) into a [`plan::RunPlan`]: what the Wasm guest
//!   may see (args, env, cwd, root and bind mounts) and how to find its entry
//!   point. The shim executes plans; it never reads the spec itself.
//! - [`layout`] writes OCI image layouts (classic images with the `.wasm` in a
//!   tar layer), reproducibly, for `ctr images import` and registries, and
//!   reads them back.
//! - [`artifact`] builds Wasm OCI artifacts (raw `.wasm` layers), recognises
//!   them and chooses the layer a container runs.
//!
//! The crate forbids unsafe code: it parses untrusted input (specs, manifests)
//! and must stay safe to fuzz.
#![forbid(unsafe_code)]

pub mod artifact;
pub mod cgroup;
pub mod layout;
pub mod plan;
pub mod wasm;
