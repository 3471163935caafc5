//! The node installer (`wasmpod-node`) against the harness's private
//! containerd, started without the `wasmpod` handler: install registers it
//! in the real config file, the harness restarts containerd (its restart
//! hook), a Wasm pod runs through CRI, and uninstall leaves the config
//! byte-identical and the handler gone. The node label goes to a local HTTP
//! server standing in for the API server, which checks the exact requests.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use wasmpod_e2e::cri::{container_config, Pod, HANDLER};
use wasmpod_e2e::process::run_with_timeout;
use wasmpod_e2e::{shim_path, workspace_root, Containerd, ContainerdOptions, Output};

use crate::common::{cri_probe_image, P1};

/// A stand-in API server: answers every request 200 `{}` and sends
/// "METHOD PATH BODY" for each on the channel.
fn api_server() -> Result<(String, mpsc::Receiver<String>)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}", listener.local_addr()?);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let Ok(clone) = stream.try_clone() else {
                continue;
            };
            let mut reader = BufReader::new(clone);
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let mut len = 0usize;
            let mut auth = String::new();
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
                    break;
                }
                if let Some((k, v)) = h.split_once(':') {
                    if k.eq_ignore_ascii_case("content-length") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                    if k.eq_ignore_ascii_case("authorization") {
                        auth = v.trim().to_owned();
                    }
                }
            }
            let mut body = vec![0; len];
            let _ = reader.read_exact(&mut body);
            let mut stream = stream;
            let _ = stream.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
            );
            let parts: Vec<&str> = line.split_whitespace().collect();
            let _ = tx.send(format!(
                "{} {} {} {}",
                parts.first().unwrap_or(&""),
                parts.get(1).unwrap_or(&""),
                auth,
                String::from_utf8_lossy(&body)
            ));
        }
    });
    Ok((url, rx))
}

fn wasmpod_node(args: &[&str]) -> Result<Output> {
    let bin = workspace_root().join("target/release/wasmpod-node");
    ensure!(bin.is_file(), "{} not built (make build)", bin.display());
    let mut cmd = Command::new(bin);
    cmd.args(args).env_remove("NODE_NAME");
    run_with_timeout(&mut cmd, None, Duration::from_secs(120))
}

fn sha256_file(path: &Path) -> Result<String> {
    use sha2::Digest;
    Ok(hex::encode(sha2::Sha256::digest(std::fs::read(path)?)))
}

