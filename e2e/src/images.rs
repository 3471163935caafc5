//! OCI image-layout tars for `ctr images import`, written with
//! [`wasmpod_oci::layout`].
//!
//! Tars go to `<workspace>/target/e2e-images/`, named after the reference;
//! they are written to a temporary name and renamed, so tests running in
//! parallel never see a half-written file.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};
use wasmpod_oci::image::{write_image_tar, Entry, ImageSpec};

use crate::workspace_root;

/// Where the image tars are written.
pub fn images_dir() -> PathBuf {
    workspace_root().join("target").join("e2e-images")
}

/// The busybox binary put in [`busybox_image`].
pub const BUSYBOX: &str = "/bin/busybox";

/// Applets linked to busybox in [`busybox_image`] (`/bin/<applet>`).
pub const BUSYBOX_APPLETS: &[&str] = &[
    "sh", "echo", "cat", "ls", "sleep", "true", "false", "env", "id", "ps", "mount", "test",
];

/// A file name for `reference`: everything but letters, digits, `.`, `-`
/// and `_` becomes `_`.
fn file_name_for(reference: &str) -> String {
    reference
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Writes `spec` as an OCI image-layout tar to `path` (atomically).
pub fn write_image(spec: &ImageSpec, path: &Path) -> Result<PathBuf> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = path
        .parent()
        .with_context(|| format!("{} has no parent directory", path.display()))?;
    fs::create_dir_all(dir).with_context(|| format!("failed to create {}", dir.display()))?;
    let tmp = dir.join(format!(
        ".{}.{}-{}.tmp",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| -> Result<()> {
        let file =
            File::create(&tmp).with_context(|| format!("failed to create {}", tmp.display()))?;
        let mut out = BufWriter::new(file);
        write_image_tar(spec, &mut out)
            .with_context(|| format!("failed to write image {}", spec.reference))?;
        out.flush()
            .with_context(|| format!("failed to write {}", tmp.display()))?;
        fs::rename(&tmp, path)
            .with_context(|| format!("failed to rename {} to {}", tmp.display(), path.display()))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map(|()| path.to_path_buf())
}

/// Writes `spec` to `<images_dir>/<reference as a file name>.tar`.
pub fn image_tar(spec: &ImageSpec) -> Result<PathBuf> {
    let path = images_dir().join(format!("{}.tar", file_name_for(&spec.reference)));
    write_image(spec, &path)
}

/// An empty linux/amd64 image spec for `reference` with `entries`.
pub fn base_spec(reference: &str, entries: Vec<Entry>) -> ImageSpec {
    ImageSpec {
        reference: reference.to_string(),
        entries,
        entrypoint: Vec::new(),
        cmd: Vec::new(),
        env: vec!["PATH=/bin".to_string()],
        working_dir: None,
        os: "linux".to_string(),
        architecture: "amd64".to_string(),
        annotations: BTreeMap::new(),
    }
}

/// A single-layer linux/amd64 image holding the host's static busybox as
/// `/bin/busybox` (with `/bin/sh`, `/bin/echo`... linked to it), `/tmp`,
/// `/etc`; command `/bin/sh`. Returns the tar's path.
pub fn busybox_image(reference: &str) -> Result<PathBuf> {
    let data = fs::read(BUSYBOX).with_context(|| {
        format!("failed to read {BUSYBOX} (install busybox-static for the e2e tests)")
    })?;
    let mut entries = vec![
        Entry::Dir {
            path: "bin".to_string(),
            mode: 0o755,
        },
        Entry::Dir {
            path: "etc".to_string(),
            mode: 0o755,
        },
        Entry::Dir {
            path: "tmp".to_string(),
            mode: 0o1777,
        },
        Entry::File {
            path: "bin/busybox".to_string(),
            data,
            mode: 0o755,
        },
    ];
    entries.extend(BUSYBOX_APPLETS.iter().map(|a| Entry::Symlink {
        path: format!("bin/{a}"),
        target: "busybox".to_string(),
    }));
    let mut spec = base_spec(reference, entries);
    spec.cmd = vec!["/bin/sh".to_string()];
    image_tar(&spec)
}

/// A single-layer linux/amd64 image with the module at `wasm_path` stored at
/// `in_image_path` (e.g. `/app.wasm`), which is also the entrypoint.
/// Returns the tar's path.
pub fn wasm_image(reference: &str, wasm_path: &Path, in_image_path: &str) -> Result<PathBuf> {
    let data =
        fs::read(wasm_path).with_context(|| format!("failed to read {}", wasm_path.display()))?;
    // Layer paths are relative; parent directories are created implicitly.
    let inner = in_image_path.trim_start_matches('/');
    let entries = vec![Entry::File {
        path: inner.to_string(),
        data,
        mode: 0o755,
    }];
    let mut spec = base_spec(reference, entries);
    spec.env = Vec::new();
    spec.entrypoint = vec![format!("/{inner}")];
    image_tar(&spec)
}

/// The pod sandbox image: the static pause program of `e2e/pause` as
/// `/pause`, its entrypoint. Returns the tar's path.
pub fn pause_image(reference: &str) -> Result<PathBuf> {
    let binary = crate::guests::pause_binary()?;
    let data = fs::read(&binary).with_context(|| format!("failed to read {}", binary.display()))?;
    let entries = vec![Entry::File {
        path: "pause".to_string(),
        data,
        mode: 0o755,
    }];
    let mut spec = base_spec(reference, entries);
    spec.env = Vec::new();
    spec.entrypoint = vec!["/pause".to_string()];
    image_tar(&spec)
}
