//! Restarting the containerd that serves the configured socket, so that it
//! loads the edited config: which process that is (the socket's listener),
//! who manages it (a systemd unit, found from its cgroup, or nobody), and
//! how to restart it without running anything in the installer pod's
//! namespaces or cgroup (see `docs/operator-guide.md`, "Restarts").
//!
//! - `--restart auto`: the systemd unit whose cgroup holds that containerd
//!   (`containerd.service`, `k3s.service`, `snap.microk8s.daemon-containerd
//!   .service`, ...) is restarted with `systemctl`, run in containerd's
//!   namespaces; systemd does the restart, so the client's cgroup does not
//!   matter, and it stays out of the unit's (a unit with
//!   `KillMode=control-group` would kill a client placed inside).
//!   A containerd that no systemd unit runs is an error naming its pid and
//!   cgroup: such a node needs `--restart-command`.
//! - `--restart-command CMD`: `/bin/sh -c CMD`, in the namespaces and the
//!   cgroups of that containerd, so that a containerd it starts is where
//!   the old one was (not under the installer pod's memory limit, not in its
//!   network namespace).
//! - `--restart none`: nothing; the node is labelled once CRI lists the
//!   handler, whenever the operator restarts containerd.
//!
//! When nothing listens on the socket (containerd is down), the target is
//! the node's PID 1 and, with `auto`, the distribution's services.

use std::path::{Path, PathBuf};

use crate::node::{on_host, Target};

/// How containerd is restarted (`--restart`, `--restart-command`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Through systemd, the unit found from containerd's cgroup.
    Auto,
    /// Not at all: the operator restarts containerd.
    None,
    /// This shell command, in containerd's namespaces and cgroups.
    Command(String),
}

impl Mode {
    /// From the command-line flags.
    pub fn from_flags(restart: &str, command: Option<&str>) -> Result<Mode, RestartError> {
        match (restart, command) {
            (_, Some(c)) if !c.trim().is_empty() => Ok(Mode::Command(c.to_owned())),
            ("auto", _) => Ok(Mode::Auto),
            ("none", _) => Ok(Mode::None),
            (other, _) => Err(RestartError::Mode(other.to_owned())),
        }
    }
}

/// What to run, and in whose namespaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The process whose namespaces the command joins: the containerd
    /// serving the socket, or the node's PID 1 when none does.
    pub pid: u32,
    /// Whether `pid` is that containerd (else PID 1).
    pub serving: bool,
    /// Whether the command also joins `pid`'s cgroups.
    pub join_cgroups: bool,
    /// The program and its arguments.
    pub argv: Vec<String>,
    /// For messages: what the restart is.
    pub what: String,
}

