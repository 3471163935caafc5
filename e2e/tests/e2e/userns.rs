//! User namespaces (`hostUsers: false`, `ctr run --uidmap`), as far as they
//! go today: a Wasm container whose spec asks for one is refused with an
//! error that says so (never run in the node's user namespace), and a pod's
//! sandbox on containerd 2.x runs in the pod's user namespace on a rootfs
//! the shim mounts idmapped.

use std::fs;

use anyhow::{ensure, Context, Result};
use wasmpod_e2e::cri::{api, Pod, HANDLER};
use wasmpod_e2e::{Containerd, ContainerdOptions};

use crate::common::{probe_image, run, P1};

/// The pod's ids start here on the node (kubelet picks a multiple of 65536).
const HOST_BASE: u32 = 1_000_000;
const SIZE: u32 = 65536;

fn userns(mut config: api::PodSandboxConfig) -> api::PodSandboxConfig {
    let ns = config
        .linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
        .namespace_options
        .get_or_insert_with(Default::default);
    let map = api::IdMapping {
        host_id: HOST_BASE,
        container_id: 0,
        length: SIZE,
    };
    ns.userns_options = Some(api::UserNamespace {
        mode: api::NamespaceMode::Pod as i32,
        uids: vec![map],
        gids: vec![map],
    });
    config
}

#[test]
fn a_wasm_container_asking_for_a_user_namespace_is_refused() -> Result<()> {
    let cd = Containerd::start(ContainerdOptions::default())?;
    let image = probe_image(&cd, P1)?;
    let id = cd.unique_id("userns");
    let map = format!("0:{HOST_BASE}:{SIZE}");
    let out = run(
        &cd,
        &["--uidmap", &map, "--gidmap", &map],
        &image,
        &id,
        &["hello"],
    )?;
    ensure!(
        !out.success()
            && out
                .stderr
                .contains("user namespaces are not supported for Wasm containers")
            && out.stderr.contains("hostUsers: true"),
        "ctr run --uidmap: {out:?}"
    );
    cd.assert_no_leftovers()
}

#[test]
fn a_pods_sandbox_runs_in_its_user_namespace_on_containerd_2() -> Result<()> {
    let cd = Containerd::start(ContainerdOptions {
        cri: true,
        ..Default::default()
    })?;
    if wasmpod_e2e::containerd::major_version(&cd.options().containerd_bin)? < 2 {
        // CRI user namespaces need containerd 2.0
        return cd.assert_no_leftovers();
    }
    let cri = cd.cri()?;
    let pod = Pod::run(&cd, &cri, userns(Pod::config(&cd, "userns")), HANDLER)?;
    let pid = pod.sandbox_pid()?;
    let want = format!("0 {HOST_BASE} {SIZE}");
    for map in ["uid_map", "gid_map"] {
        let text = fs::read_to_string(format!("/proc/{pid}/{map}"))
            .with_context(|| format!("sandbox {pid}: {map}"))?;
        let got = text.split_whitespace().collect::<Vec<_>>().join(" ");
        ensure!(got == want, "sandbox {map}: {text:?}, want {want:?}");
    }
    // the pause binary, root-owned in the image, is owned by the pod's root
    // through the idmapped rootfs: the node sees it as HOST_BASE
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let uid_line = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .unwrap_or_default();
    ensure!(
        uid_line.split_whitespace().nth(1) == Some(&HOST_BASE.to_string()),
        "sandbox runs as {uid_line:?}, not the pod's root"
    );
    let meta = fs::metadata(format!("/proc/{pid}/root/pause"))
        .context("pause through the sandbox's root")?;
    ensure!(
        std::os::unix::fs::MetadataExt::uid(&meta) == HOST_BASE,
        "/pause is owned by {} on the node, not the pod's root {HOST_BASE}",
        std::os::unix::fs::MetadataExt::uid(&meta)
    );
    pod.remove()?;
    cd.assert_no_leftovers()
}
