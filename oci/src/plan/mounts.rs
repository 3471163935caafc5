//! The spec's `mounts`, `rootfsPropagation`, `maskedPaths`,
//! `readonlyPaths` and `linux.devices`, parsed as runc parses them: mount
//! options into `MS_*` flags (set and cleared), propagation changes made
//! after the mount, recursive attributes, and filesystem data.

use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::Mount;
use serde::{Deserialize, Serialize};

use super::{IdMap, PlanError};

/// `mount(2)` flags (Linux ABI values, kept here so the crate needs no
/// libc).
pub mod flags {
    pub const MS_RDONLY: u64 = 1;
    pub const MS_NOSUID: u64 = 2;
    pub const MS_NODEV: u64 = 4;
    pub const MS_NOEXEC: u64 = 8;
    pub const MS_SYNCHRONOUS: u64 = 16;
    pub const MS_REMOUNT: u64 = 32;
    pub const MS_MANDLOCK: u64 = 64;
    pub const MS_DIRSYNC: u64 = 128;
    pub const MS_NOSYMFOLLOW: u64 = 256;
    pub const MS_NOATIME: u64 = 1024;
    pub const MS_NODIRATIME: u64 = 2048;
    pub const MS_BIND: u64 = 4096;
    pub const MS_REC: u64 = 16384;
    pub const MS_SILENT: u64 = 32768;
    pub const MS_POSIXACL: u64 = 1 << 16;
    pub const MS_UNBINDABLE: u64 = 1 << 17;
    pub const MS_PRIVATE: u64 = 1 << 18;
    pub const MS_SLAVE: u64 = 1 << 19;
    pub const MS_SHARED: u64 = 1 << 20;
    pub const MS_RELATIME: u64 = 1 << 21;
    pub const MS_I_VERSION: u64 = 1 << 23;
    pub const MS_STRICTATIME: u64 = 1 << 24;
    pub const MS_LAZYTIME: u64 = 1 << 25;
}
use flags::*;

/// `mount_setattr(2)` attributes for the recursive (`r*`) options.
pub mod attr {
    pub const MOUNT_ATTR_RDONLY: u64 = 0x1;
    pub const MOUNT_ATTR_NOSUID: u64 = 0x2;
    pub const MOUNT_ATTR_NODEV: u64 = 0x4;
    pub const MOUNT_ATTR_NOEXEC: u64 = 0x8;
    pub const MOUNT_ATTR_NOATIME: u64 = 0x10;
    pub const MOUNT_ATTR_STRICTATIME: u64 = 0x20;
    pub const MOUNT_ATTR_NODIRATIME: u64 = 0x80;
    pub const MOUNT_ATTR_NOSYMFOLLOW: u64 = 0x0020_0000;
}

/// What kind of filesystem a mount is; decides how it is set up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MountKind {
    /// A bind mount of a host path (`bind`/`rbind`).
    Bind,
    Proc,
    Sysfs,
    Tmpfs,
    Devpts,
    Mqueue,
    /// `cgroup`: the container's own cgroups, as runc shows them.
    Cgroup,
    /// Any other filesystem, mounted as given.
    Other(String),
}

/// One entry of `mounts`, ready to apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountPlan {
    pub kind: MountKind,
    /// The host path of a bind (bundle-relative sources resolved), or the
    /// filesystem's source string.
    pub source: Option<PathBuf>,
    /// Absolute, normalised guest path.
    pub destination: String,
    /// `MS_*` flags the options set (propagation excluded).
    pub flags: u64,
    /// `MS_*` flags the options explicitly clear (`rw`, `suid`, `dev`...).
    pub cleared: u64,
    /// Propagation changes (`MS_PRIVATE`, `MS_SLAVE|MS_REC`, ...), applied
    /// one by one after the mount.
    pub propagation: Vec<u64>,
    /// Recursive attributes (`rro`, `rnosuid`, ...): set and clear masks
    /// for `mount_setattr(AT_RECURSIVE)`.
    pub recursive: Option<(u64, u64)>,
    /// Options the filesystem takes as data (`mode=755`, `size=65536k`).
    pub data: String,
    /// A bind's `uidMappings`/`gidMappings`: the source is seen through
    /// them (an idmapped mount), as files of the container's user
    /// namespace.
    #[serde(default)]
    pub idmap: Option<MountIdmap>,
}

