//! The node installer (`wasmpod-node`) against the harness's private
//! containerd, started without the `wasmpod` handler, at a non-default
//! socket and config path (the temp dir's) and with no systemd: install
//! registers the handler in the real config file, containerd is restarted
//! (by the test, standing in for the operator, or by the installer's restart
//! command), a Wasm pod runs through CRI, and uninstall leaves the config
//! byte-identical and the handler gone. The node labels go to
//! [`KubeApi`], a loopback stand-in for the API server that keeps them.
//!
//! - the ready label goes on only once CRI lists the handler, also with
//!   `--restart none`, and comes off before the handler is removed;
//! - a restart that fails is recorded ("restart-pending") and retried, within
//!   a run and by the next run; it runs in the namespaces and cgroups of the
//!   containerd serving the socket, not in the installer's;
//! - SIGTERM mid-uninstall leaves a state the next run finishes; the
//!   uninstall waiter retries API errors and is done only once the
//!   uninstaller has removed the step label, after the restart.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use wasmpod_e2e::cri::{container_config, Pod, HANDLER};
use wasmpod_e2e::kube_api::KubeApi;
use wasmpod_e2e::process::{run_with_timeout, wait_until};
use wasmpod_e2e::{shim_path, workspace_root, Containerd, ContainerdOptions, Output};

use crate::common::{cri_probe_image, P1};

const NODE: &str = "e2e-node";
const READY: &str = "wasmpod.io/ready";
const STEP: &str = "wasmpod.io/step";

fn installer_bin() -> Result<PathBuf> {
    let bin = workspace_root().join("target/release/wasmpod-node");
    ensure!(bin.is_file(), "{} not built (make build)", bin.display());
    Ok(bin)
}

fn wasmpod_node(args: &[String]) -> Result<Output> {
    let mut cmd = Command::new(installer_bin()?);
    cmd.args(args).env_remove("NODE_NAME");
    run_with_timeout(&mut cmd, None, Duration::from_secs(180))
}

fn sha256_file(path: &Path) -> Result<String> {
    use sha2::Digest;
    Ok(hex::encode(sha2::Sha256::digest(std::fs::read(path)?)))
}

/// A `wasmpod-node` run in the background, output to files; killed (by its
/// pid) if the test ends first.
struct Bg {
    child: Option<Child>,
    out: PathBuf,
    err: PathBuf,
}

