//! `ctr` against the private containerd: its flags (where the namespace,
//! socket and FIFO directory go), tracking the containers a test creates,
//! and running it bounded in time.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::{Containerd, CtrOutput};
use crate::process::{run_with_input, run_with_timeout, Hold, Input};

/// Boolean (value-less) flags of `ctr run` and `ctr containers create` in
/// containerd 1.6; every other flag takes a value.
pub(super) const CTR_RUN_BOOL_FLAGS: &[&str] = &[
    "rm",
    "null-io",
    "detach",
    "d",
    "cni",
    "runc-systemd-cgroup",
    "remap-labels",
    "net-host",
    "privileged",
    "read-only",
    "tty",
    "t",
    "allow-new-privs",
    "seccomp",
    "rootfs",
    "no-pivot",
    "help",
    "h",
];

/// Flags of `ctr tasks start` that take a value.
pub(super) const CTR_START_VALUE_FLAGS: &[&str] = &["log-uri", "fifo-dir", "pid-file"];

/// How a flag parser tells flags with a value from boolean ones.
#[derive(Clone, Copy)]
pub(super) enum Flags<'a> {
    /// These flags are boolean, all others take a value.
    Bool(&'a [&'a str]),
    /// These flags take a value, all others are boolean.
    Valued(&'a [&'a str]),
}

/// The first `n` positional arguments of `args`, skipping flags and their
/// values as `flags` says.
pub(super) fn positionals<'a>(args: &[&'a str], flags: Flags<'_>, n: usize) -> Vec<&'a str> {
    let mut positional = Vec::new();
    let mut i = 0;
    while i < args.len() && positional.len() < n {
        let a = args[i];
        if a == "--" {
            positional.extend(args[i + 1..].iter().take(n - positional.len()));
            break;
        }
        if let Some(flag) = a.strip_prefix('-') {
            let flag = flag.trim_start_matches('-');
            let takes_value = match flags {
                Flags::Bool(b) => !b.contains(&flag),
                Flags::Valued(v) => v.contains(&flag),
            };
            if takes_value && !flag.contains('=') {
                i += 1; // skip the value
            }
        } else {
            positional.push(a);
        }
        i += 1;
    }
    positional
}

/// The first positional argument of `args`, whose flags taking a value are
/// `valued`.
pub(super) fn first_positional(args: &[&str], valued: &[&str]) -> Option<String> {
    positionals(args, Flags::Valued(valued), 1)
        .first()
        .map(|s| s.to_string())
}

/// The container id in the arguments of `ctr run ...` or `ctr containers
/// create ...` (the second positional argument, after the image or rootfs).
pub(super) fn container_id_of(args: &[&str]) -> Option<String> {
    let rest = match args {
        ["run", rest @ ..] => rest,
        ["containers" | "container" | "c", "create", rest @ ..] => rest,
        _ => return None,
    };
    positionals(rest, Flags::Bool(CTR_RUN_BOOL_FLAGS), 2)
        .get(1)
        .map(|s| s.to_string())
}

/// Where `--fifo-dir` goes in `args`, if the subcommand takes it (`run`,
/// `tasks start`, `tasks exec`) and it is not given already.
pub(super) fn fifo_dir_position(args: &[&str]) -> Option<usize> {
    if args
        .iter()
        .any(|a| *a == "--fifo-dir" || a.starts_with("--fifo-dir="))
    {
        return None;
    }
    match args {
        ["run", ..] => Some(1),
        ["tasks" | "task" | "t", "start" | "exec", ..] => Some(2),
        _ => None,
    }
}

impl Containerd {
    /// A `ctr` command with the address and namespace set, and `--fifo-dir
    /// T/fifo` added to `run`, `tasks start` and `tasks exec`.
    pub fn ctr_command(&self, args: &[&str]) -> Command {
        self.ctr_command_in(&self.opts.namespace, args)
    }

