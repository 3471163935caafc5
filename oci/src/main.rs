//! `wasmpod`: package WebAssembly for Kubernetes.
//!
//! - `wasmpod oci build APP.wasm [MORE.wasm...] -t REF -o OUT.tar` writes an
//!   OCI image layout (`ctr images import` accepts it). By default it is a
//!   classic image: the `.wasm` files in one tar layer, the entrypoint set to
//!   the first. With `--artifact` it is a Wasm OCI artifact: one raw `.wasm`
//!   layer per input (titled with its file name, media type `--media-type`),
//!   the CNCF Wasm config, and the first input as the entrypoint. The output
//!   is reproducible: the same input gives the same bytes and digests, and
//!   the file appears whole or not at all.
//! - `wasmpod oci push SRC [REF]` pushes a `.wasm` (packaged in memory exactly
//!   as `build` would, same flags) or an image-layout tar to a registry. The
//!   manifest goes up byte for byte, so the registry's digest is the one
//!   `build` prints. HTTPS, except for loopback registries or with
//!   `--plain-http`; credentials from the Docker config file.
//! - `wasmpod oci inspect SRC` summarises an image-layout tar or a registry
//!   reference: digest, kind (Wasm artifact or classic image), platform,
//!   entrypoint, layers, and for an artifact the layer a container runs by
//!   default. `--json` prints the same as one JSON object.

mod registry;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use oci_spec::image::ImageManifest;
use serde::Serialize;
use wasmpod_oci::artifact::{
    artifact_blobs, choose_manifest, is_artifact, layer_name, parse_document, select_layer, title,
    ArtifactModule, ArtifactSpec, Document, MEDIA_TYPE_WASM, WASM_LAYER_MEDIA_TYPES,
};
use wasmpod_oci::layout::{
    image_blobs, read_layout_tar, write_layout_tar, Blobs, Built, Entry, ImageSpec,
};
use wasmpod_oci::wasm::{classify, WasmKind};

use crate::registry::{Remote, OPERATION_TIMEOUT};

#[derive(Parser)]
#[command(
    name = "wasmpod",
    version,
    about = "Package WebAssembly for Kubernetes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// OCI images and artifacts of Wasm programs.
    #[command(subcommand)]
    Oci(Oci),
}

#[derive(Subcommand)]
enum Oci {
    /// Build an OCI image-layout tarball (classic image or Wasm artifact)
    /// from .wasm modules or components.
    Build(Build),
    /// Push a .wasm (packaged as `build` would) or an image-layout tarball
    /// to a registry.
    Push(Push),
    /// Summarise an image-layout tarball or an image in a registry.
    Inspect(Inspect),
}

#[derive(Args)]
struct Build {
    /// The .wasm modules or components to package; the first is the
    /// entrypoint.
    #[arg(required = true, value_name = "WASM")]
    wasm: Vec<PathBuf>,
    /// Image reference, e.g. registry.example.com/team/app:1.0.
    #[arg(short = 't', long = "tag", value_name = "REF")]
    reference: String,
    /// Where to write the image-layout tarball.
    #[arg(short = 'o', long = "output", value_name = "OUT.tar")]
    output: PathBuf,
    #[command(flatten)]
    package: Package,
}

