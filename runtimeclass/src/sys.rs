//! The installer's namespace and socket system calls: who serves a unix
//! socket (its peer credentials), and joining another process's namespaces
//! and cgroup before a restart command runs. All through `nix`'s safe
//! wrappers; nothing here needs `unsafe`.

use std::fs::{self, File};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use nix::sched::CloneFlags;
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};

/// The pid of the process that listens on the unix socket `socket`, as this
/// PID namespace numbers it: `Ok(None)` when nothing listens there (no file,
/// connection refused), `Ok(Some(0))` when the listener is in a PID
/// namespace this one cannot see. `SO_PEERCRED` on a connected stream holds
/// the credentials the listener had when it called `listen(2)`, which is the
/// server process itself (containerd does not hand its socket on).
pub fn socket_listener_pid(socket: &Path) -> io::Result<Option<u32>> {
    let stream = match UnixStream::connect(socket) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(e),
    };
    let cred = getsockopt(&stream.as_fd(), PeerCredentials).map_err(io::Error::from)?;
    Ok(Some(u32::try_from(cred.pid()).unwrap_or(0)))
}

/// The namespaces a restart joins, in the order joined: the mount namespace
/// last, as runc's nsenter does, since joining it changes what `/proc` and
/// every path name refer to. No user namespace: containerd runs in the
/// node's initial one, which the privileged installer is in already.
const NAMESPACES: [(&str, CloneFlags); 6] = [
    ("cgroup", CloneFlags::CLONE_NEWCGROUP),
    ("ipc", CloneFlags::CLONE_NEWIPC),
    ("uts", CloneFlags::CLONE_NEWUTS),
    ("net", CloneFlags::CLONE_NEWNET),
    ("pid", CloneFlags::CLONE_NEWPID),
    ("mnt", CloneFlags::CLONE_NEWNS),
];

fn ns_id(path: &Path) -> io::Result<(u64, u64)> {
    let m = fs::metadata(path)?;
    Ok((m.dev(), m.ino()))
}

fn with_path(path: &Path) -> impl FnOnce(io::Error) -> io::Error + '_ {
    move |e| io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// Joins the namespaces of process `pid` that this process is not already
/// in, and returns their names. Must run single-threaded (the installer's
/// `enter` step runs before any runtime thread starts): `setns(2)` refuses a
/// mount namespace to a process that shares its filesystem attributes with
/// other threads. A PID namespace applies to the children, i.e. to what the
/// restart command starts. Every namespace file is opened before the first
/// join, while `/proc` is still this process's.
pub fn join_namespaces(pid: u32) -> io::Result<Vec<&'static str>> {
    let mut todo = Vec::new();
    for (name, flag) in NAMESPACES {
        let theirs = PathBuf::from(format!("/proc/{pid}/ns/{name}"));
        let ours = PathBuf::from(format!("/proc/self/ns/{name}"));
        if ns_id(&theirs).map_err(with_path(&theirs))? == ns_id(&ours).map_err(with_path(&ours))? {
            continue;
        }
        let file = File::open(&theirs).map_err(with_path(&theirs))?;
        todo.push((name, flag, file, theirs));
    }
    let mut joined = Vec::new();
    for (name, flag, file, path) in todo {
        nix::sched::setns(file.as_fd(), flag).map_err(|e| {
            io::Error::new(
                io::Error::from(e).kind(),
                format!("setns {name} of {}: {e}", path.display()),
            )
        })?;
        joined.push(name);
    }
    if joined.contains(&"mnt") {
        std::env::set_current_dir("/")?;
    }
    Ok(joined)
}

/// Moves this process into the cgroups of process `pid`, on every
/// hierarchy, by writing `0` ("the writer") to each `cgroup.procs`. Run
/// after [`join_namespaces`]: `/proc/PID/cgroup` then names the cgroups
/// relative to the cgroup namespace that `/sys/fs/cgroup` is mounted from.
/// Returns the cgroup directories joined.
pub fn join_cgroups(pid: u32) -> io::Result<Vec<PathBuf>> {
    let file = PathBuf::from(format!("/proc/{pid}/cgroup"));
    let text = fs::read_to_string(&file).map_err(with_path(&file))?;
    let root = Path::new("/sys/fs/cgroup");
    let mut joined = Vec::new();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let Some(dir) = hierarchy_dir(root, controllers) else {
            continue;
        };
        let target = dir.join(path.trim_start_matches('/'));
        let procs = target.join("cgroup.procs");
        fs::write(&procs, "0").map_err(with_path(&procs))?;
        joined.push(target);
    }
    Ok(joined)
}

/// Where the hierarchy of `controllers` (a `/proc/PID/cgroup` field) is
/// mounted under `root`: the root itself for a pure cgroup v2 node,
/// `unified` for v2 beside v1, and the controller's (or `name=`'s)
/// directory on v1. `None` when this mount namespace has no such hierarchy.
fn hierarchy_dir(root: &Path, controllers: &str) -> Option<PathBuf> {
    if controllers.is_empty() {
        return [root.to_path_buf(), root.join("unified")]
            .into_iter()
            .find(|d| d.join("cgroup.controllers").exists());
    }
    let name = controllers.trim_start_matches("name=");
    [name, name.split(',').next().unwrap_or(name)]
        .into_iter()
        .map(|n| root.join(n))
        .find(|d| d.join("cgroup.procs").exists())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_listener_of_a_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.sock");
        assert_eq!(socket_listener_pid(&path).expect("no file"), None);
        let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        assert_eq!(
            socket_listener_pid(&path).expect("pid"),
            Some(std::process::id())
        );
        drop(listener);
        assert_eq!(socket_listener_pid(&path).expect("refused"), None);
    }

    #[test]
    fn joining_own_namespaces_is_a_no_op() {
        assert!(join_namespaces(std::process::id())
            .expect("own namespaces")
            .is_empty());
    }

    #[test]
    fn hierarchies_by_controller() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        for d in ["cpu,cpuacct", "memory", "systemd", "unified"] {
            fs::create_dir_all(root.join(d)).unwrap();
            fs::write(root.join(d).join("cgroup.procs"), "").unwrap();
        }
        fs::write(root.join("unified/cgroup.controllers"), "").unwrap();
        assert_eq!(hierarchy_dir(root, ""), Some(root.join("unified")));
        assert_eq!(hierarchy_dir(root, "memory"), Some(root.join("memory")));
        assert_eq!(
            hierarchy_dir(root, "cpu,cpuacct"),
            Some(root.join("cpu,cpuacct"))
        );
        assert_eq!(
            hierarchy_dir(root, "name=systemd"),
            Some(root.join("systemd"))
        );
        assert_eq!(hierarchy_dir(root, "blkio"), None);
        fs::write(root.join("cgroup.controllers"), "").unwrap();
        assert_eq!(hierarchy_dir(root, ""), Some(root.to_path_buf()));
    }
}
