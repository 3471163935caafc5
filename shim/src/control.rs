//! The control channel between the shim and a runner process: one JSON
//! message per line over the socket the runner finds at fd 3.
//!
//! ```text
//! shim   → runner  RunRequest            (container id and run plan)
//! runner → shim    Reply::Ready | Failed (module loaded and linked, or why not)
//! shim   → runner  "start"               (Start: run the guest)
//! ```
//! If the socket closes before `start`, the runner exits without running
//! anything: the shim went away or the task was deleted before it started.

use std::io::{BufRead, Write};

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use wasmpod_oci::plan::RunPlan;

/// First argument that selects runner mode in `main`.
pub const RUNNER_ARG: &str = "__wasmpod_runner";

/// Whether `pid` is a live runner process for container `id` (checked before
/// signalling a pid read from disk, which may have been reused).
pub fn is_runner(pid: i32, id: &str) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let mut args = cmdline.split(|b| *b == 0);
    let _exe = args.next();
    args.next() == Some(RUNNER_ARG.as_bytes()) && args.next() == Some(id.as_bytes())
}

/// What the shim asks a runner to prepare.
#[derive(Debug, Serialize, Deserialize)]
pub struct RunRequest {
    /// Container id, for messages.
    pub id: String,
    /// The validated plan from the container's spec.
    pub plan: RunPlan,
    /// The node's precompiled-module cache, if enabled.
    #[serde(default)]
    pub cache: Option<crate::runner::cache::CacheConfig>,
    /// The Wasm to run when it is not a file of the rootfs: a layer of a
    /// Wasm artifact the shim wrote out of containerd's content store.
    #[serde(default)]
    pub wasm: Option<WasmFile>,
    /// This is a pod's sandbox container, run natively: the runner makes
    /// the sandbox of the spec and then only holds its namespaces, reaps
    /// orphans and waits for SIGTERM (what pause does), with no Wasm.
    #[serde(default)]
    pub pod_sandbox: bool,
}

/// A Wasm binary outside the container's rootfs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WasmFile {
    /// Host path of the file.
    pub path: std::path::PathBuf,
    /// How messages name it (image and layer).
    pub name: String,
}

/// The runner's answer once it has loaded (or failed to load) the workload.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum Reply {
    /// The Wasm is compiled and linked; the runner waits for `start`.
    Ready {
        /// `module` or `component`.
        kind: String,
        /// The guest path the entry point resolved to.
        entrypoint: String,
        /// `hit`, `stored` or `compiled`: what the module cache did.
        #[serde(default)]
        cache: String,
        /// Problems worth a log line that did not stop the load.
        #[serde(default)]
        warnings: Vec<String>,
        /// How long each loading step took, in milliseconds.
        #[serde(default)]
        timings: Vec<(String, f64)>,
    },
    /// The workload cannot run; `message` says why and `kind` whose fault
    /// it is.
    Failed {
        #[serde(default)]
        kind: FailureKind,
        message: String,
    },
}

/// Whose fault a runner's failure is, which decides the code containerd
/// (and kubelet) see.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureKind {
    /// The Wasm itself: missing, not Wasm, corrupt, cannot link.
    #[default]
    Workload,
    /// Something the spec asks for that cannot be done (a mount whose source
    /// is missing, a preopen that cannot be opened).
    Spec,
    /// The node: a namespace that cannot be joined, an engine that cannot
    /// be built.
    Node,
}

/// The line the shim sends to start the guest.
pub const START: &str = "start";

/// `msg` as one JSON line: the one encoding both sides write.
pub fn encode<T: Serialize>(msg: &T) -> std::io::Result<Vec<u8>> {
    let mut line = serde_json::to_vec(msg).map_err(std::io::Error::other)?;
    line.push(b'\n');
    Ok(line)
}

/// Parses one line written by [`encode`].
pub fn decode<T: DeserializeOwned>(line: &str) -> std::io::Result<T> {
    serde_json::from_str(line).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Writes `msg` as one JSON line.
pub fn send<W: Write, T: Serialize>(w: &mut W, msg: &T) -> std::io::Result<()> {
    w.write_all(&encode(msg)?)?;
    w.flush()
}

/// Reads one JSON line; `Ok(None)` at end of stream.
pub fn recv<R: BufRead, T: DeserializeOwned>(r: &mut R) -> std::io::Result<Option<T>> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    decode(&line).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_round_trip() {
        let mut buf = Vec::new();
        let ready = Reply::Ready {
            kind: "module".into(),
            entrypoint: "/app.wasm".into(),
            cache: "hit".into(),
            warnings: vec![],
            timings: vec![("engine".into(), 1.5)],
        };
        send(&mut buf, &ready).unwrap();
        let failed = Reply::Failed {
            kind: FailureKind::Node,
            message: "no".into(),
        };
        send(&mut buf, &failed).unwrap();
        let mut r = std::io::BufReader::new(&buf[..]);
        assert_eq!(recv::<_, Reply>(&mut r).unwrap(), Some(ready));
        assert_eq!(recv::<_, Reply>(&mut r).unwrap(), Some(failed));
        assert_eq!(recv::<_, Reply>(&mut r).unwrap(), None);
        // a reply without a kind (an older runner) is the workload's fault
        let old: Reply = decode(r#"{"status":"failed","message":"m"}"#).unwrap();
        assert_eq!(
            old,
            Reply::Failed {
                kind: FailureKind::Workload,
                message: "m".into()
            }
        );
    }
}
