//! The container's stdio: the FIFOs (or log files) containerd hands over.
//!
//! The runner process gets its own descriptors as fds 0/1/2. The shim keeps a
//! second, read-write descriptor on each FIFO for the life of the process:
//! - on stdout/stderr it counts as a reader, so a guest never sees `EPIPE`
//!   while containerd restarts; its writes block once the pipe is full (and it
//!   stays killable), and resume when a reader returns;
//! - on stdin it counts as a writer, so the guest does not read a premature
//!   end-of-file before the client has connected. `CloseIO` drops it, and the
//!   guest then sees end-of-file once the client closes its end.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;
use std::process::Stdio as ProcessStdio;

use crate::error::{Error, Result};

/// The paths containerd passed in `CreateTaskRequest`.
#[derive(Debug, Clone, Default)]
pub struct StdioPaths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

impl StdioPaths {
    /// The paths of a `Create` request.
    pub fn of_create(req: &containerd_shim::api::CreateTaskRequest) -> Self {
        StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        }
    }

    /// The paths of an `Exec` request.
    pub fn of_exec(req: &containerd_shim::api::ExecProcessRequest) -> Self {
        StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        }
    }
}

/// Descriptors for one runner process, and the shim's keep-alive ends.
#[derive(Debug, Default)]
pub struct Stdio {
    child: [Option<File>; 3],
    keep: Keepalive,
}

/// The shim's own ends of the FIFOs, held while the process runs.
#[derive(Debug, Default)]
pub struct Keepalive {
    stdin: Option<File>,
    outputs: Vec<File>,
}

impl Keepalive {
    /// `CloseIO` with `stdin`: let the guest see end-of-file.
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }
}

impl Stdio {
    /// Opens the container's stdio from containerd's paths. Empty paths mean
    /// `/dev/null`; `file://` URIs and plain regular files are appended to.
    pub fn open(id: &str, paths: &StdioPaths) -> Result<Self> {
        let mut stdio = Stdio::default();
        if !paths.stdin.is_empty() {
            let (child, keep) = open_stdin(&paths.stdin).map_err(|source| Error::Stdio {
                id: id.to_owned(),
                path: paths.stdin.clone(),
                source,
            })?;
            stdio.child[0] = Some(child);
            stdio.keep.stdin = keep;
        }
        for (slot, path) in [(1, &paths.stdout), (2, &paths.stderr)] {
            if path.is_empty() {
                continue;
            }
            let (child, keep) = open_output(path).map_err(|source| Error::Stdio {
                id: id.to_owned(),
                path: path.clone(),
                source,
            })?;
            stdio.child[slot] = Some(child);
            stdio.keep.outputs.extend(keep);
        }
        Ok(stdio)
    }

    /// Splits into the process's three descriptors and the shim's
    /// keep-alive ends.
    pub fn into_parts(self) -> (ChildStdio, Keepalive) {
        (ChildStdio(self.child), self.keep)
    }
}

/// The three descriptors a container's process gets as fds 0–2 (`None`:
/// `/dev/null`).
#[derive(Debug, Default)]
pub struct ChildStdio(pub [Option<File>; 3]);

impl ChildStdio {
    /// For a `Command`.
    pub fn into_process(self) -> [ProcessStdio; 3] {
        self.0
            .map(|f| f.map_or_else(ProcessStdio::null, ProcessStdio::from))
    }

    /// As open files, `/dev/null` opened for the unset ones.
    pub fn into_files(self) -> std::io::Result<[File; 3]> {
        let [a, b, c] = self.0;
        let or_null = |f: Option<File>, write: bool| match f {
            Some(f) => Ok(f),
            None => OpenOptions::new()
                .read(!write)
                .write(write)
                .open("/dev/null"),
        };
        Ok([or_null(a, false)?, or_null(b, true)?, or_null(c, true)?])
    }
}

