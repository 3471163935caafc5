//! Talking to OCI registries for `wasmpod oci push` and `wasmpod oci inspect`:
//! the HTTP/HTTPS choice, pushing
//! [`Blobs`] byte for byte, pulling a manifest and its config, and turning
//! the client's errors into messages that name the registry.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use wasmpod_oci::blob::Blobs;
use wasmpod_oci::document::MAX_DOCUMENT_SIZE;

use crate::credentials::{load_credentials, Credentials};

/// How long one push or inspect may take in all.
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(120);

/// How long opening a connection to the registry may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// How long the registry may stay silent on an open connection.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Manifest media types `inspect` accepts (OCI and Docker, single and index).
const MANIFEST_MEDIA_TYPES: [&str; 4] = [
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// Whether `registry` (`host[:port]`) is this machine: `localhost`,
/// `127.0.0.0/8` or `[::1]`.
pub fn is_loopback(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        match rest.split_once(']') {
            Some((host, _)) => host,
            None => return false,
        }
    } else {
        registry.split(':').next().unwrap_or(registry)
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// HTTPS, except plain HTTP for a loopback registry or with `--plain-http`.
pub fn protocol(registry: &str, plain_http: bool) -> ClientProtocol {
    if plain_http {
        ClientProtocol::Http
    } else if is_loopback(registry) {
        ClientProtocol::HttpsExcept(vec![registry.to_owned()])
    } else {
        ClientProtocol::Https
    }
}

/// A client for the registry of one image reference.
pub struct Remote {
    client: Client,
    auth: RegistryAuth,
    /// The image, as the client addresses it.
    pub reference: Reference,
    /// `host[:port]` the client connects to.
    registry: String,
    /// Whether the registry is reached over HTTPS.
    https: bool,
}

impl Remote {
    /// Parses `reference` and prepares a client with the credentials the
    /// Docker config gives its registry.
    pub fn new(reference: &str, plain_http: bool, docker_config: Option<&Path>) -> Result<Self> {
        install_crypto_provider();
        let reference: Reference = reference
            .parse()
            .with_context(|| format!("{reference:?} is not an image reference"))?;
        let registry = reference.resolve_registry().to_owned();
        let protocol = protocol(&registry, plain_http);
        let https = match &protocol {
            ClientProtocol::Https => true,
            ClientProtocol::Http => false,
            ClientProtocol::HttpsExcept(except) => !except.contains(&registry),
        };
        let auth = match load_credentials(docker_config, reference.registry())? {
            Credentials::Anonymous => RegistryAuth::Anonymous,
            Credentials::Basic { username, password } => RegistryAuth::Basic(username, password),
        };
        let client = Client::try_from(ClientConfig {
            protocol,
            connect_timeout: Some(CONNECT_TIMEOUT),
            read_timeout: Some(READ_TIMEOUT),
            user_agent: concat!("wasmpod/", env!("CARGO_PKG_VERSION")),
            ..ClientConfig::default()
        })
        .map_err(|e| self::describe(e, &registry, true))?;
        Ok(Remote {
            client,
            auth,
            reference,
            registry,
            https,
        })
    }

    fn describe(&self, e: OciDistributionError) -> anyhow::Error {
        describe(e, &self.registry, self.https)
    }

    /// Pushes the layers and config the registry lacks, then the manifest's
    /// exact bytes, so its digest is `blobs.manifest.digest`. Returns the
    /// number of blobs uploaded and the number already present.
    pub async fn push(&self, blobs: &Blobs) -> Result<(usize, usize)> {
        let r = &self.reference;
        if let Some(digest) = r.digest() {
            if digest != blobs.manifest.digest {
                bail!(
                    "the reference names digest {digest}, but the manifest is {}",
                    blobs.manifest.digest
                );
            }
        }
        self.client
            .auth(r, &self.auth, RegistryOperation::Push)
            .await
            .map_err(|e| self.describe(e))?;
        let mut seen = std::collections::BTreeSet::new();
        let (mut uploaded, mut present) = (0, 0);
        for blob in blobs.layers.iter().chain([&blobs.config]) {
            if !seen.insert(blob.digest.as_str()) {
                continue;
            }
            let exists = self
                .client
                .blob_exists(r, &blob.digest)
                .await
                .map_err(|e| self.describe(e))
                .with_context(|| format!("check blob {}", blob.digest))?;
            if exists {
                present += 1;
                continue;
            }
            self.client
                .push_blob(r, blob.data.clone(), &blob.digest)
                .await
                .map_err(|e| self.describe(e))
                .with_context(|| format!("upload blob {} ({})", blob.digest, blob.media_type))?;
            uploaded += 1;
        }
        let content_type = blobs
            .manifest
            .media_type
            .parse()
            .with_context(|| format!("media type {:?}", blobs.manifest.media_type))?;
        self.client
            .push_manifest_raw(r, blobs.manifest.data.clone(), content_type)
            .await
            .map_err(|e| self.describe(e))
            .context("upload the manifest")?;
        Ok((uploaded, present))
    }

    /// Authenticates for pulling.
    pub async fn login_pull(&self) -> Result<()> {
        self.client
            .auth(&self.reference, &self.auth, RegistryOperation::Pull)
            .await
            .map_err(|e| self.describe(e))?;
        Ok(())
    }

    /// Pulls a manifest or index (of `reference`, or of the image's
    /// repository at `digest`) as raw bytes with its digest.
    pub async fn manifest(&self, digest: Option<&str>) -> Result<(Vec<u8>, String)> {
        let r = match digest {
            Some(d) => self.reference.clone_with_digest(d.to_owned()),
            None => self.reference.clone(),
        };
        let (bytes, digest) = self
            .client
            .pull_manifest_raw(&r, &self.auth, &MANIFEST_MEDIA_TYPES)
            .await
            .map_err(|e| match e {
                OciDistributionError::RegistryError { envelope, .. }
                    if envelope
                        .errors
                        .iter()
                        .any(|oci| oci.code == OciErrorCode::ManifestUnknown) =>
                {
                    anyhow!("registry {} has no manifest {}", self.registry, r.whole())
                }
                e => self.describe(e),
            })?;
        Ok((bytes.to_vec(), digest))
    }

    /// Pulls a blob of at most `size` (≤ [`MAX_DOCUMENT_SIZE`]) bytes,
    /// checked against its digest.
    pub async fn small_blob(&self, digest: &str, size: u64) -> Result<Vec<u8>> {
        if size > MAX_DOCUMENT_SIZE {
            bail!("blob {digest} is {size} bytes, more than the {MAX_DOCUMENT_SIZE} read");
        }
        let mut out = Bounded {
            data: Vec::new(),
            limit: usize::try_from(size).unwrap_or(usize::MAX),
        };
        self.client
            .pull_blob(&self.reference, digest, &mut out)
            .await
            .map_err(|e| self.describe(e))
            .with_context(|| format!("download blob {digest}"))?;
        Ok(out.data)
    }
}

/// A buffer that refuses to grow past `limit` bytes.
struct Bounded {
    data: Vec<u8>,
    limit: usize,
}

impl tokio::io::AsyncWrite for Bounded {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.data.len() + buf.len() > this.limit {
            return Poll::Ready(Err(io::Error::other(format!(
                "the registry sent more than the {} bytes the descriptor names",
                this.limit
            ))));
        }
        this.data.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Installs rustls' ring provider for the process (once; a second install
/// reports the first, which is fine).
fn install_crypto_provider() {
    let _already_installed = rustls::crypto::ring::default_provider().install_default();
}

/// A client error as a message naming the registry. Connection failures
/// read "cannot reach registry HOST: REASON", REASON being the OS's word
/// for it (e.g. "connection refused") or the TLS or DNS error.
pub fn describe(e: OciDistributionError, registry: &str, https: bool) -> anyhow::Error {
    match &e {
        OciDistributionError::RequestError(re) if re.is_connect() || re.is_timeout() => {
            let (reason, os_level) = if re.is_timeout() && !re.is_connect() {
                ("timed out".to_owned(), true)
            } else {
                root_cause(re)
            };
            // Neither the OS nor DNS failed, so TLS did: perhaps plain HTTP.
            let hint = if https && !os_level && !chain(re).contains("dns error") {
                " (if it speaks plain HTTP, pass --plain-http)"
            } else {
                ""
            };
            anyhow!("cannot reach registry {registry}: {reason}{hint}")
        }
        OciDistributionError::UnauthorizedError { .. } => denied(registry, 401),
        OciDistributionError::ServerError { code, .. } if matches!(code, 401 | 403) => {
            denied(registry, *code)
        }
        OciDistributionError::RequestError(re)
            if matches!(re.status().map(|s| s.as_u16()), Some(401 | 403)) =>
        {
            denied(registry, re.status().map_or(401, |s| s.as_u16()))
        }
        OciDistributionError::AuthenticationFailure(reason) => {
            anyhow!(
                "registry {registry} rejected the credentials: {}",
                reason.trim()
            )
        }
        _ => anyhow!("registry {registry}: {}", chain(&e)),
    }
}

/// The registry said 401 or 403.
fn denied(registry: &str, status: u16) -> anyhow::Error {
    anyhow!(
        "registry {registry} denied access (HTTP {status}): check the credentials for it in the \
         Docker config (docker login {registry}, or --docker-config)"
    )
}

/// The innermost cause of an error: an OS error as its kind ("connection
/// refused", with `true`), anything else as its message.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> (String, bool) {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    match cause.downcast_ref::<io::Error>() {
        Some(io) if io.raw_os_error().is_some() => (io.kind().to_string(), true),
        _ => (cause.to_string(), false),
    }
}

/// An error and its sources, `: `-separated, repeated messages dropped.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_registries_use_plain_http() {
        for yes in [
            "localhost",
            "localhost:5000",
            "LOCALHOST:5000",
            "127.0.0.1",
            "127.0.0.1:5999",
            "127.1.2.3:80",
            "[::1]",
            "[::1]:5000",
        ] {
            assert!(is_loopback(yes), "{yes}");
            assert!(matches!(protocol(yes, false), ClientProtocol::HttpsExcept(e) if e == [yes]));
        }
        for no in [
            "docker.io",
            "index.docker.io",
            "localhost.example.com:5000",
            "128.0.0.1:5000",
            "10.0.0.1:5000",
            "[::2]:5000",
            "[::1",
            "127.0.0.1.nip.io",
        ] {
            assert!(!is_loopback(no), "{no}");
            assert_eq!(protocol(no, false), ClientProtocol::Https, "{no}");
        }
        assert_eq!(protocol("registry.example.com", true), ClientProtocol::Http);
    }
}
