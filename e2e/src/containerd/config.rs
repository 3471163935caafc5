//! The private containerd's `config.toml`: version 2 for containerd 1.x,
//! version 3 (the CRI plugin split into `io.containerd.cri.v1.images`,
//! `io.containerd.cri.v1.runtime` and `io.containerd.grpc.v1.cri`) for 2.x,
//! as `containerd config default` of each writes it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use anyhow::{anyhow, Context, Result};

use super::{toml_str, Containerd};

/// The major version of the containerd binary at `bin`, from its
/// `--version` line (`containerd github.com/containerd/containerd/v2 2.1.9+unknown`,
/// `containerd github.com/containerd/containerd 1.6.20~ds1 ...`). Asked once
/// per binary.
pub fn major_version(bin: &Path) -> Result<u32> {
    static SEEN: Mutex<BTreeMap<PathBuf, u32>> = Mutex::new(BTreeMap::new());
    let mut seen = SEEN.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(v) = seen.get(bin) {
        return Ok(*v);
    }
    let out = Command::new(bin)
        .arg("--version")
        .output()
        .with_context(|| format!("failed to run {} --version", bin.display()))?;
    let line = String::from_utf8_lossy(&out.stdout);
    let major = parse_major(&line)
        .ok_or_else(|| anyhow!("no version in `{} --version`: {line:?}", bin.display()))?;
    seen.insert(bin.to_path_buf(), major);
    Ok(major)
}

fn parse_major(line: &str) -> Option<u32> {
    let version = line.split_whitespace().nth(2)?;
    version.split('.').next()?.parse().ok()
}

/// The config version `containerd config default` of that major writes.
pub fn config_version(major: u32) -> i64 {
    if major >= 2 {
        3
    } else {
        2
    }
}

impl Containerd {
    /// The generated configuration, in the version of the containerd under
    /// test.
    pub(super) fn config_toml(&self) -> Result<String> {
        let version = config_version(major_version(&self.opts.containerd_bin)?);
        let p = |p: PathBuf| toml_str(&p.to_string_lossy());
        let mut c = String::new();
        c.push_str(&format!("version = {version}\n"));
        c.push_str(&format!("root = {}\n", p(self.root())));
        c.push_str(&format!("state = {}\n", p(self.state())));
        if !self.opts.cri {
            // 2.x's images and runtime plugins serve nothing without it
            c.push_str("disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n");
        }
        c.push_str(&format!("\n[grpc]\n  address = {}\n", p(self.socket())));
        c.push_str(&format!(
            "\n[ttrpc]\n  address = {}\n",
            p(self.ttrpc_socket())
        ));
        c.push_str("\n[debug]\n  level = \"debug\"\n");
        if version >= 3 {
            // 2.x starts NRI by default, on the fixed /var/run/nri/nri.sock:
            // the machine's path, and one socket for all private containerds
            c.push_str("\n[plugins.\"io.containerd.nri.v1.nri\"]\n  disable = true\n");
        }
        if self.opts.cri {
            c.push('\n');
            c.push_str(&crate::cri::cri_config(
                version,
                &self.cni_conf_dir(),
                self.opts.cri_handler,
            ));
        }
        if !self.opts.extra_config.is_empty() {
            c.push('\n');
            c.push_str(&self.opts.extra_config);
            c.push('\n');
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_of_debian_containerd_lines() {
        let v16 = "containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+b1\n";
        let v17 = "containerd github.com/containerd/containerd 1.7.24~ds1 1.7.24~ds1-6+b1\n";
        let v21 = "containerd github.com/containerd/containerd/v2 2.1.9+unknown\n";
        assert_eq!(parse_major(v16), Some(1));
        assert_eq!(parse_major(v17), Some(1));
        assert_eq!(parse_major(v21), Some(2));
        assert_eq!(parse_major("containerd\n"), None);
        assert_eq!(config_version(1), 2);
        assert_eq!(config_version(2), 3);
    }
}
