//! Wasm artifacts read straight from containerd's content store.
//!
//! When a Wasm container's entry point is not a file of its rootfs, its image
//! may be a Wasm OCI artifact: layers of raw `.wasm` that containerd stored
//! but did not unpack. The shim then asks containerd (over its gRPC socket,
//! the `-address` it was started with, in the container's namespace) for
//! container → image → manifest (through an index if needed) → layers,
//! chooses the layer by the rule in [`wasmpod_oci::artifact`], and streams it
//! into a file of the bundle for the runner, checking its digest and size as
//! it goes: memory stays bounded by one gRPC chunk whatever the layer size.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use containerd_client::services::v1::{
    containers_client::ContainersClient, content_client::ContentClient,
    images_client::ImagesClient, GetContainerRequest, GetImageRequest, ReadContentRequest,
};
use containerd_client::with_namespace;
use oci_spec::image::{Descriptor, ImageManifest};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;
use tonic::transport::Channel;
use tonic::Request;
use wasmpod_oci::artifact::{self, select_layer};
use wasmpod_oci::document::{
    choose_manifest, parse_document, Document, DocumentError, MAX_DOCUMENT_SIZE,
};

use crate::error::{Error, Result};

/// Talking to containerd failed.
#[derive(Debug, thiserror::Error)]
pub enum ContainerdError {
    #[error("no answer in {CALL_TIMEOUT:?}")]
    TimedOut,
    #[error("{message}")]
    Connect {
        message: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("{}", .0.message())]
    Status(#[source] tonic::Status),
}

/// Why an artifact's layer cannot be run.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("image not found in containerd: {0}")]
    ImageNotFound(#[source] ContainerdError),
    #[error("the image record has no target")]
    NoTarget,
    #[error("read {digest}: {source}")]
    Read {
        digest: String,
        #[source]
        source: BlobError,
    },
    #[error("{digest}: {source}")]
    Document {
        digest: String,
        #[source]
        source: DocumentError,
    },
    #[error("{digest}: nested image index")]
    NestedIndex { digest: String },
    #[error(transparent)]
    Choose(artifact::ArtifactError),
    #[error("layer {digest}: {source}")]
    Layer {
        digest: String,
        #[source]
        source: BlobError,
    },
}

/// Why copying a blob out of the content store failed.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error(transparent)]
    Containerd(#[from] ContainerdError),
    #[error("more than {0} bytes")]
    TooLarge(u64),
    #[error("content ({total} bytes, {got}) does not match the manifest{}", size.map(|s| format!(" ({s} bytes)")).unwrap_or_default())]
    Mismatch {
        total: u64,
        got: String,
        size: Option<u64>,
    },
    #[error("write: {0}")]
    Output(#[source] std::io::Error),
    #[error("write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Spec annotation containerd's CRI sets to the image a container runs.
const CRI_IMAGE_NAME_ANNOTATION: &str = "io.kubernetes.cri.image-name";

/// How long talking to containerd may take, apart from streaming the layer.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A Wasm layer written out for a runner.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The file in the bundle holding the layer.
    pub path: PathBuf,
    /// How messages name it: `IMAGE layer TITLE (DIGEST)`.
    pub name: String,
}

/// What the shim needs to reach containerd.
#[derive(Debug, Clone)]
pub struct Containerd {
    /// containerd's gRPC socket.
    pub address: String,
    /// The namespace of this shim's containers.
    pub namespace: String,
}

impl Containerd {
    /// If container `id`'s image is a Wasm artifact, writes the layer it
    /// runs into `dir` and returns it; `Ok(None)` when the image has no Wasm
    /// layer (or the container has no image), so the caller reports the
    /// missing entry point as usual.
    pub async fn fetch_wasm_layer(
        &self,
        id: &str,
        annotations: &HashMap<String, String>,
        arg0: Option<&str>,
        dir: &Path,
    ) -> Result<Option<Fetched>> {
        let fail = |image: &str, source: ArtifactError| Error::Artifact {
            id: id.to_owned(),
            image: image.to_owned(),
            source,
        };
        let path = self
            .address
            .strip_prefix("unix://")
            .unwrap_or(&self.address);
        let rpc = |what: &str, source: ContainerdError| Error::Containerd {
            id: id.to_owned(),
            what: what.to_owned(),
            source,
        };
        let channel =
            match tokio::time::timeout(CALL_TIMEOUT, containerd_client::connect(path)).await {
                Err(_) => {
                    return Err(rpc(
                        &format!("connect to {path}"),
                        ContainerdError::TimedOut,
                    ))
                }
                Ok(Err(e)) => {
                    let message = format!("{e}: {}", source_chain(&e));
                    let source = ContainerdError::Connect { message, source: e };
                    return Err(rpc(&format!("connect to {path}"), source));
                }
                Ok(Ok(c)) => c,
            };
        let ns = self.namespace.as_str();

        let container = call(ContainersClient::new(channel.clone()).get(with_namespace!(
            GetContainerRequest { id: id.to_owned() },
            ns
        )))
        .await
        .map_err(|e| rpc("get container", e))?
        .container
        .unwrap_or_default();
        let image = if container.image.is_empty() {
            match annotations.get(CRI_IMAGE_NAME_ANNOTATION) {
                Some(name) => name.clone(),
                None => return Ok(None),
            }
        } else {
            container.image
        };
        let target = call(ImagesClient::new(channel.clone()).get(with_namespace!(
            GetImageRequest {
                name: image.clone()
            },
            ns
        )))
        .await
        .map_err(|e| fail(&image, ArtifactError::ImageNotFound(e)))?
        .image
        .and_then(|i| i.target)
        .ok_or_else(|| fail(&image, ArtifactError::NoTarget))?;
        let mut content = ContentClient::new(channel);
        let mut manifest_digest = target.digest.clone();
        let mut doc = read_document(&mut content, ns, &manifest_digest)
            .await
            .map_err(|e| fail(&image, e))?;
        if let Document::Index(index) = &doc {
            let chosen = choose_manifest(index)
                .map_err(|e| fail(&image, ArtifactError::Choose(e.into())))?;
            manifest_digest = chosen.digest().to_string();
            doc = read_document(&mut content, ns, &manifest_digest)
                .await
                .map_err(|e| fail(&image, e))?;
        }
        let Document::Manifest(manifest) = doc else {
            let source = ArtifactError::NestedIndex {
                digest: manifest_digest,
            };
            return Err(fail(&image, source));
        };
        if !artifact::is_artifact(&manifest) {
            return Ok(None);
        }
        let layer = choose(&manifest, annotations, arg0)
            .map_err(|e| fail(&image, ArtifactError::Choose(e)))?;
        let digest = layer.digest().to_string();
        let name = format!("{image} layer {}", artifact::layer_name(layer));
        let path = dir.join(crate::bundle::LAYER_FILE);
        if let Err(source) = stream_blob(&mut content, ns, layer, &path).await {
            let _ = tokio::fs::remove_file(&path).await;
            return Err(fail(&image, ArtifactError::Layer { digest, source }));
        }
        Ok(Some(Fetched { path, name }))
    }
}

fn choose<'a>(
    manifest: &'a ImageManifest,
    annotations: &HashMap<String, String>,
    arg0: Option<&str>,
) -> std::result::Result<&'a Descriptor, artifact::ArtifactError> {
    let named = annotations
        .get(artifact::LAYER_ANNOTATION)
        .map(String::as_str);
    select_layer(manifest, named, arg0)
}

