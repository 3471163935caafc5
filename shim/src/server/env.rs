//! What every container of a shim server shares: containerd (for events and
//! artifact layers), the node's runc, the module cache settings, and the
//! routing of process exits.

use crate::linux::runc::Runc;
use crate::runner::cache::CacheConfig;
use crate::server::content::Containerd;
use crate::server::events::Events;
use crate::server::exits::ExitRouter;

/// The shared environment of a server's containers.
pub struct Env {
    /// containerd's address and this shim's namespace.
    pub containerd: Containerd,
    /// runc, with its state under containerd's usual root for the namespace.
    pub runc: Runc,
    /// The node's precompiled-module cache, if enabled.
    pub cache: Option<CacheConfig>,
    /// Where the reaper delivers process exits.
    pub exits: ExitRouter,
    /// Seccomp programs compiled so far.
    pub seccomp: crate::server::seccomp::Programs,
    /// Where task events go.
    pub events: Box<dyn Events>,
    /// The OS (a recording double in tests).
    pub sys: Box<dyn crate::sys::Sys>,
    /// A test's fake processes: when set, every container is fake.
    #[cfg(test)]
    pub fake: Option<std::sync::Arc<crate::server::backend::fake::World>>,
}

impl Env {
    /// The environment of a server for `containerd`'s namespace.
    pub fn new(containerd: Containerd, events: Box<dyn Events>) -> Env {
        let cache = CacheConfig::from_env();
        Env {
            runc: Runc::new(&containerd.namespace),
            containerd,
            seccomp: crate::server::seccomp::Programs::new(cache.as_ref().map(|c| c.dir.as_path())),
            cache,
            exits: ExitRouter::default(),
            events,
            sys: Box::new(crate::sys::Linux),
            #[cfg(test)]
            fake: None,
        }
    }
}
