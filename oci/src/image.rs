//! Classic (runnable) OCI images: one uncompressed tar layer built from a
//! list of entries, its image config and manifest, written as an image
//! layout that `ctr images import` takes.
//!
//! The output is reproducible: the same [`ImageSpec`] always yields a
//! byte-identical tar stream and therefore identical digests. Layer entries
//! are sorted by path, and every JSON document is serialized with its object
//! keys sorted.

use std::collections::BTreeMap;
use std::io::Write;

use oci_spec::image::{
    Arch, ConfigBuilder, ImageConfigurationBuilder, MediaType, Os, RootFsBuilder,
};
use tar::EntryType;

use crate::archive::{append_dir, append_file, new_header, tar_error, IMPLICIT_DIR_MODE};
use crate::blob::{
    canonical_json, manifest_blob, spec_error, validate_platform, Blob, Blobs, BuildError,
};
use crate::layout::{write_layout_tar, Built};
use crate::reference::validate_reference;

/// One entry of an image's filesystem layer.
///
/// Paths are relative to the root of the image filesystem (no leading `/`)
/// and must not contain `..` components. Parent directories that are not
/// listed explicitly are created with mode `0755`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A regular file with the given contents and permission bits.
    File {
        /// Path of the file inside the image.
        path: String,
        /// Contents of the file.
        data: Vec<u8>,
        /// Permission bits (at most `0o7777`).
        mode: u32,
    },
    /// A directory with the given permission bits.
    Dir {
        /// Path of the directory inside the image.
        path: String,
        /// Permission bits (at most `0o7777`).
        mode: u32,
    },
    /// A symbolic link pointing at `target` (which may be absolute).
    Symlink {
        /// Path of the link inside the image.
        path: String,
        /// What the link points at.
        target: String,
    },
}

/// What to put in a classic (runnable) OCI image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSpec {
    /// Fully qualified image reference, e.g. `docker.io/wasmpod/probe:p1`:
    /// a registry domain, a repository path, and a tag and/or digest.
    pub reference: String,
    /// The contents of the single filesystem layer.
    pub entries: Vec<Entry>,
    /// `config.Entrypoint` of the image config (omitted when empty).
    pub entrypoint: Vec<String>,
    /// `config.Cmd` of the image config (omitted when empty).
    pub cmd: Vec<String>,
    /// `config.Env` of the image config, as `KEY=VALUE` (omitted when empty).
    pub env: Vec<String>,
    /// `config.WorkingDir` of the image config.
    pub working_dir: Option<String>,
    /// Platform operating system, e.g. `linux` or `wasip1`.
    pub os: String,
    /// Platform architecture, e.g. `amd64` or `wasm`.
    pub architecture: String,
    /// Annotations of the image manifest.
    pub annotations: BTreeMap<String, String>,
}

/// Writes an OCI image-layout (index.json, oci-layout, blobs/sha256/...) as a tar stream.
///
/// The image has exactly one uncompressed layer
/// (`application/vnd.oci.image.layer.v1.tar`) built from `spec.entries`.
/// `index.json` names the manifest with both the
/// `org.opencontainers.image.ref.name` and `io.containerd.image.name`
/// annotations set to the full `spec.reference`, and records its platform.
///
/// # Errors
///
/// Returns a [`BuildError`] if the reference, platform or an entry is
/// invalid, or if writing to `out` fails.
pub fn write_image_tar<W: Write>(spec: &ImageSpec, out: W) -> Result<Built, BuildError> {
    validate_reference(&spec.reference)?;
    write_layout_tar(&image_blobs(spec)?, &spec.reference, out)
}

/// The blobs of a classic image: one uncompressed tar layer built from
/// `spec.entries`, its config and its manifest.
///
/// # Errors
///
/// Returns a [`BuildError`] if the platform or an entry is invalid.
pub fn image_blobs(spec: &ImageSpec) -> Result<Blobs, BuildError> {
    validate_platform(&spec.os, &spec.architecture)?;
    let tree = build_tree(&spec.entries)?;
    let layer = Blob::new(MediaType::ImageLayer.to_string(), write_layer(&tree)?);
    let config = Blob::new(
        MediaType::ImageConfig.to_string(),
        image_config(spec, &layer.digest)?,
    );
    let manifest = manifest_blob(&config, std::slice::from_ref(&layer), &spec.annotations)?;
    Ok(Blobs {
        manifest,
        config,
        layers: vec![layer],
        platform: (spec.os.clone(), spec.architecture.clone()),
    })
}

