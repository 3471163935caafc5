//! OCI runtime spec → run plan.
//!
//! A [`RunPlan`] is everything of a container's `config.json` the shim and
//! the runner act on, already validated: the command line and environment
//! the guest sees, the root filesystem and mounts, the namespaces, the
//! cgroup, and the process's sandbox (user, capabilities, no_new_privs,
//! rlimits, sysctls, LSM labels). Everything here is pure: applying the plan
//! happens in the shim.
//!
//! - [`mounts`]: `mounts`, `rootfsPropagation`, devices, masked and
//!   read-only paths;
//! - [`security`]: user, capabilities (and their sets after an `execve`),
//!   rlimits, sysctl rules.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Spec};
use serde::{Deserialize, Serialize};

pub mod mounts;
pub mod security;

use mounts::{is_clean_absolute, normalise, parse_mount, DevicePlan, MountKind, MountPlan};
use security::{CapabilitySets, Rlimit, UserPlan};

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
    /// A bind mount carries filesystem options.
    #[error("bind mount at {destination:?}: bind mounts cannot have filesystem options ({data})")]
    BindWithData { destination: PathBuf, data: String },
    /// A mount that is neither a bind nor of a named filesystem type.
    #[error("mount at {0:?} has no type")]
    MountWithoutType(PathBuf),
    /// A mount option wasmpod does not implement.
    #[error("mount at {destination:?}: option {option:?} is not supported")]
    UnsupportedMountOption {
        destination: PathBuf,
        option: String,
    },
    /// A mount at or under `/proc` that is not procfs (or an lxcfs file).
    #[error("mount at {0:?}: only procfs may be mounted on /proc, and nothing below it but the files lxcfs provides")]
    MountInProc(PathBuf),
    /// `process.args[0]` is empty.
    #[error("process.args[0] is empty")]
    EmptyEntrypoint,
    /// `linux.cgroupsPath` is malformed.
    #[error(transparent)]
    Cgroup(#[from] crate::cgroup::CgroupPathError),
    /// `linux.rootfsPropagation` is not a propagation type.
    #[error("linux.rootfsPropagation {0:?} is not supported")]
    RootfsPropagation(String),
    /// A `process.rlimits` type the kernel does not have.
    #[error("process.rlimits: wrong rlimit value: {0}")]
    Rlimit(String),
    /// A sysctl the container's namespaces do not isolate.
    #[error("linux.sysctl {key:?} {why}")]
    Sysctl { key: String, why: &'static str },
    /// `hostname` or `domainname` without a UTS namespace.
    #[error("{0}: unable to set it without a private UTS namespace")]
    HostnameWithoutUts(&'static str),
    /// `maskedPaths` or `readonlyPaths` without a mount namespace.
    #[error("linux.{0}: unable to restrict paths without a private mount namespace")]
    PathsWithoutMountNamespace(&'static str),
    /// A user namespace the spec cannot have (mappings without one, one
    /// without mappings, an unmapped user).
    #[error("{field}: {why}")]
    UserNamespace {
        field: &'static str,
        why: &'static str,
    },
    /// `process.oomScoreAdj` outside the kernel's range.
    #[error("process.oomScoreAdj {0} is outside -1000..=1000")]
    OomScoreAdj(i32),
}

/// One range of an id mapping (OCI `LinuxIDMapping`): `size` ids from
/// `container` inside are `host` outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMap {
    pub container: u32,
    pub host: u32,
    pub size: u32,
}

impl IdMap {
    /// The spec's `uidMappings` or `gidMappings` (of `linux` or of a mount).
    pub(crate) fn all_of(maps: &Option<Vec<oci_spec::runtime::LinuxIdMapping>>) -> Vec<IdMap> {
        maps.iter()
            .flatten()
            .map(|m| IdMap {
                container: m.container_id(),
                host: m.host_id(),
                size: m.size(),
            })
            .collect()
    }

    /// The host id of container id `id` under `maps`, if it is mapped.
    pub fn to_host(maps: &[IdMap], id: u32) -> Option<u32> {
        maps.iter().find_map(|m| {
            let off = id.checked_sub(m.container)?;
            (off < m.size).then(|| m.host + off)
        })
    }
}

/// The container's user namespace (`hostUsers: false`, `ctr run
/// --uidmap`): the pod's, joined by `path`, or a new one with the
/// mappings. The mappings are always known (the spec's
/// `linux.uidMappings`/`gidMappings`): the runner reads the entry point as
/// the user's host ids before it enters the namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserNamespacePlan {
    pub path: Option<PathBuf>,
    pub uids: Vec<IdMap>,
    pub gids: Vec<IdMap>,
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

/// A directory mount the guest sees as a preopen of its own: a bind mount,
/// or a tmpfs (`emptyDir` of medium `Memory`, `/dev/shm` on some runtimes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindMount {
    /// Host path (the mount's `source`); for a tmpfs, empty: it exists only
    /// inside the container's mount namespace.
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
    /// Process ids: through [`RunPlan::pid_namespace`] and
    /// [`RunPlan::new_pid_namespace`] (never in [`RunPlan::namespaces`]):
    /// the shim starts the runner in it.
    Pid,
    /// Mounts: through [`RunPlan::mount_namespace`] only.
    Mount,
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

/// The node's cgroup driver, from the runtime options (`SystemdCgroup`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CgroupDriver {
    #[default]
    Cgroupfs,
    Systemd,
}

/// How the shim reads a spec: what the runtime options say.
#[derive(Debug, Clone, Copy, Default)]
pub struct PlanOptions {
    pub cgroup_driver: CgroupDriver,
}

/// A compiled seccomp filter: the program the kernel runs (`sock_filter`
/// instructions, native endian) and the `seccomp(2)` flags to load it with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeccompProgram {
    #[serde(with = "hex_bytes")]
    pub program: Vec<u8>,
    pub flags: u32,
}

