//! The profile compiler, on the RuntimeDefault profiles containerd 1.6 and
//! 1.7 put in a restricted container's spec (`shim/testdata/`) and on edge
//! cases of the format. A program is judged by what it does: it is loaded
//! into a forked child (with no_new_privs, as an unprivileged process can),
//! which makes each probe syscall and reports the results.

use oci_spec::runtime::LinuxSeccomp;
use serde_json::json;

use super::*;

/// containerd's RuntimeDefault profile of `version`'s fixture.
fn runtime_default(version: &str) -> LinuxSeccomp {
    let text = match version {
        "1.6" => include_str!("../../../testdata/containerd-1.6-restricted.json"),
        _ => include_str!("../../../testdata/containerd-1.7-restricted.json"),
    };
    let spec: serde_json::Value = serde_json::from_str(text).unwrap();
    serde_json::from_value(spec["linux"]["seccomp"].clone()).unwrap()
}

fn profile(v: serde_json::Value) -> LinuxSeccomp {
    serde_json::from_value(v).unwrap()
}

use crate::sys::probe::Probe;

/// Runs `probes` under `program` (see [`crate::sys::probe`]); a child
/// process is one thread, so the filter needs no TSYNC.
fn under(program: &SeccompProgram, probes: &[Probe]) -> Vec<i64> {
    crate::sys::probe::under_filter(&program.program, program.flags & !FLAG_TSYNC, probes)
}

const EPERM: i64 = -(libc::EPERM as i64);
const ENOSYS: i64 = -(libc::ENOSYS as i64);

#[test]
fn containerds_runtime_default_behaves_as_under_runc() {
    for version in ["1.6", "1.7"] {
        let started = std::time::Instant::now();
        let program = compile(&runtime_default(version)).unwrap();
        eprintln!(
            "RuntimeDefault of containerd {version}: {} instructions in {:?}",
            program.program.len() / 8,
            started.elapsed()
        );
        assert_eq!(
            program.flags,
            FLAG_TSYNC | FLAG_SPEC_ALLOW,
            "no flags in the profile: runc's SPEC_ALLOW"
        );
        let probes: [Probe; 9] = [
            (libc::SYS_getpid, [0; 3]),
            // not allowed without CAP_SYS_ADMIN: the default action, EPERM
            // (EFAULT, had it been let through)
            (libc::SYS_mount, [0; 3]),
            (
                libc::SYS_unshare,
                [libc::CLONE_NEWUSER as libc::c_long, 0, 0],
            ),
            (libc::SYS_keyctl, [0; 3]),
            // personality: the query and the allowed personas only
            (libc::SYS_personality, [0xffff_ffff, 0, 0]),
            (libc::SYS_personality, [0x40000, 0, 0]),
            // clone3 fails as on an older kernel, so runtimes fall back
            (libc::SYS_clone3, [0; 3]),
            // newer than anything the profile names: ENOSYS (runc's stub)
            (1000, [0; 3]),
            // clone with a namespace flag: masked out
            (libc::SYS_clone, [libc::CLONE_NEWNS as libc::c_long, 0, 0]),
        ];
        let r = under(&program, &probes);
        assert!(r[0] > 0, "{version} getpid: {r:?}");
        assert_eq!(
            r[1..4],
            [EPERM, EPERM, EPERM],
            "{version}: mount, unshare, keyctl"
        );
        assert!(r[4] >= 0, "{version}: personality query {r:?}");
        assert_eq!(r[5], EPERM, "{version}: personality(0x40000)");
        assert_eq!(r[6], ENOSYS, "{version}: clone3");
        assert_eq!(r[7], ENOSYS, "{version}: syscall 1000");
        assert_eq!(r[8], EPERM, "{version}: clone(CLONE_NEWNS)");
    }
    // 1.7 adds a rule against AF_VSOCK sockets
    let program = compile(&runtime_default("1.7")).unwrap();
    let r = under(
        &program,
        &[(
            libc::SYS_socket,
            [
                libc::AF_VSOCK as libc::c_long,
                libc::SOCK_STREAM as libc::c_long,
                0,
            ],
        )],
    );
    assert_eq!(r, [EPERM]);
}

