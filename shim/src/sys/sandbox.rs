//! The raw calls of a runner's sandbox that neither std nor nix wraps:
//! loading a seccomp program, detached mount trees (`open_tree`,
//! `mount_setattr`), the capability sets (`capset`, the bounding and
//! ambient sets), rlimits by number, and the domain name.

use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

use std::os::unix::ffi::OsStrExt;

fn check(rc: libc::c_long) -> std::io::Result<libc::c_long> {
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// `program` (native-endian `sock_filter` instructions, 8 bytes each) as
/// the kernel's structs.
pub fn sock_filters(program: &[u8]) -> std::io::Result<Vec<libc::sock_filter>> {
    const INSN: usize = std::mem::size_of::<libc::sock_filter>();
    if program.is_empty() || !program.len().is_multiple_of(INSN) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "a seccomp program is a whole number of 8-byte instructions",
        ));
    }
    Ok(program
        .chunks_exact(INSN)
        .map(|c| libc::sock_filter {
            code: u16::from_ne_bytes([c[0], c[1]]),
            jt: c[2],
            jf: c[3],
            k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect())
}

/// Loads the seccomp filter `program` (native-endian `sock_filter`
/// instructions) with `flags` (`SECCOMP_FILTER_FLAG_*`) into this process.
pub fn load_seccomp(program: &[u8], flags: u32) -> std::io::Result<()> {
    let filters = sock_filters(program)?;
    let len = u16::try_from(filters.len()).map_err(|_| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "seccomp program too long")
    })?;
    let prog = libc::sock_fprog {
        len,
        filter: filters.as_ptr().cast_mut(),
    };
    // SAFETY: seccomp(2) reads `prog` and the `len` instructions it points
    // to, which `filters` holds, alive and unmoved, for the call; the kernel
    // copies the program and keeps no pointer into our memory.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            libc::c_ulong::from(flags),
            &prog as *const libc::sock_fprog,
        )
    };
    check(rc).map(drop)
}

/// `path` as a C string.
pub(super) fn c_path(path: &Path) -> std::io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)
}

/// `open_tree(OPEN_TREE_CLONE | AT_RECURSIVE)` of the mount tree at
/// `path`: a detached copy of it and every mount below it, reachable only
/// through the returned fd.
pub fn clone_mount(path: &Path) -> std::io::Result<OwnedFd> {
    open_tree_clone(path, true)
}

/// `open_tree(OPEN_TREE_CLONE)` of the mount at `path` (with the mounts
/// below it when `recursive`): a detached copy, reachable only through the
/// returned fd.
pub(super) fn open_tree_clone(path: &Path, recursive: bool) -> std::io::Result<OwnedFd> {
    let c = c_path(path)?;
    let mut flags = libc::OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint;
    if recursive {
        flags |= libc::AT_RECURSIVE as libc::c_uint;
    }
    // SAFETY: open_tree(2) reads the NUL-terminated path for the call only
    // and returns a new descriptor (or -1).
    let fd =
        check(unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, c.as_ptr(), flags) })?;
    let fd = libc::c_int::try_from(fd).map_err(std::io::Error::other)?;
    // SAFETY: a descriptor the kernel just returned to us, owned by nobody.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `struct mount_attr` of `mount_setattr(2)`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// `mount_setattr(2)`: sets and clears `MOUNT_ATTR_*` on the mount `fd`
/// refers to (and every mount below it when `recursive`).
pub fn mount_setattr(
    fd: BorrowedFd<'_>,
    set: u64,
    clear: u64,
    recursive: bool,
) -> std::io::Result<()> {
    set_mount_attr(fd, set, clear, recursive, None)
}