mod hex_bytes {
    pub fn serialize<S: serde::Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(b))
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s: String = serde::Deserialize::deserialize(d)?;
        hex::decode(s).map_err(serde::de::Error::custom)
    }
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
    /// The directory mounts the guest sees at their destinations, in spec
    /// order: binds of directories, and tmpfs mounts. The kernel
    /// filesystems (`proc`, `sysfs`, `devpts`, `mqueue`, `cgroup`) are
    /// mounted for the container but never shown to the guest.
    pub binds: Vec<BindMount>,
    /// Every entry of `mounts`, in order, to set up in the container's
    /// mount namespace.
    #[serde(default)]
    pub mounts: Vec<MountPlan>,
    /// The container's cgroup, relative to the hierarchy root
    /// (see [`crate::cgroup::resolve`]); `None` when the spec names none.
    pub cgroup: Option<String>,
    /// Whether `cgroup` is relative to the shim's own cgroup (a relative
    /// cgroupfs path, as runc reads one) rather than to the root.
    #[serde(default)]
    pub cgroup_relative: bool,
    /// `linux.resources.memory.limit` in bytes, when set (and not 0).
    pub memory_limit: Option<u64>,
    /// Network, IPC and UTS namespaces from `linux.namespaces`, in spec
    /// order. A kind the spec does not list is shared with the host (as with
    /// runc).
    pub namespaces: Vec<NamespacePlan>,
    /// The mount namespace: a new one for the container (then the rootfs is
    /// set up and pivoted into), or an existing one to join (an exec'd
    /// process); `None` when the spec lists none, and the container stays
    /// in the shim's, its guest confined to its preopens.
    #[serde(default)]
    pub mount_namespace: Option<NamespacePlan>,
    /// `linux.rootfsPropagation` (`None`: rslave, runc's default).
    #[serde(default)]
    pub rootfs_propagation: Option<u64>,
    /// `linux.maskedPaths`.
    #[serde(default)]
    pub masked_paths: Vec<String>,
    /// `linux.readonlyPaths`.
    #[serde(default)]
    pub readonly_paths: Vec<String>,
    /// `linux.devices`, then the defaults the spec does not override.
    #[serde(default)]
    pub devices: Vec<DevicePlan>,
    /// `hostname` and `domainname`.
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub domainname: Option<String>,
    /// The PID namespace to start the container's process in, when the spec
    /// names an existing one: a pod that shares its process namespace
    /// (`shareProcessNamespace: true`), held by the sandbox. The shim forks
    /// the runner into it, so the pod's other containers see it in `ps`.
    #[serde(default)]
    pub pid_namespace: Option<PathBuf>,
    /// The spec asks for a PID namespace of the container's own (no path):
    /// the shim starts the runner as its pid 1.
    #[serde(default)]
    pub new_pid_namespace: bool,
    /// The user namespace, entered after the mounts (see
    /// [`UserNamespacePlan`]).
    #[serde(default)]
    pub user_namespace: Option<UserNamespacePlan>,
    /// `process.terminal`: a Wasm guest cannot drive a terminal, so the shim
    /// refuses it for Wasm; a pod's Linux containers get one from runc.
    pub terminal: bool,
    /// `process.user`.
    #[serde(default)]
    pub user: UserPlan,
    /// `process.capabilities`, as the spec lists them (before an exec);
    /// `None` when the spec has none (the runner's are then left as they
    /// are, as runc leaves them).
    #[serde(default)]
    pub capabilities: Option<CapabilitySets>,
    /// `process.noNewPrivileges`.
    #[serde(default)]
    pub no_new_privileges: bool,
    /// `process.rlimits`.
    #[serde(default)]
    pub rlimits: Vec<Rlimit>,
    /// `process.oomScoreAdj`.
    #[serde(default)]
    pub oom_score_adj: Option<i32>,
    /// `linux.sysctl`, sorted by key.
    #[serde(default)]
    pub sysctls: Vec<(String, String)>,
    /// `process.apparmorProfile`.
    #[serde(default)]
    pub apparmor_profile: Option<String>,
    /// `process.selinuxLabel`.
    #[serde(default)]
    pub selinux_label: Option<String>,
    /// `linux.seccomp`, compiled by the shim (never by the spec's author).
    #[serde(default)]
    pub seccomp: Option<SeccompProgram>,
}

