//! End-to-end test harness for wasmpod.
//!
//! The harness starts a **private** containerd (its own root, state, sockets
//! and log under a temporary directory), drives it with `ctr`, and checks
//! that nothing is left behind once a test's containers are gone.
//!
//! ```no_run
//! use wasmpod_e2e::{Containerd, ContainerdOptions};
//!
//! # fn main() -> anyhow::Result<()> {
//! let cd = Containerd::start(ContainerdOptions::default())?;
//! let tar = wasmpod_e2e::images::busybox_image("docker.io/library/bb:e2e")?;
//! cd.ctr(&["images", "import", "--all-platforms", &tar.to_string_lossy()])?;
//! let id = cd.unique_id("hello");
//! let out = cd.ctr(&["run", "--rm", "docker.io/library/bb:e2e", &id, "/bin/busybox", "echo", "hi"])?;
//! assert_eq!(out.trim(), "hi");
//! cd.assert_no_leftovers()?;
//! # Ok(())
//! # }
//! ```
//!
//! Modules:
//! - [`containerd`]: the private containerd and the `ctr` wrappers,
//! - [`cri`]: its CRI plugin (CNI, pause image) and a CRI client, as kubelet,
//! - [`leftovers`]: what "nothing left behind" means, and how it is checked,
//! - [`dns`]: a small DNS server on the pod network, for name lookups,
//! - [`guests`]: building the Wasm guest programs under `e2e/guests`,
//! - [`images`]: OCI image-layout tars for `ctr images import`,
//! - [`kube_api`]: a stand-in Kubernetes API server (node labels) on loopback,
//! - [`http_client`]: one-shot HTTP GETs for the tests,
//! - [`process`]: running a command with a timeout,
//! - [`procfs`]: the sandbox fields of a container process's `/proc` status,
//! - [`registry`]: a private OCI registry (Debian's `docker-registry`) on loopback.
//!
//! Environment variables:
//! - `WASMPOD_SHIM`: absolute path of the `containerd-shim-wasmpod-v1` under
//!   test (default `<workspace>/target/release/containerd-shim-wasmpod-v1`),
//! - `WASMPOD_E2E_CONTAINERD_DIR`: directory of the `containerd` and `ctr`
//!   under test (default `/usr/bin`, Debian's 1.6.20; `make e2e-1.7` points
//!   it at trixie's 1.7 from `e2e/containerd-debian/fetch 1.7`),
//! - `WASMPOD_E2E_TMP`: where the per-test temporary directories go
//!   (default the system temporary directory),
//! - `WASMPOD_E2E_KEEP`: when set to a non-empty value other than `0`, the
//!   temporary directory (with `containerd.log`) is kept after the test.

pub mod containerd;
pub mod cri;
pub mod dns;
pub mod guests;
pub mod http_client;
pub mod images;
pub mod kube_api;
pub mod leftovers;
pub mod process;
pub mod procfs;
pub mod registry;

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

pub use containerd::{Containerd, ContainerdOptions, CtrOutput, DEFAULT_NAMESPACE};
pub use leftovers::Leftover;
pub use process::Output;

/// File name of the shim binary under test.
pub const SHIM_BINARY: &str = "containerd-shim-wasmpod-v1";

/// Runtime name that makes containerd run [`SHIM_BINARY`].
pub const RUNTIME: &str = "io.containerd.wasmpod.v1";

/// Root of the cargo workspace (the parent of the `e2e` crate).
pub fn workspace_root() -> PathBuf {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map(PathBuf::from)
        .unwrap_or(manifest_dir)
}

/// Where the shim under test is expected: `$WASMPOD_SHIM` if set, otherwise
/// `<workspace>/target/release/containerd-shim-wasmpod-v1`. The file may not
/// exist; see [`shim_path`] for the checked variant.
pub fn expected_shim_path() -> PathBuf {
    match std::env::var_os("WASMPOD_SHIM") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => workspace_root()
            .join("target")
            .join("release")
            .join(SHIM_BINARY),
    }
}

/// The shim binary under test, checked to exist and to be named
/// [`SHIM_BINARY`] (containerd finds it by that name on its `PATH`).
pub fn shim_path() -> Result<PathBuf> {
    let path = expected_shim_path();
    if !path.is_absolute() {
        bail!(
            "WASMPOD_SHIM must be an absolute path, got {}",
            path.display()
        );
    }
    if path.file_name().and_then(|n| n.to_str()) != Some(SHIM_BINARY) {
        bail!(
            "the shim binary must be named {SHIM_BINARY} for containerd to find it, got {}",
            path.display()
        );
    }
    let meta = std::fs::metadata(&path).with_context(|| {
        format!(
            "shim under test not found at {} (build it with `cargo build --release -p wasmpod-shim`, \
             or point WASMPOD_SHIM at the binary)",
            path.display()
        )
    })?;
    if !meta.is_file() {
        bail!("shim under test at {} is not a file", path.display());
    }
    Ok(path)
}
