//! The container's mount namespace, as runc's `prepareRootfs` and
//! `finalizeRootfs` set it up: `/` made a slave (or what
//! `rootfsPropagation` says), the rootfs bound onto itself, every entry of
//! `mounts` mounted below it in spec order, the devices and `/dev` links
//! made, then `pivot_root` into it and the old root detached; after that,
//! the read-only remounts, and the masked and read-only paths.
//!
//! Mount targets are resolved inside the rootfs (`openat2` with
//! `RESOLVE_IN_ROOT`, missing directories made one component at a time),
//! held as `O_PATH` descriptors and mounted onto through
//! `/proc/self/fd/N`, so neither a symlink in the image nor a race with it
//! can put a mount outside the rootfs. `proc` and `sysfs` targets may not
//! be reached through any symlink at all.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::mount::{MntFlags, MsFlags};
use nix::sys::stat::Mode;
use wasmpod_oci::plan::mounts::{MountKind, MountPlan};
use wasmpod_oci::plan::RunPlan;

use super::cgroupfs::mount_cgroup;
use super::devices::{dev_links, make_device};
use super::SandboxError;
use crate::sys::Sys;

/// What to make of a missing last component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Create {
    Dir,
    File,
}

/// `flags` as the plan's `u64` (`c_ulong` is narrower on 32-bit targets).
#[allow(clippy::unnecessary_cast, reason = "c_ulong is u32 on 32-bit targets")]
pub(super) fn bits(flags: MsFlags) -> u64 {
    flags.bits() as u64
}

pub(super) fn ms(bits: u64) -> MsFlags {
    MsFlags::from_bits_truncate(bits as _)
}

/// The path a descriptor is reached by, for mount(2) and friends.
pub(super) fn fd_path(fd: &impl AsRawFd) -> PathBuf {
    format!("/proc/self/fd/{}", fd.as_raw_fd()).into()
}

fn open_in(root: &File, rel: &str, flags: OFlag, no_symlinks: bool) -> nix::Result<OwnedFd> {
    let mut resolve = ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS;
    if no_symlinks {
        resolve |= ResolveFlag::RESOLVE_NO_SYMLINKS;
    }
    let rel = if rel.is_empty() { "." } else { rel };
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .mode(Mode::empty())
        .resolve(resolve);
    openat2(root, Path::new(rel), how)
}

/// Resolves `guest` (an absolute guest path) inside `root`, making the
/// missing directories on the way, and the last component as `create`
/// says. Returns an `O_PATH` descriptor of the target.
pub(super) fn resolve(
    root: &File,
    guest: &str,
    create: Create,
    no_symlinks: bool,
) -> std::io::Result<OwnedFd> {
    let parts: Vec<&str> = guest.split('/').filter(|p| !p.is_empty()).collect();
    for i in 0..parts.len() {
        let prefix = parts[..=i].join("/");
        let last = i + 1 == parts.len();
        match open_in(root, &prefix, OFlag::O_PATH, no_symlinks) {
            Ok(fd) if last => return Ok(fd),
            Ok(_) => continue,
            Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => return Err(e.into()),
        }
        let parent = open_in(
            root,
            &parts[..i].join("/"),
            OFlag::O_PATH | OFlag::O_DIRECTORY,
            no_symlinks,
        )?;
        let made = if last && create == Create::File {
            nix::fcntl::openat(
                &parent,
                parts[i],
                OFlag::O_CREAT | OFlag::O_WRONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
                Mode::from_bits_truncate(0o755),
            )
            .map(drop)
        } else {
            nix::sys::stat::mkdirat(&parent, parts[i], Mode::from_bits_truncate(0o755))
        };
        match made {
            Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
            Err(e) => return Err(e.into()),
        }
        if last {
            return Ok(open_in(root, &prefix, OFlag::O_PATH, no_symlinks)?);
        }
    }
    Ok(open_in(root, "", OFlag::O_PATH, no_symlinks)?)
}

