//! The one-shot actions containerd runs the shim binary for, in the bundle
//! directory: `start` (get the address of the shim serving a container,
//! starting one if its group has none), `delete` (clean up after a shim that
//! died) and `-info` (describe the runtime).
//!
//! `start`:
//! The shim library answers in the format of containerd 2.x's task API v3,
//! which containerd 1.6 (reads a bare address) and 1.7 (refuses versions above
//! 2) cannot parse. wasmpod serves task API v2, which every containerd from
//! 1.6 on speaks, so it answers here: a bare address for the legacy protocol,
//! a `BootstrapResult` with version 2 for containerd 2.3+'s bootstrap protocol.
//!
//! All three are plain blocking code without an async runtime: containerd
//! waits for `start` when creating a task and for `delete` after every shim
//! exits, so their start-up is part of each container's start and removal.

use std::io::{IsTerminal, Read, Write};

use containerd_shim::bootstrap::{BootstrapParams, BootstrapResult};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::Message;
use containerd_shim::{Flags, StartOpts};

use std::path::PathBuf;
use std::time::SystemTime;

use containerd_shim::api::DeleteResponse;
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::protos::types::introspection::RuntimeInfo;
use log::warn;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::rootfs;
use crate::service::{timestamp, PID_FILE, SANDBOX_ID_ANNOTATION};
use crate::RUNTIME_ID;

/// The task API version wasmpod serves.
const TASK_API_VERSION: i32 = 2;
/// Upper bound on what containerd pipes to `start`.
const MAX_INPUT: u64 = 10 << 20;

/// Runs the `start` action and writes the reply to stdout.
pub fn start_action(flags: &Flags) -> anyhow::Result<()> {
    let mut input = Vec::new();
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        stdin.lock().take(MAX_INPUT).read_to_end(&mut input)?;
    }
    let bootstrap = BootstrapParams::parse_from_bytes(&input).ok().filter(|p| {
        !input.is_empty() && p.instance_id == flags.id && p.namespace == flags.namespace
    });
    let opts = match &bootstrap {
        Some(params) => StartOpts::from(params.clone()),
        None => legacy_opts(flags, &input),
    };
    let address = start(opts)?;
    let reply = match bootstrap {
        Some(_) => BootstrapResult {
            version: TASK_API_VERSION,
            address,
            protocol: "ttrpc".into(),
            ..Default::default()
        }
        .write_to_bytes()?,
        None => address.into_bytes(),
    };
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(&reply)?;
    stdout.flush()?;
    Ok(())
}

/// Start options from flags and environment (containerd before 2.3).
fn legacy_opts(flags: &Flags, input: &[u8]) -> StartOpts {
    let env = |k: &str| std::env::var(k).unwrap_or_default();
    let mut opts = StartOpts {
        id: flags.id.clone(),
        namespace: flags.namespace.clone(),
        address: flags.address.clone(),
        ttrpc_address: env("TTRPC_ADDRESS"),
        publish_binary: flags.publish_binary.clone(),
        debug: flags.debug,
        ..Default::default()
    };
    if opts.address.is_empty() {
        opts.address = env("GRPC_ADDRESS");
    }
    // Runtime options (e.g. containerd.runc.v1.Options) arrive as an Any.
    if let Ok(any) = Any::parse_from_bytes(input) {
        if !any.type_url.is_empty() {
            opts.extensions.push(any);
        }
    }
    opts
}

