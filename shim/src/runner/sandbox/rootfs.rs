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
use wasmpod_oci::plan::mounts::{DevicePlan, MountKind, MountPlan};
use wasmpod_oci::plan::RunPlan;

use super::SandboxError;
use crate::sys::Sys;

/// What to make of a missing last component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Create {
    Dir,
    File,
}

/// `flags` as the plan's `u64` (`c_ulong` is narrower on 32-bit targets).
#[allow(clippy::unnecessary_cast, reason = "c_ulong is u32 on 32-bit targets")]
fn bits(flags: MsFlags) -> u64 {
    flags.bits() as u64
}

fn ms(bits: u64) -> MsFlags {
    MsFlags::from_bits_truncate(bits as _)
}

/// The path a descriptor is reached by, for mount(2) and friends.
fn fd_path(fd: &impl AsRawFd) -> PathBuf {
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
fn resolve(
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

fn mount_one(sys: &dyn Sys, root: &File, rootfs: &Path, m: &MountPlan) -> Result<(), SandboxError> {
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
            sys.mount(
                Some(&source),
                &fd_path(&target),
                Some("bind"),
                ms(bind),
                None,
            )
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

/// `cgroup` mounts: on cgroup v2 a cgroup2 filesystem (the node's
/// hierarchy, as runc mounts it without a cgroup namespace); on v1 a tmpfs
/// with each hierarchy's directory of the container's own cgroup bound
/// below it, and links for co-mounted controllers.
fn mount_cgroup(
    sys: &dyn Sys,
    root: &File,
    rootfs: &Path,
    m: &MountPlan,
) -> Result<(), SandboxError> {
    let err = |what: String| {
        move |source| SandboxError::Mount {
            destination: m.destination.clone(),
            what,
            source,
        }
    };
    let target =
        resolve(root, &m.destination, Create::Dir, false).map_err(err("mount point".into()))?;
    let unified = nix::sys::statfs::statfs("/sys/fs/cgroup")
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC);
    if unified {
        let cgroup2 = Path::new("cgroup2");
        return sys
            .mount(
                Some(cgroup2),
                &fd_path(&target),
                Some("cgroup2"),
                ms(m.flags),
                None,
            )
            .map_err(err("cgroup2".into()));
    }
    let base = MsFlags::MS_NOEXEC | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    sys.mount(
        Some(Path::new("tmpfs")),
        &fd_path(&target),
        Some("tmpfs"),
        base,
        Some("mode=755"),
    )
    .map_err(err("tmpfs".into()))?;
    let own =
        std::fs::read_to_string("/proc/self/cgroup").map_err(err("/proc/self/cgroup".into()))?;
    for (mountpoint, controllers) in v1_hierarchies().map_err(err("mountinfo".into()))? {
        let Some(path) = own_path(&own, &controllers) else {
            continue;
        };
        let Some(name) = mountpoint
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
        else {
            continue;
        };
        let source = mountpoint.join(path.trim_start_matches('/'));
        let dest = format!("{}/{name}", m.destination);
        let sub = MountPlan {
            kind: MountKind::Bind,
            source: Some(source),
            destination: dest.clone(),
            flags: m.flags | bits(MsFlags::MS_BIND) | bits(MsFlags::MS_REC),
            cleared: 0,
            propagation: Vec::new(),
            recursive: None,
            data: String::new(),
        };
        mount_one(sys, root, rootfs, &sub)?;
        // cpu,cpuacct → links cpu and cpuacct
        if name.contains(',') {
            for alias in name.split(',') {
                let link = rootfs
                    .join(dest.trim_start_matches('/'))
                    .with_file_name(alias);
                let _ = std::os::unix::fs::symlink(&name, link);
            }
        }
    }
    // the tmpfs read-only, as its options ask (after its mount points)
    if m.readonly() {
        let tmpfs =
            resolve(root, &m.destination, Create::Dir, false).map_err(err("mount point".into()))?;
        sys.mount(
            None,
            &fd_path(&tmpfs),
            None,
            base | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None,
        )
        .map_err(err("read-only".into()))?;
    }
    Ok(())
}

/// The node's cgroup v1 hierarchies: (mount point, controllers).
fn v1_hierarchies() -> std::io::Result<Vec<(PathBuf, Vec<String>)>> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(info
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let mut r = right.split(' ');
            if r.next()? != "cgroup" {
                return None;
            }
            let options = r.nth(1)?;
            let point = left.split(' ').nth(4)?;
            let controllers = options
                .split(',')
                .filter(|o| !matches!(*o, "rw" | "ro") && !o.starts_with("release_agent"))
                .map(str::to_owned)
                .collect();
            Some((
                PathBuf::from(crate::runner::sandbox::unescape(point)),
                controllers,
            ))
        })
        .collect())
}