#[test]
fn node_installer_registers_the_handler_and_uninstall_restores_the_config() -> Result<()> {
    let mut cd = Containerd::start(ContainerdOptions {
        cri: true,
        cri_handler: false,
        ..Default::default()
    })?;
    let config = cd.config_path();
    let before = std::fs::read(&config)?;
    let cri = cd.cri()?;
    let probe = cri_probe_image(&cd, P1)?;
    // Without the handler, CRI refuses wasmpod pods.
    let err = Pod::run(&cd, &cri, Pod::config(&cd, "too-early"), HANDLER)
        .err()
        .context("a wasmpod pod ran before the handler was registered")?;
    ensure!(
        format!("{err:#}").contains(HANDLER),
        "RunPodSandbox error: {err:#}"
    );

    let dir = cd.tempdir().to_path_buf();
    let bin_dir = dir.join("node-bin");
    let shim = shim_path()?;
    let token = dir.join("token");
    std::fs::write(&token, "e2e-token\n")?;
    let (api, requests) = api_server()?;
    let socket = cd.socket();
    let common = |verb: &'static str| -> Vec<String> {
        vec![
            verb.to_owned(),
            "--distro".into(),
            "containerd".into(),
            "--config".into(),
            config.to_string_lossy().into_owned(),
            "--socket".into(),
            socket.to_string_lossy().into_owned(),
            "--bin-dir".into(),
            bin_dir.to_string_lossy().into_owned(),
            "--state-file".into(),
            dir.join("node-state.json").to_string_lossy().into_owned(),
        ]
    };
    let api_args = [
        "--restart",
        "none",
        "--node-name",
        "e2e-node",
        "--api-server",
        &api,
        "--token-file",
        &token.to_string_lossy(),
    ]
    .map(str::to_owned);
    let mut install: Vec<String> = common("install");
    install.extend(api_args.iter().cloned());
    install.extend(["--shim".into(), shim.to_string_lossy().into_owned()]);
    install.extend(["--shim-sha256".into(), sha256_file(&shim)?]);
    let install: Vec<&str> = install.iter().map(String::as_str).collect();

    // A wrong checksum is refused before anything changes.
    let mut bad = install.clone();
    let last = bad.len() - 1;
    let zeros = "0".repeat(64);
    bad[last] = &zeros;
    let out = wasmpod_node(&bad)?;
    ensure!(
        !out.success() && out.stderr.contains("expected 0000"),
        "bad checksum: {out:?}"
    );
    ensure!(
        std::fs::read(&config)? == before,
        "a refused install changed the config"
    );

    let out = wasmpod_node(&install)?;
    ensure!(out.success(), "install: {out:?}");
    let installed = std::fs::read_to_string(&config)?;
    // on containerd 2.x: runc's runtime type, the shim by path
    let v3 = wasmpod_e2e::containerd::major_version(&cd.options().containerd_bin)? >= 2;
    let registered = if v3 {
        installed.contains("runtime_type = \"io.containerd.runc.v2\"")
            && installed.contains(&format!(
                "runtime_path = \"{}\"",
                bin_dir.join(wasmpod_e2e::SHIM_BINARY).display()
            ))
    } else {
        installed.contains("io.containerd.wasmpod.v1")
    };
    ensure!(
        installed.as_bytes().starts_with(before.trim_ascii_end()) && registered,
        "install did not append the handler:\n{installed}"
    );
    ensure!(
        sha256_file(&bin_dir.join(wasmpod_e2e::SHIM_BINARY))? == sha256_file(&shim)?,
        "the shim copy differs"
    );
    // the handler's options reach the shim on containerd 1.6 only as a
    // ConfigPath: the file beside the config, which the pod below needs;
    // containerd 2.x (config version 3) sends the options table itself
    let options = config.with_file_name(wasmpod_runtimeclass::config::OPTIONS_FILE);
    if v3 {
        ensure!(
            !installed.contains("ConfigPath") && !options.exists(),
            "config version 3 got a ConfigPath or {}:\n{installed}",
            options.display()
        );
    } else {
        ensure!(
            installed.contains(&format!("ConfigPath = \"{}\"", options.display()))
                && std::fs::read_to_string(&options)?.contains("SystemdCgroup = false"),
            "no options file {} named by the handler:\n{installed}",
            options.display()
        );
    }
    let patch = requests.recv_timeout(Duration::from_secs(10))?;
    ensure!(
        patch
            == r#"PATCH /api/v1/nodes/e2e-node Bearer e2e-token {"metadata":{"labels":{"wasmpod.io/ready":"true"}}}"#,
        "label request: {patch}"
    );
    // Idempotent: a second install changes nothing.
    let out = wasmpod_node(&install)?;
    ensure!(
        out.success() && out.stdout.contains("already registered"),
        "second install: {out:?}"
    );
    ensure!(
        std::fs::read_to_string(&config)? == installed,
        "second install changed the config"
    );
    let _ = requests.recv_timeout(Duration::from_secs(10))?;

    // Not ready until containerd has loaded the new config.
    let status: Vec<String> = common("status");
    let status: Vec<&str> = status.iter().map(String::as_str).collect();
    let out = wasmpod_node(&status)?;
    ensure!(
        !out.success() && out.stdout.contains("does not list"),
        "status before restart: {out:?}"
    );
    cd.restart()?;
    // A new connection: the old one ended with the old containerd.
    let cri = cd.cri()?;
    let out = wasmpod_node(&status)?;
    ensure!(
        out.success() && out.stdout.contains("lists the wasmpod handler"),
        "status after restart: {out:?}"
    );

    let mut pod = Pod::run(&cd, &cri, Pod::config(&cd, "installed"), HANDLER)?;
    let app = container_config("app", &probe, &[], &["args", "installed"]);
    let id = pod.start(&app)?;
    let st = cri.wait_exited(&id, Duration::from_secs(30))?;
    ensure!(st.exit_code == 0, "Wasm container after install: {st:?}");
    pod.remove()?;

    let mut uninstall: Vec<String> = common("uninstall");
    uninstall.extend(api_args.iter().cloned());
    let uninstall: Vec<&str> = uninstall.iter().map(String::as_str).collect();
    let out = wasmpod_node(&uninstall)?;
    ensure!(out.success(), "uninstall: {out:?}");
    ensure!(
        std::fs::read(&config)? == before,
        "uninstall did not restore the config byte for byte"
    );
    ensure!(
        !bin_dir.join(wasmpod_e2e::SHIM_BINARY).exists(),
        "the shim copy is still there"
    );
    ensure!(
        !dir.join("node-state.json").exists()
            && !Path::new(&format!("{}.wasmpod-backup", config.display())).exists()
            && !options.exists(),
        "uninstall left its state file, the config backup or the options file"
    );
    let unpatch = requests.recv_timeout(Duration::from_secs(10))?;
    ensure!(
        unpatch
            == r#"PATCH /api/v1/nodes/e2e-node Bearer e2e-token {"metadata":{"labels":{"wasmpod.io/ready":null}}}"#,
        "unlabel request: {unpatch}"
    );
    cd.restart()?;
    let cri = cd.cri()?;
    let err = Pod::run(&cd, &cri, Pod::config(&cd, "after-uninstall"), HANDLER)
        .err()
        .context("a wasmpod pod ran after uninstall")?;
    ensure!(
        format!("{err:#}").contains(HANDLER),
        "RunPodSandbox error: {err:#}"
    );
    cd.assert_no_leftovers()
}

