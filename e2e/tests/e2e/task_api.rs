//! The shim's task API where `ctr` alone cannot reach it: the order of the
//! events the shim publishes (watched through `ctr events`), and the shim's
//! answers to task requests sent straight to its ttrpc socket.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use containerd_shim_protos::api;
use containerd_shim_protos::shim_sync::TaskClient;
use containerd_shim_protos::ttrpc::{self, context, Code};
use serde_json::{json, Value};
use wasmpod_e2e::guests::guest;
use wasmpod_e2e::{Containerd, ContainerdOptions};

use crate::common::{blocked_in_pipe_write, probe_image, running_pid, P1, RUNTIME};

/// Topics of the task events, in the order the shim publishes them.
const CREATE: &str = "/tasks/create";
const START: &str = "/tasks/start";
const EXIT: &str = "/tasks/exit";
const DELETE: &str = "/tasks/delete";

/// How long one request to the shim may take.
const RPC_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an awaited event may take to show up.
const EVENT_TIMEOUT: Duration = Duration::from_secs(20);
/// Namespace label whose updates mark a point in the event stream.
const SYNC_LABEL: &str = "wasmpod-e2e-sync";

/// One line of `ctr events`.
#[derive(Debug, Clone)]
struct Event {
    topic: String,
    /// The event as JSON (`null` when there was none or it did not parse).
    body: Value,
    line: String,
}

impl Event {
    fn container_id(&self) -> Option<&str> {
        self.body.get("container_id").and_then(Value::as_str)
    }

    /// An integer field; containerd's JSON leaves out zero values.
    fn number(&self, field: &str) -> u64 {
        self.body.get(field).and_then(Value::as_u64).unwrap_or(0)
    }

    fn is_task_event_of(&self, id: &str) -> bool {
        self.topic.starts_with("/tasks/") && self.container_id() == Some(id)
    }
}

/// Parses a line of containerd 1.6's `ctr events`:
/// `TIMESTAMP NAMESPACE TOPIC JSON`, where the timestamp holds spaces
/// (`2024-01-02 03:04:05.6 +0000 UTC`).
fn parse_event(line: &str, namespace: &str) -> Option<Event> {
    let marker = format!(" {namespace} /");
    let at = line.find(&marker)?;
    let rest = &line[at + marker.len() - 1..];
    let (topic, json) = rest.split_once(' ').unwrap_or((rest, ""));
    Some(Event {
        topic: topic.to_owned(),
        body: serde_json::from_str(json.trim()).unwrap_or(Value::Null),
        line: line.to_owned(),
    })
}

/// A background `ctr events` and what it printed so far.
struct EventStream {
    child: Child,
    lines: Receiver<String>,
    stderr: Arc<Mutex<String>>,
    namespace: String,
    seen: Vec<Event>,
    syncs: u32,
}

