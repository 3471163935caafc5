//! User namespaces: `ctr run --uidmap` (a namespace of the container's own,
//! made with the mappings) on every containerd, and a pod with
//! `hostUsers: false` through CRI on containerd 2.x (the pod's namespace,
//! held by its sandbox): the Wasm runner and a process exec'd into it are in
//! it with the pod's mappings, root inside is an unprivileged uid outside,
//! the rootfs is idmapped, a Linux sidecar needs a runc that idmaps, and
//! nothing is left after removal.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use wasmpod_e2e::cri::{
    api, container_config, host_users_false, in_host_users_false, Pod, HANDLER,
};
use wasmpod_e2e::images::busybox_image;
use wasmpod_e2e::procfs::wait_runner;
use wasmpod_e2e::{Containerd, ContainerdOptions};

use crate::common::{cri_probe_image, probe_image, running_pid, spawn_run, P1, P2};

/// The pod's ids start here on the node (kubelet picks a multiple of 65536).
const HOST_BASE: u32 = 1_000_000;
const SIZE: u32 = 65536;
const BUSYBOX: &str = "docker.io/wasmpod-e2e/busybox:userns";

/// `config` of a pod with `hostUsers: false`, as kubelet sends it.
fn userns_pod(config: api::PodSandboxConfig) -> api::PodSandboxConfig {
    host_users_false(config, HOST_BASE)
}

/// `config` of a container of such a pod.
fn userns_container(config: api::ContainerConfig) -> api::ContainerConfig {
    in_host_users_false(config, HOST_BASE)
}

/// `/proc/PID/{uid_map,gid_map}` with the whitespace squeezed.
fn id_maps(pid: i32) -> Result<(String, String)> {
    let read = |f: &str| -> Result<String> {
        let text = fs::read_to_string(format!("/proc/{pid}/{f}"))
            .with_context(|| format!("/proc/{pid}/{f}"))?;
        Ok(text.split_whitespace().collect::<Vec<_>>().join(" "))
    };
    Ok((read("uid_map")?, read("gid_map")?))
}

/// The real uid `/proc/PID/status` gives, as the node sees it.
fn node_uid(pid: i32) -> Result<u32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|u| u.parse().ok())
        .with_context(|| format!("no Uid in /proc/{pid}/status"))
}

fn ns(pid: i32, kind: &str) -> Result<String> {
    let link = format!("/proc/{pid}/ns/{kind}");
    Ok(fs::read_link(&link)
        .with_context(|| link.clone())?
        .to_string_lossy()
        .into_owned())
}

#[test]
fn ctr_run_with_a_uidmap_runs_in_a_user_namespace_of_its_own() -> Result<()> {
    let cd = Containerd::start(ContainerdOptions::default())?;
    let image = probe_image(&cd, P1)?;
    let tar = busybox_image(BUSYBOX)?;
    cd.ctr(&[
        "images",
        "import",
        "--all-platforms",
        &tar.to_string_lossy(),
    ])?;
    let map = format!("0:{HOST_BASE}:{SIZE}");
    let flags = ["--uidmap", map.as_str(), "--gidmap", map.as_str()];
    // the same flags for a Wasm container and for busybox under runc
    let wasm_id = cd.unique_id("userns-wasm");
    let runc_id = cd.unique_id("userns-runc");
    let mut wasm = spawn_run(
        &cd,
        &flags,
        &image,
        &wasm_id,
        &["/probe.wasm", "sleep", "30"],
    )?;
    let mut runc_flags = vec!["--runtime", "io.containerd.runc.v2"];
    runc_flags.extend(flags);
    let mut plain = cd.ctr_spawn(
        &[
            &["run", "--rm"][..],
            &runc_flags,
            &[BUSYBOX, &runc_id, "/bin/sleep", "30"],
        ]
        .concat(),
    )?;
    let result = (|| -> Result<()> {
        let wasm_pid = i32::try_from(running_pid(&cd, &wasm_id)?)?;
        let runc_pid = i32::try_from(running_pid(&cd, &runc_id)?)?;
        let want = format!("0 {HOST_BASE} {SIZE}");
        for (what, pid) in [("Wasm", wasm_pid), ("runc", runc_pid)] {
            let maps = id_maps(pid)?;
            ensure!(
                maps == (want.clone(), want.clone()),
                "{what}: maps {maps:?}"
            );
            ensure!(
                node_uid(pid)? == HOST_BASE,
                "{what}: the container's root is not {HOST_BASE} on the node"
            );
            ensure!(
                ns(pid, "user")?
                    != fs::read_link("/proc/self/ns/user")?
                        .to_string_lossy()
                        .into_owned(),
                "{what}: in the node's user namespace"
            );
        }
        Ok(())
    })();
    for id in [&wasm_id, &runc_id] {
        let _ = cd.ctr(&["tasks", "kill", "-s", "SIGKILL", id]);
    }
    let _ = wasm.wait();
    let _ = plain.wait();
    result?;
    cd.assert_no_leftovers()
}

