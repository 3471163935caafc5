//! Builds a classic OCI image-layout tar with `wasmpod_oci::layout`.
//!
//! ```text
//! cargo run -p wasmpod-oci --example mkimage -- \
//!     --reference docker.io/wasmpod/busybox:t1 --os linux --arch amd64 \
//!     --file /bin/busybox=bin/busybox:755 --symlink bin/sh=busybox \
//!     --entrypoint /bin/busybox --out busybox.tar
//! ```

use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufWriter;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Parser;
use wasmpod_oci::layout::{write_image_tar, Entry, ImageSpec};

/// Command-line options.
#[derive(Parser)]
struct Args {
    /// Fully qualified image reference.
    #[arg(long)]
    reference: String,
    /// Output tar file.
    #[arg(long)]
    out: PathBuf,
    /// Platform OS.
    #[arg(long, default_value = "linux")]
    os: String,
    /// Platform architecture.
    #[arg(long, default_value = "amd64")]
    arch: String,
    /// `HOST_PATH=IMAGE_PATH[:OCTAL_MODE]` (mode defaults to 644).
    #[arg(long)]
    file: Vec<String>,
    /// `IMAGE_PATH=TARGET`.
    #[arg(long)]
    symlink: Vec<String>,
    /// `IMAGE_PATH[:OCTAL_MODE]` (mode defaults to 755).
    #[arg(long)]
    dir: Vec<String>,
    /// Entrypoint element (repeat for more).
    #[arg(long)]
    entrypoint: Vec<String>,
    /// Cmd element (repeat for more).
    #[arg(long)]
    cmd: Vec<String>,
    /// `KEY=VALUE` environment entry (repeat for more).
    #[arg(long)]
    env: Vec<String>,
    /// Working directory.
    #[arg(long)]
    workdir: Option<String>,
    /// `KEY=VALUE` manifest annotation (repeat for more).
    #[arg(long)]
    annotation: Vec<String>,
}

fn split_mode(spec: &str, default: u32) -> Result<(String, u32)> {
    match spec.rsplit_once(':') {
        Some((path, mode)) => Ok((
            path.to_owned(),
            u32::from_str_radix(mode, 8).with_context(|| format!("bad mode in {spec:?}"))?,
        )),
        None => Ok((spec.to_owned(), default)),
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let mut entries = Vec::new();
    for file in &args.file {
        let Some((host, rest)) = file.split_once('=') else {
            bail!("--file {file:?}: expected HOST_PATH=IMAGE_PATH[:MODE]");
        };
        let (path, mode) = split_mode(rest, 0o644)?;
        let data = std::fs::read(host).with_context(|| format!("reading {host}"))?;
        entries.push(Entry::File { path, data, mode });
    }
    for link in &args.symlink {
        let Some((path, target)) = link.split_once('=') else {
            bail!("--symlink {link:?}: expected IMAGE_PATH=TARGET");
        };
        entries.push(Entry::Symlink {
            path: path.to_owned(),
            target: target.to_owned(),
        });
    }
    for dir in &args.dir {
        let (path, mode) = split_mode(dir, 0o755)?;
        entries.push(Entry::Dir { path, mode });
    }
    let mut annotations = BTreeMap::new();
    for annotation in &args.annotation {
        let Some((key, value)) = annotation.split_once('=') else {
            bail!("--annotation {annotation:?}: expected KEY=VALUE");
        };
        annotations.insert(key.to_owned(), value.to_owned());
    }
    let spec = ImageSpec {
        reference: args.reference,
        entries,
        entrypoint: args.entrypoint,
        cmd: args.cmd,
        env: args.env,
        working_dir: args.workdir,
        os: args.os,
        architecture: args.arch,
        annotations,
    };
    let out =
        File::create(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let built = write_image_tar(&spec, BufWriter::new(out))?;
    println!("manifest {}", built.manifest_digest);
    println!("config {}", built.config_digest);
    for layer in &built.layer_digests {
        println!("layer {layer}");
    }
    println!("size {}", built.size);
    Ok(())
}
