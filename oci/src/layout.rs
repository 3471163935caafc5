//! Writing classic (runnable) OCI images as an OCI image-layout tar stream.
//!
//! [`write_image_tar`] turns an [`ImageSpec`] into a tar archive holding an
//! [OCI image layout](https://github.com/opencontainers/image-spec/blob/main/image-layout.md):
//! `oci-layout`, `index.json` and `blobs/sha256/<hex>` for one uncompressed
//! layer, the image config and the image manifest. The result can be imported
//! with `ctr images import`.
//!
//! The output is reproducible: the same [`ImageSpec`] always yields a
//! byte-identical tar stream and therefore identical digests. Layer entries
//! are sorted by path, every tar header has mtime 0, uid/gid 0 and no
//! user/group names, and every JSON document is serialized with its object
//! keys sorted.

use std::collections::BTreeMap;
use std::io::{self, Write};

use oci_spec::image::{
    Arch, ConfigBuilder, Descriptor, ImageConfigurationBuilder, ImageIndexBuilder,
    ImageManifestBuilder, MediaType, OciLayoutBuilder, Os, PlatformBuilder, RootFsBuilder,
    ANNOTATION_REF_NAME, ANNOTATION_TITLE,
};
use oci_spec::OciSpecError;
use sha2::{Digest as _, Sha256};
use tar::{EntryType, Header};

/// Annotation containerd reads to name an image imported from an archive.
const ANNOTATION_CONTAINERD_IMAGE_NAME: &str = "io.containerd.image.name";

/// Version written to the `oci-layout` file.
const IMAGE_LAYOUT_VERSION: &str = "1.0.0";

/// Mode of directories that are created implicitly as parents of entries.
const IMPLICIT_DIR_MODE: u32 = 0o755;

/// Longest allowed image name (everything before the tag or digest).
const MAX_NAME_LEN: usize = 255;

/// Longest allowed image tag.
const MAX_TAG_LEN: usize = 128;

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

/// Digests and size of an image written by [`write_image_tar`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Built {
    /// Digest of the image manifest, `sha256:<hex>`.
    pub manifest_digest: String,
    /// Digest of the image config, `sha256:<hex>`.
    pub config_digest: String,
    /// Digests of the layers, in order, `sha256:<hex>`. As the layers are
    /// uncompressed these are also the config's `rootfs.diff_ids`.
    pub layer_digests: Vec<String>,
    /// Number of bytes of the tar stream written.
    pub size: u64,
}

/// Errors from [`write_image_tar`].
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// The image reference is not a fully qualified reference.
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference {
        /// The rejected reference.
        reference: String,
        /// Why it was rejected.
        reason: String,
    },
    /// The platform os or architecture is unusable.
    #[error("invalid platform {os:?}/{architecture:?}: {reason}")]
    InvalidPlatform {
        /// The requested operating system.
        os: String,
        /// The requested architecture.
        architecture: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// An entry path is empty, absolute, or contains `..`.
    #[error("invalid layer entry path {path:?}: {reason}")]
    InvalidPath {
        /// The rejected path as given.
        path: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// Two entries name the same path.
    #[error("duplicate layer entry path {path:?}")]
    DuplicatePath {
        /// The normalized path named twice.
        path: String,
    },
    /// An entry lies below a path that is a file or symlink.
    #[error(
        "layer entry {path:?} needs parent directory {parent:?}, but that entry is not a directory"
    )]
    ParentNotDirectory {
        /// The entry whose parent is not a directory.
        path: String,
        /// The parent path.
        parent: String,
    },
    /// An entry's mode has bits outside `0o7777`.
    #[error("invalid mode {mode:#o} for layer entry {path:?}: only permission bits (0o7777) are allowed")]
    InvalidMode {
        /// The entry's path.
        path: String,
        /// The rejected mode.
        mode: u32,
    },
    /// A symlink target is empty or contains a NUL byte.
    #[error("invalid symlink target {target:?} for layer entry {path:?}")]
    InvalidSymlinkTarget {
        /// The symlink's path.
        path: String,
        /// The rejected target.
        target: String,
    },
    /// oci-spec rejected a document while building it.
    #[error("failed to build the image {what}")]
    Spec {
        /// Which document (config, manifest, index, ...).
        what: &'static str,
        /// The underlying error.
        #[source]
        source: OciSpecError,
    },
    /// A document could not be serialized to JSON.
    #[error("failed to serialize the image {what} to json")]
    Json {
        /// Which document (config, manifest, index, ...).
        what: &'static str,
        /// The underlying error.
        #[source]
        source: serde_json::Error,
    },
    /// Writing a tar entry failed.
    #[error("failed to write {path:?} to the {archive} tar")]
    Tar {
        /// Which archive: `layer` or `image layout`.
        archive: &'static str,
        /// Path of the tar entry being written.
        path: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

/// One content-addressed blob of an image: a layer, a config or a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    /// Media type its descriptor carries.
    pub media_type: String,
    /// `sha256:<hex>` of `data`.
    pub digest: String,
    /// The bytes.
    pub data: Vec<u8>,
}

