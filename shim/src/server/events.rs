//! Publishing task events to containerd, behind a small trait so that the
//! order of events, and the races between requests, are unit-tested in
//! process against a recording double.
//!
//! containerd (and CRI on top of it) expects, per container, TaskCreate →
//! TaskStart → TaskExit → TaskDelete (or TaskCreate → TaskDelete for a task
//! deleted before it started), with TaskOOM before the TaskExit of a process
//! the kernel's OOM killer ended. Each event is published while the
//! container's lock is held, so a fast exit cannot overtake its TaskStart.

//!
//! Events are forwarded to containerd's event service by a publisher of
//! the shim's own rather than the `containerd-shim` crate's: that one names
//! each event's type by protobuf reflection, which builds the descriptor
//! tables of every `.proto` file the event imports (about 300 KiB of heap,
//! kept for the shim's whole life: a node with a thousand pods runs a
//! thousand shims). Here the type names are written out, and a unit test
//! holds them to what reflection says.

use std::time::Duration;

use async_trait::async_trait;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::{
    self as protobuf, CodedOutputStream, MessageDyn, MessageField,
};
use containerd_shim::protos::shim::event::Envelope;
use containerd_shim::protos::shim::events::ForwardRequest;
use containerd_shim::protos::shim_async::{Client, EventsClient};
use containerd_shim::protos::topics;
use containerd_shim::protos::ttrpc;
use tokio::sync::mpsc;

/// Where task events go.
#[async_trait]
pub trait Events: Send + Sync {
    /// Publishes `event` under `topic`; failures are logged, not returned
    /// (containerd re-reads state after it reconnects).
    async fn publish(&self, topic: &str, event: Box<dyn MessageDyn>);
}

/// The protobuf type of each task topic's event, as `Any.type_url` names
/// it for containerd's event service.
pub fn type_url(topic: &str) -> Option<&'static str> {
    Some(match topic {
        topics::TASK_CREATE_EVENT_TOPIC => "containerd.events.TaskCreate",
        topics::TASK_START_EVENT_TOPIC => "containerd.events.TaskStart",
        topics::TASK_OOM_EVENT_TOPIC => "containerd.events.TaskOOM",
        topics::TASK_EXIT_EVENT_TOPIC => "containerd.events.TaskExit",
        topics::TASK_DELETE_EVENT_TOPIC => "containerd.events.TaskDelete",
        topics::TASK_EXEC_ADDED_EVENT_TOPIC => "containerd.events.TaskExecAdded",
        topics::TASK_EXEC_STARTED_EVENT_TOPIC => "containerd.events.TaskExecStarted",
        topics::TASK_PAUSED_EVENT_TOPIC => "containerd.events.TaskPaused",
        topics::TASK_RESUMED_EVENT_TOPIC => "containerd.events.TaskResumed",
        topics::TASK_CHECKPOINTED_EVENT_TOPIC => "containerd.events.TaskCheckpointed",
        _ => return None,
    })
}

/// Events waiting to be forwarded (containerd's own shims queue as many).
const QUEUE: usize = 1024;
/// Tries of one event before it is dropped (and logged).
const TRIES: u32 = 5;
/// Bound on one `Forward` call.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);

/// containerd's event service, for one namespace: events are queued and
/// forwarded in order by one task, each retried (reconnecting when the
/// connection closed) before the next goes.
pub struct Remote {
    queue: mpsc::Sender<Envelope>,
    namespace: String,
}

impl Remote {
    /// Connects to containerd's ttrpc socket `address` (a path, or
    /// `unix://` and a path) for events of `namespace`.
    pub async fn connect(address: &str, namespace: &str) -> ttrpc::Result<Remote> {
        let address = format!("unix://{}", address.trim_start_matches("unix://"));
        let client = Client::connect(&address).await?;
        let (queue, pending) = mpsc::channel(QUEUE);
        tokio::spawn(forward(address, EventsClient::new(client), pending));
        Ok(Remote {
            queue,
            namespace: namespace.to_owned(),
        })
    }
}