/// The id mappings of an idmapped bind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountIdmap {
    pub uids: Vec<IdMap>,
    pub gids: Vec<IdMap>,
}

impl MountPlan {
    /// Whether it is a bind of a host path.
    pub fn is_bind(&self) -> bool {
        self.kind == MountKind::Bind
    }

    /// Whether its flags make it read-only.
    pub fn readonly(&self) -> bool {
        self.flags & MS_RDONLY != 0
    }
}

/// A device node from `linux.devices` (or one of the defaults every
/// container gets).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevicePlan {
    /// Absolute guest path, e.g. `/dev/null`.
    pub path: String,
    /// `c`, `b` or `p`.
    pub kind: char,
    pub major: i64,
    pub minor: i64,
    /// Permission bits; 0666 when the spec gives none.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// The devices runc creates in every container with a `/dev` of its own
/// (all `0666`, root-owned character devices).
pub fn default_devices() -> Vec<DevicePlan> {
    [
        ("/dev/null", 1, 3),
        ("/dev/zero", 1, 5),
        ("/dev/full", 1, 7),
        ("/dev/random", 1, 8),
        ("/dev/urandom", 1, 9),
        ("/dev/tty", 5, 0),
    ]
    .into_iter()
    .map(|(path, major, minor)| DevicePlan {
        path: path.to_owned(),
        kind: 'c',
        major,
        minor,
        mode: 0o666,
        uid: 0,
        gid: 0,
    })
    .collect()
}

/// Every mount option wasmpod applies (flags, propagation, recursive
/// attributes), as a runtime's OCI features list them.
pub const MOUNT_OPTIONS: [&str; 57] = [
    "acl",
    "async",
    "atime",
    "bind",
    "defaults",
    "dev",
    "diratime",
    "dirsync",
    "exec",
    "iversion",
    "lazytime",
    "loud",
    "mand",
    "noacl",
    "noatime",
    "nodev",
    "nodiratime",
    "noexec",
    "noiversion",
    "nolazytime",
    "nomand",
    "norelatime",
    "nostrictatime",
    "nosuid",
    "nosymfollow",
    "rbind",
    "relatime",
    "remount",
    "ro",
    "rw",
    "silent",
    "strictatime",
    "suid",
    "sync",
    "symfollow",
    "private",
    "rprivate",
    "shared",
    "rshared",
    "slave",
    "rslave",
    "unbindable",
    "runbindable",
    "rro",
    "rrw",
    "rnosuid",
    "rsuid",
    "rnodev",
    "rdev",
    "rnoexec",
    "rexec",
    "rnodiratime",
    "rdiratime",
    "rnoatime",
    "rstrictatime",
    "rnosymfollow",
    "rsymfollow",
];

/// The flags one option sets or clears: (set, clear).
fn option_flag(option: &str) -> Option<(u64, u64)> {
    Some(match option {
        "acl" => (MS_POSIXACL, 0),
        "async" => (0, MS_SYNCHRONOUS),
        "atime" => (0, MS_NOATIME),
        "bind" => (MS_BIND, 0),
        "defaults" => (0, 0),
        "dev" => (0, MS_NODEV),
        "diratime" => (0, MS_NODIRATIME),
        "dirsync" => (MS_DIRSYNC, 0),
        "exec" => (0, MS_NOEXEC),
        "iversion" => (MS_I_VERSION, 0),
        "lazytime" => (MS_LAZYTIME, 0),
        "loud" => (0, MS_SILENT),
        "mand" => (MS_MANDLOCK, 0),
        "noacl" => (0, MS_POSIXACL),
        "noatime" => (MS_NOATIME, 0),
        "nodev" => (MS_NODEV, 0),
        "nodiratime" => (MS_NODIRATIME, 0),
        "noexec" => (MS_NOEXEC, 0),
        "noiversion" => (0, MS_I_VERSION),
        "nolazytime" => (0, MS_LAZYTIME),
        "nomand" => (0, MS_MANDLOCK),
        "norelatime" => (0, MS_RELATIME),
        "nostrictatime" => (0, MS_STRICTATIME),
        "nosuid" => (MS_NOSUID, 0),
        "nosymfollow" => (MS_NOSYMFOLLOW, 0),
        "rbind" => (MS_BIND | MS_REC, 0),
        "relatime" => (MS_RELATIME, 0),
        "remount" => (MS_REMOUNT, 0),
        "ro" => (MS_RDONLY, 0),
        "rw" => (0, MS_RDONLY),
        "silent" => (MS_SILENT, 0),
        "strictatime" => (MS_STRICTATIME, 0),
        "suid" => (0, MS_NOSUID),
        "sync" => (MS_SYNCHRONOUS, 0),
        "symfollow" => (0, MS_NOSYMFOLLOW),
        _ => return None,
    })
}

