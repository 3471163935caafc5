//! Detection of what a test could leave behind on the host.
//!
//! Each function here looks at one kind of resource. They are combined by
//! [`crate::Containerd::leftovers`], which knows the temporary directory, the
//! socket and the container ids of one harness. Functions only read the host;
//! cleanup lives in [`crate::containerd`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

/// Directory in which shims put their ttrpc sockets (`/run/containerd/s`),
/// whatever containerd's own state directory is.
pub const SHIM_SOCKET_DIR: &str = "/run/containerd/s";

/// Default root of runc's state (`/run/containerd/runc/<namespace>/<id>`),
/// used by containerd's runc shim when no `--runc-root` is given.
pub const RUNC_ROOT: &str = "/run/containerd/runc";

/// Root of the cgroup (v1) controller hierarchies.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// How deep below a cgroup controller's root [`leftover_cgroups`] looks.
pub const CGROUP_SEARCH_DEPTH: usize = 4;

/// One thing left behind.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Leftover {
    /// A process launched (directly or not) by the harness' containerd.
    Process {
        /// Process id.
        pid: i32,
        /// Parent process id.
        ppid: i32,
        /// State letter from `/proc/PID/stat` (`Z` for a zombie).
        state: char,
        /// Command line, arguments separated by spaces.
        cmdline: String,
    },
    /// A mount point under the harness' temporary directory.
    Mount(PathBuf),
    /// A task (bundle) directory in containerd's runtime state.
    TaskState(PathBuf),
    /// A FIFO under containerd's state or the harness' FIFO directory.
    Fifo(PathBuf),
    /// A shim ttrpc socket in [`SHIM_SOCKET_DIR`] belonging to the harness.
    ShimSocket(PathBuf),
    /// A cgroup directory named after one of the test's container ids.
    Cgroup(PathBuf),
    /// runc state of one of the test's containers under [`RUNC_ROOT`].
    RuncState(PathBuf),
    /// A pod's network namespace file (CRI pods).
    Netns(PathBuf),
    /// A pod's veth still attached to the harness' CNI bridge.
    PodVeth(String),
}

impl fmt::Display for Leftover {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Leftover::Process {
                pid,
                ppid,
                state,
                cmdline,
            } => write!(f, "process {pid} (parent {ppid}, state {state}): {cmdline}"),
            Leftover::Mount(p) => write!(f, "mount {}", p.display()),
            Leftover::TaskState(p) => write!(f, "task state {}", p.display()),
            Leftover::Fifo(p) => write!(f, "fifo {}", p.display()),
            Leftover::ShimSocket(p) => write!(f, "shim socket {}", p.display()),
            Leftover::Cgroup(p) => write!(f, "cgroup {}", p.display()),
            Leftover::RuncState(p) => write!(f, "runc state {}", p.display()),
            Leftover::Netns(p) => write!(f, "network namespace {}", p.display()),
            Leftover::PodVeth(name) => write!(f, "pod veth {name} on the CNI bridge"),
        }
    }
}

/// A process as seen in `/proc`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcInfo {
    /// Process id.
    pub pid: i32,
    /// Parent process id.
    pub ppid: i32,
    /// State letter (`R`, `S`, `Z`, ...).
    pub state: char,
    /// Arguments, `argv[0]` first (empty for kernel threads and zombies).
    pub argv: Vec<String>,
}

impl ProcInfo {
    /// The leftover report for this process.
    pub fn to_leftover(&self) -> Leftover {
        Leftover::Process {
            pid: self.pid,
            ppid: self.ppid,
            state: self.state,
            cmdline: self.argv.join(" "),
        }
    }
}

/// Parses `/proc/PID/stat` into (state, ppid). The command name is in
/// parentheses and may itself hold spaces or parentheses, so the fields are
/// taken after the *last* `)`.
fn parse_stat(stat: &str) -> Option<(char, i32)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Reads one process; `None` when it vanished meanwhile or cannot be read.
pub fn read_process(pid: i32) -> Option<ProcInfo> {
    let dir = PathBuf::from(format!("/proc/{pid}"));
    let stat = fs::read_to_string(dir.join("stat")).ok()?;
    let (state, ppid) = parse_stat(&stat)?;
    let cmdline = fs::read(dir.join("cmdline")).unwrap_or_default();
    let argv = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    Some(ProcInfo {
        pid,
        ppid,
        state,
        argv,
    })
}