/// Forwards queued envelopes until the queue closes.
async fn forward(address: String, mut client: EventsClient, mut pending: mpsc::Receiver<Envelope>) {
    while let Some(envelope) = pending.recv().await {
        let req = ForwardRequest {
            envelope: MessageField::some(envelope),
            ..Default::default()
        };
        for attempt in 1..=TRIES {
            let ctx = ttrpc::context::with_timeout(FORWARD_TIMEOUT.as_nanos() as i64);
            let Err(e) = client.forward(ctx, &req).await else {
                break;
            };
            let topic = &req.envelope.topic;
            if attempt == TRIES {
                log::error!("publish {topic}: dropped after {TRIES} tries: {e}");
                break;
            }
            log::warn!("publish {topic}: {e} (try {attempt} of {TRIES})");
            if matches!(e, ttrpc::Error::RemoteClosed | ttrpc::Error::LocalClosed) {
                match Client::connect(&address).await {
                    Ok(c) => client = EventsClient::new(c),
                    Err(e) => log::warn!("reconnect to {address}: {e}"),
                }
            }
            tokio::time::sleep(Duration::from_secs(u64::from(attempt))).await;
        }
    }
}

/// The wire form of `event`, without the reflection `write_to_bytes_dyn`
/// uses (it names the message in its size check).
fn encode(event: &dyn MessageDyn) -> protobuf::Result<Vec<u8>> {
    // computing the size caches the nested messages' sizes the writer uses
    let size = event.compute_size_dyn();
    let mut value = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    let mut os = CodedOutputStream::vec(&mut value);
    event.write_to_with_cached_sizes_dyn(&mut os)?;
    os.flush()?;
    drop(os);
    Ok(value)
}

#[async_trait]
impl Events for Remote {
    async fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        let Some(type_url) = type_url(topic) else {
            log::error!("publish {topic}: not a task event topic");
            return;
        };
        let value = match encode(&*event) {
            Ok(v) => v,
            Err(e) => return log::error!("publish {topic}: {e}"),
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let envelope = Envelope {
            timestamp: MessageField::some(Timestamp {
                seconds: now.as_secs() as i64,
                nanos: now.subsec_nanos() as i32,
                ..Default::default()
            }),
            namespace: self.namespace.clone(),
            topic: topic.to_owned(),
            event: MessageField::some(Any {
                type_url: type_url.to_owned(),
                value,
                ..Default::default()
            }),
            ..Default::default()
        };
        if let Err(e) = self.queue.try_send(envelope) {
            log::error!("publish {topic}: {e}");
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

#[cfg(test)]
mod type_urls {
    use super::*;
    use containerd_shim::protos::events::task::{
        TaskCheckpointed, TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit,
        TaskOOM, TaskPaused, TaskResumed, TaskStart,
    };
    use containerd_shim::protos::protobuf::MessageFull;

    #[test]
    fn every_topic_names_the_type_reflection_gives() {
        let pairs = [
            (topics::TASK_CREATE_EVENT_TOPIC, TaskCreate::descriptor()),
            (topics::TASK_START_EVENT_TOPIC, TaskStart::descriptor()),
            (topics::TASK_OOM_EVENT_TOPIC, TaskOOM::descriptor()),
            (topics::TASK_EXIT_EVENT_TOPIC, TaskExit::descriptor()),
            (topics::TASK_DELETE_EVENT_TOPIC, TaskDelete::descriptor()),
            (
                topics::TASK_EXEC_ADDED_EVENT_TOPIC,
                TaskExecAdded::descriptor(),
            ),
            (
                topics::TASK_EXEC_STARTED_EVENT_TOPIC,
                TaskExecStarted::descriptor(),
            ),
            (topics::TASK_PAUSED_EVENT_TOPIC, TaskPaused::descriptor()),
            (topics::TASK_RESUMED_EVENT_TOPIC, TaskResumed::descriptor()),
            (
                topics::TASK_CHECKPOINTED_EVENT_TOPIC,
                TaskCheckpointed::descriptor(),
            ),
        ];
        for (topic, d) in pairs {
            assert_eq!(type_url(topic), Some(d.full_name()), "{topic}");
        }
        assert_eq!(type_url(topics::TASK_UNKNOWN_TOPIC), None);
    }

    #[test]
    fn encoded_as_protobuf_itself_encodes() {
        use containerd_shim::protos::protobuf::Message;
        let ev = TaskExit {
            container_id: "c1".into(),
            id: "c1".into(),
            pid: 4242,
            exit_status: 137,
            exited_at: MessageField::some(Timestamp {
                seconds: 1,
                nanos: 2,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(encode(&ev).unwrap(), ev.write_to_bytes().unwrap());
    }
}
