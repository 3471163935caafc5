//! A pod's `securityContext` means for a Wasm container what it means for a
//! container under runc: the same config goes to a Wasm pod and to a
//! busybox pod in one test, and what the kernel says of each process is
//! compared: its user and groups, the five capability sets, no_new_privs,
//! seccomp, oom_score_adj, rlimits, its own mount namespace rooted in the
//! rootfs; the same for a process exec'd into each. Then what the user may
//! do with files in binds, and whose names the guest resolves.

use std::collections::BTreeMap;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use wasmpod_e2e::cri::{api, container_config, security_context, Pod, HANDLER};
use wasmpod_e2e::dns::DnsServer;
use wasmpod_e2e::guests::http_guest;
use wasmpod_e2e::images::{busybox_image, wasm_image};
use wasmpod_e2e::procfs::{wait_process, wait_runner};
use wasmpod_e2e::{Containerd, ContainerdOptions};

use crate::common::{cri_probe_image, image_tar_of, P2};

const BUSYBOX: &str = "docker.io/wasmpod-e2e/busybox:security";

fn cri_containerd() -> Result<Containerd> {
    Containerd::start(ContainerdOptions {
        cri: true,
        ..Default::default()
    })
}

/// What `kubectl` sends for a PodSecurity "restricted" container that also
/// runs as 1000:1000 with group 2000 and `oom_score_adj` 777, with two
/// hostPath volumes (`/ro` read-only, `/rw`) and kubelet's `/etc/hosts`.
fn restricted(config: api::ContainerConfig, volumes: &Volumes) -> api::ContainerConfig {
    let mut config = wasmpod_e2e::cri::restricted(config, 1000);
    security_context(&mut config).supplemental_groups = vec![2000];
    config
        .linux
        .get_or_insert_with(Default::default)
        .resources
        .get_or_insert_with(Default::default)
        .oom_score_adj = 777;
    let mount = |container: &str, host: &Path, readonly: bool| api::Mount {
        container_path: container.into(),
        host_path: host.to_string_lossy().into_owned(),
        readonly,
        ..Default::default()
    };
    config.mounts = vec![
        mount("/ro", &volumes.ro, true),
        mount("/rw", &volumes.rw, false),
        mount("/etc/hosts", &volumes.hosts, false),
    ];
    config
}

/// The host side of the volumes.
struct Volumes {
    ro: std::path::PathBuf,
    rw: std::path::PathBuf,
    hosts: std::path::PathBuf,
}

impl Volumes {
    /// `/ro` holds `secret` (root's, 0600) and `public` (0644); `/rw` is
    /// world-writable; the hosts file names `alias-from-hosts.test`.
    fn make(cd: &Containerd, hosts_ip: Ipv4Addr) -> Result<Volumes> {
        let base = cd.tempdir().join("volumes");
        let v = Volumes {
            ro: base.join("ro"),
            rw: base.join("rw"),
            hosts: base.join("hosts"),
        };
        fs::create_dir_all(&v.ro)?;
        fs::create_dir_all(&v.rw)?;
        fs::set_permissions(&v.rw, fs::Permissions::from_mode(0o777))?;
        fs::write(v.ro.join("secret"), "top secret\n")?;
        fs::set_permissions(v.ro.join("secret"), fs::Permissions::from_mode(0o600))?;
        fs::write(v.ro.join("public"), "for everyone\n")?;
        fs::set_permissions(v.ro.join("public"), fs::Permissions::from_mode(0o644))?;
        fs::write(
            &v.hosts,
            format!("# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n{hosts_ip}\talias-from-hosts.test\n"),
        )?;
        Ok(v)
    }
}

/// The sandbox fields of `/proc/PID/status`, `oom_score_adj` and the
/// limits.
fn kernel_view(pid: i32) -> Result<BTreeMap<String, String>> {
    let mut out = wasmpod_e2e::procfs::sandbox_status(pid)?;
    // how many PID namespaces deep: the node's, and the container's own
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let nspid = status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .unwrap_or_default();
    out.insert(
        "PID namespace levels".into(),
        nspid.split_whitespace().count().to_string(),
    );
    for line in fs::read_to_string(format!("/proc/{pid}/limits"))?
        .lines()
        .skip(1)
    {
        let (name, values) = line.split_at(line.len().min(26));
        out.insert(
            format!("limit {}", name.trim()),
            values.split_whitespace().collect::<Vec<_>>().join(" "),
        );
    }
    Ok(out)
}