/// How `.wasm` files are packaged (shared by `build` and `push`).
#[derive(Args, Clone, Default)]
struct Package {
    /// Build a Wasm OCI artifact (one raw .wasm layer per input) instead of
    /// a classic image (the .wasm files in one tar layer).
    #[arg(long)]
    artifact: bool,
    /// Layer media type of an artifact: application/wasm (default),
    /// application/vnd.wasm.content.layer.v1+wasm or
    /// application/vnd.bytecodealliance.wasm.component.layer.v0+wasm.
    #[arg(long = "media-type", value_name = "MT")]
    media_type: Option<String>,
    /// Environment variables baked into the image (KEY=VALUE), repeatable.
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Platform as OS/ARCH (default: wasip1/wasm for modules, wasip2/wasm
    /// for components; an artifact's ARCH must be wasm).
    #[arg(long, value_name = "OS/ARCH")]
    platform: Option<String>,
    /// Path of the .wasm inside a classic image (default: /<file name>);
    /// only with a single input.
    #[arg(long, value_name = "P")]
    path: Option<String>,
}

impl Package {
    fn is_default(&self) -> bool {
        !self.artifact
            && self.media_type.is_none()
            && self.env.is_empty()
            && self.platform.is_none()
            && self.path.is_none()
    }
}

/// How to reach a registry (shared by `push` and `inspect`).
#[derive(Args)]
struct RemoteArgs {
    /// Talk plain HTTP to the registry (loopback registries always are).
    #[arg(long)]
    plain_http: bool,
    /// Docker config file with the registry credentials (default:
    /// $DOCKER_CONFIG/config.json, else ~/.docker/config.json).
    #[arg(long, value_name = "PATH")]
    docker_config: Option<PathBuf>,
}

#[derive(Args)]
struct Push {
    /// A .wasm module or component, or an image-layout tarball.
    #[arg(value_name = "SRC")]
    source: PathBuf,
    /// Where to push, e.g. registry.example.com/team/app:1.0 (default for a
    /// tarball: the reference it names).
    #[arg(value_name = "REF")]
    reference: Option<String>,
    #[command(flatten)]
    package: Package,
    #[command(flatten)]
    remote: RemoteArgs,
}

#[derive(Args)]
struct Inspect {
    /// An image-layout tarball, or an image reference in a registry.
    #[arg(value_name = "SRC")]
    source: String,
    /// Print one JSON object instead of a summary.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    remote: RemoteArgs,
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Oci(Oci::Build(b)) => build(&b).map(|line| println!("{line}")),
        Command::Oci(Oci::Push(p)) => push(&p).map(|line| println!("{line}")),
        Command::Oci(Oci::Inspect(i)) => inspect(&i),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wasmpod: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// An image or artifact packaged in memory, and what it runs.
struct Packaged {
    blobs: Blobs,
    /// For the summary line, e.g. `entrypoint /app.wasm`.
    runs: String,
}

/// Packages `inputs` as `build` does.
fn package(inputs: &[PathBuf], p: &Package) -> Result<Packaged> {
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
fn summary_line(reference: &str, built: &Built, runs: &str) -> String {
    format!(
        "{reference} {} ({} bytes, {runs})",
        built.manifest_digest, built.size
    )
}

/// `wasmpod oci build`: writes the layout to a temporary file beside the
/// output and renames it into place. Returns the summary line.
fn build(b: &Build) -> Result<String> {
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
fn write_atomically<T>(
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

/// A current-thread runtime running `fut`, bounded by [`OPERATION_TIMEOUT`].
fn run_bounded<T>(what: &str, fut: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    runtime.block_on(async {
        match tokio::time::timeout(OPERATION_TIMEOUT, fut).await {
            Ok(result) => result,
            Err(_) => Err(anyhow!(
                "{what} did not finish within {} s",
                OPERATION_TIMEOUT.as_secs()
            )),
        }
    })
}

/// `wasmpod oci push`. Returns `REF@DIGEST`.
fn push(p: &Push) -> Result<String> {
    let data = std::fs::read(&p.source).with_context(|| format!("read {}", p.source.display()))?;
    let (blobs, reference) = if classify(&data).is_some() {
        let reference = p.reference.clone().with_context(|| {
            format!(
                "push {}: give the image reference to push to (REF)",
                p.source.display()
            )
        })?;
        let packaged = package(std::slice::from_ref(&p.source), &p.package)
            .with_context(|| format!("push {reference}"))?;
        (packaged.blobs, reference)
    } else {
        if !p.package.is_default() {
            bail!(
                "push {}: --artifact, --media-type, --env, --platform and --path apply to a \
                 .wasm source, not to an image layout",
                p.source.display()
            );
        }
        let image = read_layout_tar(data.as_slice()).with_context(|| {
            format!(
                "push {}: neither a .wasm nor an OCI image-layout tarball",
                p.source.display()
            )
        })?;
        let reference = match (&p.reference, image.reference) {
            (Some(r), _) => r.clone(),
            (None, Some(r)) => r,
            (None, None) => bail!(
                "push {}: the layout names no image; give the reference to push to (REF)",
                p.source.display()
            ),
        };
        (image.blobs, reference)
    };
    // The same checks `build` applies to the reference and platform.
    write_layout_tar(&blobs, &reference, std::io::sink())
        .with_context(|| format!("push {reference}"))?;
    let remote = Remote::new(
        &reference,
        p.remote.plain_http,
        p.remote.docker_config.as_deref(),
    )
    .with_context(|| format!("push {reference}"))?;
    run_bounded(
        &format!("push to {}", remote.reference.resolve_registry()),
        remote.push(&blobs),
    )
    .with_context(|| format!("push {reference}"))?;
    Ok(format!("{reference}@{}", blobs.manifest.digest))
}

/// One layer in `inspect`'s output.
#[derive(Debug, Serialize)]
struct LayerSummary {
    media_type: String,
    size: u64,
    digest: String,
    title: Option<String>,
}

/// What `inspect` prints.
#[derive(Debug, Serialize)]
struct ImageSummary {
    reference: Option<String>,
    manifest_digest: String,
    kind: &'static str,
    platform: String,
    config_media_type: String,
    entrypoint: Vec<String>,
    layers: Vec<LayerSummary>,
    /// For an artifact: the title (or digest) of the layer a container
    /// without a layer annotation runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    default_layer: Option<String>,
    /// For an artifact whose default layer cannot be chosen: why.
    #[serde(skip_serializing_if = "Option::is_none")]
    default_layer_error: Option<String>,
}

/// Summarises a manifest (its bytes and digest) and its config.
fn summarise(
    reference: Option<String>,
    manifest_digest: String,
    manifest: &[u8],
    config: &[u8],
    platform: Option<(String, String)>,
) -> Result<ImageSummary> {
    let Document::Manifest(manifest) = parse_document(manifest)? else {
        bail!("{manifest_digest} is an image index, not a manifest");
    };
    let manifest: &ImageManifest = &manifest;
    let config_json: serde_json::Value =
        serde_json::from_slice(config).context("the config is not JSON")?;
    let entrypoint: Vec<String> = config_json
        .pointer("/config/Entrypoint")
        .and_then(|e| e.as_array())
        .map(|e| {
            e.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let (os, arch) = platform.unwrap_or_else(|| {
        let field = |k: &str| {
            config_json
                .get(k)
                .and_then(|v| v.as_str())
                .unwrap_or("unknown")
                .to_owned()
        };
        (field("os"), field("architecture"))
    });
    let artifact = is_artifact(manifest);
    let (default_layer, default_layer_error) = if artifact {
        match select_layer(manifest, None, entrypoint.first().map(String::as_str)) {
            Ok(d) => (Some(layer_name(d)), None),
            Err(e) => (None, Some(e.to_string())),
        }
    } else {
        (None, None)
    };
    Ok(ImageSummary {
        reference,
        manifest_digest,
        kind: if artifact {
            "Wasm artifact"
        } else {
            "classic image"
        },
        platform: format!("{os}/{arch}"),
        config_media_type: manifest.config().media_type().to_string(),
        entrypoint,
        layers: manifest
            .layers()
            .iter()
            .map(|d| LayerSummary {
                media_type: d.media_type().to_string(),
                size: d.size(),
                digest: d.digest().to_string(),
                title: title(d).map(str::to_owned),
            })
            .collect(),
        default_layer,
        default_layer_error,
    })
}

/// The human-readable form of `inspect`'s output.
fn render(s: &ImageSummary) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: &str| out.push_str(&format!("{k:<12}{v}\n"));
    line("reference", s.reference.as_deref().unwrap_or("(none)"));
    line("manifest", &s.manifest_digest);
    line("kind", s.kind);
    line("platform", &s.platform);
    line("config", &s.config_media_type);
    let entrypoint = if s.entrypoint.is_empty() {
        "(none)".to_owned()
    } else {
        s.entrypoint.join(" ")
    };
    line("entrypoint", &entrypoint);
    line("layers", &s.layers.len().to_string());
    for l in &s.layers {
        out.push_str(&format!(
            "  {}  {} bytes  {}{}\n",
            l.media_type,
            l.size,
            l.digest,
            l.title
                .as_deref()
                .map(|t| format!("  {t}"))
                .unwrap_or_default()
        ));
    }
    match (&s.default_layer, &s.default_layer_error) {
        (Some(layer), _) => out.push_str(&format!("{:<12}{layer}\n", "runs")),
        (None, Some(error)) => {
            out.push_str(&format!("{:<12}nothing by default: {error}\n", "runs"))
        }
        (None, None) => {}
    }
    out
}

/// `wasmpod oci inspect`.
fn inspect(i: &Inspect) -> Result<()> {
    let local = Path::new(&i.source);
    let summary = if local.exists() || i.source.ends_with(".tar") {
        inspect_layout(local).with_context(|| format!("inspect {}", local.display()))?
    } else {
        inspect_remote(i).with_context(|| format!("inspect {}", i.source))?
    };
    if i.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print!("{}", render(&summary));
    }
    Ok(())
}

fn inspect_layout(path: &Path) -> Result<ImageSummary> {
    let file = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let image = read_layout_tar(std::io::BufReader::new(file))?;
    let blobs = image.blobs;
    summarise(
        image.reference,
        blobs.manifest.digest,
        &blobs.manifest.data,
        &blobs.config.data,
        Some(blobs.platform),
    )
}

fn inspect_remote(i: &Inspect) -> Result<ImageSummary> {
    let remote = Remote::new(
        &i.source,
        i.remote.plain_http,
        i.remote.docker_config.as_deref(),
    )?;
    let what = format!("inspect at {}", remote.reference.resolve_registry());
    run_bounded(&what, async {
        remote.login_pull().await?;
        let (mut bytes, mut digest) = remote.manifest(None).await?;
        let mut platform = None;
        if let Document::Index(index) = parse_document(&bytes)? {
            let chosen = choose_manifest(&index)?;
            platform = chosen
                .platform()
                .as_ref()
                .map(|p| (p.os().to_string(), p.architecture().to_string()));
            (bytes, digest) = remote.manifest(Some(chosen.digest().as_ref())).await?;
        }
        let Document::Manifest(manifest) = parse_document(&bytes)? else {
            bail!("the index names another index ({digest})");
        };
        let config = manifest.config();
        let config = remote
            .small_blob(config.digest().as_ref(), config.size())
            .await?;
        summarise(Some(i.source.clone()), digest, &bytes, &config, platform)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmpod_oci::artifact::MEDIA_TYPE_COMPONENT;

    const MODULE: &[u8] = b"\0asm\x01\0\0\0";
    const COMPONENT: &[u8] = b"\0asm\x0d\0\x01\0";

    fn inputs(dir: &Path) -> Vec<PathBuf> {
        let app = dir.join("app.wasm");
        let tool = dir.join("tool.wasm");
        std::fs::write(&app, MODULE).expect("write app");
        std::fs::write(&tool, COMPONENT).expect("write tool");
        vec![app, tool]
    }

    fn build_args(wasm: Vec<PathBuf>, output: PathBuf, package: Package) -> Build {
        Build {
            wasm,
            reference: "registry.example.com/team/app:1.0".to_owned(),
            output,
            package,
        }
    }

    /// The digest in `build`'s summary line.
    fn printed_digest(line: &str) -> &str {
        line.split_whitespace().nth(1).expect("a digest")
    }

    fn read(path: &Path) -> wasmpod_oci::layout::LayoutImage {
        read_layout_tar(std::fs::File::open(path).expect("open")).expect("read layout")
    }

    #[test]
    fn build_artifact_is_reproducible_and_reads_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wasm = inputs(dir.path());
        let artifact = Package {
            artifact: true,
            env: vec!["A=1".to_owned()],
            ..Package::default()
        };
        let (first, second) = (dir.path().join("a.tar"), dir.path().join("b.tar"));
        let line1 =
            build(&build_args(wasm.clone(), first.clone(), artifact.clone())).expect("build");
        let line2 = build(&build_args(wasm, second.clone(), artifact)).expect("build");
        assert_eq!(line1, line2);
        let bytes = std::fs::read(&first).expect("read");
        assert_eq!(bytes, std::fs::read(&second).expect("read"));
        assert!(
            line1.contains(&format!("({} bytes, ", bytes.len())),
            "{line1}"
        );
        assert!(line1.ends_with("Wasm artifact, runs app.wasm)"), "{line1}");

        let image = read(&first);
        assert_eq!(
            image.reference.as_deref(),
            Some("registry.example.com/team/app:1.0")
        );
        assert_eq!(image.blobs.manifest.digest, printed_digest(&line1));
        assert_eq!(
            image.blobs.platform,
            ("wasip1".to_owned(), "wasm".to_owned())
        );
        let media_types: Vec<_> = image
            .blobs
            .layers
            .iter()
            .map(|l| l.media_type.as_str())
            .collect();
        assert_eq!(media_types, [MEDIA_TYPE_WASM, MEDIA_TYPE_WASM]);
        assert_eq!(image.blobs.layers[0].data, MODULE);
        assert_eq!(image.blobs.layers[1].data, COMPONENT);

        let summary = summarise(
            image.reference,
            image.blobs.manifest.digest.clone(),
            &image.blobs.manifest.data,
            &image.blobs.config.data,
            Some(image.blobs.platform.clone()),
        )
        .expect("summary");
        assert_eq!(summary.kind, "Wasm artifact");
        assert_eq!(summary.entrypoint, ["/app.wasm"]);
        assert_eq!(summary.default_layer.as_deref(), Some("app.wasm"));
        let titles: Vec<_> = summary.layers.iter().map(|l| l.title.as_deref()).collect();
        assert_eq!(titles, [Some("app.wasm"), Some("tool.wasm")]);
    }

    #[test]
    fn build_artifact_media_type_and_platform() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wasm = inputs(dir.path());
        let out = dir.path().join("c.tar");
        let package = Package {
            artifact: true,
            media_type: Some(MEDIA_TYPE_COMPONENT.to_owned()),
            platform: Some("wasip2/wasm".to_owned()),
            ..Package::default()
        };
        let line = build(&build_args(wasm.clone(), out.clone(), package)).expect("build");
        let image = read(&out);
        assert_eq!(image.blobs.manifest.digest, printed_digest(&line));
        assert!(image
            .blobs
            .layers
            .iter()
            .all(|l| l.media_type == MEDIA_TYPE_COMPONENT));
        assert_eq!(image.blobs.platform.0, "wasip2");

        for (package, needle) in [
            (
                Package {
                    artifact: true,
                    media_type: Some("application/octet-stream".to_owned()),
                    ..Package::default()
                },
                "not a Wasm layer media type",
            ),
            (
                Package {
                    artifact: true,
                    platform: Some("linux/amd64".to_owned()),
                    ..Package::default()
                },
                "architecture is wasm",
            ),
            (
                Package {
                    media_type: Some(MEDIA_TYPE_WASM.to_owned()),
                    ..Package::default()
                },
                "only with --artifact",
            ),
            (
                Package {
                    path: Some("/x.wasm".to_owned()),
                    ..Package::default()
                },
                "single .wasm",
            ),
        ] {
            let out = dir.path().join("bad.tar");
            let err = build(&build_args(wasm.clone(), out.clone(), package)).unwrap_err();
            assert!(format!("{err:#}").contains(needle), "{err:#}");
            assert!(!out.exists());
        }
    }

    #[test]
    fn build_classic_with_several_inputs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wasm = inputs(dir.path());
        let out = dir.path().join("classic.tar");
        let line = build(&build_args(wasm, out.clone(), Package::default())).expect("build");
        assert!(line.ends_with("entrypoint /app.wasm)"), "{line}");
        let image = read(&out);
        assert_eq!(image.blobs.manifest.digest, printed_digest(&line));
        assert_eq!(image.blobs.layers.len(), 1);
        assert_eq!(
            image.blobs.layers[0].media_type,
            "application/vnd.oci.image.layer.v1.tar"
        );
        let mut layer = tar::Archive::new(image.blobs.layers[0].data.as_slice());
        let paths: Vec<String> = layer
            .entries()
            .expect("entries")
            .map(|e| {
                e.expect("entry")
                    .path()
                    .expect("path")
                    .display()
                    .to_string()
            })
            .collect();
        assert_eq!(paths, ["app.wasm", "tool.wasm"]);
        let summary = render(
            &summarise(
                None,
                image.blobs.manifest.digest.clone(),
                &image.blobs.manifest.data,
                &image.blobs.config.data,
                None,
            )
            .expect("summary"),
        );
        assert!(summary.contains("classic image"), "{summary}");
        assert!(summary.contains("wasip1/wasm"), "{summary}");
        assert!(!summary.contains("runs"), "{summary}");

        // A single input with --path, as before.
        let single = dir.path().join("single.tar");
        let package = Package {
            path: Some("/bin/app.wasm".to_owned()),
            ..Package::default()
        };
        let line = build(&build_args(
            vec![dir.path().join("app.wasm")],
            single,
            package,
        ))
        .expect("build");
        assert!(line.ends_with("entrypoint /bin/app.wasm)"), "{line}");
    }

    #[test]
    fn failed_build_leaves_no_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wasm = inputs(dir.path());
        let out = dir.path().join("out.tar");
        let mut args = build_args(wasm, out.clone(), Package::default());
        args.reference = "no-registry:1".to_owned();
        let err = build(&args).unwrap_err();
        assert!(
            format!("{err:#}").contains("invalid image reference"),
            "{err:#}"
        );
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .expect("read dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(left.len(), 2, "{left:?}");
        assert!(!out.exists());
    }

    #[test]
    fn push_to_a_closed_port_fails_fast_naming_the_registry() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wasm = inputs(dir.path());
        // A port nothing listens on: bind one, then let it go.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let reference = format!("127.0.0.1:{port}/x:1");
        let args = Push {
            source: wasm[0].clone(),
            reference: Some(reference.clone()),
            package: Package::default(),
            remote: RemoteArgs {
                plain_http: false,
                docker_config: Some(dir.path().join("empty.json")),
            },
        };
        std::fs::write(dir.path().join("empty.json"), "{}").expect("write config");
        let started = std::time::Instant::now();
        let err = push(&args).unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            format!("push {reference}: cannot reach registry 127.0.0.1:{port}: connection refused")
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
    }
}
