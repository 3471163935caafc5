//! Every raw syscall and `unsafe` block of the shim lives here, each with the
//! reason it is sound. The rest of the crate is `#![deny(unsafe_code)]`.
#![allow(unsafe_code)]

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;

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

/// Bind-remounts the container's rootfs mount at `target` with `nodev`, and
/// read-only when `readonly`, keeping the flags it already has. The runner is
/// root: without `nodev`, a device node an image layer carries could be
/// opened through the guest's `/` preopen; with `readonly`, the kernel (not
/// only WASI's permission check) refuses writes. A bind remount changes this
/// mount point's flags only, never the filesystem's.
pub fn restrict_rootfs_mount(target: &Path, readonly: bool) -> nix::Result<()> {
    use nix::mount::MsFlags;
    use nix::sys::statvfs::FsFlags;
    let have = nix::sys::statvfs::statvfs(target)?.flags();
    let mut flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_NODEV;
    for (fs, ms) in [
        (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if have.contains(fs) {
            flags |= ms;
        }
    }
    if readonly {
        flags |= MsFlags::MS_RDONLY;
    }
    nix::mount::mount(None::<&str>, target, None::<&str>, flags, None::<&str>)
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

/// Brings the loopback interface of the current network namespace up.
pub fn loopback_up() -> std::io::Result<()> {
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: `ifreq` is plain old data; all-zero is a valid value of it.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the name from `req` and writes the flags
    // into it; `req` is a valid, exclusively borrowed ifreq for the call, and
    // `sock` is an open socket.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } == -1 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFFLAGS filled the `ifru_flags` member of the union.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: as above; SIOCSIFFLAGS only reads `req`.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } == -1 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Receives one file descriptor sent with `SCM_RIGHTS` over `stream` (the
/// terminal master runc passes to `--console-socket`).
pub fn receive_fd(stream: &UnixStream) -> std::io::Result<OwnedFd> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    // runc sends the terminal's name as the message body; it is not needed.
    let mut body = [0u8; 4096];
    let mut iov = [std::io::IoSliceMut::new(&mut body)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(
        stream.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            let mut fds = fds.into_iter();
            if let Some(fd) = fds.next() {
                // Close any extra descriptor rather than leak it.
                for extra in fds {
                    // SAFETY: the kernel just installed `extra` in this
                    // process for us; nothing else knows of it.
                    drop(unsafe { OwnedFd::from_raw_fd(extra) });
                }
                // SAFETY: as above: a fresh descriptor this process owns
                // and nothing else refers to.
                return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        "no file descriptor in the message",
    ))
}

/// Sets the window size of the terminal `fd` (`TIOCSWINSZ`).
pub fn set_window_size(
    fd: std::os::fd::BorrowedFd<'_>,
    rows: u16,
    cols: u16,
) -> std::io::Result<()> {
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ only reads a `winsize`, which `size` is, valid for
    // the call; `fd` is an open descriptor borrowed for the call.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &size) } == -1 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Returns memory the allocator holds but no longer uses to the kernel (the
/// compiler's scratch space), so that it is neither charged to the
/// container's cgroup nor counted against the guest's memory budget.
pub fn release_free_heap() {
    // SAFETY: malloc_trim has no preconditions; it only walks glibc's own
    // arenas under their locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The path of an open file through `/proc/self/fd`, which names that very
/// file (not whatever is at its original path now).
fn fd_path(file: &std::fs::File) -> std::path::PathBuf {
    format!("/proc/self/fd/{}", file.as_raw_fd()).into()
}

/// Maps a precompiled module from the shim's cache.
pub fn map_cached_module(
    engine: &wasmtime::Engine,
    file: &std::fs::File,
) -> wasmtime::Result<wasmtime::Module> {
    // SAFETY: wasmtime trusts precompiled code, so only trusted bytes may be
    // loaded. This is called by `cache::lookup` only, on a file of the
    // shim's own cache directory (root-owned, never taken from an image),
    // opened once, whose sha256 was just checked, through that same open
    // file, against the digest the cache recorded when it wrote the file
    // from its own compilation. wasmtime also checks that the artifact was
    // made by this version with this engine configuration.
    unsafe { wasmtime::Module::deserialize_file(engine, fd_path(file)) }
}

/// Maps a precompiled component from the shim's cache.
pub fn map_cached_component(
    engine: &wasmtime::Engine,
    file: &std::fs::File,
) -> wasmtime::Result<wasmtime::component::Component> {
    // SAFETY: as for `map_cached_module`.
    unsafe { wasmtime::component::Component::deserialize_file(engine, fd_path(file)) }
}
