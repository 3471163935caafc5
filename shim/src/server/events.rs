//! Publishing task events to containerd, behind a small trait so that the
//! order of events, and the races between requests, are unit-tested in
//! process against a recording double.
//!
//! containerd (and CRI on top of it) expects, per container, TaskCreate →
//! TaskStart → TaskExit → TaskDelete (or TaskCreate → TaskDelete for a task
//! deleted before it started), with TaskOOM before the TaskExit of a process
//! the kernel's OOM killer ended. Each event is published while the
//! container's lock is held, so a fast exit cannot overtake its TaskStart.

use async_trait::async_trait;
use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::protos::ttrpc::context::Context;
use containerd_shim::publisher::RemotePublisher;

/// Where task events go.
#[async_trait]
pub trait Events: Send + Sync {
    /// Publishes `event` under `topic`; failures are logged, not returned
    /// (containerd re-reads state after it reconnects).
    async fn publish(&self, topic: &str, event: Box<dyn MessageDyn>);
}

/// containerd's event service, for one namespace.
pub struct Remote {
    publisher: RemotePublisher,
    namespace: String,
}

impl Remote {
    /// Events of `namespace` through `publisher`.
    pub fn new(publisher: RemotePublisher, namespace: &str) -> Remote {
        Remote {
            publisher,
            namespace: namespace.to_owned(),
        }
    }
}

#[async_trait]
impl Events for Remote {
    async fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        if let Err(e) = self
            .publisher
            .publish(Context::default(), topic, &self.namespace, event)
            .await
        {
            log::warn!("publish {topic}: {e}");
        }
    }
}

/// A recording double: every event, in order, as its topic and its text
/// form.
#[cfg(test)]
#[derive(Default)]
pub struct Recorded(pub std::sync::Mutex<Vec<(String, String)>>);

#[cfg(test)]
impl Recorded {
    /// The topics published so far, in order.
    pub fn topics(&self) -> Vec<String> {
        self.all().iter().map(|(t, _)| t.clone()).collect()
    }

    /// The events published so far: (topic, text).
    pub fn all(&self) -> Vec<(String, String)> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[cfg(test)]
#[async_trait]
impl Events for Recorded {
    async fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        let text = containerd_shim::protos::protobuf::text_format::print_to_string(&*event);
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((topic.to_owned(), text));
    }
}
