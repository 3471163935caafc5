//! The sandbox's steps, in order, against the recording double, for the
//! spec containerd 1.6's CRI plugin wrote for a PodSecurity-"restricted"
//! container (`shim/testdata/containerd-1.6-restricted.json`) on a
//! temporary rootfs. The mount points are made for real (in the
//! temporary rootfs); every privileged call is only recorded.

use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use nix::sched::CloneFlags;
use serde_json::Value;
use wasmpod_oci::plan::RunPlan;

use super::*;
use crate::sys::recording::{Call, Recording};

/// The fixture, with its mount sources, namespaces and rootfs in `dir`.
fn restricted_plan(dir: &Path) -> RunPlan {
    let text = include_str!("../../../testdata/containerd-1.6-restricted.json");
    let mut spec: Value = serde_json::from_str(text).unwrap();
    let sources = dir.join("sources");
    std::fs::create_dir_all(&sources).unwrap();
    for m in spec["mounts"].as_array_mut().unwrap() {
        if m["type"] == "bind" {
            let dest = m["destination"].as_str().unwrap().to_owned();
            let source = sources.join(dest.trim_start_matches('/').replace('/', "_"));
            if dest.starts_with("/etc/") {
                std::fs::write(&source, "x\n").unwrap();
            } else {
                std::fs::create_dir_all(&source).unwrap();
            }
            m["source"] = Value::from(source.to_str().unwrap());
        }
    }
    // the node's cgroup hierarchies are not this test's
    spec["mounts"]
        .as_array_mut()
        .unwrap()
        .retain(|m| m["type"] != "cgroup");
    for ns in spec["linux"]["namespaces"].as_array_mut().unwrap() {
        if ns.get("path").is_some() {
            let kind = match ns["type"].as_str().unwrap() {
                "network" => "net",
                other => other,
            };
            ns["path"] = Value::from(format!("/proc/self/ns/{kind}"));
        }
    }
    spec["process"]["rlimits"] =
        serde_json::json!([{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 512}]);
    spec["linux"]["maskedPaths"] = serde_json::json!(["/proc/kcore", "/sys/firmware"]);
    spec["linux"]["readonlyPaths"] = serde_json::json!(["/proc/sys"]);
    let spec: oci_spec::runtime::Spec = serde_json::from_value(spec).unwrap();
    std::fs::create_dir_all(dir.join("rootfs")).unwrap();
    let mut plan = RunPlan::from_spec(&spec, dir).unwrap();
    plan.seccomp = Some(wasmpod_oci::plan::SeccompProgram {
        program: vec![0; 16],
        flags: 4,
    });
    plan
}