impl EventStream {
    /// Starts `ctr events` and waits until it is subscribed.
    fn start(cd: &Containerd) -> Result<Self> {
        let mut child = cd.ctr_spawn(&["events"])?;
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let (tx, lines) = mpsc::channel();
        let mut stream = EventStream {
            child,
            lines,
            stderr: Arc::new(Mutex::new(String::new())),
            namespace: cd.namespace().to_owned(),
            seen: Vec::new(),
            syncs: 0,
        };
        let stdout = stdout.context("ctr events: no stdout pipe")?;
        let stderr = stderr.context("ctr events: no stderr pipe")?;
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let sink = stream.stderr.clone();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Ok(mut s) = sink.lock() {
                    s.push_str(&line);
                    s.push('\n');
                }
            }
        });
        stream
            .sync(cd)
            .context("ctr events never showed a marker event")?;
        Ok(stream)
    }

    /// Publishes a marker event (a label update of the namespace) and reads
    /// events until it arrives: then every event broadcast before it has been
    /// read. Before `ctr events` has subscribed, markers are lost, so they are
    /// repeated (at most 10 times).
    fn sync(&mut self, cd: &Containerd) -> Result<()> {
        for _ in 0..10 {
            self.syncs += 1;
            let value = self.syncs.to_string();
            let label = format!("{SYNC_LABEL}={value}");
            cd.ctr(&["namespaces", "label", &self.namespace, &label])?;
            let marker = self.read_until(Duration::from_secs(2), |e| {
                e.topic == "/namespaces/update"
                    && e.body["labels"][SYNC_LABEL].as_str() == Some(value.as_str())
            })?;
            if marker.is_some() {
                return Ok(());
            }
        }
        bail!("no marker event came through:\n{}", self.diagnostics())
    }

    /// Reads events for up to `timeout` until one satisfies `pred`.
    fn read_until(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&Event) -> bool,
    ) -> Result<Option<Event>> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(event) = parse_event(&line, &self.namespace) {
                        let hit = pred(&event);
                        self.seen.push(event.clone());
                        if hit {
                            return Ok(Some(event));
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => return Ok(None),
                Err(RecvTimeoutError::Disconnected) => {
                    bail!("ctr events ended:\n{}", self.diagnostics())
                }
            }
        }
    }

    /// Waits until the event `topic` of container `id` has been read.
    fn wait_for(&mut self, id: &str, topic: &str) -> Result<Event> {
        let hit = |e: &Event| e.topic == topic && e.is_task_event_of(id);
        if let Some(e) = self.seen.iter().find(|e| hit(e)) {
            return Ok(e.clone());
        }
        match self.read_until(EVENT_TIMEOUT, hit)? {
            Some(e) => Ok(e),
            None => bail!(
                "no {topic} event for {id} within {EVENT_TIMEOUT:?}:\n{}",
                self.diagnostics()
            ),
        }
    }

    /// The task events of container `id` read so far, in order.
    fn task_events(&self, id: &str) -> Vec<Event> {
        self.seen
            .iter()
            .filter(|e| e.is_task_event_of(id))
            .cloned()
            .collect()
    }

    /// Everything read so far, and ctr's standard error.
    fn diagnostics(&self) -> String {
        let lines: Vec<&str> = self.seen.iter().map(|e| e.line.as_str()).collect();
        let stderr = self.stderr.lock().map(|s| s.clone()).unwrap_or_default();
        format!(
            "events read:\n{}\nctr events stderr:\n{stderr}",
            lines.join("\n")
        )
    }

    /// Kills the `ctr events` child (by its pid) and reaps it.
    fn stop(mut self) -> Result<()> {
        self.kill()
    }

    fn kill(&mut self) -> Result<()> {
        if self.child.try_wait()?.is_none() {
            self.child.kill().context("kill ctr events")?;
        }
        self.child.wait().context("reap ctr events")?;
        Ok(())
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// The topics of `events`.
fn topics(events: &[Event]) -> Vec<&str> {
    events.iter().map(|e| e.topic.as_str()).collect()
}

/// The bundle containerd made for container `id`.
fn bundle_dir(cd: &Containerd, id: &str) -> PathBuf {
    cd.state()
        .join("io.containerd.runtime.v2.task")
        .join(cd.namespace())
        .join(id)
}

/// A task client connected straight to a shim's socket.
struct Shim {
    client: TaskClient,
    address: String,
}

impl Shim {
    /// Connects to the shim serving container `id`, at the address recorded
    /// in its bundle.
    fn connect(cd: &Containerd, id: &str) -> Result<Self> {
        let file = bundle_dir(cd, id).join("address");
        let address = fs::read_to_string(&file)
            .with_context(|| format!("read {}", file.display()))?
            .trim()
            .to_owned();
        ensure!(
            address.starts_with("unix://"),
            "unexpected shim address {address:?} in {}",
            file.display()
        );
        let client = ttrpc::Client::connect(&address)
            .with_context(|| format!("connect to the shim at {address}"))?;
        Ok(Shim {
            client: TaskClient::new(client),
            address,
        })
    }

    fn state(&self, id: &str) -> ttrpc::Result<api::StateResponse> {
        let req = api::StateRequest {
            id: id.to_owned(),
            ..Default::default()
        };
        self.client.state(ctx(), &req)
    }

    fn start(&self, id: &str) -> ttrpc::Result<api::StartResponse> {
        let req = api::StartRequest {
            id: id.to_owned(),
            ..Default::default()
        };
        self.client.start(ctx(), &req)
    }

    fn kill(&self, id: &str, signal: u32) -> ttrpc::Result<()> {
        let req = api::KillRequest {
            id: id.to_owned(),
            signal,
            ..Default::default()
        };
        self.client.kill(ctx(), &req).map(drop)
    }

    fn wait(&self, id: &str) -> ttrpc::Result<api::WaitResponse> {
        let req = api::WaitRequest {
            id: id.to_owned(),
            ..Default::default()
        };
        self.client.wait(ctx(), &req)
    }

    fn delete(&self, id: &str) -> ttrpc::Result<api::DeleteResponse> {
        let req = api::DeleteRequest {
            id: id.to_owned(),
            ..Default::default()
        };
        self.client.delete(ctx(), &req)
    }

    fn pids(&self, id: &str) -> ttrpc::Result<api::PidsResponse> {
        let req = api::PidsRequest {
            id: id.to_owned(),
            ..Default::default()
        };
        self.client.pids(ctx(), &req)
    }

    fn connect_task(&self, id: &str) -> ttrpc::Result<api::ConnectResponse> {
        let req = api::ConnectRequest {
            id: id.to_owned(),
            ..Default::default()
        };
        self.client.connect(ctx(), &req)
    }
}

/// A request context with the client-side timeout.
fn ctx() -> context::Context {
    context::with_duration(RPC_TIMEOUT)
}

/// Checks that `result` failed with `code`, from the shim's task service
/// (its message names `id`; an unregistered method would say "not
/// supported" instead).
fn expect_code<T: std::fmt::Debug>(
    what: &str,
    result: ttrpc::Result<T>,
    code: Code,
    id: &str,
) -> Result<()> {
    match result {
        Ok(v) => bail!("{what}: succeeded with {v:?}, want {code:?}"),
        Err(ttrpc::Error::RpcStatus(s)) => {
            ensure!(
                s.code() == code,
                "{what}: got {:?} ({:?}), want {code:?}",
                s.code(),
                s.message()
            );
            ensure!(
                s.message().contains(id),
                "{what}: message {:?} does not name {id}",
                s.message()
            );
            Ok(())
        }
        Err(e) => bail!("{what}: {e}, want status {code:?}"),
    }
}

/// Starts a detached spinning container `id` and returns its task's pid.
fn run_spinner(cd: &Containerd, image: &str, id: &str) -> Result<u32> {
    cd.ctr(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        image,
        id,
        "/probe.wasm",
        "spin",
    ])?;
    running_pid(cd, id)
}

/// SIGKILLs a detached container's task through ctr (unless it is stopped
/// already), then removes task and container.
fn remove_container(cd: &Containerd, id: &str) -> Result<()> {
    let out = cd.ctr_output(&["tasks", "kill", "--signal", "SIGKILL", id])?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let rm = cd.ctr_output(&["tasks", "rm", id])?;
        if rm.success() {
            break;
        }
        if Instant::now() > deadline {
            bail!("ctr tasks rm {id} kept failing: {rm:?} (kill: {out:?})");
        }
        thread::sleep(Duration::from_millis(100));
    }
    cd.ctr(&["containers", "rm", id])?;
    Ok(())
}

/// Whether a process `pid` exists (zombies count).
fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// A bundle for a container containerd knows nothing about: the spec of
/// container `like` (running `/probe.wasm spin`) over a plain rootfs
/// directory holding the probe.
fn foreign_bundle(cd: &Containerd, like: &str, id: &str) -> Result<PathBuf> {
    foreign_bundle_with(cd, like, id, |_| Ok(()))
}