#[test]
fn installer_image_runs_under_runc_and_installs_from_its_own_files() -> Result<()> {
    let cd = Containerd::start(ContainerdOptions::default())?;
    let tar = cd.tempdir().join("wasmpod-node.tar");
    let reference = "ghcr.io/wasmpod/wasmpod-node:e2e";
    let builder = workspace_root().join("target/release/wasmpod-node-image");
    let mut cmd = Command::new(&builder);
    cmd.args(["--installer"])
        .arg(workspace_root().join("target/release/wasmpod-node"))
        .arg("--shim")
        .arg(shim_path()?)
        .args(["--reference", reference, "--out"])
        .arg(&tar);
    let out = run_with_timeout(&mut cmd, None, Duration::from_secs(120))?;
    ensure!(out.success(), "wasmpod-node-image: {out:?}");
    cd.ctr(&["images", "import", &tar.to_string_lossy()])?;

    let id = cd.unique_id("node-image");
    let out = cd.ctr_output(&["run", "--rm", reference, &id, "/wasmpod-node", "--version"])?;
    ensure!(
        out.success() && out.stdout.starts_with("wasmpod-node "),
        "--version: {out:?}"
    );

    // Inside the image (under runc), an install onto an empty "host" in the
    // container's /tmp: the shim's checksum file is checked, the binary
    // copied, and a minimal config written.
    let id = cd.unique_id("node-image");
    let out = cd.ctr_output(&[
        "run",
        "--rm",
        reference,
        &id,
        "/wasmpod-node",
        "install",
        "--host-root",
        "/tmp/host",
        "--distro",
        "containerd",
        "--restart",
        "none",
        "--config-version",
        "2",
    ])?;
    ensure!(
        out.success()
            && out.stdout.contains("installed (sha256 ")
            && out
                .stdout
                .contains("registered in /etc/containerd/config.toml (config version 2"),
        "install inside the image: {out:?}"
    );
    cd.assert_no_leftovers()
}

#[test]
fn installed_golden_configs_load_in_the_containerd_under_test() -> Result<()> {
    let containerd = wasmpod_e2e::containerd::containerd_dir().join("containerd");
    let golden = workspace_root().join("runtimeclass/testdata/golden");
    // containerd 2.x reads versions 2 and 3 (the installer refuses a
    // version 1 file there: 2.x ignores its CRI section); 1.x reads 1 and 2
    let v2x = wasmpod_e2e::containerd::major_version(&containerd)? >= 2;
    let mut names = vec![
        "containerd-1.6.installed",
        "containerd-1.6-systemd.installed",
        "containerd-1.7.installed",
        "custom-commented.installed",
        "microk8s-containerd-template.installed",
    ];
    names.push(if v2x {
        "containerd-2.1.installed"
    } else {
        "legacy-v1.installed"
    });
    for name in names {
        let path = golden.join(name);
        let mut cmd = Command::new(&containerd);
        cmd.arg("--config").arg(&path).args(["config", "dump"]);
        let out = run_with_timeout(&mut cmd, None, Duration::from_secs(30))?;
        ensure!(out.success(), "{name}: containerd config dump: {out:?}");
        ensure!(
            out.stdout.contains(".containerd.runtimes.wasmpod]")
                && (out.stdout.contains("io.containerd.wasmpod.v1")
                    || out.stdout.contains("/containerd-shim-wasmpod-v1'")),
            "{name}: containerd does not see the handler:\n{}",
            out.stdout
        );
    }
    Ok(())
}
