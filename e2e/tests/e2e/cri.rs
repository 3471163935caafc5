//! The Kubernetes path: pods through containerd's CRI plugin, driven over
//! CRI exactly as kubelet drives them (runtime handler `wasmpod`, registered
//! by the repo's own config snippet). Each test ends with RemovePodSandbox
//! and the leftovers check: no process, mount, cgroup, network namespace,
//! veth or shim left.

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use wasmpod_e2e::cri::{api, container_config, with_memory_limit, with_shared_pids, Pod, HANDLER};
use wasmpod_e2e::images::busybox_image;
use wasmpod_e2e::{Containerd, ContainerdOptions};

use crate::common::{cri_probe_image, P1, P2};

const BUSYBOX: &str = "docker.io/wasmpod-e2e/busybox:cri";

fn cri_containerd() -> Result<Containerd> {
    Containerd::start(ContainerdOptions {
        cri: true,
        ..Default::default()
    })
}

/// Imports the static busybox image into CRI's namespace.
fn busybox(cd: &Containerd) -> Result<&'static str> {
    cd.cri_import(&busybox_image(BUSYBOX)?, BUSYBOX)?;
    Ok(BUSYBOX)
}

/// Waits until the CRI log of `config` in `pod` has a line containing
/// `needle`; returns all lines.
fn wait_log(pod: &Pod, config: &api::ContainerConfig, needle: &str) -> Result<Vec<String>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let lines: Vec<String> = pod
            .log_lines(config)
            .unwrap_or_default()
            .into_iter()
            .map(|(_, l)| l)
            .collect();
        if lines.iter().any(|l| l.contains(needle)) {
            return Ok(lines);
        }
        if Instant::now() >= deadline {
            bail!(
                "no {needle:?} in the CRI log {} after 30 s: {lines:?}",
                pod.log_path(config).display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The shim processes (not runners) serving this containerd.
fn shim_servers(cd: &Containerd) -> Result<Vec<i32>> {
    Ok(cd
        .processes()?
        .into_iter()
        .filter(|p| {
            p.argv
                .first()
                .is_some_and(|a| a.ends_with(wasmpod_e2e::SHIM_BINARY))
                && p.argv.iter().any(|a| a == "-address")
        })
        .map(|p| p.pid)
        .collect())
}

/// The cgroup v1 directory of `controller` for a container of `pod`.
fn container_cgroup_file(pod: &Pod, container_id: &str, file: &str) -> Result<String> {
    let rel = format!(
        "{}/{container_id}",
        pod.cgroup_parent().trim_start_matches('/')
    );
    for ctl in std::fs::read_dir("/sys/fs/cgroup")?.flatten() {
        let path = ctl.path().join(&rel).join(file);
        if let Ok(text) = std::fs::read_to_string(&path) {
            return Ok(text.trim().to_string());
        }
    }
    // cgroup v2: one hierarchy
    let path = std::path::Path::new("/sys/fs/cgroup").join(&rel).join(file);
    std::fs::read_to_string(&path)
        .map(|t| t.trim().to_string())
        .with_context(|| format!("no {file} for container {container_id} under any controller"))
}

#[test]
fn wasm_pod_beside_a_runc_pod() -> Result<()> {
    let cd = cri_containerd()?;
    let cri = cd.cri()?;
    let probe = cri_probe_image(&cd, P1)?;
    let bb = busybox(&cd)?;

    let mut wasm = Pod::run(&cd, &cri, Pod::config(&cd, "wasm-pod"), HANDLER)?;
    let mut plain = Pod::run(&cd, &cri, Pod::config(&cd, "runc-pod"), "")?;
    ensure!(wasm.ip()? != plain.ip()?, "both pods got the same IP");
    ensure!(
        wasm.netns_path()?.is_some_and(|p| p.exists()),
        "no network namespace for the Wasm pod"
    );

    // the runc pod keeps running while the Wasm pod does its work
    let sh = container_config(
        "sh",
        bb,
        &["/bin/sh", "-c", "echo from runc; exec sleep 300"],
        &[],
    );
    let sh_id = plain.start(&sh)?;
    wait_log(&plain, &sh, "from runc")?;

    let app = container_config("app", &probe, &[], &["args", "hello", "from CRI"]);
    let app_id = wasm.start(&app)?;
    let status = cri.wait_exited(&app_id, Duration::from_secs(30))?;
    ensure!(
        status.exit_code == 0 && status.reason == "Completed",
        "Wasm container status: {status:?}"
    );
    let lines = wait_log(&wasm, &app, "from CRI")?;
    ensure!(
        lines.iter().any(|l| l == "hello") && lines.iter().any(|l| l == "from CRI"),
        "CRI log of the Wasm container: {lines:?}"
    );
    let runc_status = cri.container_status(&sh_id)?;
    ensure!(
        runc_status.state == api::ContainerState::ContainerRunning as i32,
        "the runc pod's container stopped meanwhile: {runc_status:?}"
    );
    // one shim serves the Wasm pod: its pause sandbox and its container
    let shims = shim_servers(&cd)?;
    ensure!(shims.len() == 1, "wasmpod shim servers: {shims:?}");

    wasm.remove()?;
    plain.remove()?;
    cd.assert_no_leftovers()
}

#[test]
fn host_mounts_with_every_propagation_mode() -> Result<()> {
    let cd = cri_containerd()?;
    let cri = cd.cri()?;
    let probe = cri_probe_image(&cd, P1)?;
    // kubelet's rslave/rshared mounts need a shared source mount
    let host = cd.tempdir().join("hostdata");
    std::fs::create_dir_all(&host)?;
    std::fs::write(host.join("note.txt"), "from the node\n")?;
    use nix::mount::{mount, umount2, MntFlags, MsFlags};
    mount(
        Some(&host),
        &host,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )?;
    mount(
        None::<&str>,
        &host,
        None::<&str>,
        MsFlags::MS_SHARED,
        None::<&str>,
    )?;
    let result = (|| -> Result<()> {
        let mut pod = Pod::run(&cd, &cri, Pod::config(&cd, "mounts"), HANDLER)?;
        for (name, propagation) in [
            ("private", api::MountPropagation::PropagationPrivate),
            ("rslave", api::MountPropagation::PropagationHostToContainer),
            ("rshared", api::MountPropagation::PropagationBidirectional),
        ] {
            let mut c = container_config(name, &probe, &[], &["cat", "/host/note.txt"]);
            c.mounts = vec![api::Mount {
                container_path: "/host".into(),
                host_path: host.to_string_lossy().into_owned(),
                readonly: true,
                propagation: propagation as i32,
                ..Default::default()
            }];
            let id = pod.start(&c)?;
            let status = cri.wait_exited(&id, Duration::from_secs(30))?;
            ensure!(status.exit_code == 0, "{name}: {status:?}");
            wait_log(&pod, &c, "from the node")?;
        }
        pod.remove()
    })();
    umount2(&host, MntFlags::MNT_DETACH)?;
    result?;
    cd.assert_no_leftovers()
}

#[test]
fn wasm_server_reached_from_sidecar_and_host_and_exec() -> Result<()> {
    let cd = cri_containerd()?;
    let cri = cd.cri()?;
    let probe = cri_probe_image(&cd, P2)?;
    let bb = busybox(&cd)?;

    let mut pod = Pod::run(&cd, &cri, Pod::config(&cd, "web"), HANDLER)?;
    let ip = pod.ip()?;
    let app = container_config("app", &probe, &[], &["serve", "8080", "5"]);
    let app_id = pod.start(&app)?;
    let side = container_config("side", bb, &["/bin/sleep", "300"], &[]);
    let side_id = pod.start(&side)?;
    wait_log(&pod, &app, "listening on 8080")?;

    // the sidecar reaches the Wasm server on localhost: one network namespace
    let out = cri.exec_sync(
        &side_id,
        &[
            "/bin/busybox",
            "timeout",
            "10",
            "/bin/busybox",
            "nc",
            "127.0.0.1",
            "8080",
        ],
        20,
    )?;
    ensure!(
        out.exit_code == 0 && out.stdout == "hello from wasm\n",
        "sidecar → localhost:8080: {out:?}"
    );

    // the host reaches it at the pod IP
    let addr: SocketAddr = format!("{ip}:8080").parse()?;
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .with_context(|| format!("connect to the pod at {addr}"))?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reply = String::new();
    conn.read_to_string(&mut reply)?;
    ensure!(reply == "hello from wasm\n", "host → {addr}: {reply:?}");

    // exec into the sidecar: exit code, both streams, stdin at end of input
    let out = cri.exec_sync(
        &side_id,
        &["/bin/sh", "-c", "echo out; echo err >&2; exit 3"],
        20,
    )?;
    ensure!(
        out.exit_code == 3 && out.stdout == "out\n" && out.stderr == "err\n",
        "exec into the sidecar: {out:?}"
    );
    let out = cri.exec_sync(&side_id, &["/bin/cat"], 20)?;
    ensure!(
        out.exit_code == 0 && out.stdout.is_empty(),
        "exec cat: {out:?}"
    );

    // exec into the Wasm container: another Wasm program in its context
    let out = cri.exec_sync(&app_id, &["/probe.wasm", "cat", "/data/greeting.txt"], 20)?;
    ensure!(
        out.exit_code == 0 && out.stdout == "hello from the image\n",
        "exec into the Wasm container: {out:?}"
    );
    // a component's wasi:cli/exit carries only ok/err: a failure is 1
    let out = cri.exec_sync(&app_id, &["/probe.wasm", "exit", "7"], 20)?;
    ensure!(out.exit_code == 1, "exec exit 7: {out:?}");
    // something that is not Wasm gets a clear error
    match cri.exec_sync(&app_id, &["/data/greeting.txt"], 20) {
        Err(e) => ensure!(
            format!("{e:#}").contains("not WebAssembly"),
            "exec of a text file: {e:#}"
        ),
        Ok(out) => ensure!(
            out.exit_code != 0 && out.stderr.contains("not WebAssembly"),
            "exec of a text file: {out:?}"
        ),
    }

    pod.remove()?;
    cd.assert_no_leftovers()
}

/// The PID namespace a process is in (the target of `/proc/PID/ns/pid`).
fn pid_namespace(pid: i32) -> Result<std::path::PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/ns/pid"))
        .with_context(|| format!("read the PID namespace of process {pid}"))
}

/// The runner process of Wasm container `id`.
fn runner_pid(cd: &Containerd, id: &str) -> Result<i32> {
    cd.processes()?
        .into_iter()
        .find(|p| {
            p.argv.get(1).map(String::as_str) == Some("__wasmpod_runner")
                && p.argv.get(2).map(String::as_str) == Some(id)
        })
        .map(|p| p.pid)
        .with_context(|| format!("no runner process for container {id}"))
}

/// `shareProcessNamespace: true`: the Wasm container's runner is forked into
/// the pod's PID namespace (the sandbox's), so a sidecar's `ps` lists it, and
/// an exec'd Wasm program runs there too. Without it, the runner stays out of
/// the sandbox's PID namespace.
#[test]
fn shared_process_namespace_of_a_pod() -> Result<()> {
    let cd = cri_containerd()?;
    let cri = cd.cri()?;
    let probe = cri_probe_image(&cd, P1)?;
    let bb = busybox(&cd)?;

    let config = Pod::share_process_namespace(Pod::config(&cd, "shared-pids"));
    let mut pod = Pod::run(&cd, &cri, config, HANDLER)?;
    let app = with_shared_pids(container_config("app", &probe, &[], &["sleep", "300"]));
    let app_id = pod.start(&app)?;
    let side = with_shared_pids(container_config("side", bb, &["/bin/sleep", "300"], &[]));
    let side_id = pod.start(&side)?;

    let sandbox_ns = pid_namespace(pod.sandbox_pid()?)?;
    let runner = runner_pid(&cd, &app_id)?;
    ensure!(
        pid_namespace(runner)? == sandbox_ns,
        "runner {runner} is in {:?}, the pod's PID namespace is {sandbox_ns:?}",
        pid_namespace(runner)?
    );
    let out = cri.exec_sync(&side_id, &["/bin/busybox", "ps", "-o", "pid,args"], 20)?;
    ensure!(
        out.exit_code == 0
            && out
                .stdout
                .lines()
                .any(|l| l.contains(&format!("__wasmpod_runner {app_id}"))),
        "the sidecar's ps does not list the Wasm container: {out:?}"
    );
    // an exec'd Wasm program runs in the same PID namespace (and works)
    let out = cri.exec_sync(&app_id, &["/probe.wasm", "exit", "7"], 20)?;
    ensure!(out.exit_code == 7, "exec into the Wasm container: {out:?}");
    pod.remove()?;

    // kubelet's default: a PID namespace per container, whose pid 1 the
    // runner is, as runc's container process is of its own
    let mut pod = Pod::run(&cd, &cri, Pod::config(&cd, "own-pids"), HANDLER)?;
    let app_id = pod.start(&container_config("app", &probe, &[], &["sleep", "300"]))?;
    let runner = runner_pid(&cd, &app_id)?;
    let sandbox_ns = pid_namespace(pod.sandbox_pid()?)?;
    ensure!(
        pid_namespace(runner)? != sandbox_ns,
        "runner {runner} joined the sandbox's PID namespace without shareProcessNamespace"
    );
    let status = std::fs::read_to_string(format!("/proc/{runner}/status"))?;
    ensure!(
        pid_namespace(runner)? != pid_namespace(i32::try_from(std::process::id())?)?
            && status
                .lines()
                .any(|l| l.starts_with("NSpid:") && l.ends_with("\t1")),
        "runner {runner} is not pid 1 of a PID namespace of its own: {status}"
    );
    pod.remove()?;
    cd.assert_no_leftovers()
}

/// UpdateContainerResources (an in-place resize) reaches the cgroup of a
/// Wasm container and, through runc, of a Linux sidecar in the same pod.
#[test]
fn update_container_resources_of_wasm_and_linux_containers() -> Result<()> {
    let cd = cri_containerd()?;
    let cri = cd.cri()?;
    let probe = cri_probe_image(&cd, P1)?;
    let bb = busybox(&cd)?;
    let mut pod = Pod::run(&cd, &cri, Pod::config(&cd, "resize"), HANDLER)?;
    let app = container_config("app", &probe, &[], &["sleep", "300"]);
    let app_id = pod.start(&app)?;
    let side = container_config("side", bb, &["/bin/sleep", "300"], &[]);
    let side_id = pod.start(&side)?;
    for (id, quota, mib) in [(&app_id, 30_000, 200i64), (&side_id, 40_000, 150)] {
        cri.update_container_resources(
            id,
            api::LinuxContainerResources {
                cpu_period: 100_000,
                cpu_quota: quota,
                cpu_shares: 256,
                memory_limit_in_bytes: mib << 20,
                ..Default::default()
            },
        )?;
        ensure!(
            container_cgroup_file(&pod, id, "cpu.cfs_quota_us")? == quota.to_string(),
            "{id}: CPU quota not updated"
        );
        ensure!(
            container_cgroup_file(&pod, id, "cpu.shares")? == "256",
            "{id}: CPU shares not updated"
        );
        ensure!(
            container_cgroup_file(&pod, id, "memory.limit_in_bytes")? == (mib << 20).to_string(),
            "{id}: memory limit not updated"
        );
        ensure!(
            cri.container_status(id)?.state == api::ContainerState::ContainerRunning as i32,
            "{id} stopped running after the update"
        );
    }
    pod.remove()?;
    cd.assert_no_leftovers()
}

#[test]
fn stats_limits_and_stop_of_a_spinning_guest() -> Result<()> {
    let cd = cri_containerd()?;
    let cri = cd.cri()?;
    let probe = cri_probe_image(&cd, P1)?;

    let mut pod = Pod::run(&cd, &cri, Pod::config(&cd, "busy"), HANDLER)?;
    let mem = with_memory_limit(
        container_config("mem", &probe, &[], &["alloc", "96", "300"]),
        256 << 20,
    );
    let mem_id = pod.start(&mem)?;
    let mut cpu = container_config("cpu", &probe, &[], &["spin"]);
    cpu.linux = Some(api::LinuxContainerConfig {
        resources: Some(api::LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: 50_000,
            cpu_shares: 512,
            ..Default::default()
        }),
        ..Default::default()
    });
    let cpu_id = pod.start(&cpu)?;

    // memory: the working set holds the guest's 96 MiB
    wait_log(&pod, &mem, "allocated 96 MiB")?;
    let stats = cri.container_stats(&mem_id)?;
    let ws = stats
        .memory
        .as_ref()
        .and_then(|m| m.working_set_bytes.as_ref())
        .map_or(0, |v| v.value);
    ensure!(ws >= 96 << 20, "working set {ws} bytes < 96 MiB: {stats:?}");
    ensure!(
        container_cgroup_file(&pod, &mem_id, "memory.limit_in_bytes")?
            == (256u64 << 20).to_string(),
        "memory limit not applied"
    );

    // CPU: usage moves while the guest spins; the quota is in the cgroup
    wait_log(&pod, &cpu, "spinning")?;
    let usage = |id: &str| -> Result<u64> {
        Ok(cri
            .container_stats(id)?
            .cpu
            .and_then(|c| c.usage_core_nano_seconds)
            .map_or(0, |v| v.value))
    };
    let first = usage(&cpu_id)?;
    std::thread::sleep(Duration::from_millis(500));
    let second = usage(&cpu_id)?;
    ensure!(second > first, "CPU usage did not move: {first} → {second}");
    ensure!(
        container_cgroup_file(&pod, &cpu_id, "cpu.cfs_quota_us")? == "50000",
        "CPU quota"
    );
    ensure!(
        container_cgroup_file(&pod, &cpu_id, "cpu.shares")? == "512",
        "CPU shares"
    );

    // stop: SIGTERM, 2 s grace, SIGKILL; the spinning guest is gone after
    let started = Instant::now();
    cri.stop_container(&cpu_id, 2)?;
    let status = cri.wait_exited(&cpu_id, Duration::from_secs(5))?;
    ensure!(
        started.elapsed() < Duration::from_secs(30),
        "StopContainer hung for {:?}",
        started.elapsed()
    );
    ensure!(status.exit_code != 0, "stopped spinner: {status:?}");
    cri.remove_container(&cpu_id)?;

    pod.remove()?;
    cd.assert_no_leftovers()
}

