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

use crate::common::{probe_image, running_pid, P1, RUNTIME};

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
    let pids = shim.pids(&id).context("Pids after the exit")?;
    ensure!(
        pids.processes.is_empty(),
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
