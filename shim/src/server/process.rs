//! A process of a container, the same type for its init process and for the
//! processes exec'd into it: pid, state, stdio, and its exit, which any
//! number of `Wait`s subscribe to.

use containerd_shim::api;
use containerd_shim::protos::protobuf::MessageField;
use tokio::sync::watch;

use crate::exit::Exit;
use crate::linux::console::Console;
use crate::server::stdio::{Keepalive, StdioPaths};

/// A process's life: `Created` until started, `Running`, `Stopped` once it
/// exited (or will never run).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Created,
    Running,
    Stopped,
}

impl From<Status> for api::Status {
    fn from(s: Status) -> Self {
        match s {
            Status::Created => api::Status::CREATED,
            Status::Running => api::Status::RUNNING,
            Status::Stopped => api::Status::STOPPED,
        }
    }
}

/// One process of a container.
#[derive(Debug)]
pub struct Process {
    /// Its pid in the shim's PID namespace (0 until it exists).
    pub pid: i32,
    pub status: Status,
    /// The stdio paths containerd gave for it.
    pub stdio: StdioPaths,
    /// The shim's ends of its FIFOs, held while it runs.
    pub keepalive: Keepalive,
    /// Its terminal, for a Linux process with `tty`.
    pub console: Option<Console>,
    exit: watch::Sender<Option<Exit>>,
}

impl Process {
    /// A process that does not exist yet.
    pub fn new(stdio: StdioPaths) -> Process {
        Process {
            pid: 0,
            status: Status::Created,
            stdio,
            keepalive: Keepalive::default(),
            console: None,
            exit: watch::channel(None).0,
        }
    }

    /// Its exit, once it has exited.
    pub fn exited(&self) -> Option<Exit> {
        *self.exit.borrow()
    }

    /// A receiver that sees its exit.
    pub fn subscribe(&self) -> watch::Receiver<Option<Exit>> {
        self.exit.subscribe()
    }

    /// Records its exit: it is stopped, readers of its output see
    /// end-of-file, and every waiter wakes.
    pub fn exit(&mut self, exit: Exit) {
        self.status = Status::Stopped;
        self.keepalive = Keepalive::default();
        self.exit.send_replace(Some(exit));
    }

    /// `CloseIO` with stdin: the process sees end-of-file on it.
    pub fn close_stdin(&mut self) {
        self.keepalive.close_stdin();
        if let Some(console) = &mut self.console {
            console.close_stdin();
        }
    }

    /// The fields of a `State` reply this process knows.
    pub fn state(&self) -> api::StateResponse {
        let exit = self.exited();
        api::StateResponse {
            pid: u32::try_from(self.pid).unwrap_or(0),
            status: api::Status::from(self.status).into(),
            stdin: self.stdio.stdin.clone(),
            stdout: self.stdio.stdout.clone(),
            stderr: self.stdio.stderr.clone(),
            terminal: self.stdio.terminal,
            exit_status: exit.map_or(0, |x| x.code),
            exited_at: MessageField::from_option(exit.map(|x| x.timestamp())),
            ..Default::default()
        }
    }
}

/// Waits until the process behind `rx` has exited; `None` when it never
/// will (the container was removed).
pub async fn wait(mut rx: watch::Receiver<Option<Exit>>) -> Option<Exit> {
    rx.wait_for(|e| e.is_some()).await.ok().and_then(|e| *e)
}
