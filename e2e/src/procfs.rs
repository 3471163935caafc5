//! What the kernel says of a container's process: the sandbox fields of
//! `/proc/PID/status`, read the same way for a runner and for a process
//! under runc so that the two can be compared (the tests and `make demo`).

use std::collections::BTreeMap;
use std::fs;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::Containerd;

/// The `/proc/PID/status` fields a container's sandbox decides.
pub const SANDBOX_FIELDS: [&str; 11] = [
    "Uid",
    "Gid",
    "Groups",
    "CapInh",
    "CapPrm",
    "CapEff",
    "CapBnd",
    "CapAmb",
    "NoNewPrivs",
    "Seccomp",
    "Seccomp_filters",
];

/// The [`SANDBOX_FIELDS`] of process `pid` (whitespace collapsed), with its
/// `oom_score_adj`.
pub fn sandbox_status(pid: i32) -> Result<BTreeMap<String, String>> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    let mut out: BTreeMap<String, String> = status
        .lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| SANDBOX_FIELDS.contains(k))
        .map(|(k, v)| {
            (
                k.to_owned(),
                v.split_whitespace().collect::<Vec<_>>().join(" "),
            )
        })
        .collect();
    out.insert(
        "oom_score_adj".into(),
        fs::read_to_string(format!("/proc/{pid}/oom_score_adj"))
            .with_context(|| format!("read /proc/{pid}/oom_score_adj"))?
            .trim()
            .to_owned(),
    );
    Ok(out)
}

/// Whether process `pid` is in a mount namespace other than the caller's.
pub fn own_mount_namespace(pid: i32) -> Result<bool> {
    Ok(fs::read_link(format!("/proc/{pid}/ns/mnt"))? != fs::read_link("/proc/self/ns/mnt")?)
}

/// Waits up to 20 s for a process of `cd` for which `which` holds; returns
/// its pid.
pub fn wait_process(
    cd: &Containerd,
    what: &str,
    which: impl Fn(&crate::leftovers::ProcInfo) -> bool,
) -> Result<i32> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(p) = cd.processes()?.into_iter().find(&which) {
            return Ok(p.pid);
        }
        if Instant::now() >= deadline {
            bail!("no process {what} after 20 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The runner of Wasm container `id` (not of a process exec'd into it).
pub fn wait_runner(cd: &Containerd, id: &str) -> Result<i32> {
    wait_process(cd, &format!("runner of {id}"), |p| {
        p.argv.get(1).map(String::as_str) == Some("__wasmpod_runner")
            && p.argv.get(2).map(String::as_str) == Some(id)
    })
}
