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

mod credentials;
mod inspect;
mod package;
mod push;
mod registry;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::inspect::inspect;
use crate::package::build;
use crate::push::push;

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
pub(crate) struct Build {
    /// The .wasm modules or components to package; the first is the
    /// entrypoint.
    #[arg(required = true, value_name = "WASM")]
    pub(crate) wasm: Vec<PathBuf>,
    /// Image reference, e.g. registry.example.com/team/app:1.0.
    #[arg(short = 't', long = "tag", value_name = "REF")]
    pub(crate) reference: String,
    /// Where to write the image-layout tarball.
    #[arg(short = 'o', long = "output", value_name = "OUT.tar")]
    pub(crate) output: PathBuf,
    #[command(flatten)]
    pub(crate) package: Package,
}

/// How `.wasm` files are packaged (shared by `build` and `push`).
#[derive(Args, Clone, Default)]
pub(crate) struct Package {
    /// Build a Wasm OCI artifact (one raw .wasm layer per input) instead of
    /// a classic image (the .wasm files in one tar layer).
    #[arg(long)]
    pub(crate) artifact: bool,
    /// Layer media type of an artifact: application/wasm (default),
    /// application/vnd.wasm.content.layer.v1+wasm or
    /// application/vnd.bytecodealliance.wasm.component.layer.v0+wasm.
    #[arg(long = "media-type", value_name = "MT")]
    pub(crate) media_type: Option<String>,
    /// Environment variables baked into the image (KEY=VALUE), repeatable.
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub(crate) env: Vec<String>,
    /// Platform as OS/ARCH (default: wasip1/wasm for modules, wasip2/wasm
    /// for components; an artifact's ARCH must be wasm).
    #[arg(long, value_name = "OS/ARCH")]
    pub(crate) platform: Option<String>,
    /// Path of the .wasm inside a classic image (default: /<file name>);
    /// only with a single input.
    #[arg(long, value_name = "P")]
    pub(crate) path: Option<String>,
}

impl Package {
    pub(crate) fn is_default(&self) -> bool {
        !self.artifact
            && self.media_type.is_none()
            && self.env.is_empty()
            && self.platform.is_none()
            && self.path.is_none()
    }
}

/// How to reach a registry (shared by `push` and `inspect`).
#[derive(Args)]
pub(crate) struct RemoteArgs {
    /// Talk plain HTTP to the registry (loopback registries always are).
    #[arg(long)]
    pub(crate) plain_http: bool,
    /// Docker config file with the registry credentials (default:
    /// $DOCKER_CONFIG/config.json, else ~/.docker/config.json).
    #[arg(long, value_name = "PATH")]
    pub(crate) docker_config: Option<PathBuf>,
}

#[derive(Args)]
pub(crate) struct Push {
    /// A .wasm module or component, or an image-layout tarball.
    #[arg(value_name = "SRC")]
    pub(crate) source: PathBuf,
    /// Where to push, e.g. registry.example.com/team/app:1.0 (default for a
    /// tarball: the reference it names).
    #[arg(value_name = "REF")]
    pub(crate) reference: Option<String>,
    #[command(flatten)]
    pub(crate) package: Package,
    #[command(flatten)]
    pub(crate) remote: RemoteArgs,
}

#[derive(Args)]
pub(crate) struct Inspect {
    /// An image-layout tarball, or an image reference in a registry.
    #[arg(value_name = "SRC")]
    pub(crate) source: String,
    /// Print one JSON object instead of a summary.
    #[arg(long)]
    pub(crate) json: bool,
    #[command(flatten)]
    pub(crate) remote: RemoteArgs,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspect::{render, summarise};
    use std::path::Path;
    use wasmpod_oci::artifact::MEDIA_TYPE_COMPONENT;
    use wasmpod_oci::artifact::MEDIA_TYPE_WASM;
    use wasmpod_oci::layout::read_layout_tar;

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