impl Blob {
    /// A blob of `data` with its digest computed.
    pub fn new(media_type: impl Into<String>, data: Vec<u8>) -> Self {
        Blob {
            media_type: media_type.into(),
            digest: sha256_digest(&data),
            data,
        }
    }
}

/// Everything an image or artifact consists of: what a registry stores and
/// what an image layout holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blobs {
    /// The image manifest.
    pub manifest: Blob,
    /// The config the manifest names.
    pub config: Blob,
    /// The layers the manifest names, in order.
    pub layers: Vec<Blob>,
    /// Platform recorded for the manifest in `index.json` (os, architecture).
    pub platform: (String, String),
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
/// Returns a [`LayoutError`] if the reference, platform or an entry is
/// invalid, or if writing to `out` fails.
pub fn write_image_tar<W: Write>(spec: &ImageSpec, out: W) -> Result<Built, LayoutError> {
    validate_reference(&spec.reference)?;
    write_layout_tar(&image_blobs(spec)?, &spec.reference, out)
}

/// The blobs of a classic image: one uncompressed tar layer built from
/// `spec.entries`, its config and its manifest.
///
/// # Errors
///
/// Returns a [`LayoutError`] if the platform or an entry is invalid.
pub fn image_blobs(spec: &ImageSpec) -> Result<Blobs, LayoutError> {
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

/// Serializes an OCI image manifest naming `config` and `layers`.
pub(crate) fn manifest_blob(
    config: &Blob,
    layers: &[Blob],
    annotations: &BTreeMap<String, String>,
) -> Result<Blob, LayoutError> {
    let layer_descriptors = layers
        .iter()
        .map(|l| blob_descriptor(l, None))
        .collect::<Result<Vec<_>, _>>()?;
    let mut manifest = ImageManifestBuilder::default()
        .schema_version(2_u32)
        .media_type(MediaType::ImageManifest)
        .config(blob_descriptor(config, None)?)
        .layers(layer_descriptors)
        .build()
        .map_err(spec_error("manifest"))?;
    if !annotations.is_empty() {
        manifest.set_annotations(Some(annotations.clone().into_iter().collect()));
    }
    Ok(Blob::new(
        MediaType::ImageManifest.to_string(),
        canonical_json("manifest", &manifest)?,
    ))
}

/// The descriptor of a blob, with a title annotation when given.
pub(crate) fn blob_descriptor(blob: &Blob, title: Option<&str>) -> Result<Descriptor, LayoutError> {
    let digest = oci_spec::image::Digest::try_from(blob.digest.as_str())
        .map_err(spec_error("descriptor"))?;
    let mut d = Descriptor::new(
        MediaType::from(blob.media_type.as_str()),
        blob.data.len() as u64,
        digest,
    );
    if let Some(title) = title {
        d.set_annotations(Some(
            [(ANNOTATION_TITLE.to_owned(), title.to_owned())]
                .into_iter()
                .collect(),
        ));
    }
    Ok(d)
}

/// Writes `blobs` as an OCI image layout tar stream whose `index.json` names
/// the manifest as `reference` (both `org.opencontainers.image.ref.name` and
/// containerd's `io.containerd.image.name`), with its platform.
///
/// # Errors
///
/// Returns a [`LayoutError`] if the reference or platform is invalid, or if
/// writing to `out` fails.
pub fn write_layout_tar<W: Write>(
    blobs: &Blobs,
    reference: &str,
    out: W,
) -> Result<Built, LayoutError> {
    validate_reference(reference)?;
    let (os, architecture) = &blobs.platform;
    validate_platform(os, architecture)?;
    let platform = PlatformBuilder::default()
        .os(Os::from(os.as_str()))
        .architecture(Arch::from(architecture.as_str()))
        .build()
        .map_err(spec_error("platform"))?;
    let mut manifest_descriptor = blob_descriptor(&blobs.manifest, None)?;
    manifest_descriptor.set_platform(Some(platform));
    manifest_descriptor.set_annotations(Some(
        [
            (ANNOTATION_REF_NAME.to_owned(), reference.to_owned()),
            (
                ANNOTATION_CONTAINERD_IMAGE_NAME.to_owned(),
                reference.to_owned(),
            ),
        ]
        .into_iter()
        .collect(),
    ));
    let index = ImageIndexBuilder::default()
        .schema_version(2_u32)
        .media_type(MediaType::ImageIndex)
        .manifests(vec![manifest_descriptor])
        .build()
        .map_err(spec_error("index"))?;
    let index = canonical_json("index", &index)?;

    let oci_layout = OciLayoutBuilder::default()
        .image_layout_version(IMAGE_LAYOUT_VERSION)
        .build()
        .map_err(spec_error("oci-layout"))?;
    let oci_layout = canonical_json("oci-layout", &oci_layout)?;

    // Sorted by digest hex; a BTreeMap also drops duplicate blobs.
    let all: BTreeMap<&str, &[u8]> = blobs
        .layers
        .iter()
        .chain([&blobs.config, &blobs.manifest])
        .map(|b| (hex_part(&b.digest), b.data.as_slice()))
        .collect();

    let mut archive = tar::Builder::new(CountingWriter {
        inner: out,
        count: 0,
    });
    let outer = "image layout";
    append_dir(&mut archive, outer, "blobs/", IMPLICIT_DIR_MODE)?;
    append_dir(&mut archive, outer, "blobs/sha256/", IMPLICIT_DIR_MODE)?;
    for (hex, data) in all {
        append_file(
            &mut archive,
            outer,
            &format!("blobs/sha256/{hex}"),
            data,
            0o644,
        )?;
    }
    append_file(&mut archive, outer, "index.json", &index, 0o644)?;
    append_file(&mut archive, outer, "oci-layout", &oci_layout, 0o644)?;
    let mut counted = archive.into_inner().map_err(|source| LayoutError::Tar {
        archive: outer,
        path: "<end of archive>".to_owned(),
        source,
    })?;
    counted.flush().map_err(|source| LayoutError::Tar {
        archive: outer,
        path: "<end of archive>".to_owned(),
        source,
    })?;

    Ok(Built {
        manifest_digest: blobs.manifest.digest.clone(),
        config_digest: blobs.config.digest.clone(),
        layer_digests: blobs.layers.iter().map(|l| l.digest.clone()).collect(),
        size: counted.count,
    })
}

/// Why an image layout could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The tar stream could not be read.
    #[error("read the image layout: {0}")]
    Io(#[from] io::Error),
    /// The layout is incomplete or inconsistent.
    #[error("image layout: {0}")]
    Invalid(String),
}

/// An image read back from an image-layout tar by [`read_layout_tar`].
#[derive(Debug, Clone)]
pub struct LayoutImage {
    /// The name `index.json` gives it (`io.containerd.image.name`, else
    /// `org.opencontainers.image.ref.name`).
    pub reference: Option<String>,
    /// Its manifest, config and layers, each checked against its digest.
    pub blobs: Blobs,
}

/// Reads an OCI image-layout tar holding one image (or an index whose Wasm
/// manifest is chosen as the shim would). Every blob is checked against its
/// digest and size. Holds the whole layout in memory.
///
/// # Errors
///
/// I/O errors, a missing or malformed `index.json`, manifest or config, a
/// missing blob, or a blob whose content does not match its digest.
pub fn read_layout_tar<R: io::Read>(input: R) -> Result<LayoutImage, ReadError> {
    use crate::artifact::{choose_manifest, parse_document, Document};
    let invalid = |m: String| ReadError::Invalid(m);
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut archive = tar::Archive::new(input);
    for entry in archive.entries()? {
        let mut entry = entry?;
        if entry.header().entry_type() != EntryType::Regular {
            continue;
        }
        let path = entry
            .path()?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_owned();
        let mut data = Vec::new();
        io::Read::read_to_end(&mut entry, &mut data)?;
        files.insert(path, data);
    }
    let index = files
        .get("index.json")
        .ok_or_else(|| invalid("no index.json: not an OCI image layout".into()))?;
    let Document::Index(index) = parse_document(index).map_err(|e| invalid(e.to_string()))? else {
        return Err(invalid("index.json is not an image index".into()));
    };
    let blob = |d: &Descriptor| -> Result<Blob, ReadError> {
        let digest = d.digest().to_string();
        let data = files
            .get(&format!("blobs/sha256/{}", hex_part(&digest)))
            .ok_or_else(|| invalid(format!("blob {digest} is missing")))?;
        let blob = Blob::new(d.media_type().to_string(), data.clone());
        if blob.digest != digest || data.len() as u64 != d.size() {
            return Err(invalid(format!(
                "blob {digest} does not match its descriptor (content is {}, {} bytes)",
                blob.digest,
                data.len()
            )));
        }
        Ok(blob)
    };
    let mut top = match index.manifests().as_slice() {
        [one] => one.clone(),
        [] => return Err(invalid("index.json lists no image".into())),
        _ => choose_manifest(&index)
            .map_err(|e| invalid(e.to_string()))?
            .clone(),
    };
    let reference = top.annotations().as_ref().and_then(|a| {
        a.get(ANNOTATION_CONTAINERD_IMAGE_NAME)
            .or_else(|| a.get(ANNOTATION_REF_NAME))
            .cloned()
    });
    let mut manifest_blob = blob(&top)?;
    if let Document::Index(nested) =
        parse_document(&manifest_blob.data).map_err(|e| invalid(e.to_string()))?
    {
        top = choose_manifest(&nested)
            .map_err(|e| invalid(e.to_string()))?
            .clone();
        manifest_blob = blob(&top)?;
    }
    let Document::Manifest(manifest) =
        parse_document(&manifest_blob.data).map_err(|e| invalid(e.to_string()))?
    else {
        return Err(invalid("nested image indexes".into()));
    };
    let config = blob(manifest.config())?;
    let layers = manifest
        .layers()
        .iter()
        .map(blob)
        .collect::<Result<Vec<_>, _>>()?;
    let platform = match top.platform() {
        Some(p) => (p.os().to_string(), p.architecture().to_string()),
        None => {
            let v: serde_json::Value = serde_json::from_slice(&config.data).unwrap_or_default();
            let field = |k: &str| {
                v.get(k)
                    .and_then(|x| x.as_str())
                    .unwrap_or("unknown")
                    .to_owned()
            };
            (field("os"), field("architecture"))
        }
    };
    Ok(LayoutImage {
        reference,
        blobs: Blobs {
            manifest: manifest_blob,
            config,
            layers,
            platform,
        },
    })
}

/// A node of the layer's filesystem tree, keyed by normalized path.
enum Node<'a> {
    File { data: &'a [u8], mode: u32 },
    Dir { mode: u32 },
    Symlink { target: &'a str },
}

/// Validates and normalizes the entries, adding missing parent directories.
fn build_tree(entries: &[Entry]) -> Result<BTreeMap<String, Node<'_>>, LayoutError> {
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
                    return Err(LayoutError::InvalidSymlinkTarget {
                        path: path.clone(),
                        target: target.clone(),
                    });
                }
                (path, Node::Symlink { target })
            }
        };
        let path = normalize_path(raw)?;
        if tree.contains_key(&path) {
            return Err(LayoutError::DuplicatePath { path });
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
                    return Err(LayoutError::ParentNotDirectory {
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
fn check_mode(path: &str, mode: u32) -> Result<(), LayoutError> {
    if mode & !0o7777 != 0 {
        return Err(LayoutError::InvalidMode {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

/// Normalizes a relative entry path: drops empty and `.` components and
/// rejects absolute paths, `..` components and NUL bytes.
fn normalize_path(path: &str) -> Result<String, LayoutError> {
    let invalid = |reason| LayoutError::InvalidPath {
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
fn write_layer(tree: &BTreeMap<String, Node<'_>>) -> Result<Vec<u8>, LayoutError> {
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

/// A tar header with fixed metadata: mtime 0, uid/gid 0, no user/group names.
fn new_header(kind: EntryType, mode: u32, size: u64) -> Header {
    let mut header = Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_size(size);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header
}

fn append_file<W: Write>(
    archive: &mut tar::Builder<W>,
    archive_name: &'static str,
    path: &str,
    data: &[u8],
    mode: u32,
) -> Result<(), LayoutError> {
    let mut header = new_header(EntryType::Regular, mode, data.len() as u64);
    archive
        .append_data(&mut header, path, data)
        .map_err(tar_error(archive_name, path))
}

fn append_dir<W: Write>(
    archive: &mut tar::Builder<W>,
    archive_name: &'static str,
    path: &str,
    mode: u32,
) -> Result<(), LayoutError> {
    let mut header = new_header(EntryType::Directory, mode, 0);
    archive
        .append_data(&mut header, path, io::empty())
        .map_err(tar_error(archive_name, path))
}

fn tar_error(archive: &'static str, path: &str) -> impl FnOnce(io::Error) -> LayoutError {
    let path = path.to_owned();
    move |source| LayoutError::Tar {
        archive,
        path,
        source,
    }
}

pub(crate) fn spec_error(what: &'static str) -> impl FnOnce(OciSpecError) -> LayoutError {
    move |source| LayoutError::Spec { what, source }
}

/// Builds and serializes the image config for `spec` with one layer.
fn image_config(spec: &ImageSpec, layer_digest: &str) -> Result<Vec<u8>, LayoutError> {
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

/// Serializes `value` as compact JSON with all object keys sorted, so that
/// maps (HashMaps inside oci-spec types) serialize deterministically.
pub(crate) fn canonical_json<T: serde::Serialize>(
    what: &'static str,
    value: &T,
) -> Result<Vec<u8>, LayoutError> {
    let json_error = |source| LayoutError::Json { what, source };
    let mut value = serde_json::to_value(value).map_err(json_error)?;
    sort_keys(&mut value);
    serde_json::to_vec(&value).map_err(json_error)
}

fn sort_keys(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            map.sort_keys();
            for (_, child) in map.iter_mut() {
                sort_keys(child);
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(sort_keys),
        _ => {}
    }
}

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// The hex part of a `sha256:<hex>` digest.
fn hex_part(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

/// Counts the bytes written through it.
struct CountingWriter<W> {
    inner: W,
    count: u64,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.inner.write(buf)?;
        self.count += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

pub(crate) fn validate_platform(os: &str, architecture: &str) -> Result<(), LayoutError> {
    let ok = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
    };
    if ok(os) && ok(architecture) {
        Ok(())
    } else {
        Err(LayoutError::InvalidPlatform {
            os: os.to_owned(),
            architecture: architecture.to_owned(),
            reason: "os and architecture must be non-empty and use only [a-z0-9_-]",
        })
    }
}

/// Checks that `reference` is fully qualified: `domain/path[:tag][@digest]`
/// with an explicit registry domain and at least one of tag and digest.
pub(crate) fn validate_reference(reference: &str) -> Result<(), LayoutError> {
    check_reference(reference).map_err(|reason| LayoutError::InvalidReference {
        reference: reference.to_owned(),
        reason,
    })
}

fn check_reference(reference: &str) -> Result<(), String> {
    let (rest, digest) = match reference.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (reference, None),
    };
    if let Some(digest) = digest {
        let (algorithm, hex) = digest
            .split_once(':')
            .ok_or_else(|| format!("digest {digest:?} must be 'sha256:<hex>'"))?;
        if algorithm != "sha256"
            || hex.len() != 64
            || !hex.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f'))
        {
            return Err(format!(
                "digest {digest:?} must be 'sha256:' and 64 lowercase hex digits"
            ));
        }
    }
    // A ':' after the last '/' starts the tag; earlier ones belong to a port.
    let last_slash = rest.rfind('/').unwrap_or(0);
    let (name, tag) = match rest[last_slash..].find(':') {
        Some(colon) => (
            &rest[..last_slash + colon],
            Some(&rest[last_slash + colon + 1..]),
        ),
        None => (rest, None),
    };
    if tag.is_none() && digest.is_none() {
        return Err("a tag or digest is required (e.g. ':latest')".to_owned());
    }
    if let Some(tag) = tag {
        check_tag(tag)?;
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!("name is longer than {MAX_NAME_LEN} characters"));
    }
    let (domain, path) = name.split_once('/').ok_or(
        "a registry domain and repository path are required (e.g. 'docker.io/library/name')",
    )?;
    if !(domain.contains('.') || domain.contains(':') || domain == "localhost") {
        return Err(format!(
            "{domain:?} is not a registry domain (it needs a '.', a ':port' or to be 'localhost')"
        ));
    }
    check_domain(domain)?;
    for component in path.split('/') {
        check_path_component(component)?;
    }
    Ok(())
}

fn check_tag(tag: &str) -> Result<(), String> {
    let mut chars = tag.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if first_ok && rest_ok && tag.len() <= MAX_TAG_LEN {
        Ok(())
    } else {
        Err(format!(
            "tag {tag:?} must match [A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}}"
        ))
    }
}

fn check_domain(domain: &str) -> Result<(), String> {
    let (host, port) = match domain.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (domain, None),
    };
    if let Some(port) = port {
        if port.is_empty() || port.len() > 5 || !port.chars().all(|c| c.is_ascii_digit()) {
            return Err(format!(
                "port {port:?} of domain {domain:?} is not a number"
            ));
        }
    }
    let label_ok = |label: &str| {
        !label.is_empty()
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    if host.split('.').all(label_ok) {
        Ok(())
    } else {
        Err(format!("domain {domain:?} is not a valid host name"))
    }
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn check_path_component(component: &str) -> Result<(), String> {
    let invalid = || {
        format!(
            "repository path component {component:?} must be lowercase letters and digits \
             separated by '.', '_', '__' or '-'"
        )
    };
    let bytes = component.as_bytes();
    let is_alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !bytes.first().is_some_and(is_alnum) || !bytes.last().is_some_and(is_alnum) {
        return Err(invalid());
    }
    let mut i = 0;
    while i < bytes.len() {
        if is_alnum(&bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !is_alnum(&bytes[i]) {
            i += 1;
        }
        let separator = &component[start..i];
        let ok = matches!(separator, "." | "_" | "__") || separator.bytes().all(|b| b == b'-');
        if !ok {
            return Err(invalid());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn spec() -> ImageSpec {
        ImageSpec {
            reference: "docker.io/wasmpod/probe:p1".to_owned(),
            entries: vec![
                Entry::File {
                    path: "usr/bin/probe.wasm".to_owned(),
                    data: b"\0asm\x01\0\0\0".to_vec(),
                    mode: 0o755,
                },
                Entry::Symlink {
                    path: "bin".to_owned(),
                    target: "usr/bin".to_owned(),
                },
                Entry::Dir {
                    path: "./data/".to_owned(),
                    mode: 0o700,
                },
                Entry::File {
                    path: "data/deep/er/file.txt".to_owned(),
                    data: b"hello\n".to_vec(),
                    mode: 0o644,
                },
            ],
            entrypoint: vec!["/usr/bin/probe.wasm".to_owned()],
            cmd: vec!["args".to_owned()],
            env: vec!["A=1".to_owned(), "B=2".to_owned()],
            working_dir: Some("/data".to_owned()),
            os: "wasip1".to_owned(),
            architecture: "wasm".to_owned(),
            annotations: [
                ("z.last".to_owned(), "1".to_owned()),
                ("a.first".to_owned(), "2".to_owned()),
                ("m.middle".to_owned(), "3".to_owned()),
            ]
            .into_iter()
            .collect(),
        }
    }

    fn build(spec: &ImageSpec) -> (Built, Vec<u8>) {
        let mut out = Vec::new();
        let built = write_image_tar(spec, &mut out).expect("write image");
        (built, out)
    }

    /// Reads every regular file of a tar into a path -> contents map.
    fn files(archive: &[u8]) -> BTreeMap<String, Vec<u8>> {
        let mut files = BTreeMap::new();
        let mut archive = tar::Archive::new(archive);
        for entry in archive.entries().expect("entries") {
            let mut entry = entry.expect("entry");
            if entry.header().entry_type() != EntryType::Regular {
                continue;
            }
            let path = entry.path().expect("path").to_string_lossy().into_owned();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).expect("read");
            files.insert(path, data);
        }
        files
    }

    fn blob<'a>(files: &'a BTreeMap<String, Vec<u8>>, digest: &str) -> &'a [u8] {
        &files[&format!("blobs/sha256/{}", hex_part(digest))]
    }

    #[test]
    fn reproducible() {
        let (first, first_bytes) = build(&spec());
        let (second, second_bytes) = build(&spec());
        assert_eq!(first, second);
        assert_eq!(first_bytes, second_bytes);
        assert_eq!(first.size, first_bytes.len() as u64);
        // Input order of entries does not matter.
        let mut reversed = spec();
        reversed.entries.reverse();
        let (third, third_bytes) = build(&reversed);
        assert_eq!(first, third);
        assert_eq!(first_bytes, third_bytes);
    }

    #[test]
    fn digests_match_content() {
        let (built, bytes) = build(&spec());
        let files = files(&bytes);
        for digest in [&built.manifest_digest, &built.config_digest]
            .into_iter()
            .chain(&built.layer_digests)
        {
            assert_eq!(&sha256_digest(blob(&files, digest)), digest);
        }
        assert_eq!(files.len(), 5, "{:?}", files.keys().collect::<Vec<_>>());

        let layout: serde_json::Value = serde_json::from_slice(&files["oci-layout"]).expect("json");
        assert_eq!(layout["imageLayoutVersion"], "1.0.0");

        let index: serde_json::Value = serde_json::from_slice(&files["index.json"]).expect("json");
        let desc = &index["manifests"][0];
        assert_eq!(index["schemaVersion"], 2);
        assert_eq!(desc["digest"], built.manifest_digest.as_str());
        assert_eq!(
            desc["mediaType"],
            "application/vnd.oci.image.manifest.v1+json"
        );
        assert_eq!(desc["platform"]["os"], "wasip1");
        assert_eq!(desc["platform"]["architecture"], "wasm");
        let reference = "docker.io/wasmpod/probe:p1";
        assert_eq!(desc["annotations"][ANNOTATION_REF_NAME], reference);
        assert_eq!(
            desc["annotations"][ANNOTATION_CONTAINERD_IMAGE_NAME],
            reference
        );

        let manifest_bytes = blob(&files, &built.manifest_digest);
        assert_eq!(desc["size"], manifest_bytes.len());
        let manifest: serde_json::Value = serde_json::from_slice(manifest_bytes).expect("json");
        assert_eq!(manifest["config"]["digest"], built.config_digest.as_str());
        assert_eq!(
            manifest["config"]["mediaType"],
            "application/vnd.oci.image.config.v1+json"
        );
        assert_eq!(
            manifest["layers"][0]["digest"],
            built.layer_digests[0].as_str()
        );
        assert_eq!(
            manifest["layers"][0]["mediaType"],
            "application/vnd.oci.image.layer.v1.tar"
        );
        assert_eq!(manifest["annotations"]["m.middle"], "3");

        let config: serde_json::Value =
            serde_json::from_slice(blob(&files, &built.config_digest)).expect("json");
        assert_eq!(config["rootfs"]["type"], "layers");
        assert_eq!(
            config["rootfs"]["diff_ids"][0],
            built.layer_digests[0].as_str()
        );
        assert_eq!(config["os"], "wasip1");
        assert_eq!(config["architecture"], "wasm");
        assert_eq!(config["config"]["Entrypoint"][0], "/usr/bin/probe.wasm");
        assert_eq!(config["config"]["Cmd"][0], "args");
        assert_eq!(config["config"]["Env"][1], "B=2");
        assert_eq!(config["config"]["WorkingDir"], "/data");
    }

    #[test]
    fn layer_has_sorted_entries_and_parent_dirs() {
        let (built, bytes) = build(&spec());
        let files = files(&bytes);
        let layer = blob(&files, &built.layer_digests[0]);
        let mut archive = tar::Archive::new(layer);
        let mut seen = Vec::new();
        for entry in archive.entries().expect("entries") {
            let entry = entry.expect("entry");
            let header = entry.header();
            assert_eq!(header.mtime().expect("mtime"), 0);
            assert_eq!(header.uid().expect("uid"), 0);
            assert_eq!(header.gid().expect("gid"), 0);
            assert_eq!(header.username().expect("username"), Some(""));
            assert_eq!(header.groupname().expect("groupname"), Some(""));
            let path = entry.path().expect("path").to_string_lossy().into_owned();
            let mode = header.mode().expect("mode");
            seen.push((path, header.entry_type(), mode));
        }
        let expected = [
            ("bin", EntryType::Symlink, 0o777),
            ("data/", EntryType::Directory, 0o700),
            ("data/deep/", EntryType::Directory, 0o755),
            ("data/deep/er/", EntryType::Directory, 0o755),
            ("data/deep/er/file.txt", EntryType::Regular, 0o644),
            ("usr/", EntryType::Directory, 0o755),
            ("usr/bin/", EntryType::Directory, 0o755),
            ("usr/bin/probe.wasm", EntryType::Regular, 0o755),
        ];
        let expected: Vec<_> = expected
            .iter()
            .map(|(p, t, m)| (p.to_string(), *t, *m))
            .collect();
        assert_eq!(seen, expected);
    }

    #[test]
    fn bad_paths_rejected() {
        for bad in ["", "/etc/passwd", "a/../b", "..", "./", "a/\0b"] {
            let mut spec = spec();
            spec.entries.push(Entry::File {
                path: bad.to_owned(),
                data: Vec::new(),
                mode: 0o644,
            });
            let err = write_image_tar(&spec, Vec::new()).expect_err(bad);
            assert!(
                matches!(&err, LayoutError::InvalidPath { path, .. } if path == bad),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn conflicting_entries_rejected() {
        let mut dup = spec();
        dup.entries.push(Entry::Dir {
            path: "usr/bin/probe.wasm/".to_owned(),
            mode: 0o755,
        });
        assert!(matches!(
            write_image_tar(&dup, Vec::new()),
            Err(LayoutError::DuplicatePath { path }) if path == "usr/bin/probe.wasm"
        ));

        let mut under_file = spec();
        under_file.entries.push(Entry::Dir {
            path: "usr/bin/probe.wasm/x".to_owned(),
            mode: 0o755,
        });
        assert!(matches!(
            write_image_tar(&under_file, Vec::new()),
            Err(LayoutError::ParentNotDirectory { parent, .. }) if parent == "usr/bin/probe.wasm"
        ));

        let mut bad_mode = spec();
        bad_mode.entries.push(Entry::Dir {
            path: "x".to_owned(),
            mode: 0o40755,
        });
        assert!(matches!(
            write_image_tar(&bad_mode, Vec::new()),
            Err(LayoutError::InvalidMode { .. })
        ));
    }

    #[test]
    fn references_validated() {
        for good in [
            "docker.io/wasmpod/probe:p1",
            "localhost/probe:latest",
            "localhost:5000/a/b-c/d__e:v1.2_3",
            "ghcr.io/x/y@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "ghcr.io/x/y:t@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ] {
            assert!(
                check_reference(good).is_ok(),
                "{good}: {:?}",
                check_reference(good)
            );
        }
        for bad in [
            "",
            "probe:p1",
            "wasmpod/probe:p1",
            "docker.io/wasmpod/probe",
            "docker.io/WasmPod/probe:p1",
            "docker.io/wasmpod/probe:",
            "docker.io/wasmpod/probe:-x",
            "docker.io//probe:p1",
            "docker.io/a/b:c@sha256:abc",
            "exa_mple.com/a:b",
            "localhost:port/a:b",
        ] {
            let mut spec = spec();
            spec.reference = bad.to_owned();
            let err = write_image_tar(&spec, Vec::new()).expect_err(bad);
            assert!(
                matches!(err, LayoutError::InvalidReference { .. }),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn layouts_read_back_and_corruption_is_caught() {
        let (built, bytes) = build(&spec());
        let image = read_layout_tar(bytes.as_slice()).expect("read back");
        assert_eq!(
            image.reference.as_deref(),
            Some("docker.io/wasmpod/probe:p1")
        );
        assert_eq!(image.blobs, image_blobs(&spec()).expect("blobs"));
        assert_eq!(image.blobs.manifest.digest, built.manifest_digest);
        assert_eq!(
            image.blobs.platform,
            ("wasip1".to_owned(), "wasm".to_owned())
        );

        // Flip one byte of the layer blob: its digest no longer matches.
        let mut files = files(&bytes);
        let layer = format!("blobs/sha256/{}", hex_part(&built.layer_digests[0]));
        let last = files[&layer].len() - 1;
        files.get_mut(&layer).expect("layer")[last] ^= 0xff;
        let mut corrupt = tar::Builder::new(Vec::new());
        for (path, data) in &files {
            append_file(&mut corrupt, "test", path, data, 0o644).expect("append");
        }
        let corrupt = corrupt.into_inner().expect("tar");
        let err = read_layout_tar(corrupt.as_slice()).unwrap_err().to_string();
        assert!(
            err.contains(&built.layer_digests[0]) && err.contains("does not match"),
            "{err}"
        );

        // Not a layout at all.
        let err = read_layout_tar(&b""[..]).unwrap_err().to_string();
        assert!(err.contains("index.json"), "{err}");
    }
}