/// Sets up the new mount namespace (already entered) below `rootfs` (a
/// host path): propagation, the rootfs bind, every mount, the devices.
pub fn prepare(sys: &dyn Sys, plan: &RunPlan, rootfs: &Path) -> Result<(), SandboxError> {
    let step = |what: &'static str| {
        move |source| SandboxError::Rootfs {
            path: rootfs.to_owned(),
            what,
            source,
        }
    };
    let propagation = plan
        .rootfs_propagation
        .unwrap_or(bits(MsFlags::MS_SLAVE) | bits(MsFlags::MS_REC));
    sys.mount(None, Path::new("/"), None, ms(propagation), None)
        .map_err(step("make / a slave mount"))?;
    make_parent_private(sys, rootfs).map_err(step("make its parent mount private"))?;
    sys.mount(
        Some(rootfs),
        rootfs,
        Some("bind"),
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )
    .map_err(step("bind it onto itself"))?;
    let root = File::open(rootfs).map_err(step("open"))?;
    for m in &plan.mounts {
        mount_one(sys, &root, rootfs, m)?;
    }
    let dev_is_bind = plan
        .mounts
        .iter()
        .any(|m| m.destination == "/dev" && m.is_bind());
    if !dev_is_bind {
        for d in &plan.devices {
            make_device(sys, &root, d)?;
        }
        dev_links(&root, plan).map_err(step("/dev links"))?;
    }
    // the working directory exists in the container, as runc makes it
    resolve(&root, &plan.cwd, Create::Dir, false).map_err(|source| SandboxError::Rootfs {
        path: rootfs.join(plan.cwd.trim_start_matches('/')),
        what: "create the working directory",
        source,
    })?;
    Ok(())
}

/// pivot_root(2) requires the new root's parent mount not to be shared.
fn make_parent_private(sys: &dyn Sys, rootfs: &Path) -> std::io::Result<()> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    let parent = info
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let point = crate::runner::sandbox::unescape(f.get(4)?);
            let shared = f
                .get(6..)?
                .iter()
                .take_while(|o| **o != "-")
                .any(|o| o.starts_with("shared:"));
            Some((PathBuf::from(point), shared))
        })
        .filter(|(p, _)| rootfs.starts_with(p))
        .max_by_key(|(p, _)| p.as_os_str().len());
    match parent {
        Some((point, true)) => sys.mount(None, &point, None, MsFlags::MS_PRIVATE, None),
        _ => Ok(()),
    }
}

