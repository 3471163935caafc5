//! Talking to OCI registries for `wasmpod oci push` and `wasmpod oci inspect`:
//! credentials from the Docker config file, the HTTP/HTTPS choice, pushing
//! [`Blobs`] byte for byte, pulling a manifest and its config, and turning
//! the client's errors into messages that name the registry.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use base64::Engine as _;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use wasmpod_oci::artifact::MAX_DOCUMENT_SIZE;
use wasmpod_oci::layout::Blobs;

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

/// Credentials for one registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// No credentials: anonymous access.
    Anonymous,
    /// HTTP basic credentials.
    Basic {
        /// User name.
        username: String,
        /// Password or token.
        password: String,
    },
}

/// What the Docker config says about one registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lookup {
    /// The credentials to use.
    pub credentials: Credentials,
    /// Why the credentials may not be what the user expects (printed on
    /// stderr), e.g. a credential helper wasmpod cannot use.
    pub warning: Option<String>,
}

/// A Docker config file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file is not JSON of the expected shape.
    #[error("not a Docker config file: {0}")]
    Json(#[from] serde_json::Error),
    /// An `auths` entry's `auth` is not base64 of `user:password`.
    #[error("auths entry {key:?}: {reason}")]
    BadAuth {
        /// The `auths` key.
        key: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// The parts of `~/.docker/config.json` wasmpod reads.
#[derive(Debug, Default, serde::Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: std::collections::BTreeMap<String, AuthEntry>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Default, serde::Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// The host (and port) a Docker config key names: `https://host/v1/` and
/// `host` both name `host`.
fn key_host(key: &str) -> &str {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    key.split('/').next().unwrap_or(key)
}

/// Whether a Docker config key names `registry`. Docker Hub answers to
/// `docker.io`, `index.docker.io` (its legacy `https://index.docker.io/v1/`
/// key) and `registry-1.docker.io`.
fn key_matches(key: &str, registry: &str) -> bool {
    const DOCKER_HUB: [&str; 3] = ["docker.io", "index.docker.io", "registry-1.docker.io"];
    let host = key_host(key);
    host == registry || (DOCKER_HUB.contains(&host) && DOCKER_HUB.contains(&registry))
}

/// The credentials a Docker config (the file's bytes) gives `registry`
/// (`host[:port]` of the image reference, `docker.io` for Docker Hub).
///
/// An `auths` entry with `auth` (base64 `user:password`) or
/// `username`/`password` wins; an exact key wins over a scheme-prefixed or
/// aliased one. Without one the access is anonymous, with a warning when the
/// config sends this registry to a credential helper (`credsStore`,
/// `credHelpers`), which wasmpod does not run.
///
/// # Errors
///
/// Malformed JSON, or an `auth` that is not base64 of `user:password`.
pub fn credentials_from_config(config: &[u8], registry: &str) -> Result<Lookup, ConfigError> {
    let config: DockerConfig = serde_json::from_slice(config)?;
    let mut keys: Vec<&String> = config
        .auths
        .keys()
        .filter(|k| key_matches(k, registry))
        .collect();
    // The exact key first, then the others in their (sorted) order.
    keys.sort_by_key(|k| k.as_str() != registry);
    for key in keys {
        let entry = &config.auths[key];
        if let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
            let bad = |reason| ConfigError::BadAuth {
                key: key.clone(),
                reason,
            };
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(auth.trim()))
                .map_err(|_| bad("auth is not base64"))?;
            let decoded = String::from_utf8(decoded).map_err(|_| bad("auth is not UTF-8"))?;
            let (username, password) = decoded
                .split_once(':')
                .ok_or_else(|| bad("auth is not user:password"))?;
            return Ok(Lookup {
                credentials: Credentials::Basic {
                    username: username.to_owned(),
                    password: password.to_owned(),
                },
                warning: None,
            });
        }
        if let (Some(username), Some(password)) = (&entry.username, &entry.password) {
            if !username.is_empty() {
                return Ok(Lookup {
                    credentials: Credentials::Basic {
                        username: username.clone(),
                        password: password.clone(),
                    },
                    warning: None,
                });
            }
        }
    }
    let helper = config
        .cred_helpers
        .iter()
        .find(|(k, _)| key_matches(k, registry))
        .map(|(_, helper)| helper.clone())
        .or(config.creds_store);
    Ok(Lookup {
        credentials: Credentials::Anonymous,
        warning: helper.map(|helper| {
            format!(
                "the Docker config keeps the credentials for {registry} in credential helper \
                 docker-credential-{helper}, which wasmpod does not support; going on anonymously"
            )
        }),
    })
}

