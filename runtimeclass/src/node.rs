//! The node side of installing wasmpod: where each Kubernetes distribution
//! keeps containerd's config and which service runs it, copying the shim
//! binary atomically with its checksum verified, editing the config (with a
//! backup and a state file, so uninstall can put back the original bytes),
//! and restarting the service from inside a privileged pod.
//!
//! Every host path is taken relative to `host_root` (`/host` when the
//! installer runs in the DaemonSet's pod with the node's `/` mounted there,
//! `/` on the node itself, a temp dir in tests).

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{self, ConfigError};

/// Kubernetes distributions with their own containerd layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Distro {
    /// kubeadm, kind, managed clouds: the node's containerd.
    Containerd,
    /// k3s (server or agent).
    K3s,
    /// rke2 (server or agent).
    Rke2,
    /// Canonical microk8s (snap).
    Microk8s,
    /// k0s (controller+worker or worker).
    K0s,
}

impl std::str::FromStr for Distro {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "containerd" => Distro::Containerd,
            "k3s" => Distro::K3s,
            "rke2" => Distro::Rke2,
            "microk8s" => Distro::Microk8s,
            "k0s" => Distro::K0s,
            other => return Err(format!("unknown distribution {other:?}")),
        })
    }
}

/// How the config file is edited.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConfigKind {
    /// A plain containerd `config.toml`.
    Toml,
    /// A k3s/rke2 Go template (`{{ template "base" . }}` plus TOML); the
    /// config containerd runs with is generated from it at `generated`.
    Template { generated: PathBuf },
    /// A drop-in file of its own (k0s' `containerd.d`).
    DropIn,
}

/// Where and how to register wasmpod on this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    /// The distribution.
    pub distro: Distro,
    /// The file the installer edits (a host path).
    pub config: PathBuf,
    /// How it is edited.
    pub kind: ConfigKind,
    /// Services to restart, first one present wins.
    pub services: Vec<String>,
    /// containerd's socket (a host path), for checking the handler.
    pub socket: PathBuf,
}

const K3S_DIR: &str = "var/lib/rancher/k3s/agent/etc/containerd";
const RKE2_DIR: &str = "var/lib/rancher/rke2/agent/etc/containerd";
const MICROK8S_TEMPLATE: &str = "var/snap/microk8s/current/args/containerd-template.toml";

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

/// The target for `distro`, or the detected one (`None`).
pub fn target(host_root: &Path, distro: Option<Distro>) -> Target {
    let exists = |p: &str| host_root.join(p).exists();
    let distro = distro.unwrap_or_else(|| {
        if exists(K3S_DIR) || exists("etc/rancher/k3s") {
            Distro::K3s
        } else if exists(RKE2_DIR) || exists("etc/rancher/rke2") {
            Distro::Rke2
        } else if exists(MICROK8S_TEMPLATE) {
            Distro::Microk8s
        } else if exists("etc/k0s") || exists("var/lib/k0s") {
            Distro::K0s
        } else {
            Distro::Containerd
        }
    });
    let template = |dir: &str| {
        let generated = PathBuf::from("/").join(dir).join("config.toml");
        let v3 = fs::read_to_string(host_root.join(dir).join("config.toml"))
            .ok()
            .and_then(|t| t.parse::<toml_edit::DocumentMut>().ok())
            .and_then(|d| config::version_of(&d).ok())
            == Some(3);
        let name = if v3 {
            "config-v3.toml.tmpl"
        } else {
            "config.toml.tmpl"
        };
        (PathBuf::from("/").join(dir).join(name), generated)
    };
    match distro {
        Distro::Containerd => Target {
            distro,
            config: "/etc/containerd/config.toml".into(),
            kind: ConfigKind::Toml,
            services: strings(&["containerd"]),
            socket: "/run/containerd/containerd.sock".into(),
        },
        Distro::K3s => {
            let (config, generated) = template(K3S_DIR);
            Target {
                distro,
                config,
                kind: ConfigKind::Template { generated },
                services: strings(&["k3s", "k3s-agent"]),
                socket: "/run/k3s/containerd/containerd.sock".into(),
            }
        }
        Distro::Rke2 => {
            let (config, generated) = template(RKE2_DIR);
            Target {
                distro,
                config,
                kind: ConfigKind::Template { generated },
                services: strings(&["rke2-server", "rke2-agent"]),
                socket: "/run/k3s/containerd/containerd.sock".into(),
            }
        }
        Distro::Microk8s => Target {
            distro,
            config: PathBuf::from("/").join(MICROK8S_TEMPLATE),
            kind: ConfigKind::Toml,
            services: strings(&["snap.microk8s.daemon-containerd"]),
            socket: "/var/snap/microk8s/common/run/containerd.sock".into(),
        },
        Distro::K0s => Target {
            distro,
            config: "/etc/k0s/containerd.d/wasmpod.toml".into(),
            kind: ConfigKind::DropIn,
            services: strings(&["k0sworker", "k0scontroller"]),
            socket: "/run/k0s/containerd.sock".into(),
        },
    }
}