/// [`foreign_bundle`] with `edit` applied to its spec.
fn foreign_bundle_with(
    cd: &Containerd,
    like: &str,
    id: &str,
    edit: impl FnOnce(&mut Value) -> Result<()>,
) -> Result<PathBuf> {
    let spec_path = bundle_dir(cd, like).join("config.json");
    let text =
        fs::read_to_string(&spec_path).with_context(|| format!("read {}", spec_path.display()))?;
    let mut spec: Value =
        serde_json::from_str(&text).with_context(|| format!("parse {}", spec_path.display()))?;
    *spec
        .pointer_mut("/process/args")
        .context("spec has no process.args")? = json!(["/probe.wasm", "spin"]);
    *spec.pointer_mut("/root").context("spec has no root")? =
        json!({"path": "rootfs", "readonly": false});
    // A cgroup of its own, as containerd would give it.
    if let Some(path) = spec.pointer_mut("/linux/cgroupsPath") {
        *path = json!(format!("/{}/{id}", cd.namespace()));
    }
    edit(&mut spec)?;
    let bundle = cd.tempdir().join("bundles").join(id);
    let rootfs = bundle.join("rootfs");
    fs::create_dir_all(&rootfs).with_context(|| format!("create {}", rootfs.display()))?;
    fs::copy(guest(P1, "probe")?, rootfs.join("probe.wasm")).context("copy the probe")?;
    fs::write(
        bundle.join("config.json"),
        serde_json::to_vec_pretty(&spec)?,
    )
    .context("write config.json")?;
    Ok(bundle)
}

#[test]
fn task_api_events_in_order() -> Result<()> {
    let cd = Containerd::start(ContainerdOptions::default())?;
    let image = probe_image(&cd, P1)?;
    let mut events = EventStream::start(&cd)?;

    // A task that runs and exits: create, start, exit, delete.
    let id = cd.unique_id("ev-exit");
    let out = cd.ctr_output(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        &image,
        &id,
        "/probe.wasm",
        "exit",
        "3",
    ])?;
    ensure!(out.status == Some(3), "ctr run: {out:?}");
    events.wait_for(&id, DELETE)?;
    // Anything published after the delete (a duplicate, say) shows up too.
    events.sync(&cd)?;
    let seen = events.task_events(&id);
    ensure!(
        topics(&seen) == [CREATE, START, EXIT, DELETE],
        "task events of {id}: {:?}\n{}",
        topics(&seen),
        events.diagnostics()
    );
    let pid = seen[0].number("pid");
    ensure!(pid != 0, "create event without a pid: {}", seen[0].line);
    for e in &seen {
        ensure!(e.number("pid") == pid, "pid differs from {pid}: {}", e.line);
    }
    ensure!(
        seen[2].number("exit_status") == 3,
        "exit event: {}",
        seen[2].line
    );
    ensure!(
        seen[3].number("exit_status") == 3,
        "delete event: {}",
        seen[3].line
    );

    // A task created and deleted without ever starting: create, delete. ctr
    // always starts what it creates, so the task is created in the shim of a
    // running container, straight through the task API.
    let host = cd.unique_id("ev-host");
    run_spinner(&cd, &image, &host)?;
    let shim = Shim::connect(&cd, &host)?;
    let unstarted = cd.unique_id("ev-unstarted");
    let bundle = foreign_bundle(&cd, &host, &unstarted)?;
    let req = api::CreateTaskRequest {
        id: unstarted.clone(),
        bundle: bundle.to_string_lossy().into_owned(),
        ..Default::default()
    };
    let created = shim
        .client
        .create(ctx(), &req)
        .with_context(|| format!("Create {unstarted} at {}", shim.address))?;
    ensure!(created.pid != 0, "Create: no pid");
    let state = shim
        .state(&unstarted)
        .context("State of the created task")?;
    ensure!(
        state.status.enum_value() == Ok(api::Status::CREATED) && state.pid == created.pid,
        "State after Create: {state:?}"
    );
    let deleted = shim
        .delete(&unstarted)
        .context("Delete of the created task")?;
    ensure!(deleted.pid == created.pid, "Delete: {deleted:?}");
    expect_code(
        "State after Delete",
        shim.state(&unstarted),
        Code::NOT_FOUND,
        &unstarted,
    )?;
    ensure!(
        !process_exists(created.pid),
        "the never-started runner {} is still there",
        created.pid
    );
    events.wait_for(&unstarted, DELETE)?;
    events.sync(&cd)?;
    let seen = events.task_events(&unstarted);
    ensure!(
        topics(&seen) == [CREATE, DELETE],
        "task events of {unstarted}: {:?}\n{}",
        topics(&seen),
        events.diagnostics()
    );
    ensure!(
        seen.iter()
            .all(|e| e.number("pid") == u64::from(created.pid)),
        "pids of {unstarted}'s events differ from {}:\n{}",
        created.pid,
        events.diagnostics()
    );
    ensure!(
        seen[1].number("exit_status") == u64::from(deleted.exit_status),
        "delete event {} vs DeleteResponse {deleted:?}",
        seen[1].line
    );
    ensure!(
        !bundle.join("init.pid").exists(),
        "Delete left init.pid in {}",
        bundle.display()
    );

    drop(shim);
    remove_container(&cd, &host)?;
    events.stop()?;
    cd.assert_no_leftovers()
}

