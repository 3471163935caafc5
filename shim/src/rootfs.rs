//! Mounting the root filesystem containerd prepared (usually one overlay
//! mount) at `<bundle>/rootfs`, and taking it down again.

use std::path::{Path, PathBuf};

use containerd_shim::protos::types::mount::Mount;

use crate::error::{Error, Result};

/// The directory the rootfs is mounted on, relative to the bundle.
pub const ROOTFS_DIR: &str = "rootfs";

/// Mounts `mounts` in order on `<bundle>/rootfs`. Returns the mount point, or
/// `None` when containerd sent no mounts (the rootfs is already in place).
/// On failure, whatever was mounted is taken down again.
pub async fn mount(id: &str, bundle: &Path, mounts: &[Mount]) -> Result<Option<PathBuf>> {
    if mounts.is_empty() {
        return Ok(None);
    }
    let target = bundle.join(ROOTFS_DIR);
    let err = |message: String| Error::Rootfs {
        id: id.to_owned(),
        path: target.clone(),
        message,
    };
    tokio::fs::create_dir_all(&target)
        .await
        .map_err(|e| err(format!("create mount point: {e}")))?;
    for m in mounts {
        if let Err(e) = containerd_shim::asynchronous::util::mount_rootfs(m, &target).await {
            let _ = unmount(id, &target).await;
            return Err(err(format!(
                "mount {} {} ({}): {e}",
                m.type_,
                m.source,
                m.options.join(",")
            )));
        }
    }
    Ok(Some(target))
}

/// Unmounts everything at or below `target` (deepest first, lazily so a
/// straggling reader cannot keep it busy).
pub async fn unmount(id: &str, target: &Path) -> Result<()> {
    let (owned_id, owned_target) = (id.to_owned(), target.to_owned());
    tokio::task::spawn_blocking(move || unmount_blocking(&owned_id, &owned_target))
        .await
        .map_err(|e| Error::Rootfs {
            id: id.to_owned(),
            path: target.to_owned(),
            message: format!("unmount task: {e}"),
        })?
}

/// [`unmount`] on the calling thread.
pub fn unmount_blocking(id: &str, target: &Path) -> Result<()> {
    containerd_shim::mount::umount_recursive(Some(&target.to_string_lossy()), libc::MNT_DETACH)
        .map_err(|e| Error::Rootfs {
            id: id.to_owned(),
            path: target.to_owned(),
            message: format!("unmount: {e}"),
        })
}
