//! Manifests and indexes read from a registry, a content store or an image
//! layout: told apart by their content, bounded in size, and the manifest a
//! Wasm node runs chosen from an index.

use oci_spec::image::{Descriptor, ImageIndex, ImageManifest};

/// Largest manifest, index or config the shim and the CLI read.
pub const MAX_DOCUMENT_SIZE: u64 = 4 << 20;

/// A document that cannot be read, or an index with nothing to run.
#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    /// A manifest, index or config is not valid JSON of its kind.
    #[error("invalid {what}: {reason}")]
    Parse {
        /// Which document.
        what: &'static str,
        /// The parser's message.
        reason: String,
    },
    /// An index lists no manifest the shim can run.
    #[error("image index lists no Wasm manifest (platforms: {})", platforms.join(", "))]
    NoWasmManifest {
        /// Platforms the index lists.
        platforms: Vec<String>,
    },
}

/// A manifest or an index, told apart by their content.
#[derive(Debug, Clone)]
pub enum Document {
    /// An image manifest.
    Manifest(Box<ImageManifest>),
    /// An image index (or Docker manifest list).
    Index(Box<ImageIndex>),
}

/// Parses a manifest or index (`mediaType` or, without it, the presence of
/// `manifests`/`layers` decides).
///
/// # Errors
///
/// Oversized or malformed JSON.
pub fn parse_document(bytes: &[u8]) -> Result<Document, DocumentError> {
    if bytes.len() as u64 > MAX_DOCUMENT_SIZE {
        return Err(DocumentError::Parse {
            what: "manifest",
            reason: format!("{} bytes is more than {MAX_DOCUMENT_SIZE}", bytes.len()),
        });
    }
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| DocumentError::Parse {
            what: "manifest",
            reason: e.to_string(),
        })?;
    let media_type = value
        .get("mediaType")
        .and_then(|m| m.as_str())
        .unwrap_or("");
    let is_index = media_type.contains("index")
        || media_type.contains("manifest.list")
        || (media_type.is_empty() && value.get("manifests").is_some());
    if is_index {
        serde_json::from_value(value)
            .map(|i| Document::Index(Box::new(i)))
            .map_err(|e| DocumentError::Parse {
                what: "image index",
                reason: e.to_string(),
            })
    } else {
        serde_json::from_value(value)
            .map(|m| Document::Manifest(Box::new(m)))
            .map_err(|e| DocumentError::Parse {
                what: "image manifest",
                reason: e.to_string(),
            })
    }
}

/// The manifest of an index that a Wasm node runs: the first whose platform
/// is Wasm (`os` starting with `wasi` or architecture `wasm`), else the only
/// one.
///
/// # Errors
///
/// [`DocumentError::NoWasmManifest`] when there is no such manifest.
pub fn choose_manifest(index: &ImageIndex) -> Result<&Descriptor, DocumentError> {
    let is_wasm = |d: &&Descriptor| {
        d.platform().as_ref().is_some_and(|p| {
            p.os().to_string().starts_with("wasi") || p.architecture().to_string() == "wasm"
        })
    };
    if let Some(d) = index.manifests().iter().find(is_wasm) {
        return Ok(d);
    }
    match index.manifests().as_slice() {
        [only] => Ok(only),
        all => Err(DocumentError::NoWasmManifest {
            platforms: all
                .iter()
                .map(|d| match d.platform() {
                    Some(p) => format!("{}/{}", p.os(), p.architecture()),
                    None => "unspecified".to_owned(),
                })
                .collect(),
        }),
    }
}