/// [`mount_setattr`], with the user namespace `MOUNT_ATTR_IDMAP` maps
/// through.
pub(super) fn set_mount_attr(
    fd: BorrowedFd<'_>,
    set: u64,
    clear: u64,
    recursive: bool,
    userns: Option<BorrowedFd<'_>>,
) -> std::io::Result<()> {
    let attr = MountAttr {
        attr_set: set,
        attr_clr: clear,
        propagation: 0,
        userns_fd: userns.map_or(0, |u| u.as_raw_fd() as u64),
    };
    let mut flags = libc::AT_EMPTY_PATH;
    if recursive {
        flags |= libc::AT_RECURSIVE;
    }
    // SAFETY: mount_setattr(2) reads the empty path and `attr` (of the size
    // passed) for the call only.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    check(rc).map(drop)
}

/// `capset(2)`: this thread's effective, permitted and inheritable sets.
pub fn capset(effective: u64, permitted: u64, inheritable: u64) -> std::io::Result<()> {
    // _LINUX_CAPABILITY_VERSION_3: two 32-bit words per set
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let header = Header {
        version: 0x2008_0522,
        pid: 0,
    };
    let word = |m: u64, i: u32| (m >> (32 * i)) as u32;
    let data = [0, 1].map(|i| Data {
        effective: word(effective, i),
        permitted: word(permitted, i),
        inheritable: word(inheritable, i),
    });
    // SAFETY: capset(2) reads the header and the two data words it names
    // (version 3), both alive for the call.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &header as *const Header, data.as_ptr()) };
    check(rc).map(drop)
}

/// `prctl(PR_CAPBSET_DROP)` of every capability up to `last` not in `keep`.
pub fn drop_bounding(keep: u64, last: u32) -> std::io::Result<()> {
    for cap in 0..=last {
        if keep & (1 << cap) != 0 {
            continue;
        }
        // SAFETY: prctl with integer arguments only.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) };
        // EINVAL: a capability this kernel does not know
        if rc < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Clears the ambient set, then raises each capability of `ambient`.
pub fn set_ambient(ambient: u64, last: u32) -> std::io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    // EINVAL: a kernel without ambient capabilities (before 4.3)
    if rc < 0 && ambient == 0 {
        return Ok(());
    }
    check(libc::c_long::from(rc))?;
    for cap in (0..=last).filter(|c| ambient & (1 << c) != 0) {
        // SAFETY: as above.
        let rc = unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                libc::c_ulong::from(cap),
                0,
                0,
            )
        };
        check(libc::c_long::from(rc))?;
    }
    Ok(())
}

/// `setrlimit(2)` of resource number `resource`.
pub fn setrlimit(resource: u32, soft: u64, hard: u64) -> std::io::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: setrlimit reads `limit` for the call only.
    let rc = unsafe { libc::setrlimit(resource as _, &limit) };
    check(libc::c_long::from(rc)).map(drop)
}

/// `setdomainname(2)`.
pub fn setdomainname(name: &str) -> std::io::Result<()> {
    // SAFETY: reads `name.len()` bytes of `name` for the call only.
    let rc = unsafe { libc::setdomainname(name.as_ptr().cast(), name.len()) };
    check(libc::c_long::from(rc)).map(drop)
}

unsafe extern "C" {
    /// glibc's override of one `nsswitch.conf` database (exported since
    /// glibc 2.0; what `nscd` and glibc's own tests use).
    fn __nss_configure_lookup(
        dbname: *const libc::c_char,
        service_line: *const libc::c_char,
    ) -> libc::c_int;
}

/// Makes glibc resolve host names with `services` (an `nsswitch.conf`
/// `hosts:` line) from now on, whatever `/etc/nsswitch.conf` says later.
pub fn configure_hosts_lookup(services: &str) -> std::io::Result<()> {
    let line = CString::new(services).map_err(std::io::Error::other)?;
    // SAFETY: both arguments are NUL-terminated strings alive for the call;
    // glibc parses them into its own allocations and keeps no pointer.
    let rc = unsafe { __nss_configure_lookup(c"hosts".as_ptr(), line.as_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::other(format!(
            "glibc refused the hosts lookup {services:?}"
        )));
    }
    Ok(())
}

