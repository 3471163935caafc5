//! A pod's Linux containers (the pause sandbox, sidecars) go through the same
//! wasmpod shim to the node's runc. CRI marks every container of a pod with
//! `io.kubernetes.cri.container-type`; here `ctr --annotation` sets it, so the
//! runc path is exercised exactly as CRI reaches it.

use anyhow::{ensure, Result};
use wasmpod_e2e::images::busybox_image;
use wasmpod_e2e::{Containerd, ContainerdOptions};

use crate::common::{ctr_on_a_terminal, probe_image, running_pid, spawn_run, P1, RUNTIME};

const BUSYBOX: &str = "docker.io/wasmpod-e2e/busybox:pods";
const IN_POD: &str = "io.kubernetes.cri.container-type=container";

fn run(cd: &Containerd, image: &str, id: &str, args: &[&str]) -> Result<wasmpod_e2e::Output> {
    crate::common::run(cd, &["--annotation", IN_POD], image, id, args)
}

/// A private containerd with the static busybox image imported.
fn containerd_with_busybox() -> Result<Containerd> {
    let cd = Containerd::start(ContainerdOptions::default())?;
    cd.ctr(&[
        "images",
        "import",
        "--all-platforms",
        &busybox_image(BUSYBOX)?.to_string_lossy(),
    ])?;
    Ok(cd)
}

#[test]
fn linux_containers_of_a_pod_run_through_runc() -> Result<()> {
    let cd = containerd_with_busybox()?;

    let out = run(
        &cd,
        BUSYBOX,
        "side-echo",
        &["/bin/busybox", "echo", "hi from runc"],
    )?;
    ensure!(
        out.status == Some(0) && out.stdout == "hi from runc\n",
        "{out:?}"
    );

    let out = run(
        &cd,
        BUSYBOX,
        "side-exit",
        &["/bin/busybox", "sh", "-c", "echo oops >&2; exit 3"],
    )?;
    ensure!(
        out.status == Some(3) && out.stderr.contains("oops"),
        "{out:?}"
    );

    // a real Linux container: it sees its own pid namespace
    let out = run(
        &cd,
        BUSYBOX,
        "side-pid",
        &["/bin/busybox", "sh", "-c", "echo $$"],
    )?;
    ensure!(out.stdout == "1\n", "{out:?}");

    let argv = [
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--annotation",
        IN_POD,
        BUSYBOX,
        "side-cat",
        "/bin/busybox",
        "cat",
    ];
    let out = cd.ctr_with_stdin(&argv, b"ping\n")?;
    ensure!(out.status == Some(0) && out.stdout == "ping\n", "{out:?}");

    // an entrypoint that does not exist is reported, naming the container
    let out = run(&cd, BUSYBOX, "side-missing", &["/bin/nope"])?;
    ensure!(
        out.status != Some(0)
            && out.stderr.contains("side-missing")
            && out.stderr.contains("not found"),
        "{out:?}"
    );
    let _ = cd.ctr(&["containers", "rm", "side-missing"]);
    // runc's own errors reach ctr too (here: the working directory is a file)
    let out = cd.ctr_output(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--annotation",
        IN_POD,
        "--cwd",
        "/bin/busybox",
        BUSYBOX,
        "side-cwd",
        "/bin/busybox",
        "true",
    ])?;
    ensure!(
        out.status != Some(0) && out.stderr.contains("side-cwd") && out.stderr.contains("runc"),
        "{out:?}"
    );
    let _ = cd.ctr(&["containers", "rm", "side-cwd"]);

    // killed with SIGKILL while running
    let mut child = spawn_run(
        &cd,
        &["--annotation", IN_POD],
        BUSYBOX,
        "side-sleep",
        &["/bin/busybox", "sleep", "300"],
    )?;
    running_pid(&cd, "side-sleep")?;
    cd.ctr(&["tasks", "kill", "-s", "SIGKILL", "side-sleep"])?;
    let status = child.wait()?;
    ensure!(status.code() == Some(137), "{status:?}");

    // a Wasm container in the same kind of pod still runs under wasmtime
    let image = probe_image(&cd, P1)?;
    let out = run(&cd, &image, "pod-wasm", &["/probe.wasm", "args", "x"])?;
    ensure!(
        out.status == Some(0) && out.stdout == "/probe.wasm\nargs\nx\n",
        "{out:?}"
    );
    cd.assert_no_leftovers()
}

#[test]
fn terminal_for_a_pods_linux_container_and_its_exec() -> Result<()> {
    let cd = containerd_with_busybox()?;
    // the container's stdio is a terminal, of the client's size (ResizePty)
    let id = cd.unique_id("tty");
    let out = ctr_on_a_terminal(
        &cd,
        &[
            "run",
            "-t",
            "--rm",
            "--runtime",
            RUNTIME,
            "--annotation",
            IN_POD,
            BUSYBOX,
            &id,
            "/bin/sh",
            "-c",
            "sleep 1; tty; stty size; echo done",
        ],
        33,
        77,
    )?;
    ensure!(
        out.0 == Some(0)
            && out.1.contains("/dev/pts/0\n")
            && out.1.contains("33 77\n")
            && out.1.contains("done\n"),
        "container on a terminal: {out:?}"
    );

    // exec -t into a running pod container
    let id = cd.unique_id("tty-exec");
    let mut long = cd.ctr_spawn(&[
        "run",
        "--runtime",
        RUNTIME,
        "--annotation",
        IN_POD,
        BUSYBOX,
        &id,
        "/bin/sleep",
        "60",
    ])?;
    running_pid(&cd, &id)?;
    let out = ctr_on_a_terminal(
        &cd,
        &[
            "tasks",
            "exec",
            "-t",
            "--exec-id",
            "term",
            &id,
            "/bin/sh",
            "-c",
            "sleep 1; tty; stty size; exit 4",
        ],
        20,
        90,
    );
    cd.ctr(&["tasks", "kill", "-s", "SIGKILL", &id])?;
    let _ = long.wait();
    cd.ctr(&["containers", "rm", &id])?;
    let out = out?;
    ensure!(
        out.0 == Some(4) && out.1.contains("/dev/pts/") && out.1.contains("20 90\n"),
        "exec -t: {out:?}"
    );
    cd.assert_no_leftovers()
}
