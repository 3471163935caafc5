//! Routing process exits, reaped by the server's SIGCHLD handler, to whoever
//! waits for that pid.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use tokio::sync::oneshot;

use crate::exit::Exit;

/// Routes exit codes from the reaper to the task waiting for that pid. An exit
/// may arrive before anyone watches the pid (a runner that dies at once), so
/// unclaimed exits are kept, a bounded number of them.
#[derive(Default)]
pub struct ExitRouter {
    inner: Mutex<Routes>,
}

#[derive(Default)]
struct Routes {
    waiting: HashMap<i32, oneshot::Sender<Exit>>,
    early: HashMap<i32, Exit>,
    /// Pids whose coming exit nobody wants (a runner killed or failed while
    /// starting): dropped on arrival, so it can never reach a later process
    /// that reuses the pid.
    discard: HashSet<i32>,
}

const MAX_EARLY_EXITS: usize = 4096;

impl ExitRouter {
    /// Returns a receiver for the exit of `pid`.
    pub fn watch(&self, pid: i32) -> oneshot::Receiver<Exit> {
        let (tx, rx) = oneshot::channel();
        let mut routes = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match routes.early.remove(&pid) {
            Some(exit) => {
                let _ = tx.send(exit);
            }
            None => {
                routes.waiting.insert(pid, tx);
            }
        }
        rx
    }

    /// Stops watching `pid`, which has exited or is about to (it was killed),
    /// after [`watch`](Self::watch): an exit not delivered yet is dropped when
    /// it arrives instead of being kept for the next process with that pid.
    pub fn forget(&self, pid: i32) {
        let mut routes = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        routes.early.remove(&pid);
        if routes.waiting.remove(&pid).is_some() {
            if routes.discard.len() >= MAX_EARLY_EXITS {
                routes.discard.clear();
            }
            routes.discard.insert(pid);
        }
    }

    /// Delivers the exit of `pid` (called for every child the shim reaps).
    pub fn deliver(&self, pid: i32, code: i32) {
        let exit = Exit::now(u32::try_from(code).unwrap_or(255));
        let mut routes = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if routes.discard.remove(&pid) {
            return;
        }
        match routes.waiting.remove(&pid) {
            Some(tx) => {
                let _ = tx.send(exit);
            }
            None => {
                if routes.early.len() >= MAX_EARLY_EXITS {
                    routes.early.clear();
                }
                routes.early.insert(pid, exit);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn exits_before_and_after_watch() {
        let r = ExitRouter::default();
        r.deliver(10, 3);
        assert_eq!(r.watch(10).await.unwrap().code, 3);
        let rx = r.watch(11);
        r.deliver(11, 137);
        assert_eq!(rx.await.unwrap().code, 137);
        r.deliver(12, 1);
        r.forget(12);
        let rx = r.watch(12);
        r.deliver(12, 2);
        assert_eq!(rx.await.unwrap().code, 2);
        // watched, then killed and forgotten before its exit arrives: that
        // exit is dropped, and the pid's next process gets its own
        drop(r.watch(13));
        r.forget(13);
        r.deliver(13, 137);
        let rx = r.watch(13);
        r.deliver(13, 0);
        assert_eq!(rx.await.unwrap().code, 0);
        // forgotten after its exit was delivered: nothing is dropped later
        let rx = r.watch(14);
        r.deliver(14, 1);
        assert_eq!(rx.await.unwrap().code, 1);
        r.forget(14);
        let rx = r.watch(14);
        r.deliver(14, 3);
        assert_eq!(rx.await.unwrap().code, 3);
    }
}
