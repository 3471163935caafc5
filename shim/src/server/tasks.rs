//! The task registry: the containers this server serves, by id, and the
//! requests that need more than one container's lock held at a time:
//! `Create` (an id is reserved while its container is being made), `Delete`
//! (which waits for an exit without holding the lock), and the exit
//! watchers that record each process's end.
//!
//! Each container sits in a slot, `None` once deleted (or when its creation
//! failed): a request that got hold of the slot before that finds it empty,
//! and says `NotFound`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use containerd_shim::api::{self, DeleteResponse};
use containerd_shim::asynchronous::ExitSignal;
use log::info;
use tokio::sync::{oneshot, Mutex, OwnedMutexGuard};

use crate::error::{Error, Result, StateError};
use crate::exit::{Exit, KILLED};
use crate::server::container::Container;
use crate::server::env::Env;
use crate::server::process;

/// How long `Delete` waits for a killed task to exit.
const DELETE_WAIT: Duration = Duration::from_secs(10);

type Slot = Arc<Mutex<Option<Container>>>;

/// A container, locked.
pub struct Held(OwnedMutexGuard<Option<Container>>);

impl std::ops::Deref for Held {
    type Target = Container;
    fn deref(&self) -> &Container {
        self.0
            .as_ref()
            .expect("a Held slot holds a container (checked by lock)")
    }
}

impl std::ops::DerefMut for Held {
    fn deref_mut(&mut self) -> &mut Container {
        self.0
            .as_mut()
            .expect("a Held slot holds a container (checked by lock)")
    }
}

/// The containers of this server.
pub struct Tasks {
    env: Env,
    containers: StdMutex<HashMap<String, Slot>>,
    shutdown: Arc<ExitSignal>,
}

impl Tasks {
    /// An empty registry; `shutdown` is signalled when containerd shuts the
    /// server down with no containers left.
    pub fn new(env: Env, shutdown: Arc<ExitSignal>) -> Arc<Tasks> {
        Arc::new(Tasks {
            env,
            containers: StdMutex::new(HashMap::new()),
            shutdown,
        })
    }

    /// The shared environment.
    pub fn env(&self) -> &Env {
        &self.env
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        self.containers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Locks container `id`.
    pub async fn lock(&self, id: &str) -> Result<Held> {
        let slot = self
            .map()
            .get(id)
            .cloned()
            .ok_or_else(|| Error::NotFound { id: id.to_owned() })?;
        let guard = slot.lock_owned().await;
        match *guard {
            Some(_) => Ok(Held(guard)),
            None => Err(Error::NotFound { id: id.to_owned() }),
        }
    }

    /// `Create`: the id is reserved (and its slot locked) while the
    /// container is made, so nothing sees half a container.
    pub async fn create(self: &Arc<Self>, req: api::CreateTaskRequest) -> Result<u32> {
        let slot: Slot = Arc::new(Mutex::new(None));
        let mut guard = slot
            .clone()
            .try_lock_owned()
            .expect("a new slot is not locked");
        {
            let mut map = self.map();
            if map.contains_key(&req.id) {
                return Err(Error::AlreadyExists { id: req.id });
            }
            map.insert(req.id.clone(), slot.clone());
        }
        match Container::create(&self.env, &req).await {
            Ok((container, exit)) => {
                let pid = container.pid();
                *guard = Some(container);
                drop(guard);
                self.watch_init(slot, exit);
                Ok(pid)
            }
            Err(e) => {
                self.map().remove(&req.id);
                Err(e)
            }
        }
    }

    /// Records the init process's exit when it comes.
    fn watch_init(self: &Arc<Self>, slot: Slot, exit: oneshot::Receiver<Exit>) {
        let tasks = self.clone();
        tokio::spawn(async move {
            if let Ok(exit) = exit.await {
                if let Some(c) = slot.lock().await.as_mut() {
                    c.on_exit(&tasks.env, exit).await;
                }
            }
        });
    }

    /// `Start` of the init process or of an exec'd one.
    pub async fn start(self: &Arc<Self>, req: &api::StartRequest) -> Result<u32> {
        let mut c = self.lock(&req.id).await?;
        if req.exec_id.is_empty() {
            return c.start(&self.env).await;
        }
        let (pid, exit) = c.start_exec(&self.env, &req.exec_id).await?;
        drop(c);
        let slot = self.map().get(&req.id).cloned();
        let (tasks, exec_id) = (self.clone(), req.exec_id.clone());
        tokio::spawn(async move {
            if let (Ok(exit), Some(slot)) = (exit.await, slot) {
                if let Some(c) = slot.lock().await.as_mut() {
                    c.on_exec_exit(&tasks.env, &exec_id, exit).await;
                }
            }
        });
        Ok(pid)
    }

    /// `Delete` of an exec'd process, or of the container once its init
    /// process has exited (one that never started is killed first).
    pub async fn delete(&self, req: &api::DeleteRequest) -> Result<DeleteResponse> {
        let mut c = self.lock(&req.id).await?;
        if !req.exec_id.is_empty() {
            return c.delete_exec(&self.env, &req.exec_id);
        }
        let rx = c.begin_delete(&self.env).await?;
        let exit = match c.init.exited() {
            Some(e) => e,
            None => {
                // The exit watcher needs the lock: release it while waiting.
                drop(c);
                let exited = tokio::time::timeout(DELETE_WAIT, process::wait(rx)).await;
                c = self.lock(&req.id).await?;
                match exited {
                    Ok(Some(_)) => c.init.exited().unwrap_or_else(|| Exit::now(KILLED)),
                    _ => return Err(Error::state(&req.id, StateError::StillRunning)),
                }
            }
        };
        let resp = c.finish_delete(&self.env, exit).await?;
        self.map().remove(&req.id);
        *c.0 = None;
        Ok(resp)
    }

    /// `Wait`: until the init process (or an exec'd one) has exited.
    pub async fn wait(&self, req: &api::WaitRequest) -> Result<Exit> {
        let rx = self.lock(&req.id).await?.subscribe(&req.exec_id)?;
        process::wait(rx)
            .await
            .ok_or_else(|| Error::NotFound { id: req.id.clone() })
    }

    /// `Stats`: the container's cgroup metrics.
    pub async fn stats(
        &self,
        id: &str,
    ) -> Result<containerd_shim::protos::protobuf::well_known_types::any::Any> {
        let cgroup = self.lock(id).await?.cgroup.clone();
        let cgroup = cgroup.ok_or_else(|| Error::state(id, StateError::NoCgroup))?;
        tokio::task::spawn_blocking(move || cgroup.stats())
            .await
            .map_err(|source| Error::Blocking {
                id: id.to_owned(),
                what: "stats task",
                source,
            })?
    }

    /// `Shutdown`: the server ends once it serves no container.
    pub fn shutdown(&self) {
        if self.map().is_empty() {
            info!("no containers left: shutting down");
            self.shutdown.signal();
        }
    }
}

#[cfg(test)]
mod tests;
