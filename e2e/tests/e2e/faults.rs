//! containerd itself fails under running Wasm pods: stopped with SIGTERM and
//! killed with SIGKILL, then started again, as a node's containerd is on an
//! upgrade or a crash. Driven over CRI, as kubelet drives it.

use std::collections::BTreeSet;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use wasmpod_e2e::cri::{api, container_config, remove_pod_cgroup, Cri, Pod, HANDLER};
use wasmpod_e2e::{Containerd, ContainerdOptions};

use crate::common::{blocked_in_pipe_write, cri_probe_image, P1};

/// Nanoseconds since the epoch (CRI's time unit).
fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// The runner process of container `id` (argv: shim, runner flag, id).
fn runner_pid(cd: &Containerd, id: &str) -> Result<Option<i32>> {
    Ok(cd
        .processes()?
        .into_iter()
        .find(|p| p.argv.len() == 3 && p.argv[2] == id && p.argv[1].starts_with("__wasmpod"))
        .map(|p| p.pid))
}

/// The `tick N` numbers in the CRI log of `config`, in log order.
fn ticks(log_dir: &str, config: &api::ContainerConfig) -> Result<Vec<u64>> {
    let path = std::path::Path::new(log_dir).join(&config.log_path);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("read CRI log {}", path.display()))?;
    Ok(wasmpod_e2e::cri::parse_cri_log(&text)
        .into_iter()
        .filter_map(|(_, line)| line.strip_prefix("tick ")?.split(' ').next()?.parse().ok())
        .collect())
}

