//! Terminals for a pod's Linux containers and exec processes (`tty: true`,
//! `kubectl exec -it`, `ctr run -t`), as containerd's runc shim provides them.
//!
//! runc allocates the pseudo-terminal inside the container and sends its
//! master end over a unix socket (`--console-socket`). The shim then copies
//! the client's stdin FIFO into the master and the master into the stdout
//! FIFO (a terminal has no separate stderr), and applies `ResizePty` to the
//! master. The output copy ends when the last holder of the terminal's other
//! end exits (reads then fail with `EIO`); the exit is published only after
//! it has drained, so no output is lost.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::stdio::StdioPaths;

/// How long the exit of a process with a terminal waits for its output to
/// drain.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

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
        let err = |what: String| Error::Console {
            id: id.to_owned(),
            what,
        };
        let dir = tempfile::Builder::new()
            .prefix("wasmpod-pty-")
            .tempdir()
            .map_err(|e| err(format!("create a directory for the console socket: {e}")))?;
        let listener = UnixListener::bind(dir.path().join("s"))
            .map_err(|e| err(format!("bind the console socket: {e}")))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| err(format!("console socket: {e}")))?;
        Ok(ConsoleSocket { dir, listener })
    }

    /// The socket's path, for runc's `--console-socket`.
    pub fn path(&self) -> PathBuf {
        self.dir.path().join("s")
    }

    /// The master end runc sent. Called after runc returned, so the
    /// connection and its message are already queued.
    pub fn receive(self, id: &str) -> Result<OwnedFd> {
        let err = |what: String| Error::Console {
            id: id.to_owned(),
            what,
        };
        let (stream, _) = self
            .listener
            .accept()
            .map_err(|e| err(format!("runc sent no terminal: {e}")))?;
        crate::sys::receive_fd(&stream).map_err(|e| err(format!("receive the terminal: {e}")))
    }
}

impl ConsoleSocket {
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
    master: File,
    stop_input: Arc<AtomicBool>,
    output_done: watch::Receiver<bool>,
}

impl Console {
    /// Starts copying between `master` and the FIFOs of `paths`.
    pub fn start(id: &str, master: OwnedFd, paths: &StdioPaths) -> Result<Self> {
        let err = |what: String| Error::Console {
            id: id.to_owned(),
            what,
        };
        let master = File::from(master);
        let stop_input = Arc::new(AtomicBool::new(false));
        let (done_tx, output_done) = watch::channel(false);

        let mut reader = master
            .try_clone()
            .map_err(|e| err(format!("duplicate the terminal: {e}")))?;
        let mut out = if paths.stdout.is_empty() {
            None
        } else {
            let (file, _) =
                crate::stdio::open_output(&paths.stdout).map_err(|source| Error::Stdio {
                    id: id.to_owned(),
                    path: paths.stdout.clone(),
                    source,
                })?;
            Some(file)
        };
        std::thread::Builder::new()
            .name("pty-out".into())
            .spawn(move || {
                let mut buf = vec![0u8; 32 * 1024];
                loop {
                    match reader.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            if let Some(o) = out.as_mut() {
                                if o.write_all(&buf[..n]).is_err() {
                                    out = None;
                                }
                            }
                        }
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        // EIO: no process holds the terminal any more
                        Err(_) => break,
                    }
                }
                let _ = done_tx.send(true);
            })
            .map_err(|e| err(format!("start the output copy: {e}")))?;

        if !paths.stdin.is_empty() {
            let path = crate::stdio::strip_scheme(&paths.stdin)
                .map_err(|source| Error::Stdio {
                    id: id.to_owned(),
                    path: paths.stdin.clone(),
                    source,
                })?
                .to_owned();
            let writer = master
                .try_clone()
                .map_err(|e| err(format!("duplicate the terminal: {e}")))?;
            let stop = stop_input.clone();
            std::thread::Builder::new()
                .name("pty-in".into())
                .spawn(move || copy_input(Path::new(&path), writer, &stop))
                .map_err(|e| err(format!("start the input copy: {e}")))?;
        }
        Ok(Console {
            id: id.to_owned(),
            master,
            stop_input,
            output_done,
        })
    }

    /// `ResizePty`: the terminal's new size.
    pub fn resize(&self, width: u32, height: u32) -> Result<()> {
        let clamp = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
        crate::sys::set_window_size(self.master.as_fd(), clamp(height), clamp(width)).map_err(|e| {
            Error::Console {
                id: self.id.clone(),
                what: format!("resize to {width}x{height}: {e}"),
            }
        })
    }

    /// `CloseIO`: stop forwarding stdin.
    pub fn close_stdin(&self) {
        self.stop_input.store(true, Ordering::Relaxed);
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
        self.stop_input.store(true, Ordering::Relaxed);
    }
}

/// Copies the stdin FIFO at `path` into the terminal until the client
/// closes it, or `stop` is set (checked every 200 ms).
fn copy_input(path: &Path, mut master: File, stop: &AtomicBool) {
    // Non-blocking, so that neither opening nor reading can outlive `stop`.
    let Ok(mut fifo) = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)
    else {
        return;
    };
    let mut buf = [0u8; 4096];
    let mut writer_seen = false;
    while !stop.load(Ordering::Relaxed) {
        let mut fds = [PollFd::new(fifo.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(200u16)) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return,
        }
        match fifo.read(&mut buf) {
            Ok(0) => {
                // A FIFO with no writer reads as end-of-file; before the
                // client has connected that is not the end yet.
                if writer_seen {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Ok(n) => {
                writer_seen = true;
                if master.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
            Err(_) => return,
        }
    }
}
