//! The process's own settings, in runc's order: `oomScoreAdj` first (as
//! runc's nsexec writes it), hostname and domain name, sysctls, then
//! `noNewPrivileges`, rlimits, seccomp (here when it needs the runner's
//! privileges), the user and groups with the capabilities, and the LSM
//! profile.

use std::path::Path;

use wasmpod_oci::plan::security::{sysctl_path, CapabilitySets, ALL_CAPABILITIES};
use wasmpod_oci::plan::RunPlan;

use super::SandboxError;
use crate::sys::Sys;

/// `process.oomScoreAdj`, while the runner may still set any value.
pub fn oom_score_adj(sys: &dyn Sys, plan: &RunPlan) -> Result<(), SandboxError> {
    let Some(value) = plan.oom_score_adj else {
        return Ok(());
    };
    sys.write_file(
        Path::new("/proc/self/oom_score_adj"),
        value.to_string().as_bytes(),
    )
    .map_err(|source| SandboxError::OomScoreAdj { value, source })
}

/// `hostname` and `domainname` (in the container's UTS namespace).
pub fn hostname(sys: &dyn Sys, plan: &RunPlan) -> Result<(), SandboxError> {
    if let Some(name) = &plan.hostname {
        sys.sethostname(name)
            .map_err(|source| SandboxError::Hostname {
                field: "hostname",
                name: name.clone(),
                source,
            })?;
    }
    if let Some(name) = &plan.domainname {
        sys.setdomainname(name)
            .map_err(|source| SandboxError::Hostname {
                field: "domainname",
                name: name.clone(),
                source,
            })?;
    }
    Ok(())
}

/// The services glibc may use for host names: those of the `hosts:` line
/// of `nsswitch` (the container's `/etc/nsswitch.conf`), kept only where
/// built into glibc (`files`, `dns`, with their `[...]` actions); without
/// a file or a usable line, `files dns`, as musl, Go and distroless images
/// resolve. A module from the image (`libnss_*.so`) is never loaded: it
/// would be native code of the image running in the runner.
pub fn hosts_services(nsswitch: Option<&str>) -> String {
    let line = nsswitch.and_then(|text| {
        text.lines().find_map(|l| {
            let l = l.split('#').next().unwrap_or_default().trim();
            let rest = l.strip_prefix("hosts")?.trim_start();
            rest.strip_prefix(':').map(str::trim)
        })
    });
    let mut kept: Vec<String> = Vec::new();
    let mut keep = false;
    let mut tokens = line.unwrap_or_default();
    while !tokens.is_empty() {
        let (token, rest) = if tokens.starts_with('[') {
            match tokens.find(']') {
                Some(end) => tokens.split_at(end + 1),
                None => (tokens, ""),
            }
        } else {
            match tokens.find(|c: char| c.is_whitespace() || c == '[') {
                Some(end) => tokens.split_at(end),
                None => (tokens, ""),
            }
        };
        if token.starts_with('[') {
            if keep {
                kept.push(token.to_owned());
            }
        } else {
            keep = matches!(token, "files" | "dns");
            if keep {
                kept.push(token.to_owned());
            }
        }
        tokens = rest.trim_start();
    }
    if kept.iter().any(|t| !t.starts_with('[')) {
        kept.join(" ")
    } else {
        "files dns".to_owned()
    }
}

/// Host names are looked up (for the guest's ip-name-lookup) in the
/// container's `/etc/hosts` and the DNS servers its `/etc/resolv.conf`
/// names, with the services [`hosts_services`] allows.
pub fn name_lookup(sys: &dyn Sys) -> Result<(), SandboxError> {
    let nsswitch = std::fs::read_to_string("/etc/nsswitch.conf").ok();
    let services = hosts_services(nsswitch.as_deref());
    sys.hosts_lookup(&services)
        .map_err(|source| SandboxError::NameLookup { services, source })
}

/// `linux.sysctl`, written through the container's `/proc/sys`.
pub fn sysctls(sys: &dyn Sys, plan: &RunPlan) -> Result<(), SandboxError> {
    for (key, value) in &plan.sysctls {
        let path = Path::new("/proc/sys").join(sysctl_path(key));
        sys.write_file(&path, value.as_bytes())
            .map_err(|source| SandboxError::Sysctl {
                key: key.clone(),
                source,
            })?;
    }
    Ok(())
}

/// `process.rlimits`, while the runner may still raise a hard limit.
pub fn rlimits(sys: &dyn Sys, plan: &RunPlan) -> Result<(), SandboxError> {
    for r in &plan.rlimits {
        sys.setrlimit(r.resource, r.soft, r.hard)
            .map_err(|source| SandboxError::Rlimit {
                resource: wasmpod_oci::plan::security::RLIMITS
                    .get(r.resource as usize)
                    .copied()
                    .unwrap_or("?"),
                source,
            })?;
    }
    Ok(())
}

/// `process.noNewPrivileges`.
pub fn no_new_privileges(sys: &dyn Sys, plan: &RunPlan) -> Result<(), SandboxError> {
    if plan.no_new_privileges {
        sys.set_no_new_privs()
            .map_err(SandboxError::NoNewPrivileges)?;
    }
    Ok(())
}

