//! Linux containers of a Wasm pod, run through the node's `runc` from the
//! same bundle, as containerd's own runc shim does: the pod sandbox (pause)
//! and sidecars such as log shippers or proxies.
//!
//! `runc create` gets the container's stdio (the FIFOs containerd handed
//! over) as its own, and runc passes them to the container process; with a
//! terminal, runc sends the terminal instead ([`crate::linux::console`]). The
//! container's init process is re-parented to the shim (a child subreaper)
//! when `runc create` exits, so its exit reaches the same reaper as a Wasm
//! runner's. runc's own invocations are children of the shim too: their exit
//! codes come through the [`ExitRouter`], never from `wait` (the reaper
//! collects every child).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio as ProcessStdio};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::server::exits::ExitRouter;

/// Why a runc invocation failed.
#[derive(Debug, thiserror::Error)]
pub enum RuncError {
    #[error("spawn runc: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("pid out of range")]
    Pid,
    #[error("timed out after {0:?}")]
    TimedOut(Duration),
    #[error("exit not delivered")]
    NoExit,
    /// runc exited non-zero; `message` is its last logged error.
    #[error("{message}")]
    Failed { code: u32, message: String },
    #[error("{what} {}: {source}", path.display())]
    File {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("pid file {}: {source}", path.display())]
    PidFile {
        path: PathBuf,
        #[source]
        source: std::num::ParseIntError,
    },
    #[error("encode process: {0}")]
    Encode(#[source] serde_json::Error),
}

/// What a runc container or exec process gets as its stdio: the FIFOs, or
/// (with `console_socket`) a terminal runc sends to that socket.
pub struct ProcessIo<'a> {
    /// stdin, stdout, stderr of runc, passed on to the process.
    pub stdio: [ProcessStdio; 3],
    /// runc's `--console-socket`, when the process has a terminal.
    pub console_socket: Option<&'a Path>,
}

/// Where runc keeps container state, per containerd namespace: the same
/// place containerd's runc shim uses, so `runc --root … list` shows them.
pub const RUNC_ROOT: &str = "/run/containerd/runc";

/// How long one runc invocation may take.
const RUNC_TIMEOUT: Duration = Duration::from_secs(60);

/// The node's runc for one containerd namespace.
#[derive(Debug, Clone)]
pub struct Runc {
    root: PathBuf,
    /// What `runc features` said of idmapped mounts, asked once.
    idmap: std::sync::Arc<tokio::sync::OnceCell<std::result::Result<(), String>>>,
}

impl Runc {
    /// runc with its state under [`RUNC_ROOT`]/`namespace`.
    pub fn new(namespace: &str) -> Self {
        Runc {
            root: Path::new(RUNC_ROOT).join(namespace),
            idmap: Default::default(),
        }
    }

    async fn run(
        &self,
        call: Call<'_>,
        args: Vec<OsString>,
        stdio: Option<[ProcessStdio; 3]>,
        exits: &ExitRouter,
    ) -> Result<()> {
        let Call {
            id,
            op,
            bundle,
            systemd_cgroup,
        } = call;
        let log = bundle.join("runc.log");
        let mut cmd = Command::new("runc");
        cmd.arg("--root")
            .arg(&self.root)
            .arg("--log")
            .arg(&log)
            .args(["--log-format", "json"]);
        if systemd_cgroup {
            cmd.arg("--systemd-cgroup");
        }
        cmd.args(args).current_dir(bundle);
        match stdio {
            Some([i, o, e]) => cmd.stdin(i).stdout(o).stderr(e),
            None => cmd
                .stdin(ProcessStdio::null())
                .stdout(ProcessStdio::null())
                .stderr(ProcessStdio::null()),
        };
        let err = |source| Error::Runc {
            id: id.to_owned(),
            op,
            source,
        };
        let child = cmd.spawn().map_err(|e| err(RuncError::Spawn(e)))?;
        let pid = i32::try_from(child.id()).map_err(|_| err(RuncError::Pid))?;
        drop(child);
        drop(cmd);
        let exit = tokio::time::timeout(RUNC_TIMEOUT, exits.watch(pid))
            .await
            .map_err(|_| {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                err(RuncError::TimedOut(RUNC_TIMEOUT))
            })?
            .map_err(|_| err(RuncError::NoExit))?;
        if exit.code != 0 {
            let message = last_error(&log).unwrap_or_else(|| format!("exit status {}", exit.code));
            return Err(err(RuncError::Failed {
                code: exit.code,
                message,
            }));
        }
        Ok(())
    }

