//! The container state machine against fake processes: event order and the
//! races between requests, in process and without root.

use std::sync::Arc;

use containerd_shim::api;
use containerd_shim::protos::topics;
use containerd_shim::protos::ttrpc::Code;
use nix::sys::signal::Signal;

use super::*;
use crate::server::backend::fake::World;
use crate::server::content::Containerd;
use crate::server::events::Recorded;

struct Fixture {
    tasks: Arc<Tasks>,
    events: Arc<Recorded>,
    world: Arc<World>,
    bundle: tempfile::TempDir,
}

/// Forwards to a shared recording, so the test keeps a handle on it.
struct Shared(Arc<Recorded>);

#[async_trait::async_trait]
impl crate::server::events::Events for Shared {
    async fn publish(
        &self,
        topic: &str,
        event: Box<dyn containerd_shim::protos::protobuf::MessageDyn>,
    ) {
        self.0.publish(topic, event).await
    }
}

fn fixture() -> Fixture {
    let bundle = tempfile::tempdir().unwrap();
    std::fs::write(
        bundle.path().join("config.json"),
        r#"{"ociVersion":"1.1.0","process":{"args":["/app.wasm"],"cwd":"/","user":{"uid":0,"gid":0}},"root":{"path":"rootfs"}}"#,
    )
    .unwrap();
    let events = Arc::new(Recorded::default());
    let world = Arc::new(World::default());
    let containerd = Containerd {
        address: "/nonexistent.sock".into(),
        namespace: "test".into(),
    };
    let mut env = Env::new(containerd, Box::new(Shared(events.clone())));
    env.fake = Some(world.clone());
    let tasks = Tasks::new(env, Arc::new(ExitSignal::default()));
    Fixture {
        tasks,
        events,
        world,
        bundle,
    }
}

impl Fixture {
    async fn create(&self, id: &str) -> Result<u32> {
        self.tasks
            .create(api::CreateTaskRequest {
                id: id.into(),
                bundle: self.bundle.path().to_string_lossy().into(),
                ..Default::default()
            })
            .await
    }

    async fn start(&self, id: &str, exec_id: &str) -> Result<u32> {
        self.tasks
            .start(&api::StartRequest {
                id: id.into(),
                exec_id: exec_id.into(),
                ..Default::default()
            })
            .await
    }

    async fn delete(&self, id: &str, exec_id: &str) -> Result<DeleteResponse> {
        self.tasks
            .delete(&api::DeleteRequest {
                id: id.into(),
                exec_id: exec_id.into(),
                ..Default::default()
            })
            .await
    }

    async fn wait(&self, id: &str, exec_id: &str) -> Result<Exit> {
        self.tasks
            .wait(&api::WaitRequest {
                id: id.into(),
                exec_id: exec_id.into(),
                ..Default::default()
            })
            .await
    }

    async fn kill(&self, id: &str, signal: Signal) -> Result<()> {
        let c = self.tasks.lock(id).await?;
        c.kill(self.tasks.env(), signal as u32, false).await
    }

    /// The process `pid` exits with `code`, as the reaper reports it.
    fn exit(&self, pid: u32, code: i32) {
        self.tasks
            .env()
            .exits
            .deliver(i32::try_from(pid).unwrap(), code);
    }

    fn topics(&self) -> Vec<String> {
        self.events.topics()
    }
}

fn code(e: &Error) -> Code {
    e.code()
}

#[tokio::test]
async fn a_task_that_runs_and_exits_publishes_create_start_exit_delete() {
    let f = fixture();
    let pid = f.create("c1").await.unwrap();
    assert_eq!(f.start("c1", "").await.unwrap(), pid);
    f.exit(pid, 3);
    let exit = f.wait("c1", "").await.unwrap();
    assert_eq!(exit.code, 3);
    let state = f.tasks.lock("c1").await.unwrap().state("").unwrap();
    assert_eq!(state.status, api::Status::STOPPED.into());
    assert_eq!(state.exit_status, 3);
    let resp = f.delete("c1", "").await.unwrap();
    assert_eq!((resp.pid, resp.exit_status), (pid, 3));
    assert_eq!(
        f.topics(),
        [
            topics::TASK_CREATE_EVENT_TOPIC,
            topics::TASK_START_EVENT_TOPIC,
            topics::TASK_EXIT_EVENT_TOPIC,
            topics::TASK_DELETE_EVENT_TOPIC,
        ]
    );
    let exit_event = &f.events.all()[2].1;
    assert!(exit_event.contains("exit_status: 3"), "{exit_event}");
    // gone: every request about it is NotFound, and the id is free again
    let err = f.delete("c1", "").await.unwrap_err();
    assert_eq!(code(&err), Code::NOT_FOUND);
    assert!(f.create("c1").await.is_ok());
}

