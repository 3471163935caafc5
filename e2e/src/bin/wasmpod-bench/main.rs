//! `make bench`: start-up and throughput measured side by side with runc on
//! the same private containerd, interleaving the compared runtimes in every
//! round (floor, wasm, runc, floor, wasm, runc, ...) so drift on the machine
//! hits all of them alike. Prints a Markdown table and writes
//! `target/bench/results.json`.
//!
//! B1 cold start: wall time of `ctr run --rm` of the Wasm hello world (with
//! the precompiled-module cache emptied first, and warm) beside
//! `ctr run --rm` of static busybox `echo` under runc, and the floor: `ctr`
//! creating and deleting a container with no task.
//!
//! B3 throughput: create → start → wait → delete cycles (`ctr run --rm`)
//! per second at parallelism 4, wasmpod hello beside runc busybox echo.
//!
//! B4 compute: the same CPU-bound program (`e2e/compute`) built for
//! wasm32-wasip1 and natively, timed inside the program, under wasmpod and
//! under runc, and the same module run by the wasmtime library with its
//! default configuration in one plain process (`wasmpod-bare-run`, built
//! beside the shim): the baseline that shows what wasmpod itself adds.
//!
//! B5 HTTP: a `wasi:http` hello handler served by wasmpod (`ctr run
//! --net-host`) under `wrk -t2 -c16 -d10s` on loopback: requests per second
//! and p50/p99 latency, beside `wasmtime serve -Scli` of the same component
//! when a `wasmtime` CLI is on `PATH`.
//!
//! B6 pod start: RunPodSandbox + CreateContainer + StartContainer through
//! CRI until the container runs and until it exited 0, a wasmpod pod (native
//! sandbox, and runc's pause) beside a runc pod, interleaved.
//!
//! B7 pods at scale: 1000 pods (`WASMPOD_BENCH_PODS`, runc's count
//! `WASMPOD_BENCH_RUNC_PODS`) running at once through CRI, created at
//! parallelism 8: time to all running, PSS per pod by process role,
//! containerd's growth, the MemAvailable drop, the time to remove them all;
//! `WASMPOD_BENCH_B7_HOLD=1` waits for Enter with them running.
//!
//! S1 stress: 500 (`WASMPOD_BENCH_STRESS`) `ctr run --rm` cycles of the
//! Wasm hello world at parallelism 2 and 16: every cycle must succeed with
//! the right output, and afterwards no process, cgroup, mount, FIFO, task
//! state directory or containerd file descriptor may be left; p50/p99/max
//! latency per parallelism. With B2's 200 running Wasm containers (all of
//! which must run), this is the load run of the reliability work.
//!
//! `WASMPOD_BENCH_ONLY` picks parts (a comma list of `b1`..`b7`, `s1`; `hold`
//! only starts the containerd with the images and waits for Enter);
//! `WASMPOD_BENCH_SMAPS=1` saves `/proc/PID/smaps` of the second process of each
//! role in B2 under `target/bench/` for a closer look.
//!
//! B2 density: N long-running containers (N = 50 and 200; `WASMPOD_BENCH_DENSITY`
//! overrides) of each runtime: the sum of the PSS of every process they add
//! (shims included, `/proc/PID/smaps_rollup`) and the drop in MemAvailable,
//! per container.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use wasmpod_e2e::guests::{compute_binaries, guest, http_guest};
use wasmpod_e2e::images::{base_spec, busybox_image, image_tar, wasm_image};
use wasmpod_e2e::{workspace_root, Containerd, ContainerdOptions, RUNTIME};
use wasmpod_oci::image::Entry;

mod compute;
mod density;
mod http;
mod pods;
mod scale;
mod startup;
mod stress;

use compute::compute;
use density::density;
use http::http;
use pods::pod_start;
use scale::pods_at_scale;
pub(crate) use startup::run_args;
use startup::{start_up, throughput};
use stress::stress;

pub(crate) const WASM_IMAGE: &str = "docker.io/wasmpod/bench-hello:latest";
pub(crate) const BUSYBOX_IMAGE: &str = "docker.io/wasmpod/bench-busybox:latest";
pub(crate) const PROBE_IMAGE: &str = "docker.io/wasmpod/bench-probe:latest";
pub(crate) const HTTP_IMAGE: &str = "docker.io/wasmpod/bench-http:latest";
pub(crate) const COMPUTE_WASM_IMAGE: &str = "docker.io/wasmpod/bench-compute:wasm";
pub(crate) const COMPUTE_NATIVE_IMAGE: &str = "docker.io/wasmpod/bench-compute:native";
/// Work units of the compute program (about a second natively here).
pub(crate) const COMPUTE_ROUNDS: &str = "2000";