#[test]
fn task_api_direct_requests() -> Result<()> {
    let cd = Containerd::start(ContainerdOptions::default())?;
    let image = probe_image(&cd, P1)?;
    let id = cd.unique_id("api");
    let pid = run_spinner(&cd, &image, &id)?;
    let shim = Shim::connect(&cd, &id)?;
    let unknown = format!("{id}-unknown");

    expect_code(
        "Start of a running task",
        shim.start(&id),
        Code::FAILED_PRECONDITION,
        &id,
    )?;

    let state = shim.state(&id).context("State")?;
    ensure!(
        state.status.enum_value() == Ok(api::Status::RUNNING),
        "State: {state:?}"
    );
    ensure!(
        state.id == id && state.pid == pid,
        "State: {state:?}, want pid {pid}"
    );
    ensure!(
        Path::new(&state.bundle) == bundle_dir(&cd, &id),
        "State: bundle {:?}",
        state.bundle
    );

    let pids = shim.pids(&id).context("Pids")?;
    let listed: Vec<u32> = pids.processes.iter().map(|p| p.pid).collect();
    ensure!(listed == [pid], "Pids: {listed:?}, want [{pid}]");

    let connected = shim.connect_task(&id).context("Connect")?;
    ensure!(
        connected.task_pid == pid,
        "Connect: {connected:?}, want task pid {pid}"
    );
    let cmdline = fs::read(format!("/proc/{}/cmdline", connected.shim_pid))
        .with_context(|| format!("Connect: shim pid {} is not alive", connected.shim_pid))?;
    ensure!(
        String::from_utf8_lossy(&cmdline).contains(wasmpod_e2e::SHIM_BINARY),
        "Connect: shim pid {} runs {:?}",
        connected.shim_pid,
        String::from_utf8_lossy(&cmdline)
    );

    expect_code(
        "Kill of an unknown task",
        shim.kill(&unknown, 9),
        Code::NOT_FOUND,
        &unknown,
    )?;
    expect_code(
        "State of an unknown task",
        shim.state(&unknown),
        Code::NOT_FOUND,
        &unknown,
    )?;
    expect_code(
        "Wait of an unknown task",
        shim.wait(&unknown),
        Code::NOT_FOUND,
        &unknown,
    )?;

    expect_code(
        "Delete of a running task",
        shim.delete(&id),
        Code::FAILED_PRECONDITION,
        &id,
    )?;
    let state = shim.state(&id).context("State after the refused Delete")?;
    ensure!(
        state.status.enum_value() == Ok(api::Status::RUNNING) && process_exists(pid),
        "the refused Delete stopped the task: {state:?}"
    );

    shim.kill(&id, 9).context("Kill with SIGKILL")?;
    let waited = shim.wait(&id).context("Wait after SIGKILL")?;
    ensure!(waited.exit_status == 137, "Wait: {waited:?}, want exit 137");
    ensure!(waited.exited_at.is_some(), "Wait: no exited_at: {waited:?}");

    expect_code(
        "Kill of an exited task",
        shim.kill(&id, 9),
        Code::NOT_FOUND,
        &id,
    )?;
    expect_code(
        "Start of an exited task",
        shim.start(&id),
        Code::FAILED_PRECONDITION,
        &id,
    )?;
    let state = shim.state(&id).context("State after the exit")?;
    ensure!(
        state.status.enum_value() == Ok(api::Status::STOPPED) && state.exit_status == 137,
        "State after the exit: {state:?}"
    );
    // Until Delete, the exited task's pid stays listed (as State shows it).
    let pids = shim.pids(&id).context("Pids after the exit")?;
    ensure!(
        pids.processes.len() == 1 && pids.processes[0].pid == pid,
        "Pids after the exit: {:?}",
        pids.processes
    );
    ensure!(
        !process_exists(pid),
        "runner {pid} is still there after Wait"
    );

    // Let containerd end the shim: it deletes the task and shuts the shim down.
    drop(shim);
    cd.ctr(&["tasks", "rm", &id])?;
    cd.ctr(&["containers", "rm", &id])?;
    cd.assert_no_leftovers()
}

/// Sends the same request pair from two threads at once; returns both results.
fn race<A, B>(
    a: impl FnOnce() -> ttrpc::Result<A> + Send,
    b: impl FnOnce() -> ttrpc::Result<B> + Send,
) -> (ttrpc::Result<A>, ttrpc::Result<B>)
where
    A: Send,
    B: Send,
{
    let go = std::sync::Barrier::new(2);
    thread::scope(|s| {
        let ta = s.spawn(|| {
            go.wait();
            a()
        });
        let tb = s.spawn(|| {
            go.wait();
            b()
        });
        (
            ta.join().expect("racing thread panicked"),
            tb.join().expect("racing thread panicked"),
        )
    })
}

/// The gRPC code of a failed request (`None` when it succeeded).
fn code_of<T>(r: &ttrpc::Result<T>) -> Option<Code> {
    match r {
        Ok(_) => None,
        Err(ttrpc::Error::RpcStatus(s)) => Some(s.code()),
        Err(_) => Some(Code::UNKNOWN),
    }
}

/// Creates a task `id` straight through the shim of container `host`.
fn create_foreign(cd: &Containerd, shim: &Shim, host: &str, id: &str) -> Result<u32> {
    let bundle = foreign_bundle(cd, host, id)?;
    let req = api::CreateTaskRequest {
        id: id.to_owned(),
        bundle: bundle.to_string_lossy().into_owned(),
        ..Default::default()
    };
    Ok(shim
        .client
        .create(ctx(), &req)
        .with_context(|| format!("Create {id}"))?
        .pid)
}

/// Kills, waits for and deletes task `id` if it is still there.
fn finish(shim: &Shim, id: &str) -> Result<()> {
    match shim.state(id) {
        Err(ttrpc::Error::RpcStatus(s)) if s.code() == Code::NOT_FOUND => return Ok(()),
        Err(e) => bail!("State of {id}: {e}"),
        Ok(_) => {}
    }
    let _ = shim.kill(id, 9);
    let _ = shim.wait(id);
    shim.delete(id).with_context(|| format!("Delete of {id}"))?;
    Ok(())
}

/// Runs `test` with the shim of a detached spinning container `host`, whose
/// shim serves the test's own tasks; then checks that the host task still
/// runs (nothing the test did took the shim down), removes it and checks
/// for leftovers.
fn with_host_shim(
    prefix: &str,
    test: impl FnOnce(&Containerd, &Shim, &str) -> Result<()>,
) -> Result<()> {
    let cd = Containerd::start(ContainerdOptions::default())?;
    let image = probe_image(&cd, P1)?;
    let host = cd.unique_id(prefix);
    run_spinner(&cd, &image, &host)?;
    let shim = Shim::connect(&cd, &host)?;
    test(&cd, &shim, &host)?;
    ensure!(
        shim.state(&host)?.status.enum_value() == Ok(api::Status::RUNNING),
        "the host task {host} is no longer running"
    );
    drop(shim);
    remove_container(&cd, &host)?;
    cd.assert_no_leftovers()
}

