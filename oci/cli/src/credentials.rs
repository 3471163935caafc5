//! Registry credentials from the Docker config file, as `docker login`
//! leaves them: inline `auths` entries, and credential helpers (`credsStore`,
//! `credHelpers`: `docker-credential-<name>` on `PATH`), read with the
//! `docker_credential` crate.

use std::io;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use docker_credential::{CredentialRetrievalError, DockerCredential};

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

/// Docker Hub's names: an image reference says `docker.io`, `docker login`
/// writes the legacy key.
const DOCKER_HUB: [&str; 3] = ["docker.io", "index.docker.io", "registry-1.docker.io"];
const DOCKER_HUB_KEY: &str = "https://index.docker.io/v1/";

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

/// What the Docker config (the file's bytes) gives `registry`
/// (`host[:port]` of the image reference, `docker.io` for Docker Hub); a
/// config that names nothing for it means anonymous access. An identity
/// token (OAuth refresh token) is not used: it is reported and the access
/// is anonymous.
pub fn credentials_from_config(config: &[u8], registry: &str) -> Result<Credentials> {
    let server = if DOCKER_HUB.contains(&registry) {
        DOCKER_HUB_KEY
    } else {
        registry
    };
    match docker_credential::get_credential_from_reader(config, server) {
        Ok(DockerCredential::UsernamePassword(username, password)) => {
            Ok(Credentials::Basic { username, password })
        }
        Ok(DockerCredential::IdentityToken(_)) => {
            eprintln!(
                "wasmpod: warning: the Docker config holds an identity token for {registry}, \
                 which wasmpod does not exchange; going on anonymously"
            );
            Ok(Credentials::Anonymous)
        }
        Err(CredentialRetrievalError::NoCredentialConfigured) => Ok(Credentials::Anonymous),
        Err(e) => Err(anyhow::anyhow!("credentials for {registry}: {e}")),
    }
}

/// The credentials for `registry` from the Docker config file: the one given
/// with `--docker-config` (which must exist), else the usual places (where a
/// missing file means anonymous access).
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
    credentials_from_config(&bytes, registry)
        .with_context(|| format!("docker config {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    fn basic(user: &str, pass: &str) -> Credentials {
        Credentials::Basic {
            username: user.to_owned(),
            password: pass.to_owned(),
        }
    }

    fn lookup(config: &str, registry: &str) -> Credentials {
        credentials_from_config(config.as_bytes(), registry).expect("valid config")
    }

    #[test]
    fn inline_auth_and_username_password() {
        let auth = base64::engine::general_purpose::STANDARD.encode("alice:s3cret:with:colons");
        let config = format!(r#"{{"auths":{{"registry.example.com":{{"auth":"{auth}"}}}}}}"#);
        assert_eq!(
            lookup(&config, "registry.example.com"),
            basic("alice", "s3cret:with:colons")
        );
        assert_eq!(lookup(&config, "other.example.com"), Credentials::Anonymous);
        let config = r#"{"auths":{"localhost:5000":{"username":"bob","password":"pw"}}}"#;
        assert_eq!(lookup(config, "localhost:5000"), basic("bob", "pw"));
        // a scheme-prefixed key names the same registry
        let config = r#"{"auths":{"https://ghcr.io":{"username":"g","password":"1"}}}"#;
        assert_eq!(lookup(config, "ghcr.io"), basic("g", "1"));
    }

    #[test]
    fn docker_hub_answers_to_its_legacy_key() {
        let auth = base64::engine::general_purpose::STANDARD.encode("hub:tok");
        let config = format!(r#"{{"auths":{{"{DOCKER_HUB_KEY}":{{"auth":"{auth}"}}}}}}"#);
        assert_eq!(lookup(&config, "docker.io"), basic("hub", "tok"));
        assert_eq!(lookup(&config, "ghcr.io"), Credentials::Anonymous);
    }

    #[test]
    fn nothing_configured_is_anonymous_and_a_named_file_must_exist() {
        for config in ["{}", r#"{"auths":{}}"#] {
            assert_eq!(
                lookup(config, "registry.example.com"),
                Credentials::Anonymous,
                "{config}"
            );
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let path = docker_config_path(None, None, dir.path().to_str()).expect("a path");
        assert_eq!(path, dir.path().join(".docker/config.json"));
        let missing = dir.path().join("nope.json");
        let err = load_credentials(Some(&missing), "registry.example.com").unwrap_err();
        assert!(format!("{err:#}").contains("nope.json"), "{err:#}");
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, "{not json").unwrap();
        assert!(load_credentials(Some(&bad), "x.io").is_err());
    }

    #[test]
    fn config_path_precedence() {
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

    /// Runs in a child process of the test binary, with a fake helper first
    /// on `PATH` (a process-wide setting no other test may see changed).
    #[test]
    fn credential_helpers_are_run() {
        if let Some(dir) = std::env::var_os("WASMPOD_TEST_HELPER_DIR") {
            let _ = dir;
            let config = r#"{"credHelpers":{"registry.example.com":"wasmpodtest"}}"#;
            assert_eq!(
                lookup(config, "registry.example.com"),
                basic("helper-user", "helper-secret")
            );
            let config = r#"{"credsStore":"wasmpodtest"}"#;
            assert_eq!(
                lookup(config, "ghcr.io"),
                basic("helper-user", "helper-secret")
            );
            // a helper that fails is an error naming the registry
            let config = r#"{"credHelpers":{"ghcr.io":"wasmpodbroken"}}"#;
            let err = credentials_from_config(config.as_bytes(), "ghcr.io").unwrap_err();
            assert!(err.to_string().contains("ghcr.io"), "{err}");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let helper = dir.path().join("docker-credential-wasmpodtest");
        std::fs::write(
            &helper,
            "#!/bin/sh\nread server\necho '{\"ServerURL\":\"'$server'\",\"Username\":\"helper-user\",\"Secret\":\"helper-secret\"}'\n",
        )
        .unwrap();
        let broken = dir.path().join("docker-credential-wasmpodbroken");
        std::fs::write(&broken, "#!/bin/sh\necho nope\nexit 1\n").unwrap();
        for f in [&helper, &broken] {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let path = format!(
            "{}:{}",
            dir.path().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "credentials::tests::credential_helpers_are_run"])
            .env("PATH", path)
            .env("WASMPOD_TEST_HELPER_DIR", dir.path())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && text.contains("1 passed"), "{text}");
    }
}
