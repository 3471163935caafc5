//! S1 stress: many `ctr run --rm` cycles at two parallelisms, then the
//! leftovers and containerd file descriptor checks.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use wasmpod_e2e::Containerd;

use crate::*;

/// Open file descriptors of the harness' containerd.
pub(crate) fn containerd_fds(cd: &Containerd) -> Result<usize> {
    let pid = cd.pid().context("containerd is not running")?;
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("list containerd {pid}'s fds"))?
        .count())
}

/// S1: `ctr run --rm` cycles of hello.wasm at parallelism 2 and 16, all
/// successful, nothing left behind.
pub(crate) fn stress(cd: &Containerd) -> Result<serde_json::Value> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    let cycles: usize = std::env::var("WASMPOD_BENCH_STRESS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let fds_before = containerd_fds(cd)?;
    println!("\n## S1 stress: {cycles} `ctr run --rm` cycles of hello.wasm\n");
    println!("| parallelism | ok | cycles/s | p50 ms | p99 ms | max ms |");
    println!("|---:|---:|---:|---:|---:|---:|");
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    for parallel in [2usize, 16] {
        let next = AtomicUsize::new(0);
        let samples = Mutex::new(Vec::with_capacity(cycles));
        let failed = Mutex::new(Vec::new());
        let start = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..parallel {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= cycles {
                        break;
                    }
                    let id = format!("s1-{parallel}-{i}");
                    cd.track_container_id(&id);
                    let t = Instant::now();
                    let out = cd.ctr_output(&run_args(true, WASM_IMAGE, &id, &[]));
                    let took = t.elapsed();
                    match out {
                        Ok(o) if o.status == Some(0) && o.stdout == "hello from wasmpod\n" => {
                            samples.lock().expect("samples").push(took)
                        }
                        Ok(o) => failed.lock().expect("failed").push(format!("{id}: {o:?}")),
                        Err(e) => failed.lock().expect("failed").push(format!("{id}: {e:#}")),
                    }
                });
            }
        });
        let wall = start.elapsed();
        let series = Series {
            name: "stress",
            samples: samples.into_inner().expect("samples"),
        };
        let ok = series.samples.len();
        let (p50, p99, max) = (
            series.percentile(50.0),
            series.percentile(99.0),
            series.percentile(100.0),
        );
        let rate = cycles as f64 / wall.as_secs_f64();
        println!("| {parallel} | {ok}/{cycles} | {rate:.1} | {p50:.1} | {p99:.1} | {max:.1} |");
        rows.push(
            serde_json::json!({"parallelism": parallel, "cycles": cycles, "ok": ok,
            "per_s": rate, "p50_ms": p50, "p99_ms": p99, "max_ms": max}),
        );
        failures.extend(failed.into_inner().expect("failed"));
    }
    cd.assert_no_leftovers()?;
    // containerd closes a client's descriptors shortly after it goes away.
    let deadline = Instant::now() + Duration::from_secs(10);
    let fds_after = loop {
        let n = containerd_fds(cd)?;
        if n <= fds_before || Instant::now() >= deadline {
            break n;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    println!(
        "\nleftovers: none; containerd file descriptors {fds_before} before, {fds_after} after"
    );
    ensure!(
        failures.is_empty(),
        "S1: {} failed cycles, first: {}",
        failures.len(),
        failures[0]
    );
    ensure!(
        fds_after <= fds_before,
        "S1: containerd holds {} more descriptors than before",
        fds_after - fds_before
    );
    Ok(
        serde_json::json!({"runs": rows, "containerd_fds_before": fds_before, "containerd_fds_after": fds_after}),
    )
}
