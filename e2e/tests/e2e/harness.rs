//! Self-tests of the e2e harness: a private containerd running busybox
//! under runc (no wasmpod shim needed), and the cleanup guarantees the Wasm
//! tests rely on.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use wasmpod_e2e::images::busybox_image;
use wasmpod_e2e::leftovers::{self, Leftover};
use wasmpod_e2e::{Containerd, ContainerdOptions};

const BUSYBOX_REF: &str = "docker.io/wasmpod-e2e/busybox:harness";

/// Options for tests that only use runc: the shim is put on `PATH` when it
/// was built, but not required.
fn runc_only() -> ContainerdOptions {
    ContainerdOptions {
        require_shim: false,
        ..ContainerdOptions::default()
    }
}

/// Starts a containerd and imports the busybox image into it.
fn with_busybox() -> Result<Containerd> {
    let cd = Containerd::start(runc_only())?;
    let tar = busybox_image(BUSYBOX_REF)?;
    let tar = tar.to_string_lossy();
    cd.ctr(&["images", "import", "--all-platforms", &tar])?;
    Ok(cd)
}

/// Waits until `id` is listed by `ctr tasks ls` as RUNNING.
fn wait_running(cd: &Containerd, id: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let tasks = cd.ctr(&["tasks", "ls"])?;
        if tasks
            .lines()
            .any(|l| l.split_whitespace().next() == Some(id) && l.contains("RUNNING"))
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("task {id} is not running: {tasks}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Kills, deletes and removes a detached container.
fn remove_container(cd: &Containerd, id: &str) -> Result<()> {
    cd.ctr(&["tasks", "kill", "--signal", "SIGKILL", id])?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = cd.ctr_output(&["tasks", "delete", id])?;
        if out.success() {
            break;
        }
        if Instant::now() > deadline {
            bail!("ctr tasks delete {id} keeps failing: {out:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    cd.ctr(&["containers", "delete", id])?;
    Ok(())
}

#[test]
fn private_containerd_runs_busybox_with_runc() -> Result<()> {
    let cd = with_busybox()?;
    let version = cd.ctr(&["version"])?;
    ensure!(
        version.contains("Server:"),
        "unexpected ctr version: {version}"
    );
    ensure!(cd.socket().starts_with(cd.tempdir()));
    ensure!(cd.log_path().is_file());

    let images = cd.ctr(&["images", "ls", "-q"])?;
    ensure!(
        images.lines().any(|l| l == BUSYBOX_REF),
        "not imported: {images}"
    );

    let id = cd.unique_id("echo");
    let out = cd.ctr(&[
        "run",
        "--rm",
        BUSYBOX_REF,
        &id,
        "/bin/busybox",
        "echo",
        "hi",
    ])?;
    ensure!(out == "hi\n", "stdout {out:?}");

    // The task's exit status is ctr's.
    let id = cd.unique_id("exit");
    let out = cd.ctr_output(&[
        "run",
        "--rm",
        BUSYBOX_REF,
        &id,
        "/bin/sh",
        "-c",
        "echo oops >&2; exit 3",
    ])?;
    ensure!(out.status == Some(3), "{out:?}");
    ensure!(out.stderr.contains("oops"), "{out:?}");

    // Standard input reaches the task, and so does its end.
    let id = cd.unique_id("cat");
    let out = cd.ctr_with_stdin(
        &["run", "--rm", BUSYBOX_REF, &id, "/bin/cat"],
        b"ping\npong\n",
    )?;
    ensure!(out.success() && out.stdout == "ping\npong\n", "{out:?}");

    // An error names the failing command.
    let err = cd
        .ctr(&[
            "run",
            "--rm",
            BUSYBOX_REF,
            &cd.unique_id("fail"),
            "/bin/false",
        ])
        .expect_err("/bin/false must fail");
    ensure!(format!("{err:#}").contains("/bin/false"), "{err:#}");

    ensure!(cd.tracked_ids().len() == 4, "{:?}", cd.tracked_ids());
    cd.assert_no_leftovers()?;
    cd.stop()
}

#[test]
fn leftovers_are_reported_and_dropped() -> Result<()> {
    let cd = with_busybox()?;
    let tempdir = cd.tempdir().to_path_buf();
    let id = cd.unique_id("sleeper");
    cd.ctr(&["run", "-d", BUSYBOX_REF, &id, "/bin/sleep", "1000"])?;
    wait_running(&cd, &id)?;

    let found = cd.leftovers()?;
    let has = |pred: &dyn Fn(&Leftover) -> bool| found.iter().any(pred);
    ensure!(
        has(&|l| matches!(l, Leftover::Process { cmdline, .. } if cmdline.contains("sleep 1000"))),
        "container process not found: {found:#?}"
    );
    ensure!(
        has(
            &|l| matches!(l, Leftover::Process { cmdline, .. } if cmdline.contains("containerd-shim-runc-v2"))
        ),
        "shim not found: {found:#?}"
    );
    ensure!(
        has(&|l| matches!(l, Leftover::Mount(_))),
        "rootfs mount not found: {found:#?}"
    );
    ensure!(
        has(&|l| matches!(l, Leftover::TaskState(_))),
        "task state not found: {found:#?}"
    );
    ensure!(
        has(&|l| matches!(l, Leftover::Fifo(_))),
        "fifos not found: {found:#?}"
    );
    ensure!(
        has(&|l| matches!(l, Leftover::ShimSocket(_))),
        "shim socket not found: {found:#?}"
    );
    ensure!(
        has(&|l| matches!(l, Leftover::Cgroup(_))),
        "cgroup not found: {found:#?}"
    );
    let err = cd
        .assert_no_leftovers()
        .expect_err("a running container is a leftover");
    ensure!(format!("{err:#}").contains("sleep 1000"), "{err:#}");

    let pids: Vec<i32> = cd.processes()?.iter().map(|p| p.pid).collect();
    ensure!(!pids.is_empty());
    // Dropping the harness kills what containerd launched and cleans up.
    drop(cd);
    ensure!(!tempdir.exists(), "{} not removed", tempdir.display());
    for pid in pids {
        if let Some(p) = leftovers::read_process(pid) {
            ensure!(p.state == 'Z', "process {pid} survived the drop: {p:?}");
        }
    }
    ensure!(
        leftovers::leftover_cgroups(&[id.as_str()]).is_empty(),
        "cgroups of {id} left"
    );
    ensure!(leftovers::mounts_under(&tempdir)?.is_empty(), "mounts left");
    Ok(())
}

#[test]
fn restart_and_kill9_keep_tasks() -> Result<()> {
    let mut cd = with_busybox()?;
    let id = cd.unique_id("survivor");
    cd.ctr(&["run", "-d", BUSYBOX_REF, &id, "/bin/sleep", "1000"])?;
    wait_running(&cd, &id)?;
    let first = cd.pid().context("containerd not running")?;

    cd.restart()?;
    ensure!(cd.pid() != Some(first), "containerd was not restarted");
    wait_running(&cd, &id)?;

    cd.kill9()?;
    ensure!(cd.pid().is_none());
    ensure!(
        cd.ctr_output(&["version"])?.status != Some(0),
        "containerd still answers"
    );
    cd.start_again()?;
    wait_running(&cd, &id)?;

    remove_container(&cd, &id)?;
    cd.assert_no_leftovers()?;
    cd.stop()
}

#[test]
fn missing_shim_is_a_clear_error() {
    let opts = ContainerdOptions {
        shim: Some(Path::new("/nonexistent/containerd-shim-wasmpod-v1").to_path_buf()),
        ..ContainerdOptions::default()
    };
    let err = Containerd::start(opts).expect_err("a missing shim must fail");
    assert!(
        format!("{err:#}").contains("/nonexistent/containerd-shim-wasmpod-v1"),
        "{err:#}"
    );
}

#[test]
fn guests_are_built_for_both_targets() -> Result<()> {
    for target in wasmpod_e2e::guests::TARGETS {
        let wasm = wasmpod_e2e::guests::guest(target, "hello")?;
        let bytes = std::fs::read(&wasm).with_context(|| format!("reading {}", wasm.display()))?;
        ensure!(
            bytes.starts_with(b"\0asm"),
            "{} is not Wasm",
            wasm.display()
        );
        let tar = wasmpod_e2e::images::wasm_image(
            &format!("docker.io/wasmpod-e2e/hello:{target}"),
            &wasm,
            "/app.wasm",
        )?;
        ensure!(tar.is_file());
    }
    ensure!(wasmpod_e2e::guests::guest("wasm32-unknown-unknown", "hello").is_err());
    ensure!(wasmpod_e2e::guests::wat_fixture("hello").is_file());
    Ok(())
}