/// Spawns (or finds) the shim serving this container's group and returns its
/// address. Containers of one Kubernetes pod share a group, so one shim
/// process serves the whole pod.
pub fn start(opts: StartOpts) -> anyhow::Result<String> {
    use anyhow::Context;
    let spec = std::fs::read("config.json").unwrap_or_default();
    let grouping = grouping(&spec, &opts.id);
    let address = opts.socket_address(&grouping);
    let exe = std::env::current_exe().context("locate the shim binary")?;
    let mut args: Vec<String> = vec![exe.to_string_lossy().into_owned()];
    for (flag, value) in [
        ("-namespace", &opts.namespace),
        ("-id", &opts.id),
        ("-address", &opts.address),
        ("-socket", &address),
    ] {
        args.push(flag.into());
        args.push(value.clone());
    }
    if opts.debug {
        args.push("-debug".into());
    }
    let mut child = match crate::sys::fork_server().context("fork the shim server")? {
        // This process becomes the server: no exec of the binary again.
        Some(crate::sys::Forked::Child) => serve_forked(&args, &opts.ttrpc_address),
        Some(crate::sys::Forked::Parent { pid, stdout }) => Server::Forked {
            pid,
            stdout: Some(stdout),
        },
        None => {
            let mut cmd = std::process::Command::new(&exe);
            cmd.stdout(std::process::Stdio::piped())
                .stdin(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .args(&args[1..]);
            // containerd 2.3+ passes its TTRPC address in the bootstrap
            // message rather than the environment.
            if !opts.ttrpc_address.is_empty() {
                cmd.env("TTRPC_ADDRESS", &opts.ttrpc_address);
            }
            Server::Spawned(cmd.spawn().context("spawn the shim server")?)
        }
    };
    // The runtime options' `ShimCgroup`, and an OOM score above containerd's.
    let shim_cgroup = opts
        .extension::<containerd_shim::protos::shim::oci::Options>()
        .map(|o| o.map(|o| o.shim_cgroup).unwrap_or_default());
    let confined = shim_cgroup
        .and_then(|cg| containerd_shim::cgroup::set_cgroup_and_oom_score(child.pid(), &cg));
    if let Err(e) = confined {
        child.kill();
        return Err(e).context("place the shim server");
    }
    // The server closes its stdout once it listens (or once it found the
    // group's server already listening); until then, copy what it says.
    let waited = match child.stdout() {
        Some(mut out) => std::io::copy(&mut out, &mut std::io::stderr())
            .map(drop)
            .context("wait for the shim server"),
        None => Ok(()),
    };
    // Written whole or not at all: `delete` reads it after a crash.
    let tmp = format!("address.{}", std::process::id());
    let written = waited.and_then(|()| {
        std::fs::write(&tmp, &address)
            .and_then(|()| std::fs::rename(&tmp, "address"))
            .context("write the bundle's address file")
    });
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        child.kill();
        return Err(e);
    }
    Ok(address)
}

/// The shim server `start` made.
enum Server {
    /// Forked from `start` (see [`crate::sys::fork_server`]).
    Forked {
        pid: i32,
        stdout: Option<std::fs::File>,
    },
    /// Spawned as a new process of the binary (a `start` with threads).
    Spawned(std::process::Child),
}

impl Server {
    fn pid(&self) -> u32 {
        match self {
            Server::Forked { pid, .. } => u32::try_from(*pid).unwrap_or_default(),
            Server::Spawned(child) => child.id(),
        }
    }

    /// The read end of the server's stdout (once).
    fn stdout(&mut self) -> Option<std::fs::File> {
        match self {
            Server::Forked { stdout, .. } => stdout.take(),
            Server::Spawned(child) => child
                .stdout
                .take()
                .map(|o| std::fs::File::from(std::os::fd::OwnedFd::from(o))),
        }
    }