#[test]
fn racing_requests_on_one_task_have_one_winner() -> Result<()> {
    with_host_shim("race-host", |cd, shim, host| {
        let mut pids = Vec::new();

        for round in 0..4 {
            // Two Starts: one starts the task, the other is refused.
            let id = format!("{host}-start{round}");
            pids.push(create_foreign(cd, shim, host, &id)?);
            let (a, b) = race(|| shim.start(&id), || shim.start(&id));
            let codes = [code_of(&a), code_of(&b)];
            ensure!(
                codes.contains(&None) && codes.contains(&Some(Code::FAILED_PRECONDITION)),
                "double Start of {id}: {a:?} / {b:?}"
            );
            ensure!(
                shim.state(&id)?.status.enum_value() == Ok(api::Status::RUNNING),
                "{id} not running after the double Start"
            );

            // Delete during Start: either the task starts and the Delete is
            // refused (it runs), or the Delete wins and the Start finds nothing.
            let id = format!("{host}-delstart{round}");
            pids.push(create_foreign(cd, shim, host, &id)?);
            let (start, delete) = race(|| shim.start(&id), || shim.delete(&id));
            match (code_of(&start), code_of(&delete)) {
                (None, Some(Code::FAILED_PRECONDITION)) => finish(shim, &id)?,
                (Some(Code::NOT_FOUND | Code::FAILED_PRECONDITION), None) => expect_code(
                    "State after Delete won",
                    shim.state(&id),
                    Code::NOT_FOUND,
                    &id,
                )?,
                _ => bail!("Start/Delete race on {id}: {start:?} / {delete:?}"),
            }

            // Kill and Delete of a running task: the Kill lands; the Delete is
            // refused while the task runs, or succeeds once it has exited.
            let id = format!("{host}-killdel{round}");
            pids.push(create_foreign(cd, shim, host, &id)?);
            shim.start(&id)?;
            let (kill, delete) = race(|| shim.kill(&id, 9), || shim.delete(&id));
            ensure!(
                matches!(code_of(&kill), None | Some(Code::NOT_FOUND)),
                "Kill racing Delete on {id}: {kill:?}"
            );
            ensure!(
                matches!(code_of(&delete), None | Some(Code::FAILED_PRECONDITION)),
                "Delete racing Kill on {id}: {delete:?}"
            );
            if delete.is_err() {
                let waited = shim.wait(&id).context("Wait after the race")?;
                ensure!(waited.exit_status == 137, "{id}: {waited:?}");
                shim.delete(&id).context("Delete after the race")?;
            }

            // Two Deletes of an exited task: one result, one NOT_FOUND.
            let id = format!("{host}-deldel{round}");
            pids.push(create_foreign(cd, shim, host, &id)?);
            shim.start(&id)?;
            shim.kill(&id, 9)?;
            shim.wait(&id)?;
            let (a, b) = race(|| shim.delete(&id), || shim.delete(&id));
            let codes = [code_of(&a), code_of(&b)];
            ensure!(
                codes.contains(&None) && codes.contains(&Some(Code::NOT_FOUND)),
                "double Delete of {id}: {a:?} / {b:?}"
            );
        }
        for round in 0..4 {
            finish(shim, &format!("{host}-start{round}"))?;
        }
        for pid in pids {
            ensure!(!process_exists(pid), "runner {pid} outlived its task");
        }
        Ok(())
    })
}

/// The mount options of `/` in the mount namespace of process `pid`.
fn root_mount_options(pid: u32) -> Result<String> {
    let info = fs::read_to_string(format!("/proc/{pid}/mountinfo"))?;
    info.lines()
        .rev()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f.get(4) == Some(&"/")).then(|| f.get(5).map(|o| (*o).to_owned()))?
        })
        .next()
        .with_context(|| format!("no / in /proc/{pid}/mountinfo"))
}

