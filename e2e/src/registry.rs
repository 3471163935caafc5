//! A private OCI registry for the tests: Debian's `docker-registry`
//! (distribution 2.8) on a free 127.0.0.1 port, its storage in a directory
//! the caller owns. It is killed (by its pid) and reaped on drop.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Debian's registry binary.
pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// How long the registry may take to answer `/v2/` after it starts.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// A running registry.
#[derive(Debug)]
pub struct Registry {
    child: Option<Child>,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Registry {
    /// Starts a registry storing its data under `dir` (created).
    pub fn start(dir: &Path) -> Result<Registry> {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        // A free port: bind, read it, release it for the registry.
        let addr = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .context("find a free loopback port")?;
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
                dir.join("data").display()
            ),
        )
        .with_context(|| format!("write {}", config.display()))?;
        let log = std::fs::File::create(dir.join("registry.log")).context("registry log")?;
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("registry log")?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {REGISTRY_BIN} (apt install docker-registry)"))?;
        let mut registry = Registry {
            child: Some(child),
            addr,
            dir: dir.to_path_buf(),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok((200, _)) = registry.get("/v2/") {
                return Ok(registry);
            }
            if let Some(c) = registry.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    registry.child = None;
                    bail!(
                        "{REGISTRY_BIN} exited with {status}: {}",
                        std::fs::read_to_string(dir.join("registry.log")).unwrap_or_default()
                    );
                }
            }
            if Instant::now() > deadline {
                bail!("registry on {addr} did not answer /v2/ within {START_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `127.0.0.1:PORT`, the registry part of image references.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Its process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Where the registry keeps the blob `sha256:<hex>`.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.dir
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2.min(hex.len())])
            .join(hex)
            .join("data")
    }

    /// A GET on the registry (accepting OCI manifests and indexes).
    pub fn get(&self, path: &str) -> Result<(u16, String)> {
        crate::http_client::get(
            self.addr,
            path,
            &[(
                "Accept",
                "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json",
            )],
            Duration::from_secs(10),
        )
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
