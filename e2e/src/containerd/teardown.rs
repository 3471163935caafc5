//! Stopping, restarting and tearing down the private containerd, and the
//! leftovers check every test ends with.

use std::collections::BTreeSet;
use std::fs;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::{env_flag, Containerd, LEFTOVER_GRACE, STOP_GRACE};
use crate::leftovers::{self, Leftover};
use crate::process;

impl Containerd {
    /// Sends `signal` to containerd and waits up to `grace` for it to exit,
    /// then SIGKILLs it. No-op when it is not running.
    fn stop_process(&mut self, signal: Signal, grace: Duration) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = Pid::from_raw(
            i32::try_from(child.id()).context("containerd's pid does not fit in pid_t")?,
        );
        if child
            .try_wait()
            .context("failed to poll containerd")?
            .is_some()
        {
            return Ok(());
        }
        kill(pid, signal)
            .with_context(|| format!("failed to send {signal} to containerd {pid}"))?;
        if process::wait_until(&mut child, grace)
            .context("failed to wait for containerd")?
            .is_some()
        {
            return Ok(());
        }
        let _ = child.kill();
        child
            .wait()
            .with_context(|| format!("failed to reap containerd {pid} after SIGKILL"))?;
        Ok(())
    }

    /// Stops containerd with SIGTERM (SIGKILL after 10 s) and starts it
    /// again with the same configuration; shims keep running meanwhile.
    pub fn restart(&mut self) -> Result<()> {
        self.stop_process(Signal::SIGTERM, STOP_GRACE)?;
        self.spawn()
    }

    /// Kills containerd with SIGKILL (and reaps it), leaving shims and
    /// containers running; see [`start_again`](Self::start_again).
    pub fn kill9(&mut self) -> Result<()> {
        self.stop_process(Signal::SIGKILL, STOP_GRACE)
    }

    /// Starts containerd again after [`kill9`](Self::kill9).
    pub fn start_again(&mut self) -> Result<()> {
        self.spawn()
    }

    /// Processes launched by this containerd (not containerd itself, nor the
    /// test process or the `ctr`s it is running).
    pub fn processes(&self) -> Result<Vec<leftovers::ProcInfo>> {
        let me = i32::try_from(std::process::id()).unwrap_or(i32::MAX);
        let procs = leftovers::list_processes()?;
        let mut exclude: BTreeSet<i32> = procs
            .iter()
            .filter(|p| p.ppid == me)
            .map(|p| p.pid)
            .collect();
        exclude.insert(me);
        if let Some(pid) = self.pid().and_then(|p| i32::try_from(p).ok()) {
            exclude.insert(pid);
        }
        Ok(leftovers::harness_processes(
            &procs,
            &self.dir,
            &self.socket(),
            crate::SHIM_BINARY,
            &exclude,
        ))
    }

    /// The shim server serving container `id` (its argv names it), or any
    /// shim server of this containerd when `id` is `None`.
    pub fn shim_server(&self, id: Option<&str>) -> Result<leftovers::ProcInfo> {
        self.processes()?
            .into_iter()
            .find(|p| {
                p.argv
                    .first()
                    .is_some_and(|a| a.ends_with(crate::SHIM_BINARY))
                    && p.argv.iter().any(|a| a == "-address")
                    && id.is_none_or(|id| p.argv.iter().any(|a| a == id))
            })
            .with_context(|| format!("no shim server process for {id:?}"))
    }

    /// Everything left behind right now (no waiting); see
    /// [`assert_no_leftovers`](Self::assert_no_leftovers) for what counts.
    pub fn leftovers(&self) -> Result<Vec<Leftover>> {
        let mut out = Vec::new();
        let procs = self.processes()?;
        let pids: BTreeSet<i32> = procs.iter().map(|p| p.pid).collect();
        out.extend(procs.iter().map(leftovers::ProcInfo::to_leftover));

        out.extend(
            leftovers::mounts_under(&self.dir)?
                .into_iter()
                .map(Leftover::Mount),
        );
        out.extend(
            leftovers::task_state_entries(&self.state())
                .into_iter()
                .map(Leftover::TaskState),
        );
        for dir in [self.state(), self.fifo_dir()] {
            out.extend(leftovers::fifos_under(&dir).into_iter().map(Leftover::Fifo));
        }

        let ids = self.tracked_ids();
        let mut sockets: BTreeSet<PathBuf> = ids
            .iter()
            .map(|id| leftovers::shim_socket_path(&self.socket(), self.namespace(), id))
            .filter(|p| p.exists())
            .collect();
        // New sockets in /run/containerd/s held by our processes (covers
        // sandbox ids and ids that were not tracked).
        let new: BTreeSet<PathBuf> = leftovers::shim_socket_entries()
            .difference(&self.shim_sockets_before)
            .cloned()
            .collect();
        if !new.is_empty() && !pids.is_empty() {
            let held = leftovers::unix_socket_paths_of(&pids);
            sockets.extend(new.intersection(&held).cloned());
        }
        out.extend(sockets.into_iter().map(Leftover::ShimSocket));

        out.extend(
            leftovers::leftover_cgroups(&ids)
                .into_iter()
                .map(Leftover::Cgroup),
        );
        let mut namespaces = vec![self.namespace()];
        if self.opts.cri {
            namespaces.push(crate::cri::CRI_NAMESPACE);
        }
        for ns in namespaces {
            out.extend(
                leftovers::leftover_runc_state(ns, &ids)
                    .into_iter()
                    .map(Leftover::RuncState),
            );
        }
        if let Ok(netns) = self.netns.lock() {
            out.extend(
                netns
                    .iter()
                    .filter(|p| p.exists())
                    .cloned()
                    .map(Leftover::Netns),
            );
        }
        if let Some(net) = &self.cni {
            out.extend(net.ports().into_iter().map(Leftover::PodVeth));
        }
        Ok(out)
    }

    /// Checks that nothing of this harness is left once the test removed all
    /// its containers, retrying for up to 5 s as containerd cleans up
    /// asynchronously. Looked at:
    /// 1. processes whose command line mentions `T`, or that run the shim with
    ///    `-address` our socket, and their descendants (containerd excepted);
    /// 2. mounts under `T`;
    /// 3. task bundles under `T/state/io.containerd.runtime.v2.task/<ns>/`;
    /// 4. FIFOs under `T/state` and `T/fifo`;
    /// 5. shim sockets in `/run/containerd/s` of tracked ids, or new there
    ///    since the start and held by a process of rule 1;
    /// 6. cgroups and runc state named after tracked container ids;
    /// 7. with CRI: the pods' network namespaces, and veths on the bridge.
    pub fn assert_no_leftovers(&self) -> Result<()> {
        let deadline = Instant::now() + LEFTOVER_GRACE;
        loop {
            let found = self.leftovers()?;
            if found.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let list: Vec<String> = found.iter().map(|l| format!("  - {l}")).collect();
                return Err(anyhow!(
                    "{} leftover(s) after {:?}:\n{}\nlast lines of containerd's log:\n{}",
                    found.len(),
                    LEFTOVER_GRACE,
                    list.join("\n"),
                    self.log_tail(30)
                ));
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops containerd and cleans up (see the type's documentation),
    /// reporting what could not be done.
    pub fn stop(mut self) -> Result<()> {
        self.shutdown()
    }

    /// The cleanup shared by [`stop`](Self::stop) and `Drop`.
    fn shutdown(&mut self) -> Result<()> {
        if self.shut_down {
            return Ok(());
        }
        self.shut_down = true;
        let mut errors: Vec<String> = Vec::new();

        if let Err(e) = self.stop_process(Signal::SIGTERM, STOP_GRACE) {
            errors.push(format!("stopping containerd: {e:#}"));
        }
        if let Err(e) = self.kill_processes() {
            errors.push(format!("killing leftover processes: {e:#}"));
        }
        self.remove_tracked_leftovers();
        if let Err(e) = self.unmount_all() {
            errors.push(format!("unmounting: {e:#}"));
        }
        if env_flag("WASMPOD_E2E_KEEP") {
            eprintln!("wasmpod-e2e: keeping {}", self.dir.display());
        } else if let Err(e) = fs::remove_dir_all(&self.dir) {
            errors.push(format!("removing {}: {e}", self.dir.display()));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            bail!(
                "cleanup of the e2e containerd at {} failed:\n{}",
                self.dir.display(),
                errors.join("\n")
            )
        }
    }

    /// SIGKILLs the processes of leftover rule 1 and waits (up to 5 s) for
    /// them to be gone or zombies.
    fn kill_processes(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let alive: Vec<_> = self
                .processes()?
                .into_iter()
                .filter(|p| p.state != 'Z' && p.state != 'X')
                .collect();
            if alive.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let pids: Vec<i32> = alive.iter().map(|p| p.pid).collect();
                bail!("processes still alive after SIGKILL: {pids:?}");
            }
            for p in &alive {
                // It may have exited meanwhile: ESRCH is fine.
                let _ = kill(Pid::from_raw(p.pid), Signal::SIGKILL);
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Best-effort removal of what tracked containers may have left outside
    /// `T` once their processes are dead: empty cgroups, runc state, stale
    /// shim sockets.
    fn remove_tracked_leftovers(&self) {
        let ids = self.tracked_ids();
        for cg in leftovers::leftover_cgroups(&ids) {
            let _ = fs::remove_dir(&cg);
        }
        // the cgroup parents of the pods a test ran (`Pod::config`), which a
        // test that fails before `Pod::remove` would leave, empty
        for uid in ids.iter().filter(|id| id.starts_with("uid-")) {
            let parent = format!("{}/pod{uid}", crate::cri::POD_CGROUP_ROOT);
            let _ = crate::cri::remove_pod_cgroup(&parent);
        }
        for ns in [self.namespace(), crate::cri::CRI_NAMESPACE] {
            for dir in leftovers::leftover_runc_state(ns, &ids) {
                let _ = fs::remove_dir_all(&dir);
            }
        }
        if let Ok(netns) = self.netns.lock() {
            for p in netns.iter().filter(|p| p.exists()) {
                let _ = nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH);
                let _ = fs::remove_file(p);
            }
        }
        for id in &ids {
            let sock = leftovers::shim_socket_path(&self.socket(), self.namespace(), id);
            let _ = fs::remove_file(&sock);
        }
    }

    /// Lazily unmounts everything under `T`, deepest first, repeating while
    /// mounts remain (mounts can be stacked).
    fn unmount_all(&self) -> Result<()> {
        for _ in 0..20 {
            let mut mounts = leftovers::mounts_under(&self.dir)?;
            if mounts.is_empty() {
                return Ok(());
            }
            // Deepest first; among equals, the most recent first.
            mounts.reverse();
            mounts.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
            for m in mounts {
                let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
            }
        }
        let left = leftovers::mounts_under(&self.dir)?;
        if left.is_empty() {
            Ok(())
        } else {
            bail!("still mounted: {left:?}")
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if thread::panicking() && !self.shut_down {
            eprintln!(
                "wasmpod-e2e: test failed; last lines of {}:\n{}",
                self.log_path().display(),
                self.log_tail(40)
            );
        }
        if let Err(e) = self.shutdown() {
            eprintln!("wasmpod-e2e: {e:#}");
        }
    }
}
