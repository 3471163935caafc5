//! The `start` action: find the server of a container's group (its pod's
//! sandbox, else the container itself), forking one if the group has none,
//! and answer containerd with its address.
//!
//! The shim library answers in the format of containerd 2.x's task API v3,
//! which containerd 1.6 (reads a bare address) and 1.7 (refuses versions above
//! 2) cannot parse. wasmpod serves task API v2, which every containerd from
//! 1.6 on speaks, so it answers here: a bare address for the legacy protocol,
//! a `BootstrapResult` with version 2 for containerd 2.3+'s bootstrap protocol.

use std::io::{IsTerminal, Read, Write};

use anyhow::Context;
use containerd_shim::bootstrap::{BootstrapParams, BootstrapResult};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::Message;
use containerd_shim::{Flags, StartOpts};
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::bundle::{grouping, ADDRESS_FILE, SPEC_FILE};
use crate::sys::fork::{fork_server, Forked};

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
    let spec = std::fs::read(SPEC_FILE).unwrap_or_default();
    let address = opts.socket_address(&grouping(&spec, &opts.id));
    let flags = server_flags(&opts, &address);
    let mut child = match fork_server().context("fork the shim server")? {
        // This process becomes the server: no exec of the binary again.
        Some(Forked::Child) => serve_forked(&flags, &opts.ttrpc_address),
        Some(Forked::Parent { pid, stdout }) => Server::Forked {
            pid,
            stdout: Some(stdout),
        },
        None => {
            let exe = std::env::current_exe().context("locate the shim binary")?;
            let mut cmd = std::process::Command::new(&exe);
            cmd.stdout(std::process::Stdio::piped())
                .stdin(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .args(server_args(&flags));
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
    let tmp = format!("{ADDRESS_FILE}.{}", std::process::id());
    let written = waited.and_then(|()| {
        std::fs::write(&tmp, &address)
            .and_then(|()| std::fs::rename(&tmp, ADDRESS_FILE))
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
    /// Forked from `start` (see [`crate::sys::fork::fork_server`]).
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

/// The server's flags: this container's namespace, id and containerd
/// address, and the socket it serves on.
fn server_flags(opts: &StartOpts, socket: &str) -> Flags {
    Flags {
        namespace: opts.namespace.clone(),
        id: opts.id.clone(),
        address: opts.address.clone(),
        socket: socket.to_owned(),
        debug: opts.debug,
        ..Default::default()
    }
}

/// The command line a spawned server gets for `flags`.
fn server_args(flags: &Flags) -> Vec<String> {
    let mut args = Vec::new();
    for (flag, value) in [
        ("-namespace", &flags.namespace),
        ("-id", &flags.id),
        ("-address", &flags.address),
        ("-socket", &flags.socket),
    ] {
        args.push(flag.to_owned());
        args.push(value.clone());
    }
    if flags.debug {
        args.push("-debug".into());
    }
    args
}

/// The forked child of `start`: serves with `flags`, then exits.
fn serve_forked(flags: &Flags, ttrpc_address: &str) -> ! {
    if let Err(e) = crate::sys::fork::blank_last_arg("start") {
        // cosmetic: `ps` shows the server as `... start`
        eprintln!("{}: server command line: {e}", crate::RUNTIME_ID);
    }
    // containerd 2.3+ passes its TTRPC address in the bootstrap message.
    // This process has one thread, so changing the environment is safe.
    if !ttrpc_address.is_empty() {
        std::env::set_var("TTRPC_ADDRESS", ttrpc_address);
    }
    if let Err(e) = crate::server::run(flags) {
        eprintln!("{}: serve: {e:#}", crate::RUNTIME_ID);
        std::process::exit(1);
    }
    std::process::exit(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spawned_server_parses_back_the_flags_a_forked_one_gets() {
        let opts = StartOpts {
            id: "c1".into(),
            namespace: "k8s.io".into(),
            address: "/run/containerd/containerd.sock".into(),
            debug: true,
            ..Default::default()
        };
        let flags = server_flags(&opts, "unix:///run/containerd/s/abc");
        let parsed = containerd_shim::parse(&server_args(&flags)).unwrap();
        assert_eq!(parsed.id, "c1");
        assert_eq!(parsed.namespace, "k8s.io");
        assert_eq!(parsed.address, opts.address);
        assert_eq!(parsed.socket, "unix:///run/containerd/s/abc");
        assert!(parsed.debug);
        assert!(parsed.action.is_empty(), "{:?}", parsed.action);
    }
}