    /// Whether this runc makes idmapped mounts (`mountExtensions.idmap` in
    /// `runc features`, runc 1.2 and later); `Err` says why not. Asked once
    /// per shim: the node's runc does not change under a running pod.
    pub async fn idmap_mounts(&self, exits: &ExitRouter) -> std::result::Result<(), String> {
        self.idmap
            .get_or_init(|| Self::ask_idmap_mounts(exits))
            .await
            .clone()
    }

    async fn ask_idmap_mounts(exits: &ExitRouter) -> std::result::Result<(), String> {
        let mut child = Command::new("runc")
            .arg("features")
            .stdin(ProcessStdio::null())
            .stdout(ProcessStdio::piped())
            .stderr(ProcessStdio::null())
            .spawn()
            .map_err(|e| format!("`runc features`: {e}"))?;
        let pid = i32::try_from(child.id()).map_err(|_| "`runc features`: no pid".to_owned())?;
        let stdout = child.stdout.take();
        drop(child);
        let exit = exits.watch(pid);
        let read = tokio::task::spawn_blocking(move || {
            let mut text = Vec::new();
            if let Some(mut out) = stdout {
                std::io::Read::read_to_end(&mut out, &mut text).map(|_| text)
            } else {
                Ok(text)
            }
        });
        let text = tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .map_err(|_| {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                "`runc features` did not answer in 10 s".to_owned()
            })?
            .map_err(|e| format!("`runc features`: {e}"))?
            .map_err(|e| format!("`runc features`: {e}"))?;
        let code = exit.await.map(|e| e.code).unwrap_or(u32::MAX);
        if code != 0 {
            return Err(format!("`runc features` failed with exit status {code}"));
        }
        let features: serde_json::Value = serde_json::from_slice(&text)
            .map_err(|e| format!("`runc features` is not JSON: {e}"))?;
        let version = features["annotations"]["org.opencontainers.runc.version"]
            .as_str()
            .unwrap_or("of unknown version")
            .to_owned();
        match features["linux"]["mountExtensions"]["idmap"]["enabled"].as_bool() {
            Some(true) => Ok(()),
            _ => Err(format!(
                "runc {version}: no mountExtensions.idmap in `runc features`"
            )),
        }
    }

    /// `runc create`: the container process exists (its pid is returned)
    /// and waits for `start`.
    pub async fn create(
        &self,
        id: &str,
        bundle: &Path,
        io: ProcessIo<'_>,
        exits: &ExitRouter,
        systemd_cgroup: bool,
    ) -> Result<i32> {
        let ProcessIo {
            stdio,
            console_socket,
        } = io;
        let pid_file = bundle.join("runc.pid");
        let mut args: Vec<OsString> = vec![
            "create".into(),
            "--bundle".into(),
            bundle.as_os_str().to_owned(),
            "--pid-file".into(),
            pid_file.as_os_str().to_owned(),
        ];
        if let Some(socket) = console_socket {
            args.push("--console-socket".into());
            args.push(socket.as_os_str().to_owned());
        }
        args.push(id.into());
        let call = Call {
            id,
            op: "create",
            bundle,
            systemd_cgroup,
        };
        self.run(call, args, Some(stdio), exits).await?;
        read_pid(&pid_file).await.map_err(|source| Error::Runc {
            id: id.to_owned(),
            op: "create",
            source,
        })
    }

    /// `runc exec --detach`: another process in the container, with `stdio`;
    /// returns its pid.
    pub async fn exec(
        &self,
        id: &str,
        exec_id: &str,
        bundle: &Path,
        process: &oci_spec::runtime::Process,
        io: ProcessIo<'_>,
        exits: &ExitRouter,
    ) -> Result<i32> {
        let ProcessIo {
            stdio,
            console_socket,
        } = io;
        let err = |source| Error::Runc {
            id: id.to_owned(),
            op: "exec",
            source,
        };
        let spec_path = bundle.join(format!("exec-{exec_id}.json"));
        let pid_file = bundle.join(format!("exec-{exec_id}.pid"));
        let json = serde_json::to_vec(process).map_err(|e| err(RuncError::Encode(e)))?;
        tokio::fs::write(&spec_path, json).await.map_err(|source| {
            err(RuncError::File {
                what: "write",
                path: spec_path.clone(),
                source,
            })
        })?;
        let mut args: Vec<OsString> = vec![
            "exec".into(),
            "--detach".into(),
            "--pid-file".into(),
            pid_file.as_os_str().to_owned(),
            "--process".into(),
            spec_path.as_os_str().to_owned(),
        ];
        if let Some(socket) = console_socket {
            args.push("--console-socket".into());
            args.push(socket.as_os_str().to_owned());
        }
        args.push(id.into());
        let result = self
            .run(Call::new(id, "exec", bundle), args, Some(stdio), exits)
            .await;
        let pid = match result {
            Ok(()) => read_pid(&pid_file).await.map_err(err),
            Err(e) => Err(e),
        };
        let _ = tokio::fs::remove_file(&spec_path).await;
        let _ = tokio::fs::remove_file(&pid_file).await;
        pid
    }