    /// [`ctr_command`](Self::ctr_command) in containerd namespace `namespace`.
    pub fn ctr_command_in(&self, namespace: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.opts.ctr_bin);
        cmd.arg("--address")
            .arg(self.socket())
            .arg("--namespace")
            .arg(namespace)
            .env_remove("CONTAINERD_ADDRESS")
            .env_remove("CONTAINERD_NAMESPACE");
        match fifo_dir_position(args) {
            Some(at) => {
                cmd.args(&args[..at])
                    .arg("--fifo-dir")
                    .arg(self.fifo_dir())
                    .args(&args[at..]);
            }
            None => {
                cmd.args(args);
            }
        }
        cmd
    }

    /// Runs `ctr ARGS` with `stdin` (or `/dev/null`) and `timeout`. Only a
    /// failure to run it or a timeout (after which ctr is killed) is an
    /// error; the exit status is in the output.
    pub fn ctr_with_timeout(
        &self,
        args: &[&str],
        stdin: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<CtrOutput> {
        if let Some(id) = container_id_of(args) {
            self.track_container_id(&id);
        }
        let mut cmd = self.ctr_command(args);
        let input = stdin.map(|data| Input {
            data: data.to_vec(),
            hold: Some(self.stdin_hold(args, timeout)),
        });
        run_with_input(&mut cmd, input, timeout).with_context(|| {
            format!(
                "ctr {args:?} did not complete; last lines of containerd's log:\n{}",
                self.log_tail(20)
            )
        })
    }

    /// When `ctr`'s standard input may end. ctr 1.6 forwards the end of its
    /// standard input to the task (`CloseIO`) only if it comes after the
    /// task (or exec process) was created: an earlier end of file is lost and
    /// the task never sees it (`cat` would wait forever). So after the data,
    /// the pipe is held open until `ctr tasks ls` lists the task (for `run`
    /// and `tasks start`), then 200 ms more; for other commands (`tasks
    /// exec`), for 1 s. It is closed at once when ctr exits.
    fn stdin_hold(&self, args: &[&str], timeout: Duration) -> Hold {
        let task = container_id_of(args).or_else(|| match args {
            ["tasks" | "task" | "t", "start", rest @ ..] => {
                first_positional(rest, CTR_START_VALUE_FLAGS)
            }
            _ => None,
        });
        let wait_for_exit = |exited: &AtomicBool, d: Duration| {
            let until = Instant::now() + d;
            while !exited.load(Ordering::SeqCst) && Instant::now() < until {
                thread::sleep(Duration::from_millis(10));
            }
        };
        let Some(task) = task else {
            return Box::new(move |exited: &AtomicBool| {
                wait_for_exit(exited, Duration::from_secs(1));
            });
        };
        let ctr_bin = self.opts.ctr_bin.clone();
        let socket = self.socket();
        let namespace = self.opts.namespace.clone();
        Box::new(move |exited: &AtomicBool| {
            let deadline = Instant::now() + timeout;
            while !exited.load(Ordering::SeqCst) && Instant::now() < deadline {
                let mut ls = Command::new(&ctr_bin);
                ls.arg("--address")
                    .arg(&socket)
                    .arg("--namespace")
                    .arg(&namespace)
                    .args(["tasks", "ls", "--quiet"]);
                let listed = run_with_timeout(&mut ls, None, Duration::from_secs(5))
                    .map(|out| out.stdout.lines().any(|l| l.trim() == task))
                    .unwrap_or(false);
                if listed {
                    wait_for_exit(exited, Duration::from_millis(200));
                    return;
                }
                wait_for_exit(exited, Duration::from_millis(50));
            }
        })
    }

    /// Starts `ctr ARGS` in the background (same address, namespace, FIFO
    /// directory and id tracking as [`ctr`](Self::ctr)) and returns the
    /// child, e.g. for a `ctr run` to be signalled while it runs. Standard
    /// input is `/dev/null`; standard output and error are piped, so read
    /// them (or expect little output): a full pipe (64 KiB) blocks ctr. The
    /// caller waits for (or kills) the child; no timeout applies.
    pub fn ctr_spawn(&self, args: &[&str]) -> Result<Child> {
        if let Some(id) = container_id_of(args) {
            self.track_container_id(&id);
        }
        self.ctr_command(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("failed to spawn ctr {args:?}"))
    }

    /// Runs `ctr ARGS` and returns its standard output; a non-zero exit is an
    /// error holding the arguments, status and standard error.
    pub fn ctr(&self, args: &[&str]) -> Result<String> {
        let out = self.ctr_output(args)?;
        if !out.success() {
            bail!(
                "ctr {args:?} failed (exit {:?}, signal {:?})\nstderr: {}\nstdout: {}",
                out.status,
                out.signal,
                out.stderr.trim_end(),
                out.stdout.trim_end()
            );
        }
        Ok(out.stdout)
    }

    /// Runs `ctr ARGS` and returns status and output, whatever the status.
    pub fn ctr_output(&self, args: &[&str]) -> Result<CtrOutput> {
        self.ctr_with_timeout(args, None, self.opts.ctr_timeout)
    }

    /// Runs `ctr ARGS` with `input` on its standard input; like
    /// [`ctr_output`](Self::ctr_output), the status is not checked.
    pub fn ctr_with_stdin(&self, args: &[&str], input: &[u8]) -> Result<CtrOutput> {
        self.ctr_with_timeout(args, Some(input), self.opts.ctr_timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_container_ids() {
        assert_eq!(
            container_id_of(&["run", "--rm", "--runtime", "io.x.v1", "img", "c1", "a"]),
            Some("c1".into())
        );
        assert_eq!(
            container_id_of(&["run", "-d", "--env=A=B", "--label", "x=y", "img", "c2"]),
            Some("c2".into())
        );
        assert_eq!(
            container_id_of(&["run", "--rootfs", "/r", "c3", "/bin/sh"]),
            Some("c3".into())
        );
        assert_eq!(
            container_id_of(&["c", "create", "--runtime", "r", "img", "c4"]),
            Some("c4".into())
        );
        assert_eq!(container_id_of(&["images", "ls"]), None);
        assert_eq!(
            first_positional(&["--fifo-dir", "/f", "-d", "c5"], CTR_START_VALUE_FLAGS),
            Some("c5".into())
        );
        assert_eq!(container_id_of(&["run", "img"]), None);
    }

    #[test]
    fn fifo_dir_goes_after_the_subcommand() {
        assert_eq!(fifo_dir_position(&["run", "--rm", "i", "c"]), Some(1));
        assert_eq!(fifo_dir_position(&["tasks", "exec", "c"]), Some(2));
        assert_eq!(fifo_dir_position(&["t", "start", "c"]), Some(2));
        assert_eq!(fifo_dir_position(&["tasks", "ls"]), None);
        assert_eq!(
            fifo_dir_position(&["run", "--fifo-dir", "/x", "i", "c"]),
            None
        );
        assert_eq!(fifo_dir_position(&["images", "ls"]), None);
    }
}
