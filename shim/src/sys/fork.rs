//! `start` forking into the shim server, and the server telling `start` it
//! is listening.

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};

use nix::fcntl::OFlag;

/// Where [`fork_server`] returned.
pub enum Forked {
    /// In `start`: the server's pid, and the read end of its stdout.
    Parent { pid: i32, stdout: File },
    /// In the new process, which goes on to serve.
    Child,
}

/// Forks the `start` action into the shim server without an exec: the child
/// gets /dev/null as fds 0 and 2, a pipe to the parent as fd 1 (closed by
/// [`signal_server_started`]), and no other descriptor. `None` when this
/// process has more than one thread: only a single-threaded process may
/// go on running ordinary code in a forked child.
pub fn fork_server() -> std::io::Result<Option<Forked>> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let threads = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse::<u32>().ok());
    if threads != Some(1) {
        return Ok(None);
    }
    let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    // SAFETY: this process has a single thread (checked above, and nothing
    // here starts one), so the child is a whole copy of it in which no lock
    // is held by a thread that does not exist: it may run any code, the
    // allocator included, as the parent could.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Parent { child } => {
            drop(write);
            Ok(Some(Forked::Parent {
                pid: child.as_raw(),
                stdout: File::from(read),
            }))
        }
        nix::unistd::ForkResult::Child => {
            drop(read);
            let set_up = || -> std::io::Result<()> {
                for (fd, target) in [
                    (null.as_raw_fd(), 0),
                    (write.as_raw_fd(), 1),
                    (null.as_raw_fd(), 2),
                ] {
                    // SAFETY: dup2 onto the standard descriptors, which this
                    // process owns; it touches no memory.
                    if unsafe { libc::dup2(fd, target) } < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                close_from(3)
            };
            if set_up().is_err() {
                // Nobody to tell: `start` sees end-of-file, as for a server
                // that failed to start.
                std::process::exit(1);
            }
            // Their numbers were closed above.
            std::mem::forget(null);
            std::mem::forget(write);
            Ok(Some(Forked::Child))
        }
    }
}

/// Closes every descriptor from `first` up (what `start` inherited from
/// containerd, and its own), so the forked server holds none of them.
fn close_from(first: u32) -> std::io::Result<()> {
    // SAFETY: close_range(2) closes descriptors only; the callers own every
    // descriptor at or above `first` and forget the ones they had open.
    if unsafe { libc::close_range(first, u32::MAX, 0) } == 0 {
        return Ok(());
    }
    // Linux < 5.9: close what /proc/self/fd lists.
    let fds: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd: &RawFd| *fd >= first as RawFd)
        .collect();
    for fd in fds {
        // SAFETY: as above; EBADF (the directory's own descriptor, closed
        // already) is harmless.
        unsafe { libc::close(fd) };
    }
    Ok(())
}

/// Blanks this process's last argument, `last`, in its command line (the
/// kernel's copy of argv, which `ps` and `/proc/PID/cmdline` show): a server
/// forked from `start` then reads as `... -id ID` instead of `... start`.
pub fn blank_last_arg(last: &str) -> std::io::Result<()> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields from the third on (after the command name, which may hold
    // spaces); arg_start and arg_end are fields 48 and 49.
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<usize>().ok());
    let (Some(start), Some(end)) = (field(48), field(49)) else {
        return Err(std::io::Error::other("no argument area in /proc/self/stat"));
    };
    let cmdline = std::fs::read("/proc/self/cmdline")?;
    let tail = format!("\0{last}\0");
    if cmdline.len() != end.saturating_sub(start) || !cmdline.ends_with(tail.as_bytes()) {
        return Err(std::io::Error::other(format!(
            "command line does not end with {last:?}"
        )));
    }
    let at = end - last.len() - 1;
    // SAFETY: [arg_start, arg_end) is this process's argument area, which
    // exec(2) placed on its stack, writable for the life of the process;
    // /proc/self/cmdline just showed its exact content, so `at` and the
    // `last.len()` bytes after it lie inside it. No Rust reference points
    // into it: std reads argv through raw pointers, only when
    // `env::args()` is called, and the server has copied its arguments.
    unsafe { std::ptr::write_bytes(at as *mut u8, 0, last.len()) };
    Ok(())
}

/// Tells the `start` action that the server is up: `start` reads the
/// server's stdout until end-of-file, so pointing stdout at stderr (the
/// server's only other output, /dev/null) closes the pipe.
pub fn signal_server_started() {
    // SAFETY: dup2 on two standard descriptors this process owns for its
    // whole life; it does not touch memory. Failure leaves `start` waiting
    // until the server exits, which it reports on its own.
    let _ = unsafe { libc::dup2(libc::STDERR_FILENO, libc::STDOUT_FILENO) };
}