/// Loads the compiled `linux.seccomp` filter, if any.
pub fn seccomp(sys: &dyn Sys, plan: &RunPlan) -> Result<(), SandboxError> {
    let Some(filter) = &plan.seccomp else {
        return Ok(());
    };
    sys.load_seccomp(&filter.program, filter.flags)
        .map_err(SandboxError::Seccomp)
}

/// The capability sets the runner takes: the spec's, as they would be after
/// an `execve` as the spec's user; with no `process.capabilities`, the
/// runner's own (all) go through the same exec rules, as runc leaves them.
pub fn final_capabilities(plan: &RunPlan) -> CapabilitySets {
    let before = plan.capabilities.unwrap_or(CapabilitySets {
        bounding: ALL_CAPABILITIES,
        effective: ALL_CAPABILITIES,
        inheritable: 0,
        permitted: ALL_CAPABILITIES,
        ambient: 0,
    });
    before.after_exec(plan.user.uid)
}

/// runc's `finalizeNamespace`: the bounding set dropped while the runner is
/// still root, capabilities kept across the user change, the groups, gid
/// and uid set, then the effective, permitted, inheritable and ambient
/// sets applied.
pub fn user_and_capabilities(sys: &dyn Sys, plan: &RunPlan) -> Result<(), SandboxError> {
    let user = &plan.user;
    let caps = final_capabilities(plan);
    let cap_err = |what| move |source| SandboxError::Capabilities { what, source };
    let user_err = |what| move |source| SandboxError::User { what, source };
    if plan.capabilities.is_some() {
        sys.drop_bounding(caps.bounding)
            .map_err(cap_err("drop the bounding set"))?;
    }
    sys.set_keepcaps(true)
        .map_err(cap_err("keep capabilities"))?;
    sys.setgroups(&user.additional_gids)
        .map_err(user_err("additionalGids"))?;
    sys.setresgid(user.gid).map_err(user_err("gid"))?;
    sys.setresuid(user.uid).map_err(user_err("uid"))?;
    sys.set_keepcaps(false)
        .map_err(cap_err("stop keeping capabilities"))?;
    sys.capset(caps.effective, caps.permitted, caps.inheritable)
        .map_err(cap_err("set"))?;
    sys.set_ambient(caps.ambient).map_err(cap_err("ambient"))?;
    // as after a uid change anyway: no core dump of guest memory, no
    // ptrace by a neighbour of the same uid (see docs/security.md)
    sys.set_dumpable(false).map_err(user_err("not dumpable"))?;
    Ok(())
}

/// Runs `f` with the file-system identity of the spec's user (its uid, gid
/// and supplementary groups for permission checks), so what it opens is
/// what the user may open; the runner's own identity comes back after.
pub fn as_user<T>(sys: &dyn Sys, plan: &RunPlan, f: impl FnOnce() -> T) -> Result<T, SandboxError> {
    // before the user namespace is entered: the user's ids on the node
    let unmapped = |what| {
        move |e: wasmpod_oci::plan::PlanError| SandboxError::User {
            what,
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()),
        }
    };
    let (host_uid, host_gid) = plan.host_ids().map_err(unmapped("uid"))?;
    let groups = plan
        .host_additional_gids()
        .map_err(unmapped("additionalGids"))?;
    sys.setgroups(&groups)
        .map_err(|source| SandboxError::User {
            what: "additionalGids",
            source,
        })?;
    let gid = sys.setfsgid(host_gid);
    let uid = sys.setfsuid(host_uid);
    let out = f();
    sys.setfsuid(uid);
    sys.setfsgid(gid);
    Ok(out)
}

/// The AppArmor profile and SELinux label, switched to at once (a runner
/// never execs, so runc's on-exec switch would never take effect): a node
/// without the LSM refuses the container, as runc does.
pub fn lsm(sys: &dyn Sys, plan: &RunPlan) -> Result<(), SandboxError> {
    if let Some(profile) = &plan.apparmor_profile {
        let enabled = std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
            .is_ok_and(|v| v.trim_start().starts_with('Y'));
        if !enabled {
            return Err(SandboxError::AppArmor {
                profile: profile.clone(),
                why: "AppArmor is not enabled on this node".into(),
            });
        }
        let attr = if Path::new("/proc/self/attr/apparmor/current").exists() {
            "/proc/self/attr/apparmor/current"
        } else {
            "/proc/self/attr/current"
        };
        sys.write_file(
            Path::new(attr),
            format!("changeprofile {profile}").as_bytes(),
        )
        .map_err(|e| SandboxError::AppArmor {
            profile: profile.clone(),
            why: if e.raw_os_error() == Some(libc::ENOENT) {
                "the profile is not loaded".into()
            } else {
                e.to_string()
            },
        })?;
    }
    if let Some(label) = &plan.selinux_label {
        if !Path::new("/sys/fs/selinux/enforce").exists() {
            return Err(SandboxError::Selinux {
                label: label.clone(),
                why: "SELinux is disabled or not supported on this node".into(),
            });
        }
        sys.write_file(
            Path::new("/proc/thread-self/attr/current"),
            label.as_bytes(),
        )
        .map_err(|e| SandboxError::Selinux {
            label: label.clone(),
            why: e.to_string(),
        })?;
    }
    Ok(())
}
