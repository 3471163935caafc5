//! A test double for the backends: processes that exist only as pids, whose
//! exits the test delivers (or that die when signalled), so the container
//! state machine, its events and its races run in process, without root.

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Mutex;

use containerd_shim::api;
use nix::sys::signal::Signal;

use super::{ExecLaunched, Launched, Target};
use crate::error::{Error, Result};
use crate::server::env::Env;
use crate::server::stdio::Keepalive;

/// A fake container's backend state.
#[derive(Debug)]
pub struct Fake;

/// What the fake processes do, shared by a test and its `Env`.
#[derive(Debug, Default)]
pub struct World {
    next_pid: AtomicI32,
    /// Every signal sent, as (pid, signal).
    pub signals: Mutex<Vec<(i32, Signal)>>,
    /// When set, `Create` fails with this message.
    pub fail_create: Mutex<Option<String>>,
}

impl World {
    fn pid(&self) -> i32 {
        // above the kernel's largest pid_max (2^22): never a real process
        5_000_000 + self.next_pid.fetch_add(1, Ordering::Relaxed)
    }

    pub(super) fn launch(&self, env: &Env, req: &api::CreateTaskRequest) -> Result<Launched> {
        if let Some(message) = self.fail_create.lock().unwrap().clone() {
            return Err(Error::Workload {
                id: req.id.clone(),
                kind: crate::control::FailureKind::Workload,
                message,
            });
        }
        let pid = self.pid();
        Ok(Launched {
            pid,
            backend: super::Backend::Fake(Fake),
            keepalive: Keepalive::default(),
            console: None,
            cgroup: None,
            exit: env.exits.watch(pid),
        })
    }
}

impl Fake {
    pub(super) fn start(&self, _t: &Target<'_>) -> Result<()> {
        Ok(())
    }

    pub(super) fn exec(&self, env: &Env) -> Result<ExecLaunched> {
        let world = env.fake.as_ref().expect("a fake backend has a fake world");
        let pid = world.pid();
        Ok(ExecLaunched {
            pid,
            keepalive: Keepalive::default(),
            console: None,
            exit: env.exits.watch(pid),
        })
    }

    /// Records the signal; SIGKILL and SIGTERM end the process at once.
    pub(super) fn kill(&self, env: &Env, pid: i32, signal: Signal) -> Result<()> {
        let world = env.fake.as_ref().expect("a fake backend has a fake world");
        world.signals.lock().unwrap().push((pid, signal));
        if matches!(signal, Signal::SIGKILL | Signal::SIGTERM) {
            env.exits.deliver(pid, 128 + signal as i32);
        }
        Ok(())
    }
}