/// The Docker config file to read: `explicit`, else `$DOCKER_CONFIG/config.json`,
/// else `$HOME/.docker/config.json`.
pub fn docker_config_path(
    explicit: Option<&Path>,
    docker_config_dir: Option<&str>,
    home: Option<&str>,
) -> Option<PathBuf> {
    if let Some(path) = explicit {
        return Some(path.to_owned());
    }
    if let Some(dir) = docker_config_dir.filter(|d| !d.is_empty()) {
        return Some(Path::new(dir).join("config.json"));
    }
    home.filter(|h| !h.is_empty())
        .map(|home| Path::new(home).join(".docker").join("config.json"))
}

/// The credentials for `registry` from the Docker config file: the one given
/// with `--docker-config` (which must exist), else the usual places (where a
/// missing file means anonymous access). Prints the lookup's warning.
pub fn load_credentials(explicit: Option<&Path>, registry: &str) -> Result<Credentials> {
    let docker_config = std::env::var("DOCKER_CONFIG").ok();
    let home = std::env::var("HOME").ok();
    let Some(path) = docker_config_path(explicit, docker_config.as_deref(), home.as_deref()) else {
        return Ok(Credentials::Anonymous);
    };
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound && explicit.is_none() => {
            return Ok(Credentials::Anonymous)
        }
        Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
    };
    let lookup = credentials_from_config(&bytes, registry)
        .with_context(|| format!("docker config {}", path.display()))?;
    if let Some(warning) = lookup.warning {
        eprintln!("wasmpod: warning: {warning} ({})", path.display());
    }
    Ok(lookup.credentials)
}

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

    fn basic(user: &str, pass: &str) -> Credentials {
        Credentials::Basic {
            username: user.to_owned(),
            password: pass.to_owned(),
        }
    }

    fn lookup(config: &str, registry: &str) -> Lookup {
        credentials_from_config(config.as_bytes(), registry).expect("valid config")
    }

    #[test]
    fn docker_config_auth_is_base64_user_password() {
        // "alice:s3cret:with:colons"
        let auth = base64::engine::general_purpose::STANDARD.encode("alice:s3cret:with:colons");
        let config = format!(r#"{{"auths":{{"registry.example.com":{{"auth":"{auth}"}}}}}}"#);
        let found = lookup(&config, "registry.example.com");
        assert_eq!(found.credentials, basic("alice", "s3cret:with:colons"));
        assert_eq!(found.warning, None);
        // Another registry gets nothing.
        assert_eq!(
            lookup(&config, "other.example.com").credentials,
            Credentials::Anonymous
        );
        // A port is part of the registry name.
        assert_eq!(
            lookup(&config, "registry.example.com:5000").credentials,
            Credentials::Anonymous
        );
    }

    #[test]
    fn docker_config_username_password_fields() {
        let config = r#"{"auths":{"localhost:5000":{"username":"bob","password":"pw"}}}"#;
        assert_eq!(
            lookup(config, "localhost:5000").credentials,
            basic("bob", "pw")
        );
    }

    #[test]
    fn docker_config_scheme_prefixed_keys() {
        let config = r#"{"auths":{
            "https://ghcr.io":{"username":"g","password":"1"},
            "http://127.0.0.1:5000/v2/":{"username":"l","password":"2"}}}"#;
        assert_eq!(lookup(config, "ghcr.io").credentials, basic("g", "1"));
        assert_eq!(
            lookup(config, "127.0.0.1:5000").credentials,
            basic("l", "2")
        );
        // The exact key wins over a prefixed one.
        let config = r#"{"auths":{
            "https://ghcr.io":{"username":"prefixed","password":"1"},
            "ghcr.io":{"username":"exact","password":"2"}}}"#;
        assert_eq!(lookup(config, "ghcr.io").credentials, basic("exact", "2"));
    }

    #[test]
    fn docker_config_docker_hub_alias() {
        let auth = base64::engine::general_purpose::STANDARD.encode("hub:tok");
        let config =
            format!(r#"{{"auths":{{"https://index.docker.io/v1/":{{"auth":"{auth}"}}}}}}"#);
        assert_eq!(
            lookup(&config, "docker.io").credentials,
            basic("hub", "tok")
        );
        assert_eq!(
            lookup(&config, "ghcr.io").credentials,
            Credentials::Anonymous
        );
    }

    #[test]
    fn docker_config_missing_entry_or_file_is_anonymous() {
        for config in [
            "{}",
            r#"{"auths":{}}"#,
            r#"{"auths":{"registry.example.com":{}}}"#,
            r#"{"auths":{"registry.example.com":{"auth":""}}}"#,
        ] {
            let found = lookup(config, "registry.example.com");
            assert_eq!(found.credentials, Credentials::Anonymous, "{config}");
            assert_eq!(found.warning, None, "{config}");
        }
        // A missing default file is anonymous too.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = docker_config_path(None, None, dir.path().to_str()).expect("a path");
        assert_eq!(path, dir.path().join(".docker/config.json"));
        assert!(!path.exists());
        // ... but a missing file named explicitly is an error.
        let missing = dir.path().join("nope.json");
        let err = load_credentials(Some(&missing), "registry.example.com").unwrap_err();
        assert!(format!("{err:#}").contains("nope.json"), "{err:#}");
    }

    #[test]
    fn docker_config_path_precedence() {
        let explicit = Path::new("/x/config.json");
        assert_eq!(
            docker_config_path(Some(explicit), Some("/d"), Some("/h")).as_deref(),
            Some(explicit)
        );
        assert_eq!(
            docker_config_path(None, Some("/d"), Some("/h")),
            Some(PathBuf::from("/d/config.json"))
        );
        assert_eq!(
            docker_config_path(None, Some(""), Some("/h")),
            Some(PathBuf::from("/h/.docker/config.json"))
        );
        assert_eq!(docker_config_path(None, None, None), None);
    }

    #[test]
    fn docker_config_credential_helpers_warn_and_go_anonymous() {
        let config = r#"{"auths":{"ghcr.io":{}},"credsStore":"desktop"}"#;
        let found = lookup(config, "ghcr.io");
        assert_eq!(found.credentials, Credentials::Anonymous);
        assert!(found
            .warning
            .expect("warning")
            .contains("docker-credential-desktop"));

        let config =
            r#"{"credHelpers":{"https://123.dkr.ecr.eu-west-1.amazonaws.com":"ecr-login"}}"#;
        let found = lookup(config, "123.dkr.ecr.eu-west-1.amazonaws.com");
        assert!(found.warning.expect("warning").contains("ecr-login"));
        assert_eq!(lookup(config, "ghcr.io").warning, None);

        // Inline credentials win over the store.
        let config =
            r#"{"auths":{"ghcr.io":{"username":"u","password":"p"}},"credsStore":"desktop"}"#;
        let found = lookup(config, "ghcr.io");
        assert_eq!(found.credentials, basic("u", "p"));
        assert_eq!(found.warning, None);
    }

    #[test]
    fn docker_config_errors() {
        assert!(credentials_from_config(b"{not json", "x.io").is_err());
        assert!(credentials_from_config(br#"{"auths":[]}"#, "x.io").is_err());
        let err =
            credentials_from_config(br#"{"auths":{"x.io":{"auth":"!!!"}}}"#, "x.io").unwrap_err();
        assert!(err.to_string().contains("not base64"), "{err}");
        let no_colon = base64::engine::general_purpose::STANDARD.encode("justuser");
        let config = format!(r#"{{"auths":{{"x.io":{{"auth":"{no_colon}"}}}}}}"#);
        let err = credentials_from_config(config.as_bytes(), "x.io").unwrap_err();
        assert!(err.to_string().contains("user:password"), "{err}");
    }

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
