//! The building blocks of OCI images and artifacts: content-addressed blobs
//! and their descriptors, the canonical JSON every document is written in
//! (sorted keys, so the same input always gives the same digest), and the
//! error of building them.

use std::collections::BTreeMap;
use std::io;

use oci_spec::image::{Descriptor, ImageManifestBuilder, MediaType, ANNOTATION_TITLE};
use oci_spec::OciSpecError;
use sha2::{Digest as _, Sha256};

/// Why an image, an artifact or an image layout could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
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

/// Serializes an OCI image manifest naming `config` and `layers`.
pub(crate) fn manifest_blob(
    config: &Blob,
    layers: &[Blob],
    annotations: &BTreeMap<String, String>,
) -> Result<Blob, BuildError> {
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
pub(crate) fn blob_descriptor(blob: &Blob, title: Option<&str>) -> Result<Descriptor, BuildError> {
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

pub(crate) fn spec_error(what: &'static str) -> impl FnOnce(OciSpecError) -> BuildError {
    move |source| BuildError::Spec { what, source }
}

/// Serializes `value` as compact JSON with all object keys sorted, so that
/// maps (HashMaps inside oci-spec types) serialize deterministically.
pub(crate) fn canonical_json<T: serde::Serialize>(
    what: &'static str,
    value: &T,
) -> Result<Vec<u8>, BuildError> {
    let json_error = |source| BuildError::Json { what, source };
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
pub(crate) fn hex_part(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

pub(crate) fn validate_platform(os: &str, architecture: &str) -> Result<(), BuildError> {
    let ok = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
    };
    if ok(os) && ok(architecture) {
        Ok(())
    } else {
        Err(BuildError::InvalidPlatform {
            os: os.to_owned(),
            architecture: architecture.to_owned(),
            reason: "os and architecture must be non-empty and use only [a-z0-9_-]",
        })
    }
}
