//! Namespaces and sockets: a Wasm container's process joins the network
//! namespace its spec names (as a pod's containers join the sandbox's), or
//! gets a new one with only loopback, and a component listening with
//! wasi:sockets is reachable inside that namespace and nowhere else.

use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use wasmpod_e2e::process::run_with_timeout;
use wasmpod_e2e::{Containerd, ContainerdOptions};

use crate::common::{probe_image, running_pid, spawn_run, P2};

/// A named network namespace (`ip netns`), deleted on drop.
struct Netns(String);

impl Netns {
    fn new(name: String) -> Result<Self> {
        let ip = |args: &[&str]| -> Result<()> {
            let out =
                run_with_timeout(Command::new("ip").args(args), None, Duration::from_secs(10))?;
            ensure!(out.status == Some(0), "ip {}: {out:?}", args.join(" "));
            Ok(())
        };
        ip(&["netns", "add", &name])?;
        let ns = Netns(name);
        ip(&["-n", &ns.0, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    fn path(&self) -> String {
        format!("/run/netns/{}", self.0)
    }

    /// `busybox nc 127.0.0.1 PORT` inside the namespace; its output.
    fn nc(&self, port: u16) -> Result<String> {
        let out = run_with_timeout(
            Command::new("ip").args([
                "netns",
                "exec",
                &self.0,
                "busybox",
                "nc",
                "127.0.0.1",
                &port.to_string(),
            ]),
            Some(b""),
            Duration::from_secs(5),
        )?;
        Ok(out.stdout)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.0])
            .status();
    }
}

fn net_inode(path: &str) -> Result<u64> {
    Ok(std::fs::metadata(path)
        .with_context(|| format!("stat {path}"))?
        .ino())
}

#[test]
fn joins_the_named_network_namespace_and_serves_there() -> Result<()> {
    let cd = Containerd::start(ContainerdOptions::default())?;
    let image = probe_image(&cd, P2)?;
    let netns = Netns::new(format!("wasmpod-e2e-{}", std::process::id()))?;
    let id = "net-join";
    let with_ns = format!("network:{}", netns.path());
    let mut child = spawn_run(
        &cd,
        &["--with-ns", &with_ns],
        &image,
        id,
        &["/probe.wasm", "serve", "8080", "1"],
    )?;
    let result = (|| -> Result<()> {
        let pid = running_pid(&cd, id)?;
        ensure!(
            net_inode(&format!("/proc/{pid}/ns/net"))? == net_inode(&netns.path())?,
            "runner {pid} is not in {}",
            netns.path()
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let got = netns.nc(8080)?;
            if got == "hello from wasm\n" {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "no answer on 127.0.0.1:8080 inside {}: {got:?}",
                    netns.path()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    })();
    if result.is_err() {
        let _ = cd.ctr(&["tasks", "kill", "-s", "SIGKILL", id]);
    }
    let status = child.wait()?;
    result?;
    ensure!(
        status.code() == Some(0),
        "served one connection, then exit 0: {status:?}"
    );
    cd.assert_no_leftovers()
}

#[test]
fn a_new_network_namespace_is_private() -> Result<()> {
    let cd = Containerd::start(ContainerdOptions::default())?;
    let image = probe_image(&cd, P2)?;
    let id = "net-new";
    // ctr's default spec asks for a new network namespace (no path).
    let mut child = spawn_run(&cd, &[], &image, id, &["/probe.wasm", "serve", "8081", "1"])?;
    let result = (|| -> Result<()> {
        let pid = running_pid(&cd, id)?;
        let theirs = net_inode(&format!("/proc/{pid}/ns/net"))?;
        ensure!(
            theirs != net_inode("/proc/self/ns/net")?,
            "runner shares the host network namespace"
        );
        // its loopback is up and private: reachable only from inside
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = run_with_timeout(
                Command::new("nsenter")
                    .arg(format!("--net=/proc/{pid}/ns/net"))
                    .args(["busybox", "nc", "127.0.0.1", "8081"]),
                Some(b""),
                Duration::from_secs(5),
            )?;
            if out.stdout == "hello from wasm\n" {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("no answer inside the container's namespace: {out:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    })();
    if result.is_err() {
        let _ = cd.ctr(&["tasks", "kill", "-s", "SIGKILL", id]);
    }
    let status = child.wait()?;
    result?;
    ensure!(status.code() == Some(0), "{status:?}");
    cd.assert_no_leftovers()
}