/// All processes currently visible in `/proc`.
pub fn list_processes() -> Result<Vec<ProcInfo>> {
    let mut out = Vec::new();
    for entry in fs::read_dir("/proc").context("failed to list /proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        if let Some(p) = read_process(pid) {
            out.push(p);
        }
    }
    Ok(out)
}

/// Whether any argument names `tree` or something inside it.
fn mentions_tree(argv: &[String], tree: &str) -> bool {
    let inside = format!("{}/", tree.trim_end_matches('/'));
    argv.iter()
        .any(|a| a.contains(&inside) || a.ends_with(tree.trim_end_matches('/')))
}

/// Whether `argv` is a `shim_binary` talking to the containerd at `socket`
/// (`-address SOCKET` or `-address=SOCKET`, one or two dashes).
fn is_shim_for(argv: &[String], shim_binary: &str, socket: &str) -> bool {
    let Some(arg0) = argv.first() else {
        return false;
    };
    if Path::new(arg0).file_name().and_then(|n| n.to_str()) != Some(shim_binary) {
        return false;
    }
    argv.iter().enumerate().any(|(i, a)| {
        let flag = a.trim_start_matches('-');
        if a.starts_with('-') && flag == "address" {
            argv.get(i + 1).map(String::as_str) == Some(socket)
        } else {
            a.starts_with('-') && flag.strip_prefix("address=") == Some(socket)
        }
    })
}

/// Processes belonging to a harness: those whose command line mentions `tree`
/// (its temporary directory) or that are `shim_binary` with `-address` equal
/// to `socket`, plus all their descendants. Processes in `exclude` (such as
/// containerd itself, and the test process) never match, and their children
/// are only included when they match on their own.
pub fn harness_processes(
    procs: &[ProcInfo],
    tree: &Path,
    socket: &Path,
    shim_binary: &str,
    exclude: &BTreeSet<i32>,
) -> Vec<ProcInfo> {
    let tree = tree.to_string_lossy();
    let socket = socket.to_string_lossy();
    let mut ours: BTreeSet<i32> = procs
        .iter()
        .filter(|p| !exclude.contains(&p.pid))
        .filter(|p| mentions_tree(&p.argv, &tree) || is_shim_for(&p.argv, shim_binary, &socket))
        .map(|p| p.pid)
        .collect();
    // Add descendants until nothing changes (the list is not ordered by
    // ancestry, so one pass is not enough).
    loop {
        let before = ours.len();
        for p in procs {
            if !exclude.contains(&p.pid) && ours.contains(&p.ppid) {
                ours.insert(p.pid);
            }
        }
        if ours.len() == before {
            break;
        }
    }
    procs
        .iter()
        .filter(|p| ours.contains(&p.pid))
        .cloned()
        .collect()
}

/// Undoes the octal escapes (`\040` for a space...) of `/proc/*/mountinfo`.
fn unescape_mount_path(s: &str) -> PathBuf {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let oct = &bytes[i + 1..i + 4];
            if oct.iter().all(|b| (b'0'..=b'7').contains(b)) {
                let v = oct
                    .iter()
                    .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
                if let Ok(v) = u8::try_from(v) {
                    out.push(v);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// Mount points listed in `mountinfo` text that are `dir` or below it, in
/// the order listed (later mounts stack on earlier ones).
pub fn parse_mounts_under(mountinfo: &str, dir: &Path) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mount_path)
        .filter(|p| p.starts_with(dir))
        .collect()
}

/// Mount points of this process' mount namespace at or below `dir`.
pub fn mounts_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let info = fs::read_to_string("/proc/self/mountinfo")
        .context("failed to read /proc/self/mountinfo")?;
    Ok(parse_mounts_under(&info, dir))
}

