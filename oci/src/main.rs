//! `wasmpod`: package WebAssembly for Kubernetes.
//!
//! `wasmpod oci build app.wasm -t REF -o app.tar` writes an OCI image layout
//! (`ctr images import` accepts it) holding the `.wasm` in one tar layer with
//! its entrypoint set. The output is reproducible: the same input gives the
//! same bytes and digests.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use wasmpod_oci::layout::{write_image_tar, Entry, ImageSpec};
use wasmpod_oci::wasm::{classify, WasmKind};

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
    /// OCI images of Wasm programs.
    #[command(subcommand)]
    Oci(Oci),
}

#[derive(Subcommand)]
enum Oci {
    /// Build an OCI image-layout tarball holding a .wasm module or component.
    Build(Build),
}

#[derive(Args)]
struct Build {
    /// The .wasm module or component to package.
    wasm: PathBuf,
    /// Image reference, e.g. registry.example.com/team/app:1.0.
    #[arg(short = 't', long = "tag")]
    reference: String,
    /// Where to write the image-layout tarball.
    #[arg(short = 'o', long = "output")]
    output: PathBuf,
    /// Path of the .wasm inside the image (default: /<file name>).
    #[arg(long)]
    path: Option<String>,
    /// Image platform as OS/ARCH (default: wasip1/wasm for modules,
    /// wasip2/wasm for components).
    #[arg(long)]
    platform: Option<String>,
    /// Environment variables baked into the image (KEY=VALUE), repeatable.
    #[arg(long = "env")]
    env: Vec<String>,
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Oci(Oci::Build(b)) => build(&b),
    }
}

fn build(b: &Build) -> Result<()> {
    let data = std::fs::read(&b.wasm).with_context(|| format!("read {}", b.wasm.display()))?;
    let Some(kind) = classify(&data) else {
        bail!(
            "{} is not a WebAssembly module or component",
            b.wasm.display()
        );
    };
    let name = b
        .wasm
        .file_name()
        .and_then(|n| n.to_str())
        .context("the .wasm path has no file name")?;
    let guest_path = b.path.clone().unwrap_or_else(|| format!("/{name}"));
    let Some(in_layer) = guest_path.strip_prefix('/') else {
        bail!("--path {guest_path:?} must be absolute");
    };
    let (os, arch) = match &b.platform {
        Some(p) => p
            .split_once('/')
            .map(|(o, a)| (o.to_owned(), a.to_owned()))
            .with_context(|| format!("--platform {p:?} is not OS/ARCH"))?,
        None => match kind {
            WasmKind::Module => ("wasip1".into(), "wasm".into()),
            WasmKind::Component => ("wasip2".into(), "wasm".into()),
        },
    };
    let spec = ImageSpec {
        reference: b.reference.clone(),
        entries: vec![Entry::File {
            path: in_layer.to_owned(),
            data,
            mode: 0o755,
        }],
        entrypoint: vec![guest_path.clone()],
        cmd: vec![],
        env: b.env.clone(),
        working_dir: None,
        os,
        architecture: arch,
        annotations: BTreeMap::new(),
    };
    let out = create(&b.output)?;
    let built = write_image_tar(&spec, out).with_context(|| format!("build {}", b.reference))?;
    println!(
        "{} {} ({} bytes, entrypoint {guest_path})",
        b.reference, built.manifest_digest, built.size
    );
    Ok(())
}

fn create(path: &Path) -> Result<std::io::BufWriter<std::fs::File>> {
    let f = std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
    Ok(std::io::BufWriter::new(f))
}
