//! A [`Sys`] that makes no call and records each one, in order, for unit
//! tests; chosen calls fail with a given errno.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
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
            source: source.map(Path::to_owned),
            target: target.to_owned(),
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
}
