//! Terminals for a pod's Linux containers and exec processes (`tty: true`,
//! `kubectl exec -it`, `ctr run -t`), as containerd's runc shim provides them.
//!
//! runc allocates the pseudo-terminal inside the container and sends its
//! master end over a unix socket (`--console-socket`). The shim then copies
//! the client's stdin FIFO into the master and the master into the stdout
//! FIFO (a terminal has no separate stderr), and applies `ResizePty` to the
//! master. Both copies are tasks on the server's event loop, woken by epoll
//! (no threads, no polling). The output copy ends when the last holder of
//! the terminal's other end exits (reads then fail with `EIO`); the exit is
//! published only after it has drained, so no output is lost.
//!
//! The stdin FIFO is opened for reading only, before the client may have
//! opened it for writing. Linux reports such a FIFO neither readable nor
//! hung up until a writer has come (and then gone), so the input copy sleeps
//! until the client connects and ends when it closes its end.

use std::fs::File;
use std::io::ErrorKind;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::{Error, Result};
use crate::server::stdio::{strip_scheme, StdioPaths};

/// How long the exit of a process with a terminal waits for its output to
/// drain.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// What went wrong with a terminal.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("console socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("runc sent no terminal: {0}")]
    NotSent(#[source] std::io::Error),
    #[error("receive the terminal: {0}")]
    Receive(#[source] std::io::Error),
    #[error("watch the terminal: {0}")]
    Watch(#[source] std::io::Error),
    #[error("resize to {width}x{height}: {source}")]
    Resize {
        width: u32,
        height: u32,
        #[source]
        source: std::io::Error,
    },
}

fn error(id: &str, source: ConsoleError) -> Error {
    Error::Console {
        id: id.to_owned(),
        source,
    }
}

/// A socket runc sends a terminal's master end to.
#[derive(Debug)]
pub struct ConsoleSocket {
    dir: tempfile::TempDir,
    listener: UnixListener,
}

impl ConsoleSocket {
    /// A listening socket in a fresh private directory under the system's
    /// temporary directory (bundle paths are too long for a socket address).
    pub fn new(id: &str) -> Result<Self> {
        let err = |e| error(id, ConsoleError::Socket(e));
        let dir = tempfile::Builder::new()
            .prefix("wasmpod-pty-")
            .tempdir()
            .map_err(err)?;
        let listener = UnixListener::bind(dir.path().join("s")).map_err(err)?;
        listener.set_nonblocking(true).map_err(err)?;
        Ok(ConsoleSocket { dir, listener })
    }

    /// The socket's path, for runc's `--console-socket`.
    pub fn path(&self) -> PathBuf {
        self.dir.path().join("s")
    }

    /// The master end runc sent. Called after runc returned, so the
    /// connection and its message are already queued.
    pub fn receive(self, id: &str) -> Result<OwnedFd> {
        let (stream, _) = self
            .listener
            .accept()
            .map_err(|e| error(id, ConsoleError::NotSent(e)))?;
        crate::sys::term::receive_fd(&stream).map_err(|e| error(id, ConsoleError::Receive(e)))
    }

    /// Receives the terminal runc sent and starts copying between it and
    /// the FIFOs of `paths`.
    pub fn into_console(self, id: &str, paths: &StdioPaths) -> Result<Console> {
        let master = self.receive(id)?;
        Console::start(id, master, paths)
    }
}

/// A process's terminal and the copies between it and containerd's FIFOs.
#[derive(Debug)]
pub struct Console {
    id: String,
    master: Arc<AsyncFd<File>>,
    input: Option<JoinHandle<()>>,
    output_done: watch::Receiver<bool>,
}

impl Console {
    /// Starts copying between `master` and the FIFOs of `paths`. Must be
    /// called on the server's event loop.
    pub fn start(id: &str, master: OwnedFd, paths: &StdioPaths) -> Result<Self> {
        let master = File::from(master);
        set_nonblocking(master.as_fd())
            .and_then(|()| crate::sys::term::watch(master))
            .map(Arc::new)
            .map_err(|e| error(id, ConsoleError::Watch(e)))
            .and_then(|master| {
                let output = match paths.stdout.as_str() {
                    "" => None,
                    path => Some(open_output(path).map_err(|source| Error::Stdio {
                        id: id.to_owned(),
                        path: path.to_owned(),
                        source,
                    })?),
                };
                let input = match paths.stdin.as_str() {
                    "" => None,
                    path => Some(open_input(path).map_err(|source| Error::Stdio {
                        id: id.to_owned(),
                        path: path.to_owned(),
                        source,
                    })?),
                };
                let (done_tx, output_done) = watch::channel(false);
                let out_master = master.clone();
                tokio::spawn(async move {
                    copy_output(&out_master, output).await;
                    let _ = done_tx.send(true);
                });
                let input = input.map(|fifo| {
                    let in_master = master.clone();
                    tokio::spawn(async move { copy_input(fifo, &in_master).await })
                });
                Ok(Console {
                    id: id.to_owned(),
                    master,
                    input,
                    output_done,
                })
            })
    }

    /// `ResizePty`: the terminal's new size.
    pub fn resize(&self, width: u32, height: u32) -> Result<()> {
        let clamp = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
        let fd = self.master.get_ref().as_fd();
        crate::sys::term::set_window_size(fd, clamp(height), clamp(width)).map_err(|source| {
            let e = ConsoleError::Resize {
                width,
                height,
                source,
            };
            error(&self.id, e)
        })
    }

    /// `CloseIO`: stop forwarding stdin.
    pub fn close_stdin(&mut self) {
        if let Some(input) = self.input.take() {
            input.abort();
        }
    }

    /// Waits (bounded) until all output written to the terminal reached
    /// stdout; called once the process has exited.
    pub async fn drain(&self) {
        let mut done = self.output_done.clone();
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, done.wait_for(|d| *d)).await;
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        self.close_stdin();
    }
}

type Output = Box<dyn AsyncWrite + Unpin + Send>;
type Input = Box<dyn AsyncRead + Unpin + Send>;

/// The stdout FIFO opened read-write (so neither opening nor writing waits
/// for, or fails without, containerd's reader), or a log file appended to.
fn open_output(path: &str) -> std::io::Result<Output> {
    let path = strip_scheme(path)?;
    if is_fifo(path) {
        let pipe = tokio::net::unix::pipe::OpenOptions::new()
            .read_write(true)
            .open_sender(path)?;
        return Ok(Box::new(pipe));
    }
    let file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)?;
    Ok(Box::new(tokio::fs::File::from_std(file)))
}