/// This process's cgroup in the hierarchy of `controllers`, from
/// `/proc/self/cgroup`.
fn own_path(own: &str, controllers: &[String]) -> Option<String> {
    own.lines().find_map(|l| {
        let mut f = l.splitn(3, ':');
        let (_, names, path) = (f.next()?, f.next()?, f.next()?);
        let names: Vec<&str> = names.split(',').collect();
        let wanted: Vec<&str> = controllers.iter().map(String::as_str).collect();
        (!names.is_empty() && names == wanted).then(|| path.to_owned())
    })
}

fn make_device(sys: &dyn Sys, root: &File, d: &DevicePlan) -> Result<(), SandboxError> {
    let err = |source| SandboxError::Device {
        path: d.path.clone(),
        source,
    };
    let (parent, name) = d
        .path
        .rsplit_once('/')
        .ok_or_else(|| err(std::io::Error::other("not an absolute path")))?;
    let dir = resolve(
        root,
        if parent.is_empty() { "/" } else { parent },
        Create::Dir,
        false,
    )
    .map_err(err)?;
    let path = fd_path(&dir).join(name);
    let major = u64::try_from(d.major).unwrap_or(0);
    let minor = u64::try_from(d.minor).unwrap_or(0);
    match sys.mknod(&path, d.kind, d.mode, major, minor) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => return Ok(()),
        Err(e) => return Err(err(e)),
    }
    sys.lchown(&path, d.uid, d.gid).map_err(err)
}

/// `/dev/ptmx` to the devpts instance, and `/dev/fd`, `stdin`, `stdout`,
/// `stderr` (and `core` when the host has `/proc/kcore`), as runc makes them.
fn dev_links(root: &File, plan: &RunPlan) -> std::io::Result<()> {
    let has = |dest: &str| plan.mounts.iter().any(|m| m.destination == dest);
    if !has("/dev") {
        return Ok(());
    }
    let dev = resolve(root, "/dev", Create::Dir, false)?;
    let dir = File::open(fd_path(&dev))?;
    let link = |target: &str, name: &str| -> std::io::Result<()> {
        match nix::unistd::symlinkat(target, &dir, name) {
            Ok(()) | Err(nix::errno::Errno::EEXIST) => Ok(()),
            Err(e) => Err(e.into()),
        }
    };
    if has("/dev/pts") {
        let _ = nix::unistd::unlinkat(&dir, "ptmx", nix::unistd::UnlinkatFlags::NoRemoveDir);
        link("pts/ptmx", "ptmx")?;
    }
    link("/proc/self/fd", "fd")?;
    link("/proc/self/fd/0", "stdin")?;
    link("/proc/self/fd/1", "stdout")?;
    link("/proc/self/fd/2", "stderr")?;
    if Path::new("/proc/kcore").exists() {
        link("/proc/kcore", "core")?;
    }
    Ok(())
}

/// The guest's `/`: a detached copy of the container's whole mount tree,
/// as the spec made it, with every procfs taken out (a guest must never
/// reach the runner's `/proc/self/mem`). The copy is cut in a mount
/// namespace of its own, its mounts made private first so that nothing
/// propagates, and the runner goes `home` after. Returns the copy and where
/// the container's procfs is, through which the runner reaches the copy.
pub fn guest_root(
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