/// Bundles no runtime should run: each Create is refused with an error that
/// names the container and what is wrong, and leaves no runner, cgroup or
/// mount behind; the shim goes on serving its other task.
#[test]
fn bad_bundles_are_refused_with_clear_errors() -> Result<()> {
    use containerd_shim_protos::protobuf::well_known_types::any::Any;
    type Edit = Box<dyn FnOnce(&mut Value) -> Result<()>>;
    // sets (or adds) the field at `pointer`, whose parent must exist
    let set = |pointer: &'static str, value: Value| -> Edit {
        Box::new(move |spec: &mut Value| {
            let (parent, key) = pointer.rsplit_once('/').context("a pointer")?;
            spec.pointer_mut(parent)
                .and_then(Value::as_object_mut)
                .with_context(|| format!("spec has no {parent}"))?
                .insert(key.to_owned(), value);
            Ok(())
        })
    };
    with_host_shim("bad-host", |cd, shim, host| {
        let cases: Vec<(&str, Edit, &[&str])> = vec![
            (
                "noroot",
                set("/root", json!({"path": "no-such-rootfs"})),
                &["no-such-rootfs"],
            ),
            (
                "cgdotdot",
                set("/linux/cgroupsPath", json!("/wasmpod-e2e/../../etc")),
                &["cgroupsPath", "../../etc"],
            ),
            (
                "unknowncap",
                set(
                    "/process/capabilities",
                    json!({"bounding": ["CAP_CHOWN", "CAP_NOPE"]}),
                ),
                &["process.capabilities.bounding[1]", "CAP_NOPE"],
            ),
            (
                "seccompaction",
                set("/linux/seccomp", json!({"defaultAction": "SCMP_ACT_NOPE"})),
                &["linux.seccomp.defaultAction", "SCMP_ACT_NOPE"],
            ),
            (
                "seccomparch",
                set(
                    "/linux/seccomp",
                    json!({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_NOPE"]}),
                ),
                &["linux.seccomp.architectures[0]", "SCMP_ARCH_NOPE"],
            ),
            (
                "seccompnotify",
                set(
                    "/linux/seccomp",
                    json!({"defaultAction": "SCMP_ACT_ALLOW",
                        "syscalls": [{"names": ["getpid"], "action": "SCMP_ACT_NOTIFY"}]}),
                ),
                &["linux.seccomp", "SCMP_ACT_NOTIFY"],
            ),
            (
                "rlimit",
                set(
                    "/process/rlimits",
                    json!([{"type": "RLIMIT_NOPE", "soft": 1, "hard": 1}]),
                ),
                &["process.rlimits[0].type", "RLIMIT_NOPE"],
            ),
            (
                "sysctl",
                set("/linux/sysctl", json!({"vm.swappiness": "10"})),
                &["linux.sysctl", "vm.swappiness"],
            ),
            (
                "oomscore",
                set("/process/oomScoreAdj", json!(2000)),
                &["oomScoreAdj", "2000"],
            ),
            (
                "apparmor",
                set("/process/apparmorProfile", json!("wasmpod-nope")),
                &["apparmorProfile", "wasmpod-nope"],
            ),
            (
                "bindsrc",
                Box::new(|spec: &mut Value| {
                    spec["mounts"]
                        .as_array_mut()
                        .context("mounts")?
                        .push(json!({
                            "destination": "/data",
                            "type": "bind",
                            "source": "/nonexistent/wasmpod-bind-source",
                            "options": ["rbind", "ro"]
                        }));
                    Ok(())
                }),
                &[
                    "/data",
                    "/nonexistent/wasmpod-bind-source",
                    "does not exist",
                ],
            ),
            (
                "mountsrc",
                Box::new(|spec: &mut Value| {
                    spec["mounts"]
                        .as_array_mut()
                        .context("mounts")?
                        .push(json!({
                            "destination": "/data/in",
                            "type": "bind",
                            "source": "/nonexistent/wasmpod-e2e",
                            "options": ["rbind", "ro"]
                        }));
                    Ok(())
                }),
                &["/nonexistent/wasmpod-e2e"],
            ),
            (
                "mountdst",
                Box::new(|spec: &mut Value| {
                    spec["mounts"]
                        .as_array_mut()
                        .context("mounts")?
                        .push(json!({
                            "destination": "relative/dir",
                            "type": "bind",
                            "source": "/tmp",
                            "options": ["rbind", "ro"]
                        }));
                    Ok(())
                }),
                &["relative/dir"],
            ),
            ("noargs", set("/process/args", json!([])), &["args"]),
            (
                "noprocess",
                Box::new(|spec: &mut Value| {
                    spec.as_object_mut().context("spec")?.remove("process");
                    Ok(())
                }),
                &["process"],
            ),
        ];
        // What containerd's runtime options say, read as the handler's
        // options table (`runtimeoptions.v1.Options`: a ConfigPath, or the
        // table itself as ConfigBody).
        let runtime_options = |path: &str, body: &str| {
            let mut value = Vec::new();
            for (tag, data) in [(0x12u8, path.as_bytes()), (0x1a, body.as_bytes())] {
                if !data.is_empty() {
                    value.push(tag);
                    value.push(u8::try_from(data.len()).expect("short"));
                    value.extend_from_slice(data);
                }
            }
            Any {
                type_url: "runtimeoptions.v1.Options".into(),
                value,
                ..Default::default()
            }
        };
        let with_options: Vec<(&str, Edit, Any, &[&str])> = vec![
            (
                "systemdpath",
                set("/linux/cgroupsPath", json!("a:b")),
                runtime_options("", "SystemdCgroup = true\n"),
                &["cgroupsPath", "a:b", "slice:prefix:name"],
            ),
            (
                "configpath",
                Box::new(|_: &mut Value| Ok(())),
                runtime_options("/nonexistent/wasmpod-runtime.toml", ""),
                &[
                    "runtime options",
                    "ConfigPath /nonexistent/wasmpod-runtime.toml",
                ],
            ),
        ];
        let cases = cases
            .into_iter()
            .map(|(name, edit, needles)| (name, edit, needles, None))
            .chain(
                with_options
                    .into_iter()
                    .map(|(name, edit, any, needles)| (name, edit, needles, Some(any))),
            );
        let mut ids = Vec::new();
        for (name, edit, needles, options) in cases {
            let id = format!("{host}-{name}");
            let bundle = foreign_bundle_with(cd, host, &id, edit)?;
            let req = api::CreateTaskRequest {
                id: id.clone(),
                bundle: bundle.to_string_lossy().into_owned(),
                options: options.into(),
                ..Default::default()
            };
            let err = match shim.client.create(ctx(), &req) {
                Ok(r) => bail!("Create of {id} ({name}) succeeded: {r:?}"),
                Err(e) => e.to_string(),
            };
            ensure!(err.contains(&id), "{name}: error does not name {id}: {err}");
            for n in needles {
                ensure!(err.contains(n), "{name}: error lacks {n:?}: {err}");
            }
            expect_code(
                "State after a failed Create",
                shim.state(&id),
                Code::NOT_FOUND,
                &id,
            )?;
            ensure!(
                wasmpod_e2e::leftovers::mounts_under(&bundle)?.is_empty(),
                "{name}: a mount is left under {}",
                bundle.display()
            );
            ids.push(id);
        }
        // A bundle without config.json at all.
        let id = format!("{host}-nospec");
        let bundle = cd.tempdir().join("bundles").join(&id);
        fs::create_dir_all(&bundle)?;
        let req = api::CreateTaskRequest {
            id: id.clone(),
            bundle: bundle.to_string_lossy().into_owned(),
            ..Default::default()
        };
        let err = shim
            .client
            .create(ctx(), &req)
            .expect_err("no config.json")
            .to_string();
        ensure!(err.contains(&id) && err.contains("config.json"), "{err}");
        ids.push(id);

        ensure!(
            wasmpod_e2e::leftovers::leftover_cgroups(&ids).is_empty(),
            "cgroups left: {:?}",
            wasmpod_e2e::leftovers::leftover_cgroups(&ids)
        );
        let pids = shim.pids(host)?;
        ensure!(pids.processes.len() == 1, "{:?}", pids.processes);
        Ok(())
    })
}

/// `Update` (CRI's UpdateContainerResources) of a Wasm task: the limits
/// land in its cgroup; bad resources, an exited task and an unknown one get
/// clear errors.
#[test]
fn update_applies_new_limits_to_a_wasm_task() -> Result<()> {
    use containerd_shim_protos::protobuf::well_known_types::any::Any;
    with_host_shim("upd-host", |cd, shim, host| {
        let id = format!("{host}-task");
        create_foreign(cd, shim, host, &id)?;
        shim.start(&id)?;
        let update = |id: &str, value: &[u8]| {
            let req = api::UpdateTaskRequest {
                id: id.to_owned(),
                resources: Some(Any {
                    type_url: "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources"
                        .into(),
                    value: value.to_vec(),
                    ..Default::default()
                })
                .into(),
                ..Default::default()
            };
            shim.client.update(ctx(), &req)
        };
        update(
            &id,
            br#"{"cpu":{"shares":300,"quota":20000,"period":100000},"memory":{"limit":104857600}}"#,
        )
        .context("Update")?;
        let cgroup = Path::new("/sys/fs/cgroup");
        let rel = format!("{}/{id}", cd.namespace());
        let read = |ctl: &str, file: &str| -> Result<String> {
            let path = cgroup.join(ctl).join(&rel).join(file);
            Ok(fs::read_to_string(&path)
                .with_context(|| format!("read {}", path.display()))?
                .trim()
                .to_owned())
        };
        ensure!(
            read("cpu", "cpu.cfs_quota_us")? == "20000",
            "quota not applied"
        );
        ensure!(read("cpu", "cpu.shares")? == "300", "shares not applied");
        ensure!(
            read("memory", "memory.limit_in_bytes")? == "104857600",
            "memory limit not applied"
        );
        expect_code(
            "Update with garbage",
            update(&id, b"{not json"),
            Code::INVALID_ARGUMENT,
            &id,
        )?;
        expect_code(
            "Update of an unknown task",
            update("no-such-task", b"{}"),
            Code::NOT_FOUND,
            "no-such-task",
        )?;
        shim.kill(&id, 9)?;
        shim.wait(&id)?;
        expect_code(
            "Update of an exited task",
            update(&id, b"{}"),
            Code::FAILED_PRECONDITION,
            &id,
        )?;
        shim.delete(&id)?;
        Ok(())
    })
}

/// A device node that reaches the rootfs (an image layer can carry one)
/// cannot be opened by the guest: the shim mounts a Wasm container's rootfs
/// `nodev`, and read-only in the kernel when the spec asks.
#[test]
fn device_nodes_in_the_rootfs_cannot_be_opened() -> Result<()> {
    use containerd_shim_protos::types::mount::Mount;
    with_host_shim("dev-host", |cd, shim, host| {
        // What containerd would have unpacked: the probe, a file, /dev/null's twin.
        let layer = cd.tempdir().join("devlayer");
        fs::create_dir_all(&layer)?;
        fs::copy(guest(P1, "probe")?, layer.join("probe.wasm"))?;
        fs::write(layer.join("note.txt"), "plain file\n")?;
        nix::sys::stat::mknod(
            &layer.join("null"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o666),
            nix::sys::stat::makedev(1, 3),
        )
        .context("mknod")?;
        fs::write(layer.join("null"), "x").context("the node is a working device on the host")?;

        let cases: [(&str, &[&str], bool, u32); 4] = [
            ("devread", &["cat", "/null"], false, 1),
            ("devwrite", &["write", "/null", "x"], false, 1),
            ("plain", &["cat", "/note.txt"], false, 0),
            ("rootro", &["write", "/new.txt", "x"], true, 1),
        ];
        for (name, args, readonly, want) in cases {
            let id = format!("{host}-{name}");
            let mut argv = vec!["/probe.wasm"];
            argv.extend(args);
            let bundle = foreign_bundle_with(cd, host, &id, |spec| {
                spec["process"]["args"] = json!(argv);
                spec["root"]["readonly"] = json!(readonly);
                Ok(())
            })?;
            let mount = Mount {
                type_: "bind".into(),
                source: layer.to_string_lossy().into_owned(),
                options: vec!["rbind".into(), "rw".into()],
                ..Default::default()
            };
            let req = api::CreateTaskRequest {
                id: id.clone(),
                bundle: bundle.to_string_lossy().into_owned(),
                rootfs: vec![mount],
                ..Default::default()
            };
            let created = shim
                .client
                .create(ctx(), &req)
                .with_context(|| format!("Create {id}"))?;
            let options = wasmpod_e2e::leftovers::mount_options(&bundle.join("rootfs"))?
                .with_context(|| format!("{id}: rootfs not mounted"))?;
            let options: Vec<&str> = options.split(',').collect();
            ensure!(
                options.contains(&"nodev"),
                "{id}: rootfs mounted {options:?}"
            );
            // read-only where the container sees it: its own mount namespace
            let root = root_mount_options(created.pid)?;
            ensure!(
                root.split(',').any(|o| o == "ro") == readonly,
                "{id}: the container's / is mounted {root:?} (read-only: {readonly})"
            );
            shim.start(&id)?;
            let waited = shim.wait(&id)?;
            ensure!(
                waited.exit_status == want,
                "{id}: {argv:?} exited {}, want {want}",
                waited.exit_status
            );
            shim.delete(&id)?;
            ensure!(
                wasmpod_e2e::leftovers::mount_options(&bundle.join("rootfs"))?.is_none(),
                "{id}: rootfs still mounted after Delete"
            );
        }
        ensure!(
            !layer.join("new.txt").exists(),
            "the read-only root was written"
        );

        // A FIFO as the entry point: refused at once, the shim does not block
        // opening it.
        nix::unistd::mkfifo(
            &layer.join("fifo.wasm"),
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )?;
        let id = format!("{host}-fifo");
        let bundle = foreign_bundle_with(cd, host, &id, |spec| {
            spec["process"]["args"] = json!(["/fifo.wasm"]);
            Ok(())
        })?;
        let req = api::CreateTaskRequest {
            id: id.clone(),
            bundle: bundle.to_string_lossy().into_owned(),
            rootfs: vec![Mount {
                type_: "bind".into(),
                source: layer.to_string_lossy().into_owned(),
                options: vec!["rbind".into(), "rw".into()],
                ..Default::default()
            }],
            ..Default::default()
        };
        // (Not a regular file, so the shim looks for an artifact layer, which
        // this bundle made behind containerd's back cannot have.)
        let asked = Instant::now();
        let err = shim
            .client
            .create(ctx(), &req)
            .expect_err("a FIFO entry point")
            .to_string();
        ensure!(err.contains(&id), "{err}");
        ensure!(
            asked.elapsed() < Duration::from_secs(10),
            "Create of a FIFO entry point took {:?}",
            asked.elapsed()
        );
        ensure!(
            wasmpod_e2e::leftovers::mount_options(&bundle.join("rootfs"))?.is_none(),
            "{id}: rootfs left mounted"
        );
        Ok(())
    })
}

#[test]
fn guest_blocked_on_an_unread_pipe_stays_killable() -> Result<()> {
    let cd = Containerd::start(ContainerdOptions::default())?;
    let image = probe_image(&cd, P1)?;
    // `ctr run -d` makes the FIFOs and leaves: nobody reads the guest's
    // stdout, which fills after 64 KiB.
    for (signal, code) in [(15u32, 143u32), (9, 137)] {
        let id = cd.unique_id(&format!("flood{signal}"));
        cd.ctr(&[
            "run",
            "-d",
            "--runtime",
            RUNTIME,
            &image,
            &id,
            "/probe.wasm",
            "stdout-flood",
            "64",
        ])?;
        let pid = running_pid(&cd, &id)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !blocked_in_pipe_write(pid) {
            ensure!(
                Instant::now() < deadline,
                "runner {pid} of {id} never blocked writing its stdout"
            );
            thread::sleep(Duration::from_millis(20));
        }
        let shim = Shim::connect(&cd, &id)?;
        let sent = Instant::now();
        shim.kill(&id, signal)
            .with_context(|| format!("Kill {signal} of {id}"))?;
        let waited = shim.wait(&id).context("Wait")?;
        ensure!(
            waited.exit_status == code,
            "{id}: signal {signal} gave {waited:?}, want exit {code}"
        );
        ensure!(
            sent.elapsed() < Duration::from_secs(5),
            "{id}: exit took {:?}",
            sent.elapsed()
        );
        drop(shim);
        cd.ctr(&["tasks", "rm", &id])?;
        cd.ctr(&["containers", "rm", &id])?;
    }
    // `ctr run -d` leaves its FIFOs to the client that made them.
    crate::common::remove_ctr_fifos(&cd)?;
    cd.assert_no_leftovers()
}

/// The shim process is SIGKILLed while its container runs: containerd runs
/// the shim binary's `delete` action in the bundle, which must end the
/// orphaned runner, unmount the rootfs and remove the cgroup from what is on
/// disk alone; containerd publishes the exit; the pod starts new containers.
#[test]
fn killed_shim_is_cleaned_up_and_its_pod_starts_new_containers() -> Result<()> {
    let cd = Containerd::start(ContainerdOptions::default())?;
    let image = probe_image(&cd, P1)?;
    let mut events = EventStream::start(&cd)?;
    let sandbox = cd.unique_id("pod");
    let in_pod = format!("io.kubernetes.cri.sandbox-id={sandbox}");
    let id = cd.unique_id("orphan");
    cd.ctr(&[
        "run",
        "-d",
        "--annotation",
        &in_pod,
        "--runtime",
        RUNTIME,
        &image,
        &id,
        "/probe.wasm",
        "spin",
    ])?;
    let runner = running_pid(&cd, &id)?;
    let bundle = bundle_dir(&cd, &id);
    let cgroup_procs = leftovers_cgroup_of(runner)?;
    // The shim is the runner's parent.
    let stat = fs::read_to_string(format!("/proc/{runner}/stat"))?;
    let ppid: i32 = stat
        .rsplit(')')
        .next()
        .and_then(|rest| rest.split_whitespace().nth(1))
        .context("ppid")?
        .parse()?;
    let shim_cmd = fs::read_to_string(format!("/proc/{ppid}/cmdline"))?;
    ensure!(
        shim_cmd.contains(wasmpod_e2e::SHIM_BINARY),
        "runner {runner}'s parent {ppid} is {shim_cmd:?}"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(ppid),
        nix::sys::signal::Signal::SIGKILL,
    )?;

    // containerd notices, runs the shim binary's `delete` on the bundle,
    // and publishes the exit: the runner is gone, so is its cgroup.
    let exit = events
        .wait_for(&id, EXIT)
        .context("no TaskExit after the shim was killed")?;
    ensure!(
        exit.number("exit_status") == 137,
        "TaskExit after the shim died: {}",
        exit.line
    );
    ensure!(
        !process_exists(runner)
            || fs::read_to_string(format!("/proc/{runner}/stat")).is_ok_and(|s| s.contains(") Z")),
        "runner {runner} survived its shim"
    );
    if let Some(dir) = cgroup_procs {
        let deadline = Instant::now() + Duration::from_secs(10);
        while dir.exists() {
            ensure!(
                Instant::now() < deadline,
                "cgroup {} outlived the dead shim",
                dir.display()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
    ensure!(
        !bundle
            .join("rootfs")
            .read_dir()
            .is_ok_and(|mut d| d.next().is_some()),
        "rootfs of {id} still mounted"
    );

    // The pod goes on: a new container of the same sandbox starts (with a
    // new shim for the pod) and runs to completion.
    let next = cd.unique_id("next");
    let out = crate::common::run(
        &cd,
        &["--annotation", &in_pod],
        &image,
        &next,
        &["/probe.wasm", "args", "again"],
    )?;
    ensure!(
        out.status == Some(0) && out.stdout.contains("again"),
        "a new container of the pod: {out:?}"
    );

    let _ = cd.ctr_output(&["tasks", "rm", "-f", &id])?;
    cd.ctr(&["containers", "rm", &id])?;
    crate::common::remove_ctr_fifos(&cd)?;
    events.stop()?;
    cd.assert_no_leftovers()
}

/// The cgroup directory (in the first hierarchy that has one) holding
/// process `pid`, if it is not the root.
fn leftovers_cgroup_of(pid: u32) -> Result<Option<PathBuf>> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, ctl, path) = (parts.next(), parts.next(), parts.next());
        let (Some(ctl), Some(path)) = (ctl, path) else {
            continue;
        };
        if path == "/" {
            continue;
        }
        let ctl = ctl
            .split(',')
            .find(|c| !c.is_empty() && !c.starts_with("name="));
        if let Some(ctl) = ctl {
            let dir = Path::new("/sys/fs/cgroup")
                .join(ctl)
                .join(path.trim_start_matches('/'));
            if dir.is_dir() {
                return Ok(Some(dir));
            }
        }
    }
    Ok(None)
}