impl RunPlan {
    /// Builds the plan for the container whose bundle is at `bundle`, for a
    /// node with the cgroupfs driver.
    pub fn from_spec(spec: &Spec, bundle: &Path) -> Result<Self, PlanError> {
        Self::from_spec_with(spec, bundle, PlanOptions::default())
    }

    /// Builds the plan for the container whose bundle is at `bundle`.
    pub fn from_spec_with(
        spec: &Spec,
        bundle: &Path,
        options: PlanOptions,
    ) -> Result<Self, PlanError> {
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

        let mounts = spec
            .mounts()
            .iter()
            .flatten()
            .map(|m| parse_mount(m, bundle))
            .collect::<Result<Vec<_>, _>>()?;
        let binds = mounts
            .iter()
            .filter_map(|m| match (&m.kind, &m.source) {
                (MountKind::Bind, Some(source)) => Some(BindMount {
                    source: source.clone(),
                    destination: m.destination.clone(),
                    readonly: m.readonly(),
                }),
                (MountKind::Tmpfs, _) => Some(BindMount {
                    source: PathBuf::new(),
                    destination: m.destination.clone(),
                    readonly: m.readonly(),
                }),
                _ => None,
            })
            .collect();

        let linux = spec.linux().as_ref();
        let cgroup = match linux.and_then(|l| l.cgroups_path().as_ref()) {
            Some(p) => crate::cgroup::resolve(&p.to_string_lossy(), options.cgroup_driver)?,
            None => None,
        };
        let memory_limit = linux
            .and_then(|l| l.resources().as_ref())
            .and_then(|r| r.memory().as_ref())
            .and_then(|m| m.limit())
            .and_then(|l| u64::try_from(l).ok())
            .filter(|l| *l > 0);

        let spec_namespaces = linux
            .and_then(|l| l.namespaces().as_ref())
            .cloned()
            .unwrap_or_default();
        let uids = linux
            .map(|l| IdMap::all_of(l.uid_mappings()))
            .unwrap_or_default();
        let gids = linux
            .map(|l| IdMap::all_of(l.gid_mappings()))
            .unwrap_or_default();
        let user_namespace = match spec_namespaces
            .iter()
            .rfind(|ns| ns.typ() == LinuxNamespaceType::User)
        {
            None if uids.is_empty() && gids.is_empty() => None,
            None => {
                return Err(PlanError::UserNamespace {
                    field: "linux.uidMappings",
                    why: "id mappings without a user namespace in linux.namespaces",
                })
            }
            Some(_) if uids.is_empty() || gids.is_empty() => {
                return Err(PlanError::UserNamespace {
                    field: "linux.namespaces",
                    why: "a user namespace needs linux.uidMappings and linux.gidMappings",
                })
            }
            Some(ns) => Some(UserNamespacePlan {
                path: ns.path().clone().filter(|p| !p.as_os_str().is_empty()),
                uids,
                gids,
            }),
        };
        let ns_path = |ns: &oci_spec::runtime::LinuxNamespace| {
            ns.path().clone().filter(|p| !p.as_os_str().is_empty())
        };
        let namespaces: Vec<NamespacePlan> = spec_namespaces
            .iter()
            .filter_map(|ns| {
                let kind = match ns.typ() {
                    LinuxNamespaceType::Network => NamespaceKind::Network,
                    LinuxNamespaceType::Ipc => NamespaceKind::Ipc,
                    LinuxNamespaceType::Uts => NamespaceKind::Uts,
                    _ => return None,
                };
                Some(NamespacePlan {
                    kind,
                    path: ns_path(ns),
                })
            })
            .collect();
        let mount_namespace = spec_namespaces
            .iter()
            .rfind(|ns| ns.typ() == LinuxNamespaceType::Mount)
            .map(|ns| NamespacePlan {
                kind: NamespaceKind::Mount,
                path: ns_path(ns),
            });
        let pid = spec_namespaces
            .iter()
            .rfind(|ns| ns.typ() == LinuxNamespaceType::Pid);
        let pid_namespace = pid.and_then(ns_path);
        let new_pid_namespace = pid.is_some() && pid_namespace.is_none();

        let masked_paths = linux
            .and_then(|l| l.masked_paths().clone())
            .unwrap_or_default();
        let readonly_paths = linux
            .and_then(|l| l.readonly_paths().clone())
            .unwrap_or_default();
        if mount_namespace.is_none() {
            if !masked_paths.is_empty() {
                return Err(PlanError::PathsWithoutMountNamespace("maskedPaths"));
            }
            if !readonly_paths.is_empty() {
                return Err(PlanError::PathsWithoutMountNamespace("readonlyPaths"));
            }
        }
        let rootfs_propagation = mounts::parse_rootfs_propagation(
            linux.and_then(|l| l.rootfs_propagation().as_deref()),
        )?;
        let devices = devices(
            linux
                .and_then(|l| l.devices().as_deref())
                .unwrap_or_default(),
        );

        let has_uts = namespaces.iter().any(|ns| ns.kind == NamespaceKind::Uts);
        let hostname = spec.hostname().clone().filter(|h| !h.is_empty());
        let domainname = spec.domainname().clone().filter(|h| !h.is_empty());
        if hostname.is_some() && !has_uts {
            return Err(PlanError::HostnameWithoutUts("hostname"));
        }
        if domainname.is_some() && !has_uts {
            return Err(PlanError::HostnameWithoutUts("domainname"));
        }
        let mut sysctls: Vec<(String, String)> = linux
            .and_then(|l| l.sysctl().clone())
            .unwrap_or_default()
            .into_iter()
            .collect();
        sysctls.sort();
        security::check_sysctls(&sysctls, &namespaces)?;

        let user = process.user();
        let user = UserPlan {
            uid: user.uid(),
            gid: user.gid(),
            additional_gids: user.additional_gids().clone().unwrap_or_default(),
            umask: user.umask(),
        };
        let capabilities = process.capabilities().as_ref().map(|c| {
            let mask = |set: &Option<oci_spec::runtime::Capabilities>| {
                set.iter()
                    .flatten()
                    .filter_map(|cap| {
                        let name = serde_json::to_value(cap).ok()?;
                        security::capability_bit(name.as_str()?)
                    })
                    .fold(0u64, |m, bit| m | (1 << bit))
            };
            CapabilitySets {
                bounding: mask(c.bounding()),
                effective: mask(c.effective()),
                inheritable: mask(c.inheritable()),
                permitted: mask(c.permitted()),
                ambient: mask(c.ambient()),
            }
        });
        let rlimits = process
            .rlimits()
            .iter()
            .flatten()
            .map(|r| {
                let name = serde_json::to_value(r.typ())
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                Ok(Rlimit {
                    resource: security::rlimit_resource(&name)?,
                    soft: r.soft(),
                    hard: r.hard(),
                })
            })
            .collect::<Result<Vec<_>, PlanError>>()?;
        let oom_score_adj = process.oom_score_adj();
        if let Some(adj) = oom_score_adj {
            if !(-1000..=1000).contains(&adj) {
                return Err(PlanError::OomScoreAdj(adj));
            }
        }

        Ok(RunPlan {
            args,
            env,
            cwd,
            root,
            binds,
            mounts,
            cgroup: cgroup.as_ref().map(|c| c.path.clone()),
            cgroup_relative: cgroup.is_some_and(|c| c.relative),
            memory_limit,
            namespaces,
            mount_namespace,
            rootfs_propagation,
            masked_paths,
            readonly_paths,
            devices,
            hostname,
            domainname,
            pid_namespace,
            new_pid_namespace,
            user_namespace,
            terminal: process.terminal().unwrap_or(false),
            user,
            capabilities,
            no_new_privileges: process.no_new_privileges().unwrap_or(false),
            rlimits,
            oom_score_adj,
            sysctls,
            apparmor_profile: process.apparmor_profile().clone().filter(|p| !p.is_empty()),
            selinux_label: process.selinux_label().clone().filter(|l| !l.is_empty()),
            seccomp: None,
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

    /// The host uid and gid of the spec's user (itself without a user
    /// namespace).
    pub fn host_ids(&self) -> Result<(u32, u32), PlanError> {
        let Some(ns) = &self.user_namespace else {
            return Ok((self.user.uid, self.user.gid));
        };
        let unmapped = |field| PlanError::UserNamespace {
            field,
            why: "not mapped by the user namespace",
        };
        Ok((
            IdMap::to_host(&ns.uids, self.user.uid).ok_or(unmapped("process.user.uid"))?,
            IdMap::to_host(&ns.gids, self.user.gid).ok_or(unmapped("process.user.gid"))?,
        ))
    }

    /// The spec's user as the node sees it: uid, gid and additional gids
    /// (see [`RunPlan::host_ids`]).
    pub fn host_user(&self) -> Result<(u32, u32, Vec<u32>), PlanError> {
        let (uid, gid) = self.host_ids()?;
        Ok((uid, gid, self.host_additional_gids()?))
    }

    /// The host gids of `process.user.additionalGids`.
    pub fn host_additional_gids(&self) -> Result<Vec<u32>, PlanError> {
        let Some(ns) = &self.user_namespace else {
            return Ok(self.user.additional_gids.clone());
        };
        self.user
            .additional_gids
            .iter()
            .map(|g| {
                IdMap::to_host(&ns.gids, *g).ok_or(PlanError::UserNamespace {
                    field: "process.user.additionalGids",
                    why: "not mapped by the user namespace",
                })
            })
            .collect()
    }

    /// Whether the container gets a mount namespace of its own, set up from
    /// its mounts and pivoted into (rather than joining one).
    pub fn new_mount_namespace(&self) -> bool {
        self.mount_namespace
            .as_ref()
            .is_some_and(|ns| ns.path.is_none())
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

/// `linux.devices`, then each default device the spec does not name.
fn devices(spec: &[oci_spec::runtime::LinuxDevice]) -> Vec<DevicePlan> {
    let mut out: Vec<DevicePlan> = spec
        .iter()
        .map(|d| {
            let kind = match d.typ() {
                oci_spec::runtime::LinuxDeviceType::B => 'b',
                oci_spec::runtime::LinuxDeviceType::P => 'p',
                _ => 'c',
            };
            DevicePlan {
                path: normalise(d.path()),
                kind,
                major: d.major(),
                minor: d.minor(),
                mode: d.file_mode().unwrap_or(0o666),
                uid: d.uid().unwrap_or(0),
                gid: d.gid().unwrap_or(0),
            }
        })
        .collect();
    for default in mounts::default_devices() {
        if !out.iter().any(|d| d.path == default.path) {
            out.push(default);
        }
    }
    out
}

fn split_env(kv: &str) -> Result<(String, String), PlanError> {
    match kv.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(PlanError::BadEnv(kv.to_owned())),
    }
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
                // a tmpfs is the guest's too; it has no host source
                BindMount {
                    source: "".into(),
                    destination: "/dev/shm".into(),
                    readonly: false
                },
            ]
        );
        assert_eq!(plan.mounts.len(), 4);
        assert_eq!(plan.mount_namespace, None);
        assert_eq!(plan.capabilities, None);
        assert_eq!(plan.user, UserPlan::default());
        assert_eq!(plan.devices.len(), 6, "the default devices");
    }

    #[test]
    fn the_sandbox_fields_of_a_cri_container() {
        let mut v = base();
        v["hostname"] = json!("pod-a");
        v["process"]["user"] =
            json!({"uid": 1000, "gid": 1000, "additionalGids": [2000], "umask": 18});
        v["process"]["noNewPrivileges"] = json!(true);
        v["process"]["oomScoreAdj"] = json!(777);
        v["process"]["capabilities"] = json!({
            "bounding": ["CAP_NET_BIND_SERVICE", "CAP_KILL"],
            "effective": ["CAP_NET_BIND_SERVICE"],
            "permitted": ["CAP_NET_BIND_SERVICE"],
            "ambient": ["CAP_NET_BIND_SERVICE"]
        });
        v["process"]["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 512}]);
        v["process"]["apparmorProfile"] = json!("cri-containerd.apparmor.d");
        v["linux"] = json!({
            "namespaces": [{"type": "mount"}, {"type": "uts"}, {"type": "network", "path": "/proc/9/ns/net"}],
            "sysctl": {"net.ipv4.ip_unprivileged_port_start": "0", "kernel.shm_rmid_forced": "1"},
            "maskedPaths": ["/proc/kcore"],
            "readonlyPaths": ["/proc/sys"],
            "rootfsPropagation": "rprivate",
            "devices": [{"path": "/dev/null", "type": "c", "major": 1, "minor": 3, "fileMode": 438}]
        });
        // kernel.shm_rmid_forced needs an IPC namespace: refused without
        let err = RunPlan::from_spec(&spec(v.clone()), Path::new("/b")).unwrap_err();
        assert!(matches!(err, PlanError::Sysctl { .. }), "{err}");
        v["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(json!({"type": "ipc"}));
        let plan = RunPlan::from_spec(&spec(v.clone()), Path::new("/b")).unwrap();
        assert!(plan.new_mount_namespace());
        assert_eq!(plan.hostname.as_deref(), Some("pod-a"));
        assert_eq!(
            plan.user,
            UserPlan {
                uid: 1000,
                gid: 1000,
                additional_gids: vec![2000],
                umask: Some(18)
            }
        );
        assert!(plan.no_new_privileges);
        assert_eq!(plan.oom_score_adj, Some(777));
        let caps = plan.capabilities.unwrap();
        assert_eq!(caps.bounding, (1 << 10) | (1 << 5));
        assert_eq!(
            (caps.effective, caps.ambient, caps.inheritable),
            (1 << 10, 1 << 10, 0)
        );
        assert_eq!(
            plan.rlimits,
            [Rlimit {
                resource: 7,
                soft: 512,
                hard: 1024
            }]
        );
        assert_eq!(
            plan.sysctls[1],
            ("net.ipv4.ip_unprivileged_port_start".into(), "0".into())
        );
        assert_eq!(plan.masked_paths, ["/proc/kcore"]);
        assert_eq!(plan.readonly_paths, ["/proc/sys"]);
        assert_eq!(
            plan.rootfs_propagation,
            Some(mounts::flags::MS_PRIVATE | mounts::flags::MS_REC)
        );
        assert_eq!(
            plan.devices.len(),
            6,
            "the spec's /dev/null replaces the default"
        );
        assert_eq!(
            plan.apparmor_profile.as_deref(),
            Some("cri-containerd.apparmor.d")
        );
        // a hostname needs a UTS namespace; masked paths a mount namespace
        let mut bad = v.clone();
        bad["linux"]["namespaces"] = json!([{"type": "mount"}]);
        bad["linux"]["sysctl"] = json!({});
        assert_eq!(
            RunPlan::from_spec(&spec(bad.clone()), Path::new("/b")),
            Err(PlanError::HostnameWithoutUts("hostname"))
        );
        bad["hostname"] = json!(null);
        bad["linux"]["namespaces"] = json!([]);
        assert_eq!(
            RunPlan::from_spec(&spec(bad.clone()), Path::new("/b")),
            Err(PlanError::PathsWithoutMountNamespace("maskedPaths"))
        );
        let mut bad = v.clone();
        bad["process"]["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "hard": 1, "soft": 1}]);
        bad["process"]["oomScoreAdj"] = json!(1001);
        assert_eq!(
            RunPlan::from_spec(&spec(bad), Path::new("/b")),
            Err(PlanError::OomScoreAdj(1001))
        );
        // the plan the runner gets is the plan the shim made
        let text = serde_json::to_string(&plan).unwrap();
        assert_eq!(serde_json::from_str::<RunPlan>(&text).unwrap(), plan);
    }

    #[test]
    fn cgroup_and_memory_limit() {
        let mut v = base();
        v["linux"] = json!({"cgroupsPath": "/ns/c1", "resources": {"memory": {"limit": 67108864}}});
        let plan = RunPlan::from_spec(&spec(v.clone()), Path::new("/b")).unwrap();
        assert_eq!(plan.cgroup.as_deref(), Some("ns/c1"));
        assert!(!plan.cgroup_relative);
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
        assert_eq!(plan.pid_namespace, None);
        assert!(plan.new_pid_namespace, "pid without a path: a new one");
        v["linux"] = json!({"namespaces": [{"type": "ipc"}]});
        let plan = RunPlan::from_spec(&spec(v.clone()), Path::new("/b")).unwrap();
        assert!(!plan.new_pid_namespace, "no pid entry: the shim's");
        v["linux"] = json!({"namespaces": [{"type": "pid", "path": "/proc/7/ns/pid"}]});
        let plan = RunPlan::from_spec(&spec(v.clone()), Path::new("/b")).unwrap();
        assert_eq!(
            plan.pid_namespace.as_deref(),
            Some(Path::new("/proc/7/ns/pid"))
        );
        assert!(!plan.new_pid_namespace);
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

    #[test]
    fn user_namespaces_with_their_mappings() {
        let map = json!([{"containerID": 0, "hostID": 1000000, "size": 65536}]);
        let plan_of = |v| RunPlan::from_spec(&spec(v), Path::new("/b"));
        assert_eq!(plan_of(base()).unwrap().user_namespace, None);
        let mut v = base();
        v["linux"]["namespaces"] = json!([
            {"type": "mount"},
            {"type": "user", "path": "/proc/1/ns/user"}
        ]);
        v["linux"]["uidMappings"] = map.clone();
        v["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": 2000000, "size": 1000}, {"containerID": 1000, "hostID": 5, "size": 1}]);
        v["process"]["user"] = json!({"uid": 7, "gid": 1000, "additionalGids": [0, 999]});
        let plan = plan_of(v.clone()).unwrap();
        let ns = plan.user_namespace.clone().unwrap();
        assert_eq!(ns.path.as_deref(), Some(Path::new("/proc/1/ns/user")));
        assert_eq!(
            ns.uids,
            [IdMap {
                container: 0,
                host: 1_000_000,
                size: 65536
            }]
        );
        assert_eq!(plan.host_ids().unwrap(), (1_000_007, 5));
        assert_eq!(plan.host_additional_gids().unwrap(), [2_000_000, 2_000_999]);
        // an unmapped user is an error naming the field
        v["process"]["user"] = json!({"uid": 70000, "gid": 0});
        let err = plan_of(v.clone()).unwrap().host_ids().unwrap_err();
        assert!(err.to_string().starts_with("process.user.uid: "), "{err}");
        // a namespace without mappings, mappings without a namespace
        let mut bad = v.clone();
        bad["linux"]["gidMappings"] = json!([]);
        assert!(matches!(
            plan_of(bad),
            Err(PlanError::UserNamespace {
                field: "linux.namespaces",
                ..
            })
        ));
        let mut bad = base();
        bad["linux"]["uidMappings"] = map;
        assert!(matches!(
            plan_of(bad),
            Err(PlanError::UserNamespace {
                field: "linux.uidMappings",
                ..
            })
        ));
        // without a path: a new one (ctr run --uidmap)
        v["linux"]["namespaces"] = json!([{"type": "mount"}, {"type": "user"}]);
        assert_eq!(plan_of(v).unwrap().user_namespace.unwrap().path, None);
    }
}
