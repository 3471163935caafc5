//! The one raw syscall of the installer: running a host command in the
//! node's mount namespace from inside the DaemonSet's pod.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

/// Makes `cmd` run in the mount namespace of the node's PID 1 (the pod has
/// `hostPID: true`), so that `systemctl` and the unit files are the host's.
pub fn in_host_mount_namespace(cmd: &mut Command) -> std::io::Result<()> {
    let ns: OwnedFd = File::open("/proc/1/ns/mnt")?.into();
    // SAFETY: the closure runs in the forked child before exec. It only
    // calls setns(2), which is async-signal-safe, on a descriptor opened
    // above and kept alive by the closure; the child is single-threaded
    // after fork, which setns(CLONE_NEWNS) requires.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNS) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    Ok(())
}
