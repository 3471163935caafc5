//! OCI runtime spec → run plan.
//!
//! A [`RunPlan`] is the part of a container's `config.json` that a Wasm guest
//! can observe, already validated: the command line, the environment (only
//! what the spec lists), the working directory, the root filesystem and the
//! bind mounts that become WASI preopens. Everything here is pure: turning
//! host paths into open directories happens in the shim.

use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::{Mount, Spec};
use serde::{Deserialize, Serialize};

/// `PATH` used to resolve a bare `process.args[0]` when the spec's environment
/// has none (the same default runc and Docker use).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Why a spec cannot be run as a Wasm container.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    /// The spec has no `process` section.
    #[error("spec has no process section")]
    NoProcess,
    /// `process.args` is empty, so there is no entry point.
    #[error("process.args is empty: no Wasm entry point to run")]
    NoArgs,
    /// The spec has no `root` section or its path is empty.
    #[error("spec has no root filesystem path")]
    NoRoot,
    /// An environment entry is not of the form `KEY=VALUE`.
    #[error("process.env entry {0:?} is not KEY=VALUE")]
    BadEnv(String),
    /// `process.cwd` is not an absolute, normalised path.
    #[error("process.cwd {0:?} must be an absolute path without '..'")]
    BadCwd(String),
    /// A mount destination is relative or climbs with `..`.
    #[error("mount destination {0:?} must be an absolute path without '..'")]
    BadMountDestination(PathBuf),
    /// A bind mount has no source.
    #[error("bind mount at {0:?} has no source")]
    BindWithoutSource(PathBuf),
    /// `process.args[0]` is empty.
    #[error("process.args[0] is empty")]
    EmptyEntrypoint,
    /// `linux.cgroupsPath` is malformed.
    #[error(transparent)]
    Cgroup(#[from] crate::cgroup::CgroupPathError),
}

/// The root filesystem as the guest sees it: preopened as `/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootPlan {
    /// Absolute host path of the root filesystem (bundle-relative paths from
    /// the spec are resolved against the bundle).
    pub path: PathBuf,
    /// `root.readonly`: the guest may not write anywhere under `/`.
    pub readonly: bool,
}

/// A bind mount from the spec, to be preopened at its destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindMount {
    /// Host path (the mount's `source`).
    pub source: PathBuf,
    /// Guest path (the mount's `destination`), absolute and normalised.
    pub destination: String,
    /// Mounted with the `ro` option.
    pub readonly: bool,
}

/// A Linux namespace kind a Wasm container's process can be placed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NamespaceKind {
    /// Network: the pod IP, its loopback, its ports.
    Network,
    /// System V IPC and POSIX message queues.
    Ipc,
    /// Hostname and domain name.
    Uts,
    /// Process ids: only ever joined, through [`RunPlan::pid_namespace`]
    /// (never in [`RunPlan::namespaces`]).
    Pid,
}

/// A namespace from `linux.namespaces`: join `path`, or create a new one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespacePlan {
    /// Which namespace.
    pub kind: NamespaceKind,
    /// An existing namespace to join (e.g. the pod sandbox's
    /// `/proc/PID/ns/net`); `None` to create a new, empty one.
    pub path: Option<PathBuf>,
}

/// Everything the shim needs to run one Wasm container, derived from its spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunPlan {
    /// `process.args`, passed to the guest unchanged (`args[0]` included).
    pub args: Vec<String>,
    /// `process.env` split into pairs, in spec order. Nothing else is visible.
    pub env: Vec<(String, String)>,
    /// `process.cwd`, absolute.
    pub cwd: String,
    /// The root filesystem.
    pub root: RootPlan,
    /// Bind mounts in spec order. Non-bind mounts (`proc`, `sysfs`, `tmpfs`,
    /// `devpts`, `mqueue`, `cgroup`) mean nothing to a WASI guest and are left
    /// out.
    pub binds: Vec<BindMount>,
    /// The container's cgroup, relative to the hierarchy root
    /// (see [`crate::cgroup::resolve`]); `None` when the spec names none.
    pub cgroup: Option<String>,
    /// `linux.resources.memory.limit` in bytes, when set (and not 0).
    pub memory_limit: Option<u64>,
    /// Network, IPC and UTS namespaces from `linux.namespaces`, in spec
    /// order. A kind the spec does not list is shared with the host (as with
    /// runc). Mount, user and cgroup namespaces have no meaning for a WASI
    /// guest: it sees only its preopens and no processes.
    pub namespaces: Vec<NamespacePlan>,
    /// The PID namespace to start the container's process in, when the spec
    /// names an existing one: a pod that shares its process namespace
    /// (`shareProcessNamespace: true`), held by the sandbox. The shim forks
    /// the runner into it, so the pod's other containers see it in `ps`.
    /// A new PID namespace (no path) is not created: the guest cannot see
    /// processes either way, and the runner stays in the shim's.
    #[serde(default)]
    pub pid_namespace: Option<PathBuf>,
    /// `process.terminal`: a Wasm guest cannot drive a terminal, so the shim
    /// refuses it for Wasm; a pod's Linux containers get one from runc.
    pub terminal: bool,
}