pub(super) fn mount_one(
    sys: &dyn Sys,
    root: &File,
    rootfs: &Path,
    m: &MountPlan,
) -> Result<(), SandboxError> {
    let err = |what: &str| {
        let what = what.to_owned();
        move |source| SandboxError::Mount {
            destination: m.destination.clone(),
            what,
            source,
        }
    };
    match &m.kind {
        MountKind::Bind => {
            let source = m.source.clone().unwrap_or_default();
            let meta = std::fs::metadata(&source).map_err(|_| SandboxError::MissingSource {
                destination: m.destination.clone(),
                source_path: source.clone(),
            })?;
            let create = if meta.is_dir() {
                Create::Dir
            } else {
                Create::File
            };
            let target =
                resolve(root, &m.destination, create, false).map_err(err("mount point"))?;
            let bind = m.flags & (bits(MsFlags::MS_BIND) | bits(MsFlags::MS_REC));
            match &m.idmap {
                None => sys.mount(
                    Some(&source),
                    &fd_path(&target),
                    Some("bind"),
                    ms(bind),
                    None,
                ),
                Some(idmap) => sys.bind_idmapped(
                    &source,
                    &fd_path(&target),
                    bind & bits(MsFlags::MS_REC) != 0,
                    &idmap.uids,
                    &idmap.gids,
                ),
            }
            .map_err(err("bind"))?;
            let mounted =
                resolve(root, &m.destination, create, false).map_err(err("mount point"))?;
            // read-only and the other flags take a remount (not recursive)
            let extra = m.flags & !bits(MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_REMOUNT);
            if extra != 0 || m.cleared != 0 {
                let flags = ms(m.flags) | MsFlags::MS_BIND | MsFlags::MS_REMOUNT;
                remount(sys, &fd_path(&mounted), flags, &source).map_err(err("remount"))?;
            }
            propagate(sys, &mounted, m).map_err(err("propagation"))?;
            set_recursive(sys, &mounted, m).map_err(err("recursive attributes"))?;
        }
        MountKind::Cgroup => mount_cgroup(sys, root, rootfs, m)?,
        kind => {
            let no_symlinks = matches!(kind, MountKind::Proc | MountKind::Sysfs);
            let target = resolve(root, &m.destination, Create::Dir, no_symlinks)
                .map_err(err("mount point"))?;
            let (fstype, mut flags) = match kind {
                MountKind::Proc => ("proc", m.flags),
                MountKind::Sysfs => ("sysfs", m.flags),
                MountKind::Devpts => ("devpts", m.flags),
                MountKind::Mqueue => ("mqueue", m.flags),
                // read-only comes at the end (after the devices are made)
                MountKind::Tmpfs => ("tmpfs", m.flags & !(bits(MsFlags::MS_RDONLY))),
                MountKind::Other(t) => (t.as_str(), m.flags),
                MountKind::Bind | MountKind::Cgroup => unreachable!("handled above"),
            };
            if m.destination == "/dev" {
                flags &= !(bits(MsFlags::MS_RDONLY));
            }
            let source = m.source.clone().unwrap_or_else(|| PathBuf::from(fstype));
            let data = (!m.data.is_empty()).then_some(m.data.as_str());
            sys.mount(
                Some(&source),
                &fd_path(&target),
                Some(fstype),
                ms(flags),
                data,
            )
            .map_err(err(fstype))?;
            let mounted = resolve(root, &m.destination, Create::Dir, no_symlinks)
                .map_err(err("mount point"))?;
            propagate(sys, &mounted, m).map_err(err("propagation"))?;
            set_recursive(sys, &mounted, m).map_err(err("recursive attributes"))?;
        }
    }
    Ok(())
}

/// A bind remount with `flags`; where the kernel refuses to drop a flag the
/// source's mount has locked, again with those flags kept (runc's way).
fn remount(sys: &dyn Sys, target: &Path, flags: MsFlags, source: &Path) -> std::io::Result<()> {
    match sys.mount(None, target, None, flags, None) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            let have = nix::sys::statvfs::statvfs(source)?.flags();
            let locked = crate::sys::fs::mount_flags_of(have);
            sys.mount(None, target, None, flags | locked, None)
        }
        other => other,
    }
}

fn propagate(sys: &dyn Sys, mounted: &OwnedFd, m: &MountPlan) -> std::io::Result<()> {
    for p in &m.propagation {
        sys.mount(None, &fd_path(mounted), None, ms(*p), None)?;
    }
    Ok(())
}

fn set_recursive(sys: &dyn Sys, mounted: &OwnedFd, m: &MountPlan) -> std::io::Result<()> {
    let Some((set, clear)) = m.recursive else {
        return Ok(());
    };
    // the descriptor of the mount's root, not of the directory below it
    let file = File::open(fd_path(mounted))?;
    sys.mount_setattr(file.as_fd(), set, clear, true)
}