#[test]
fn a_host_users_false_pod_on_containerd_2() -> Result<()> {
    let cd = Containerd::start(ContainerdOptions {
        cri: true,
        ..Default::default()
    })?;
    if wasmpod_e2e::containerd::major_version(&cd.options().containerd_bin)? < 2 {
        // CRI user namespaces need containerd 2.0
        return cd.assert_no_leftovers();
    }
    let cri = cd.cri()?;
    let probe = cri_probe_image(&cd, P2)?;
    cd.cri_import(&busybox_image(BUSYBOX)?, BUSYBOX)?;
    // a root-only file, and a directory anyone may write, on the node
    let volumes = cd.tempdir().join("userns-volumes");
    let (ro, rw) = (volumes.join("ro"), volumes.join("rw"));
    fs::create_dir_all(&ro)?;
    fs::create_dir_all(&rw)?;
    fs::write(ro.join("secret"), "root only\n")?;
    fs::set_permissions(ro.join("secret"), fs::Permissions::from_mode(0o600))?;
    fs::set_permissions(&rw, fs::Permissions::from_mode(0o777))?;

    let mut pod = Pod::run(&cd, &cri, userns_pod(Pod::config(&cd, "userns")), HANDLER)?;
    let sandbox = pod.sandbox_pid()?;
    let want = format!("0 {HOST_BASE} {SIZE}");
    ensure!(
        id_maps(sandbox)? == (want.clone(), want.clone()),
        "sandbox maps {:?}",
        id_maps(sandbox)?
    );
    // the pause binary, root-owned in the image, is the pod root's through
    // the idmapped rootfs the shim mounted
    let pause = fs::metadata(format!("/proc/{sandbox}/root/pause"))?;
    ensure!(
        pause.uid() == HOST_BASE,
        "/pause is owned by {}",
        pause.uid()
    );

    let mut app = userns_container(container_config("app", &probe, &[], &["sleep", "300"]));
    let mount = |container: &str, host: &std::path::Path| api::Mount {
        container_path: container.into(),
        host_path: host.to_string_lossy().into_owned(),
        ..Default::default()
    };
    app.mounts = vec![mount("/ro", &ro), mount("/rw", &rw)];
    let app_id = pod.start(&app)?;
    let runner = wait_runner(&cd, &app_id)?;
    ensure!(
        id_maps(runner)? == (want.clone(), want.clone()),
        "runner maps {:?}",
        id_maps(runner)?
    );
    ensure!(node_uid(runner)? == HOST_BASE, "runner's uid on the node");
    for kind in ["user", "net", "ipc", "uts"] {
        ensure!(
            ns(runner, kind)? == ns(sandbox, kind)?,
            "the runner is not in the pod's {kind} namespace"
        );
    }
    ensure!(
        ns(runner, "mnt")? != ns(sandbox, "mnt")?,
        "the runner shares the sandbox's mount namespace"
    );

    // root inside is nobody special outside: the node's root-only file is
    // closed to it; what it writes is the pod's root's on the node
    let denied = cri.exec_sync(&app_id, &["/probe.wasm", "cat", "/ro/secret"], 30)?;
    ensure!(
        denied.exit_code != 0 && !denied.stdout.contains("root only"),
        "pod root read a root-only node file: {denied:?}"
    );
    let wrote = cri.exec_sync(&app_id, &["/probe.wasm", "write", "/rw/by-exec", "x"], 30)?;
    ensure!(wrote.exit_code == 0, "write in /rw: {wrote:?}");
    let made = fs::metadata(rw.join("by-exec"))?;
    ensure!(
        (made.uid(), made.gid()) == (HOST_BASE, HOST_BASE),
        "a file the exec'd process made is owned by {}:{}",
        made.uid(),
        made.gid()
    );

    // a Linux sidecar: its /etc/hosts and friends are idmapped binds, which
    // runc before 1.2 cannot make; it fails, saying so
    let sidecar = userns_container(container_config(
        "sidecar",
        BUSYBOX,
        &["/bin/sleep", "300"],
        &[],
    ));
    let refused = pod.start(&sidecar);
    let runc_idmaps = runc_features_idmap();
    match (refused, runc_idmaps) {
        (Err(e), false) => ensure!(
            format!("{e:#}").contains("runc 1.2"),
            "sidecar refused without saying why: {e:#}"
        ),
        (Ok(_), true) => {}
        (r, idmaps) => anyhow::bail!("sidecar: {r:?} with a runc that idmaps: {idmaps}"),
    }

    std::thread::sleep(Duration::from_millis(100));
    pod.remove()?;
    cd.assert_no_leftovers()
}

/// Whether the node's runc makes idmapped mounts.
fn runc_features_idmap() -> bool {
    std::process::Command::new("runc")
        .arg("features")
        .output()
        .ok()
        .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
        .and_then(|f| f["linux"]["mountExtensions"]["idmap"]["enabled"].as_bool())
        .unwrap_or(false)
}
