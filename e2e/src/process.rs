//! Running a child process with a deadline.
//!
//! Output is collected on reader threads so a chatty child cannot block on a
//! full pipe, and the child is killed (and reaped) when the deadline passes.

use std::io::{Read, Write};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// What a finished child process did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// Exit code; `None` when the process was ended by a signal.
    pub status: Option<i32>,
    /// Signal that ended the process, if any.
    pub signal: Option<i32>,
    /// Everything written to standard output, lossily decoded as UTF-8.
    pub stdout: String,
    /// Everything written to standard error, lossily decoded as UTF-8.
    pub stderr: String,
}

impl Output {
    /// Whether the process exited with code 0.
    pub fn success(&self) -> bool {
        self.status == Some(0)
    }
}

fn exit_parts(status: ExitStatus) -> (Option<i32>, Option<i32>) {
    use std::os::unix::process::ExitStatusExt;
    (status.code(), status.signal())
}

/// Reads `r` to its end on a thread; the bytes arrive on the returned channel.
fn spawn_reader<R: Read + Send + 'static>(mut r: R) -> Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut buf = Vec::new();
        // A read error just ends the capture; what was read so far is kept.
        let _ = r.read_to_end(&mut buf);
        let _ = tx.send(buf);
    });
    rx
}

/// Collects a reader's bytes, waiting at most until `deadline`: a grandchild
/// that inherited the pipe could keep it open long after the child exited.
fn collect(rx: Option<Receiver<Vec<u8>>>, deadline: Instant) -> String {
    let Some(rx) = rx else {
        return String::new();
    };
    let wait = deadline.saturating_duration_since(Instant::now());
    let bytes = rx.recv_timeout(wait).unwrap_or_else(|_| {
        b"<output not collected: pipe still held open by another process>".to_vec()
    });
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Runs `cmd` to completion, feeding it `stdin` (or `/dev/null` when `None`),
/// and capturing its output. When it has not exited after `timeout`, it is
/// killed and an error holding the output so far is returned. A non-zero exit
/// is *not* an error here.
pub fn run_with_timeout(
    cmd: &mut Command,
    stdin: Option<&[u8]>,
    timeout: Duration,
) -> Result<Output> {
    run_with_input(
        cmd,
        stdin.map(|data| Input {
            data: data.to_vec(),
            hold: None,
        }),
        timeout,
    )
}

/// Decides when the child's standard input is closed, after all the data was
/// written: it returns when the pipe may be closed. It is given a flag that
/// turns `true` once the child has exited (or was killed), and should return
/// promptly then.
pub type Hold = Box<dyn FnOnce(&AtomicBool) + Send>;

/// Standard input for [`run_with_input`].
pub struct Input {
    /// What the child reads.
    pub data: Vec<u8>,
    /// When to close the pipe after `data` was written; `None` closes it at
    /// once (end of file right after the data).
    pub hold: Option<Hold>,
}

impl std::fmt::Debug for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Input")
            .field("data_len", &self.data.len())
            .field("hold", &self.hold.is_some())
            .finish()
    }
}

/// [`run_with_timeout`] with control over when standard input is closed.
pub fn run_with_input(
    cmd: &mut Command,
    stdin: Option<Input>,
    timeout: Duration,
) -> Result<Output> {
    let described = format!("{cmd:?}");
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = cmd
        .spawn()
        .with_context(|| format!("failed to spawn {described}"))?;

    let out_h = child.stdout.take().map(spawn_reader);
    let err_h = child.stderr.take().map(spawn_reader);
    let exited = Arc::new(AtomicBool::new(false));
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        let exited = Arc::clone(&exited);
        // Not joined: it ends when everything is written (and the hold is
        // over) or the read end is gone (EPIPE, when the child exits without
        // reading it all).
        thread::spawn(move || {
            if pipe.write_all(&input.data).is_ok() {
                if let Some(hold) = input.hold {
                    hold(&exited);
                }
            }
            drop(pipe);
        });
    }

    let status = wait_until(&mut child, timeout);
    exited.store(true, Ordering::SeqCst);
    let status = status.with_context(|| format!("failed to wait for {described}"))?;
    let Some(status) = status else {
        // Timed out: kill, reap, and report what it printed so far. The reader
        // threads end once the pipes close (grandchildren holding the pipes
        // open would keep them going, so do not join them in that case).
        let _ = child.kill();
        let _ = child.wait();
        bail!("timed out after {timeout:?} running {described}");
    };
    let drain_deadline = Instant::now() + Duration::from_secs(5);
    let stdout = collect(out_h, drain_deadline);
    let stderr = collect(err_h, drain_deadline);
    let (code, signal) = exit_parts(status);
    Ok(Output {
        status: code,
        signal,
        stdout,
        stderr,
    })
}

/// Waits until `child` exits or `timeout` passes; `Ok(None)` on timeout.
///
/// The wait wakes the moment the child exits (a pidfd, Linux 5.3), so a
/// wall time measured around it is the child's own: polling with sleeps
/// rounded `make bench`'s figures up to the next poll, 50 ms apart.
pub fn wait_until(child: &mut Child, timeout: Duration) -> std::io::Result<Option<ExitStatus>> {
    use std::os::fd::AsFd;
    let deadline = Instant::now() + timeout;
    let pidfd = i32::try_from(child.id())
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .and_then(|pid| {
            rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok()
        });
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        let left = deadline - now;
        match &pidfd {
            Some(fd) => {
                let ms = u16::try_from(left.as_millis().max(1)).unwrap_or(u16::MAX);
                let mut fds = [nix::poll::PollFd::new(
                    fd.as_fd(),
                    nix::poll::PollFlags::POLLIN,
                )];
                match nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms)) {
                    Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            // A kernel without pidfds: poll with growing sleeps.
            None => {
                thread::sleep(pause.min(left));
                pause = (pause * 2).min(Duration::from_millis(50));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_output_and_status() {
        let out = run_with_timeout(
            Command::new("/bin/sh").args(["-c", "echo out; echo err >&2; exit 3"]),
            None,
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(out.status, Some(3));
        assert_eq!(out.stdout, "out\n");
        assert_eq!(out.stderr, "err\n");
    }

    #[test]
    fn feeds_stdin() {
        let out = run_with_timeout(
            &mut Command::new("/bin/cat"),
            Some(b"hello"),
            Duration::from_secs(10),
        )
        .unwrap();
        assert!(out.success());
        assert_eq!(out.stdout, "hello");
    }

    #[test]
    fn holds_stdin_open() {
        let start = Instant::now();
        let out = run_with_input(
            &mut Command::new("/bin/cat"),
            Some(Input {
                data: b"x".to_vec(),
                hold: Some(Box::new(|_| thread::sleep(Duration::from_millis(300)))),
            }),
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(out.stdout, "x");
        assert!(start.elapsed() >= Duration::from_millis(300));
    }

    #[test]
    fn kills_on_timeout() {
        let start = Instant::now();
        let err = run_with_timeout(
            Command::new("/bin/sleep").arg("30"),
            None,
            Duration::from_millis(200),
        )
        .unwrap_err();
        assert!(err.to_string().contains("timed out"), "{err:#}");
        assert!(start.elapsed() < Duration::from_secs(10));
    }
}
