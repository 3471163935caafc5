//! The native pod sandbox: a wasmpod pod's sandbox container is a runner
//! of the shim's, not runc running the pause image. It holds the pod's
//! namespaces (network from CNI, IPC, UTS with the pod's hostname, the PID
//! namespace when the pod shares one), is in the pod's cgroup, reaps the
//! orphans of a shared PID namespace, exits 0 on SIGTERM, and everything
//! CRI reports about the pod stays right (PodSandboxStats included).
//! `wasmpod.io/pod-sandbox: runc` brings runc's pause back.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use wasmpod_e2e::cri::{api, container_config, with_shared_pids, Pod, HANDLER};
use wasmpod_e2e::images::busybox_image;
use wasmpod_e2e::{Containerd, ContainerdOptions};

use crate::common::{cri_probe_image, P1};

const BUSYBOX: &str = "docker.io/wasmpod-e2e/busybox:pod-sandbox";

fn ns(pid: i32, kind: &str) -> Result<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}"))
        .with_context(|| format!("/proc/{pid}/ns/{kind}"))
}

fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// The children of `pid`.
fn children(pid: i32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .filter(|c| {
                    std::fs::read_to_string(format!("/proc/{c}/status")).is_ok_and(|s| {
                        s.lines().any(|l| {
                            l.strip_prefix("PPid:")
                                .is_some_and(|v| v.trim() == pid.to_string())
                        })
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The children of `pid` that are zombies.
fn zombie_children(pid: i32) -> Vec<i32> {
    let mut found = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return found;
    };
    for e in dir.flatten() {
        let Some(child) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(format!("/proc/{child}/status")) else {
            continue;
        };
        let field = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .map(|v| v.trim().to_owned())
        };
        if field("PPid:").as_deref() == Some(&pid.to_string())
            && field("State:").is_some_and(|s| s.starts_with('Z'))
        {
            found.push(child);
        }
    }
    found
}

#[test]
fn native_pod_sandbox_holds_the_pods_namespaces_without_runc() -> Result<()> {
    let cd = Containerd::start(ContainerdOptions {
        cri: true,
        ..Default::default()
    })?;
    let cri = cd.cri()?;
    let probe = cri_probe_image(&cd, P1)?;
    cd.cri_import(&busybox_image(BUSYBOX)?, BUSYBOX)?;

    let config = Pod::share_process_namespace(Pod::config(&cd, "native-sandbox"));
    let mut pod = Pod::run(&cd, &cri, config, HANDLER)?;
    let sandbox = pod.sandbox_pid()?;
    // the sandbox task is a runner of the shim, pid 1 of the pod's PID
    // namespace, in the pod's cgroup; no pause binary, no runc
    let exe = std::fs::read_link(format!("/proc/{sandbox}/exe"))?;
    ensure!(
        cmdline(sandbox).contains(&format!("__wasmpod_runner {}", pod.id))
            && exe
                .file_name()
                .is_some_and(|n| n == wasmpod_e2e::SHIM_BINARY),
        "sandbox pid {sandbox} is {exe:?}: {}",
        cmdline(sandbox)
    );
    let status = std::fs::read_to_string(format!("/proc/{sandbox}/status"))?;
    ensure!(
        status
            .lines()
            .any(|l| l.starts_with("NSpid:") && l.ends_with("\t1")),
        "the sandbox is not pid 1 of the pod's PID namespace: {status}"
    );
    let cgroup = std::fs::read_to_string(format!("/proc/{sandbox}/cgroup"))?;
    ensure!(
        cgroup.contains(&pod.cgroup_parent()),
        "sandbox not in the pod cgroup {}: {cgroup}",
        pod.cgroup_parent()
    );
    let netns = pod.netns_path()?.context("no netns")?;
    let inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&netns)?);
    ensure!(
        ns(sandbox, "net")? == std::path::Path::new(&format!("net:[{inode}]")),
        "the sandbox is not in the pod's network namespace {}: {:?}",
        netns.display(),
        ns(sandbox, "net")?
    );
    // CRI's view of the pod
    let st = cri.pod_sandbox_status(&pod.id)?;
    let s = st.status.context("no sandbox status")?;
    ensure!(
        s.state == api::PodSandboxState::SandboxReady as i32
            && s.created_at > 0
            && s.network.as_ref().is_some_and(|n| !n.ip.is_empty()),
        "PodSandboxStatus: {s:?}"
    );

    // a Wasm container and a Linux sidecar join the sandbox's namespaces
    let app = with_shared_pids(container_config("app", &probe, &[], &["sleep", "300"]));
    let app_id = pod.start(&app)?;
    let side = with_shared_pids(container_config(
        "side",
        BUSYBOX,
        &["/bin/sh", "-c", "sleep 300"],
        &[],
    ));
    let side_id = pod.start(&side)?;
    let out = cri.exec_sync(&side_id, &["/bin/busybox", "hostname"], 20)?;
    ensure!(
        out.exit_code == 0 && out.stdout.trim() == "native-sandbox",
        "the sidecar's hostname: {out:?}"
    );
    let out = cri.exec_sync(&side_id, &["/bin/busybox", "ps", "-o", "pid,args"], 20)?;
    ensure!(
        out.exit_code == 0
            && out
                .stdout
                .lines()
                .any(|l| l.trim_start().starts_with("1 ") && l.contains("__wasmpod_runner"))
            && out.stdout.contains(&format!("__wasmpod_runner {app_id}")),
        "the sidecar's ps (pid 1 the sandbox, the Wasm container listed): {out:?}"
    );
    // orphans are reparented to the sandbox and reaped by it
    let out = cri.exec_sync(
        &side_id,
        // not holding the exec's output, which ExecSync drains to the end
        &[
            "/bin/sh",
            "-c",
            "for i in 1 2 3; do (sleep 3 </dev/null >/dev/null 2>&1 &) ; done",
        ],
        20,
    )?;
    ensure!(out.exit_code == 0, "orphans: {out:?}");
    let orphans = children(sandbox);
    ensure!(
        orphans.len() >= 3,
        "the orphans were not reparented to the sandbox: {orphans:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while orphans
        .iter()
        .any(|p| std::path::Path::new(&format!("/proc/{p}")).exists())
    {
        ensure!(
            Instant::now() < deadline,
            "orphans {orphans:?} not reaped (zombies {:?})",
            zombie_children(sandbox)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // as pid 1, it ignores what pause ignores (a HUP or USR1 from inside)
    let out = cri.exec_sync(
        &side_id,
        &["/bin/sh", "-c", "kill -HUP 1; kill -USR1 1"],
        20,
    )?;
    std::thread::sleep(Duration::from_millis(300));
    ensure!(
        out.exit_code == 0 && cmdline(sandbox).contains("__wasmpod_runner"),
        "the sandbox did not survive SIGHUP/SIGUSR1 from the pod: {out:?}"
    );
    for kind in ["net", "ipc", "uts", "pid"] {
        let want = ns(sandbox, kind)?;
        let side_pid = i32::try_from(
            cri.container_info(&side_id)?["pid"]
                .as_i64()
                .context("sidecar pid")?,
        )?;
        ensure!(
            ns(side_pid, kind)? == want,
            "the sidecar is not in the sandbox's {kind} namespace"
        );
    }
    let stats = cri.container_stats(&app_id)?;
    ensure!(
        stats.memory.is_some(),
        "no stats for the Wasm container: {stats:?}"
    );

    // SIGTERM ends it (as pause, with status 0), and the pod is not ready
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(sandbox),
        nix::sys::signal::Signal::SIGTERM,
    )?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = cri.pod_sandbox_status(&pod.id)?.status.context("status")?;
        if s.state == api::PodSandboxState::SandboxNotready as i32 {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "still ready after SIGTERM: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let exit = sandbox_exit_status(&cd, &pod.id)?;
    ensure!(exit == 0, "the sandbox exited {exit} on SIGTERM");
    // StopPodSandbox and RemovePodSandbox, each twice: no error
    let id = pod.id.clone();
    cri.stop_pod_sandbox(&id)?;
    cri.stop_pod_sandbox(&id)?;
    pod.remove()?;
    cri.remove_pod_sandbox(&id)?;
    cd.assert_no_leftovers()
}

/// The exit status of the sandbox task `id`, as the shim logged it to
/// containerd's log (`container ID: pid N exited with CODE`).
fn sandbox_exit_status(cd: &Containerd, id: &str) -> Result<i32> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let prefix = format!("container {id}: pid ");
    loop {
        let log = std::fs::read_to_string(cd.log_path())?;
        let code = log.lines().find_map(|l| {
            let rest = l.split(&prefix).nth(1)?;
            let code = rest.split(" exited with ").nth(1)?;
            code.split(|c: char| c != '-' && !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        });
        if let Some(code) = code {
            return Ok(code);
        }
        ensure!(
            Instant::now() < deadline,
            "no exit of {id} in containerd's log"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn pod_sandbox_annotation_brings_runc_pause_back_and_refuses_unknown_values() -> Result<()> {
    let cd = Containerd::start(ContainerdOptions {
        cri: true,
        ..Default::default()
    })?;
    let cri = cd.cri()?;
    let mut config = Pod::config(&cd, "runc-sandbox");
    config
        .annotations
        .insert("wasmpod.io/pod-sandbox".into(), "runc".into());
    let pod = Pod::run(&cd, &cri, config, HANDLER)?;
    let sandbox = pod.sandbox_pid()?;
    let exe = std::fs::read_link(format!("/proc/{sandbox}/exe"))?;
    ensure!(
        exe.file_name().is_some_and(|n| n == "pause"),
        "wasmpod.io/pod-sandbox: runc did not run the pause image: {exe:?} {}",
        cmdline(sandbox)
    );
    pod.remove()?;

    // without shareProcessNamespace: the native sandbox is pid 1 of a PID
    // namespace of its own
    let pod = Pod::run(&cd, &cri, Pod::config(&cd, "own-pids"), HANDLER)?;
    let sandbox = pod.sandbox_pid()?;
    let status = std::fs::read_to_string(format!("/proc/{sandbox}/status"))?;
    ensure!(
        cmdline(sandbox).contains("__wasmpod_runner")
            && status
                .lines()
                .any(|l| l.starts_with("NSpid:") && l.ends_with("\t1")),
        "sandbox {sandbox}: {} {status}",
        cmdline(sandbox)
    );
    pod.remove()?;

    let mut config = Pod::config(&cd, "bad-sandbox");
    config
        .annotations
        .insert("wasmpod.io/pod-sandbox".into(), "kata".into());
    let err = Pod::run(&cd, &cri, config, HANDLER)
        .err()
        .context("an unknown wasmpod.io/pod-sandbox value was accepted")?;
    ensure!(
        format!("{err:#}").contains("expected native (the default) or runc"),
        "RunPodSandbox error: {err:#}"
    );
    cd.assert_no_leftovers()
}

/// What `PodSandboxStats` reported, as a list of the parts present.
fn stats_parts(s: &api::PodSandboxStats) -> Vec<&'static str> {
    let Some(l) = &s.linux else {
        return vec![];
    };
    let mut parts = vec![];
    if l.cpu
        .as_ref()
        .is_some_and(|c| c.usage_core_nano_seconds.is_some())
    {
        parts.push("cpu");
    }
    if l.memory
        .as_ref()
        .is_some_and(|m| m.working_set_bytes.is_some())
    {
        parts.push("memory");
    }
    if l.network.as_ref().is_some_and(|n| {
        n.default_interface
            .as_ref()
            .is_some_and(|i| !i.name.is_empty())
    }) {
        parts.push("network");
    }
    if l.process
        .as_ref()
        .is_some_and(|p| p.process_count.is_some())
    {
        parts.push("process");
    }
    if !l.containers.is_empty() {
        parts.push("containers");
    }
    parts
}

/// kubelet's pod stats (`/stats/summary`, `kubectl top pod`) read
/// PodSandboxStats: a native sandbox's pod reports every part a runc pod's
/// does, with its Wasm container among the containers.
#[test]
fn pod_sandbox_stats_of_a_native_pod_cover_what_a_runc_pods_do() -> Result<()> {
    let cd = Containerd::start(ContainerdOptions {
        cri: true,
        ..Default::default()
    })?;
    let cri = cd.cri()?;
    let probe = cri_probe_image(&cd, P1)?;
    cd.cri_import(&busybox_image(BUSYBOX)?, BUSYBOX)?;
    let mut wasm = Pod::run(&cd, &cri, Pod::config(&cd, "stats-wasm"), HANDLER)?;
    let app = wasm.start(&container_config("app", &probe, &[], &["sleep", "300"]))?;
    let mut linux = Pod::run(&cd, &cri, Pod::config(&cd, "stats-runc"), "")?;
    linux.start(&container_config(
        "app",
        BUSYBOX,
        &["/bin/busybox", "sleep", "300"],
        &[],
    ))?;
    let runc = cri.pod_sandbox_stats(&linux.id);
    let ours = cri.pod_sandbox_stats(&wasm.id);
    match (&runc, &ours) {
        (Err(r), Err(o)) => {
            // a containerd without PodSandboxStats: the same gRPC code for both
            let code = |e: &anyhow::Error| e.to_string().split(':').nth(1).map(str::to_owned);
            ensure!(code(r) == code(o), "runc pod: {r:#}; wasm pod: {o:#}");
            eprintln!("PodSandboxStats unsupported here: {r:#}");
        }
        (Ok(r), Ok(o)) => {
            let (want, got) = (stats_parts(r), stats_parts(o));
            ensure!(
                want.iter().all(|p| got.contains(p)),
                "the runc pod reports {want:?}, the native sandbox's pod only {got:?}: {o:?}"
            );
            let l = o.linux.as_ref().context("no Linux stats")?;
            if let Some(ws) = l.memory.as_ref().and_then(|m| m.working_set_bytes.as_ref()) {
                ensure!(ws.value > 0, "pod working set 0: {l:?}");
            }
            // the count containerd takes (the sandbox task's pids) is the
            // same for both kinds of sandbox
            let count = |s: &api::PodSandboxStats| {
                s.linux
                    .as_ref()
                    .and_then(|l| l.process.as_ref())
                    .and_then(|p| p.process_count.as_ref())
                    .map(|c| c.value)
            };
            ensure!(
                count(o) >= count(r) && count(o).is_some_and(|n| n >= 1),
                "process count {:?} (runc pod {:?})",
                count(o),
                count(r)
            );
            if !l.containers.is_empty() {
                ensure!(
                    l.containers
                        .iter()
                        .any(|c| c.attributes.as_ref().is_some_and(|a| a.id == app)),
                    "the Wasm container {app} is not among the pod's: {:?}",
                    l.containers
                );
            }
        }
        _ => anyhow::bail!("only one pod has PodSandboxStats: runc {runc:?}, wasm {ours:?}"),
    }
    wasm.remove()?;
    linux.remove()?;
    cd.assert_no_leftovers()
}
