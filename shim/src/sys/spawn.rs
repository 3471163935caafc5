//! Starting a runner process: placed in its cgroup before it execs, with
//! its stdio and the control socket at [`CONTROL_FD`].

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use nix::fcntl::OFlag;

/// The file descriptor number a runner process finds its control socket at.
pub const CONTROL_FD: RawFd = 3;

/// Arranges for `socket` to appear as [`CONTROL_FD`] in the process `cmd`
/// spawns (and nowhere else: the original descriptor stays close-on-exec).
pub fn pass_control_socket(cmd: &mut Command, socket: &UnixStream) {
    let fd = socket.as_raw_fd();
    // SAFETY: the closure runs in the child between fork and exec, where only
    // async-signal-safe calls are allowed; dup2(2) is one and touches no
    // memory of the parent. dup2 onto a different number clears FD_CLOEXEC on
    // the copy; when the socket already has that number we clear the flag
    // with fcntl(2), also async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            if fd == CONTROL_FD {
                if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(fd, CONTROL_FD) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Takes ownership of the control socket in a runner process.
///
/// Must be called at most once, by the runner's entry point only.
pub fn take_control_socket() -> std::io::Result<UnixStream> {
    // Make sure the descriptor is open and a socket before claiming it.
    let stat = nix::sys::stat::fstat(
        // SAFETY: borrowing a raw fd number for one fstat call; fstat fails
        // cleanly with EBADF when the number is not open.
        unsafe { std::os::fd::BorrowedFd::borrow_raw(CONTROL_FD) },
    )?;
    if stat.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(std::io::Error::other(
            "fd 3 is not the wasmpod control socket (runner mode is internal to the shim)",
        ));
    }
    // SAFETY: fd 3 was set up by `pass_control_socket` in the parent, is open
    // (checked above) and nothing else in this process owns it: the runner
    // entry point calls this once, before anything else could open fd 3.
    let fd = unsafe { OwnedFd::from_raw_fd(CONTROL_FD) };
    nix::fcntl::fcntl(
        &fd,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )?;
    Ok(UnixStream::from(fd))
}

/// `CLONE_INTO_CGROUP` (Linux 5.7); libc's constant has the wrong width.
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Why [`spawn_in_cgroup`] failed.
#[derive(Debug, thiserror::Error)]
pub enum BirthError {
    /// The kernel cannot start a process in that cgroup (no `clone3`, no
    /// `CLONE_INTO_CGROUP`, not a cgroup v2 directory): use another way.
    #[error("clone3 into the cgroup: {0}")]
    Unsupported(std::io::Error),
    /// The child could not join its cgroup, set up, or exec (`pid`: the
    /// child, which has exited, when one was started).
    #[error("start {exe}: {step}: {source}")]
    Exec {
        exe: String,
        pid: Option<i32>,
        /// What failed.
        step: Step,
        #[source]
        source: std::io::Error,
    },
}

/// The step of [`spawn_in_cgroup`] that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Creating the child (or reading its report).
    Clone,
    /// The child moving itself into its cgroup (v1).
    JoinCgroup,
    /// The child setting up fds 0–3.
    Stdio,
    /// The child changing to its working directory.
    Chdir,
    /// The exec itself.
    Exec,
}

impl Step {
    /// The steps the child reports, by index.
    const CHILD: [Step; 4] = [Step::JoinCgroup, Step::Stdio, Step::Chdir, Step::Exec];
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Step::Clone => "clone",
            Step::JoinCgroup => "join cgroup",
            Step::Stdio => "stdio",
            Step::Chdir => "chdir",
            Step::Exec => "exec",
        })
    }
}

/// A program for [`spawn_in_cgroup`]: everything the child needs, made
/// before the fork, because the child may not allocate.
pub struct Program {
    exe: std::ffi::CString,
    argv: Vec<std::ffi::CString>,
    cwd: std::ffi::CString,
}