impl RunPlan {
    /// Builds the plan for the container whose bundle is at `bundle`.
    pub fn from_spec(spec: &Spec, bundle: &Path) -> Result<Self, PlanError> {
        let process = spec.process().as_ref().ok_or(PlanError::NoProcess)?;
        let args = process.args().clone().unwrap_or_default();
        match args.first() {
            None => return Err(PlanError::NoArgs),
            Some(a) if a.is_empty() => return Err(PlanError::EmptyEntrypoint),
            Some(_) => {}
        }
        let env = process
            .env()
            .iter()
            .flatten()
            .map(|kv| split_env(kv))
            .collect::<Result<Vec<_>, _>>()?;
        let cwd = process.cwd().to_string_lossy().into_owned();
        let cwd = if cwd.is_empty() { "/".to_owned() } else { cwd };
        if !is_clean_absolute(Path::new(&cwd)) {
            return Err(PlanError::BadCwd(cwd));
        }

        let root = spec.root().as_ref().ok_or(PlanError::NoRoot)?;
        if root.path().as_os_str().is_empty() {
            return Err(PlanError::NoRoot);
        }
        let root = RootPlan {
            path: bundle.join(root.path()),
            readonly: root.readonly().unwrap_or(false),
        };

        let binds = spec
            .mounts()
            .iter()
            .flatten()
            .filter_map(|m| bind_mount(m).transpose())
            .collect::<Result<Vec<_>, _>>()?;

        let linux = spec.linux().as_ref();
        let cgroup = match linux.and_then(|l| l.cgroups_path().as_ref()) {
            Some(p) => crate::cgroup::resolve(&p.to_string_lossy())?,
            None => None,
        };
        let memory_limit = linux
            .and_then(|l| l.resources().as_ref())
            .and_then(|r| r.memory().as_ref())
            .and_then(|m| m.limit())
            .and_then(|l| u64::try_from(l).ok())
            .filter(|l| *l > 0);

        let namespaces = linux
            .and_then(|l| l.namespaces().as_ref())
            .into_iter()
            .flatten()
            .filter_map(|ns| {
                use oci_spec::runtime::LinuxNamespaceType as T;
                let kind = match ns.typ() {
                    T::Network => NamespaceKind::Network,
                    T::Ipc => NamespaceKind::Ipc,
                    T::Uts => NamespaceKind::Uts,
                    _ => return None,
                };
                let path = ns.path().clone().filter(|p| !p.as_os_str().is_empty());
                Some(NamespacePlan { kind, path })
            })
            .collect();

        let pid_namespace = linux
            .and_then(|l| l.namespaces().as_ref())
            .into_iter()
            .flatten()
            .filter(|ns| ns.typ() == oci_spec::runtime::LinuxNamespaceType::Pid)
            .filter_map(|ns| ns.path().clone())
            .rfind(|p| !p.as_os_str().is_empty());

        Ok(RunPlan {
            args,
            env,
            cwd,
            root,
            binds,
            cgroup,
            memory_limit,
            namespaces,
            pid_namespace,
            terminal: process.terminal().unwrap_or(false),
        })
    }

    /// The value of `name` in the plan's environment (the last one wins, as
    /// with `execve`).
    pub fn env_var(&self, name: &str) -> Option<&str> {
        self.env
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Guest paths to try, in order, for the entry point `args[0]`:
    /// a path containing `/` is taken as is (relative to `cwd`); a bare name
    /// is looked up in each directory of `PATH` from the spec's environment
    /// (or [`DEFAULT_PATH`]). The paths are guest paths; the shim resolves
    /// them inside the root filesystem without leaving it.
    pub fn entrypoint_candidates(&self) -> Vec<String> {
        let arg0 = self.args.first().map(String::as_str).unwrap_or_default();
        if arg0.contains('/') {
            let path = if arg0.starts_with('/') {
                arg0.to_owned()
            } else {
                format!("{}/{}", self.cwd.trim_end_matches('/'), arg0)
            };
            return vec![path];
        }
        let path = self.env_var("PATH").unwrap_or(DEFAULT_PATH);
        path.split(':')
            .map(|dir| if dir.is_empty() { "." } else { dir })
            .map(|dir| {
                if dir.starts_with('/') {
                    format!("{}/{}", dir.trim_end_matches('/'), arg0)
                } else {
                    // relative PATH entries are relative to the working directory
                    format!("{}/{}/{}", self.cwd.trim_end_matches('/'), dir, arg0)
                }
            })
            .collect()
    }
}

fn split_env(kv: &str) -> Result<(String, String), PlanError> {
    match kv.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(PlanError::BadEnv(kv.to_owned())),
    }
}