#[tokio::test]
async fn a_task_deleted_before_it_started_is_killed_and_gets_no_start_or_exit() {
    let f = fixture();
    let pid = f.create("c1").await.unwrap();
    let resp = f.delete("c1", "").await.unwrap();
    assert_eq!((resp.pid, resp.exit_status), (pid, 137));
    assert_eq!(
        *f.world.signals.lock().unwrap(),
        [(i32::try_from(pid).unwrap(), Signal::SIGKILL)]
    );
    assert_eq!(
        f.topics(),
        [
            topics::TASK_CREATE_EVENT_TOPIC,
            topics::TASK_DELETE_EVENT_TOPIC
        ]
    );
}

#[tokio::test]
async fn a_process_that_dies_before_start_fails_start_and_reports_its_exit() {
    let f = fixture();
    let pid = f.create("c1").await.unwrap();
    f.exit(pid, 1);
    assert_eq!(f.wait("c1", "").await.unwrap().code, 1);
    let err = f.start("c1", "").await.unwrap_err();
    assert_eq!(code(&err), Code::FAILED_PRECONDITION, "{err}");
    assert_eq!(f.delete("c1", "").await.unwrap().exit_status, 1);
    assert_eq!(
        f.topics(),
        [
            topics::TASK_CREATE_EVENT_TOPIC,
            topics::TASK_DELETE_EVENT_TOPIC
        ]
    );
}

#[tokio::test]
async fn racing_requests_one_wins_the_others_are_refused() {
    let f = fixture();
    let pid = f.create("c1").await.unwrap();
    // two Starts at once
    let (a, b) = tokio::join!(f.start("c1", ""), f.start("c1", ""));
    assert!(a.is_ok() != b.is_ok(), "{a:?} {b:?}");
    let err = a.err().or(b.err()).unwrap();
    assert_eq!(code(&err), Code::FAILED_PRECONDITION, "{err}");
    // Delete of a running task is refused; Kill then two Deletes: one wins
    let err = f.delete("c1", "").await.unwrap_err();
    assert_eq!(code(&err), Code::FAILED_PRECONDITION, "{err}");
    f.kill("c1", Signal::SIGTERM).await.unwrap();
    f.wait("c1", "").await.unwrap();
    let (a, b) = tokio::join!(f.delete("c1", ""), f.delete("c1", ""));
    assert!(a.is_ok() != b.is_ok(), "{a:?} {b:?}");
    let err = a.as_ref().err().or(b.as_ref().err()).unwrap();
    assert_eq!(code(err), Code::NOT_FOUND, "{err}");
    let resp = a.or(b).unwrap();
    assert_eq!((resp.pid, resp.exit_status), (pid, 143));
    // a Kill after the exit: already finished (NOT_FOUND, which containerd
    // takes as done)
    f.create("c2").await.unwrap();
    f.start("c2", "").await.unwrap();
    f.kill("c2", Signal::SIGKILL).await.unwrap();
    f.wait("c2", "").await.unwrap();
    let err = f.kill("c2", Signal::SIGKILL).await.unwrap_err();
    assert!(matches!(err, Error::ProcessFinished { .. }), "{err}");
}

#[tokio::test]
async fn a_failed_create_frees_the_id_and_publishes_nothing() {
    let f = fixture();
    *f.world.fail_create.lock().unwrap() = Some("bad wasm".into());
    let err = f.create("c1").await.unwrap_err();
    assert_eq!(code(&err), Code::INVALID_ARGUMENT);
    assert!(err.to_string().contains("bad wasm"), "{err}");
    assert!(f.topics().is_empty());
    *f.world.fail_create.lock().unwrap() = None;
    f.create("c1").await.unwrap();
    let err = f.create("c1").await.unwrap_err();
    assert_eq!(code(&err), Code::ALREADY_EXISTS);
}