/// The stdin FIFO, for reading only (see the module doc); a plain file is
/// read to its end.
fn open_input(path: &str) -> std::io::Result<Input> {
    let path = strip_scheme(path)?;
    if is_fifo(path) {
        let pipe = tokio::net::unix::pipe::OpenOptions::new().open_receiver(path)?;
        return Ok(Box::new(pipe));
    }
    Ok(Box::new(tokio::fs::File::from_std(std::fs::File::open(
        path,
    )?)))
}

fn is_fifo(path: &str) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_fifo())
}

/// Copies the terminal's output to `out` until no process holds the
/// terminal (`EIO`). Output that `out` cannot take is dropped, never left
/// to block the terminal.
async fn copy_output(master: &AsyncFd<File>, mut out: Option<Output>) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let Ok(mut ready) = master.readable().await else {
            return;
        };
        let n = match ready.try_io(|fd| read(fd.get_ref(), &mut buf)) {
            Ok(Ok(0)) => return,
            Ok(Ok(n)) => n,
            Ok(Err(e)) if e.kind() == ErrorKind::Interrupted => continue,
            // EIO: no process holds the terminal any more
            Ok(Err(_)) => return,
            Err(_would_block) => continue,
        };
        if let Some(o) = out.as_mut() {
            if o.write_all(&buf[..n]).await.is_err() || o.flush().await.is_err() {
                out = None;
            }
        }
    }
}