/// `pivot_root` into `rootfs`, then the old root made a slave and
/// detached, as runc does it (`pivot_root(".", ".")`).
pub fn pivot(sys: &dyn Sys, rootfs: &Path) -> Result<(), SandboxError> {
    let err = |what| {
        move |source| SandboxError::Rootfs {
            path: rootfs.to_owned(),
            what,
            source,
        }
    };
    let old = File::open("/").map_err(err("open the old root"))?;
    let new = File::open(rootfs).map_err(err("open"))?;
    sys.fchdir(new.as_fd()).map_err(err("enter"))?;
    sys.pivot_root(Path::new("."), Path::new("."))
        .map_err(err("pivot_root"))?;
    sys.fchdir(old.as_fd()).map_err(err("enter the old root"))?;
    sys.mount(
        None,
        Path::new("."),
        None,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        None,
    )
    .map_err(err("make the old root a slave"))?;
    sys.umount(Path::new("."), MntFlags::MNT_DETACH)
        .map_err(err("detach the old root"))?;
    sys.chdir(Path::new("/")).map_err(err("chdir /"))?;
    Ok(())
}

/// After the pivot: read-only tmpfs mounts and `/dev`, then the read-only
/// root (keeping the flags it has, `nodev` above all), as runc's
/// `finalizeRootfs`.
pub fn finalize(sys: &dyn Sys, plan: &RunPlan) -> Result<(), SandboxError> {
    for m in &plan.mounts {
        if m.readonly() && (m.kind == MountKind::Tmpfs || m.destination == "/dev") {
            let flags = ms(m.flags) | MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY;
            sys.mount(None, Path::new(&m.destination), None, flags, None)
                .map_err(|source| SandboxError::Mount {
                    destination: m.destination.clone(),
                    what: "read-only".into(),
                    source,
                })?;
        }
    }
    if plan.root.readonly {
        let err = |source| SandboxError::Rootfs {
            path: "/".into(),
            what: "read-only",
            source,
        };
        let have = nix::sys::statvfs::statvfs("/")
            .map_err(|e| err(e.into()))?
            .flags();
        let flags = crate::sys::fs::mount_flags_of(have)
            | MsFlags::MS_BIND
            | MsFlags::MS_REMOUNT
            | MsFlags::MS_RDONLY;
        sys.mount(None, Path::new("/"), None, flags, None)
            .map_err(err)?;
    }
    Ok(())
}

/// `readonlyPaths`: each bound onto itself and remounted read-only
/// (keeping `nosuid`, `nodev`, `noexec`); a path that does not exist is
/// skipped, as runc skips it.
pub fn readonly_paths(sys: &dyn Sys, plan: &RunPlan) -> Result<(), SandboxError> {
    for p in &plan.readonly_paths {
        let path = Path::new(p);
        let err = |source| SandboxError::Path {
            field: "readonlyPaths",
            path: p.clone(),
            source,
        };
        match sys.mount(
            Some(path),
            path,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        ) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => return Err(err(e)),
        }
        let have = nix::sys::statvfs::statvfs(path)
            .map_err(|e| err(e.into()))?
            .flags();
        let keep = crate::sys::fs::mount_flags_of(have)
            & (MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC);
        let flags = keep | MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        sys.mount(None, path, None, flags, None).map_err(err)?;
    }
    Ok(())
}

/// `maskedPaths`: a file gets `/dev/null` bound over it, a directory an
/// empty read-only tmpfs; a path that does not exist is skipped.
pub fn masked_paths(sys: &dyn Sys, plan: &RunPlan) -> Result<(), SandboxError> {
    for p in &plan.masked_paths {
        let path = Path::new(p);
        match sys.mount(
            Some(Path::new("/dev/null")),
            path,
            None,
            MsFlags::MS_BIND,
            None,
        ) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => {
                sys.mount(
                    Some(Path::new("tmpfs")),
                    path,
                    Some("tmpfs"),
                    MsFlags::MS_RDONLY,
                    None,
                )
                .map_err(|source| SandboxError::Path {
                    field: "maskedPaths",
                    path: p.clone(),
                    source,
                })?;
            }
            Err(source) => {
                return Err(SandboxError::Path {
                    field: "maskedPaths",
                    path: p.clone(),
                    source,
                })
            }
        }
    }
    Ok(())
}
