//! The Wasm guest programs of `e2e/guests`, built on first use.
//!
//! The guest crate is built once per test process for both WASI targets, and
//! a file lock (`target/guests/.lock`) keeps concurrent test processes from
//! running two builds at the same time; cargo makes the second build a no-op.
//!
//! The pod sandbox program of `e2e/pause` (a static Linux executable the CRI
//! tests pack into their pause image) is built the same way.

use std::fs::OpenOptions;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use nix::fcntl::{Flock, FlockArg};

use crate::process::run_with_timeout;
use crate::workspace_root;

/// The targets the guests are built for.
pub const TARGETS: [&str; 2] = ["wasm32-wasip1", "wasm32-wasip2"];

/// Upper bound for one build of the guests (a cold build on 2 cores).
pub const BUILD_TIMEOUT: Duration = Duration::from_secs(900);

/// `<workspace>/e2e/guests`.
pub fn guests_dir() -> PathBuf {
    workspace_root().join("e2e").join("guests")
}

/// `<workspace>/target/guests`, the guests' cargo target directory.
pub fn guests_target_dir() -> PathBuf {
    workspace_root().join("target").join("guests")
}

/// Path of the WAT fixture `name` (`<workspace>/e2e/guests/wat/<name>.wat`).
pub fn wat_fixture(name: &str) -> PathBuf {
    guests_dir().join("wat").join(format!("{name}.wat"))
}

/// Builds the guests (once per process) and returns the path of guest `name`
/// for `target` (`"wasm32-wasip1"` or `"wasm32-wasip2"`):
/// `<workspace>/target/guests/<target>/release/<name>.wasm`.
pub fn guest(target: &str, name: &str) -> Result<PathBuf> {
    if !TARGETS.contains(&target) {
        bail!("unknown guest target {target:?}; expected one of {TARGETS:?}");
    }
    static BUILT: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    BUILT
        .get_or_init(|| build_guests().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!("building the e2e guests failed: {e}"))?;
    let path = guests_target_dir()
        .join(target)
        .join("release")
        .join(format!("{name}.wasm"));
    if !path.is_file() {
        bail!(
            "guest {name:?} for {target} not found at {} after building {}",
            path.display(),
            guests_dir().join("Cargo.toml").display()
        );
    }
    Ok(path)
}

/// Runs the guests' cargo build under the cross-process lock.
fn build_guests() -> Result<()> {
    build_crate(&guests_dir(), &guests_target_dir(), &TARGETS, None)
}

/// `<workspace>/e2e/pause`, the pod sandbox program's crate.
pub fn pause_dir() -> PathBuf {
    workspace_root().join("e2e").join("pause")
}

/// The host target the pause program is built for.
const HOST_TARGET: &str = "x86_64-unknown-linux-gnu";

/// Builds the pod sandbox program (`e2e/pause`) as a static executable, once
/// per process, and returns its path
/// (`<workspace>/target/pause/x86_64-unknown-linux-gnu/release/wasmpod-pause`).
pub fn pause_binary() -> Result<PathBuf> {
    static BUILT: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let target_dir = workspace_root().join("target").join("pause");
            build_crate(
                &pause_dir(),
                &target_dir,
                &[HOST_TARGET],
                Some("-C target-feature=+crt-static"),
            )
            .map(|()| {
                target_dir
                    .join(HOST_TARGET)
                    .join("release")
                    .join("wasmpod-pause")
            })
            .map_err(|e| format!("{e:#}"))
        })
        .clone()
        .map_err(|e| anyhow!("building the pause program failed: {e}"))
}

/// Builds the `wasi:http` component (`e2e/http-guest`) for wasm32-wasip2,
/// once per process, and returns its path.
pub fn http_guest() -> Result<PathBuf> {
    static BUILT: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let dir = workspace_root().join("target").join("http-guest");
            build_crate(
                &workspace_root().join("e2e").join("http-guest"),
                &dir,
                &["wasm32-wasip2"],
                None,
            )
            .map(|()| dir.join("wasm32-wasip2/release/wasmpod_http_guest.wasm"))
            .map_err(|e| format!("{e:#}"))
        })
        .clone()
        .map_err(|e| anyhow!("building the wasi:http guest failed: {e}"))
}

/// `<workspace>/e2e/compute`, the CPU-bound benchmark program.
pub fn compute_dir() -> PathBuf {
    workspace_root().join("e2e").join("compute")
}

/// Builds the benchmark program (`e2e/compute`) for wasm32-wasip1 and as a
/// static native executable, once per process: `(wasm, native)` paths.
pub fn compute_binaries() -> Result<(PathBuf, PathBuf)> {
    static BUILT: OnceLock<std::result::Result<(PathBuf, PathBuf), String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let wasm_dir = workspace_root().join("target").join("compute-wasm");
            let native_dir = workspace_root().join("target").join("compute-native");
            build_crate(&compute_dir(), &wasm_dir, &["wasm32-wasip1"], None)
                .and_then(|()| {
                    build_crate(
                        &compute_dir(),
                        &native_dir,
                        &[HOST_TARGET],
                        Some("-C target-feature=+crt-static"),
                    )
                })
                .map(|()| {
                    (
                        wasm_dir.join("wasm32-wasip1/release/wasmpod-compute.wasm"),
                        native_dir.join(HOST_TARGET).join("release/wasmpod-compute"),
                    )
                })
                .map_err(|e| format!("{e:#}"))
        })
        .clone()
        .map_err(|e| anyhow!("building the compute benchmark failed: {e}"))
}

/// `cargo build --release` of the crate in `dir` for `targets`, into
/// `target_dir`, under a file lock in `target_dir` so that concurrent test
/// processes never run two builds of it at once (the second is a no-op).
/// `rustflags` replaces the outer build's, which never leak in.
fn build_crate(
    dir: &std::path::Path,
    target_dir: &std::path::Path,
    targets: &[&str],
    rustflags: Option<&str>,
) -> Result<()> {
    std::fs::create_dir_all(target_dir)
        .with_context(|| format!("failed to create {}", target_dir.display()))?;
    let lock_path = target_dir.join(".lock");
    let lock_file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("failed to open {}", lock_path.display()))?;
    let _lock = Flock::lock(lock_file, FlockArg::LockExclusive)
        .map_err(|(_, errno)| anyhow!("failed to lock {}: {errno}", lock_path.display()))?;

    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = dir.join("Cargo.toml");
    let mut cmd = Command::new(cargo);
    cmd.arg("build").arg("--release");
    for t in targets {
        cmd.arg("--target").arg(t);
    }
    cmd.arg("--manifest-path")
        .arg(&manifest)
        .arg("--target-dir")
        .arg(target_dir)
        // Settings of the outer (host) build must not leak into this one.
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS");
    if let Some(flags) = rustflags {
        cmd.env("RUSTFLAGS", flags);
    }
    let out = run_with_timeout(&mut cmd, None, BUILD_TIMEOUT)
        .with_context(|| format!("failed to build {}", manifest.display()))?;
    if !out.success() {
        bail!(
            "cargo build of {} failed (exit {:?}):\n{}",
            manifest.display(),
            out.status,
            out.stderr.trim_end()
        );
    }
    Ok(())
}
