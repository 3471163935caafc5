//! `linux.cgroupsPath` → the cgroup a container's process lives in.
//!
//! Two notations exist, chosen by the node's cgroup driver:
//! - cgroupfs: a path such as `/kubepods/burstable/pod123/abc`;
//! - systemd: `slice:prefix:name` such as
//!   `kubepods-burstable-pod123.slice:cri-containerd:abc`, which systemd lays
//!   out as `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod123.slice/cri-containerd-abc.scope`.
//!
//! Both resolve to a path below the root of each cgroup hierarchy (v1) or of
//! the unified hierarchy (v2).

/// Why a cgroups path cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CgroupPathError {
    /// A component is `..` or `.`, or the path has an empty systemd name.
    #[error("cgroupsPath {0:?} is not a valid cgroup path")]
    Invalid(String),
    /// A systemd slice name that systemd would refuse.
    #[error("cgroupsPath {path:?}: invalid systemd slice {slice:?}")]
    BadSlice { path: String, slice: String },
}

/// Resolves `linux.cgroupsPath` to a path relative to the hierarchy root
/// (no leading `/`). `None` when the spec names no cgroup.
pub fn resolve(cgroups_path: &str) -> Result<Option<String>, CgroupPathError> {
    if cgroups_path.is_empty() {
        return Ok(None);
    }
    let parts: Vec<&str> = cgroups_path.split(':').collect();
    let path = match parts.as_slice() {
        [slice, prefix, name] => systemd(cgroups_path, slice, prefix, name)?,
        [_] => cgroups_path.trim_matches('/').to_owned(),
        _ => return Err(CgroupPathError::Invalid(cgroups_path.to_owned())),
    };
    if path.is_empty()
        || path
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(CgroupPathError::Invalid(cgroups_path.to_owned()));
    }
    Ok(Some(path))
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

    #[test]
    fn cgroupfs_paths() {
        assert_eq!(resolve("").unwrap(), None);
        assert_eq!(
            resolve("/wasmpod-e2e/c1").unwrap().as_deref(),
            Some("wasmpod-e2e/c1")
        );
        assert_eq!(
            resolve("/kubepods/burstable/pod1/abc").unwrap().as_deref(),
            Some("kubepods/burstable/pod1/abc")
        );
        for bad in ["/a/../b", "/a//b", "/.", "/", "a:b"] {
            assert!(resolve(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn systemd_paths() {
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
