//! Mounting the root filesystem containerd prepared (usually one overlay
//! mount) at `<bundle>/rootfs`, and taking it down again.

use std::path::{Path, PathBuf};

use containerd_shim::protos::types::mount::Mount;

use crate::bundle::ROOTFS_DIR;
use crate::error::{Error, Result};

/// What went wrong with the rootfs mount.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("create mount point: {0}")]
    CreateMountPoint(#[source] std::io::Error),
    #[error("mount {fstype} {source_path} ({options}): {error}")]
    Mount {
        fstype: String,
        source_path: String,
        options: String,
        #[source]
        error: Box<containerd_shim::Error>,
    },
    #[error("remount nodev: {0}")]
    Restrict(#[source] nix::Error),
    #[error("unmount: {0}")]
    Unmount(#[source] Box<containerd_shim::Error>),
}

fn error(id: &str, target: &Path, source: RootfsError) -> Error {
    Error::Rootfs {
        id: id.to_owned(),
        path: target.to_owned(),
        source,
    }
}

/// Mounts `mounts` in order on `<bundle>/rootfs`. Returns the mount point, or
/// `None` when containerd sent no mounts (the rootfs is already in place).
/// On failure, whatever was mounted is taken down again.
pub async fn mount(id: &str, bundle: &Path, mounts: &[Mount]) -> Result<Option<PathBuf>> {
    if mounts.is_empty() {
        return Ok(None);
    }
    let target = bundle.join(ROOTFS_DIR);
    tokio::fs::create_dir_all(&target)
        .await
        .map_err(|e| error(id, &target, RootfsError::CreateMountPoint(e)))?;
    for m in mounts {
        if let Err(e) = containerd_shim::asynchronous::util::mount_rootfs(m, &target).await {
            let _ = unmount(id, &target).await;
            let source = RootfsError::Mount {
                fstype: m.type_.clone(),
                source_path: m.source.clone(),
                options: m.options.join(","),
                error: Box::new(e),
            };
            return Err(error(id, &target, source));
        }
    }
    Ok(Some(target))
}

/// Makes the rootfs mount at `target` `nodev` (and read-only when
/// `readonly`), on a blocking thread. The runner is root: without `nodev`, a
/// device node an image layer carries could be opened through the guest's
/// `/` preopen; with `readonly`, the kernel (not only WASI's permission
/// check) refuses writes. A bind remount changes this mount point's flags
/// only, never the filesystem's, and keeps the flags it already has.
pub async fn restrict(id: &str, target: &Path, readonly: bool) -> Result<()> {
    let owned = target.to_owned();
    tokio::task::spawn_blocking(move || {
        let have = nix::sys::statvfs::statvfs(&owned)?.flags();
        let flags = restricted_flags(have, readonly);
        crate::sys::Sys::mount(&crate::sys::Linux, None, &owned, None, flags, None)
            .map_err(|e| nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
    })
    .await
    .map_err(|source| Error::Blocking {
        id: id.to_owned(),
        what: "rootfs task",
        source,
    })?
    .map_err(|e| error(id, target, RootfsError::Restrict(e)))
}

/// The flags of the bind remount [`restrict`] makes of a mount whose
/// `statvfs` flags are `have`.
fn restricted_flags(have: nix::sys::statvfs::FsFlags, readonly: bool) -> nix::mount::MsFlags {
    use nix::mount::MsFlags;
    let mut flags = crate::sys::fs::mount_flags_of(have)
        | MsFlags::MS_REMOUNT
        | MsFlags::MS_BIND
        | MsFlags::MS_NODEV;
    if readonly {
        flags |= MsFlags::MS_RDONLY;
    }
    flags
}

/// Unmounts everything at or below `target` (deepest first, lazily so a
/// straggling reader cannot keep it busy).
pub async fn unmount(id: &str, target: &Path) -> Result<()> {
    let (owned_id, owned_target) = (id.to_owned(), target.to_owned());
    tokio::task::spawn_blocking(move || unmount_blocking(&owned_id, &owned_target))
        .await
        .map_err(|source| Error::Blocking {
            id: id.to_owned(),
            what: "unmount task",
            source,
        })?
}

/// [`unmount`] on the calling thread.
pub fn unmount_blocking(id: &str, target: &Path) -> Result<()> {
    containerd_shim::mount::umount_recursive(Some(&target.to_string_lossy()), libc::MNT_DETACH)
        .map_err(|e| error(id, target, RootfsError::Unmount(Box::new(e))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::mount::MsFlags;
    use nix::sys::statvfs::FsFlags;

    #[test]
    fn the_restricting_remount_keeps_the_mounts_flags_and_adds_nodev() {
        let base = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_NODEV;
        assert_eq!(restricted_flags(FsFlags::empty(), false), base);
        assert_eq!(
            restricted_flags(FsFlags::empty(), true),
            base | MsFlags::MS_RDONLY
        );
        // a locked flag the mount already has must be repeated, or the
        // kernel refuses the remount
        let have = FsFlags::ST_NOSUID | FsFlags::ST_RELATIME | FsFlags::ST_RDONLY;
        assert_eq!(
            restricted_flags(have, false),
            base | MsFlags::MS_NOSUID | MsFlags::MS_RELATIME | MsFlags::MS_RDONLY
        );
    }
}
