//! Terminals: receiving runc's pty master, resizing it.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

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

/// Registers `file` (a terminal's master end, non-blocking) with the event
/// loop, so its copies wait for readiness instead of threads or polls. Must
/// be called on the server's tokio runtime.
pub fn watch(file: std::fs::File) -> std::io::Result<tokio::io::unix::AsyncFd<std::fs::File>> {
    // SAFETY: tokio requires the descriptor to stay open and the same for
    // the AsyncFd's life; a `File` owns its descriptor, never changes it,
    // and is only closed when the AsyncFd drops it.
    unsafe { tokio::io::unix::AsyncFd::register(file) }.map_err(std::io::Error::from)
}
