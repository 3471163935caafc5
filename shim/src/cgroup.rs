//! The container's cgroup: created from the spec's `linux.cgroupsPath` with
//! `linux.resources` applied, joined by the runner before it does any work,
//! read for `Stats`, removed on `Delete`. cgroup v1 and v2 alike (through
//! `cgroups-rs`, which picks the node's hierarchy).

use std::time::Duration;

use cgroups_rs::fs::{hierarchies, Cgroup};
use cgroups_rs::CgroupPid;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use oci_spec::runtime::LinuxResources;

use crate::error::{Error, Result};

/// A container's cgroup.
pub struct ContainerCgroup {
    id: String,
    path: String,
    cgroup: Cgroup,
    /// Created by the shim (removed on Delete), or owned by runc (only read).
    owned: bool,
}

impl std::fmt::Debug for ContainerCgroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContainerCgroup")
            .field("id", &self.id)
            .field("path", &self.path)
            .finish()
    }
}

impl ContainerCgroup {
    /// Creates (or adopts) the cgroup at `path` below the hierarchy root and
    /// applies `resources`. On failure nothing is left behind.
    pub fn create(id: &str, path: &str, resources: Option<&LinuxResources>) -> Result<Self> {
        let err = |what: String| Error::Cgroup {
            id: id.to_owned(),
            path: path.to_owned(),
            what,
        };
        let cgroup =
            Cgroup::new(hierarchies::auto(), path).map_err(|e| err(format!("create: {e}")))?;
        let cg = ContainerCgroup {
            id: id.to_owned(),
            path: path.to_owned(),
            cgroup,
            owned: true,
        };
        if let Some(resources) = resources {
            if let Err(e) = containerd_shim::cgroup::update_resources(&cg.cgroup, resources) {
                cg.remove();
                return Err(err(format!("apply resources: {e}")));
            }
        }
        Ok(cg)
    }

    /// Opens a cgroup someone else (runc) created and manages, for reading
    /// its metrics only; [`ContainerCgroup::remove`] leaves it alone.
    pub fn open(id: &str, path: &str) -> Result<Self> {
        let cgroup = Cgroup::load(hierarchies::auto(), path);
        if !cgroup.exists() {
            return Err(Error::Cgroup {
                id: id.to_owned(),
                path: path.to_owned(),
                what: "does not exist".into(),
            });
        }
        Ok(ContainerCgroup {
            id: id.to_owned(),
            path: path.to_owned(),
            cgroup,
            owned: false,
        })
    }

    /// Takes over an existing cgroup the shim created earlier (the `delete`
    /// action after a shim crash), so that [`ContainerCgroup::remove`]
    /// removes it.
    pub fn adopt(id: &str, path: &str) -> Result<Self> {
        let mut cg = Self::open(id, path)?;
        cg.owned = true;
        Ok(cg)
    }

    /// Moves process `pid` into the cgroup.
    pub fn add(&self, pid: i32) -> Result<()> {
        let pid = u64::try_from(pid).unwrap_or_default();
        self.cgroup
            .add_task_by_tgid(CgroupPid::from(pid))
            .map_err(|e| Error::Cgroup {
                id: self.id.clone(),
                path: self.path.clone(),
                what: format!("add pid {pid}: {e}"),
            })
    }

    /// The cgroup's metrics in the format containerd expects for the node's
    /// cgroup version (`io.containerd.cgroups.v1.Metrics` or `.v2.Metrics`).
    pub fn stats(&self) -> Result<Any> {
        let err = |e: containerd_shim::Error| Error::Cgroup {
            id: self.id.clone(),
            path: self.path.clone(),
            what: format!("read metrics: {e}"),
        };
        let any = if self.cgroup.v2() {
            let m = containerd_shim::cgroup::collect_metrics_v2(&self.cgroup).map_err(err)?;
            containerd_shim::util::convert_to_any(Box::new(m))
        } else {
            let m = containerd_shim::cgroup::collect_metrics(&self.cgroup).map_err(err)?;
            containerd_shim::util::convert_to_any(Box::new(m))
        };
        any.map_err(err)
    }

    /// Removes the cgroup. Its processes must have exited; the kernel may
    /// take a moment to release the last one, so busy is retried briefly.
    pub fn remove(&self) -> bool {
        if !self.owned {
            return true;
        }
        for _ in 0..50 {
            if self.cgroup.delete().is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        log::warn!(
            "container {}: cgroup {} could not be removed",
            self.id,
            self.path
        );
        false
    }
}
