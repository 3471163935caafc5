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
pub async fn start_action(flags: &Flags) -> anyhow::Result<()> {
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
    let address = start(opts).await?;
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
pub async fn start(opts: StartOpts) -> containerd_shim::Result<String> {
    let grouping = containerd_shim::asynchronous::util::read_spec(".")
        .await
        .ok()
        .and_then(|spec| {
            spec.annotations()
                .as_ref()
                .and_then(|a| a.get(SANDBOX_ID_ANNOTATION).cloned())
        })
        .unwrap_or_else(|| opts.id.clone());
    let address = containerd_shim::asynchronous::spawn(opts, &grouping, Vec::new()).await?;
    containerd_shim::asynchronous::util::write_str_to_file("address", &address).await?;
    Ok(address)
}

/// The `delete` action: the shim that served this bundle is gone (crashed or
/// killed), so clean up from what is on disk alone: kill the runner recorded
/// in the bundle (after checking the pid still is that runner) and unmount
/// the rootfs. Writes the `DeleteResponse` to stdout.
pub async fn delete_action(flags: &Flags) -> anyhow::Result<()> {
    let bundle = if flags.bundle.is_empty() {
        std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."))
    } else {
        PathBuf::from(&flags.bundle)
    };
    let mut pid = 0;
    let mut runner = false;
    if let Ok(text) = tokio::fs::read_to_string(bundle.join(PID_FILE)).await {
        if let Ok(p) = text.trim().parse::<i32>() {
            pid = p;
            if crate::is_runner(p, &flags.id) {
                runner = true;
                let _ = nix::sys::signal::kill(Pid::from_raw(p), Signal::SIGKILL);
                wait_gone(p).await;
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
            let id = flags.id.clone();
            let _ = tokio::task::spawn_blocking(move || {
                crate::cgroup::ContainerCgroup::adopt(&id, &path).map(|cg| cg.remove())
            })
            .await;
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
    if let Err(e) = rootfs::unmount(&flags.id, &target).await {
        warn!("{e}");
    }
    let _ = tokio::fs::remove_file(bundle.join(PID_FILE)).await;
    // The dead server's socket, unless another server of the group lives on it.
    if let Ok(address) = tokio::fs::read_to_string(bundle.join("address")).await {
        let path = address.trim().trim_start_matches("unix://").to_owned();
        if tokio::net::UnixStream::connect(&path).await.is_err() {
            let _ = tokio::fs::remove_file(&path).await;
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
async fn wait_gone(pid: i32) {
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
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
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