    /// Ends a server that `start` cannot hand to containerd.
    fn kill(self) {
        match self {
            Server::Forked { pid, .. } => {
                let pid = Pid::from_raw(pid);
                let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
                let _ = nix::sys::wait::waitpid(pid, None);
            }
            Server::Spawned(mut child) => {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// The forked child of `start`: serves as the server an exec would have
/// started with `args`, then exits.
fn serve_forked(args: &[String], ttrpc_address: &str) -> ! {
    if let Err(e) = crate::sys::blank_last_arg("start") {
        // cosmetic: `ps` shows the server as `... start`
        eprintln!("{}: server command line: {e}", crate::RUNTIME_ID);
    }
    // containerd 2.3+ passes its TTRPC address in the bootstrap message.
    // This process has one thread, so changing the environment is safe.
    if !ttrpc_address.is_empty() {
        std::env::set_var("TTRPC_ADDRESS", ttrpc_address);
    }
    let served = containerd_shim::parse(&args[1..])
        .map_err(anyhow::Error::from)
        .and_then(|flags| crate::serve::run(&flags));
    if let Err(e) = served {
        eprintln!("{}: serve: {e:#}", crate::RUNTIME_ID);
        std::process::exit(1);
    }
    std::process::exit(0)
}

/// The server group of a container: its pod's sandbox id (CRI's annotation
/// in the spec `spec`), else its own id.
fn grouping(spec: &[u8], id: &str) -> String {
    serde_json::from_slice::<Annotations>(spec)
        .ok()
        .and_then(|spec| spec.annotations?.remove(SANDBOX_ID_ANNOTATION))
        .unwrap_or_else(|| id.to_owned())
}

/// The part of an OCI spec `start` reads.
#[derive(serde::Deserialize)]
struct Annotations {
    /// Absent or `null` when the spec has none.
    annotations: Option<std::collections::HashMap<String, String>>,
}

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
    let mut runner = false;
    if let Ok(text) = std::fs::read_to_string(bundle.join(PID_FILE)) {
        if let Ok(p) = text.trim().parse::<i32>() {
            pid = p;
            if crate::is_runner(p, &flags.id) {
                runner = true;
                let _ = nix::sys::signal::kill(Pid::from_raw(p), Signal::SIGKILL);
                wait_gone(p);
            }
        }
    }
    // The Wasm container's cgroup was the shim's to remove.
    if runner {
        let cgroup = oci_spec::runtime::Spec::load(bundle.join("config.json"))
            .ok()
            .and_then(|spec| wasmpod_oci::plan::RunPlan::from_spec(&spec, &bundle).ok())
            .and_then(|plan| plan.cgroup);
        if let Some(path) = cgroup {
            let _ = crate::cgroup::ContainerCgroup::adopt(&flags.id, &path).map(|cg| cg.remove());
        }
    }
    // A pod's Linux container: let runc kill it and remove its state.
    let runc_state = std::path::Path::new(crate::runc::RUNC_ROOT).join(&flags.namespace);
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
    let target = bundle.join(rootfs::ROOTFS_DIR);
    if let Err(e) = rootfs::unmount_blocking(&flags.id, &target) {
        warn!("{e}");
    }
    let _ = std::fs::remove_file(bundle.join(PID_FILE));
    // The dead server's socket, unless another server of the group lives on it.
    if let Ok(address) = std::fs::read_to_string(bundle.join("address")) {
        let path = address.trim().trim_start_matches("unix://");
        if std::os::unix::net::UnixStream::connect(path).is_err() {
            let _ = std::fs::remove_file(path);
        }
    }
    let resp = DeleteResponse {
        pid: u32::try_from(pid).unwrap_or(0),
        exit_status: 128 + Signal::SIGKILL as u32,
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

/// The `-info` action (containerd 2.x): the runtime's name and version.
pub fn info_action() -> anyhow::Result<()> {
    let info = RuntimeInfo {
        name: RUNTIME_ID.to_owned(),
        ..Default::default()
    };
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(&info.write_to_bytes()?)?;
    stdout.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::grouping;

    #[test]
    fn containers_of_a_pod_share_its_sandbox_group() {
        let pod = br#"{"ociVersion":"1.1.0","process":{"args":["/app.wasm"]},
            "annotations":{"io.kubernetes.cri.sandbox-id":"sandbox1","other":"x"}}"#;
        assert_eq!(grouping(pod, "c1"), "sandbox1");
        for alone in [
            &br#"{"ociVersion":"1.1.0"}"#[..],
            br#"{"ociVersion":"1.1.0","annotations":null}"#,
            br#"{"ociVersion":"1.1.0","annotations":{"other":"x"}}"#,
            b"",
            b"not json",
        ] {
            assert_eq!(
                grouping(alone, "c1"),
                "c1",
                "{}",
                String::from_utf8_lossy(alone)
            );
        }
    }
}