/// Checks that process `pid` is in a mount namespace of its own whose root
/// is the container's: `marker` exists there and `/etc/hostname` names the
/// pod.
fn own_mount_namespace(pid: i32, marker: &str, hostname: &str) -> Result<()> {
    ensure!(
        wasmpod_e2e::procfs::own_mount_namespace(pid)?,
        "process {pid} is in the node's mount namespace"
    );
    let root = format!("/proc/{pid}/root");
    ensure!(
        Path::new(&root)
            .join(marker.trim_start_matches('/'))
            .exists(),
        "process {pid}: no {marker} in its root"
    );
    let name = fs::read_to_string(format!("{root}/etc/hostname"))?;
    ensure!(
        name.trim() == hostname,
        "process {pid}: /etc/hostname is {name:?}"
    );
    Ok(())
}

/// The mounts of process `pid`'s mount namespace, as it sees them: mount
/// point, filesystem type, read-only or not, in order.
fn mount_table(pid: i32) -> Result<Vec<(String, String, bool)>> {
    let info = fs::read_to_string(format!("/proc/{pid}/mountinfo"))?;
    Ok(info
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let f: Vec<&str> = left.split(' ').collect();
            let mut r = right.split(' ');
            let fstype = r.next()?;
            // read-only for the mount, or for the whole filesystem
            let superblock = r.nth(1).unwrap_or_default();
            let ro = f
                .get(5)?
                .split(',')
                .chain(superblock.split(','))
                .any(|o| o == "ro");
            Some(((*f.get(4)?).to_owned(), fstype.to_owned(), ro))
        })
        .collect())
}

/// Runs a one-shot container of `config` in `pod` to its end: (exit code,
/// its log lines joined).
fn one_shot(
    cri: &wasmpod_e2e::cri::Cri,
    pod: &mut Pod,
    config: &api::ContainerConfig,
) -> Result<(i32, String)> {
    let id = pod.start(config)?;
    let status = cri.wait_exited(&id, Duration::from_secs(30))?;
    let lines: Vec<String> = pod.log_lines(config)?.into_iter().map(|(_, l)| l).collect();
    Ok((status.exit_code, lines.join("\n")))
}