#[tokio::test]
async fn exec_processes_have_their_own_events_and_end_with_the_container() {
    let f = fixture();
    let init = f.create("c1").await.unwrap();
    let exec = |id: &str, spec: &str| api::ExecProcessRequest {
        id: "c1".into(),
        exec_id: id.into(),
        spec: containerd_shim::protos::protobuf::MessageField::some(
            containerd_shim::protos::protobuf::well_known_types::any::Any {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
                value: spec.as_bytes().to_vec(),
                ..Default::default()
            },
        ),
        ..Default::default()
    };
    let spec = r#"{"args":["/tool.wasm"],"cwd":"/","user":{"uid":0,"gid":0}}"#;
    // not running yet
    let mut c = f.tasks.lock("c1").await.unwrap();
    let err = c
        .add_exec(f.tasks.env(), &exec("e1", spec))
        .await
        .unwrap_err();
    assert_eq!(code(&err), Code::FAILED_PRECONDITION);
    drop(c);
    f.start("c1", "").await.unwrap();
    let mut c = f.tasks.lock("c1").await.unwrap();
    for (bad, want) in [
        (exec("../x", spec), Code::INVALID_ARGUMENT),
        (exec("e1", "not json"), Code::INVALID_ARGUMENT),
    ] {
        let err = c.add_exec(f.tasks.env(), &bad).await.unwrap_err();
        assert_eq!(code(&err), want, "{err}");
    }
    c.add_exec(f.tasks.env(), &exec("e1", spec)).await.unwrap();
    let err = c
        .add_exec(f.tasks.env(), &exec("e1", spec))
        .await
        .unwrap_err();
    assert_eq!(code(&err), Code::ALREADY_EXISTS);
    c.add_exec(f.tasks.env(), &exec("e2", spec)).await.unwrap();
    drop(c);
    let e1 = f.start("c1", "e1").await.unwrap();
    let e2 = f.start("c1", "e2").await.unwrap();
    let err = f.start("c1", "e1").await.unwrap_err();
    assert_eq!(code(&err), Code::FAILED_PRECONDITION);
    // a running exec cannot be deleted; once exited it can
    let err = f.delete("c1", "e1").await.unwrap_err();
    assert_eq!(code(&err), Code::FAILED_PRECONDITION);
    f.exit(e1, 7);
    assert_eq!(f.wait("c1", "e1").await.unwrap().code, 7);
    let resp = f.delete("c1", "e1").await.unwrap();
    assert_eq!((resp.pid, resp.exit_status), (e1, 7));
    // the init process exits: the exec still running is killed
    f.exit(init, 0);
    f.wait("c1", "").await.unwrap();
    assert_eq!(f.wait("c1", "e2").await.unwrap().code, 137);
    assert_eq!(
        *f.world.signals.lock().unwrap(),
        [(i32::try_from(e2).unwrap(), Signal::SIGKILL)]
    );
    let exec_exit = |topic: &str, text: &str| {
        topic == topics::TASK_EXIT_EVENT_TOPIC && text.contains("id: \"e1\"")
    };
    let all = f.events.all();
    assert!(all.iter().any(|(t, x)| exec_exit(t, x)), "{all:?}");
    let topics: Vec<_> = all.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        topics,
        [
            topics::TASK_CREATE_EVENT_TOPIC,
            topics::TASK_START_EVENT_TOPIC,
            topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            topics::TASK_EXEC_STARTED_EVENT_TOPIC,
            topics::TASK_EXEC_STARTED_EVENT_TOPIC,
            topics::TASK_EXIT_EVENT_TOPIC,
            topics::TASK_EXIT_EVENT_TOPIC,
            topics::TASK_EXIT_EVENT_TOPIC,
        ]
    );
    // e1's exit, then the container's, then e2's (killed with it)
    assert!(all[7].1.contains("id: \"c1\""), "{:?}", all[7]);
    assert!(all[8].1.contains("id: \"e2\""), "{:?}", all[8]);
    let pids = f.tasks.lock("c1").await.unwrap().pids();
    assert_eq!(
        pids,
        [init],
        "e2 ({e2}) stopped with the container: {pids:?}"
    );
}