/// Why a restart cannot be planned.
#[derive(Debug, thiserror::Error)]
pub enum RestartError {
    /// An unknown `--restart`.
    #[error("--restart {0:?}: expected auto or none")]
    Mode(String),
    /// The socket's listener is in a PID namespace the installer cannot see.
    #[error("the process serving {socket} is not in this PID namespace (the installer pod needs hostPID: true)")]
    HiddenPid { socket: PathBuf },
    /// The socket cannot be asked who serves it.
    #[error("who serves {socket}: {source}")]
    Socket {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// containerd's cgroups cannot be read.
    #[error("cgroups of containerd (pid {pid}): {source}")]
    Cgroup {
        pid: u32,
        #[source]
        source: std::io::Error,
    },
    /// `auto`, but no systemd unit runs this containerd.
    #[error("containerd (pid {pid}, serving {socket}) is not run by a systemd unit (its cgroups: {cgroups}); tell the installer how to restart it with --restart-command (chart: node.restartCommand), or use --restart none")]
    NotAUnit {
        pid: u32,
        socket: PathBuf,
        cgroups: String,
    },
    /// `auto`, containerd is down, and no distribution service has a unit.
    #[error("nothing serves {socket}, and none of the services {services:?} has a systemd unit on this node; use --restart-command (chart: node.restartCommand)")]
    NoService {
        socket: PathBuf,
        services: Vec<String>,
    },
}

/// The systemd unit a process runs in, from its `/proc/PID/cgroup`: the
/// last `.service` in the path on the unified (v2) or the `name=systemd`
/// (v1) hierarchy. A path seen from another cgroup namespace
/// (`/../../system.slice/containerd.service`) names it just as well.
pub fn systemd_unit(cgroups: &str) -> Option<String> {
    cgroups
        .lines()
        .filter_map(|l| {
            let mut p = l.splitn(3, ':');
            let (_, controllers, path) = (p.next()?, p.next()?, p.next()?);
            (controllers.is_empty() || controllers == "name=systemd").then_some(path)
        })
        .filter_map(|path| {
            path.split('/')
                .rev()
                .find(|c| c.ends_with(".service"))
                .map(str::to_owned)
        })
        .next()
}

/// Whether systemd is the node's init (`/run/systemd/system` exists).
pub fn systemd_running(host_root: &Path) -> bool {
    host_root.join("run/systemd/system").is_dir()
}

const UNIT_DIRS: [&str; 4] = [
    "etc/systemd/system",
    "lib/systemd/system",
    "usr/lib/systemd/system",
    "run/systemd/system",
];

/// Plans a restart of the containerd serving `target.socket` (a host path
/// under `host_root`). `Ok(None)` for [`Mode::None`].
pub fn plan(mode: &Mode, target: &Target, host_root: &Path) -> Result<Option<Plan>, RestartError> {
    if *mode == Mode::None {
        return Ok(None);
    }
    let socket = on_host(host_root, &target.socket);
    let listener =
        crate::sys::socket_listener_pid(&socket).map_err(|source| RestartError::Socket {
            socket: target.socket.clone(),
            source,
        })?;
    if listener == Some(0) {
        return Err(RestartError::HiddenPid {
            socket: target.socket.clone(),
        });
    }
    let (pid, serving) = match listener {
        Some(pid) => (pid, true),
        None => (1, false),
    };
    let systemctl = |unit: &str| {
        vec![
            "systemctl".to_owned(),
            "restart".to_owned(),
            unit.to_owned(),
        ]
    };
    Ok(Some(match mode {
        Mode::Command(cmd) => Plan {
            pid,
            serving,
            join_cgroups: true,
            argv: vec!["/bin/sh".into(), "-c".into(), cmd.clone()],
            what: format!("restart command {cmd:?}"),
        },
        Mode::Auto if serving => {
            let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                .map_err(|source| RestartError::Cgroup { pid, source })?;
            let unit = systemd_unit(&cgroups)
                .filter(|_| systemd_running(host_root))
                .ok_or_else(|| RestartError::NotAUnit {
                    pid,
                    socket: target.socket.clone(),
                    cgroups: cgroups.lines().collect::<Vec<_>>().join(" "),
                })?;
            Plan {
                pid,
                serving,
                join_cgroups: false,
                argv: systemctl(&unit),
                what: format!("systemctl restart {unit}"),
            }
        }
        _ => {
            let unit = target
                .services
                .iter()
                .find(|s| {
                    systemd_running(host_root)
                        && UNIT_DIRS
                            .iter()
                            .any(|d| host_root.join(d).join(format!("{s}.service")).exists())
                })
                .ok_or_else(|| RestartError::NoService {
                    socket: target.socket.clone(),
                    services: target.services.clone(),
                })?;
            Plan {
                pid,
                serving,
                join_cgroups: false,
                argv: systemctl(&format!("{unit}.service")),
                what: format!("systemctl restart {unit}.service"),
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::{target, Distro};

    #[test]
    fn units_from_cgroups() {
        assert_eq!(
            systemd_unit("0::/system.slice/containerd.service\n").as_deref(),
            Some("containerd.service")
        );
        // v1: the name=systemd hierarchy, not the controllers'
        let v1 = "4:memory:/system.slice/other.service\n1:name=systemd:/system.slice/k3s.service\n";
        assert_eq!(systemd_unit(v1).as_deref(), Some("k3s.service"));
        // seen from the installer pod's cgroup namespace
        assert_eq!(
            systemd_unit("0::/../../system.slice/snap.microk8s.daemon-containerd.service")
                .as_deref(),
            Some("snap.microk8s.daemon-containerd.service")
        );
        // a containerd started from a shell, or under no systemd
        assert_eq!(
            systemd_unit("0::/user.slice/user-0.slice/session-3.scope"),
            None
        );
        assert_eq!(systemd_unit("0::/\n4:memory:/process_api/c78\n"), None);
    }

    #[test]
    fn modes_from_flags() {
        assert_eq!(Mode::from_flags("auto", None).unwrap(), Mode::Auto);
        assert_eq!(Mode::from_flags("none", Some(" ")).unwrap(), Mode::None);
        assert_eq!(
            Mode::from_flags("auto", Some("kill -HUP 1")).unwrap(),
            Mode::Command("kill -HUP 1".into())
        );
        assert!(Mode::from_flags("always", None)
            .unwrap_err()
            .to_string()
            .contains("expected auto or none"));
    }

    #[test]
    fn plans_by_who_serves_the_socket() {
        let host = tempfile::tempdir().expect("tempdir");
        let mut t = target(host.path(), Some(Distro::Containerd));
        t.socket = PathBuf::from("/containerd.sock");
        let cmd = Mode::Command("restart-it".into());
        // nobody serves it: PID 1's namespaces
        let p = plan(&cmd, &t, host.path()).unwrap().unwrap();
        assert_eq!((p.pid, p.serving, p.join_cgroups), (1, false, true));
        assert_eq!(p.argv, ["/bin/sh", "-c", "restart-it"]);
        assert!(plan(&Mode::None, &t, host.path()).unwrap().is_none());
        let err = plan(&Mode::Auto, &t, host.path()).unwrap_err().to_string();
        assert!(err.contains("none of the services"), "{err}");
        // this test process serves it, under no systemd unit
        let _l = std::os::unix::net::UnixListener::bind(host.path().join("containerd.sock"))
            .expect("bind");
        let p = plan(&cmd, &t, host.path()).unwrap().unwrap();
        assert_eq!((p.pid, p.serving), (std::process::id(), true));
        let err = plan(&Mode::Auto, &t, host.path()).unwrap_err().to_string();
        assert!(
            err.contains(&format!("pid {}", std::process::id()))
                && err.contains("not run by a systemd unit")
                && err.contains("--restart-command"),
            "{err}"
        );
    }
}