#[test]
fn restricted_pod_gets_the_sandbox_runc_gives_it() -> Result<()> {
    let cd = cri_containerd()?;
    let cri = cd.cri()?;
    let probe = cri_probe_image(&cd, P2)?;
    cd.cri_import(&busybox_image(BUSYBOX)?, BUSYBOX)?;
    let net = cd.cni().context("the CRI harness has a pod network")?;
    let gateway: Ipv4Addr = net.gateway().parse()?;
    let [a, b, c, _] = gateway.octets();
    let (hosts_ip, dns_ip) = (Ipv4Addr::new(a, b, c, 77), Ipv4Addr::new(a, b, c, 88));
    let volumes = Volumes::make(&cd, hosts_ip)?;

    // the pod's resolv.conf names the test's DNS server, on the gateway
    let with_dns = |mut config: api::PodSandboxConfig| {
        config.dns_config = Some(api::DnsConfig {
            servers: vec![gateway.to_string()],
            searches: vec!["svc.wasmpod.test".into()],
            options: vec!["ndots:2".into(), "timeout:2".into(), "attempts:2".into()],
        });
        config
    };
    let mut wasm = Pod::run(
        &cd,
        &cri,
        with_dns(Pod::config(&cd, "wasm-restricted")),
        HANDLER,
    )?;
    let mut plain = Pod::run(&cd, &cri, with_dns(Pod::config(&cd, "runc-restricted")), "")?;
    let records = BTreeMap::from([("web.svc.wasmpod.test".to_owned(), dns_ip)]);
    let dns = DnsServer::start(
        SocketAddr::from((gateway, 53)),
        records,
        Duration::from_secs(240),
    )?;

    // the two long-running containers, and what the kernel says of them
    let app = restricted(
        container_config("app", &probe, &[], &["sleep", "300"]),
        &volumes,
    );
    let app_id = wasm.start(&app)?;
    let sh = restricted(
        container_config("sh", BUSYBOX, &["/bin/sleep", "300"], &[]),
        &volumes,
    );
    let sh_id = plain.start(&sh)?;
    let runner = wait_runner(&cd, &app_id)?;
    let sleeper = wait_process(&cd, "busybox sleep", |p| p.argv == ["/bin/sleep", "300"])?;
    wait_running(&cri, &app_id)?;
    let runc_view = kernel_view(sleeper)?;
    let wasm_view = settled_view(runner, &runc_view)?;
    ensure!(
        wasm_view == runc_view,
        "the Wasm container's process differs from runc's:\n{}",
        diff(&wasm_view, &runc_view)
    );
    // what that is: the table
    for (field, want) in [
        ("Uid", "1000 1000 1000 1000"),
        ("Gid", "1000 1000 1000 1000"),
        ("CapEff", "0000000000000000"),
        ("CapBnd", "0000000000000000"),
        ("NoNewPrivs", "1"),
        ("Seccomp", "2"),
        ("oom_score_adj", "777"),
    ] {
        ensure!(
            wasm_view.get(field).map(String::as_str) == Some(want),
            "{field}: {wasm_view:?}"
        );
    }
    ensure!(
        wasm_view["Groups"].split(' ').any(|g| g == "2000"),
        "supplemental group 2000 missing: {wasm_view:?}"
    );
    own_mount_namespace(runner, "/probe.wasm", "wasm-restricted")?;
    own_mount_namespace(sleeper, "/bin/busybox", "runc-restricted")?;
    // each the first process of a PID namespace of its own
    for pid in [runner, sleeper] {
        let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
        let nspid = status
            .lines()
            .find_map(|l| l.strip_prefix("NSpid:"))
            .unwrap_or_default();
        ensure!(
            nspid.split_whitespace().last() == Some("1"),
            "process {pid}: NSpid {nspid:?}"
        );
    }
    let (wasm_mounts, mut runc_mounts) = (mount_table(runner)?, mount_table(sleeper)?);
    // the one known difference (docs/security.md): the spec's `ro` on the
    // cgroup v1 tmpfs, which runc 1.1 leaves writable, is honoured
    for m in &mut runc_mounts {
        if m.0 == "/sys/fs/cgroup" && m.1 == "tmpfs" {
            m.2 = true;
        }
    }
    ensure!(
        wasm_mounts == runc_mounts,
        "the Wasm container's mounts differ from runc's:\nwasm {wasm_mounts:#?}\nrunc {runc_mounts:#?}"
    );

    // a process exec'd into each (`kubectl exec`) gets the same
    let cri2 = cd.cri()?;
    let (wasm_exec, runc_exec) = std::thread::scope(|s| -> Result<_> {
        let (cri3, id) = (cd.cri()?, app_id.clone());
        let wasm_sleep = s.spawn(move || cri3.exec_sync(&id, &["/probe.wasm", "sleep", "6"], 30));
        let exec_runner = wait_process(&cd, "exec'd runner", |p| {
            // exec'd runners are named `container/exec`
            p.argv.get(1).map(String::as_str) == Some("__wasmpod_runner")
                && p.argv
                    .get(2)
                    .is_some_and(|a| a.starts_with(&format!("{app_id}/")))
        })?;
        let runc_exec = runc_exec_view(&cd, &cri2, &sh_id, sleeper)?;
        let wasm_exec = settled_view(exec_runner, &runc_exec)?;
        own_mount_namespace(exec_runner, "/probe.wasm", "wasm-restricted")?;
        for ns in ["mnt", "pid"] {
            ensure!(
                fs::read_link(format!("/proc/{exec_runner}/ns/{ns}"))?
                    == fs::read_link(format!("/proc/{runner}/ns/{ns}"))?,
                "the exec'd runner is not in the container's {ns} namespace"
            );
        }
        let out = wasm_sleep
            .join()
            .map_err(|_| anyhow::anyhow!("exec thread panicked"))??;
        ensure!(
            out.exit_code == 0 && out.stdout.contains("slept"),
            "exec sleep: {out:?}"
        );
        Ok((wasm_exec, runc_exec))
    })?;
    ensure!(
        wasm_exec == runc_exec,
        "the exec'd Wasm process differs from runc's:\n{}",
        diff(&wasm_exec, &runc_exec)
    );

    // files, as user 1000 in the binds: the kernel decides, not WASI
    let exec = |args: &[&str]| {
        let mut argv = vec!["/probe.wasm"];
        argv.extend(args);
        cri.exec_sync(&app_id, &argv, 30)
    };
    let denied = exec(&["cat", "/ro/secret"])?;
    ensure!(
        denied.exit_code != 0
            && denied.stderr.contains("ermission denied")
            && !denied.stdout.contains("top secret"),
        "a root-only file read by uid 1000: {denied:?}"
    );
    let bb_denied = cri.exec_sync(&sh_id, &["/bin/cat", "/ro/secret"], 30)?;
    ensure!(
        bb_denied.exit_code != 0 && bb_denied.stderr.contains("ermission denied"),
        "{bb_denied:?}"
    );
    let public = exec(&["cat", "/ro/public"])?;
    ensure!(public.stdout == "for everyone\n", "{public:?}");
    // the kernel's EROFS (wasmtime-wasi 48 reports it as EIO, WASI errno
    // 29), not WASI's own refusal (EPERM or EACCES): the preopen is wide
    let rofs = exec(&["write", "/ro/new", "x"])?;
    ensure!(
        rofs.exit_code != 0
            && (rofs.stderr.contains("ead-only file system")
                || rofs.stderr.contains("(os error 29)")),
        "a write to a ro bind: {rofs:?}"
    );
    ensure!(!volumes.ro.join("new").exists(), "the ro bind was written");
    let wrote = exec(&["write", "/rw/by-wasm", "x"])?;
    ensure!(wrote.exit_code == 0, "{wrote:?}");
    let bb_wrote = cri.exec_sync(&sh_id, &["/bin/busybox", "touch", "/rw/by-runc"], 30)?;
    ensure!(bb_wrote.exit_code == 0, "{bb_wrote:?}");
    for name in ["by-wasm", "by-runc"] {
        let meta = fs::metadata(volumes.rw.join(name))?;
        ensure!(
            (meta.uid(), meta.gid()) == (1000, 1000),
            "{name} is owned by {}:{} on the host",
            meta.uid(),
            meta.gid()
        );
    }
    // the guest's root is the container's: the image's files, kubelet's
    // hosts file, no procfs (the runner's memory stays out of reach)
    let hosts = exec(&["cat", "/etc/hosts"])?;
    ensure!(hosts.stdout.contains("alias-from-hosts.test"), "{hosts:?}");
    let proc_dir = exec(&["ls", "/proc"])?;
    ensure!(
        proc_dir.stdout.trim().is_empty(),
        "the guest sees procfs: {proc_dir:?}"
    );

    // names: the pod's /etc/hosts, then the DNS server its resolv.conf names
    let by_hosts = exec(&["resolve", "alias-from-hosts.test"])?;
    ensure!(
        by_hosts.stdout.trim() == format!("alias-from-hosts.test {hosts_ip}"),
        "a name from the pod's /etc/hosts: {by_hosts:?}"
    );
    let by_dns = exec(&["resolve", "web"])?;
    ensure!(
        by_dns.stdout.trim() == format!("web {dns_ip}"),
        "a name from the pod's DNS server (search svc.wasmpod.test): {by_dns:?}; server saw {:?}",
        dns.queries()
    );
    let bb_dns = cri.exec_sync(
        &sh_id,
        &["/bin/busybox", "nslookup", "web.svc.wasmpod.test"],
        30,
    )?;
    ensure!(
        bb_dns.stdout.contains(&dns_ip.to_string()),
        "busybox nslookup: {bb_dns:?}"
    );
    let unknown = exec(&["resolve", "nowhere.invalid"])?;
    ensure!(
        unknown.exit_code != 0,
        "an unknown name resolved: {unknown:?}"
    );
    ensure!(
        dns.queries().iter().any(|q| q == "web.svc.wasmpod.test"),
        "the DNS server was not asked: {:?}",
        dns.queries()
    );

    // a wasi:http component serves under the same sandbox: each request's
    // WASI context is built by the unprivileged, filtered runner
    let http_image = "docker.io/wasmpod/http:security";
    cd.cri_import(
        &wasm_image(http_image, &http_guest()?, "/http.wasm")?,
        http_image,
    )?;
    let web = restricted(container_config("web", http_image, &[], &[]), &volumes);
    let web_id = wasm.start(&web)?;
    let addr: SocketAddr = format!("{}:8080", wasm.ip()?).parse()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        match wasmpod_e2e::http_client::get(addr, "/", &[], Duration::from_secs(5)) {
            Ok((200, body)) => break body,
            other if Instant::now() >= deadline => {
                bail!("the HTTP component never served: {other:?}")
            }
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    ensure!(body == "hello from wasmpod http\n", "{body:?}");
    let web_view = settled_view(wait_runner(&cd, &web_id)?, &runc_view)?;
    ensure!(
        web_view == runc_view,
        "the HTTP component's runner differs from runc's process:\n{}",
        diff(&web_view, &runc_view)
    );

    // the same as the container's first process: a one-shot guest
    let secret = restricted(
        container_config("secret", &probe, &[], &["cat", "/ro/secret"]),
        &volumes,
    );
    let (code, log) = one_shot(&cri, &mut wasm, &secret)?;
    ensure!(
        code != 0 && log.contains("ermission denied"),
        "one-shot cat: {code} {log:?}"
    );
    let lookup = restricted(
        container_config("lookup", &probe, &[], &["resolve", "web"]),
        &volumes,
    );
    let (code, log) = one_shot(&cri, &mut wasm, &lookup)?;
    ensure!(
        code == 0 && log.contains(&dns_ip.to_string()),
        "one-shot resolve: {code} {log:?}"
    );

    drop(dns);
    wasm.remove()?;
    plain.remove()?;
    cd.assert_no_leftovers()
}

/// The kernel's view of runner `pid` once it runs its guest: a runner
/// drops its privileges step by step after it appears (and loads seccomp
/// only once told to start), so it is read until it matches `want` or
/// 10 s have passed; the last view is returned either way.
fn settled_view(pid: i32, want: &BTreeMap<String, String>) -> Result<BTreeMap<String, String>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let view = kernel_view(pid)?;
        if &view == want || Instant::now() >= deadline {
            return Ok(view);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until CRI reports container `id` running.
fn wait_running(cri: &wasmpod_e2e::cri::Cri, id: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while cri.container_status(id)?.state != api::ContainerState::ContainerRunning as i32 {
        if Instant::now() >= deadline {
            bail!("container {id} is not running after 20 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// The kernel's view of a `sleep` exec'd into busybox container `sh_id`
/// (whose first process is `sleeper`).
fn runc_exec_view(
    cd: &Containerd,
    cri: &wasmpod_e2e::cri::Cri,
    sh_id: &str,
    sleeper: i32,
) -> Result<BTreeMap<String, String>> {
    std::thread::scope(|s| {
        let sleep = s.spawn(|| cri.exec_sync(sh_id, &["/bin/sleep", "3"], 30));
        let pid = wait_process(cd, "busybox exec", |p| {
            p.argv == ["/bin/sleep", "3"]
                && fs::read_link(format!("/proc/{}/ns/mnt", p.pid)).ok()
                    == fs::read_link(format!("/proc/{sleeper}/ns/mnt")).ok()
        })?;
        let view = kernel_view(pid)?;
        let out = sleep
            .join()
            .map_err(|_| anyhow::anyhow!("exec thread panicked"))??;
        ensure!(out.exit_code == 0, "busybox exec sleep: {out:?}");
        Ok(view)
    })
}

/// The lines of two views that differ.
fn diff(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) -> String {
    a.keys()
        .chain(b.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| format!("  {k}: wasm {:?} / runc {:?}", a.get(k), b.get(k)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The cgroup path of process `pid` in the v1 memory hierarchy, or its v2
/// cgroup.
fn memory_cgroup(pid: i32) -> Result<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    text.lines()
        .find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, names, path) = (f.next()?, f.next()?, f.next()?);
            (names.split(',').any(|n| n == "memory") || names.is_empty()).then(|| path.to_owned())
        })
        .with_context(|| format!("no memory cgroup in /proc/{pid}/cgroup: {text}"))
}

/// A pod whose cgroup parent ends in `.slice` on a node whose containerd
/// uses the cgroupfs driver (the runtime option `SystemdCgroup = false`):
/// containerd writes `<parent>:cri-containerd:<id>`, and the driver, not
/// the path's shape, decides: the sandbox, a sidecar (runc) and the Wasm
/// containers each get a cgroupfs directory of that name below the shim's
/// own cgroup, as runc's shim gives them.
#[test]
fn slice_cgroup_parent_on_a_cgroupfs_node() -> Result<()> {
    let cd = cri_containerd()?;
    let cri = cd.cri()?;
    let probe = cri_probe_image(&cd, P2)?;
    cd.cri_import(&busybox_image(BUSYBOX)?, BUSYBOX)?;
    let mut config = Pod::config(&cd, "slice-pod");
    let slice = format!("{}.slice", cd.unique_id("wasmpode2e"));
    config
        .linux
        .get_or_insert_with(Default::default)
        .cgroup_parent = slice.clone();
    let mut pod = Pod::run(&cd, &cri, config, HANDLER)?;

    let hello = container_config("hello", &probe, &[], &["args", "in a slice"]);
    let (code, log) = one_shot(&cri, &mut pod, &hello)?;
    ensure!(
        code == 0 && log.contains("in a slice"),
        "hello: {code} {log:?}"
    );

    let app = wasmpod_e2e::cri::with_memory_limit(
        container_config("app", &probe, &[], &["sleep", "300"]),
        64 << 20,
    );
    let app_id = pod.start(&app)?;
    let runner = wait_runner(&cd, &app_id)?;
    let side = container_config("side", BUSYBOX, &["/bin/sleep", "300"], &[]);
    let side_id = pod.start(&side)?;
    let sleeper = wait_process(&cd, "busybox sleep", |p| p.argv == ["/bin/sleep", "300"])?;
    for (what, pid, id) in [("Wasm", runner, &app_id), ("runc", sleeper, &side_id)] {
        let path = memory_cgroup(pid)?;
        ensure!(
            path.ends_with(&format!("/{slice}:cri-containerd:{id}")),
            "the {what} container's cgroup is {path:?}"
        );
    }
    // the limit is where the runner is
    let v1 = Path::new("/sys/fs/cgroup/memory");
    let dir = if v1.is_dir() {
        v1.to_owned()
    } else {
        Path::new("/sys/fs/cgroup").to_owned()
    };
    let dir = dir.join(memory_cgroup(runner)?.trim_start_matches('/'));
    let limit = fs::read_to_string(dir.join("memory.limit_in_bytes"))
        .or_else(|_| fs::read_to_string(dir.join("memory.max")))
        .with_context(|| format!("memory limit in {}", dir.display()))?;
    ensure!(
        limit.trim() == (64u64 << 20).to_string(),
        "limit {limit:?} in {}",
        dir.display()
    );

    pod.remove()?;
    cd.assert_no_leftovers()
}

/// Specs the sandbox cannot apply fail CreateContainer with an error that
/// kubelet shows in the pod's events, naming the field, and leave nothing:
/// an unknown capability, an entry point the user may not read, a user
/// the image cannot resolve, an AppArmor profile on a node without it.
#[test]
fn bad_security_contexts_fail_create_and_say_why() -> Result<()> {
    use wasmpod_oci::image::Entry;
    let cd = cri_containerd()?;
    let cri = cd.cri()?;
    let probe = cri_probe_image(&cd, P2)?;
    // the module is root's alone
    let private = "docker.io/wasmpod/probe:cri-private";
    let entry = Entry::File {
        path: "probe.wasm".into(),
        data: fs::read(wasmpod_e2e::guests::guest(P2, "probe")?)?,
        mode: 0o600,
    };
    let tar = image_tar_of(&cd, private, vec![entry], &["/probe.wasm"])?;
    cd.cri_import(&tar, private)?;
    let mut pod = Pod::run(&cd, &cri, Pod::config(&cd, "bad-security"), HANDLER)?;

    let with = |name: &str, image: &str, edit: &dyn Fn(&mut api::LinuxContainerSecurityContext)| {
        let mut c = container_config(name, image, &[], &["args", "never"]);
        edit(security_context(&mut c));
        c
    };
    let cases: Vec<(api::ContainerConfig, &[&str])> = vec![
        (
            with("badcap", &probe, &|sc| {
                sc.capabilities = Some(api::Capability {
                    add_capabilities: vec!["NOPE".into()],
                    ..Default::default()
                })
            }),
            &["process.capabilities", "CAP_NOPE"],
        ),
        (
            with("unreadable", private, &|sc| {
                sc.run_as_user = Some(api::Int64Value { value: 1000 })
            }),
            &["/probe.wasm", "ermission denied"],
        ),
        (
            // containerd resolves the name in the image's /etc/passwd before
            // the shim is asked, as for runc: an image without one says so
            with("nouser", &probe, &|sc| {
                sc.run_as_username = "appuser".into()
            }),
            &["/etc/passwd"],
        ),
        (
            with("apparmor", &probe, &|sc| {
                sc.apparmor = Some(api::SecurityProfile {
                    profile_type: api::security_profile::ProfileType::Localhost as i32,
                    localhost_ref: "wasmpod-nope".into(),
                })
            }),
            &["apparmor"],
        ),
    ];
    for (config, needles) in cases {
        let name = config
            .metadata
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_default();
        let err = match pod.start(&config) {
            Ok(id) => bail!("{name}: container {id} started"),
            Err(e) => format!("{e:#}"),
        };
        eprintln!("{name}: {err}");
        for n in needles {
            ensure!(
                err.to_lowercase().contains(&n.to_lowercase()),
                "{name}: {n:?} not in {err}"
            );
        }
    }
    // the pod is fine: a good container still runs
    let ok = container_config("ok", &probe, &[], &["args", "still fine"]);
    let (code, log) = one_shot(&cri, &mut pod, &ok)?;
    ensure!(code == 0 && log.contains("still fine"), "{code} {log:?}");
    pod.remove()?;
    cd.assert_no_leftovers()
}

/// The capability sets across the uid change, as an `execve` leaves them
/// under runc: root with containerd's defaults, root with one added and one
/// dropped, and a non-root user with one added (which lands in the
/// bounding, permitted and inheritable sets but, without ambient, not in
/// the effective one).
#[test]
fn capability_sets_match_runc_for_root_and_users() -> Result<()> {
    let cd = cri_containerd()?;
    let cri = cd.cri()?;
    let probe = cri_probe_image(&cd, P2)?;
    cd.cri_import(&busybox_image(BUSYBOX)?, BUSYBOX)?;
    let mut wasm = Pod::run(&cd, &cri, Pod::config(&cd, "caps-wasm"), HANDLER)?;
    let mut plain = Pod::run(&cd, &cri, Pod::config(&cd, "caps-runc"), "")?;
    // name, uid, capabilities added, dropped
    type Case<'a> = (&'a str, Option<i64>, &'a [&'a str], &'a [&'a str]);
    let cases: [Case; 3] = [
        ("root-default", None, &[], &[]),
        ("root-edited", None, &["SYS_TIME"], &["NET_RAW"]),
        ("user-added", Some(1000), &["NET_BIND_SERVICE"], &[]),
    ];
    for (name, uid, add, drop) in cases {
        let edit = |mut c: api::ContainerConfig| {
            let sc = security_context(&mut c);
            sc.run_as_user = uid.map(|value| api::Int64Value { value });
            sc.capabilities = Some(api::Capability {
                add_capabilities: add.iter().map(|s| (*s).to_owned()).collect(),
                drop_capabilities: drop.iter().map(|s| (*s).to_owned()).collect(),
                ..Default::default()
            });
            c
        };
        let app = edit(container_config(
            &format!("{name}-wasm"),
            &probe,
            &[],
            &["sleep", "300"],
        ));
        let app_id = wasm.start(&app)?;
        let seconds = format!("30{}", name.len());
        let sh = edit(container_config(
            &format!("{name}-runc"),
            BUSYBOX,
            &["/bin/sleep", &seconds],
            &[],
        ));
        plain.start(&sh)?;
        let sleeper = wait_process(&cd, "busybox sleep", |p| {
            p.argv == ["/bin/sleep", seconds.as_str()]
        })?;
        let runc_view = kernel_view(sleeper)?;
        let wasm_view = settled_view(wait_runner(&cd, &app_id)?, &runc_view)?;
        ensure!(
            wasm_view == runc_view,
            "{name}: the Wasm container's process differs from runc's:\n{}",
            diff(&wasm_view, &runc_view)
        );
    }
    wasm.remove()?;
    plain.remove()?;
    cd.assert_no_leftovers()
}
