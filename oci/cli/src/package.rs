//! `wasmpod oci build` and the packaging `push` shares with it: `.wasm`
//! inputs into the blobs of a classic image or a Wasm artifact, written as a
//! layout atomically.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use wasmpod_oci::artifact::{
    artifact_blobs, ArtifactModule, ArtifactSpec, MEDIA_TYPE_WASM, WASM_LAYER_MEDIA_TYPES,
};
use wasmpod_oci::blob::Blobs;
use wasmpod_oci::image::{image_blobs, Entry, ImageSpec};
use wasmpod_oci::layout::{write_layout_tar, Built};
use wasmpod_oci::wasm::{classify, WasmKind};

use crate::{Build, Package};

/// An image or artifact packaged in memory, and what it runs.
pub(crate) struct Packaged {
    pub(crate) blobs: Blobs,
    /// For the summary line, e.g. `entrypoint /app.wasm`.
    pub(crate) runs: String,
}

/// Packages `inputs` as `build` does.
pub(crate) fn package(inputs: &[PathBuf], p: &Package) -> Result<Packaged> {
    let mut modules = Vec::new();
    for input in inputs {
        let data = std::fs::read(input).with_context(|| format!("read {}", input.display()))?;
        let Some(kind) = classify(&data) else {
            bail!(
                "{} is not a WebAssembly module or component",
                input.display()
            );
        };
        let name = input
            .file_name()
            .and_then(|n| n.to_str())
            .with_context(|| format!("{} has no file name", input.display()))?
            .to_owned();
        modules.push((name, kind, data));
    }
    let Some((first_name, first_kind, _)) = modules.first() else {
        bail!("nothing to package: give at least one .wasm");
    };
    let platform = match &p.platform {
        Some(platform) => Some(
            platform
                .split_once('/')
                .map(|(o, a)| (o.to_owned(), a.to_owned()))
                .with_context(|| format!("--platform {platform:?} is not OS/ARCH"))?,
        ),
        None => None,
    };
    if p.artifact {
        if p.path.is_some() {
            bail!("--path applies to classic images; an artifact's layers are named by file name");
        }
        let media_type = p.media_type.as_deref().unwrap_or(MEDIA_TYPE_WASM);
        if !WASM_LAYER_MEDIA_TYPES.contains(&media_type) {
            bail!(
                "--media-type {media_type:?} is not a Wasm layer media type; use one of: {}",
                WASM_LAYER_MEDIA_TYPES.join(", ")
            );
        }
        let os = match platform {
            Some((os, arch)) if arch == "wasm" => Some(os),
            Some((_, arch)) => bail!(
                "--platform: a Wasm artifact's architecture is wasm, not {arch:?} (e.g. wasip1/wasm)"
            ),
            None => None,
        };
        let runs = format!("Wasm artifact, runs {first_name}");
        let spec = ArtifactSpec {
            modules: modules
                .into_iter()
                .map(|(title, _, data)| ArtifactModule {
                    title,
                    data,
                    media_type: media_type.to_owned(),
                })
                .collect(),
            os,
            env: p.env.clone(),
            annotations: BTreeMap::new(),
        };
        let blobs = artifact_blobs(&spec).context("package the artifact")?;
        return Ok(Packaged { blobs, runs });
    }
    if let Some(mt) = &p.media_type {
        bail!("--media-type {mt:?} applies only with --artifact");
    }
    if p.path.is_some() && modules.len() > 1 {
        bail!("--path applies to a single .wasm; with several, each goes to /<file name>");
    }
    let (os, architecture) = platform.unwrap_or_else(|| match first_kind {
        WasmKind::Module => ("wasip1".into(), "wasm".into()),
        WasmKind::Component => ("wasip2".into(), "wasm".into()),
    });
    let mut entries = Vec::new();
    let mut entrypoint = None;
    for (name, _, data) in modules {
        let guest_path = match &p.path {
            Some(path) => path.clone(),
            None => format!("/{name}"),
        };
        let Some(in_layer) = guest_path.strip_prefix('/') else {
            bail!("--path {guest_path:?} must be absolute");
        };
        entries.push(Entry::File {
            path: in_layer.to_owned(),
            data,
            mode: 0o755,
        });
        entrypoint.get_or_insert(guest_path);
    }
    let entrypoint = entrypoint.context("no entrypoint")?;
    let spec = ImageSpec {
        reference: String::new(),
        entries,
        entrypoint: vec![entrypoint.clone()],
        cmd: vec![],
        env: p.env.clone(),
        working_dir: None,
        os,
        architecture,
        annotations: BTreeMap::new(),
    };
    let blobs = image_blobs(&spec).context("package the image")?;
    Ok(Packaged {
        blobs,
        runs: format!("entrypoint {entrypoint}"),
    })
}

/// The one line `build` prints.
pub(crate) fn summary_line(reference: &str, built: &Built, runs: &str) -> String {
    format!(
        "{reference} {} ({} bytes, {runs})",
        built.manifest_digest, built.size
    )
}

/// `wasmpod oci build`: writes the layout to a temporary file beside the
/// output and renames it into place. Returns the summary line.
pub(crate) fn build(b: &Build) -> Result<String> {
    let packaged =
        package(&b.wasm, &b.package).with_context(|| format!("build {}", b.reference))?;
    let built = write_atomically(&b.output, |out| {
        Ok(write_layout_tar(&packaged.blobs, &b.reference, out)?)
    })
    .with_context(|| format!("build {}", b.reference))?;
    Ok(summary_line(&b.reference, &built, &packaged.runs))
}

/// Runs `write` on a temporary file in `path`'s directory and renames that
/// to `path` when it succeeds; on failure no file is left behind.
pub(crate) fn write_atomically<T>(
    path: &Path,
    write: impl FnOnce(&mut std::io::BufWriter<&std::fs::File>) -> Result<T>,
) -> Result<T> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .with_context(|| format!("{} names no file", path.display()))?;
    let mut prefix = std::ffi::OsString::from(".");
    prefix.push(name);
    prefix.push(".");
    let tmp = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(".tmp")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .tempfile_in(dir)
        .with_context(|| format!("create a temporary file in {}", dir.display()))?;
    let value = {
        let mut out = std::io::BufWriter::new(tmp.as_file());
        let value = write(&mut out)?;
        out.flush()
            .with_context(|| format!("write {}", tmp.path().display()))?;
        value
    };
    tmp.as_file()
        .sync_all()
        .with_context(|| format!("write {}", tmp.path().display()))?;
    tmp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("rename into {}", path.display()))?;
    Ok(value)
}
