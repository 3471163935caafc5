//! The container's cgroup: created from the spec's `linux.cgroupsPath` with
//! `linux.resources` applied, joined by the runner before it does any work,
//! read for `Stats`, removed on `Delete`. cgroup v1 and v2 alike (through
//! `cgroups-rs`, which picks the node's hierarchy).

use std::collections::HashMap;
use std::time::Duration;

use cgroups_rs::fs::cpu::CpuController;
use cgroups_rs::fs::cpuacct::CpuAcctController;
use cgroups_rs::fs::memory::MemController;
use cgroups_rs::fs::{hierarchies, Cgroup, Controller};
use cgroups_rs::CgroupPid;
use containerd_shim::protos::cgroups::metrics::{MemoryEntry, Metrics};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::{Message, MessageField};
use oci_spec::runtime::LinuxResources;

/// What went wrong with a container's cgroup.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("create: {0}")]
    Create(#[source] Box<cgroups_rs::fs::error::Error>),
    #[error("apply resources: {0}")]
    Apply(#[source] Box<containerd_shim::Error>),
    #[error("update resources: {0}")]
    Update(#[source] Box<containerd_shim::Error>),
    #[error("does not exist")]
    Missing,
    #[error("read the shim's own cgroup (a relative path is below it): {0}")]
    Base(#[source] std::io::Error),
    #[error("join: {0}")]
    Join(#[source] std::io::Error),
    #[error("add pid {pid}: {source}")]
    Add {
        pid: i32,
        #[source]
        source: Box<cgroups_rs::fs::error::Error>,
    },
    #[error("read metrics: {0}")]
    Metrics(#[source] Box<containerd_shim::Error>),
}

/// A cgroup operation's result: the caller names the container and path.
type Result<T> = std::result::Result<T, crate::error::Error>;
use crate::error::Error;

/// `Any.type_url` of the cgroup metrics containerd decodes, per version.
const METRICS_V1: &str = "io.containerd.cgroups.v1.Metrics";
const METRICS_V2: &str = "io.containerd.cgroups.v2.Metrics";

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

/// What a cgroup path is below: each hierarchy's root, or the cgroups of a
/// process (a relative cgroupfs path, read as runc reads one: below its own
/// cgroups, which are the shim server's).
#[derive(Debug, Clone)]
pub enum Base {
    Root,
    /// Controller → path, as in `/proc/PID/cgroup` (`""` on cgroup v2).
    Process(HashMap<String, String>),
}

impl Base {
    /// The base of `path`: the shim server's own cgroups when `relative`.
    pub fn of(relative: bool) -> std::io::Result<Base> {
        if !relative {
            return Ok(Base::Root);
        }
        Ok(Base::Process(parse_proc_cgroup(&std::fs::read_to_string(
            "/proc/self/cgroup",
        )?)))
    }

    /// The base the container's cgroup `relative` path was read against,
    /// found from a process in it (`proc_cgroup`, its `/proc/PID/cgroup`):
    /// the `delete` action's way after the server that created it died.
    pub fn from_member(proc_cgroup: &str, relative: &str) -> Base {
        let suffix = format!("/{}", relative.trim_matches('/'));
        Base::Process(
            parse_proc_cgroup(proc_cgroup)
                .into_iter()
                .map(|(k, v)| {
                    let base = v.strip_suffix(&suffix).unwrap_or(&v).to_owned();
                    (k, base)
                })
                .collect(),
        )
    }

    fn load(&self, path: &str) -> Cgroup {
        let hier = hierarchies::auto();
        match self {
            Base::Root => Cgroup::load(hier, path),
            Base::Process(own) if hier.v2() => {
                let own = own.get("").map_or("", |p| p.trim_matches('/'));
                let full = if own.is_empty() {
                    path.to_owned()
                } else {
                    format!("{own}/{path}")
                };
                Cgroup::load(hier, full)
            }
            Base::Process(own) => Cgroup::load_with_relative_paths(hier, path, own.clone()),
        }
    }
}

/// `/proc/PID/cgroup` → controller → path (each of a co-mounted line's
/// controllers; `""` for the v2 line). Paths may hold colons.
pub fn parse_proc_cgroup(text: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for line in text.lines() {
        let mut f = line.splitn(3, ':');
        let (Some(_), Some(names), Some(path)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        for name in names.split(',') {
            let name = name.strip_prefix("name=").unwrap_or(name);
            out.insert(name.to_owned(), path.to_owned());
        }
    }
    out
}

impl ContainerCgroup {
    /// Creates (or adopts) the cgroup at `path` below `base` and applies
    /// `resources`. On failure nothing is left behind.
    pub fn create(
        id: &str,
        path: &str,
        base: &Base,
        resources: Option<&LinuxResources>,
    ) -> Result<Self> {
        let err = |source| Error::Cgroup {
            id: id.to_owned(),
            path: path.to_owned(),
            source,
        };
        let cgroup = base.load(path);
        cgroup
            .create()
            .map_err(|e| err(CgroupError::Create(Box::new(e))))?;
        let cg = ContainerCgroup {
            id: id.to_owned(),
            path: path.to_owned(),
            cgroup,
            owned: true,
        };
        if let Some(resources) = resources {
            if let Err(e) = containerd_shim::cgroup::update_resources(&cg.cgroup, resources) {
                cg.remove();
                return Err(err(CgroupError::Apply(Box::new(e))));
            }
        }
        Ok(cg)
    }

    /// Opens a cgroup someone else (runc) created and manages, for reading
    /// its metrics only; [`ContainerCgroup::remove`] leaves it alone.
    pub fn open(id: &str, path: &str, base: &Base) -> Result<Self> {
        let cgroup = base.load(path);
        if !cgroup.exists() {
            return Err(Error::Cgroup {
                id: id.to_owned(),
                path: path.to_owned(),
                source: CgroupError::Missing,
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
    pub fn adopt(id: &str, path: &str, base: &Base) -> Result<Self> {
        let mut cg = Self::open(id, path, base)?;
        cg.owned = true;
        Ok(cg)
    }

    /// Applies new `resources` (CRI's UpdateContainerResources).
    pub fn update(&self, resources: &LinuxResources) -> Result<()> {
        containerd_shim::cgroup::update_resources(&self.cgroup, resources).map_err(|e| {
            Error::Cgroup {
                id: self.id.clone(),
                path: self.path.clone(),
                source: CgroupError::Update(Box::new(e)),
            }
        })
    }

    /// The cgroup's directory when the node runs cgroup v2 (one hierarchy),
    /// where a process can be started directly inside it; `None` on v1.
    pub fn v2_dir(&self) -> Option<std::path::PathBuf> {
        if !self.cgroup.v2() {
            return None;
        }
        Some(
            hierarchies::auto()
                .root()
                .join(self.cgroup.path().trim_start_matches('/')),
        )
    }

    /// The cgroup's path below the hierarchy root (`linux.cgroupsPath`).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The cgroup's `tasks` file in each hierarchy when the node runs
    /// cgroup v1, opened for writing, for a new process to move itself in
    /// (see [`crate::sys::spawn::Placement`]); `None` on v2.
    pub fn v1_tasks(&self) -> Option<std::io::Result<Vec<std::fs::File>>> {
        if self.cgroup.v2() {
            return None;
        }
        Some(
            self.cgroup
                .subsystems()
                .iter()
                .map(|s| {
                    let path = s.to_controller().path().join("tasks");
                    std::fs::OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .map_err(|e| {
                            std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))
                        })
                })
                .collect(),
        )
    }

    /// Moves process `pid` into the cgroup.
    pub fn add(&self, pid: i32) -> Result<()> {
        self.cgroup
            .add_task_by_tgid(CgroupPid::from(u64::try_from(pid).unwrap_or_default()))
            .map_err(|source| Error::Cgroup {
                id: self.id.clone(),
                path: self.path.clone(),
                source: CgroupError::Add {
                    pid,
                    source: Box::new(source),
                },
            })
    }

    /// The cgroup's metrics in the format containerd expects for the node's
    /// cgroup version (`io.containerd.cgroups.v1.Metrics` or `.v2.Metrics`).
    pub fn stats(&self) -> Result<Any> {
        let err = |e: containerd_shim::Error| Error::Cgroup {
            id: self.id.clone(),
            path: self.path.clone(),
            source: CgroupError::Metrics(Box::new(e)),
        };
        // The type is named here, not by protobuf reflection (whose tables
        // would stay in the shim's heap; see `server::events`).
        let (type_url, value) = if self.cgroup.v2() {
            let m = containerd_shim::cgroup::collect_metrics_v2(&self.cgroup).map_err(err)?;
            (METRICS_V2, m.write_to_bytes())
        } else {
            let mut m = containerd_shim::cgroup::collect_metrics(&self.cgroup).map_err(err)?;
            complete_v1_metrics(&self.cgroup, &mut m);
            (METRICS_V1, m.write_to_bytes())
        };
        let value = value.map_err(|e| err(containerd_shim::Error::Protobuf(e)))?;
        Ok(Any {
            type_url: type_url.to_owned(),
            value,
            ..Default::default()
        })
    }

    /// How many processes of this cgroup the kernel's OOM killer has
    /// killed: `oom_kill` of `memory.oom_control` (v1, Linux 4.13+) or of
    /// `memory.events` (v2). 0 when the memory controller or the counter is
    /// missing.
    pub fn oom_kills(&self) -> u64 {
        let Some(mem) = self.cgroup.controller_of::<MemController>() else {
            return 0;
        };
        let file = if self.cgroup.v2() {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        std::fs::read_to_string(mem.path().join(file))
            .ok()
            .and_then(|text| counter(&text, "oom_kill"))
            .unwrap_or(0)
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

/// Fills what the shim library's v1 collection leaves out or reads with
/// v2 names: CPU usage from `cpuacct` (nanoseconds, what CRI reports as
/// `usage_core_nano_seconds`), throttling from v1's `cpu.stat`, and the
/// `memory.stat` counters (RSS, page faults: kubelet's `rss_bytes`,
/// `page_faults`, `major_page_faults`).
fn complete_v1_metrics(cgroup: &Cgroup, m: &mut Metrics) {
    if let Some(acct) = cgroup.controller_of::<CpuAcctController>() {
        let a = acct.cpuacct();
        let cpu = m.cpu.mut_or_insert_default();
        let usage = cpu.usage.mut_or_insert_default();
        usage.total = a.usage;
        usage.kernel = a.usage_sys;
        usage.user = a.usage_user;
        usage.per_cpu = a
            .usage_percpu
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
    }
    if let Some(ctl) = cgroup.controller_of::<CpuController>() {
        let stat = ctl.cpu().stat;
        let throttling = m
            .cpu
            .mut_or_insert_default()
            .throttling
            .mut_or_insert_default();
        throttling.periods = counter(&stat, "nr_periods").unwrap_or(0);
        throttling.throttled_periods = counter(&stat, "nr_throttled").unwrap_or(0);
        throttling.throttled_time = counter(&stat, "throttled_time").unwrap_or(0);
    }
    if let Some(mem) = cgroup.controller_of::<MemController>() {
        let memory = mem.memory_stat();
        let swap = mem.memswap();
        let kernel = mem.kmem_stat();
        let out = m.memory.mut_or_insert_default();
        // The usage entries with their limits, maxima and failure counts
        // (`ctr tasks metrics` prints memory.limit_in_bytes from here).
        out.usage = MessageField::some(entry(
            memory.usage_in_bytes,
            memory.max_usage_in_bytes,
            memory.fail_cnt,
            memory.limit_in_bytes,
        ));
        out.swap = MessageField::some(entry(
            swap.usage_in_bytes,
            swap.max_usage_in_bytes,
            swap.fail_cnt,
            swap.limit_in_bytes,
        ));
        out.kernel = MessageField::some(entry(
            kernel.usage_in_bytes,
            kernel.max_usage_in_bytes,
            kernel.fail_cnt,
            kernel.limit_in_bytes,
        ));
        let s = memory.stat;
        out.cache = s.cache;
        out.rss = s.rss;
        out.rss_huge = s.rss_huge;
        out.mapped_file = s.mapped_file;
        out.dirty = s.dirty;
        out.writeback = s.writeback;
        out.pg_pg_in = s.pgpgin;
        out.pg_pg_out = s.pgpgout;
        out.pg_fault = s.pgfault;
        out.pg_maj_fault = s.pgmajfault;
        out.inactive_anon = s.inactive_anon;
        out.active_anon = s.active_anon;
        out.inactive_file = s.inactive_file;
        out.active_file = s.active_file;
        out.unevictable = s.unevictable;
        out.hierarchical_memory_limit = u64::try_from(s.hierarchical_memory_limit).unwrap_or(0);
        out.hierarchical_swap_limit = u64::try_from(s.hierarchical_memsw_limit).unwrap_or(0);
        out.total_cache = s.total_cache;
        out.total_rss = s.total_rss;
        out.total_rss_huge = s.total_rss_huge;
        out.total_mapped_file = s.total_mapped_file;
        out.total_dirty = s.total_dirty;
        out.total_writeback = s.total_writeback;
        out.total_pg_pg_in = s.total_pgpgin;
        out.total_pg_pg_out = s.total_pgpgout;
        out.total_pg_fault = s.total_pgfault;
        out.total_pg_maj_fault = s.total_pgmajfault;
        out.total_inactive_anon = s.total_inactive_anon;
        out.total_active_anon = s.total_active_anon;
        out.total_inactive_file = s.total_inactive_file;
        out.total_active_file = s.total_active_file;
        out.total_unevictable = s.total_unevictable;
    }
}

/// A v1 memory counter as containerd's metrics carry it (a limit below 0
/// cannot be set; "no limit" is the kernel's largest value).
fn entry(usage: u64, max: u64, failcnt: u64, limit: i64) -> MemoryEntry {
    MemoryEntry {
        usage,
        max,
        failcnt,
        limit: u64::try_from(limit).unwrap_or(0),
        ..Default::default()
    }
}

/// The value of the `key value` line `key` of a flat-keyed cgroup file.
fn counter(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cgroups_rs::fs::pid::PidController;
    use cgroups_rs::fs::{Hierarchy, Subsystem};
    use containerd_shim::protos::cgroups_v2::metrics::Metrics as MetricsV2;
    use containerd_shim::protos::protobuf::MessageFull;
    use std::path::PathBuf;

    #[test]
    fn metrics_type_urls_are_what_reflection_names() {
        assert_eq!(METRICS_V1, Metrics::descriptor().full_name());
        assert_eq!(METRICS_V2, MetricsV2::descriptor().full_name());
    }

    /// A cgroup v2 hierarchy rooted at a directory of fixture files (what
    /// `/sys/fs/cgroup` holds on a unified node), with the cpu, memory and
    /// pids controllers enabled.
    #[derive(Debug)]
    struct FixtureV2(PathBuf);

    impl Hierarchy for FixtureV2 {
        fn subsystems(&self) -> Vec<Subsystem> {
            let (root, rel) = (self.0.clone(), PathBuf::new());
            vec![
                Subsystem::Cpu(CpuController::new(root.clone(), rel.clone(), true)),
                Subsystem::Mem(MemController::new(root.clone(), rel.clone(), true)),
                Subsystem::Pid(PidController::new(root, rel, true)),
            ]
        }
        fn root(&self) -> PathBuf {
            self.0.clone()
        }
        fn root_control_group(&self) -> Cgroup {
            Cgroup::load(Box::new(FixtureV2(self.0.clone())), "")
        }
        fn parent_control_group(&self, path: &str) -> Cgroup {
            let parent = std::path::Path::new(path)
                .parent()
                .unwrap_or(std::path::Path::new(""));
            Cgroup::load(Box::new(FixtureV2(self.0.clone())), parent)
        }
        fn v2(&self) -> bool {
            true
        }
    }

    /// The files of one container's cgroup, as a 6.x kernel writes them
    /// (values made up, format verbatim).
    const V2_FILES: &[(&str, &str)] = &[
        ("cgroup.controllers", "cpu memory pids\n"),
        ("cgroup.procs", "4242\n"),
        ("cpu.stat", "usage_usec 1500000\nuser_usec 1200000\nsystem_usec 300000\nnr_periods 40\nnr_throttled 7\nthrottled_usec 250000\nnr_bursts 0\nburst_usec 0\n"),
        ("cpu.max", "50000 100000\n"),
        ("cpu.weight", "20\n"),
        ("memory.current", "104857600\n"),
        ("memory.max", "268435456\n"),
        ("memory.low", "0\n"),
        ("memory.high", "max\n"),
        ("memory.min", "0\n"),
        ("memory.swap.current", "0\n"),
        ("memory.swap.max", "max\n"),
        ("memory.events", "low 0\nhigh 0\nmax 12\noom 2\noom_kill 2\noom_group_kill 0\n"),
        ("memory.stat", "anon 100663296\nfile 4194304\nkernel 1048576\nkernel_stack 16384\npagetables 204800\nsock 0\nshmem 0\nfile_mapped 0\nfile_dirty 0\nfile_writeback 0\nanon_thp 0\ninactive_anon 100663296\nactive_anon 0\ninactive_file 4194304\nactive_file 0\nunevictable 0\nslab_reclaimable 1024\nslab_unreclaimable 2048\nslab 3072\nworkingset_refault_anon 0\nworkingset_refault_file 0\nworkingset_activate_anon 0\nworkingset_activate_file 0\nworkingset_restore_anon 0\nworkingset_restore_file 0\nworkingset_nodereclaim 0\npgfault 25000\npgmajfault 3\npgrefill 0\npgscan 0\npgsteal 0\npgactivate 0\npgdeactivate 0\npglazyfree 0\npglazyfreed 0\nthp_fault_alloc 0\nthp_collapse_alloc 0\n"),
        ("pids.current", "1\n"),
        ("pids.max", "64\n"),
    ];

    fn fixture_cgroup(dir: &std::path::Path, rel: &str) -> ContainerCgroup {
        let cg_dir = dir.join(rel);
        std::fs::create_dir_all(&cg_dir).unwrap();
        for (name, text) in V2_FILES {
            std::fs::write(cg_dir.join(name), text).unwrap();
        }
        ContainerCgroup {
            id: "c1".into(),
            path: rel.into(),
            cgroup: Cgroup::load(Box::new(FixtureV2(dir.to_path_buf())), rel),
            owned: false,
        }
    }

    #[test]
    fn v2_stats_are_containerds_v2_metrics() {
        let dir = tempfile::tempdir().unwrap();
        // where the systemd driver puts a pod's container
        let rel = "kubepods.slice/kubepods-pod1.slice/cri-containerd-c1.scope";
        let cg = fixture_cgroup(dir.path(), rel);
        let any = cg.stats().expect("stats of a v2 fixture");
        assert_eq!(any.type_url, "io.containerd.cgroups.v2.Metrics");
        let m = MetricsV2::parse_from_bytes(&any.value).unwrap();
        assert_eq!(m.cpu.usage_usec, 1_500_000);
        assert_eq!(m.cpu.user_usec, 1_200_000);
        assert_eq!(m.cpu.nr_throttled, 7);
        assert_eq!(m.memory.usage, 104_857_600);
        assert_eq!(m.memory.usage_limit, 268_435_456);
        assert_eq!(m.memory.inactive_file, 4_194_304);
        assert_eq!(m.memory.pgmajfault, 3);
        assert_eq!(m.pids.current, 1);
        assert_eq!(m.pids.limit, 64);
        assert_eq!(m.memory_events.oom_kill, 2);
        assert_eq!(cg.oom_kills(), 2);
    }

    /// A cgroup v1 hierarchy of fixture files: the memory controller only.
    #[derive(Debug)]
    struct FixtureV1(PathBuf);

    impl Hierarchy for FixtureV1 {
        fn subsystems(&self) -> Vec<Subsystem> {
            let root = self.0.join("memory");
            vec![Subsystem::Mem(MemController::new(
                root,
                PathBuf::new(),
                false,
            ))]
        }
        fn root(&self) -> PathBuf {
            self.0.clone()
        }
        fn root_control_group(&self) -> Cgroup {
            Cgroup::load(Box::new(FixtureV1(self.0.clone())), "")
        }
        fn parent_control_group(&self, path: &str) -> Cgroup {
            let parent = std::path::Path::new(path)
                .parent()
                .unwrap_or(std::path::Path::new(""));
            Cgroup::load(Box::new(FixtureV1(self.0.clone())), parent)
        }
        fn v2(&self) -> bool {
            false
        }
    }

    #[test]
    fn v1_stats_carry_the_memory_limit() {
        let dir = tempfile::tempdir().unwrap();
        let rel = "default/c1";
        let cg_dir = dir.path().join("memory").join(rel);
        std::fs::create_dir_all(&cg_dir).unwrap();
        for (name, text) in [
            ("memory.limit_in_bytes", "268435456\n"),
            ("memory.usage_in_bytes", "41943040\n"),
            ("memory.max_usage_in_bytes", "50331648\n"),
            ("memory.failcnt", "3\n"),
            ("memory.memsw.limit_in_bytes", "536870912\n"),
            ("memory.memsw.usage_in_bytes", "41943040\n"),
            ("memory.kmem.usage_in_bytes", "1048576\n"),
            ("memory.kmem.limit_in_bytes", "9223372036854771712\n"),
            (
                "memory.stat",
                "cache 4096\nrss 41938944\npgfault 12\npgmajfault 1\n",
            ),
            (
                "memory.oom_control",
                "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n",
            ),
        ] {
            std::fs::write(cg_dir.join(name), text).unwrap();
        }
        let cg = ContainerCgroup {
            id: "c1".into(),
            path: rel.into(),
            cgroup: Cgroup::load(Box::new(FixtureV1(dir.path().to_path_buf())), rel),
            owned: false,
        };
        let any = cg.stats().expect("stats of a v1 fixture");
        assert_eq!(any.type_url, "io.containerd.cgroups.v1.Metrics");
        let m = Metrics::parse_from_bytes(&any.value).unwrap();
        let usage = &m.memory.usage;
        assert_eq!(usage.limit, 268_435_456, "{m:?}");
        assert_eq!(
            (usage.usage, usage.max, usage.failcnt),
            (41_943_040, 50_331_648, 3)
        );
        assert_eq!(m.memory.swap.limit, 536_870_912);
        assert_eq!(m.memory.kernel.usage, 1_048_576);
        assert_eq!(m.memory.rss, 41_938_944);
        assert_eq!(m.memory.pg_maj_fault, 1);
    }

    #[test]
    fn oom_kill_counters() {
        // cgroup v1 memory.oom_control
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(counter(v1, "oom_kill"), Some(3));
        // cgroup v2 memory.events: oom_group_kill must not be taken for oom_kill
        let v2 = "low 0\nhigh 0\nmax 12\noom 2\noom_group_kill 0\noom_kill 2\n";
        assert_eq!(counter(v2, "oom_kill"), Some(2));
        assert_eq!(counter("oom 1\n", "oom_kill"), None);
    }
}