/// Absolute, and no `..` component (so it cannot climb above `/`).
fn is_clean_absolute(p: &Path) -> bool {
    p.is_absolute() && !p.components().any(|c| matches!(c, Component::ParentDir))
}

/// Normalises an absolute guest path: collapses `.` and repeated `/`.
fn normalise(p: &Path) -> String {
    let parts: Vec<_> = p
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect();
    format!("/{}", parts.join("/"))
}

fn bind_mount(m: &Mount) -> Result<Option<BindMount>, PlanError> {
    let options = m.options().as_deref().unwrap_or_default();
    let is_bind =
        m.typ().as_deref() == Some("bind") || options.iter().any(|o| o == "bind" || o == "rbind");
    if !is_bind {
        return Ok(None);
    }
    let destination = m.destination();
    if !is_clean_absolute(destination) {
        return Err(PlanError::BadMountDestination(destination.clone()));
    }
    let source = m
        .source()
        .clone()
        .filter(|s| !s.as_os_str().is_empty())
        .ok_or_else(|| PlanError::BindWithoutSource(destination.clone()))?;
    // the last of ro/rw wins, as with mount(8)
    let readonly = options
        .iter()
        .rev()
        .find(|o| *o == "ro" || *o == "rw")
        .is_some_and(|o| o == "ro");
    Ok(Some(BindMount {
        source,
        destination: normalise(destination),
        readonly,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(mut v: serde_json::Value) -> Spec {
        // `process.user` is required by the spec; the cases here don't vary it.
        if let Some(p) = v.get_mut("process").and_then(|p| p.as_object_mut()) {
            p.entry("user").or_insert(json!({"uid": 0, "gid": 0}));
        }
        serde_json::from_value(v).expect("test spec parses")
    }

    fn base() -> serde_json::Value {
        json!({
            "ociVersion": "1.1.0",
            "process": {"args": ["/app.wasm", "x"], "env": ["PATH=/bin", "A=1=2"], "cwd": "/work", "user": {"uid": 0, "gid": 0}},
            "root": {"path": "rootfs", "readonly": true},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/data", "type": "bind", "source": "/host/data", "options": ["rbind", "ro"]},
                {"destination": "/scratch/./x", "source": "/host/scratch", "options": ["bind", "ro", "rw"]},
                {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid"]}
            ]
        })
    }

    #[test]
    fn plan_from_spec() {
        let plan = RunPlan::from_spec(&spec(base()), Path::new("/b")).unwrap();
        assert_eq!(plan.cgroup, None);
        assert_eq!(plan.memory_limit, None);
        assert_eq!(plan.args, ["/app.wasm", "x"]);
        assert_eq!(
            plan.env,
            [("PATH".into(), "/bin".into()), ("A".into(), "1=2".into())]
        );
        assert_eq!(plan.cwd, "/work");
        assert_eq!(
            plan.root,
            RootPlan {
                path: "/b/rootfs".into(),
                readonly: true
            }
        );
        assert_eq!(
            plan.binds,
            [
                BindMount {
                    source: "/host/data".into(),
                    destination: "/data".into(),
                    readonly: true
                },
                BindMount {
                    source: "/host/scratch".into(),
                    destination: "/scratch/x".into(),
                    readonly: false
                },
            ]
        );
    }

    #[test]
    fn cgroup_and_memory_limit() {
        let mut v = base();
        v["linux"] = json!({"cgroupsPath": "/ns/c1", "resources": {"memory": {"limit": 67108864}}});
        let plan = RunPlan::from_spec(&spec(v.clone()), Path::new("/b")).unwrap();
        assert_eq!(plan.cgroup.as_deref(), Some("ns/c1"));
        assert_eq!(plan.memory_limit, Some(64 << 20));
        v["linux"] = json!({"namespaces": [
            {"type": "pid"}, {"type": "network", "path": "/proc/42/ns/net"}, {"type": "ipc"},
            {"type": "mount"}, {"type": "uts", "path": ""}
        ]});
        let plan = RunPlan::from_spec(&spec(v.clone()), Path::new("/b")).unwrap();
        assert_eq!(
            plan.namespaces,
            [
                NamespacePlan {
                    kind: NamespaceKind::Network,
                    path: Some("/proc/42/ns/net".into())
                },
                NamespacePlan {
                    kind: NamespaceKind::Ipc,
                    path: None
                },
                NamespacePlan {
                    kind: NamespaceKind::Uts,
                    path: None
                },
            ]
        );
        assert_eq!(plan.pid_namespace, None, "a new PID namespace is not made");
        v["linux"] = json!({"namespaces": [{"type": "pid", "path": "/proc/7/ns/pid"}]});
        let plan = RunPlan::from_spec(&spec(v.clone()), Path::new("/b")).unwrap();
        assert_eq!(
            plan.pid_namespace.as_deref(),
            Some(Path::new("/proc/7/ns/pid"))
        );
        assert!(plan.namespaces.is_empty());
        v["linux"] = json!({"cgroupsPath": "/ns/../etc"});
        assert!(matches!(
            RunPlan::from_spec(&spec(v), Path::new("/b")),
            Err(PlanError::Cgroup(_))
        ));
    }

    #[test]
    fn absolute_root_is_kept() {
        let mut v = base();
        v["root"] = json!({"path": "/abs/rootfs"});
        let plan = RunPlan::from_spec(&spec(v), Path::new("/b")).unwrap();
        assert_eq!(plan.root.path, Path::new("/abs/rootfs"));
        assert!(!plan.root.readonly);
    }

    #[test]
    fn rejects_bad_specs() {
        let cases: Vec<(serde_json::Value, PlanError)> = vec![
            (json!({"root": {"path": "r"}}), PlanError::NoProcess),
            (
                json!({"process": {"args": [], "cwd": "/"}, "root": {"path": "r"}}),
                PlanError::NoArgs,
            ),
            (
                json!({"process": {"args": [""], "cwd": "/"}, "root": {"path": "r"}}),
                PlanError::EmptyEntrypoint,
            ),
            (
                json!({"process": {"args": ["a"], "cwd": "/"}}),
                PlanError::NoRoot,
            ),
            (
                json!({"process": {"args": ["a"], "cwd": "/", "env": ["NOEQUALS"]}, "root": {"path": "r"}}),
                PlanError::BadEnv("NOEQUALS".into()),
            ),
            (
                json!({"process": {"args": ["a"], "cwd": "/", "env": ["=v"]}, "root": {"path": "r"}}),
                PlanError::BadEnv("=v".into()),
            ),
            (
                json!({"process": {"args": ["a"], "cwd": "rel"}, "root": {"path": "r"}}),
                PlanError::BadCwd("rel".into()),
            ),
            (
                json!({"process": {"args": ["a"], "cwd": "/a/../.."}, "root": {"path": "r"}}),
                PlanError::BadCwd("/a/../..".into()),
            ),
            (
                json!({"process": {"args": ["a"], "cwd": "/"}, "root": {"path": "r"},
                       "mounts": [{"destination": "/x/../../etc", "type": "bind", "source": "/s"}]}),
                PlanError::BadMountDestination("/x/../../etc".into()),
            ),
            (
                json!({"process": {"args": ["a"], "cwd": "/"}, "root": {"path": "r"},
                       "mounts": [{"destination": "/x", "type": "bind"}]}),
                PlanError::BindWithoutSource("/x".into()),
            ),
        ];
        for (v, want) in cases {
            let got = RunPlan::from_spec(&spec(v.clone()), Path::new("/b"));
            assert_eq!(got, Err(want), "spec {v}");
        }
    }

    #[test]
    fn entrypoint_candidates() {
        let mut plan = RunPlan::from_spec(&spec(base()), Path::new("/b")).unwrap();
        assert_eq!(plan.entrypoint_candidates(), ["/app.wasm"]);

        plan.args[0] = "bin/app.wasm".into();
        assert_eq!(plan.entrypoint_candidates(), ["/work/bin/app.wasm"]);

        plan.args[0] = "app.wasm".into();
        plan.env = vec![("PATH".into(), "/usr/bin:/opt/app/:rel:".into())];
        assert_eq!(
            plan.entrypoint_candidates(),
            [
                "/usr/bin/app.wasm",
                "/opt/app/app.wasm",
                "/work/rel/app.wasm",
                "/work/./app.wasm"
            ]
        );

        plan.env.clear();
        assert_eq!(plan.entrypoint_candidates().len(), 6);
        assert_eq!(plan.entrypoint_candidates()[0], "/usr/local/sbin/app.wasm");
    }

    #[test]
    fn plan_round_trips_through_json() {
        let plan = RunPlan::from_spec(&spec(base()), Path::new("/b")).unwrap();
        let text = serde_json::to_string(&plan).unwrap();
        assert_eq!(serde_json::from_str::<RunPlan>(&text).unwrap(), plan);
    }
}
