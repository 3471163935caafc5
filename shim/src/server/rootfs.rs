//! Mounting the root filesystem containerd prepared (usually one overlay
//! mount) at `<bundle>/rootfs`, and taking it down again.

use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};

use containerd_shim::protos::types::mount::Mount;

use crate::sys::idmap::{self, IdRange};

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
        let result = match Idmapped::of(&m.options) {
            Ok(None) => containerd_shim::asynchronous::util::mount_rootfs(m, &target).await,
            Ok(Some(idmap)) => {
                let (m, t) = (m.clone(), target.clone());
                tokio::task::spawn_blocking(move || idmap.mount(&m, &t))
                    .await
                    .unwrap_or_else(|e| Err(containerd_shim::Error::Other(e.to_string())))
            }
            Err(e) => Err(containerd_shim::Error::InvalidArgument(e)),
        };
        if let Err(e) = result {
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

/// The `uidmap=`/`gidmap=` options containerd 2.x puts on the rootfs mounts
/// of a pod with a user namespace (`hostUsers: false`): the layers are to be
/// seen through those mappings (idmapped), so the pod's root owns them.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Idmapped {
    uids: Vec<IdRange>,
    gids: Vec<IdRange>,
    /// The mount's other options.
    rest: Vec<String>,
}

/// `C:H:S[,C:H:S...]` (container id, host id, size), containerd's format.
fn parse_ranges(value: &str) -> std::result::Result<Vec<IdRange>, String> {
    value
        .split(',')
        .map(|r| {
            let n: Vec<u32> = r
                .split(':')
                .map(|x| x.parse::<u32>())
                .collect::<std::result::Result<_, _>>()
                .map_err(|_| format!("id mapping {r:?} is not container:host:size"))?;
            match n[..] {
                [container, host, size] if size > 0 => Ok(IdRange {
                    container,
                    host,
                    size,
                }),
                _ => Err(format!("id mapping {r:?} is not container:host:size")),
            }
        })
        .collect()
}

impl Idmapped {
    /// The id mappings in `options`, if it has any.
    fn of(options: &[String]) -> std::result::Result<Option<Idmapped>, String> {
        let (mut uids, mut gids, mut rest) = (None, None, Vec::new());
        for o in options {
            if let Some(v) = o.strip_prefix("uidmap=") {
                uids = Some(parse_ranges(v)?);
            } else if let Some(v) = o.strip_prefix("gidmap=") {
                gids = Some(parse_ranges(v)?);
            } else {
                rest.push(o.clone());
            }
        }
        match (uids, gids) {
            (None, None) => Ok(None),
            (Some(uids), Some(gids)) => Ok(Some(Idmapped { uids, gids, rest })),
            _ => Err("uidmap and gidmap must come together".to_owned()),
        }
    }

    /// Mounts the overlay `m` at `target` with its layers idmapped: each
    /// `lowerdir` (the upper layer is written through the overlay, by the
    /// pod's mapped ids, so it needs none). containerd does the same for
    /// runc's shim.
    fn mount(&self, m: &Mount, target: &Path) -> containerd_shim::Result<()> {
        let io = |what: &str, path: &str, e: std::io::Error| {
            containerd_shim::Error::Other(format!("{what} {path}: {e}"))
        };
        let userns = idmap::user_namespace(&self.uids, &self.gids)
            .map_err(|e| io("user namespace for", "the id mappings", e))?;
        match m.type_.as_str() {
            "overlay" => {
                let mut trees = Vec::new();
                let mut options = Vec::with_capacity(self.rest.len());
                for o in &self.rest {
                    let Some(lower) = o.strip_prefix("lowerdir=") else {
                        options.push(o.clone());
                        continue;
                    };
                    let mut dirs = Vec::new();
                    for dir in lower.split(':') {
                        let tree = idmap::idmapped_tree(Path::new(dir), userns.as_fd(), false)
                            .map_err(|e| io("idmapped mount of", dir, e))?;
                        dirs.push(format!("/proc/self/fd/{}", tree.as_raw_fd()));
                        trees.push(tree);
                    }
                    options.push(format!("lowerdir={}", dirs.join(":")));
                }
                // the overlay keeps its own references to the layers: the
                // descriptors (the only other ones) close on return
                containerd_shim::mount::mount_rootfs(
                    Some("overlay"),
                    Some(m.source.as_str()),
                    &options,
                    target,
                )
            }
            other => Err(containerd_shim::Error::InvalidArgument(format!(
                "uidmap/gidmap on a {other} rootfs mount: only overlay layers (the overlayfs snapshotter's) can be idmapped"
            ))),
        }
    }
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

    fn opts(o: &[&str]) -> Vec<String> {
        o.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn containerd_2_id_mapping_options() {
        let r = |container, host, size| IdRange {
            container,
            host,
            size,
        };
        assert_eq!(Idmapped::of(&opts(&["index=off", "lowerdir=/a"])), Ok(None));
        let got = Idmapped::of(&opts(&[
            "uidmap=0:1000000:65536",
            "gidmap=0:2000000:1,1:3000000:65535",
            "index=off",
        ]));
        assert_eq!(
            got,
            Ok(Some(Idmapped {
                uids: vec![r(0, 1_000_000, 65536)],
                gids: vec![r(0, 2_000_000, 1), r(1, 3_000_000, 65535)],
                rest: opts(&["index=off"]),
            }))
        );
        for bad in [
            &["uidmap=0:1000000:65536"][..],
            &["uidmap=0:1000000", "gidmap=0:1:1"],
            &["uidmap=0:1:0", "gidmap=0:1:1"],
            &["uidmap=a:b:c", "gidmap=0:1:1"],
        ] {
            assert!(Idmapped::of(&opts(bad)).is_err(), "{bad:?}");
        }
        assert_eq!(
            idmap::map_text(&[r(0, 1_000_000, 65536), r(65536, 5, 1)]),
            "0 1000000 65536\n65536 5 1\n"
        );
    }

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
