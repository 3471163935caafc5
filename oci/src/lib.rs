//! `wasmpod-oci`: everything wasmpod knows about OCI formats, kept free of
//! syscalls so it can be unit-tested and fuzzed without root.
//!
//! - [`plan`] turns an OCI runtime spec (the bundle's `config.json` that
//!   containerd hands the shim) into a [`plan::RunPlan`]: what the Wasm guest
//!   may see (args, env, cwd, root and mounts), how to find its entry point,
//!   and the sandbox its process gets (namespaces, user, capabilities,
//!   rlimits, sysctls, LSM labels). The shim executes plans; it never reads
//!   the spec itself. [`spec_check`] names the field of a value the typed
//!   spec refuses.
//! - [`image`] builds classic images (the `.wasm` in a tar layer) and
//!   [`artifact`] Wasm OCI artifacts (raw `.wasm` layers), both from the
//!   blobs and canonical JSON of [`blob`]; [`layout`] writes either as an
//!   OCI image layout, reproducibly, for `ctr images import` and registries,
//!   and reads layouts back.
//! - [`document`] reads manifests and indexes and picks the manifest a Wasm
//!   node runs; [`artifact`] chooses the layer a container runs.
//! - [`reference`] checks image references; [`cgroup`] resolves
//!   `linux.cgroupsPath`; [`wasm`] tells modules from components.
//!
//! The crate forbids unsafe code: it parses untrusted input (specs, manifests)
//! and must stay safe to fuzz.
#![forbid(unsafe_code)]

mod archive;
pub mod artifact;
pub mod blob;
pub mod cgroup;
pub mod document;
pub mod image;
pub mod layout;
pub mod plan;
pub mod reference;
pub mod spec_check;
pub mod wasm;
