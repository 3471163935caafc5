//! The runner applies its container's OCI sandbox to itself before any
//! guest code runs, in runc's order (`standard_init_linux.go`), each step a
//! function named after the spec field it applies:
//!
//! ```text
//! before the load      oomScoreAdj → user namespace opened (or made) → namespaces (net, ipc, uts)
//!                      → mount namespace:
//!                      new: propagation, rootfs bind, mounts, devices, /dev links, guest root clone
//!                      joined (an exec'd process): setns, guest root clone
//! the load             entry point read as the user (fsuid), compiled or mapped as root
//! after the load       one thread left (checked) → pivot_root → read-only remounts, root readonly
//!                      → umask → hostname → sysctls → readonlyPaths → maskedPaths → guest root
//!                      → name lookup → rlimits → user namespace (setns) → noNewPrivileges
//!                      → seccomp (if it needs privileges)
//!                      → bounding set, keepcaps, groups, gid, uid, capabilities → AppArmor/SELinux
//! before the guest     seccomp (with noNewPrivileges: as late as possible)
//! ```
//! Everything goes through [`Sys`], so the order is unit-tested against
//! the recording double. Where a step is impossible, the container fails
//! with an error naming the field, as runc's would.
//!
//! The guest's `/` is a detached copy of the container's mount tree with
//! every procfs taken out, so it sees the container's files, binds and
//! volumes but can never reach the runner's `/proc/self/mem` or file
//! descriptors through WASI.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::sched::CloneFlags;
use wasmpod_oci::plan::RunPlan;

use crate::control::FailureKind;
use crate::runner::namespace;
use crate::sys::Sys;

mod cgroupfs;
mod devices;
pub mod guest;
pub mod process;
pub mod rootfs;

pub use guest::{GuestFs, Preopen};