impl Bg {
    fn spawn(mut cmd: Command, dir: &Path, name: &str) -> Result<Bg> {
        let out = dir.join(format!("{name}.out"));
        let err = dir.join(format!("{name}.err"));
        cmd.env_remove("NODE_NAME")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out)?)
            .stderr(std::fs::File::create(&err)?);
        let child = cmd.spawn().with_context(|| format!("spawn {name}"))?;
        Ok(Bg {
            child: Some(child),
            out,
            err,
        })
    }

    fn node(args: &[String], dir: &Path, name: &str) -> Result<Bg> {
        let mut cmd = Command::new(installer_bin()?);
        cmd.args(args);
        Bg::spawn(cmd, dir, name)
    }

    fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    fn signal(&self, sig: nix::sys::signal::Signal) -> Result<()> {
        let child = self.child.as_ref().context("already waited for")?;
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id())?);
        nix::sys::signal::kill(pid, sig).context("signal the installer")
    }

    fn output(&self) -> (String, String) {
        (
            std::fs::read_to_string(&self.out).unwrap_or_default(),
            std::fs::read_to_string(&self.err).unwrap_or_default(),
        )
    }

    /// Waits for the exit: (success, stdout, stderr).
    fn wait(&mut self, timeout: Duration) -> Result<(bool, String, String)> {
        let mut child = self.child.take().context("already waited for")?;
        let Some(st) = wait_until(&mut child, timeout)? else {
            let _ = child.kill();
            let _ = child.wait();
            let (o, e) = self.output();
            bail!("wasmpod-node still running after {timeout:?}\nstdout:\n{o}\nstderr:\n{e}");
        };
        let (o, e) = self.output();
        Ok((st.success(), o, e))
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The node, as the installer's arguments name it: the harness's config
/// and socket, a bin dir and a state file in the temp dir.
struct Node {
    dir: PathBuf,
    config: PathBuf,
    socket: PathBuf,
    bin_dir: PathBuf,
    state: PathBuf,
    token: PathBuf,
    api: KubeApi,
}

impl Node {
    fn new(cd: &Containerd) -> Result<Node> {
        Self::with_api_in(cd, None)
    }

    /// With the API stand-in on the loopback of network namespace `netns`.
    fn with_api_in(cd: &Containerd, netns: Option<&NetNs>) -> Result<Node> {
        let dir = cd.tempdir().to_path_buf();
        let token = dir.join("token");
        std::fs::write(&token, "e2e-token\n")?;
        Ok(Node {
            config: cd.config_path(),
            socket: cd.socket(),
            bin_dir: dir.join("node-bin"),
            state: dir.join("node-state.json"),
            token,
            api: KubeApi::start_in(&[NODE], netns.map(|n| n.path.as_path()))?,
            dir,
        })
    }

    fn args(&self, verb: &str, extra: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = vec![verb.into()];
        let mut push = |k: &str, p: &Path| {
            v.push(k.into());
            v.push(p.to_string_lossy().into_owned());
        };
        push("--distro", Path::new("containerd"));
        push("--config", &self.config);
        push("--socket", &self.socket);
        push("--bin-dir", &self.bin_dir);
        push("--state-file", &self.state);
        if verb != "status" {
            push("--node-name", Path::new(NODE));
            push("--api-server", Path::new(self.api.url()));
            push("--token-file", &self.token);
        }
        v.extend(extra.iter().map(|s| (*s).to_owned()));
        v
    }

    fn install_args(&self, extra: &[&str]) -> Result<Vec<String>> {
        let shim = shim_path()?;
        let mut v = self.args("install", extra);
        v.extend([
            "--shim".into(),
            shim.to_string_lossy().into_owned(),
            "--shim-sha256".into(),
            sha256_file(&shim)?,
        ]);
        Ok(v)
    }

    fn shim(&self) -> PathBuf {
        self.bin_dir.join(wasmpod_e2e::SHIM_BINARY)
    }

    /// The step in the state file, if any.
    fn step(&self) -> Option<String> {
        let text = std::fs::read_to_string(&self.state).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        v["step"].as_str().map(str::to_owned)
    }

    fn failures(&self) -> u64 {
        std::fs::read_to_string(&self.state)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["failures"].as_u64())
            .unwrap_or(0)
    }

    fn wait_step(&self, step: &str, min_failures: u64, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while self.step().as_deref() != Some(step) || self.failures() < min_failures {
            ensure!(
                Instant::now() < deadline,
                "state step {:?} ({} failures) after {timeout:?}, expected {step}",
                self.step(),
                self.failures()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    fn label(&self, key: &str) -> Option<String> {
        self.api.labels(NODE).get(key).cloned()
    }
}

/// Whether CRI on the harness's socket lists the handler now.
fn handler_listed(cd: &Containerd) -> Result<bool> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(wasmpod_runtimeclass::cri::has_handler(
        &cd.socket(),
        HANDLER,
    ))
    .map_err(anyhow::Error::msg)
}

#[test]
fn installer_labels_the_node_only_once_cri_lists_the_handler_and_uninstall_restores_the_config(
) -> Result<()> {
    let mut cd = Containerd::start(ContainerdOptions {
        cri: true,
        cri_handler: false,
        ..Default::default()
    })?;
    let before = std::fs::read(cd.config_path())?;
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
    let node = Node::new(&cd)?;
    let config = node.config.clone();

    // A wrong checksum is refused before anything on the node changes.
    let mut bad = node.install_args(&["--restart", "none"])?;
    let last = bad.len() - 1;
    bad[last] = "0".repeat(64);
    let out = wasmpod_node(&bad)?;
    ensure!(
        !out.success() && out.stderr.contains("expected 0000"),
        "bad checksum: {out:?}"
    );
    ensure!(
        std::fs::read(&config)? == before && !node.shim().exists(),
        "a refused install changed the node"
    );

    // `--restart none`: the config is edited, then the installer waits for
    // the operator's restart; the node is not ready until CRI lists the
    // handler.
    let install = node.install_args(&["--restart", "none", "--wait"])?;
    let mut installer = Bg::node(&install, &node.dir, "install")?;
    node.wait_step("waiting-for-cri", 0, Duration::from_secs(60))?;
    node.api
        .wait_label(NODE, STEP, Some("waiting-for-cri"), Duration::from_secs(10))?;
    std::thread::sleep(Duration::from_secs(1));
    ensure!(
        node.label(READY).is_none() && node.label(STEP).as_deref() == Some("waiting-for-cri"),
        "labels before containerd loaded the handler: {:?}",
        node.api.labels(NODE)
    );
    let installed = std::fs::read_to_string(&config)?;
    // on containerd 2.x: runc's runtime type, the shim by path
    let v3 = wasmpod_e2e::containerd::major_version(&cd.options().containerd_bin)? >= 2;
    let registered = if v3 {
        installed.contains("runtime_type = \"io.containerd.runc.v2\"")
            && installed.contains(&format!("runtime_path = \"{}\"", node.shim().display()))
    } else {
        installed.contains("io.containerd.wasmpod.v1")
    };
    ensure!(
        installed.as_bytes().starts_with(before.trim_ascii_end()) && registered,
        "install did not append the handler:\n{installed}"
    );
    ensure!(
        sha256_file(&node.shim())? == sha256_file(&shim_path()?)?,
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
    let out = wasmpod_node(&node.args("status", &[]))?;
    ensure!(
        !out.success()
            && out.stdout.contains("step waiting-for-cri")
            && out.stdout.contains("does not list"),
        "status before restart: {out:?}"
    );

    let restarted = Instant::now();
    cd.restart()?;
    node.api
        .wait_label(NODE, READY, Some("true"), Duration::from_secs(60))?;
    let requests = node.api.requests();
    let ready = requests
        .iter()
        .find(|r| r.method == "PATCH" && r.body.contains(r#""wasmpod.io/ready":"true""#))
        .context("no ready PATCH")?;
    ensure!(
        ready.at > restarted
            && ready.auth == "Bearer e2e-token"
            && ready.path == format!("/api/v1/nodes/{NODE}")
            && node.label(STEP).as_deref() == Some("ready"),
        "ready label {ready:?} (containerd restarted {:?} after the test began waiting)",
        restarted.elapsed()
    );
    let cri = cd.cri()?;
    let out = wasmpod_node(&node.args("status", &[]))?;
    ensure!(
        out.success()
            && out.stdout.contains("step ready")
            && out.stdout.contains("lists the wasmpod handler"),
        "status after restart: {out:?}"
    );
    // SIGTERM to a ready installer (a DaemonSet pod going away) leaves the
    // node installed.
    installer.signal(nix::sys::signal::Signal::SIGTERM)?;
    let (ok, stdout, stderr) = installer.wait(Duration::from_secs(10))?;
    ensure!(ok, "installer after SIGTERM:\n{stdout}\n{stderr}");
    ensure!(
        std::fs::read_to_string(&config)? == installed && node.label(READY).is_some(),
        "SIGTERM to the installer changed the node"
    );
    // Idempotent: a second install changes nothing and needs no restart.
    let out = wasmpod_node(&node.install_args(&["--restart", "none"])?)?;
    ensure!(
        out.success() && out.stdout.contains("already registered"),
        "second install: {out:?}"
    );
    ensure!(
        std::fs::read_to_string(&config)? == installed,
        "second install changed the config"
    );

    let mut pod = Pod::run(&cd, &cri, Pod::config(&cd, "installed"), HANDLER)?;
    let app = container_config("app", &probe, &[], &["args", "installed"]);
    let id = pod.start(&app)?;
    let st = cri.wait_exited(&id, Duration::from_secs(30))?;
    ensure!(st.exit_code == 0, "Wasm container after install: {st:?}");
    pod.remove()?;

    // Uninstall with `--restart none`: the ready label goes first, the
    // config is restored, and the shim stays until containerd, restarted by
    // the operator, no longer serves the handler.
    let mark = node.api.requests().len();
    let mut uninstaller = Bg::node(
        &node.args("uninstall", &["--restart", "none", "--wait"]),
        &node.dir,
        "uninstall",
    )?;
    node.wait_step("uninstall-restart-pending", 0, Duration::from_secs(60))?;
    let first = node
        .api
        .requests()
        .get(mark)
        .cloned()
        .context("no uninstall request")?;
    ensure!(
        first.method == "PATCH" && first.body.contains(r#""wasmpod.io/ready":null"#),
        "the uninstaller's first request does not remove the ready label: {first:?}"
    );
    ensure!(
        std::fs::read(&config)? == before,
        "uninstall did not restore the config byte for byte"
    );
    std::thread::sleep(Duration::from_secs(1));
    ensure!(
        node.shim().exists() && handler_listed(&cd)?,
        "the shim went while containerd still served the handler"
    );
    cd.restart()?;
    node.api
        .wait_label(NODE, STEP, None, Duration::from_secs(60))?;
    ensure!(uninstaller.running(), "uninstall --wait exited");
    uninstaller.signal(nix::sys::signal::Signal::SIGTERM)?;
    let (ok, stdout, stderr) = uninstaller.wait(Duration::from_secs(10))?;
    ensure!(ok, "uninstall:\n{stdout}\n{stderr}");
    ensure!(
        !node.shim().exists() && node.label(READY).is_none(),
        "the shim copy or the ready label is still there"
    );
    ensure!(
        !node.state.exists()
            && !Path::new(&format!("{}.wasmpod-backup", config.display())).exists()
            && !options.exists(),
        "uninstall left its state file, the config backup or the options file"
    );
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

/// A cgroup of the installer's own, so that the restart command's joining
/// containerd's cgroups shows: the memory hierarchy on v1 (the installer
/// pod's memory limit lives there), the v2 root's child otherwise.
struct InstallerCgroup(PathBuf);

impl InstallerCgroup {
    fn new() -> Result<InstallerCgroup> {
        let root = ["/sys/fs/cgroup/memory", "/sys/fs/cgroup"]
            .into_iter()
            .map(PathBuf::from)
            .find(|d| d.join("cgroup.procs").exists())
            .context("no cgroup hierarchy")?;
        let dir = root.join(format!("wasmpod-e2e-installer-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        Ok(InstallerCgroup(dir))
    }
}

impl Drop for InstallerCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// A network namespace of the test's own (`ip netns add`), loopback up;
/// deleted on drop.
struct NetNs {
    name: String,
    path: PathBuf,
}

impl NetNs {
    fn new() -> Result<NetNs> {
        let name = format!("wasmpod-e2e-installer-{}", std::process::id());
        for args in [
            vec!["netns", "add", &name],
            vec!["-n", &name, "link", "set", "lo", "up"],
        ] {
            let mut cmd = Command::new("ip");
            cmd.args(&args);
            let out = run_with_timeout(&mut cmd, None, Duration::from_secs(10))?;
            ensure!(out.success(), "ip {}: {out:?}", args.join(" "));
        }
        Ok(NetNs {
            path: PathBuf::from("/run/netns").join(&name),
            name,
        })
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// `wasmpod-node ARGS` as in a pod: in `cgroup` (a memory cgroup of its
/// own), then in the network namespace `netns`, and in mount, UTS, IPC and
/// cgroup namespaces of its own (a tmpfs over `probe`, hostname
/// `e2e-installer`, its cgroup as the root of its cgroup namespace).
/// `installer-ns` records the namespaces it ran in.
fn elsewhere(
    args: &[String],
    node: &Node,
    cgroup: &InstallerCgroup,
    netns: &NetNs,
    name: &str,
) -> Result<Bg> {
    let inner = node.dir.join("installer-wrapper.sh");
    std::fs::write(
        &inner,
        r#"d=$1; shift
mount -t tmpfs e2e-installer "$d/probe" && hostname e2e-installer &&
for ns in uts net cgroup mnt; do echo "$ns $(readlink /proc/self/ns/$ns)"; done > "$d/installer-ns" &&
exec "$@"
"#,
    )?;
    let mut cmd = Command::new("/bin/sh");
    cmd.args([
        "-c",
        r#"echo $$ > "$1/cgroup.procs" && shift && exec "$@""#,
        "sh",
    ])
    .arg(&cgroup.0)
    .arg("nsenter")
    .arg(format!("--net={}", netns.path.display()))
    .args([
        "unshare",
        "--mount",
        "--uts",
        "--ipc",
        "--cgroup",
        "--propagation",
        "private",
        "--",
        "/bin/sh",
    ])
    .arg(&inner)
    .arg(&node.dir)
    .arg(installer_bin()?)
    .args(args);
    Bg::spawn(cmd, &node.dir, name)
}

/// The restart command of these tests: refuses once when `fail-next`
/// exists; otherwise records its namespaces and cgroups, writes to `probe`
/// (a tmpfs only in the installer's mount namespace), and asks the test to
/// restart the harness's containerd (`restart-request`, `restart-done`).
fn restart_script(dir: &Path) -> Result<String> {
    std::fs::create_dir_all(dir.join("probe"))?;
    let script = dir.join("restart.sh");
    std::fs::write(
        &script,
        r#"#!/bin/sh
d=$(dirname "$0")
n=$(cat "$d/restart-count" 2>/dev/null || echo 0); echo $((n + 1)) > "$d/restart-count"
if [ -e "$d/fail-next" ]; then rm -f "$d/fail-next"; echo "restart refused by the test" >&2; exit 3; fi
for ns in mnt uts ipc net cgroup; do echo "$ns $(readlink /proc/self/ns/$ns)"; done > "$d/restart-ns"
cat /proc/self/cgroup > "$d/restart-cgroup"
touch "$d/probe/seen"
: > "$d/restart-request"
i=0
while [ ! -e "$d/restart-done" ]; do sleep 0.1; i=$((i + 1)); [ $i -lt 900 ] || exit 9; done
rm -f "$d/restart-done"
"#,
    )?;
    Ok(format!("/bin/sh {}", script.display()))
}

/// Serves the restart script's requests until `bg` exits: records the
/// serving containerd's namespaces and cgroups, restarts it.
fn serve_restarts(
    cd: &mut Containerd,
    dir: &Path,
    bg: &mut Bg,
    timeout: Duration,
) -> Result<Vec<(String, String)>> {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    while bg.running() {
        ensure!(
            Instant::now() < deadline,
            "installer still running after {timeout:?}: {:?}",
            bg.output()
        );
        if std::fs::remove_file(dir.join("restart-request")).is_ok() {
            let pid = cd.pid().context("containerd not running")?;
            let ns = ["mnt", "uts", "ipc", "net", "cgroup"]
                .iter()
                .map(|n| {
                    Ok(format!(
                        "{n} {}",
                        std::fs::read_link(format!("/proc/{pid}/ns/{n}"))?.display()
                    ))
                })
                .collect::<Result<Vec<_>>>()?
                .join("\n");
            let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
            seen.push((format!("{ns}\n"), cgroup));
            cd.restart()?;
            std::fs::write(dir.join("restart-done"), "")?;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(seen)
}

#[test]
fn installer_restarts_containerd_in_its_namespaces_and_resumes_after_failures_and_sigterm(
) -> Result<()> {
    let mut cd = Containerd::start(ContainerdOptions {
        cri: true,
        cri_handler: false,
        ..Default::default()
    })?;
    let before = std::fs::read(cd.config_path())?;
    let netns = NetNs::new()?;
    let node = Node::with_api_in(&cd, Some(&netns))?;
    let dir = node.dir.clone();
    let cgroup = InstallerCgroup::new()?;
    let script = restart_script(&dir)?;

    // 1. The restart fails and this run gives up: the state says
    //    restart-pending, the node is not labelled ready.
    std::fs::write(dir.join("fail-next"), "")?;
    let args = node.install_args(&["--restart-command", &script, "--attempts", "1"])?;
    let (ok, stdout, stderr) =
        elsewhere(&args, &node, &cgroup, &netns, "install-1")?.wait(Duration::from_secs(60))?;
    ensure!(
        !ok && (stderr.contains("restart refused by the test")
            || stdout.contains("restart refused by the test")),
        "first install:\n{stdout}\n{stderr}"
    );
    ensure!(
        stderr.contains("stays at step restart-pending")
            && node.step().as_deref() == Some("restart-pending"),
        "first install did not record the pending restart:\n{stdout}\n{stderr}"
    );
    ensure!(
        node.label(READY).is_none() && node.label(STEP).as_deref() == Some("restart-pending"),
        "labels after a failed restart: {:?}",
        node.api.labels(NODE)
    );
    let out = wasmpod_node(&node.args("status", &[]))?;
    ensure!(
        !out.success()
            && out.stdout.contains("step restart-pending")
            && out.stdout.contains("last failure"),
        "status after a failed restart: {out:?}"
    );

    // 1b. SIGTERM while a restart keeps failing: the run stops at the
    //     recorded step, at once.
    let args = node.install_args(&["--restart-command", "exit 5", "--wait"])?;
    let mut bg = elsewhere(&args, &node, &cgroup, &netns, "install-term")?;
    node.wait_step("restart-pending", 2, Duration::from_secs(60))?;
    let signalled = Instant::now();
    bg.signal(nix::sys::signal::Signal::SIGTERM)?;
    let (ok, stdout, stderr) = bg.wait(Duration::from_secs(10))?;
    ensure!(
        !ok && stderr.contains("terminated at step restart-pending")
            && signalled.elapsed() < Duration::from_secs(3),
        "install after SIGTERM ({:?}):\n{stdout}\n{stderr}",
        signalled.elapsed()
    );
    ensure!(
        node.step().as_deref() == Some("restart-pending") && node.label(READY).is_none(),
        "after SIGTERM: step {:?}, labels {:?}",
        node.step(),
        node.api.labels(NODE)
    );

    // 2. The next run finds the config already registered, restarts anyway
    //    (the state says so), fails once more (the third failure, counted
    //    across runs), retries, and succeeds; the
    //    restart runs in containerd's namespaces and cgroups.
    std::fs::write(dir.join("fail-next"), "")?;
    let args = node.install_args(&["--restart-command", &script, "--attempts", "3"])?;
    let mut bg = elsewhere(&args, &node, &cgroup, &netns, "install-2")?;
    let pid = cd.pid().context("containerd pid")?;
    let seen = serve_restarts(&mut cd, &dir, &mut bg, Duration::from_secs(120))?;
    let (ok, stdout, stderr) = bg.wait(Duration::from_secs(5))?;
    ensure!(ok, "second install:\n{stdout}\n{stderr}");
    ensure!(
        stdout.contains("already registered")
            && stdout.contains("(failure 3 at step restart-pending)")
            && stdout.contains(&format!(
                "containerd pid {pid} (serving {})",
                node.socket.display()
            )),
        "second install:\n{stdout}"
    );
    ensure!(
        std::fs::read_to_string(dir.join("restart-count"))?.trim() == "3" && seen.len() == 1,
        "restart attempts: {:?}, restarts served {}",
        std::fs::read_to_string(dir.join("restart-count")),
        seen.len()
    );
    let (ns, cgroups) = &seen[0];
    let ran_ns = std::fs::read_to_string(dir.join("restart-ns"))?;
    let ran_cgroups = std::fs::read_to_string(dir.join("restart-cgroup"))?;
    let installer_ns = std::fs::read_to_string(dir.join("installer-ns"))?;
    for line in installer_ns.lines() {
        ensure!(
            !ns.contains(line),
            "the installer was not in a namespace of its own: {line} / {ns}"
        );
    }
    ensure!(
        ran_ns == *ns && ran_cgroups == *cgroups && dir.join("probe/seen").exists(),
        "the restart command did not run in containerd's namespaces and cgroups:\nran in:\n{ran_ns}{ran_cgroups}\ncontainerd:\n{ns}{cgroups}"
    );
    ensure!(
        node.label(READY).as_deref() == Some("true")
            && node.label(STEP).as_deref() == Some("ready")
            && handler_listed(&cd)?,
        "after the install: labels {:?}",
        node.api.labels(NODE)
    );

    // 3. SIGTERM while the uninstall's restart keeps failing: the run stops
    //    at the recorded step; the shim stays, since containerd still
    //    serves the handler.
    let args = node.args("uninstall", &["--restart-command", "exit 4", "--wait"]);
    let mut bg = elsewhere(&args, &node, &cgroup, &netns, "uninstall-1")?;
    node.wait_step("uninstall-restart-pending", 1, Duration::from_secs(60))?;
    bg.signal(nix::sys::signal::Signal::SIGTERM)?;
    let (ok, stdout, stderr) = bg.wait(Duration::from_secs(10))?;
    ensure!(
        !ok && stderr.contains("terminated at step uninstall-restart-pending"),
        "uninstall after SIGTERM:\n{stdout}\n{stderr}"
    );
    ensure!(
        node.shim().exists()
            && node.step().as_deref() == Some("uninstall-restart-pending")
            && handler_listed(&cd)?
            && node.label(READY).is_none()
            && node.label(STEP).as_deref() == Some("uninstall-restart-pending"),
        "after SIGTERM: shim {}, step {:?}, labels {:?}",
        node.shim().exists(),
        node.step(),
        node.api.labels(NODE)
    );

    // 4. The uninstall waiter sees the node, retries two failed API calls,
    //    and finishes only after the next uninstall run (whose first restart
    //    is refused and retried) has restarted containerd and removed the
    //    step label.
    let waiter_args: Vec<String> = [
        "wait-unlabeled",
        "--timeout",
        "120",
        "--api-server",
        node.api.url(),
        "--token-file",
        &node.token.to_string_lossy(),
    ]
    .map(str::to_owned)
    .to_vec();
    // in the API stand-in's network namespace, as the installer
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", netns.path.display()))
        .arg(installer_bin()?)
        .args(&waiter_args);
    let mut waiter = Bg::spawn(cmd, &dir, "waiter")?;
    let gets = |api: &KubeApi| api.requests().iter().filter(|r| r.method == "GET").count();
    let deadline = Instant::now() + Duration::from_secs(30);
    while gets(&node.api) == 0 {
        ensure!(Instant::now() < deadline, "the waiter asked nothing");
        std::thread::sleep(Duration::from_millis(20));
    }
    let base = gets(&node.api);
    node.api.fail_next(2, 500);
    while gets(&node.api) < base + 3 {
        ensure!(
            Instant::now() < deadline,
            "the waiter stopped asking after an API error: {:?}",
            waiter.output()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    ensure!(
        waiter.running(),
        "the waiter gave up: {:?}",
        waiter.output()
    );
    // its first restart is refused too, and retried
    std::fs::write(dir.join("fail-next"), "")?;
    let args = node.args("uninstall", &["--restart-command", &script]);
    let mut bg = elsewhere(&args, &node, &cgroup, &netns, "uninstall-2")?;
    serve_restarts(&mut cd, &dir, &mut bg, Duration::from_secs(120))?;
    let (ok, stdout, stderr) = bg.wait(Duration::from_secs(5))?;
    ensure!(
        ok && stdout.contains("(failure 2 at step uninstall-restart-pending)")
            && stdout.contains("no longer lists the wasmpod handler"),
        "second uninstall:\n{stdout}\n{stderr}"
    );
    let (ok, wout, werr) = waiter.wait(Duration::from_secs(30))?;
    ensure!(
        ok && wout.contains("(retrying)") && wout.contains("every node is uninstalled"),
        "waiter:\n{wout}\n{werr}"
    );
    let requests = node.api.requests();
    let done = requests
        .iter()
        .rposition(|r| r.method == "PATCH" && r.body.contains(r#""wasmpod.io/step":null"#))
        .context("no step label removal")?;
    ensure!(
        requests[done + 1..]
            .iter()
            .any(|r| r.method == "GET" && r.status == 200),
        "the waiter finished before the uninstaller removed the step label"
    );
    ensure!(
        std::fs::read(cd.config_path())? == before
            && !node.shim().exists()
            && !node.state.exists()
            && !handler_listed(&cd)?
            && node.api.labels(NODE).is_empty(),
        "after uninstall: shim {}, state {}, labels {:?}",
        node.shim().exists(),
        node.state.exists(),
        node.api.labels(NODE)
    );
    drop(cgroup);
    drop(netns);
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
        "--handler-timeout",
        "1",
        "--attempts",
        "1",
    ])?;
    // no containerd in there: the install stops before labelling, at the
    // step it recorded
    ensure!(
        !out.success()
            && out
                .stderr
                .contains("does not list the wasmpod handler after 1 s")
            && out.stderr.contains("stays at step waiting-for-cri")
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
