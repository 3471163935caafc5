//! cgroups through `ctr`: each Wasm container's process lives in the cgroup
//! its spec names, with memory/CPU limits applied, its usage reported as
//! containerd metrics, and the cgroup removed on delete. This machine has
//! cgroup v1 (cgroupfs driver), which is what these tests check for real.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use wasmpod_e2e::{Containerd, ContainerdOptions};

use crate::common::{probe_image, run, running_pid, spawn_run, P1, P2};

fn read(path: &str) -> Result<String> {
    Ok(std::fs::read_to_string(path)
        .with_context(|| format!("read {path}"))?
        .trim()
        .to_owned())
}

/// Row `key` (e.g. `memory.usage_in_bytes`) of `ctr tasks metrics`, i.e.
/// what the shim's Stats returned.
fn metric(cd: &Containerd, id: &str, key: &str) -> Result<u64> {
    let out = cd.ctr(&["tasks", "metrics", id])?;
    let line = out
        .lines()
        .find(|l| l.split_whitespace().next() == Some(key))
        .with_context(|| format!("no {key} in metrics: {out}"))?;
    let value = line.split_whitespace().nth(1).context("value column")?;
    value.parse().with_context(|| format!("{key} {value}"))
}

/// SIGKILLs the `ctr run` of `id` (after the checks that gave `result`),
/// expects exit 137, then waits for the cgroup directories `dirs` to go.
fn kill_and_check_removed(
    cd: &Containerd,
    id: &str,
    child: &mut std::process::Child,
    result: Result<()>,
    dirs: &[std::path::PathBuf],
) -> Result<()> {
    cd.ctr(&["tasks", "kill", "-s", "SIGKILL", id])?;
    let status = child.wait()?;
    result?;
    ensure!(status.code() == Some(137), "ctr exit {status:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while let Some(dir) = dirs.iter().find(|d| d.exists()) {
        if Instant::now() > deadline {
            bail!("cgroup {} left behind", dir.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    cd.assert_no_leftovers()
}

#[test]
fn cgroup_placement_limits_stats_and_removal() -> Result<()> {
    let cd = Containerd::start(ContainerdOptions::default())?;
    let image = probe_image(&cd, P1)?;
    let id = "cg-hold";
    let limit = 128u64 << 20;
    let limit_arg = limit.to_string();
    let mut child = spawn_run(
        &cd,
        &["--memory-limit", &limit_arg, "--cpus", "0.5"],
        &image,
        id,
        &["/probe.wasm", "alloc", "40", "60"],
    )?;
    let pid = running_pid(&cd, id)?;
    let ns = cd.namespace().to_owned();
    let mem = format!("/sys/fs/cgroup/memory/{ns}/{id}");
    let cpu = format!("/sys/fs/cgroup/cpu/{ns}/{id}");
    let result = (|| -> Result<()> {
        ensure!(
            read(&format!("{mem}/memory.limit_in_bytes"))? == limit.to_string(),
            "memory limit"
        );
        ensure!(
            read(&format!("{cpu}/cpu.cfs_quota_us"))? == "50000",
            "cpu quota"
        );
        ensure!(
            read(&format!("{cpu}/cpu.cfs_period_us"))? == "100000",
            "cpu period"
        );
        let procs = read(&format!("{mem}/cgroup.procs"))?;
        ensure!(
            procs.lines().any(|p| p == pid.to_string()),
            "pid {pid} not in {mem}: {procs}"
        );
        // in the container's cgroup of every v1 hierarchy (the unified one
        // of a hybrid layout aside, and `misc`, which the cgroup library
        // does not manage)
        let own = read(&format!("/proc/{pid}/cgroup"))?;
        for line in own
            .lines()
            .filter(|l| !l.starts_with("0::") && !l.contains(":misc:"))
        {
            ensure!(line.ends_with(&format!(":/{ns}/{id}")), "{line} in {own}");
        }
        ensure!(own.contains(&format!("memory:/{ns}/{id}")), "{own}");
        // The shim server, forked from `start` without an exec, does not
        // show as `... start`.
        let server = cd.shim_server(Some(id))?;
        ensure!(
            !server.argv.iter().any(|a| a == "start"),
            "server command line: {:?}",
            server.argv
        );
        // it got there by itself before it exec'd, not by being moved
        let log = std::fs::read_to_string(cd.log_path())?;
        let line = log
            .lines()
            .find(|l| l.contains(&format!("container {id}: runner pid")))
            .context("no 'loaded' line")?;
        ensure!(
            line.contains("runner exec into cgroup") && !line.contains("join cgroup"),
            "not in its cgroup before exec: {line}"
        );

        // Stats report the limit, and what the guest allocated (40 MiB
        // touched).
        let reported = metric(&cd, id, "memory.limit_in_bytes")?;
        ensure!(reported == limit, "ctr tasks metrics: limit {reported}");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let usage = metric(&cd, id, "memory.usage_in_bytes")?;
            if usage >= 40 << 20 {
                break;
            }
            if Instant::now() > deadline {
                bail!("memory usage stayed at {usage} bytes");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    })();
    kill_and_check_removed(&cd, id, &mut child, result, &[mem.into(), cpu.into()])
}

#[test]
fn memory_bomb_fails_cleanly_inside_the_limit() -> Result<()> {
    let cd = Containerd::start(ContainerdOptions::default())?;
    for target in [P1, P2] {
        let image = probe_image(&cd, target)?;
        let id = format!("bomb-{}", &target[10..]);
        let out = run(
            &cd,
            &["--memory-limit", &(64u64 << 20).to_string()],
            &image,
            &id,
            &["/probe.wasm", "alloc", "512"],
        )?;
        // memory.grow fails inside wasmtime (store limiter) before the kernel
        // OOM killer is needed: Rust's allocator reports and aborts (a trap).
        ensure!(out.status == Some(134), "{target}: {out:?}");
        ensure!(
            out.stderr.contains("memory allocation"),
            "{target}: {out:?}"
        );

        // within the limit the same guest runs fine
        let out = run(
            &cd,
            &["--memory-limit", &(64u64 << 20).to_string()],
            &image,
            &format!("{id}-ok"),
            &["/probe.wasm", "alloc", "16"],
        )?;
        ensure!(
            out.status == Some(0) && out.stdout.contains("allocated 16 MiB"),
            "{target}: {out:?}"
        );
    }
    cd.assert_no_leftovers()
}

/// On a cgroup v2 node the runner is born in its cgroup (`clone3` with
/// `CLONE_INTO_CGROUP`) instead of being moved there. This machine is v1
/// with a v2 hierarchy beside it, so containerd runs in a mount namespace
/// where that hierarchy is `/sys/fs/cgroup` (it has no controllers here, so
/// limits are not part of this test; placement, exits and removal are).
#[test]
fn cgroup_v2_runner_is_born_in_its_cgroup() -> Result<()> {
    let Some((mount, _)) = wasmpod_e2e::containerd::cgroup2_mount() else {
        bail!("this machine has no cgroup v2 hierarchy to test on");
    };
    let cd = Containerd::start(ContainerdOptions {
        cgroup2: true,
        ..Default::default()
    })?;
    let image = probe_image(&cd, P1)?;
    let ns = cd.namespace().to_owned();

    let out = run(&cd, &[], &image, "cg2-once", &["/probe.wasm", "args", "x"])?;
    ensure!(
        out.status == Some(0) && out.stdout.ends_with("x\n"),
        "{out:?}"
    );
    let log = std::fs::read_to_string(cd.log_path())?;
    let line = log
        .lines()
        .find(|l| l.contains("container cg2-once: runner pid"))
        .context("no 'loaded' line for cg2-once")?;
    ensure!(
        line.contains("runner exec into cgroup") && !line.contains("join cgroup"),
        "not born in its cgroup: {line}"
    );

    let id = "cg2-hold";
    let mut child = spawn_run(&cd, &[], &image, id, &["/probe.wasm", "sleep", "60"])?;
    let pid = running_pid(&cd, id)?;
    let dir = mount.join(&ns).join(id);
    let result = (|| -> Result<()> {
        let own = read(&format!("/proc/{pid}/cgroup"))?;
        ensure!(
            own.lines().any(|l| l == format!("0::/{ns}/{id}")),
            "runner {pid} is not in {ns}/{id}: {own}"
        );
        let procs = std::fs::read_to_string(dir.join("cgroup.procs"))?;
        ensure!(
            procs.lines().any(|p| p == pid.to_string()),
            "pid {pid} not in {}: {procs}",
            dir.display()
        );
        Ok(())
    })();
    kill_and_check_removed(&cd, id, &mut child, result, &[dir])
}