/// A node of the layer's filesystem tree, keyed by normalized path.
enum Node<'a> {
    File { data: &'a [u8], mode: u32 },
    Dir { mode: u32 },
    Symlink { target: &'a str },
}

/// Validates and normalizes the entries, adding missing parent directories.
fn build_tree(entries: &[Entry]) -> Result<BTreeMap<String, Node<'_>>, BuildError> {
    let mut tree = BTreeMap::new();
    for entry in entries {
        let (raw, node) = match entry {
            Entry::File { path, data, mode } => {
                check_mode(path, *mode)?;
                (path, Node::File { data, mode: *mode })
            }
            Entry::Dir { path, mode } => {
                check_mode(path, *mode)?;
                (path, Node::Dir { mode: *mode })
            }
            Entry::Symlink { path, target } => {
                if target.is_empty() || target.contains('\0') {
                    return Err(BuildError::InvalidSymlinkTarget {
                        path: path.clone(),
                        target: target.clone(),
                    });
                }
                (path, Node::Symlink { target })
            }
        };
        let path = normalize_path(raw)?;
        if tree.contains_key(&path) {
            return Err(BuildError::DuplicatePath { path });
        }
        tree.insert(path, node);
    }

    let paths: Vec<String> = tree.keys().cloned().collect();
    for path in paths {
        let mut end = 0;
        while let Some(slash) = path[end..].find('/') {
            end += slash;
            let parent = &path[..end];
            match tree.get(parent) {
                None => {
                    tree.insert(
                        parent.to_owned(),
                        Node::Dir {
                            mode: IMPLICIT_DIR_MODE,
                        },
                    );
                }
                Some(Node::Dir { .. }) => {}
                Some(Node::File { .. } | Node::Symlink { .. }) => {
                    return Err(BuildError::ParentNotDirectory {
                        path: path.clone(),
                        parent: parent.to_owned(),
                    });
                }
            }
            end += 1;
        }
    }
    Ok(tree)
}

/// Rejects modes with bits other than permission, setuid/setgid and sticky bits.
fn check_mode(path: &str, mode: u32) -> Result<(), BuildError> {
    if mode & !0o7777 != 0 {
        return Err(BuildError::InvalidMode {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

/// Normalizes a relative entry path: drops empty and `.` components and
/// rejects absolute paths, `..` components and NUL bytes.
fn normalize_path(path: &str) -> Result<String, BuildError> {
    let invalid = |reason| BuildError::InvalidPath {
        path: path.to_owned(),
        reason,
    };
    if path.is_empty() {
        return Err(invalid("path is empty"));
    }
    if path.starts_with('/') {
        return Err(invalid("path must be relative (no leading '/')"));
    }
    if path.contains('\0') {
        return Err(invalid("path contains a nul byte"));
    }
    let mut components = Vec::new();
    for component in path.split('/') {
        match component {
            "" | "." => {}
            ".." => return Err(invalid("path must not contain '..'")),
            name => components.push(name),
        }
    }
    if components.is_empty() {
        return Err(invalid("path names the image root"));
    }
    Ok(components.join("/"))
}

/// Writes the layer tar (in memory) from the normalized tree.
fn write_layer(tree: &BTreeMap<String, Node<'_>>) -> Result<Vec<u8>, BuildError> {
    let archive_name = "layer";
    let mut archive = tar::Builder::new(Vec::new());
    for (path, node) in tree {
        match node {
            Node::File { data, mode } => {
                append_file(&mut archive, archive_name, path, data, *mode)?
            }
            Node::Dir { mode } => {
                append_dir(&mut archive, archive_name, &format!("{path}/"), *mode)?
            }
            Node::Symlink { target } => {
                let mut header = new_header(EntryType::Symlink, 0o777, 0);
                archive
                    .append_link(&mut header, path, target)
                    .map_err(tar_error(archive_name, path))?;
            }
        }
    }
    archive
        .into_inner()
        .map_err(tar_error(archive_name, "<end of archive>"))
}

/// Builds and serializes the image config for `spec` with one layer.
fn image_config(spec: &ImageSpec, layer_digest: &str) -> Result<Vec<u8>, BuildError> {
    let mut config = ConfigBuilder::default();
    if !spec.entrypoint.is_empty() {
        config = config.entrypoint(spec.entrypoint.clone());
    }
    if !spec.cmd.is_empty() {
        config = config.cmd(spec.cmd.clone());
    }
    if !spec.env.is_empty() {
        config = config.env(spec.env.clone());
    }
    if let Some(dir) = &spec.working_dir {
        config = config.working_dir(dir.clone());
    }
    let config = config.build().map_err(spec_error("config"))?;
    let rootfs = RootFsBuilder::default()
        .typ("layers")
        .diff_ids(vec![layer_digest.to_owned()])
        .build()
        .map_err(spec_error("config rootfs"))?;
    let image_config = ImageConfigurationBuilder::default()
        .os(Os::from(spec.os.as_str()))
        .architecture(Arch::from(spec.architecture.as_str()))
        .config(config)
        .rootfs(rootfs)
        .build()
        .map_err(spec_error("config"))?;
    canonical_json("config", &image_config)
}