/// Writes a line to the container's stderr (its log under CRI) for a failure
/// the shim itself detected before any process ran. Best effort and never
/// blocking: a FIFO is opened read-write and non-blocking, so a missing or
/// slow reader loses the line instead of stalling the shim.
pub fn report(paths: &StdioPaths, message: &str) {
    if paths.stderr.is_empty() || paths.terminal {
        return;
    }
    let Ok(path) = strip_scheme(&paths.stderr) else {
        return;
    };
    let path = Path::new(path);
    let file = if is_fifo(path) {
        OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
    } else {
        OpenOptions::new().append(true).open(path)
    };
    if let Ok(mut f) = file {
        let _ = std::io::Write::write_all(&mut f, format!("wasmpod: {message}\n").as_bytes());
    }
}

pub(crate) fn strip_scheme(path: &str) -> std::io::Result<&str> {
    if let Some(p) = path.strip_prefix("file://") {
        return Ok(p);
    }
    if path.contains("://") {
        return Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "only FIFOs, plain paths and file:// log URIs are supported",
        ));
    }
    Ok(path)
}

fn is_fifo(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_fifo())
}

fn open_stdin(path: &str) -> std::io::Result<(File, Option<File>)> {
    let path = Path::new(strip_scheme(path)?);
    if !is_fifo(path) {
        return Ok((File::open(path)?, None));
    }
    // Read-write never blocks on a FIFO; with it held, the read-only open
    // below finds a writer and does not block either.
    let keep = OpenOptions::new().read(true).write(true).open(path)?;
    let child = File::open(path)?;
    Ok((child, Some(keep)))
}

pub(crate) fn open_output(path: &str) -> std::io::Result<(File, Option<File>)> {
    let path = Path::new(strip_scheme(path)?);
    if !is_fifo(path) {
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o640)
            .open(path)?;
        return Ok((file, None));
    }
    let keep = OpenOptions::new().read(true).write(true).open(path)?;
    let child = OpenOptions::new().write(true).open(path)?;
    Ok((child, Some(keep)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn mkfifo(path: &Path) {
        nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    }

    #[test]
    fn opens_fifos_without_blocking_and_sees_eof_after_close() {
        let dir = tempfile::tempdir().unwrap();
        let (i, o) = (dir.path().join("in"), dir.path().join("out"));
        mkfifo(&i);
        mkfifo(&o);
        let paths = StdioPaths {
            stdin: i.to_string_lossy().into(),
            stdout: o.to_string_lossy().into(),
            stderr: String::new(),
            terminal: false,
        };
        // No client has opened either FIFO yet: opening must not block.
        let stdio = Stdio::open("c1", &paths).unwrap();
        let [child_in, child_out, child_err] = stdio.child;
        let mut keep = stdio.keep;
        assert!(child_err.is_none());

        // The client connects, writes, and closes stdin.
        let mut client_in = OpenOptions::new().write(true).open(&i).unwrap();
        client_in.write_all(b"ping").unwrap();
        drop(client_in);
        keep.close_stdin();
        let mut got = String::new();
        child_in.unwrap().read_to_string(&mut got).unwrap();
        assert_eq!(got, "ping");

        let mut client_out = File::open(&o).unwrap();
        child_out.unwrap().write_all(b"pong").unwrap();
        drop(keep);
        let mut got = String::new();
        client_out.read_to_string(&mut got).unwrap();
        assert_eq!(got, "pong");
    }

    #[test]
    fn log_files_and_bad_uris() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let paths = StdioPaths {
            stdout: format!("file://{}", log.display()),
            ..Default::default()
        };
        let stdio = Stdio::open("c1", &paths).unwrap();
        let [_, out, _] = stdio.child;
        out.unwrap().write_all(b"x").unwrap();
        assert_eq!(std::fs::read(&log).unwrap(), b"x");

        let paths = StdioPaths {
            stdout: "binary:///usr/bin/logger".into(),
            ..Default::default()
        };
        let err = Stdio::open("c9", &paths).unwrap_err().to_string();
        assert!(err.contains("c9") && err.contains("binary://"), "{err}");
    }
}