/// The signals whose default action ends a process, but for the ones
/// wasmtime handles itself (SIGSEGV, SIGBUS, SIGILL, SIGFPE), SIGABRT
/// (abort falls back to a fault), SIGPIPE (ignored by Rust's runtime) and
/// SIGKILL, SIGSTOP (always delivered).
const TERMINATING: [libc::c_int; 14] = [
    libc::SIGHUP,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGTERM,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGALRM,
    libc::SIGVTALRM,
    libc::SIGPROF,
    libc::SIGIO,
    libc::SIGPWR,
    libc::SIGSTKFLT,
    libc::SIGXCPU,
    libc::SIGXFSZ,
];

extern "C" fn exit_by_signal(signal: libc::c_int) {
    // SAFETY: _exit is async-signal-safe and ends the process at once.
    unsafe { libc::_exit(128 + signal) }
}

/// A process that is pid 1 of its PID namespace ignores every signal it
/// has no handler for, even from the shim outside it (only SIGKILL and
/// SIGSTOP are forced): for those that would end it, handlers that do
/// what the default action would, `_exit(128 + signal)`, the status a
/// process killed by the signal reports.
pub fn exit_on_terminating_signals() -> std::io::Result<()> {
    for signal in TERMINATING {
        // SAFETY: a zeroed sigaction with a plain handler, an empty mask
        // and no flags is valid; the handler only calls _exit.
        let rc = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction =
                exit_by_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The native pod sandbox's signals, as pause has them: SIGTERM and SIGINT
/// end it with status 0, SIGCHLD reaps the orphans of a shared PID
/// namespace; all three are blocked here and taken by [`pod_sandbox_wait`]
/// (a blocked signal is queued even to pid 1 of a PID namespace, which
/// drops signals left at their default action). Every other signal the
/// runner gave a handler as pid 1 ([`exit_on_terminating_signals`]) goes
/// back to its default action: as pid 1, pause ignores a SIGHUP or SIGUSR1
/// that a process of the pod sends it, and so must the sandbox, whose end
/// is the pod's.
pub fn pod_sandbox_signals() -> std::io::Result<nix::sys::signal::SigSet> {
    use nix::sys::signal::{SigSet, Signal};
    if std::process::id() == 1 {
        for signal in TERMINATING {
            if signal != libc::SIGTERM && signal != libc::SIGINT {
                default_action(signal)?;
            }
        }
    }
    let mut set = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGCHLD] {
        set.add(s);
    }
    set.thread_block().map_err(std::io::Error::from)?;
    Ok(set)
}

/// Waits as pause does: reaps every exited child, and returns on SIGTERM or
/// SIGINT (the caller exits 0).
pub fn pod_sandbox_wait(set: &nix::sys::signal::SigSet) -> std::io::Result<()> {
    use nix::sys::signal::Signal;
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    loop {
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::ECHILD) => break,
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        match set.wait() {
            Ok(Signal::SIGTERM | Signal::SIGINT) => return Ok(()),
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Gives `signal` its default action again (before another handler is
/// installed for it).
pub fn default_action(signal: libc::c_int) -> std::io::Result<()> {
    // SAFETY: signal(2) with SIG_DFL touches no memory of ours.
    if unsafe { libc::signal(signal, libc::SIG_DFL) } == libc::SIG_ERR {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Waits up to `timeout` for this process to be down to one thread (a
/// compiler pool's threads end just after they say they have); returns the
/// count last seen.
pub fn wait_single_threaded(timeout: std::time::Duration) -> usize {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let n = threads().unwrap_or(0);
        if n == 1 || std::time::Instant::now() >= deadline {
            return n;
        }
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
}

/// Threads of this process (from `/proc/self/status`).
pub fn threads() -> std::io::Result<usize> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| std::io::Error::other("no Threads line in /proc/self/status"))
}