/// A step looked for: its name, and which call it is.
type Step = (&'static str, fn(&Call) -> bool);

/// Where `want` calls come in `calls`: the index of each, in order; panics
/// naming the first one missing after the previous.
fn in_order(calls: &[Call], want: &[Step]) -> Vec<usize> {
    let mut at = 0;
    let mut found = Vec::new();
    for (name, which) in want {
        match calls[at..].iter().position(which) {
            Some(i) => {
                at += i + 1;
                found.push(at - 1);
            }
            None => panic!("no {name} after step {at}: {calls:#?}"),
        }
    }
    found
}

fn mount_at(c: &Call, dir: &Path, dest: &str, fstype: &str) -> bool {
    matches!(c, Call::Mount { target, fstype: Some(t), .. }
        if t == fstype && *target == dir.join("rootfs").join(dest.trim_start_matches('/')))
}

#[test]
fn a_restricted_container_is_set_up_in_runcs_order() {
    let dir = tempfile::tempdir().unwrap();
    let plan = restricted_plan(dir.path());
    let sys = Recording::default();
    let mounts = before_load(&sys, &plan).unwrap();
    let guest = after_load(&sys, &plan, mounts).unwrap();
    before_guest(&sys, &plan).unwrap();
    let calls = sys.calls();
    let d = dir.path();
    let rootfs = d.join("rootfs");
    let steps: &[Step] = &[
        (
            "oomScoreAdj",
            |c| matches!(c, Call::WriteFile(p, v) if p.ends_with("oom_score_adj") && v == "777"),
        ),
        (
            "join ipc",
            |c| matches!(c, Call::Setns(k, _) if *k == CloneFlags::CLONE_NEWIPC),
        ),
        (
            "join uts",
            |c| matches!(c, Call::Setns(k, _) if *k == CloneFlags::CLONE_NEWUTS),
        ),
        (
            "join net",
            |c| matches!(c, Call::Setns(k, _) if *k == CloneFlags::CLONE_NEWNET),
        ),
        (
            "new mount namespace",
            |c| matches!(c, Call::Unshare(k) if *k == CloneFlags::CLONE_NEWNS),
        ),
        ("/ rslave", |c| {
            matches!(c, Call::Mount { target, flags, .. }
            if target == Path::new("/") && *flags == MsFlags::MS_SLAVE | MsFlags::MS_REC)
        }),
        (
            "rootfs bound onto itself",
            |c| matches!(c, Call::Mount { source: Some(s), target, .. } if s == target && target.ends_with("rootfs")),
        ),
        ("pivot_root", |c| matches!(c, Call::PivotRoot(..))),
        (
            "old root detached",
            |c| matches!(c, Call::Umount(p, _) if p == Path::new(".")),
        ),
        ("readonlyPaths", |c| {
            matches!(c, Call::Mount { target, flags, .. }
            if target == Path::new("/proc/sys") && flags.contains(MsFlags::MS_RDONLY))
        }),
        ("maskedPaths", |c| {
            matches!(c, Call::Mount { source: Some(s), target, .. }
            if s == Path::new("/dev/null") && target == Path::new("/proc/kcore"))
        }),
        (
            "a namespace to cut the guest's root",
            |c| matches!(c, Call::Unshare(k) if *k == CloneFlags::CLONE_NEWNS),
        ),
        ("its mounts private", |c| {
            matches!(c, Call::Mount { target, flags, .. }
            if target == Path::new("/") && *flags == MsFlags::MS_REC | MsFlags::MS_PRIVATE)
        }),
        (
            "procfs taken out",
            |c| matches!(c, Call::Umount(p, _) if p == Path::new("/proc")),
        ),
        (
            "the guest's root copied",
            |c| matches!(c, Call::CloneMount(p) if p == Path::new("/")),
        ),
        (
            "back in the container's namespace",
            |c| matches!(c, Call::Setns(k, _) if *k == CloneFlags::CLONE_NEWNS),
        ),
        ("hosts: files dns at most", |c| {
            matches!(c, Call::HostsLookup(_))
        }),
        ("rlimits", |c| matches!(c, Call::Setrlimit(7, 512, 1024))),
        ("noNewPrivileges", |c| matches!(c, Call::NoNewPrivs)),
        ("bounding set", |c| matches!(c, Call::DropBounding(0))),
        ("keep capabilities", |c| matches!(c, Call::Keepcaps(true))),
        (
            "groups",
            |c| matches!(c, Call::Setgroups(g) if g == &[1000, 2000]),
        ),
        ("gid", |c| matches!(c, Call::Setresgid(1000))),
        ("uid", |c| matches!(c, Call::Setresuid(1000))),
        ("stop keeping them", |c| matches!(c, Call::Keepcaps(false))),
        ("capabilities", |c| {
            matches!(
                c,
                Call::Capset {
                    effective: 0,
                    permitted: 0,
                    inheritable: 0
                }
            )
        }),
        ("ambient", |c| matches!(c, Call::Ambient(0))),
        ("not dumpable", |c| matches!(c, Call::Dumpable(false))),
        ("seccomp, last", |c| matches!(c, Call::Seccomp(16, 4))),
    ];
    let at = in_order(&calls, steps);
    assert_eq!(
        at.last(),
        Some(&(calls.len() - 1)),
        "seccomp is the last call: {calls:#?}"
    );

    // every mount of the spec, below the rootfs, in the spec's order
    let targets: Vec<PathBuf> = calls
        .iter()
        .filter_map(|c| match c {
            Call::Mount {
                target,
                fstype: Some(_),
                ..
            } if target.starts_with(&rootfs) && *target != rootfs => {
                Some(target.strip_prefix(&rootfs).unwrap().to_owned())
            }
            _ => None,
        })
        .collect();
    let want: Vec<PathBuf> = [
        "proc",
        "dev",
        "dev/pts",
        "dev/mqueue",
        "sys",
        "ro",
        "rw",
        "etc/hosts",
        "etc/hostname",
        "etc/resolv.conf",
        "dev/shm",
    ]
    .iter()
    .map(PathBuf::from)
    .collect();
    assert_eq!(targets, want);
    // the ro bind is remounted read-only in the kernel, the rw one is not
    // (runc 1.2's rule: any flag set or cleared takes a remount)
    let ro = rootfs.join("ro");
    assert!(calls.iter().any(|c| matches!(c, Call::Mount { source: None, target, flags, .. }
        if *target == ro && flags.contains(MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY))));
    assert!(!calls.iter().any(
        |c| matches!(c, Call::Mount { source: None, target, flags, .. }
        if *target == rootfs.join("rw") && flags.contains(MsFlags::MS_RDONLY))
    ));
    assert!(calls.iter().any(|c| mount_at(c, d, "/proc", "proc")));
    // the default devices, owned by the container's root
    for dev in ["null", "zero", "full", "random", "urandom", "tty"] {
        let path = rootfs.join("dev").join(dev);
        assert!(
            calls
                .iter()
                .any(|c| matches!(c, Call::Mknod { path: p, kind: 'c', .. } if *p == path)),
            "no /dev/{dev}: {calls:#?}"
        );
    }
    // the mount points exist in the rootfs, the links too
    assert!(rootfs.join("etc/hosts").is_file());
    assert!(rootfs.join("ro").is_dir());
    assert_eq!(
        std::fs::read_link(rootfs.join("dev/fd")).unwrap(),
        Path::new("/proc/self/fd")
    );

    // the guest's root is the copy, through the container's procfs; the
    // binds are preopens of their own, the kernel enforcing `ro`
    let preopens = guest.preopens();
    assert!(
        preopens[0].host.starts_with("/proc/self/fd/"),
        "{preopens:?}"
    );
    assert_eq!(preopens[0].guest, "/");
    assert!(preopens.iter().all(|p| !p.readonly), "{preopens:?}");
    assert!(preopens.iter().any(|p| p.guest == "/ro"));
}

#[test]
fn a_failed_step_stops_the_sandbox_there() {
    let dir = tempfile::tempdir().unwrap();
    let plan = restricted_plan(dir.path());
    let sys = Recording::default();
    sys.fail(
        |c| matches!(c, Call::Setresuid(_)),
        nix::errno::Errno::EPERM,
    );
    let mounts = before_load(&sys, &plan).unwrap();
    let err = after_load(&sys, &plan, mounts).unwrap_err();
    assert_eq!(
        err.to_string(),
        "process.user.uid: Operation not permitted (os error 1)"
    );
    let calls = sys.calls();
    assert!(
        matches!(calls.last(), Some(Call::Setresuid(1000))),
        "{calls:#?}"
    );
    assert!(!calls
        .iter()
        .any(|c| matches!(c, Call::Capset { .. } | Call::Seccomp(..))));

    let sys = Recording::default();
    sys.fail(
        |c| matches!(c, Call::PivotRoot(..)),
        nix::errno::Errno::EINVAL,
    );
    let mounts = before_load(&sys, &plan).unwrap();
    let err = after_load(&sys, &plan, mounts).unwrap_err().to_string();
    assert!(err.contains("pivot_root: Invalid argument"), "{err}");
    assert!(!sys.calls().iter().any(|c| matches!(c, Call::Setresuid(_))));
}

#[test]
fn a_missing_bind_source_names_the_mount() {
    let dir = tempfile::tempdir().unwrap();
    let mut plan = restricted_plan(dir.path());
    let ro = plan
        .mounts
        .iter_mut()
        .find(|m| m.destination == "/ro")
        .unwrap();
    ro.source = Some(dir.path().join("gone"));
    let err = before_load(&Recording::default(), &plan).err().unwrap();
    assert_eq!(err.kind(), FailureKind::Spec);
    let msg = err.to_string();
    assert!(
        msg.contains("/ro") && msg.contains("gone") && msg.contains("does not exist"),
        "{msg}"
    );
}

#[test]
fn an_exec_joins_the_containers_mount_namespace_and_sets_up_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut plan = restricted_plan(dir.path());
    plan.mount_namespace = Some(wasmpod_oci::plan::NamespacePlan {
        kind: wasmpod_oci::plan::NamespaceKind::Mount,
        path: Some("/proc/self/ns/mnt".into()),
    });
    let sys = Recording::default();
    let mounts = before_load(&sys, &plan).unwrap();
    after_load(&sys, &plan, mounts).unwrap();
    let calls = sys.calls();
    assert!(!calls
        .iter()
        .any(|c| matches!(c, Call::PivotRoot(..) | Call::Mknod { .. })));
    in_order(
        &calls,
        &[
            (
                "join the mount namespace",
                |c| matches!(c, Call::Setns(k, _) if *k == CloneFlags::CLONE_NEWNS),
            ),
            ("the guest's root copied", |c| {
                matches!(c, Call::CloneMount(_))
            }),
            ("the exec's user", |c| matches!(c, Call::Setresuid(1000))),
        ],
    );
}

