//! The `delete` action: containerd runs it in the bundle after a server
//! exits, to clean up after one that died (crashed or killed) from what is
//! on disk alone.

use std::io::Write;
use std::path::PathBuf;
use std::time::SystemTime;

use containerd_shim::api::DeleteResponse;
use containerd_shim::protos::protobuf::{Message, MessageField};
use containerd_shim::Flags;
use log::warn;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::bundle::{ADDRESS_FILE, PID_FILE, ROOTFS_DIR};
use crate::exit::{timestamp, KILLED};
use crate::server::cgroup::Base;
use crate::server::rootfs;

/// The `delete` action: the shim that served this bundle is gone (crashed or
/// killed), so clean up from what is on disk alone: kill the runner recorded
/// in the bundle (after checking the pid still is that runner) and unmount
/// the rootfs. Writes the `DeleteResponse` to stdout.
pub fn delete_action(flags: &Flags) -> anyhow::Result<()> {
    let bundle = if flags.bundle.is_empty() {
        std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."))
    } else {
        PathBuf::from(&flags.bundle)
    };
    let mut pid = 0;
    let mut runner = None;
    if let Ok(text) = std::fs::read_to_string(bundle.join(PID_FILE)) {
        if let Ok(p) = text.trim().parse::<i32>() {
            pid = p;
            if crate::control::is_runner(p, &flags.id) {
                // where it is tells where a relative cgroup path was read
                runner =
                    Some(std::fs::read_to_string(format!("/proc/{p}/cgroup")).unwrap_or_default());
                let _ = nix::sys::signal::kill(Pid::from_raw(p), Signal::SIGKILL);
                wait_gone(p);
            }
        }
    }
    // The Wasm container's cgroup was the shim's to remove. The driver does
    // not matter here: a systemd path reads the same either way, and a
    // relative one is found from the runner.
    if let Some(member) = runner {
        let plan = crate::bundle::load_spec(&flags.id, &bundle)
            .ok()
            .and_then(|spec| wasmpod_oci::plan::RunPlan::from_spec(&spec, &bundle).ok());
        if let Some(path) = plan.as_ref().and_then(|p| p.cgroup.as_ref()) {
            let relative = plan.as_ref().is_some_and(|p| p.cgroup_relative);
            let base = if relative {
                Base::from_member(&member, path)
            } else {
                Base::Root
            };
            let _ = crate::server::cgroup::ContainerCgroup::adopt(&flags.id, path, &base)
                .map(|cg| cg.remove());
        }
    }
    // A pod's Linux container: let runc kill it and remove its state.
    let runc_state = std::path::Path::new(crate::linux::runc::RUNC_ROOT).join(&flags.namespace);
    if runc_state.join(&flags.id).exists() {
        let status = std::process::Command::new("runc")
            .arg("--root")
            .arg(&runc_state)
            .args(["delete", "--force", &flags.id])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .status();
        if !status.as_ref().is_ok_and(|s| s.success()) {
            warn!("runc delete --force {}: {status:?}", flags.id);
        }
    }
    let target = bundle.join(ROOTFS_DIR);
    if let Err(e) = rootfs::unmount_blocking(&flags.id, &target) {
        warn!("{e}");
    }
    let _ = std::fs::remove_file(bundle.join(PID_FILE));
    // The dead server's socket, unless another server of the group lives on it.
    if let Ok(address) = std::fs::read_to_string(bundle.join(ADDRESS_FILE)) {
        let path = address.trim().trim_start_matches("unix://");
        if std::os::unix::net::UnixStream::connect(path).is_err() {
            let _ = std::fs::remove_file(path);
        }
    }
    let resp = DeleteResponse {
        pid: u32::try_from(pid).unwrap_or(0),
        exit_status: KILLED,
        exited_at: MessageField::some(timestamp(SystemTime::now())),
        ..Default::default()
    };
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(&resp.write_to_bytes()?)?;
    stdout.flush()?;
    Ok(())
}

/// Waits (up to a second) until `pid` has exited.
fn wait_gone(pid: i32) {
    for _ in 0..100 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // gone, or a zombie waiting for its new parent to reap it
        if stat.is_empty()
            || stat
                .rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('Z'))
        {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