    /// `runc start`.
    pub async fn start(&self, id: &str, bundle: &Path, exits: &ExitRouter) -> Result<()> {
        let args = vec!["start".into(), id.into()];
        self.run(Call::new(id, "start", bundle), args, None, exits)
            .await
    }

    /// `runc update --resources FILE ID`: new limits for the container
    /// (`resources` is OCI `LinuxResources` JSON, as CRI's
    /// UpdateContainerResources sends it).
    pub async fn update(
        &self,
        id: &str,
        bundle: &Path,
        resources: &[u8],
        systemd_cgroup: bool,
        exits: &ExitRouter,
    ) -> Result<()> {
        let file = bundle.join("runc-update.json");
        tokio::fs::write(&file, resources)
            .await
            .map_err(|source| Error::Runc {
                id: id.to_owned(),
                op: "update",
                source: RuncError::File {
                    what: "write",
                    path: file.clone(),
                    source,
                },
            })?;
        let args = vec![
            "update".into(),
            "--resources".into(),
            file.as_os_str().to_owned(),
            id.into(),
        ];
        let call = Call {
            systemd_cgroup,
            ..Call::new(id, "update", bundle)
        };
        let result = self.run(call, args, None, exits).await;
        let _ = tokio::fs::remove_file(&file).await;
        result
    }

    /// `runc kill --all ID SIGNAL`: every process of the container.
    pub async fn kill_all(
        &self,
        id: &str,
        bundle: &Path,
        signal: u32,
        exits: &ExitRouter,
    ) -> Result<()> {
        let args = vec![
            "kill".into(),
            "--all".into(),
            id.into(),
            signal.to_string().into(),
        ];
        self.run(Call::new(id, "kill", bundle), args, None, exits)
            .await
    }

    /// `runc delete --force`: removes runc's state and the container's cgroup.
    pub async fn delete(&self, id: &str, bundle: &Path, exits: &ExitRouter) -> Result<()> {
        let args = vec!["delete".into(), "--force".into(), id.into()];
        let result = self
            .run(Call::new(id, "delete", bundle), args, None, exits)
            .await;
        let _ = tokio::fs::remove_file(bundle.join("runc.pid")).await;
        let _ = tokio::fs::remove_file(bundle.join("runc.log")).await;
        result
    }
}

/// Which container a runc invocation is for, and how.
struct Call<'a> {
    id: &'a str,
    op: &'static str,
    bundle: &'a Path,
    systemd_cgroup: bool,
}

impl<'a> Call<'a> {
    fn new(id: &'a str, op: &'static str, bundle: &'a Path) -> Self {
        Call {
            id,
            op,
            bundle,
            systemd_cgroup: false,
        }
    }
}

/// The pid runc wrote to `path`.
async fn read_pid(path: &Path) -> std::result::Result<i32, RuncError> {
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|source| RuncError::File {
            what: "read",
            path: path.to_owned(),
            source,
        })?;
    text.trim().parse().map_err(|source| RuncError::PidFile {
        path: path.to_owned(),
        source,
    })
}

/// The last `error` message from a runc JSON log.
fn last_error(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["level"] == "error")
        .and_then(|v| v["msg"].as_str().map(str::to_owned))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_error_from_json_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("runc.log");
        std::fs::write(
            &log,
            "{\"level\":\"warning\",\"msg\":\"w\"}\n{\"level\":\"error\",\"msg\":\"first\"}\nnot json\n{\"level\":\"error\",\"msg\":\"exec: \\\"/nope\\\": no such file\"}\n{\"level\":\"info\",\"msg\":\"i\"}\n",
        )
        .unwrap();
        assert_eq!(
            last_error(&log).as_deref(),
            Some("exec: \"/nope\": no such file")
        );
        assert_eq!(last_error(&dir.path().join("missing")), None);
    }
}
