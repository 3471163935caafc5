//! A [`Sys`] that makes no call and records each one, in order, for unit
//! tests; chosen calls fail with a given errno.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::signal::Signal;

use super::Sys;

/// One recorded call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Unshare(CloneFlags),
    /// The kind, and the path the descriptor was opened from.
    Setns(CloneFlags, PathBuf),
    LoopbackUp,
    Mount {
        source: Option<PathBuf>,
        target: PathBuf,
        fstype: Option<String>,
        flags: MsFlags,
        data: Option<String>,
    },
    Umount(PathBuf, MntFlags),
    Kill(i32, Signal),
    PivotRoot(PathBuf, PathBuf),
    Chdir(PathBuf),
    Fchdir(PathBuf),
    Sethostname(String),
    Setdomainname(String),
    Mknod {
        path: PathBuf,
        kind: char,
        mode: u32,
        major: u64,
        minor: u64,
    },
    Lchown(PathBuf, u32, u32),
    WriteFile(PathBuf, String),
    Setrlimit(u32, u64, u64),
    Umask(u32),
    NoNewPrivs,
    Keepcaps(bool),
    Setgroups(Vec<u32>),
    Setresgid(u32),
    Setresuid(u32),
    Setfsuid(u32),
    Setfsgid(u32),
    DropBounding(u64),
    Capset {
        effective: u64,
        permitted: u64,
        inheritable: u64,
    },
    Ambient(u64),
    Dumpable(bool),
    HostsLookup(String),
    Seccomp(usize, u32),
    CloneMount(PathBuf),
    MountSetattr {
        mount: PathBuf,
        set: u64,
        clear: u64,
        recursive: bool,
    },
    /// A user namespace with (uid_map, gid_map) as the kernel's text.
    UserNamespace(String, String),
    BindIdmapped {
        source: PathBuf,
        target: PathBuf,
        recursive: bool,
        uid_map: String,
    },
}

/// Which calls fail, and how.
type Failures = Vec<(fn(&Call) -> bool, nix::errno::Errno)>;

/// The recording double.
#[derive(Debug, Default)]
pub struct Recording {
    calls: Mutex<Vec<Call>>,
    /// Calls that fail: the first recorded call for which the predicate
    /// holds returns the errno (once).
    failures: Mutex<Failures>,
}

impl Recording {
    /// The calls so far.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    /// Makes the next call matching `which` fail with `errno`.
    pub fn fail(&self, which: fn(&Call) -> bool, errno: nix::errno::Errno) {
        self.failures.lock().unwrap().push((which, errno));
    }

    fn record(&self, call: Call) -> io::Result<()> {
        let mut failures = self.failures.lock().unwrap();
        let failed = failures.iter().position(|(which, _)| which(&call));
        self.calls.lock().unwrap().push(call);
        match failed {
            Some(i) => Err(failures.remove(i).1.into()),
            None => Ok(()),
        }
    }
}

/// The path a descriptor of this process was opened from.
fn fd_path(fd: BorrowedFd<'_>) -> PathBuf {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap_or_default()
}

/// A `/proc/self/fd/N` path as the path it names (mount targets are given
/// that way); other paths as they are.
fn resolved(path: &Path) -> PathBuf {
    let Ok(rest) = path.strip_prefix("/proc/self/fd") else {
        return path.to_owned();
    };
    let mut parts = rest.components();
    let Some(fd) = parts.next() else {
        return path.to_owned();
    };
    match std::fs::read_link(Path::new("/proc/self/fd").join(fd)) {
        Ok(dir) => dir.join(parts.as_path()),
        Err(_) => path.to_owned(),
    }
}

impl Sys for Recording {
    fn unshare(&self, flags: CloneFlags) -> io::Result<()> {
        self.record(Call::Unshare(flags))
    }

    fn setns(&self, fd: BorrowedFd<'_>, kind: CloneFlags) -> io::Result<()> {
        self.record(Call::Setns(kind, fd_path(fd)))
    }

    fn loopback_up(&self) -> io::Result<()> {
        self.record(Call::LoopbackUp)
    }

    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> io::Result<()> {
        self.record(Call::Mount {
            source: source.map(resolved),
            target: resolved(target),
            fstype: fstype.map(str::to_owned),
            flags,
            data: data.map(str::to_owned),
        })
    }

    fn umount(&self, target: &Path, flags: MntFlags) -> io::Result<()> {
        self.record(Call::Umount(target.to_owned(), flags))
    }

    fn kill(&self, pid: i32, signal: Signal) -> io::Result<()> {
        self.record(Call::Kill(pid, signal))
    }

    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> io::Result<()> {
        self.record(Call::PivotRoot(new_root.to_owned(), put_old.to_owned()))
    }