pub(crate) struct Series {
    name: &'static str,
    samples: Vec<Duration>,
}

impl Series {
    fn percentile(&self, p: f64) -> f64 {
        let mut v: Vec<f64> = self.samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        v.sort_by(f64::total_cmp);
        let rank = ((p / 100.0) * (v.len() as f64 - 1.0)).round() as usize;
        v[rank.min(v.len() - 1)]
    }
}

pub(crate) fn timed(cd: &Containerd, args: &[&str]) -> Result<Duration> {
    let start = Instant::now();
    let out = cd.ctr_output(args)?;
    let took = start.elapsed();
    if out.status != Some(0) {
        bail!("ctr {} failed: {out:?}", args.join(" "));
    }
    Ok(took)
}

fn main() -> Result<()> {
    let rounds: usize = std::env::var("WASMPOD_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        // 40 rounds: the medians of a noisy 2 vCPU VM settle
        .unwrap_or(40);
    let cd = Containerd::start(ContainerdOptions::default())?;
    let hello = guest("wasm32-wasip1", "hello")?;
    let probe = guest("wasm32-wasip1", "probe")?;
    let (compute_wasm, compute_native) = compute_binaries()?;
    let mut native = base_spec(
        COMPUTE_NATIVE_IMAGE,
        vec![Entry::File {
            path: "compute".into(),
            data: std::fs::read(&compute_native)?,
            mode: 0o755,
        }],
    );
    native.entrypoint = vec!["/compute".into()];
    for tar in [
        wasm_image(WASM_IMAGE, &hello, "/hello.wasm")?,
        busybox_image(BUSYBOX_IMAGE)?,
        wasm_image(PROBE_IMAGE, &probe, "/probe.wasm")?,
        wasm_image(COMPUTE_WASM_IMAGE, &compute_wasm, "/compute.wasm")?,
        wasm_image(HTTP_IMAGE, &http_guest()?, "/http.wasm")?,
        image_tar(&native)?,
    ] {
        cd.ctr(&[
            "images",
            "import",
            "--all-platforms",
            &tar.to_string_lossy(),
        ])?;
    }

    let only = std::env::var("WASMPOD_BENCH_ONLY").unwrap_or_default();
    let wanted = |part: &str| only.is_empty() || only.split(',').any(|p| p.trim() == part);
    let mut results = serde_json::Map::new();
    if only == "hold" {
        // For profiling by hand: the bench's containerd, images imported,
        // until a line (or end of input) arrives on stdin.
        println!(
            "containerd {} (namespace {}, pid {:?}); press Enter to stop",
            cd.socket().display(),
            cd.namespace(),
            cd.pid()
        );
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        return Ok(());
    }
    if wanted("b1") {
        results.insert("b1".into(), start_up(&cd, rounds)?);
    }
    if wanted("b3") {
        results.insert("b3".into(), throughput(&cd)?);
    }
    if wanted("b4") {
        results.insert("b4".into(), compute(&cd, &compute_wasm)?);
    }
    if wanted("b5") {
        results.insert("b5".into(), http(&cd)?);
    }
    if wanted("b6") {
        results.insert("b6".into(), pod_start(rounds)?);
    }
    if wanted("b7") {
        results.insert("b7".into(), pods_at_scale()?);
    }
    if wanted("b2") {
        results.insert("b2".into(), density(&cd)?);
        cd.assert_no_leftovers()?;
    }
    if wanted("s1") {
        results.insert("s1".into(), stress(&cd)?);
    }

    let dir = workspace_root().join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("results.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&results)?)?;
    println!("\nresults: {}", path.display());
    Ok(())
}

/// Saves `/proc/PID/smaps` as `target/bench/smaps-<name>.txt` (for
/// `WASMPOD_BENCH_SMAPS=1`); a process gone meanwhile is skipped.
pub(crate) fn save_smaps(pid: i32, name: &str) -> Result<()> {
    let dir = workspace_root().join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let _ = std::fs::copy(
        format!("/proc/{pid}/smaps"),
        dir.join(format!("smaps-{name}.txt")),
    );
    Ok(())
}

pub(crate) fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|f| f.is_file())
    })
}

/// Kills detached (`ctr run -d`) containers and removes their tasks and
/// containers, waiting up to 20 s for each task to exit.
pub(crate) fn remove_detached(cd: &Containerd, ids: &[String]) -> Result<()> {
    for id in ids {
        let _ = cd.ctr(&["tasks", "kill", "-s", "SIGKILL", id]);
    }
    for id in ids {
        let deadline = Instant::now() + Duration::from_secs(20);
        while cd.ctr(&["tasks", "rm", id]).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        cd.ctr(&["containers", "rm", id])?;
    }
    Ok(())
}