#[test]
fn errno_args_and_unknown_names_as_runc_reads_them() {
    let p = profile(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            // an unknown name is skipped, the rest of the rule applies
            {"names": ["wasmpod_no_such_call", "getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 11},
            // conditions on different arguments: all must hold
            {"names": ["personality"], "action": "SCMP_ACT_ERRNO", "errnoRet": 22,
             "args": [{"index": 0, "value": 0x40000, "op": "SCMP_CMP_EQ"}]},
            // the same argument twice: either may hold
            {"names": ["getpriority"], "action": "SCMP_ACT_ERRNO", "errnoRet": 14,
             "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"},
                      {"index": 0, "value": 2, "op": "SCMP_CMP_EQ"}]},
            // MASKED_EQ: `value` is the mask, `valueTwo` the datum
            {"names": ["setpriority"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13,
             "args": [{"index": 1, "value": 0xff00, "valueTwo": 0x0400, "op": "SCMP_CMP_MASKED_EQ"}]},
            // ERRNO without errnoRet: EPERM
            {"names": ["getsid"], "action": "SCMP_ACT_ERRNO"}
        ]
    }));
    let program = compile(&p).unwrap();
    let r = under(
        &program,
        &[
            (libc::SYS_getppid, [0; 3]),
            (libc::SYS_personality, [0x40000, 0, 0]),
            (libc::SYS_personality, [0xffff_ffff, 0, 0]),
            (libc::SYS_getpriority, [1, 0, 0]),
            (libc::SYS_getpriority, [2, 0, 0]),
            (libc::SYS_getpriority, [0, 0, 0]),
            (libc::SYS_setpriority, [7, 0x0401, 0]),
            (libc::SYS_getsid, [0; 3]),
        ],
    );
    assert_eq!(r[0], -11);
    assert_eq!(r[1], -22);
    assert!(r[2] >= 0, "{r:?}");
    assert_eq!(r[3..5], [-14, -14]);
    assert!(r[5] >= 0, "{r:?}");
    assert_eq!(r[6], -13);
    assert_eq!(r[7], EPERM);
    // an allow-all profile gets no ENOSYS stub: new syscalls are allowed
    assert_ne!(under(&program, &[(1000, [0; 3])]), [EPERM]);
}

#[test]
fn default_errno_and_flags() {
    let p = profile(json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 95,
        "flags": ["SECCOMP_FILTER_FLAG_LOG"],
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [{"names": ["write", "exit_group", "exit", "getpid"], "action": "SCMP_ACT_ALLOW"}]
    }));
    let program = compile(&p).unwrap();
    assert_eq!(
        program.flags,
        FLAG_TSYNC | FLAG_LOG,
        "flags given: only those"
    );
    let r = under(
        &program,
        &[
            (libc::SYS_getpid, [0; 3]),
            (libc::SYS_getppid, [0; 3]),
            (1000, [0; 3]),
        ],
    );
    assert!(r[0] > 0);
    assert_eq!(r[1], -95, "defaultErrnoRet");
    assert_eq!(r[2], ENOSYS);
}

#[test]
fn what_cannot_be_compiled_is_named() {
    let notify = profile(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["getpid"], "action": "SCMP_ACT_NOTIFY"}]
    }));
    let err = compile(&notify).unwrap_err().to_string();
    assert!(
        err.contains("SCMP_ACT_NOTIFY") && err.starts_with("linux.seccomp"),
        "{err}"
    );
    let notify_default = profile(json!({"defaultAction": "SCMP_ACT_NOTIFY"}));
    assert!(matches!(
        compile(&notify_default),
        Err(SeccompError::Notify)
    ));
}

#[test]
fn programs_are_kept_on_the_node_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let p = runtime_default("1.6");
    let first = Programs::new(Some(dir.path())).get(&p).unwrap();
    let files: Vec<_> = std::fs::read_dir(dir.path().join("seccomp"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    // another shim finds it
    let started = std::time::Instant::now();
    assert_eq!(Programs::new(Some(dir.path())).get(&p).unwrap(), first);
    assert!(started.elapsed() < std::time::Duration::from_millis(5));
    // a damaged file is compiled again and replaced, never loaded
    let mut bytes = std::fs::read(&files[0]).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&files[0], &bytes).unwrap();
    assert_eq!(Programs::new(Some(dir.path())).get(&p).unwrap(), first);
    assert_eq!(
        decode(&std::fs::read(&files[0]).unwrap()).as_ref(),
        Some(&first)
    );
    assert_eq!(decode(&bytes[..10]), None);
    // an unwritable cache only costs the compile
    let none = Programs::new(Some(Path::new("/proc/wasmpod-no-such-cache")));
    assert_eq!(none.get(&p).unwrap(), first);
}

#[test]
fn programs_are_compiled_once_per_profile() {
    let programs = Programs::default();
    let p = runtime_default("1.7");
    let first = programs.get(&p).unwrap();
    let started = std::time::Instant::now();
    let second = programs.get(&p).unwrap();
    assert_eq!(first, second);
    assert!(started.elapsed() < std::time::Duration::from_millis(50));
    let other = programs.get(&runtime_default("1.6")).unwrap();
    assert_ne!(first.program, other.program);
}
