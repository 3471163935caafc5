//! `wasmpod oci push`: a `.wasm` (packaged as `build` would) or a layout to
//! a registry, the manifest byte for byte.

use anyhow::{anyhow, bail, Context, Result};
use wasmpod_oci::layout::{read_layout_tar, write_layout_tar};
use wasmpod_oci::wasm::classify;

use crate::package::package;
use crate::registry::{Remote, OPERATION_TIMEOUT};
use crate::Push;

/// A current-thread runtime running `fut`, bounded by [`OPERATION_TIMEOUT`].
pub(crate) fn run_bounded<T>(
    what: &str,
    fut: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
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
pub(crate) fn push(p: &Push) -> Result<String> {
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
