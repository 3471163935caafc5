//! The OS boundary: every raw syscall and `unsafe` block of the shim lives
//! here, each with the reason it is sound, split by what it manages. The rest
//! of the crate is `#![deny(unsafe_code)]`.
//!
//! The calls that need root and change the process or the node (namespaces,
//! mounts, signals, credentials, capabilities, seccomp) go through the
//! [`Sys`] trait: [`Linux`] makes them, and
//! the recording double of the unit tests ([`recording`]) writes them down,
//! so namespace and mount logic is tested, step by step and in order, as any
//! user.
#![allow(
    unsafe_code,
    reason = "the one module where raw syscalls live; each block says why it is sound"
)]

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::Path;

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::signal::Signal;

pub mod code;
pub mod fork;
pub mod fs;
pub mod idmap;
pub mod mem;
pub mod net;
#[cfg(test)]
pub mod probe;
#[cfg(test)]
pub mod recording;
pub mod sandbox;
pub mod spawn;
pub mod term;

/// The privileged calls the shim and its runners make.
pub trait Sys: Send + Sync {
    /// `unshare(2)`: new namespaces of the kinds in `flags`.
    fn unshare(&self, flags: CloneFlags) -> io::Result<()>;
    /// `setns(2)`: joins the namespace `fd` refers to, of kind `kind`.
    fn setns(&self, fd: BorrowedFd<'_>, kind: CloneFlags) -> io::Result<()>;
    /// Brings the loopback interface of the current network namespace up.
    fn loopback_up(&self) -> io::Result<()>;
    /// `mount(2)`.
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> io::Result<()>;
    /// `umount2(2)`.
    fn umount(&self, target: &Path, flags: MntFlags) -> io::Result<()>;
    /// `kill(2)`.
    fn kill(&self, pid: i32, signal: Signal) -> io::Result<()>;
    /// `pivot_root(2)`.
    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> io::Result<()>;
    /// `chdir(2)`.
    fn chdir(&self, path: &Path) -> io::Result<()>;
    /// `fchdir(2)`.
    fn fchdir(&self, fd: BorrowedFd<'_>) -> io::Result<()>;
    /// `sethostname(2)`.
    fn sethostname(&self, name: &str) -> io::Result<()>;
    /// `setdomainname(2)`.
    fn setdomainname(&self, name: &str) -> io::Result<()>;
    /// `mknod(2)` of a character (`c`), block (`b`) or FIFO (`p`) node.
    fn mknod(&self, path: &Path, kind: char, mode: u32, major: u64, minor: u64) -> io::Result<()>;
    /// `lchown(2)`.
    fn lchown(&self, path: &Path, uid: u32, gid: u32) -> io::Result<()>;
    /// Writes `data` to the existing file `path` (`/proc/self/oom_score_adj`,
    /// `/proc/sys/...`, `/proc/self/attr/...`).
    fn write_file(&self, path: &Path, data: &[u8]) -> io::Result<()>;
    /// `setrlimit(2)` of resource number `resource`.
    fn setrlimit(&self, resource: u32, soft: u64, hard: u64) -> io::Result<()>;
    /// `umask(2)`.
    fn umask(&self, mask: u32);
    /// `prctl(PR_SET_NO_NEW_PRIVS, 1)`.
    fn set_no_new_privs(&self) -> io::Result<()>;
    /// `prctl(PR_SET_KEEPCAPS)`.
    fn set_keepcaps(&self, keep: bool) -> io::Result<()>;
    /// `setgroups(2)`.
    fn setgroups(&self, gids: &[u32]) -> io::Result<()>;
    /// `setresgid(gid, gid, gid)`, for every thread.
    fn setresgid(&self, gid: u32) -> io::Result<()>;
    /// `setresuid(uid, uid, uid)`, for every thread.
    fn setresuid(&self, uid: u32) -> io::Result<()>;
    /// `setfsuid(2)`; returns the previous one.
    fn setfsuid(&self, uid: u32) -> u32;
    /// `setfsgid(2)`; returns the previous one.
    fn setfsgid(&self, gid: u32) -> u32;
    /// Drops every capability not in `keep` from the bounding set.
    fn drop_bounding(&self, keep: u64) -> io::Result<()>;
    /// `capset(2)` of the effective, permitted and inheritable sets.
    fn capset(&self, effective: u64, permitted: u64, inheritable: u64) -> io::Result<()>;
    /// Makes the ambient set exactly `ambient`.
    fn set_ambient(&self, ambient: u64) -> io::Result<()>;
    /// This process's thread count once any ending threads are gone
    /// (waits up to 2 s).
    fn settled_threads(&self) -> usize;
    /// How host names are looked up (an `nsswitch.conf` `hosts:` line).
    fn hosts_lookup(&self, services: &str) -> io::Result<()>;
    /// `PR_SET_DUMPABLE`.
    fn set_dumpable(&self, dumpable: bool) -> io::Result<()>;
    /// Loads a seccomp program (`sock_filter` instructions) with `flags`.
    fn load_seccomp(&self, program: &[u8], flags: u32) -> io::Result<()>;
    /// A detached copy of the mount tree at `path`, the mounts below it
    /// included.
    fn clone_mount(&self, path: &Path) -> io::Result<OwnedFd>;
    /// `mount_setattr(2)` on the mount `fd` refers to.
    fn mount_setattr(
        &self,
        fd: BorrowedFd<'_>,
        set: u64,
        clear: u64,
        recursive: bool,
    ) -> io::Result<()>;
    /// A new user namespace with these mappings, held by the descriptor
    /// (see [`idmap::user_namespace`]).
    fn user_namespace(
        &self,
        uids: &[idmap::IdRange],
        gids: &[idmap::IdRange],
    ) -> io::Result<OwnedFd>;
    /// A bind of `source` on `target` seen through these mappings.
    fn bind_idmapped(
        &self,
        source: &Path,
        target: &Path,
        recursive: bool,
        uids: &[idmap::IdRange],
        gids: &[idmap::IdRange],
    ) -> io::Result<()>;
}

/// The highest capability number [`Sys::drop_bounding`] and
/// [`Sys::set_ambient`] go through.
pub const LAST_CAP: u32 = 40;

/// The real calls.
#[derive(Debug, Clone, Copy, Default)]
pub struct Linux;

impl Sys for Linux {
    fn unshare(&self, flags: CloneFlags) -> io::Result<()> {
        Ok(nix::sched::unshare(flags)?)
    }

    fn setns(&self, fd: BorrowedFd<'_>, kind: CloneFlags) -> io::Result<()> {
        Ok(nix::sched::setns(fd, kind)?)
    }

    fn loopback_up(&self) -> io::Result<()> {
        net::loopback_up()
    }

    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> io::Result<()> {
        Ok(nix::mount::mount(source, target, fstype, flags, data)?)
    }

    fn umount(&self, target: &Path, flags: MntFlags) -> io::Result<()> {
        Ok(nix::mount::umount2(target, flags)?)
    }

    fn kill(&self, pid: i32, signal: Signal) -> io::Result<()> {
        Ok(nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            signal,
        )?)
    }

    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> io::Result<()> {
        Ok(nix::unistd::pivot_root(new_root, put_old)?)
    }

    fn chdir(&self, path: &Path) -> io::Result<()> {
        Ok(nix::unistd::chdir(path)?)
    }

    fn fchdir(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        Ok(nix::unistd::fchdir(fd)?)
    }

    fn sethostname(&self, name: &str) -> io::Result<()> {
        Ok(nix::unistd::sethostname(name)?)
    }

    fn setdomainname(&self, name: &str) -> io::Result<()> {
        sandbox::setdomainname(name)
    }

    fn mknod(&self, path: &Path, kind: char, mode: u32, major: u64, minor: u64) -> io::Result<()> {
        use nix::sys::stat::{makedev, Mode, SFlag};
        let kind = match kind {
            'b' => SFlag::S_IFBLK,
            'p' => SFlag::S_IFIFO,
            _ => SFlag::S_IFCHR,
        };
        let perm = Mode::from_bits_truncate(mode & 0o7777);
        Ok(nix::sys::stat::mknod(
            path,
            kind,
            perm,
            makedev(major, minor),
        )?)
    }

    fn lchown(&self, path: &Path, uid: u32, gid: u32) -> io::Result<()> {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid))
    }

    fn write_file(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        use std::io::Write;
        std::fs::OpenOptions::new()
            .write(true)
            .open(path)?
            .write_all(data)
    }

    fn setrlimit(&self, resource: u32, soft: u64, hard: u64) -> io::Result<()> {
        sandbox::setrlimit(resource, soft, hard)
    }

    fn umask(&self, mask: u32) {
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(mask & 0o777));
    }

    fn set_no_new_privs(&self) -> io::Result<()> {
        Ok(nix::sys::prctl::set_no_new_privs()?)
    }

    fn set_keepcaps(&self, keep: bool) -> io::Result<()> {
        Ok(nix::sys::prctl::set_keepcaps(keep)?)
    }

    fn setgroups(&self, gids: &[u32]) -> io::Result<()> {
        let gids: Vec<nix::unistd::Gid> = gids
            .iter()
            .map(|g| nix::unistd::Gid::from_raw(*g))
            .collect();
        Ok(nix::unistd::setgroups(&gids)?)
    }

    fn setresgid(&self, gid: u32) -> io::Result<()> {
        let g = nix::unistd::Gid::from_raw(gid);
        Ok(nix::unistd::setresgid(g, g, g)?)
    }

    fn setresuid(&self, uid: u32) -> io::Result<()> {
        let u = nix::unistd::Uid::from_raw(uid);
        Ok(nix::unistd::setresuid(u, u, u)?)
    }

    fn setfsuid(&self, uid: u32) -> u32 {
        nix::unistd::setfsuid(nix::unistd::Uid::from_raw(uid)).as_raw()
    }

    fn setfsgid(&self, gid: u32) -> u32 {
        nix::unistd::setfsgid(nix::unistd::Gid::from_raw(gid)).as_raw()
    }

    fn drop_bounding(&self, keep: u64) -> io::Result<()> {
        sandbox::drop_bounding(keep, LAST_CAP)
    }

    fn capset(&self, effective: u64, permitted: u64, inheritable: u64) -> io::Result<()> {
        sandbox::capset(effective, permitted, inheritable)
    }

    fn set_ambient(&self, ambient: u64) -> io::Result<()> {
        sandbox::set_ambient(ambient, LAST_CAP)
    }

    fn settled_threads(&self) -> usize {
        sandbox::wait_single_threaded(std::time::Duration::from_secs(2))
    }

    fn hosts_lookup(&self, services: &str) -> io::Result<()> {
        sandbox::configure_hosts_lookup(services)
    }

    fn set_dumpable(&self, dumpable: bool) -> io::Result<()> {
        nix::sys::prctl::set_dumpable(dumpable).map_err(io::Error::from)
    }

    fn load_seccomp(&self, program: &[u8], flags: u32) -> io::Result<()> {
        sandbox::load_seccomp(program, flags)
    }

    fn user_namespace(
        &self,
        uids: &[idmap::IdRange],
        gids: &[idmap::IdRange],
    ) -> io::Result<OwnedFd> {
        idmap::user_namespace(uids, gids)
    }

    fn bind_idmapped(
        &self,
        source: &Path,
        target: &Path,
        recursive: bool,
        uids: &[idmap::IdRange],
        gids: &[idmap::IdRange],
    ) -> io::Result<()> {
        idmap::bind_idmapped(source, target, recursive, uids, gids)
    }

    fn clone_mount(&self, path: &Path) -> io::Result<OwnedFd> {
        sandbox::clone_mount(path)
    }

    fn mount_setattr(
        &self,
        fd: BorrowedFd<'_>,
        set: u64,
        clear: u64,
        recursive: bool,
    ) -> io::Result<()> {
        sandbox::mount_setattr(fd, set, clear, recursive)
    }
}