/// Waits until the ticker's log goes past tick `past`; checks that its
/// numbering has no gap and no repeat. Returns the last tick.
fn ticks_flow(log_dir: &str, config: &api::ContainerConfig, past: u64) -> Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let seen = ticks(log_dir, config)?;
        let last = seen.last().copied().unwrap_or(0);
        if last > past + 5 {
            let expected: Vec<u64> = (1..=last).collect();
            ensure!(
                seen == expected,
                "the ticker's log lost or repeated lines: {} lines up to tick {last}",
                seen.len()
            );
            return Ok(last);
        }
        if Instant::now() >= deadline {
            bail!("the ticker's log stopped at tick {last} (waited for {past})");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A CRI client of the (re)started containerd once its CRI plugin serves
/// requests again (it answers "not initialized" while it recovers).
fn cri_again(cd: &Containerd, sandbox: &str) -> Result<Cri> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let attempt = cd.cri().and_then(|cri| {
            cri.list_containers(sandbox)?;
            Ok(cri)
        });
        match attempt {
            Ok(cri) => return Ok(cri),
            Err(e) if Instant::now() >= deadline => {
                return Err(e.context("CRI did not come back after 30 s"))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn state(cri: &Cri, id: &str) -> Result<api::ContainerState> {
    Ok(
        api::ContainerState::try_from(cri.container_status(id)?.state)
            .unwrap_or(api::ContainerState::ContainerUnknown),
    )
}

#[test]
fn wasm_pods_survive_containerd_restarts_and_crashes() -> Result<()> {
    let mut cd = Containerd::start(ContainerdOptions {
        cri: true,
        ..Default::default()
    })?;
    let probe = cri_probe_image(&cd, P1)?;
    let ticker = container_config("ticker", &probe, &[], &["tick", "20", "0"]);
    // Exits 7 six seconds after its start: after the SIGTERM restart.
    let late = container_config("late", &probe, &[], &["tick", "100", "60", "7"]);
    // Exits 5 two seconds after its start: while containerd is dead.
    let early = container_config("early", &probe, &[], &["tick", "100", "20", "5"]);
    // Killed from outside while containerd is dead.
    let victim = container_config("victim", &probe, &[], &["spin"]);

    let (sandbox, pod_config, ids) = {
        let cri = cd.cri()?;
        let mut pod = Pod::run(&cd, &cri, Pod::config(&cd, "faults"), HANDLER)?;
        let ids = [
            pod.start(&ticker)?,
            pod.start(&late)?,
            pod.create(&early)?,
            pod.create(&victim)?,
        ];
        (pod.id.clone(), pod.config.clone(), ids)
    };
    let [ticker_id, late_id, early_id, victim_id] = &ids;
    let log_dir = pod_config.log_directory.clone();
    let before = ticks_flow(&log_dir, &ticker, 0)?;

    // SIGTERM: containerd shuts down, the shim and its tasks carry on.
    let restarted_at = now_ns();
    cd.restart()?;
    let cri = cri_again(&cd, &sandbox)?;
    ensure!(
        state(&cri, ticker_id)? == api::ContainerState::ContainerRunning,
        "the ticker did not survive the restart"
    );
    let after_term = ticks_flow(&log_dir, &ticker, before)?;
    let status = cri.wait_exited(late_id, Duration::from_secs(20))?;
    ensure!(
        status.exit_code == 7 && status.finished_at > restarted_at,
        "the later exit was misreported: {status:?}"
    );

    // SIGKILL: one task exits on its own and one is killed while nobody
    // listens; the ticker's stdout fills and waits.
    cri.start_container(early_id)?;
    cri.start_container(victim_id)?;
    let victim_pid = {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(pid) = runner_pid(&cd, victim_id)? {
                break pid;
            }
            ensure!(Instant::now() < deadline, "no runner for {victim_id}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let early_pid = runner_pid(&cd, early_id)?.context("no runner for the early exit")?;
    drop(cri);
    let killed_at = now_ns();
    cd.kill9()?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim_pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .with_context(|| format!("SIGKILL of runner {victim_pid}"))?;
    // Nobody reads the ticker's output now: it fills the pipe and waits.
    let ticker_pid = runner_pid(&cd, ticker_id)?.context("the ticker's runner is gone")?;
    let deadline = Instant::now() + Duration::from_secs(15);
    while !blocked_in_pipe_write(ticker_pid as u32) {
        ensure!(
            Instant::now() < deadline,
            "the ticker never blocked on its stdout while containerd was dead"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Gone from /proc, not only a zombie without a command line: the shim
    // has reaped it, and so recorded its exit.
    while std::path::Path::new(&format!("/proc/{early_pid}")).exists() {
        ensure!(
            Instant::now() < deadline,
            "{early_id} never exited on its own"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let back_at = now_ns();
    cd.start_again()?;
    let cri = cri_again(&cd, &sandbox)?;

    let status = cri.wait_exited(early_id, Duration::from_secs(20))?;
    ensure!(
        status.exit_code == 5 && status.finished_at > killed_at && status.finished_at < back_at,
        "the exit while containerd was down was misreported: {status:?} \
         (killed at {killed_at}, back at {back_at})"
    );
    let status = cri.wait_exited(victim_id, Duration::from_secs(20))?;
    ensure!(
        status.exit_code == 137 && status.finished_at < back_at,
        "the SIGKILLed guest: {status:?}"
    );
    ensure!(
        state(&cri, ticker_id)? == api::ContainerState::ContainerRunning,
        "the ticker did not survive containerd's SIGKILL"
    );
    ticks_flow(&log_dir, &ticker, after_term)?;

    // Tear down as kubelet does; the shim goes with the pod.
    cri.stop_container(ticker_id, 5)?;
    let status = cri.wait_exited(ticker_id, Duration::from_secs(10))?;
    ensure!(status.exit_code == 143, "stopped ticker: {status:?}");
    let exited: BTreeSet<_> = cri
        .list_containers(&sandbox)?
        .into_iter()
        .map(|c| c.state)
        .collect();
    ensure!(
        exited == BTreeSet::from([api::ContainerState::ContainerExited as i32]),
        "containers not all exited: {exited:?}"
    );
    cri.stop_pod_sandbox(&sandbox)?;
    cri.remove_pod_sandbox(&sandbox)?;
    let parent = pod_config
        .linux
        .as_ref()
        .map(|l| l.cgroup_parent.clone())
        .unwrap_or_default();
    remove_pod_cgroup(&parent)?;
    cd.assert_no_leftovers()
}
