//! `make image`: the installer image the Helm chart's DaemonSet runs, built
//! with wasmpod's own image code (no Docker). It holds `/wasmpod-node` with
//! the shared libraries it links (from this build machine, as `ldd` lists
//! them), and `/opt/wasmpod/containerd-shim-wasmpod-v1` with its `.sha256`,
//! which the installer verifies before copying the shim to the node.
//!
//! ```text
//! wasmpod-node-image --installer target/release/wasmpod-node \
//!     --shim target/release/containerd-shim-wasmpod-v1 \
//!     --reference ghcr.io/wasmpod/wasmpod-node:0.1.0 --out target/image/wasmpod-node.tar
//! ```

use std::collections::BTreeMap;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::Parser;
use sha2::{Digest, Sha256};
use wasmpod_oci::image::{write_image_tar, Entry, ImageSpec};

#[derive(Parser)]
#[command(about = "Build the wasmpod node installer image (an OCI image-layout tar)")]
struct Args {
    /// The wasmpod-node binary.
    #[arg(long)]
    installer: PathBuf,
    /// The shim binary the installer puts on nodes.
    #[arg(long)]
    shim: PathBuf,
    /// Image reference.
    #[arg(long)]
    reference: String,
    /// Output tar.
    #[arg(long)]
    out: PathBuf,
}

/// The shared libraries `binary` loads, as absolute paths (`ldd`).
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("run ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        if text.contains("not a dynamic executable") {
            return Ok(Vec::new());
        }
        bail!(
            "ldd {}: {}",
            binary.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut libs = Vec::new();
    for line in text.lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
        // "/lib64/ld-linux-x86-64.so.2 (0x...)"; the vdso has no file.
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(p));
        }
    }
    Ok(libs)
}

fn file(host: &Path, path: &str, mode: u32) -> Result<Entry> {
    let data = std::fs::read(host).with_context(|| format!("read {}", host.display()))?;
    Ok(Entry::File {
        path: path.to_owned(),
        data,
        mode,
    })
}

fn main() -> Result<()> {
    let a = Args::parse();
    let mut entries = vec![
        file(&a.installer, "wasmpod-node", 0o755)?,
        file(&a.shim, "opt/wasmpod/containerd-shim-wasmpod-v1", 0o755)?,
        Entry::Dir {
            path: "tmp".into(),
            mode: 0o1777,
        },
    ];
    let shim = std::fs::read(&a.shim).with_context(|| format!("read {}", a.shim.display()))?;
    entries.push(Entry::File {
        path: "opt/wasmpod/containerd-shim-wasmpod-v1.sha256".into(),
        data: format!(
            "{}  containerd-shim-wasmpod-v1\n",
            hex::encode(Sha256::digest(&shim))
        )
        .into_bytes(),
        mode: 0o644,
    });
    for lib in shared_libraries(&a.installer)? {
        let path = lib.to_string_lossy().trim_start_matches('/').to_owned();
        entries.push(file(&lib, &path, 0o755)?);
    }
    let spec = ImageSpec {
        reference: a.reference.clone(),
        entries,
        entrypoint: vec!["/wasmpod-node".into()],
        cmd: vec!["--help".into()],
        env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
        working_dir: None,
        os: "linux".into(),
        architecture: "amd64".into(),
        annotations: BTreeMap::from([(
            "org.opencontainers.image.description".to_owned(),
            "wasmpod node installer: puts containerd-shim-wasmpod-v1 on a node and registers it"
                .to_owned(),
        )]),
    };
    if let Some(dir) = a.out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let out =
        std::fs::File::create(&a.out).with_context(|| format!("create {}", a.out.display()))?;
    let built = write_image_tar(&spec, BufWriter::new(out))?;
    println!(
        "{} {} ({} bytes) -> {}",
        a.reference,
        built.manifest_digest,
        built.size,
        a.out.display()
    );
    Ok(())
}