    fn chdir(&self, path: &Path) -> io::Result<()> {
        self.record(Call::Chdir(path.to_owned()))
    }

    fn fchdir(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        self.record(Call::Fchdir(fd_path(fd)))
    }

    fn sethostname(&self, name: &str) -> io::Result<()> {
        self.record(Call::Sethostname(name.to_owned()))
    }

    fn setdomainname(&self, name: &str) -> io::Result<()> {
        self.record(Call::Setdomainname(name.to_owned()))
    }

    fn mknod(&self, path: &Path, kind: char, mode: u32, major: u64, minor: u64) -> io::Result<()> {
        self.record(Call::Mknod {
            path: resolved(path),
            kind,
            mode,
            major,
            minor,
        })
    }

    fn lchown(&self, path: &Path, uid: u32, gid: u32) -> io::Result<()> {
        self.record(Call::Lchown(resolved(path), uid, gid))
    }

    fn write_file(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        self.record(Call::WriteFile(
            path.to_owned(),
            String::from_utf8_lossy(data).into_owned(),
        ))
    }

    fn setrlimit(&self, resource: u32, soft: u64, hard: u64) -> io::Result<()> {
        self.record(Call::Setrlimit(resource, soft, hard))
    }

    fn umask(&self, mask: u32) {
        let _ = self.record(Call::Umask(mask));
    }

    fn set_no_new_privs(&self) -> io::Result<()> {
        self.record(Call::NoNewPrivs)
    }

    fn set_keepcaps(&self, keep: bool) -> io::Result<()> {
        self.record(Call::Keepcaps(keep))
    }

    fn setgroups(&self, gids: &[u32]) -> io::Result<()> {
        self.record(Call::Setgroups(gids.to_vec()))
    }

    fn setresgid(&self, gid: u32) -> io::Result<()> {
        self.record(Call::Setresgid(gid))
    }

    fn setresuid(&self, uid: u32) -> io::Result<()> {
        self.record(Call::Setresuid(uid))
    }

    fn setfsuid(&self, uid: u32) -> u32 {
        let _ = self.record(Call::Setfsuid(uid));
        0
    }

    fn setfsgid(&self, gid: u32) -> u32 {
        let _ = self.record(Call::Setfsgid(gid));
        0
    }

    fn drop_bounding(&self, keep: u64) -> io::Result<()> {
        self.record(Call::DropBounding(keep))
    }

    fn capset(&self, effective: u64, permitted: u64, inheritable: u64) -> io::Result<()> {
        self.record(Call::Capset {
            effective,
            permitted,
            inheritable,
        })
    }

    fn set_ambient(&self, ambient: u64) -> io::Result<()> {
        self.record(Call::Ambient(ambient))
    }

    fn settled_threads(&self) -> usize {
        1
    }

    fn hosts_lookup(&self, services: &str) -> io::Result<()> {
        self.record(Call::HostsLookup(services.to_owned()))
    }

    fn set_dumpable(&self, dumpable: bool) -> io::Result<()> {
        self.record(Call::Dumpable(dumpable))
    }

    fn load_seccomp(&self, program: &[u8], flags: u32) -> io::Result<()> {
        self.record(Call::Seccomp(program.len(), flags))
    }

    fn user_namespace(
        &self,
        uids: &[super::idmap::IdRange],
        gids: &[super::idmap::IdRange],
    ) -> io::Result<OwnedFd> {
        self.record(Call::UserNamespace(
            super::idmap::map_text(uids),
            super::idmap::map_text(gids),
        ))?;
        // a descriptor the tests can name: this process's own namespace
        Ok(std::fs::File::open("/proc/self/ns/user")?.into())
    }

    fn bind_idmapped(
        &self,
        source: &Path,
        target: &Path,
        recursive: bool,
        uids: &[super::idmap::IdRange],
        _gids: &[super::idmap::IdRange],
    ) -> io::Result<()> {
        self.record(Call::BindIdmapped {
            source: source.to_owned(),
            target: resolved(target),
            recursive,
            uid_map: super::idmap::map_text(uids),
        })
    }

    fn clone_mount(&self, path: &Path) -> io::Result<OwnedFd> {
        self.record(Call::CloneMount(path.to_owned()))?;
        Ok(std::fs::File::open(path)?.into())
    }

    fn mount_setattr(
        &self,
        fd: BorrowedFd<'_>,
        set: u64,
        clear: u64,
        recursive: bool,
    ) -> io::Result<()> {
        self.record(Call::MountSetattr {
            mount: fd_path(fd),
            set,
            clear,
            recursive,
        })
    }
}
