//! `/dev` of the container's mount namespace: the devices of
//! `linux.devices` (and runc's defaults), and the links runc makes.

use std::fs::File;
use std::path::Path;

use wasmpod_oci::plan::mounts::DevicePlan;
use wasmpod_oci::plan::RunPlan;

use super::rootfs::{fd_path, resolve, Create};
use super::SandboxError;
use crate::sys::Sys;

pub(super) fn make_device(sys: &dyn Sys, root: &File, d: &DevicePlan) -> Result<(), SandboxError> {
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
pub(super) fn dev_links(root: &File, plan: &RunPlan) -> std::io::Result<()> {
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