/// A propagation option's flags.
pub fn propagation_flag(option: &str) -> Option<u64> {
    Some(match option {
        "private" => MS_PRIVATE,
        "rprivate" => MS_PRIVATE | MS_REC,
        "shared" => MS_SHARED,
        "rshared" => MS_SHARED | MS_REC,
        "slave" => MS_SLAVE,
        "rslave" => MS_SLAVE | MS_REC,
        "unbindable" => MS_UNBINDABLE,
        "runbindable" => MS_UNBINDABLE | MS_REC,
        _ => return None,
    })
}

/// A recursive attribute option: (set, clear).
fn recursive_attr(option: &str) -> Option<(u64, u64)> {
    use attr::*;
    Some(match option {
        "rro" => (MOUNT_ATTR_RDONLY, 0),
        "rrw" => (0, MOUNT_ATTR_RDONLY),
        "rnosuid" => (MOUNT_ATTR_NOSUID, 0),
        "rsuid" => (0, MOUNT_ATTR_NOSUID),
        "rnodev" => (MOUNT_ATTR_NODEV, 0),
        "rdev" => (0, MOUNT_ATTR_NODEV),
        "rnoexec" => (MOUNT_ATTR_NOEXEC, 0),
        "rexec" => (0, MOUNT_ATTR_NOEXEC),
        "rnodiratime" => (MOUNT_ATTR_NODIRATIME, 0),
        "rdiratime" => (0, MOUNT_ATTR_NODIRATIME),
        "rnoatime" => (MOUNT_ATTR_NOATIME, 0),
        "rstrictatime" => (MOUNT_ATTR_STRICTATIME, 0),
        "rnosymfollow" => (MOUNT_ATTR_NOSYMFOLLOW, 0),
        "rsymfollow" => (0, MOUNT_ATTR_NOSYMFOLLOW),
        _ => return None,
    })
}

/// Absolute, and no `..` component (so it cannot climb above `/`).
pub(super) fn is_clean_absolute(p: &Path) -> bool {
    p.is_absolute() && !p.components().any(|c| matches!(c, Component::ParentDir))
}

/// Normalises an absolute guest path: collapses `.` and repeated `/`.
pub(super) fn normalise(p: &Path) -> String {
    let parts: Vec<_> = p
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect();
    format!("/{}", parts.join("/"))
}

/// Files under `/proc` a spec may mount over (lxcfs does), as runc allows.
const PROC_OVERLAYS: [&str; 11] = [
    "/proc/cpuinfo",
    "/proc/diskstats",
    "/proc/meminfo",
    "/proc/stat",
    "/proc/swaps",
    "/proc/uptime",
    "/proc/loadavg",
    "/proc/slabinfo",
    "/proc/net/dev",
    "/proc/sys/kernel/ns_last_pid",
    "/proc/sys/crypto/fips_enabled",
];