/// The per-mount options (`rw,nodev,relatime`...) of the topmost mount at
/// exactly `target` in this process' mount namespace; `None` when nothing is
/// mounted there.
pub fn mount_options(target: &Path) -> Result<Option<String>> {
    let info = fs::read_to_string("/proc/self/mountinfo")
        .context("failed to read /proc/self/mountinfo")?;
    // Later lines stack on earlier ones: the last match is on top.
    Ok(info.lines().rev().find_map(|l| {
        let mut fields = l.split(' ').skip(4);
        let point = fields.next()?;
        (unescape_mount_path(point) == target).then(|| fields.next().unwrap_or("").to_owned())
    }))
}

/// Task bundle directories left in containerd's state directory: every entry
/// of `<state>/io.containerd.runtime.v2.task/<namespace>/` (and of the v1
/// runtime's equivalent), for all namespaces.
pub fn task_state_entries(state: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for runtime in [
        "io.containerd.runtime.v2.task",
        "io.containerd.runtime.v1.linux",
    ] {
        let Ok(namespaces) = fs::read_dir(state.join(runtime)) else {
            continue;
        };
        for ns in namespaces.flatten() {
            if !ns.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                continue;
            }
            if let Ok(entries) = fs::read_dir(ns.path()) {
                out.extend(entries.flatten().map(|e| e.path()));
            }
        }
    }
    out.sort();
    out
}

/// FIFOs anywhere below `dir` (symlinks are not followed; mounts are entered,
/// which is fine for containerd's state directory where only rootfs mounts
/// live, and those are reported separately anyway).
pub fn fifos_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(t) = e.file_type() else { continue };
            if t.is_fifo() {
                out.push(e.path());
            } else if t.is_dir() && !is_container_rootfs(&e.path()) {
                stack.push(e.path());
            }
        }
    }
    out.sort();
    out
}

/// A container's root filesystem inside a task bundle: not containerd's
/// business to hold FIFOs, and possibly big, so it is not walked.
fn is_container_rootfs(p: &Path) -> bool {
    p.file_name().and_then(|n| n.to_str()) == Some("rootfs")
}

/// Path of the ttrpc socket that a shim started by the containerd listening
/// on `containerd_socket` uses for container (or sandbox) `id` in
/// `namespace`: `/run/containerd/s/<sha256 of socket/namespace/id>`.
pub fn shim_socket_path(containerd_socket: &Path, namespace: &str, id: &str) -> PathBuf {
    let joined = containerd_socket.join(namespace).join(id);
    let digest = Sha256::digest(joined.to_string_lossy().as_bytes());
    Path::new(SHIM_SOCKET_DIR).join(hex::encode(digest))
}

/// Entries of [`SHIM_SOCKET_DIR`] (empty when it does not exist).
pub fn shim_socket_entries() -> BTreeSet<PathBuf> {
    fs::read_dir(SHIM_SOCKET_DIR)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// Paths of the unix sockets that `pids` hold open (listening or connected),
/// from `/proc/net/unix` and `/proc/PID/fd`.
pub fn unix_socket_paths_of(pids: &BTreeSet<i32>) -> BTreeSet<PathBuf> {
    // inode -> path, for sockets bound to a path.
    let mut by_inode: BTreeMap<u64, PathBuf> = BTreeMap::new();
    if let Ok(table) = fs::read_to_string("/proc/net/unix") {
        for line in table.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if let (Some(inode), Some(path)) = (fields.get(6), fields.get(7)) {
                if let Ok(inode) = inode.parse() {
                    if path.starts_with('/') {
                        by_inode.insert(inode, PathBuf::from(path));
                    }
                }
            }
        }
    }
    let mut out = BTreeSet::new();
    for pid in pids {
        let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = fs::read_link(fd.path()) else {
                continue;
            };
            let target = target.to_string_lossy();
            let inode = target
                .strip_prefix("socket:[")
                .and_then(|s| s.strip_suffix(']'))
                .and_then(|s| s.parse::<u64>().ok());
            if let Some(path) = inode.and_then(|i| by_inode.get(&i)) {
                out.insert(path.clone());
            }
        }
    }
    out
}

