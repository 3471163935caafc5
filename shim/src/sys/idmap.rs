//! Idmapped mounts (Linux ≥ 5.12, `mount_setattr(MOUNT_ATTR_IDMAP)`): the
//! rootfs layers and volumes of a pod with a user namespace
//! (`hostUsers: false`), seen through that namespace's id mappings, so that
//! file owner 0 on disk is the pod's root and not the node's.
//!
//! An idmapped mount needs a user namespace holding the mappings; the
//! kernel only reads its mappings, never its processes, so a short-lived
//! child that owns it is enough ([`user_namespace`]).

use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

pub use wasmpod_oci::plan::IdMap as IdRange;

/// The text of `/proc/PID/uid_map` (or `gid_map`) for `ranges`.
pub fn map_text(ranges: &[IdRange]) -> String {
    ranges
        .iter()
        .map(|r| format!("{} {} {}\n", r.container, r.host, r.size))
        .collect()
}

/// A new user namespace with these mappings, as a descriptor (for
/// `mount_setattr`). A child is cloned into a new user namespace and waits
/// on a pipe; this process, root outside, writes its maps, opens
/// `/proc/CHILD/ns/user` and lets it exit.
pub fn user_namespace(uids: &[IdRange], gids: &[IdRange]) -> io::Result<OwnedFd> {
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let rfd = read.as_raw_fd();
    // SAFETY: clone(2) with CLONE_NEWUSER and no CLONE_VM is a fork whose
    // child starts in a new user namespace. The caller may have threads, so
    // the child calls only async-signal-safe functions (close_range, read,
    // _exit) on memory it does not free or allocate: the pipe's raw
    // descriptor number, copied before the call.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            libc::CLONE_NEWUSER | libc::SIGCHLD,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        let mut byte = 0u8;
        // SAFETY: see above. The child closes every descriptor but the read
        // end (its copy of this write end, and those of other such children
        // made at the same time, which would keep them all waiting), blocks
        // until the parent closes the write end, then exits without running
        // destructors or atexit hooks.
        unsafe {
            let r = rfd as libc::c_uint;
            if r > 0 {
                libc::close_range(0, r - 1, 0);
            }
            libc::close_range(r + 1, libc::c_uint::MAX, 0);
            libc::read(rfd, std::ptr::addr_of_mut!(byte).cast(), 1);
            libc::_exit(0);
        }
    }
    let pid = pid as i32;
    let result = (|| {
        let proc = format!("/proc/{}", proc_pid(pid)?);
        let at = |file: &'static str| {
            let proc = proc.clone();
            move |e: io::Error| io::Error::new(e.kind(), format!("{proc}/{file}: {e}"))
        };
        fs::write(format!("{proc}/uid_map"), map_text(uids)).map_err(at("uid_map"))?;
        fs::write(format!("{proc}/gid_map"), map_text(gids)).map_err(at("gid_map"))?;
        fs::File::open(format!("{proc}/ns/user"))
            .map(OwnedFd::from)
            .map_err(at("ns/user"))
    })();
    drop(write);
    drop(read);
    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
    result
}

/// The pid `/proc` knows the child `pid` by: `clone` returns it in this
/// process's PID namespace, but `/proc` may be the node's procfs (a runner
/// is pid 1 of its own namespace before its procfs is mounted). The
/// thread's `children` file lists them as `/proc` numbers them, and the
/// last `NSpid` of each is the one `clone` returned.
fn proc_pid(pid: i32) -> io::Result<i32> {
    // `/proc` is this PID namespace's own: the numbers agree
    let own = fs::read_to_string("/proc/self/status")?
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .is_some_and(|l| l.split_whitespace().count() == 1);
    if own {
        return Ok(pid);
    }
    let children = fs::read_to_string("/proc/thread-self/children")?;
    for c in children.split_whitespace() {
        let Ok(status) = fs::read_to_string(format!("/proc/{c}/status")) else {
            continue;
        };
        let innermost = status
            .lines()
            .find_map(|l| l.strip_prefix("NSpid:"))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|p| p.parse::<i32>().ok());
        if innermost == Some(pid) {
            return c
                .parse()
                .map_err(|_| io::Error::other(format!("child pid {c:?}")));
        }
    }
    Err(io::Error::other(format!(
        "child {pid} is not among this thread's children in /proc ({children:?})"
    )))
}

/// A detached copy of the mount at `path` (of the tree below it too with
/// `recursive`), idmapped through `userns`: ids on disk are shown, and
/// written, as that namespace maps them. The copy is reachable only through
/// the descriptor (`/proc/self/fd/N` names it, e.g. as an overlay layer);
/// closing it unmounts it unless something else holds it.
pub fn idmapped_tree(path: &Path, userns: BorrowedFd<'_>, recursive: bool) -> io::Result<OwnedFd> {
    let tree = super::sandbox::open_tree_clone(path, recursive)?;
    super::sandbox::set_mount_attr(
        tree.as_fd(),
        libc::MOUNT_ATTR_IDMAP,
        0,
        recursive,
        Some(userns),
    )?;
    Ok(tree)
}

/// Attaches the detached mount `tree` at `target` (`move_mount(2)`),
/// following symlinks there (a `/proc/self/fd/N` name of the mount point).
pub fn attach(tree: BorrowedFd<'_>, target: &Path) -> io::Result<()> {
    let ctarget = super::sandbox::c_path(target)?;
    // SAFETY: move_mount(2) reads two NUL-terminated strings, both alive
    // for the call; no memory is written.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            ctarget.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH | libc::MOVE_MOUNT_T_SYMLINKS,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Bind-mounts `source` on `target` idmapped with these mappings (the
/// tree below it too with `recursive`).
pub fn bind_idmapped(
    source: &Path,
    target: &Path,
    recursive: bool,
    uids: &[IdRange],
    gids: &[IdRange],
) -> io::Result<()> {
    let step =
        |what: &'static str| move |e: io::Error| io::Error::new(e.kind(), format!("{what}: {e}"));
    let userns = user_namespace(uids, gids).map_err(step("user namespace of the mappings"))?;
    let tree = idmapped_tree(source, userns.as_fd(), recursive).map_err(step("idmapped copy"))?;
    attach(tree.as_fd(), target).map_err(step("move_mount"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    #[ignore = "needs root: a user namespace with mappings and mount_setattr"]
    fn a_layer_seen_through_an_idmapped_tree() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("f"), b"x").expect("write");
        let r = |container, host, size| IdRange {
            container,
            host,
            size,
        };
        let ns = user_namespace(&[r(0, 1_000_000, 65536)], &[r(0, 2_000_000, 65536)])
            .expect("user namespace");
        let tree = idmapped_tree(dir.path(), ns.as_fd(), false).expect("idmapped tree");
        let meta = fs::metadata(format!("/proc/self/fd/{}/f", tree.as_raw_fd())).expect("stat");
        assert_eq!((meta.uid(), meta.gid()), (1_000_000, 2_000_000));
        // the file itself is unchanged, and nothing is left mounted
        let plain = fs::metadata(dir.path().join("f")).expect("stat");
        assert_eq!((plain.uid(), plain.gid()), (0, 0));
        drop(tree);
        let mounts = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        assert!(!mounts.contains(&dir.path().to_string_lossy().into_owned()));
    }
}