#[test]
fn the_entry_point_is_read_as_the_user() {
    let dir = tempfile::tempdir().unwrap();
    let plan = restricted_plan(dir.path());
    let sys = Recording::default();
    let out = process::as_user(&sys, &plan, || 7).unwrap();
    assert_eq!(out, 7);
    assert_eq!(
        sys.calls(),
        [
            Call::Setgroups(vec![1000, 2000]),
            Call::Setfsgid(1000),
            Call::Setfsuid(1000),
            Call::Setfsuid(0),
            Call::Setfsgid(0),
        ]
    );
}

/// `plan` in a user namespace mapping 0..65536 to 1000000.., joined by
/// path (`Some`) or made (`None`), with /etc/hosts an idmapped bind.
fn in_user_namespace(mut plan: RunPlan, path: Option<&str>) -> RunPlan {
    use wasmpod_oci::plan::{mounts::MountIdmap, IdMap, UserNamespacePlan};
    let map = vec![IdMap {
        container: 0,
        host: 1_000_000,
        size: 65536,
    }];
    plan.user_namespace = Some(UserNamespacePlan {
        path: path.map(Into::into),
        uids: map.clone(),
        gids: map.clone(),
    });
    let hosts = plan
        .mounts
        .iter_mut()
        .find(|m| m.destination == "/etc/hosts")
        .expect("the restricted spec binds /etc/hosts");
    hosts.idmap = Some(MountIdmap {
        uids: map.clone(),
        gids: map,
    });
    plan
}

