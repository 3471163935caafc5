//! The process's security settings from the spec: user and groups,
//! capabilities (and what they become across an `execve`, which a runner
//! never makes), `noNewPrivileges`, rlimits, `oomScoreAdj`, the AppArmor
//! profile and SELinux label, hostname and sysctls.

use serde::{Deserialize, Serialize};

use super::{NamespaceKind, NamespacePlan, PlanError};

/// The kernel's capability names, by bit number (`CAP_LAST_CAP` is 40 on
/// the kernels wasmpod supports).
pub const CAPABILITIES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// Every capability the table knows.
pub const ALL_CAPABILITIES: u64 = (1 << CAPABILITIES.len()) - 1;

/// The bit of capability `name` (`CAP_` prefix, upper case), if known.
pub fn capability_bit(name: &str) -> Option<u32> {
    CAPABILITIES
        .iter()
        .position(|c| *c == name)
        .and_then(|i| u32::try_from(i).ok())
}

/// The names of the capabilities in `mask`, in bit order.
pub fn capability_names(mask: u64) -> Vec<&'static str> {
    CAPABILITIES
        .iter()
        .enumerate()
        .filter(|(i, _)| mask & (1 << i) != 0)
        .map(|(_, n)| *n)
        .collect()
}

/// The five capability sets, as bit masks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapabilitySets {
    pub bounding: u64,
    pub effective: u64,
    pub inheritable: u64,
    pub permitted: u64,
    pub ambient: u64,
}

impl CapabilitySets {
    /// The sets a process ends up with after it `execve`s a program with no
    /// file capabilities and no set-user-ID bit, having set these before the
    /// exec while running as `uid`: what runc's container process shows,
    /// and what a runner (which never execs) applies directly.
    ///
    /// capabilities(7): for uid 0 the file sets count as full, so permitted
    /// becomes bounding ∪ inheritable and effective the same; otherwise
    /// permitted and effective become the ambient set. Ambient is kept only
    /// within permitted ∩ inheritable (the kernel refuses the rest); the
    /// inheritable and bounding sets pass unchanged.
    pub fn after_exec(&self, uid: u32) -> CapabilitySets {
        let ambient = self.ambient & self.permitted & self.inheritable;
        if uid == 0 {
            let permitted = self.bounding | self.inheritable;
            CapabilitySets {
                bounding: self.bounding,
                effective: permitted,
                inheritable: self.inheritable,
                permitted,
                ambient,
            }
        } else {
            CapabilitySets {
                bounding: self.bounding,
                effective: ambient,
                inheritable: self.inheritable,
                permitted: ambient,
                ambient,
            }
        }
    }
}

/// `process.user` and `process.noNewPrivileges`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserPlan {
    pub uid: u32,
    pub gid: u32,
    /// `additionalGids`: the supplementary groups, and all of them (an
    /// empty list clears the runner's).
    pub additional_gids: Vec<u32>,
    /// `umask`, when set.
    pub umask: Option<u32>,
}

/// One of `process.rlimits`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rlimit {
    /// The `RLIMIT_*` resource number.
    pub resource: u32,
    pub soft: u64,
    pub hard: u64,
}

/// The `RLIMIT_*` names, by resource number.
pub const RLIMITS: [&str; 16] = [
    "RLIMIT_CPU",
    "RLIMIT_FSIZE",
    "RLIMIT_DATA",
    "RLIMIT_STACK",
    "RLIMIT_CORE",
    "RLIMIT_RSS",
    "RLIMIT_NPROC",
    "RLIMIT_NOFILE",
    "RLIMIT_MEMLOCK",
    "RLIMIT_AS",
    "RLIMIT_LOCKS",
    "RLIMIT_SIGPENDING",
    "RLIMIT_MSGQUEUE",
    "RLIMIT_NICE",
    "RLIMIT_RTPRIO",
    "RLIMIT_RTTIME",
];

/// The resource number of `RLIMIT_*` name `name`.
pub fn rlimit_resource(name: &str) -> Result<u32, PlanError> {
    RLIMITS
        .iter()
        .position(|r| *r == name)
        .and_then(|i| u32::try_from(i).ok())
        .ok_or_else(|| PlanError::Rlimit(name.to_owned()))
}

/// The sysctls IPC namespaces isolate (besides `fs.mqueue.*`).
const IPC_SYSCTLS: [&str; 8] = [
    "kernel.msgmax",
    "kernel.msgmnb",
    "kernel.msgmni",
    "kernel.sem",
    "kernel.shmall",
    "kernel.shmmax",
    "kernel.shmmni",
    "kernel.shm_rmid_forced",
];

/// Checks `linux.sysctl` against the namespaces of the plan, as runc's
/// validator does: IPC sysctls need an IPC namespace, `net.*` a network
/// namespace that is not the host's, `kernel.domainname` a UTS namespace,
/// `kernel.hostname` is `hostname`'s, and nothing else is namespaced.
pub fn check_sysctls(
    sysctls: &[(String, String)],
    namespaces: &[NamespacePlan],
) -> Result<(), PlanError> {
    let has = |kind| namespaces.iter().any(|ns| ns.kind == kind);
    for (key, _) in sysctls {
        let refuse = |why: &'static str| {
            Err(PlanError::Sysctl {
                key: key.clone(),
                why,
            })
        };
        if IPC_SYSCTLS.contains(&key.as_str()) || key.starts_with("fs.mqueue.") {
            if !has(NamespaceKind::Ipc) {
                return refuse("is not allowed in the host's IPC namespace");
            }
        } else if key.starts_with("net.") {
            if !has(NamespaceKind::Network) {
                return refuse("is not allowed in the host's network namespace");
            }
        } else if key == "kernel.domainname" {
            if !has(NamespaceKind::Uts) {
                return refuse("is not allowed without a UTS namespace");
            }
        } else if key == "kernel.hostname" {
            return refuse("conflicts with the spec's hostname field");
        } else {
            return refuse("is not in a separate kernel namespace");
        }
    }
    Ok(())
}