/// `host_root` joined with an absolute host path.
pub fn on_host(host_root: &Path, path: &Path) -> PathBuf {
    host_root.join(path.strip_prefix("/").unwrap_or(path))
}

/// Why installing or uninstalling failed.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A file operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The shim binary does not match its checksum.
    #[error("shim binary {path}: sha256 {got}, expected {want}")]
    Checksum {
        path: PathBuf,
        got: String,
        want: String,
    },
    /// The config cannot be edited.
    #[error("containerd config {path}: {source}")]
    Config {
        path: PathBuf,
        #[source]
        source: ConfigError,
    },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> NodeError {
    let path = path.to_path_buf();
    move |source| NodeError::Io { what, path, source }
}

/// `sha256` hex of a file.
pub fn file_sha256(path: &Path) -> Result<String, NodeError> {
    let mut f = fs::File::open(path).map_err(io("open", path))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(io("read", path))?;
    Ok(hex::encode(h.finalize()))
}

/// Writes `data` to `path` atomically (temp file in the same directory,
/// fsync, rename) with `mode`.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), NodeError> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    fs::create_dir_all(dir).map_err(io("create", dir))?;
    let tmp = dir.join(format!(
        ".{}.wasmpod-tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file")
    ));
    let result = (|| {
        let mut f = fs::File::create(&tmp).map_err(io("create", &tmp))?;
        f.write_all(data).map_err(io("write", &tmp))?;
        f.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(io("chmod", &tmp))?;
        f.sync_all().map_err(io("fsync", &tmp))?;
        fs::rename(&tmp, path).map_err(io("rename into", path))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Copies the shim to `dest` atomically unless it is already there with the
/// same content, after checking `source` against `want_sha256` (when given).
/// Returns the sha256 installed and whether anything was copied.
pub fn install_binary(
    source: &Path,
    dest: &Path,
    want_sha256: Option<&str>,
) -> Result<(String, bool), NodeError> {
    let got = file_sha256(source)?;
    if let Some(want) = want_sha256 {
        if got != want.trim() {
            return Err(NodeError::Checksum {
                path: source.to_path_buf(),
                got,
                want: want.trim().to_owned(),
            });
        }
    }
    if dest.exists() && file_sha256(dest)? == got {
        return Ok((got, false));
    }
    let data = fs::read(source).map_err(io("read", source))?;
    write_atomic(dest, &data, 0o755)?;
    let copied = file_sha256(dest)?;
    if copied != got {
        let _ = fs::remove_file(dest);
        return Err(NodeError::Checksum {
            path: dest.to_path_buf(),
            got: copied,
            want: got,
        });
    }
    Ok((got, true))
}

/// Where a node is between "untouched" and "serving the handler" (and back):
/// recorded in the state file before each step acts, so that a pod restart,
/// a SIGTERM or a failed containerd restart resumes at the same step. Its
/// name is also the value of the node's step label (`wasmpod.io/step`),
/// whose absence means "not touched, or fully uninstalled".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    /// The installer started on this node; nothing on disk yet, or only the
    /// shim binary.
    #[default]
    Installing,
    /// The config now has the handler; the containerd that reads it has not
    /// been restarted since.
    RestartPending,
    /// containerd was restarted (or, with `--restart none`, is to be
    /// restarted by the operator); waiting for CRI to list the handler.
    WaitingForCri,
    /// CRI on the configured socket lists the handler; the node is labelled.
    Ready,
    /// The ready label is off; the config is being restored.
    Uninstalling,
    /// The config no longer has the handler; the containerd that still
    /// serves it has not been restarted since. The shim stays until then.
    UninstallRestartPending,
}

impl Step {
    /// The step's name: the state file's and the label's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Installing => "installing",
            Step::RestartPending => "restart-pending",
            Step::WaitingForCri => "waiting-for-cri",
            Step::Ready => "ready",
            Step::Uninstalling => "uninstalling",
            Step::UninstallRestartPending => "uninstall-restart-pending",
        }
    }

    /// Whether the config on disk is newer than what containerd loaded.
    pub fn restart_pending(self) -> bool {
        matches!(self, Step::RestartPending | Step::UninstallRestartPending)
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the installer did to a node, kept on the node so that uninstall
/// can undo exactly that, and the step it is at.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// The step reached (older state files have none: `installing`, which
    /// makes install check everything again).
    #[serde(default)]
    pub step: Step,
    /// The last failure of the current step (a restart, mostly), for
    /// `status`; cleared when the step completes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Failed attempts at the current step (restarts, waits for CRI).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub failures: u32,
    /// The config file it edited (host path).
    pub config: PathBuf,
    /// Whether the file did not exist before.
    pub created_config: bool,
    /// sha256 of the file as the installer left it.
    pub written_sha256: String,
    /// The backup of the original (host path), if there was one.
    pub backup: Option<PathBuf>,
    /// The shim binary (host path) and its sha256.
    pub binary: PathBuf,
    /// sha256 of the binary installed.
    pub binary_sha256: String,
    /// The handler's options file (host path), when the installer wrote one.
    #[serde(default)]
    pub options_file: Option<PathBuf>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The state file (host path).
pub const STATE_FILE: &str = "/var/lib/wasmpod/node-state.json";

/// Reads the state file `path`, if any.
pub fn read_state(path: &Path) -> Option<State> {
    let text = fs::read_to_string(path).ok()?;
    serde_json::from_str(&text).ok()
}

/// Writes the state file `path`.
pub fn write_state(path: &Path, state: &State) -> Result<(), NodeError> {
    let data = serde_json::to_vec_pretty(state).unwrap_or_default();
    write_atomic(path, &data, 0o644)
}

/// Removes the state file `path`.
pub fn remove_state(path: &Path) {
    let _ = fs::remove_file(path);
}

/// The result of editing the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigChange {
    /// Whether the file changed.
    pub changed: bool,
    /// The config version used.
    pub version: i64,
    /// `SystemdCgroup` given to the handler.
    pub systemd_cgroup: bool,
}