/// Copies the client's stdin into the terminal until the client closes it.
async fn copy_input(mut fifo: Input, master: &AsyncFd<File>) {
    let mut buf = [0u8; 4096];
    loop {
        let n = match fifo.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let mut data = &buf[..n];
        while !data.is_empty() {
            let Ok(mut ready) = master.writable().await else {
                return;
            };
            match ready.try_io(|fd| write(fd.get_ref(), data)) {
                Ok(Ok(written)) => data = &data[written..],
                Ok(Err(e)) if e.kind() == ErrorKind::Interrupted => {}
                Ok(Err(_)) => return,
                Err(_would_block) => {}
            }
        }
    }
}

fn read(mut file: &File, buf: &mut [u8]) -> std::io::Result<usize> {
    std::io::Read::read(&mut file, buf)
}

fn write(mut file: &File, data: &[u8]) -> std::io::Result<usize> {
    std::io::Write::write(&mut file, data)
}

/// Sets `O_NONBLOCK` on the terminal, which epoll then watches.
fn set_nonblocking(fd: std::os::fd::BorrowedFd<'_>) -> std::io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// A pty pair: (master, slave), both open.
    fn pty() -> (OwnedFd, File) {
        let master = nix::pty::posix_openpt(
            nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_NOCTTY | nix::fcntl::OFlag::O_CLOEXEC,
        )
        .unwrap();
        nix::pty::grantpt(&master).unwrap();
        nix::pty::unlockpt(&master).unwrap();
        let name = nix::pty::ptsname_r(&master).unwrap();
        let slave = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(name)
            .unwrap();
        // raw mode: bytes pass through unchanged
        let mut t = nix::sys::termios::tcgetattr(&slave).unwrap();
        nix::sys::termios::cfmakeraw(&mut t);
        nix::sys::termios::tcsetattr(&slave, nix::sys::termios::SetArg::TCSANOW, &t).unwrap();
        (OwnedFd::from(master), slave)
    }

    fn mkfifo(path: &std::path::Path) {
        nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    }

    #[tokio::test]
    async fn copies_both_ways_waits_for_the_client_and_drains_at_exit() {
        let dir = tempfile::tempdir().unwrap();
        let (stdin, stdout) = (dir.path().join("in"), dir.path().join("out"));
        mkfifo(&stdin);
        mkfifo(&stdout);
        let paths = StdioPaths {
            stdin: stdin.to_string_lossy().into(),
            stdout: stdout.to_string_lossy().into(),
            stderr: String::new(),
            terminal: true,
        };
        let (master, mut slave) = pty();
        let console = Console::start("c1", master, &paths).unwrap();
        // no client yet: the input copy must neither spin nor end
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(console.input.as_ref().is_some_and(|h| !h.is_finished()));
        // the client connects and types; the process reads it from the slave
        let mut client_in = std::fs::OpenOptions::new()
            .write(true)
            .open(&stdin)
            .unwrap();
        client_in.write_all(b"ping").unwrap();
        let mut got = [0u8; 4];
        let reader = slave.try_clone().unwrap();
        let got = tokio::task::spawn_blocking(move || {
            let mut reader = reader;
            reader.read_exact(&mut got).map(|()| got)
        })
        .await
        .unwrap()
        .unwrap();
        assert_eq!(&got, b"ping");
        // the process writes and exits; the client reads all of it
        let mut client_out = File::open(&stdout).unwrap();
        slave.write_all(b"pong").unwrap();
        drop(slave);
        console.drain().await;
        assert!(*console.output_done.borrow(), "output not drained");
        let mut out = [0u8; 4];
        client_out.read_exact(&mut out).unwrap();
        assert_eq!(&out, b"pong");
        // the client closing stdin ends the input copy
        drop(client_in);
        let mut console = console;
        for _ in 0..100 {
            if console.input.as_ref().is_some_and(|h| h.is_finished()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(console.input.as_ref().is_some_and(|h| h.is_finished()));
        console.close_stdin();
    }
}