impl Program {
    /// `exe` run with `args` (after `argv[0]`, which is `exe`) in `cwd`, with
    /// an empty environment.
    pub fn new(exe: &Path, args: &[&str], cwd: &Path) -> std::io::Result<Program> {
        use std::os::unix::ffi::OsStrExt;
        let c = |b: &[u8]| std::ffi::CString::new(b).map_err(std::io::Error::other);
        let exe_c = c(exe.as_os_str().as_bytes())?;
        let mut argv = vec![exe_c.clone()];
        for a in args {
            argv.push(c(a.as_bytes())?);
        }
        Ok(Program {
            exe: exe_c,
            argv,
            cwd: c(cwd.as_os_str().as_bytes())?,
        })
    }
}

/// How a child of [`spawn_in_cgroup`] gets into its cgroup without anyone
/// writing its pid to `cgroup.procs`. That write takes the kernel's global
/// threadgroup lock for writing, which waits for an RCU grace period
/// (5–25 ms on a small VM) while holding `cgroup_mutex`, so every cgroup
/// operation on the node waits behind it.
#[derive(Clone, Copy)]
pub enum Placement<'a> {
    /// cgroup v2: the cgroup's directory. The child is born in it (`clone3`
    /// with `CLONE_INTO_CGROUP`, Linux 5.7).
    Born(&'a File),
    /// cgroup v1: the cgroup's `tasks` file in each hierarchy, open for
    /// writing. The child, still single-threaded, writes `0` (itself) to
    /// each before it execs. Recent kernels (6.x here) move the calling
    /// thread alone without the global lock; older ones take it, and the
    /// move is then as slow as a `cgroup.procs` write, never wrong.
    MovesItself(&'a [File]),
}

/// Starts `program` as a child of this process, placed in its cgroup before
/// it execs (see [`Placement`]), with `stdio` as its fds 0–2 and `control` as
/// [`CONTROL_FD`]. Returns the child's pid once it has exec'd.
pub fn spawn_in_cgroup(
    program: &Program,
    stdio: [&File; 3],
    control: &UnixStream,
    placement: Placement<'_>,
) -> Result<i32, BirthError> {
    let exec_err = |step, source, pid| BirthError::Exec {
        exe: program.exe.to_string_lossy().into_owned(),
        pid,
        step,
        source,
    };
    // Everything the child touches is laid out now.
    let argv: Vec<*const libc::c_char> = program
        .argv
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    let sources = [
        stdio[0].as_raw_fd(),
        stdio[1].as_raw_fd(),
        stdio[2].as_raw_fd(),
        control.as_raw_fd(),
    ];
    let tasks: Vec<RawFd> = match placement {
        Placement::Born(_) => Vec::new(),
        Placement::MovesItself(files) => files.iter().map(AsRawFd::as_raw_fd).collect(),
    };
    let (err_read, err_write) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| exec_err(Step::Clone, e.into(), None))?;
    // SAFETY: clone_args is plain data; all-zero is its documented default.
    let mut args: libc::clone_args = unsafe { std::mem::zeroed() };
    args.exit_signal = libc::SIGCHLD as u64;
    if let Placement::Born(dir) = placement {
        args.flags = CLONE_INTO_CGROUP;
        args.cgroup = dir.as_raw_fd() as u64;
    }
    // SAFETY: clone3 without CLONE_VM forks this process: the child gets a
    // copy of the address space and only this thread. In the child, the code
    // below calls only async-signal-safe syscalls (write, fcntl, dup2,
    // sigprocmask, signal, chdir, execve, _exit) on data prepared above,
    // never the allocator or a lock another thread may have held, and leaves
    // by execve or _exit. The parent only reads the result.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &mut args as *mut libc::clone_args,
            std::mem::size_of::<libc::clone_args>(),
        )
    };
    if pid == 0 {
        // SAFETY: see above; `child` never returns.
        unsafe {
            child(
                &program.exe,
                &argv,
                &envp,
                &program.cwd,
                &tasks,
                sources,
                err_write.as_raw_fd(),
            )
        }
    }
    if pid < 0 {
        let e = std::io::Error::last_os_error();
        // Only a kernel or cgroup that cannot do it is worth another way; a
        // full pids.max (EAGAIN) or a dead PID namespace (ENOMEM) must fail,
        // not be worked around by a move that ignores the limit.
        return Err(match e.raw_os_error() {
            // EPERM: a seccomp profile that refuses clone3 (containerd
            // itself in a container); the other way reports a real denial.
            Some(
                libc::ENOSYS
                | libc::E2BIG
                | libc::EINVAL
                | libc::EBADF
                | libc::EOPNOTSUPP
                | libc::EPERM,
            ) => BirthError::Unsupported(e),
            _ => exec_err(Step::Clone, e, None),
        });
    }
    drop(err_write);
    let pid = i32::try_from(pid)
        .map_err(|_| exec_err(Step::Clone, std::io::Error::other("pid range"), None))?;
    // The write end closes at exec: nothing to read means the exec worked.
    // A failing child writes the step's index and errno, 4 bytes each.
    let mut report = [0u8; 8];
    let mut got = 0;
    let mut reader = File::from(err_read);
    loop {
        use std::io::Read;
        match reader.read(&mut report[got..]) {
            Ok(0) => break,
            Ok(n) => {
                got += n;
                if got == report.len() {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(exec_err(Step::Exec, e, Some(pid))),
        }
    }
    if got == 0 {
        return Ok(pid);
    }
    // The child has exited (127); the shim's reaper collects it.
    if got != report.len() {
        let e = std::io::Error::other("short error report from the child");
        return Err(exec_err(Step::Exec, e, Some(pid)));
    }
    let [s0, s1, s2, s3, e0, e1, e2, e3] = report;
    let step = Step::CHILD
        .get(u32::from_ne_bytes([s0, s1, s2, s3]) as usize)
        .copied()
        .unwrap_or(Step::Exec);
    let errno = i32::from_ne_bytes([e0, e1, e2, e3]);
    Err(exec_err(
        step,
        std::io::Error::from_raw_os_error(errno),
        Some(pid),
    ))
}

/// The child side of [`spawn_in_cgroup`]: only async-signal-safe calls.
///
/// # Safety
/// Must be called only in the child of a fork, with pointers into memory
/// prepared before it.
unsafe fn child(
    exe: &std::ffi::CStr,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char; 1],
    cwd: &std::ffi::CStr,
    tasks: &[RawFd],
    sources: [RawFd; 4],
    err: RawFd,
) -> ! {
    /// Reports `step` (an index into [`Step::CHILD`]) and errno, and exits.
    unsafe fn fail(err: RawFd, step: u32) -> ! {
        // SAFETY: errno is this thread's; write and _exit are
        // async-signal-safe.
        unsafe {
            let errno = *libc::__errno_location();
            let mut report = [0u8; 8];
            report[..4].copy_from_slice(&step.to_ne_bytes());
            report[4..].copy_from_slice(&errno.to_ne_bytes());
            libc::write(err, report.as_ptr().cast(), report.len());
            libc::_exit(127)
        }
    }
    // SAFETY: the caller's contract; each call below is async-signal-safe.
    unsafe {
        // Into the cgroup first, so that all the child does from here on is
        // charged to it. This process has one thread: moving it moves all.
        for fd in tasks {
            let wrote = libc::write(*fd, b"0".as_ptr().cast(), 1);
            if wrote != 1 {
                if wrote >= 0 {
                    // a short write sets no errno of its own
                    *libc::__errno_location() = libc::EIO;
                }
                fail(err, 0);
            }
        }
        // Move everything above the target numbers first, so no dup2 below
        // overwrites a source (or the error pipe) still to be used.
        let moved_err = libc::fcntl(err, libc::F_DUPFD_CLOEXEC, 16);
        if moved_err < 0 {
            fail(err, 1);
        }
        let err = moved_err;
        let mut moved = [0; 4];
        for (i, fd) in sources.iter().enumerate() {
            moved[i] = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 16);
            if moved[i] < 0 {
                fail(err, 1);
            }
        }
        // dup2 clears close-on-exec on the copy.
        for (target, fd) in moved.iter().enumerate() {
            if libc::dup2(*fd, target as RawFd) < 0 {
                fail(err, 1);
            }
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        // Rust ignores SIGPIPE; a new program starts with the default.
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        if libc::chdir(cwd.as_ptr()) < 0 {
            fail(err, 2);
        }
        libc::execve(exe.as_ptr(), argv.as_ptr(), envp.as_ptr());
        fail(err, 3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// Where this machine mounts a cgroup filesystem of type `fstype` (with
    /// mount option `option`, when given). These tests need root, and are
    /// `#[ignore]`d so that a run as any other user does not pass them
    /// while skipping them: `make test` runs them when it runs as root.
    fn cgroup_mount(fstype: &str, option: Option<&str>) -> std::path::PathBuf {
        assert!(
            nix::unistd::Uid::effective().is_root(),
            "this test needs root (cgroup directories)"
        );
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        mounts
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| {
                f.len() > 3
                    && f[2] == fstype
                    && option.is_none_or(|o| f[3].split(',').any(|have| have == o))
            })
            .map(|f| std::path::PathBuf::from(f[1]))
            .unwrap_or_else(|| panic!("this machine has no {fstype} mount with {option:?}"))
    }

    /// A cgroup v2 mount of this machine (the unified one, or the hybrid
    /// layout's `unified`).
    fn cgroup2_mount() -> std::path::PathBuf {
        cgroup_mount("cgroup2", None)
    }

    /// Runs `exe args` through [`spawn_in_cgroup`] in a new temporary
    /// directory, expects exit 0, and returns what it wrote to stdout and
    /// stderr, and the directory.
    fn run_to_end(
        exe: &str,
        args: &[&str],
        placement: Placement<'_>,
    ) -> (String, tempfile::TempDir) {
        let cwd = tempfile::tempdir().unwrap();
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
        let out = File::from(write);
        let null = File::open("/dev/null").unwrap();
        let (_ours, theirs) = UnixStream::pair().unwrap();
        let program = Program::new(Path::new(exe), args, cwd.path()).unwrap();
        let pid = spawn_in_cgroup(&program, [&null, &out, &out], &theirs, placement).unwrap();
        drop(out);
        let mut text = String::new();
        File::from(read).read_to_string(&mut text).unwrap();
        assert_eq!(
            wait(pid),
            nix::sys::wait::WaitStatus::Exited(nix::unistd::Pid::from_raw(pid), 0),
            "{exe}: {text}"
        );
        (text, cwd)
    }

    fn wait(pid: i32) -> nix::sys::wait::WaitStatus {
        nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None).unwrap()
    }

    #[test]
    #[ignore = "needs root and a cgroup v2 mount (make test runs it as root)"]
    fn born_in_a_cgroup_v2_directory_with_its_stdio_and_control_socket() {
        let mount = cgroup2_mount();
        let name = format!("wasmpod-birth-test-{}", std::process::id());
        let dir = mount.join(&name);
        std::fs::create_dir(&dir).unwrap();
        let script =
            "cat /proc/self/cgroup; pwd; wc -c < /proc/$$/environ; readlink /proc/self/fd/3";
        let cg = File::open(&dir).unwrap();
        let (text, cwd) = run_to_end("/bin/sh", &["-c", script], Placement::Born(&cg));
        std::fs::remove_dir(&dir).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines.contains(&format!("0::/{name}").as_str()),
            "not born in {name}: {text}"
        );
        assert!(lines.contains(&cwd.path().to_str().unwrap()), "cwd: {text}");
        assert!(lines.contains(&"0"), "environment not empty: {text}");
        assert!(
            lines.last().is_some_and(|l| l.starts_with("socket:")),
            "fd 3 is not the control socket: {text}"
        );
    }

    #[test]
    #[ignore = "needs root and a cgroup v2 mount (make test runs it as root)"]
    fn exec_failure_and_a_directory_that_is_not_a_cgroup() {
        let mount = cgroup2_mount();
        let null = File::open("/dev/null").unwrap();
        let (_ours, theirs) = UnixStream::pair().unwrap();
        let cwd = tempfile::tempdir().unwrap();
        // not a cgroup: the kernel refuses, and the caller moves the process
        let program = Program::new(Path::new("/bin/true"), &[], cwd.path()).unwrap();
        let not_cgroup = File::open(cwd.path()).unwrap();
        let not_cgroup = Placement::Born(&not_cgroup);
        match spawn_in_cgroup(&program, [&null, &null, &null], &theirs, not_cgroup) {
            Err(BirthError::Unsupported(_)) => {}
            other => panic!("expected Unsupported, got {other:?}"),
        }
        // a program that does not exist: the exec error comes back
        let name = format!("wasmpod-birth-fail-{}", std::process::id());
        let dir = mount.join(&name);
        std::fs::create_dir(&dir).unwrap();
        let cg = File::open(&dir).unwrap();
        let missing = Program::new(Path::new("/nonexistent/runner"), &[], cwd.path()).unwrap();
        let result = spawn_in_cgroup(
            &missing,
            [&null, &null, &null],
            &theirs,
            Placement::Born(&cg),
        );
        // reap the child that failed to exec before removing its cgroup
        let _ = nix::sys::wait::wait();
        std::fs::remove_dir(&dir).unwrap();
        match result {
            Err(BirthError::Exec {
                source,
                pid: Some(_),
                step,
                ..
            }) => {
                assert_eq!(step, Step::Exec);
                assert_eq!(source.raw_os_error(), Some(libc::ENOENT), "{source}")
            }
            other => panic!("expected an exec error, got {other:?}"),
        }
    }

    /// A cgroup v1 hierarchy of this machine mounted for `controller`.
    fn cgroup1_mount(controller: &str) -> std::path::PathBuf {
        cgroup_mount("cgroup", Some(controller))
    }

    #[test]
    #[ignore = "needs root and cgroup v1 hierarchies (make test runs it as root)"]
    fn a_cgroup_v1_child_moves_itself_before_it_execs() {
        let (pids, freezer) = (cgroup1_mount("pids"), cgroup1_mount("freezer"));
        let name = format!("wasmpod-v1-birth-test-{}", std::process::id());
        let dirs = [pids.join(&name), freezer.join(&name)];
        let tasks: Vec<File> = dirs
            .iter()
            .map(|d| {
                std::fs::create_dir(d).unwrap();
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(d.join("tasks"))
                    .unwrap()
            })
            .collect();
        let placement = Placement::MovesItself(&tasks);
        let (text, _cwd) = run_to_end("/bin/cat", &["/proc/self/cgroup"], placement);
        for d in &dirs {
            std::fs::remove_dir(d).unwrap();
        }
        for controller in ["pids", "freezer"] {
            assert!(
                text.lines()
                    .any(|l| l.ends_with(&format!(":{controller}:/{name}"))),
                "not in {controller}:/{name}: {text}"
            );
        }
    }

    #[test]
    #[ignore = "needs root and cgroup v1 hierarchies (make test runs it as root)"]
    fn a_cgroup_v1_child_that_cannot_join_reports_it() {
        let cpuset = cgroup1_mount("cpuset");
        // a new cpuset has no CPUs: the kernel refuses to move a task there
        let dir = cpuset.join(format!("wasmpod-v1-refused-{}", std::process::id()));
        std::fs::create_dir(&dir).unwrap();
        let tasks = [std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join("tasks"))
            .unwrap()];
        let cwd = tempfile::tempdir().unwrap();
        let null = File::open("/dev/null").unwrap();
        let (_ours, theirs) = UnixStream::pair().unwrap();
        let program = Program::new(Path::new("/bin/true"), &[], cwd.path()).unwrap();
        let placement = Placement::MovesItself(&tasks);
        let result = spawn_in_cgroup(&program, [&null, &null, &null], &theirs, placement);
        let _ = nix::sys::wait::wait();
        std::fs::remove_dir(&dir).unwrap();
        match result {
            Err(BirthError::Exec {
                step: Step::JoinCgroup,
                source,
                pid: Some(_),
                ..
            }) => assert_eq!(source.raw_os_error(), Some(libc::ENOSPC), "{source}"),
            other => panic!("expected a join cgroup error, got {other:?}"),
        }
    }
}