/// Registers the handler in the target's config file (host paths under
/// `host_root`), keeping a backup of the original and recording what it did
/// in `state`, which `persist` writes before the config file changes (so a
/// kill in between cannot lose the backup's record). `default_version` is
/// used for a missing or empty config. A state left by an uninstall (whose
/// restore removed the backup) starts over: the config as it is now is the
/// original to keep.
pub fn register(
    host_root: &Path,
    target: &Target,
    default_version: i64,
    state: &mut State,
    persist: &mut dyn FnMut(&State) -> Result<(), NodeError>,
) -> Result<ConfigChange, NodeError> {
    if matches!(
        state.step,
        Step::Uninstalling | Step::UninstallRestartPending
    ) {
        state.config = PathBuf::new();
        state.backup = None;
        state.created_config = false;
        state.written_sha256.clear();
    }
    let path = on_host(host_root, &target.config);
    let existed = path.exists();
    let original = if existed {
        fs::read_to_string(&path).map_err(io("read", &path))?
    } else {
        String::new()
    };
    let cfg_err = |source| NodeError::Config {
        path: target.config.clone(),
        source,
    };
    // beside the config, as the node sees it (containerd hands the path
    // to the shim, which runs on the node)
    let options_file = target
        .config
        .parent()
        .unwrap_or(Path::new("/"))
        .join(config::OPTIONS_FILE);
    let options_str = options_file.to_string_lossy().into_owned();
    // containerd 2.x finds the shim by this path (config version 3)
    let shim =
        (!state.binary.as_os_str().is_empty()).then(|| state.binary.to_string_lossy().into_owned());
    let done = match &target.kind {
        ConfigKind::Toml | ConfigKind::DropIn => config::install_with(
            &original,
            default_version,
            Some(&options_str),
            shim.as_deref(),
        )
        .map_err(cfg_err)?,
        ConfigKind::Template { generated } => {
            let generated = fs::read_to_string(on_host(host_root, generated)).unwrap_or_default();
            config::install_template_with(
                &original,
                &generated,
                default_version,
                Some(&options_str),
                shim.as_deref(),
            )
            .map_err(cfg_err)?
        }
    };
    if done.version <= 2 {
        let text = config::options_file_text(done.systemd_cgroup);
        let host_options = on_host(host_root, &options_file);
        if fs::read_to_string(&host_options).ok().as_deref() != Some(text.as_str()) {
            write_atomic(&host_options, text.as_bytes(), 0o644)?;
        }
        state.options_file = Some(options_file);
    }
    if !done.changed {
        return Ok(ConfigChange {
            changed: false,
            version: done.version,
            systemd_cgroup: done.systemd_cgroup,
        });
    }
    if state.config.as_os_str().is_empty() {
        state.config = target.config.clone();
        state.created_config = !existed;
        if existed {
            let backup = PathBuf::from(format!("{}.wasmpod-backup", target.config.display()));
            let host_backup = on_host(host_root, &backup);
            if !host_backup.exists() {
                write_atomic(&host_backup, original.as_bytes(), 0o600)?;
            }
            state.backup = Some(backup);
        }
    }
    let mode = fs::metadata(&path)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0o644);
    state.written_sha256 = hex::encode(Sha256::digest(done.text.as_bytes()));
    persist(state)?;
    write_atomic(&path, done.text.as_bytes(), mode)?;
    Ok(ConfigChange {
        changed: true,
        version: done.version,
        systemd_cgroup: done.systemd_cgroup,
    })
}