/// Parses one entry of `mounts`; bind sources relative to `bundle` are
/// resolved against it.
pub fn parse_mount(m: &Mount, bundle: &Path) -> Result<MountPlan, PlanError> {
    let destination = m.destination();
    if !is_clean_absolute(destination) {
        return Err(PlanError::BadMountDestination(destination.clone()));
    }
    let destination_s = normalise(destination);
    let options = m.options().as_deref().unwrap_or_default();
    let (mut set, mut cleared, mut propagation, mut data) = (0u64, 0u64, Vec::new(), Vec::new());
    let mut recursive: Option<(u64, u64)> = None;
    for option in options {
        if let Some((s, c)) = option_flag(option) {
            set = (set & !c) | s;
            cleared = (cleared & !s) | c;
        } else if let Some(p) = propagation_flag(option) {
            propagation.push(p);
        } else if let Some((s, c)) = recursive_attr(option) {
            let (rs, rc) = recursive.unwrap_or((0, 0));
            recursive = Some(((rs & !c) | s, (rc & !s) | c));
        } else if option == "tmpcopyup" {
            return Err(PlanError::UnsupportedMountOption {
                destination: destination.clone(),
                option: option.clone(),
            });
        } else {
            data.push(option.clone());
        }
    }
    let fstype = m.typ().as_deref().unwrap_or_default();
    let kind = if fstype == "bind" || set & MS_BIND != 0 {
        MountKind::Bind
    } else {
        match fstype {
            "proc" => MountKind::Proc,
            "sysfs" => MountKind::Sysfs,
            "tmpfs" => MountKind::Tmpfs,
            "devpts" => MountKind::Devpts,
            "mqueue" => MountKind::Mqueue,
            "cgroup" => MountKind::Cgroup,
            "" => return Err(PlanError::MountWithoutType(destination.clone())),
            other => MountKind::Other(other.to_owned()),
        }
    };
    if kind == MountKind::Bind {
        set |= MS_BIND;
        if !data.is_empty() {
            return Err(PlanError::BindWithData {
                destination: destination.clone(),
                data: data.join(","),
            });
        }
    }
    // runc's checkProcMount: /proc itself is for procfs (or a bind of one);
    // below it, only the files lxcfs overlays.
    if destination_s == "/proc" {
        if !matches!(kind, MountKind::Proc | MountKind::Bind) {
            return Err(PlanError::MountInProc(destination.clone()));
        }
    } else if destination_s.starts_with("/proc/")
        && !PROC_OVERLAYS.contains(&destination_s.as_str())
    {
        return Err(PlanError::MountInProc(destination.clone()));
    }
    let source = match &kind {
        MountKind::Bind => {
            let source = m
                .source()
                .clone()
                .filter(|s| !s.as_os_str().is_empty())
                .ok_or_else(|| PlanError::BindWithoutSource(destination.clone()))?;
            Some(bundle.join(source))
        }
        _ => m.source().clone().filter(|s| !s.as_os_str().is_empty()),
    };
    let (uids, gids) = (
        IdMap::all_of(m.uid_mappings()),
        IdMap::all_of(m.gid_mappings()),
    );
    let idmap = match (uids.is_empty(), gids.is_empty()) {
        (true, true) => None,
        (false, false) if kind == MountKind::Bind => Some(MountIdmap { uids, gids }),
        (false, false) => {
            return Err(PlanError::UserNamespace {
                field: "mounts[].uidMappings",
                why: "only bind mounts can be idmapped",
            })
        }
        _ => {
            return Err(PlanError::UserNamespace {
                field: "mounts[].uidMappings",
                why: "an idmapped mount needs both uidMappings and gidMappings",
            })
        }
    };
    Ok(MountPlan {
        kind,
        source,
        destination: destination_s,
        flags: set,
        cleared,
        propagation,
        recursive,
        data: data.join(","),
        idmap,
    })
}