/// Whether `name` contains `id` as a whole token: bounded on each side by
/// the string's edge or a character that cannot be part of a container id
/// (ids are made of letters, digits, `_`, `.` and `-`; `.`, `-` and `_` are
/// accepted as boundaries too, as in `cri-containerd-<id>.scope`).
pub fn name_mentions_id(name: &str, id: &str) -> bool {
    if id.is_empty() {
        return false;
    }
    let boundary = |c: Option<char>| c.is_none_or(|c| !c.is_ascii_alphanumeric());
    let mut from = 0;
    while let Some(off) = name[from..].find(id) {
        let start = from + off;
        let end = start + id.len();
        if boundary(name[..start].chars().next_back()) && boundary(name[end..].chars().next()) {
            return true;
        }
        from = start + name[start..].chars().next().map_or(1, char::len_utf8);
    }
    false
}

/// Cgroup directories (under every controller of [`CGROUP_ROOT`], at most
/// [`CGROUP_SEARCH_DEPTH`] levels down) whose name mentions one of `ids`
/// (see [`name_mentions_id`]). Deepest first, so they can be removed in
/// that order.
pub fn leftover_cgroups<S: AsRef<str>>(ids: &[S]) -> Vec<PathBuf> {
    leftover_cgroups_in(Path::new(CGROUP_ROOT), ids)
}

/// [`leftover_cgroups`] with another root (for tests).
pub fn leftover_cgroups_in<S: AsRef<str>>(root: &Path, ids: &[S]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if ids.is_empty() {
        return out;
    }
    let Ok(controllers) = fs::read_dir(root) else {
        return out;
    };
    for ctl in controllers.flatten() {
        if !ctl.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            continue;
        }
        let mut stack = vec![(ctl.path(), 0usize)];
        while let Some((dir, depth)) = stack.pop() {
            if depth >= CGROUP_SEARCH_DEPTH {
                continue;
            }
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                if !e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    continue;
                }
                let name = e.file_name();
                let name = name.to_string_lossy();
                if ids.iter().any(|id| name_mentions_id(&name, id.as_ref())) {
                    out.push(e.path());
                }
                stack.push((e.path(), depth + 1));
            }
        }
    }
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out
}