#[test]
fn memory_limits_trap_cleanly_or_oom_kill() -> Result<()> {
    let cd = cri_containerd()?;
    let cri = cd.cri()?;
    let probe = cri_probe_image(&cd, P1)?;
    let bb = busybox(&cd)?;
    let mut pod = Pod::run(&cd, &cri, Pod::config(&cd, "mem"), HANDLER)?;

    // linear memory past the limit: memory.grow fails inside wasmtime, the
    // guest's allocator aborts, the container ends with a trap (134), and
    // the kernel's OOM killer never had to act
    let bomb = with_memory_limit(
        container_config("bomb", &probe, &[], &["alloc", "512"]),
        64 << 20,
    );
    let bomb_id = pod.start(&bomb)?;
    let status = cri.wait_exited(&bomb_id, Duration::from_secs(30))?;
    ensure!(
        status.exit_code == 134 && status.reason == "Error",
        "Wasm memory bomb: {status:?}"
    );
    let log: Vec<String> = pod.log_lines(&bomb)?.into_iter().map(|(_, l)| l).collect();
    ensure!(
        log.iter()
            .any(|l| l.contains("memory allocation") || l.contains("unreachable")),
        "the trap is not in the container log: {log:?}"
    );

    // a Linux sidecar past its limit: the kernel OOM-kills it, CRI says so
    let hog = with_memory_limit(
        container_config("hog", bb, &["/bin/busybox", "tail", "/dev/zero"], &[]),
        32 << 20,
    );
    let hog_id = pod.start(&hog)?;
    let status = cri.wait_exited(&hog_id, Duration::from_secs(30))?;
    ensure!(
        status.exit_code == 137 && status.reason == "OOMKilled",
        "sidecar memory hog: {status:?}"
    );

    pod.remove()?;
    cd.assert_no_leftovers()
}
