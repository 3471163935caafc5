//! `kubectl exec` through the shim, driven with `ctr tasks exec`: into a Wasm
//! container (another Wasm program from its rootfs, in its cgroup and
//! namespaces, with its env) and into a pod's Linux container (runc exec).

use anyhow::{ensure, Result};
use wasmpod_e2e::images::busybox_image;
use wasmpod_e2e::{Containerd, ContainerdOptions};

use crate::common::{probe_image, running_pid, P1, P2, RUNTIME};

fn exec(cd: &Containerd, id: &str, exec_id: &str, args: &[&str]) -> Result<wasmpod_e2e::Output> {
    let mut argv = vec!["tasks", "exec", "--exec-id", exec_id, id];
    argv.extend_from_slice(args);
    cd.ctr_output(&argv)
}

#[test]
fn exec_into_wasm_containers() -> Result<()> {
    let cd = Containerd::start(ContainerdOptions::default())?;
    for target in [P1, P2] {
        let t = &target[10..];
        let image = probe_image(&cd, target)?;
        let id = format!("exec-{t}");
        cd.ctr(&[
            "run",
            "-d",
            "--runtime",
            RUNTIME,
            "--env",
            "GREETING=from the container",
            &image,
            &id,
            "/probe.wasm",
            "spin",
        ])?;
        let init = running_pid(&cd, &id)?;

        let out = exec(&cd, &id, "e-args", &["/probe.wasm", "args", "exec'd"])?;
        ensure!(
            out.status == Some(0) && out.stdout == "/probe.wasm\nargs\nexec'd\n",
            "{t}: {out:?}"
        );
        let out = exec(&cd, &id, "e-env", &["/probe.wasm", "env"])?;
        ensure!(
            out.stdout
                .lines()
                .any(|l| l == "GREETING=from the container"),
            "{t}: {out:?}"
        );
        let out = exec(
            &cd,
            &id,
            "e-file",
            &["/probe.wasm", "cat", "/data/greeting.txt"],
        )?;
        ensure!(out.stdout == "hello from the image\n", "{t}: {out:?}");
        let out = exec(&cd, &id, "e-exit", &["/probe.wasm", "exit", "5"])?;
        ensure!(
            out.status == Some(if target == P1 { 5 } else { 1 }),
            "{t}: {out:?}"
        );
        let out = cd.ctr_with_stdin(
            &[
                "tasks",
                "exec",
                "--exec-id",
                "e-stdin",
                &id,
                "/probe.wasm",
                "echo",
            ],
            b"typed\n",
        )?;
        ensure!(
            out.status == Some(0) && out.stdout == "typed\n",
            "{t}: {out:?}"
        );

        // a program that is not Wasm gets a clear error
        let out = exec(&cd, &id, "e-bad", &["/data/greeting.txt"])?;
        ensure!(
            out.status != Some(0) && out.stderr.contains("not WebAssembly"),
            "{t}: {out:?}"
        );

        // the exec'd runner shares the container's network namespace and cgroup
        let mut child = cd.ctr_spawn(&[
            "tasks",
            "exec",
            "--exec-id",
            "e-sleep",
            &id,
            "/probe.wasm",
            "sleep",
            "30",
        ])?;
        // the exec'd runner: its command line names `container/exec-id`
        let wanted = format!("{id}/e-sleep");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let exec_pid: u32 = loop {
            let found = std::fs::read_dir("/proc")?
                .filter_map(|e| e.ok())
                .find_map(|e| {
                    let pid: u32 = e.file_name().to_str()?.parse().ok()?;
                    let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
                    cmd.split(|b| *b == 0)
                        .any(|a| a == wanted.as_bytes())
                        .then_some(pid)
                });
            if let Some(pid) = found {
                break pid;
            }
            ensure!(
                std::time::Instant::now() < deadline,
                "{t}: exec runner never appeared"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        let ps = cd.ctr(&["tasks", "ps", &id])?;
        ensure!(
            ps.lines()
                .any(|l| l.split_whitespace().next() == Some(&exec_pid.to_string())),
            "{t}: ctr tasks ps does not list exec pid {exec_pid}: {ps}"
        );
        let ns = |p: u32| std::fs::read_link(format!("/proc/{p}/ns/net"));
        ensure!(
            ns(exec_pid)? == ns(init)?,
            "{t}: exec not in the container's network namespace"
        );
        let cg = |p: u32| -> Result<String> {
            Ok(std::fs::read_to_string(format!("/proc/{p}/cgroup"))?
                .lines()
                .find(|l| l.contains(":memory:"))
                .unwrap_or_default()
                .to_owned())
        };
        ensure!(
            cg(exec_pid)? == cg(init)?,
            "{t}: exec not in the container's cgroup"
        );
        cd.ctr(&[
            "tasks",
            "kill",
            "--exec-id",
            "e-sleep",
            "-s",
            "SIGKILL",
            &id,
        ])?;
        let status = child.wait()?;
        ensure!(status.code() == Some(137), "{t}: {status:?}");

        cd.ctr(&["tasks", "kill", "-s", "SIGKILL", &id])?;
        let _ = cd.ctr_output(&["tasks", "rm", "-f", &id])?;
        cd.ctr(&["containers", "rm", &id])?;
    }
    cd.assert_no_leftovers()
}

#[test]
fn exec_into_a_pods_linux_container() -> Result<()> {
    let cd = Containerd::start(ContainerdOptions::default())?;
    let bb = "docker.io/wasmpod-e2e/busybox:exec";
    cd.ctr(&[
        "images",
        "import",
        "--all-platforms",
        &busybox_image(bb)?.to_string_lossy(),
    ])?;
    let id = "side-exec";
    cd.ctr(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        "--annotation",
        "io.kubernetes.cri.container-type=container",
        bb,
        id,
        "/bin/busybox",
        "sleep",
        "300",
    ])?;
    running_pid(&cd, id)?;
    let out = exec(
        &cd,
        id,
        "x1",
        &["/bin/busybox", "sh", "-c", "echo in the sidecar; exit 4"],
    )?;
    ensure!(
        out.status == Some(4) && out.stdout == "in the sidecar\n",
        "{out:?}"
    );
    let out = cd.ctr_with_stdin(
        &[
            "tasks",
            "exec",
            "--exec-id",
            "x2",
            id,
            "/bin/busybox",
            "cat",
        ],
        b"to the sidecar\n",
    )?;
    ensure!(
        out.status == Some(0) && out.stdout == "to the sidecar\n",
        "{out:?}"
    );
    cd.ctr(&["tasks", "kill", "-s", "SIGKILL", id])?;
    let _ = cd.ctr_output(&["tasks", "rm", "-f", id])?;
    cd.ctr(&["containers", "rm", id])?;
    cd.assert_no_leftovers()
}