/// Why the sandbox the spec asks for cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(transparent)]
    Namespace(#[from] namespace::NamespaceError),
    #[error("pod sandbox signals: {0}")]
    Signals(#[source] std::io::Error),
    #[error("mount namespace {path}: {source}")]
    MountNamespace {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("rootfs {path}: {what}: {source}")]
    Rootfs {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("mounts: {destination}: {what}: {source}")]
    Mount {
        destination: String,
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("mounts: {destination}: source {} does not exist", source_path.display())]
    MissingSource {
        destination: String,
        source_path: PathBuf,
    },
    #[error("linux.devices: {path}: {source}")]
    Device {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("linux.{field}: {path}: {source}")]
    Path {
        field: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{field} {name:?}: {source}")]
    Hostname {
        field: &'static str,
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("linux.sysctl {key:?}: {source}")]
    Sysctl {
        key: String,
        #[source]
        source: std::io::Error,
    },
    #[error("process.oomScoreAdj {value}: {source}")]
    OomScoreAdj {
        value: i32,
        #[source]
        source: std::io::Error,
    },
    #[error("process.rlimits {resource}: {source}")]
    Rlimit {
        resource: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("process.noNewPrivileges: {0}")]
    NoNewPrivileges(#[source] std::io::Error),
    #[error("linux.seccomp: load the filter: {0}")]
    Seccomp(#[source] std::io::Error),
    #[error("process.user.{what}: {source}")]
    User {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("process.capabilities: {what}: {source}")]
    Capabilities {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("process.apparmorProfile {profile:?}: {why}")]
    AppArmor { profile: String, why: String },
    #[error("process.selinuxLabel {label:?}: {why}")]
    Selinux { label: String, why: String },
    #[error("name lookup with {services:?}: {source}")]
    NameLookup {
        services: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the runner has {0} threads where it must have one to change its credentials")]
    Threads(usize),
    #[error("user namespace {path}: {source}")]
    UserNamespace {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl SandboxError {
    /// Whose fault it is: a field of the spec that cannot be applied, or the
    /// node.
    pub fn kind(&self) -> FailureKind {
        match self {
            SandboxError::MissingSource { .. }
            | SandboxError::Sysctl { .. }
            | SandboxError::OomScoreAdj { .. }
            | SandboxError::Rlimit { .. }
            | SandboxError::AppArmor { .. }
            | SandboxError::Selinux { .. }
            | SandboxError::Mount { .. } => FailureKind::Spec,
            _ => FailureKind::Node,
        }
    }
}

/// Where the container's mount namespace stands once entered.
pub enum Mounts {
    /// The spec lists none: the runner stays in the shim's, and the guest
    /// sees host paths through its preopens only.
    Host,
    /// Set up by this runner below `rootfs` (a host path until the pivot);
    /// `home` is the namespace, held open.
    New { rootfs: PathBuf, home: File },
    /// The container's, joined (an exec'd process).
    Joined { home: File },
}

impl Mounts {
    /// The directory the entry point is resolved in at load time.
    pub fn load_root<'a>(&'a self, plan: &'a RunPlan) -> &'a Path {
        match self {
            Mounts::Host | Mounts::New { .. } => &plan.root.path,
            Mounts::Joined { .. } => Path::new("/"),
        }
    }
}

/// What [`before_load`] leaves for [`after_load`].
pub struct Entered {
    pub mounts: Mounts,
    /// The user namespace to enter after the mounts: the pod's, opened
    /// while its path is still reachable, or a new one with the mappings.
    userns: Option<std::os::fd::OwnedFd>,
}

impl Entered {
    /// The directory the entry point is resolved in at load time.
    pub fn load_root<'a>(&'a self, plan: &'a RunPlan) -> &'a Path {
        self.mounts.load_root(plan)
    }
}

/// The steps before the load: `oomScoreAdj`, the user namespace opened (or
/// made), the namespaces, the mount namespace.
pub fn before_load(sys: &dyn Sys, plan: &RunPlan) -> Result<Entered, SandboxError> {
    process::oom_score_adj(sys, plan)?;
    let userns = match &plan.user_namespace {
        None => None,
        Some(ns) => {
            let err = |source| SandboxError::UserNamespace {
                path: ns.path.clone().unwrap_or_else(|| "new".into()),
                source,
            };
            Some(match &ns.path {
                Some(path) => File::open(path)
                    .map(std::os::fd::OwnedFd::from)
                    .map_err(err)?,
                None => sys.user_namespace(&ns.uids, &ns.gids).map_err(err)?,
            })
        }
    };
    namespace::enter(sys, &plan.namespaces)?;
    let mounts = mount_namespace(sys, plan)?;
    Ok(Entered { mounts, userns })
}

/// The container's mount namespace: joined, or made below the rootfs.
fn mount_namespace(sys: &dyn Sys, plan: &RunPlan) -> Result<Mounts, SandboxError> {
    let Some(ns) = &plan.mount_namespace else {
        return Ok(Mounts::Host);
    };
    match &ns.path {
        Some(path) => {
            let err = |source| SandboxError::MountNamespace {
                path: path.clone(),
                source,
            };
            let home = File::open(path).map_err(err)?;
            sys.setns(home.as_fd(), CloneFlags::CLONE_NEWNS)
                .map_err(err)?;
            Ok(Mounts::Joined { home })
        }
        None => {
            let err = |source| SandboxError::MountNamespace {
                path: "new".into(),
                source,
            };
            sys.unshare(CloneFlags::CLONE_NEWNS).map_err(err)?;
            let home = File::open("/proc/thread-self/ns/mnt").map_err(err)?;
            let rootfs = plan.root.path.clone();
            rootfs::prepare(sys, plan, &rootfs)?;
            Ok(Mounts::New { rootfs, home })
        }
    }
}

/// The steps after the load, up to the user and its capabilities and the
/// LSM profile; returns what the guest's file system is.
pub fn after_load(
    sys: &dyn Sys,
    plan: &RunPlan,
    entered: Entered,
) -> Result<GuestFs, SandboxError> {
    // credentials are per thread: no other thread may keep the runner's
    // (and only a single-threaded process may enter a user namespace)
    let threads = sys.settled_threads();
    if threads != 1 {
        return Err(SandboxError::Threads(threads));
    }
    let Entered { mounts, userns } = entered;
    let guest = match mounts {
        Mounts::Host => {
            umask(sys, plan);
            GuestFs::host(plan)
        }
        Mounts::Joined { home } => {
            if let Some(mask) = plan.user.umask {
                sys.umask(mask);
            }
            let (root, procfs) = guest::cut_root(sys, plan, &home)?;
            GuestFs::container(plan, root, procfs)
        }
        Mounts::New { rootfs, home } => {
            rootfs::pivot(sys, &rootfs)?;
            rootfs::finalize(sys, plan)?;
            umask(sys, plan);
            process::hostname(sys, plan)?;
            process::sysctls(sys, plan)?;
            rootfs::readonly_paths(sys, plan)?;
            rootfs::masked_paths(sys, plan)?;
            let (root, procfs) = guest::cut_root(sys, plan, &home)?;
            GuestFs::container(plan, root, procfs)
        }
    };
    process::name_lookup(sys)?;
    process::rlimits(sys, plan)?;
    if let (Some(fd), Some(ns)) = (&userns, &plan.user_namespace) {
        // last of the privileged steps: the mounts, hostname, sysctls and
        // rlimits above were made as the node's root (see docs/security.md)
        sys.setns(fd.as_fd(), CloneFlags::CLONE_NEWUSER)
            .map_err(|source| SandboxError::UserNamespace {
                path: ns.path.clone().unwrap_or_else(|| "new".into()),
                source,
            })?;
    }
    process::no_new_privileges(sys, plan)?;
    if !plan.no_new_privileges {
        // without no_new_privs loading a filter needs CAP_SYS_ADMIN: now
        process::seccomp(sys, plan)?;
    }
    process::user_and_capabilities(sys, plan)?;
    process::lsm(sys, plan)?;
    Ok(guest)
}

/// The last step, right before the guest runs: seccomp, when
/// `noNewPrivileges` let it wait until now.
pub fn before_guest(sys: &dyn Sys, plan: &RunPlan) -> Result<(), SandboxError> {
    if plan.no_new_privileges {
        process::seccomp(sys, plan)?;
    }
    Ok(())
}

/// `process.user.umask`, or runc's default 0022.
fn umask(sys: &dyn Sys, plan: &RunPlan) {
    sys.umask(plan.user.umask.unwrap_or(0o022));
}

/// Undoes mountinfo's octal escapes (`\040` for a space, ...).
pub fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b));
        if bytes[i] == b'\\' && octal {
            let digit = |b: u8| u32::from(b - b'0');
            let v = digit(bytes[i + 1]) * 64 + digit(bytes[i + 2]) * 8 + digit(bytes[i + 3]);
            out.push(u8::try_from(v).unwrap_or(b'?'));
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests;