#[test]
fn a_user_namespace_is_entered_after_the_mounts_and_before_the_user() {
    let dir = tempfile::tempdir().unwrap();
    let plan = in_user_namespace(restricted_plan(dir.path()), Some("/proc/self/ns/user"));
    let sys = Recording::default();
    let entered = before_load(&sys, &plan).unwrap();
    // the load reads the entry point as the user's ids on the node
    process::as_user(&sys, &plan, || ()).unwrap();
    after_load(&sys, &plan, entered).unwrap();
    let calls = sys.calls();
    in_order(
        &calls,
        &[
            (
                "the idmapped /etc/hosts",
                |c| matches!(c, Call::BindIdmapped { uid_map, .. } if uid_map == "0 1000000 65536\n"),
            ),
            ("the entry point read as the node's uid", |c| {
                matches!(c, Call::Setfsuid(1_001_000))
            }),
            ("pivot_root", |c| matches!(c, Call::PivotRoot(..))),
            ("rlimits", |c| matches!(c, Call::Setrlimit(..))),
            (
                "the user namespace",
                |c| matches!(c, Call::Setns(k, _) if *k == CloneFlags::CLONE_NEWUSER),
            ),
            ("no_new_privs", |c| matches!(c, Call::NoNewPrivs)),
            ("the user, as ids of the namespace", |c| {
                matches!(c, Call::Setresuid(1000))
            }),
        ],
    );
    // a spec without a path: the runner makes one with the mappings
    let plan = in_user_namespace(restricted_plan(dir.path()), None);
    let sys = Recording::default();
    let entered = before_load(&sys, &plan).unwrap();
    after_load(&sys, &plan, entered).unwrap();
    assert!(sys.calls().iter().any(|c| matches!(
        c,
        Call::UserNamespace(u, g) if u == "0 1000000 65536\n" && g == u
    )));
}

#[test]
fn a_user_the_namespace_does_not_map_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let mut plan = in_user_namespace(restricted_plan(dir.path()), None);
    plan.user.uid = 70_000;
    let sys = Recording::default();
    let err = process::as_user(&sys, &plan, || ()).unwrap_err();
    assert!(err.to_string().contains("process.user.uid"), "{err}");
    assert!(sys.calls().is_empty(), "{:?}", sys.calls());
}

#[test]
fn only_glibcs_own_name_services_are_used() {
    use process::hosts_services;
    assert_eq!(hosts_services(None), "files dns");
    assert_eq!(hosts_services(Some("passwd: files\n")), "files dns");
    assert_eq!(hosts_services(Some("hosts: files dns\n")), "files dns");
    assert_eq!(
        hosts_services(Some("hosts:dns files # comment\n")),
        "dns files"
    );
    assert_eq!(
        hosts_services(Some(
            "hosts: files mdns4_minimal [NOTFOUND=return] dns myhostname\n"
        )),
        "files dns"
    );
    assert_eq!(
        hosts_services(Some(
            "hosts: files [SUCCESS=return] evil dns [!UNAVAIL=return]\n"
        )),
        "files [SUCCESS=return] dns [!UNAVAIL=return]"
    );
    assert_eq!(hosts_services(Some("hosts: evil\n")), "files dns");
    assert_eq!(hosts_services(Some("hostsx: evil\nhosts: dns\n")), "dns");
}

#[test]
fn mountinfo_escapes_and_procfs_points() {
    assert_eq!(unescape(r"/a\040b\011c\134d\9"), "/a b\tc\\d\\9");
    let info = "22 1 0:5 / / rw - overlay overlay rw\n\
                23 22 0:6 / /proc rw,nosuid - proc proc rw\n\
                24 23 0:7 / /proc/sys ro - proc proc ro\n\
                25 22 0:8 / /my\\040proc rw - proc proc rw\n\
                26 22 0:9 / /sys ro - sysfs sysfs ro\n";
    assert_eq!(
        guest::proc_mount_points(info),
        [
            PathBuf::from("/proc"),
            "/proc/sys".into(),
            "/my proc".into()
        ]
    );
}