/// The full cause of a transport error (tonic's own message is generic).
fn source_chain(e: &dyn std::error::Error) -> String {
    let mut parts = Vec::new();
    let mut cur = e.source();
    while let Some(s) = cur {
        parts.push(s.to_string());
        cur = s.source();
    }
    parts.join(": ")
}

async fn call<T>(
    fut: impl std::future::Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
) -> std::result::Result<T, ContainerdError> {
    match tokio::time::timeout(CALL_TIMEOUT, fut).await {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(status)) => Err(ContainerdError::Status(status)),
        Err(_) => Err(ContainerdError::TimedOut),
    }
}

/// Reads a manifest or index blob (bounded in size) and parses it.
async fn read_document(
    content: &mut ContentClient<Channel>,
    ns: &str,
    digest: &str,
) -> std::result::Result<Document, ArtifactError> {
    let mut bytes = Vec::new();
    copy_blob(content, ns, digest, MAX_DOCUMENT_SIZE, None, &mut bytes)
        .await
        .map_err(|source| ArtifactError::Read {
            digest: digest.to_owned(),
            source,
        })?;
    parse_document(&bytes).map_err(|source| ArtifactError::Document {
        digest: digest.to_owned(),
        source,
    })
}

/// Streams a layer into `path`, checking size and digest.
async fn stream_blob(
    content: &mut ContentClient<Channel>,
    ns: &str,
    layer: &Descriptor,
    path: &Path,
) -> std::result::Result<(), BlobError> {
    let write_err = |source| BlobError::Write {
        path: path.to_owned(),
        source,
    };
    let mut file = tokio::fs::File::create(path).await.map_err(write_err)?;
    let digest = layer.digest().to_string();
    copy_blob(
        content,
        ns,
        &digest,
        layer.size(),
        Some(layer.size()),
        &mut file,
    )
    .await?;
    file.flush().await.map_err(write_err)
}

/// Copies blob `digest` from the content store into `out` chunk by chunk,
/// refusing more than `max` bytes, a size other than `size` (when given),
/// and content whose sha256 is not `digest`.
async fn copy_blob<W: tokio::io::AsyncWrite + Unpin>(
    content: &mut ContentClient<Channel>,
    ns: &str,
    digest: &str,
    max: u64,
    size: Option<u64>,
    out: &mut W,
) -> std::result::Result<(), BlobError> {
    let mut stream = call(content.read(with_namespace!(
        ReadContentRequest {
            digest: digest.to_owned(),
            offset: 0,
            size: 0,
        },
        ns
    )))
    .await?;
    let mut hasher = Sha256::new();
    let mut total = 0u64;
    let status = |s| BlobError::Containerd(ContainerdError::Status(s));
    while let Some(chunk) = stream.message().await.map_err(status)? {
        total += chunk.data.len() as u64;
        if total > max {
            return Err(BlobError::TooLarge(max));
        }
        hasher.update(&chunk.data);
        out.write_all(&chunk.data)
            .await
            .map_err(BlobError::Output)?;
    }
    let got = format!("sha256:{}", hex::encode(hasher.finalize()));
    if got != digest || size.is_some_and(|s| s != total) {
        return Err(BlobError::Mismatch { total, got, size });
    }
    Ok(())
}
