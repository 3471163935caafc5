//! `cgroup` mounts of the container's mount namespace, as runc makes them
//! without a cgroup namespace.

use std::fs::File;
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use wasmpod_oci::plan::mounts::{MountKind, MountPlan};

use super::rootfs::{bits, fd_path, mount_one, ms, resolve, Create};
use super::SandboxError;
use crate::sys::Sys;

/// `cgroup` mounts: on cgroup v2 a cgroup2 filesystem (the node's
/// hierarchy, as runc mounts it without a cgroup namespace); on v1 a tmpfs
/// with each hierarchy's directory of the container's own cgroup bound
/// below it, and links for co-mounted controllers.
pub(super) fn mount_cgroup(
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
            idmap: None,
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