/// `linux.rootfsPropagation` → the flags for `/`; `None` for runc's
/// default (`rslave`).
pub fn parse_rootfs_propagation(value: Option<&str>) -> Result<Option<u64>, PlanError> {
    match value {
        None | Some("") => Ok(None),
        Some(v) => propagation_flag(v)
            .map(Some)
            .ok_or_else(|| PlanError::RootfsPropagation(v.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_mount_option_is_applied() {
        for o in MOUNT_OPTIONS {
            assert!(
                option_flag(o).is_some()
                    || propagation_flag(o).is_some()
                    || recursive_attr(o).is_some(),
                "{o}"
            );
        }
    }
    use serde_json::json;

    fn mount(v: serde_json::Value) -> Result<MountPlan, PlanError> {
        let m: Mount = serde_json::from_value(v).unwrap();
        parse_mount(&m, Path::new("/bundle"))
    }

    #[test]
    fn the_cri_default_mounts() {
        let proc = mount(
            json!({"destination": "/proc", "type": "proc", "source": "proc",
            "options": ["nosuid", "noexec", "nodev"]}),
        )
        .unwrap();
        assert_eq!(proc.kind, MountKind::Proc);
        assert_eq!(proc.flags, MS_NOSUID | MS_NOEXEC | MS_NODEV);
        let dev = mount(
            json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        )
        .unwrap();
        assert_eq!(dev.kind, MountKind::Tmpfs);
        assert_eq!(dev.flags, MS_NOSUID | MS_STRICTATIME);
        assert_eq!(dev.data, "mode=755,size=65536k");
        let sys = mount(
            json!({"destination": "/sys", "type": "sysfs", "source": "sysfs",
            "options": ["nosuid", "noexec", "nodev", "ro"]}),
        )
        .unwrap();
        assert!(sys.readonly());
        let hosts = mount(json!({"destination": "/etc/hosts", "type": "bind",
            "source": "/var/lib/kubelet/pods/x/etc-hosts", "options": ["rbind", "rprivate", "rw"]}))
        .unwrap();
        assert!(hosts.is_bind() && !hosts.readonly());
        assert_eq!(hosts.flags, MS_BIND | MS_REC);
        assert_eq!(hosts.cleared, MS_RDONLY);
        assert_eq!(hosts.propagation, [MS_PRIVATE | MS_REC]);
        // a relative bind source is the bundle's
        let rel =
            mount(json!({"destination": "/data", "source": "vol", "options": ["bind", "ro"]}))
                .unwrap();
        assert_eq!(rel.source.as_deref(), Some(Path::new("/bundle/vol")));
        assert!(rel.readonly());
    }

    #[test]
    fn later_options_win_and_recursive_attributes_are_kept_apart() {
        let m = mount(json!({"destination": "/x", "source": "/s",
            "options": ["rbind", "ro", "rw", "nosuid", "suid", "rro", "rnosuid"]}))
        .unwrap();
        assert!(!m.readonly());
        assert_eq!(m.flags, MS_BIND | MS_REC);
        assert_eq!(m.cleared, MS_RDONLY | MS_NOSUID);
        assert_eq!(
            m.recursive,
            Some((attr::MOUNT_ATTR_RDONLY | attr::MOUNT_ATTR_NOSUID, 0))
        );
    }

    #[test]
    fn bad_mounts_are_refused() {
        for (v, what) in [
            (
                json!({"destination": "/x", "type": "bind"}),
                "bind without source",
            ),
            (
                json!({"destination": "/x", "source": "/s", "options": ["bind", "mode=755"]}),
                "data on a bind",
            ),
            (
                json!({"destination": "/proc/sys", "type": "tmpfs", "source": "t"}),
                "under /proc",
            ),
            (
                json!({"destination": "/proc", "type": "tmpfs", "source": "t"}),
                "tmpfs on /proc",
            ),
            (
                json!({"destination": "x", "type": "tmpfs", "source": "t"}),
                "relative",
            ),
            (json!({"destination": "/x", "source": "t"}), "no type"),
        ] {
            assert!(mount(v.clone()).is_err(), "{what}: {v}");
        }
        // lxcfs may overlay /proc/meminfo
        assert!(mount(
            json!({"destination": "/proc/meminfo", "source": "/var/lib/lxcfs/proc/meminfo",
            "options": ["bind"]})
        )
        .is_ok());
    }

    #[test]
    fn rootfs_propagation() {
        assert_eq!(parse_rootfs_propagation(None).unwrap(), None);
        assert_eq!(
            parse_rootfs_propagation(Some("rprivate")).unwrap(),
            Some(MS_PRIVATE | MS_REC)
        );
        assert!(parse_rootfs_propagation(Some("sideways")).is_err());
    }
}
