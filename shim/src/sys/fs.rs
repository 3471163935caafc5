//! Opening files inside a container's rootfs, and the rootfs mount's flags.

use std::fs::File;
use std::path::Path;

use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;

/// Opens `path` (a guest path such as `/bin/app.wasm`) for reading inside the
/// directory `root`, resolving `..` and symlinks — absolute ones included —
/// as if `root` were `/`. Nothing outside `root` can be reached, and magic
/// links (`/proc/self/root`, ...) are refused.
pub fn open_in_root(root: &File, path: &str) -> nix::Result<File> {
    let how = OpenHow::new()
        // O_NONBLOCK: a FIFO planted as the entry point must not block the
        // shim in open(2); callers refuse anything but a regular file.
        .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOCTTY | OFlag::O_NONBLOCK)
        .mode(Mode::empty())
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let fd = openat2(root, Path::new(path), how)?;
    Ok(File::from(fd))
}

/// The `MS_*` flags that keep what a mount's `statvfs` flags say it has:
/// what a bind remount must repeat so as not to clear them (or, for flags
/// the kernel locked, so as not to be refused).
pub fn mount_flags_of(have: nix::sys::statvfs::FsFlags) -> nix::mount::MsFlags {
    use nix::mount::MsFlags;
    use nix::sys::statvfs::FsFlags;
    let mut flags = MsFlags::empty();
    for (fs, ms) in [
        (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if have.contains(fs) {
            flags |= ms;
        }
    }
    flags
}
