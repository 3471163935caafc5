//! `linux.cgroupsPath` → the cgroup a container's process lives in.
//!
//! The runtime options' cgroup driver (`SystemdCgroup`) decides how the
//! path is read, as containerd's runc shim decides it, never its shape:
//! - cgroupfs: a path such as `/kubepods/burstable/pod123/abc`, below the
//!   root of each hierarchy; a relative path (any string, colons included,
//!   as `x.slice:cri-containerd:abc` is when kubelet uses systemd and the
//!   runtime does not) is relative to the shim's own cgroup, as runc reads
//!   it;
//! - systemd: `slice:prefix:name` such as
//!   `kubepods-burstable-pod123.slice:cri-containerd:abc`, which systemd lays
//!   out as `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod123.slice/cri-containerd-abc.scope`.

use crate::plan::CgroupDriver;

/// Why a cgroups path cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CgroupPathError {
    /// A component is `..` or `.`, or the path has an empty systemd name.
    #[error("cgroupsPath {0:?} is not a valid cgroup path")]
    Invalid(String),
    /// The systemd driver with a path that is not `slice:prefix:name`.
    #[error(
        "cgroupsPath {0:?}: expected the format \"slice:prefix:name\" of the systemd cgroup driver"
    )]
    NotSystemd(String),
    /// A systemd slice name that systemd would refuse.
    #[error("cgroupsPath {path:?}: invalid systemd slice {slice:?}")]
    BadSlice { path: String, slice: String },
}

/// A container's cgroup path: below the hierarchy root (no leading `/`),
/// or below the shim's own cgroup when `relative`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupPath {
    pub path: String,
    pub relative: bool,
}

/// Resolves `linux.cgroupsPath` with the node's cgroup `driver`. `None`
/// when the spec names no cgroup.
pub fn resolve(
    cgroups_path: &str,
    driver: CgroupDriver,
) -> Result<Option<CgroupPath>, CgroupPathError> {
    if cgroups_path.is_empty() {
        return Ok(None);
    }
    let (path, relative) = match driver {
        CgroupDriver::Systemd => {
            let parts: Vec<&str> = cgroups_path.split(':').collect();
            let [slice, prefix, name] = parts.as_slice() else {
                return Err(CgroupPathError::NotSystemd(cgroups_path.to_owned()));
            };
            (systemd(cgroups_path, slice, prefix, name)?, false)
        }
        CgroupDriver::Cgroupfs => (
            cgroups_path.trim_matches('/').to_owned(),
            !cgroups_path.starts_with('/'),
        ),
    };
    if path.is_empty()
        || path
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(CgroupPathError::Invalid(cgroups_path.to_owned()));
    }
    Ok(Some(CgroupPath { path, relative }))
}

fn systemd(full: &str, slice: &str, prefix: &str, name: &str) -> Result<String, CgroupPathError> {
    if name.is_empty() {
        return Err(CgroupPathError::Invalid(full.to_owned()));
    }
    let slice = if slice.is_empty() {
        "system.slice"
    } else {
        slice
    };
    let parent = expand_slice(full, slice)?;
    let unit = if name.ends_with(".slice") {
        // a slice as the unit itself: nested below the parent slice
        expand_slice(full, name)?
            .rsplit('/')
            .next()
            .unwrap_or(name)
            .to_owned()
    } else if prefix.is_empty() {
        format!("{name}.scope")
    } else {
        format!("{prefix}-{name}.scope")
    };
    Ok(if parent.is_empty() {
        unit
    } else {
        format!("{parent}/{unit}")
    })
}

/// `a-b-c.slice` → `a.slice/a-b.slice/a-b-c.slice`; `-.slice` is the root.
fn expand_slice(full: &str, slice: &str) -> Result<String, CgroupPathError> {
    let bad = || CgroupPathError::BadSlice {
        path: full.to_owned(),
        slice: slice.to_owned(),
    };
    let stem = slice.strip_suffix(".slice").ok_or_else(bad)?;
    if stem == "-" {
        return Ok(String::new());
    }
    if stem.is_empty()
        || stem.contains('/')
        || stem.starts_with('-')
        || stem.ends_with('-')
        || stem.contains("--")
    {
        return Err(bad());
    }
    let mut out = Vec::new();
    let mut prefix = String::new();
    for part in stem.split('-') {
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        out.push(format!("{prefix}.slice"));
    }
    Ok(out.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fs(p: &str) -> Result<Option<CgroupPath>, CgroupPathError> {
        resolve(p, CgroupDriver::Cgroupfs)
    }

    fn path(r: Result<Option<CgroupPath>, CgroupPathError>) -> Option<String> {
        r.unwrap().map(|c| c.path)
    }

    #[test]
    fn cgroupfs_paths() {
        assert_eq!(fs("").unwrap(), None);
        assert_eq!(
            path(fs("/wasmpod-e2e/c1")).as_deref(),
            Some("wasmpod-e2e/c1")
        );
        assert_eq!(
            path(fs("/kubepods/burstable/pod1/abc")).as_deref(),
            Some("kubepods/burstable/pod1/abc")
        );
        assert!(!fs("/kubepods/pod1/abc").unwrap().unwrap().relative);
        // what containerd writes for a .slice parent whatever the driver: on
        // cgroupfs, one relative directory of that name, as runc reads it
        let odd = fs("x.slice:cri-containerd:abc").unwrap().unwrap();
        assert_eq!(
            odd,
            CgroupPath {
                path: "x.slice:cri-containerd:abc".into(),
                relative: true
            }
        );
        for bad in ["/a/../b", "/a//b", "/.", "/"] {
            assert!(fs(bad).is_err(), "{bad}");
        }
        // a plain path under the systemd driver is refused, as runc does
        assert!(matches!(
            resolve("/kubepods/pod1/abc", CgroupDriver::Systemd),
            Err(CgroupPathError::NotSystemd(_))
        ));
    }

    #[test]
    fn systemd_paths() {
        let resolve = |p: &str| super::resolve(p, CgroupDriver::Systemd).map(|c| c.map(|c| c.path));
        assert_eq!(
            resolve("kubepods-burstable-pod123.slice:cri-containerd:abc").unwrap().as_deref(),
            Some("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod123.slice/cri-containerd-abc.scope")
        );
        assert_eq!(
            resolve(":docker:x").unwrap().as_deref(),
            Some("system.slice/docker-x.scope")
        );
        assert_eq!(resolve("-.slice::x").unwrap().as_deref(), Some("x.scope"));
        assert_eq!(
            resolve("machine.slice:p:child.slice").unwrap().as_deref(),
            Some("machine.slice/child.slice")
        );
        for bad in [
            "kube--pods.slice:p:x",
            "kubepods:p:x",
            "a.slice:p:",
            "a/b.slice:p:x",
        ] {
            assert!(resolve(bad).is_err(), "{bad}");
        }
    }
}