/// The `/proc/sys` path of sysctl `key` (`net.ipv4.ip_forward` →
/// `net/ipv4/ip_forward`; a key written with slashes, whose parts may hold
/// dots such as an interface name, is taken as it is).
pub fn sysctl_path(key: &str) -> String {
    if key.contains('/') {
        key.to_owned()
    } else {
        key.replace('.', "/")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask(names: &[&str]) -> u64 {
        names
            .iter()
            .map(|n| 1u64 << capability_bit(n).unwrap())
            .fold(0, |a, b| a | b)
    }

    #[test]
    fn the_capability_table_is_the_kernels() {
        assert_eq!(capability_bit("CAP_CHOWN"), Some(0));
        assert_eq!(capability_bit("CAP_SYS_ADMIN"), Some(21));
        assert_eq!(capability_bit("CAP_CHECKPOINT_RESTORE"), Some(40));
        assert_eq!(capability_bit("chown"), None);
        assert_eq!(
            capability_names(mask(&["CAP_KILL", "CAP_CHOWN"])),
            ["CAP_CHOWN", "CAP_KILL"]
        );
        // what /proc/self/status shows of a full set on a 6.x kernel
        assert_eq!(format!("{ALL_CAPABILITIES:016x}"), "000001ffffffffff");
    }

    #[test]
    fn after_exec_as_runc_containers_show_it() {
        let default = mask(&[
            "CAP_CHOWN",
            "CAP_DAC_OVERRIDE",
            "CAP_FSETID",
            "CAP_FOWNER",
            "CAP_MKNOD",
            "CAP_NET_RAW",
            "CAP_SETGID",
            "CAP_SETUID",
            "CAP_SETFCAP",
            "CAP_SETPCAP",
            "CAP_NET_BIND_SERVICE",
            "CAP_SYS_CHROOT",
            "CAP_KILL",
            "CAP_AUDIT_WRITE",
        ]);
        // containerd's spec for a pod container: bounding = effective =
        // permitted = the defaults, no inheritable, no ambient
        let spec = CapabilitySets {
            bounding: default,
            effective: default,
            inheritable: 0,
            permitted: default,
            ambient: 0,
        };
        // root keeps them all
        assert_eq!(
            spec.after_exec(0),
            CapabilitySets {
                effective: default,
                permitted: default,
                ..spec
            }
        );
        // a non-root user keeps only the bounding set
        assert_eq!(
            spec.after_exec(1000),
            CapabilitySets {
                bounding: default,
                ..CapabilitySets::default()
            }
        );
        // drop ALL: nothing anywhere, for either
        assert_eq!(
            CapabilitySets::default().after_exec(0),
            CapabilitySets::default()
        );
        // ambient NET_BIND_SERVICE for a non-root user: what it keeps
        let bind = mask(&["CAP_NET_BIND_SERVICE"]);
        let spec = CapabilitySets {
            bounding: default,
            effective: bind,
            inheritable: bind,
            permitted: bind,
            ambient: bind,
        };
        let after = spec.after_exec(1000);
        assert_eq!(
            (after.effective, after.permitted, after.ambient),
            (bind, bind, bind)
        );
        // ambient outside inheritable is refused by the kernel: dropped
        let spec = CapabilitySets {
            inheritable: 0,
            ..spec
        };
        assert_eq!(spec.after_exec(1000).effective, 0);
        // root with an inheritable cap outside bounding keeps it in permitted
        let spec = CapabilitySets {
            bounding: bind,
            inheritable: mask(&["CAP_KILL"]),
            ..CapabilitySets::default()
        };
        assert_eq!(spec.after_exec(0).permitted, bind | mask(&["CAP_KILL"]));
    }

    #[test]
    fn rlimit_names() {
        assert_eq!(rlimit_resource("RLIMIT_NOFILE").unwrap(), 7);
        assert_eq!(rlimit_resource("RLIMIT_RTTIME").unwrap(), 15);
        assert!(matches!(
            rlimit_resource("RLIMIT_BOGUS"),
            Err(PlanError::Rlimit(_))
        ));
    }

    #[test]
    fn sysctls_follow_the_namespaces() {
        let ns = |kinds: &[NamespaceKind]| -> Vec<NamespacePlan> {
            kinds
                .iter()
                .map(|k| NamespacePlan {
                    kind: *k,
                    path: None,
                })
                .collect()
        };
        let s = |k: &str| vec![(k.to_owned(), "1".to_owned())];
        let all = ns(&[
            NamespaceKind::Network,
            NamespaceKind::Ipc,
            NamespaceKind::Uts,
        ]);
        for ok in [
            "net.ipv4.ip_forward",
            "kernel.shmmax",
            "fs.mqueue.msg_max",
            "kernel.domainname",
        ] {
            assert!(check_sysctls(&s(ok), &all).is_ok(), "{ok}");
            assert!(check_sysctls(&s(ok), &[]).is_err(), "{ok} on the host");
        }
        for never in ["kernel.hostname", "vm.swappiness", "kernel.panic"] {
            assert!(check_sysctls(&s(never), &all).is_err(), "{never}");
        }
        assert_eq!(sysctl_path("net.ipv4.ip_forward"), "net/ipv4/ip_forward");
        assert_eq!(
            sysctl_path("net/ipv4/conf/eth0.100/rp_filter"),
            "net/ipv4/conf/eth0.100/rp_filter"
        );
    }
}