/// Removes the handler: when the file is still exactly what the installer
/// wrote, the backup's bytes come back (or the file goes, if the installer
/// created it); otherwise only the installer's block is removed. Returns
/// whether the file changed.
pub fn unregister(
    host_root: &Path,
    target: &Target,
    state: Option<&State>,
) -> Result<bool, NodeError> {
    let config_path = state.map_or(target.config.clone(), |s| s.config.clone());
    if let Some(options) = state.and_then(|s| s.options_file.as_ref()) {
        let _ = fs::remove_file(on_host(host_root, options));
    }
    let path = on_host(host_root, &config_path);
    let Ok(current) = fs::read_to_string(&path) else {
        return Ok(false);
    };
    let untouched = state.is_some_and(|s| {
        !s.written_sha256.is_empty()
            && hex::encode(Sha256::digest(current.as_bytes())) == s.written_sha256
    });
    if untouched {
        let s = state.expect("checked above");
        if s.created_config {
            fs::remove_file(&path).map_err(io("remove", &path))?;
            return Ok(true);
        }
        // a backup that is gone (removed by hand, or by an earlier
        // uninstall) leaves the block removal below
        if let Some(original) = s
            .backup
            .as_ref()
            .and_then(|b| fs::read(on_host(host_root, b)).ok())
        {
            let host_backup = on_host(host_root, s.backup.as_ref().expect("read above"));
            let mode = fs::metadata(&path)
                .map(|m| m.permissions().mode() & 0o7777)
                .unwrap_or(0o644);
            write_atomic(&path, &original, mode)?;
            let _ = fs::remove_file(&host_backup);
            return Ok(true);
        }
    }
    let removed = config::uninstall(&current).map_err(|source| NodeError::Config {
        path: config_path.clone(),
        source,
    })?;
    match removed {
        None => Ok(false),
        Some(text) => {
            if state.is_some_and(|s| s.created_config) && config::is_base_only(&text) {
                fs::remove_file(&path).map_err(io("remove", &path))?;
            } else {
                write_atomic(&path, text.as_bytes(), 0o644)?;
            }
            if let Some(b) = state.and_then(|s| s.backup.as_ref()) {
                let _ = fs::remove_file(on_host(host_root, b));
            }
            Ok(true)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> tempfile::TempDir {
        tempfile::tempdir().expect("tempdir")
    }

    #[test]
    fn detects_each_distribution_by_its_files() {
        let cases: [(&str, Distro, &str); 5] = [
            (
                "etc/containerd",
                Distro::Containerd,
                "/etc/containerd/config.toml",
            ),
            (
                K3S_DIR,
                Distro::K3s,
                "/var/lib/rancher/k3s/agent/etc/containerd/config.toml.tmpl",
            ),
            (
                RKE2_DIR,
                Distro::Rke2,
                "/var/lib/rancher/rke2/agent/etc/containerd/config.toml.tmpl",
            ),
            (
                "var/snap/microk8s/current/args",
                Distro::Microk8s,
                "/var/snap/microk8s/current/args/containerd-template.toml",
            ),
            ("etc/k0s", Distro::K0s, "/etc/k0s/containerd.d/wasmpod.toml"),
        ];
        for (dir, distro, config) in cases {
            let h = host();
            fs::create_dir_all(h.path().join(dir)).unwrap();
            if distro == Distro::Microk8s {
                fs::write(h.path().join(MICROK8S_TEMPLATE), "version = 2\n").unwrap();
            }
            let t = target(h.path(), None);
            assert_eq!(t.distro, distro, "{dir}");
            assert_eq!(t.config, PathBuf::from(config), "{dir}");
        }
        // k3s with containerd 2 (a version 3 generated config) uses the v3 template.
        let h = host();
        fs::create_dir_all(h.path().join(K3S_DIR)).unwrap();
        fs::write(h.path().join(K3S_DIR).join("config.toml"), "version = 3\n").unwrap();
        assert!(target(h.path(), None)
            .config
            .ends_with("config-v3.toml.tmpl"));
    }

    #[test]
    fn state_files_keep_the_step_and_older_ones_start_over() {
        let h = host();
        let path = h.path().join("state.json");
        // a state file of an installer older than the steps
        fs::write(&path, r#"{"config":"/etc/containerd/config.toml","created_config":false,"written_sha256":"ab","backup":null,"binary":"/usr/local/bin/containerd-shim-wasmpod-v1","binary_sha256":"cd"}"#).unwrap();
        let old = read_state(&path).expect("old state");
        assert_eq!(
            (old.step, old.failures, old.last_error.as_deref()),
            (Step::Installing, 0, None)
        );
        let mut s = old.clone();
        s.step = Step::UninstallRestartPending;
        s.failures = 2;
        s.last_error = Some("systemctl restart containerd.service failed".into());
        write_state(&path, &s).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert!(
            text.contains(r#""step": "uninstall-restart-pending""#),
            "{text}"
        );
        assert_eq!(read_state(&path), Some(s));
        assert!(Step::RestartPending.restart_pending() && !Step::Ready.restart_pending());
        assert_eq!(Step::WaitingForCri.to_string(), "waiting-for-cri");
    }

    #[test]
    fn binary_copied_atomically_and_checked() {
        let h = host();
        let src = h.path().join("shim");
        fs::write(&src, b"binary").unwrap();
        let sum = file_sha256(&src).unwrap();
        let dest = h.path().join("usr/local/bin/containerd-shim-wasmpod-v1");
        assert_eq!(
            install_binary(&src, &dest, Some(&sum)).unwrap(),
            (sum.clone(), true)
        );
        assert_eq!(
            fs::metadata(&dest).unwrap().permissions().mode() & 0o777,
            0o755
        );
        assert_eq!(
            install_binary(&src, &dest, Some(&sum)).unwrap(),
            (sum.clone(), false)
        );
        let err = install_binary(&src, &dest, Some(&"0".repeat(64))).unwrap_err();
        assert!(err.to_string().contains("expected 0000"), "{err}");
        assert!(!h
            .path()
            .join("usr/local/bin/.containerd-shim-wasmpod-v1.wasmpod-tmp")
            .exists());
    }

    #[test]
    fn register_and_unregister_restore_the_original_bytes() {
        let h = host();
        let t = target(h.path(), Some(Distro::Containerd));
        let path = on_host(h.path(), &t.config);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        let original = "# mine\nversion = 2\n\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc.options]\n  SystemdCgroup = true\n";
        fs::write(&path, original).unwrap();
        let mut state = State::default();
        let change = register(h.path(), &t, 2, &mut state, &mut |_| Ok(())).unwrap();
        assert!(change.changed && change.systemd_cgroup);
        assert!(
            !register(h.path(), &t, 2, &mut state, &mut |_| Ok(()))
                .unwrap()
                .changed
        );
        assert_eq!(
            fs::read_to_string(on_host(h.path(), state.backup.as_ref().unwrap())).unwrap(),
            original
        );
        // containerd 1.6 passes a non-runc runtime only its ConfigPath:
        // the options are in a file beside the config, named by the block
        let options = state.options_file.clone().expect("an options file");
        assert_eq!(
            options,
            t.config.parent().unwrap().join(config::OPTIONS_FILE)
        );
        let written = fs::read_to_string(on_host(h.path(), &options)).unwrap();
        assert!(written.contains("SystemdCgroup = true"), "{written}");
        let text = fs::read_to_string(&path).unwrap();
        assert!(
            text.contains(&format!("ConfigPath = \"{}\"", options.display())),
            "{text}"
        );
        assert!(unregister(h.path(), &t, Some(&state)).unwrap());
        assert_eq!(fs::read_to_string(&path).unwrap(), original);
        assert!(!on_host(h.path(), state.backup.as_ref().unwrap()).exists());
        assert!(!on_host(h.path(), &options).exists());

        // A missing config is created, and removed again.
        let h = host();
        let t = target(h.path(), Some(Distro::Containerd));
        let mut state = State::default();
        register(h.path(), &t, 2, &mut state, &mut |_| Ok(())).unwrap();
        assert!(state.created_config);
        assert!(on_host(h.path(), &t.config).exists());
        unregister(h.path(), &t, Some(&state)).unwrap();
        assert!(!on_host(h.path(), &t.config).exists());
    }

    #[test]
    fn reinstall_after_an_interrupted_uninstall_keeps_a_fresh_backup() {
        let h = host();
        let t = target(h.path(), Some(Distro::Containerd));
        let path = on_host(h.path(), &t.config);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        let original = "version = 2\n# the operator's\n";
        fs::write(&path, original).unwrap();
        let mut state = State::default();
        let mut persisted = Vec::new();
        register(h.path(), &t, 2, &mut state, &mut |s| {
            // recorded before the config changes
            assert_eq!(
                fs::read_to_string(on_host(h.path(), &t.config)).unwrap(),
                original
            );
            persisted.push(s.clone());
            Ok(())
        })
        .unwrap();
        assert_eq!(persisted.len(), 1);
        assert_eq!(persisted[0].backup, state.backup);
        // uninstall restores the original (and removes the backup), then
        // stops before its restart; install runs again
        assert!(unregister(h.path(), &t, Some(&state)).unwrap());
        state.step = Step::UninstallRestartPending;
        assert!(
            register(h.path(), &t, 2, &mut state, &mut |_| Ok(()))
                .unwrap()
                .changed
        );
        let backup = on_host(h.path(), state.backup.as_ref().expect("a backup"));
        assert_eq!(fs::read_to_string(&backup).unwrap(), original);
        assert!(unregister(h.path(), &t, Some(&state)).unwrap());
        assert_eq!(fs::read_to_string(&path).unwrap(), original);
        // and a backup removed by hand falls back to removing the block
        let mut state = State::default();
        register(h.path(), &t, 2, &mut state, &mut |_| Ok(())).unwrap();
        fs::remove_file(on_host(h.path(), state.backup.as_ref().unwrap())).unwrap();
        assert!(unregister(h.path(), &t, Some(&state)).unwrap());
        assert!(!config::is_installed(&fs::read_to_string(&path).unwrap()));
    }

    #[test]
    fn k3s_templates_get_the_block_and_lose_it_again() {
        let h = host();
        let dir = h.path().join(K3S_DIR);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("config.toml"), "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc.options]\nSystemdCgroup = true\n").unwrap();
        let t = target(h.path(), None);
        // No template yet: created from the base template plus the handler.
        let mut state = State::default();
        assert!(
            register(h.path(), &t, 2, &mut state, &mut |_| Ok(()))
                .unwrap()
                .changed
        );
        let text = fs::read_to_string(dir.join("config.toml.tmpl")).unwrap();
        assert!(text.starts_with("{{ template \"base\" . }}\n"), "{text}");
        assert!(text.contains("SystemdCgroup = true"), "{text}");
        unregister(h.path(), &t, Some(&state)).unwrap();
        assert!(!dir.join("config.toml.tmpl").exists());
    }
}
