//! The guest's file system: its root, cut from the container's mount tree
//! without procfs, and its preopens.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use wasmpod_oci::plan::mounts::MountKind;
use wasmpod_oci::plan::RunPlan;

use super::SandboxError;
use crate::sys::Sys;

/// The guest's `/`: a detached copy of the container's whole mount tree,
/// as the spec made it, with every procfs taken out (a guest must never
/// reach the runner's `/proc/self/mem`). The copy is cut in a mount
/// namespace of its own, its mounts made private first so that nothing
/// propagates, and the runner goes `home` after. Returns the copy and where
/// the container's procfs is, through which the runner reaches the copy.
pub fn cut_root(
    sys: &dyn Sys,
    plan: &RunPlan,
    home: &File,
) -> Result<(OwnedFd, Option<PathBuf>), SandboxError> {
    let err = |what| {
        move |source| SandboxError::Rootfs {
            path: "/".into(),
            what,
            source,
        }
    };
    let mut procfs: Vec<PathBuf> = plan
        .mounts
        .iter()
        .filter(|m| m.kind == MountKind::Proc)
        .map(|m| PathBuf::from(&m.destination))
        .collect();
    if let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") {
        procfs.extend(proc_mount_points(&info));
    }
    procfs.sort_by_key(|p| p.components().count());
    procfs.dedup();
    sys.unshare(nix::sched::CloneFlags::CLONE_NEWNS)
        .map_err(err("a mount namespace to cut the guest's root in"))?;
    let cut = (|| {
        sys.mount(
            None,
            Path::new("/"),
            None,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None,
        )
        .map_err(err("make the copy's mounts private"))?;
        for point in &procfs {
            match sys.umount(point, MntFlags::MNT_DETACH) {
                // below one already taken out
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOENT)) => {}
                other => other.map_err(err("take procfs out of the guest's root"))?,
            }
        }
        sys.clone_mount(Path::new("/"))
            .map_err(err("copy the guest's root"))
    })();
    sys.setns(home.as_fd(), nix::sched::CloneFlags::CLONE_NEWNS)
        .map_err(err("return to the container's mount namespace"))?;
    sys.chdir(Path::new("/")).map_err(err("chdir /"))?;
    Ok((cut?, procfs.into_iter().next()))
}

/// The mount points of every procfs in `mountinfo`.
pub fn proc_mount_points(mountinfo: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            if right.split(' ').next()? != "proc" {
                return None;
            }
            let point = left.split(' ').nth(4)?;
            Some(PathBuf::from(crate::runner::sandbox::unescape(point)))
        })
        .collect()
}

/// One directory the guest sees: where the runner opens it, where the guest
/// finds it, and whether WASI itself must refuse writes (only where the
/// kernel cannot: host paths without a mount namespace).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preopen {
    pub host: PathBuf,
    pub guest: String,
    pub readonly: bool,
}

/// The guest's file system: its preopens, opened again for each HTTP
/// request. Holds the guest root's mount, a detached copy of the rootfs.
#[derive(Debug)]
pub struct GuestFs {
    preopens: Vec<Preopen>,
    _root: Option<OwnedFd>,
}

impl GuestFs {
    /// Host paths, as without a mount namespace: the rootfs and the
    /// directory binds (a tmpfs has no host path: not shown), WASI
    /// permissions enforcing `ro`.
    pub fn host(plan: &RunPlan) -> GuestFs {
        let mut preopens = vec![Preopen {
            host: plan.root.path.clone(),
            guest: "/".into(),
            readonly: plan.root.readonly,
        }];
        preopens.extend(
            plan.binds
                .iter()
                .filter(|b| !b.source.as_os_str().is_empty())
                .map(|b| Preopen {
                    host: b.source.clone(),
                    guest: b.destination.clone(),
                    readonly: b.readonly,
                }),
        );
        GuestFs {
            preopens,
            _root: None,
        }
    }

    /// Inside the container's mount namespace (after the pivot): the root
    /// through the detached copy `root` (reached by `<procfs>/self/fd/N`,
    /// or `/` when the container has no procfs to hide), and each directory
    /// mount at its destination, the kernel enforcing `ro`.
    pub fn container(plan: &RunPlan, root: OwnedFd, procfs: Option<PathBuf>) -> GuestFs {
        let root_path = match procfs {
            Some(p) => p.join(format!("self/fd/{}", root.as_raw_fd())),
            None => PathBuf::from("/"),
        };
        let mut preopens = vec![Preopen {
            host: root_path,
            guest: "/".into(),
            readonly: false,
        }];
        preopens.extend(plan.binds.iter().map(|b| Preopen {
            host: PathBuf::from(&b.destination),
            guest: b.destination.clone(),
            readonly: false,
        }));
        GuestFs {
            preopens,
            _root: Some(root),
        }
    }

    /// The directories to preopen, in order.
    pub fn preopens(&self) -> &[Preopen] {
        &self.preopens
    }
}
