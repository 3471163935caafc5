//! `make demo`: the whole path on an embedded default. Starts a private
//! containerd with its CRI plugin (nothing of the machine's own is touched),
//! packages the hello guest with `wasmpod oci build`, runs it with
//! `ctr run --runtime io.containerd.wasmpod.v1`, then runs it as a Kubernetes
//! pod: a Wasm pod beside a runc pod on the same node, driven over CRI as
//! kubelet drives it, with its log, stats and the memory-limit outcomes;
//! then a PodSecurity-"restricted" Wasm pod (hello, an HTTP component, an
//! exec) with its processes' `/proc` status printed beside a runc pod's;
//! on containerd 2.x a `hostUsers: false` pod with its user namespace;
//! last, pushes it to a private registry as a classic image and as a Wasm
//! artifact and runs both from there as kubelet pulls them. Prints each step.

use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use wasmpod_e2e::cri::{api, container_config, with_memory_limit, Cri, Pod, HANDLER};
use wasmpod_e2e::guests::guest;
use wasmpod_e2e::images::busybox_image;
use wasmpod_e2e::{workspace_root, Containerd, ContainerdOptions, RUNTIME};

const IMAGE: &str = "docker.io/wasmpod/hello:demo";

fn main() -> Result<()> {
    let wasm = guest("wasm32-wasip1", "hello")?;
    let cd = Containerd::start(ContainerdOptions {
        cri: true,
        ..Default::default()
    })?;
    println!("# private containerd at {}", cd.socket().display());

    let tar = cd.tempdir().join("hello.tar");
    let wasmpod = workspace_root().join("target/release/wasmpod");
    println!("$ wasmpod oci build hello.wasm -t {IMAGE} -o hello.tar");
    let out = Command::new(&wasmpod)
        .args(["oci", "build"])
        .arg(&wasm)
        .args(["-t", IMAGE, "-o"])
        .arg(&tar)
        .output()
        .with_context(|| format!("run {}", wasmpod.display()))?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    if !out.status.success() {
        bail!(
            "wasmpod oci build: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let tar = tar.to_string_lossy().into_owned();
    println!("$ ctr images import --all-platforms hello.tar");
    print!(
        "{}",
        cd.ctr(&["images", "import", "--all-platforms", &tar])?
    );

    println!("$ ctr run --rm --runtime {RUNTIME} {IMAGE} hello-demo");
    let run = cd.ctr_output(&["run", "--rm", "--runtime", RUNTIME, IMAGE, "hello-demo"])?;
    print!("{}{}", run.stdout, run.stderr);
    println!("# exit status {:?}", run.status);
    if run.status != Some(0) {
        bail!(
            "the demo container failed; containerd log:\n{}",
            cd.log_tail(40)
        );
    }
    cd.assert_no_leftovers()?;
    println!("# no processes, mounts, FIFOs or state left behind");

    kubernetes(&cd, &tar)?;
    restricted(&cd)?;
    host_users_false(&cd)?;
    registry(&cd, &wasm)?;
    cd.assert_no_leftovers()?;
    println!("# no processes, mounts, cgroups, network namespaces, veths or shims left behind");
    Ok(())
}

const BUSYBOX: &str = "docker.io/wasmpod-demo/busybox:1";
const PROBE: &str = "docker.io/wasmpod-demo/probe:1";

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

fn state_name(state: i32) -> &'static str {
    match api::ContainerState::try_from(state) {
        Ok(api::ContainerState::ContainerCreated) => "CREATED",
        Ok(api::ContainerState::ContainerRunning) => "RUNNING",
        Ok(api::ContainerState::ContainerExited) => "EXITED",
        _ => "UNKNOWN",
    }
}

/// Prints a container's status once it has exited.
fn exited(cri: &Cri, name: &str, id: &str) -> Result<api::ContainerStatus> {
    let st = cri.wait_exited(id, Duration::from_secs(60))?;
    println!(
        "$ ContainerStatus {name} → {} exit {} reason {}",
        state_name(st.state),
        st.exit_code,
        st.reason
    );
    Ok(st)
}

/// The Kubernetes path over CRI: a Wasm pod and a runc pod on one node.
fn kubernetes(cd: &Containerd, hello_tar: &str) -> Result<()> {
    println!("\n# the Kubernetes path: CRI on the same containerd, as kubelet drives it");
    let cri = cd.cri()?;
    let v = cri.version()?;
    println!(
        "$ Version → {} {} (CRI {})",
        v.runtime_name, v.runtime_version, v.runtime_api_version
    );
    cd.cri_import(std::path::Path::new(hello_tar), IMAGE)?;
    cd.cri_import(&busybox_image(BUSYBOX)?, BUSYBOX)?;
    let probe =
        wasmpod_e2e::images::wasm_image(PROBE, &guest("wasm32-wasip1", "probe")?, "/probe.wasm")?;
    cd.cri_import(&probe, PROBE)?;

    let mut wasm = Pod::run(cd, &cri, Pod::config(cd, "hello-wasm"), HANDLER)?;
    println!(
        "$ RunPodSandbox hello-wasm (runtime handler {HANDLER}) → {} ip {}",
        short(&wasm.id),
        wasm.ip()?
    );
    let mut plain = Pod::run(cd, &cri, Pod::config(cd, "plain-runc"), "")?;
    println!(
        "$ RunPodSandbox plain-runc (runtime handler runc) → {} ip {}",
        short(&plain.id),
        plain.ip()?
    );

    let sh = container_config(
        "sh",
        BUSYBOX,
        &["/bin/sh", "-c", "echo hello from runc; exec sleep 300"],
        &[],
    );
    let sh_id = plain.start(&sh)?;
    println!(
        "$ CreateContainer+StartContainer plain-runc/sh ({BUSYBOX}) → {}",
        short(&sh_id)
    );

    let hello = container_config("hello", IMAGE, &[], &[]);
    let hello_id = wasm.start(&hello)?;
    println!(
        "$ CreateContainer+StartContainer hello-wasm/hello ({IMAGE}) → {}",
        short(&hello_id)
    );
    let st = exited(&cri, "hello", &hello_id)?;
    ensure!(st.exit_code == 0, "hello failed: {st:?}");
    for (stream, line) in wasm.log_lines(&hello)? {
        println!("  CRI log hello-wasm/hello: {stream} {line}");
    }
    let runc_state = cri.container_status(&sh_id)?.state;
    println!(
        "$ ContainerStatus sh → {} (the runc pod runs on meanwhile)",
        state_name(runc_state)
    );

    // stats: a guest that holds 48 MiB
    let mem = with_memory_limit(
        container_config("mem", PROBE, &[], &["alloc", "48", "60"]),
        128 << 20,
    );
    let mem_id = wasm.start(&mem)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !wasm
        .log_lines(&mem)
        .unwrap_or_default()
        .iter()
        .any(|(_, l)| l.contains("allocated"))
    {
        ensure!(std::time::Instant::now() < deadline, "mem never allocated");
        std::thread::sleep(Duration::from_millis(50));
    }
    let stats = cri.container_stats(&mem_id)?;
    let ws = stats
        .memory
        .as_ref()
        .and_then(|m| m.working_set_bytes.as_ref())
        .map_or(0, |v| v.value);
    let cpu = stats
        .cpu
        .as_ref()
        .and_then(|c| c.usage_core_nano_seconds.as_ref())
        .map_or(0, |v| v.value);
    println!(
        "$ ContainerStats hello-wasm/mem (alloc 48 MiB, limit 128 MiB) → working set {:.1} MiB, CPU {:.1} ms",
        ws as f64 / 1048576.0,
        cpu as f64 / 1e6
    );
    cri.stop_container(&mem_id, 2)?;
    exited(&cri, "mem (after StopContainer, 2 s grace)", &mem_id)?;

    // the memory limit, both ways
    let bomb = with_memory_limit(
        container_config("bomb", PROBE, &[], &["alloc", "512"]),
        64 << 20,
    );
    let bomb_id = wasm.start(&bomb)?;
    println!("$ CreateContainer+StartContainer hello-wasm/bomb (alloc 512 MiB, limit 64 MiB)");
    exited(&cri, "bomb", &bomb_id)?;
    if let Some((_, line)) = wasm
        .log_lines(&bomb)?
        .into_iter()
        .find(|(_, l)| l.contains("memory"))
    {
        println!("  CRI log hello-wasm/bomb: {line}");
    }
    let hog = with_memory_limit(
        container_config("hog", BUSYBOX, &["/bin/busybox", "tail", "/dev/zero"], &[]),
        32 << 20,
    );
    let hog_id = wasm.start(&hog)?;
    println!("$ CreateContainer+StartContainer hello-wasm/hog (busybox sidecar, tail /dev/zero, limit 32 MiB)");
    exited(&cri, "hog", &hog_id)?;

    wasm.remove()?;
    plain.remove()?;
    println!("$ StopPodSandbox + RemovePodSandbox hello-wasm, plain-runc");
    Ok(())
}

/// A restricted container running as 65532, as `runAsNonRoot` pods
/// (distroless's `nonroot`) do.
fn restricted_config(config: api::ContainerConfig) -> api::ContainerConfig {
    wasmpod_e2e::cri::restricted(config, 65532)
}

/// A restricted Wasm pod beside a restricted runc pod: hello, an HTTP
/// component and an exec in the Wasm pod, and what the kernel says of each
/// pod's long-running process.
fn restricted(cd: &Containerd) -> Result<()> {
    use wasmpod_e2e::procfs::{own_mount_namespace, sandbox_status, wait_process, wait_runner};
    println!("\n# a PodSecurity \"restricted\" pod: runAsNonRoot (65532), drop ALL, RuntimeDefault, allowPrivilegeEscalation false");
    let cri = cd.cri()?;
    const HTTP: &str = "docker.io/wasmpod-demo/http:1";
    cd.cri_import(
        &wasmpod_e2e::images::wasm_image(HTTP, &wasmpod_e2e::guests::http_guest()?, "/http.wasm")?,
        HTTP,
    )?;
    let mut wasm = Pod::run(cd, &cri, Pod::config(cd, "restricted-wasm"), HANDLER)?;
    let mut plain = Pod::run(cd, &cri, Pod::config(cd, "restricted-runc"), "")?;

    let hello = restricted_config(container_config("hello", IMAGE, &[], &[]));
    let hello_id = wasm.start(&hello)?;
    exited(&cri, "restricted-wasm/hello", &hello_id)?;
    for (stream, line) in wasm.log_lines(&hello)? {
        println!("  CRI log restricted-wasm/hello: {stream} {line}");
    }
    let web = restricted_config(container_config("web", HTTP, &[], &[]));
    let web_id = wasm.start(&web)?;
    let addr: std::net::SocketAddr = format!("{}:8080", wasm.ip()?).parse()?;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let (status, body) = loop {
        match wasmpod_e2e::http_client::get(addr, "/", &[], Duration::from_secs(5)) {
            Ok(answer) => break answer,
            Err(e) if std::time::Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    println!(
        "$ GET http://{addr}/ (restricted-wasm/web, a wasi:http component) → {status} {}",
        body.trim_end()
    );
    let app = restricted_config(container_config("app", PROBE, &[], &["sleep", "300"]));
    let app_id = wasm.start(&app)?;
    let out = cri.exec_sync(&app_id, &["/probe.wasm", "cat", "/etc/hostname"], 20)?;
    println!(
        "$ kubectl exec restricted-wasm/app -- /probe.wasm cat /etc/hostname → exit {} {}",
        out.exit_code,
        out.stdout.trim_end()
    );
    let sh = restricted_config(container_config("sh", BUSYBOX, &["/bin/sleep", "300"], &[]));
    plain.start(&sh)?;

    let runners = [wait_runner(cd, &app_id)?, wait_runner(cd, &web_id)?];
    let sleeper = wait_process(cd, "busybox sleep", |p| p.argv == ["/bin/sleep", "300"])?;
    // the runner loads seccomp as its guest starts: read once it has
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while runners.iter().any(|pid| {
        sandbox_status(*pid).is_ok_and(|s| s.get("Seccomp").map(String::as_str) != Some("2"))
    }) && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let columns = [
        ("busybox under runc", sleeper),
        ("Wasm (app) under wasmpod", runners[0]),
        ("Wasm (web) under wasmpod", runners[1]),
    ];
    let views = columns
        .iter()
        .map(|(_, pid)| sandbox_status(*pid))
        .collect::<Result<Vec<_>>>()?;
    println!(
        "\n| /proc/PID/status | {} |",
        columns.map(|c| c.0).join(" | ")
    );
    println!("|---|---|---|---|");
    for field in wasmpod_e2e::procfs::SANDBOX_FIELDS
        .iter()
        .chain(&["oom_score_adj"])
    {
        let cells: Vec<&str> = views
            .iter()
            .map(|v| v.get(*field).map_or("-", String::as_str))
            .collect();
        println!("| {field} | {} |", cells.join(" | "));
    }
    let own = columns
        .iter()
        .map(|(_, pid)| own_mount_namespace(*pid).map(|o| if o { "its own" } else { "the node's" }))
        .collect::<Result<Vec<_>>>()?;
    println!("| mount namespace | {} |", own.join(" | "));
    ensure!(
        views[1..].iter().all(|v| {
            let mut v = v.clone();
            let mut runc = views[0].clone();
            // oom_score_adj differs by design: kubelet's default per QoS
            v.remove("oom_score_adj");
            runc.remove("oom_score_adj");
            v == runc
        }),
        "the Wasm processes' sandbox differs from runc's"
    );
    wasm.remove()?;
    plain.remove()?;
    println!("$ StopPodSandbox + RemovePodSandbox restricted-wasm, restricted-runc");
    Ok(())
}

/// A pod with `hostUsers: false` (containerd 2.x): its Wasm container in
/// the pod's user namespace, root inside an unprivileged uid outside.
fn host_users_false(cd: &Containerd) -> Result<()> {
    let major = wasmpod_e2e::containerd::major_version(&cd.options().containerd_bin)?;
    println!("\n# a pod with hostUsers: false (a user namespace mapping 0..65535 to 1000000..)");
    if major < 2 {
        println!("  (CRI user namespaces need containerd 2.x; this one is {major}.x: see `make e2e-2.1`)");
        return Ok(());
    }
    let cri = cd.cri()?;
    let config = wasmpod_e2e::cri::host_users_false(Pod::config(cd, "userns-wasm"), 1_000_000);
    let mut pod = Pod::run(cd, &cri, config, HANDLER)?;
    let app = wasmpod_e2e::cri::in_host_users_false(
        container_config("app", PROBE, &[], &["sleep", "300"]),
        1_000_000,
    );
    let id = pod.start(&app)?;
    let runner = wasmpod_e2e::procfs::wait_runner(cd, &id)?;
    let sandbox = pod.sandbox_pid()?;
    let read = |pid: i32, f: &str| -> Result<String> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/{f}"))?;
        Ok(text.split_whitespace().collect::<Vec<_>>().join(" "))
    };
    let uid = std::fs::read_to_string(format!("/proc/{runner}/status"))?
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    let same = std::fs::read_link(format!("/proc/{runner}/ns/user"))?
        == std::fs::read_link(format!("/proc/{sandbox}/ns/user"))?;
    println!(
        "$ RunPodSandbox userns-wasm + CreateContainer+StartContainer app → {}",
        short(&id)
    );
    println!(
        "  runner uid_map: {}   gid_map: {}",
        read(runner, "uid_map")?,
        read(runner, "gid_map")?
    );
    println!("  runner Uid (as the node sees it): {uid}");
    println!(
        "  runner in the sandbox's user namespace: {}",
        if same { "yes" } else { "no" }
    );
    ensure!(
        same && uid.starts_with("1000000"),
        "the Wasm container is not in the pod's user namespace"
    );
    pod.remove()?;
    println!("$ StopPodSandbox + RemovePodSandbox userns-wasm");
    Ok(())
}

/// Push → CRI PullImage → pod, from a private registry on 127.0.0.1, for the
/// classic image and the Wasm artifact.
fn registry(cd: &Containerd, wasm: &std::path::Path) -> Result<()> {
    println!("\n# images and artifacts through a registry (docker-registry on loopback)");
    let registry = wasmpod_e2e::registry::Registry::start(&cd.tempdir().join("registry"))?;
    let host = registry.host();
    let cri = cd.cri()?;
    let wasmpod = workspace_root().join("target/release/wasmpod");
    let mut pod = Pod::run(cd, &cri, Pod::config(cd, "from-registry"), HANDLER)?;
    for (name, extra) in [("classic", &[][..]), ("artifact", &["--artifact"][..])] {
        let reference = format!("{host}/demo/hello:{name}");
        println!(
            "$ wasmpod oci push hello.wasm {reference}{}",
            extra.iter().map(|a| format!(" {a}")).collect::<String>()
        );
        let out = Command::new(&wasmpod)
            .args(["oci", "push"])
            .arg(wasm)
            .arg(&reference)
            .args(extra)
            .output()
            .with_context(|| format!("run {}", wasmpod.display()))?;
        ensure!(
            out.status.success(),
            "push: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        print!("{}", String::from_utf8_lossy(&out.stdout));
        let inspect = Command::new(&wasmpod)
            .args(["oci", "inspect", "--json", &reference])
            .output()?;
        let v: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap_or_default();
        let size: u64 = v["layers"]
            .as_array()
            .map(|l| l.iter().filter_map(|x| x["size"].as_u64()).sum())
            .unwrap_or(0);
        println!(
            "  layers: {size} bytes ({})",
            v["kind"].as_str().unwrap_or("?")
        );
        match cri.pull_image(&reference) {
            Ok(id) => println!(
                "$ PullImage {reference} → {}",
                short(id.trim_start_matches("sha256:"))
            ),
            Err(e) => {
                println!("$ PullImage {reference} → {e:#}");
                println!("  (containerd before 1.6.25 / 1.7.7 cannot pull Wasm artifacts; the classic image works everywhere)");
                continue;
            }
        }
        let config = container_config(name, &reference, &[], &[]);
        let id = pod.start(&config)?;
        println!(
            "$ CreateContainer+StartContainer from-registry/{name} → {}",
            short(&id)
        );
        exited(&cri, name, &id)?;
        for (stream, line) in pod.log_lines(&config)? {
            println!("  CRI log from-registry/{name}: {stream} {line}");
        }
    }
    pod.remove()?;
    println!("$ StopPodSandbox + RemovePodSandbox from-registry");
    Ok(())
}