/// runc state directories (`/run/containerd/runc/<namespace>/<id>`) of `ids`.
pub fn leftover_runc_state<S: AsRef<str>>(namespace: &str, ids: &[S]) -> Vec<PathBuf> {
    ids.iter()
        .map(|id| Path::new(RUNC_ROOT).join(namespace).join(id.as_ref()))
        .filter(|p| p.exists())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        s.split(' ').map(String::from).collect()
    }

    #[test]
    fn stat_with_odd_command_name() {
        assert_eq!(
            parse_stat("123 (a) b (c)) S 45 123 123 0 -1"),
            Some(('S', 45))
        );
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn matches_processes_and_descendants() {
        let procs = vec![
            ProcInfo {
                pid: 10,
                ppid: 1,
                state: 'S',
                argv: argv("/usr/bin/containerd --config /tmp/t1/config.toml"),
            },
            ProcInfo {
                pid: 11,
                ppid: 1,
                state: 'S',
                argv: argv("containerd-shim-wasmpod-v1 -namespace n -id c1 -address /tmp/t1/containerd.sock"),
            },
            ProcInfo {
                pid: 12,
                ppid: 11,
                state: 'S',
                argv: argv("/bin/busybox sleep 100"),
            },
            ProcInfo {
                pid: 13,
                ppid: 12,
                state: 'Z',
                argv: vec![],
            },
            ProcInfo {
                pid: 14,
                ppid: 1,
                state: 'S',
                argv: argv("containerd-shim-wasmpod-v1 -address /tmp/t10/containerd.sock"),
            },
            ProcInfo {
                pid: 15,
                ppid: 10,
                state: 'S',
                argv: argv("something-else"),
            },
            ProcInfo {
                pid: 16,
                ppid: 1,
                state: 'S',
                argv: argv("/usr/bin/containerd-shim-wasmpod-v1 -address=/run/x.sock"),
            },
        ];
        let exclude = BTreeSet::from([10]);
        let got: Vec<i32> = harness_processes(
            &procs,
            Path::new("/tmp/t1"),
            Path::new("/tmp/t1/containerd.sock"),
            "containerd-shim-wasmpod-v1",
            &exclude,
        )
        .iter()
        .map(|p| p.pid)
        .collect();
        assert_eq!(got, vec![11, 12, 13]);

        let got: Vec<i32> = harness_processes(
            &procs,
            Path::new("/elsewhere"),
            Path::new("/run/x.sock"),
            "containerd-shim-wasmpod-v1",
            &BTreeSet::new(),
        )
        .iter()
        .map(|p| p.pid)
        .collect();
        assert_eq!(got, vec![16]);
    }

    #[test]
    fn mount_options_of_the_root_and_of_a_plain_dir() {
        let root = mount_options(Path::new("/"))
            .unwrap()
            .expect("/ is a mount");
        assert!(root.split(',').any(|o| o == "rw" || o == "ro"), "{root}");
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(mount_options(dir.path()).unwrap(), None);
    }

    #[test]
    fn mountinfo_paths() {
        let info = "22 1 0:21 / /proc rw - proc proc rw\n\
                    90 22 0:50 / /tmp/t1/state/x/rootfs rw - overlay overlay rw\n\
                    91 22 0:51 / /tmp/t1\\040b/y rw - tmpfs tmpfs rw\n\
                    92 22 0:52 / /tmp/t10/z rw - tmpfs tmpfs rw\n";
        assert_eq!(
            parse_mounts_under(info, Path::new("/tmp/t1")),
            vec![PathBuf::from("/tmp/t1/state/x/rootfs")]
        );
        assert_eq!(
            parse_mounts_under(info, Path::new("/tmp/t1 b")),
            vec![PathBuf::from("/tmp/t1 b/y")]
        );
    }

    #[test]
    fn socket_hash_matches_containerd() {
        // sha256("/run/containerd/containerd.sock/default/c1"), as containerd
        // and the containerd-shim crate compute it.
        let p = shim_socket_path(
            Path::new("/run/containerd/containerd.sock"),
            "default",
            "c1",
        );
        let expected = hex::encode(Sha256::digest(
            b"/run/containerd/containerd.sock/default/c1",
        ));
        assert_eq!(p, Path::new(SHIM_SOCKET_DIR).join(expected));
    }

    #[test]
    fn id_tokens() {
        assert!(name_mentions_id("c1", "c1"));
        assert!(name_mentions_id("cri-containerd-c1.scope", "c1"));
        assert!(!name_mentions_id("c10", "c1"));
        assert!(!name_mentions_id("abc1", "c1"));
        assert!(name_mentions_id("abc1-c1", "c1"));
        assert!(!name_mentions_id("anything", ""));
    }

    #[test]
    fn cgroup_walk() {
        let root = tempfile::tempdir().unwrap();
        let deep = root.path().join("memory/ns/e2e-1-7");
        std::fs::create_dir_all(deep.join("sub")).unwrap();
        std::fs::create_dir_all(root.path().join("cpu/a/b/c/d/e2e-1-7")).unwrap();
        std::fs::create_dir_all(root.path().join("cpu/other")).unwrap();
        let got = leftover_cgroups_in(root.path(), &["e2e-1-7"]);
        assert_eq!(got, vec![deep]);
        assert!(leftover_cgroups_in::<&str>(root.path(), &[]).is_empty());
    }

    #[test]
    fn finds_fifos() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        nix::unistd::mkfifo(
            &dir.path().join("a/b/f"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        std::fs::write(dir.path().join("a/plain"), b"").unwrap();
        assert_eq!(fifos_under(dir.path()), vec![dir.path().join("a/b/f")]);
    }
}
